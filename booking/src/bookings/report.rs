//! Load figures per municipality over a period.

use crate::db::Db;
use crate::domain::BookingStatus;
use crate::domain::DateRange;
use crate::domain::MunicipalityCode;
use crate::snapshot;
use crate::time::day_bounds;
use crate::time::zone;
use crate::time::DISPLAY_ZONE;
use crate::Error;
use jiff::Span;
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;
/// Load figures for one municipality over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Load {
    pub municipality: MunicipalityCode,
    pub name: String,
    pub published_minutes: i64,
    pub booked_minutes: i64,
    pub bookings: i64,
    pub completed: i64,
    pub no_shows: i64,
    pub cancelled: i64,
    /// Meetings performed for residents of other municipalities.
    pub performed_for_others: i64,
    /// Booked minutes over published minutes, 0 when nothing is published.
    pub utilisation: f64,
}

/// The bookings of every status that start in `$1..$2`, counted per
/// municipality that performs them and status, through the index on the
/// start (`bookings_time`).
pub(super) const LOAD_SQL: &str = "SELECT performed_by, status, CAST(COUNT(*) AS BIGINT) AS n, CAST(SUM(ends_at - starts_at) AS BIGINT) AS seconds, \
     CAST(SUM(CASE WHEN performed_by <> performed_for THEN 1 ELSE 0 END) AS BIGINT) AS for_others \
     FROM bookings WHERE starts_at >= $1 AND starts_at < $2 GROUP BY performed_by, status";

/// The longest range one load report may cover.
pub const MAX_LOAD_DAYS: i64 = 366;

/// Load per municipality over `dates`, at most [`MAX_LOAD_DAYS`] apart.
pub async fn load(db: &Db, dates: DateRange) -> Result<Vec<Load>, Error> {
    let dates = dates.at_most(MAX_LOAD_DAYS)?;
    let (from, to) = (dates.from(), dates.to());
    let tz = zone(DISPLAY_ZONE)?;
    let (start, _) = day_bounds(from, &tz)?;
    let (_, end) = day_bounds(to, &tz)?;
    let catalog = snapshot::current(db).await?;
    let municipalities = catalog.municipalities.clone();
    let mut published: HashMap<String, i64> = HashMap::new();
    for s in &catalog.staff {
        let own = catalog.templates_of(&s.id);
        let mut day = from;
        while day <= to {
            let minutes: i64 = own.iter().map(|t| t.minutes_on(day, &tz)).sum();
            *published
                .entry(s.municipality.as_str().to_owned())
                .or_default() += minutes;
            day = day
                .checked_add(Span::new().days(1))
                .map_err(|e| Error::Corrupt(e.to_string()))?;
        }
    }
    let rows = sqlx::query(LOAD_SQL)
        .bind(start.as_second())
        .bind(end.as_second())
        .fetch_all(db.pool())
        .await?;
    let mut out: Vec<Load> = municipalities
        .into_iter()
        .map(|m| Load {
            published_minutes: published.get(m.code.as_str()).copied().unwrap_or(0),
            municipality: m.code,
            name: m.name,
            booked_minutes: 0,
            bookings: 0,
            completed: 0,
            no_shows: 0,
            cancelled: 0,
            performed_for_others: 0,
            utilisation: 0.0,
        })
        .collect();
    for r in &rows {
        let code: String = r.try_get("performed_by")?;
        let status = BookingStatus::parse(&r.try_get::<String, _>("status")?)?;
        let n: i64 = r.try_get("n")?;
        let seconds: i64 = r.try_get("seconds")?;
        let for_others: i64 = r.try_get("for_others")?;
        let Some(load) = out.iter_mut().find(|l| l.municipality.as_str() == code) else {
            continue;
        };
        match status {
            BookingStatus::Cancelled => load.cancelled += n,
            other => {
                load.bookings += n;
                load.booked_minutes += seconds / 60;
                load.performed_for_others += for_others;
                match other {
                    BookingStatus::Completed => load.completed += n,
                    BookingStatus::NoShow => load.no_shows += n,
                    _ => {}
                }
            }
        }
    }
    for load in &mut out {
        if load.published_minutes > 0 {
            load.utilisation = load.booked_minutes as f64 / load.published_minutes as f64;
        }
    }
    Ok(out)
}
