//! The SQL layer every store function is written against, once, for both
//! backends: [`Tx`] runs a statement with `?N` placeholders and [`Value`]
//! parameters and answers [`Row`]s of [`Value`]s.
//!
//! Portable SQL only in the store functions: `?1`..`?N` placeholders (the
//! PostgreSQL backend rewrites them to `$1`..`$N`), `INSERT ... ON CONFLICT
//! ... DO NOTHING`, `RETURNING`, integers as 64-bit, booleans stored as 0/1,
//! no backend functions (`json_extract`, `LIMIT -1`, ...). What differs
//! (schema text, connection setup) lives in `sqlite.rs` and `postgres.rs`.

use anyhow::{bail, Context, Result};

/// Which database a [`Tx`] talks to (for the rare statement that must differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    /// Read only (a PostgreSQL boolean expression); parameters send 0/1.
    Bool(bool),
}

/// What can be a statement parameter (see [`params!`](crate::params)).
pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_to_value!(i64, i32, u32, u16, u64, usize);

/// Statement parameters: `params![mac, now, hostname]` (anything [`ToValue`]).
#[macro_export]
macro_rules! params {
    () => { &[] as &[$crate::store::Value] };
    ($($e:expr),+ $(,)?) => {
        &[$($crate::store::ToValue::to_value(&$e)),+] as &[$crate::store::Value]
    };
}

/// What a column reads as.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Result<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => bail!("expected an integer, found {other:?}"),
        }
    }
}

impl FromValue for u64 {
    /// Negative stored values read as 0.
    fn from_value(v: &Value) -> Result<Self> {
        Ok(i64::from_value(v)?.max(0) as u64)
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Int(i) => Ok(*i != 0),
            Value::Bool(b) => Ok(*b),
            other => bail!("expected a boolean, found {other:?}"),
        }
    }
}

impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => bail!("expected a number, found {other:?}"),
        }
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => bail!("expected text, found {other:?}"),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl FromValue for Value {
    fn from_value(v: &Value) -> Result<Self> {
        Ok(v.clone())
    }
}

/// One result row.
#[derive(Debug, Clone, Default)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// Column `i` (from 0) as `T`; `Option<T>` for a nullable column.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let v = self
            .0
            .get(i)
            .with_context(|| format!("no column {i} in a row of {}", self.0.len()))?;
        T::from_value(v).with_context(|| format!("column {i}"))
    }
}

/// A connection as the store drives it (`sqlite.rs`, `postgres.rs`).
pub(crate) trait Backend {
    fn dialect(&self) -> Dialect;
    /// Run one statement; the number of rows it changed.
    fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64>;
    /// Run one statement; every row it answered.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Run statements without parameters (tests, savepoints).
    fn batch(&mut self, sql: &str) -> Result<()>;
    /// The connection is lost (the store threads open a new one).
    fn is_broken(&self) -> bool {
        false
    }
}

/// One transaction: a store function's whole view of the database.
///
/// A write closure runs inside the writer's shared transaction under its own
/// savepoint: an `Err` (or [`Tx::roll_back`]) undoes its work only.
pub struct Tx<'a> {
    pub(crate) conn: &'a mut dyn Backend,
    pub(crate) rollback: bool,
    /// Set by a write that must wake waiting agents on every server
    /// ([`Tx::wake_waiters`]).
    pub(crate) wake: bool,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(conn: &'a mut dyn Backend) -> Self {
        Self {
            conn,
            rollback: false,
            wake: false,
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.conn.dialect()
    }

    /// Run a statement (`?N` placeholders); the number of rows changed.
    pub fn exec(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        self.conn
            .exec(sql, params)
            .with_context(|| format!("running {}", first_line(sql)))
    }

    /// Every row a statement answers.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.conn
            .query(sql, params)
            .with_context(|| format!("running {}", first_line(sql)))
    }

    /// The first row, if any.
    pub fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row; an error when there is none.
    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row> {
        self.query_opt(sql, params)?
            .with_context(|| format!("no row from {}", first_line(sql)))
    }

    /// Column 0 of the first row, if there is a row.
    pub fn value<T: FromValue>(&mut self, sql: &str, params: &[Value]) -> Result<Option<T>> {
        self.query_opt(sql, params)?.map(|r| r.get(0)).transpose()
    }

    /// Statements without parameters, `;`-separated (tests, fixtures).
    pub fn batch(&mut self, sql: &str) -> Result<()> {
        self.conn
            .batch(sql)
            .with_context(|| format!("running {}", first_line(sql)))
    }

    /// Undo this closure's writes when it returns, though it returns `Ok`
    /// (e.g. a refused batch that answers why).
    pub fn roll_back(&mut self) {
        self.rollback = true;
    }

    /// After the commit, wake the agents waiting on `POST /agent/wait` on
    /// every server sharing the database (in this process; PostgreSQL
    /// `NOTIFY` for the others).
    pub fn wake_waiters(&mut self) {
        self.wake = true;
    }
}

fn first_line(sql: &str) -> String {
    let s = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// `?N` and `?` placeholders as PostgreSQL's `$N` (outside quoted text).
pub fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut next = 0u32;
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                out.push(c);
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    next += 1;
                    out.push_str(&next.to_string());
                } else {
                    out.push_str(&digits);
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE a = ?2 AND b = '?1' AND c = ?10"),
            "SELECT a FROM t WHERE a = $2 AND b = '?1' AND c = $10"
        );
        assert_eq!(dollar_placeholders("VALUES (?, ?)"), "VALUES ($1, $2)");
    }

    #[test]
    fn values_convert_both_ways() {
        let p = crate::params![1i64, "a", None::<String>, true, Some(3u64)];
        assert_eq!(
            p,
            [
                Value::Int(1),
                Value::Text("a".into()),
                Value::Null,
                Value::Int(1),
                Value::Int(3)
            ]
        );
        let r = Row(vec![Value::Int(-2), Value::Null, Value::Bool(true)]);
        assert_eq!(r.get::<u64>(0).unwrap(), 0);
        assert_eq!(r.get::<Option<String>>(1).unwrap(), None);
        assert!(r.get::<bool>(2).unwrap());
        assert!(r.get::<String>(0).is_err());
        assert!(r.get::<i64>(7).is_err());
    }
}
