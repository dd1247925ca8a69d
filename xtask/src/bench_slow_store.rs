//! `cargo xtask bench signaling slow-store`: does a slow audit write hold up
//! chat in other rooms? The hub runs in this process on the memory store
//! and the in-process bus, with effects whose audit write takes a set time
//! (200 ms by default, as a stalled PostgreSQL might). One meeting room
//! produces audited reads at a steady rate (a staff member re-reading its
//! history); the other rooms chat, open-loop, and each message's round trip
//! is counted from its planned send time until the other party of its room
//! receives it. The same load runs first with audit writes that take no
//! time, as the peer.
//!
//! Options: `--seconds N` (default 10) per run, `--rooms N` chatting rooms
//! (default 20), `--rate N` messages a second over all of them (default
//! 500), `--audit-ms N` (default 200), `--reads N` audited reads a second
//! in the slow room (default 20).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use signaling::bus::InProcessBus;
use signaling::hub::{Effects, Hub, HubSettings};
use signaling::identity::Identity;
use signaling::ids::{BookingId, ConnectionId, MunicipalityCode, PartyId, RoomId, StaffId};
use signaling::outbound::AuditEntry;
use signaling::protocol::{
    BookingOutcome, ClientMessage, Participant, PresenceState, ServerMessage, TurnCredentials,
};
use signaling::queue::{QueueMode, QueueSettings};
use signaling::room::{MeetingSetup, StaffAccess};
use signaling::store::MemoryStore;
use tokio::sync::mpsc::Receiver;

use crate::bench_booking::{flag, ms, percentile};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let load = Load {
        seconds: flag(args, "--seconds").unwrap_or(10),
        rooms: flag(args, "--rooms").unwrap_or(20),
        rate: flag(args, "--rate").unwrap_or(500),
        reads: flag(args, "--reads").unwrap_or(20),
    };
    let audit = Duration::from_millis(flag(args, "--audit-ms").unwrap_or(200));
    println!(
        "cargo xtask bench signaling slow-store --seconds {} --rooms {} --rate {} --reads {} --audit-ms {}",
        load.seconds,
        load.rooms,
        load.rate,
        load.reads,
        audit.as_millis()
    );
    println!("(the hub in process: memory store, in-process bus, a dev build of signaling)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for audit in [Duration::ZERO, audit] {
        let figures = runtime.block_on(scenario(&load, audit))?;
        println!(
            "audit write {:>4} ms: chat round trip p50 {:>7.2} ms, p99 {:>7.2} ms, max {:>8.2} ms over {} messages (lost {}); {} audited reads made, {} written by the end",
            audit.as_millis(),
            ms(figures.p50),
            ms(figures.p99),
            ms(figures.max),
            figures.received,
            figures.lost,
            figures.reads,
            figures.audited,
        );
    }
    Ok(())
}

struct Load {
    seconds: u64,
    rooms: u64,
    rate: u64,
    reads: u64,
}

struct Figures {
    p50: Duration,
    p99: Duration,
    max: Duration,
    received: usize,
    lost: usize,
    reads: u64,
    audited: u64,
}

/// Effects whose audit write takes `delay`, and count the writes.
struct SlowAudit {
    delay: Duration,
    written: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl Effects for SlowAudit {
    async fn audit(&self, _entry: AuditEntry) {
        tokio::time::sleep(self.delay).await;
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    async fn booking_outcome(&self, _booking: &BookingId, _outcome: BookingOutcome) {}
    fn turn_credentials(&self, _room: &RoomId, _party: &PartyId) -> Option<TurnCredentials> {
        None
    }
    async fn staff_notified(
        &self,
        _room: &RoomId,
        _municipality: &MunicipalityCode,
        _staff: Option<&StaffId>,
        _participant: &Participant,
    ) {
    }
    async fn conversation_closed(&self, _room: &RoomId, _resident: &PartyId, _anonymous: bool) {}
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("a valid id")
}

/// Booking `n`'s meeting room: staff `s<n>` and resident `r<n>`, both let
/// straight in.
fn meeting(hub: &Hub, n: u64) -> MeetingSetup {
    MeetingSetup {
        room: id(&format!("booking:b{n}")),
        booking: Some(id(&format!("b{n}"))),
        performing_municipality: id("0180"),
        staff_access: StaffAccess::only([id(&format!("s{n}"))]),
        staff: Some(id(&format!("s{n}"))),
        resident: id(&format!("resident:r{n}")),
        home_municipality: Some(id("0180")),
        starts_at: None,
        no_show_grace: Duration::from_secs(3600),
        pre_admitted: vec![id(&format!("resident:r{n}"))],
        clock: hub.clock(),
    }
}

/// Connects staff and resident of room `n` and waits until both are in.
async fn enter(
    hub: &Hub,
    n: u64,
) -> anyhow::Result<(
    ConnectionId,
    Receiver<ServerMessage>,
    ConnectionId,
    Receiver<ServerMessage>,
)> {
    hub.open_meeting(meeting(hub, n)).await?;
    let staff = Identity::Staff {
        id: id(&format!("s{n}")),
        municipality: id("0180"),
        may_handle: BTreeSet::new(),
    };
    let resident = Identity::Resident {
        id: id(&format!("r{n}")),
        home_municipality: id("0180"),
    };
    let room: RoomId = id(&format!("booking:b{n}"));
    let mut joined = Vec::new();
    for identity in [staff, resident] {
        let (conn, mut rx) = hub.connect(identity).await;
        drop(
            hub.submit(
                conn,
                ClientMessage::Join {
                    room: room.clone(),
                    invitation: None,
                },
            )
            .await,
        );
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("the hub dropped a connection"))?;
            if let ServerMessage::Joined { state, .. } = message {
                anyhow::ensure!(state == PresenceState::Admitted, "not let in");
                break;
            }
        }
        joined.push((conn, rx));
    }
    let (resident, staff) = (joined.pop().unwrap(), joined.pop().unwrap());
    Ok((staff.0, staff.1, resident.0, resident.1))
}

async fn scenario(load: &Load, audit: Duration) -> anyhow::Result<Figures> {
    let effects = Arc::new(SlowAudit {
        delay: audit,
        written: Default::default(),
    });
    let settings = HubSettings {
        queue: QueueSettings {
            mode: QueueMode::Manual,
            answer_timeout: Duration::from_secs(60),
            abandon_after: Duration::from_secs(300),
            average_chat: Duration::from_secs(600),
        }
        .into(),
        connection_buffer: 4096,
    };
    let hub = Hub::new(
        settings,
        Arc::new(MemoryStore::new()),
        Arc::new(InProcessBus::default()),
        effects.clone(),
    );
    // Room 0 is the one whose reads are audited slowly.
    let (reader, mut reader_rx, _, _) = enter(&hub, 0).await?;
    tokio::spawn(async move { while reader_rx.recv().await.is_some() {} });
    let mut chatting = Vec::new();
    for n in 1..=load.rooms {
        chatting.push(enter(&hub, n).await?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(load.seconds);
    // The audited reads: a resume of room 0's history at a steady rate.
    let reads = {
        let hub = hub.clone();
        let every = Duration::from_secs_f64(1.0 / load.reads.max(1) as f64);
        tokio::spawn(async move {
            let mut made = 0u64;
            let mut next = start;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let resume = ClientMessage::Resume {
                    room: id("booking:b0"),
                    last_seq: 0,
                };
                drop(hub.submit(reader, resume).await);
                made += 1;
                next += every;
            }
            made
        })
    };
    // Each chatting room: the resident sends, the staff member receives.
    let per_room = load.rate.max(1) as f64 / load.rooms.max(1) as f64;
    let every = Duration::from_secs_f64(1.0 / per_room);
    let mut receivers = Vec::new();
    for (n, (_, mut staff_rx, resident, mut resident_rx)) in chatting.into_iter().enumerate() {
        tokio::spawn(async move { while resident_rx.recv().await.is_some() {} });
        let hub = hub.clone();
        let room: RoomId = id(&format!("booking:b{}", n + 1));
        // Rooms start apart, so that their messages spread over time.
        let offset = every.mul_f64(n as f64 / load.rooms as f64);
        let sender = tokio::spawn(async move {
            let mut planned = Vec::new();
            let mut next = start + offset;
            let mut k = 0u64;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let send = ClientMessage::ChatSend {
                    room: room.clone(),
                    client_id: id(&format!("m{k}")),
                    text: format!("{k}"),
                };
                drop(hub.submit(resident, send).await);
                planned.push(next);
                k += 1;
                next += every;
            }
            planned
        });
        let first = start + offset;
        receivers.push(tokio::spawn(async move {
            // Message k was planned for `first + k * every`; whatever has
            // not arrived a second after the last was planned is lost.
            let mut latencies = Vec::new();
            let deadline = tokio::time::Instant::from(end + Duration::from_secs(1));
            while let Ok(Some(message)) = tokio::time::timeout_at(deadline, staff_rx.recv()).await {
                let received = Instant::now();
                if let ServerMessage::Event {
                    event: signaling::protocol::RoomEvent::Chat { text, .. },
                    ..
                } = message
                {
                    let k: u32 = text.parse().expect("the bench's own text");
                    latencies.push(received - (first + every * k));
                }
            }
            let planned = sender.await.expect("the sender runs to its end").len();
            (latencies, planned)
        }));
    }
    let mut latencies = Vec::new();
    let mut sent = 0;
    for receiver in receivers {
        let (mut room, planned) = receiver.await?;
        sent += planned;
        latencies.append(&mut room);
    }
    let reads = reads.await?;
    latencies.sort();
    anyhow::ensure!(!latencies.is_empty(), "no message arrived");
    Ok(Figures {
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: *latencies.last().expect("not empty"),
        received: latencies.len(),
        lost: sent - latencies.len(),
        reads,
        audited: effects.written.load(std::sync::atomic::Ordering::Relaxed),
    })
}
