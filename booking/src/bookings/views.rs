//! Who sees which booking: residents' own lists, the staff day, a booking
//! for staff the policy lets handle it, and the policy's answer itself.

use super::record::booking_entry;
use super::record::booking_from_row;
use super::record::by_id;
use super::record::find_managed;
use super::record::Authority;
use super::record::Booking;
use super::record::BOOKING_COLUMNS;
use crate::accounts;
use crate::accounts::Resident;
use crate::accounts::Staff;
use crate::audit;
use crate::audit::Actor;
use crate::audit::Entry;
use crate::audit::Outcome;
use crate::db::built_sql;
use crate::db::Db;
use crate::domain::LocalDate;
use crate::domain::MunicipalityCode;
use crate::domain::ServiceCode;
use crate::domain::SlotRange;
use crate::domain::Step;
use crate::ids;
use crate::policy;
use crate::policy::Decision;
use crate::snapshot;
use crate::snapshot::Snapshot;
use crate::time::day_bounds;
use crate::time::zone;
use crate::time::DISPLAY_ZONE;
use crate::{BookingId, Error, StaffId};
use jiff::Timestamp;
use sqlx::Row;
/// A resident's own bookings, newest first. The read is audit-logged like
/// anyone else's: one entry for the list.
pub async fn for_resident(
    db: &Db,
    resident: &Resident,
    now: Timestamp,
) -> Result<Vec<Booking>, Error> {
    let rows = sqlx::query(built_sql(format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE resident_id = $1 ORDER BY starts_at DESC"
    )))
    .bind(resident.id.as_str())
    .fetch_all(db.pool())
    .await?;
    let list = rows
        .iter()
        .map(booking_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let actor = Actor::Resident(resident.id.clone());
    audit::record_now(
        db,
        &Entry {
            actor: &actor,
            action: "booking.list",
            subject: format!("resident:{}", resident.id),
            resident_id: Some(&resident.id),
            on_behalf_of: Some(resident.home.as_str()),
            rule: None,
            agreement_id: None,
            outcome: Outcome::Allowed,
        },
        now.as_second(),
    )
    .await?;
    Ok(list)
}

/// One of a resident's own bookings, the read audit-logged. Somebody else's
/// booking is `NotFound`, exactly as a missing one, and the attempt is
/// audit-logged as denied.
pub async fn for_resident_by_id(
    db: &Db,
    resident: &Resident,
    id: &BookingId,
    now: Timestamp,
) -> Result<Booking, Error> {
    let booking = find_managed(db, Authority::Resident(resident), Some(id), now).await?;
    let actor = Actor::Resident(resident.id.clone());
    audit::record_now(
        db,
        &booking_entry(&actor, "booking.read", &booking, Outcome::Allowed),
        now.as_second(),
    )
    .await?;
    Ok(booking)
}

/// A staff member's bookings on one local day, each read audit-logged.
pub async fn staff_day(
    db: &Db,
    staff: &Staff,
    day: LocalDate,
    now: Timestamp,
) -> Result<Vec<(Booking, Resident)>, Error> {
    let tz = zone(DISPLAY_ZONE)?;
    let (from, to) = day_bounds(day.date(), &tz)?;
    let rows = sqlx::query(built_sql(format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE staff_id = $1 AND starts_at >= $2 AND starts_at < $3 ORDER BY starts_at"
)))
    .bind(staff.id.as_str())
    .bind(from.as_second())
    .bind(to.as_second())
    .fetch_all(db.pool())
    .await?;
    let actor = Actor::Staff(staff.id.clone());
    let mut out = Vec::with_capacity(rows.len());
    let mut conn = db.pool().acquire().await?;
    for row in &rows {
        let booking = booking_from_row(row)?;
        let Some(resident) = accounts::resident_by_id(db, &booking.resident_id).await? else {
            continue;
        };
        audit::record(
            &mut conn,
            &booking_entry(&actor, "booking.read", &booking, Outcome::Allowed),
            now.as_second(),
        )
        .await?;
        out.push((booking, resident));
    }
    Ok(out)
}

/// A booking with its resident, for a staff member who may handle it
/// ([`BookingAccess::of`]). Anyone else gets `NotFound`, and the
/// attempt is audit-logged either way.
pub async fn for_staff(
    db: &Db,
    staff: &Staff,
    id: &BookingId,
    now: Timestamp,
) -> Result<(Booking, Resident), Error> {
    let actor = Actor::Staff(staff.id.clone());
    let Some(booking) = by_id(db, id).await? else {
        return Err(Error::NotFound);
    };
    let catalog = snapshot::current(db).await?;
    let allowed = BookingAccess::of(staff, &booking, &catalog)?.allowed();
    let outcome = if allowed {
        Outcome::Allowed
    } else {
        Outcome::Denied
    };
    audit::record_now(
        db,
        &booking_entry(&actor, "booking.read", &booking, outcome),
        now.as_second(),
    )
    .await?;
    if !allowed {
        return Err(Error::NotFound);
    }
    let resident = accounts::resident_by_id(db, &booking.resident_id)
        .await?
        .ok_or(Error::NotFound)?;
    Ok((booking, resident))
}

/// Whether a staff member may handle a booking, and what that relied on:
/// the answer of [`BookingAccess::of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookingAccess {
    /// The staff member the booking is with.
    BookedStaff,
    /// Staff who handle the booking's service, of a municipality the policy
    /// lets perform the booking's step for the resident on its date.
    Policy(Decision),
    /// The policy lets the staff member's municipality act, but they do not
    /// handle the service (schedulers and admins handle none).
    NotTheirService,
    /// The policy does not let the staff member's municipality act.
    RefusedByPolicy(Decision),
}

impl BookingAccess {
    /// The one rule for who may handle a booking: read it, open its meeting
    /// page, enter its meeting room, hear its knocks, and admit, decline,
    /// send back or end there. The API, the pages and the meeting rooms all
    /// ask this (the rooms through [`staff_who_may_handle`]), so that they
    /// cannot disagree about who sees a resident's meeting.
    ///
    /// It is `staff`'s capability, but it lives here rather than on
    /// [`Staff`], whose record sits below the bookings and the policy's
    /// reading of the catalog.
    pub fn of(
        staff: &Staff,
        booking: &Booking,
        catalog: &Snapshot,
    ) -> Result<BookingAccess, Error> {
        if booking.staff_id == staff.id {
            return Ok(BookingAccess::BookedStaff);
        }
        let decision = decide_in(
            catalog,
            &staff.municipality,
            &booking.performed_for,
            &booking.service,
            booking.step,
            booking.range.start(),
        )?;
        Ok(if !decision.allowed() {
            BookingAccess::RefusedByPolicy(decision)
        } else if !staff.handles(&booking.service) {
            BookingAccess::NotTheirService
        } else {
            BookingAccess::Policy(decision)
        })
    }

    pub fn allowed(&self) -> bool {
        matches!(self, BookingAccess::BookedStaff | BookingAccess::Policy(_))
    }
}

/// The ids of every staff member who may handle `booking`, by
/// [`BookingAccess::of`]: who may enter its meeting room and hear
/// its knocks. The caller passes them to the signaling hub, which knows no
/// policy of its own.
pub async fn staff_who_may_handle(db: &Db, booking: &Booking) -> Result<Vec<StaffId>, Error> {
    let catalog = snapshot::current(db).await?;
    let mut out = Vec::new();
    for staff in &catalog.staff {
        if BookingAccess::of(staff, booking, &catalog)?.allowed() {
            out.push(staff.id.clone());
        }
    }
    Ok(out)
}

/// Records a staff member's access to a booking's meeting room (entering
/// it, or being refused) in the audit log, with the booking's rule and
/// agreement, as [`for_staff`] records a read through the API. A booking
/// that no longer exists is recorded without them.
pub async fn audit_meeting_access(
    db: &Db,
    staff_id: &StaffId,
    booking_id: &BookingId,
    action: &str,
    outcome: Outcome,
    now: Timestamp,
) -> Result<(), Error> {
    let actor = Actor::Staff(staff_id.clone());
    let booking = by_id(db, booking_id).await?;
    let entry = match &booking {
        Some(booking) => booking_entry(&actor, action, booking, outcome),
        None => Entry {
            actor: &actor,
            action,
            subject: format!("booking:{booking_id}"),
            resident_id: None,
            on_behalf_of: None,
            rule: None,
            agreement_id: None,
            outcome,
        },
    };
    audit::record_now(db, &entry, now.as_second()).await?;
    Ok(())
}

/// Every active booking's staff member and time: the double-booking check of
/// the contention test and benchmark.
pub async fn active_ranges(db: &Db) -> Result<Vec<(StaffId, SlotRange)>, Error> {
    let rows = sqlx::query("SELECT staff_id, starts_at, ends_at FROM bookings WHERE status = 'booked' ORDER BY staff_id, starts_at")
        .fetch_all(db.pool())
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                ids::stored(r, "staff_id")?,
                SlotRange::from_unix(r.try_get("starts_at")?, r.try_get("ends_at")?)?,
            ))
        })
        .collect()
}

/// The policy's answer for `host` acting for a resident of `home` at `at`.
pub async fn decide_for(
    db: &Db,
    host: &MunicipalityCode,
    home: &MunicipalityCode,
    service: &ServiceCode,
    step: Step,
    at: Timestamp,
) -> Result<Decision, Error> {
    let catalog = snapshot::current(db).await?;
    decide_in(&catalog, host, home, service, step, at)
}

/// [`decide_for`] over a catalog the caller already holds.
pub(crate) fn decide_in(
    catalog: &Snapshot,
    host: &MunicipalityCode,
    home: &MunicipalityCode,
    service: &ServiceCode,
    step: Step,
    at: Timestamp,
) -> Result<Decision, Error> {
    let rule = catalog.rule(service, step);
    let agreements = catalog.agreements_for(home);
    let date = at.to_zoned(zone(DISPLAY_ZONE)?).date();
    Ok(policy::decide(
        rule,
        host,
        home,
        service,
        step,
        date,
        &agreements,
    ))
}
