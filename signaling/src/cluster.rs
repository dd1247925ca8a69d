//! Several `kontakt` nodes sharing rooms and the chat queue over NATS.
//!
//! One node of a cluster, the owner, holds every room and the queue; it
//! holds a lease to say so. The other nodes, followers, keep only their own
//! WebSocket connections: they forward each connection's inputs to the owner
//! on one subject, and the owner sends what it delivers to a connection back
//! on the subject of the node that holds it. When the owner stops or dies,
//! another node takes the lease (kept in the shared database by the
//! caller's [`Lease`]), restores the queue and rooms from the store,
//! and every node registers its connections again, which tells each client
//! with a new `welcome` to join its rooms again and `resume`.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::bus::BusError;
use crate::identity::{ConversationRequest, Identity};
use crate::ids::{BookingId, ConnectionId, MunicipalityCode, PartyId, RoomId, StaffId};
use crate::protocol::{ClientMessage, ServerMessage};
use crate::room::{ClockAnchor, MeetingSetup, StaffAccess};

/// How long a lease lasts without renewal. A dead owner's rooms move to
/// another node at most this long (plus one renewal period) after it died.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// How often a node renews or tries to take the lease.
pub const LEASE_EVERY: Duration = Duration::from_millis(500);

/// Who owns a cluster's rooms and queue. Holding it is a claim, renewed
/// every [`LEASE_EVERY`], that lapses after [`LEASE_TTL`].
#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// Takes the lease for `node` if nobody holds it, or renews it if
    /// `node` holds it. Returns the holder afterwards, if known.
    async fn hold(&self, node: &str) -> Result<Option<String>, BusError>;
    /// Gives the lease up if `node` holds it, so that another node takes
    /// over at once rather than after the lease lapses.
    async fn release(&self, node: &str) -> Result<(), BusError>;
}

/// A lease in memory, for nodes in one process (tests).
#[derive(Debug, Default)]
pub struct MemoryLease {
    held: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

#[async_trait]
impl Lease for MemoryLease {
    async fn hold(&self, node: &str) -> Result<Option<String>, BusError> {
        let now = std::time::Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_ref() {
            Some((holder, expires)) if holder != node && *expires > now => Ok(Some(holder.clone())),
            _ => {
                *held = Some((node.to_owned(), now + LEASE_TTL));
                Ok(Some(node.to_owned()))
            }
        }
    }

    async fn release(&self, node: &str) -> Result<(), BusError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_some_and(|(holder, _)| holder == node) {
            *held = None;
        }
        Ok(())
    }
}

/// The subject on which a cluster's owner hears inputs from followers.
pub(crate) fn input_subject(cluster: &str) -> String {
    format!("kontakt.{cluster}.hub.input")
}

/// The subject on which a node hears deliveries for its connections.
pub(crate) fn node_subject(cluster: &str, node: &str) -> String {
    format!("kontakt.{cluster}.node.{node}")
}

/// An input from a follower's connection, as it crosses to the owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The node that holds the connection, where deliveries go.
    pub node: String,
    pub input: Input,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Input {
    Connect {
        conn: ConnectionId,
        identity: Identity,
    },
    Message {
        conn: ConnectionId,
        message: ClientMessage,
    },
    OpenConversation {
        conn: ConnectionId,
        room: RoomId,
        request: ConversationRequest,
    },
    Disconnect {
        conn: ConnectionId,
    },
    OpenMeeting(MeetingSpec),
    CancelMeeting {
        room: RoomId,
    },
    /// A question for the owner's queue, answered as JSON on `reply`.
    TransferCandidates {
        room: RoomId,
        staff: StaffId,
        reply: String,
    },
}

/// The subject on which a follower waits for the owner's answer to one
/// question.
pub(crate) fn reply_subject(cluster: &str, node: &str) -> String {
    format!(
        "kontakt.{cluster}.reply.{node}.{}",
        uuid::Uuid::new_v4().simple()
    )
}

/// A message for one connection, as it crosses from the owner to the node
/// that holds the connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delivery {
    pub conn: ConnectionId,
    pub message: ServerMessage,
}

/// A [`MeetingSetup`] with its instants as Unix seconds, since an `Instant`
/// means nothing on another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MeetingSpec {
    room: RoomId,
    booking: Option<BookingId>,
    performing_municipality: MunicipalityCode,
    staff_access: StaffAccess,
    staff: Option<StaffId>,
    resident: PartyId,
    home_municipality: Option<MunicipalityCode>,
    starts_at: Option<i64>,
    no_show_grace_secs: u64,
    pre_admitted: Vec<PartyId>,
}

impl MeetingSpec {
    pub(crate) fn from_setup(setup: &MeetingSetup) -> Self {
        MeetingSpec {
            room: setup.room.clone(),
            booking: setup.booking.clone(),
            performing_municipality: setup.performing_municipality.clone(),
            staff_access: setup.staff_access.clone(),
            staff: setup.staff.clone(),
            resident: setup.resident.clone(),
            home_municipality: setup.home_municipality.clone(),
            starts_at: setup.starts_at.map(|s| setup.clock.unix_at(s)),
            no_show_grace_secs: setup.no_show_grace.as_secs(),
            pre_admitted: setup.pre_admitted.clone(),
        }
    }

    pub(crate) fn room(&self) -> &RoomId {
        &self.room
    }

    pub(crate) fn to_setup(&self, clock: ClockAnchor) -> MeetingSetup {
        MeetingSetup {
            room: self.room.clone(),
            booking: self.booking.clone(),
            performing_municipality: self.performing_municipality.clone(),
            staff_access: self.staff_access.clone(),
            staff: self.staff.clone(),
            resident: self.resident.clone(),
            home_municipality: self.home_municipality.clone(),
            starts_at: self.starts_at.map(|s| clock.instant_at(s)),
            no_show_grace: Duration::from_secs(self.no_show_grace_secs),
            pre_admitted: self.pre_admitted.clone(),
            clock,
        }
    }
}
