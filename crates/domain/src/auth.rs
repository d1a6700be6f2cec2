//! Who is asking: every key has one role in one tenant.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Approver,
    Agent,
}

names!(Role {
    Admin => "admin",
    Approver => "approver",
    Agent => "agent",
});

/// An authenticated caller: the key, its tenant and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: Uuid,
    pub key_id: Uuid,
    pub role: Role,
}

impl Principal {
    /// People decide; agents never do, not even on other agents' requests.
    pub fn can_decide(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Approver)
    }

    /// Agents and admins may ask for money to move.
    pub fn can_request_payments(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Agent)
    }

    /// Whether the caller reaches what `owner` created: people see their tenant, an agent only its own.
    pub fn reaches(&self, owner: Uuid) -> bool {
        self.can_decide() || self.key_id == owner
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Actor label written into the audit trail.
    pub fn actor(&self) -> String {
        format!("key:{}", self.key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role) -> Principal {
        Principal {
            tenant_id: Uuid::nil(),
            key_id: Uuid::nil(),
            role,
        }
    }

    #[test]
    fn only_people_decide() {
        assert!(who(Role::Admin).can_decide());
        assert!(who(Role::Approver).can_decide());
        assert!(!who(Role::Agent).can_decide());
        assert!(!who(Role::Approver).can_request_payments());
        assert!(who(Role::Agent).can_request_payments());
    }

    #[test]
    fn agents_reach_only_their_own() {
        let mine = Uuid::from_u128(7);
        let agent = Principal {
            key_id: mine,
            ..who(Role::Agent)
        };
        assert!(agent.reaches(mine));
        assert!(!agent.reaches(Uuid::from_u128(8)));
        assert!(who(Role::Approver).reaches(Uuid::from_u128(8)));
        assert!(who(Role::Admin).reaches(Uuid::from_u128(8)));
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Admin, Role::Approver, Role::Agent] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
