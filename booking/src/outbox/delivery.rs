//! The delivery worker's side of the outbox table: atomic claims with a
//! lease, the outcome of each send, and what admins see of rows that keep
//! failing. `notify` sends the mail; the SQL of the outbox, writing and
//! delivering alike, is all in this crate.
//!
//! The outcome of a send is a one-statement write through [`Db::run`], which
//! on SQLite commits it together with the bookings being written meanwhile.
//!
//! A row is sent only while its status is `pending`, so a row that `booking`
//! superseded (a reminder of a moved or cancelled meeting) is never claimed,
//! and a row whose outcome is recorded is never claimed again.

use crate::batch::Statement;
use crate::db::{Backend, Db};
use jiff::Timestamp;
use sqlx::Row;

/// A parked row, for the admin list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDelivery {
    pub id: String,
    pub kind: String,
    pub recipient: String,
    pub attempts: i64,
    /// The last SMTP reply or error, e.g. "permanent error (550): ...".
    pub last_error: Option<String>,
    pub created_at: Timestamp,
}

/// Parked rows, newest first, at most `limit`.
pub async fn list_failed(db: &Db, limit: i64) -> Result<Vec<FailedDelivery>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, kind, recipient, attempts, last_error, created_at FROM outbox \
         WHERE status = 'failed' ORDER BY created_at DESC, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(FailedDelivery {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                recipient: row.try_get("recipient")?,
                attempts: row.try_get("attempts")?,
                last_error: row.try_get("last_error")?,
                created_at: timestamp(row.try_get("created_at")?),
            })
        })
        .collect()
}

/// Puts a parked row back in the queue, due at `now`, with a fresh count of
/// tries. Answers false if no failed row has that id.
pub async fn retry_failed(db: &Db, id: &str, now: Timestamp) -> Result<bool, sqlx::Error> {
    // SQLite: wait in this process's writer line, not in its busy handler.
    let _turn = db.write_turn().await;
    let done = sqlx::query(
        "UPDATE outbox SET status = 'pending', attempts = 0, due_at = $2, lease_until = NULL \
         WHERE id = $1 AND status = 'failed'",
    )
    .bind(id)
    .bind(now.as_second())
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A claimed row, still in its stored form: decoding can fail, and such a row
/// is parked rather than left to block the queue.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    pub recipient: String,
    pub language: String,
    pub payload: String,
    /// The neutral title of a discreet mail, as stored.
    pub discreet: Option<String>,
    /// Tries including this one.
    pub attempts: i64,
    pub created_at: i64,
}

/// Claims up to `limit` due rows for this worker until `lease_until`, counting
/// the try now, so that a row that crashes the worker on every send still
/// runs out of tries.
///
/// Two workers never claim the same row: PostgreSQL skips rows another
/// transaction holds (`FOR UPDATE SKIP LOCKED`); SQLite runs one writing
/// statement at a time, so the `UPDATE ... RETURNING` is the claim.
pub async fn claim(
    db: &Db,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // SQLite: wait in this process's writer line, not in its busy handler.
    let _turn = db.write_turn().await;
    // PostgreSQL plans a prepared statement once for all values after five
    // runs, for the table as big as it is then, and keeps that plan until
    // the next ANALYZE. The first claims run on a nearly empty outbox, where
    // the cheapest plan reads the whole table and sorts it, and a backlog
    // then made each claim pay for reading it all: 28 ms a claim at 40,000
    // rows in the booking benchmark (BENCHMARKS.md). A claim comes once per
    // poll or per batch of sends, so planning each one costs little beside
    // the mail it hands out.
    let rows = sqlx::query(claim_sql(db.backend()))
        .persistent(db.backend() == Backend::Sqlite)
        .bind(lease_until)
        .bind(now)
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
    let mut claimed = rows
        .iter()
        .map(|row| {
            Ok(Claimed {
                id: row.try_get("id")?,
                recipient: row.try_get("recipient")?,
                language: row.try_get("language")?,
                payload: row.try_get("payload")?,
                discreet: row.try_get("discreet")?,
                attempts: row.try_get("attempts")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    // RETURNING does not promise the subquery's order.
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(claimed)
}

/// The claim: `$1` the lease's end, `$2` now, `$3` the most rows. The
/// `outbox_due` index on (status, due_at, id) hands the due rows over in
/// claim order, so that a claim reads only the rows it takes however long
/// the backlog.
fn claim_sql(backend: Backend) -> &'static str {
    macro_rules! claim {
        ($lock:literal) => {
            concat!(
                "UPDATE outbox SET lease_until = $1, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM outbox \
                              WHERE status = 'pending' AND due_at <= $2 \
                                AND (lease_until IS NULL OR lease_until <= $2) \
                              ORDER BY due_at, id LIMIT $3",
                $lock,
                ") RETURNING id, recipient, language, payload, discreet, attempts, created_at"
            )
        };
    }
    match backend {
        // PostgreSQL skips rows another transaction holds.
        Backend::Postgres => claim!(" FOR UPDATE SKIP LOCKED"),
        Backend::Sqlite => claim!(""),
    }
}

/// Whether a claimed row is still pending: `booking` may have superseded a
/// reminder after the claim.
pub async fn still_pending(db: &Db, id: &str) -> Result<bool, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_optional(db.pool())
        .await?;
    Ok(status.as_deref() == Some("pending"))
}

pub async fn mark_sent(db: &Db, id: &str, now: i64) -> Result<(), sqlx::Error> {
    db.run(&[Statement::new(
        "UPDATE outbox SET status = 'sent', sent_at = $2, lease_until = NULL, last_error = NULL \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(now)])
        .await
}

pub async fn retry_later(db: &Db, id: &str, due_at: i64, reason: &str) -> Result<(), sqlx::Error> {
    db.run(&[Statement::new(
        "UPDATE outbox SET due_at = $2, lease_until = NULL, last_error = $3 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(due_at)
    .bind(reason)])
        .await
}

pub async fn park(db: &Db, id: &str, reason: &str) -> Result<(), sqlx::Error> {
    db.run(&[Statement::new(
        "UPDATE outbox SET status = 'failed', lease_until = NULL, last_error = $2 \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(reason)])
        .await
}

pub async fn supersede(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    db.run(&[Statement::new(
        "UPDATE outbox SET status = 'superseded', lease_until = NULL \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)])
        .await
}

fn timestamp(unix: i64) -> Timestamp {
    Timestamp::from_second(unix).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use crate::db::built_sql;
    use crate::testing::TestDb;
    use sqlx::Row;

    use super::*;

    /// SQLite's plan for the claim reads the index in order: no sort of the
    /// due rows, which a backlog of thousands made every claim pay for.
    #[tokio::test]
    async fn a_claim_reads_due_mail_in_index_order_without_sorting() {
        let test = TestDb::sqlite().await;
        let plan = sqlx::query(built_sql(format!(
            "EXPLAIN QUERY PLAN {}",
            claim_sql(Backend::Sqlite)
        )))
        .bind(2_i64)
        .bind(1_i64)
        .bind(10_i64)
        .fetch_all(test.db.pool())
        .await
        .unwrap();
        let steps: Vec<String> = plan
            .iter()
            .map(|row| row.try_get::<String, _>("detail").unwrap())
            .collect();
        assert!(
            steps.iter().any(|s| s.contains("USING INDEX outbox_due")),
            "{steps:?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("TEMP B-TREE")),
            "{steps:?}"
        );
    }

    /// PostgreSQL plans each claim for the outbox as it is, rather than
    /// keeping a plan made while the outbox was empty: such a plan reads
    /// the whole table and sorts it, and it would stay while a backlog grows.
    #[tokio::test]
    async fn postgres_plans_each_claim_for_the_outbox_as_it_is() {
        let Some(test) = TestDb::postgres().await else {
            return;
        };
        // One connection, so that what it keeps prepared is what the
        // claims left there.
        let db = Db::connect(&test.url, 1).await.unwrap();
        for now in 0..8 {
            assert!(claim(&db, now, now + 60, 10).await.unwrap().is_empty());
        }
        let kept: Vec<String> = sqlx::query_scalar("SELECT statement FROM pg_prepared_statements")
            .fetch_all(db.pool())
            .await
            .unwrap();
        // The listing sees what sqlx keeps prepared: itself.
        assert!(
            kept.iter().any(|s| s.contains("pg_prepared_statements")),
            "{kept:?}"
        );
        assert!(
            !kept.iter().any(|s| s.contains("UPDATE outbox")),
            "{kept:?}"
        );
        db.close().await;
    }
}
