//! Statements built as values, so that a write of several statements can run
//! as one transaction in as few trips to the database as it allows.
//!
//! SQLite runs on its own thread behind sqlx, and every statement is a round
//! trip to that thread. While one process writes, all its writers wait in
//! line ([`Db::write_turn`]), so those trips are what bounds how many
//! bookings a second SQLite takes. [`Db::run`] therefore sends a whole
//! transaction to SQLite as one multi-statement call, and when several wait,
//! one writer task commits them together (group commit): runs of equal
//! transactions as one call each, in a savepoint, and one by one when a run
//! fails, so that a failing transaction leaves the others be. One commit
//! then writes each changed page to the WAL once instead of once per
//! transaction.
//!
//! PostgreSQL cannot prepare several statements at once, and a transaction
//! of them costs a round trip each plus two for BEGIN and COMMIT; there the
//! statements become one, the others as data-modifying `WITH` parts of the
//! last, which is one round trip and its own transaction. Most of what a
//! single insert costs PostgreSQL is per statement (executor start, index
//! and constraint setup, the commit), so transactions made only of inserts
//! go to a batch writer as well, which sends runs of equal ones as one such
//! statement: 0.28 ms of PostgreSQL's CPU per booking in runs of eight
//! against 0.6 ms alone (BENCHMARKS.md). Updates never share a statement:
//! two parts of one statement that change the same row leave only one of
//! the changes, without an error. Two inserts of the same key fail instead,
//! and so does an upsert that meets another one's row, and then the run is
//! redone one transaction at a time, as on SQLite; [`Statement::upserts`]
//! lets the writer keep known upserts of one row in different runs.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use sqlx::{AnyConnection, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::db::{built_sql, Backend, Db, WriteTurn, PING_IDLE_AFTER};
use crate::statement::{bind_all, Job};

pub use crate::statement::{Arg, Statement};

/// Joins `statements` into one SQLite transaction: `BEGIN IMMEDIATE; ...;
/// COMMIT`, with each statement's placeholders renumbered after those of the
/// statements before it, and all the values in order.
fn joined(statements: &[Statement]) -> (String, Vec<&Arg>) {
    wrapped("BEGIN IMMEDIATE", statements, "COMMIT")
}

/// `statements` between `open` and `close`, one statement a line, with
/// each statement's placeholders renumbered after those of the ones before.
fn wrapped<'s>(
    open: &str,
    statements: impl IntoIterator<Item = &'s Statement>,
    close: &str,
) -> (String, Vec<&'s Arg>) {
    let mut sql = format!("{open};\n");
    let mut args = Vec::new();
    for s in statements {
        sql.push_str(&renumber(&s.sql, args.len()));
        sql.push_str(";\n");
        args.extend(s.args.iter());
    }
    sql.push_str(close);
    sql.push(';');
    (sql, args)
}

/// Joins `statements` into one PostgreSQL statement: `WITH s0 AS (...), s1
/// AS (...) last`, with the placeholders renumbered as in [`joined`]. The
/// parts of one statement all see the database as it was before it, so none
/// may depend on what another writes.
fn as_one<'s>(
    statements: impl IntoIterator<Item = &'s Statement, IntoIter: ExactSizeIterator>,
) -> (String, Vec<&'s Arg>) {
    let mut sql = String::new();
    let mut args = Vec::new();
    let statements = statements.into_iter();
    let last = statements.len().saturating_sub(1);
    for (i, s) in statements.enumerate() {
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

/// The most transactions one SQLite commit takes. A booking binds about 50
/// values, and SQLite takes 32,766 in one statement; the bound keeps a
/// batch's latency near that of the transactions in it.
const MAX_BATCH: usize = 64;

/// The most transactions one PostgreSQL statement takes: its runs are 1, 2,
/// 4, 8 or 16 long, five texts for the statement cache per kind of write.
const MAX_POSTGRES_BATCH: usize = 16;

/// Takes the jobs waiting on `queue` and writes them, as many as have
/// arrived by the time the last batch is done, until every sender is gone.
/// On PostgreSQL a job that upserts a row another job of the batch upserts
/// waits for the next batch, ahead of later arrivals.
async fn write_batches(db: Db, mut queue: mpsc::UnboundedReceiver<Job>) {
    let (limit, distinct_rows) = match db.backend() {
        Backend::Sqlite => (MAX_BATCH, false),
        Backend::Postgres => (MAX_POSTGRES_BATCH, true),
    };
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut kept = Kept::default();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(job) => waiting.push_back(job),
                None => {
                    if let Some(conn) = kept.conn.take() {
                        let _ = conn.close().await;
                    }
                    return;
                }
            }
        }
        while let Ok(job) = queue.try_recv() {
            waiting.push_back(job);
        }
        let batch = take_batch(&mut waiting, limit, distinct_rows);
        let statements: Vec<&[Statement]> = batch.iter().map(|j| &j.statements[..]).collect();
        let results = match db.backend() {
            Backend::Sqlite => db.commit_together(&statements).await,
            Backend::Postgres => kept.send_together(&db, &statements).await,
        };
        for (job, result) in batch.into_iter().zip(results) {
            // A caller that stopped waiting has nothing to be told.
            let _ = job.done.send(result);
        }
    }
}

/// The PostgreSQL batch writer's own connection, taken from the pool when
/// first needed and detached from it (so that the pool can open another in
/// its place, and a pool of one is not left empty), pinged when it has been
/// idle, and given up after any error that is not the database refusing a
/// statement.
#[derive(Default)]
struct Kept {
    conn: Option<AnyConnection>,
    last_used: Option<Instant>,
}

impl Kept {
    /// Sends each of `transactions`, all made of inserts, to PostgreSQL and
    /// says how each went: runs of the same statements (see [`runs`]) as
    /// one statement each, and when a run fails, its transactions one by
    /// one, so that only the failing one fails, with its own error. They go
    /// over the connection the writer keeps, so that PostgreSQL plans each
    /// batch size once for it instead of once for every pooled connection.
    async fn send_together(
        &mut self,
        db: &Db,
        transactions: &[&[Statement]],
    ) -> Vec<Result<(), sqlx::Error>> {
        let mut results: Vec<Option<Result<(), sqlx::Error>>> =
            transactions.iter().map(|_| None).collect();
        for run in runs(transactions) {
            if run.len() > 1 {
                let statements: Vec<&Statement> =
                    run.iter().flat_map(|&i| transactions[i].iter()).collect();
                if self.execute(db, as_one(statements)).await.is_ok() {
                    for &i in &run {
                        results[i] = Some(Ok(()));
                    }
                    continue;
                }
            }
            for &i in &run {
                results[i] = Some(self.execute(db, as_one(transactions[i])).await);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(left_out())))
            .collect()
    }

    async fn execute(
        &mut self,
        db: &Db,
        (sql, args): (String, Vec<&Arg>),
    ) -> Result<(), sqlx::Error> {
        let idle = self
            .last_used
            .is_some_and(|t| t.elapsed() > PING_IDLE_AFTER);
        if let (true, Some(conn)) = (idle, self.conn.as_mut()) {
            if conn.ping().await.is_err() {
                self.conn = None;
            }
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(db.pool().acquire().await?.detach()),
        };
        let result = bind_all(sqlx::query(built_sql(sql)), args)
            .execute(&mut *conn)
            .await;
        self.last_used = Some(Instant::now());
        match result {
            Ok(_) => Ok(()),
            Err(e @ sqlx::Error::Database(_)) => Err(e),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// Up to `limit` of the jobs in `waiting`, first come first; with
/// `distinct_rows`, none that upserts a row an earlier one taken upserts.
/// The others stay in `waiting`, in order.
fn take_batch(waiting: &mut VecDeque<Job>, limit: usize, distinct_rows: bool) -> Vec<Job> {
    let mut batch = Vec::new();
    let mut rows: HashSet<&str> = HashSet::new();
    let mut left = VecDeque::new();
    let mut taken = Vec::new();
    for (i, job) in waiting.iter().enumerate() {
        let upserts = || job.statements.iter().filter_map(|s| s.upserts.as_deref());
        if taken.len() < limit && !(distinct_rows && upserts().any(|row| rows.contains(row))) {
            rows.extend(upserts());
            taken.push(i);
        }
    }
    for (i, job) in waiting.drain(..).enumerate() {
        if taken.binary_search(&i).is_ok() {
            batch.push(job);
        } else {
            left.push_back(job);
        }
    }
    *waiting = left;
    batch
}

/// `statements` wrapped in the savepoint `name`, placeholders renumbered
/// from 1.
fn in_savepoint<'s>(
    name: &str,
    statements: impl IntoIterator<Item = &'s Statement>,
) -> (String, Vec<&'s Arg>) {
    wrapped(
        &format!("SAVEPOINT {name}"),
        statements,
        &format!("RELEASE {name}"),
    )
}

/// The transactions of a batch in runs that go to SQLite as one call each:
/// transactions of the same statements, in runs of a power of two of them,
/// so that the few texts this makes stay in the connection's statement
/// cache instead of being prepared anew for each batch.
fn runs(transactions: &[&[Statement]]) -> Vec<Vec<usize>> {
    let mut shapes: Vec<(Vec<&str>, Vec<usize>)> = Vec::new();
    for (i, statements) in transactions.iter().enumerate() {
        let shape: Vec<&str> = statements.iter().map(|s| s.sql.as_str()).collect();
        match shapes.iter_mut().find(|(known, _)| *known == shape) {
            Some((_, members)) => members.push(i),
            None => shapes.push((shape, vec![i])),
        }
    }
    let mut out = Vec::new();
    for (_, members) in shapes {
        let mut rest = &members[..];
        while !rest.is_empty() {
            let take = 1 << rest.len().ilog2();
            let (run, after) = rest.split_at(take);
            out.push(run.to_vec());
            rest = after;
        }
    }
    out
}

/// An error for a transaction that no run of its batch took, which would be
/// a bug in [`runs`].
fn left_out() -> sqlx::Error {
    sqlx::Error::Protocol("a write left out of its batch".into())
}

/// An error for a transaction that was itself fine but went down with its
/// batch.
fn batch_failed(what: &str, e: &sqlx::Error) -> sqlx::Error {
    sqlx::Error::Protocol(format!("the batch this write was in failed at {what}: {e}"))
}

impl Db {
    /// Runs each of `transactions` all or nothing, on SQLite's kept writer
    /// connection under the write turn, and says how each went: one alone
    /// as one call; several under one commit, in runs of the same statements
    /// that go as one call each (see [`runs`]), and when a run fails, one by
    /// one in savepoints, so that only the failing one is left out. None is
    /// told it succeeded unless the commit did.
    async fn commit_together(&self, transactions: &[&[Statement]]) -> Vec<Result<(), sqlx::Error>> {
        let mut turn = self.sqlite_turn().await;
        let conn = match self.turn_connection(&mut turn).await {
            Ok(conn) => conn,
            Err(e) => {
                return transactions
                    .iter()
                    .map(|_| Err(batch_failed("taking a connection", &e)))
                    .collect()
            }
        };
        if let [only] = transactions {
            let (sql, args) = joined(only);
            let result = bind_all(sqlx::query(built_sql(sql)), args)
                .execute(&mut *conn)
                .await;
            if result.is_err() && !roll_back(conn, "ROLLBACK").await {
                turn.take();
            }
            return vec![result.map(|_| ())];
        }
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            return transactions
                .iter()
                .map(|_| Err(batch_failed("BEGIN", &e)))
                .collect();
        }
        let mut results: Vec<Option<Result<(), sqlx::Error>>> =
            transactions.iter().map(|_| None).collect();
        for run in runs(transactions) {
            if run.len() > 1 {
                let (sql, args) =
                    in_savepoint("run", run.iter().flat_map(|&i| transactions[i].iter()));
                if bind_all(sqlx::query(built_sql(sql)), args)
                    .execute(&mut *conn)
                    .await
                    .is_ok()
                {
                    for &i in &run {
                        results[i] = Some(Ok(()));
                    }
                    continue;
                }
                // One of them failed: undo the run and find out which.
                let undone = sqlx::query("ROLLBACK TO run; RELEASE run")
                    .execute(&mut *conn)
                    .await;
                if let Err(e) = undone {
                    return self.abandon(&mut turn, transactions.len(), None, e).await;
                }
            }
            for &i in &run {
                let (sql, args) = in_savepoint("job", transactions[i].iter());
                let result = bind_all(sqlx::query(built_sql(sql)), args)
                    .execute(&mut *conn)
                    .await;
                if let Err(e) = result {
                    let undone = sqlx::query("ROLLBACK TO job; RELEASE job")
                        .execute(&mut *conn)
                        .await;
                    if undone.is_err() {
                        // The transaction is gone with the savepoint (SQLite
                        // ends it on some errors): nothing in it stands.
                        let n = transactions.len();
                        return self.abandon(&mut turn, n, Some(i), e).await;
                    }
                    results[i] = Some(Err(e));
                } else {
                    results[i] = Some(Ok(()));
                }
            }
        }
        if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
            if !roll_back(conn, "ROLLBACK").await {
                turn.take();
            }
            return transactions
                .iter()
                .map(|_| Err(batch_failed("COMMIT", &e)))
                .collect();
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(left_out())))
            .collect()
    }

    /// Rolls back a batch that cannot go on after `e`, dropping the
    /// connection if even that fails, and fails all `n` of its transactions:
    /// `culprit` with `e`, the others as collateral.
    async fn abandon(
        &self,
        turn: &mut WriteTurn<'_>,
        n: usize,
        culprit: Option<usize>,
        e: sqlx::Error,
    ) -> Vec<Result<(), sqlx::Error>> {
        let kept = match turn.as_mut() {
            Some(conn) => roll_back(conn, "ROLLBACK").await,
            None => true,
        };
        if !kept {
            turn.take();
        }
        let mut all: Vec<_> = (0..n)
            .map(|_| Err(batch_failed("another write's error", &e)))
            .collect();
        if let Some(i) = culprit {
            all[i] = Err(e);
        }
        all
    }

    /// Runs `statements` as one transaction: all of them or none. On SQLite
    /// the batch writer commits it, with whatever other transactions are
    /// waiting; on PostgreSQL it is one statement, which the batch writer
    /// sends with others like it when all of it inserts. No statement may
    /// depend on what an earlier one writes, since on PostgreSQL they do
    /// not see it. A caller that stops waiting does not stop the write. See
    /// the module documentation.
    pub async fn run(&self, statements: &[Statement]) -> Result<(), sqlx::Error> {
        if statements.is_empty() {
            return Ok(());
        }
        let batched = match self.backend() {
            Backend::Sqlite => true,
            Backend::Postgres => statements.iter().all(Statement::inserts),
        };
        if !batched {
            let (sql, args) = as_one(statements);
            return bind_all(sqlx::query(built_sql(sql)), args)
                .execute(self.pool())
                .await
                .map(|_| ());
        }
        let queue = {
            let mut slot = self.batches().lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref().filter(|queue| !queue.is_closed()) {
                Some(queue) => queue.clone(),
                None => {
                    let (queue, jobs) = mpsc::unbounded_channel();
                    tokio::spawn(write_batches(self.without_batches(), jobs));
                    slot.insert(queue).clone()
                }
            }
        };
        let (done, result) = oneshot::channel();
        let job = Job {
            statements: statements.to_vec(),
            done,
        };
        let gone = || sqlx::Error::Protocol("the batch writer has stopped".into());
        queue.send(job).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

/// Ends a failed transaction or savepoint with `sql`, so that the connection
/// stays fit to keep for the next write (a lost race for a time ends here,
/// and is not rare). False when the connection itself failed and should be
/// dropped; a database's refusal (there was nothing to roll back) is fine.
async fn roll_back(conn: &mut AnyConnection, sql: &'static str) -> bool {
    let result = sqlx::query(sql).execute(conn).await;
    matches!(result, Ok(_) | Err(sqlx::Error::Database(_)))
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

    #[test]
    fn a_batch_goes_in_runs_of_equal_transactions_a_power_of_two_long() {
        let one = vec![Statement::new("INSERT INTO a VALUES ($1)").bind(1)];
        let two = vec![
            Statement::new("INSERT INTO a VALUES ($1)").bind(2),
            Statement::new("INSERT INTO b VALUES ($1)").bind(3),
        ];
        let mut transactions: Vec<&[Statement]> = vec![&one; 7];
        transactions.insert(2, &two);
        transactions.push(&two);
        let runs = runs(&transactions);
        let lengths: Vec<usize> = runs.iter().map(Vec::len).collect();
        assert_eq!(lengths, [4, 2, 1, 2]);
        assert_eq!(runs[3], [2, 8]);
        let mut all: Vec<usize> = runs.into_iter().flatten().collect();
        all.sort();
        assert_eq!(all, (0..9).collect::<Vec<_>>());
        let (sql, args) = in_savepoint("run", transactions[2].iter().chain(transactions[8]));
        assert_eq!(
            sql,
            "SAVEPOINT run;\nINSERT INTO a VALUES ($1);\nINSERT INTO b VALUES ($2);\n\
             INSERT INTO a VALUES ($3);\nINSERT INTO b VALUES ($4);\nRELEASE run;"
        );
        assert_eq!(args.len(), 4);
    }

    #[tokio::test]
    async fn writes_that_meet_in_one_commit_stand_or_fall_alone() {
        for database in crate::testing::databases().await {
            let db = &database.db;
            for table in [
                "CREATE TABLE t (k BIGINT PRIMARY KEY)",
                "CREATE TABLE u (k BIGINT)",
            ] {
                sqlx::query(table).execute(db.pool()).await.unwrap();
            }
            let insert = |table: &str, k: i64| {
                Statement::new(format!("INSERT INTO {table} (k) VALUES ($1)")).bind(k)
            };
            db.run(&[insert("t", 0)]).await.unwrap();
            // Forty writers at once, so that SQLite's writer commits most of
            // them together: key 0 is taken, and the last writer's second
            // statement takes it again, so its first must not stand either.
            let mut transactions: Vec<Vec<Statement>> =
                (0..40).map(|k| vec![insert("t", k)]).collect();
            transactions.push(vec![insert("u", 7), insert("t", 0)]);
            let results = futures::future::join_all(transactions.iter().map(|t| db.run(t))).await;
            for (k, result) in results.iter().enumerate() {
                match k {
                    0 | 40 => assert!(
                        matches!(result, Err(sqlx::Error::Database(_))),
                        "{} writer {k}: {result:?}",
                        database.url
                    ),
                    _ => assert!(result.is_ok(), "{} writer {k}: {result:?}", database.url),
                }
            }
            let count = |table: &'static str| async move {
                sqlx::query_scalar::<_, i64>(built_sql(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(db.pool())
                    .await
                    .unwrap()
            };
            assert_eq!(count("t").await, 40, "{}", database.url);
            assert_eq!(count("u").await, 0, "{}", database.url);
        }
    }

    #[test]
    fn a_postgres_batch_leaves_a_second_upsert_of_a_row_for_the_next() {
        let job = |rows: &[&str]| {
            let statements = rows
                .iter()
                .map(|row| Statement::new("INSERT INTO t VALUES (1)").upserts(*row))
                .collect();
            Job {
                statements,
                done: oneshot::channel().0,
            }
        };
        let rows_of = |jobs: &VecDeque<Job>| -> Vec<Vec<String>> {
            jobs.iter()
                .map(|j| {
                    j.statements
                        .iter()
                        .filter_map(|s| s.upserts.clone())
                        .collect()
                })
                .collect()
        };
        let mut waiting: VecDeque<Job> = [
            job(&["a"]),
            job(&["b", "a"]),
            job(&["c"]),
            job(&["b"]),
            job(&[]),
        ]
        .into();
        let batch: VecDeque<Job> = take_batch(&mut waiting, 16, true).into();
        assert_eq!(rows_of(&batch), [vec!["a"], vec!["c"], vec!["b"], vec![]]);
        assert_eq!(rows_of(&waiting), [vec!["b", "a"]]);

        let mut waiting: VecDeque<Job> = [job(&["a"]), job(&["a"]), job(&["b"])].into();
        assert_eq!(take_batch(&mut waiting, 2, false).len(), 2);
        assert_eq!(rows_of(&waiting), [vec!["b"]]);
    }

    #[tokio::test]
    async fn upserts_of_one_row_that_meet_in_a_batch_all_count() {
        for database in crate::testing::databases().await {
            let db = &database.db;
            sqlx::query("CREATE TABLE c (k BIGINT PRIMARY KEY, n BIGINT NOT NULL)")
                .execute(db.pool())
                .await
                .unwrap();
            let add = |n: i64| {
                Statement::new(
                    "INSERT INTO c (k, n) VALUES (1, $1) ON CONFLICT (k) DO UPDATE SET n = c.n + excluded.n",
                )
                .bind(n)
            };
            // Named rows are kept apart; unnamed ones meet in one statement
            // on PostgreSQL, fail there and are redone one by one.
            let named: Vec<Vec<Statement>> = (0..20).map(|_| vec![add(1).upserts("c 1")]).collect();
            let unnamed: Vec<Vec<Statement>> = (0..20).map(|_| vec![add(100)]).collect();
            let results =
                futures::future::join_all(named.iter().chain(&unnamed).map(|t| db.run(t))).await;
            for result in &results {
                assert!(result.is_ok(), "{}: {result:?}", database.url);
            }
            let n: i64 = sqlx::query_scalar("SELECT n FROM c WHERE k = 1")
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert_eq!(n, 2020, "{}", database.url);
        }
    }

    #[tokio::test]
    async fn the_batch_writer_leaves_a_pool_of_one_its_connection() {
        for database in crate::testing::databases().await {
            let db = Db::connect(&database.url, 1).await.unwrap();
            sqlx::query("CREATE TABLE one (k BIGINT PRIMARY KEY)")
                .execute(db.pool())
                .await
                .unwrap();
            db.run(&[Statement::new("INSERT INTO one (k) VALUES ($1)").bind(1)])
                .await
                .unwrap();
            let read =
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM one").fetch_one(db.pool());
            let count = tokio::time::timeout(std::time::Duration::from_secs(10), read)
                .await
                .expect("the pool's only connection is free again")
                .unwrap();
            assert_eq!(count, 1, "{}", database.url);
            db.close().await;
        }
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
