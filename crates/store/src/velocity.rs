//! The circuit breaker's marks: each scope's running totals at its first and last counted payment of a second.

use crate::db::{placeholders, query};
use crate::{Result, WriteTx, decimal, time};
use chrono::{DateTime, Utc};
use paygent_domain::velocity::{MAX_WINDOW_SECONDS, Mark, Recent, Window};
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use uuid::Uuid;

/// The most marks kept of one scope: over an hour of a scope that pays every second.
const MOST_PER_SCOPE: usize = 4096;
/// The most marks kept in all (a few tens of megabytes); past it, whole scopes are forgotten.
const MOST_MARKS: usize = 262_144;

/// The breaker's recent marks of the scopes SQLite's one writer wrote, so a payment's windows are read without
/// the database once the marks kept reach back to their start. It lives with the writer, changes only under it
/// (so in the order of the writes), keeps a write's marks only once its savepoint is released, and is forgotten
/// when a batch fails or another connection writes the file. PostgreSQL, where other instances write, keeps
/// only what a group of writes under the tenant's lock knows ([`GroupWindows`], [`Carried`]).
#[derive(Debug, Default)]
pub(crate) struct MarkCache {
    /// By scope, with the scope's tenant: a window is read for its tenant only, as the database reads it.
    scopes: HashMap<String, (Uuid, Recent)>,
    marks: usize,
}

impl MarkCache {
    /// A window's first mark from `after` on and its scope's last, if the marks kept reach back to `after`.
    fn window(&self, tenant: Uuid, scope: &str, after: DateTime<Utc>) -> Option<Found> {
        let (_, recent) = self.scopes.get(scope).filter(|(t, _)| *t == tenant)?;
        Some((recent.first_from(after)?, recent.last().copied()))
    }

    /// Keeps a scope's newest mark, forgetting marks no window reaches and, past the bounds, other scopes.
    pub(crate) fn keep(&mut self, tenant: Uuid, scope: String, mark: Mark) {
        let reach = chrono::Duration::seconds(i64::from(MAX_WINDOW_SECONDS) + 1);
        let oldest = mark.at.checked_sub_signed(reach).unwrap_or(mark.at);
        let kept =
            (self.scopes.entry(scope.clone())).or_insert_with(|| (tenant, Recent::default()));
        if kept.0 != tenant {
            self.marks -= kept.1.len();
            *kept = (tenant, Recent::default());
        }
        let before = kept.1.len();
        kept.1.keep(mark, oldest, MOST_PER_SCOPE);
        self.marks = self.marks + kept.1.len() - before;
        while self.marks > MOST_MARKS {
            let Some(other) = self.scopes.keys().find(|s| **s != scope).cloned() else {
                break;
            };
            let gone = self.scopes.remove(&other).map_or(0, |(_, r)| r.len());
            self.marks -= gone;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.scopes.clear();
        self.marks = 0;
    }
}

/// The most windows one group keeps: a window per rule and identical payments for each write of a group.
const MOST_GROUP_WINDOWS: usize = 64 * MOST_WINDOWS;

/// The most windows a group hands to the tenant's next group: those its writes asked for, a few seconds' worth.
const MOST_CARRIED: usize = 4 * MOST_WINDOWS;

/// PostgreSQL: the breaker's windows as one group of a tenant's writes read them, followed by the marks its
/// writes kept. While the group holds the tenant's row lock, no other writer (in this instance or another) can
/// leave a mark of the tenant; windows start on whole seconds, so the writes of a group nearly always ask for the
/// same ones, and all but the first are answered here. A write's reads and marks join it only once the write
/// keeps its savepoint. When the group commits, the windows its writes asked for go to the tenant's next group
/// ([`Carried`]).
#[derive(Debug, Default)]
pub(crate) struct GroupWindows(HashMap<Window, Known>);

/// A window as the group knows it, and whether one of the group's writes asked for it.
#[derive(Debug, Clone, Copy)]
struct Known {
    found: Found,
    asked: bool,
}

/// A window as read: its first mark from its start on, and its scope's last.
pub(crate) type Found = (Option<Mark>, Option<Mark>);

impl GroupWindows {
    /// The windows, if the group knows every one of them.
    pub(crate) fn known(&mut self, wanted: &[Window]) -> Option<Vec<Found>> {
        let found: Vec<Found> = (wanted.iter())
            .map(|w| self.0.get(w).map(|k| k.found))
            .collect::<Option<_>>()?;
        for w in wanted {
            self.0.entry(w.clone()).and_modify(|k| k.asked = true);
        }
        Some(found)
    }

    /// Whether the group knows every one of `wanted`.
    pub(crate) fn knows(&self, wanted: &[Window]) -> bool {
        wanted.iter().all(|w| self.0.contains_key(w))
    }

    /// A write of the group kept its savepoint: the windows it read before it left any mark, then its marks,
    /// which end the windows of their scopes. Only a kept write's: the lock it took is the group's from then on,
    /// where a dropped write's savepoint, rolled back, may have taken the only hold of the lock with it.
    pub(crate) fn kept(&mut self, seen: Vec<(Window, Found)>, marks: &[(String, Mark)]) {
        if self.0.len() + seen.len() <= MOST_GROUP_WINDOWS {
            let asked = |(w, found)| (w, Known { found, asked: true });
            self.0.extend(seen.into_iter().map(asked));
        }
        self.marked(marks);
    }

    fn marked(&mut self, marks: &[(String, Mark)]) {
        for ((scope, after), window) in &mut self.0 {
            for (_, m) in marks.iter().filter(|(s, _)| s == scope) {
                window.found = paygent_domain::velocity::marked(*after, window.found.0, *m);
            }
        }
    }

    /// What the group hands to the tenant's next one: the windows its writes asked for (older seconds' windows,
    /// which no write asks for again, are left behind), none past [`MOST_CARRIED`].
    fn asked(mut self) -> Option<GroupWindows> {
        self.0.retain(|_, k| std::mem::take(&mut k.asked));
        (!self.0.is_empty() && self.0.len() <= MOST_CARRIED).then_some(self)
    }
}

/// PostgreSQL: the windows a committed group of a tenant's writes knew, for the tenant's next group in this
/// instance. They hold only while nobody else has written marks since, and every write that leaves marks appends
/// to the tenant's audit chain ([`crate::WriteTx::commit`] refuses one that does not): so they are taken only
/// if the chain's head, read with the next group's lock, is still the one the group left.
#[derive(Debug)]
pub(crate) struct Carried {
    head: String,
    windows: GroupWindows,
}

impl Carried {
    /// What a group committed with the audit chain at `head` hands on, if anything.
    pub(crate) fn new(head: String, windows: GroupWindows) -> Option<Carried> {
        Some(Carried {
            head,
            windows: windows.asked()?,
        })
    }

    /// Whether the carried windows know all of `wanted` (before the lock: they may not hold).
    pub(crate) fn knows(&self, wanted: &[Window]) -> bool {
        self.windows.knows(wanted)
    }

    /// The windows, if the chain's head read with the lock is the one they were carried with.
    pub(crate) fn valid_at(self, head: &str) -> Option<GroupWindows> {
        (self.head == head).then_some(self.windows)
    }
}

/// PostgreSQL: the marks the writes of one group kept, by key (scope, second, place), as last grown: written once
/// as the group commits, as a group of payments in one second grows the same few marks. Until then every read of
/// windows in the group is answered with them laid over what the database has ([`laid_over`]).
#[derive(Debug, Default)]
pub(crate) struct GroupMarks(BTreeMap<(String, DateTime<Utc>, i64), Mark>);

impl GroupMarks {
    pub(crate) fn add(&mut self, marks: &[(String, Mark)]) {
        for (scope, m) in marks {
            self.0.insert((scope.clone(), m.at, m.seq), *m);
        }
    }

    /// The marks, each scope's in the order they were left.
    pub(crate) fn listed(&self) -> impl Iterator<Item = (&str, Mark)> {
        self.0.iter().map(|((scope, _, _), m)| (scope.as_str(), *m))
    }

    /// The statement that writes them, to go in a message of several (empty when there are none).
    pub(crate) fn statement(
        &self,
        tenant: Uuid,
        prepared: &mut std::collections::HashSet<String>,
    ) -> Result<String> {
        let rows = (self.listed())
            .map(|(scope, m)| {
                serde_json::json!([
                    scope,
                    m.seq,
                    paygent_domain::time::format(m.at),
                    m.usd_total.to_string(),
                    m.usd.to_string(),
                    m.last_seq,
                    m.last_usd_total.to_string()
                ])
            })
            .collect();
        crate::pg::listed(&MARKS_LISTED, tenant, rows, prepared)
    }
}

/// PostgreSQL: marks in a statement of one shape however many: `$2` a JSON array of `[scope, seq, at, usd_total,
/// usd, last_seq, last_usd_total]`.
static MARKS_LISTED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO velocity_marks (tenant_id, scope, seq, at, usd_total, usd, last_seq, last_usd_total) \
         SELECT $1, v->>0, CAST(v->>1 AS BIGINT), v->>2, v->>3, v->>4, CAST(v->>5 AS BIGINT), v->>6 \
         FROM jsonb_array_elements(CAST($2 AS jsonb)) AS v {GROWN}"
    )
});

/// A mark already there is one grown: only its last totals change.
const GROWN: &str = "ON CONFLICT (scope, at, seq) DO UPDATE SET last_seq = excluded.last_seq, \
                     last_usd_total = excluded.last_usd_total";

/// Windows read from the database, as they are once `marks` (not in it yet, or some already) are left: each
/// scope's in the order they were left.
pub(crate) fn laid_over(wanted: &[Window], found: &mut [Found], marks: &[(&str, Mark)]) {
    for ((scope, after), window) in wanted.iter().zip(found.iter_mut()) {
        for (_, m) in marks.iter().filter(|(s, _)| s == scope) {
            *window = paygent_domain::velocity::marked(*after, window.0, *m);
        }
    }
}

fn mark(row: &crate::Row) -> Result<Mark> {
    Ok(Mark {
        seq: row.get(2)?,
        usd_total: decimal(&row.get::<String>(3)?)?,
        usd: decimal(&row.get::<String>(4)?)?,
        at: time(&row.get::<String>(5)?)?,
        last_seq: row.get(6)?,
        last_usd_total: decimal(&row.get::<String>(7)?)?,
    })
}

/// The most windows one payment reads (and scopes it marks): every rule's scope and its identical payments.
const MOST_WINDOWS: usize = 2 * paygent_domain::velocity::MAX_VELOCITY_RULES;

/// A statement for each number of windows (or marks) up to `MOST_WINDOWS`, made once: the guard's transaction
/// holds the tenant's lock, and building them there on every payment showed in its profile.
fn statements(make: fn(usize) -> String) -> Vec<String> {
    (0..=MOST_WINDOWS).map(make).collect()
}

static WINDOWS: LazyLock<Vec<String>> = LazyLock::new(|| statements(windows_sql));
static MARKS: LazyLock<Vec<String>> = LazyLock::new(|| statements(marks_sql));

/// A mark's columns, then the rest of a lookup of a scope's marks (`$1` the tenant). A mark an older release wrote
/// (before migration 32) has no last totals: they are its first payment's.
const COLUMNS: &str = "seq, usd_total, usd, at, COALESCE(last_seq, seq) AS last_seq, \
                       COALESCE(last_usd_total, usd_total) AS last_usd_total FROM velocity_marks \
                       WHERE tenant_id = $1 AND scope";

/// PostgreSQL: the windows' marks in a statement of one shape however many windows, for the round trip that
/// takes the tenant's lock (prepared once per connection): `$2` is a JSON array of `[scope, after]`, and each
/// window's two lookups are as [`windows_sql`]'s.
pub(crate) static WINDOWS_LISTED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT w.i - 1, s.* FROM jsonb_array_elements(CAST($2 AS jsonb)) WITH ORDINALITY AS w(v, i) \
         CROSS JOIN LATERAL ((SELECT CAST(0 AS BIGINT) AS side, {COLUMNS} = w.v->>0 AND at >= w.v->>1 \
         ORDER BY at, seq LIMIT 1) UNION ALL (SELECT CAST(1 AS BIGINT), {COLUMNS} = w.v->>0 \
         ORDER BY at DESC, seq DESC LIMIT 1)) s"
    )
});

/// `wanted` as [`WINDOWS_LISTED`] takes it.
pub(crate) fn listed(wanted: &[Window]) -> String {
    let list: Vec<(&str, String)> = (wanted.iter())
        .map(|(scope, after)| (scope.as_str(), paygent_domain::time::format(*after)))
        .collect();
    serde_json::to_string(&list).expect("strings serialize")
}

/// Two lookups of the key (scope, time, place) per window: its first mark from `$after` on, its scope's last.
fn windows_sql(windows: usize) -> String {
    (0..windows)
        .map(|i| {
            let (scope, after) = (2 * i + 2, 2 * i + 3);
            format!(
                "SELECT * FROM (SELECT CAST({i} AS BIGINT) AS w, CAST(0 AS BIGINT) AS side, {COLUMNS} = ${scope} \
                 AND at >= ${after} ORDER BY at, seq LIMIT 1) f{i} UNION ALL \
                 SELECT * FROM (SELECT CAST({i} AS BIGINT) AS w, CAST(1 AS BIGINT) AS side, {COLUMNS} = ${scope} \
                 ORDER BY at DESC, seq DESC LIMIT 1) l{i}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// New marks, and marks grown by a payment in their second (the same key: only the last totals change).
fn marks_sql(marks: usize) -> String {
    format!(
        "INSERT INTO velocity_marks (tenant_id, scope, seq, at, usd_total, usd, last_seq, last_usd_total) \
         VALUES {} {GROWN}",
        placeholders(1, marks, 8)
    )
}

/// The statement of `count` windows or marks.
fn statement(made: &'static [String], count: usize) -> Result<&'static str> {
    made.get(count).map(String::as_str).ok_or_else(|| {
        crate::StoreError::Corrupt(format!(
            "{count} velocity windows, more than a policy may set"
        ))
    })
}

/// Each window's first mark from its start on (none when the window is empty) and its scope's last mark. On
/// PostgreSQL from the read with the lock when it read exactly these, or from what the write's group knows of
/// them ([`GroupWindows`]); on SQLite from the marks the writer keeps where they reach back far enough; the
/// rest in one statement of two lookups per window, whatever the number of payments in them (on PostgreSQL with
/// the marks its group has not written yet laid over, [`GroupMarks`]).
pub async fn windows(
    tx: &mut WriteTx,
    wanted: &[Window],
) -> Result<Vec<(Option<Mark>, Option<Mark>)>> {
    if let Some(known) = tx.pg().and_then(|pg| pg.known_windows(wanted)) {
        return Ok(known);
    }
    let mut found = read(tx, wanted).await?;
    if let Some(pg) = tx.pg() {
        pg.lay_marks_over(wanted, &mut found);
        pg.saw_windows(wanted, &found);
    }
    Ok(found)
}

/// The windows from the marks SQLite's writer keeps where they reach back far enough, the rest from the database.
async fn read(tx: &mut WriteTx, wanted: &[Window]) -> Result<Vec<Found>> {
    let tenant = tx.tenant_id();
    let kept = tx.lite().and_then(|lite| lite.marks());
    let mut found: Vec<_> = wanted
        .iter()
        .map(|(scope, after)| kept.and_then(|k| k.window(tenant, scope, *after)))
        .collect();
    let unknown: Vec<usize> = (0..wanted.len()).filter(|&i| found[i].is_none()).collect();
    let read = read_windows(tx, unknown.iter().map(|&i| &wanted[i])).await?;
    for (i, window) in unknown.into_iter().zip(read) {
        found[i] = Some(window);
    }
    Ok(found.into_iter().map(Option::unwrap_or_default).collect())
}

/// The windows' marks as the database has them, in one statement.
async fn read_windows(
    tx: &mut WriteTx,
    wanted: impl ExactSizeIterator<Item = &Window>,
) -> Result<Vec<Found>> {
    let count = wanted.len();
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut q = query(statement(&WINDOWS, count)?).bind(tx.tenant_id().to_string());
    for (scope, after) in wanted {
        q = q
            .bind(scope.clone())
            .bind(paygent_domain::time::format(*after));
    }
    placed(&q.fetch_all(tx.conn()).await?, count)
}

/// The rows of a windows' read, each in its window: a first mark or a last.
pub(crate) fn placed(rows: &[crate::Row], count: usize) -> Result<Vec<Found>> {
    let mut found = vec![(None, None); count];
    for row in rows {
        let window = usize::try_from(row.get::<i64>(0)?)
            .ok()
            .and_then(|i| found.get_mut(i))
            .ok_or_else(|| crate::StoreError::Corrupt("a window that was not asked for".into()))?;
        match row.get::<i64>(1)? {
            0 => window.0 = Some(mark(row)?),
            _ => window.1 = Some(mark(row)?),
        }
    }
    Ok(found)
}

/// Leaves a payment's mark in each of its scopes (a new one, or its second's grown): on SQLite in one statement,
/// on PostgreSQL with the write's group ([`GroupMarks`]). The write must also append to the audit chain, as a
/// payment's does.
pub async fn leave(tx: &mut WriteTx, marks: &[(String, Mark)]) -> Result<()> {
    if marks.is_empty() {
        return Ok(());
    }
    tx.leaves_marks();
    let tenant = tx.tenant_id();
    if let Some(lite) = tx.lite() {
        lite.stage_marks(tenant, marks);
    }
    if let Some(pg) = tx.pg() {
        // Written with its group, if it keeps them ([`GroupMarks`]).
        pg.stage_marks(marks);
        return Ok(());
    }
    let mut q = query(statement(&MARKS, marks.len())?);
    let tenant = tx.tenant_id().to_string();
    for (scope, m) in marks {
        q = q
            .bind(tenant.clone())
            .bind(scope.clone())
            .bind(m.seq)
            .bind(paygent_domain::time::format(m.at))
            .bind(m.usd_total.to_string())
            .bind(m.usd.to_string())
            .bind(m.last_seq)
            .bind(m.last_usd_total.to_string());
    }
    tx.defer("velocity_marks", q, marks.len() as u64).await
}

/// Deletes up to `limit` marks of the scope after `after` (in key order, the first scope when `after` is
/// empty) from before `before`; returns that scope, or none when no scope follows, and how many marks went.
/// Pruning walks the scopes by the key (scope, time, place), so no index by age costs every mark a write; a
/// scope whose oldest mark is young enough is passed over with that one read.
pub async fn prune(
    store: &crate::Store,
    after: &str,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Option<(String, u64)>> {
    let next =
        query("SELECT scope, at FROM velocity_marks WHERE scope > $1 ORDER BY scope, at LIMIT 1")
            .bind(after.to_owned())
            .fetch_all(store.reader())
            .await?;
    let Some(row) = next.first() else {
        return Ok(None);
    };
    let (scope, oldest) = (row.get::<String>(0)?, time(&row.get::<String>(1)?)?);
    if oldest >= before {
        return Ok(Some((scope, 0)));
    }
    let pruned = query(
        "DELETE FROM velocity_marks WHERE (scope, at, seq) IN \
         (SELECT scope, at, seq FROM velocity_marks WHERE scope = $1 AND at < $2 ORDER BY at LIMIT $3)",
    )
    .bind(scope.clone())
    .bind(paygent_domain::time::format(before))
    .bind(limit)
    .execute(store.writer())
    .await?;
    Ok(Some((scope, pruned)))
}
