//! The worker against the database with the file transport and an SMTP port
//! nobody listens on: claims, reminders, retries, parking and the admin
//! functions. Runs on SQLite, and on PostgreSQL when `DATABASE_URL` is set.

mod common;

use std::time::Duration;

use booking::outbox::delivery;
use booking::outbox::{supersede_reminders, Message};
use booking::{BookingId, Db, Language};
use common::*;
use notify::{mailbox, CalendarMethod, Settings, Worker};

fn file_settings(dir: &std::path::Path) -> Settings {
    let mut settings = Settings::new("https://kontakt.example.se");
    settings.outbox_dir = dir.to_path_buf();
    settings
}

#[tokio::test]
async fn file_transport_writes_eml_files_the_dev_page_can_read() {
    each_database(|db, name| async move {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::new(db.clone(), file_settings(dir.path())).unwrap();
        let t = now();
        let booked_id = put(
            &db,
            "anna@example.se",
            Language::Sv,
            &booked("b1", t + 86_400 * 3, 0),
            t - 5,
        )
        .await;
        let sign_in = Message::SignInLink {
            token: "abc123".into(),
            expires_at: t + 900,
        };
        let sign_in_id = put(&db, "anna@example.se", Language::En, &sign_in, t).await;

        let report = worker.run_once(at(t)).await.unwrap();
        assert_eq!((report.claimed, report.sent), (2, 2), "{name}: {report:?}");
        assert_eq!(row_state(&db, &booked_id).await.0, "sent", "{name}");

        let mails = mailbox::list(dir.path()).unwrap();
        let ids: Vec<&str> = mails.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{name}: {ids:?}");

        let sign_in_mail = mailbox::read(dir.path(), &sign_in_id).unwrap().unwrap();
        assert_eq!(sign_in_mail.to, "anna@example.se");
        assert_eq!(sign_in_mail.subject, "Your sign-in link");
        assert_eq!(sign_in_mail.language.as_deref(), Some("en"));
        assert_eq!(
            sign_in_mail.links,
            ["https://kontakt.example.se/auth/resident/callback?token=abc123"]
        );
        assert!(sign_in_mail
            .html
            .contains("href=\"https://kontakt.example.se/auth/resident/callback?token=abc123\""));
        assert!(sign_in_mail.calendar.is_none());

        let booked_mail = mailbox::read(dir.path(), &booked_id).unwrap().unwrap();
        let calendar = booked_mail
            .calendar
            .expect("a booking carries an invitation");
        assert_eq!(
            calendar.method.as_deref(),
            Some(CalendarMethod::Request.as_str())
        );
        assert!(calendar.ics.contains("METHOD:REQUEST"));

        // Nothing is due any more: a second run sends nothing twice.
        assert_eq!(
            worker.run_once(at(t + 1)).await.unwrap().claimed,
            0,
            "{name}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_dev_page_lists_newest_first() {
    each_database(|db, name| async move {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::new(db.clone(), file_settings(dir.path())).unwrap();
        let t = now();
        let first = put(
            &db,
            "a@example.se",
            Language::Sv,
            &Message::NoteShared,
            t - 100,
        )
        .await;
        worker.run_once(at(t - 100)).await.unwrap();
        let second = put(&db, "a@example.se", Language::Sv, &Message::NoteShared, t).await;
        worker.run_once(at(t)).await.unwrap();
        let ids: Vec<String> = mailbox::list(dir.path())
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, [second, first], "{name}");
    })
    .await;
}

#[tokio::test]
async fn reminders_go_once_and_never_for_moved_cancelled_or_started_meetings() {
    each_database(|db, name| async move {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::new(db.clone(), file_settings(dir.path())).unwrap();
        let t = now();
        let start = t + 3600 * 30;
        // As `booking` does at booking time: reminders 24 h and 1 h ahead.
        let day_before = put(
            &db,
            "r@example.se",
            Language::Sv,
            &reminder("kept", start, 1440),
            start - 86_400,
        )
        .await;
        let hour_before = put(
            &db,
            "r@example.se",
            Language::Sv,
            &reminder("kept", start, 60),
            start - 3600,
        )
        .await;
        // A booking moved (or cancelled) before its reminder came due.
        let moved = put(
            &db,
            "m@example.se",
            Language::Sv,
            &reminder("moved", start, 1440),
            start - 86_400,
        )
        .await;
        let mut conn = db.pool().acquire().await.unwrap();
        assert_eq!(
            supersede_reminders(&mut conn, &BookingId::parse("moved").unwrap())
                .await
                .unwrap(),
            1
        );
        drop(conn);

        // Nothing is due yet.
        assert_eq!(worker.run_once(at(t)).await.unwrap().claimed, 0, "{name}");

        // The day-before reminder comes due; the moved booking's does not go.
        let report = worker.run_once(at(start - 86_400)).await.unwrap();
        assert_eq!((report.claimed, report.sent), (1, 1), "{name}: {report:?}");
        assert_eq!(row_state(&db, &day_before).await.0, "sent");
        assert_eq!(row_state(&db, &moved).await.0, "superseded");

        // The worker was down until after the meeting began: the hour-before
        // reminder is dropped rather than sent late.
        let report = worker.run_once(at(start + 60)).await.unwrap();
        assert_eq!(
            (report.claimed, report.superseded, report.sent),
            (1, 1, 0),
            "{name}: {report:?}"
        );
        assert_eq!(row_state(&db, &hour_before).await.0, "superseded");

        assert_eq!(worker.run_once(at(start + 120)).await.unwrap().claimed, 0);
        let sent: Vec<String> = mailbox::list(dir.path())
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(sent, [day_before], "{name}: exactly one reminder mail");
    })
    .await;
}

#[tokio::test]
async fn concurrent_workers_never_claim_the_same_row() {
    each_database(|db, name| async move {
        let dir = tempfile::tempdir().unwrap();
        let t = now();
        let mut ids = Vec::new();
        for i in 0..60 {
            ids.push(
                put(
                    &db,
                    &format!("p{i}@example.se"),
                    Language::Sv,
                    &Message::NoteShared,
                    t,
                )
                .await,
            );
        }
        let mut settings = file_settings(dir.path());
        settings.batch_size = 7;
        let workers: Vec<Worker> = (0..4)
            .map(|_| Worker::new(db.clone(), settings.clone()).unwrap())
            .collect();
        let claimed = futures::future::join_all(workers.iter().map(|worker| async move {
            let mut claimed = 0;
            loop {
                let report = worker.run_once(at(t)).await.unwrap();
                assert_eq!(report.sent, report.claimed);
                if report.claimed == 0 {
                    return claimed;
                }
                claimed += report.claimed;
            }
        }))
        .await;
        assert_eq!(
            claimed.iter().sum::<usize>(),
            60,
            "{name}: claims {claimed:?}"
        );
        assert_eq!(count_status(&db, "sent").await, 60, "{name}");
        let attempts: Vec<i64> = sqlx::query_scalar("SELECT attempts FROM outbox")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert!(
            attempts.iter().all(|&a| a == 1),
            "{name}: a row was claimed twice: {attempts:?}"
        );
        assert_eq!(mailbox::list(dir.path()).unwrap().len(), 60);
    })
    .await;
}

#[tokio::test]
async fn unreachable_server_backs_off_then_parks_and_an_admin_can_retry() {
    each_database(|db, name| async move {
        // A port that was just free has no listener: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut settings = Settings::new("https://kontakt.example.se");
        settings.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
        settings.max_attempts = 3;
        settings.retry_base_secs = 60;
        settings.smtp_timeout_secs = 5;
        let worker = Worker::new(db.clone(), settings.clone()).unwrap();
        let t = now();
        let id = put(&db, "x@example.se", Language::Fi, &Message::NoteShared, t).await;

        let report = worker.run_once(at(t)).await.unwrap();
        assert_eq!(report.retrying, 1, "{name}: {report:?}");
        let (status, attempts, error) = row_state(&db, &id).await;
        assert_eq!((status.as_str(), attempts), ("pending", 1));
        assert!(error.unwrap().to_lowercase().contains("refused"), "{name}");
        // The first backoff is 30 to 60 s: not due at once, due after 60 s.
        assert_eq!(worker.run_once(at(t + 1)).await.unwrap().claimed, 0);
        assert_eq!(worker.run_once(at(t + 60)).await.unwrap().retrying, 1);
        // The second waits 60 to 120 s; the third try is the last.
        assert_eq!(worker.run_once(at(t + 61)).await.unwrap().claimed, 0);
        let report = worker.run_once(at(t + 180)).await.unwrap();
        assert_eq!(report.failed, 1, "{name}: {report:?}");
        assert_eq!(
            worker.run_once(at(t + 100_000)).await.unwrap().claimed,
            0,
            "parked rows stay parked"
        );

        let failed = delivery::list_failed(&db, 50).await.unwrap();
        assert_eq!(failed.len(), 1, "{name}");
        assert_eq!(
            (failed[0].id.as_str(), failed[0].attempts),
            (id.as_str(), 3)
        );
        assert_eq!(failed[0].recipient, "x@example.se");
        assert!(failed[0]
            .last_error
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("refused"));

        // Once the mail server is fixed, an admin sends it again.
        assert!(delivery::retry_failed(&db, &id, at(t + 200)).await.unwrap());
        assert!(
            !delivery::retry_failed(&db, &id, at(t + 200)).await.unwrap(),
            "only failed rows"
        );
        let dir = tempfile::tempdir().unwrap();
        let fixed = Worker::new(db.clone(), file_settings(dir.path())).unwrap();
        assert_eq!(fixed.run_once(at(t + 200)).await.unwrap().sent, 1, "{name}");
        assert!(delivery::list_failed(&db, 50).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_undecodable_row_is_parked_not_retried_forever() {
    each_database(|db: Db, name| async move {
        let t = now();
        sqlx::query(
            "INSERT INTO outbox (id, kind, recipient, language, payload, status, attempts, due_at, created_at) \
             VALUES ('bad', 'note_shared', 'x@example.se', 'sv', '{\"kind\":\"no_such_kind\"}', 'pending', 0, $1, $1)",
        )
        .bind(t)
        .execute(db.pool())
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::new(db.clone(), file_settings(dir.path())).unwrap();
        assert_eq!(worker.run_once(at(t)).await.unwrap().failed, 1, "{name}");
        let (status, _, error) = row_state(&db, "bad").await;
        assert_eq!(status, "failed");
        assert!(error.unwrap().contains("payload"));
    })
    .await;
}

#[tokio::test]
async fn run_stops_when_asked() {
    each_database(|db, name| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = file_settings(dir.path());
        settings.poll_interval_ms = 20;
        let worker = Worker::new(db.clone(), settings).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(async move {
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        // A row enqueued while the worker runs is picked up by its polling.
        let id = put(
            &db,
            "s@example.se",
            Language::Ar,
            &Message::NoteShared,
            now(),
        )
        .await;
        let path = dir.path().join(format!("{id}.eml"));
        eventually(
            "the polling worker to write the mail",
            Duration::from_secs(20),
            || {
                let exists = path.exists();
                async move { exists.then_some(()) }
            },
        )
        .await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), running)
            .await
            .unwrap_or_else(|_| panic!("{name}: the worker did not stop"))
            .unwrap();
    })
    .await;
}
