//! The engine: every decision about money, over the store. Adapters (HTTP, CLI, later WebSocket and MCP) call
//! these methods with an authenticated [`Principal`], and the engine enforces roles and tenants itself, so no
//! adapter can forget to.

mod approvals;
mod audit;
mod budget;
mod error;
mod guard;
mod keys;
mod kill;
mod payments;
mod sessions;
mod views;

pub use audit::AuditPage;
pub use error::{EngineError, Result};
pub use guard::{PaymentRequest, Submitted};
pub use keys::NewTenant;
pub use kill::KillSwitchView;
pub use sessions::NewSession;
pub use views::{
    ApprovalView, BudgetLine, BudgetView, DecisionRecord, KeyView, PaymentView, SessionView,
};

pub use paygent_domain as domain;
pub use paygent_store::{
    Event, Store, StoreError, StoreOptions, approvals::ApprovalRecord, keys::KeyRecord,
    payments::PaymentRecord, sessions::SessionRecord,
};

use chrono::{DateTime, SubsecRound, Utc};
use paygent_domain::PriceTable;
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

/// The tenant that exists from the first start; its admins may create other tenants.
pub const DEFAULT_TENANT: Uuid = Uuid::from_u128(1);

/// Where time comes from, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Paygent's control plane: the guard, approvals, payments, keys and audit over one store.
#[derive(Clone)]
pub struct Paygent {
    store: Store,
    prices: Arc<PriceTable>,
    clock: Arc<dyn Clock>,
    events: broadcast::Sender<Event>,
}

impl Paygent {
    pub fn new(store: Store, prices: PriceTable, clock: Arc<dyn Clock>) -> Self {
        Paygent {
            store,
            prices: Arc::new(prices),
            clock,
            events: broadcast::channel(4096).0,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// Live events, in commit order, after they are durable in the outbox.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Now, at the microsecond precision the store keeps, so a returned record equals its stored self.
    fn now(&self) -> DateTime<Utc> {
        self.clock.now().trunc_subsecs(6)
    }

    /// Fans out committed events; nobody listening is fine, since the outbox keeps them.
    fn publish(&self, events: Vec<Event>) {
        for e in events {
            let _ = self.events.send(e);
        }
    }
}

fn require(cond: bool, why: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(EngineError::Forbidden(why.to_owned()))
    }
}
