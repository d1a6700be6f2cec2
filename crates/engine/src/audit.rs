//! Reading the audit trail, with the chain head so a reader can check nothing was cut from the end.

use crate::{Paygent, Result, require};
use paygent_domain::Principal;
use paygent_domain::audit::{AuditAction, AuditEntry, AuditFilter, AuditFrom, ChainVerifier};
use paygent_domain::narrative;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The most audit entries a page holds: entries are small, and a chain check reads them a page at a time.
pub const MAX_AUDIT_PAGE: i64 = 1000;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<AuditLine>,
    /// The sequence number and hash of the tenant's latest entry.
    pub head_seq: i64,
    pub head_hash: String,
}

/// An entry as people read it: the entry itself (what the chain hashes), its actor's name, and a sentence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditLine {
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// The acting key's name as it is now; absent for the system.
    pub actor_name: Option<String>,
    /// The entry in words, e.g. "Ops Bot asked to pay 12.00 USDC to 0x1111…1111 ($12.00): ...".
    pub words: String,
}

/// The most entries one read of the trail looks at: a filter few entries match answers a short page and where
/// to go on, never a walk of the whole trail.
pub const AUDIT_SCAN: i64 = 1000;

impl Paygent {
    /// Entries that match `filter`, from `from` on, with where the next page starts while there may be more.
    /// The head is read first, so a page never ends past it.
    pub async fn audit(
        &self,
        who: &Principal,
        filter: &AuditFilter,
        from: AuditFrom,
        limit: i64,
    ) -> Result<(AuditPage, Option<AuditFrom>)> {
        require(who.is_admin(), "only admins read the audit trail")?;
        let (head_seq, head_hash) = self.store.audit_head(who.tenant_id).await?;
        let limit = limit.clamp(1, MAX_AUDIT_PAGE);
        let (entries, next) = match from.window(head_seq, AUDIT_SCAN) {
            None => (Vec::new(), None),
            Some(window) => {
                let entries = self
                    .store
                    .audit_entries(who.tenant_id, filter, window, limit)
                    .await?;
                let full = entries.len() as i64 == limit;
                let ended_at = entries.last().filter(|_| full).map(|e| e.seq);
                (entries, window.next(head_seq, ended_at))
            }
        };
        let page = AuditPage {
            entries: self.told(who.tenant_id, entries).await?,
            head_seq,
            head_hash,
        };
        Ok((page, next))
    }

    /// Entries with their actors named (in one read) and told in words.
    async fn told(&self, tenant_id: Uuid, entries: Vec<AuditEntry>) -> Result<Vec<AuditLine>> {
        let key = |e: &AuditEntry| e.actor.strip_prefix("key:")?.parse::<Uuid>().ok();
        let names = self
            .key_names(tenant_id, entries.iter().filter_map(key))
            .await?;
        Ok(entries
            .into_iter()
            .map(|entry| {
                let actor_name = key(&entry).and_then(|k| names.get(&k).cloned());
                let actor = actor_name.as_deref().unwrap_or(match entry.actor.as_str() {
                    "system" => "Paygent",
                    _ => "Someone",
                });
                let words = match AuditAction::parse(&entry.action) {
                    Some(action) => narrative::in_words(action, actor, &entry.data),
                    None => format!("{actor}: {}", entry.action),
                };
                AuditLine {
                    entry,
                    actor_name,
                    words,
                }
            })
            .collect())
    }
}

/// The result of walking a tenant's whole audit chain on the server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChainCheck {
    pub verified: bool,
    /// Entries checked before the walk ended.
    pub entries: i64,
    pub head_seq: i64,
    pub head_hash: String,
    /// The first break, in words: which entry was altered, removed, reordered or cut.
    pub problem: Option<String>,
}

/// A head of the chain saved outside Paygent (printed, mailed, put in another system): entry `seq` had `hash`.
/// The chain's own head lives in the same database as the chain, so whoever can rewrite one can rewrite both; an
/// anchor kept elsewhere catches that.
#[derive(Debug, Clone)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
}

impl Paygent {
    /// Walks the tenant's whole chain against its recorded head, and against `anchor` if one is given.
    /// `paygent audit verify` does the same walk on the reader's own machine, which does not have to trust the
    /// server.
    pub async fn verify_audit(
        &self,
        who: &Principal,
        anchor: Option<Anchor>,
    ) -> Result<ChainCheck> {
        require(who.is_admin(), "only admins verify the audit trail")?;
        let (head_seq, head_hash) = self.store.audit_head(who.tenant_id).await?;
        let mut verifier = ChainVerifier::default();
        let (mut after, mut checked) = (0, 0);
        let problem = loop {
            let page = self
                .store
                .audit_chain(who.tenant_id, after, MAX_AUDIT_PAGE)
                .await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break verifier.finish(head_seq, &head_hash).err();
            };
            if let Some(e) = page.iter().find_map(|e| {
                checked += 1;
                verifier.push(e).err()
            }) {
                break Some(e);
            }
            after = last;
        };
        let problem = match (problem, anchor) {
            (None, Some(anchor)) => self.unanchored(who.tenant_id, &anchor).await?,
            (problem, _) => problem.map(|p| p.to_string()),
        };
        Ok(ChainCheck {
            verified: problem.is_none(),
            entries: checked,
            head_seq,
            head_hash,
            problem,
        })
    }

    /// How the chain differs from an anchor kept outside, if it does: the anchored entry is gone, or is another.
    async fn unanchored(&self, tenant_id: Uuid, anchor: &Anchor) -> Result<Option<String>> {
        let found = self.store.audit_chain(tenant_id, anchor.seq - 1, 1).await?;
        Ok(match found.first() {
            Some(e) if e.seq == anchor.seq && e.hash == anchor.hash => None,
            Some(e) if e.seq == anchor.seq => Some(format!(
                "entry {} is not the anchored one: its hash is {}, the anchor's {} (the chain was rewritten)",
                e.seq, e.hash, anchor.hash
            )),
            _ => Some(format!(
                "the anchored entry {} is not in the chain (the chain was cut or rewritten)",
                anchor.seq
            )),
        })
    }
}
