//! A resident's reads of their own chat conversations, on both databases:
//! only their own, each read audit-logged, and nothing returned when the
//! audit entry cannot be written.

use booking::accounts::{self, Resident};
use booking::audit;
use booking::chats::{conversation_of, conversations_of};
use booking::events::{self, EventRow, QueueEntryRow};
use booking::testing::databases;
use booking::{bookings, seed, Db, EmailAddress, Error, RoomId};
use jiff::Timestamp;

fn room(id: &str) -> RoomId {
    RoomId::parse(id).unwrap()
}

/// A resident of the demo (anna@ and erik@ live in Malå, 2418).
async fn resident(db: &Db, email: &str) -> Resident {
    accounts::resident_by_email(db, &EmailAddress::parse(email).unwrap())
        .await
        .unwrap()
        .expect("a demo resident")
}

/// A fresh database with the demo in it.
async fn seeded(db: &Db) {
    let today = Timestamp::now()
        .to_zoned(bookings::zone(bookings::DISPLAY_ZONE).unwrap())
        .date();
    seed::demo(db, today, Timestamp::now().as_second())
        .await
        .unwrap();
}

async fn conversation(db: &Db, room: &str, resident: &Resident, anonymous: bool) {
    events::save_queue_entry(
        db,
        &QueueEntryRow {
            room: room.into(),
            ticket: 1,
            service: "ekonomiskt-bistand".into(),
            home_municipality: "2418".into(),
            resident: resident.party().to_string(),
            anonymous,
            eligible_municipalities: "2418".into(),
            state: "closed".into(),
            staff: None,
            enqueued_at: 10,
        },
    )
    .await
    .unwrap();
    events::append_event(
        db,
        &EventRow {
            room: room.into(),
            seq: 1,
            audience: None,
            kind: "chat".into(),
            sender: Some(resident.party().to_string()),
            client_id: Some("c1".into()),
            body: serde_json::json!({
                "kind": "chat",
                "from": resident.party().to_string(),
                "role": "resident",
                "client_id": "c1",
                "text": "Hej",
                "sent_at": 10,
            })
            .to_string(),
            at: 10,
        },
    )
    .await
    .unwrap()
    .unwrap();
}

fn count(records: &[audit::Record], actor: &Resident, action: &str, outcome: &str) -> usize {
    let actor = format!("resident:{}", actor.id);
    records
        .iter()
        .filter(|r| r.actor == actor && r.action == action && r.outcome == outcome)
        .count()
}

#[tokio::test]
async fn a_resident_reads_their_own_conversations_and_another_residents_is_not_found() {
    for test in databases().await {
        let db = &test.db;
        seeded(db).await;
        let now = Timestamp::now();
        let anna = resident(db, "anna@example.se").await;
        let erik = resident(db, "erik@example.se").await;
        conversation(db, "chat:a", &anna, false).await;
        conversation(db, "chat:anon", &anna, true).await;

        let mine = conversations_of(db, &anna, now).await.unwrap();
        assert_eq!(
            mine.iter().map(|c| c.room.as_str()).collect::<Vec<_>>(),
            ["chat:a"]
        );
        let read = conversation_of(db, &anna, &room("chat:a"), now)
            .await
            .unwrap();
        assert_eq!(read.events.len(), 1);
        for other in ["chat:anon", "chat:missing"] {
            assert!(matches!(
                conversation_of(db, &anna, &room(other), now).await,
                Err(Error::NotFound)
            ));
        }
        assert!(conversations_of(db, &erik, now).await.unwrap().is_empty());
        assert!(matches!(
            conversation_of(db, &erik, &room("chat:a"), now).await,
            Err(Error::NotFound)
        ));

        let records = audit::recent(db, Some(&anna.id), 100).await.unwrap();
        assert_eq!(count(&records, &anna, "chat.list", "allowed"), 1);
        assert_eq!(count(&records, &anna, "chat.read", "allowed"), 1);
        assert_eq!(count(&records, &erik, "chat.read", "denied"), 1);
    }
}

#[tokio::test]
async fn a_read_whose_audit_entry_cannot_be_written_returns_nothing() {
    for test in databases().await {
        let db = &test.db;
        seeded(db).await;
        let now = Timestamp::now();
        let anna = resident(db, "anna@example.se").await;
        conversation(db, "chat:a", &anna, false).await;
        sqlx::query("DROP TABLE audit_log")
            .execute(db.pool())
            .await
            .unwrap();
        assert!(matches!(
            conversations_of(db, &anna, now).await,
            Err(Error::Db(_))
        ));
        assert!(matches!(
            conversation_of(db, &anna, &room("chat:a"), now).await,
            Err(Error::Db(_))
        ));
    }
}
