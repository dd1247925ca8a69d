//! Property tests of the chat queue: random opens, claims, availability
//! changes, disconnects, transfers, closes and timer ticks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use signaling::ids::{ConnectionId, MunicipalityCode, PartyId, RoomId, ServiceId, StaffId};
use signaling::outbound::Outbound;
use signaling::protocol::ServerMessage;
use signaling::queue::{
    EntryState, NewConversation, Queue, QueueInput, QueueMode, QueueSettings, StaffProfile,
};
use signaling::room::ClockAnchor;

const CAP: u32 = 2;
/// Connections 0 and 1 are staff a and b (eligible), 2 is staff x of a
/// municipality the policy excludes, 10.. are residents.
const STAFF: [(&str, &str); 3] = [("a", "0180"), ("b", "0180"), ("x", "0999")];

#[derive(Debug, Clone)]
enum Step {
    Open(u8),
    StaffUp(u8),
    StaffDown(u8),
    Claim(u8, u8),
    Accept(u8, u8),
    Chat(u8, u8),
    Transfer(u8, u8, u8),
    Close(u8, u8),
    Leave(u8),
    Tick(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..6).prop_map(Step::Open),
        2 => (0u8..3).prop_map(Step::StaffUp),
        1 => (0u8..3).prop_map(Step::StaffDown),
        3 => (0u8..3, 0u8..6).prop_map(|(s, r)| Step::Claim(s, r)),
        1 => (0u8..3, 0u8..6).prop_map(|(s, r)| Step::Accept(s, r)),
        2 => (0u8..13, 0u8..6).prop_map(|(c, r)| Step::Chat(c, r)),
        1 => (0u8..3, 0u8..6, 0u8..3).prop_map(|(s, r, t)| Step::Transfer(s, r, t)),
        1 => (0u8..13, 0u8..6).prop_map(|(c, r)| Step::Close(c, r)),
        1 => (0u8..6).prop_map(Step::Leave),
        2 => (0u64..90).prop_map(Step::Tick),
    ]
}

fn room(n: u8) -> RoomId {
    RoomId::parse(format!("chat:{n}")).unwrap()
}

fn resident_conn(n: u8) -> ConnectionId {
    ConnectionId(10 + u64::from(n))
}

fn conn(c: u8) -> ConnectionId {
    // 0..3 are staff, anything above addresses a resident connection.
    if c < 3 {
        ConnectionId(u64::from(c))
    } else {
        resident_conn(c - 3)
    }
}

fn inputs(step: &Step, now: &mut Instant) -> Vec<QueueInput> {
    match step {
        Step::Open(n) => vec![QueueInput::Open {
            conn: resident_conn(*n),
            conversation: NewConversation {
                room: room(*n),
                service: ServiceId::parse("stod").unwrap(),
                home_municipality: MunicipalityCode::parse("0181").unwrap(),
                resident: PartyId::parse(format!("resident:r{n}")).unwrap(),
                anonymous: false,
                eligible_municipalities: BTreeSet::from([
                    MunicipalityCode::parse("0180").unwrap(),
                    MunicipalityCode::parse("0181").unwrap(),
                ]),
            },
        }],
        Step::StaffUp(s) => {
            let (id, m) = STAFF[usize::from(*s)];
            vec![
                QueueInput::StaffConnected {
                    conn: conn(*s),
                    staff: StaffProfile {
                        id: StaffId::parse(id).unwrap(),
                        municipality: MunicipalityCode::parse(m).unwrap(),
                        services: BTreeSet::from([ServiceId::parse("stod").unwrap()]),
                    },
                },
                QueueInput::Availability {
                    conn: conn(*s),
                    available: true,
                    max_chats: CAP,
                },
            ]
        }
        Step::StaffDown(s) => vec![QueueInput::Disconnected { conn: conn(*s) }],
        Step::Claim(s, r) => vec![QueueInput::Claim {
            conn: conn(*s),
            room: room(*r),
        }],
        Step::Accept(s, r) => vec![QueueInput::Accept {
            conn: conn(*s),
            room: room(*r),
        }],
        Step::Chat(c, r) => vec![QueueInput::Chat {
            conn: conn(*c),
            room: room(*r),
            client_id: "m".parse().unwrap(),
            text: "hej".into(),
        }],
        Step::Transfer(s, r, t) => vec![QueueInput::Transfer {
            conn: conn(*s),
            room: room(*r),
            to: StaffId::parse(STAFF[usize::from(*t)].0).unwrap(),
        }],
        Step::Close(c, r) => vec![QueueInput::Close {
            conn: conn(*c),
            room: room(*r),
            // Every other close by staff lacks its outcome, and must be
            // refused without harm.
            outcome: (c % 2 == 0).then_some(signaling::protocol::ChatOutcome::Referred),
        }],
        Step::Leave(n) => vec![QueueInput::Leave {
            conn: resident_conn(*n),
            room: room(*n),
        }],
        Step::Tick(secs) => {
            *now += Duration::from_secs(*secs);
            vec![QueueInput::Tick]
        }
    }
}

fn run(mode: QueueMode, steps: &[Step]) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let settings = QueueSettings {
        mode,
        answer_timeout: Duration::from_secs(60),
        abandon_after: Duration::from_secs(600),
        average_chat: Duration::from_secs(300),
    };
    let mut queue = Queue::new(
        settings,
        ClockAnchor {
            instant: t0,
            unix: 0,
        },
    );
    let mut now = t0;
    let mut positions: BTreeMap<ConnectionId, u32> = BTreeMap::new();
    for step in steps {
        for input in inputs(step, &mut now) {
            for o in queue.handle(input, now) {
                if let Outbound::Send { to, message } = &o {
                    // The excluded municipality's staff hear nothing but
                    // "not found" answers to their own requests.
                    if *to == ConnectionId(2) {
                        let allowed = matches!(message, ServerMessage::Error { .. });
                        prop_assert!(allowed, "excluded staff got {message:?} after {step:?}");
                    }
                    if let ServerMessage::QueueStatus { position, .. } = message {
                        positions.insert(*to, *position);
                    }
                }
            }
        }
        // Nobody holds more chats than their limit.
        let mut load: BTreeMap<StaffId, u32> = BTreeMap::new();
        for record in queue.records() {
            if let EntryState::Assigned(staff) = &record.state {
                *load.entry(staff.clone()).or_default() += 1;
                prop_assert_ne!(staff.as_str(), "x");
            }
        }
        prop_assert!(load.values().all(|n| *n <= CAP), "{load:?}");
        // Waiting residents were last told positions 1..n in ticket order.
        let mut waiting: Vec<(i64, ConnectionId)> = queue
            .records()
            .filter(|r| r.state == EntryState::Waiting)
            .map(|r| {
                let n: u8 = r.room.as_str()[5..].parse().unwrap();
                (r.ticket, resident_conn(n))
            })
            .collect();
        waiting.sort();
        for (i, (_, c)) in waiting.iter().enumerate() {
            prop_assert_eq!(
                positions.get(c).copied(),
                Some(i as u32 + 1),
                "after {:?}",
                step
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn manual_queue_keeps_its_invariants(steps in prop::collection::vec(step(), 1..50)) {
        run(QueueMode::Manual, &steps)?;
    }

    #[test]
    fn automatic_queue_keeps_its_invariants(steps in prop::collection::vec(step(), 1..50)) {
        run(QueueMode::Automatic, &steps)?;
    }
}
