//! What the state machines ask their caller to do. They never do I/O
//! themselves; the hub carries these out in order.

use crate::history::StoredEvent;
use crate::identity::StaffAccess;
use crate::ids::{BookingId, ConnectionId, MunicipalityCode, PartyId, RoomId, StaffId};
use crate::protocol::{BookingOutcome, Participant, ServerMessage};
use crate::store::QueueEntryRecord;

/// One thing to do. Within one batch the order matters: a `Persist` must
/// succeed before any `Send` after it, so that nothing is shown (or
/// acknowledged) that a restart could lose.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Send {
        to: ConnectionId,
        message: ServerMessage,
    },
    /// Store an event of a room's history.
    Persist(StoredEvent),
    /// Store a queue entry's current state.
    PersistQueueEntry(QueueEntryRecord),
    /// Make TURN credentials for an admitted participant and send them to
    /// `to` as `turn.credentials`.
    IssueTurnCredentials {
        to: ConnectionId,
        room: RoomId,
        party: PartyId,
    },
    Audit(AuditEntry),
    /// Write what the booking became.
    BookingOutcome {
        booking: BookingId,
        outcome: BookingOutcome,
    },
    /// Someone knocked and no staff member is in the room: tell the staff
    /// the room admits (the booked one first) on their consoles.
    NotifyStaff {
        room: RoomId,
        municipality: MunicipalityCode,
        staff: Option<StaffId>,
        /// Only these staff members' consoles hear the knock.
        staff_access: StaffAccess,
        participant: Participant,
    },
    /// Open an ad-hoc meeting room for a chat that was escalated to video.
    OpenAdHocMeeting(AdHocMeeting),
    /// A chat closed. A signed-in resident keeps the transcript on
    /// "My pages"; the caller applies retention to an anonymous one.
    ConversationClosed {
        room: RoomId,
        resident: PartyId,
        anonymous: bool,
    },
}

/// A staff read of a resident's conversation or meeting, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub actor: PartyId,
    pub action: AuditAction,
    pub room: RoomId,
    /// The resident whose data was read.
    pub subject: PartyId,
    /// The resident's home municipality, on whose behalf the work is done.
    pub on_behalf_of: Option<MunicipalityCode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// Staff took a chat (claim, automatic assignment or transfer) and can
    /// now read all of it.
    OpenConversation,
    /// Staff re-read a conversation's history through `join` or `resume`.
    ReadConversation,
    /// Staff entered a meeting room or re-read its history.
    ReadMeeting,
    /// Staff the room does not admit asked to enter it or act in it, and
    /// were answered as if it did not exist.
    MeetingRefused,
    /// Staff let a guest (an interpreter or a colleague who came through a
    /// guest link) into a meeting.
    AdmitGuest,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::OpenConversation => "conversation.open",
            AuditAction::ReadConversation => "conversation.read",
            AuditAction::ReadMeeting => "meeting.read",
            AuditAction::MeetingRefused => "meeting.enter",
            AuditAction::AdmitGuest => "meeting.guest_admit",
        }
    }

    /// Whether the entry records a refusal rather than a read.
    pub fn refused(self) -> bool {
        matches!(self, AuditAction::MeetingRefused)
    }
}

/// What the hub needs to open the room of an escalated chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdHocMeeting {
    pub room: RoomId,
    pub conversation: RoomId,
    pub performing_municipality: MunicipalityCode,
    pub staff: StaffId,
    pub resident: PartyId,
    pub home_municipality: MunicipalityCode,
}

/// Shorthand for a `Send`.
pub(crate) fn send(to: ConnectionId, message: ServerMessage) -> Outbound {
    Outbound::Send { to, message }
}
