//! Shared by the integration tests: a fresh database per test on SQLite, and
//! on PostgreSQL when `DATABASE_URL` is set, plus outbox shortcuts.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::future::Future;
use std::time::Duration;

use booking::outbox::{enqueue, Message, NeutralTitle};
use booking::{BookingId, Db, EmailAddress, Language};
use jiff::Timestamp;
use sqlx::{AssertSqlSafe, Executor, Row};

/// Runs `check` once against a fresh, migrated SQLite database, and once more
/// against a fresh PostgreSQL database when `DATABASE_URL` is set. The
/// database name goes to `check` for its messages.
pub async fn each_database<F, Fut>(check: F)
where
    F: Fn(Db, &'static str) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/kontakt.db?mode=rwc", dir.path().display());
    let db = Db::connect(&url, 8).await.unwrap();
    db.migrate().await.unwrap();
    check(db, "sqlite").await;

    if let Ok(admin_url) = std::env::var("DATABASE_URL") {
        let guard = PostgresDatabase::create(&admin_url).await;
        let db = Db::connect(&guard.url, 8).await.unwrap();
        db.migrate().await.unwrap();
        check(db.clone(), "postgres").await;
        db.close().await;
    }
}

/// A database `t_<uuid>` created for one test and dropped afterwards, also
/// when the test panics.
struct PostgresDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PostgresDatabase {
    async fn create(admin_url: &str) -> PostgresDatabase {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = Db::connect(admin_url, 1).await.unwrap();
        // The simple protocol: CREATE DATABASE cannot be a prepared statement.
        // The name is the one made above, never input.
        admin
            .pool()
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        admin.close().await;
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("DATABASE_URL names a database");
        PostgresDatabase {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop cannot await, and the test's runtime may be unwinding, so the
        // cleanup gets a runtime of its own on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(admin) = Db::connect(&admin_url, 1).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = admin.pool().execute(AssertSqlSafe(sql)).await;
                }
            });
        })
        .join();
    }
}

/// Enqueues `message` for `to` as `booking` would, due at `due_at`.
pub async fn put(db: &Db, to: &str, language: Language, message: &Message, due_at: i64) -> String {
    put_discreet(db, to, language, message, None, due_at).await
}

/// [`put`], as a discreet mail under `discreet` when it is given.
pub async fn put_discreet(
    db: &Db,
    to: &str,
    language: Language,
    message: &Message,
    discreet: Option<NeutralTitle>,
    due_at: i64,
) -> String {
    let mut conn = db.pool().acquire().await.unwrap();
    enqueue(
        &mut conn,
        &EmailAddress::parse(to).unwrap(),
        language,
        message,
        discreet,
        due_at,
        due_at,
    )
    .await
    .unwrap()
}

/// The status, tries and last error of an outbox row.
pub async fn row_state(db: &Db, id: &str) -> (String, i64, Option<String>) {
    let row = sqlx::query("SELECT status, attempts, last_error FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    (
        row.get("status"),
        row.get("attempts"),
        row.get("last_error"),
    )
}

/// How many outbox rows have `status`.
pub async fn count_status(db: &Db, status: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = $1")
        .bind(status)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// Polls `probe` every 20 ms until it answers `Some`, failing the test after
/// `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    Timestamp::now().as_second()
}

pub fn at(unix: i64) -> Timestamp {
    Timestamp::from_second(unix).unwrap()
}

pub fn booked(booking_id: &str, starts_at: i64, sequence: i64) -> Message {
    Message::BookingConfirmed {
        booking_id: BookingId::parse(booking_id).unwrap(),
        starts_at,
        ends_at: starts_at + 45 * 60,
        sequence,
        manage_token: format!("manage-{booking_id}"),
    }
}

pub fn reminder(booking_id: &str, starts_at: i64, minutes_before: i64) -> Message {
    Message::Reminder {
        booking_id: BookingId::parse(booking_id).unwrap(),
        starts_at,
        ends_at: starts_at + 45 * 60,
        minutes_before,
        manage_token: format!("manage-{booking_id}"),
    }
}
