//! How a statement reaches the database. SQL is written once, with `$1`-style parameters, and runs on either
//! database: PostgreSQL through sqlx, SQLite through rusqlite on the calling thread. A SQLite statement costs
//! microseconds, and handing each one to a worker thread cost more than running it (see BENCHMARKS.md).
//! Values cross as integers and text only: ids and timestamps as TEXT, money as exact decimal strings.

use crate::lite::LiteTx;
use crate::pg::PgTx;
use crate::{Engine, Result, Store, StoreError};
use sqlx::postgres::{PgArguments, PgRow};
use std::borrow::Cow;

/// A bound parameter. Nulls keep their type, since PostgreSQL types every parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
}

impl Arg {
    /// The PostgreSQL type a parameter of this value is given.
    pub(crate) fn pg_type(&self) -> &'static str {
        match self {
            Arg::Int(_) => "int8",
            Arg::Text(_) => "text",
        }
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}

impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

/// A row, its values in the order the statement selects them.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(Vec<Value>);

/// A Rust type a column converts into; a value of another type is handed back, to be shown in the error.
pub trait FromValue: Sized {
    fn from_value(v: Value) -> std::result::Result<Self, Value>;
}

impl FromValue for i64 {
    fn from_value(v: Value) -> std::result::Result<Self, Value> {
        match v {
            Value::Int(i) => Ok(i),
            other => Err(other),
        }
    }
}

impl FromValue for String {
    fn from_value(v: Value) -> std::result::Result<Self, Value> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> std::result::Result<Self, Value> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Declares a struct read from a row, its fields in the order the statement selects its columns.
#[macro_export]
#[doc(hidden)]
macro_rules! row_type {
    ($vis:vis struct $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $vis struct $name { $($vis $field: $ty),* }

        impl TryFrom<$crate::Row> for $name {
            type Error = $crate::StoreError;
            fn try_from(row: $crate::Row) -> $crate::Result<Self> {
                let mut columns = row.columns();
                Ok($name { $($field: columns.next()?),* })
            }
        }
    };
}

/// A row's values, taken in order.
pub struct Columns {
    values: std::vec::IntoIter<Value>,
    at: usize,
}

impl Columns {
    /// The next column as `T`.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: FromValue>(&mut self) -> Result<T> {
        self.at += 1;
        convert(self.at - 1, self.values.next().unwrap_or(Value::Null))
    }
}

fn convert<T: FromValue>(i: usize, v: Value) -> Result<T> {
    T::from_value(v).map_err(|shown| {
        StoreError::Corrupt(format!(
            "column {i} holds {shown:?}, not a {}",
            std::any::type_name::<T>()
        ))
    })
}

impl Row {
    pub fn columns(self) -> Columns {
        Columns {
            values: self.0.into_iter(),
            at: 0,
        }
    }

    /// Column `i` as `T`; a missing column or another type is reported as corruption.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        convert(i, self.0.get(i).cloned().unwrap_or(Value::Null))
    }
}

/// Where a statement runs.
pub enum Db<'a> {
    /// The readers, outside any transaction: committed data only.
    Read(&'a Store),
    /// The writer, for one statement that is its own transaction (no tenant's lock).
    Write(&'a Store),
    /// An open write transaction.
    Tx(&'a mut Conn),
}

impl Db<'_> {
    /// The same place, for one more statement.
    pub fn again(&mut self) -> Db<'_> {
        match self {
            Db::Read(store) => Db::Read(store),
            Db::Write(store) => Db::Write(store),
            Db::Tx(conn) => Db::Tx(conn),
        }
    }
}

/// The connection a write transaction holds (a PostgreSQL write, which keeps what it leaves its group, boxed).
pub enum Conn {
    Pg(Box<PgTx>),
    Lite(LiteTx),
}

/// A statement and its parameters.
#[derive(Debug, Clone)]
pub struct Query {
    sql: Cow<'static, str>,
    args: Vec<Arg>,
}

/// `rows` groups of `cols` numbered parameters from `$first`: `($1, $2), ($3, $4)`.
pub(crate) fn placeholders(first: usize, rows: usize, cols: usize) -> String {
    use std::fmt::Write;
    // Built in one buffer: every multi-row write (audit entries, events, budget rows, marks) makes one per
    // statement inside the tenant's write lock, where a string per parameter showed in the profile.
    let mut sql = String::with_capacity(rows * (cols * 6 + 4));
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            let sep = if c == 0 { "" } else { ", " };
            write!(sql, "{sep}${}", first + r * cols + c).expect("a String takes any write");
        }
        sql.push(')');
    }
    sql
}

/// `sql` with each parameter `$n` replaced by `put(n)`; quoted text is left as it is.
pub(crate) fn placed(sql: &str, mut put: impl FnMut(usize) -> String) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut chars = sql.chars().peekable();
    let mut quote = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut n = 0usize;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n * 10 + d as usize;
                    chars.next();
                }
                out.push_str(&put(n));
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// `sql` with its parameters written in as literals, for the simple protocol (several statements in one round
/// trip, no parameters). Text goes in an escape string, its backslashes and quotes doubled, whatever
/// `standard_conforming_strings` says; text with a NUL byte, which PostgreSQL text cannot hold, is refused.
pub(crate) fn inlined(sql: &str, args: &[Arg]) -> Result<String> {
    let mut wrong = None;
    let sql = placed(sql, |n| match args.get(n.wrapping_sub(1)) {
        Some(Arg::Int(Some(i))) => i.to_string(),
        Some(Arg::Text(Some(t))) if !t.contains('\0') => {
            format!("E'{}'", t.replace('\\', "\\\\").replace('\'', "''"))
        }
        Some(Arg::Int(None) | Arg::Text(None)) => "NULL".to_owned(),
        Some(Arg::Text(Some(_))) | None => {
            wrong = Some(n);
            String::new()
        }
    });
    match wrong {
        Some(n) => Err(StoreError::Corrupt(format!(
            "parameter ${n} has no value a literal can hold"
        ))),
        None => Ok(sql),
    }
}

/// Reads `queries` inside a write in one round trip on PostgreSQL (one simple-protocol message: each query's
/// prepared shape executed with its values written in), one after the other on SQLite: the rows of each, in
/// order. For reads a write needs together under its tenant's lock, where a round trip each would hold the lock
/// that much longer.
pub(crate) async fn fetch_together(
    tx: &mut crate::WriteTx,
    queries: Vec<Query>,
) -> Result<Vec<Vec<Row>>> {
    let Some(pg) = tx.pg() else {
        let mut found = Vec::with_capacity(queries.len());
        for q in queries {
            found.push(q.fetch_all(tx.conn()).await?);
        }
        return Ok(found);
    };
    let statements: Vec<(&str, &[Arg])> = (queries.iter())
        .map(|q| (q.sql.as_ref(), q.args.as_slice()))
        .collect();
    rows_of(&pg.read_together(&statements).await?)
}

/// The rows of each of several PostgreSQL statements.
pub(crate) fn rows_of(results: &[Vec<PgRow>]) -> Result<Vec<Vec<Row>>> {
    (results.iter())
        .map(|rows| rows.iter().map(pg_row).collect())
        .collect()
}

/// A statement to bind and run.
pub fn query(sql: impl Into<Cow<'static, str>>) -> Query {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

impl Query {
    /// A statement with its arguments already gathered; `$n` binds the n-th.
    pub(crate) fn with_args(sql: impl Into<Cow<'static, str>>, args: Vec<Arg>) -> Query {
        Query {
            sql: sql.into(),
            args,
        }
    }

    /// The statement's text and arguments, to be sent as part of another.
    pub(crate) fn into_parts(self) -> (Cow<'static, str>, Vec<Arg>) {
        (self.sql, self.args)
    }

    pub fn bind(mut self, arg: impl Into<Arg>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs the statement; returns how many rows it changed.
    pub async fn execute(self, db: Db<'_>) -> Result<u64> {
        Ok(self.run(db, false).await?.0)
    }

    pub async fn fetch_all(self, db: Db<'_>) -> Result<Vec<Row>> {
        Ok(self.run(db, true).await?.1)
    }

    pub async fn fetch_optional(self, db: Db<'_>) -> Result<Option<Row>> {
        Ok(self.run(db, true).await?.1.into_iter().next())
    }

    /// Runs the query and converts each row into its record type through the struct that reads the row.
    pub(crate) async fn records<R, T>(self, db: Db<'_>) -> Result<Vec<T>>
    where
        R: TryFrom<Row, Error = StoreError>,
        T: TryFrom<R, Error = StoreError>,
    {
        crate::records::<R, T>(self.fetch_all(db).await?)
    }

    /// Runs the query and converts the row it finds, if any, into its record type.
    pub(crate) async fn record<R, T>(self, db: Db<'_>) -> Result<Option<T>>
    where
        R: TryFrom<Row, Error = StoreError>,
        T: TryFrom<R, Error = StoreError>,
    {
        self.fetch_optional(db)
            .await?
            .map(crate::record::<R, T>)
            .transpose()
    }

    pub async fn fetch_one(self, db: Db<'_>) -> Result<Row> {
        self.fetch_optional(db)
            .await?
            .ok_or_else(|| StoreError::Corrupt("expected a row, found none".into()))
    }

    async fn run(self, db: Db<'_>, rows: bool) -> Result<(u64, Vec<Row>)> {
        match db {
            Db::Tx(Conn::Pg(tx)) => {
                // What the transaction held back goes first, so this statement sees it.
                tx.flush().await?;
                tx.savepoint().await?;
                self.on_pg(tx.conn()?, rows).await
            }
            Db::Tx(Conn::Lite(tx)) => tx.with(|c| self.on_lite(c)),
            Db::Read(store) => match &store.engine {
                Engine::Pg(pg) => self.on_pg(&pg.pool, rows).await,
                Engine::Lite(lite) => lite.read(|c| self.on_lite(c)),
            },
            Db::Write(store) => match &store.engine {
                Engine::Pg(pg) => self.on_pg(&pg.pool, rows).await,
                Engine::Lite(lite) => {
                    let mut tx = lite.begin().await?;
                    let done = tx.with(|c| self.on_lite(c))?;
                    tx.commit().await?;
                    Ok(done)
                }
            },
        }
    }

    pub(crate) async fn on_pg<'e>(
        self,
        exec: impl sqlx::PgExecutor<'e>,
        rows: bool,
    ) -> Result<(u64, Vec<Row>)> {
        use sqlx::Arguments;
        let mut args = PgArguments::default();
        for arg in self.args {
            match arg {
                Arg::Int(v) => args.add(v),
                Arg::Text(v) => args.add(v),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        let q = sqlx::query_with(sqlx::AssertSqlSafe(self.sql.into_owned()), args);
        if !rows {
            return Ok((q.execute(exec).await?.rows_affected(), Vec::new()));
        }
        let found = q.fetch_all(exec).await?;
        let rows = found.iter().map(pg_row).collect::<Result<Vec<_>>>()?;
        Ok((rows.len() as u64, rows))
    }

    /// Runs on a SQLite connection. Parameters are bound by their number (`$3` is the third argument), since
    /// SQLite numbers named parameters in order of appearance.
    fn on_lite(&self, conn: &rusqlite::Connection) -> rusqlite::Result<(u64, Vec<Row>)> {
        let mut stmt = conn.prepare_cached(&self.sql)?;
        for i in 1..=stmt.parameter_count() {
            let name = stmt.parameter_name(i).unwrap_or("?");
            let arg = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| self.args.get(n.wrapping_sub(1)))
                .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?;
            match arg {
                Arg::Int(v) => stmt.raw_bind_parameter(i, v)?,
                Arg::Text(v) => stmt.raw_bind_parameter(i, v)?,
            }
        }
        let columns = stmt.column_count();
        // `changes()` keeps the count of the connection's last write: a read reports the rows it returned.
        let writes = !stmt.readonly();
        if columns == 0 {
            return Ok((stmt.raw_execute()? as u64, Vec::new()));
        }
        let mut out = Vec::new();
        let mut rows = stmt.raw_query();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(n) => Value::Int(n),
                    rusqlite::types::ValueRef::Text(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    other => {
                        return Err(rusqlite::Error::InvalidColumnType(
                            i,
                            format!("{:?}", other.data_type()),
                            other.data_type(),
                        ));
                    }
                });
            }
            out.push(Row(values));
        }
        drop(rows);
        let changed = if writes {
            conn.changes()
        } else {
            out.len() as u64
        };
        Ok((changed, out))
    }
}

/// Converts a PostgreSQL row by its columns' types.
pub(crate) fn pg_row(row: &PgRow) -> Result<Row> {
    use sqlx::{Column, Row as _, TypeInfo, ValueRef};
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        if row.try_get_raw(i)?.is_null() {
            values.push(Value::Null);
            continue;
        }
        values.push(match column.type_info().name() {
            "INT8" => Value::Int(row.try_get::<i64, _>(i)?),
            "INT4" => Value::Int(row.try_get::<i32, _>(i)?.into()),
            "INT2" => Value::Int(row.try_get::<i16, _>(i)?.into()),
            "BOOL" => Value::Int(row.try_get::<bool, _>(i)?.into()),
            "VOID" => Value::Null,
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => Value::Text(row.try_get::<String, _>(i)?),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "column {i} has type {other}, which the store does not read"
                )));
            }
        });
    }
    Ok(Row(values))
}

#[cfg(test)]
mod tests {
    #[test]
    fn literals_are_escaped_and_quoted_text_is_left_alone() {
        use super::Arg;
        let args = [
            Arg::Text(Some("it's a \\ back'slash".into())),
            Arg::Int(Some(-7)),
            Arg::Text(None),
        ];
        assert_eq!(
            super::inlined("SELECT $1, '$2', $2, $3", &args).unwrap(),
            "SELECT E'it''s a \\\\ back''slash', '$2', -7, NULL"
        );
        assert!(super::inlined("SELECT $4", &args).is_err());
        assert!(super::inlined("SELECT $1", &[Arg::Text(Some("a\0b".into()))]).is_err());
    }

    #[test]
    fn placeholders_number_rows_of_parameters_from_the_first() {
        assert_eq!(super::placeholders(3, 2, 2), "($3, $4), ($5, $6)");
        assert_eq!(super::placeholders(1, 1, 3), "($1, $2, $3)");
        assert_eq!(super::placeholders(1, 0, 3), "");
    }
}
