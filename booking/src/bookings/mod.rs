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
mod record;
mod report;
mod search;
mod views;

pub use manage::*;
pub use place::*;
pub use record::*;
pub use report::*;
pub use search::*;
pub use views::*;

/// The longest a booking may last; the schema refuses longer ones.
pub const MAX_BOOKING_SECONDS: i64 = 24 * 60 * 60;

/// Reminders go out this many minutes before a meeting.
pub const REMINDER_MINUTES: [i64; 2] = [24 * 60, 60];

#[cfg(test)]
mod tests;
