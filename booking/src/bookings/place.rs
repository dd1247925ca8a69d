//! Placing a booking: picking the staff member by load and writing the booking
//! with its mail, load and audit entry in one transaction.

use super::busy_query;
use super::decide_for;
use super::free_slots;
use super::parse_ranges;
use super::record::booking_entry;
use super::record::Booking;
use super::record::Ticket;
use super::Candidate;
use super::Wanted;
use super::REMINDER_MINUTES;
use crate::accounts;
use crate::accounts::random_token;
use crate::accounts::token_hash;
use crate::accounts::Resident;
use crate::accounts::Staff;
use crate::audit;
use crate::audit::Actor;
use crate::audit::Entry;
use crate::audit::Outcome;
use crate::batch::Statement;
use crate::db::is_booking_conflict;
use crate::db::Backend;
use crate::db::Db;
use crate::db::Hold;
use crate::domain::BookingStatus;
use crate::domain::EmailAddress;
use crate::domain::Language;
use crate::domain::ServiceCode;
use crate::domain::SlotRange;
use crate::domain::Step;
use crate::ids;
use crate::load;
use crate::outbox;
use crate::outbox::Message;
use crate::outbox::NeutralTitle;
use crate::snapshot;
use crate::time::zone;
use crate::time::DISPLAY_ZONE;
use crate::{BookingId, Error, StaffId};
use jiff::civil::Date;
use jiff::Timestamp;
use rand::seq::SliceRandom;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::OnceLock;
/// Books the time starting at `starts_at` for `resident`, picking the staff
/// member by load.
pub async fn book(
    db: &Db,
    resident: &Resident,
    service: &ServiceCode,
    starts_at: Timestamp,
    language: Option<Language>,
    now: Timestamp,
) -> Result<Ticket, Error> {
    book_titled(db, resident, service, starts_at, language, None, now).await
}

/// [`book`], with the neutral title the resident chose for the booking's
/// mail and calendar entry should they be discreet (see [`discretion`]).
pub async fn book_titled(
    db: &Db,
    resident: &Resident,
    service: &ServiceCode,
    starts_at: Timestamp,
    language: Option<Language>,
    neutral_title: Option<NeutralTitle>,
    now: Timestamp,
) -> Result<Ticket, Error> {
    let actor = Actor::Resident(resident.id.clone());
    let wanted = Wanted {
        service,
        home: &resident.home,
        language,
        only_staff: None,
    };
    book_new(db, &actor, resident, &wanted, starts_at, neutral_title, now).await
}

/// Picks the staff member for a new booking, holds them and writes the
/// booking with its mail, load and audit entry in one transaction. When
/// another process booked the pick meanwhile, it looks again.
pub(super) async fn book_new(
    db: &Db,
    actor: &Actor,
    resident: &Resident,
    wanted: &Wanted<'_>,
    starts_at: Timestamp,
    neutral_title: Option<NeutralTitle>,
    now: Timestamp,
) -> Result<Ticket, Error> {
    let tz = zone(DISPLAY_ZONE)?;
    let token = random_token();
    let discreet_service = service_is_discreet(db, wanted.service).await?;
    for _ in 0..PLACE_ATTEMPTS {
        let (candidate, _hold) = best_free(db, wanted, starts_at, now, None).await?;
        let booking = new_booking(resident, wanted.service, &candidate, neutral_title);
        let discreet = discretion(discreet_service, resident, &booking);
        let statements = [
            insert_statement(&booking, &token, now),
            load::adjust(&booking.staff_id, &booking.range, 1, &tz),
            announce(
                resident,
                confirmation(&booking, &token),
                &booking,
                &token,
                discreet,
                now,
            ),
            audit::statement(
                &booking_entry(actor, "booking.create", &booking, Outcome::Allowed),
                now.as_second(),
            ),
        ];
        match db.run(&statements).await {
            Ok(()) => {
                return Ok(Ticket {
                    booking,
                    manage_token: token,
                })
            }
            // Booked by another process since we looked: look again.
            Err(e) if is_booking_conflict(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict("that time is no longer available".into()))
}

/// A staff member books one of their own free times for the resident with
/// address `email`, which the policy must allow their municipality to do.
/// An unknown address and a resident the policy keeps from this staff
/// member are one answer, `NotFound`, each with a denied audit entry: the
/// answer must not tell staff who is registered.
pub async fn book_as_staff(
    db: &Db,
    staff: &Staff,
    email: &EmailAddress,
    service: &ServiceCode,
    starts_at: Timestamp,
    now: Timestamp,
) -> Result<Ticket, Error> {
    let actor = Actor::Staff(staff.id.clone());
    let Some(resident) = accounts::resident_by_email(db, email).await? else {
        let entry = Entry {
            actor: &actor,
            action: "booking.create",
            subject: "resident:unknown".to_owned(),
            resident_id: None,
            on_behalf_of: None,
            rule: None,
            agreement_id: None,
            outcome: Outcome::Denied,
        };
        audit::record_now(db, &entry, now.as_second()).await?;
        return Err(Error::NotFound);
    };
    let resident = &resident;
    let decision = decide_for(
        db,
        &staff.municipality,
        &resident.home,
        service,
        Step::Meeting,
        starts_at,
    )
    .await?;
    if !decision.allowed() || !staff.handles(service) {
        let entry = Entry {
            actor: &actor,
            action: "booking.create",
            subject: format!("resident:{}", resident.id),
            resident_id: Some(&resident.id),
            on_behalf_of: Some(resident.home.as_str()),
            rule: Some(decision.basis()),
            agreement_id: None,
            outcome: Outcome::Denied,
        };
        audit::record_now(db, &entry, now.as_second()).await?;
        return Err(Error::NotFound);
    }
    let wanted = Wanted {
        service,
        home: &resident.home,
        language: None,
        only_staff: Some(&staff.id),
    };
    book_new(db, &actor, resident, &wanted, starts_at, None, now)
        .await
        .map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict("you have no free time then".into()),
            e => e,
        })
}

/// How often booking looks again after the database refused its pick. Only
/// a booking at another, overlapping start can cause that, so a second look
/// almost always succeeds.
pub(super) const PLACE_ATTEMPTS: usize = 3;

/// How often a booking reads again when the catalog changed since this
/// process loaded it; each time loads the newer one.
pub(super) const CATALOG_ATTEMPTS: usize = 3;

/// The staff member who should take the slot starting exactly at
/// `starts_at`, held for the caller: the least loaded that week relative to
/// their published time, ties broken toward the resident's home
/// municipality, then at random. Staff another booking in this process holds
/// are passed over. No one free is a conflict.
pub(super) async fn best_free(
    db: &Db,
    wanted: &Wanted<'_>,
    starts_at: Timestamp,
    now: Timestamp,
    moving: Option<&BookingId>,
) -> Result<(Candidate, Hold), Error> {
    let tz = zone(DISPLAY_ZONE)?;
    let day = starts_at.to_zoned(tz.clone()).date();
    let monday = load::week_of(starts_at, &tz);
    let around = |delta: i64| {
        Timestamp::from_second(starts_at.as_second() + delta)
            .map_err(|e| Error::Corrupt(e.to_string()))
    };
    // The catalog this process has, checked against the version read with
    // the busy times; a newer one is loaded and the times read again, since
    // the service's slot length sets how far around the start to look.
    let mut catalog = match db.last_snapshot() {
        Some(catalog) => catalog,
        None => snapshot::current(db).await?,
    };
    let mut read = None;
    for _ in 0..CATALOG_ATTEMPTS {
        let service = catalog
            .services
            .get(wanted.service)
            .ok_or(Error::NotFound)?;
        // Only bookings near the start matter, however full the day is.
        let margin = (service.slot_minutes + 2 * service.buffer_minutes) * 60;
        let seen = surroundings(db, around(-margin)?, around(margin)?, moving, monday).await?;
        if seen.catalog_version == catalog.version() {
            read = Some(seen);
            break;
        }
        catalog = snapshot::at_version(db, seen.catalog_version).await?;
    }
    let Some(Surroundings { busy, booked, .. }) = read else {
        return Err(Error::Conflict(
            "the catalog changed while the time was being booked; try again".into(),
        ));
    };
    let found = free_slots(&catalog, wanted, day, day, now, Some(starts_at), &busy)?;
    let candidates: Vec<Candidate> = found.into_values().flatten().collect();
    if candidates.is_empty() {
        return Err(Error::Conflict("that time is not available".into()));
    }
    let published_in_week = catalog.published_in_week(monday)?;
    let mut ranked: Vec<(f64, bool, Candidate)> = candidates
        .into_iter()
        .map(|c| {
            let minutes = booked.get(&c.staff_id).copied().unwrap_or(0) / 60;
            let published = published_in_week.get(&c.staff_id).copied().unwrap_or(0);
            let away = &c.municipality != wanted.home;
            (minutes as f64 / published.max(1) as f64, away, c)
        })
        .collect();
    // Equals stay in random order, so that bookings spread over them.
    ranked.shuffle(&mut rand::thread_rng());
    ranked.sort_by(|(ra, aa, _), (rb, ab, _)| ra.total_cmp(rb).then(aa.cmp(ab)));
    ranked
        .into_iter()
        .find_map(|(_, _, c)| {
            db.hold(&c.staff_id, c.range.start().as_second())
                .map(|hold| (c, hold))
        })
        .ok_or_else(|| Error::Conflict("that time is no longer available".into()))
}

/// What picking a staff member for a time reads, in one trip to the
/// database: the busy times around it as [`busy_times`], the booked
/// seconds of its week per staff member, and the catalog's version. The
/// week's load comes joined into one row (`staff:seconds,...`), not a row
/// per staff member: a busy week holds some fifty, and a row costs kontakt
/// more than its part of a text (a tenth of kontakt's CPU per booking in
/// the booking benchmark, BENCHMARKS.md).
pub(super) struct Surroundings {
    pub(super) busy: HashMap<StaffId, Vec<SlotRange>>,
    pub(super) booked: HashMap<StaffId, i64>,
    pub(super) catalog_version: i64,
}

pub(super) async fn surroundings(
    db: &Db,
    from: Timestamp,
    to: Timestamp,
    ignore_booking: Option<&BookingId>,
    monday: Date,
) -> Result<Surroundings, Error> {
    let sql = surroundings_sql(db.backend(), ignore_booking.is_some(), db.bookings_scale());
    // Prepared on both databases (see `surroundings_sql`).
    let query = busy_query(sql, from, to, ignore_booking).bind(monday.to_string());
    let mut out = Surroundings {
        busy: HashMap::new(),
        booked: HashMap::new(),
        catalog_version: -1,
    };
    let number = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| Error::Corrupt(format!("{v:?} where a number belongs")))
    };
    for r in query.fetch_all(db.pool()).await? {
        let kind: String = r.try_get("kind")?;
        let value: String = r.try_get("value")?;
        match kind.as_str() {
            "busy" => out
                .busy
                .entry(ids::stored(&r, "staff_id")?)
                .or_default()
                .extend(parse_ranges(&value)?),
            "load" => {
                for pair in value.split(',').filter(|p| !p.is_empty()) {
                    let (staff_id, seconds) = pair.rsplit_once(':').ok_or_else(|| {
                        Error::Corrupt(format!("{pair:?} where staff:seconds belongs"))
                    })?;
                    out.booked.insert(
                        ids::parse_stored("staff_week_load.staff_id", staff_id)?,
                        number(seconds)?,
                    );
                }
            }
            "version" => out.catalog_version = number(&value)?,
            "pages" => db.set_bookings_scale(size_class(number(&value)?)),
            other => return Err(Error::Corrupt(format!("a row of kind {other:?}"))),
        }
    }
    Ok(out)
}

/// The size class of a table of `pages` pages: it grows by one each time
/// the table doubles.
pub(super) fn size_class(pages: i64) -> u32 {
    (u64::try_from(pages).unwrap_or(0) + 1).ilog2()
}

/// The query of [`surroundings`]: the placeholders of [`busy_sql`] and
/// after them one more, the week. Unlike [`busy_sql`] it reads a row per
/// booking, not per staff member: the window around one time holds a few
/// bookings per staff member at most, and without the GROUP BY PostgreSQL
/// plans it faster and sorts nothing (8 % less of its CPU per booking).
///
/// Planning it cost PostgreSQL more than running it (0.1 ms against
/// 0.05 ms), once per booking, so it is prepared there too, where after five
/// runs PostgreSQL keeps one plan for all values. That plan is only as good
/// as the table was big when it was made: made while `bookings` held a few
/// pages it reads the whole table, and stays until the next ANALYZE, while a
/// busy hour may multiply the table first (2.9 ms a read in the booking
/// benchmark). So on PostgreSQL the query also reads the table's size in
/// pages, and its text names the size class `scale` that the last read saw
/// ([`size_class`]): each doubling of the table makes it a new statement,
/// planned afresh for the table as it is then. The plan of a class is thus
/// never used on a table more than twice the size it was made for.
pub(super) fn surroundings_sql(backend: Backend, but_one: bool, scale: u32) -> &'static str {
    macro_rules! load_and_version {
        ($week:literal) => {
            concat!(
                " UNION ALL SELECT 'load', '', COALESCE(string_agg(staff_id || ':' || booked_seconds, ','), '') FROM staff_week_load WHERE week = ",
                $week,
                " UNION ALL SELECT 'version', '', CAST(version AS TEXT) FROM catalog_version WHERE id = 1"
            )
        };
    }
    const ALL: &str = concat!(
        "SELECT 'busy' AS kind, staff_id, starts_at || ':' || ends_at AS value ",
        active_near!(),
        load_and_version!("$4")
    );
    const BUT_ONE: &str = concat!(
        "SELECT 'busy' AS kind, staff_id, starts_at || ':' || ends_at AS value ",
        active_near!(),
        " AND id <> $4",
        load_and_version!("$5")
    );
    // PostgreSQL's texts, made once per size class (at most 64, as the
    // class of a 64-bit page count) rather than once per booking.
    static POSTGRES: [[OnceLock<String>; 64]; 2] = [const { [const { OnceLock::new() }; 64] }; 2];
    let sql = if but_one { BUT_ONE } else { ALL };
    match backend {
        Backend::Sqlite => sql,
        Backend::Postgres => POSTGRES[usize::from(but_one)][scale.min(63) as usize].get_or_init(|| {
            format!(
                "{sql} UNION ALL SELECT 'pages', '', CAST(pg_relation_size('bookings') / 8192 AS TEXT) \
                 /* planned for bookings of size class {scale} */"
            )
        }),
    }
}

/// The neutral title a mail about `booking` goes out under, or `None` for an
/// ordinary mail: the one place that decides whether a booking's mail is
/// discreet. It is when its service is, or when the resident asked for
/// discreet mail for all their bookings.
pub fn discretion(
    discreet_service: bool,
    resident: &Resident,
    booking: &Booking,
) -> Option<NeutralTitle> {
    (discreet_service || resident.discreet_mail).then(|| booking.neutral_title.unwrap_or_default())
}

/// Whether `service`'s mail must be discreet. An unknown service counts as
/// discreet: the safe side when the catalog and a booking disagree.
pub(super) async fn service_is_discreet(db: &Db, service: &ServiceCode) -> Result<bool, Error> {
    Ok(snapshot::current(db)
        .await?
        .services
        .get(service)
        .is_none_or(|s| s.discreet))
}

pub(super) fn new_booking(
    resident: &Resident,
    service: &ServiceCode,
    candidate: &Candidate,
    neutral_title: Option<NeutralTitle>,
) -> Booking {
    Booking {
        id: ids::from_uuid(uuid::Uuid::now_v7()),
        resident_id: resident.id.clone(),
        staff_id: candidate.staff_id.clone(),
        service: service.clone(),
        step: Step::Meeting,
        range: candidate.range,
        status: BookingStatus::Booked,
        performed_by: candidate.municipality.clone(),
        performed_for: resident.home.clone(),
        agreement_id: candidate.decision.agreement_id().map(str::to_owned),
        rule: candidate.decision.basis(),
        sequence: 0,
        neutral_title,
    }
}

pub(super) fn insert_statement(booking: &Booking, token: &str, now: Timestamp) -> Statement {
    Statement::new(
        "INSERT INTO bookings (id, resident_id, staff_id, service_code, step, starts_at, ends_at, status, performed_by, \
         performed_for, agreement_id, rule, manage_token_hash, created_at, updated_at, neutral_title) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'booked', $8, $9, $10, $11, $12, $13, $13, $14)",
    )
    .bind(booking.id.as_str())
    .bind(booking.resident_id.as_str())
    .bind(booking.staff_id.as_str())
    .bind(booking.service.as_str())
    .bind(booking.step.as_str())
    .bind(booking.range.start().as_second())
    .bind(booking.range.end().as_second())
    .bind(booking.performed_by.as_str())
    .bind(booking.performed_for.as_str())
    .bind(booking.agreement_id.as_deref())
    .bind(booking.rule.as_str())
    .bind(token_hash(token))
    .bind(now.as_second())
    .bind(booking.neutral_title.map(NeutralTitle::as_str))
}

/// The confirmation of a new booking.
pub(super) fn confirmation(booking: &Booking, token: &str) -> Message {
    Message::BookingConfirmed {
        booking_id: booking.id.clone(),
        starts_at: booking.range.start().as_second(),
        ends_at: booking.range.end().as_second(),
        sequence: booking.sequence,
        manage_token: token.to_owned(),
    }
}

/// `first`, due now, and the reminders of `booking`, as one insert to run in
/// the transaction that makes the change.
pub(super) fn announce(
    resident: &Resident,
    first: Message,
    booking: &Booking,
    token: &str,
    discreet: Option<NeutralTitle>,
    now: Timestamp,
) -> Statement {
    let mut messages = vec![(first, now.as_second())];
    for minutes in REMINDER_MINUTES {
        let due = booking.range.start().as_second() - minutes * 60;
        if due <= now.as_second() {
            continue;
        }
        let message = Message::Reminder {
            booking_id: booking.id.clone(),
            starts_at: booking.range.start().as_second(),
            ends_at: booking.range.end().as_second(),
            minutes_before: minutes,
            manage_token: token.to_owned(),
        };
        messages.push((message, due));
    }
    outbox::enqueue_all(
        &resident.email,
        resident.language,
        &messages,
        discreet,
        now.as_second(),
    )
}
