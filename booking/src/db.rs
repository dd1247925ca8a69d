//! The database as the domain uses it: the [`Pool`] below, and the caches
//! the domain keeps beside it in this process (the catalogue snapshot, the
//! batch writer's queue, the staff times being booked, and the size class of
//! `bookings`). It calls nothing in the domain: what fills the caches lives
//! with the domain, in `snapshot`, `batch` and `bookings`; what the
//! snapshot holds is in `records`, below this.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use sqlx::{AnyConnection, AnyPool};

use crate::StaffId;

pub(crate) use crate::pool::{built_sql, is_booking_conflict, PING_IDLE_AFTER};
pub use crate::pool::{Backend, DbError, Pool, WriteTurn};

/// The database: the pool and the domain's caches beside it.
#[derive(Debug, Clone)]
pub struct Db {
    base: Pool,
    cache: crate::records::Cache,
    batches: crate::statement::Batches,
    holds: Holds,
    /// How big `bookings` was at the last read around a time, as
    /// [`crate::bookings`] keeps it on PostgreSQL: the size class its
    /// prepared statement is named by, so that it is planned again when the
    /// table has doubled.
    bookings_scale: Arc<AtomicU32>,
}

/// Staff times this process is booking right now; see [`Db::hold`].
type Holds = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(StaffId, i64)>>>;

/// A staff member's start time held by one booking in flight until dropped.
#[derive(Debug)]
pub struct Hold {
    holds: Holds,
    key: (StaffId, i64),
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Db {
    /// Connects to `url`, creating a SQLite file (and its directory) if it is
    /// missing. `max_connections` bounds the pool.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        Ok(Db {
            base: Pool::connect(url, max_connections).await?,
            cache: Default::default(),
            batches: Default::default(),
            holds: Default::default(),
            bookings_scale: Default::default(),
        })
    }

    /// The pool, the dialect and the write turn, without the caches.
    pub fn base(&self) -> &Pool {
        &self.base
    }

    /// See [`Pool::write_turn`].
    pub async fn write_turn(&self) -> Option<WriteTurn<'_>> {
        self.base.write_turn().await
    }

    pub(crate) async fn sqlite_turn(&self) -> WriteTurn<'_> {
        self.base.sqlite_turn().await
    }

    /// See [`Pool::turn_connection`].
    pub(crate) async fn turn_connection<'t>(
        &self,
        turn: &'t mut WriteTurn<'_>,
    ) -> Result<&'t mut AnyConnection, sqlx::Error> {
        self.base.turn_connection(turn).await
    }

    /// See [`Pool::close`].
    pub async fn close(&self) {
        self.base.close().await
    }

    /// Holds `staff_id` at `starts_at` for a booking this process is about
    /// to write, or `None` if another booking in this process holds it.
    /// Requests racing for one time then pick different staff instead of
    /// colliding in the database, which stays the judge across processes.
    pub fn hold(&self, staff_id: &StaffId, starts_at: i64) -> Option<Hold> {
        let key = (staff_id.clone(), starts_at);
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.insert(key.clone()).then(|| Hold {
            holds: self.holds.clone(),
            key,
        })
    }

    /// Checks that the database answers, for health checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        self.base.ping().await
    }

    pub fn pool(&self) -> &AnyPool {
        self.base.pool()
    }

    pub fn backend(&self) -> Backend {
        self.base.backend()
    }

    pub(crate) fn batches(&self) -> &crate::statement::Batches {
        &self.batches
    }

    /// This database without its batch writer, for that writer's own use:
    /// it must not keep its own queue open.
    pub(crate) fn without_batches(&self) -> Db {
        Db {
            batches: Default::default(),
            ..self.clone()
        }
    }

    pub(crate) fn cache(&self) -> &crate::records::Cache {
        &self.cache
    }

    /// The catalog snapshot this process loaded last, without asking
    /// whether it is still current: for what may lag a change by a request,
    /// such as a municipality's name in an answer. `None` before the first
    /// load. `snapshot::current` is the read that is never stale.
    pub fn last_snapshot(&self) -> Option<std::sync::Arc<crate::records::Snapshot>> {
        self.cache.latest()
    }

    /// The size class of `bookings` that the last read around a time saw,
    /// on PostgreSQL; 0 before the first and on SQLite.
    pub(crate) fn bookings_scale(&self) -> u32 {
        self.bookings_scale.load(Ordering::Relaxed)
    }

    pub(crate) fn set_bookings_scale(&self, scale: u32) {
        self.bookings_scale.store(scale, Ordering::Relaxed);
    }
}

/// Records that the catalog changed, so that every process loads its
/// snapshot afresh; call it in the changing transaction.
pub(crate) async fn catalog_changed(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
        .execute(conn)
        .await
        .map(|_| ())
}
