//! The `kontakt` binary's library: configuration, the axum router (JSON API,
//! pages, WebSocket upgrade), authentication, i18n and static assets. It
//! starts the relay and the background workers. It writes no SQL: storage goes
//! through `booking`.

pub mod api;
pub mod assets;
pub mod auth;
pub mod clock;
pub mod config;
pub mod dev_mail;
pub mod error;
pub mod i18n;
pub mod pages;
pub mod security_headers;
pub mod sessions;
pub mod startup;
pub mod state;
pub mod ws;

rust_i18n::i18n!("locales", fallback = "sv");

pub use config::Settings;
pub use startup::Application;
