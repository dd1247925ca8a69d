//! Search, booking, cancelling and rescheduling, the staff day view and the
//! load figures.
//!
//! Double booking is refused by the database itself (a unique index plus an
//! overlap trigger on SQLite, an exclusion constraint on PostgreSQL). The code
//! here picks a staff member and tries to insert; when the database says the
//! time is taken it moves on to the next candidate, so two requests racing for
//! the last free time can never both win.
//!
//! - `search`: the free times a resident may book, and who is free at each;
//! - `place`: picking the staff member by load and writing a new booking;
//! - `manage`: cancelling, moving, the manage token, the meeting's outcome;
//! - `views`: who reads which booking, each read audit-logged, and the
//!   policy's answer for a staff member and a booking;
//! - `report`: load per municipality.
//!
//! Availability templates are stored by [`crate::slots`]; time zones are in
//! [`crate::time`].

use jiff::Timestamp;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::db::Db;
use crate::domain::{Basis, BookingStatus, MunicipalityCode, ServiceCode, SlotRange, Step};
use crate::ids;
use crate::outbox::NeutralTitle;
use crate::{BookingId, Error, ResidentId, StaffId};

pub use crate::time::{day_bounds, zone, DISPLAY_ZONE};

/// The active bookings that touch the range `$1` to `$2`, as the `FROM`
/// and `WHERE` of [`busy_sql`] and [`surroundings_sql`]; `$3` is a day
/// before `$1`. A booking is at most a day long (the schema checks it), so
/// the ones that touch the range start at most a day before it: that bound
/// keeps the index scan to the range instead of everything before it.
macro_rules! active_near {
    () => {
        "FROM bookings WHERE status = 'booked' AND starts_at > $3 AND starts_at < $2 AND ends_at > $1"
    };
}

mod manage;
mod place;
mod report;
mod search;
mod views;

pub use manage::*;
pub use place::*;
pub use report::*;
pub use search::*;
pub use views::*;

/// The longest a booking may last; the schema refuses longer ones.
pub const MAX_BOOKING_SECONDS: i64 = 24 * 60 * 60;

/// Reminders go out this many minutes before a meeting.
pub const REMINDER_MINUTES: [i64; 2] = [24 * 60, 60];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Booking {
    pub id: BookingId,
    pub resident_id: ResidentId,
    pub staff_id: StaffId,
    pub service: ServiceCode,
    pub step: Step,
    pub range: SlotRange,
    pub status: BookingStatus,
    /// The municipality whose staff performs the meeting.
    pub performed_by: MunicipalityCode,
    /// The resident's home municipality, which stays responsible.
    pub performed_for: MunicipalityCode,
    pub agreement_id: Option<String>,
    /// The home municipality, or the cross-border rule the booking relied on.
    pub rule: Basis,
    /// Bumped on every change, for calendar invitations.
    pub sequence: i64,
    /// The neutral title the resident chose at booking for discreet mail;
    /// `None` means the default, [`NeutralTitle::Meeting`].
    pub neutral_title: Option<NeutralTitle>,
}

impl Booking {
    /// Whether its meeting can be entered at `now`: it is booked and has not
    /// ended. The join links, the meeting page and the API that opens the
    /// room all ask this.
    pub fn is_joinable(&self, now: Timestamp) -> bool {
        self.status == BookingStatus::Booked && self.range.end() > now
    }

    /// Whether it can still be cancelled or moved at `now`: it is booked and
    /// has not started.
    pub fn is_changeable(&self, now: Timestamp) -> bool {
        self.status == BookingStatus::Booked && self.range.start() > now
    }
}

/// A booking made or moved, with the token that manages it. The token is
/// shown once (and mailed); only its hash is stored.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub booking: Booking,
    pub manage_token: String,
}

const BOOKING_COLUMNS: &str =
    "id, resident_id, staff_id, service_code, step, starts_at, ends_at, status, \
    performed_by, performed_for, agreement_id, rule, sequence, neutral_title";

fn booking_from_row(r: &AnyRow) -> Result<Booking, Error> {
    Ok(Booking {
        id: ids::stored(r, "id")?,
        resident_id: ids::stored(r, "resident_id")?,
        staff_id: ids::stored(r, "staff_id")?,
        service: ServiceCode::parse(&r.try_get::<String, _>("service_code")?)?,
        step: Step::parse(&r.try_get::<String, _>("step")?)?,
        range: SlotRange::from_unix(r.try_get("starts_at")?, r.try_get("ends_at")?)?,
        status: BookingStatus::parse(&r.try_get::<String, _>("status")?)?,
        performed_by: MunicipalityCode::parse(&r.try_get::<String, _>("performed_by")?)?,
        performed_for: MunicipalityCode::parse(&r.try_get::<String, _>("performed_for")?)?,
        agreement_id: r.try_get("agreement_id")?,
        rule: Basis::parse(&r.try_get::<String, _>("rule")?)?,
        sequence: r.try_get("sequence")?,
        neutral_title: r
            .try_get::<Option<String>, _>("neutral_title")?
            .as_deref()
            .map(NeutralTitle::parse)
            .transpose()?,
    })
}

/// One booking by id, unchecked: for the functions here that decide who
/// may see it.
async fn by_id(db: &Db, id: &BookingId) -> Result<Option<Booking>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(booking_from_row).transpose()
}

#[cfg(test)]
mod tests;
