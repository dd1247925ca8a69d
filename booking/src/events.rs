//! Storage for the real-time hub: each room's sequenced history, the open
//! chat queue entries and the cluster's lease. The rows are `signaling`'s
//! own ([`EventRow`], [`QueueEntryRow`]); [`DbStore`] and [`DbLease`] give
//! the hub its store and lease traits over this SQL, so the rows are defined
//! once and the SQL lives here, once.

use async_trait::async_trait;
use signaling::bus::BusError;
use signaling::cluster::{Lease, LEASE_TTL};
use signaling::ids::PartyId;
use signaling::store::{append_one_by_one, Appended, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection, Row};

use crate::db::{built_sql, Backend, Db};
use crate::{Error, RoomId};

pub use signaling::store::{EventRow, QueueEntryRow};

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
        append_event(&self.db, &row).await.map_err(unavailable)?
    }

    async fn append_events(&self, rows: Vec<EventRow>) -> Vec<Result<Appended, StoreError>> {
        match append_events(&self.db, &rows).await {
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
        // A text that is no room id names no room, and so no events.
        let Ok(room) = RoomId::parse(room) else {
            return Ok(Vec::new());
        };
        events_after(&self.db, &room, after_seq)
            .await
            .map_err(unavailable)
    }

    async fn save_queue_entry(&self, row: QueueEntryRow) -> Result<(), StoreError> {
        save_queue_entry(&self.db, &row).await.map_err(unavailable)
    }

    async fn open_queue_entries(&self) -> Result<Vec<QueueEntryRow>, StoreError> {
        open_queue_entries(&self.db).await.map_err(unavailable)
    }
}

/// Which node owns a cluster's rooms and queue, as a row in the database
/// all nodes share ([`hold_lease`]).
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
        hold_lease(&self.db, &self.name, node, now_ms, now_ms + ttl_ms)
            .await
            .map_err(|e| BusError::Failed(e.to_string()))
    }

    async fn release(&self, node: &str) -> Result<(), BusError> {
        release_lease(&self.db, &self.name, node)
            .await
            .map_err(|e| BusError::Failed(e.to_string()))
    }
}

/// The hub only needs to know that the write did not happen; the cause is
/// logged here, once, with its full chain.
fn unavailable(err: Error) -> StoreError {
    tracing::error!(error = ?err, "signaling storage failed");
    StoreError::Unavailable(err.to_string())
}

/// Stores one event, unless the same chat message is already stored
/// ([`Appended::Duplicate`]); [`StoreError::SeqTaken`] when another row holds
/// its `(room, seq)`. The primary key and the unique index decide, so two
/// writers racing on one room cannot both store a seq or both store a
/// message. The outer error is the database's.
pub async fn append_event(db: &Db, row: &EventRow) -> Result<Result<Appended, StoreError>, Error> {
    if let Some(seq) = existing_message(db, row).await? {
        return Ok(Ok(Appended::Duplicate { seq }));
    }
    let inserted = {
        let _turn = db.write_turn().await;
        sqlx::query(
            "INSERT INTO signaling_events (room, seq, audience, kind, sender, client_id, body, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&row.room)
        .bind(row.seq)
        .bind(row.audience.as_deref())
        .bind(&row.kind)
        .bind(row.sender.as_deref())
        .bind(row.client_id.as_deref())
        .bind(&row.body)
        .bind(row.at)
        .execute(db.pool())
        .await
    };
    match inserted {
        Ok(_) => Ok(Ok(Appended::Stored)),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            // Either the seq or the client id collided; a message stored by
            // a racing writer meanwhile counts as the same message.
            match existing_message(db, row).await? {
                Some(seq) => Ok(Ok(Appended::Duplicate { seq })),
                None => Ok(Err(StoreError::SeqTaken {
                    room: row.room.clone(),
                    seq: row.seq,
                })),
            }
        }
        Err(e) => Err(Error::Db(e)),
    }
}

/// The most rows per `INSERT` in [`append_events`]: 8 parameters each, well
/// under SQLite's limit of 32,766 parameters per statement.
const ROWS_PER_INSERT: usize = 256;

/// How many of `left` rows the next `INSERT` takes: the largest power of two
/// that fits, at most [`ROWS_PER_INSERT`]. Batches of any size thus use a
/// handful of statement texts, which stay prepared in the connection's
/// cache instead of each new size being parsed and planned again.
fn next_chunk(left: usize) -> usize {
    if left >= ROWS_PER_INSERT {
        ROWS_PER_INSERT
    } else {
        1 << left.ilog2()
    }
}

/// The `INSERT` of `rows` events. SQLite gets anonymous `?` placeholders:
/// it looks up a numbered one by scanning the list of all of them, which
/// made binding a 500-row insert's 4,000 arguments take longer than storing
/// them.
fn insert_sql(backend: Backend, rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO signaling_events (room, seq, audience, kind, sender, client_id, body, at) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        match backend {
            Backend::Sqlite => sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)"),
            Backend::Postgres => {
                let p = i * 8;
                let numbered: Vec<String> = (p + 1..=p + 8).map(|n| format!("${n}")).collect();
                sql.push('(');
                sql.push_str(&numbered.join(", "));
                sql.push(')');
            }
        }
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// Stores `rows` together in one transaction, if none of them collides with
/// a stored row; returns whether it did. On `false` nothing was stored, and
/// the caller learns which row collided by storing them one by one with
/// [`append_event`]. One transaction for many events is what lets the hub
/// store a busy second's chat in a handful of writes.
pub async fn append_events(db: &Db, rows: &[EventRow]) -> Result<bool, Error> {
    if rows.is_empty() {
        return Ok(true);
    }
    let mut turn = db.write_turn().await;
    match turn.as_mut() {
        Some(turn) => {
            let conn = db.turn_connection(turn).await?;
            let stored = insert_events(db.backend(), conn, rows).await;
            if stored.is_err() {
                turn.take();
            }
            stored
        }
        None => insert_events(db.backend(), &mut *db.pool().acquire().await?, rows).await,
    }
}

/// [`append_events`] on `conn`.
async fn insert_events(
    backend: Backend,
    conn: &mut AnyConnection,
    rows: &[EventRow],
) -> Result<bool, Error> {
    let mut tx = conn.begin().await?;
    let mut rest = rows;
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(next_chunk(rest.len()));
        rest = after;
        let sql = insert_sql(backend, chunk.len());
        let mut query = sqlx::query(built_sql(sql));
        for row in chunk {
            query = query
                .bind(&row.room)
                .bind(row.seq)
                .bind(row.audience.as_deref())
                .bind(&row.kind)
                .bind(row.sender.as_deref())
                .bind(row.client_id.as_deref())
                .bind(&row.body)
                .bind(row.at);
        }
        let inserted = query.execute(&mut *tx).await?.rows_affected();
        if inserted != chunk.len() as u64 {
            tx.rollback().await?;
            return Ok(false);
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// Takes the lease `name` for `holder` until `expires_at_ms` if nobody holds
/// it or its holder let it expire before `now_ms`, or renews it if `holder`
/// holds it; returns who holds it afterwards. One upsert decides, so two
/// nodes racing cannot both take it.
pub async fn hold_lease(
    db: &Db,
    name: &str,
    holder: &str,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<Option<String>, Error> {
    {
        let _turn = db.write_turn().await;
        sqlx::query(
            "INSERT INTO signaling_leases (name, holder, expires_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE signaling_leases.holder = excluded.holder OR signaling_leases.expires_at_ms < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at_ms)
        .bind(now_ms)
        .execute(db.pool())
        .await?;
    }
    let row = sqlx::query("SELECT holder FROM signaling_leases WHERE name = $1")
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get("holder")?),
        None => None,
    })
}

/// Gives the lease `name` up if `holder` holds it.
pub async fn release_lease(db: &Db, name: &str, holder: &str) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    sqlx::query("DELETE FROM signaling_leases WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// The events of `room` after `after_seq`, in seq order.
pub async fn events_after(db: &Db, room: &RoomId, after_seq: i64) -> Result<Vec<EventRow>, Error> {
    let rows = sqlx::query(
        "SELECT room, seq, audience, kind, sender, client_id, body, at FROM signaling_events \
         WHERE room = $1 AND seq > $2 ORDER BY seq",
    )
    .bind(room.as_str())
    .bind(after_seq)
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// Inserts the entry, or replaces the one with the same room.
pub async fn save_queue_entry(db: &Db, row: &QueueEntryRow) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    sqlx::query(
        "INSERT INTO signaling_queue_entries \
         (room, ticket, service, home_municipality, resident, anonymous, eligible_municipalities, state, staff, enqueued_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (room) DO UPDATE SET ticket = excluded.ticket, service = excluded.service, \
         home_municipality = excluded.home_municipality, resident = excluded.resident, \
         anonymous = excluded.anonymous, eligible_municipalities = excluded.eligible_municipalities, \
         state = excluded.state, staff = excluded.staff, enqueued_at = excluded.enqueued_at",
    )
    .bind(&row.room)
    .bind(row.ticket)
    .bind(&row.service)
    .bind(&row.home_municipality)
    .bind(&row.resident)
    .bind(i64::from(row.anonymous))
    .bind(&row.eligible_municipalities)
    .bind(&row.state)
    .bind(row.staff.as_deref())
    .bind(row.enqueued_at)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Every entry that is not closed, in ticket order.
pub async fn open_queue_entries(db: &Db) -> Result<Vec<QueueEntryRow>, Error> {
    let rows = sqlx::query(built_sql(format!(
        "SELECT {QUEUE_ENTRY_COLUMNS} FROM signaling_queue_entries \
         WHERE state <> 'closed' ORDER BY ticket"
    )))
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(queue_entry_from_row).collect()
}

/// The chat conversations a signed-in resident opened, newest first, whatever
/// their state. `resident` is the hub's party id, `resident:<id>`. Anonymous
/// conversations are left out: nothing ties them to the person asking.
pub async fn resident_conversations(
    db: &Db,
    resident: &PartyId,
) -> Result<Vec<QueueEntryRow>, Error> {
    let rows = sqlx::query(built_sql(format!(
        "SELECT {QUEUE_ENTRY_COLUMNS} FROM signaling_queue_entries \
         WHERE resident = $1 AND anonymous = 0 ORDER BY enqueued_at DESC, ticket DESC"
    )))
    .bind(resident.as_str())
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(queue_entry_from_row).collect()
}

/// The queue entry of the conversation in `room`, whatever its state.
pub async fn queue_entry(db: &Db, room: &RoomId) -> Result<Option<QueueEntryRow>, Error> {
    let row = sqlx::query(built_sql(format!(
        "SELECT {QUEUE_ENTRY_COLUMNS} FROM signaling_queue_entries WHERE room = $1"
    )))
    .bind(room.as_str())
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(queue_entry_from_row).transpose()
}

const QUEUE_ENTRY_COLUMNS: &str = "room, ticket, service, home_municipality, resident, anonymous, \
     eligible_municipalities, state, staff, enqueued_at";

fn queue_entry_from_row(r: &AnyRow) -> Result<QueueEntryRow, Error> {
    Ok(QueueEntryRow {
        room: r.try_get("room")?,
        ticket: r.try_get("ticket")?,
        service: r.try_get("service")?,
        home_municipality: r.try_get("home_municipality")?,
        resident: r.try_get("resident")?,
        anonymous: r.try_get::<i64, _>("anonymous")? != 0,
        eligible_municipalities: r.try_get("eligible_municipalities")?,
        state: r.try_get("state")?,
        staff: r.try_get("staff")?,
        enqueued_at: r.try_get("enqueued_at")?,
    })
}

/// The seq of the chat message `row` repeats, if it is one and is stored.
async fn existing_message(db: &Db, row: &EventRow) -> Result<Option<i64>, Error> {
    let (Some(sender), Some(client_id)) = (&row.sender, &row.client_id) else {
        return Ok(None);
    };
    let seq = sqlx::query(
        "SELECT seq FROM signaling_events WHERE room = $1 AND sender = $2 AND client_id = $3",
    )
    .bind(&row.room)
    .bind(sender)
    .bind(client_id)
    .fetch_optional(db.pool())
    .await?
    .map(|r| r.try_get::<i64, _>("seq"))
    .transpose()?;
    Ok(seq)
}

fn event_from_row(r: &AnyRow) -> Result<EventRow, Error> {
    Ok(EventRow {
        room: r.try_get("room")?,
        seq: r.try_get("seq")?,
        audience: r.try_get("audience")?,
        kind: r.try_get("kind")?,
        sender: r.try_get("sender")?,
        client_id: r.try_get("client_id")?,
        body: r.try_get("body")?,
        at: r.try_get("at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).unwrap()
    }

    #[test]
    fn any_batch_is_cut_into_a_few_statement_sizes() {
        let mut sizes = std::collections::BTreeSet::new();
        for total in 1..=2_000 {
            let (mut left, mut chunks) = (total, 0);
            while left > 0 {
                let chunk = next_chunk(left);
                assert!(chunk.is_power_of_two() && chunk <= ROWS_PER_INSERT);
                sizes.insert(chunk);
                left -= chunk;
                chunks += 1;
            }
            assert!(
                chunks <= total / ROWS_PER_INSERT + 8,
                "{total} took {chunks}"
            );
        }
        assert_eq!(sizes.len(), 9, "1, 2, 4, ..., 256: {sizes:?}");
    }

    fn chat(seq: i64, client_id: &str) -> EventRow {
        EventRow {
            room: "chat:1".into(),
            seq,
            audience: None,
            kind: "chat".into(),
            sender: Some("resident:r1".into()),
            client_id: Some(client_id.into()),
            body: "{}".into(),
            at: 5,
        }
    }

    #[tokio::test]
    async fn events_dedup_by_client_id_and_refuse_a_taken_seq() {
        for test in crate::testing::databases().await {
            let db = &test.db;
            assert_eq!(
                append_event(db, &chat(1, "a")).await.unwrap(),
                Ok(Appended::Stored)
            );
            let mut joined = chat(2, "x");
            joined.sender = None;
            joined.client_id = None;
            joined.kind = "participant_joined".into();
            assert_eq!(
                append_event(db, &joined).await.unwrap(),
                Ok(Appended::Stored)
            );
            assert_eq!(
                append_event(db, &chat(3, "a")).await.unwrap(),
                Ok(Appended::Duplicate { seq: 1 })
            );
            assert!(matches!(
                append_event(db, &chat(2, "b")).await.unwrap(),
                Err(StoreError::SeqTaken { seq: 2, .. })
            ));
            let after: Vec<EventRow> = events_after(db, &room("chat:1"), 1).await.unwrap();
            assert_eq!(after, vec![joined]);
        }
    }

    #[tokio::test]
    async fn a_batch_is_stored_whole_or_not_at_all() {
        for test in crate::testing::databases().await {
            let db = &test.db;
            // More rows than one INSERT takes, so the batch spans statements.
            let rows: Vec<EventRow> = (1..=ROWS_PER_INSERT as i64 + 20)
                .map(|seq| chat(seq, &format!("c{seq}")))
                .collect();
            assert!(append_events(db, &rows).await.unwrap());
            assert_eq!(events_after(db, &room("chat:1"), 0).await.unwrap(), rows);
            let next = rows.len() as i64 + 1;
            // A duplicate client id in the second statement's rows undoes
            // the first statement's too.
            let mut colliding: Vec<EventRow> = (next..next + ROWS_PER_INSERT as i64 + 5)
                .map(|seq| chat(seq, &format!("c{seq}")))
                .collect();
            colliding.last_mut().unwrap().client_id = Some("c1".into());
            assert!(!append_events(db, &colliding).await.unwrap());
            assert_eq!(
                events_after(db, &room("chat:1"), 0).await.unwrap().len(),
                rows.len()
            );
            assert!(append_events(db, &[]).await.unwrap());
        }
    }

    #[tokio::test]
    async fn queue_entries_are_replaced_and_closed_ones_left_out() {
        for test in crate::testing::databases().await {
            let db = &test.db;
            let mut entry = QueueEntryRow {
                room: "chat:1".into(),
                ticket: 2,
                service: "stod".into(),
                home_municipality: "0180".into(),
                resident: "anonymous:chat:1".into(),
                anonymous: true,
                eligible_municipalities: "0180,0181".into(),
                state: "waiting".into(),
                staff: None,
                enqueued_at: 9,
            };
            save_queue_entry(db, &entry).await.unwrap();
            entry.state = "assigned".into();
            entry.staff = Some("s1".into());
            save_queue_entry(db, &entry).await.unwrap();
            assert_eq!(open_queue_entries(db).await.unwrap(), vec![entry.clone()]);
            entry.state = "closed".into();
            save_queue_entry(db, &entry).await.unwrap();
            assert!(open_queue_entries(db).await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn a_residents_conversations_are_theirs_newest_first_and_never_anonymous_ones() {
        for test in crate::testing::databases().await {
            let db = &test.db;
            let entry =
                |room: &str, resident: &str, anonymous: bool, enqueued_at: i64| QueueEntryRow {
                    room: room.into(),
                    ticket: enqueued_at,
                    service: "stod".into(),
                    home_municipality: "0180".into(),
                    resident: resident.into(),
                    anonymous,
                    eligible_municipalities: "0180".into(),
                    state: "closed".into(),
                    staff: None,
                    enqueued_at,
                };
            let older = entry("chat:1", "resident:r1", false, 10);
            let newer = entry("chat:2", "resident:r1", false, 20);
            for row in [
                &older,
                &newer,
                &entry("chat:3", "resident:r2", false, 30),
                // Someone who chatted anonymously is not found by who they are.
                &entry("chat:4", "resident:r1", true, 40),
            ] {
                save_queue_entry(db, row).await.unwrap();
            }
            assert_eq!(
                resident_conversations(db, &PartyId::parse("resident:r1").unwrap())
                    .await
                    .unwrap(),
                vec![newer, older.clone()]
            );
            assert_eq!(queue_entry(db, &room("chat:1")).await.unwrap(), Some(older));
            assert_eq!(queue_entry(db, &room("chat:9")).await.unwrap(), None);
        }
    }
}
