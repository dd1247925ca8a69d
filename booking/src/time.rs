//! Time zones: the zone times are shown in, and a local day's bounds.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use crate::Error;

/// The zone times are shown in unless a municipality says otherwise.
pub const DISPLAY_ZONE: &str = "Europe/Stockholm";

/// The time zone named `name`, from the bundled database.
pub fn zone(name: &str) -> Result<TimeZone, Error> {
    TimeZone::get(name).map_err(|e| Error::Corrupt(format!("time zone {name}: {e}")))
}

/// The absolute start of `day` and of the day after, in `tz`.
pub fn day_bounds(day: Date, tz: &TimeZone) -> Result<(Timestamp, Timestamp), Error> {
    // Only a date at the very end of the calendar has no next day; it came
    // from a caller, not from storage, so it is invalid input.
    let beyond = |e: jiff::Error| {
        Error::Invalid(crate::InvalidValue {
            field: "date",
            reason: e.to_string(),
        })
    };
    let start = day.to_zoned(tz.clone()).map_err(beyond)?;
    let end = start.tomorrow().map_err(beyond)?;
    Ok((start.timestamp(), end.timestamp()))
}

/// The absolute instant of `minute` after local midnight on `date`. A minute
/// in a spring-forward gap maps to the first instant after the gap.
pub(crate) fn local_instant(date: Date, minute: i16, tz: &TimeZone) -> Option<Timestamp> {
    let day = if minute >= 1440 {
        date.checked_add(Span::new().days(1)).ok()?
    } else {
        date
    };
    let minute = minute % 1440;
    let time = Time::new((minute / 60) as i8, (minute % 60) as i8, 0, 0).ok()?;
    tz.to_ambiguous_timestamp(day.to_datetime(time))
        .compatible()
        .ok()
}
