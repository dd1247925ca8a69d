//! The chat pre-assessment queue as a sans-IO state machine.
//!
//! A resident opens a chat for a service; the caller has already asked the
//! `booking` crate which municipalities' staff may perform `pre_assessment`
//! for that resident and passes the answer in. Only eligible staff ever hear
//! of the chat. Staff pick chats up by hand (the first claim wins) or the
//! queue assigns them to the least-loaded eligible staff member. A chat whose
//! staff member goes offline or does not answer in time returns to its
//! original place.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::history::{Audience, History, StoredEvent};
use crate::ids::{
    ClientMsgId, ConnectionId, MunicipalityCode, PartyId, RoomId, Seq, ServiceId, StaffId,
};
use crate::outbound::{send, AdHocMeeting, AuditAction, AuditEntry, Outbound};
use crate::protocol::{
    ChatOutcome, CloseReason, ErrorCode, OfferedTime, Participant, PresenceState, QueueEntryView,
    Role, RoomEvent, ServerMessage, UnassignReason,
};
use crate::room::ClockAnchor;
pub use crate::store::{EntryState, QueueEntryRecord};

/// How chats reach staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMode {
    /// Staff see the queue and claim chats.
    Manual,
    /// The queue gives each chat to the least-loaded eligible staff member.
    Automatic,
}

/// One set of the queue's rules, passed in by the caller from its
/// configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    pub mode: QueueMode,
    /// How long staff have to answer (write or accept) a chat they were given
    /// before it returns to the queue.
    pub answer_timeout: Duration,
    /// How long a waiting chat stays after its resident's last connection
    /// closed, so that a reload keeps the place but an abandoned tab does not.
    pub abandon_after: Duration,
    /// The average time one chat takes, for the estimated wait.
    pub average_chat: Duration,
}

/// The queue's rules for every municipality: the defaults, and those of
/// the municipalities that set their own. A chat follows the rules of its
/// resident's home municipality, which is responsible for it: how it
/// reaches staff, how long they have to answer, when an abandoned chat
/// goes, and the estimated wait its resident is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRules {
    pub defaults: QueueSettings,
    pub municipalities: BTreeMap<MunicipalityCode, QueueSettings>,
}

impl QueueRules {
    /// The rules of chats whose resident lives in `home`.
    pub fn of(&self, home: &MunicipalityCode) -> &QueueSettings {
        self.municipalities.get(home).unwrap_or(&self.defaults)
    }
}

impl From<QueueSettings> for QueueRules {
    /// The same rules everywhere.
    fn from(defaults: QueueSettings) -> Self {
        QueueRules {
            defaults,
            municipalities: BTreeMap::new(),
        }
    }
}

/// A staff member as the caller knows them from the sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffProfile {
    pub id: StaffId,
    pub municipality: MunicipalityCode,
    /// The services this staff member may handle.
    pub services: BTreeSet<ServiceId>,
}

/// A new chat, with the eligibility the caller computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConversation {
    pub room: RoomId,
    pub service: ServiceId,
    pub home_municipality: MunicipalityCode,
    /// `resident:<id>` or `anonymous:<room>`.
    pub resident: PartyId,
    pub anonymous: bool,
    /// Municipalities whose staff may perform the pre-assessment for this
    /// resident under the policy. Staff of any other municipality never see
    /// the chat.
    pub eligible_municipalities: BTreeSet<MunicipalityCode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueInput {
    /// A staff console connected. Staff see the queue at once but take
    /// chats only after saying they are available.
    StaffConnected {
        conn: ConnectionId,
        staff: StaffProfile,
    },
    Availability {
        conn: ConnectionId,
        available: bool,
        max_chats: u32,
    },
    Open {
        conn: ConnectionId,
        conversation: NewConversation,
    },
    /// A connection of the resident or the assigned staff member attaches to
    /// the chat again, after a reload or reconnect.
    Join {
        conn: ConnectionId,
        party: PartyId,
        room: RoomId,
    },
    /// A connection closed; it leaves every chat and the staff console.
    Disconnected {
        conn: ConnectionId,
    },
    Leave {
        conn: ConnectionId,
        room: RoomId,
    },
    Claim {
        conn: ConnectionId,
        room: RoomId,
    },
    Accept {
        conn: ConnectionId,
        room: RoomId,
    },
    Transfer {
        conn: ConnectionId,
        room: RoomId,
        to: StaffId,
    },
    Chat {
        conn: ConnectionId,
        room: RoomId,
        client_id: ClientMsgId,
        text: String,
    },
    Typing {
        conn: ConnectionId,
        room: RoomId,
        typing: bool,
    },
    Ack {
        conn: ConnectionId,
        room: RoomId,
        seq: Seq,
    },
    Resume {
        conn: ConnectionId,
        room: RoomId,
        last_seq: Seq,
    },
    OfferTimes {
        conn: ConnectionId,
        room: RoomId,
        client_id: ClientMsgId,
        times: Vec<OfferedTime>,
    },
    /// Staff open video; the caller supplies the new room's id.
    EscalateVideo {
        conn: ConnectionId,
        room: RoomId,
        meeting_room: RoomId,
    },
    /// Staff must say how the chat ended; a resident's outcome is ignored.
    Close {
        conn: ConnectionId,
        room: RoomId,
        outcome: Option<ChatOutcome>,
    },
    /// Time passed: answer timeouts and abandoned chats.
    Tick,
}

/// The pre-assessment queue and every open chat conversation.
#[derive(Debug)]
pub struct Queue {
    rules: QueueRules,
    clock: ClockAnchor,
    next_ticket: i64,
    conversations: BTreeMap<RoomId, Conversation>,
    staff: BTreeMap<StaffId, StaffState>,
}

impl Queue {
    pub fn new(rules: impl Into<QueueRules>, clock: ClockAnchor) -> Self {
        Queue {
            rules: rules.into(),
            clock,
            next_ticket: 1,
            conversations: BTreeMap::new(),
            staff: BTreeMap::new(),
        }
    }

    /// Puts back an open chat after a restart. Nobody is connected after a
    /// restart, so an assigned chat waits again at its original place.
    pub fn restore(&mut self, record: QueueEntryRecord, events: Vec<StoredEvent>, now: Instant) {
        if record.state == EntryState::Closed {
            return;
        }
        self.next_ticket = self.next_ticket.max(record.ticket + 1);
        self.conversations.insert(
            record.room.clone(),
            Conversation {
                record: QueueEntryRecord {
                    state: EntryState::Waiting,
                    ..record
                },
                history: History::restore(events),
                assigned_at: now,
                answered: false,
                passed_by: BTreeSet::new(),
                resident_conns: BTreeSet::new(),
                staff_conns: BTreeSet::new(),
                resident_gone_since: Some(now),
                acked: BTreeMap::new(),
                last_status: None,
            },
        );
    }

    /// Replaces a conversation's in-memory history with the stored one,
    /// after a failed write left the two apart.
    pub fn reload_history(&mut self, room: &RoomId, events: Vec<StoredEvent>) {
        if let Some(conversation) = self.conversations.get_mut(room) {
            conversation.history = History::restore(events);
        }
    }

    /// Every open chat, waiting or assigned.
    pub fn records(&self) -> impl Iterator<Item = &QueueEntryRecord> {
        self.conversations.values().map(|c| &c.record)
    }

    /// Whether `room` is a chat conversation of this queue.
    pub fn contains(&self, room: &RoomId) -> bool {
        self.conversations.contains_key(room)
    }

    /// The stored form of a conversation, if it is open.
    pub fn record(&self, room: &RoomId) -> Option<&QueueEntryRecord> {
        self.conversations.get(room).map(|c| &c.record)
    }

    pub fn last_seq(&self, room: &RoomId) -> Option<Seq> {
        self.conversations.get(room).map(|c| c.history.last_seq())
    }

    /// The colleagues `staff` may hand `room` to now: online, available,
    /// eligible for it and under their limit, by id. `None` unless `room`
    /// is open and assigned to `staff`: nobody else may ask.
    pub fn transfer_candidates(&self, room: &RoomId, staff: &StaffId) -> Option<Vec<StaffId>> {
        let conversation = self.conversations.get(room)?;
        if conversation.record.state != EntryState::Assigned(staff.clone()) {
            return None;
        }
        Some(
            self.staff
                .values()
                .filter(|s| {
                    s.profile.id != *staff
                        && s.is_online()
                        && is_eligible(s, &conversation.record)
                        && s.load(&self.conversations) < s.max_chats as usize
                })
                .map(|s| s.profile.id.clone())
                .collect(),
        )
    }

    /// When [`QueueInput::Tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conversations
            .values()
            .filter_map(|c| match &c.record.state {
                EntryState::Assigned(_) if !c.answered => {
                    Some(c.assigned_at + self.rules_of(c).answer_timeout)
                }
                EntryState::Waiting => c
                    .resident_gone_since
                    .map(|t| t + self.rules_of(c).abandon_after),
                _ => None,
            })
            .min()
    }

    pub fn handle(&mut self, input: QueueInput, now: Instant) -> Vec<Outbound> {
        let mut out = Vec::new();
        let at = self.clock.unix_at(now);
        match input {
            QueueInput::StaffConnected { conn, staff } => {
                self.staff_connected(conn, staff, &mut out)
            }
            QueueInput::Availability {
                conn,
                available,
                max_chats,
            } => {
                if let Some(staff) = self.staff_of_conn(conn) {
                    let state = self.staff.get_mut(&staff).expect("known staff");
                    state.available = available;
                    state.max_chats = max_chats;
                    self.rebalance(at, now, &mut out);
                } else {
                    out.push(error(conn, ErrorCode::Forbidden, "staff only", None));
                }
            }
            QueueInput::Open { conn, conversation } => {
                self.open(conn, conversation, at, now, &mut out)
            }
            QueueInput::Join { conn, party, room } => self.join(conn, party, room, &mut out),
            QueueInput::Disconnected { conn } => self.disconnected(conn, now, &mut out),
            QueueInput::Leave { conn, room } => self.leave(conn, room, &mut out),
            QueueInput::Claim { conn, room } => self.claim(conn, room, at, now, &mut out),
            QueueInput::Accept { conn, room } => {
                if self.assigned_staff_conn(conn, &room, &mut out).is_some() {
                    self.conversations.get_mut(&room).expect("checked").answered = true;
                }
            }
            QueueInput::Transfer { conn, room, to } => {
                self.transfer(conn, room, to, at, now, &mut out)
            }
            QueueInput::Chat {
                conn,
                room,
                client_id,
                text,
            } => self.chat(conn, room, client_id, text, at, &mut out),
            QueueInput::Typing { conn, room, typing } => {
                if let Some(party) = self.member_party(conn, &room, &mut out) {
                    let message = ServerMessage::ChatTyping {
                        room: room.clone(),
                        party: party.clone(),
                        typing,
                    };
                    self.send_to_members(&room, Some(&party), &message, &mut out);
                }
            }
            QueueInput::Ack { conn, room, seq } => self.ack(conn, room, seq, &mut out),
            QueueInput::Resume {
                conn,
                room,
                last_seq,
            } => {
                if let Some(party) = self.member_party(conn, &room, &mut out) {
                    self.audit_if_staff(&party, &room, AuditAction::ReadConversation, &mut out);
                    let conversation = &self.conversations[&room];
                    for stored in conversation.history.since(last_seq, &party) {
                        out.push(send(
                            conn,
                            ServerMessage::Event {
                                room: room.clone(),
                                seq: stored.seq,
                                event: stored.event.clone(),
                            },
                        ));
                    }
                }
            }
            QueueInput::OfferTimes {
                conn,
                room,
                client_id,
                times,
            } => {
                if let Some(staff) = self.assigned_staff_conn(conn, &room, &mut out) {
                    let from = PartyId::staff(&staff);
                    let conversation = self.conversations.get_mut(&room).expect("checked");
                    conversation.answered = true;
                    let seq = match conversation.history.chat_seq(&from, &client_id) {
                        Some(seq) => seq,
                        None => self.append(
                            &room,
                            RoomEvent::TimesOffered {
                                from,
                                client_id: client_id.clone(),
                                times,
                            },
                            at,
                            &mut out,
                        ),
                    };
                    out.push(send(
                        conn,
                        ServerMessage::ChatStored {
                            room,
                            client_id,
                            seq,
                        },
                    ));
                }
            }
            QueueInput::EscalateVideo {
                conn,
                room,
                meeting_room,
            } => {
                if let Some(staff) = self.assigned_staff_conn(conn, &room, &mut out) {
                    let conversation = self.conversations.get_mut(&room).expect("checked");
                    conversation.answered = true;
                    let meeting = AdHocMeeting {
                        room: meeting_room.clone(),
                        conversation: room.clone(),
                        performing_municipality: self.staff[&staff].profile.municipality.clone(),
                        staff,
                        resident: conversation.record.resident.clone(),
                        home_municipality: conversation.record.home_municipality.clone(),
                    };
                    // The room must exist before anyone hears of it.
                    out.push(Outbound::OpenAdHocMeeting(meeting));
                    self.append(&room, RoomEvent::VideoOpened { meeting_room }, at, &mut out);
                }
            }
            QueueInput::Close {
                conn,
                room,
                outcome,
            } => self.close(conn, room, outcome, at, now, &mut out),
            QueueInput::Tick => self.tick(now, &mut out),
        }
        out
    }

    fn staff_connected(
        &mut self,
        conn: ConnectionId,
        profile: StaffProfile,
        out: &mut Vec<Outbound>,
    ) {
        let id = profile.id.clone();
        let state = self
            .staff
            .entry(profile.id.clone())
            .or_insert_with(|| StaffState {
                profile: profile.clone(),
                conns: BTreeSet::new(),
                available: false,
                max_chats: 0,
            });
        state.profile = profile;
        state.conns.insert(conn);
        let state = &self.staff[&id];
        let mut waiting: Vec<&Conversation> = self
            .waiting()
            .filter(|conversation| is_eligible(state, &conversation.record))
            .collect();
        // In the order the queue serves them.
        waiting.sort_by_key(|conversation| conversation.record.ticket);
        if !waiting.is_empty() {
            let entries = waiting.into_iter().map(Conversation::view).collect();
            out.push(send(conn, ServerMessage::QueueSnapshot { entries }));
        }
        for conversation in self.conversations.values_mut() {
            if conversation.record.state == EntryState::Assigned(id.clone()) {
                conversation.staff_conns.insert(conn);
                out.push(send(
                    conn,
                    ServerMessage::QueueAssigned {
                        entry: conversation.view(),
                    },
                ));
            }
        }
    }

    fn open(
        &mut self,
        conn: ConnectionId,
        new: NewConversation,
        at: i64,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        if self.conversations.contains_key(&new.room) {
            out.push(error(
                conn,
                ErrorCode::InvalidState,
                "this chat is already open",
                Some(new.room),
            ));
            return;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let record = QueueEntryRecord {
            room: new.room.clone(),
            ticket,
            service: new.service,
            home_municipality: new.home_municipality,
            resident: new.resident,
            anonymous: new.anonymous,
            eligible_municipalities: new.eligible_municipalities,
            state: EntryState::Waiting,
            enqueued_at: at,
        };
        let room = record.room.clone();
        out.push(Outbound::PersistQueueEntry(record.clone()));
        self.conversations.insert(
            room.clone(),
            Conversation {
                record,
                history: History::default(),
                assigned_at: now,
                answered: false,
                passed_by: BTreeSet::new(),
                resident_conns: BTreeSet::from([conn]),
                staff_conns: BTreeSet::new(),
                resident_gone_since: None,
                acked: BTreeMap::new(),
                last_status: None,
            },
        );
        let party = self.conversations[&room].record.resident.clone();
        self.send_joined(conn, &room, &party, out);
        self.announce_waiting(&room, out);
        if !self.any_staff_online(&room) {
            let service = self.conversations[&room].record.service.clone();
            out.push(send(
                conn,
                ServerMessage::QueueOfflineForm {
                    room: room.clone(),
                    service,
                },
            ));
        }
        self.rebalance(at, now, out);
    }

    fn join(&mut self, conn: ConnectionId, party: PartyId, room: RoomId, out: &mut Vec<Outbound>) {
        let Some(conversation) = self.conversations.get_mut(&room) else {
            out.push(error(conn, ErrorCode::NotFound, "no such room", Some(room)));
            return;
        };
        if party == conversation.record.resident {
            conversation.resident_conns.insert(conn);
            conversation.resident_gone_since = None;
            conversation.last_status = None;
        } else if matches!(&conversation.record.state, EntryState::Assigned(s) if PartyId::staff(s) == party)
        {
            conversation.staff_conns.insert(conn);
            self.audit_if_staff(&party, &room, AuditAction::ReadConversation, out);
        } else {
            out.push(error(conn, ErrorCode::NotFound, "no such room", Some(room)));
            return;
        }
        self.send_joined(conn, &room, &party, out);
        self.send_statuses(out);
    }

    fn disconnected(&mut self, conn: ConnectionId, now: Instant, out: &mut Vec<Outbound>) {
        for conversation in self.conversations.values_mut() {
            conversation.staff_conns.remove(&conn);
            if conversation.resident_conns.remove(&conn) && conversation.resident_conns.is_empty() {
                conversation.resident_gone_since = Some(now);
            }
        }
        let Some(staff) = self.staff_of_conn(conn) else {
            return;
        };
        let state = self.staff.get_mut(&staff).expect("known staff");
        state.conns.remove(&conn);
        if !state.conns.is_empty() {
            return;
        }
        self.staff.remove(&staff);
        let theirs: Vec<RoomId> = self
            .conversations
            .iter()
            .filter(|(_, c)| c.record.state == EntryState::Assigned(staff.clone()))
            .map(|(room, _)| room.clone())
            .collect();
        let at = self.clock.unix_at(now);
        for room in theirs {
            self.return_to_queue(&room, &staff, UnassignReason::Offline, out);
        }
        self.rebalance(at, now, out);
        self.send_statuses(out);
    }

    fn leave(&mut self, conn: ConnectionId, room: RoomId, out: &mut Vec<Outbound>) {
        let Some(conversation) = self.conversations.get(&room) else {
            out.push(error(conn, ErrorCode::NotFound, "no such room", Some(room)));
            return;
        };
        if !conversation.resident_conns.contains(&conn) {
            out.push(error(conn, ErrorCode::NotFound, "no such room", Some(room)));
            return;
        }
        if conversation.record.state != EntryState::Waiting {
            out.push(error(
                conn,
                ErrorCode::InvalidState,
                "close the chat instead",
                Some(room),
            ));
            return;
        }
        let staff_online = self.any_staff_online(&room);
        let conversation = self.conversations.remove(&room).expect("checked");
        self.announce_removed(&conversation, out);
        let mut record = conversation.record.clone();
        record.state = EntryState::Closed;
        out.push(Outbound::PersistQueueEntry(record.clone()));
        for c in &conversation.resident_conns {
            if !staff_online {
                out.push(send(
                    *c,
                    ServerMessage::QueueOfflineForm {
                        room: room.clone(),
                        service: record.service.clone(),
                    },
                ));
            }
            out.push(send(
                *c,
                ServerMessage::RoomClosed {
                    room: room.clone(),
                    reason: CloseReason::ChatClosed,
                },
            ));
        }
        out.push(Outbound::ConversationClosed {
            room,
            resident: record.resident,
            anonymous: record.anonymous,
        });
        self.send_statuses(out);
    }

    fn claim(
        &mut self,
        conn: ConnectionId,
        room: RoomId,
        at: i64,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        let Some(staff) = self.staff_of_conn(conn) else {
            out.push(error(conn, ErrorCode::NotFound, "no such room", Some(room)));
            return;
        };
        let state = &self.staff[&staff];
        let Some(conversation) = self.conversations.get(&room) else {
            out.push(error(conn, ErrorCode::NotFound, "no such room", Some(room)));
            return;
        };
        if !is_eligible(state, &conversation.record) {
            // Staff the policy excludes learn nothing, not even that it exists.
            out.push(error(conn, ErrorCode::NotFound, "no such room", Some(room)));
            return;
        }
        if conversation.record.state != EntryState::Waiting {
            out.push(error(
                conn,
                ErrorCode::AlreadyTaken,
                "someone else took this chat",
                Some(room),
            ));
            return;
        }
        if state.load(&self.conversations) >= state.max_chats.max(1) as usize {
            out.push(error(
                conn,
                ErrorCode::Forbidden,
                "you are at your chat limit",
                Some(room),
            ));
            return;
        }
        self.assign(&room, &staff, at, now, out);
        self.send_statuses(out);
    }

    fn transfer(
        &mut self,
        conn: ConnectionId,
        room: RoomId,
        to: StaffId,
        at: i64,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        let Some(from) = self.assigned_staff_conn(conn, &room, out) else {
            return;
        };
        let target_ok = self
            .transfer_candidates(&room, &from)
            .is_some_and(|candidates| candidates.contains(&to));
        if !target_ok {
            out.push(error(
                conn,
                ErrorCode::NotEligible,
                "that colleague is not online, not eligible or at their chat limit",
                Some(room),
            ));
            return;
        }
        let conversation = self.conversations.get_mut(&room).expect("checked");
        for c in std::mem::take(&mut conversation.staff_conns) {
            out.push(send(
                c,
                ServerMessage::RoomClosed {
                    room: room.clone(),
                    reason: CloseReason::ChatClosed,
                },
            ));
        }
        for c in &self.staff[&from].conns {
            out.push(send(
                *c,
                ServerMessage::QueueUnassigned {
                    room: room.clone(),
                    reason: UnassignReason::Transferred,
                },
            ));
        }
        self.assign(&room, &to, at, now, out);
    }

    fn chat(
        &mut self,
        conn: ConnectionId,
        room: RoomId,
        client_id: ClientMsgId,
        text: String,
        at: i64,
        out: &mut Vec<Outbound>,
    ) {
        let Some(party) = self.member_party(conn, &room, out) else {
            return;
        };
        let conversation = self.conversations.get_mut(&room).expect("checked");
        let role = if party == conversation.record.resident {
            Role::Resident
        } else {
            conversation.answered = true;
            Role::SocialWorker
        };
        let seq = match conversation.history.chat_seq(&party, &client_id) {
            Some(seq) => seq,
            None => self.append(
                &room,
                RoomEvent::Chat {
                    from: party,
                    role,
                    client_id: client_id.clone(),
                    text,
                    sent_at: at,
                },
                at,
                out,
            ),
        };
        out.push(send(
            conn,
            ServerMessage::ChatStored {
                room,
                client_id,
                seq,
            },
        ));
    }

    fn ack(&mut self, conn: ConnectionId, room: RoomId, seq: Seq, out: &mut Vec<Outbound>) {
        let Some(party) = self.member_party(conn, &room, out) else {
            return;
        };
        let conversation = self.conversations.get_mut(&room).expect("checked");
        let seq = seq.min(conversation.history.last_seq());
        let before = conversation.acked.get(&party).copied().unwrap_or(0);
        if seq <= before {
            return;
        }
        conversation.acked.insert(party.clone(), seq);
        if conversation
            .history
            .has_chat_from_others(&party, before, seq)
        {
            let message = ServerMessage::ChatRead {
                room: room.clone(),
                party: party.clone(),
                seq,
            };
            self.send_to_members(&room, Some(&party), &message, out);
        }
    }

    fn close(
        &mut self,
        conn: ConnectionId,
        room: RoomId,
        outcome: Option<ChatOutcome>,
        at: i64,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        let Some(party) = self.member_party(conn, &room, out) else {
            return;
        };
        if self.conversations[&room].record.state == EntryState::Waiting {
            self.leave(conn, room, out);
            return;
        }
        let by_resident = party == self.conversations[&room].record.resident;
        if !by_resident && outcome.is_none() {
            out.push(error(
                conn,
                ErrorCode::Invalid,
                "say how the chat ended: resolved, booked, referred or no_contact",
                Some(room),
            ));
            return;
        }
        let outcome = if by_resident { None } else { outcome };
        self.append(&room, RoomEvent::Ended { by: party, outcome }, at, out);
        let conversation = self.conversations.remove(&room).expect("checked");
        let mut record = conversation.record.clone();
        record.state = EntryState::Closed;
        out.push(Outbound::PersistQueueEntry(record.clone()));
        for c in conversation
            .resident_conns
            .iter()
            .chain(&conversation.staff_conns)
        {
            out.push(send(
                *c,
                ServerMessage::RoomClosed {
                    room: room.clone(),
                    reason: CloseReason::ChatClosed,
                },
            ));
        }
        out.push(Outbound::ConversationClosed {
            room,
            resident: record.resident,
            anonymous: record.anonymous,
        });
        self.rebalance(at, now, out);
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Outbound>) {
        let at = self.clock.unix_at(now);
        let unanswered: Vec<(RoomId, StaffId)> = self
            .conversations
            .iter()
            .filter_map(|(room, c)| match &c.record.state {
                EntryState::Assigned(staff)
                    if !c.answered && now >= c.assigned_at + self.rules_of(c).answer_timeout =>
                {
                    Some((room.clone(), staff.clone()))
                }
                _ => None,
            })
            .collect();
        for (room, staff) in unanswered {
            self.return_to_queue(&room, &staff, UnassignReason::NoAnswer, out);
        }
        let abandoned: Vec<RoomId> = self
            .conversations
            .iter()
            .filter(|(_, c)| {
                c.record.state == EntryState::Waiting
                    && c.resident_gone_since
                        .is_some_and(|t| now >= t + self.rules_of(c).abandon_after)
            })
            .map(|(room, _)| room.clone())
            .collect();
        for room in abandoned {
            let conversation = self.conversations.remove(&room).expect("listed above");
            self.announce_removed(&conversation, out);
            let mut record = conversation.record;
            record.state = EntryState::Closed;
            out.push(Outbound::PersistQueueEntry(record.clone()));
            out.push(Outbound::ConversationClosed {
                room,
                resident: record.resident,
                anonymous: record.anonymous,
            });
        }
        self.rebalance(at, now, out);
        self.send_statuses(out);
    }

    /// Gives `room` to `staff` and tells everyone concerned.
    fn assign(
        &mut self,
        room: &RoomId,
        staff: &StaffId,
        at: i64,
        now: Instant,
        out: &mut Vec<Outbound>,
    ) {
        let was_waiting = self.conversations[room].record.state == EntryState::Waiting;
        let conversation = self.conversations.get_mut(room).expect("caller checked");
        conversation.record.state = EntryState::Assigned(staff.clone());
        conversation.assigned_at = now;
        conversation.answered = false;
        // Every console of the staff member follows the chat from now on;
        // they need not join it first.
        conversation.staff_conns = self.staff[staff].conns.clone();
        out.push(Outbound::PersistQueueEntry(conversation.record.clone()));
        let view = conversation.view();
        if was_waiting {
            let conversation = &self.conversations[room];
            self.announce_removed(conversation, out);
        }
        let party = PartyId::staff(staff);
        self.audit_if_staff(&party, room, AuditAction::OpenConversation, out);
        for c in &self.staff[staff].conns {
            out.push(send(
                *c,
                ServerMessage::QueueAssigned {
                    entry: view.clone(),
                },
            ));
        }
        self.append(room, RoomEvent::Assigned { staff: party }, at, out);
    }

    /// Puts an assigned chat back at its original place in the queue.
    fn return_to_queue(
        &mut self,
        room: &RoomId,
        staff: &StaffId,
        reason: UnassignReason,
        out: &mut Vec<Outbound>,
    ) {
        let conversation = self.conversations.get_mut(room).expect("caller checked");
        conversation.record.state = EntryState::Waiting;
        conversation.passed_by.insert(staff.clone());
        conversation.last_status = None;
        out.push(Outbound::PersistQueueEntry(conversation.record.clone()));
        for c in std::mem::take(&mut conversation.staff_conns) {
            out.push(send(
                c,
                ServerMessage::RoomClosed {
                    room: room.clone(),
                    reason: CloseReason::ChatClosed,
                },
            ));
        }
        if let Some(state) = self.staff.get(staff) {
            for c in &state.conns {
                out.push(send(
                    *c,
                    ServerMessage::QueueUnassigned {
                        room: room.clone(),
                        reason,
                    },
                ));
            }
        }
        self.announce_waiting(room, out);
    }

    /// Gives the waiting chats whose home municipality assigns them
    /// automatically, oldest first, to the eligible online staff member with
    /// the fewest chats who is under their limit. Staff who let this chat
    /// time out are tried only when nobody else can.
    fn rebalance(&mut self, at: i64, now: Instant, out: &mut Vec<Outbound>) {
        let mut waiting: Vec<(i64, RoomId)> = self
            .waiting()
            .filter(|c| self.rules_of(c).mode == QueueMode::Automatic)
            .map(|c| (c.record.ticket, c.record.room.clone()))
            .collect();
        waiting.sort();
        for (_, room) in waiting {
            let conversation = &self.conversations[&room];
            let best = self
                .staff
                .values()
                .filter(|s| s.is_online() && is_eligible(s, &conversation.record))
                .map(|s| (s, s.load(&self.conversations)))
                .filter(|(s, load)| *load < s.max_chats as usize)
                .min_by_key(|(s, load)| {
                    (
                        conversation.passed_by.contains(&s.profile.id),
                        *load,
                        s.profile.id.clone(),
                    )
                })
                .map(|(s, _)| s.profile.id.clone());
            if let Some(staff) = best {
                self.assign(&room, &staff, at, now, out);
            }
        }
        self.send_statuses(out);
    }

    /// Sends each waiting resident their position and estimated wait, when
    /// either changed since the last time.
    fn send_statuses(&mut self, out: &mut Vec<Outbound>) {
        let mut waiting: Vec<(i64, RoomId)> = self
            .waiting()
            .map(|c| (c.record.ticket, c.record.room.clone()))
            .collect();
        waiting.sort();
        // The chats of one service open to the same municipalities have the
        // same staff online: count those once per such pair rather than once
        // per chat, which with a long queue and many consoles was most of
        // the work of every queue update (BENCHMARKS.md, the chat queue).
        let online: Vec<usize> = {
            let mut counted: BTreeMap<(&ServiceId, &BTreeSet<MunicipalityCode>), usize> =
                BTreeMap::new();
            waiting
                .iter()
                .map(|(_, room)| {
                    let record = &self.conversations[room].record;
                    *counted
                        .entry((&record.service, &record.eligible_municipalities))
                        .or_insert_with(|| self.online_staff_for(record))
                })
                .collect()
        };
        let mut ahead_per_service: BTreeMap<ServiceId, u32> = BTreeMap::new();
        for ((_, room), staff_online) in waiting.into_iter().zip(online) {
            let conversation = self.conversations.get_mut(&room).expect("listed");
            let ahead = ahead_per_service
                .entry(conversation.record.service.clone())
                .or_insert(0);
            *ahead += 1;
            let position = *ahead;
            let rounds = u64::from(position).div_ceil(staff_online.max(1) as u64);
            let eta_secs = rounds
                * self
                    .rules
                    .of(&conversation.record.home_municipality)
                    .average_chat
                    .as_secs();
            let status = (position, eta_secs, staff_online > 0);
            if conversation.last_status == Some(status) {
                continue;
            }
            conversation.last_status = Some(status);
            for c in &conversation.resident_conns {
                out.push(send(
                    *c,
                    ServerMessage::QueueStatus {
                        room: room.clone(),
                        position,
                        eta_secs,
                        staff_online: status.2,
                    },
                ));
            }
        }
    }

    fn announce_waiting(&self, room: &RoomId, out: &mut Vec<Outbound>) {
        let conversation = &self.conversations[room];
        for staff in self.staff.values() {
            if is_eligible(staff, &conversation.record) {
                for c in &staff.conns {
                    out.push(send(
                        *c,
                        ServerMessage::QueueEntry {
                            entry: conversation.view(),
                        },
                    ));
                }
            }
        }
    }

    fn announce_removed(&self, conversation: &Conversation, out: &mut Vec<Outbound>) {
        for staff in self.staff.values() {
            if is_eligible(staff, &conversation.record) {
                for c in &staff.conns {
                    out.push(send(
                        *c,
                        ServerMessage::QueueEntryRemoved {
                            room: conversation.record.room.clone(),
                        },
                    ));
                }
            }
        }
    }

    fn append(&mut self, room: &RoomId, event: RoomEvent, at: i64, out: &mut Vec<Outbound>) -> Seq {
        let conversation = self.conversations.get_mut(room).expect("caller checked");
        let stored = conversation
            .history
            .append(room, Audience::Members, event, at);
        let seq = stored.seq;
        let message = ServerMessage::Event {
            room: room.clone(),
            seq,
            event: stored.event.clone(),
        };
        out.push(Outbound::Persist(stored));
        for c in conversation
            .resident_conns
            .iter()
            .chain(&conversation.staff_conns)
        {
            out.push(send(*c, message.clone()));
        }
        seq
    }

    fn send_joined(
        &self,
        conn: ConnectionId,
        room: &RoomId,
        party: &PartyId,
        out: &mut Vec<Outbound>,
    ) {
        let conversation = &self.conversations[room];
        let mut participants = vec![Participant {
            party: conversation.record.resident.clone(),
            role: Role::Resident,
        }];
        if let EntryState::Assigned(staff) = &conversation.record.state {
            participants.push(Participant {
                party: PartyId::staff(staff),
                role: Role::SocialWorker,
            });
        }
        let _ = party;
        out.push(send(
            conn,
            ServerMessage::Joined {
                room: room.clone(),
                state: PresenceState::Admitted,
                last_seq: conversation.history.last_seq(),
                participants,
                lobby: Vec::new(),
            },
        ));
    }

    fn send_to_members(
        &self,
        room: &RoomId,
        except: Option<&PartyId>,
        message: &ServerMessage,
        out: &mut Vec<Outbound>,
    ) {
        let conversation = &self.conversations[room];
        let resident = &conversation.record.resident;
        if Some(resident) != except {
            for c in &conversation.resident_conns {
                out.push(send(*c, message.clone()));
            }
        }
        if let EntryState::Assigned(staff) = &conversation.record.state {
            if Some(&PartyId::staff(staff)) != except {
                for c in &conversation.staff_conns {
                    out.push(send(*c, message.clone()));
                }
            }
        }
    }

    fn audit_if_staff(
        &self,
        party: &PartyId,
        room: &RoomId,
        action: AuditAction,
        out: &mut Vec<Outbound>,
    ) {
        let record = &self.conversations[room].record;
        if *party != record.resident {
            out.push(Outbound::Audit(AuditEntry {
                actor: party.clone(),
                action,
                room: room.clone(),
                subject: record.resident.clone(),
                on_behalf_of: Some(record.home_municipality.clone()),
            }));
        }
    }

    /// The party of a connection attached to this chat: the resident, or the
    /// staff member it is assigned to.
    fn member_party(
        &self,
        conn: ConnectionId,
        room: &RoomId,
        out: &mut Vec<Outbound>,
    ) -> Option<PartyId> {
        let Some(conversation) = self.conversations.get(room) else {
            out.push(error(
                conn,
                ErrorCode::NotFound,
                "no such room",
                Some(room.clone()),
            ));
            return None;
        };
        if conversation.resident_conns.contains(&conn) {
            return Some(conversation.record.resident.clone());
        }
        if let EntryState::Assigned(staff) = &conversation.record.state {
            if conversation.staff_conns.contains(&conn)
                || self
                    .staff
                    .get(staff)
                    .is_some_and(|s| s.conns.contains(&conn))
            {
                return Some(PartyId::staff(staff));
            }
        }
        out.push(error(
            conn,
            ErrorCode::NotFound,
            "no such room",
            Some(room.clone()),
        ));
        None
    }

    fn assigned_staff_conn(
        &self,
        conn: ConnectionId,
        room: &RoomId,
        out: &mut Vec<Outbound>,
    ) -> Option<StaffId> {
        let party = self.member_party(conn, room, out)?;
        match &self.conversations[room].record.state {
            EntryState::Assigned(staff) if PartyId::staff(staff) == party => Some(staff.clone()),
            _ => {
                out.push(error(
                    conn,
                    ErrorCode::Forbidden,
                    "only the assigned staff member may do this",
                    Some(room.clone()),
                ));
                None
            }
        }
    }

    /// The rules `conversation` follows: its home municipality's.
    fn rules_of(&self, conversation: &Conversation) -> &QueueSettings {
        self.rules.of(&conversation.record.home_municipality)
    }

    fn staff_of_conn(&self, conn: ConnectionId) -> Option<StaffId> {
        self.staff
            .values()
            .find(|s| s.conns.contains(&conn))
            .map(|s| s.profile.id.clone())
    }

    fn waiting(&self) -> impl Iterator<Item = &Conversation> {
        self.conversations
            .values()
            .filter(|c| c.record.state == EntryState::Waiting)
    }

    fn online_staff_count(&self, room: &RoomId) -> usize {
        self.online_staff_for(&self.conversations[room].record)
    }

    fn online_staff_for(&self, record: &QueueEntryRecord) -> usize {
        self.staff
            .values()
            .filter(|s| s.is_online() && is_eligible(s, record))
            .count()
    }

    fn any_staff_online(&self, room: &RoomId) -> bool {
        self.online_staff_count(room) > 0
    }
}

#[derive(Debug)]
struct Conversation {
    record: QueueEntryRecord,
    history: History,
    assigned_at: Instant,
    answered: bool,
    /// Staff who let this chat go unanswered; asked again only as a last resort.
    passed_by: BTreeSet<StaffId>,
    resident_conns: BTreeSet<ConnectionId>,
    /// Connections of the assigned staff member that joined this chat.
    staff_conns: BTreeSet<ConnectionId>,
    resident_gone_since: Option<Instant>,
    acked: BTreeMap<PartyId, Seq>,
    last_status: Option<(u32, u64, bool)>,
}

impl Conversation {
    fn view(&self) -> QueueEntryView {
        QueueEntryView {
            room: self.record.room.clone(),
            service: self.record.service.clone(),
            home_municipality: self.record.home_municipality.clone(),
            anonymous: self.record.anonymous,
            enqueued_at: self.record.enqueued_at,
            ticket: self.record.ticket,
        }
    }
}

#[derive(Debug)]
struct StaffState {
    profile: StaffProfile,
    conns: BTreeSet<ConnectionId>,
    available: bool,
    max_chats: u32,
}

impl StaffState {
    fn is_online(&self) -> bool {
        self.available && !self.conns.is_empty() && self.max_chats > 0
    }

    fn load(&self, conversations: &BTreeMap<RoomId, Conversation>) -> usize {
        conversations
            .values()
            .filter(|c| c.record.state == EntryState::Assigned(self.profile.id.clone()))
            .count()
    }
}

fn is_eligible(staff: &StaffState, record: &QueueEntryRecord) -> bool {
    record
        .eligible_municipalities
        .contains(&staff.profile.municipality)
        && staff.profile.services.contains(&record.service)
}

fn error(conn: ConnectionId, code: ErrorCode, message: &str, room: Option<RoomId>) -> Outbound {
    send(conn, ServerMessage::error(code, message, room))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::tests::render;

    const A: u64 = 1; // staff a, municipality 0180
    const B: u64 = 2; // staff b, municipality 0180
    const X: u64 = 3; // staff x, municipality 0999, excluded by the policy
    const R1: u64 = 11;
    const R2: u64 = 12;
    const R3: u64 = 13;

    fn c(n: u64) -> ConnectionId {
        ConnectionId(n)
    }

    fn room(n: u64) -> RoomId {
        RoomId::parse(format!("chat:{n}")).unwrap()
    }

    fn settings(mode: QueueMode) -> QueueSettings {
        QueueSettings {
            mode,
            answer_timeout: Duration::from_secs(60),
            abandon_after: Duration::from_secs(120),
            average_chat: Duration::from_secs(600),
        }
    }

    fn profile(id: &str, municipality: &str) -> StaffProfile {
        StaffProfile {
            id: StaffId::parse(id).unwrap(),
            municipality: MunicipalityCode::parse(municipality).unwrap(),
            services: BTreeSet::from([ServiceId::parse("stod").unwrap()]),
        }
    }

    fn new_conversation(n: u64) -> NewConversation {
        NewConversation {
            room: room(n),
            service: ServiceId::parse("stod").unwrap(),
            home_municipality: MunicipalityCode::parse("0181").unwrap(),
            resident: PartyId::parse(format!("resident:r{n}")).unwrap(),
            anonymous: false,
            eligible_municipalities: BTreeSet::from([
                MunicipalityCode::parse("0180").unwrap(),
                MunicipalityCode::parse("0181").unwrap(),
            ]),
        }
    }

    /// A queue with staff a, b (eligible) and x (excluded) connected and
    /// available for `max_chats` chats each, and a clock at `t0`.
    struct Harness {
        queue: Queue,
        t0: Instant,
    }

    impl Harness {
        fn new(mode: QueueMode, max_chats: u32) -> Self {
            let t0 = Instant::now();
            let mut queue = Queue::new(
                settings(mode),
                ClockAnchor {
                    instant: t0,
                    unix: 0,
                },
            );
            for (conn, id, m) in [(A, "a", "0180"), (B, "b", "0180"), (X, "x", "0999")] {
                queue.handle(
                    QueueInput::StaffConnected {
                        conn: c(conn),
                        staff: profile(id, m),
                    },
                    t0,
                );
                queue.handle(
                    QueueInput::Availability {
                        conn: c(conn),
                        available: true,
                        max_chats,
                    },
                    t0,
                );
            }
            Harness { queue, t0 }
        }

        fn at(&mut self, secs: u64, input: QueueInput) -> String {
            render(
                &self
                    .queue
                    .handle(input, self.t0 + Duration::from_secs(secs)),
            )
        }

        fn open(&mut self, secs: u64, n: u64) -> String {
            self.at(
                secs,
                QueueInput::Open {
                    conn: c(10 + n),
                    conversation: new_conversation(n),
                },
            )
        }

        fn state(&self, n: u64) -> EntryState {
            self.queue.record(&room(n)).unwrap().state.clone()
        }
    }

    fn staff(id: &str) -> EntryState {
        EntryState::Assigned(StaffId::parse(id).unwrap())
    }

    #[test]
    fn excluded_staff_get_nothing_and_the_first_claim_wins() {
        let mut h = Harness::new(QueueMode::Manual, 2);
        let out = h.open(0, 1);
        assert_eq!(
            out,
            [
                "persist-entry chat:1 waiting",
                r#"c11 joined {"last_seq":0,"participants":[{"party":"resident:r1","role":"resident"}],"state":"admitted"}"#,
                r#"c1 queue.entry {"entry":{"anonymous":false,"enqueued_at":0,"home_municipality":"0181","room":"chat:1","service":"stod","ticket":1}}"#,
                r#"c2 queue.entry {"entry":{"anonymous":false,"enqueued_at":0,"home_municipality":"0181","room":"chat:1","service":"stod","ticket":1}}"#,
                r#"c11 queue.status {"eta_secs":600,"position":1,"staff_online":true}"#,
            ]
            .join("\n")
        );
        assert!(!out.contains("c3 "), "excluded staff saw the entry");
        let out = h.at(
            1,
            QueueInput::Claim {
                conn: c(X),
                room: room(1),
            },
        );
        assert_eq!(
            out,
            r#"c3 error {"code":"not_found","message":"no such room"}"#
        );
        let out = h.at(
            1,
            QueueInput::Claim {
                conn: c(A),
                room: room(1),
            },
        );
        assert_eq!(
            out,
            [
                "persist-entry chat:1 assigned",
                "c1 queue.entry_removed",
                "c2 queue.entry_removed",
                "audit staff:a conversation.open",
                r#"c1 queue.assigned {"entry":{"anonymous":false,"enqueued_at":0,"home_municipality":"0181","room":"chat:1","service":"stod","ticket":1}}"#,
                "persist 1 assigned",
                r#"c11 event {"event":{"kind":"assigned","staff":"staff:a"},"seq":1}"#,
                r#"c1 event {"event":{"kind":"assigned","staff":"staff:a"},"seq":1}"#,
            ]
            .join("\n")
        );
        let out = h.at(
            1,
            QueueInput::Claim {
                conn: c(B),
                room: room(1),
            },
        );
        assert_eq!(
            out,
            r#"c2 error {"code":"already_taken","message":"someone else took this chat"}"#
        );
        assert_eq!(h.state(1), staff("a"));
    }

    #[test]
    fn a_console_that_connects_late_gets_the_whole_queue_in_one_message() {
        let mut h = Harness::new(QueueMode::Manual, 2);
        // More than nine, so that the rooms' names sort otherwise than the
        // queue serves them ("chat:10" before "chat:2").
        for n in 1..=12 {
            h.open(n, n);
        }
        let late = h.at(
            20,
            QueueInput::StaffConnected {
                conn: c(4),
                staff: profile("late", "0180"),
            },
        );
        let lines: Vec<&str> = late.lines().collect();
        assert_eq!(lines.len(), 1, "{late}");
        let (_, frame) = lines[0]
            .split_once(" queue.snapshot ")
            .expect("one snapshot");
        let snapshot: serde_json::Value = serde_json::from_str(frame).unwrap();
        let rooms: Vec<&str> = snapshot["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["room"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (1..=12).map(|n| format!("chat:{n}")).collect();
        assert_eq!(rooms, expected);
        let outsider = h.at(
            20,
            QueueInput::StaffConnected {
                conn: c(5),
                staff: profile("y", "0999"),
            },
        );
        assert_eq!(outsider, "", "staff the policy excludes see no snapshot");
    }

    #[test]
    fn automatic_mode_picks_the_least_loaded_within_the_cap() {
        let mut h = Harness::new(QueueMode::Automatic, 1);
        h.open(0, 1);
        h.open(1, 2);
        h.open(2, 3);
        // Ties go to the lower id, then the other staff member; x is excluded
        // and both eligible staff are at their cap of one.
        assert_eq!(h.state(1), staff("a"));
        assert_eq!(h.state(2), staff("b"));
        assert_eq!(h.state(3), EntryState::Waiting);
        // Closing a chat frees a place, and the next waiting chat takes it.
        h.at(
            3,
            QueueInput::Chat {
                conn: c(A),
                room: room(1),
                client_id: "m1".parse().unwrap(),
                text: "Hej!".into(),
            },
        );
        let out = h.at(
            4,
            QueueInput::Close {
                conn: c(A),
                room: room(1),
                outcome: Some(ChatOutcome::Resolved),
            },
        );
        assert!(out.contains("closed chat:1"), "{out}");
        assert_eq!(h.state(3), staff("a"));
    }

    #[test]
    fn unanswered_chats_return_to_their_original_place() {
        let mut h = Harness::new(QueueMode::Manual, 2);
        h.open(0, 1);
        h.open(1, 2);
        h.at(
            2,
            QueueInput::Claim {
                conn: c(A),
                room: room(1),
            },
        );
        // Chat 2 is now first in line.
        assert_eq!(
            h.queue.next_deadline(),
            Some(h.t0 + Duration::from_secs(62))
        );
        assert_eq!(h.at(61, QueueInput::Tick), "");
        let out = h.at(62, QueueInput::Tick);
        assert!(
            out.contains(r#"c1 queue.unassigned {"reason":"no_answer"}"#),
            "{out}"
        );
        assert!(out.contains("c2 queue.entry"), "{out}");
        // Chat 1 is back in front of chat 2, which moves down.
        assert!(
            out.contains(r#"c11 queue.status {"eta_secs":600,"position":1,"staff_online":true}"#),
            "{out}"
        );
        assert!(
            out.contains(r#"c12 queue.status {"eta_secs":600,"position":2,"staff_online":true}"#),
            "{out}"
        );
        assert_eq!(h.state(1), EntryState::Waiting);
    }

    #[test]
    fn answered_chats_stay_and_offline_staff_lose_theirs() {
        let mut h = Harness::new(QueueMode::Automatic, 1);
        h.open(0, 1);
        assert_eq!(h.state(1), staff("a"));
        h.at(
            1,
            QueueInput::Accept {
                conn: c(A),
                room: room(1),
            },
        );
        assert_eq!(h.at(100, QueueInput::Tick), "");
        assert_eq!(h.state(1), staff("a"));
        // Staff a's last connection closes: the chat goes to b at once.
        let out = h.at(101, QueueInput::Disconnected { conn: c(A) });
        assert!(out.contains("c2 queue.assigned"), "{out}");
        assert_eq!(h.state(1), staff("b"));
    }

    #[test]
    fn timed_out_staff_are_asked_last() {
        let mut h = Harness::new(QueueMode::Automatic, 1);
        h.open(0, 1);
        assert_eq!(h.state(1), staff("a"));
        h.at(60, QueueInput::Tick);
        assert_eq!(h.state(1), staff("b"));
    }

    #[test]
    fn transfer_goes_only_to_eligible_online_colleagues() {
        let mut h = Harness::new(QueueMode::Manual, 2);
        h.open(0, 1);
        h.at(
            1,
            QueueInput::Claim {
                conn: c(A),
                room: room(1),
            },
        );
        let out = h.at(
            2,
            QueueInput::Transfer {
                conn: c(A),
                room: room(1),
                to: StaffId::parse("x").unwrap(),
            },
        );
        assert!(out.contains("not_eligible"), "{out}");
        let out = h.at(
            3,
            QueueInput::Transfer {
                conn: c(A),
                room: room(1),
                to: StaffId::parse("b").unwrap(),
            },
        );
        assert!(
            out.contains(r#"c1 queue.unassigned {"reason":"transferred"}"#),
            "{out}"
        );
        assert!(out.contains("audit staff:b conversation.open"), "{out}");
        assert_eq!(h.state(1), staff("b"));
        let out = h.at(
            4,
            QueueInput::Chat {
                conn: c(A),
                room: room(1),
                client_id: "late".parse().unwrap(),
                text: "still here?".into(),
            },
        );
        assert!(out.contains("not_found"), "{out}");
    }

    #[test]
    fn transfer_candidates_are_online_eligible_colleagues_under_their_limit() {
        let mut h = Harness::new(QueueMode::Manual, 1);
        h.open(0, 1);
        h.open(0, 2);
        let candidates = |h: &Harness, who: &str| {
            h.queue
                .transfer_candidates(&room(1), &StaffId::parse(who).unwrap())
                .map(|list| {
                    list.iter()
                        .map(|s| s.as_str().to_owned())
                        .collect::<Vec<_>>()
                })
        };
        // Nobody may ask about a chat that is not theirs.
        assert_eq!(candidates(&h, "a"), None);
        h.at(
            1,
            QueueInput::Claim {
                conn: c(A),
                room: room(1),
            },
        );
        assert_eq!(
            candidates(&h, "a"),
            Some(vec!["b".to_owned()]),
            "x is excluded"
        );
        assert_eq!(candidates(&h, "b"), None);
        // A colleague at their limit is no candidate, nor one gone offline.
        h.at(
            2,
            QueueInput::Claim {
                conn: c(B),
                room: room(2),
            },
        );
        assert_eq!(candidates(&h, "a"), Some(Vec::new()));
        h.at(
            3,
            QueueInput::Availability {
                conn: c(B),
                available: true,
                max_chats: 2,
            },
        );
        assert_eq!(candidates(&h, "a"), Some(vec!["b".to_owned()]));
        h.at(
            4,
            QueueInput::Availability {
                conn: c(B),
                available: false,
                max_chats: 2,
            },
        );
        assert_eq!(candidates(&h, "a"), Some(Vec::new()));
        let out = h.at(
            5,
            QueueInput::Transfer {
                conn: c(A),
                room: room(1),
                to: StaffId::parse("b").unwrap(),
            },
        );
        assert!(out.contains("not_eligible"), "{out}");
        assert_eq!(h.state(1), staff("a"));
    }

    #[test]
    fn chat_dedups_and_sends_typing_and_read_receipts() {
        let mut h = Harness::new(QueueMode::Manual, 2);
        h.open(0, 1);
        h.at(
            1,
            QueueInput::Claim {
                conn: c(A),
                room: room(1),
            },
        );
        let send = |text: &str| QueueInput::Chat {
            conn: c(R1),
            room: room(1),
            client_id: "m1".parse().unwrap(),
            text: text.into(),
        };
        let first = h.at(2, send("Hej"));
        assert!(first.contains("persist 2 chat"), "{first}");
        assert!(
            first.contains(r#"c11 chat.stored {"client_id":"m1","seq":2}"#),
            "{first}"
        );
        assert_eq!(
            h.at(3, send("Hej")),
            r#"c11 chat.stored {"client_id":"m1","seq":2}"#
        );
        let out = h.at(
            4,
            QueueInput::Typing {
                conn: c(A),
                room: room(1),
                typing: true,
            },
        );
        assert_eq!(out, r#"c11 chat.typing {"party":"staff:a","typing":true}"#);
        let out = h.at(
            5,
            QueueInput::Ack {
                conn: c(A),
                room: room(1),
                seq: 2,
            },
        );
        assert_eq!(out, r#"c11 chat.read {"party":"staff:a","seq":2}"#);
        // Acking again, or acking one's own messages, is no read receipt.
        assert_eq!(
            h.at(
                6,
                QueueInput::Ack {
                    conn: c(A),
                    room: room(1),
                    seq: 2
                }
            ),
            ""
        );
        assert_eq!(
            h.at(
                6,
                QueueInput::Ack {
                    conn: c(R1),
                    room: room(1),
                    seq: 2
                }
            ),
            ""
        );
        let out = h.at(
            7,
            QueueInput::Resume {
                conn: c(A),
                room: room(1),
                last_seq: 1,
            },
        );
        assert_eq!(
            out,
            [
                "audit staff:a conversation.read",
                r#"c1 event {"event":{"client_id":"m1","from":"resident:r1","kind":"chat","role":"resident","sent_at":2,"text":"Hej"},"seq":2}"#,
            ]
            .join("\n")
        );
    }

    #[test]
    fn staff_close_with_an_outcome_and_residents_without() {
        let mut h = Harness::new(QueueMode::Manual, 2);
        h.open(0, 1);
        h.open(0, 2);
        for n in [1, 2] {
            h.at(
                1,
                QueueInput::Claim {
                    conn: c(A),
                    room: room(n),
                },
            );
        }
        let close = |conn: u64, n: u64, outcome: Option<ChatOutcome>| QueueInput::Close {
            conn: c(conn),
            room: room(n),
            outcome,
        };
        // Without an outcome nothing happens but the answer.
        assert_eq!(
            h.at(2, close(A, 1, None)),
            r#"c1 error {"code":"invalid","message":"say how the chat ended: resolved, booked, referred or no_contact"}"#
        );
        assert_eq!(h.state(1), staff("a"));
        let out = h.at(3, close(A, 1, Some(ChatOutcome::NoContact)));
        assert!(
            out.contains(r#"c11 event {"event":{"by":"staff:a","kind":"ended","outcome":"no_contact"},"seq":2}"#),
            "{out}"
        );
        assert!(out.contains("closed chat:1"), "{out}");
        // A resident's outcome is not theirs to give.
        let out = h.at(4, close(R2, 2, Some(ChatOutcome::Resolved)));
        assert!(
            out.contains(r#"c12 event {"event":{"by":"resident:r2","kind":"ended"},"seq":2}"#),
            "{out}"
        );
    }

    #[test]
    fn each_chat_follows_the_rules_of_its_home_municipality() {
        // 0181 assigns by itself, gives 30 s to answer and counts 100 s a
        // chat; 0182 keeps the defaults: by hand, 60 s, 600 s.
        let t0 = Instant::now();
        let mut rules = QueueRules::from(settings(QueueMode::Manual));
        rules.municipalities.insert(
            MunicipalityCode::parse("0181").unwrap(),
            QueueSettings {
                mode: QueueMode::Automatic,
                answer_timeout: Duration::from_secs(30),
                abandon_after: Duration::from_secs(120),
                average_chat: Duration::from_secs(100),
            },
        );
        let mut queue = Queue::new(
            rules,
            ClockAnchor {
                instant: t0,
                unix: 0,
            },
        );
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        for (conn, id) in [(A, "a"), (B, "b")] {
            queue.handle(
                QueueInput::StaffConnected {
                    conn: c(conn),
                    staff: profile(id, "0180"),
                },
                t0,
            );
            queue.handle(
                QueueInput::Availability {
                    conn: c(conn),
                    available: true,
                    max_chats: 1,
                },
                t0,
            );
        }
        let elsewhere = |n: u64| NewConversation {
            home_municipality: MunicipalityCode::parse("0182").unwrap(),
            eligible_municipalities: BTreeSet::from([MunicipalityCode::parse("0180").unwrap()]),
            ..new_conversation(n)
        };
        let out = render(&queue.handle(
            QueueInput::Open {
                conn: c(R2),
                conversation: elsewhere(2),
            },
            at(0),
        ));
        assert!(
            out.contains(r#"c12 queue.status {"eta_secs":600,"position":1,"staff_online":true}"#),
            "{out}"
        );
        let out = render(&queue.handle(
            QueueInput::Open {
                conn: c(R1),
                conversation: new_conversation(1),
            },
            at(1),
        ));
        assert!(
            out.contains("c1 queue.assigned"),
            "0181's chat went to a: {out}"
        );
        assert_eq!(
            queue.record(&room(2)).unwrap().state,
            EntryState::Waiting,
            "0182's chat waits to be claimed"
        );
        // 0181's answer time runs out first, and its chat moves on by itself.
        assert_eq!(queue.next_deadline(), Some(at(31)));
        let out = render(&queue.handle(QueueInput::Tick, at(31)));
        assert!(
            out.contains(r#"c1 queue.unassigned {"reason":"no_answer"}"#),
            "{out}"
        );
        assert!(out.contains("c2 queue.assigned"), "{out}");
        assert_eq!(
            queue.record(&room(1)).unwrap().state,
            EntryState::Assigned(StaffId::parse("b").unwrap())
        );
        // Staff a, free again, takes 0181's next chat at once.
        let out = render(&queue.handle(
            QueueInput::Open {
                conn: c(R3),
                conversation: new_conversation(3),
            },
            at(32),
        ));
        assert!(out.contains("c1 queue.assigned"), "{out}");
        // With both busy, the next one waits, second in line, and is told
        // its own municipality's estimate: one round of 100 s.
        let out = render(&queue.handle(
            QueueInput::Open {
                conn: c(14),
                conversation: new_conversation(4),
            },
            at(33),
        ));
        assert!(
            out.contains(r#"c14 queue.status {"eta_secs":100,"position":2,"staff_online":true}"#),
            "{out}"
        );
    }

    #[test]
    fn leaving_with_nobody_online_offers_the_offline_form() {
        let t0 = Instant::now();
        let mut queue = Queue::new(
            settings(QueueMode::Manual),
            ClockAnchor {
                instant: t0,
                unix: 0,
            },
        );
        let out = render(&queue.handle(
            QueueInput::Open {
                conn: c(R1),
                conversation: new_conversation(1),
            },
            t0,
        ));
        assert!(
            out.contains(r#"c11 queue.offline_form {"service":"stod"}"#),
            "{out}"
        );
        assert!(out.contains(r#""staff_online":false"#), "{out}");
        let out = render(&queue.handle(
            QueueInput::Leave {
                conn: c(R1),
                room: room(1),
            },
            t0,
        ));
        assert_eq!(
            out,
            [
                "persist-entry chat:1 closed",
                r#"c11 queue.offline_form {"service":"stod"}"#,
                r#"c11 room.closed {"reason":"chat_closed"}"#,
                "closed chat:1",
            ]
            .join("\n")
        );
    }

    #[test]
    fn abandoned_waiting_chats_leave_the_queue() {
        let mut h = Harness::new(QueueMode::Manual, 2);
        h.open(0, 1);
        h.at(10, QueueInput::Disconnected { conn: c(R1) });
        // A reload within the limit keeps the place.
        h.at(
            20,
            QueueInput::Join {
                conn: c(R2),
                party: PartyId::parse("resident:r1").unwrap(),
                room: room(1),
            },
        );
        h.at(30, QueueInput::Disconnected { conn: c(R2) });
        assert_eq!(h.at(149, QueueInput::Tick), "");
        let out = h.at(150, QueueInput::Tick);
        assert!(out.contains("persist-entry chat:1 closed"), "{out}");
        assert!(!h.queue.contains(&room(1)));
        let _ = R3;
    }

    #[test]
    fn escalation_opens_a_room_before_telling_anyone() {
        let mut h = Harness::new(QueueMode::Manual, 2);
        h.open(0, 1);
        h.at(
            1,
            QueueInput::Claim {
                conn: c(A),
                room: room(1),
            },
        );
        let out = h.at(
            2,
            QueueInput::EscalateVideo {
                conn: c(A),
                room: room(1),
                meeting_room: RoomId::parse("adhoc:1").unwrap(),
            },
        );
        assert_eq!(
            out,
            [
                "open-meeting adhoc:1",
                "persist 2 video_opened",
                r#"c11 event {"event":{"kind":"video_opened","meeting_room":"adhoc:1"},"seq":2}"#,
                r#"c1 event {"event":{"kind":"video_opened","meeting_room":"adhoc:1"},"seq":2}"#,
            ]
            .join("\n")
        );
    }

    #[test]
    fn restore_puts_chats_back_in_their_places() {
        let t0 = Instant::now();
        let mut queue = Queue::new(
            settings(QueueMode::Manual),
            ClockAnchor {
                instant: t0,
                unix: 0,
            },
        );
        for (ticket, n, state) in [
            (7, 2, EntryState::Assigned(StaffId::parse("a").unwrap())),
            (3, 1, EntryState::Waiting),
        ] {
            let new = new_conversation(n);
            queue.restore(
                QueueEntryRecord {
                    room: new.room,
                    ticket,
                    service: new.service,
                    home_municipality: new.home_municipality,
                    resident: new.resident,
                    anonymous: false,
                    eligible_municipalities: new.eligible_municipalities,
                    state,
                    enqueued_at: 0,
                },
                Vec::new(),
                t0,
            );
        }
        let out = render(&queue.handle(
            QueueInput::Open {
                conn: c(R3),
                conversation: new_conversation(3),
            },
            t0,
        ));
        assert!(
            out.contains(r#"c13 queue.status {"eta_secs":1800,"position":3,"staff_online":false}"#),
            "{out}"
        );
        assert_eq!(queue.record(&room(2)).unwrap().state, EntryState::Waiting);
        assert_eq!(queue.record(&room(3)).unwrap().ticket, 8);
    }
}
