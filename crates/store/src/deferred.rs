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
    /// How it goes with the writes of others as one statement on PostgreSQL, if it can ([`merged`]).
    form: Option<Form>,
}

/// The writes that go with others of their kind as one statement ([`merged`]): a plain insert into these
/// columns, or an update of one row (`UPDATE table SET set WHERE filter`) whose parameters are its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    Insert(&'static str),
    Update {
        set: &'static str,
        filter: &'static str,
    },
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
            form: None,
        }
    }

    /// A plain insert of `rows` rows into `table`'s `columns`, their values in `values` row after row.
    pub(crate) fn insert(
        table: &'static str,
        columns: &'static str,
        values: Vec<Arg>,
        rows: u64,
    ) -> Deferred {
        let count = usize::try_from(rows).unwrap_or(usize::MAX).max(1);
        let list = placeholders(1, count, values.len() / count);
        let sql = format!("INSERT INTO {table} ({columns}) VALUES {list}");
        Deferred {
            form: Some(Form::Insert(columns)),
            ..Deferred::new(table, Query::with_args(sql, values), rows)
        }
    }

    /// An update of the one row of `table` that `filter` picks, `set` its changes: `values` are their parameters.
    pub(crate) fn update(
        table: &'static str,
        set: &'static str,
        filter: &'static str,
        values: Vec<Arg>,
    ) -> Deferred {
        let sql = format!("UPDATE {table} SET {set} WHERE {filter}");
        Deferred {
            form: Some(Form::Update { set, filter }),
            ..Deferred::new(table, Query::with_args(sql, values), 1)
        }
    }

    /// Whether the write can go with others of its kind as one statement ([`merged`]).
    pub(crate) fn merges(&self) -> bool {
        self.form.is_some()
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
        self.asserted_as(|_, rows| rows.to_string())
    }

    /// As [`Rendered::asserted`], each CTE's expected count the SQL expression `expected(i, rows)`.
    fn asserted_as(&self, expected: impl Fn(usize, u64) -> String) -> String {
        let checks: Vec<(String, &str, String)> = (self.expected.iter().enumerate())
            .map(|(i, (table, rows))| (format!("w{i}"), *table, expected(i, *rows)))
            .collect();
        let ok: Vec<String> = (checks.iter())
            .map(|(cte, _, rows)| format!("(SELECT COUNT(*) FROM {cte}) = {rows}"))
            .collect();
        let said: Vec<String> = (checks.iter())
            .map(|(cte, table, rows)| {
                format!("'{table} ' || (SELECT COUNT(*) FROM {cte}) || ' where ' || {rows}")
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

/// Writes of several closings that each have a [`Form`] as one statement of one CTE per table and form, whatever
/// their number: each CTE's rows are a JSON array (its only parameter) that PostgreSQL turns into the table's
/// rows, or into the values of each update's parameters. One shape per set of kinds, so it is prepared once;
/// one statement per write cost PostgreSQL a third more (BENCHMARKS.md). Each CTE's count is checked as
/// [`Rendered::asserted`] does: two updates of one row, say, change it once, and the statement fails.
pub(crate) fn merged(writes: impl IntoIterator<Item = Deferred>) -> Result<(String, Vec<Arg>)> {
    let mut kinds: Vec<Kind> = Vec::new();
    for write in writes {
        let form = write.form.ok_or_else(|| {
            StoreError::Corrupt(format!("a write to {} merged with others", write.table))
        })?;
        let values = write.query.into_parts().1;
        let types: Vec<&str> = match form {
            Form::Insert(_) => Vec::new(),
            Form::Update { .. } => values.iter().map(Arg::pg_type).collect(),
        };
        let at = kinds.iter().position(|k| k.is(write.table, form, &types));
        let kind = match at {
            Some(at) => &mut kinds[at],
            None => {
                kinds.push(Kind::new(write.table, form, types));
                kinds.last_mut().expect("just pushed")
            }
        };
        kind.add(values, write.rows);
    }
    let rendered = Rendered {
        ctes: (kinds.iter().enumerate())
            .map(|(i, k)| format!("w{i} AS ({} RETURNING 1)", k.sql(i + 1)))
            .collect(),
        expected: kinds.iter().map(|k| (k.table, k.rows)).collect(),
    };
    // Each kind's rows are as many as its JSON array's: the count is no part of the statement's shape.
    let counted = rendered.asserted_as(|i, _| format!("jsonb_array_length(${}::jsonb)", i + 1));
    let sql = rendered.selecting(&counted);
    let args = (kinds.into_iter())
        .map(|k| Arg::Text(Some(format!("[{}]", k.json))))
        .collect();
    Ok((sql, args))
}

/// The writes of one table and form in a merged statement, and how many rows they change.
struct Kind {
    table: &'static str,
    form: Form,
    /// An update's parameters' types, which its rows' columns take.
    types: Vec<&'static str>,
    /// The keys of its rows' values: an insert's columns, or an update's parameters (`p1`, `p2`…).
    names: Vec<String>,
    /// Their rows, as JSON objects keyed by `names`.
    json: String,
    rows: u64,
}

impl Kind {
    fn new(table: &'static str, form: Form, types: Vec<&'static str>) -> Kind {
        let names = match form {
            Form::Insert(columns) => columns.split(',').map(|c| c.trim().to_owned()).collect(),
            Form::Update { .. } => (1..=types.len()).map(|n| format!("p{n}")).collect(),
        };
        Kind {
            table,
            form,
            types,
            names,
            json: String::new(),
            rows: 0,
        }
    }

    fn is(&self, table: &str, form: Form, types: &[&str]) -> bool {
        self.table == table && self.form == form && self.types == types
    }

    fn add(&mut self, values: Vec<Arg>, rows: u64) {
        rows_as_json(&self.names, values, &mut self.json);
        self.rows += rows;
    }

    /// The kind's statement, its rows read from parameter `$n`.
    fn sql(&self, n: usize) -> String {
        let table = self.table;
        match self.form {
            Form::Insert(columns) => format!(
                "INSERT INTO {table} ({columns}) SELECT {columns} FROM \
                 jsonb_populate_recordset(NULL::{table}, ${n}::jsonb)"
            ),
            Form::Update { set, filter } => {
                let row = |sql: &str| crate::db::placed(sql, |p| format!("j.p{p}"));
                let columns: Vec<String> = (self.types.iter().enumerate())
                    .map(|(i, t)| format!("p{} {t}", i + 1))
                    .collect();
                format!(
                    "UPDATE {table} SET {} FROM jsonb_to_recordset(${n}::jsonb) AS j({}) WHERE {}",
                    row(set),
                    columns.join(", "),
                    row(filter)
                )
            }
        }
    }
}

/// Appends `values`, rows of as many values as `names`, to `json` as objects keyed by name.
fn rows_as_json(names: &[String], values: Vec<Arg>, json: &mut String) {
    for row in values.chunks(names.len().max(1)) {
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
    fn writes_of_several_closings_go_as_one_statement_of_json_rows_per_kind() {
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
        let decided = |id: &str| {
            let values = vec![id.into(), "approved".into(), Arg::Text(None)];
            let (set, filter) = ("status = $2, note = $3", "id = $1 AND status = 'pending'");
            Deferred::update("approval_requests", set, filter, values)
        };
        let writes = [
            payment("it's \"q\" \\ ü\n"),
            audit,
            decided("a"),
            payment(""),
            decided("b"),
        ];
        let (sql, args) = merged(writes).unwrap();
        let ctes = "WITH w0 AS (INSERT INTO payments (id, memo, note, n, m) SELECT id, memo, note, n, m FROM \
             jsonb_populate_recordset(NULL::payments, $1::jsonb) RETURNING 1), w1 AS (INSERT INTO audit_log (seq) \
             SELECT seq FROM jsonb_populate_recordset(NULL::audit_log, $2::jsonb) RETURNING 1), w2 AS (UPDATE \
             approval_requests SET status = j.p2, note = j.p3 FROM jsonb_to_recordset($3::jsonb) AS j(p1 text, \
             p2 text, p3 text) WHERE id = j.p1 AND status = 'pending' RETURNING 1) SELECT CAST(CASE WHEN \
             (SELECT COUNT(*) FROM w0) = jsonb_array_length($1::jsonb) AND (SELECT COUNT(*) FROM w1) = \
             jsonb_array_length($2::jsonb) AND (SELECT COUNT(*) FROM w2) = jsonb_array_length($3::jsonb) ";
        assert!(sql.starts_with(ctes), "{sql}");
        let payments = r#"[{"id":"p","memo":"it's \"q\" \\ ü\n","note":null,"n":7,"m":null},{"id":"p","memo":"","note":null,"n":7,"m":null}]"#;
        let decisions =
            r#"[{"p1":"a","p2":"approved","p3":null},{"p1":"b","p2":"approved","p3":null}]"#;
        let text = |s: &str| Arg::Text(Some(s.into()));
        assert_eq!(
            args,
            [
                text(payments),
                text(r#"[{"seq":1},{"seq":2}]"#),
                text(decisions)
            ]
        );
        let update = Deferred::new("payments", crate::db::query("UPDATE payments SET n = 1"), 1);
        assert!(merged([update]).is_err(), "only writes with a form merge");
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
