//! The booking store on both databases: SQLite always, PostgreSQL when
//! `DATABASE_URL` is set.

use booking::accounts;
use booking::bookings::{self, Authority, SearchQuery};
use booking::testing::databases;
use booking::{seed, DateRange, EmailAddress, Error, MunicipalityCode, ServiceCode};
use jiff::Timestamp;

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
            dates: DateRange::starting(today(), 20).unwrap(),
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
        // Cancelling spent the token, so it finds nothing any more.
        assert!(matches!(again, Err(Error::NotFound)), "{again:?}");
        let home = MunicipalityCode::parse("2418").unwrap();
        assert_eq!(home, anna.home);
    }
}

/// The settings the SQLite write path is measured with (BENCHMARKS.md):
/// write-ahead logging, no memory map, savepoint journals in memory rather
/// than in a temporary file, and the bundled SQLite built without the
/// process-wide mutexes of memory statistics and memory management
/// (`.cargo/config.toml`).
#[tokio::test]
async fn sqlite_connections_log_ahead_and_keep_temporary_data_in_memory() {
    for t in databases().await {
        if t.db.backend() != booking::Backend::Sqlite {
            continue;
        }
        let mut conn = t.db.pool().acquire().await.unwrap();
        // temp_store 2 is MEMORY.
        for (pragma, wanted) in [
            ("PRAGMA journal_mode", "wal"),
            ("PRAGMA temp_store", "2"),
            ("PRAGMA mmap_size", "0"),
        ] {
            let row = sqlx::query(pragma).fetch_one(&mut *conn).await.unwrap();
            let value = sqlx::Row::try_get::<String, _>(&row, 0)
                .or_else(|_| sqlx::Row::try_get::<i64, _>(&row, 0).map(|n| n.to_string()))
                .unwrap();
            assert_eq!(value, wanted, "{pragma}");
        }
        let options: Vec<String> = sqlx::query("PRAGMA compile_options")
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|row| sqlx::Row::try_get(row, 0).unwrap())
            .collect();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }
}
