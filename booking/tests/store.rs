//! The booking store on both databases: SQLite always, PostgreSQL when
//! `DATABASE_URL` is set.

use booking::accounts;
use booking::bookings::{self, Authority, SearchQuery};
use booking::testing::databases;
use booking::{seed, EmailAddress, Error, MunicipalityCode, ServiceCode};
use jiff::{Span, Timestamp};

fn today() -> jiff::civil::Date {
    Timestamp::now()
        .to_zoned(bookings::zone(bookings::DISPLAY_ZONE).unwrap())
        .date()
}

#[tokio::test]
async fn seed_search_book_cancel_reschedule() {
    for t in databases().await {
        let db = &t.db;
        let now = Timestamp::now();
        seed::demo(db, today(), now.as_second()).await.unwrap();
        let anna =
            accounts::resident_by_email(db, &EmailAddress::parse("anna@example.se").unwrap())
                .await
                .unwrap()
                .unwrap();
        let service = ServiceCode::parse("ekonomiskt-bistand").unwrap();
        let query = SearchQuery {
            service: service.clone(),
            home: anna.home.clone(),
            from: today(),
            to: today().checked_add(Span::new().days(20)).unwrap(),
            language: None,
        };
        let free = bookings::search(db, &query, now).await.unwrap();
        assert!(!free.is_empty(), "the demo has free times");
        let first = free[0].range.start();
        let ticket = bookings::book(db, &anna, &service, first, None, now)
            .await
            .unwrap();
        // Malå residents are served by Malå or, under the agreement, Lycksele.
        assert!(
            ["2418", "2481"].contains(&ticket.booking.performed_by.as_str()),
            "{:?}",
            ticket.booking
        );
        let moved_to = free
            .iter()
            .find(|f| f.range.start() > first && f.free_staff > 0)
            .unwrap()
            .range
            .start();
        let moved = bookings::reschedule(
            db,
            Authority::Token(&ticket.manage_token),
            None,
            moved_to,
            now,
        )
        .await
        .unwrap();
        assert_eq!(moved.booking.id, ticket.booking.id);
        assert_eq!(moved.booking.sequence, 1);
        let cancelled = bookings::cancel(db, Authority::Token(&ticket.manage_token), None, now)
            .await
            .unwrap();
        assert_eq!(cancelled.status.as_str(), "cancelled");
        let again =
            bookings::reschedule(db, Authority::Token(&ticket.manage_token), None, first, now)
                .await;
        assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
        let home = MunicipalityCode::parse("2418").unwrap();
        assert_eq!(home, anna.home);
    }
}
