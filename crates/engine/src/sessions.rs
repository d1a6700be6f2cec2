//! Sessions: created by agents or admins, read by anyone in the tenant.

use crate::views::SessionView;
use crate::{EngineError, Paygent, Result, require};
use paygent_domain::payment::Recipient;
use paygent_domain::{Decimal, PaymentStatus, Principal, SessionConfig};
use paygent_store::payments;
use paygent_store::sessions::{self, SessionRecord};
use serde_json::json;
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub name: Option<String>,
    pub wallet_address: Option<String>,
    pub config: Option<SessionConfig>,
}

/// How many of today's payments are summed for a session's view; budgets (a later issue) keep real totals.
const SPEND_SCAN_LIMIT: i64 = 10_000;

impl Paygent {
    pub async fn create_session(&self, who: &Principal, new: NewSession) -> Result<SessionView> {
        require(
            who.can_request_payments(),
            "only agents and admins create sessions",
        )?;
        if new.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
            return Err(EngineError::Invalid(
                "name is limited to 200 characters".into(),
            ));
        }
        if let Some(w) = &new.wallet_address
            && !matches!(Recipient::parse(w), Ok(Recipient::Evm(_)))
        {
            return Err(EngineError::Invalid(
                "wallet_address must be an EVM address (0x and 40 hex digits)".into(),
            ));
        }
        let config = new.config.unwrap_or_default();
        config.validate()?;
        let mut tx = self.store.begin(who.tenant_id, self.now()).await?;
        let session = SessionRecord {
            id: Uuid::now_v7(),
            tenant_id: who.tenant_id,
            name: new.name,
            wallet_address: new.wallet_address,
            config,
            state: "active".into(),
            created_by: who.key_id,
            created_at: tx.now(),
        };
        sessions::insert(&mut tx, &session).await?;
        tx.audit(
            &who.actor(),
            "session.created",
            &format!("session:{}", session.id),
            Some(session.id),
            json!({
                "name": session.name,
                "wallet_address": session.wallet_address,
                "config": session.config,
            }),
        )
        .await?;
        tx.commit().await?;
        let day = tx_day_start(session.created_at);
        Ok(SessionView::new(session, BTreeMap::new(), day))
    }

    pub async fn session(&self, who: &Principal, id: Uuid) -> Result<SessionView> {
        let session = sessions::get(self.store.reader(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("session"))?;
        let day_started_at = tx_day_start(self.now());
        let today = payments::list(
            self.store.reader(),
            who.tenant_id,
            Some(id),
            Some(day_started_at),
            SPEND_SCAN_LIMIT,
        )
        .await?;
        let mut spent_today = BTreeMap::new();
        for p in today.iter().filter(|p| {
            matches!(
                p.status,
                PaymentStatus::Authorized | PaymentStatus::Executed
            )
        }) {
            *spent_today
                .entry(p.currency.clone())
                .or_insert(Decimal::ZERO) += p.amount;
        }
        Ok(SessionView::new(session, spent_today, day_started_at))
    }
}

/// Midnight UTC of `at`'s day. Budgets (a later issue) bring per-session time zones.
fn tx_day_start(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    at.date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}
