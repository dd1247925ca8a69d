//! Each staff member's booked time per week, which booking reads to pick the
//! least-loaded staff member.
//!
//! The figures live in `staff_week_load`, one row per staff member and week,
//! so that a booking reads one small row set instead of summing the week's
//! bookings. Every change to a booking that is not cancelled goes through
//! [`adjust`] in the transaction that makes it; [`rebuild`] recomputes the
//! table from the bookings themselves, and the tests hold the two equal.

use std::collections::HashMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use sqlx::{AnyConnection, Row};

use crate::batch::Statement;
use crate::db::{Db, DbError};
use crate::domain::SlotRange;

use crate::ids;
use crate::{Error, StaffId};

pub use crate::records::published_minutes;

/// The Monday that starts the week of `at`, in `tz`: the week a booking
/// starting then counts toward.
pub fn week_of(at: Timestamp, tz: &TimeZone) -> Date {
    let day = at.to_zoned(tz.clone()).date();
    monday_of(day)
}

fn monday_of(day: Date) -> Date {
    let back = i64::from(day.weekday().to_monday_zero_offset());
    day.checked_sub(Span::new().days(back))
        .expect("a date a few days back is in range")
}

/// Adds `sign` times the length of `range` to `staff_id`'s week. Run it in
/// the transaction that books (+1), cancels (-1) or moves (-1 then +1).
pub fn adjust(staff_id: &StaffId, range: &SlotRange, sign: i64, tz: &TimeZone) -> Statement {
    let week = week_of(range.start(), tz).to_string();
    Statement::new(
        "INSERT INTO staff_week_load (staff_id, week, booked_seconds) VALUES ($1, $2, $3) \
         ON CONFLICT (staff_id, week) DO UPDATE SET booked_seconds = staff_week_load.booked_seconds + excluded.booked_seconds",
    )
    .bind(staff_id.as_str())
    .bind(week.clone())
    .bind(sign * (range.end().as_second() - range.start().as_second()))
    .upserts(format!("staff_week_load {staff_id} {week}"))
}

/// Recomputes the whole table from the bookings that are not cancelled.
pub async fn rebuild(db: &Db, tz: &TimeZone) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let totals = from_bookings(&mut tx, tz).await?;
    sqlx::query("DELETE FROM staff_week_load")
        .execute(&mut *tx)
        .await?;
    for ((staff_id, week), seconds) in &totals {
        sqlx::query(
            "INSERT INTO staff_week_load (staff_id, week, booked_seconds) VALUES ($1, $2, $3)",
        )
        .bind(staff_id.as_str())
        .bind(week)
        .bind(seconds)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The table's content as the bookings say it should be: (staff, week) to
/// booked seconds, leaving out zeros.
pub async fn from_bookings(
    conn: &mut AnyConnection,
    tz: &TimeZone,
) -> Result<HashMap<(StaffId, String), i64>, Error> {
    let rows = sqlx::query(
        "SELECT staff_id, starts_at, ends_at FROM bookings WHERE status <> 'cancelled'",
    )
    .fetch_all(conn)
    .await?;
    let mut totals: HashMap<(StaffId, String), i64> = HashMap::new();
    for r in &rows {
        let range = SlotRange::from_unix(r.try_get("starts_at")?, r.try_get("ends_at")?)?;
        *totals
            .entry((
                ids::stored(r, "staff_id")?,
                week_of(range.start(), tz).to_string(),
            ))
            .or_default() += range.end().as_second() - range.start().as_second();
    }
    Ok(totals)
}

/// The table's content, leaving out zeros: for comparing with
/// [`from_bookings`].
pub async fn stored(conn: &mut AnyConnection) -> Result<HashMap<(StaffId, String), i64>, Error> {
    let rows = sqlx::query(
        "SELECT staff_id, week, booked_seconds FROM staff_week_load WHERE booked_seconds <> 0",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                (ids::stored(r, "staff_id")?, r.try_get("week")?),
                r.try_get("booked_seconds")?,
            ))
        })
        .collect()
}

impl Db {
    /// Applies the schema migrations of this database's dialect, then
    /// rebuilds the figures derived from the tables where a migration left
    /// them missing.
    pub async fn migrate(&self) -> Result<(), DbError> {
        self.base().migrate_schema().await?;
        let tz = crate::time::zone(crate::time::DISPLAY_ZONE)
            .map_err(|e| DbError::Derived(e.to_string()))?;
        rebuild_if_missing(self, &tz)
            .await
            .map_err(|e| DbError::Derived(e.to_string()))
    }
}

/// Rebuilds the table if it is empty while bookings exist: after the
/// migration that created it, on a database that already held bookings.
pub async fn rebuild_if_missing(db: &Db, tz: &TimeZone) -> Result<(), Error> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM staff_week_load) AS counted, \
         (SELECT COUNT(*) FROM bookings WHERE status <> 'cancelled') AS active",
    )
    .fetch_one(db.pool())
    .await?;
    let counted: i64 = row.try_get("counted")?;
    let active: i64 = row.try_get("active")?;
    if counted == 0 && active > 0 {
        rebuild(db, tz).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_week_starts_on_the_local_monday() {
        let tz = TimeZone::get("Europe/Stockholm").unwrap();
        // Sunday 23:30 in Stockholm is still the week that began on Monday.
        let sunday_late: Timestamp = "2026-11-29T22:30:00Z".parse().unwrap();
        assert_eq!(week_of(sunday_late, &tz).to_string(), "2026-11-23");
        // Monday 00:30 in Stockholm is Sunday 23:30 in UTC, but a new week.
        let monday_early: Timestamp = "2026-11-29T23:30:00Z".parse().unwrap();
        assert_eq!(week_of(monday_early, &tz).to_string(), "2026-11-30");
    }
}
