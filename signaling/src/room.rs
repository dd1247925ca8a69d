//! A meeting room as a sans-IO state machine: a lobby in front, at most four
//! admitted participants inside, relay of WebRTC signals between them, a
//! sequenced history (chat, arrivals, departures) with resume, and the
//! booking's outcome when the meeting ends or the resident never comes.
//!
//! [`Room::handle`] takes an input and the current instant and returns what
//! to do. It never reads a clock, opens a socket or touches storage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::history::{Audience, History, StoredEvent};
pub use crate::identity::StaffAccess;
use crate::ids::{
    BookingId, ClientMsgId, ConnectionId, InvitationToken, MunicipalityCode, PartyId, RoomId, Seq,
    StaffId,
};
use crate::outbound::{send, AuditAction, AuditEntry, Outbound};
use crate::protocol::{
    BookingOutcome, CloseReason, ErrorCode, GuestRole, IceCandidate, Participant, PresenceState,
    Role, RoomEvent, ServerMessage,
};

/// The most participants admitted at once. Video is a full mesh, so every
/// extra participant costs each one an upstream; four is what a resident's
/// connection can carry.
pub const MAX_PARTICIPANTS: usize = 4;

/// The most parties waiting in the lobby at once, so that a leaked link
/// cannot fill a staff member's screen with knocks.
pub const MAX_LOBBY: usize = 8;

/// How long an admitted participant whose connection dropped stays in the
/// meeting as away. A phone that changes networks, or a laptop whose Wi-Fi
/// drops, is usually back within seconds; within the grace the others keep
/// the participant's tile and the history records no departure. After it
/// the room records `participant_left`. An explicit `leave` (a closed tab)
/// leaves at once.
pub const AWAY_GRACE: Duration = Duration::from_secs(30);

/// Everything a room needs to know about its meeting, given by the caller
/// from the booking (or from the chat it was escalated from).
#[derive(Debug, Clone)]
pub struct MeetingSetup {
    pub room: RoomId,
    /// `None` for an ad-hoc room opened from a chat.
    pub booking: Option<BookingId>,
    /// The municipality whose staff performs the meeting, told to the
    /// caller's other channels when nobody answers a knock.
    pub performing_municipality: MunicipalityCode,
    /// The staff who may enter, hear knocks, admit, decline, send back and
    /// end: decided by the caller's policy, so the room holds no rule of its
    /// own about who that is.
    pub staff_access: StaffAccess,
    /// The staff member the booking is with, notified first on a knock.
    pub staff: Option<StaffId>,
    /// The only resident who may knock.
    pub resident: PartyId,
    pub home_municipality: Option<MunicipalityCode>,
    /// When the meeting starts; with `no_show_grace` it decides a no-show.
    pub starts_at: Option<Instant>,
    pub no_show_grace: Duration,
    /// Parties admitted in advance, such as the resident of an escalated chat
    /// whose staff member already chose to meet them.
    pub pre_admitted: Vec<PartyId>,
    /// Ties `Instant`s to wall-clock time for the timestamps of events.
    pub clock: ClockAnchor,
}

/// One instant and the Unix time (seconds, UTC) at that instant. State
/// machines compute event timestamps from it, so they never read a clock.
#[derive(Debug, Clone, Copy)]
pub struct ClockAnchor {
    pub instant: Instant,
    pub unix: i64,
}

impl ClockAnchor {
    /// The instant at a Unix time, for deadlines such as a booking's start.
    /// Times before the anchor's instant map to the anchor's instant.
    pub fn instant_at(&self, unix: i64) -> Instant {
        let ahead = u64::try_from(unix.saturating_sub(self.unix)).unwrap_or(0);
        self.instant + Duration::from_secs(ahead)
    }

    pub fn unix_at(&self, now: Instant) -> i64 {
        let ahead = now.saturating_duration_since(self.instant).as_secs();
        let behind = self.instant.saturating_duration_since(now).as_secs();
        self.unix + i64::try_from(ahead).unwrap_or(i64::MAX / 2)
            - i64::try_from(behind).unwrap_or(i64::MAX / 2)
    }
}

/// Who is joining, as the hub learnt it from the connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joiner {
    Staff {
        id: StaffId,
    },
    /// A signed-in or anonymous resident.
    Resident {
        party: PartyId,
    },
    Guest {
        invitation: InvitationToken,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Offer(String),
    Answer(String),
    Ice(IceCandidate),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomInput {
    Join {
        conn: ConnectionId,
        joiner: Joiner,
    },
    /// The connection left the room on purpose (`leave`).
    Leave {
        conn: ConnectionId,
    },
    /// The connection closed without leaving: its party, if admitted and
    /// not connected otherwise, is away for [`AWAY_GRACE`].
    Disconnected {
        conn: ConnectionId,
    },
    Resume {
        conn: ConnectionId,
        last_seq: Seq,
    },
    Ack {
        conn: ConnectionId,
        seq: Seq,
    },
    Chat {
        conn: ConnectionId,
        client_id: ClientMsgId,
        text: String,
    },
    Typing {
        conn: ConnectionId,
        typing: bool,
    },
    Admit {
        conn: ConnectionId,
        party: PartyId,
    },
    Decline {
        conn: ConnectionId,
        party: PartyId,
    },
    SendBack {
        conn: ConnectionId,
        party: PartyId,
    },
    Signal {
        conn: ConnectionId,
        to: PartyId,
        signal: Signal,
    },
    /// Staff create a guest link; the caller supplies a random token.
    Invite {
        conn: ConnectionId,
        role: GuestRole,
        token: InvitationToken,
    },
    End {
        conn: ConnectionId,
    },
    /// Time passed; checks the no-show deadline and the away graces.
    Tick,
}

/// A meeting room.
#[derive(Debug)]
pub struct Room {
    setup: MeetingSetup,
    history: History,
    members: BTreeMap<PartyId, Member>,
    connections: HashMap<ConnectionId, PartyId>,
    invitations: HashMap<InvitationToken, Invitation>,
    resident_came: bool,
    closed: bool,
}

impl Room {
    pub fn new(setup: MeetingSetup) -> Self {
        Self::restore(setup, Vec::new())
    }

    /// Rebuilds a room after a restart, or on another node after its owner
    /// died, from its stored history, so that sequence numbers continue and
    /// old chat messages stay deduplicated. Presence is not restored:
    /// everyone joins again. Admission is: who was admitted and not sent
    /// back or declined since comes back admitted, as after any absence.
    pub fn restore(setup: MeetingSetup, events: Vec<StoredEvent>) -> Self {
        let resident_came = events.iter().any(|e| match &e.event {
            RoomEvent::Knock { participant } | RoomEvent::ParticipantJoined { participant } => {
                participant.party == setup.resident
            }
            _ => false,
        });
        let admitted = admitted_in(&events);
        let mut room = Room {
            history: History::restore(events),
            members: BTreeMap::new(),
            connections: HashMap::new(),
            invitations: HashMap::new(),
            resident_came,
            closed: false,
            setup,
        };
        for (party, role) in admitted {
            let staff = party.as_str().starts_with("staff:");
            room.members.insert(
                party,
                Member {
                    role,
                    staff,
                    state: PresenceState::Admitted,
                    conns: BTreeSet::new(),
                    acked: 0,
                    away_until: None,
                },
            );
        }
        for party in room.setup.pre_admitted.clone() {
            let role = room.role_of_known(&party);
            room.members.insert(
                party,
                Member {
                    role,
                    staff: false,
                    state: PresenceState::Admitted,
                    conns: BTreeSet::new(),
                    acked: 0,
                    away_until: None,
                },
            );
        }
        room
    }

    pub fn id(&self) -> &RoomId {
        &self.setup.room
    }

    /// Replaces the in-memory history with the stored one, after a failed
    /// write left the two apart.
    pub fn reload_history(&mut self, events: Vec<StoredEvent>) {
        self.history = History::restore(events);
    }

    pub fn setup(&self) -> &MeetingSetup {
        &self.setup
    }

    /// Whether `staff` may enter this room, hear its knocks and run it.
    pub fn admits_staff(&self, staff: &StaffId) -> bool {
        self.setup.staff_access.admits(staff)
    }

    /// The answer to a staff member who may not be here, whatever they
    /// asked: exactly what a room that does not exist answers, and an audit
    /// entry of the refusal.
    pub fn refuse_staff(&self, conn: ConnectionId, staff: &StaffId) -> Vec<Outbound> {
        vec![
            self.error(conn, ErrorCode::NotFound, "no such room"),
            Outbound::Audit(AuditEntry {
                actor: PartyId::staff(staff),
                action: AuditAction::MeetingRefused,
                room: self.id().clone(),
                subject: self.setup.resident.clone(),
                on_behalf_of: self.setup.home_municipality.clone(),
            }),
        ]
    }

    /// Takes who may enter anew, when the caller opens a room that is open
    /// already: the policy or the staff may have changed since.
    pub fn set_staff_access(&mut self, access: StaffAccess) {
        self.setup.staff_access = access;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn last_seq(&self) -> Seq {
        self.history.last_seq()
    }

    /// Whether `party` is admitted now (present or briefly away).
    pub fn is_admitted(&self, party: &PartyId) -> bool {
        self.members
            .get(party)
            .is_some_and(|m| m.state == PresenceState::Admitted)
    }

    /// The party behind a connection, if it is in this room.
    pub fn party_of(&self, conn: ConnectionId) -> Option<&PartyId> {
        self.connections.get(&conn)
    }

    /// Who waits in the lobby now, for staff consoles that connect later.
    pub fn waiting(&self) -> Vec<Participant> {
        self.participants(PresenceState::Lobby)
    }

    /// Closes the room because its booking was cancelled or moved: everyone
    /// is told, and nothing is reported about the booking.
    pub fn cancel(&mut self) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.close(CloseReason::Cancelled, None, &mut out);
        out
    }

    /// The connections attached to this room.
    pub fn connections(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.connections.keys().copied()
    }

    /// When [`RoomInput::Tick`] next has something to do: a no-show
    /// deadline or the end of someone's away grace.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let away = self.members.values().filter_map(|m| m.away_until).min();
        self.no_show_deadline().into_iter().chain(away).min()
    }

    fn no_show_deadline(&self) -> Option<Instant> {
        if self.closed || self.resident_came || self.setup.booking.is_none() {
            return None;
        }
        self.setup
            .starts_at
            .map(|start| start + self.setup.no_show_grace)
    }

    pub fn handle(&mut self, input: RoomInput, now: Instant) -> Vec<Outbound> {
        let mut out = Vec::new();
        if self.closed {
            if let Some(conn) = input_conn(&input) {
                out.push(self.error(conn, ErrorCode::NotFound, "no such room"));
            }
            return out;
        }
        let at = self.setup.clock.unix_at(now);
        match input {
            RoomInput::Join { conn, joiner } => self.join(conn, joiner, at, &mut out),
            RoomInput::Leave { conn } => self.leave(conn, at, None, &mut out),
            RoomInput::Disconnected { conn } => {
                self.leave(conn, at, Some(now + AWAY_GRACE), &mut out)
            }
            RoomInput::Resume { conn, last_seq } => {
                if let Some(party) = self.admitted_party(conn, &mut out) {
                    self.audit_staff_read(&party, &mut out);
                    self.replay(conn, &party, last_seq, &mut out);
                }
            }
            RoomInput::Ack { conn, seq } => self.ack(conn, seq, &mut out),
            RoomInput::Chat {
                conn,
                client_id,
                text,
            } => self.chat(conn, client_id, text, at, &mut out),
            RoomInput::Typing { conn, typing } => {
                if let Some(party) = self.admitted_party(conn, &mut out) {
                    let message = ServerMessage::ChatTyping {
                        room: self.id().clone(),
                        party: party.clone(),
                        typing,
                    };
                    self.send_to_admitted(Some(&party), &message, &mut out);
                }
            }
            RoomInput::Admit { conn, party } => self.admit(conn, party, at, &mut out),
            RoomInput::Decline { conn, party } => self.decline(conn, party, at, &mut out),
            RoomInput::SendBack { conn, party } => self.send_back(conn, party, at, &mut out),
            RoomInput::Signal { conn, to, signal } => self.signal(conn, to, signal, &mut out),
            RoomInput::Invite { conn, role, token } => {
                if self.host_party(conn, &mut out).is_some() {
                    self.invitations
                        .insert(token.clone(), Invitation { role, used: false });
                    out.push(send(
                        conn,
                        ServerMessage::MeetingInvited {
                            room: self.id().clone(),
                            role,
                            token,
                        },
                    ));
                }
            }
            RoomInput::End { conn } => {
                if let Some(by) = self.host_party(conn, &mut out) {
                    self.append_for_admitted(RoomEvent::Ended { by, outcome: None }, at, &mut out);
                    self.close(
                        CloseReason::MeetingEnded,
                        Some(BookingOutcome::Completed),
                        &mut out,
                    );
                }
            }
            RoomInput::Tick => {
                let gone: Vec<PartyId> = self
                    .members
                    .iter()
                    .filter(|(_, m)| m.away_until.is_some_and(|until| now >= until))
                    .map(|(party, _)| party.clone())
                    .collect();
                for party in gone {
                    if let Some(member) = self.members.get_mut(&party) {
                        member.away_until = None;
                    }
                    self.append_for_admitted(RoomEvent::ParticipantLeft { party }, at, &mut out);
                }
                if self
                    .no_show_deadline()
                    .is_some_and(|deadline| now >= deadline)
                {
                    self.close(CloseReason::NoShow, Some(BookingOutcome::NoShow), &mut out);
                }
            }
        }
        out
    }

    fn join(&mut self, conn: ConnectionId, joiner: Joiner, at: i64, out: &mut Vec<Outbound>) {
        let (party, role, staff) = match &joiner {
            Joiner::Staff { id } => {
                if !self.admits_staff(id) {
                    out.extend(self.refuse_staff(conn, id));
                    return;
                }
                (PartyId::staff(id), Role::SocialWorker, true)
            }
            Joiner::Resident { party } => {
                if *party != self.setup.resident {
                    out.push(self.error(conn, ErrorCode::NotFound, "no such room"));
                    return;
                }
                (party.clone(), Role::Resident, false)
            }
            Joiner::Guest { invitation } => {
                let party = PartyId::guest(invitation);
                let returning = self.members.get(&party).is_some_and(|m| m.conns.is_empty());
                match self.invitations.get_mut(invitation) {
                    Some(inv) if !inv.used || returning => (party, Role::from(inv.role), false),
                    _ => {
                        out.push(self.error(
                            conn,
                            ErrorCode::InvitationInvalid,
                            "this guest link is unknown or already used",
                        ));
                        return;
                    }
                }
            }
        };
        if let Some(previous) = self.connections.get(&conn) {
            if *previous != party {
                out.push(self.error(conn, ErrorCode::InvalidState, "already in this room"));
                return;
            }
        }
        if party == self.setup.resident {
            self.resident_came = true;
        }
        let state = match self.members.get(&party) {
            Some(member) => member.state,
            None if staff => PresenceState::Admitted,
            None => PresenceState::Lobby,
        };
        if state == PresenceState::Admitted
            && !self.holds_place(&party)
            && self.present_admitted_count() >= MAX_PARTICIPANTS
        {
            out.push(self.error(conn, ErrorCode::RoomFull, "the meeting is full"));
            return;
        }
        if state == PresenceState::Lobby
            && !self.members.contains_key(&party)
            && self.lobby_count() >= MAX_LOBBY
        {
            out.push(self.error(conn, ErrorCode::RoomFull, "the waiting room is full"));
            return;
        }
        let member = self.members.entry(party.clone()).or_insert(Member {
            role,
            staff,
            state,
            conns: BTreeSet::new(),
            acked: 0,
            away_until: None,
        });
        let first_connection = member.conns.is_empty();
        // Back within the away grace: the others never saw them leave.
        let was_away = member.away_until.take().is_some();
        if let Joiner::Guest { invitation } = &joiner {
            // Spent only now that the guest is in, so that a full waiting
            // room does not waste the link.
            if let Some(inv) = self.invitations.get_mut(invitation) {
                inv.used = true;
            }
        }
        member.conns.insert(conn);
        self.connections.insert(conn, party.clone());
        let participant = Participant {
            party: party.clone(),
            role,
        };
        match state {
            PresenceState::Admitted => {
                if first_connection {
                    if was_away {
                        let message = ServerMessage::ParticipantBack {
                            room: self.id().clone(),
                            party: party.clone(),
                        };
                        self.send_to_admitted(Some(&party), &message, out);
                    } else {
                        self.append_for_admitted(
                            RoomEvent::ParticipantJoined { participant },
                            at,
                            out,
                        );
                    }
                    if staff {
                        self.send_lobby_status(out);
                    }
                }
                self.send_joined(conn, &party, out);
                self.audit_staff_read(&party, out);
                out.push(Outbound::IssueTurnCredentials {
                    to: conn,
                    room: self.id().clone(),
                    party,
                });
            }
            PresenceState::Lobby => {
                if first_connection {
                    self.append_for_staff(
                        RoomEvent::Knock {
                            participant: participant.clone(),
                        },
                        at,
                        out,
                    );
                    if !self.staff_present() {
                        out.push(Outbound::NotifyStaff {
                            room: self.id().clone(),
                            municipality: self.setup.performing_municipality.clone(),
                            staff: self.setup.staff.clone(),
                            staff_access: self.setup.staff_access.clone(),
                            participant,
                        });
                    }
                }
                self.send_joined(conn, &party, out);
                out.push(send(
                    conn,
                    ServerMessage::LobbyStatus {
                        room: self.id().clone(),
                        staff_present: self.staff_present(),
                    },
                ));
            }
        }
    }

    /// A connection leaves: on purpose (`away_until` is `None`), or because
    /// it closed, when an admitted party is away until `away_until`.
    fn leave(
        &mut self,
        conn: ConnectionId,
        at: i64,
        away_until: Option<Instant>,
        out: &mut Vec<Outbound>,
    ) {
        let Some(party) = self.connections.remove(&conn) else {
            return;
        };
        let Some(member) = self.members.get_mut(&party) else {
            return;
        };
        member.conns.remove(&conn);
        if !member.conns.is_empty() {
            return;
        }
        match member.state {
            PresenceState::Admitted => {
                let staff = member.staff;
                // An admitted party stays admitted while away and after
                // leaving, so that a reconnect after a network change or a
                // reload needs no new admission.
                member.away_until = away_until;
                if away_until.is_some() {
                    let message = ServerMessage::ParticipantAway {
                        room: self.id().clone(),
                        party: party.clone(),
                        grace_secs: AWAY_GRACE.as_secs(),
                    };
                    self.send_to_admitted(Some(&party), &message, out);
                } else {
                    self.append_for_admitted(RoomEvent::ParticipantLeft { party }, at, out);
                }
                if staff {
                    self.send_lobby_status(out);
                }
            }
            PresenceState::Lobby => {
                self.members.remove(&party);
                self.append_for_staff(RoomEvent::LobbyLeft { party }, at, out);
            }
        }
    }

    fn ack(&mut self, conn: ConnectionId, seq: Seq, out: &mut Vec<Outbound>) {
        let Some(party) = self.admitted_party(conn, out) else {
            return;
        };
        let seq = seq.min(self.history.last_seq());
        let member = self
            .members
            .get_mut(&party)
            .expect("admitted party is a member");
        let before = member.acked;
        if seq <= before {
            return;
        }
        member.acked = seq;
        if self.history.has_chat_from_others(&party, before, seq) {
            let message = ServerMessage::ChatRead {
                room: self.id().clone(),
                party: party.clone(),
                seq,
            };
            self.send_to_admitted(Some(&party), &message, out);
        }
    }

    fn chat(
        &mut self,
        conn: ConnectionId,
        client_id: ClientMsgId,
        text: String,
        at: i64,
        out: &mut Vec<Outbound>,
    ) {
        let Some(party) = self.admitted_party(conn, out) else {
            return;
        };
        let seq = match self.history.chat_seq(&party, &client_id) {
            Some(seq) => seq,
            None => {
                let role = self.members[&party].role;
                self.append_for_admitted(
                    RoomEvent::Chat {
                        from: party.clone(),
                        role,
                        client_id: client_id.clone(),
                        text,
                        sent_at: at,
                    },
                    at,
                    out,
                )
            }
        };
        out.push(send(
            conn,
            ServerMessage::ChatStored {
                room: self.id().clone(),
                client_id,
                seq,
            },
        ));
    }

    fn admit(&mut self, conn: ConnectionId, party: PartyId, at: i64, out: &mut Vec<Outbound>) {
        let Some(host) = self.host_party(conn, out) else {
            return;
        };
        let Some(member) = self
            .members
            .get(&party)
            .filter(|m| m.state == PresenceState::Lobby)
        else {
            out.push(self.error(conn, ErrorCode::NotFound, "nobody by that id is waiting"));
            return;
        };
        if self.present_admitted_count() >= MAX_PARTICIPANTS {
            out.push(self.error(conn, ErrorCode::RoomFull, "the meeting is full"));
            return;
        }
        let role = member.role;
        let conns: Vec<ConnectionId> = member.conns.iter().copied().collect();
        self.members.get_mut(&party).expect("checked above").state = PresenceState::Admitted;
        if party.as_str().starts_with("guest:") {
            out.push(Outbound::Audit(AuditEntry {
                actor: host,
                action: AuditAction::AdmitGuest,
                room: self.id().clone(),
                subject: self.setup.resident.clone(),
                on_behalf_of: self.setup.home_municipality.clone(),
            }));
        }
        for c in &conns {
            out.push(send(
                *c,
                ServerMessage::LobbyAdmitted {
                    room: self.id().clone(),
                },
            ));
        }
        self.append_for_admitted(
            RoomEvent::ParticipantJoined {
                participant: Participant {
                    party: party.clone(),
                    role,
                },
            },
            at,
            out,
        );
        for c in conns {
            self.send_joined(c, &party, out);
            out.push(Outbound::IssueTurnCredentials {
                to: c,
                room: self.id().clone(),
                party: party.clone(),
            });
        }
    }

    fn decline(&mut self, conn: ConnectionId, party: PartyId, at: i64, out: &mut Vec<Outbound>) {
        if self.host_party(conn, out).is_none() {
            return;
        }
        if !self
            .members
            .get(&party)
            .is_some_and(|m| m.state == PresenceState::Lobby)
        {
            out.push(self.error(conn, ErrorCode::NotFound, "nobody by that id is waiting"));
            return;
        }
        let member = self.members.remove(&party).expect("checked above");
        for c in member.conns {
            self.connections.remove(&c);
            out.push(send(
                c,
                ServerMessage::LobbyDeclined {
                    room: self.id().clone(),
                },
            ));
        }
        self.append_for_staff(RoomEvent::LobbyLeft { party }, at, out);
    }

    fn send_back(&mut self, conn: ConnectionId, party: PartyId, at: i64, out: &mut Vec<Outbound>) {
        let Some(host) = self.host_party(conn, out) else {
            return;
        };
        let target = self
            .members
            .get(&party)
            .filter(|m| m.state == PresenceState::Admitted && !m.staff && party != host);
        let Some(member) = target else {
            out.push(self.error(conn, ErrorCode::NotFound, "no such participant"));
            return;
        };
        let conns: Vec<ConnectionId> = member.conns.iter().copied().collect();
        let role = member.role;
        if !member.holds_place() {
            // Away past the grace: the others were told they left then.
            // Sending them back only takes the admission away, so that
            // they knock again if they come back.
            self.members.remove(&party);
            return;
        }
        self.append_for_admitted(
            RoomEvent::ParticipantLeft {
                party: party.clone(),
            },
            at,
            out,
        );
        self.members.get_mut(&party).expect("checked above").state = PresenceState::Lobby;
        if conns.is_empty() {
            // Nobody to wait: an away participant sent back simply is no
            // longer a member and must knock again.
            self.members.remove(&party);
            return;
        }
        self.append_for_staff(
            RoomEvent::Knock {
                participant: Participant {
                    party: party.clone(),
                    role,
                },
            },
            at,
            out,
        );
        for c in conns {
            out.push(send(
                c,
                ServerMessage::LobbySentBack {
                    room: self.id().clone(),
                },
            ));
            out.push(send(
                c,
                ServerMessage::LobbyStatus {
                    room: self.id().clone(),
                    staff_present: true,
                },
            ));
        }
    }

    fn signal(&mut self, conn: ConnectionId, to: PartyId, signal: Signal, out: &mut Vec<Outbound>) {
        let Some(from) = self.admitted_party(conn, out) else {
            return;
        };
        // Signals go to the target's newest connection only: an offer
        // answered from two browser tabs would break the call.
        let target_conn = self
            .members
            .get(&to)
            .filter(|m| m.state == PresenceState::Admitted && to != from)
            .and_then(|m| m.conns.iter().next_back().copied());
        let Some(target_conn) = target_conn else {
            out.push(self.error(conn, ErrorCode::NotFound, "no such participant here"));
            return;
        };
        let room = self.id().clone();
        let message = match signal {
            Signal::Offer(sdp) => ServerMessage::SignalOffer { room, from, sdp },
            Signal::Answer(sdp) => ServerMessage::SignalAnswer { room, from, sdp },
            Signal::Ice(candidate) => ServerMessage::SignalIce {
                room,
                from,
                candidate,
            },
        };
        out.push(send(target_conn, message));
    }

    fn close(
        &mut self,
        reason: CloseReason,
        outcome: Option<BookingOutcome>,
        out: &mut Vec<Outbound>,
    ) {
        self.closed = true;
        for conn in self.connections.keys().copied().collect::<BTreeSet<_>>() {
            out.push(send(
                conn,
                ServerMessage::RoomClosed {
                    room: self.id().clone(),
                    reason,
                },
            ));
        }
        self.connections.clear();
        for member in self.members.values_mut() {
            member.conns.clear();
        }
        if let (Some(booking), Some(outcome)) = (&self.setup.booking, outcome) {
            out.push(Outbound::BookingOutcome {
                booking: booking.clone(),
                outcome,
            });
        }
    }

    /// Appends an event that every admitted party may see and delivers it to
    /// those present.
    fn append_for_admitted(&mut self, event: RoomEvent, at: i64, out: &mut Vec<Outbound>) -> Seq {
        let audience: Vec<PartyId> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == PresenceState::Admitted)
            .map(|(p, _)| p.clone())
            .collect();
        self.append(audience, event, at, out)
    }

    /// Appends an event only admitted staff may see, such as a knock.
    fn append_for_staff(&mut self, event: RoomEvent, at: i64, out: &mut Vec<Outbound>) -> Seq {
        let audience: Vec<PartyId> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == PresenceState::Admitted && m.staff)
            .map(|(p, _)| p.clone())
            .collect();
        self.append(audience, event, at, out)
    }

    fn append(
        &mut self,
        audience: Vec<PartyId>,
        event: RoomEvent,
        at: i64,
        out: &mut Vec<Outbound>,
    ) -> Seq {
        let room = self.setup.room.clone();
        let stored = self
            .history
            .append(&room, Audience::Parties(audience.clone()), event, at);
        let seq = stored.seq;
        let message = ServerMessage::Event {
            room,
            seq,
            event: stored.event.clone(),
        };
        out.push(Outbound::Persist(stored));
        for party in &audience {
            for conn in &self.members[party].conns {
                out.push(send(*conn, message.clone()));
            }
        }
        seq
    }

    fn replay(&self, conn: ConnectionId, party: &PartyId, last_seq: Seq, out: &mut Vec<Outbound>) {
        for stored in self.history.since(last_seq, party) {
            out.push(send(
                conn,
                ServerMessage::Event {
                    room: self.id().clone(),
                    seq: stored.seq,
                    event: stored.event.clone(),
                },
            ));
        }
    }

    fn send_joined(&self, conn: ConnectionId, party: &PartyId, out: &mut Vec<Outbound>) {
        let member = &self.members[party];
        let admitted = member.state == PresenceState::Admitted;
        let participants = if admitted {
            self.participants(PresenceState::Admitted)
        } else {
            Vec::new()
        };
        let lobby = if admitted && member.staff {
            self.participants(PresenceState::Lobby)
        } else {
            Vec::new()
        };
        out.push(send(
            conn,
            ServerMessage::Joined {
                room: self.id().clone(),
                state: member.state,
                // The lobby learns nothing about the room, not even its length.
                last_seq: if admitted { self.history.last_seq() } else { 0 },
                participants,
                lobby,
            },
        ));
    }

    fn send_lobby_status(&self, out: &mut Vec<Outbound>) {
        let staff_present = self.staff_present();
        for member in self
            .members
            .values()
            .filter(|m| m.state == PresenceState::Lobby)
        {
            for conn in &member.conns {
                out.push(send(
                    *conn,
                    ServerMessage::LobbyStatus {
                        room: self.id().clone(),
                        staff_present,
                    },
                ));
            }
        }
    }

    fn send_to_admitted(
        &self,
        except: Option<&PartyId>,
        message: &ServerMessage,
        out: &mut Vec<Outbound>,
    ) {
        for (party, member) in &self.members {
            if member.state == PresenceState::Admitted && Some(party) != except {
                for conn in &member.conns {
                    out.push(send(*conn, message.clone()));
                }
            }
        }
    }

    fn audit_staff_read(&self, party: &PartyId, out: &mut Vec<Outbound>) {
        if self.members.get(party).is_some_and(|m| m.staff) {
            out.push(Outbound::Audit(AuditEntry {
                actor: party.clone(),
                action: AuditAction::ReadMeeting,
                room: self.id().clone(),
                subject: self.setup.resident.clone(),
                on_behalf_of: self.setup.home_municipality.clone(),
            }));
        }
    }

    /// The party of an admitted connection, or an error to the connection.
    fn admitted_party(&self, conn: ConnectionId, out: &mut Vec<Outbound>) -> Option<PartyId> {
        match self.connections.get(&conn) {
            Some(party) if self.is_admitted(party) => Some(party.clone()),
            Some(_) => {
                out.push(self.error(conn, ErrorCode::NotAdmitted, "wait to be admitted"));
                None
            }
            None => {
                out.push(self.error(conn, ErrorCode::NotAdmitted, "join the room first"));
                None
            }
        }
    }

    /// The party of a connection that belongs to staff the room's access
    /// admits, who alone run the meeting.
    fn host_party(&self, conn: ConnectionId, out: &mut Vec<Outbound>) -> Option<PartyId> {
        let party = self.admitted_party(conn, out)?;
        if self.members[&party].staff && self.setup.staff_access.admits_party(&party) {
            Some(party)
        } else {
            out.push(self.error(conn, ErrorCode::Forbidden, "only staff may do this"));
            None
        }
    }

    fn participants(&self, state: PresenceState) -> Vec<Participant> {
        self.members
            .iter()
            .filter(|(_, m)| m.state == state && !m.conns.is_empty())
            .map(|(party, m)| Participant {
                party: party.clone(),
                role: m.role,
            })
            .collect()
    }

    /// Whether `party` takes one of the meeting's places: connected, or
    /// away within the grace, whose place is kept for their return.
    fn holds_place(&self, party: &PartyId) -> bool {
        self.members.get(party).is_some_and(Member::holds_place)
    }

    fn present_admitted_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.state == PresenceState::Admitted && m.holds_place())
            .count()
    }

    fn lobby_count(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.state == PresenceState::Lobby)
            .count()
    }

    fn staff_present(&self) -> bool {
        self.members
            .values()
            .any(|m| m.staff && m.state == PresenceState::Admitted && !m.conns.is_empty())
    }

    fn role_of_known(&self, party: &PartyId) -> Role {
        if *party == self.setup.resident {
            Role::Resident
        } else {
            Role::SocialWorker
        }
    }

    fn error(&self, conn: ConnectionId, code: ErrorCode, message: &str) -> Outbound {
        send(
            conn,
            ServerMessage::error(code, message, Some(self.id().clone())),
        )
    }
}

#[derive(Debug)]
struct Member {
    role: Role,
    /// Staff of the performing municipality, who may admit and end.
    staff: bool,
    state: PresenceState,
    conns: BTreeSet<ConnectionId>,
    acked: Seq,
    /// Set while an admitted party's connections are all gone without a
    /// `leave`: when its grace ends.
    away_until: Option<Instant>,
}

impl Member {
    fn holds_place(&self) -> bool {
        !self.conns.is_empty() || self.away_until.is_some()
    }
}

#[derive(Debug)]
struct Invitation {
    role: GuestRole,
    used: bool,
}

/// Who a room's history leaves admitted: a `participant_joined` admits, a
/// later knock (sent back to the lobby) or `lobby_left` (declined) undoes it.
/// Leaving does not: an admitted party stays admitted while away.
fn admitted_in(events: &[StoredEvent]) -> BTreeMap<PartyId, Role> {
    let mut admitted = BTreeMap::new();
    for stored in events {
        match &stored.event {
            RoomEvent::ParticipantJoined { participant } => {
                admitted.insert(participant.party.clone(), participant.role);
            }
            RoomEvent::Knock { participant } => {
                admitted.remove(&participant.party);
            }
            RoomEvent::LobbyLeft { party } => {
                admitted.remove(party);
            }
            _ => {}
        }
    }
    admitted
}

fn input_conn(input: &RoomInput) -> Option<ConnectionId> {
    use RoomInput::*;
    match input {
        Join { conn, .. }
        | Resume { conn, .. }
        | Ack { conn, .. }
        | Chat { conn, .. }
        | Typing { conn, .. }
        | Admit { conn, .. }
        | Decline { conn, .. }
        | SendBack { conn, .. }
        | Signal { conn, .. }
        | Invite { conn, .. }
        | End { conn } => Some(*conn),
        Leave { .. } | Disconnected { .. } | Tick => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::outbound::Outbound;

    const STAFF: u64 = 1;
    const RESIDENT: u64 = 2;
    const GUEST: u64 = 3;
    const OUTSIDER: u64 = 4;

    pub(crate) fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().unwrap()
    }

    fn setup(t0: Instant) -> MeetingSetup {
        MeetingSetup {
            room: RoomId::parse("booking:b1").unwrap(),
            booking: Some(BookingId::parse("b1").unwrap()),
            performing_municipality: MunicipalityCode::parse("0180").unwrap(),
            // The staff the caller's policy lets handle the booking; s9 is
            // not among them.
            staff_access: StaffAccess::only(["s1", "s2", "s3"].map(|s| StaffId::parse(s).unwrap())),
            staff: Some(StaffId::parse("s1").unwrap()),
            resident: PartyId::parse("resident:r1").unwrap(),
            home_municipality: Some(MunicipalityCode::parse("0181").unwrap()),
            starts_at: Some(t0 + Duration::from_secs(600)),
            no_show_grace: Duration::from_secs(900),
            pre_admitted: Vec::new(),
            clock: ClockAnchor {
                instant: t0,
                unix: 1_700_000_000,
            },
        }
    }

    fn staff_joins(conn: u64, id: &str) -> RoomInput {
        RoomInput::Join {
            conn: ConnectionId(conn),
            joiner: Joiner::Staff {
                id: StaffId::parse(id).unwrap(),
            },
        }
    }

    fn resident_joins(conn: u64, party: &str) -> RoomInput {
        RoomInput::Join {
            conn: ConnectionId(conn),
            joiner: Joiner::Resident {
                party: PartyId::parse(party).unwrap(),
            },
        }
    }

    fn party(s: &str) -> PartyId {
        PartyId::parse(s).unwrap()
    }

    /// Renders outbound commands as short lines, one each, so that a test
    /// states exactly what the room does.
    pub(crate) fn render(out: &[Outbound]) -> String {
        let mut lines = Vec::new();
        for o in out {
            lines.push(match o {
                Outbound::Send { to, message } => {
                    let mut value = serde_json::to_value(message).unwrap();
                    let map = value.as_object_mut().unwrap();
                    let kind = map.remove("type").unwrap();
                    map.remove("room");
                    let kind = kind.as_str().unwrap().to_owned();
                    if map.is_empty() {
                        format!("c{} {kind}", to.0)
                    } else {
                        format!("c{} {kind} {value}", to.0)
                    }
                }
                Outbound::Persist(e) => format!(
                    "persist {} {}",
                    e.seq,
                    serde_json::to_value(&e.event).unwrap()["kind"]
                        .as_str()
                        .unwrap()
                ),
                Outbound::PersistQueueEntry(r) => {
                    format!("persist-entry {} {}", r.room, r.state.as_str())
                }
                Outbound::IssueTurnCredentials { to, party, .. } => {
                    format!("turn c{} {party}", to.0)
                }
                Outbound::Audit(a) => format!("audit {} {}", a.actor, a.action.as_str()),
                Outbound::BookingOutcome { booking, outcome } => {
                    format!("outcome {booking} {outcome:?}")
                }
                Outbound::NotifyStaff {
                    staff, participant, ..
                } => format!(
                    "notify {} about {}",
                    staff.as_ref().map_or("-".into(), |s| s.to_string()),
                    participant.party
                ),
                Outbound::OpenAdHocMeeting(m) => format!("open-meeting {}", m.room),
                Outbound::ConversationClosed { room, .. } => format!("closed {room}"),
            });
        }
        lines.join("\n")
    }

    /// Runs `steps` against a fresh room. Each step is the seconds since the
    /// start, an input and the exact commands expected, as [`render`] writes
    /// them, or `-` for a step that only sets the scene.
    fn check(steps: &[(u64, RoomInput, &str)]) {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        for (i, (secs, input, expected)) in steps.iter().enumerate() {
            let out = room.handle(input.clone(), t0 + Duration::from_secs(*secs));
            if *expected == "-" {
                continue;
            }
            let got = render(&out);
            let expected = expected
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            assert_eq!(got, expected, "step {i}: {input:?}\n--- got:\n{got}\n");
        }
    }

    #[test]
    fn resident_waits_in_lobby_until_admitted() {
        check(&[
            (
                0,
                resident_joins(RESIDENT, "resident:r1"),
                r#"
                persist 1 knock
                notify s1 about resident:r1
                c2 joined {"last_seq":0,"participants":[],"state":"lobby"}
                c2 lobby.status {"staff_present":false}
                "#,
            ),
            (
                1,
                RoomInput::Chat {
                    conn: ConnectionId(RESIDENT),
                    client_id: id("m1"),
                    text: "hej".into(),
                },
                r#"c2 error {"code":"not_admitted","message":"wait to be admitted"}"#,
            ),
            (
                2,
                staff_joins(STAFF, "s1"),
                r#"
                persist 2 participant_joined
                c1 event {"event":{"kind":"participant_joined","participant":{"party":"staff:s1","role":"social_worker"}},"seq":2}
                c2 lobby.status {"staff_present":true}
                c1 joined {"last_seq":2,"lobby":[{"party":"resident:r1","role":"resident"}],"participants":[{"party":"staff:s1","role":"social_worker"}],"state":"admitted"}
                audit staff:s1 meeting.read
                turn c1 staff:s1
                "#,
            ),
            (
                3,
                RoomInput::Admit {
                    conn: ConnectionId(STAFF),
                    party: party("resident:r1"),
                },
                r#"
                c2 lobby.admitted
                persist 3 participant_joined
                c2 event {"event":{"kind":"participant_joined","participant":{"party":"resident:r1","role":"resident"}},"seq":3}
                c1 event {"event":{"kind":"participant_joined","participant":{"party":"resident:r1","role":"resident"}},"seq":3}
                c2 joined {"last_seq":3,"participants":[{"party":"resident:r1","role":"resident"},{"party":"staff:s1","role":"social_worker"}],"state":"admitted"}
                turn c2 resident:r1
                "#,
            ),
            (
                4,
                RoomInput::Chat {
                    conn: ConnectionId(RESIDENT),
                    client_id: id("m1"),
                    text: "hej".into(),
                },
                r#"
                persist 4 chat
                c2 event {"event":{"client_id":"m1","from":"resident:r1","kind":"chat","role":"resident","sent_at":1700000004,"text":"hej"},"seq":4}
                c1 event {"event":{"client_id":"m1","from":"resident:r1","kind":"chat","role":"resident","sent_at":1700000004,"text":"hej"},"seq":4}
                c2 chat.stored {"client_id":"m1","seq":4}
                "#,
            ),
            // A retried send is stored once and answered with the same seq.
            (
                5,
                RoomInput::Chat {
                    conn: ConnectionId(RESIDENT),
                    client_id: id("m1"),
                    text: "hej".into(),
                },
                r#"c2 chat.stored {"client_id":"m1","seq":4}"#,
            ),
            (
                6,
                RoomInput::Ack {
                    conn: ConnectionId(STAFF),
                    seq: 4,
                },
                r#"c2 chat.read {"party":"staff:s1","seq":4}"#,
            ),
            (
                7,
                RoomInput::End {
                    conn: ConnectionId(RESIDENT),
                },
                r#"c2 error {"code":"forbidden","message":"only staff may do this"}"#,
            ),
            (
                8,
                RoomInput::End {
                    conn: ConnectionId(STAFF),
                },
                r#"
                persist 5 ended
                c2 event {"event":{"by":"staff:s1","kind":"ended"},"seq":5}
                c1 event {"event":{"by":"staff:s1","kind":"ended"},"seq":5}
                c1 room.closed {"reason":"meeting_ended"}
                c2 room.closed {"reason":"meeting_ended"}
                outcome b1 Completed
                "#,
            ),
            (
                9,
                resident_joins(RESIDENT, "resident:r1"),
                r#"c2 error {"code":"not_found","message":"no such room"}"#,
            ),
        ]);
    }

    #[test]
    fn outsiders_and_other_municipalities_are_not_let_in() {
        check(&[
            (
                0,
                staff_joins(OUTSIDER, "s9"),
                "c4 error {\"code\":\"not_found\",\"message\":\"no such room\"}\naudit staff:s9 meeting.enter",
            ),
            (
                0,
                resident_joins(OUTSIDER, "resident:r2"),
                r#"c4 error {"code":"not_found","message":"no such room"}"#,
            ),
            (
                0,
                RoomInput::Join {
                    conn: ConnectionId(GUEST),
                    joiner: Joiner::Guest {
                        invitation: id("forged"),
                    },
                },
                r#"c3 error {"code":"invitation_invalid","message":"this guest link is unknown or already used"}"#,
            ),
        ]);
    }

    #[test]
    fn signals_flow_only_between_admitted_participants() {
        let offer = |conn: u64, to: &str| RoomInput::Signal {
            conn: ConnectionId(conn),
            to: party(to),
            signal: Signal::Offer("v=0".into()),
        };
        check(&[
            (0, staff_joins(STAFF, "s1"), "persist 1 participant_joined\nc1 event {\"event\":{\"kind\":\"participant_joined\",\"participant\":{\"party\":\"staff:s1\",\"role\":\"social_worker\"}},\"seq\":1}\nc1 joined {\"last_seq\":1,\"participants\":[{\"party\":\"staff:s1\",\"role\":\"social_worker\"}],\"state\":\"admitted\"}\naudit staff:s1 meeting.read\nturn c1 staff:s1"),
            (
                1,
                resident_joins(RESIDENT, "resident:r1"),
                r#"
                persist 2 knock
                c1 event {"event":{"kind":"knock","participant":{"party":"resident:r1","role":"resident"}},"seq":2}
                c2 joined {"last_seq":0,"participants":[],"state":"lobby"}
                c2 lobby.status {"staff_present":true}
                "#,
            ),
            // Neither side can reach the other while the resident waits.
            (
                2,
                offer(STAFF, "resident:r1"),
                r#"c1 error {"code":"not_found","message":"no such participant here"}"#,
            ),
            (
                2,
                offer(RESIDENT, "staff:s1"),
                r#"c2 error {"code":"not_admitted","message":"wait to be admitted"}"#,
            ),
            (
                3,
                RoomInput::Admit {
                    conn: ConnectionId(STAFF),
                    party: party("resident:r1"),
                },
                r#"
                c2 lobby.admitted
                persist 3 participant_joined
                c2 event {"event":{"kind":"participant_joined","participant":{"party":"resident:r1","role":"resident"}},"seq":3}
                c1 event {"event":{"kind":"participant_joined","participant":{"party":"resident:r1","role":"resident"}},"seq":3}
                c2 joined {"last_seq":3,"participants":[{"party":"resident:r1","role":"resident"},{"party":"staff:s1","role":"social_worker"}],"state":"admitted"}
                turn c2 resident:r1
                "#,
            ),
            (
                4,
                offer(RESIDENT, "staff:s1"),
                r#"c1 signal.offer {"from":"resident:r1","sdp":"v=0"}"#,
            ),
            // An ICE restart after a network change is a new offer.
            (
                5,
                offer(STAFF, "resident:r1"),
                r#"c2 signal.offer {"from":"staff:s1","sdp":"v=0"}"#,
            ),
            (
                6,
                RoomInput::SendBack {
                    conn: ConnectionId(STAFF),
                    party: party("resident:r1"),
                },
                r#"
                persist 4 participant_left
                c2 event {"event":{"kind":"participant_left","party":"resident:r1"},"seq":4}
                c1 event {"event":{"kind":"participant_left","party":"resident:r1"},"seq":4}
                persist 5 knock
                c1 event {"event":{"kind":"knock","participant":{"party":"resident:r1","role":"resident"}},"seq":5}
                c2 lobby.sent_back
                c2 lobby.status {"staff_present":true}
                "#,
            ),
            (
                7,
                offer(RESIDENT, "staff:s1"),
                r#"c2 error {"code":"not_admitted","message":"wait to be admitted"}"#,
            ),
            (
                8,
                RoomInput::Decline {
                    conn: ConnectionId(STAFF),
                    party: party("resident:r1"),
                },
                r#"
                c2 lobby.declined
                persist 6 lobby_left
                c1 event {"event":{"kind":"lobby_left","party":"resident:r1"},"seq":6}
                "#,
            ),
        ]);
    }

    #[test]
    fn staff_run_the_room_only_while_its_access_admits_them() {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        room.handle(staff_joins(STAFF, "s1"), t0);
        room.handle(resident_joins(RESIDENT, "resident:r1"), t0);
        // The caller's policy no longer lets s1 handle the booking.
        room.set_staff_access(StaffAccess::only([id("s2")]));
        assert!(!room.admits_staff(&id("s1")));
        let admit = RoomInput::Admit {
            conn: ConnectionId(STAFF),
            party: party("resident:r1"),
        };
        let out = room.handle(admit.clone(), t0);
        assert_eq!(
            render(&out),
            r#"c1 error {"code":"forbidden","message":"only staff may do this"}"#
        );
        assert!(!room.is_admitted(&party("resident:r1")));
        // Another staff member whom it admits runs the meeting.
        room.handle(staff_joins(10, "s2"), t0);
        room.handle(
            RoomInput::Admit {
                conn: ConnectionId(10),
                party: party("resident:r1"),
            },
            t0,
        );
        assert!(room.is_admitted(&party("resident:r1")));
        // And the refusal of one it does not admit is the missing room's
        // answer, with an audit entry.
        assert_eq!(
            render(&room.refuse_staff(ConnectionId(OUTSIDER), &id("s1"))),
            "c4 error {\"code\":\"not_found\",\"message\":\"no such room\"}\naudit staff:s1 meeting.enter"
        );
    }

    #[test]
    fn guest_links_work_once_and_admission_is_still_needed() {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        room.handle(staff_joins(STAFF, "s1"), t0);
        let out = room.handle(
            RoomInput::Invite {
                conn: ConnectionId(STAFF),
                role: GuestRole::Interpreter,
                token: id("tok1"),
            },
            t0,
        );
        assert_eq!(
            render(&out),
            r#"c1 meeting.invited {"role":"interpreter","token":"tok1"}"#
        );
        let guest = |conn| RoomInput::Join {
            conn: ConnectionId(conn),
            joiner: Joiner::Guest {
                invitation: id("tok1"),
            },
        };
        let out = room.handle(guest(GUEST), t0);
        assert!(
            render(&out).contains(r#"c3 joined {"last_seq":0,"participants":[],"state":"lobby"}"#)
        );
        assert!(!room.is_admitted(&party("guest:tok1")));
        // The link is spent: a second person with it is refused.
        let out = room.handle(guest(OUTSIDER), t0);
        assert!(
            render(&out).contains("invitation_invalid"),
            "{}",
            render(&out)
        );
        let out = room.handle(
            RoomInput::Admit {
                conn: ConnectionId(STAFF),
                party: party("guest:tok1"),
            },
            t0,
        );
        assert!(render(&out).contains(r#"{"party":"guest:tok1","role":"interpreter"}"#));
        assert!(room.is_admitted(&party("guest:tok1")));
        assert!(
            out.iter().any(|o| matches!(
                o,
                Outbound::Audit(AuditEntry { action: AuditAction::AdmitGuest, actor, .. })
                    if actor.as_str() == "staff:s1"
            )),
            "the guest's admission is audited: {}",
            render(&out)
        );
    }

    #[test]
    fn at_most_four_participants() {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        room.handle(staff_joins(STAFF, "s1"), t0);
        room.handle(staff_joins(10, "s2"), t0);
        room.handle(resident_joins(RESIDENT, "resident:r1"), t0);
        room.handle(
            RoomInput::Admit {
                conn: ConnectionId(STAFF),
                party: party("resident:r1"),
            },
            t0,
        );
        for (conn, token) in [(20, "g1"), (21, "g2")] {
            room.handle(
                RoomInput::Invite {
                    conn: ConnectionId(STAFF),
                    role: GuestRole::Interpreter,
                    token: id(token),
                },
                t0,
            );
            room.handle(
                RoomInput::Join {
                    conn: ConnectionId(conn),
                    joiner: Joiner::Guest {
                        invitation: id(token),
                    },
                },
                t0,
            );
        }
        let admit = |p: &str| RoomInput::Admit {
            conn: ConnectionId(STAFF),
            party: party(p),
        };
        let out = room.handle(admit("guest:g1"), t0);
        assert!(room.is_admitted(&party("guest:g1")), "{}", render(&out));
        let out = room.handle(admit("guest:g2"), t0);
        assert_eq!(
            render(&out),
            r#"c1 error {"code":"room_full","message":"the meeting is full"}"#
        );
        // A fifth staff member of the municipality is refused too.
        let out = room.handle(staff_joins(30, "s3"), t0);
        assert!(render(&out).contains("room_full"));
    }

    #[test]
    fn resume_replays_missed_events_in_order_without_earlier_ones() {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        room.handle(staff_joins(STAFF, "s1"), t0);
        room.handle(resident_joins(RESIDENT, "resident:r1"), t0);
        room.handle(
            RoomInput::Admit {
                conn: ConnectionId(STAFF),
                party: party("resident:r1"),
            },
            t0,
        );
        // The resident's network drops; staff keep writing.
        room.handle(
            RoomInput::Leave {
                conn: ConnectionId(RESIDENT),
            },
            t0,
        );
        for n in 0..2 {
            room.handle(
                RoomInput::Chat {
                    conn: ConnectionId(STAFF),
                    client_id: id(&format!("s{n}")),
                    text: format!("message {n}"),
                },
                t0,
            );
        }
        // Back on another connection: admitted again without the lobby.
        let out = room.handle(resident_joins(5, "resident:r1"), t0);
        assert!(
            render(&out).contains(r#""state":"admitted""#),
            "{}",
            render(&out)
        );
        let out = room.handle(
            RoomInput::Resume {
                conn: ConnectionId(5),
                last_seq: 3,
            },
            t0,
        );
        let seqs: Vec<Seq> = out
            .iter()
            .filter_map(|o| match o {
                Outbound::Send {
                    message: ServerMessage::Event { seq, .. },
                    ..
                } => Some(*seq),
                _ => None,
            })
            .collect();
        // Seq 4 is the resident's own departure, which they were entitled to.
        assert_eq!(seqs, vec![4, 5, 6, 7]);
    }

    /// A meeting with staff s1 on c1 and the resident admitted on c2, as
    /// the first steps of a [`check`].
    fn in_a_meeting() -> Vec<(u64, RoomInput, &'static str)> {
        vec![
            (0, staff_joins(STAFF, "s1"), "-"),
            (0, resident_joins(RESIDENT, "resident:r1"), "-"),
            (
                0,
                RoomInput::Admit {
                    conn: ConnectionId(STAFF),
                    party: party("resident:r1"),
                },
                "-",
            ),
        ]
    }

    fn dropped(conn: u64) -> RoomInput {
        RoomInput::Disconnected {
            conn: ConnectionId(conn),
        }
    }

    #[test]
    fn a_dropped_participant_is_away_and_back_within_the_grace_without_the_lobby() {
        let mut steps = in_a_meeting();
        steps.extend([
            // The resident's network drops: the others are told live, and
            // nothing is recorded yet.
            (
                10,
                dropped(RESIDENT),
                r#"c1 participant.away {"grace_secs":30,"party":"resident:r1"}"#,
            ),
            (39, RoomInput::Tick, ""),
            // Back on a new connection 29 s later: no lobby, no new
            // arrival in the history, fresh TURN credentials.
            (
                39,
                resident_joins(5, "resident:r1"),
                r#"
                c1 participant.back {"party":"resident:r1"}
                c5 joined {"last_seq":3,"participants":[{"party":"resident:r1","role":"resident"},{"party":"staff:s1","role":"social_worker"}],"state":"admitted"}
                turn c5 resident:r1
                "#,
            ),
            // The grace ended with them back: nothing to record.
            (41, RoomInput::Tick, ""),
        ]);
        check(&steps);
    }

    /// A meeting whose resident's connection dropped and whose away grace
    /// then ran out: the others were told they left.
    fn away_past_the_grace() -> Vec<(u64, RoomInput, &'static str)> {
        let mut steps = in_a_meeting();
        steps.extend([
            (
                10,
                dropped(RESIDENT),
                r#"c1 participant.away {"grace_secs":30,"party":"resident:r1"}"#,
            ),
            (
                40,
                RoomInput::Tick,
                r#"
                persist 4 participant_left
                c1 event {"event":{"kind":"participant_left","party":"resident:r1"},"seq":4}
                "#,
            ),
        ]);
        steps
    }

    #[test]
    fn a_participant_away_past_the_grace_has_left_and_comes_back_as_an_arrival() {
        let mut steps = away_past_the_grace();
        steps.extend([
            (50, RoomInput::Tick, ""),
            // Still admitted (no lobby), but an arrival for the others.
            (
                60,
                resident_joins(5, "resident:r1"),
                r#"
                persist 5 participant_joined
                c5 event {"event":{"kind":"participant_joined","participant":{"party":"resident:r1","role":"resident"}},"seq":5}
                c1 event {"event":{"kind":"participant_joined","participant":{"party":"resident:r1","role":"resident"}},"seq":5}
                c5 joined {"last_seq":5,"participants":[{"party":"resident:r1","role":"resident"},{"party":"staff:s1","role":"social_worker"}],"state":"admitted"}
                turn c5 resident:r1
                "#,
            ),
        ]);
        check(&steps);
    }

    #[test]
    fn a_participant_sent_back_after_the_grace_has_left_once_and_knocks_again() {
        let mut steps = away_past_the_grace();
        steps.extend([
            // Found by the property test: no second `participant_left`.
            (
                45,
                RoomInput::SendBack {
                    conn: ConnectionId(1),
                    party: PartyId::parse("resident:r1").unwrap(),
                },
                "",
            ),
        ]);
        check(&steps);
    }

    #[test]
    fn leave_leaves_at_once_and_a_dropped_staff_member_is_away_for_the_lobby_too() {
        let mut steps = in_a_meeting();
        steps.extend([
            (
                10,
                RoomInput::Leave {
                    conn: ConnectionId(RESIDENT),
                },
                r#"
                persist 4 participant_left
                c1 event {"event":{"kind":"participant_left","party":"resident:r1"},"seq":4}
                "#,
            ),
            (100, RoomInput::Tick, ""),
            (100, resident_joins(5, "resident:r1"), "-"),
            // Staff drop: the resident is told, and the waiting room would
            // hear that no staff member is here.
            (
                110,
                dropped(STAFF),
                r#"c5 participant.away {"grace_secs":30,"party":"staff:s1"}"#,
            ),
        ]);
        check(&steps);
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        room.handle(staff_joins(STAFF, "s1"), t0);
        room.handle(dropped(STAFF), t0 + Duration::from_secs(5));
        assert_eq!(
            room.next_deadline(),
            Some(t0 + Duration::from_secs(5) + AWAY_GRACE),
            "the grace's end is the room's next deadline, before the no-show"
        );
    }

    #[test]
    fn a_resident_who_never_comes_is_a_no_show_after_the_grace_period() {
        check(&[
            (0, staff_joins(STAFF, "s1"), "persist 1 participant_joined\nc1 event {\"event\":{\"kind\":\"participant_joined\",\"participant\":{\"party\":\"staff:s1\",\"role\":\"social_worker\"}},\"seq\":1}\nc1 joined {\"last_seq\":1,\"participants\":[{\"party\":\"staff:s1\",\"role\":\"social_worker\"}],\"state\":\"admitted\"}\naudit staff:s1 meeting.read\nturn c1 staff:s1"),
            // Starts at 600 s, grace 900 s: nothing happens before 1500 s.
            (1499, RoomInput::Tick, ""),
            (
                1500,
                RoomInput::Tick,
                r#"
                c1 room.closed {"reason":"no_show"}
                outcome b1 NoShow
                "#,
            ),
            (1600, RoomInput::Tick, ""),
        ]);
    }

    #[test]
    fn someone_admitted_later_does_not_see_what_was_said_before() {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        room.handle(staff_joins(STAFF, "s1"), t0);
        room.handle(
            RoomInput::Chat {
                conn: ConnectionId(STAFF),
                client_id: id("before"),
                text: "a note before the resident came".into(),
            },
            t0,
        );
        room.handle(resident_joins(RESIDENT, "resident:r1"), t0);
        room.handle(
            RoomInput::Admit {
                conn: ConnectionId(STAFF),
                party: party("resident:r1"),
            },
            t0,
        );
        let out = room.handle(
            RoomInput::Resume {
                conn: ConnectionId(RESIDENT),
                last_seq: 0,
            },
            t0,
        );
        let got = render(&out);
        assert!(!got.contains("a note before"), "{got}");
        assert!(got.contains("participant_joined"), "{got}");
    }

    #[test]
    fn a_resident_who_came_is_no_no_show() {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        room.handle(resident_joins(RESIDENT, "resident:r1"), t0);
        room.handle(
            RoomInput::Leave {
                conn: ConnectionId(RESIDENT),
            },
            t0,
        );
        assert_eq!(room.next_deadline(), None);
        let out = room.handle(RoomInput::Tick, t0 + Duration::from_secs(10_000));
        assert!(out.is_empty());
    }
}
