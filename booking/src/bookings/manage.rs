//! Changing a booking: cancelling, moving, reading it by its manage token,
//! and recording how the meeting went.

use super::announce;
use super::best_free;
use super::discretion;
use super::record::booking_from_row;
use super::record::Booking;
use super::record::Ticket;
use super::record::BOOKING_COLUMNS;
use super::record::{authority_actor, booking_entry, by_token, find_active, Authority};
use super::service_is_discreet;
use super::Wanted;
use super::PLACE_ATTEMPTS;
use crate::accounts;
use crate::audit;
use crate::audit::Actor;
use crate::audit::Outcome;
use crate::db::built_sql;
use crate::db::is_booking_conflict;
use crate::db::Db;
use crate::domain::BookingStatus;
use crate::ids;
use crate::load;
use crate::outbox;
use crate::outbox::Message;
use crate::time::zone;
use crate::time::DISPLAY_ZONE;
use crate::{BookingId, Error, StaffId};
use jiff::Timestamp;
use sqlx::Row;
/// Cancels a booking. A token is spent by cancelling: afterwards it finds
/// nothing.
pub async fn cancel(
    db: &Db,
    authority: Authority<'_>,
    booking_id: Option<&BookingId>,
    now: Timestamp,
) -> Result<Booking, Error> {
    let (booking, resident) = find_active(db, authority, booking_id, now, "cancelled").await?;
    let discreet = discretion(
        service_is_discreet(db, &booking.service).await?,
        &resident,
        &booking,
    );
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(built_sql(format!(
        "UPDATE bookings SET status = 'cancelled', manage_token_spent = 1, sequence = sequence + 1, updated_at = $1 \
         WHERE id = $2 AND status = 'booked' RETURNING {BOOKING_COLUMNS}"
    )))
    .bind(now.as_second())
    .bind(booking.id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Error::Conflict("the booking was changed meanwhile".into()));
    };
    let cancelled = booking_from_row(&row)?;
    load::adjust(
        &cancelled.staff_id,
        &cancelled.range,
        -1,
        &zone(DISPLAY_ZONE)?,
    )
    .execute(&mut tx)
    .await?;
    outbox::supersede_reminders(&mut tx, &cancelled.id).await?;
    let message = Message::BookingCancelled {
        booking_id: cancelled.id.clone(),
        starts_at: cancelled.range.start().as_second(),
        ends_at: cancelled.range.end().as_second(),
        sequence: cancelled.sequence,
    };
    outbox::enqueue(
        &mut tx,
        &resident.email,
        resident.language,
        &message,
        discreet,
        now.as_second(),
        now.as_second(),
    )
    .await?;
    let actor = authority_actor(authority);
    audit::record(
        &mut tx,
        &booking_entry(&actor, "booking.cancel", &cancelled, Outcome::Allowed),
        now.as_second(),
    )
    .await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// Moves a booking to the free time at `starts_at`, keeping its id, its
/// calendar UID and its manage token.
pub async fn reschedule(
    db: &Db,
    authority: Authority<'_>,
    booking_id: Option<&BookingId>,
    starts_at: Timestamp,
    now: Timestamp,
) -> Result<Ticket, Error> {
    let (booking, resident) = find_active(db, authority, booking_id, now, "rescheduled").await?;
    let discreet = discretion(
        service_is_discreet(db, &booking.service).await?,
        &resident,
        &booking,
    );
    let wanted = Wanted {
        service: &booking.service,
        home: &resident.home,
        language: None,
        only_staff: None,
    };
    let actor = authority_actor(authority);
    let tz = zone(DISPLAY_ZONE)?;
    for _ in 0..PLACE_ATTEMPTS {
        let (candidate, _hold) = best_free(db, &wanted, starts_at, now, Some(&booking.id)).await?;
        let _turn = db.write_turn().await;
        let mut tx = db.pool().begin().await?;
        let updated = sqlx::query(built_sql(format!(
            "UPDATE bookings SET staff_id = $1, starts_at = $2, ends_at = $3, performed_by = $4, agreement_id = $5, \
             rule = $6, sequence = sequence + 1, updated_at = $7 \
             WHERE id = $8 AND status = 'booked' AND staff_id = $9 AND starts_at = $10 RETURNING {BOOKING_COLUMNS}"
)))
        .bind(candidate.staff_id.as_str())
        .bind(candidate.range.start().as_second())
        .bind(candidate.range.end().as_second())
        .bind(candidate.municipality.as_str())
        .bind(candidate.decision.agreement_id())
        .bind(candidate.decision.basis().as_str())
        .bind(now.as_second())
        .bind(booking.id.as_str())
        .bind(booking.staff_id.as_str())
        .bind(booking.range.start().as_second())
        .fetch_optional(&mut *tx)
        .await;
        let row = match updated {
            Ok(Some(row)) => row,
            Ok(None) => return Err(Error::Conflict("the booking was changed meanwhile".into())),
            Err(e) if is_booking_conflict(&e) => {
                tx.rollback().await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let moved = booking_from_row(&row)?;
        load::adjust(&booking.staff_id, &booking.range, -1, &tz)
            .execute(&mut tx)
            .await?;
        load::adjust(&moved.staff_id, &moved.range, 1, &tz)
            .execute(&mut tx)
            .await?;
        outbox::supersede_reminders(&mut tx, &moved.id).await?;
        // The token stays valid, so the link in the first mail still manages
        // the booking; the mail about the move does not need to carry it anew.
        let token = match authority {
            Authority::Token(t) => t.to_owned(),
            Authority::Resident(_) => String::new(),
        };
        let message = Message::BookingRescheduled {
            booking_id: moved.id.clone(),
            starts_at: moved.range.start().as_second(),
            ends_at: moved.range.end().as_second(),
            previous_starts_at: booking.range.start().as_second(),
            sequence: moved.sequence,
            manage_token: token.clone(),
        };
        announce(&resident, message, &moved, &token, discreet, now)
            .execute(&mut tx)
            .await?;
        audit::record(
            &mut tx,
            &booking_entry(&actor, "booking.reschedule", &moved, Outcome::Allowed),
            now.as_second(),
        )
        .await?;
        tx.commit().await?;
        return Ok(Ticket {
            booking: moved,
            manage_token: token,
        });
    }
    Err(Error::Conflict("that time is no longer available".into()))
}

/// The booking a manage token belongs to, for the manage page. The read is
/// audit-logged as the token holder's, who is anonymous to us. A token that
/// cancelled its booking, or whose meeting is over, is `NotFound`, exactly as
/// one that never existed.
pub async fn read_by_token(db: &Db, token: &str, now: Timestamp) -> Result<Booking, Error> {
    let booking = by_token(db, token, now).await?;
    audit::record_now(
        db,
        &booking_entry(
            &Actor::Anonymous,
            "booking.read",
            &booking,
            Outcome::Allowed,
        ),
        now.as_second(),
    )
    .await?;
    Ok(booking)
}

/// Records how a meeting went: `completed` or `no_show`, and only for a
/// booking that is still `booked`, so a cancelled booking never turns into a
/// meeting. Returns the booking as it is now, or `Conflict` if it was not
/// booked. The change is audit-logged as the system's.
pub async fn record_outcome(
    db: &Db,
    booking_id: &BookingId,
    outcome: BookingStatus,
    now: Timestamp,
) -> Result<Booking, Error> {
    if !matches!(outcome, BookingStatus::Completed | BookingStatus::NoShow) {
        return Err(Error::Conflict(format!(
            "a meeting cannot end as {}",
            outcome.as_str()
        )));
    }
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let row = sqlx::query(built_sql(format!(
        "UPDATE bookings SET status = $1, sequence = sequence + 1, updated_at = $2 \
         WHERE id = $3 AND status = 'booked' RETURNING {BOOKING_COLUMNS}"
    )))
    .bind(outcome.as_str())
    .bind(now.as_second())
    .bind(booking_id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Error::Conflict("the booking is not booked".into()));
    };
    let booking = booking_from_row(&row)?;
    let action = format!("booking.{}", outcome.as_str());
    audit::record(
        &mut tx,
        &booking_entry(&Actor::System, &action, &booking, Outcome::Allowed),
        now.as_second(),
    )
    .await?;
    tx.commit().await?;
    Ok(booking)
}

/// How long after a knock mail for a booking another knock on it sends none:
/// a resident who reloads the waiting room, or leaves and comes back, should
/// not fill the staff member's inbox.
pub const KNOCK_MAIL_EVERY_SECS: i64 = 15 * 60;

/// Mails the staff member booked for `booking_id` that someone waits in its
/// waiting room, unless a knock mail for it was written in the last
/// [`KNOCK_MAIL_EVERY_SECS`] or the booking is no longer booked. The mail
/// names the meeting's time only, never the resident. Returns whether a mail
/// was written.
pub async fn knock(db: &Db, booking_id: &BookingId, now: i64) -> Result<bool, Error> {
    let row =
        sqlx::query("SELECT staff_id, starts_at FROM bookings WHERE id = $1 AND status = 'booked'")
            .bind(booking_id.as_str())
            .fetch_optional(db.pool())
            .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let staff_id: StaffId = ids::stored(&row, "staff_id")?;
    let starts_at: i64 = row.try_get("starts_at")?;
    let Some(staff) = accounts::staff_by_id(db, &staff_id).await? else {
        return Ok(false);
    };
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    let recent: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM outbox WHERE booking_id = $1 AND kind = 'knock' AND created_at > $2",
    )
    .bind(booking_id.as_str())
    .bind(now - KNOCK_MAIL_EVERY_SECS)
    .fetch_one(&mut *tx)
    .await?
    .try_get("n")?;
    if recent > 0 {
        return Ok(false);
    }
    let message = Message::Knock {
        booking_id: booking_id.clone(),
        starts_at,
    };
    // Staff work in the console's default language.
    outbox::enqueue(
        &mut tx,
        &staff.email,
        crate::domain::Language::default(),
        &message,
        None,
        now,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
