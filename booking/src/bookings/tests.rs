use super::*;
use std::collections::HashMap;

use jiff::{Span, Timestamp};
use sqlx::Row;

use crate::accounts::{random_token, Resident};
use crate::batch::Statement;
use crate::db::{built_sql, is_booking_conflict, Backend, Db};
use crate::domain::{
    Basis, BookingStatus, Language, MunicipalityCode, ServiceCode, SlotRange, Step,
};
use crate::load;
use crate::slots::{self, Template};
use crate::snapshot::{self};
use crate::{Error, StaffId};

use crate::time::{zone, DISPLAY_ZONE};

/// The demo seed, a Helsingborg resident, and the first staff member
/// by id, whose 45-minute bookings for that resident the tests write
/// directly.
struct OneStaff {
    resident: Resident,
    staff_id: StaffId,
    municipality: MunicipalityCode,
}

impl OneStaff {
    async fn seeded(db: &Db, name: &str, now: Timestamp) -> OneStaff {
        let today = now.to_zoned(zone(DISPLAY_ZONE).unwrap()).date();
        crate::seed::demo(db, today, now.as_second()).await.unwrap();
        let resident = crate::accounts::create_resident(
            db,
            &crate::EmailAddress::parse(&format!("{name}@example.se")).unwrap(),
            &crate::PersonName::parse(name).unwrap(),
            &MunicipalityCode::parse("1283").unwrap(),
            Language::Sv,
            now.as_second(),
        )
        .await
        .unwrap();
        let row = sqlx::query("SELECT id, municipality_code FROM staff ORDER BY id LIMIT 1")
            .fetch_one(db.pool())
            .await
            .unwrap();
        let municipality: String = row.try_get("municipality_code").unwrap();
        OneStaff {
            resident,
            staff_id: StaffId::parse(row.try_get::<String, _>("id").unwrap()).unwrap(),
            municipality: MunicipalityCode::parse(&municipality).unwrap(),
        }
    }

    /// Writes `count` active bookings an hour apart from `from`.
    async fn book_hourly(&self, db: &Db, from: i64, count: i64, now: Timestamp) {
        for i in 0..count {
            let booking = self.booking(from + i * 3600, BookingStatus::Booked);
            db.run(&[insert_statement(&booking, &random_token(), now)])
                .await
                .unwrap();
        }
    }

    fn booking(&self, start: i64, status: BookingStatus) -> Booking {
        Booking {
            id: crate::ids::from_uuid(uuid::Uuid::now_v7()),
            resident_id: self.resident.id.clone(),
            staff_id: self.staff_id.clone(),
            service: ServiceCode::parse("stod-till-anhoriga").unwrap(),
            step: Step::Meeting,
            range: SlotRange::from_unix(start, start + 2700).unwrap(),
            status,
            performed_by: self.municipality.clone(),
            performed_for: self.resident.home.clone(),
            agreement_id: None,
            rule: Basis::Home,
            sequence: 0,
            neutral_title: None,
        }
    }
}

/// Overlapping bookings of one staff member that reach the database at
/// once, so that they share a batch (on PostgreSQL, one statement):
/// one of each pair stands, and the other is refused as a conflict.
#[tokio::test]
async fn overlapping_bookings_written_together_are_refused_by_the_database() {
    for database in crate::testing::databases().await {
        let db = &database.db;
        let now = Timestamp::now();
        let one = OneStaff::seeded(db, "overlap", now).await;
        let staff_id = &one.staff_id;
        let booking = |start: i64| one.booking(start, BookingStatus::Booked);
        // Sixteen pairs an hour apart, the second of each starting 15
        // minutes into the first.
        let base = now.as_second() + 30 * 86400;
        let writes: Vec<Vec<Statement>> = (0..16)
            .flat_map(|i| [base + i * 3600, base + i * 3600 + 900])
            .map(|start| vec![insert_statement(&booking(start), &random_token(), now)])
            .collect();
        let results = futures::future::join_all(writes.iter().map(|w| db.run(w))).await;
        for (i, pair) in results.chunks(2).enumerate() {
            let refused = pair
                .iter()
                .filter(|r| matches!(r, Err(e) if is_booking_conflict(e)))
                .count();
            let stood = pair.iter().filter(|r| r.is_ok()).count();
            assert_eq!(
                (stood, refused),
                (1, 1),
                "{} pair {i}: {pair:?}",
                database.url
            );
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM bookings WHERE staff_id = $1 AND status = 'booked' AND starts_at >= $2",
        )
        .bind(staff_id.as_str())
        .bind(base)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(active, 16, "{}", database.url);
    }
}

/// What booking reads around a time holds every active booking of a
/// staff member in the window, one row each, and leaves out the one
/// being moved and those outside the window or cancelled.
#[tokio::test]
async fn the_surroundings_of_a_time_hold_each_booking_near_it() {
    for database in crate::testing::databases().await {
        let db = &database.db;
        let now = Timestamp::now();
        let tz = zone(DISPLAY_ZONE).unwrap();
        let one = OneStaff::seeded(db, "around", now).await;
        let staff_id = &one.staff_id;
        let base = now.as_second() + 30 * 86400;
        let mut written = Vec::new();
        // Before, at and after `base`, one far away, and one cancelled.
        for (start, status) in [
            (base - 3600, BookingStatus::Booked),
            (base, BookingStatus::Booked),
            (base + 3600, BookingStatus::Booked),
            (base + 5 * 86400, BookingStatus::Booked),
            (base + 7200, BookingStatus::Cancelled),
        ] {
            let booking = one.booking(start, status);
            db.run(&[insert_statement(&booking, &random_token(), now)])
                .await
                .unwrap();
            if status == BookingStatus::Cancelled {
                sqlx::query("UPDATE bookings SET status = 'cancelled' WHERE id = $1")
                    .bind(booking.id.as_str())
                    .execute(db.pool())
                    .await
                    .unwrap();
            }
            written.push(booking);
        }
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let monday = load::week_of(at(base), &tz);
        let (from, to) = (at(base - 4 * 3600), at(base + 4 * 3600));
        let near: Vec<SlotRange> = written[..3].iter().map(|b| b.range).collect();

        // The week's load: none, then the one at `base` counted twice
        // for this staff member and once for another.
        let seen = surroundings(db, from, to, None, monday).await.unwrap();
        assert!(seen.booked.is_empty(), "{}", database.url);
        let counted = load::adjust(staff_id, &written[1].range, 1, &tz);
        db.run(std::slice::from_ref(&counted)).await.unwrap();
        db.run(&[counted]).await.unwrap();
        let other: String = sqlx::query_scalar("SELECT id FROM staff ORDER BY id LIMIT 1 OFFSET 1")
            .fetch_one(db.pool())
            .await
            .unwrap();
        let other = StaffId::parse(other).unwrap();
        db.run(&[load::adjust(&other, &written[1].range, 1, &tz)])
            .await
            .unwrap();

        let seen = surroundings(db, from, to, None, monday).await.unwrap();
        let mut busy = seen.busy.get(staff_id).cloned().unwrap_or_default();
        busy.sort();
        assert_eq!(busy, near, "{}", database.url);
        assert!(seen.catalog_version >= 0, "{}", database.url);
        let seconds = written[1].range.end().as_second() - written[1].range.start().as_second();
        assert_eq!(
            seen.booked,
            HashMap::from([(staff_id.clone(), 2 * seconds), (other, seconds)]),
            "{}",
            database.url
        );

        let moving = &written[1].id;
        let seen = surroundings(db, from, to, Some(moving), monday)
            .await
            .unwrap();
        let mut busy = seen.busy.get(staff_id).cloned().unwrap_or_default();
        busy.sort();
        assert_eq!(busy, vec![near[0], near[2]], "{}", database.url);
    }
}

/// The size class grows by one each time the table doubles.
#[test]
fn a_size_class_grows_with_each_doubling() {
    let classes: Vec<u32> = [-1, 0, 1, 2, 3, 6, 7, 1_000_000]
        .into_iter()
        .map(size_class)
        .collect();
    assert_eq!(classes, [0, 0, 1, 1, 2, 2, 3, 19]);
}

/// On PostgreSQL a read around a time notes how big `bookings` has
/// grown, and the next read is a statement of its own, planned for that
/// size. SQLite plans each statement once per connection anyway.
#[tokio::test]
async fn a_read_around_a_time_is_planned_again_when_bookings_has_grown() {
    for database in crate::testing::databases().await {
        let db = &database.db;
        let now = Timestamp::now();
        let tz = zone(DISPLAY_ZONE).unwrap();
        let one = OneStaff::seeded(db, "growing", now).await;
        let base = now.as_second() + 30 * 86400;
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let monday = load::week_of(at(base), &tz);
        let read = || surroundings(db, at(base - 3600), at(base + 3600), None, monday);

        read().await.unwrap();
        let before = db.bookings_scale();
        // A few hundred bookings take several pages.
        one.book_hourly(db, base, 400, now).await;
        // The window holds the first of them only.
        let seen = read().await.unwrap();
        assert_eq!(seen.busy.get(&one.staff_id).map(Vec::len), Some(1));
        let after = db.bookings_scale();
        match db.backend() {
            Backend::Sqlite => assert_eq!((before, after), (0, 0)),
            Backend::Postgres => {
                let pages: i64 = sqlx::query_scalar("SELECT pg_relation_size('bookings') / 8192")
                    .fetch_one(db.pool())
                    .await
                    .unwrap();
                assert!(pages >= 4, "{pages} pages");
                assert_eq!(after, size_class(pages));
                assert!(after > before, "{before} then {after}");
                assert_ne!(
                    surroundings_sql(Backend::Postgres, false, before),
                    surroundings_sql(Backend::Postgres, false, after)
                );
            }
        }
    }
}

/// Booking checks the catalog it holds against the version it reads
/// with the busy times: staff added after this process loaded the
/// catalog are offered at once.
#[tokio::test]
async fn a_booking_sees_staff_added_after_the_catalog_was_loaded() {
    for database in crate::testing::databases().await {
        let db = &database.db;
        let now = Timestamp::now();
        let tz = zone(DISPLAY_ZONE).unwrap();
        let today = now.to_zoned(tz.clone()).date();
        crate::seed::demo(db, today, now.as_second()).await.unwrap();
        let helsingborg = MunicipalityCode::parse("1283").unwrap();
        let service = ServiceCode::parse("stod-till-anhoriga").unwrap();
        let resident = crate::accounts::create_resident(
            db,
            &crate::EmailAddress::parse("night@example.se").unwrap(),
            &crate::PersonName::parse("Night").unwrap(),
            &helsingborg,
            Language::Sv,
            now.as_second(),
        )
        .await
        .unwrap();
        // Cached before the new staff member exists.
        let before = snapshot::current(db).await.unwrap();
        let password = crate::domain::NewPassword::parse("a night shift password").unwrap();
        let staff = crate::accounts::create_staff(
            db,
            &crate::accounts::NewStaff {
                municipality: helsingborg.clone(),
                email: crate::EmailAddress::parse("night@kontakt.test").unwrap(),
                name: crate::PersonName::parse("Night Shift").unwrap(),
                role: crate::domain::Role::Staff,
                services: vec![service.clone()],
                languages: vec![Language::Sv],
                password_hash: crate::accounts::hash_password(&password).await.unwrap(),
            },
            now.as_second(),
        )
        .await
        .unwrap();
        // Two in the night, when nobody from the demo works.
        let day = today.checked_add(Span::new().days(3)).unwrap();
        slots::add_template(
            db,
            &Template {
                id: String::new(),
                staff_id: staff.id.clone(),
                weekday: day.weekday().to_monday_one_offset(),
                start_minute: 2 * 60,
                end_minute: 4 * 60,
                valid_from: today,
                valid_to: day,
            },
        )
        .await
        .unwrap();
        let starts_at = day.at(2, 0, 0, 0).to_zoned(tz.clone()).unwrap().timestamp();
        let ticket = book(db, &resident, &service, starts_at, None, now)
            .await
            .unwrap();
        assert_eq!(ticket.booking.staff_id, staff.id, "{}", database.url);
        let after = db.last_snapshot().unwrap();
        assert!(after.version() > before.version(), "{}", database.url);
    }
}

/// The load figures read the days asked for through the index on the
/// start, not the whole table (nor, on SQLite, a whole index in the
/// order of the grouping), on both databases. PostgreSQL is given
/// enough bookings, and statistics, to prefer the index over reading a
/// small table whole.
#[tokio::test]
async fn the_load_figures_read_only_the_days_asked_for() {
    for database in crate::testing::databases().await {
        let db = &database.db;
        let now = Timestamp::now();
        let one = OneStaff::seeded(db, "counted", now).await;
        let base = now.as_second() + 30 * 86400;
        one.book_hourly(db, base, 2000, now).await;
        sqlx::query("ANALYZE").execute(db.pool()).await.unwrap();
        let (explain, detail) = match db.backend() {
            Backend::Sqlite => ("EXPLAIN QUERY PLAN", "detail"),
            Backend::Postgres => ("EXPLAIN", "QUERY PLAN"),
        };
        let plan: Vec<String> = sqlx::query(built_sql(format!("{explain} {LOAD_SQL}")))
            .bind(base)
            .bind(base + 7 * 86400)
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>(detail).unwrap())
            .collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("bookings_time") && !step.contains("SCAN")),
            "{plan:?}"
        );
    }
}

#[test]
fn joined_busy_ranges_parse_in_order_and_anything_else_is_corrupt() {
    let ranges = parse_ranges("1800000000:1800001800,1800003600:1800005400").unwrap();
    let unix: Vec<(i64, i64)> = ranges
        .iter()
        .map(|r| (r.start().as_second(), r.end().as_second()))
        .collect();
    assert_eq!(unix, [(1800000000, 1800001800), (1800003600, 1800005400)]);
    for bad in [
        "",
        "1800000000",
        "1800000000:x",
        "1800001800:1800000000",
        "1:2,",
    ] {
        assert!(
            matches!(
                parse_ranges(bad),
                Err(Error::Corrupt(_) | Error::Invalid(_))
            ),
            "{bad:?}"
        );
    }
}
