//! Municipalities, services, the legal policy, agreements, staff, residents,
//! availability, slots, bookings, eligibility and load balancing, and the
//! audit log, persisted with sqlx on SQLite or PostgreSQL.
//!
//! This crate knows nothing about HTTP, WebSockets or email: it records what
//! somebody should be told in the [`outbox`], and `notify` delivers it.

pub mod accounts;
pub mod audit;
mod batch;
pub mod bookings;
pub mod catalog;
pub mod chats;
mod db;
mod domain;
mod error;
pub mod events;
mod ids;
pub mod load;
pub mod outbox;
mod passwords;
mod policy;
mod pool;
mod records;
pub mod seed;
pub mod sessions;
pub mod slots;
mod snapshot;
mod statement;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod throttle;
mod time;

pub use db::{Backend, Db, DbError, Hold, WriteTurn};
pub use domain::{
    Basis, BookingStatus, DateRange, EmailAddress, InvalidValue, Language, LocalDate, MessageText,
    MunicipalityCode, NewPassword, Password, PersonName, PhoneNumber, Role, Rule, ServiceCode,
    SlotRange, Step,
};
pub use error::Error;
pub use pool::Pool;
pub use signaling::ids::{BookingId, ResidentId, RoomId, StaffId};
