//! The real-time hub: the WebSocket protocol types, meeting rooms (waiting room,
//! admission, offer/answer/ICE relay, in-meeting chat), the chat pre-assessment
//! queue, presence, and delivery with sequence numbers and resume.
//!
//! It talks to storage through a small store trait of its own, and it knows
//! nothing about axum routing or SQL dialects.

pub mod bus;
pub mod cluster;
pub mod history;
pub mod hub;
pub mod identity;
pub mod ids;
pub mod outbound;
pub mod protocol;
pub mod queue;
pub mod room;
pub mod store;
pub mod switchboard;
mod wire;
