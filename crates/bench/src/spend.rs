//! Scenario 15 (issue 22): the spend picture (`GET /spend`) with a million payments stored, beside the same
//! hourly totals summed straight from the payments table, in one run.

use crate::{Measurement, Seeder, Target};
use anyhow::Context;
use chrono::{DateTime, Duration as Span, Utc};
use paygent_domain::Decimal;
use paygent_domain::spend::Spent;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Who pays in the seeded tenant: agents, each with sessions, paying a set of payees.
const AGENTS: usize = 10;
const SESSIONS_PER_AGENT: usize = 5;
const PAYEES: usize = 200;
/// Payments written per statement.
const BATCH: usize = 500;

/// One seeded payment.
struct Seeded {
    id: uuid::Uuid,
    agent: uuid::Uuid,
    session: uuid::Uuid,
    payee: String,
    usd: Decimal,
    at: DateTime<Utc>,
}

/// Rollup rows by (owner, bucket, payee).
type Rollups = HashMap<(String, String, String), (Decimal, i64)>;

/// `n` payments of a new tenant's agents spread evenly over the last 30 days, stored with the rollups the guard
/// would have written for them; then `reads` reads of the tenant's, an agent's and a session's picture, and as
/// many of the hourly totals summed from payments.
pub async fn spend_picture(
    t: &Target,
    database_url: &str,
    n: usize,
    reads: usize,
) -> anyhow::Result<Vec<Measurement>> {
    let tenant = t
        .post(&t.admin, "/tenants", json!({"name": "bench spend"}))
        .await?;
    let admin = tenant["admin_key"]["token"]
        .as_str()
        .context("admin")?
        .to_owned();
    let tenant_id = tenant["tenant_id"]
        .as_str()
        .context("tenant id")?
        .to_owned();
    let payers = payers(t, &admin).await?;
    let seeder = Seeder::connect(database_url).await?;
    let now = Utc::now();
    let (mut rollups, mut today) = (Rollups::new(), Decimal::ZERO);
    let step = Span::days(30).num_milliseconds() / n.max(1) as i64;
    for first in (0..n).step_by(BATCH) {
        let batch: Vec<Seeded> = (first..(first + BATCH).min(n))
            .map(|i| seeded(&payers, i, now - Span::milliseconds(step * i as i64)))
            .collect();
        for p in &batch {
            fold(&mut rollups, p);
            if p.at.date_naive() == now.date_naive() {
                today += p.usd;
            }
        }
        seeder.insert_payments(&tenant_id, &batch).await?;
    }
    seeder.insert_rollups(&tenant_id, &rollups).await?;
    let (agent, session) = (payers[0].0, payers[0].1);
    let t = Target::new(&t.base, &admin);
    let scopes = [
        ("tenant".to_owned(), String::new()),
        ("an agent".to_owned(), format!("agent_id={agent}")),
        ("a session".to_owned(), format!("session_id={session}")),
    ];
    let picture = t.get("/spend").await?;
    let drawn: Decimal = picture["days"][29]["usd"]
        .as_str()
        .context("usd")?
        .parse()?;
    anyhow::ensure!(
        drawn == today,
        "the picture shows {drawn} today, {today} was seeded"
    );
    let mut lines = Vec::new();
    for (whose, query) in scopes {
        let path = format!("/spend?{query}");
        let lat = timed(reads, || t.get(&path)).await?;
        lines.push(one_at_a_time(
            &format!("spend picture, {n} payments stored"),
            lat,
            whose,
        ));
    }
    let lat = timed(reads.min(20), || seeder.sum_hours(&tenant_id, now)).await?;
    let scenario = format!("hourly totals summed from payments, {n} stored");
    let mut summed = one_at_a_time(&scenario, lat, String::new());
    let ratio = summed.p50_ms / lines[0].p50_ms.max(f64::EPSILON);
    summed.note = format!("the tenant, in SQL: {ratio:.0} × the picture's p50");
    lines.push(summed);
    Ok(lines)
}

/// (agent key, session) ids of a tenant's agents and their sessions, made through the API.
async fn payers(t: &Target, admin: &str) -> anyhow::Result<Vec<(uuid::Uuid, uuid::Uuid)>> {
    let mut payers = Vec::new();
    for _ in 0..AGENTS {
        let key = json!({"name": "bench spender", "role": "agent"});
        let key = t.post(admin, "/keys", key).await?;
        let (id, token) = (
            key["id"].as_str().context("id")?,
            key["token"].as_str().context("token")?,
        );
        for _ in 0..SESSIONS_PER_AGENT {
            payers.push((id.parse()?, t.session(token).await?.parse()?));
        }
    }
    Ok(payers)
}

fn seeded(payers: &[(uuid::Uuid, uuid::Uuid)], i: usize, at: DateTime<Utc>) -> Seeded {
    let (agent, session) = payers[i % payers.len()];
    Seeded {
        id: paygent_domain::time::uuid_at(at),
        agent,
        session,
        payee: format!("0x{:040x}", 1 + (i * 7919) % PAYEES),
        usd: Decimal::new(100 + (i % 900) as i64, 2),
        at,
    }
}

fn fold(rollups: &mut Rollups, p: &Seeded) {
    let spent = Spent {
        agent: p.agent,
        session: p.session,
        payee: &p.payee,
        at: p.at,
        usd: p.usd,
        payments: 1,
    };
    for c in spent.changes() {
        let row = rollups.entry((c.owner, c.bucket, c.payee)).or_default();
        *row = (row.0 + c.usd, row.1 + c.payments);
    }
}

/// Figures of calls made one at a time: their rate is one over their mean.
fn one_at_a_time(scenario: &str, lat: Vec<Duration>, note: String) -> Measurement {
    let wall = lat.iter().sum();
    Measurement::from_latencies(scenario, 1, lat, wall, note)
}

/// How long each of `n` calls of `op` took.
async fn timed<T, F: AsyncFn() -> anyhow::Result<T>>(
    n: usize,
    op: F,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        op().await?;
        lat.push(started.elapsed());
    }
    Ok(lat)
}

const PAYMENT: &str = "INSERT INTO payments (id, tenant_id, session_id, tool, amount, currency, usd_value, \
    recipient, status, request_hash, requested_by, created_at, updated_at, budget_day)";
const ROLLUP: &str = "INSERT INTO spend_rollups (tenant_id, owner, bucket, payee, usd, payments)";
/// What the picture reads, summed from payments instead: the tenant's spend by hour over 30 days.
const SUM_HOURS: &str = "SELECT substr(created_at, 1, 13), SUM(CAST(usd_value AS REAL)), COUNT(*) FROM payments \
    WHERE tenant_id = $1 AND created_at >= $2 AND status IN ('authorized', 'executed') GROUP BY 1";

impl Seeder {
    async fn insert_payments(&self, tenant: &str, batch: &[Seeded]) -> anyhow::Result<()> {
        let text = |s: &str| Cell::Text(s.to_owned());
        let rows = batch.iter().map(|p| {
            let (at, amount) = (paygent_domain::time::format(p.at), p.usd.to_string());
            let id = p.id.to_string();
            let day = p.at.date_naive().to_string();
            let (session, agent) = (p.session.to_string(), p.agent.to_string());
            [
                &id,
                tenant,
                &session,
                "transfer",
                &amount,
                "USDC",
                &amount,
                &p.payee,
                "authorized",
                "bench",
                &agent,
                &at,
                &at,
                &day,
            ]
            .map(text)
            .to_vec()
        });
        self.insert(PAYMENT, rows.collect()).await
    }

    async fn insert_rollups(&self, tenant: &str, rollups: &Rollups) -> anyhow::Result<()> {
        let rows: Vec<Vec<Cell>> = rollups
            .iter()
            .map(|((owner, bucket, payee), (usd, n))| {
                let text = [tenant, owner, bucket, payee, &usd.to_string()]
                    .map(|s| Cell::Text(s.to_owned()));
                let mut row = text.to_vec();
                row.push(Cell::Int(*n));
                row
            })
            .collect();
        for chunk in rows.chunks(BATCH) {
            self.insert(ROLLUP, chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// The tenant's hourly totals summed from payments; the number of hours found.
    async fn sum_hours(&self, tenant: &str, now: DateTime<Utc>) -> anyhow::Result<usize> {
        let since = paygent_domain::time::format(now - Span::days(30));
        match self {
            Seeder::Lite(conn) => {
                let (conn, tenant) = (conn.clone(), tenant.to_owned());
                let sql = SUM_HOURS.replace('$', "?");
                tokio::task::spawn_blocking(move || {
                    let conn = conn.lock().expect("seeder");
                    let mut statement = conn.prepare_cached(&sql)?;
                    let rows = statement.query_map([tenant, since], |_| Ok(()))?;
                    Ok(rows.count())
                })
                .await?
            }
            Seeder::Pg(pool) => {
                let sql = SUM_HOURS.replace("CAST(usd_value AS REAL)", "usd_value::numeric");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant)
                    .bind(since)
                    .fetch_all(pool)
                    .await?;
                Ok(rows.len())
            }
        }
    }

    /// Writes `rows` with one statement `into ... VALUES (...), (...)`.
    async fn insert(&self, into: &str, rows: Vec<Vec<Cell>>) -> anyhow::Result<()> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(());
        };
        let groups: Vec<String> = (0..rows.len())
            .map(|r| {
                let cells: Vec<String> =
                    (1..=width).map(|c| format!("${}", r * width + c)).collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let sql = format!("{into} VALUES {}", groups.join(", "));
        match self {
            Seeder::Lite(conn) => {
                let conn = conn.clone();
                let sql = sql.replace('$', "?");
                tokio::task::spawn_blocking(move || {
                    let conn = conn.lock().expect("seeder");
                    let cells = rows.iter().flatten().map(|c| match c {
                        Cell::Text(s) => rusqlite::types::Value::Text(s.clone()),
                        Cell::Int(n) => rusqlite::types::Value::Integer(*n),
                    });
                    conn.execute(&sql, rusqlite::params_from_iter(cells))
                        .map(drop)
                })
                .await??;
            }
            Seeder::Pg(pool) => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for c in rows.into_iter().flatten() {
                    q = match c {
                        Cell::Text(s) => q.bind(s),
                        Cell::Int(n) => q.bind(n),
                    };
                }
                q.execute(pool).await?;
            }
        }
        Ok(())
    }
}

/// A value to write.
#[derive(Clone)]
enum Cell {
    Text(String),
    Int(i64),
}
