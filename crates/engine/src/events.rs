//! Live events. Every event is first durable in the outbox (written with its change); this module then fans
//! them out in order. One hub task per instance keeps a cursor per tenant and broadcasts each tenant's events
//! gap-free and in sequence: anything it has not seen (an out-of-order publish, a commit on another instance)
//! it reads back from the outbox. Subscribers do the same on their side, so a subscriber never misses an event
//! and never sees one twice.

use crate::metrics::Metrics;
use crate::{EngineError, Paygent, Result};
use paygent_domain::Principal;
use paygent_domain::event::EventKind;
use paygent_store::events::Nudge;
use paygent_store::{Event, Store};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

/// How many events the broadcast keeps for slow subscribers before they lag and are cut off.
pub const LIVE_BUFFER: usize = 8192;
/// How often the hub compares its cursors with the database, catching nudges lost in a reconnect.
const BACKSTOP: Duration = Duration::from_secs(1);
const PAGE: i64 = 500;
/// How many sessions' owners the hub remembers before it starts afresh.
const OWNERS_KEPT: usize = 65_536;

/// The fan-out side of the outbox.
#[derive(Clone)]
pub(crate) struct EventHub {
    input: mpsc::UnboundedSender<Vec<Event>>,
    live: broadcast::Sender<Arc<LiveEvent>>,
    owners: SessionOwners,
}

/// Which key created each session, for deciding which agent may read an event. A session's creator never
/// changes, so what is remembered stays true; subscribers share one memory, so a thousand agents' streams read
/// a new session's owner once.
#[derive(Clone)]
struct SessionOwners {
    store: Store,
    known: Arc<std::sync::Mutex<HashMap<Uuid, Uuid>>>,
}

impl SessionOwners {
    async fn owner(
        &self,
        tenant_id: Uuid,
        session_id: Uuid,
    ) -> Result<Option<Uuid>, SubscriptionEnd> {
        if let Some(owner) = self.known.lock().expect("owners").get(&session_id) {
            return Ok(Some(*owner));
        }
        let Some(session) =
            paygent_store::sessions::get(self.store.reader(), tenant_id, session_id).await?
        else {
            return Ok(None);
        };
        let mut known = self.known.lock().expect("owners");
        if known.len() >= OWNERS_KEPT {
            known.clear();
        }
        known.insert(session_id, session.created_by);
        Ok(Some(session.created_by))
    }
}

impl EventHub {
    /// Starts the hub's task. It ends when the last engine handle is dropped.
    pub(crate) fn start(store: Store, metrics: Arc<Metrics>) -> EventHub {
        let (input, rx) = mpsc::unbounded_channel();
        let live = broadcast::channel(LIVE_BUFFER).0;
        let owners = SessionOwners {
            store: store.clone(),
            known: Arc::default(),
        };
        let handover = Handover {
            live: live.clone(),
            metrics,
        };
        tokio::spawn(run_hub(store, rx, handover));
        EventHub {
            input,
            live,
            owners,
        }
    }

    /// Every event as it is handed to live subscribers, whoever may read it: for the engine's own work.
    pub(crate) fn every_event(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.live.subscribe()
    }

    /// Hands committed events to the hub; never blocks a writer.
    pub(crate) fn publish(&self, events: Vec<Event>) {
        if !events.is_empty() {
            let _ = self.input.send(events);
        }
    }
}

/// Hands events to live subscribers, timing each from its commit.
struct Handover {
    live: broadcast::Sender<Arc<LiveEvent>>,
    metrics: Arc<Metrics>,
}

impl Handover {
    fn send(&self, event: Event) {
        if let Some(at) = paygent_domain::time::parse(&event.created_at) {
            let lag = (chrono::Utc::now() - at).to_std().unwrap_or_default();
            self.metrics.fanned_out(lag);
        }
        let _ = self.live.send(Arc::new(LiveEvent::from(event)));
    }
}

async fn run_hub(store: Store, mut input: mpsc::UnboundedReceiver<Vec<Event>>, live: Handover) {
    let mut cursors: HashMap<Uuid, i64> = HashMap::new();
    // Start at each tenant's head: earlier events are for replay, not for live delivery.
    match store.event_heads().await {
        Ok(heads) => cursors.extend(heads),
        Err(e) => tracing::warn!(error = %e, "reading event heads; starting from the first event"),
    }
    let mut nudges = match store.event_nudges().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "LISTEN failed; other instances' events arrive by polling");
            None
        }
    };
    let mut backstop = tokio::time::interval(BACKSTOP);
    backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = input.recv() => {
                let Some(batch) = batch else { return };
                for event in batch {
                    let tenant = event.tenant_id;
                    let last = cursors.get(&tenant).copied().unwrap_or(0);
                    if event.seq == last + 1 {
                        cursors.insert(tenant, event.seq);
                        live.send(event);
                    } else if event.seq > last {
                        catch_up(&store, &live, &mut cursors, tenant).await;
                    }
                }
            }
            nudge = next_nudge(&mut nudges) => match nudge {
                // Our own commits arrive here too, usually after the hub has already sent them.
                Ok(Nudge::Tenant(tenant, seq)) if cursors.get(&tenant).copied().unwrap_or(0) < seq => {
                    catch_up(&store, &live, &mut cursors, tenant).await
                }
                Ok(Nudge::Tenant(..)) => {}
                Ok(Nudge::Resync) => resync(&store, &live, &mut cursors).await,
                Err(e) => {
                    tracing::warn!(error = %e, "event LISTEN connection failed; polling until it returns");
                    tokio::time::sleep(BACKSTOP).await;
                }
            },
            _ = backstop.tick() => resync(&store, &live, &mut cursors).await,
        }
    }
}

async fn next_nudge(
    nudges: &mut Option<paygent_store::events::EventNudges>,
) -> paygent_store::Result<Nudge> {
    match nudges {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
}

/// Broadcasts, in order, every event of `tenant` after the hub's cursor.
async fn catch_up(store: &Store, live: &Handover, cursors: &mut HashMap<Uuid, i64>, tenant: Uuid) {
    loop {
        let last = cursors.get(&tenant).copied().unwrap_or(0);
        let page = match store.events_after(tenant, last, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, %tenant, "reading events to broadcast; will retry");
                return;
            }
        };
        let Some(newest) = page.last().map(|e| e.seq) else {
            return;
        };
        for event in page {
            live.send(event);
        }
        cursors.insert(tenant, newest);
    }
}

async fn resync(store: &Store, live: &Handover, cursors: &mut HashMap<Uuid, i64>) {
    let Ok(heads) = store.event_heads().await else {
        return;
    };
    for (tenant, head) in heads {
        if cursors.get(&tenant).copied().unwrap_or(0) < head {
            catch_up(store, live, cursors, tenant).await;
        }
    }
}

/// An event on its way to subscribers, with its wire form serialized once for all of them.
#[derive(Debug)]
pub struct LiveEvent {
    pub event: Event,
    wire: OnceLock<String>,
}

impl From<Event> for LiveEvent {
    fn from(event: Event) -> Self {
        LiveEvent {
            event,
            wire: OnceLock::new(),
        }
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl LiveEvent {
    /// The JSON clients receive: `{type, seq, session_id, at, data}`.
    pub fn wire(&self) -> &str {
        self.wire.get_or_init(|| {
            let e = &self.event;
            serde_json::json!({"type": e.kind, "seq": e.seq, "session_id": e.session_id, "at": e.created_at,
                "data": e.payload})
            .to_string()
        })
    }
}

/// Which of a tenant's events a subscriber wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub session_id: Option<Uuid>,
    /// Event types; empty means all.
    pub types: Vec<EventKind>,
}

impl EventFilter {
    fn wants(&self, e: &Event) -> bool {
        self.session_id.is_none_or(|s| e.session_id == Some(s))
            && (self.types.is_empty() || self.types.contains(&e.kind))
    }
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionEnd {
    #[error("the subscriber fell more than {LIVE_BUFFER} events behind; reconnect with after_seq")]
    Lagged,
    #[error("the event stream closed")]
    Closed,
    #[error("the key was revoked or has expired")]
    Revoked,
    #[error(transparent)]
    Store(#[from] paygent_store::StoreError),
}

/// One subscriber's ordered, gap-free view of its tenant's events: a replay from the outbox, then live. It
/// carries only what its reader could read over the API, and ends when the reader's key is revoked or expires.
pub struct Subscription {
    store: Store,
    tenant_id: Uuid,
    reader: Principal,
    owners: SessionOwners,
    /// When the reader's key expires.
    expires: Option<tokio::time::Instant>,
    filter: EventFilter,
    last_seq: i64,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    backlog: VecDeque<Arc<LiveEvent>>,
    /// True while the outbox may hold events after `last_seq` that the live stream will not bring.
    replaying: bool,
}

impl Subscription {
    /// The sequence number of the last event this subscription passed (matching the filter or not).
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// The next event that matches the filter and that the reader may read.
    pub async fn next(&mut self) -> Result<Arc<LiveEvent>, SubscriptionEnd> {
        loop {
            let event = match self.expires {
                Some(at) => tokio::select! {
                    event = self.next_in_order() => event?,
                    _ = tokio::time::sleep_until(at) => return Err(SubscriptionEnd::Revoked),
                },
                None => self.next_in_order().await?,
            };
            if event.kind == EventKind::KeyRevoked
                && event.payload["key_id"].as_str() == Some(&self.reader.key_id.to_string())
            {
                return Err(SubscriptionEnd::Revoked);
            }
            if self.filter.wants(&event) && self.may_read(&event).await? {
                return Ok(event);
            }
        }
    }

    /// Whether the reader could read what the event says: people the tenant's (keys and webhooks for admins only), an agent
    /// its own sessions' and the emergency stop.
    async fn may_read(&self, event: &Event) -> Result<bool, SubscriptionEnd> {
        if matches!(
            event.kind,
            EventKind::KeyRevoked | EventKind::WebhookDisabled
        ) {
            return Ok(self.reader.is_admin());
        }
        if self.reader.can_decide() {
            return Ok(true);
        }
        match event.session_id {
            None => Ok(event.kind == EventKind::KillSwitch),
            Some(session_id) => Ok(
                self.owners.owner(self.tenant_id, session_id).await? == Some(self.reader.key_id)
            ),
        }
    }

    /// The tenant's next event, in sequence, whoever may read it.
    async fn next_in_order(&mut self) -> Result<Arc<LiveEvent>, SubscriptionEnd> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.last_seq = event.seq;
                return Ok(event);
            }
            if self.replaying {
                let page = self
                    .store
                    .events_after(self.tenant_id, self.last_seq, PAGE)
                    .await?;
                self.replaying = page.len() as i64 == PAGE;
                self.backlog
                    .extend(page.into_iter().map(|e| Arc::new(LiveEvent::from(e))));
                continue;
            }
            let event = match self.live.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(SubscriptionEnd::Lagged),
                Err(broadcast::error::RecvError::Closed) => return Err(SubscriptionEnd::Closed),
            };
            if event.tenant_id != self.tenant_id || event.seq <= self.last_seq {
                continue;
            }
            if event.seq > self.last_seq + 1 {
                // Committed but not yet seen here: read the gap (this event included) from the outbox.
                self.replaying = true;
                continue;
            }
            self.last_seq = event.seq;
            return Ok(event);
        }
    }
}

impl Paygent {
    /// Subscribes to the caller's tenant's events: those after `after_seq` first, from the outbox, then live.
    /// Without `after_seq`, only events committed from now on. Asking for events already pruned is refused, so
    /// the client knows to reload its state from the REST API.
    pub async fn subscribe_events(
        &self,
        who: &Principal,
        filter: EventFilter,
        after_seq: Option<i64>,
    ) -> Result<Subscription> {
        // Subscribe to live events before reading the outbox, so nothing falls between the two.
        let live = self.hub.live.subscribe();
        let (first, head) = self.store.event_range(who.tenant_id).await?;
        let last_seq = match after_seq {
            None => head,
            Some(n) if n < 0 => {
                return Err(EngineError::Invalid(
                    "after_seq must not be negative".into(),
                ));
            }
            Some(n) => {
                let oldest_needed = n + 1;
                let pruned = match first {
                    Some(first) => first > oldest_needed,
                    None => head > n,
                };
                if pruned {
                    return Err(EngineError::Gone(format!(
                        "events after {n} are no longer kept; reload state from the REST API and \
                         subscribe from seq {head}"
                    )));
                }
                n
            }
        };
        // Checked after the head is read: a revocation that commits later is an event this stream will carry.
        let now = self.now();
        let key = self
            .store
            .key_by_id(who.key_id, now)
            .await?
            .ok_or(EngineError::Unauthenticated)?;
        let expires = key
            .expires_at
            .map(|at| tokio::time::Instant::now() + (at - now).to_std().unwrap_or_default());
        Ok(Subscription {
            store: self.store.clone(),
            tenant_id: who.tenant_id,
            reader: who.clone(),
            owners: self.hub.owners.clone(),
            expires,
            filter,
            last_seq,
            live,
            backlog: VecDeque::new(),
            replaying: last_seq < head,
        })
    }

    /// Runs `pass` as soon as this instance commits an event (a burst coalesced into one pass), and every
    /// `every` for other instances' events and retries, at once again while it answers that more is waiting,
    /// until the task is aborted or the hub closes.
    pub(crate) fn spawn_passes<F, Fut>(
        &self,
        every: Duration,
        what: &'static str,
        pass: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Paygent) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<bool>> + Send,
    {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let paygent = self.clone();
        let mut events = self.hub.every_event();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                match pass(paygent.clone()).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "{what} failed; retrying"),
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    woken = events.recv() => {
                        if matches!(woken, Err(RecvError::Closed)) {
                            return;
                        }
                        while matches!(events.try_recv(), Ok(_) | Err(TryRecvError::Lagged(_))) {}
                    }
                }
            }
        })
    }
}
