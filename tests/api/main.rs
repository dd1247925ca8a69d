//! System tests of the `kontakt` server over HTTP. Every test boots the real
//! server on port 0 with a fresh database, on SQLite and, when `DATABASE_URL`
//! is set, on PostgreSQL.

mod assets;
mod auth;
mod bad_input;
mod bookings;
mod chat;
mod concurrency;
mod defaults;
mod guests;
mod health;
mod mail;
mod manage;
mod meeting_access;
mod names;
mod nodes;
mod policy;
mod precheck;
mod relay;
mod security;
mod sessions;
mod ws;
