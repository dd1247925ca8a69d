//! A statement built as a value, and the queue of transactions of them
//! that waits for the batch writer (`batch`). The database handle holds the
//! queue, so this sits below it and knows nothing of the writer.

use std::sync::{Arc, Mutex};

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};

use crate::pool::built_sql;
use tokio::sync::{mpsc, oneshot};

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
    Null,
}

impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(v.to_owned())
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(v)
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(v)
    }
}

impl<T: Into<Arg>> From<Option<T>> for Arg {
    fn from(v: Option<T>) -> Arg {
        v.map_or(Arg::Null, Into::into)
    }
}

/// One statement with `$1`, `$2`, ... placeholders and the values for them.
/// Its text is this crate's own SQL, which [`built_sql`] vouches for when it
/// runs: values go in as bound arguments, never into the text.
#[derive(Debug, Clone)]
pub struct Statement {
    pub(crate) sql: String,
    pub(crate) args: Vec<Arg>,
    pub(crate) upserts: Option<String>,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            args: Vec::new(),
            upserts: None,
        }
    }

    /// Names the row this upsert may change (any text that tells it from
    /// other rows), so that PostgreSQL's batch writer never puts two upserts
    /// of the same row in one statement, where the second would fail the
    /// whole run. Without it the result is the same, only slower.
    pub fn upserts(mut self, row: impl Into<String>) -> Statement {
        self.upserts = Some(row.into());
        self
    }

    pub(crate) fn inserts(&self) -> bool {
        self.sql
            .trim_start()
            .get(..7)
            .is_some_and(|word| word.eq_ignore_ascii_case("INSERT "))
    }

    /// Binds the next placeholder.
    pub fn bind(mut self, value: impl Into<Arg>) -> Statement {
        self.args.push(value.into());
        self
    }

    /// Runs the statement on `conn`, inside whatever transaction it holds.
    pub async fn execute(&self, conn: &mut AnyConnection) -> Result<u64, sqlx::Error> {
        let query = bind_all(sqlx::query(built_sql(self.sql.clone())), &self.args);
        Ok(query.execute(conn).await?.rows_affected())
    }
}

pub(crate) fn bind_all<'a>(
    mut query: Query<'static, Any, AnyArguments>,
    args: impl IntoIterator<Item = &'a Arg>,
) -> Query<'static, Any, AnyArguments> {
    for arg in args {
        query = match arg {
            Arg::Text(v) => query.bind(v.as_str()),
            Arg::Int(v) => query.bind(*v),
            Arg::Null => query.bind(None::<String>),
        };
    }
    query
}

/// The queue of a [`crate::Db`]'s batch writer, started on first use and again if
/// it has stopped (its runtime shut down).
pub(crate) type Batches = Arc<Mutex<Option<mpsc::UnboundedSender<Job>>>>;

/// One caller's transaction, waiting for the batch writer.
pub(crate) struct Job {
    pub(crate) statements: Vec<Statement>,
    pub(crate) done: oneshot::Sender<Result<(), sqlx::Error>>,
}
