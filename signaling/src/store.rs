//! What must survive a restart: each room's sequenced history (which also
//! deduplicates chat messages) and the open queue entries.
//!
//! The trait speaks in flat rows of strings, integers and booleans so that a
//! SQL implementation is a handful of plain statements. `MemoryStore` is the
//! implementation for tests and for a single process without a database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::ids::{MunicipalityCode, PartyId, RoomId, ServiceId, StaffId};

/// Storage for the hub. Implementations must make `append_event` atomic: two
/// rows with the same `(room, seq)`, or the same `(room, sender, client_id)`
/// when `client_id` is set, must never both be stored.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores one event. If a chat message with the same room, sender and
    /// client id is already stored, stores nothing and returns its seq.
    async fn append_event(&self, row: EventRow) -> Result<Appended, StoreError>;

    /// Stores a batch of events in order and returns one outcome per row.
    /// Once a room's row fails, the room's later rows in the batch are not
    /// stored ([`StoreError::AfterFailure`]), so its history never has a
    /// gap. A database does this in one transaction; by default the rows go
    /// one by one through [`Store::append_event`].
    async fn append_events(&self, rows: Vec<EventRow>) -> Vec<Result<Appended, StoreError>> {
        append_one_by_one(self, rows).await
    }

    /// The events of `room` with `seq > after_seq`, in seq order.
    async fn events_after(&self, room: &str, after_seq: i64) -> Result<Vec<EventRow>, StoreError>;

    /// Inserts or replaces the entry with `row.room`.
    async fn save_queue_entry(&self, row: QueueEntryRow) -> Result<(), StoreError>;

    /// Every entry whose state is not `closed`, in ticket order.
    async fn open_queue_entries(&self) -> Result<Vec<QueueEntryRow>, StoreError>;
}

/// The outcome of [`Store::append_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// The chat message was stored before under this seq.
    Duplicate {
        seq: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Another row already has this `(room, seq)`: another writer raced us.
    #[error("seq {seq} of room {room} is already taken")]
    SeqTaken { room: String, seq: i64 },
    /// An earlier event of the room in the same batch was not stored.
    #[error("seq {seq} of room {room} follows an event that was not stored")]
    AfterFailure { room: String, seq: i64 },
}

/// Stores `rows` one by one with [`Store::append_event`], skipping a room's
/// rows after its first that was not stored: what
/// [`Store::append_events`] does by default, and what a faster
/// implementation falls back to when a row of its batch collides.
pub async fn append_one_by_one<S: Store + ?Sized>(
    store: &S,
    rows: Vec<EventRow>,
) -> Vec<Result<Appended, StoreError>> {
    let mut failed: Vec<String> = Vec::new();
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        if failed.contains(&row.room) {
            outcomes.push(Err(StoreError::AfterFailure {
                room: row.room,
                seq: row.seq,
            }));
            continue;
        }
        let room = row.room.clone();
        let outcome = store.append_event(row).await;
        if !matches!(outcome, Ok(Appended::Stored)) {
            failed.push(room);
        }
        outcomes.push(outcome);
    }
    outcomes
}

/// One row of the `signaling_events` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub room: String,
    pub seq: i64,
    /// A JSON array of party ids, or `None` for "whoever may read the room".
    pub audience: Option<String>,
    /// The event's `kind`, such as `chat`, for queries and retention.
    pub kind: String,
    /// The chat sender; set with `client_id` for chat and offered times.
    pub sender: Option<String>,
    pub client_id: Option<String>,
    /// The event as JSON (a `RoomEvent`).
    pub body: String,
    /// Unix seconds, UTC.
    pub at: i64,
}

/// A queue entry as it is stored, so that the queue survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntryRecord {
    pub room: RoomId,
    /// The entry's place in the queue; lower is earlier. It never changes,
    /// which is what lets a returned chat go back to its original place.
    pub ticket: i64,
    pub service: ServiceId,
    pub home_municipality: MunicipalityCode,
    pub resident: PartyId,
    pub anonymous: bool,
    pub eligible_municipalities: BTreeSet<MunicipalityCode>,
    pub state: EntryState,
    /// Unix seconds, UTC.
    pub enqueued_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    Waiting,
    Assigned(StaffId),
    Closed,
}

impl EntryState {
    /// The text stored in the `state` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntryState::Waiting => "waiting",
            EntryState::Assigned(_) => "assigned",
            EntryState::Closed => "closed",
        }
    }
}

/// One row of the `signaling_queue_entries` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntryRow {
    pub room: String,
    pub ticket: i64,
    pub service: String,
    pub home_municipality: String,
    pub resident: String,
    pub anonymous: bool,
    /// Eligible municipality codes, comma-separated.
    pub eligible_municipalities: String,
    /// `waiting`, `assigned` or `closed`.
    pub state: String,
    pub staff: Option<String>,
    /// Unix seconds, UTC.
    pub enqueued_at: i64,
}

impl QueueEntryRow {
    pub fn from_record(record: &QueueEntryRecord) -> Self {
        QueueEntryRow {
            room: record.room.as_str().to_owned(),
            ticket: record.ticket,
            service: record.service.as_str().to_owned(),
            home_municipality: record.home_municipality.as_str().to_owned(),
            resident: record.resident.as_str().to_owned(),
            anonymous: record.anonymous,
            eligible_municipalities: record
                .eligible_municipalities
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(","),
            state: record.state.as_str().to_owned(),
            staff: match &record.state {
                EntryState::Assigned(staff) => Some(staff.as_str().to_owned()),
                _ => None,
            },
            enqueued_at: record.enqueued_at,
        }
    }

    pub fn to_record(&self) -> Result<QueueEntryRecord, StoreError> {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("queue entry {}: {what}", self.room));
        let state = match (self.state.as_str(), &self.staff) {
            ("waiting", _) => EntryState::Waiting,
            ("assigned", Some(staff)) => {
                EntryState::Assigned(StaffId::parse(staff).map_err(|_| corrupt("staff"))?)
            }
            ("closed", _) => EntryState::Closed,
            _ => return Err(corrupt("state")),
        };
        Ok(QueueEntryRecord {
            room: RoomId::parse(&self.room).map_err(|_| corrupt("room"))?,
            ticket: self.ticket,
            service: ServiceId::parse(&self.service).map_err(|_| corrupt("service"))?,
            home_municipality: MunicipalityCode::parse(&self.home_municipality)
                .map_err(|_| corrupt("home_municipality"))?,
            resident: PartyId::parse(&self.resident).map_err(|_| corrupt("resident"))?,
            anonymous: self.anonymous,
            eligible_municipalities: self
                .eligible_municipalities
                .split(',')
                .filter(|s| !s.is_empty())
                .map(MunicipalityCode::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| corrupt("eligible_municipalities"))?,
            state,
            enqueued_at: self.enqueued_at,
        })
    }
}

/// A store in memory. It can be told to fail, to test what the hub does
/// when the database is down.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    events: BTreeMap<(String, i64), EventRow>,
    entries: BTreeMap<String, QueueEntryRow>,
    failing: bool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call fail (or work again).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock leaves plain data behind, which is
        // still consistent because every change is a single insert.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryInner {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing {
            Err(StoreError::Unavailable(
                "the memory store was told to fail".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append_event(&self, row: EventRow) -> Result<Appended, StoreError> {
        let mut inner = self.lock();
        inner.check()?;
        if let (Some(sender), Some(client_id)) = (&row.sender, &row.client_id) {
            let existing = inner.events.values().find(|e| {
                e.room == row.room
                    && e.sender.as_ref() == Some(sender)
                    && e.client_id.as_ref() == Some(client_id)
            });
            if let Some(existing) = existing {
                return Ok(Appended::Duplicate { seq: existing.seq });
            }
        }
        let key = (row.room.clone(), row.seq);
        if inner.events.contains_key(&key) {
            return Err(StoreError::SeqTaken {
                room: row.room,
                seq: row.seq,
            });
        }
        inner.events.insert(key, row);
        Ok(Appended::Stored)
    }

    async fn events_after(&self, room: &str, after_seq: i64) -> Result<Vec<EventRow>, StoreError> {
        let inner = self.lock();
        inner.check()?;
        Ok(inner
            .events
            .range((room.to_owned(), after_seq.saturating_add(1))..=(room.to_owned(), i64::MAX))
            .map(|(_, row)| row.clone())
            .collect())
    }

    async fn save_queue_entry(&self, row: QueueEntryRow) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.check()?;
        inner.entries.insert(row.room.clone(), row);
        Ok(())
    }

    async fn open_queue_entries(&self) -> Result<Vec<QueueEntryRow>, StoreError> {
        let inner = self.lock();
        inner.check()?;
        let mut rows: Vec<QueueEntryRow> = inner
            .entries
            .values()
            .filter(|r| r.state != "closed")
            .cloned()
            .collect();
        rows.sort_by_key(|r| r.ticket);
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Audience, StoredEvent};
    use crate::protocol::RoomEvent;

    fn chat_row(seq: i64, client_id: &str) -> EventRow {
        let event = StoredEvent {
            room: RoomId::parse("chat:1").unwrap(),
            seq: seq as u64,
            audience: Audience::Members,
            event: RoomEvent::Chat {
                from: PartyId::parse("resident:r1").unwrap(),
                role: crate::protocol::Role::Resident,
                client_id: client_id.parse().unwrap(),
                text: "Hej".into(),
                sent_at: 5,
            },
            at: 5,
        };
        let row = event.to_row();
        assert_eq!(StoredEvent::from_row(&row).unwrap(), event);
        row
    }

    #[tokio::test]
    async fn memory_store_dedups_and_orders() {
        let store = MemoryStore::new();
        assert_eq!(
            store.append_event(chat_row(1, "a")).await,
            Ok(Appended::Stored)
        );
        assert_eq!(
            store.append_event(chat_row(2, "b")).await,
            Ok(Appended::Stored)
        );
        assert_eq!(
            store.append_event(chat_row(3, "a")).await,
            Ok(Appended::Duplicate { seq: 1 })
        );
        assert!(matches!(
            store.append_event(chat_row(2, "c")).await,
            Err(StoreError::SeqTaken { .. })
        ));
        let seqs: Vec<i64> = store
            .events_after("chat:1", 1)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![2]);
        store.set_failing(true);
        assert!(store.events_after("chat:1", 0).await.is_err());
    }

    #[tokio::test]
    async fn a_batch_stops_a_room_at_its_first_failure_and_goes_on_with_others() {
        let store = MemoryStore::new();
        store.append_event(chat_row(1, "a")).await.unwrap();
        let mut other = chat_row(1, "x");
        other.room = "chat:2".into();
        let outcomes = store
            .append_events(vec![
                chat_row(2, "a"),
                chat_row(3, "b"),
                other,
                chat_row(4, "c"),
            ])
            .await;
        assert_eq!(outcomes[0], Ok(Appended::Duplicate { seq: 1 }));
        assert!(matches!(
            outcomes[1],
            Err(StoreError::AfterFailure { seq: 3, .. })
        ));
        assert_eq!(outcomes[2], Ok(Appended::Stored));
        assert!(matches!(
            outcomes[3],
            Err(StoreError::AfterFailure { seq: 4, .. })
        ));
        let seqs: Vec<i64> = store
            .events_after("chat:1", 0)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![1], "nothing after the duplicate is stored");
    }

    #[test]
    fn queue_rows_round_trip() {
        let record = QueueEntryRecord {
            room: RoomId::parse("chat:1").unwrap(),
            ticket: 4,
            service: ServiceId::parse("stod").unwrap(),
            home_municipality: MunicipalityCode::parse("0181").unwrap(),
            resident: PartyId::parse("anonymous:chat:1").unwrap(),
            anonymous: true,
            eligible_municipalities: ["0180", "0181"]
                .into_iter()
                .map(|m| MunicipalityCode::parse(m).unwrap())
                .collect(),
            state: EntryState::Assigned(StaffId::parse("a").unwrap()),
            enqueued_at: 99,
        };
        let row = QueueEntryRow::from_record(&record);
        assert_eq!(row.eligible_municipalities, "0180,0181");
        assert_eq!(row.to_record().unwrap(), record);
    }
}
