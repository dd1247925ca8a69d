//! Property: whatever residents book, move and cancel, the weekly load table
//! that booking picks staff by equals the sum over the bookings themselves,
//! on both databases.

use booking::accounts::{self, Resident};
use booking::bookings::{self, Authority, SearchQuery, Ticket};
use booking::testing::databases;
use booking::{load, seed, DateRange, EmailAddress, Language, MunicipalityCode, ServiceCode};
use jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
enum Op {
    Book { resident: usize, time: usize },
    Move { booking: usize, time: usize },
    Cancel { booking: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4usize, 0..400usize).prop_map(|(resident, time)| Op::Book { resident, time }),
        1 => (0..64usize, 0..400usize).prop_map(|(booking, time)| Op::Move { booking, time }),
        1 => (0..64usize).prop_map(|booking| Op::Cancel { booking }),
    ]
}

fn pick(tickets: &std::cell::RefCell<Vec<Ticket>>, i: usize) -> Ticket {
    let tickets = tickets.borrow();
    tickets[i % tickets.len()].clone()
}

#[test]
fn the_load_table_always_equals_the_bookings() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tz = bookings::zone(bookings::DISPLAY_ZONE).unwrap();
    for database in runtime.block_on(databases()) {
        let db = &database.db;
        let now = Timestamp::now();
        let today = now.to_zoned(tz.clone()).date();
        let (residents, times, service) = runtime.block_on(async {
            seed::demo(db, today, now.as_second()).await.unwrap();
            let mut residents: Vec<Resident> = Vec::new();
            for i in 0..4 {
                residents.push(
                    accounts::create_resident(
                        db,
                        &EmailAddress::parse(&format!("load{i}@example.se")).unwrap(),
                        &booking::PersonName::parse("Load").unwrap(),
                        &MunicipalityCode::parse("2481").unwrap(),
                        Language::Sv,
                        now.as_second(),
                    )
                    .await
                    .unwrap(),
                );
            }
            let service = ServiceCode::parse("ekonomiskt-bistand").unwrap();
            let query = SearchQuery {
                service: service.clone(),
                home: residents[0].home.clone(),
                dates: DateRange::starting(today, 13).unwrap(),
                language: None,
            };
            let times: Vec<Timestamp> = bookings::search(db, &query, now)
                .await
                .unwrap()
                .iter()
                .map(|t| t.range.start())
                .collect();
            (residents, times, service)
        });
        assert!(!times.is_empty(), "the demo offers times");
        let tickets: std::cell::RefCell<Vec<Ticket>> = Default::default();
        let mut runner = TestRunner::new(Config {
            cases: 12,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&proptest::collection::vec(op(), 1..12), |ops| {
                runtime.block_on(async {
                    for op in ops {
                        // Refusals (a taken time, a cancelled booking) are
                        // part of the game; only the invariant must hold.
                        match op {
                            Op::Book { resident, time } => {
                                let at = times[time % times.len()];
                                if let Ok(t) = bookings::book(
                                    db,
                                    &residents[resident],
                                    &service,
                                    at,
                                    None,
                                    now,
                                )
                                .await
                                {
                                    tickets.borrow_mut().push(t);
                                }
                            }
                            Op::Move { booking, time } if !tickets.borrow().is_empty() => {
                                let t = pick(&tickets, booking);
                                let at = times[time % times.len()];
                                let _ = bookings::reschedule(
                                    db,
                                    Authority::Token(&t.manage_token),
                                    None,
                                    at,
                                    now,
                                )
                                .await;
                            }
                            Op::Cancel { booking } if !tickets.borrow().is_empty() => {
                                let t = pick(&tickets, booking);
                                let _ = bookings::cancel(
                                    db,
                                    Authority::Token(&t.manage_token),
                                    None,
                                    now,
                                )
                                .await;
                            }
                            _ => {}
                        }
                    }
                    let mut conn = db.pool().acquire().await.unwrap();
                    let expected = load::from_bookings(&mut conn, &tz).await.unwrap();
                    let stored = load::stored(&mut conn).await.unwrap();
                    prop_assert_eq!(stored, expected, "{}", database.url);
                    Ok(())
                })
            })
            .unwrap();
        assert!(!tickets.borrow().is_empty(), "some bookings were made");
    }
}

#[tokio::test]
async fn migrating_a_database_with_bookings_rebuilds_the_load_table() {
    let tz = bookings::zone(bookings::DISPLAY_ZONE).unwrap();
    for database in databases().await {
        let db = &database.db;
        let now = Timestamp::now();
        let today = now.to_zoned(tz.clone()).date();
        seed::demo(db, today, now.as_second()).await.unwrap();
        let anna =
            accounts::resident_by_email(db, &EmailAddress::parse("anna@example.se").unwrap())
                .await
                .unwrap()
                .unwrap();
        let service = ServiceCode::parse("ekonomiskt-bistand").unwrap();
        let query = SearchQuery {
            service: service.clone(),
            home: anna.home.clone(),
            dates: DateRange::starting(today, 13).unwrap(),
            language: None,
        };
        let free = bookings::search(db, &query, now).await.unwrap();
        let mut booked_seconds = 0;
        for t in free.iter().take(3) {
            let ticket = bookings::book(db, &anna, &service, t.range.start(), None, now)
                .await
                .unwrap();
            let range = ticket.booking.range;
            booked_seconds += range.end().as_second() - range.start().as_second();
        }
        // As on a database from before the table existed.
        sqlx::query("DELETE FROM staff_week_load")
            .execute(db.pool())
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();
        let stored = load::stored(&mut conn).await.unwrap();
        assert_eq!(
            stored.values().sum::<i64>(),
            booked_seconds,
            "{}",
            database.url
        );
        assert_eq!(stored, load::from_bookings(&mut conn, &tz).await.unwrap());
    }
}
