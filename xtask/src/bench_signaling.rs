//! `cargo xtask bench signaling`: one `target/release/kontakt` node, then two
//! over NATS, under WebSocket load, each figure beside the same load against
//! a bare tokio-tungstenite server measured in the same run as the ceiling.
//!
//! It prints how many idle connections one node holds and the server's RSS
//! per connection, chat round trips (sent by one party of a meeting room,
//! received by the other) at 1,000 and 5,000 messages a second across 1,000
//! rooms, the most messages a second each server delivers, and the round
//! trips again with the resident on one node and the staff member on
//! another. The load is open-loop: every message has a planned send time,
//! and its latency is counted from that time, so a server that falls behind
//! cannot hide it by slowing the sender down.
//!
//! The ceiling runs in a child process (this program again, with
//! `--echo-server`), so that its CPU and memory are its own and it has file
//! descriptors of its own. It passes each text frame to the other
//! connection of its room, which is what the hub does for a chat message
//! minus parsing, storing and the `chat.stored` answer.
//!
//! `--kontakt-binary PATH` runs another build of the server (a commit before
//! a change, for a turn-about comparison), as `bench booking` does.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use booking::accounts;
use booking::bookings::{self, SearchQuery};
use booking::sessions::Subject;
use booking::testing::TestDb;
use booking::{BookingId, EmailAddress, Language, MunicipalityCode, ServiceCode};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use jiff::Timestamp;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use web::auth::Keys;

use crate::bench_booking::{
    add_staff, flag, ms, percentile, session_token, start_server, Server, SECRET,
};
use crate::bench_relay::{clock_ticks_per_second, cpu_ticks, status_kib};

/// Staff members the bench adds, each available around the clock, so that
/// the rooms' bookings fit in a few days.
const BENCH_STAFF: usize = 40;
/// The service and municipality of every bench booking: open to residents
/// of Helsingborg in Helsingborg.
const SERVICE: &str = "stod-till-anhoriga";
const MUNICIPALITY: &str = "1283";
/// Client tasks that send the planned messages.
const SENDERS: usize = 4;
/// Loopback source addresses the clients connect from, round robin, so
/// that ephemeral ports never run out.
const SOURCES: u8 = 4;
/// Connections opened at once.
const OPENING: usize = 128;
/// Frames a second per connection in the saturation step: under the hub's
/// limit of 20 a second per connection, so that no frame is refused.
const SATURATION_PER_CONNECTION: f64 = 15.0;
/// File descriptors kept free beside the sockets, for the database pool,
/// the listener, the HTTP client and the like.
const SPARE_FDS: u64 = 300;

pub(crate) type Socket = WebSocketStream<TcpStream>;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.first().map(String::as_str) == Some("queue") {
        return crate::bench_queue::run(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("slow-store") {
        return crate::bench_slow_store::run(&args[1..]);
    }
    if let Some(port) = flag(args, "--echo-server") {
        return echo_server(u16::try_from(port).context("--echo-server takes a port")?);
    }
    let asked = flag(args, "--connections").unwrap_or(20_000);
    let seconds = flag(args, "--seconds").unwrap_or(10);
    let rooms = flag(args, "--rooms").unwrap_or(1000).max(1) as usize;
    let postgres = args.iter().any(|a| a == "--postgres");
    let fd_limit = raise_fd_limit()?;
    // `--kontakt-binary` runs a binary built elsewhere (another commit, for
    // a turn-about comparison); otherwise these sources' release build.
    crate::bench_booking::prepare_kontakt_binary(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let options = Options {
            asked,
            seconds,
            rooms,
            postgres,
            fd_limit,
        };
        bench(options).await
    })
}

struct Options {
    asked: u64,
    seconds: u64,
    rooms: usize,
    postgres: bool,
    fd_limit: u64,
}

/// Raises this process's soft limit of open files to its hard limit; the
/// servers it starts inherit it. Returns the limit.
pub(crate) fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

async fn bench(options: Options) -> anyhow::Result<()> {
    let Options {
        asked,
        seconds,
        rooms,
        postgres,
        fd_limit,
    } = options;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# cargo xtask bench signaling --connections {asked} --seconds {seconds} --rooms {rooms}{}",
        if postgres { " --postgres" } else { "" }
    );
    println!(
        "# {cores} cores shared by the server under test, the echo ceiling (idle while kontakt runs, and the other way round) and the load generator ({SENDERS} sender tasks and one reader task per connection on a {cores}-thread tokio runtime); load average before: {}",
        loadavg()
    );
    // Each process needs a descriptor per socket and some for itself; the
    // client holds as many sockets as the server.
    let connections = asked.min(fd_limit.saturating_sub(SPARE_FDS));
    if connections < asked {
        println!(
            "# RLIMIT_NOFILE hard limit is {fd_limit} per process and cannot be raised here: {connections} idle connections instead of {asked}"
        );
    }
    let echo = EchoServer::start().await?;
    let database = bench_database(postgres).await?;
    let base_env = [("KONTAKT_RELAY_ENABLED", "false".to_owned())];
    let server = start_server(&database.url, &base_env).await?;
    let fixture = Fixture::create(&database.db, rooms).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(OPENING)
        .build()?;
    let kontakt = Endpoint::Kontakt {
        http: http.clone(),
        base: server.base.clone(),
        addr: socket_addr(&server.base)?,
    };
    let ceiling = Endpoint::Echo { addr: echo.addr };

    println!();
    println!("## idle connections, one node");
    let held = hold_idle(&kontakt, server.child.id(), connections as usize, &fixture).await?;
    let echo_held = hold_idle(&ceiling, echo.child.id(), connections as usize, &fixture).await?;
    held.print("kontakt");
    echo_held.print("echo");
    println!(
        "ratio kontakt/echo: {:.2}x the memory per connection (target: {} held, < 20 KiB each)",
        held.kib_per_connection() / echo_held.kib_per_connection().max(0.01),
        asked
    );

    println!();
    println!(
        "## chat round trips, one node: {rooms} meeting rooms, a resident and a staff member in each, sending in turn"
    );
    let pairs = fixture.seat(&kontakt, &kontakt).await?;
    let echo_pairs = fixture.seat(&ceiling, &ceiling).await?;
    let mut load = Load::start(pairs, vec![server.child.id()]);
    let mut echo_load = Load::start(echo_pairs, vec![echo.child.id()]);
    let mut single = Vec::new();
    // The ceiling goes first in each step, so that a backlog the hub may
    // still be working off does not take CPU from it.
    for rate in [1000.0, 5000.0] {
        let e = echo_load.step(rate, seconds, Drain::Short).await?;
        let k = load.step(rate, seconds, Drain::Short).await?;
        k.print("kontakt");
        e.print("echo");
        compare(&k, &e);
        single.push((rate, e));
    }
    println!();
    println!(
        "## throughput, one node: {SATURATION_PER_CONNECTION} frames a second from every connection"
    );
    let rate = SATURATION_PER_CONNECTION * 2.0 * rooms as f64;
    let e = echo_load.step(rate, seconds, Drain::Long).await?;
    let k = load.step(rate, seconds, Drain::Long).await?;
    k.print("kontakt");
    e.print("echo");
    println!(
        "throughput: kontakt {:.0} msg/s, echo {:.0} msg/s: {:.0}% of the ceiling (target >= 70%)",
        k.delivered_per_second(),
        e.delivered_per_second(),
        100.0 * k.delivered_per_second() / e.delivered_per_second().max(1.0)
    );
    load.stop();
    echo_load.stop();
    drop(server);
    drop(database);

    println!();
    println!("## chat round trips, two nodes over NATS");
    let Some(nats) = nats_url().await else {
        println!("NATS_URL is not set and nothing listens on 127.0.0.1:4222: two-node run skipped");
        return Ok(());
    };
    let database = bench_database(postgres).await?;
    let cluster = format!("bench-{}", std::process::id());
    let cluster_env = [
        ("KONTAKT_RELAY_ENABLED", "false".to_owned()),
        ("NATS_URL", nats.clone()),
        ("KONTAKT_CLUSTER", cluster.clone()),
    ];
    // Node A starts first and so takes the lease: it owns the rooms, and
    // node B forwards its connections' messages to it.
    let node_a = start_server(&database.url, &cluster_env).await?;
    let node_b = start_server(&database.url, &cluster_env).await?;
    let fixture = Fixture::create(&database.db, rooms).await?;
    let endpoint = |server: &Server| -> anyhow::Result<Endpoint> {
        Ok(Endpoint::Kontakt {
            http: http.clone(),
            base: server.base.clone(),
            addr: socket_addr(&server.base)?,
        })
    };
    println!(
        "{nats}, cluster {cluster}: residents on node A (the owner, started first), staff on node B"
    );
    let pairs = fixture
        .seat(&endpoint(&node_a)?, &endpoint(&node_b)?)
        .await?;
    let mut load = Load::start(pairs, vec![node_a.child.id(), node_b.child.id()]);
    for (rate, e) in single {
        let k = load.step(rate, seconds, Drain::Short).await?;
        k.print("kontakt x2");
        compare(&k, &e);
    }
    load.stop();
    println!();
    println!("# load average after: {}", loadavg());
    Ok(())
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn socket_addr(base: &str) -> anyhow::Result<SocketAddr> {
    Ok(base.trim_start_matches("http://").parse()?)
}

/// `NATS_URL`, or the local server when one answers on the default port.
async fn nats_url() -> Option<String> {
    if let Ok(url) = std::env::var("NATS_URL") {
        return Some(url);
    }
    let probe = TcpStream::connect("127.0.0.1:4222");
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => Some("nats://127.0.0.1:4222".into()),
        _ => None,
    }
}

/// The accounts and bookings of the bench: one meeting room per booking,
/// with its resident and its staff member.
struct Fixture {
    rooms: Vec<Seats>,
    /// Session tokens of residents, for the idle connections.
    residents: Vec<String>,
}

struct Seats {
    booking: BookingId,
    room: String,
    resident_token: String,
    resident_party: String,
    staff_token: String,
    staff_party: String,
}

impl Fixture {
    async fn create(db: &booking::Db, rooms: usize) -> anyhow::Result<Fixture> {
        let started = Instant::now();
        let now = Timestamp::now();
        let tz = bookings::zone(bookings::DISPLAY_ZONE)?;
        let today = now.to_zoned(tz).date();
        let municipality = MunicipalityCode::parse(MUNICIPALITY)?;
        let service = ServiceCode::parse(SERVICE)?;
        let keys = Keys::new(SECRET.as_bytes());
        let mut staff_tokens = HashMap::new();
        for staff in add_staff(db, "signaling", BENCH_STAFF, 30).await? {
            let token = session_token(
                db,
                &keys,
                &Subject::Staff(staff.id.clone()),
                240,
                now.as_second(),
            )
            .await?;
            staff_tokens.insert(staff.id, token);
        }
        let from = today.tomorrow()?;
        let times = bookings::search(
            db,
            &SearchQuery {
                service: service.clone(),
                home: municipality.clone(),
                dates: booking::DateRange::starting(from, 20)?,
                language: None,
            },
            now,
        )
        .await?;
        // Each time as often as staff are free then, in time order.
        let starts = times
            .iter()
            .flat_map(|t| std::iter::repeat_n(t.range.start(), t.free_staff));
        let mut fixture = Fixture {
            rooms: Vec::with_capacity(rooms),
            residents: Vec::with_capacity(rooms),
        };
        for (i, starts_at) in starts.take(rooms).enumerate() {
            let resident = accounts::create_resident(
                db,
                &EmailAddress::parse(&format!("signaling-resident{i}@example.se"))?,
                &booking::PersonName::parse("Bench Resident")?,
                &municipality,
                Language::Sv,
                now.as_second(),
            )
            .await?;
            let token = session_token(
                db,
                &keys,
                &Subject::Resident(resident.id.clone()),
                240,
                now.as_second(),
            )
            .await?;
            let ticket = bookings::book(db, &resident, &service, starts_at, None, now).await?;
            let booking = ticket.booking;
            // Booking by load may pick a demo staff member as well.
            let staff_token = match staff_tokens.get(&booking.staff_id) {
                Some(token) => token.clone(),
                None => {
                    let token = session_token(
                        db,
                        &keys,
                        &Subject::Staff(booking.staff_id.clone()),
                        240,
                        now.as_second(),
                    )
                    .await?;
                    staff_tokens.insert(booking.staff_id.clone(), token.clone());
                    token
                }
            };
            fixture.rooms.push(Seats {
                room: format!("booking:{}", booking.id),
                booking: booking.id,
                resident_token: token.clone(),
                resident_party: format!("resident:{}", resident.id),
                staff_token,
                staff_party: format!("staff:{}", booking.staff_id),
            });
            fixture.residents.push(token);
        }
        if fixture.rooms.len() < rooms {
            bail!(
                "only {} bookable times for {rooms} rooms",
                fixture.rooms.len()
            );
        }
        println!(
            "# {} residents, {BENCH_STAFF} staff members and {} bookings created in {:.1} s",
            fixture.residents.len(),
            fixture.rooms.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(fixture)
    }

    /// Opens every room and connects its two parties: the resident through
    /// `residents`, the staff member through `staff`. The staff member
    /// enters first, so that no console hears a knock, then admits the
    /// resident from the lobby.
    async fn seat(&self, residents: &Endpoint, staff: &Endpoint) -> anyhow::Result<Vec<Pair>> {
        let started = Instant::now();
        let pairs: Vec<anyhow::Result<Pair>> = futures::stream::iter(self.rooms.iter().enumerate())
            .map(|(i, seats)| seat_one(residents, staff, seats, i))
            .buffered(OPENING / 4)
            .collect()
            .await;
        let pairs = pairs.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        println!(
            "# {}: {} rooms opened, both parties in, in {:.1} s",
            residents.name(),
            pairs.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(pairs)
    }
}

async fn seat_one(
    residents: &Endpoint,
    staff: &Endpoint,
    seats: &Seats,
    i: usize,
) -> anyhow::Result<Pair> {
    let (resident, staff_member) = match (residents, staff) {
        (Endpoint::Echo { .. }, _) | (_, Endpoint::Echo { .. }) => {
            let path = format!("/ws?room={}", seats.room);
            (
                residents.open(&path, source(2 * i)).await?,
                staff.open(&path, source(2 * i + 1)).await?,
            )
        }
        (Endpoint::Kontakt { http, base, .. }, _) => {
            let opened = http
                .post(format!("{base}/api/meetings/{}/open", seats.booking))
                .bearer_auth(&seats.resident_token)
                .json(&json!({}))
                .send()
                .await?;
            if !opened.status().is_success() {
                bail!("opening {}: {}", seats.room, opened.status());
            }
            let mut staff_member = staff.connect(&seats.staff_token, source(2 * i)).await?;
            send_json(
                &mut staff_member,
                json!({"v": 1, "type": "join", "room": seats.room}),
            )
            .await?;
            let joined = until(&mut staff_member, "joined").await?;
            if joined["state"] != "admitted" {
                bail!("staff joined {} as {joined}", seats.room);
            }
            let mut resident = residents
                .connect(&seats.resident_token, source(2 * i + 1))
                .await?;
            send_json(
                &mut resident,
                json!({"v": 1, "type": "join", "room": seats.room}),
            )
            .await?;
            until(&mut resident, "joined").await?;
            send_json(
                &mut staff_member,
                json!({"v": 1, "type": "lobby.admit", "room": seats.room, "party": seats.resident_party}),
            )
            .await?;
            until(&mut resident, "lobby.admitted").await?;
            (resident, staff_member)
        }
    };
    Ok(Pair {
        room: seats.room.clone(),
        resident,
        resident_party: seats.resident_party.clone(),
        staff: staff_member,
        staff_party: seats.staff_party.clone(),
    })
}

/// Where the clients connect.
pub(crate) enum Endpoint {
    Kontakt {
        http: reqwest::Client,
        base: String,
        addr: SocketAddr,
    },
    Echo {
        addr: SocketAddr,
    },
}

impl Endpoint {
    fn name(&self) -> &'static str {
        match self {
            Endpoint::Kontakt { .. } => "kontakt",
            Endpoint::Echo { .. } => "echo",
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Endpoint::Kontakt { addr, .. } | Endpoint::Echo { addr } => *addr,
        }
    }

    /// A WebSocket to `path`, from the loopback address `source`.
    async fn open(&self, path: &str, source: IpAddr) -> anyhow::Result<Socket> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(self.addr()).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{}{path}", self.addr());
        let (socket, _) = tokio_tungstenite::client_async(url, stream).await?;
        Ok(socket)
    }

    /// A connection as a browser makes it: a ticket for the session
    /// `token`, the socket with it, and the `welcome`. The echo server
    /// takes any connection.
    pub(crate) async fn connect(&self, token: &str, source: IpAddr) -> anyhow::Result<Socket> {
        let Endpoint::Kontakt { http, base, .. } = self else {
            return self.open("/ws", source).await;
        };
        let response = http
            .post(format!("{base}/api/ws/ticket"))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("a ticket: {}", response.status());
        }
        let body: Value = response.json().await?;
        let ticket = body["ticket"].as_str().context("no ticket")?;
        let mut socket = self.open(&format!("/ws?ticket={ticket}"), source).await?;
        until(&mut socket, "welcome").await?;
        Ok(socket)
    }
}

/// The loopback source address of the `i`th connection.
pub(crate) fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES as usize) as u8))
}

pub(crate) async fn send_json(socket: &mut Socket, frame: Value) -> anyhow::Result<()> {
    socket.send(Message::text(frame.to_string())).await?;
    Ok(())
}

/// Reads until a text frame of type `kind`; an `error` frame fails.
pub(crate) async fn until(socket: &mut Socket, kind: &str) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .with_context(|| format!("no {kind} within 30 s"))?
            .with_context(|| format!("closed before {kind}"))??;
        if let Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(text.as_str())?;
            if frame["type"] == kind {
                return Ok(frame);
            }
            if frame["type"] == "error" {
                bail!("waiting for {kind}: {frame}");
            }
        }
    }
}

/// Idle connections held open, each read by a task of its own so that
/// pings are answered.
struct Held {
    asked: usize,
    held: usize,
    failed: usize,
    dropped: usize,
    seconds: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
}

impl Held {
    fn kib_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.held.max(1) as f64
    }

    fn print(&self, name: &str) {
        println!(
            "{name}: {} of {} idle connections held ({} failed to open, {} dropped after {} s), opened in {:.1} s ({:.0}/s); server RSS {:.1} -> {:.1} MiB: {:.1} KiB per connection",
            self.held,
            self.asked,
            self.failed,
            self.dropped,
            SETTLE.as_secs(),
            self.seconds,
            self.held as f64 / self.seconds,
            self.rss_before_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.kib_per_connection()
        );
    }
}

/// How long idle connections stay open before the count and RSS are read.
const SETTLE: Duration = Duration::from_secs(5);

async fn hold_idle(
    endpoint: &Endpoint,
    pid: u32,
    count: usize,
    fixture: &Fixture,
) -> anyhow::Result<Held> {
    let rss_before_kib = status_kib(pid, "VmRSS:")?;
    let started = Instant::now();
    let opened: Vec<anyhow::Result<Socket>> = futures::stream::iter(0..count)
        .map(|i| {
            let token = &fixture.residents[i % fixture.residents.len()];
            endpoint.connect(token, source(i))
        })
        .buffer_unordered(OPENING)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut failed = 0;
    let mut first_error = None;
    let mut readers = Vec::with_capacity(count);
    for socket in opened {
        match socket {
            Ok(mut socket) => readers.push(tokio::spawn(async move {
                while let Some(Ok(_)) = socket.next().await {}
            })),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        println!(
            "# {}: {failed} connections failed to open, the first with: {e:#}",
            endpoint.name()
        );
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = status_kib(pid, "VmRSS:")?;
    let dropped = readers.iter().filter(|r| r.is_finished()).count();
    let held = Held {
        asked: count,
        held: readers.len() - dropped,
        failed,
        dropped,
        seconds,
        rss_before_kib,
        rss_after_kib,
    };
    for reader in &readers {
        reader.abort();
    }
    drop(readers);
    // Let the server see the connections go before the next phase.
    wait_for_fds(pid, 1000).await;
    Ok(held)
}

/// Waits (up to 30 s) until `pid` has fewer than `below` open descriptors.
async fn wait_for_fds(pid: u32, below: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        if open < below {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A room's two connections, ready to chat.
struct Pair {
    room: String,
    resident: Socket,
    resident_party: String,
    staff: Socket,
    staff_party: String,
}

/// The two sending halves of a room.
struct RoomSinks {
    room: String,
    sinks: [SplitSink<Socket, Message>; 2],
}

/// What the reader tasks record: the latency of every chat message that
/// reached the other party in the current step.
struct Recorder {
    base: Instant,
    step: AtomicU64,
    /// Microseconds from planned send to receipt.
    samples: Mutex<Vec<u32>>,
    received: AtomicU64,
    /// Microseconds after `base` of the last receipt.
    last_receipt: AtomicU64,
    errors: AtomicU64,
    closed: AtomicUsize,
}

impl Recorder {
    fn observe(&self, text: &str, own_chat: &str) {
        if text.contains("\"type\":\"error\"") {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The hub's event to the other party, or the echo of the frame sent.
        let kontakt = text.contains("\"type\":\"event\"")
            && text.contains("\"kind\":\"chat\"")
            && !text.contains(own_chat);
        if !kontakt && !text.contains("\"type\":\"chat.send\"") {
            return;
        }
        let Some(id) = text
            .split_once("\"client_id\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(id, _)| id)
        else {
            return;
        };
        // Ids are `s<step>-<planned send, µs after base>-<n>`.
        let mut parts = id.trim_start_matches('s').split('-');
        let step: Option<u64> = parts.next().and_then(|s| s.parse().ok());
        let planned: Option<u64> = parts.next().and_then(|s| s.parse().ok());
        let (Some(step), Some(planned)) = (step, planned) else {
            return;
        };
        if step != self.step.load(Ordering::Relaxed) {
            return;
        }
        let now = self.base.elapsed().as_micros() as u64;
        let latency = now.saturating_sub(planned).min(u64::from(u32::MAX)) as u32;
        self.samples
            .lock()
            .expect("the recorder never panics while holding its lock")
            .push(latency);
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_receipt.fetch_max(now, Ordering::Relaxed);
    }
}

/// Every room's connections: the receiving halves read by a task each, the
/// sending halves handed to the sender tasks for each step.
struct Load {
    rooms: Vec<RoomSinks>,
    recorder: Arc<Recorder>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    pids: Vec<u32>,
    steps: u64,
}

/// How long a step waits for messages still under way after the last send.
#[derive(Clone, Copy)]
enum Drain {
    /// A few seconds: enough for a server that keeps up.
    Short,
    /// As long as the step: a saturated server works off its backlog.
    Long,
}

impl Load {
    fn start(pairs: Vec<Pair>, pids: Vec<u32>) -> Load {
        let recorder = Arc::new(Recorder {
            base: Instant::now(),
            step: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
            last_receipt: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closed: AtomicUsize::new(0),
        });
        let mut rooms = Vec::with_capacity(pairs.len());
        let mut readers = Vec::with_capacity(2 * pairs.len());
        for pair in pairs {
            let (resident_sink, resident_stream) = pair.resident.split();
            let (staff_sink, staff_stream) = pair.staff.split();
            readers.push(tokio::spawn(read_frames(
                resident_stream,
                pair.resident_party,
                recorder.clone(),
            )));
            readers.push(tokio::spawn(read_frames(
                staff_stream,
                pair.staff_party,
                recorder.clone(),
            )));
            rooms.push(RoomSinks {
                room: pair.room,
                sinks: [resident_sink, staff_sink],
            });
        }
        Load {
            rooms,
            recorder,
            readers,
            pids,
            steps: 0,
        }
    }

    /// Sends `rate` chat messages a second for `seconds`, room after room,
    /// each room's parties in turn, and measures each from its planned
    /// send time to its arrival at the other party.
    async fn step(&mut self, rate: f64, seconds: u64, drain: Drain) -> anyhow::Result<Step> {
        self.steps += 1;
        let step = self.steps;
        let recorder = self.recorder.clone();
        recorder.step.store(step, Ordering::Relaxed);
        recorder.received.store(0, Ordering::Relaxed);
        recorder.errors.store(0, Ordering::Relaxed);
        recorder.samples.lock().expect("unpoisoned").clear();
        let closed_before = recorder.closed.load(Ordering::Relaxed);
        let cpu_before = self.server_cpu()?;
        let client_before = cpu_ticks(std::process::id())?;
        // Start a little ahead, so that the first sends are not late.
        let start = Instant::now() + Duration::from_millis(100);
        let duration = Duration::from_secs(seconds);
        let total = self.rooms.len();
        let mut groups: Vec<Vec<(usize, RoomSinks)>> = (0..SENDERS).map(|_| Vec::new()).collect();
        for (r, room) in std::mem::take(&mut self.rooms).into_iter().enumerate() {
            groups[r % SENDERS].push((r, room));
        }
        let plan = Plan {
            step,
            rate,
            start,
            duration,
            total,
            base: recorder.base,
        };
        let tasks: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(k, group)| tokio::spawn(send_planned(group, k, plan)))
            .collect();
        let mut sent = 0;
        let mut late = Duration::ZERO;
        let mut back = Vec::with_capacity(total);
        for task in tasks {
            let outcome = task.await?;
            sent += outcome.sent;
            late = late.max(outcome.late);
            back.extend(outcome.rooms);
        }
        back.sort_by_key(|(r, _)| *r);
        self.rooms = back.into_iter().map(|(_, room)| room).collect();
        let sending = start.elapsed();
        let wait = match drain {
            Drain::Short => Duration::from_secs(5),
            Drain::Long => duration,
        };
        let deadline = Instant::now() + wait;
        while recorder.received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let ticks = clock_ticks_per_second()?;
        let backlog = sent.saturating_sub(recorder.received.load(Ordering::Relaxed));
        let server_cpu = (self.server_cpu()? - cpu_before) as f64 / ticks;
        let client_cpu = (cpu_ticks(std::process::id())? - client_before) as f64 / ticks;
        // Late arrivals of this step must not count in the next.
        recorder.step.store(0, Ordering::Relaxed);
        let mut samples = std::mem::take(&mut *recorder.samples.lock().expect("unpoisoned"));
        samples.sort_unstable();
        let latencies: Vec<Duration> = samples
            .iter()
            .map(|&us| Duration::from_micros(u64::from(us)))
            .collect();
        let last = recorder.last_receipt.load(Ordering::Relaxed);
        let until_last = Duration::from_micros(last)
            .saturating_sub(start.duration_since(recorder.base))
            .as_secs_f64();
        if backlog > 0 {
            self.quiet().await?;
        }
        Ok(Step {
            rate,
            rooms: total,
            sent,
            sending: sending.as_secs_f64(),
            drained: wait,
            late_sender: late,
            received: latencies.len() as u64,
            until_last,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or_default(),
            errors: recorder.errors.load(Ordering::Relaxed),
            closed: recorder.closed.load(Ordering::Relaxed) - closed_before,
            server_cores: server_cpu / elapsed,
            server_us_per_message: server_cpu * 1e6 / (latencies.len().max(1) as f64),
            client_cores: client_cpu / elapsed,
        })
    }

    /// Waits (at most a minute) until the servers have worked off what the
    /// last step left them, so that the next step, or the ceiling's, gets
    /// the cores to itself.
    async fn quiet(&self) -> anyhow::Result<()> {
        let ticks = clock_ticks_per_second()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let before = self.server_cpu()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            if (self.server_cpu()? - before) as f64 / ticks < 0.05 {
                break;
            }
        }
        Ok(())
    }

    fn server_cpu(&self) -> anyhow::Result<u64> {
        self.pids.iter().map(|&pid| cpu_ticks(pid)).sum()
    }

    fn stop(self) {
        for reader in self.readers {
            reader.abort();
        }
    }
}

#[derive(Clone, Copy)]
struct Plan {
    step: u64,
    rate: f64,
    start: Instant,
    duration: Duration,
    total: usize,
    base: Instant,
}

struct Sent {
    sent: u64,
    /// How far behind its plan the sender fell at worst.
    late: Duration,
    rooms: Vec<(usize, RoomSinks)>,
}

/// Sends the planned messages of the rooms `r` with `r % SENDERS == k`:
/// message `n` of the step is planned at `start + n / rate` and goes to room
/// `n % total`, from the resident on even rounds and the staff member on
/// odd ones.
async fn send_planned(mut group: Vec<(usize, RoomSinks)>, k: usize, plan: Plan) -> Sent {
    let mut sent = 0;
    let mut late = Duration::ZERO;
    let mut n: u64 = 0;
    loop {
        let at = plan.start + Duration::from_secs_f64(n as f64 / plan.rate);
        // A sender held up by a full socket stops at the end of the step
        // too, rather than send its backlog later.
        let end = plan.start + plan.duration;
        if at >= end || Instant::now() >= end {
            break;
        }
        let r = (n % plan.total as u64) as usize;
        if r % SENDERS == k {
            tokio::time::sleep_until(at.into()).await;
            late = late.max(Instant::now().saturating_duration_since(at));
            let side = ((n / plan.total as u64) % 2) as usize;
            let room = &mut group[r / SENDERS].1;
            let planned = at.duration_since(plan.base).as_micros();
            let frame = format!(
                r#"{{"v":1,"type":"chat.send","room":"{}","client_id":"s{}-{planned}-{n}","text":"bench message {n}"}}"#,
                room.room, plan.step
            );
            if room.sinks[side].send(Message::text(frame)).await.is_ok() {
                sent += 1;
            }
        }
        n += 1;
    }
    Sent {
        sent,
        late,
        rooms: group,
    }
}

async fn read_frames(mut stream: SplitStream<Socket>, party: String, recorder: Arc<Recorder>) {
    let own_chat = format!("\"from\":\"{party}\"");
    while let Some(Ok(frame)) = stream.next().await {
        if let Message::Text(text) = frame {
            recorder.observe(text.as_str(), &own_chat);
        }
    }
    recorder.closed.fetch_add(1, Ordering::Relaxed);
}

/// The figures of one step.
struct Step {
    rate: f64,
    rooms: usize,
    sent: u64,
    sending: f64,
    /// How long the step waited for messages under way after sending.
    drained: Duration,
    late_sender: Duration,
    received: u64,
    until_last: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    errors: u64,
    closed: usize,
    server_cores: f64,
    server_us_per_message: f64,
    client_cores: f64,
}

impl Step {
    fn delivered_per_second(&self) -> f64 {
        self.received as f64 / self.until_last.max(0.001)
    }

    fn print(&self, name: &str) {
        println!(
            "{name} {:.0} msg/s over {} rooms: {} sent in {:.1} s (sender at most {:.1} ms behind plan), {} delivered ({} not yet after {:.0} s more, {} error frames, {} connections closed), {:.0} msg/s delivered; p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; server {:.2} cores, {:.0} us CPU per message; client {:.2} cores",
            self.rate,
            self.rooms,
            self.sent,
            self.sending,
            ms(self.late_sender),
            self.received,
            self.sent.saturating_sub(self.received),
            self.drained.as_secs_f64(),
            self.errors,
            self.closed,
            self.delivered_per_second(),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.server_cores,
            self.server_us_per_message,
            self.client_cores,
        );
    }
}

fn compare(kontakt: &Step, echo: &Step) {
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-6);
    println!(
        "ratio kontakt/echo at {:.0} msg/s: p50 {:.1}x, p99 {:.1}x, server CPU per message {:.1}x",
        kontakt.rate,
        ratio(kontakt.p50, echo.p50),
        ratio(kontakt.p99, echo.p99),
        kontakt.server_us_per_message / echo.server_us_per_message.max(0.001),
    );
}

/// The ceiling: this program again, serving bare WebSockets.
struct EchoServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EchoServer {
    async fn start() -> anyhow::Result<EchoServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(std::env::current_exe()?)
            .args(["bench", "signaling", "--echo-server", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the echo server")?;
        let server = EchoServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(server.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("the echo server did not listen within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }
}

/// Connections of each room of the echo server, by room.
type EchoRooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::Sender<Message>)>>>>;

/// Serves WebSockets on `port` until killed: a connection to
/// `/ws?room=<room>` gets every text frame the other connections of that
/// room send; any other connection is only held. One task per connection,
/// with a bounded channel as the hub has, on a multi-thread runtime.
fn echo_server(port: u16) -> anyhow::Result<()> {
    raise_fd_limit()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let rooms = EchoRooms::default();
        let mut next = 0;
        loop {
            let (stream, _) = listener.accept().await?;
            next += 1;
            tokio::spawn(echo_connection(stream, next, rooms.clone()));
        }
    })
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn echo_connection(stream: TcpStream, id: u64, rooms: EchoRooms) {
    let _ = stream.set_nodelay(true);
    let mut room = None;
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        room = request
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("room="))
            .map(str::to_owned);
        Ok(response)
    };
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let (tx, mut rx) = mpsc::channel(256);
    if let Some(room) = &room {
        let mut rooms = rooms.lock().expect("unpoisoned");
        rooms.entry(room.clone()).or_default().push((id, tx));
    }
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            Some(message) = rx.recv() => {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(message @ Message::Text(_))) => {
                    let Some(room) = &room else { continue };
                    let rooms = rooms.lock().expect("unpoisoned");
                    for (other, peer) in rooms.get(room).into_iter().flatten() {
                        if *other != id {
                            let _ = peer.try_send(message.clone());
                        }
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    }
    if let Some(room) = &room {
        let mut rooms = rooms.lock().expect("unpoisoned");
        if let Some(peers) = rooms.get_mut(room) {
            peers.retain(|(other, _)| *other != id);
        }
    }
}

/// A fresh database for a run: PostgreSQL at `DATABASE_URL` with
/// `--postgres`, SQLite in a temporary file otherwise.
async fn bench_database(postgres: bool) -> anyhow::Result<TestDb> {
    if postgres {
        TestDb::postgres()
            .await
            .context("--postgres needs DATABASE_URL")
    } else {
        Ok(TestDb::sqlite().await)
    }
}
