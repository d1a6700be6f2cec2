//! The engine: every decision about money, over the store. Adapters (HTTP, CLI, later WebSocket and MCP) call
//! these methods with an authenticated [`Principal`], and the engine enforces roles and tenants itself, so no
//! adapter can forget to.

mod approvals;
mod audit;
mod breaker;
mod budget;
pub mod context;
mod egress;
mod error;
mod escalation;
mod events;
mod executions;
mod guard;
mod keys;
mod kill;
mod memory;
mod metrics;
pub mod notify;
mod payments;
mod policies;
mod pricing;
mod rails;
mod sessions;
pub mod simulation;
mod spend;
pub mod standing;
mod swaps;
mod views;
mod wallets;
pub mod webhooks;

/// The most items one page of any list holds: every list pages with a cursor beyond it.
pub const MAX_PAGE: i64 = 500;

/// A page of a list that may be narrowed to one session: at most `limit` items (held to 1..=[`MAX_PAGE`]) after
/// the item `after`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub session_id: Option<Uuid>,
    pub after: Option<Uuid>,
    pub limit: i64,
}
pub use sessions::MAX_SESSIONS_PAGE;

pub use approvals::History;
pub use audit::{Anchor, AuditLine, AuditPage, ChainCheck};
pub use egress::{Egress, EgressError, EgressPolicy, Fetched, Unanswered};
pub use error::{EngineError, Result};
pub use events::{EventFilter, LiveEvent, Subscription, SubscriptionEnd};
pub use executions::Plan;
pub use executions::planner::Planner;
pub use executions::tools::{
    StepContext, StepOutcome, Tool, ToolRegistry, ToolSpec, string_params,
};
pub use guard::{EvaluatedVerdict, Evaluation, PaymentRequest, Submitted};
pub use keys::{NewKey, NewTenant};
pub use kill::KillSwitchView;
pub use memory::{MemoryTurn, SessionSummary};
pub use metrics::Metrics;
pub use policies::default_policy_id;
pub use rails::{
    Asked, Journal, PaymentOrder, Rail, RailError, Refusal, Settlement, Signed, SwapAsk, SwapQuoted,
};
pub use sessions::NewSession;
pub use spend::{SpendOf, SpendView};
pub use swaps::SwapRequest;
pub use views::{
    ApprovalView, BudgetLine, BudgetView, DecisionRecord, ExecutionView, KeyView, PaymentView,
    PolicyView, SessionView, StepView,
};

pub use paygent_domain as domain;
pub use paygent_store::{
    Event, Store, StoreError, StoreOptions, approvals::ApprovalRecord, keys::KeyRecord,
    payments::PaymentRecord, sessions::SessionRecord,
};

use chrono::{DateTime, SubsecRound, Utc};
use paygent_domain::payment::PaymentIntent;
use paygent_domain::{PriceTable, Principal};
use paygent_store::policies::PolicyRecord;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
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
    hub: events::EventHub,
    /// Keys as last read, by token hash.
    keys: Arc<keys::KnownKeys>,
    tools: ToolRegistry,
    egress: Egress,
    rails: Vec<Arc<dyn Rail>>,
    planner: Option<Arc<dyn Planner>>,
    /// This engine's name on the execution leases it holds.
    instance: Arc<str>,
    /// How long a lease lasts without renewal: how soon another instance takes over a dead one's executions.
    lease: chrono::Duration,
    /// Executions whose runner is alive in this process.
    runners: Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>,
    /// Whether the task that renews leases and takes over orphans runs.
    lease_keeper: Arc<std::sync::atomic::AtomicBool>,
    /// Payments whose rail runs in this process now, each behind its own lock.
    payment_turns: Arc<std::sync::Mutex<HashMap<Uuid, Weak<tokio::sync::Mutex<()>>>>>,
    /// How long a caller waits for a rail's outcome before it is answered with the payment in flight.
    answer_within: std::time::Duration,
    metrics: Arc<Metrics>,
    /// The Slack app requests are posted as, if one is set up.
    slack: Option<Arc<notify::slack::SlackApp>>,
    /// The mail server requests are mailed through, if one is set up.
    mailer: Option<Arc<notify::email::Mailer>>,
    /// On PostgreSQL, what each session's last payment was judged under, to guess the next one's reads.
    judged: Option<Arc<breaker::LastJudged>>,
}

impl Paygent {
    /// Needs a Tokio runtime: it starts the task that fans events out.
    pub fn new(store: Store, prices: PriceTable, clock: Arc<dyn Clock>) -> Self {
        let metrics = Arc::new(Metrics::default());
        let on_postgres = store.backend() == paygent_store::Backend::Postgres;
        let keys = Arc::new(keys::KnownKeys::default());
        Paygent {
            hub: events::EventHub::start(store.clone(), metrics.clone(), keys.clone()),
            keys,
            store,
            prices: Arc::new(prices),
            clock,
            tools: ToolRegistry::builtin(),
            egress: Egress::default(),
            rails: Vec::new(),
            planner: None,
            instance: Uuid::new_v4().to_string().into(),
            lease: chrono::Duration::seconds(10),
            lease_keeper: Arc::default(),
            runners: Arc::default(),
            payment_turns: Arc::default(),
            answer_within: std::time::Duration::from_secs(20),
            metrics,
            slack: None,
            mailer: None,
            judged: on_postgres.then(Arc::default),
        }
    }

    /// Posts requests whose policy names a Slack channel to Slack as `app`, and takes its button presses.
    pub fn with_slack(mut self, app: notify::slack::SlackApp) -> Self {
        self.slack = Some(Arc::new(app));
        self
    }

    /// Mails requests to the addresses their policy names through `mailer`, with one-time links to decide.
    pub fn with_mailer(mut self, mailer: notify::email::Mailer) -> Self {
        self.mailer = Some(Arc::new(mailer));
        self
    }

    /// Starts the channels that are set up (Slack, email), each telling people of new requests as soon as this
    /// instance commits one and every `every`, until aborted.
    pub fn spawn_notifiers(&self, every: std::time::Duration) -> Vec<tokio::task::JoinHandle<()>> {
        let mut running = Vec::new();
        if let Some(app) = &self.slack {
            running.push(self.spawn_teller((**app).clone(), every, "posting to Slack"));
        }
        if let Some(mailer) = &self.mailer {
            running.push(self.spawn_teller((**mailer).clone(), every, "mailing people"));
        }
        running
    }

    /// Sets how long an execution lease lasts without renewal (10 s by default).
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        self.lease = chrono::Duration::from_std(lease).unwrap_or(self.lease);
        self
    }

    /// Lets a planner plan the commands the deterministic parser refuses.
    pub fn with_planner(mut self, planner: impl Planner) -> Self {
        self.planner = Some(Arc::new(planner));
        self
    }

    /// Adds a rail that carries out authorized payments. Without one, an authorized payment is the agent's to
    /// pay and report.
    /// Answers a payment whose rail has not finished within `bound` as it stands, `in_flight` (the rail goes
    /// on): an API keeps this below its request timeout, so a payment is never answered by a timeout.
    pub fn answering_within(mut self, bound: std::time::Duration) -> Self {
        self.answer_within = bound;
        self
    }

    /// What it counted and timed, for `GET /metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn with_rail(mut self, rail: impl Rail) -> Self {
        self.rails.push(Arc::new(rail));
        self
    }

    /// Holds every outbound request made on an agent's behalf to `egress` (the default refuses loopback, private,
    /// link-local and metadata addresses).
    pub fn with_egress(mut self, egress: Egress) -> Self {
        self.tools.set_egress(egress.clone());
        self.egress = egress;
        self
    }

    /// The egress policy's client, for rails and tools that make requests on an agent's behalf.
    pub fn egress(&self) -> &Egress {
        &self.egress
    }

    /// Replaces the tools executions may call.
    pub fn with_tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// The tools executions may call, to extend or replace some.
    pub fn tools(&self) -> &ToolRegistry {
        &self.tools
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// Now, at the microsecond precision the store keeps, so a returned record equals its stored self.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now().trunc_subsecs(6)
    }

    /// Starts a write made by `who`. It takes the tenant's lock and checks the key in the same statement: a key
    /// revoked or expired a moment ago writes nothing (401), whatever it had been let in by.
    async fn begin_as(&self, who: &Principal) -> Result<paygent_store::WriteTx> {
        Ok(self
            .store
            .begin_as(who.tenant_id, who.key_id, self.now())
            .await?)
    }

    /// Starts a write by `who` about one session: on PostgreSQL its first round trip, the one that takes the
    /// tenant's lock, also reads the session, its policy and its budget rows.
    async fn begin_about(&self, who: &Principal, session: Uuid) -> Result<paygent_store::WriteTx> {
        self.begin_on(who, (Some(session), None), self.now(), Guessed::default())
            .await
    }

    /// Starts a write by `who` about the approval request `approval` of `session` (running what it approved): as
    /// [`Paygent::begin_about`], and the request is read in the same round trip.
    async fn begin_about_request(
        &self,
        who: &Principal,
        session: Uuid,
        approval: Uuid,
    ) -> Result<paygent_store::WriteTx> {
        self.begin_on(
            who,
            (Some(session), Some(approval)),
            self.now(),
            Guessed::default(),
        )
        .await
    }

    /// Starts a decision by `who` on the approval request `approval`: on PostgreSQL its first round trip, the one
    /// that takes the tenant's lock, reads the request, its session with its policy and the session's budget rows,
    /// so the decision is checked on the request as the lock holds it, with no read before.
    async fn begin_deciding(
        &self,
        who: &Principal,
        approval: Uuid,
    ) -> Result<paygent_store::WriteTx> {
        self.begin_on(who, (None, Some(approval)), self.now(), Guessed::default())
            .await
    }

    /// Starts a write by `who` for the payment `intent` in `session`: as [`Paygent::begin_about`], and on
    /// PostgreSQL what the session's last judgement says it will read is read in the same round trip: the circuit
    /// breaker's windows, and if a person is likely to be asked, the standing approvals and the payee's history.
    async fn begin_paying(
        &self,
        who: &Principal,
        session: Uuid,
        intent: &PaymentIntent,
    ) -> Result<paygent_store::WriteTx> {
        let now = self.now();
        let guessed = match &self.judged {
            Some(judged) => (
                judged.guess((session, who.key_id), now, intent.paying()),
                self.standing_guess(judged, session, intent, now),
            ),
            None => Default::default(),
        };
        self.begin_on(who, (Some(session), None), now, guessed)
            .await
    }

    /// The standing approvals and payee history a payment of `intent` will read, if the session's last
    /// judgement says its tool rules send it to one person.
    fn standing_guess(
        &self,
        judged: &breaker::LastJudged,
        session: Uuid,
        intent: &PaymentIntent,
        now: DateTime<Utc>,
    ) -> Option<paygent_store::StandingAsked> {
        let usd = self.prices.usd_value(&intent.money).ok()?;
        let paid = (intent.tool().as_str(), usd, &intent.args());
        judged.asks_one_person(session, paid).then(|| {
            let (since, limit) = context::history_window(now);
            paygent_store::StandingAsked {
                payee: intent.recipient.payee(),
                recipient: intent.recipient.as_str().to_owned(),
                since,
                limit,
            }
        })
    }

    /// Keeps the rules a payment of `session` was judged under, for the next one's guess.
    fn judged(&self, session: &SessionRecord, policy: &PolicyRecord) {
        if let Some(judged) = &self.judged {
            judged.judged(session, &policy.rules);
        }
    }

    async fn begin_on(
        &self,
        who: &Principal,
        (session, approval): (Option<Uuid>, Option<Uuid>),
        now: DateTime<Utc>,
        (windows, standing): Guessed,
    ) -> Result<paygent_store::WriteTx> {
        let about = paygent_store::About {
            session,
            default_policy: policies::default_policy_id(who.tenant_id),
            approval,
            windows,
            standing,
        };
        Ok(self
            .store
            .begin_about(who.tenant_id, who.key_id, now, about)
            .await?)
    }

    /// Fans out committed events; nobody listening is fine, since the outbox keeps them.
    fn publish(&self, events: Vec<Event>) {
        self.hub.publish(events);
    }
}

/// What a write's first round trip reads on a guess ([`paygent_store::About`]): the breaker's windows, and the
/// standing approvals and payee history.
type Guessed = (
    Vec<paygent_domain::velocity::Window>,
    Option<paygent_store::StandingAsked>,
);

fn require(cond: bool, why: &str) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(EngineError::Forbidden(why.to_owned()))
    }
}
