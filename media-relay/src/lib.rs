//! A TURN/STUN relay (RFC 8656, RFC 8489) for Kontakt's video and audio.
//!
//! Clients use `iceTransportPolicy: "relay"`, so every media packet crosses this relay. The
//! protocol lives in a sans-IO core ([`server::Server`]) that takes bytes, addresses and the
//! time and returns datagrams and commands; [`Relay`] runs it on tokio workers with batched
//! UDP I/O. `kontakt serve` embeds the relay, and the `media-relay` binary runs it alone with
//! the same [`RelayConfig`] keys.
//!
//! Credentials follow the TURN REST scheme that coturn implements as `use-auth-secret`, so
//! [`credentials::issue`] works for both relays.

pub mod config;
pub mod credentials;
mod driver;
mod outbox;
pub mod policy;
pub mod server;
pub mod stun;

pub use config::{ConfigError, RelayConfig};
pub use driver::{Relay, StartError};
