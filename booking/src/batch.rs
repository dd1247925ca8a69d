//! Statements built as values, so that a write of several statements can run
//! as one transaction in as few trips to the database as it allows.
//!
//! SQLite runs on its own thread behind sqlx, and every statement is a round
//! trip to that thread. While one process writes, all its writers wait in
//! line ([`Db::write_turn`]), so those trips are what bounds how many
//! bookings a second SQLite takes. [`Db::run`] therefore sends a whole
//! transaction to SQLite as one multi-statement call. PostgreSQL cannot
//! prepare several statements at once, and a transaction of them costs a
//! round trip each plus two for BEGIN and COMMIT; there the statements
//! become one, the others as data-modifying `WITH` parts of the last, which
//! is one round trip and its own transaction.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};

use crate::db::{Backend, Db};

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
#[derive(Debug, Clone)]
pub struct Statement {
    sql: String,
    args: Vec<Arg>,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            args: Vec::new(),
        }
    }

    /// Binds the next placeholder.
    pub fn bind(mut self, value: impl Into<Arg>) -> Statement {
        self.args.push(value.into());
        self
    }

    /// Runs the statement on `conn`, inside whatever transaction it holds.
    pub async fn execute(&self, conn: &mut AnyConnection) -> Result<u64, sqlx::Error> {
        Ok(bind_all(sqlx::query(&self.sql), &self.args)
            .execute(conn)
            .await?
            .rows_affected())
    }
}

fn bind_all<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    args: impl IntoIterator<Item = &'q Arg>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for arg in args {
        query = match arg {
            Arg::Text(v) => query.bind(v.as_str()),
            Arg::Int(v) => query.bind(*v),
            Arg::Null => query.bind(None::<String>),
        };
    }
    query
}

/// Joins `statements` into one SQLite transaction: `BEGIN IMMEDIATE; ...;
/// COMMIT`, with each statement's placeholders renumbered after those of the
/// statements before it, and all the values in order.
fn joined(statements: &[Statement]) -> (String, Vec<&Arg>) {
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    let mut args = Vec::new();
    for s in statements {
        sql.push_str(&renumber(&s.sql, args.len()));
        sql.push_str(";\n");
        args.extend(s.args.iter());
    }
    sql.push_str("COMMIT;");
    (sql, args)
}

/// Joins `statements` into one PostgreSQL statement: `WITH s0 AS (...), s1
/// AS (...) last`, with the placeholders renumbered as in [`joined`]. The
/// parts of one statement all see the database as it was before it, so none
/// may depend on what another writes.
fn as_one(statements: &[Statement]) -> (String, Vec<&Arg>) {
    let mut sql = String::new();
    let mut args = Vec::new();
    let last = statements.len().saturating_sub(1);
    for (i, s) in statements.iter().enumerate() {
        let part = renumber(&s.sql, args.len());
        args.extend(s.args.iter());
        if i == last {
            if i > 0 {
                sql.push(' ');
            }
            sql.push_str(&part);
        } else {
            sql.push_str(if i == 0 { "WITH " } else { ", " });
            sql.push_str(&format!("s{i} AS ({part})"));
        }
    }
    (sql, args)
}

/// `sql` with every `$n` placeholder turned into `$(n + offset)`. Our SQL
/// holds no `$` other than placeholders.
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

impl Db {
    /// Runs `statements` as one transaction: all of them or none. On SQLite
    /// this takes the write turn and makes one trip to the database; on
    /// PostgreSQL it is one statement. No statement may depend on what an
    /// earlier one writes, since on PostgreSQL they do not see it. See the
    /// module documentation.
    pub async fn run(&self, statements: &[Statement]) -> Result<(), sqlx::Error> {
        if statements.is_empty() {
            return Ok(());
        }
        match self.backend() {
            Backend::Sqlite => {
                let (sql, args) = joined(statements);
                // The turn before the connection, as every writer does:
                // waiting for the turn while holding a connection could
                // starve the turn's holder of one.
                let mut turn = self.sqlite_turn().await;
                let conn = self.turn_connection(&mut turn).await?;
                if let Err(e) = bind_all(sqlx::query(&sql), args).execute(&mut *conn).await {
                    // A statement failed after BEGIN: end the transaction, so
                    // the connection stays fit to keep for the next write (a
                    // lost race for a time ends here, and is not rare). When
                    // BEGIN itself failed there is none, and this fails
                    // harmlessly; a connection that cannot even roll back is
                    // dropped.
                    let rolled_back = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    if !matches!(rolled_back, Ok(_) | Err(sqlx::Error::Database(_))) {
                        turn.take();
                    }
                    return Err(e);
                }
                Ok(())
            }
            Backend::Postgres => {
                let (sql, args) = as_one(statements);
                bind_all(sqlx::query(&sql), args)
                    .execute(self.pool())
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_after_the_statements_before() {
        assert_eq!(
            renumber("INSERT INTO t (a, b) VALUES ($1, $2)", 3),
            "INSERT INTO t (a, b) VALUES ($4, $5)"
        );
        assert_eq!(renumber("SELECT $10, $1", 2), "SELECT $12, $3");
        assert_eq!(renumber("no placeholders", 5), "no placeholders");
    }

    #[test]
    fn a_joined_batch_is_one_immediate_transaction_with_all_values_in_order() {
        let statements = [
            Statement::new("INSERT INTO a VALUES ($1, $2)")
                .bind(1)
                .bind("x"),
            Statement::new("UPDATE b SET c = $2 WHERE d = $1")
                .bind("y")
                .bind(None::<i64>),
        ];
        let (sql, args) = joined(&statements);
        assert_eq!(
            sql,
            "BEGIN IMMEDIATE;\nINSERT INTO a VALUES ($1, $2);\nUPDATE b SET c = $4 WHERE d = $3;\nCOMMIT;"
        );
        assert_eq!(
            args,
            vec![
                &Arg::Int(1),
                &Arg::Text("x".into()),
                &Arg::Text("y".into()),
                &Arg::Null
            ]
        );
    }

    #[test]
    fn postgres_gets_one_statement_with_the_others_as_with_parts() {
        let statements = [
            Statement::new("INSERT INTO a VALUES ($1, $2)")
                .bind(1)
                .bind("x"),
            Statement::new("UPDATE b SET c = $1").bind("y"),
            Statement::new("INSERT INTO d VALUES ($1)").bind(2),
        ];
        let (sql, args) = as_one(&statements);
        assert_eq!(
            sql,
            "WITH s0 AS (INSERT INTO a VALUES ($1, $2)), s1 AS (UPDATE b SET c = $3) \
             INSERT INTO d VALUES ($4)"
        );
        assert_eq!(args.len(), 4);
        assert_eq!(as_one(&statements[2..]).0, "INSERT INTO d VALUES ($1)");
    }

    #[tokio::test]
    async fn a_failing_statement_leaves_nothing_behind_and_the_connection_usable() {
        for database in crate::testing::databases().await {
            let db = &database.db;
            let ok = Statement::new("INSERT INTO catalog_version (id, version) VALUES ($1, $2)")
                .bind(1)
                .bind(5);
            let update =
                Statement::new("UPDATE catalog_version SET version = $1 WHERE id = 1").bind(42);
            // The insert breaks the primary key: the update before it must
            // not survive.
            let result = db.run(&[update.clone(), ok]).await;
            assert!(result.is_err(), "{}", database.url);
            let version: i64 = sqlx::query_scalar("SELECT version FROM catalog_version")
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert_ne!(version, 42, "{}", database.url);
            db.run(&[update]).await.unwrap();
            let version: i64 = sqlx::query_scalar("SELECT version FROM catalog_version")
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert_eq!(version, 42, "{}", database.url);
        }
    }
}
