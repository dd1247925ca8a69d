//! The hub's [`Store`] over the database, through `booking::events`. This
//! module only converts rows: the SQL lives in `booking`.

use async_trait::async_trait;
use booking::events::{self, Appended as DbAppended};
use booking::Db;
use signaling::bus::BusError;
use signaling::cluster::{Lease, LEASE_TTL};
use signaling::store::{append_one_by_one, Appended, EventRow, QueueEntryRow, Store, StoreError};

/// The hub's storage in the application's database.
#[derive(Clone)]
pub struct DbStore {
    db: Db,
}

impl DbStore {
    pub fn new(db: Db) -> DbStore {
        DbStore { db }
    }
}

#[async_trait]
impl Store for DbStore {
    async fn append_event(&self, row: EventRow) -> Result<Appended, StoreError> {
        let (room, seq) = (row.room.clone(), row.seq);
        match events::append_event(&self.db, &event_to_db(row))
            .await
            .map_err(unavailable)?
        {
            DbAppended::Stored => Ok(Appended::Stored),
            DbAppended::Existing { seq } => Ok(Appended::Duplicate { seq }),
            DbAppended::SeqTaken => Err(StoreError::SeqTaken { room, seq }),
        }
    }

    async fn append_events(&self, rows: Vec<EventRow>) -> Vec<Result<Appended, StoreError>> {
        let db_rows: Vec<events::EventRow> = rows.iter().cloned().map(event_to_db).collect();
        match events::append_events(&self.db, &db_rows).await {
            Ok(true) => vec![Ok(Appended::Stored); rows.len()],
            // A row collided: find out which, one by one.
            Ok(false) => append_one_by_one(self, rows).await,
            Err(e) => {
                let error = unavailable(e);
                rows.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }

    async fn events_after(&self, room: &str, after_seq: i64) -> Result<Vec<EventRow>, StoreError> {
        let rows = events::events_after(&self.db, room, after_seq)
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().map(event_from_db).collect())
    }

    async fn save_queue_entry(&self, row: QueueEntryRow) -> Result<(), StoreError> {
        events::save_queue_entry(&self.db, &entry_to_db(row))
            .await
            .map_err(unavailable)
    }

    async fn open_queue_entries(&self) -> Result<Vec<QueueEntryRow>, StoreError> {
        let rows = events::open_queue_entries(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().map(entry_from_db).collect())
    }
}

/// Which node owns a cluster's rooms and queue, as a row in the database
/// all nodes share (`booking::events::hold_lease`).
pub struct DbLease {
    db: Db,
    name: String,
}

impl DbLease {
    pub fn new(db: Db, cluster: &str) -> DbLease {
        DbLease {
            db,
            name: format!("hub:{cluster}"),
        }
    }
}

#[async_trait]
impl Lease for DbLease {
    async fn hold(&self, node: &str) -> Result<Option<String>, BusError> {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let ttl_ms = i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX);
        events::hold_lease(&self.db, &self.name, node, now_ms, now_ms + ttl_ms)
            .await
            .map_err(|e| BusError::Failed(e.to_string()))
    }

    async fn release(&self, node: &str) -> Result<(), BusError> {
        events::release_lease(&self.db, &self.name, node)
            .await
            .map_err(|e| BusError::Failed(e.to_string()))
    }
}

/// The hub only needs to know that the write did not happen; the cause is
/// logged here, once, with its full chain.
fn unavailable(err: booking::Error) -> StoreError {
    tracing::error!(error = ?err, "signaling storage failed");
    StoreError::Unavailable(err.to_string())
}

fn event_to_db(row: EventRow) -> events::EventRow {
    events::EventRow {
        room: row.room,
        seq: row.seq,
        audience: row.audience,
        kind: row.kind,
        sender: row.sender,
        client_id: row.client_id,
        body: row.body,
        at: row.at,
    }
}

fn event_from_db(row: events::EventRow) -> EventRow {
    EventRow {
        room: row.room,
        seq: row.seq,
        audience: row.audience,
        kind: row.kind,
        sender: row.sender,
        client_id: row.client_id,
        body: row.body,
        at: row.at,
    }
}

fn entry_to_db(row: QueueEntryRow) -> events::QueueEntryRow {
    events::QueueEntryRow {
        room: row.room,
        ticket: row.ticket,
        service: row.service,
        home_municipality: row.home_municipality,
        resident: row.resident,
        anonymous: row.anonymous,
        eligible_municipalities: row.eligible_municipalities,
        state: row.state,
        staff: row.staff,
        enqueued_at: row.enqueued_at,
    }
}

fn entry_from_db(row: events::QueueEntryRow) -> QueueEntryRow {
    QueueEntryRow {
        room: row.room,
        ticket: row.ticket,
        service: row.service,
        home_municipality: row.home_municipality,
        resident: row.resident,
        anonymous: row.anonymous,
        eligible_municipalities: row.eligible_municipalities,
        state: row.state,
        staff: row.staff,
        enqueued_at: row.enqueued_at,
    }
}
