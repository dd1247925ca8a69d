//! The per-account limit on failed sign-ins, kept in the database so that
//! every node sees the same count: one account cannot be tried from many
//! addresses, or through many nodes, faster than the back-off allows.
//!
//! An account is whatever the sign-in names (a staff email), known or not,
//! so that a locked answer reveals nothing about which accounts exist.

use sqlx::Row;

use crate::db::Db;
use crate::Error;

/// Failures allowed before the first wait.
pub const FREE_FAILURES: i64 = 5;
/// The first wait, doubled after each further failure.
pub const FIRST_WAIT_SECS: i64 = 30;
/// The longest wait, so that an attacker can keep an account's owner out
/// for at most this long at a time.
pub const LONGEST_WAIT_SECS: i64 = 15 * 60;
/// Failures older than this are forgotten: the count starts again.
pub const FORGET_AFTER_SECS: i64 = 60 * 60;

/// Until when (unix seconds) `account` must wait before it may be tried
/// again, if it must.
pub async fn locked_until(db: &Db, account: &str, now: i64) -> Result<Option<i64>, Error> {
    let row = sqlx::query("SELECT locked_until FROM sign_in_failures WHERE account = $1")
        .bind(account)
        .fetch_optional(db.pool())
        .await?;
    let until = match row {
        Some(r) => r.try_get::<i64, _>("locked_until")?,
        None => return Ok(None),
    };
    Ok((until > now).then_some(until))
}

/// Counts one failed sign-in of `account` and returns until when it must
/// now wait, if it must.
pub async fn record_failure(db: &Db, account: &str, now: i64) -> Result<Option<i64>, Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    // One upsert counts the failure, so that failures racing on several
    // nodes are all counted.
    let failures: i64 = sqlx::query(
        "INSERT INTO sign_in_failures (account, failures, locked_until, last_failure_at) \
         VALUES ($1, 1, 0, $2) \
         ON CONFLICT (account) DO UPDATE SET \
           failures = CASE WHEN sign_in_failures.last_failure_at < $3 THEN 1 \
                           ELSE sign_in_failures.failures + 1 END, \
           last_failure_at = $2 \
         RETURNING failures",
    )
    .bind(account)
    .bind(now)
    .bind(now - FORGET_AFTER_SECS)
    .fetch_one(&mut *tx)
    .await?
    .try_get("failures")?;
    let wait = wait_after(failures);
    if wait > 0 {
        sqlx::query("UPDATE sign_in_failures SET locked_until = $1 WHERE account = $2")
            .bind(now + wait)
            .bind(account)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((wait > 0).then_some(now + wait))
}

/// Forgets the failures of `account` after a successful sign-in.
pub async fn record_success(db: &Db, account: &str) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    sqlx::query("DELETE FROM sign_in_failures WHERE account = $1")
        .bind(account)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Seconds to wait after the `failures`-th failure in a row: nothing for the
/// first [`FREE_FAILURES`], then [`FIRST_WAIT_SECS`] doubled per further
/// failure up to [`LONGEST_WAIT_SECS`].
pub fn wait_after(failures: i64) -> i64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let doublings = (failures - FREE_FAILURES).clamp(0, 20) as u32;
    FIRST_WAIT_SECS
        .saturating_mul(1i64 << doublings)
        .min(LONGEST_WAIT_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_after_the_free_failures_up_to_the_cap() {
        let waits: Vec<i64> = (1..=12).map(wait_after).collect();
        assert_eq!(
            waits,
            [0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900, 900],
            "failures 1..=12"
        );
    }

    #[tokio::test]
    async fn failures_lock_an_account_and_a_success_or_time_forgets_them() {
        for test in crate::testing::databases().await {
            let db = &test.db;
            let account = "a@example.se";
            for n in 1..FREE_FAILURES {
                assert_eq!(record_failure(db, account, 1000 + n).await.unwrap(), None);
            }
            assert_eq!(locked_until(db, account, 1004).await.unwrap(), None);
            let until = record_failure(db, account, 1005).await.unwrap();
            assert_eq!(until, Some(1005 + FIRST_WAIT_SECS));
            assert_eq!(locked_until(db, account, 1006).await.unwrap(), until);
            assert_eq!(
                locked_until(db, "b@example.se", 1006).await.unwrap(),
                None,
                "per account"
            );
            assert_eq!(
                record_failure(db, account, 1040).await.unwrap(),
                Some(1040 + 2 * FIRST_WAIT_SECS),
                "doubled"
            );
            record_success(db, account).await.unwrap();
            assert_eq!(locked_until(db, account, 1041).await.unwrap(), None);

            for n in 0..FREE_FAILURES - 1 {
                record_failure(db, account, 2000 + n).await.unwrap();
            }
            let much_later = 2000 + FORGET_AFTER_SECS + 10;
            assert_eq!(
                record_failure(db, account, much_later).await.unwrap(),
                None,
                "old failures are forgotten"
            );
        }
    }
}
