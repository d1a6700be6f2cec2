//! Wallets belong to tenants: only a tenant's sessions may pay from its wallets, and a policy may narrow
//! which of them its agents use.

use crate::{DEFAULT_TENANT, EngineError, Paygent, Result, require};
use paygent_domain::audit::AuditAction;
use paygent_domain::{PolicyRules, Principal};
use paygent_store::wallets;
use serde_json::json;
use uuid::Uuid;

impl Paygent {
    /// Registers the rails' wallets as the default tenant's, unless a tenant owns them already: a new wallet in
    /// the configuration is the operator's until given away.
    pub(crate) async fn register_wallets(&self) -> Result<()> {
        let now = paygent_domain::time::format(self.now());
        for rail in &self.rails {
            for address in rail.wallets() {
                let address = address.to_ascii_lowercase();
                if wallets::register(&self.store, &address, DEFAULT_TENANT, &now).await? {
                    tracing::info!(%address, "wallet registered to the default tenant");
                }
            }
        }
        Ok(())
    }

    /// The caller's tenant's wallets (people).
    pub async fn wallets(&self, who: &Principal) -> Result<Vec<String>> {
        require(who.can_decide(), "only approvers and admins list wallets")?;
        Ok(wallets::of_tenant(self.store.reader(), who.tenant_id).await?)
    }

    /// The operator (an admin of the default tenant) gives a wallet to a tenant; audited in the operator's trail.
    pub async fn assign_wallet(
        &self,
        who: &Principal,
        address: &str,
        tenant_id: Uuid,
    ) -> Result<()> {
        require(
            who.is_admin() && who.tenant_id == DEFAULT_TENANT,
            "only an admin of the default tenant assigns wallets",
        )?;
        let address = address.to_ascii_lowercase();
        let mut tx = self.begin_as(who).await?;
        match wallets::assign(&mut tx, &address, tenant_id).await {
            Ok(true) => {}
            Ok(false) => return Err(EngineError::NotFound("wallet")),
            // The tenant does not exist (a foreign key): as unknown as the wallet would be.
            Err(e) if e.is_foreign_key_violation() => return Err(EngineError::NotFound("tenant")),
            Err(e) => return Err(e.into()),
        }
        let data = json!({"tenant_id": tenant_id});
        let subject = format!("wallet:{address}");
        tx.audit(
            &who.actor(),
            AuditAction::WalletAssigned,
            &subject,
            None,
            data,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A session may name only a wallet its tenant owns and its policy grants.
    pub(crate) async fn check_wallet(
        &self,
        tenant_id: Uuid,
        wallet: &str,
        rules: &PolicyRules,
    ) -> Result<()> {
        let owner = wallets::owner(self.store.reader(), &wallet.to_ascii_lowercase()).await?;
        if owner != Some(tenant_id) {
            return Err(EngineError::Invalid(
                "wallet_address is not a wallet of this tenant".into(),
            ));
        }
        if !rules.grants_wallet(wallet) {
            return Err(EngineError::Invalid(
                "wallets: the policy does not let this key's sessions pay from that wallet".into(),
            ));
        }
        Ok(())
    }
}
