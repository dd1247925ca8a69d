//! The WebSocket protocol: every frame is one JSON object with a version `v`
//! and a `type`. `docs/protocol.md` documents each message with an example.
//!
//! The endpoint calls [`parse_client_frame`] (or [`parse_client_bytes`] for a
//! binary frame) on every frame and [`RateLimiter::check`] before that, then
//! hands the message to the hub. Errors either answer with an `error` frame or
//! close the connection, as [`ProtocolError::close_code`] says.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ids::{
    BookingId, ClientMsgId, InvitationToken, MunicipalityCode, PartyId, RoomId, Seq, ServiceId,
    StaffId,
};

/// The protocol version this crate speaks. A frame with another `v` is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest text frame accepted, in bytes (64 KiB). Larger frames close the
/// connection, because a client that sends them is broken or hostile.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The longest chat message, in characters. It keeps one message readable and
/// leaves room in the frame for the envelope.
pub const MAX_CHAT_CHARS: usize = 4000;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientMessage {
    /// Enter a meeting room (residents and guests wait in the lobby) or
    /// re-attach to a chat conversation after a reconnect.
    #[serde(rename = "join")]
    Join {
        room: RoomId,
        /// The single-use token from a guest link; only guests send it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invitation: Option<InvitationToken>,
    },
    /// Leave a room. Closing the connection leaves every room too.
    #[serde(rename = "leave")]
    Leave { room: RoomId },
    /// Ask for every event after `last_seq` that this party may see.
    #[serde(rename = "resume")]
    Resume { room: RoomId, last_seq: Seq },
    /// Everything up to `seq` has been shown to the user.
    #[serde(rename = "ack")]
    Ack { room: RoomId, seq: Seq },
    #[serde(rename = "chat.send")]
    ChatSend {
        room: RoomId,
        client_id: ClientMsgId,
        text: String,
    },
    #[serde(rename = "chat.typing")]
    ChatTyping { room: RoomId, typing: bool },
    /// Staff admit a party waiting in the lobby.
    #[serde(rename = "lobby.admit")]
    LobbyAdmit { room: RoomId, party: PartyId },
    /// Staff turn away a party waiting in the lobby.
    #[serde(rename = "lobby.decline")]
    LobbyDecline { room: RoomId, party: PartyId },
    /// Staff send an admitted participant back to the lobby.
    #[serde(rename = "lobby.send_back")]
    LobbySendBack { room: RoomId, party: PartyId },
    /// A WebRTC offer for one other participant. A renegotiation, including an
    /// ICE restart after a network change, is just a new offer.
    #[serde(rename = "signal.offer")]
    SignalOffer {
        room: RoomId,
        to: PartyId,
        sdp: String,
    },
    #[serde(rename = "signal.answer")]
    SignalAnswer {
        room: RoomId,
        to: PartyId,
        sdp: String,
    },
    #[serde(rename = "signal.ice")]
    SignalIce {
        room: RoomId,
        to: PartyId,
        candidate: IceCandidate,
    },
    /// Staff create a single-use guest link for an interpreter or a colleague.
    #[serde(rename = "meeting.invite")]
    MeetingInvite { room: RoomId, role: GuestRole },
    /// Staff end the meeting, which completes the booking.
    #[serde(rename = "meeting.end")]
    MeetingEnd { room: RoomId },
    /// A resident opens a pre-assessment chat. The endpoint must resolve this
    /// one itself: it computes eligibility and calls `Hub::open_conversation`.
    #[serde(rename = "queue.open")]
    QueueOpen { service: ServiceId },
    /// A resident leaves the queue before anyone picked the chat up.
    #[serde(rename = "queue.leave")]
    QueueLeave { room: RoomId },
    /// Staff pick up a waiting chat. The first claim wins.
    #[serde(rename = "queue.claim")]
    QueueClaim { room: RoomId },
    /// Staff confirm an automatically assigned chat without writing yet.
    #[serde(rename = "queue.accept")]
    QueueAccept { room: RoomId },
    /// Staff hand an ongoing chat to another eligible staff member.
    #[serde(rename = "queue.transfer")]
    QueueTransfer { room: RoomId, to: StaffId },
    /// Staff say whether they take chats now, and how many at once.
    #[serde(rename = "staff.availability")]
    StaffAvailability { available: bool, max_chats: u32 },
    /// Staff offer booking times to the resident from the chat.
    #[serde(rename = "chat.offer_times")]
    ChatOfferTimes {
        room: RoomId,
        client_id: ClientMsgId,
        times: Vec<OfferedTime>,
    },
    /// Staff move the chat to video at once; this opens an ad-hoc room.
    #[serde(rename = "chat.escalate_video")]
    ChatEscalateVideo { room: RoomId },
    /// Either side closes the chat. Staff say how it ended; a resident
    /// closes without.
    #[serde(rename = "chat.close")]
    ChatClose {
        room: RoomId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<ChatOutcome>,
    },
    /// Staff ask for the canned responses of a service, in a language
    /// (Swedish when none is given).
    #[serde(rename = "canned.list")]
    CannedList {
        service: ServiceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<Language>,
    },
    #[serde(rename = "ping")]
    Ping,
}

/// Every `type` a client may send, so that an unknown one gets its own error
/// code instead of a generic parse error.
pub const CLIENT_MESSAGE_TYPES: &[&str] = &[
    "join",
    "leave",
    "resume",
    "ack",
    "chat.send",
    "chat.typing",
    "lobby.admit",
    "lobby.decline",
    "lobby.send_back",
    "signal.offer",
    "signal.answer",
    "signal.ice",
    "meeting.invite",
    "meeting.end",
    "queue.open",
    "queue.leave",
    "queue.claim",
    "queue.accept",
    "queue.transfer",
    "staff.availability",
    "chat.offer_times",
    "chat.escalate_video",
    "chat.close",
    "canned.list",
    "ping",
];

/// A message to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerMessage {
    /// Sent once after connecting: who the hub thinks this connection is.
    #[serde(rename = "welcome")]
    Welcome { party: PartyId },
    #[serde(rename = "error")]
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        /// The chat message refused, so that the client can keep its text
        /// and say which one it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<ClientMsgId>,
    },
    /// One event of a room's history. Every such event has a per-room `seq`
    /// without gaps; a party sees the ones it was entitled to see.
    #[serde(rename = "event")]
    Event {
        room: RoomId,
        seq: Seq,
        event: RoomEvent,
    },
    /// The answer to `join`: where the party is now and what the room holds.
    #[serde(rename = "joined")]
    Joined {
        room: RoomId,
        state: PresenceState,
        /// The newest `seq` in the room. A fresh client resumes from 0.
        last_seq: Seq,
        participants: Vec<Participant>,
        /// Who waits in the lobby; only staff of the room see it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lobby: Vec<Participant>,
    },
    /// Tells a party in the lobby whether the staff member is there yet or
    /// has been notified.
    #[serde(rename = "lobby.status")]
    LobbyStatus { room: RoomId, staff_present: bool },
    /// Someone knocked in a room of this staff member's municipality while
    /// no staff member was in it. Sent to staff consoles, with a sound.
    #[serde(rename = "lobby.knock")]
    LobbyKnock {
        room: RoomId,
        participant: Participant,
    },
    /// The party was admitted. A `joined` with `state: "admitted"` follows.
    #[serde(rename = "lobby.admitted")]
    LobbyAdmitted { room: RoomId },
    #[serde(rename = "lobby.declined")]
    LobbyDeclined { room: RoomId },
    #[serde(rename = "lobby.sent_back")]
    LobbySentBack { room: RoomId },
    /// An admitted participant's connection dropped. They stay in the
    /// meeting for `grace_secs`: back within it, they continue without the
    /// lobby; after it, the room records `participant_left`.
    #[serde(rename = "participant.away")]
    ParticipantAway {
        room: RoomId,
        party: PartyId,
        grace_secs: u64,
    },
    /// A participant who was away came back within the grace; they will
    /// renegotiate with an ICE restart (or a fresh offer after a reload).
    #[serde(rename = "participant.back")]
    ParticipantBack { room: RoomId, party: PartyId },
    #[serde(rename = "signal.offer")]
    SignalOffer {
        room: RoomId,
        from: PartyId,
        sdp: String,
    },
    #[serde(rename = "signal.answer")]
    SignalAnswer {
        room: RoomId,
        from: PartyId,
        sdp: String,
    },
    #[serde(rename = "signal.ice")]
    SignalIce {
        room: RoomId,
        from: PartyId,
        candidate: IceCandidate,
    },
    /// A chat message is stored; resending the same `client_id` gets the same
    /// answer.
    #[serde(rename = "chat.stored")]
    ChatStored {
        room: RoomId,
        client_id: ClientMsgId,
        seq: Seq,
    },
    #[serde(rename = "chat.typing")]
    ChatTyping {
        room: RoomId,
        party: PartyId,
        typing: bool,
    },
    /// A read receipt: `party` has shown everything up to `seq`.
    #[serde(rename = "chat.read")]
    ChatRead {
        room: RoomId,
        party: PartyId,
        seq: Seq,
    },
    #[serde(rename = "turn.credentials")]
    TurnCredentials {
        room: RoomId,
        credentials: TurnCredentials,
    },
    #[serde(rename = "meeting.invited")]
    MeetingInvited {
        room: RoomId,
        role: GuestRole,
        token: InvitationToken,
    },
    /// The room is gone for this party: the meeting ended, the chat closed,
    /// or the party lost access.
    #[serde(rename = "room.closed")]
    RoomClosed { room: RoomId, reason: CloseReason },
    /// A resident's place in the queue. Sent whenever it changes.
    #[serde(rename = "queue.status")]
    QueueStatus {
        room: RoomId,
        position: u32,
        eta_secs: u64,
        staff_online: bool,
    },
    /// No eligible staff is online: the resident may leave a message instead.
    #[serde(rename = "queue.offline_form")]
    QueueOfflineForm { room: RoomId, service: ServiceId },
    /// Every waiting chat that this staff member may pick up, oldest first,
    /// in one message: sent when a console connects, so that a long queue
    /// costs one slot of the connection's buffer instead of one per chat.
    #[serde(rename = "queue.snapshot")]
    QueueSnapshot { entries: Vec<QueueEntryView> },
    /// A chat that this staff member may pick up joined the queue.
    #[serde(rename = "queue.entry")]
    QueueEntry { entry: QueueEntryView },
    /// A chat left the queue (picked up, closed or abandoned).
    #[serde(rename = "queue.entry_removed")]
    QueueEntryRemoved { room: RoomId },
    /// A chat is now this staff member's to answer.
    #[serde(rename = "queue.assigned")]
    QueueAssigned { entry: QueueEntryView },
    /// A chat was taken from this staff member (timeout, transfer, offline).
    #[serde(rename = "queue.unassigned")]
    QueueUnassigned {
        room: RoomId,
        reason: UnassignReason,
    },
    /// The canned responses of a service in a language: those of that
    /// language, or the Swedish ones when it has none.
    #[serde(rename = "canned.responses")]
    CannedResponses {
        service: ServiceId,
        #[serde(default)]
        language: Language,
        responses: Vec<CannedResponse>,
    },
    #[serde(rename = "pong")]
    Pong,
}

/// What happened in a room. These are the entries of its sequenced history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoomEvent {
    Chat {
        from: PartyId,
        role: Role,
        client_id: ClientMsgId,
        text: String,
        /// Unix seconds, UTC.
        sent_at: i64,
    },
    ParticipantJoined {
        participant: Participant,
    },
    ParticipantLeft {
        party: PartyId,
    },
    /// Someone waits in the lobby; only staff of the room see this.
    Knock {
        participant: Participant,
    },
    /// Someone left the lobby without being admitted; only staff see this.
    LobbyLeft {
        party: PartyId,
    },
    TimesOffered {
        from: PartyId,
        client_id: ClientMsgId,
        times: Vec<OfferedTime>,
    },
    /// The chat was picked up by a staff member.
    Assigned {
        staff: PartyId,
    },
    /// The chat was escalated to video; join `meeting_room`.
    VideoOpened {
        meeting_room: RoomId,
    },
    Ended {
        by: PartyId,
        /// How staff closed a chat; none for a meeting, or a chat the
        /// resident closed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<ChatOutcome>,
    },
}

/// How a pre-assessment chat ended, as the staff member who closed it
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatOutcome {
    /// The question was answered in the chat.
    Resolved,
    /// A meeting was booked.
    Booked,
    /// The resident was referred elsewhere.
    Referred,
    /// The resident was gone before anyone could help.
    NoContact,
}

/// How a party is shown to others in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Resident,
    SocialWorker,
    Interpreter,
}

/// The role a guest link grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestRole {
    Interpreter,
    SocialWorker,
}

impl From<GuestRole> for Role {
    fn from(r: GuestRole) -> Self {
        match r {
            GuestRole::Interpreter => Role::Interpreter,
            GuestRole::SocialWorker => Role::SocialWorker,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub party: PartyId,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    Lobby,
    Admitted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u32>,
}

/// A bookable time offered in a chat. The resident books it through the
/// booking API; the times are RFC 3339 strings made by the `booking` crate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedTime {
    pub slot_id: String,
    pub starts_at: String,
    pub ends_at: String,
}

/// TURN REST credentials, made by the caller for an admitted participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnCredentials {
    pub urls: Vec<String>,
    pub username: String,
    pub password: String,
    pub ttl_secs: u64,
}

/// A queue entry as staff see it: nothing about the resident but the home
/// municipality and whether they are anonymous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntryView {
    pub room: RoomId,
    pub service: ServiceId,
    pub home_municipality: MunicipalityCode,
    pub anonymous: bool,
    /// Unix seconds, UTC.
    pub enqueued_at: i64,
    /// The queue's order: a chat with a lower ticket is served first. Two
    /// chats opened in the same second share `enqueued_at`, never a ticket.
    pub ticket: i64,
}

/// The languages Kontakt speaks, for canned responses. Swedish is the
/// default.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    #[default]
    Sv,
    En,
    Fi,
    Ar,
}

impl Language {
    pub const ALL: [Language; 4] = [Language::Sv, Language::En, Language::Fi, Language::Ar];

    pub fn code(self) -> &'static str {
        match self {
            Language::Sv => "sv",
            Language::En => "en",
            Language::Fi => "fi",
            Language::Ar => "ar",
        }
    }

    pub fn parse(code: &str) -> Option<Language> {
        Language::ALL.into_iter().find(|l| l.code() == code)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CannedResponse {
    pub id: String,
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    MeetingEnded,
    ChatClosed,
    Declined,
    NoShow,
    /// The booking was cancelled or moved.
    Cancelled,
    /// The store failed; rejoin to continue from the stored history.
    StorageUnavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnassignReason {
    NoAnswer,
    Offline,
    Transferred,
}

/// What a booking became when its meeting finished. The caller persists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingOutcome {
    Completed,
    NoShow,
}

/// The reference from a meeting room to its booking, if it has one.
pub type BookingRef = Option<BookingId>;

/// Error codes sent in `error` frames. Clients switch on these, not on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Malformed,
    UnknownType,
    UnsupportedVersion,
    TooLarge,
    BinaryNotSupported,
    InvalidUtf8,
    RateLimited,
    /// The room does not exist or is not this party's to see. Both answer
    /// the same, so that nobody learns which rooms exist.
    NotFound,
    /// The party is in the room's lobby or not in the room at all.
    NotAdmitted,
    Forbidden,
    RoomFull,
    AlreadyTaken,
    InvitationInvalid,
    NotEligible,
    InvalidState,
    /// A well-formed message whose content cannot be taken: chat text over
    /// the limit or blank, or a staff member's close without an outcome.
    /// Nothing of it was stored; the client keeps what it had.
    Invalid,
    /// The endpoint must handle this message itself (see `queue.open`).
    NotHandledHere,
    StorageUnavailable,
}

/// Why a frame was refused before it reached the hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {0} bytes is larger than {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("binary frames are not supported")]
    Binary,
    #[error("frame is not valid UTF-8")]
    InvalidUtf8,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u64),
    #[error("too many messages")]
    RateLimited,
    /// A chat message the protocol cannot take; it is answered in its room
    /// and under its `client_id`.
    #[error("{reason}")]
    InvalidChat {
        reason: String,
        room: RoomId,
        client_id: ClientMsgId,
    },
}

impl ProtocolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::TooLarge(_) => ErrorCode::TooLarge,
            ProtocolError::Binary => ErrorCode::BinaryNotSupported,
            ProtocolError::InvalidUtf8 => ErrorCode::InvalidUtf8,
            ProtocolError::Malformed(_) => ErrorCode::Malformed,
            ProtocolError::UnknownType(_) => ErrorCode::UnknownType,
            ProtocolError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ProtocolError::RateLimited => ErrorCode::RateLimited,
            ProtocolError::InvalidChat { .. } => ErrorCode::Invalid,
        }
    }

    /// The WebSocket close code (RFC 6455, section 7.4.1) if this error must
    /// close the connection, or `None` if an `error` frame is enough.
    ///
    /// Oversized, binary and non-UTF-8 frames close, because the client is not
    /// speaking this protocol at all; the rest leave the connection usable.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ProtocolError::TooLarge(_) => Some(1009),
            ProtocolError::Binary => Some(1003),
            ProtocolError::InvalidUtf8 => Some(1007),
            _ => None,
        }
    }

    /// The `error` frame to send for this error.
    pub fn to_message(&self) -> ServerMessage {
        match self {
            ProtocolError::InvalidChat {
                room, client_id, ..
            } => ServerMessage::Error {
                code: self.code(),
                message: self.to_string(),
                room: Some(room.clone()),
                client_id: Some(client_id.clone()),
            },
            _ => ServerMessage::error(self.code(), self.to_string(), None),
        }
    }
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>, room: Option<RoomId>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            room,
            client_id: None,
        }
    }

    /// The JSON text of this message, with its version, as sent on the wire.
    pub fn to_frame(&self) -> String {
        let mut value = serde_json::to_value(self).expect("server messages always serialise");
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("v".into(), PROTOCOL_VERSION.into());
        }
        value.to_string()
    }

    /// Parses a server frame; clients in Rust (and tests) use this.
    pub fn from_frame(text: &str) -> Result<Self, ProtocolError> {
        let value = versioned_object(text, &[])?;
        serde_json::from_value(value).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }
}

impl ClientMessage {
    /// The JSON text of this message, with its version.
    pub fn to_frame(&self) -> String {
        let mut value = serde_json::to_value(self).expect("client messages always serialise");
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("v".into(), PROTOCOL_VERSION.into());
        }
        value.to_string()
    }

    /// The room this message is about, if any.
    pub fn room(&self) -> Option<&RoomId> {
        use ClientMessage::*;
        match self {
            Join { room, .. }
            | Leave { room }
            | Resume { room, .. }
            | Ack { room, .. }
            | ChatSend { room, .. }
            | ChatTyping { room, .. }
            | LobbyAdmit { room, .. }
            | LobbyDecline { room, .. }
            | LobbySendBack { room, .. }
            | SignalOffer { room, .. }
            | SignalAnswer { room, .. }
            | SignalIce { room, .. }
            | MeetingInvite { room, .. }
            | MeetingEnd { room }
            | QueueLeave { room }
            | QueueClaim { room }
            | QueueAccept { room }
            | QueueTransfer { room, .. }
            | ChatOfferTimes { room, .. }
            | ChatEscalateVideo { room }
            | ChatClose { room, .. } => Some(room),
            QueueOpen { .. } | StaffAvailability { .. } | CannedList { .. } | Ping => None,
        }
    }
}

/// Parses one text frame from a client.
pub fn parse_client_frame(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value = versioned_object(text, CLIENT_MESSAGE_TYPES)?;
    let message: ClientMessage =
        serde_json::from_value(value).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if let ClientMessage::ChatSend {
        text,
        room,
        client_id,
    } = &message
    {
        let refuse = |reason: String| ProtocolError::InvalidChat {
            reason,
            room: room.clone(),
            client_id: client_id.clone(),
        };
        if text.chars().count() > MAX_CHAT_CHARS {
            return Err(refuse(format!(
                "chat text is longer than {MAX_CHAT_CHARS} characters"
            )));
        }
        if text.trim().is_empty() {
            return Err(refuse("chat text is empty".into()));
        }
    }
    Ok(message)
}

/// Parses a frame that arrived as bytes. A binary WebSocket frame should be
/// refused with [`ProtocolError::Binary`] without calling this; this is for
/// transports that hand over raw bytes of a text frame.
pub fn parse_client_bytes(bytes: &[u8]) -> Result<ClientMessage, ProtocolError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8)?;
    parse_client_frame(text)
}

/// Checks size, JSON object shape, version and (when `known` is not empty)
/// the type, and returns the object without its `v`.
fn versioned_object(text: &str, known: &[&str]) -> Result<serde_json::Value, ProtocolError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::TooLarge(text.len()));
    }
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let map = value
        .as_object_mut()
        .ok_or_else(|| ProtocolError::Malformed("a frame must be a JSON object".into()))?;
    match map.remove("v") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(serde_json::Value::Number(n)) => {
            return Err(ProtocolError::UnsupportedVersion(n.as_u64().unwrap_or(0)))
        }
        _ => return Err(ProtocolError::Malformed("missing numeric \"v\"".into())),
    }
    let kind = map
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| ProtocolError::Malformed("missing string \"type\"".into()))?;
    if !known.is_empty() && !known.contains(&kind) {
        return Err(ProtocolError::UnknownType(kind.chars().take(64).collect()));
    }
    Ok(value)
}

/// A per-connection token bucket. The endpoint calls [`RateLimiter::check`]
/// for each frame with the time it arrived; the limiter never reads a clock.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A bucket that allows bursts of `burst` frames and `per_second` frames
    /// per second after that. It starts full.
    pub fn new(burst: u32, per_second: u32, now: Instant) -> Self {
        Self {
            capacity: f64::from(burst.max(1)),
            per_second: f64::from(per_second),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// A limit that lets a person type, draw ICE candidates and reconnect
    /// freely, but stops a script: bursts of 40, then 20 frames a second.
    pub fn for_connection(now: Instant) -> Self {
        Self::new(40, 20, now)
    }

    /// Takes one token, or says the frame must be refused.
    pub fn check(&mut self, now: Instant) -> Result<(), ProtocolError> {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(ProtocolError::RateLimited)
        }
    }

    /// How long until the next frame would be accepted.
    pub fn retry_after(&self) -> Duration {
        if self.tokens >= 1.0 || self.per_second <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `frame` and compares the outcome with `expected`, written as the
    /// message's Debug text or the error's code.
    fn check(frame: &str, expected: Result<&str, ErrorCode>) {
        let got = parse_client_frame(frame);
        match (&got, expected) {
            (Ok(msg), Ok(want)) => assert_eq!(format!("{msg:?}"), want, "frame {frame}"),
            (Err(err), Err(code)) => assert_eq!(err.code(), code, "frame {frame}: {err}"),
            _ => panic!("frame {frame}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn parses_client_frames() {
        check(
            r#"{"v":1,"type":"chat.send","room":"booking:1","client_id":"c1","text":"Hej"}"#,
            Ok(
                r#"ChatSend { room: RoomId("booking:1"), client_id: ClientMsgId("c1"), text: "Hej" }"#,
            ),
        );
        check(
            r#"{"v":1,"type":"resume","room":"chat:9","last_seq":12}"#,
            Ok(r#"Resume { room: RoomId("chat:9"), last_seq: 12 }"#),
        );
        check(r#"{"v":1,"type":"ping"}"#, Ok("Ping"));
        check(
            r#"{"v":1,"type":"join","room":"booking:1","invitation":"tok"}"#,
            Ok(r#"Join { room: RoomId("booking:1"), invitation: Some(InvitationToken("tok")) }"#),
        );
    }

    #[test]
    fn refuses_bad_frames() {
        check("not json", Err(ErrorCode::Malformed));
        check("[1,2]", Err(ErrorCode::Malformed));
        check(r#"{"type":"ping"}"#, Err(ErrorCode::Malformed));
        check(
            r#"{"v":2,"type":"ping"}"#,
            Err(ErrorCode::UnsupportedVersion),
        );
        check(
            r#"{"v":1,"type":"launch.missiles"}"#,
            Err(ErrorCode::UnknownType),
        );
        check(
            r#"{"v":1,"type":"resume","room":"r"}"#,
            Err(ErrorCode::Malformed),
        );
        check(
            r#"{"v":1,"type":"resume","room":"r/../x","last_seq":1}"#,
            Err(ErrorCode::Malformed),
        );
        check(
            r#"{"v":1,"type":"chat.send","room":"r","client_id":"c","text":"  "}"#,
            Err(ErrorCode::Invalid),
        );
        let long = "a".repeat(MAX_CHAT_CHARS + 1);
        check(
            &format!(r#"{{"v":1,"type":"chat.send","room":"r","client_id":"c","text":"{long}"}}"#),
            Err(ErrorCode::Invalid),
        );
        check(
            r#"{"v":1,"type":"chat.close","room":"r","outcome":"happy"}"#,
            Err(ErrorCode::Malformed),
        );
        let huge = format!(
            r#"{{"v":1,"type":"ping","pad":"{}"}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        check(&huge, Err(ErrorCode::TooLarge));
    }

    #[test]
    fn a_refused_chat_message_is_answered_in_its_room_under_its_client_id() {
        let long = "ä".repeat(MAX_CHAT_CHARS + 1);
        let frame = format!(
            r#"{{"v":1,"type":"chat.send","room":"chat:1","client_id":"c7","text":"{long}"}}"#
        );
        let error = parse_client_frame(&frame).unwrap_err();
        assert_eq!(error.close_code(), None, "the connection stays usable");
        let answer = error.to_message().to_frame();
        assert_eq!(
            answer,
            r#"{"client_id":"c7","code":"invalid","message":"chat text is longer than 4000 characters","room":"chat:1","type":"error","v":1}"#
        );
        let exact = "ä".repeat(MAX_CHAT_CHARS);
        let frame = format!(
            r#"{{"v":1,"type":"chat.send","room":"chat:1","client_id":"c7","text":"{exact}"}}"#
        );
        assert!(
            parse_client_frame(&frame).is_ok(),
            "the limit is in characters"
        );
    }

    #[test]
    fn bytes_must_be_utf8_and_errors_say_whether_to_close() {
        let err = parse_client_bytes(&[b'{', 0xff, b'}']).unwrap_err();
        assert_eq!(err, ProtocolError::InvalidUtf8);
        assert_eq!(err.close_code(), Some(1007));
        assert_eq!(ProtocolError::Binary.close_code(), Some(1003));
        assert_eq!(ProtocolError::TooLarge(1).close_code(), Some(1009));
        assert_eq!(ProtocolError::RateLimited.close_code(), None);
        assert!(parse_client_bytes(br#"{"v":1,"type":"ping"}"#).is_ok());
    }

    #[test]
    fn frames_round_trip_with_version() {
        let msg = ServerMessage::Event {
            room: RoomId::parse("booking:1").unwrap(),
            seq: 3,
            event: RoomEvent::ParticipantLeft {
                party: PartyId::parse("resident:7").unwrap(),
            },
        };
        let frame = msg.to_frame();
        assert!(frame.contains(r#""v":1"#), "{frame}");
        assert_eq!(ServerMessage::from_frame(&frame).unwrap(), msg);
        let client = ClientMessage::Ack {
            room: RoomId::parse("booking:1").unwrap(),
            seq: 3,
        };
        assert_eq!(parse_client_frame(&client.to_frame()).unwrap(), client);
    }

    #[test]
    fn rate_limiter_refills_with_time() {
        let t0 = Instant::now();
        let mut bucket = RateLimiter::new(3, 2, t0);
        for _ in 0..3 {
            assert!(bucket.check(t0).is_ok());
        }
        assert_eq!(bucket.check(t0), Err(ProtocolError::RateLimited));
        assert_eq!(bucket.retry_after(), Duration::from_millis(500));
        assert!(bucket.check(t0 + Duration::from_millis(499)).is_err());
        assert!(bucket.check(t0 + Duration::from_millis(1000)).is_ok());
        // A long pause refills only up to the burst size.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.check(later).is_ok());
        }
        assert!(bucket.check(later).is_err());
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// Every example in docs/protocol.md parses, and every message type has
    /// an example, so the document cannot drift from the code.
    #[test]
    fn protocol_document_matches_the_code() {
        let doc = include_str!("../../docs/protocol.md");
        let mut client_types = std::collections::BTreeSet::new();
        let mut server_types = std::collections::BTreeSet::new();
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            let side = match line.trim() {
                "```json client" => "client",
                "```json server" => "server",
                _ => continue,
            };
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let frame = body.join("\n");
            let kind = serde_json::from_str::<serde_json::Value>(&frame)
                .unwrap_or_else(|e| panic!("{frame}: {e}"))["type"]
                .as_str()
                .unwrap()
                .to_owned();
            if side == "client" {
                let parsed = parse_client_frame(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
                assert_eq!(parse_client_frame(&parsed.to_frame()).unwrap(), parsed);
                client_types.insert(kind);
            } else {
                let parsed =
                    ServerMessage::from_frame(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
                assert_eq!(
                    ServerMessage::from_frame(&parsed.to_frame()).unwrap(),
                    parsed
                );
                server_types.insert(kind);
            }
        }
        for kind in CLIENT_MESSAGE_TYPES {
            assert!(client_types.contains(*kind), "no example of client {kind}");
        }
        let server_kinds = [
            "welcome",
            "error",
            "event",
            "joined",
            "lobby.status",
            "lobby.knock",
            "lobby.admitted",
            "lobby.declined",
            "lobby.sent_back",
            "participant.away",
            "participant.back",
            "signal.offer",
            "signal.answer",
            "signal.ice",
            "chat.stored",
            "chat.typing",
            "chat.read",
            "turn.credentials",
            "meeting.invited",
            "room.closed",
            "queue.status",
            "queue.offline_form",
            "queue.snapshot",
            "queue.entry",
            "queue.entry_removed",
            "queue.assigned",
            "queue.unassigned",
            "canned.responses",
            "pong",
        ];
        for kind in server_kinds {
            assert!(server_types.contains(kind), "no example of server {kind}");
        }
    }
}
