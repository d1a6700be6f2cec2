//! Live events. Every event is first durable in the outbox (written with its change); this module then fans
//! them out in order. One hub task per instance keeps a cursor per tenant and broadcasts each tenant's events
//! gap-free and in sequence: an event this instance's writers hand over ahead of an earlier one waits for it
//! briefly, and anything it has not seen (a commit on another instance, a handover that never came) it reads
//! back from the outbox. Subscribers do the same on their side, so a subscriber never misses an event
//! and never sees one twice.

use crate::keys::KnownKeys;
use crate::metrics::Metrics;
use crate::{EngineError, Paygent, Result};
use paygent_domain::Principal;
use paygent_domain::event::EventKind;
use paygent_store::events::Nudge;
use paygent_store::{Event, Store};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

/// How many events the broadcast keeps for slow subscribers before they lag and are cut off.
pub const LIVE_BUFFER: usize = 8192;
/// How often the hub compares its cursors with the database, catching nudges lost in a reconnect.
const BACKSTOP: Duration = Duration::from_secs(1);
const PAGE: i64 = 500;
/// How long the hub waits for this instance's writers to hand over an event missing from a sequence before it
/// reads it from the outbox.
const GAP_WAIT: Duration = Duration::from_millis(50);
/// Events of one tenant held back behind a gap at most; past it, the outbox is read at once.
const HELD_PER_TENANT: usize = 1024;
/// The least time between two background passes woken by events: under load, one pass per burst of commits
/// was one more query per write.
const PASS_GAP: Duration = Duration::from_millis(20);
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
    pub(crate) fn start(store: Store, metrics: Arc<Metrics>, keys: Arc<KnownKeys>) -> EventHub {
        let (input, rx) = mpsc::unbounded_channel();
        let live = broadcast::channel(LIVE_BUFFER).0;
        let owners = SessionOwners {
            store: store.clone(),
            known: Arc::default(),
        };
        let handover = Handover {
            live: live.clone(),
            metrics,
            keys,
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

/// Hands events to live subscribers, timing each from its commit; a revoked key is forgotten first, so it stops
/// working here no later than its open streams are told.
struct Handover {
    live: broadcast::Sender<Arc<LiveEvent>>,
    metrics: Arc<Metrics>,
    keys: Arc<KnownKeys>,
}

impl Handover {
    fn send(&self, event: Event) {
        if event.kind == EventKind::KeyRevoked
            && let Some(id) = event.payload["key_id"]
                .as_str()
                .and_then(|k| k.parse().ok())
        {
            self.keys.forget(id);
        }
        if let Some(at) = paygent_domain::time::parse(&event.created_at) {
            let lag = (chrono::Utc::now() - at).to_std().unwrap_or_default();
            self.metrics.fanned_out(lag);
        }
        let _ = self.live.send(Arc::new(LiveEvent::from(event)));
    }
}

async fn run_hub(store: Store, mut input: mpsc::UnboundedReceiver<Vec<Event>>, live: Handover) {
    let mut fanout = Fanout::new(store, live);
    // Start at each tenant's head: earlier events are for replay, not for live delivery.
    match fanout.store.event_heads().await {
        Ok(heads) => fanout.cursors.extend(heads),
        Err(e) => tracing::warn!(error = %e, "reading event heads; starting from the first event"),
    }
    let mut nudges = match fanout.store.event_nudges().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "LISTEN failed; other instances' events arrive by polling");
            None
        }
    };
    let mut backstop = tokio::time::interval(BACKSTOP);
    backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let gap_closes = fanout.gap_deadline;
        tokio::select! {
            batch = input.recv() => {
                let Some(batch) = batch else { return };
                for event in batch {
                    fanout.take(event).await;
                }
            }
            nudge = next_nudge(&mut nudges) => match nudge {
                Ok(Nudge::Tenant(tenant, seq)) if fanout.cursor(tenant) < seq => {
                    fanout.catch_up(tenant).await
                }
                Ok(Nudge::Tenant(..)) => {}
                Ok(Nudge::Resync) => fanout.resync().await,
                Err(e) => {
                    tracing::warn!(error = %e, "event LISTEN connection failed; polling until it returns");
                    tokio::time::sleep(BACKSTOP).await;
                }
            },
            _ = sleep_until(gap_closes) => fanout.close_gaps().await,
            _ = backstop.tick() => fanout.resync().await,
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

/// The hub's state: each tenant's last event handed over, and the events this instance committed that arrived
/// ahead of an earlier one. The writes of one group commit together and hand their events over in whatever
/// order their tasks wake, so a gap is usually closed by the next handover; only one still open after
/// [`GAP_WAIT`] is read back from the outbox (its writer's task may have been dropped after its commit).
struct Fanout {
    store: Store,
    live: Handover,
    cursors: HashMap<Uuid, i64>,
    held: HashMap<Uuid, BTreeMap<i64, Event>>,
    /// When to read the outbox for the gaps still open.
    gap_deadline: Option<tokio::time::Instant>,
}

impl Fanout {
    fn new(store: Store, live: Handover) -> Fanout {
        Fanout {
            store,
            live,
            cursors: HashMap::new(),
            held: HashMap::new(),
            gap_deadline: None,
        }
    }

    fn cursor(&self, tenant: Uuid) -> i64 {
        self.cursors.get(&tenant).copied().unwrap_or(0)
    }

    /// An event this instance committed: handed over in order, with those it held back that follow it.
    async fn take(&mut self, event: Event) {
        let tenant = event.tenant_id;
        let last = self.cursor(tenant);
        if event.seq <= last {
            return;
        }
        let held = self.held.entry(tenant).or_default();
        held.insert(event.seq, event);
        if held.len() > HELD_PER_TENANT {
            return self.catch_up(tenant).await;
        }
        let mut cursor = last;
        while let Some(next) = held.remove(&(cursor + 1)) {
            cursor = next.seq;
            self.live.send(next);
        }
        self.cursors.insert(tenant, cursor);
        self.settle(tenant);
    }

    /// Forgets what the tenant's cursor has passed, and sets when to read the outbox for the gaps left open.
    fn settle(&mut self, tenant: Uuid) {
        let last = self.cursor(tenant);
        if let Some(held) = self.held.get_mut(&tenant) {
            held.retain(|seq, _| *seq > last);
            if held.is_empty() {
                self.held.remove(&tenant);
            }
        }
        if self.held.is_empty() {
            self.gap_deadline = None;
        } else if self.gap_deadline.is_none() {
            self.gap_deadline = Some(tokio::time::Instant::now() + GAP_WAIT);
        }
    }

    /// Gaps that stayed open: read from the outbox, and if it cannot be read, tried again as the backstop would.
    async fn close_gaps(&mut self) {
        let tenants: Vec<Uuid> = self.held.keys().copied().collect();
        for tenant in tenants {
            self.catch_up(tenant).await;
        }
        self.gap_deadline = (!self.held.is_empty()).then(|| tokio::time::Instant::now() + BACKSTOP);
    }

    /// Broadcasts, in order, every event of `tenant` after the hub's cursor.
    async fn catch_up(&mut self, tenant: Uuid) {
        loop {
            let last = self.cursor(tenant);
            let page = match self.store.events_after(tenant, last, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, %tenant, "reading events to broadcast; will retry");
                    return;
                }
            };
            let Some(newest) = page.last().map(|e| e.seq) else {
                break;
            };
            for event in page {
                self.live.send(event);
            }
            self.cursors.insert(tenant, newest);
        }
        self.settle(tenant);
    }

    async fn resync(&mut self) {
        let Ok(heads) = self.store.event_heads().await else {
            return;
        };
        for (tenant, head) in heads {
            if self.cursor(tenant) < head {
                self.catch_up(tenant).await;
            }
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

    /// Runs `pass` as soon as this instance commits an event (a burst coalesced into one pass, and passes woken
    /// by events at least [`PASS_GAP`] apart, since each reads the database), and every `every` for other
    /// instances' events and retries, at once again while it answers that more is waiting, until the task is
    /// aborted or the hub closes.
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
                let last_pass = tokio::time::Instant::now();
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
                        tokio::time::sleep_until(last_pass + PASS_GAP).await;
                        while matches!(events.try_recv(), Ok(_) | Err(TryRecvError::Lagged(_))) {}
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A hub over a fresh SQLite file, and a subscriber to what it hands over.
    async fn fanout() -> (
        Fanout,
        broadcast::Receiver<Arc<LiveEvent>>,
        std::path::PathBuf,
    ) {
        let dir = std::env::temp_dir().join(format!("paygent-hub-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/paygent.db?mode=rwc", dir.display());
        let options = paygent_store::StoreOptions::default();
        let store = Store::connect(&url, &options).await.unwrap();
        let (live, rx) = broadcast::channel(16);
        let live = Handover {
            live,
            metrics: Arc::default(),
            keys: Arc::default(),
        };
        (Fanout::new(store, live), rx, dir)
    }

    /// Commits `n` events of the tenant, one write each, and returns them as their writers would hand them over.
    async fn committed(store: &Store, tenant: Uuid, n: usize) -> Vec<Event> {
        let now = chrono::Utc::now();
        store.ensure_tenant(tenant, "t", now).await.unwrap();
        let mut events = Vec::new();
        for _ in 0..n {
            let mut tx = store.begin(tenant, now).await.unwrap();
            let payload = json!({"id": Uuid::new_v4()});
            tx.event(EventKind::KillSwitch, None, payload)
                .await
                .unwrap();
            events.extend(tx.commit().await.unwrap());
        }
        events
    }

    fn seqs(rx: &mut broadcast::Receiver<Arc<LiveEvent>>) -> Vec<i64> {
        std::iter::from_fn(|| rx.try_recv().ok().map(|e| e.seq)).collect()
    }

    #[tokio::test]
    async fn events_handed_over_out_of_order_go_out_in_order_without_reading_the_outbox() {
        let (mut hub, mut rx, dir) = fanout().await;
        let tenant = Uuid::new_v4();
        let event = |seq| Event {
            tenant_id: tenant,
            seq,
            kind: EventKind::KillSwitch,
            session_id: None,
            payload: json!({}),
            created_at: paygent_domain::time::format(chrono::Utc::now()),
        };
        // Neither is in the outbox: only the handovers can bring them.
        hub.take(event(2)).await;
        assert_eq!(seqs(&mut rx), Vec::<i64>::new(), "2 waits for 1");
        assert!(hub.gap_deadline.is_some());
        hub.take(event(1)).await;
        hub.take(event(1)).await;
        assert_eq!(seqs(&mut rx), vec![1, 2], "once each, in order");
        assert!(hub.gap_deadline.is_none() && hub.held.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_gap_no_handover_closes_is_read_from_the_outbox() {
        let (mut hub, mut rx, dir) = fanout().await;
        let tenant = Uuid::new_v4();
        let events = committed(&hub.store, tenant, 3).await;
        hub.cursors.insert(tenant, 0);
        // The first write's task was dropped after its commit: only the later two are handed over.
        for event in events.into_iter().skip(1) {
            hub.take(event).await;
        }
        assert_eq!(seqs(&mut rx), Vec::<i64>::new());
        hub.close_gaps().await;
        assert_eq!(seqs(&mut rx), vec![1, 2, 3]);
        assert!(hub.gap_deadline.is_none() && hub.held.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
