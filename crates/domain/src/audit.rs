//! The tamper-evident audit trail: each entry's hash covers its content and the previous entry's hash, so an
//! edited, removed or reordered entry breaks the chain at a point that can be named.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// What an audit entry records: one name each, here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    TenantCreated,
    KeyCreated,
    KeyRevoked,
    PolicyCreated,
    PolicyChanged,
    WalletAssigned,
    SessionCreated,
    SessionKilled,
    SessionRevived,
    SessionFrozen,
    SessionUnfrozen,
    StandingGranted,
    StandingRevoked,
    BudgetChanged,
    BudgetExceeded,
    PaymentAuthorized,
    PaymentDenied,
    PaymentExecuted,
    PaymentFailed,
    ActionAuthorized,
    ApprovalRequested,
    ApprovalApproved,
    ApprovalVoted,
    ApprovalEscalated,
    ApprovalEdited,
    ApprovalRejected,
    ApprovalExpired,
    ExecutionStarted,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRejected,
    ExecutionExpired,
    ExecutionCancelled,
    KillSwitchEngaged,
    KillSwitchReleased,
    StopBatch,
    StopSwept,
    WebhookCreated,
    WebhookDeleted,
    WebhookSecretRotated,
    WebhookDisabled,
    WebhookEnabled,
}

names!(AuditAction {
    TenantCreated => "tenant.created",
    KeyCreated => "key.created",
    KeyRevoked => "key.revoked",
    PolicyCreated => "policy.created",
    PolicyChanged => "policy.changed",
    WalletAssigned => "wallet.assigned",
    SessionCreated => "session.created",
    SessionKilled => "session.killed",
    SessionRevived => "session.revived",
    SessionFrozen => "session.frozen",
    SessionUnfrozen => "session.unfrozen",
    StandingGranted => "standing.granted",
    StandingRevoked => "standing.revoked",
    BudgetChanged => "budget.changed",
    BudgetExceeded => "budget.exceeded",
    PaymentAuthorized => "payment.authorized",
    PaymentDenied => "payment.denied",
    PaymentExecuted => "payment.executed",
    PaymentFailed => "payment.failed",
    ActionAuthorized => "action.authorized",
    ApprovalRequested => "approval.requested",
    ApprovalApproved => "approval.approved",
    ApprovalVoted => "approval.voted",
    ApprovalEscalated => "approval.escalated",
    ApprovalEdited => "approval.edited",
    ApprovalRejected => "approval.rejected",
    ApprovalExpired => "approval.expired",
    ExecutionStarted => "execution.started",
    ExecutionCompleted => "execution.completed",
    ExecutionFailed => "execution.failed",
    ExecutionRejected => "execution.rejected",
    ExecutionExpired => "execution.expired",
    ExecutionCancelled => "execution.cancelled",
    KillSwitchEngaged => "kill_switch.engaged",
    KillSwitchReleased => "kill_switch.released",
    StopBatch => "stop.batch",
    StopSwept => "stop.swept",
    WebhookCreated => "webhook.created",
    WebhookDeleted => "webhook.deleted",
    WebhookSecretRotated => "webhook.secret_rotated",
    WebhookDisabled => "webhook.disabled",
    WebhookEnabled => "webhook.enabled",
});

impl AuditAction {
    /// How a payment ended, as the trail records it: executed, or failed (any other outcome is a failure).
    pub fn payment_ended(outcome: crate::PaymentStatus) -> AuditAction {
        match outcome {
            crate::PaymentStatus::Executed => AuditAction::PaymentExecuted,
            _ => AuditAction::PaymentFailed,
        }
    }

    /// How an execution ended, as the trail records it.
    pub fn execution_ended(status: crate::execution::ExecutionStatus) -> AuditAction {
        use crate::execution::ExecutionStatus as S;
        match status {
            S::Completed => AuditAction::ExecutionCompleted,
            S::Rejected => AuditAction::ExecutionRejected,
            S::Expired => AuditAction::ExecutionExpired,
            S::Cancelled => AuditAction::ExecutionCancelled,
            S::Failed | S::Running | S::AwaitingApproval | S::Frozen => {
                AuditAction::ExecutionFailed
            }
        }
    }
}

impl AuditAction {
    /// The first part of its name: `approval` for `approval.requested`, `approval.approved`, ...
    pub fn family(self) -> &'static str {
        let name = self.as_str();
        name.split_once('.').map_or(name, |(family, _)| family)
    }
}

/// One action, or every action of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actions {
    One(AuditAction),
    Family(&'static str),
}

impl Actions {
    /// An action's name (`approval.approved`) or a family's (`approval`).
    pub fn parse(s: &str) -> Option<Actions> {
        if let Some(action) = AuditAction::parse(s) {
            return Some(Actions::One(action));
        }
        let family = AuditAction::ALL
            .iter()
            .map(|a| a.family())
            .find(|f| *f == s)?;
        Some(Actions::Family(family))
    }
}

/// Which entries a reader asks for; every part left out matches all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub session_id: Option<Uuid>,
    pub actions: Option<Actions>,
    /// As entries record it: `key:<uuid>` or `system`.
    pub actor: Option<String>,
    /// As entries record it, e.g. `approval:<uuid>`.
    pub subject: Option<String>,
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
}

/// Where a page of the trail starts: after a sequence number going forward, or before one going back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFrom {
    After(i64),
    Before(i64),
}

/// The sequence numbers one read may look at: at most a scan's worth from where it starts, never past the head,
/// so a filter few entries match still reads a bounded stretch, and says where to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditWindow {
    pub first: i64,
    pub last: i64,
    pub newest_first: bool,
}

impl AuditFrom {
    /// The window of at most `scan` entries a read starting here looks at, or none when nothing is left.
    pub fn window(self, head: i64, scan: i64) -> Option<AuditWindow> {
        let (first, last, newest_first) = match self {
            AuditFrom::After(after) => (after.max(0) + 1, head.min(after.max(0) + scan), false),
            AuditFrom::Before(before) => {
                let last = head.min(before - 1);
                ((last - scan + 1).max(1), last, true)
            }
        };
        (first <= last).then_some(AuditWindow {
            first,
            last,
            newest_first,
        })
    }
}

impl AuditWindow {
    /// Where the next read starts: after (or before) the last entry of a full page, else past this window
    /// while entries lie beyond it.
    pub fn next(self, head: i64, full_page_ended_at: Option<i64>) -> Option<AuditFrom> {
        let (edge, more, from): (i64, bool, fn(i64) -> AuditFrom) = if self.newest_first {
            (self.first, self.first > 1, AuditFrom::Before)
        } else {
            (self.last, self.last < head, AuditFrom::After)
        };
        match full_page_ended_at {
            Some(seq) => Some(from(seq)),
            None => more.then(|| from(edge)),
        }
    }
}

/// The `prev_hash` of a tenant's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub tenant_id: Uuid,
    /// 1-based, gap-free per tenant.
    pub seq: i64,
    pub at: String,
    /// Who did it, e.g. `key:<uuid>` or `system`.
    pub actor: String,
    /// What happened, e.g. `approval.approved`.
    pub action: String,
    /// What it happened to, e.g. `approval:<uuid>`.
    pub subject: String,
    pub session_id: Option<Uuid>,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// SHA-256 over the canonical JSON of every field but `hash` itself.
    pub fn compute_hash(&self) -> String {
        crate::canonical::sha256_hex(&Hashed {
            action: &self.action,
            actor: &self.actor,
            at: &self.at,
            data: &self.data,
            prev_hash: &self.prev_hash,
            seq: self.seq,
            session_id: self.session_id,
            subject: &self.subject,
            tenant_id: self.tenant_id,
        })
    }
}

/// What an entry's hash covers, its fields declared in sorted order: serialized, it is the canonical JSON.
#[derive(Serialize)]
struct Hashed<'a> {
    action: &'a str,
    actor: &'a str,
    at: &'a str,
    data: &'a Value,
    prev_hash: &'a str,
    seq: i64,
    session_id: Option<Uuid>,
    subject: &'a str,
    tenant_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("entry {seq} was altered: its content does not match its hash")]
    Altered { seq: i64 },
    #[error("entry {seq} does not link to the entry before it (removed or reordered entries)")]
    BadLink { seq: i64 },
    #[error("entry {expected} is missing (the next entry present is {found})")]
    Missing { expected: i64, found: i64 },
    #[error("entries after {last} are missing: the chain's head is entry {head}")]
    Truncated { last: i64, head: i64 },
    #[error("the last entry {seq} is not the recorded head of the chain")]
    HeadMismatch { seq: i64 },
}

impl ChainBreak {
    /// The sequence number of the first bad entry.
    pub fn seq(&self) -> i64 {
        match self {
            ChainBreak::Altered { seq }
            | ChainBreak::BadLink { seq }
            | ChainBreak::HeadMismatch { seq } => *seq,
            ChainBreak::Missing { expected, .. } => *expected,
            ChainBreak::Truncated { last, .. } => last + 1,
        }
    }
}

/// Checks a tenant's entries in order, one page at a time.
#[derive(Debug)]
pub struct ChainVerifier {
    next_seq: i64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            next_seq: 1,
            prev_hash: GENESIS.to_owned(),
        }
    }
}

impl ChainVerifier {
    pub fn push(&mut self, e: &AuditEntry) -> Result<(), ChainBreak> {
        if e.seq != self.next_seq {
            return Err(if e.seq > self.next_seq {
                ChainBreak::Missing {
                    expected: self.next_seq,
                    found: e.seq,
                }
            } else {
                ChainBreak::BadLink { seq: e.seq }
            });
        }
        if e.compute_hash() != e.hash {
            return Err(ChainBreak::Altered { seq: e.seq });
        }
        if e.prev_hash != self.prev_hash {
            return Err(ChainBreak::BadLink { seq: e.seq });
        }
        self.prev_hash = e.hash.clone();
        self.next_seq += 1;
        Ok(())
    }

    /// Ends the walk against the head the store recorded, which catches entries cut from the end.
    /// Returns how many entries were checked.
    pub fn finish(self, head_seq: i64, head_hash: &str) -> Result<i64, ChainBreak> {
        let last = self.next_seq - 1;
        if last < head_seq {
            return Err(ChainBreak::Truncated {
                last,
                head: head_seq,
            });
        }
        if last > head_seq || (last > 0 && self.prev_hash != head_hash) {
            return Err(ChainBreak::HeadMismatch { seq: last });
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let mut e = AuditEntry {
                    tenant_id: Uuid::nil(),
                    seq,
                    at: format!("2026-01-01T00:00:{seq:02}.000000Z"),
                    actor: "system".into(),
                    action: "test".into(),
                    subject: format!("thing:{seq}"),
                    session_id: None,
                    data: json!({"b": seq.to_string(), "a": {"z": "1", "y": ["x"]}}),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                e.hash = e.compute_hash();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(entries: &[AuditEntry], head: &AuditEntry) -> Result<i64, ChainBreak> {
        let mut v = ChainVerifier::default();
        for e in entries {
            v.push(e)?;
        }
        v.finish(head.seq, &head.hash)
    }

    #[test]
    fn a_clean_chain_verifies() {
        let c = chain(5);
        assert_eq!(verify(&c, &c[4]), Ok(5));
        assert_eq!(ChainVerifier::default().finish(0, ""), Ok(0));
    }

    #[test]
    fn an_entry_hashes_as_its_canonical_json() {
        // Computed apart, with Python's hashlib over json.dumps(sort_keys=True, separators=(',', ':'),
        // ensure_ascii=False): the chains stored so far keep verifying whatever writes the text.
        let mut e = AuditEntry {
            tenant_id: Uuid::nil(),
            seq: 3,
            at: "2026-12-07T01:00:00.000000Z".into(),
            actor: format!("key:{}", Uuid::from_u128(9)),
            action: "payment.allowed".into(),
            subject: "payment:x".into(),
            session_id: Some(Uuid::from_u128(7)),
            data: json!({"b": "line\nbreak \"q\" \u{e9}\u{20ac} \u{1}", "a": [1, 2.5, null, true],
                "n": {"z": 1, "y": -3}}),
            prev_hash: "abc".into(),
            hash: String::new(),
        };
        assert_eq!(
            e.compute_hash(),
            "d1f50658b0e253ab4f2287d5a6cd8638796356f45ad9072c66266149b5a22331"
        );
        e.session_id = None;
        assert_eq!(
            e.compute_hash(),
            "160a1b0b0505577e72592325eed96a5126cccc583f736c642f33c7e6af4e7919"
        );
    }

    #[test]
    fn hashing_is_independent_of_key_order() {
        let mut c = chain(1);
        let before = c[0].compute_hash();
        c[0].data = serde_json::from_str(r#"{"a": {"y": ["x"], "z": "1"}, "b": "1"}"#).unwrap();
        assert_eq!(c[0].compute_hash(), before);
    }

    #[test]
    fn an_altered_entry_is_named() {
        let mut c = chain(5);
        c[2].data = json!({"b": "999"});
        assert_eq!(
            verify(&c, &c[4].clone()),
            Err(ChainBreak::Altered { seq: 3 })
        );
    }

    #[test]
    fn a_rehashed_entry_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].actor = "mallory".into();
        c[2].hash = c[2].compute_hash();
        assert_eq!(
            verify(&c, &c[4].clone()),
            Err(ChainBreak::BadLink { seq: 4 })
        );
    }

    #[test]
    fn a_removed_entry_is_named() {
        let mut c = chain(5);
        let head = c[4].clone();
        c.remove(1);
        let err = verify(&c, &head).unwrap_err();
        assert_eq!(
            err,
            ChainBreak::Missing {
                expected: 2,
                found: 3
            }
        );
        assert_eq!(err.seq(), 2);
    }

    #[test]
    fn a_cut_tail_is_caught_by_the_head() {
        let c = chain(5);
        let err = verify(&c[..3], &c[4]).unwrap_err();
        assert_eq!(err, ChainBreak::Truncated { last: 3, head: 5 });
        assert_eq!(err.seq(), 4);
    }

    #[test]
    fn reordered_entries_are_caught() {
        let mut c = chain(5);
        let head = c[4].clone();
        c.swap(1, 2);
        assert!(verify(&c, &head).is_err());
        let mut c = chain(5);
        let (a, b) = (c[1].seq, c[2].seq);
        c[1].seq = b;
        c[2].seq = a;
        c.swap(1, 2);
        assert_eq!(verify(&c, &head), Err(ChainBreak::Altered { seq: 2 }));
    }

    #[test]
    fn actions_are_named_one_by_one_or_by_family() {
        assert_eq!(
            Actions::parse("approval.approved"),
            Some(Actions::One(AuditAction::ApprovalApproved))
        );
        assert_eq!(
            Actions::parse("kill_switch"),
            Some(Actions::Family("kill_switch"))
        );
        assert_eq!(Actions::parse("approval."), None);
        assert_eq!(Actions::parse("approvals"), None);
    }

    #[test]
    fn a_window_reads_a_bounded_stretch_and_says_where_to_go_on() {
        let forward = AuditFrom::After(0).window(2500, 1000).unwrap();
        assert_eq!((forward.first, forward.last), (1, 1000));
        assert_eq!(forward.next(2500, None), Some(AuditFrom::After(1000)));
        assert_eq!(forward.next(2500, Some(40)), Some(AuditFrom::After(40)));
        let end = AuditFrom::After(2000).window(2500, 1000).unwrap();
        assert_eq!((end.first, end.last), (2001, 2500));
        assert_eq!(end.next(2500, None), None);
        assert_eq!(AuditFrom::After(2500).window(2500, 1000), None);
        let back = AuditFrom::Before(i64::MAX).window(2500, 1000).unwrap();
        assert_eq!(
            (back.first, back.last, back.newest_first),
            (1501, 2500, true)
        );
        assert_eq!(back.next(2500, None), Some(AuditFrom::Before(1501)));
        assert_eq!(back.next(2500, Some(2400)), Some(AuditFrom::Before(2400)));
        let start = AuditFrom::Before(600).window(2500, 1000).unwrap();
        assert_eq!((start.first, start.last), (1, 599));
        assert_eq!(start.next(2500, None), None);
        assert_eq!(AuditFrom::Before(1).window(2500, 1000), None);
    }
}
