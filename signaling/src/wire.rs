//! What the switchboard hands to the bus for other nodes: a message for a
//! connection another node holds, and a meeting's setup in a form that
//! means the same on every node. `cluster` sends and receives them; the
//! switchboard only makes them, so neither needs the other for these.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::StaffAccess;
use crate::ids::{BookingId, ConnectionId, MunicipalityCode, PartyId, RoomId, StaffId};
use crate::protocol::ServerMessage;
use crate::room::{ClockAnchor, MeetingSetup};

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
