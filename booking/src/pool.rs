//! The connection pool, the two database dialects, the schema's migrations
//! and SQLite's one write turn: the bottom of the crate, which calls nothing
//! else in it. [`crate::db::Db`] adds the domain's caches on top.
//!
//! Kontakt runs the same queries on SQLite and PostgreSQL through sqlx's `Any`
//! driver. Queries use `$1` placeholders, which both accept, and only the
//! types both decode: `TEXT` and `BIGINT` (times are unix seconds in UTC;
//! flags are 0 or 1, because the Any driver cannot decode SQLite booleans).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{
    AnyConnection, AnyPool, AssertSqlSafe, ConnectOptions, Connection, Executor, SqlSafeStr, SqlStr,
};

/// Which database a [`Pool`] talks to. A few statements differ between the two
/// (row locking, for example); everything else is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database: a pool, the dialect it speaks, and SQLite's write turn.
#[derive(Debug, Clone)]
pub struct Pool {
    pool: AnyPool,
    backend: Backend,
    writer: std::sync::Arc<tokio::sync::Mutex<Option<AnyConnection>>>,
    checkpoints: Arc<Checkpoints>,
}

/// SQLite's checkpoints (copying what the WAL holds back into the database
/// file), mostly done beside the writers instead of in their turn. Left to
/// itself, SQLite checkpoints in the connection that commits, after the
/// commit, once the WAL holds a thousand pages: the one writer then stalls
/// while it copies them, and every write waiting behind it, a booking or a
/// chat message, waits as long. A passive checkpoint on another connection
/// copies the pages meanwhile, so that the writer's own finds little left to
/// copy. The writer's own still runs: only it can start the WAL afresh,
/// because a checkpoint beside a busy writer never catches up with it.
#[derive(Debug)]
struct Checkpoints {
    /// Turns of the kept write connection since the last checkpoint began.
    turns: AtomicU32,
    running: AtomicBool,
    /// How many have finished, for whoever waits for one.
    finished: tokio::sync::watch::Sender<u64>,
}

impl Default for Checkpoints {
    fn default() -> Checkpoints {
        Checkpoints {
            turns: AtomicU32::new(0),
            running: AtomicBool::new(false),
            finished: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// How many turns of the kept write connection pass between checkpoints
/// beside it. A turn writes a batch, a few dozen pages of the WAL.
const CHECKPOINT_EVERY_TURNS: u32 = 16;

/// What the kept write connection is set to beyond the other connections.
/// One of its transactions, a batch of bookings or of chat events, changes
/// pages all over the indexes: under chat load one or two leaves of each
/// index for each active room, more than the default page cache (2,000
/// KiB) holds. SQLite then writes changed pages to the WAL in the middle of
/// the transaction to make room, and reads them back for the next rows: a
/// third of the writer thread's time (`pagerStress` in `perf`;
/// BENCHMARKS.md). Without spilling, the cache holds a transaction's
/// changed pages until it commits, however many, and goes back to its size
/// after. A bigger cache (64 MiB) did as well for chat but cost booking 8 %.
const WRITER_PRAGMAS: &str = "PRAGMA cache_spill = OFF";

/// A turn to write to SQLite; see [`Pool::write_turn`]. It holds the
/// connection the last batch write went through, if it was kept. That
/// connection is detached from the pool: a pooled one could neither be
/// dropped outside a runtime nor let the pool close.
pub type WriteTurn<'a> = tokio::sync::MutexGuard<'a, Option<AnyConnection>>;

/// How long a PostgreSQL connection may sit idle in the pool before it is
/// pinged on its way out; see [`Pool::connect`].
pub(crate) const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL {0:?}: use sqlite:// or postgres://")]
    UnsupportedUrl(String),
    #[error("could not create the database directory {path}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("could not rebuild derived tables after migrating: {0}")]
    Derived(String),
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Pool {
    /// Connects to `url`, creating a SQLite file (and its directory) if it is
    /// missing. `max_connections` bounds the pool.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Pool, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(url.to_owned()));
        };
        if backend == Backend::Sqlite {
            create_sqlite_parent_dir(url)?;
        }
        let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // A SQLite connection is a file handle that does not go stale. A
            // PostgreSQL one can, while it sits idle (a server restart, a
            // proxy's timeout): those are pinged before use, and one in
            // steady use, which answered a moment ago, is not, since a ping
            // is a round trip and a booking acquires about six times.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if backend == Backend::Postgres && meta.idle_for > PING_IDLE_AFTER {
                        return Ok(conn.ping().await.is_ok());
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer; the busy
                        // timeout makes writers queue instead of failing. No
                        // memory map: after another connection commits,
                        // SQLite unmaps a reader's whole map before its next
                        // read, and under booking load that munmap, the TLB
                        // shootdowns and the page faults after it cost more
                        // than reading the pages (a third of the server's CPU
                        // per booking by `perf`; BENCHMARKS.md). Temporary
                        // data in memory: group commit runs each transaction
                        // in a savepoint, whose statement journal is
                        // otherwise a temporary file that every changed page
                        // is first written to (7 % of the server's CPU).
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                             PRAGMA mmap_size = 0; PRAGMA temp_store = MEMORY;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Pool {
            pool,
            backend,
            writer: Default::default(),
            checkpoints: Default::default(),
        })
    }

    /// Applies the schema migrations of this database's dialect; see
    /// [`crate::db::Db::migrate`] for the tables derived from it.
    pub async fn migrate_schema(&self) -> Result<(), DbError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// On SQLite, queues this process's writers before they touch the
    /// database. SQLite admits one writer at a time, and its busy handler
    /// backs off by sleeping, which under contention costs far more than
    /// waiting in line here. PostgreSQL needs no such queue: `None`.
    pub async fn write_turn(&self) -> Option<WriteTurn<'_>> {
        match self.backend {
            Backend::Sqlite => Some(self.sqlite_turn().await),
            Backend::Postgres => None,
        }
    }

    /// The write turn on SQLite, where the caller knows it is on SQLite.
    pub(crate) async fn sqlite_turn(&self) -> WriteTurn<'_> {
        self.writer.lock().await
    }

    /// The connection for the busiest writes in `turn` (a booking's batch,
    /// a batch of chat events): the one the last of them went through, kept
    /// between turns, or a new one from the pool. The pool hands out its
    /// connections in turn, and a SQLite connection that sees the database
    /// changed by another one drops its page cache and rereads the changed
    /// pages from the WAL; the kept one finds them in its cache. A caller
    /// that cannot leave it fit for the next write (no transaction open)
    /// drops it with `turn.take()`.
    pub(crate) async fn turn_connection<'t>(
        &self,
        turn: &'t mut WriteTurn<'_>,
    ) -> Result<&'t mut AnyConnection, sqlx::Error> {
        let conn = match turn.take() {
            Some(conn) => conn,
            None => {
                let mut conn = self.pool.acquire().await?.detach();
                conn.execute(WRITER_PRAGMAS).await?;
                conn
            }
        };
        self.checkpoint_soon();
        Ok(turn.insert(conn))
    }

    /// Counts a turn of the kept write connection and, every
    /// [`CHECKPOINT_EVERY_TURNS`], starts a passive checkpoint on a pooled
    /// connection unless one is running. A passive checkpoint takes no lock
    /// the writer needs and waits for none.
    fn checkpoint_soon(&self) {
        let checkpoints = &self.checkpoints;
        if checkpoints.turns.fetch_add(1, Ordering::Relaxed) + 1 < CHECKPOINT_EVERY_TURNS
            || checkpoints.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        checkpoints.turns.store(0, Ordering::Relaxed);
        let pool = self.pool.clone();
        let checkpoints = checkpoints.clone();
        tokio::spawn(async move {
            let done = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_optional(&pool)
                .await;
            match done {
                // The writer's own checkpoint copies what this one did not.
                Err(e) if !matches!(e, sqlx::Error::PoolClosed) => {
                    tracing::warn!(error = %e, "SQLite checkpoint failed")
                }
                _ => {}
            }
            checkpoints.running.store(false, Ordering::Release);
            checkpoints.finished.send_modify(|n| *n += 1);
        });
    }

    /// Closes the writers' kept connection and the pool, waiting for the
    /// connections in use.
    pub async fn close(&self) {
        // The turn is held until the pool is closed, so that no writer
        // takes a connection to keep meanwhile.
        let mut turn = self.writer.lock().await;
        if let Some(conn) = turn.take() {
            let _ = conn.close().await;
        }
        self.pool.close().await;
    }

    /// Checks that the database answers, for health checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// The file a `sqlite:` URL names, or `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<&std::path::Path> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| std::path::Path::new(path))
}

fn create_sqlite_parent_dir(url: &str) -> Result<(), DbError> {
    let Some(path) = sqlite_file(url) else {
        return Ok(());
    };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|source| DbError::CreateDir {
                path: parent.display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

/// SQL that this crate put together at run time from its own pieces: a
/// column list, a dialect's form of a statement, placeholders numbered for
/// a batch or a list, a name it generated. No value a caller passes ever
/// goes into the text; values are bound. sqlx takes SQL other than a
/// `&'static str` only with that assertion (`AssertSqlSafe`), and this is
/// where the crate makes it.
pub(crate) fn built_sql(sql: String) -> SqlStr {
    AssertSqlSafe(sql).into_sql_str()
}

/// True when `err` is the database refusing a second active booking for the
/// same staff member and time: the unique index, the SQLite overlap trigger or
/// the PostgreSQL exclusion constraint.
pub(crate) fn is_booking_conflict(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    let code = db.code();
    let code = code.as_deref().unwrap_or_default();
    // 23505 unique_violation and 23P01 exclusion_violation on PostgreSQL;
    // 2067 SQLITE_CONSTRAINT_UNIQUE, and the trigger's RAISE(ABORT) message.
    matches!(code, "23505" | "23P01" | "2067" | "1555") || db.message().contains("booking_overlap")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    /// Writes that stay below SQLite's own checkpoint threshold reach the
    /// database file all the same, through the checkpoint beside the writer:
    /// the file grows only when pages are copied back from the WAL.
    #[tokio::test]
    async fn the_checkpoint_beside_the_writer_copies_the_wal_into_the_database() {
        let t = TestDb::sqlite().await;
        let db = &t.db;
        let path = sqlite_file(&t.url).unwrap().to_owned();
        sqlx::query("CREATE TABLE filler (x TEXT NOT NULL)")
            .execute(db.pool())
            .await
            .unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(db.pool())
            .await
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let mut finished = db.base().checkpoints.finished.subscribe();
        finished.mark_unchanged();
        // Sixteen turns of 64 KiB each: about 260 pages, a quarter of what
        // makes SQLite checkpoint on its own.
        for i in 0..CHECKPOINT_EVERY_TURNS {
            let mut turn = db.sqlite_turn().await;
            let conn = db.turn_connection(&mut turn).await.unwrap();
            sqlx::query("INSERT INTO filler (x) VALUES ($1)")
                .bind(format!("{i}").repeat(1 << 16))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), finished.changed())
            .await
            .expect("a checkpoint within 10 s")
            .unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(
            after >= before + (CHECKPOINT_EVERY_TURNS as u64 - 1) * (1 << 16),
            "the database file grew from {before} to {after} bytes"
        );
    }

    /// The kept write connection keeps a transaction's changed pages in
    /// its cache; pooled ones spill them as SQLite does by default.
    #[tokio::test]
    async fn the_kept_write_connection_does_not_spill_its_cache() {
        let t = TestDb::sqlite().await;
        let db = &t.db;
        let spill = |row: sqlx::any::AnyRow| sqlx::Row::get::<i64, _>(&row, 0);
        let mut turn = db.sqlite_turn().await;
        let conn = db.turn_connection(&mut turn).await.unwrap();
        let kept = sqlx::query("PRAGMA cache_spill")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(spill(kept), 0);
        let pooled = sqlx::query("PRAGMA cache_spill")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_ne!(spill(pooled), 0);
    }
}
