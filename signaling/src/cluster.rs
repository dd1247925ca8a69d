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
//!
//! This module holds what ownership is: the lease and what one round of it
//! asks of the node ([`lease_step`]), what taking over and stepping down do
//! to the switchboard's state ([`take_over`], [`step_down`]), what a
//! follower tells a new owner ([`registrations`]), and the messages that
//! cross the bus. The hub runs these with its lock and its store; nothing
//! here knows the hub.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::bus::{Bus, BusError, Subscription};
use crate::history::StoredEvent;
use crate::identity::{ConversationRequest, Identity};
use crate::ids::{ConnectionId, RoomId, StaffId};
use crate::outbound::Outbound;
use crate::protocol::ClientMessage;
use crate::queue::{Queue, QueueEntryRecord};
use crate::room::{MeetingSetup, Room};
use crate::switchboard::{attach, HubState, Role, Sink};
pub(crate) use crate::wire::{Delivery, MeetingSpec};

/// This node's tie to its cluster: the cluster's name, the lease, this
/// node's id and the bus the nodes share.
pub(crate) struct ClusterLink {
    pub name: String,
    pub lease: Arc<dyn Lease>,
    node: String,
    bus: Arc<dyn Bus>,
}

impl ClusterLink {
    pub fn new(name: &str, lease: Arc<dyn Lease>, node: &str, bus: Arc<dyn Bus>) -> Self {
        ClusterLink {
            name: name.to_owned(),
            lease,
            node: node.to_owned(),
            bus,
        }
    }

    /// Sends an input to the owner.
    pub async fn forward(&self, input: Input) -> Result<(), BusError> {
        let envelope = Envelope {
            node: self.node.clone(),
            input,
        };
        let payload = serde_json::to_vec(&envelope).expect("hub inputs always serialise");
        self.bus.publish(&input_subject(&self.name), payload).await
    }

    /// The inputs followers forward, for the owner.
    pub async fn inputs(&self) -> Result<Subscription, BusError> {
        self.bus.subscribe(&input_subject(&self.name)).await
    }

    /// What the owner delivers to this node's connections.
    pub async fn deliveries(&self) -> Result<Subscription, BusError> {
        self.bus
            .subscribe(&node_subject(&self.name, &self.node))
            .await
    }

    /// A subject of its own for one answer of the owner.
    pub fn reply_subject(&self) -> String {
        reply_subject(&self.name, &self.node)
    }

    /// Spawns the task that publishes deliveries for other nodes' connections
    /// in the order they are handed over, and returns where to hand them:
    /// the switchboard's `outbox`.
    pub fn spawn_outbox(
        &self,
    ) -> (
        mpsc::UnboundedSender<(String, Vec<u8>)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<(String, Vec<u8>)>();
        let bus = self.bus.clone();
        let name = self.name.clone();
        let task = tokio::spawn(async move {
            while let Some((node, payload)) = outgoing.recv().await {
                if let Err(e) = bus.publish(&node_subject(&name, &node), payload).await {
                    tracing::warn!(%node, error = %e, "publishing a delivery failed");
                }
            }
        });
        (outbox, task)
    }
}

/// The task that applies forwarded inputs while this node owns, and when
/// the lease was last renewed.
pub(crate) struct OwnerTask {
    pub task: tokio::task::JoinHandle<()>,
    pub renewed: Instant,
}

impl Drop for OwnerTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one round of the lease asks of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseStep {
    /// Nothing changes.
    Stay,
    /// This node owns and renewed the lease.
    Renewed,
    /// This node holds the lease and does not own yet: it takes over.
    TakeOver,
    /// This node owns but could not renew, and the lease would lapse
    /// before the next round: it stops before another node takes over.
    StepDown,
    /// Another node holds the lease (or nobody is known to): stop owning
    /// first if this node did, then forward to `owner`.
    Follow {
        step_down: bool,
        owner: Option<String>,
    },
}

/// Decides one round of the lease for `node`: `read` is the holder the
/// lease answered, or `None` if it could not be read; `renewed` is when
/// this node last renewed it, if it owns.
pub(crate) fn lease_step(
    node: &str,
    read: Option<Option<String>>,
    renewed: Option<Instant>,
    now: Instant,
) -> LeaseStep {
    match read {
        None => {
            // An owner that cannot renew must stop before its lease lapses
            // and another node takes over.
            let lapsing = renewed
                .is_some_and(|at| now.saturating_duration_since(at) >= LEASE_TTL - LEASE_EVERY);
            if lapsing {
                LeaseStep::StepDown
            } else {
                LeaseStep::Stay
            }
        }
        Some(Some(holder)) if holder == node => {
            if renewed.is_some() {
                LeaseStep::Renewed
            } else {
                LeaseStep::TakeOver
            }
        }
        Some(owner) => LeaseStep::Follow {
            step_down: renewed.is_some(),
            owner,
        },
    }
}

/// A meeting room to restore on taking over: its setup and its history.
pub(crate) type RestoredMeeting = (MeetingSetup, Vec<StoredEvent>);

/// Makes `state` the owner's: forgets what it held, restores the chats and
/// the meeting rooms read from the store, and attaches this node's own
/// connections again, each of which gets a new `welcome`. Returns what
/// attaching them causes, and the meeting rooms opened through this node
/// since the others were read, which the caller opens next.
pub(crate) fn take_over(
    state: &mut HubState,
    fresh: Queue,
    chats: Vec<(QueueEntryRecord, Vec<StoredEvent>)>,
    meetings: Vec<RestoredMeeting>,
    now: Instant,
) -> (Vec<Outbound>, Vec<MeetingSpec>) {
    forget_owned(state, fresh);
    for (record, events) in chats {
        state.queue.restore(record, events, now);
    }
    for (setup, events) in meetings {
        if state.specs.contains_key(&setup.room) {
            state
                .rooms
                .insert(setup.room.clone(), Room::restore(setup, events));
        }
    }
    let late = state
        .specs
        .values()
        .filter(|spec| !state.rooms.contains_key(spec.room()))
        .cloned()
        .collect();
    state.role = Role::Owner;
    let mut locals: Vec<ConnectionId> = state.connections.keys().copied().collect();
    locals.sort();
    let mut out = Vec::new();
    for conn in locals {
        let Some(connection) = state.connections.remove(&conn) else {
            continue;
        };
        out.extend(attach(
            state,
            conn,
            connection.identity,
            connection.sink,
            now,
        ));
    }
    (out, late)
}

/// Stops owning: forgets the rooms, the queue and other nodes'
/// connections. The store has all that matters for the next owner.
pub(crate) fn step_down(state: &mut HubState, fresh: Queue) {
    forget_owned(state, fresh);
    state.role = Role::Follower { owner: None };
}

/// Notes who owns now; true if that is news, and this node should tell the
/// owner about its rooms and connections ([`registrations`]).
pub(crate) fn follow(state: &mut HubState, other: Option<String>) -> bool {
    match &mut state.role {
        Role::Follower { owner } if other.is_some() && *owner != other => {
            *owner = other;
            true
        }
        _ => false,
    }
}

/// What a follower tells a new owner: the meeting rooms opened through it,
/// then its connections. Each connection gets a new `welcome` from the
/// owner, the client's cue to join its rooms again and resume.
pub(crate) fn registrations(state: &HubState) -> Vec<Input> {
    let mut specs: Vec<&MeetingSpec> = state.specs.values().collect();
    specs.sort_by(|a, b| a.room().cmp(b.room()));
    let mut conns: Vec<(&ConnectionId, &Identity)> = state
        .connections
        .iter()
        .map(|(conn, c)| (conn, &c.identity))
        .collect();
    conns.sort_by_key(|(conn, _)| **conn);
    let meetings = specs.into_iter().cloned().map(Input::OpenMeeting);
    let connections = conns.into_iter().map(|(conn, identity)| Input::Connect {
        conn: *conn,
        identity: identity.clone(),
    });
    meetings.chain(connections).collect()
}

/// Forgets what only an owner holds: the rooms, the queue and other nodes'
/// connections.
fn forget_owned(state: &mut HubState, fresh: Queue) {
    state.rooms.clear();
    state.queue = fresh;
    state
        .connections
        .retain(|_, c| matches!(c.sink, Sink::Local(_)));
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// One case: what the lease answered (`None`: it could not be read),
    /// how long ago this node renewed it if it owns, and the step expected.
    type Case<'a> = (Option<Option<&'a str>>, Option<Duration>, LeaseStep);

    fn check(cases: &[Case<'_>]) {
        let now = Instant::now() + Duration::from_secs(60);
        for (i, (read, ago, expected)) in cases.iter().enumerate() {
            let read = read.map(|holder| holder.map(str::to_owned));
            let renewed = ago.map(|ago| now - ago);
            let got = lease_step("me", read.clone(), renewed, now);
            assert_eq!(
                &got, expected,
                "case {i}: read {read:?}, renewed {ago:?} ago"
            );
        }
    }

    #[test]
    fn the_lease_decides_who_owns() {
        let other = |owner: Option<&str>, step_down| LeaseStep::Follow {
            step_down,
            owner: owner.map(str::to_owned),
        };
        check(&[
            // Holding it: take over once, then renew.
            (Some(Some("me")), None, LeaseStep::TakeOver),
            (Some(Some("me")), Some(Duration::ZERO), LeaseStep::Renewed),
            // Another node holds it: follow, stepping down if this node owned.
            (Some(Some("them")), None, other(Some("them"), false)),
            (
                Some(Some("them")),
                Some(Duration::ZERO),
                other(Some("them"), true),
            ),
            (Some(None), Some(Duration::ZERO), other(None, true)),
            // Unreadable: an owner stays until its lease would lapse before
            // the next round; a follower waits.
            (None, None, LeaseStep::Stay),
            (None, Some(LEASE_EVERY), LeaseStep::Stay),
            (None, Some(LEASE_TTL - LEASE_EVERY), LeaseStep::StepDown),
        ]);
    }
}
