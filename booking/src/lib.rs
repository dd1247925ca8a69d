//! Municipalities, services, the legal policy, agreements, staff, residents,
//! availability, slots, bookings, eligibility and load balancing, and the
//! audit log, persisted with sqlx on SQLite or PostgreSQL.
//!
//! This crate knows nothing about HTTP, WebSockets or email: it records what
//! somebody should be told in the [`outbox`], and `notify` delivers it.

pub mod db;
pub mod domain;
pub mod outbox;

pub use db::{Backend, Db, DbError};
pub use domain::{
    BookingStatus, EmailAddress, InvalidValue, Language, MunicipalityCode, Password, Role, Rule,
    ServiceCode, SlotRange, Step,
};
