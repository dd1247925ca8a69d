//! Property tests of the meeting room: random sequences of joins, admissions,
//! chat, signals, acks, resumes, leaves, dropped connections and the
//! passing of time, checked against the invariants
//! that matter for secrecy and delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use signaling::ids::{
    BookingId, ConnectionId, InvitationToken, MunicipalityCode, PartyId, RoomId, Seq, StaffId,
};
use signaling::outbound::Outbound;
use signaling::protocol::{GuestRole, ServerMessage};
use signaling::room::{ClockAnchor, Joiner, MeetingSetup, Room, RoomInput, Signal, StaffAccess};

/// Connections 0..6 and who is behind each.
fn joiner(conn: u8) -> Joiner {
    let staff = |id: &str| Joiner::Staff {
        id: StaffId::parse(id).unwrap(),
    };
    match conn {
        0 => staff("s1"),
        1 => staff("s2"),
        2 | 3 => Joiner::Resident {
            party: PartyId::parse("resident:r1").unwrap(),
        },
        4 => Joiner::Guest {
            invitation: InvitationToken::parse("tok1").unwrap(),
        },
        _ => staff("s9"),
    }
}

fn party(n: u8) -> PartyId {
    let s = [
        "staff:s1",
        "staff:s2",
        "resident:r1",
        "guest:tok1",
        "staff:s9",
    ][usize::from(n % 5)];
    PartyId::parse(s).unwrap()
}

#[derive(Debug, Clone)]
enum Step {
    Join(u8),
    Leave(u8),
    /// The connection closes without `leave`.
    Drop(u8),
    Admit(u8, u8),
    Decline(u8, u8),
    SendBack(u8, u8),
    Chat(u8, u8),
    Offer(u8, u8),
    Ack(u8, Seq),
    Resume(u8, Seq),
    Invite(u8),
    End(u8),
    Tick(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let c = 0u8..6;
    prop_oneof![
        4 => c.clone().prop_map(Step::Join),
        1 => c.clone().prop_map(Step::Leave),
        2 => c.clone().prop_map(Step::Drop),
        3 => (c.clone(), 0u8..5).prop_map(|(a, b)| Step::Admit(a, b)),
        1 => (c.clone(), 0u8..5).prop_map(|(a, b)| Step::Decline(a, b)),
        1 => (c.clone(), 0u8..5).prop_map(|(a, b)| Step::SendBack(a, b)),
        4 => (c.clone(), 0u8..4).prop_map(|(a, b)| Step::Chat(a, b)),
        2 => (c.clone(), 0u8..5).prop_map(|(a, b)| Step::Offer(a, b)),
        1 => (c.clone(), 0u64..12).prop_map(|(a, b)| Step::Ack(a, b)),
        2 => (c.clone(), 0u64..12).prop_map(|(a, b)| Step::Resume(a, b)),
        1 => c.clone().prop_map(Step::Invite),
        1 => c.clone().prop_map(Step::End),
        1 => (0u64..2000).prop_map(Step::Tick),
        // Short ticks, around the away grace.
        1 => (0u64..40).prop_map(Step::Tick),
    ]
}

fn input(step: &Step) -> RoomInput {
    let conn = |c: &u8| ConnectionId(u64::from(*c));
    match step {
        Step::Join(c) => RoomInput::Join {
            conn: conn(c),
            joiner: joiner(*c),
        },
        Step::Leave(c) => RoomInput::Leave { conn: conn(c) },
        Step::Drop(c) => RoomInput::Disconnected { conn: conn(c) },
        Step::Admit(c, p) => RoomInput::Admit {
            conn: conn(c),
            party: party(*p),
        },
        Step::Decline(c, p) => RoomInput::Decline {
            conn: conn(c),
            party: party(*p),
        },
        Step::SendBack(c, p) => RoomInput::SendBack {
            conn: conn(c),
            party: party(*p),
        },
        Step::Chat(c, id) => RoomInput::Chat {
            conn: conn(c),
            client_id: format!("m{c}-{id}").parse().unwrap(),
            text: "hej".into(),
        },
        Step::Offer(c, p) => RoomInput::Signal {
            conn: conn(c),
            to: party(*p),
            signal: Signal::Offer("v=0".into()),
        },
        Step::Ack(c, seq) => RoomInput::Ack {
            conn: conn(c),
            seq: *seq,
        },
        Step::Resume(c, seq) => RoomInput::Resume {
            conn: conn(c),
            last_seq: *seq,
        },
        Step::Invite(c) => RoomInput::Invite {
            conn: conn(c),
            role: GuestRole::Interpreter,
            token: "tok1".parse().unwrap(),
        },
        Step::End(c) => RoomInput::End { conn: conn(c) },
        Step::Tick(_) => RoomInput::Tick,
    }
}

/// Whether a message carries anything from inside the room.
fn is_room_content(message: &ServerMessage) -> bool {
    matches!(
        message,
        ServerMessage::Event { .. }
            | ServerMessage::SignalOffer { .. }
            | ServerMessage::SignalAnswer { .. }
            | ServerMessage::SignalIce { .. }
            | ServerMessage::ChatStored { .. }
            | ServerMessage::ChatTyping { .. }
            | ServerMessage::ChatRead { .. }
            | ServerMessage::TurnCredentials { .. }
            | ServerMessage::ParticipantAway { .. }
            | ServerMessage::ParticipantBack { .. }
    ) || matches!(message, ServerMessage::Joined { participants, .. } if !participants.is_empty())
}

fn setup(t0: Instant) -> MeetingSetup {
    MeetingSetup {
        room: RoomId::parse("booking:b1").unwrap(),
        booking: Some(BookingId::parse("b1").unwrap()),
        performing_municipality: MunicipalityCode::parse("0180").unwrap(),
        staff_access: StaffAccess::only(["s1", "s2"].map(|s| StaffId::parse(s).unwrap())),
        staff: Some(StaffId::parse("s1").unwrap()),
        resident: PartyId::parse("resident:r1").unwrap(),
        home_municipality: None,
        starts_at: Some(t0 + Duration::from_secs(300)),
        no_show_grace: Duration::from_secs(600),
        pre_admitted: Vec::new(),
        clock: ClockAnchor {
            instant: t0,
            unix: 0,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Nothing from inside the room reaches a connection whose party was not
    /// admitted before or after the step (a party sent back is told it left;
    /// an admitted one gets its welcome).
    #[test]
    fn nothing_reaches_a_party_that_is_not_admitted(steps in prop::collection::vec(step(), 1..60)) {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        let mut now = t0;
        for step in &steps {
            if let Step::Tick(secs) = step {
                now += Duration::from_secs(*secs);
            }
            let before: BTreeMap<ConnectionId, bool> = (0..6)
                .map(|c| {
                    let conn = ConnectionId(c);
                    (conn, room.party_of(conn).is_some_and(|p| room.is_admitted(p)))
                })
                .collect();
            let out = room.handle(input(step), now);
            for o in &out {
                let to = match o {
                    Outbound::Send { to, message } if is_room_content(message) => *to,
                    Outbound::IssueTurnCredentials { to, .. } => *to,
                    _ => continue,
                };
                let after = room.party_of(to).is_some_and(|p| room.is_admitted(p));
                prop_assert!(before[&to] || after, "{step:?} sent {o:?} to a party outside the room");
            }
        }
    }

    /// Sequence numbers are persisted in order without gaps, each before it
    /// is delivered, every connection sees them strictly increasing, and a
    /// resume from any point replays them in order.
    #[test]
    fn sequence_numbers_have_no_gaps(steps in prop::collection::vec(step(), 1..60)) {
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        let mut persisted: Vec<Seq> = Vec::new();
        let mut live: BTreeMap<ConnectionId, Seq> = BTreeMap::new();
        for step in &steps {
            let out = room.handle(input(step), t0);
            let resuming = matches!(step, Step::Resume(..));
            let mut replayed: BTreeMap<ConnectionId, Seq> = BTreeMap::new();
            for o in &out {
                match o {
                    Outbound::Persist(e) => {
                        prop_assert_eq!(e.seq, persisted.len() as Seq + 1);
                        persisted.push(e.seq);
                    }
                    Outbound::Send { to, message: ServerMessage::Event { seq, .. } } => {
                        prop_assert!(persisted.contains(seq), "seq {} delivered before it was stored", seq);
                        let last = if resuming { replayed.entry(*to).or_insert(0) } else { live.entry(*to).or_insert(0) };
                        prop_assert!(*seq > *last, "seq {} after {} on {:?}", seq, last, to);
                        *last = *seq;
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(room.last_seq(), persisted.len() as Seq);
        }
        let all: BTreeSet<Seq> = persisted.iter().copied().collect();
        prop_assert_eq!(all.len(), persisted.len());
    }

    /// The history never announces a party twice or lets one leave twice:
    /// per party, `participant_joined` and `participant_left` alternate,
    /// however connections drop, come back within the away grace or after
    /// it, leave or are sent back. A party back within the grace is told
    /// to the others live (`participant.back`), not recorded again.
    #[test]
    fn arrivals_and_departures_alternate(steps in prop::collection::vec(step(), 1..80)) {
        use signaling::protocol::RoomEvent;
        let t0 = Instant::now();
        let mut room = Room::new(setup(t0));
        let mut now = t0;
        let mut inside: BTreeSet<PartyId> = BTreeSet::new();
        for step in &steps {
            if let Step::Tick(secs) = step {
                now += Duration::from_secs(*secs);
            }
            for o in room.handle(input(step), now) {
                let Outbound::Persist(stored) = o else { continue };
                match &stored.event {
                    RoomEvent::ParticipantJoined { participant } => {
                        prop_assert!(inside.insert(participant.party.clone()), "{step:?}: {} joined twice", participant.party);
                    }
                    RoomEvent::ParticipantLeft { party } => {
                        prop_assert!(inside.remove(party), "{step:?}: {party} left twice");
                    }
                    _ => {}
                }
            }
        }
    }
}
