//! Writes held back on PostgreSQL until the transaction's next statement or its commit. Every statement under
//! the tenant's lock costs a round trip, and the lock is held for all of them: a payment's writes (the payment,
//! the breaker's marks; its budget rows and spend rollups go with its group, [`crate::pg`]) each cost one, then
//! the commit another. Held back,
//! they go as CTEs of the next statement sent, so a payment's writes and its commit take one round trip. Each
//! CTE returns a row per row it changed, and the count is checked against what the write expected.
//!
//! Any other statement of the transaction first sends what is held, so it reads what the writes wrote. CTEs of
//! one statement do not see each other's changes, so a write to a table with a write already held sends the
//! held ones first: no two CTEs ever touch the same table.

use crate::db::{Arg, Query, Row, placeholders};
use crate::{Result, StoreError};
use uuid::Uuid;

/// A write held back: the table it changes (and which of its rows, [`Changes`]), and how many rows it must change.
#[derive(Debug)]
pub(crate) struct Deferred {
    pub(crate) table: &'static str,
    pub(crate) changes: Changes,
    query: Query,
    rows: u64,
    /// A plain insert's columns: such inserts of several writes go to PostgreSQL as one statement ([`merged`]).
    columns: Option<&'static str>,
}

/// Which rows of its table a held-back write changes, as far as reads sent ahead of it care ([`crate::pg::Ahead`]):
/// any, the one row it names, a payment to `recipient` that counts as paid to it, or none that anyone reads
/// ahead (a payment still waiting on a person is in nobody's payee history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Changes {
    Any,
    Row(Uuid),
    PaidTo(String),
    Unread,
}

impl Deferred {
    pub(crate) fn new(table: &'static str, query: Query, rows: u64) -> Deferred {
        Deferred {
            table,
            changes: Changes::Any,
            query,
            rows,
            columns: None,
        }
    }

    /// A plain insert of `rows` rows into `table`'s `columns`, their values in `values` row after row.
    pub(crate) fn insert(
        table: &'static str,
        columns: &'static str,
        values: Vec<Arg>,
        rows: u64,
    ) -> Deferred {
        let width = values.len() / usize::try_from(rows.max(1)).unwrap_or(1);
        let list = placeholders(1, values.len() / width.max(1), width);
        let sql = format!("INSERT INTO {table} ({columns}) VALUES {list}");
        Deferred {
            columns: Some(columns),
            ..Deferred::new(table, Query::with_args(sql, values), rows)
        }
    }

    /// Whether the write is a plain insert, which can go with others into its table ([`merged`]).
    pub(crate) fn is_insert(&self) -> bool {
        self.columns.is_some()
    }

    /// The write changes only `changes`.
    pub(crate) fn changing(self, changes: Changes) -> Deferred {
        Deferred { changes, ..self }
    }

    /// The write as it runs on its own (SQLite), its count checked.
    pub(crate) async fn run(self, db: crate::Db<'_>) -> Result<()> {
        let changed = self.query.execute(db).await?;
        check(self.table, changed, self.rows)
    }
}

/// Held-back writes as the CTEs `w0`, `w1`… of one statement, and the counts to check once it ran.
pub(crate) struct Rendered {
    ctes: Vec<String>,
    expected: Vec<(&'static str, u64)>,
}

impl Rendered {
    /// `writes` as CTEs, their parameters numbered after those already in `args`, where their values go.
    pub(crate) fn new(writes: Vec<Deferred>, args: &mut Vec<Arg>) -> Rendered {
        let mut ctes = Vec::with_capacity(writes.len());
        let mut expected = Vec::with_capacity(writes.len());
        for (i, w) in writes.into_iter().enumerate() {
            let (sql, values) = w.query.into_parts();
            ctes.push(format!(
                "w{i} AS ({} RETURNING 1)",
                renumbered(&sql, args.len())
            ));
            args.extend(values);
            expected.push((w.table, w.rows));
        }
        Rendered { ctes, expected }
    }

    /// The statement of the writes, as CTEs, that selects `list`.
    pub(crate) fn selecting(&self, list: &str) -> String {
        format!("WITH {} SELECT {list}", self.ctes.join(", "))
    }

    /// The select list that counts each CTE's rows, in order.
    pub(crate) fn counts(&self) -> String {
        let counts: Vec<String> = (0..self.expected.len())
            .map(|i| format!("(SELECT COUNT(*) FROM w{i})"))
            .collect();
        counts.join(", ")
    }

    /// An expression that is 1 when each write changed the rows it should, and otherwise fails its statement with
    /// a message that names each table with the rows it changed and those expected.
    pub(crate) fn asserted(&self) -> String {
        let names: Vec<String> = (0..self.expected.len()).map(|i| format!("w{i}")).collect();
        let checks: Vec<(&str, &str, u64)> = (names.iter().map(String::as_str))
            .zip(&self.expected)
            .map(|(cte, (table, rows))| (cte, *table, *rows))
            .collect();
        let ok: Vec<String> = (checks.iter())
            .map(|(cte, _, rows)| format!("(SELECT COUNT(*) FROM {cte}) = {rows}"))
            .collect();
        let said: Vec<String> = (checks.iter())
            .map(|(cte, table, rows)| {
                format!("'{table} ' || (SELECT COUNT(*) FROM {cte}) || ' where {rows}'")
            })
            .collect();
        // The cast of a value known only as the statement runs: it fails then, not as the statement is planned.
        format!(
            "CAST(CASE WHEN {} THEN '1' ELSE 'rows changed where others were expected (another writer changed \
             them): ' || {} END AS INT)",
            ok.join(" AND "),
            said.join(" || ', ' || ")
        )
    }

    /// Checks the counts `row` holds, from column `first` on, against what each write expected.
    pub(crate) fn check(&self, row: &Row, first: usize) -> Result<()> {
        for (i, (table, rows)) in self.expected.iter().enumerate() {
            let changed: i64 = row.get(first + i)?;
            check(table, changed.unsigned_abs(), *rows)?;
        }
        Ok(())
    }
}

fn check(table: &str, changed: u64, expected: u64) -> Result<()> {
    if changed == expected {
        return Ok(());
    }
    Err(StoreError::Corrupt(format!(
        "{changed} rows of {table} changed where {expected} were expected: another writer changed them"
    )))
}

/// Sends the held-back writes as one statement and checks their counts.
pub(crate) async fn flush(conn: &mut sqlx::PgConnection, writes: Vec<Deferred>) -> Result<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut args = Vec::new();
    let rendered = Rendered::new(writes, &mut args);
    let sql = rendered.selecting(&rendered.counts());
    let (_, rows) = Query::with_args(sql, args).on_pg(conn, true).await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("the held-back writes returned no counts".into()))?;
    rendered.check(row, 0)
}

/// Plain inserts of several writes ([`Deferred::insert`]) as one statement of one insert per table, each table's
/// rows a JSON array (its only parameter) that PostgreSQL turns into the table's rows: one shape per set of
/// tables however many rows, so it is prepared once. Several writes' closing statements cost PostgreSQL a
/// third more as one statement each (BENCHMARKS.md). Nothing to check: a plain insert inserts every row or
/// fails its statement.
pub(crate) fn merged(writes: impl IntoIterator<Item = Deferred>) -> Result<(String, Vec<Arg>)> {
    let mut tables: Vec<(&'static str, &'static str, String)> = Vec::new();
    for write in writes {
        let columns = write.columns.ok_or_else(|| {
            StoreError::Corrupt(format!("a write to {} merged as an insert", write.table))
        })?;
        let at = match tables
            .iter()
            .position(|t| (t.0, t.1) == (write.table, columns))
        {
            Some(at) => at,
            None => {
                tables.push((write.table, columns, String::new()));
                tables.len() - 1
            }
        };
        rows_as_json(columns, write.query.into_parts().1, &mut tables[at].2);
    }
    let ctes: Vec<String> = (tables.iter().enumerate())
        .map(|(i, (table, columns, _))| {
            format!(
                "w{i} AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM \
                 jsonb_populate_recordset(NULL::{table}, ${}::jsonb))",
                i + 1
            )
        })
        .collect();
    let sql = format!("WITH {} SELECT 1", ctes.join(", "));
    let args = (tables.into_iter())
        .map(|(_, _, rows)| Arg::Text(Some(format!("[{rows}]"))))
        .collect();
    Ok((sql, args))
}

/// Appends `values`, rows of `columns`, to `json` as objects keyed by column.
fn rows_as_json(columns: &str, values: Vec<Arg>, json: &mut String) {
    let names: Vec<&str> = columns.split(',').map(str::trim).collect();
    for row in values.chunks(names.len()) {
        json.push_str(if json.is_empty() { "{" } else { ",{" });
        for (i, (name, value)) in names.iter().zip(row).enumerate() {
            json.push_str(if i == 0 { "\"" } else { ",\"" });
            json.push_str(name);
            json.push_str("\":");
            match value {
                Arg::Int(Some(n)) => json.push_str(&n.to_string()),
                Arg::Text(Some(t)) => {
                    json.push_str(&serde_json::to_string(t).expect("a string serializes"))
                }
                Arg::Int(None) | Arg::Text(None) => json.push_str("null"),
            }
        }
        json.push('}');
    }
}

/// `sql` with each parameter `$n` numbered `$(n + by)`.
fn renumbered(sql: &str, by: usize) -> String {
    crate::db::placed(sql, |n| format!("${}", n + by))
}

#[cfg(test)]
mod tests {
    use super::{Deferred, merged, renumbered};
    use crate::db::Arg;

    #[test]
    fn inserts_of_several_writes_go_as_one_insert_per_table_of_json_rows() {
        let payment = |memo: &str| {
            let values = vec![
                "p".into(),
                memo.into(),
                Arg::Text(None),
                7.into(),
                Arg::Int(None),
            ];
            Deferred::insert("payments", "id, memo, note, n, m", values, 1)
        };
        let audit = Deferred::insert("audit_log", "seq", vec![1.into(), 2.into()], 2);
        let writes = [payment("it's \"q\" \\ ü\n"), audit, payment("")];
        let (sql, args) = merged(writes).unwrap();
        assert_eq!(
            sql,
            "WITH w0 AS (INSERT INTO payments (id, memo, note, n, m) SELECT id, memo, note, n, m FROM \
             jsonb_populate_recordset(NULL::payments, $1::jsonb)), w1 AS (INSERT INTO audit_log (seq) SELECT seq \
             FROM jsonb_populate_recordset(NULL::audit_log, $2::jsonb)) SELECT 1"
        );
        let rows = r#"[{"id":"p","memo":"it's \"q\" \\ ü\n","note":null,"n":7,"m":null},{"id":"p","memo":"","note":null,"n":7,"m":null}]"#;
        assert_eq!(
            args,
            [
                Arg::Text(Some(rows.into())),
                Arg::Text(Some(r#"[{"seq":1},{"seq":2}]"#.into()))
            ]
        );
        let update = Deferred::new("payments", crate::db::query("UPDATE payments SET n = 1"), 1);
        assert!(merged([update]).is_err(), "only plain inserts merge");
    }

    #[test]
    fn parameters_are_numbered_on_and_quoted_text_is_not() {
        assert_eq!(
            renumbered(
                "INSERT INTO t VALUES ($1, $12, '$3', \"$4\", 'it''s $5') WHERE x = $2",
                10
            ),
            "INSERT INTO t VALUES ($11, $22, '$3', \"$4\", 'it''s $5') WHERE x = $12"
        );
        assert_eq!(renumbered("SELECT $ || $1", 1), "SELECT $ || $2");
    }
}
