//! The hub's switchboard: everything the hub decides, without I/O. It holds
//! the connections, the meeting rooms and the chat queue ([`HubState`]),
//! turns client messages into inputs for them ([`route`], [`attach`],
//! [`detach`]), and carries out what they return as far as that needs no
//! waiting ([`switch`]): messages go into the connections' buffers at once,
//! and everything that waits on the outside world (the bus, the store's
//! queue entries, the caller's [`Effect`]s) comes back as a list for the
//! async shell, `hub`, to run once it has let go of the state.
//!
//! Like `Room` and `Queue`, it takes `now` as an argument, never reads the
//! clock, never spawns a task and never awaits.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::history::StoredEvent;
use crate::identity::Identity;
use crate::ids::{
    BookingId, ConnectionId, InvitationToken, MunicipalityCode, PartyId, RoomId, ServiceId, StaffId,
};
use crate::outbound::{AdHocMeeting, AuditEntry, Outbound};
use crate::protocol::{
    BookingOutcome, CannedResponse, ClientMessage, CloseReason, ErrorCode, Language, Participant,
    ServerMessage, TurnCredentials,
};
use crate::queue::{Queue, QueueEntryRecord, QueueInput, StaffProfile};
use crate::room::{ClockAnchor, Joiner, MeetingSetup, Room, RoomInput, Signal, StaffAccess};
use crate::wire::{Delivery, MeetingSpec};

/// The bus subject on which nodes tell each other about knocks.
pub(crate) const KNOCK_SUBJECT: &str = "kontakt.knocks";

/// Everything the hub holds, behind its one lock.
pub(crate) struct HubState {
    /// On the owner, every connection of the cluster; on a follower, its
    /// own connections only.
    pub connections: HashMap<ConnectionId, Connection>,
    pub rooms: HashMap<RoomId, Room>,
    pub queue: Queue,
    pub canned: BTreeMap<(ServiceId, Language), Vec<CannedResponse>>,
    pub role: Role,
    /// Meeting rooms opened through this node, told again to a new owner.
    pub specs: HashMap<RoomId, MeetingSpec>,
    /// Deliveries for connections on other nodes: `(node, payload)`,
    /// published in order by a task the cluster starts. Handing one over
    /// never waits, like a local connection's buffer.
    pub outbox: Option<mpsc::UnboundedSender<(String, Vec<u8>)>>,
    /// How often each room's history was reloaded after a failed write.
    /// An output made before the last reload is stale: its events are not
    /// stored, as their seqs no longer follow the store's.
    pub epochs: HashMap<RoomId, u64>,
}

impl HubState {
    pub fn new(queue: Queue, role: Role) -> Self {
        HubState {
            connections: HashMap::new(),
            rooms: HashMap::new(),
            queue,
            canned: BTreeMap::new(),
            role,
            specs: HashMap::new(),
            outbox: None,
            epochs: HashMap::new(),
        }
    }

    pub fn epoch(&self, room: &RoomId) -> u64 {
        self.epochs.get(room).copied().unwrap_or(0)
    }
}

/// Whether this node holds the rooms and the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    Owner,
    /// Forwards to the owner, whose node id is known once the lease is read.
    Follower {
        owner: Option<String>,
    },
}

pub(crate) struct Connection {
    pub identity: Identity,
    pub sink: Sink,
}

/// Where a connection's messages go.
pub(crate) enum Sink {
    /// A socket on this node.
    Local(mpsc::Sender<ServerMessage>),
    /// A socket on another node of the cluster, by node id.
    Remote(String),
}

/// What [`switch`] needs besides the state: this node's id (knocks carry
/// it), the clock ad-hoc meetings are set up with, and the caller's TURN
/// credentials, which are made without I/O (an HMAC under a shared secret)
/// so that they reach the connection in order with the rest.
pub(crate) struct Context<'a> {
    pub node: &'a str,
    pub clock: ClockAnchor,
    pub turn: &'a (dyn Fn(&RoomId, &PartyId) -> Option<TurnCredentials> + Sync),
}

/// What became of one event of an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    Stored,
    Failed(String),
    /// Not written: made before its room's history was reloaded.
    Stale,
}

/// Something that waits on the outside world, run by the hub after it let
/// go of the state. Each belongs to a [`Lane`]: the effects of one lane run
/// one after the other in the order they were made, and lanes run side by
/// side, so a slow audit write holds up only its own room's effects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Publish a stored event on the room's bus subject, as a frame.
    PublishEvent {
        room: RoomId,
        frame: String,
    },
    /// Tell consoles on other nodes about a knock.
    PublishKnock(Knock),
    /// Store a queue entry's current state.
    SaveQueueEntry(QueueEntryRecord),
    Audit(AuditEntry),
    BookingOutcome {
        booking: BookingId,
        outcome: BookingOutcome,
    },
    StaffNotified {
        room: RoomId,
        municipality: MunicipalityCode,
        staff: Option<StaffId>,
        participant: Participant,
    },
    ConversationClosed {
        room: RoomId,
        resident: PartyId,
        anonymous: bool,
    },
}

/// The line an [`Effect`] waits in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    Room(RoomId),
    Booking(BookingId),
}

impl Effect {
    pub fn lane(&self) -> Lane {
        match self {
            Effect::PublishEvent { room, .. }
            | Effect::StaffNotified { room, .. }
            | Effect::ConversationClosed { room, .. } => Lane::Room(room.clone()),
            Effect::PublishKnock(knock) => Lane::Room(knock.room.clone()),
            Effect::SaveQueueEntry(record) => Lane::Room(record.room.clone()),
            Effect::Audit(entry) => Lane::Room(entry.room.clone()),
            Effect::BookingOutcome { booking, .. } => Lane::Booking(booking.clone()),
        }
    }
}

/// What [`switch`] leaves for the shell.
#[derive(Debug, Default)]
pub(crate) struct Switched {
    /// To run after the lock is released, in order within each lane.
    pub effects: Vec<Effect>,
    /// A room whose event the store refused: the shell reloads its history
    /// from the store and hands it to [`reload`].
    pub reload: Option<RoomId>,
    /// Connections whose buffer was full; [`drop_connections`] detaches them.
    pub dropped: Vec<ConnectionId>,
}

/// Carries out `out` in order as far as that needs no waiting, given what
/// became of its events (`written`, one per `Persist`). Sends are delivered
/// at once; everything else that leaves the process becomes an [`Effect`].
/// A failed or stale event stops the output there, so nothing after it is
/// shown; a failed one also tells the sender, marks what was made from the
/// room's history so far as stale, and asks for the history to be reloaded.
pub(crate) fn switch(
    state: &mut HubState,
    cx: &Context<'_>,
    origin: Option<ConnectionId>,
    out: Vec<Outbound>,
    written: Vec<Written>,
) -> Switched {
    let mut written = written.into_iter();
    let mut done = Switched::default();
    let dropped = &mut done.dropped;
    for outbound in out {
        match outbound {
            Outbound::Send { to, message } => deliver(state, to, message, dropped),
            Outbound::Persist(event) => {
                let room = event.room.clone();
                match written.next().unwrap_or(Written::Stale) {
                    Written::Stored => {}
                    Written::Stale => {
                        // Made from a history that a failed write has since
                        // reloaded: memory already matches the store, so
                        // only the sender needs telling.
                        tell_not_stored(state, origin, &room, dropped);
                        break;
                    }
                    Written::Failed(failure) => {
                        tracing::error!(%room, seq = event.seq, %failure, "storing a room event failed");
                        tell_not_stored(state, origin, &room, dropped);
                        // Outputs made from the history that is about to be
                        // reloaded are stale.
                        *state.epochs.entry(room.clone()).or_default() += 1;
                        done.reload = Some(room);
                        break;
                    }
                }
                let frame = ServerMessage::Event {
                    room: room.clone(),
                    seq: event.seq,
                    event: event.event,
                }
                .to_frame();
                done.effects.push(Effect::PublishEvent { room, frame });
            }
            Outbound::PersistQueueEntry(record) => {
                done.effects.push(Effect::SaveQueueEntry(record));
            }
            Outbound::IssueTurnCredentials { to, room, party } => {
                if let Some(credentials) = (cx.turn)(&room, &party) {
                    let message = ServerMessage::TurnCredentials { room, credentials };
                    deliver(state, to, message, dropped);
                }
            }
            Outbound::Audit(entry) => done.effects.push(Effect::Audit(entry)),
            Outbound::BookingOutcome { booking, outcome } => {
                done.effects
                    .push(Effect::BookingOutcome { booking, outcome });
            }
            Outbound::NotifyStaff {
                room,
                municipality,
                staff,
                staff_access,
                participant,
            } => {
                let knock = Knock {
                    node: cx.node.to_owned(),
                    staff_access,
                    room: room.clone(),
                    participant: participant.clone(),
                };
                deliver_knock(state, &knock, dropped);
                // Consoles on other nodes hear it through the bus.
                done.effects.push(Effect::PublishKnock(knock));
                done.effects.push(Effect::StaffNotified {
                    room,
                    municipality,
                    staff,
                    participant,
                });
            }
            Outbound::OpenAdHocMeeting(meeting) => {
                let setup = ad_hoc_setup(meeting, cx.clock);
                state.rooms.insert(setup.room.clone(), Room::new(setup));
            }
            Outbound::ConversationClosed {
                room,
                resident,
                anonymous,
            } => done.effects.push(Effect::ConversationClosed {
                room,
                resident,
                anonymous,
            }),
        }
    }
    done
}

/// Makes memory match the store again after a failed write: `loaded` is the
/// room's history as the store has it, or `None` if the store could not be
/// read. Then the meeting room closes, so that nobody goes on from a history
/// the store does not have; it is restored from the store when it is opened
/// again.
pub(crate) fn reload(
    state: &mut HubState,
    room: &RoomId,
    loaded: Option<Vec<StoredEvent>>,
    dropped: &mut Vec<ConnectionId>,
) {
    match loaded {
        Some(events) => {
            if let Some(meeting) = state.rooms.get_mut(room) {
                meeting.reload_history(events);
            } else {
                state.queue.reload_history(room, events);
            }
        }
        None => {
            if let Some(meeting) = state.rooms.remove(room) {
                for conn in meeting.connections().collect::<Vec<_>>() {
                    let message = ServerMessage::RoomClosed {
                        room: room.clone(),
                        reason: CloseReason::StorageUnavailable,
                    };
                    deliver(state, conn, message, dropped);
                }
            }
        }
    }
}

/// Detaches the connections that did not keep up, and returns what their
/// leaving causes, for the caller to carry out next.
pub(crate) fn drop_connections(
    state: &mut HubState,
    dropped: Vec<ConnectionId>,
    now: Instant,
) -> Vec<Outbound> {
    let mut left = Vec::new();
    for conn in dropped {
        tracing::warn!(%conn, "dropping a connection that does not keep up");
        left.extend(detach(state, conn, now));
    }
    left
}

/// Registers a connection with the owner's state and returns its welcome,
/// the knocks and queue entries its console should see.
pub(crate) fn attach(
    state: &mut HubState,
    conn: ConnectionId,
    identity: Identity,
    sink: Sink,
    now: Instant,
) -> Vec<Outbound> {
    let party = identity.party();
    let mut out = vec![Outbound::Send {
        to: conn,
        message: ServerMessage::Welcome { party },
    }];
    if let Identity::Staff {
        id,
        municipality,
        may_handle,
    } = &identity
    {
        let profile = StaffProfile {
            id: id.clone(),
            municipality: municipality.clone(),
            services: may_handle.clone(),
        };
        // Knocks that came before this console connected are still news,
        // in the rooms this staff member may enter.
        for room in state.rooms.values() {
            if room.admits_staff(id) {
                for participant in room.waiting() {
                    out.push(Outbound::Send {
                        to: conn,
                        message: ServerMessage::LobbyKnock {
                            room: room.id().clone(),
                            participant,
                        },
                    });
                }
            }
        }
        state.connections.insert(
            conn,
            Connection {
                identity: identity.clone(),
                sink,
            },
        );
        out.extend(state.queue.handle(
            QueueInput::StaffConnected {
                conn,
                staff: profile,
            },
            now,
        ));
    } else {
        state
            .connections
            .insert(conn, Connection { identity, sink });
    }
    out
}

/// Turns a client message into inputs for the room or the queue it is for.
pub(crate) fn route(
    state: &mut HubState,
    conn: ConnectionId,
    identity: &Identity,
    message: ClientMessage,
    now: Instant,
) -> Vec<Outbound> {
    use ClientMessage as M;
    let reply = |message: ServerMessage| vec![Outbound::Send { to: conn, message }];
    let not_found = |room: &RoomId| {
        reply(ServerMessage::error(
            ErrorCode::NotFound,
            "no such room",
            Some(room.clone()),
        ))
    };
    // Messages that are not about one room.
    match &message {
        M::Ping => return reply(ServerMessage::Pong),
        M::QueueOpen { .. } => {
            return reply(ServerMessage::error(
                ErrorCode::NotHandledHere,
                "the endpoint opens chats through Hub::open_conversation",
                None,
            ))
        }
        M::StaffAvailability {
            available,
            max_chats,
        } => {
            return state.queue.handle(
                QueueInput::Availability {
                    conn,
                    available: *available,
                    max_chats: *max_chats,
                },
                now,
            )
        }
        M::CannedList { service, language } => {
            let allowed = matches!(identity, Identity::Staff { may_handle, .. } if may_handle.contains(service));
            if !allowed {
                return reply(ServerMessage::error(
                    ErrorCode::Forbidden,
                    "staff of this service only",
                    None,
                ));
            }
            let asked = language.unwrap_or_default();
            // A language without responses of its own gets the Swedish ones.
            let language = if state
                .canned
                .get(&(service.clone(), asked))
                .is_some_and(|r| !r.is_empty())
            {
                asked
            } else {
                Language::Sv
            };
            let responses = state
                .canned
                .get(&(service.clone(), language))
                .cloned()
                .unwrap_or_default();
            return reply(ServerMessage::CannedResponses {
                service: service.clone(),
                language,
                responses,
            });
        }
        _ => {}
    }
    let room = message
        .room()
        .expect("every other message names a room")
        .clone();
    if let Identity::Guest { room: own, .. } = identity {
        // A guest link opens one room and nothing else.
        if *own != room {
            return not_found(&room);
        }
    }
    if let Identity::Anonymous { conversation } = identity {
        // A token for one chat opens that chat and the meeting rooms it
        // was escalated to, whose resident is this chat's, and nothing else.
        let party = identity.party();
        let own = *conversation == room
            || state
                .rooms
                .get(&room)
                .is_some_and(|meeting| meeting.setup().resident == party);
        if !own {
            return not_found(&room);
        }
    }
    if let Some(meeting) = state.rooms.get_mut(&room) {
        if let Identity::Staff { id, .. } = identity {
            // Whatever staff the room does not admit ask of it, the answer
            // is the same as for a room that does not exist.
            if !meeting.admits_staff(id) {
                return meeting.refuse_staff(conn, id);
            }
        }
        let input = match message {
            M::Join { invitation, .. } => RoomInput::Join {
                conn,
                joiner: match (identity, invitation) {
                    (Identity::Staff { id, .. }, _) => Joiner::Staff { id: id.clone() },
                    (Identity::Guest { invitation, .. }, _) => Joiner::Guest {
                        invitation: invitation.clone(),
                    },
                    (_, _) => Joiner::Resident {
                        party: identity.party(),
                    },
                },
            },
            M::Leave { .. } => RoomInput::Leave { conn },
            M::Resume { last_seq, .. } => RoomInput::Resume { conn, last_seq },
            M::Ack { seq, .. } => RoomInput::Ack { conn, seq },
            M::ChatSend {
                client_id, text, ..
            } => RoomInput::Chat {
                conn,
                client_id,
                text,
            },
            M::ChatTyping { typing, .. } => RoomInput::Typing { conn, typing },
            M::LobbyAdmit { party, .. } => RoomInput::Admit { conn, party },
            M::LobbyDecline { party, .. } => RoomInput::Decline { conn, party },
            M::LobbySendBack { party, .. } => RoomInput::SendBack { conn, party },
            M::SignalOffer { to, sdp, .. } => RoomInput::Signal {
                conn,
                to,
                signal: Signal::Offer(sdp),
            },
            M::SignalAnswer { to, sdp, .. } => RoomInput::Signal {
                conn,
                to,
                signal: Signal::Answer(sdp),
            },
            M::SignalIce { to, candidate, .. } => RoomInput::Signal {
                conn,
                to,
                signal: Signal::Ice(candidate),
            },
            M::MeetingInvite { role, .. } => RoomInput::Invite {
                conn,
                role,
                token: InvitationToken::parse(uuid::Uuid::new_v4().simple().to_string())
                    .expect("a UUID is a valid token"),
            },
            M::MeetingEnd { .. } => RoomInput::End { conn },
            _ => {
                return reply(ServerMessage::error(
                    ErrorCode::InvalidState,
                    "not a message for a meeting room",
                    Some(room),
                ))
            }
        };
        return meeting.handle(input, now);
    }
    if !state.queue.contains(&room) {
        return not_found(&room);
    }
    let input = match message {
        M::Join { .. } => QueueInput::Join {
            conn,
            party: identity.party(),
            room,
        },
        // Detaching one connection from a chat is not worth its own input:
        // the chat keeps the connection until it closes.
        M::Leave { .. } => return Vec::new(),
        M::Resume { last_seq, .. } => QueueInput::Resume {
            conn,
            room,
            last_seq,
        },
        M::Ack { seq, .. } => QueueInput::Ack { conn, room, seq },
        M::ChatSend {
            client_id, text, ..
        } => QueueInput::Chat {
            conn,
            room,
            client_id,
            text,
        },
        M::ChatTyping { typing, .. } => QueueInput::Typing { conn, room, typing },
        M::QueueLeave { .. } => QueueInput::Leave { conn, room },
        M::QueueClaim { .. } => QueueInput::Claim { conn, room },
        M::QueueAccept { .. } => QueueInput::Accept { conn, room },
        M::QueueTransfer { to, .. } => QueueInput::Transfer { conn, room, to },
        M::ChatOfferTimes {
            client_id, times, ..
        } => QueueInput::OfferTimes {
            conn,
            room,
            client_id,
            times,
        },
        M::ChatEscalateVideo { .. } => QueueInput::EscalateVideo {
            conn,
            room,
            meeting_room: new_room_id("adhoc"),
        },
        M::ChatClose { outcome, .. } => QueueInput::Close {
            conn,
            room,
            outcome,
        },
        _ => {
            return reply(ServerMessage::error(
                ErrorCode::InvalidState,
                "not a message for a chat",
                Some(room),
            ))
        }
    };
    state.queue.handle(input, now)
}

/// Removes a connection from everything and returns what that causes.
pub(crate) fn detach(state: &mut HubState, conn: ConnectionId, now: Instant) -> Vec<Outbound> {
    let mut out = Vec::new();
    for room in state.rooms.values_mut() {
        if room.party_of(conn).is_some() {
            // A dropped connection is not a departure: its party is away
            // for the grace and may come back on a new connection.
            out.extend(room.handle(RoomInput::Disconnected { conn }, now));
        }
    }
    out.extend(state.queue.handle(QueueInput::Disconnected { conn }, now));
    state.connections.remove(&conn);
    out
}

/// Forgets the rooms that have closed. It looks at every room, so it runs
/// once per batch of outputs carried out rather than once per output.
pub(crate) fn forget_closed_rooms(state: &mut HubState) {
    let closed: Vec<RoomId> = state
        .rooms
        .iter()
        .filter(|(_, room)| room.is_closed())
        .map(|(id, _)| id.clone())
        .collect();
    for room in closed {
        state.rooms.remove(&room);
        state.specs.remove(&room);
    }
}

pub(crate) fn deliver(
    state: &HubState,
    to: ConnectionId,
    message: ServerMessage,
    dropped: &mut Vec<ConnectionId>,
) {
    let Some(connection) = state.connections.get(&to) else {
        return;
    };
    match &connection.sink {
        Sink::Local(tx) => {
            if tx.try_send(message).is_err() && !dropped.contains(&to) {
                dropped.push(to);
            }
        }
        Sink::Remote(node) => {
            // The node that holds the connection drops it if it is slow.
            if let Some(outbox) = &state.outbox {
                let delivery = Delivery { conn: to, message };
                let payload = serde_json::to_vec(&delivery).expect("deliveries always serialise");
                let _ = outbox.send((node.clone(), payload));
            }
        }
    }
}

/// A knock as it crosses the bus between nodes. It carries who may hear
/// it, because only the receiving node knows whose consoles it holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Knock {
    pub node: String,
    pub staff_access: StaffAccess,
    pub room: RoomId,
    pub participant: Participant,
}

/// Sends a knock to this node's consoles of the staff the room admits.
pub(crate) fn deliver_knock(state: &HubState, knock: &Knock, dropped: &mut Vec<ConnectionId>) {
    let consoles: Vec<ConnectionId> = state
        .connections
        .iter()
        .filter(|(_, c)| {
            matches!(&c.identity, Identity::Staff { id, .. } if knock.staff_access.admits(id))
        })
        .map(|(conn, _)| *conn)
        .collect();
    for conn in consoles {
        let message = ServerMessage::LobbyKnock {
            room: knock.room.clone(),
            participant: knock.participant.clone(),
        };
        deliver(state, conn, message, dropped);
    }
}

/// Tells the sender of an input that its event was not stored.
pub(crate) fn tell_not_stored(
    state: &HubState,
    origin: Option<ConnectionId>,
    room: &RoomId,
    dropped: &mut Vec<ConnectionId>,
) {
    if let Some(conn) = origin {
        let message = ServerMessage::error(
            ErrorCode::StorageUnavailable,
            "not stored; try again",
            Some(room.clone()),
        );
        deliver(state, conn, message, dropped);
    }
}

pub(crate) fn ad_hoc_setup(meeting: AdHocMeeting, clock: ClockAnchor) -> MeetingSetup {
    MeetingSetup {
        room: meeting.room,
        booking: None,
        performing_municipality: meeting.performing_municipality,
        // Only the staff member who escalated the chat, who already reads
        // it, may enter the meeting it became.
        staff_access: StaffAccess::only([meeting.staff.clone()]),
        staff: Some(meeting.staff),
        resident: meeting.resident.clone(),
        home_municipality: Some(meeting.home_municipality),
        starts_at: None,
        no_show_grace: Duration::ZERO,
        // The staff member chose to meet this resident by escalating.
        pre_admitted: vec![meeting.resident],
        clock,
    }
}

pub(crate) fn new_room_id(prefix: &str) -> RoomId {
    RoomId::parse(format!("{prefix}:{}", uuid::Uuid::new_v4().simple()))
        .expect("a prefix and a UUID make a valid id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueMode, QueueSettings};
    use std::collections::BTreeSet;
    use tokio::sync::mpsc::Receiver;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    fn staff(name: &str) -> Identity {
        Identity::Staff {
            id: id(name),
            municipality: id("0180"),
            may_handle: BTreeSet::from([id("stod")]),
        }
    }

    /// A board with the meeting room of booking b1 (staff s1 may enter,
    /// resident r1 knocks) and three connections: c1 staff s1, c2 resident
    /// r1, c3 staff s3 (whom the room does not admit).
    fn board(t0: Instant) -> (HubState, Vec<Receiver<ServerMessage>>) {
        let clock = ClockAnchor {
            instant: t0,
            unix: 1_700_000_000,
        };
        let rules = QueueSettings {
            mode: QueueMode::Manual,
            answer_timeout: Duration::from_secs(60),
            abandon_after: Duration::from_secs(300),
            average_chat: Duration::from_secs(600),
        };
        let mut state = HubState::new(Queue::new(rules, clock), Role::Owner);
        let setup = MeetingSetup {
            room: id("booking:b1"),
            booking: Some(id("b1")),
            performing_municipality: id("0180"),
            staff_access: StaffAccess::only([id("s1")]),
            staff: Some(id("s1")),
            resident: id("resident:r1"),
            home_municipality: Some(id("0181")),
            starts_at: None,
            no_show_grace: Duration::from_secs(600),
            pre_admitted: Vec::new(),
            clock,
        };
        state.rooms.insert(setup.room.clone(), Room::new(setup));
        let resident = |name: &str| Identity::Resident {
            id: id(name),
            home_municipality: id("0181"),
        };
        let identities = [staff("s1"), resident("r1"), staff("s3")];
        let mut receivers = Vec::new();
        for (n, identity) in identities.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(64);
            let conn = ConnectionId(n as u64 + 1);
            let _ = attach(&mut state, conn, identity, Sink::Local(tx), t0);
            receivers.push(rx);
        }
        for rx in &mut receivers {
            while rx.try_recv().is_ok() {}
        }
        (state, receivers)
    }

    /// What one step did: each connection's messages, in connection order,
    /// then the effects in order, then the room to reload, if any.
    fn render(switched: &Switched, receivers: &mut [Receiver<ServerMessage>]) -> String {
        let mut lines = Vec::new();
        for (n, rx) in receivers.iter_mut().enumerate() {
            while let Ok(message) = rx.try_recv() {
                let value = serde_json::to_value(&message).unwrap();
                let kind = value["type"].as_str().unwrap().to_owned();
                let detail = match &message {
                    ServerMessage::Error { code, .. } => format!(" {code:?}"),
                    ServerMessage::Event { seq, .. } => format!(" {seq}"),
                    _ => String::new(),
                };
                lines.push(format!("c{} {kind}{detail}", n + 1));
            }
        }
        for effect in &switched.effects {
            lines.push(match effect {
                Effect::PublishEvent { room, frame } => {
                    let value: serde_json::Value = serde_json::from_str(frame).unwrap();
                    format!("publish {room} {} {}", value["seq"], value["event"]["kind"])
                }
                Effect::PublishKnock(knock) => format!("publish-knock {}", knock.room),
                Effect::SaveQueueEntry(record) => format!("save-entry {}", record.room),
                Effect::Audit(a) => format!("audit {} {} {}", a.actor, a.action.as_str(), a.room),
                Effect::BookingOutcome { booking, outcome } => {
                    format!("outcome {booking} {outcome:?}")
                }
                Effect::StaffNotified {
                    staff, participant, ..
                } => format!(
                    "notify {} about {}",
                    staff.as_ref().map_or("-".into(), |s| s.to_string()),
                    participant.party
                ),
                Effect::ConversationClosed { room, .. } => format!("closed {room}"),
            });
        }
        if let Some(room) = &switched.reload {
            lines.push(format!("reload {room}"));
        }
        lines.join("\n")
    }

    /// What became of each step's events: all stored, unless the step says.
    enum Store {
        Accepts,
        Refuses,
    }

    /// Runs `steps` on a fresh [`board`]: each is a connection, its
    /// message, what the store does with the events, and exactly what the
    /// switchboard delivers and leaves for the shell, as [`render`] writes
    /// it.
    fn check(steps: &[(u64, ClientMessage, Store, &str)]) -> HubState {
        let t0 = Instant::now();
        let (mut state, mut receivers) = board(t0);
        let turn = |_: &RoomId, party: &PartyId| {
            Some(TurnCredentials {
                urls: vec!["turn:relay.example:3478".into()],
                username: format!("1:{party}"),
                password: "secret".into(),
                ttl_secs: 60,
            })
        };
        let cx = Context {
            node: "n1",
            clock: ClockAnchor {
                instant: t0,
                unix: 1_700_000_000,
            },
            turn: &turn,
        };
        for (i, (conn, message, store, expected)) in steps.iter().enumerate() {
            let conn = ConnectionId(*conn);
            let identity = state.connections[&conn].identity.clone();
            let out = route(&mut state, conn, &identity, message.clone(), t0);
            let written = out
                .iter()
                .filter(|o| matches!(o, Outbound::Persist(_)))
                .map(|_| match store {
                    Store::Accepts => Written::Stored,
                    Store::Refuses => Written::Failed("down".into()),
                })
                .collect();
            let switched = switch(&mut state, &cx, Some(conn), out, written);
            let got = render(&switched, &mut receivers);
            if *expected == "-" {
                // A step that only sets the scene.
                continue;
            }
            let expected = expected
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            assert_eq!(got, expected, "step {i}: {message:?}\n--- got:\n{got}\n");
        }
        state
    }

    fn join() -> ClientMessage {
        ClientMessage::Join {
            room: id("booking:b1"),
            invitation: None,
        }
    }

    fn chat(client_id: &str) -> ClientMessage {
        ClientMessage::ChatSend {
            room: id("booking:b1"),
            client_id: id(client_id),
            text: "hej".into(),
        }
    }

    fn admit() -> ClientMessage {
        ClientMessage::LobbyAdmit {
            room: id("booking:b1"),
            party: id("resident:r1"),
        }
    }

    #[test]
    fn a_knock_reaches_the_consoles_here_and_goes_out_to_other_nodes() {
        check(&[(
            2,
            join(),
            Store::Accepts,
            r#"
            c1 lobby.knock
            c2 joined
            c2 lobby.status
            publish booking:b1 1 "knock"
            publish-knock booking:b1
            notify s1 about resident:r1
            "#,
        )]);
    }

    #[test]
    fn reads_are_delivered_at_once_and_their_audit_entries_left_for_later() {
        check(&[
            (2, join(), Store::Accepts, "-"),
            (
                1,
                join(),
                Store::Accepts,
                r#"
                c1 event 2
                c1 joined
                c1 turn.credentials
                c2 lobby.status
                publish booking:b1 2 "participant_joined"
                audit staff:s1 meeting.read booking:b1
                "#,
            ),
            (
                1,
                admit(),
                Store::Accepts,
                r#"
                c1 event 3
                c2 lobby.admitted
                c2 event 3
                c2 joined
                c2 turn.credentials
                publish booking:b1 3 "participant_joined"
                "#,
            ),
            (
                2,
                chat("m1"),
                Store::Accepts,
                r#"
                c1 event 4
                c2 event 4
                c2 chat.stored
                publish booking:b1 4 "chat"
                "#,
            ),
        ]);
    }

    #[test]
    fn staff_the_room_does_not_admit_are_refused_and_the_refusal_audited() {
        check(&[(
            3,
            join(),
            Store::Accepts,
            r#"
            c3 error NotFound
            audit staff:s3 meeting.enter booking:b1
            "#,
        )]);
    }

    #[test]
    fn a_refused_write_shows_nothing_after_it_and_asks_for_a_reload() {
        let state = check(&[
            (2, join(), Store::Accepts, "-"),
            (1, join(), Store::Accepts, "-"),
            (1, admit(), Store::Accepts, "-"),
            (
                2,
                chat("m1"),
                Store::Refuses,
                r#"
                c2 error StorageUnavailable
                reload booking:b1
                "#,
            ),
        ]);
        assert_eq!(state.epoch(&id("booking:b1")), 1);
    }

    #[test]
    fn a_dropped_connection_leaves_its_party_away_not_gone() {
        let mut state = check(&[
            (2, join(), Store::Accepts, "-"),
            (1, join(), Store::Accepts, "-"),
            (1, admit(), Store::Accepts, "-"),
        ]);
        let out = detach(&mut state, ConnectionId(2), Instant::now());
        assert_eq!(
            crate::room::tests::render(&out),
            r#"c1 participant.away {"grace_secs":30,"party":"resident:r1"}"#,
            "nothing is recorded until the grace runs out"
        );
        assert!(!state.connections.contains_key(&ConnectionId(2)));
    }
}
