//! Free times: what a resident may book, and the staff free at each time.

use super::MAX_BOOKING_SECONDS;
use crate::catalog::Service;
use crate::db::Backend;
use crate::db::Db;
use crate::domain::DateRange;
use crate::domain::Language;
use crate::domain::MunicipalityCode;
use crate::domain::ServiceCode;
use crate::domain::SlotRange;
use crate::domain::Step;
use crate::ids;
use crate::policy;
use crate::policy::Agreement;
use crate::policy::Decision;
use crate::slots;
use crate::slots::SlotShape;
use crate::snapshot;
use crate::snapshot::Snapshot;
use crate::time::day_bounds;
use crate::time::zone;
use crate::time::DISPLAY_ZONE;
use crate::{BookingId, Error, StaffId};
use jiff::civil::Date;
use jiff::Timestamp;
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;
use std::collections::HashMap;
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub service: ServiceCode,
    pub home: MunicipalityCode,
    /// The local dates to search, at most [`MAX_SEARCH_DAYS`] apart.
    pub dates: DateRange,
    pub language: Option<Language>,
}

/// A bookable time. The resident sees a time, never a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FreeTime {
    pub range: SlotRange,
    /// How many staff members are free then: a hint for load, not a name.
    pub free_staff: usize,
}

/// The longest range one search may cover.
pub const MAX_SEARCH_DAYS: i64 = 62;

/// Free times for a resident of `query.home` under the policy, from now on.
pub async fn search(db: &Db, query: &SearchQuery, now: Timestamp) -> Result<Vec<FreeTime>, Error> {
    let found = free_candidates(db, query, now).await?;
    Ok(found
        .into_iter()
        .map(|(range, candidates)| FreeTime {
            range,
            free_staff: candidates.len(),
        })
        .collect())
}

/// The staff free at each time of `query`, under the policy.
pub(super) async fn free_candidates(
    db: &Db,
    query: &SearchQuery,
    now: Timestamp,
) -> Result<BTreeMap<SlotRange, Vec<Candidate>>, Error> {
    let dates = query.dates.at_most(MAX_SEARCH_DAYS)?;
    let catalog = snapshot::current(db).await?;
    let tz = zone(DISPLAY_ZONE)?;
    let busy = busy_times(
        db,
        day_bounds(dates.from(), &tz)?.0,
        day_bounds(dates.to(), &tz)?.1,
        None,
    )
    .await?;
    let wanted = Wanted {
        service: &query.service,
        home: &query.home,
        language: query.language,
        only_staff: None,
    };
    free_slots(
        &catalog,
        &wanted,
        dates.from(),
        dates.to(),
        now,
        None,
        &busy,
    )
}

/// A free time with the municipalities whose staff are free then, for
/// staff who offer times: each may perform the meeting for the resident's
/// home under the policy. Still no person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FreeTimeAt {
    pub range: SlotRange,
    /// In code order, each once.
    pub municipalities: Vec<MunicipalityCode>,
}

/// [`search`], saying for each time which municipalities could perform it.
pub async fn search_with_municipalities(
    db: &Db,
    query: &SearchQuery,
    now: Timestamp,
) -> Result<Vec<FreeTimeAt>, Error> {
    let found = free_candidates(db, query, now).await?;
    Ok(found
        .into_iter()
        .map(|(range, candidates)| {
            let mut municipalities: Vec<MunicipalityCode> =
                candidates.into_iter().map(|c| c.municipality).collect();
            municipalities.sort();
            municipalities.dedup();
            FreeTimeAt {
                range,
                municipalities,
            }
        })
        .collect())
}

/// A staff member free at a time, with the policy decision that lets them
/// serve the resident.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) staff_id: StaffId,
    pub(super) municipality: MunicipalityCode,
    pub(super) range: SlotRange,
    pub(super) decision: Decision,
}

/// What a search or a booking asks for.
pub(super) struct Wanted<'a> {
    pub(super) service: &'a ServiceCode,
    pub(super) home: &'a MunicipalityCode,
    pub(super) language: Option<Language>,
    /// Staff booking for a resident book only their own time.
    pub(super) only_staff: Option<&'a StaffId>,
}

/// The free slots in `from..=to` (or only the one starting at `exact_start`),
/// each with the staff who could take it, given who is `busy` when.
pub(super) fn free_slots(
    catalog: &Snapshot,
    wanted: &Wanted<'_>,
    from: Date,
    to: Date,
    now: Timestamp,
    exact_start: Option<Timestamp>,
    busy: &HashMap<StaffId, Vec<SlotRange>>,
) -> Result<BTreeMap<SlotRange, Vec<Candidate>>, Error> {
    let service_code = wanted.service;
    let home = wanted.home;
    let service = catalog.services.get(service_code).ok_or(Error::NotFound)?;
    catalog.municipality(home).ok_or(Error::NotFound)?;
    let rule = catalog.rule(service_code, Step::Meeting);
    let agreements: Vec<Agreement> = catalog.agreements_for(home);
    let tz = zone(DISPLAY_ZONE)?;
    let staff = catalog
        .staff
        .iter()
        .filter(|s| s.handles(service_code))
        .filter(|s| wanted.language.is_none_or(|l| s.languages.contains(&l)))
        .filter(|s| wanted.only_staff.is_none_or(|id| &s.id == id));
    let shape = SlotShape {
        slot_minutes: service.slot_minutes,
        buffer_minutes: service.buffer_minutes,
    };
    let mut out: BTreeMap<SlotRange, Vec<Candidate>> = BTreeMap::new();
    let mut decisions: HashMap<(MunicipalityCode, Date), Decision> = HashMap::new();
    for s in staff {
        let own = catalog.templates_of(&s.id);
        if own.is_empty() {
            continue;
        }
        let taken = busy.get(&s.id).map(Vec::as_slice).unwrap_or_default();
        let (exact, day);
        let ranges: &[SlotRange] = match exact_start {
            // Booking: one time on one day.
            Some(start) if from == to => {
                exact = slots::slot_at(own, shape, from, start, &tz);
                exact.as_slice()
            }
            _ => {
                day = slots::generate(own, shape, from, to, &tz);
                &day
            }
        };
        for &range in ranges {
            if range.start() <= now
                || exact_start.is_some_and(|t| t != range.start())
                || conflicts(&range, taken, service)
            {
                continue;
            }
            let date = range.start().to_zoned(tz.clone()).date();
            let decision = decisions
                .entry((s.municipality.clone(), date))
                .or_insert_with(|| {
                    policy::decide(
                        rule,
                        &s.municipality,
                        home,
                        service_code,
                        Step::Meeting,
                        date,
                        &agreements,
                    )
                })
                .clone();
            if !decision.allowed() {
                continue;
            }
            out.entry(range).or_default().push(Candidate {
                staff_id: s.id.clone(),
                municipality: s.municipality.clone(),
                range,
                decision,
            });
        }
    }
    Ok(out)
}

/// Active bookings per staff member that touch `[from, to)`, leaving out
/// `ignore_booking` (the one being moved).
///
/// The database joins each staff member's ranges into one text, so that a
/// month's search reads one row per staff member instead of one per booking:
/// sqlx hands over SQLite's rows at about 2 µs each, and a month in a busy
/// municipality holds tens of thousands of bookings (BENCHMARKS.md).
pub(super) async fn busy_times(
    db: &Db,
    from: Timestamp,
    to: Timestamp,
    ignore_booking: Option<&BookingId>,
) -> Result<HashMap<StaffId, Vec<SlotRange>>, Error> {
    // PostgreSQL plans a prepared statement once for all values after a few
    // runs, with the table as big as it was then. A plan made while the
    // table was small scans every active booking through another partial
    // index once it has grown (0.6 ms a booking at 10,000), and stays until
    // the next ANALYZE. Planned afresh for each call, it uses the range.
    // (`surroundings_sql` shows how a prepared statement can be kept from
    // outliving the table its plan was made for.)
    let query = busy_query(busy_sql(ignore_booking.is_some()), from, to, ignore_booking)
        .persistent(db.backend() == Backend::Sqlite);
    let mut busy = HashMap::new();
    for r in query.fetch_all(db.pool()).await? {
        let ranges: String = r.try_get("ranges")?;
        busy.insert(ids::stored(&r, "staff_id")?, parse_ranges(&ranges)?);
    }
    Ok(busy)
}

/// The busy-times query: `$1` and `$2` the range, `$3` the earliest start
/// that can reach into it, and `$4` the booking to leave out if `but_one`.
pub(super) fn busy_sql(but_one: bool) -> &'static str {
    const ALL: &str = concat!(
        "SELECT staff_id, string_agg(starts_at || ':' || ends_at, ',') AS ranges ",
        active_near!(),
        " GROUP BY staff_id"
    );
    const BUT_ONE: &str = concat!(
        "SELECT staff_id, string_agg(starts_at || ':' || ends_at, ',') AS ranges ",
        active_near!(),
        " AND id <> $4 GROUP BY staff_id"
    );
    if but_one {
        BUT_ONE
    } else {
        ALL
    }
}

/// `sql`, which holds the placeholders of [`busy_sql`], with the busy-times
/// values bound. sqlx prepares it; [`busy_times`] says why it does not keep
/// it on PostgreSQL.
pub(super) fn busy_query(
    sql: &'static str,
    from: Timestamp,
    to: Timestamp,
    ignore_booking: Option<&BookingId>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let query = sqlx::query(sql)
        .bind(from.as_second())
        .bind(to.as_second())
        .bind(from.as_second() - MAX_BOOKING_SECONDS);
    match ignore_booking {
        Some(id) => query.bind(id.as_str()),
        None => query,
    }
}

/// `start:end,start:end,...` in Unix seconds, as [`busy_times`] asks the
/// database to join them.
pub(super) fn parse_ranges(joined: &str) -> Result<Vec<SlotRange>, Error> {
    let corrupt = || Error::Corrupt("busy ranges that are not start:end pairs".into());
    joined
        .split(',')
        .map(|pair| {
            let (start, end) = pair.split_once(':').ok_or_else(corrupt)?;
            let start = start.parse().map_err(|_| corrupt())?;
            let end = end.parse().map_err(|_| corrupt())?;
            SlotRange::from_unix(start, end).map_err(Error::from)
        })
        .collect()
}

/// Whether `range` collides with a booking, keeping the service's buffer free
/// on both sides.
pub(super) fn conflicts(range: &SlotRange, taken: &[SlotRange], service: &Service) -> bool {
    let buffer = service.buffer_minutes * 60;
    taken.iter().any(|b| {
        b.start().as_second() < range.end().as_second() + buffer
            && range.start().as_second() < b.end().as_second() + buffer
    })
}
