//! `cargo xtask bench signaling queue`: the chat pre-assessment queue of one
//! `target/release/kontakt` node under load, on SQLite and (when
//! `DATABASE_URL` is set) PostgreSQL.
//!
//! The population is real data, made through the `booking` crate in the
//! server's database: staff members spread over the nine seeded
//! municipalities (every fourth handles only two of the five services, as
//! the demo's second Helsingborg social worker does), and residents of all
//! nine municipalities, each opening a chat for one of the five services.
//! Who may see a chat is the server's business: it asks `booking`'s policy
//! (`pre_assessment`) on every `queue.open`. The bench asks the same policy
//! once per home municipality and service, through the same function, to
//! know which staff sockets must hear of each chat, and checks that exactly
//! those did.
//!
//! Every client connects as a browser does (a ticket from
//! `POST /api/ws/ticket`, then `/ws?ticket=...`). The staff consoles say
//! they are available (`staff.availability`), the queue is filled with
//! `--queued` chats, and then, open-loop for `--seconds`, a new resident
//! sends `queue.open` every `--interval-ms` and, half an interval later, an
//! eligible staff member claims the oldest waiting chat (`queue.claim`), so
//! that the queue stays as long as it started. Latencies run from the
//! planned send time, so a server that falls behind cannot hide it by
//! slowing the sender down:
//!
//! - `queue.open` to the `queue.entry` on every eligible staff socket: the
//!   time until the last of them had it;
//! - `queue.claim` to `queue.assigned` on the claiming staff socket;
//! - the server's CPU time (utime + stime from `/proc`) over the run,
//!   divided by the queue updates (opens and claims).
//!
//! Afterwards one more staff console connects to the full queue, as a
//! console that reloads does, and the bench counts the entries it gets.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use booking::accounts::{self, NewStaff};
use booking::chats;
use booking::sessions::Subject;
use booking::testing::TestDb;
use booking::{
    EmailAddress, Language, MunicipalityCode, NewPassword, PersonName, Role, ServiceCode,
};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use jiff::Timestamp;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use web::auth::Keys;

use crate::bench_booking::{
    flag, ms, only_database, percentile, postgres_ticks, prepare_kontakt_binary, session_token,
    start_server, SECRET,
};
use crate::bench_relay::{clock_ticks_per_second, cpu_ticks};
use crate::bench_signaling::{
    loadavg, raise_fd_limit, send_json, socket_addr, source, until, Endpoint, Socket,
};

/// The seeded services, each with a `pre_assessment` rule of its own: open
/// for three, by agreement for `ekonomiskt-bistand` and `barn-och-familj`.
const SERVICES: [&str; 5] = [
    "ekonomiskt-bistand",
    "stod-till-anhoriga",
    "missbruk-beroende",
    "vald-i-nara-relationer",
    "barn-och-familj",
];
/// The seeded services whose pre-assessment may be done by chat
/// (`services.chat`): all but `barn-och-familj`, which starts in a meeting.
/// Residents open their chats for these.
const CHAT_SERVICES: [&str; 4] = [
    "ekonomiskt-bistand",
    "stod-till-anhoriga",
    "missbruk-beroende",
    "vald-i-nara-relationer",
];
/// What every fourth bench staff member handles.
const NARROW: [&str; 2] = ["stod-till-anhoriga", "missbruk-beroende"];
/// Connections opened at once.
const OPENING: usize = 64;
/// Chats opened at once while the queue fills.
const FILLING: usize = 16;
/// How long the bench waits for what is under way after the last send.
const DRAIN: Duration = Duration::from_secs(10);
/// The hub's answer timeout (`HUB_SETTINGS`): a claimed chat nobody writes
/// in returns to the queue after it, which a run must not reach.
const ANSWER_TIMEOUT_SECS: u64 = 120;

struct Options {
    seconds: u64,
    staff: usize,
    queued: usize,
    interval: Duration,
    max_chats: u32,
}

impl Options {
    /// The chats opened (and claimed) during the measured run.
    fn opens(&self) -> usize {
        (Duration::from_secs(self.seconds).as_micros() / self.interval.as_micros().max(1)) as usize
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let options = Options {
        seconds: flag(args, "--seconds").unwrap_or(20).max(1),
        staff: flag(args, "--staff").unwrap_or(200).max(1) as usize,
        queued: flag(args, "--queued").unwrap_or(1000) as usize,
        interval: Duration::from_millis(flag(args, "--interval-ms").unwrap_or(50).max(1)),
        max_chats: flag(args, "--max-chats").unwrap_or(10).max(1) as u32,
    };
    if options.seconds + 30 > ANSWER_TIMEOUT_SECS {
        bail!(
            "--seconds {} is too long: claimed chats would return to the queue after the hub's answer timeout of {ANSWER_TIMEOUT_SECS} s",
            options.seconds
        );
    }
    if options.opens() > options.queued {
        bail!(
            "--queued {} is too short for {} claims of waiting chats",
            options.queued,
            options.opens()
        );
    }
    let only = only_database(args)?;
    raise_fd_limit()?;
    prepare_kontakt_binary(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "# cargo xtask bench signaling queue --seconds {} --staff {} --queued {} --interval-ms {} --max-chats {}{}",
            options.seconds,
            options.staff,
            options.queued,
            options.interval.as_millis(),
            options.max_chats,
            only.as_deref().map(|o| format!(" --only {o}")).unwrap_or_default(),
        );
        println!(
            "# {cores} cores shared by the server under test and the load generator (one sender task and one reader task per connection on a {cores}-thread tokio runtime)"
        );
        let mut databases = Vec::new();
        if only.as_deref() != Some("postgres") {
            databases.push(("sqlite", TestDb::sqlite().await));
        }
        if only.as_deref() != Some("sqlite") {
            match TestDb::postgres().await {
                Some(pg) => databases.push(("postgres", pg)),
                None => println!("# DATABASE_URL is not set: PostgreSQL skipped"),
            }
        }
        for (name, database) in databases {
            println!();
            println!("## {name}");
            println!("# load average before: {}", loadavg());
            bench_one(name, database, &options).await?;
            println!("# load average after: {}", loadavg());
        }
        Ok(())
    })
}

/// A bench staff member.
struct Member {
    token: String,
    municipality: String,
    services: BTreeSet<&'static str>,
}

/// A bench resident and the service of the chat they open.
struct Resident {
    token: String,
    home: String,
    service: &'static str,
}

/// Everyone in the bench, and who may see whose chat.
struct Population {
    staff: Vec<Member>,
    /// The console that connects to the full queue at the end.
    late: Member,
    /// Residents whose chats fill the queue before the run.
    queued: Vec<Resident>,
    /// Residents who open a chat during the run, in order.
    opening: Vec<Resident>,
    /// The municipalities whose staff may do the pre-assessment, by (home
    /// municipality, service), from `booking`'s policy.
    hosts: HashMap<(String, &'static str), BTreeSet<String>>,
}

impl Population {
    async fn create(db: &booking::Db, options: &Options) -> anyhow::Result<Population> {
        let now = Timestamp::now();
        let keys = Keys::new(SECRET.as_bytes());
        let municipalities: Vec<String> = booking::catalog::municipalities(db)
            .await?
            .into_iter()
            .map(|m| m.code.as_str().to_owned())
            .collect();
        if municipalities.is_empty() {
            bail!("the server seeded no municipalities");
        }
        let hash = accounts::hash_password(&NewPassword::parse("bench-password-long")?).await?;
        let mut members = Vec::with_capacity(options.staff + 1);
        for i in 0..=options.staff {
            let municipality = municipalities[i % municipalities.len()].clone();
            // The last one, the late console, handles all five services.
            let services: BTreeSet<&'static str> = if i % 4 == 3 && i < options.staff {
                NARROW.into_iter().collect()
            } else {
                SERVICES.into_iter().collect()
            };
            let staff = accounts::create_staff(
                db,
                &NewStaff {
                    municipality: MunicipalityCode::parse(&municipality)?,
                    email: EmailAddress::parse(&format!("queue{i}@kontakt.bench"))?,
                    name: PersonName::parse(&format!("Queue {i}"))?,
                    role: Role::Staff,
                    services: services
                        .iter()
                        .map(|s| ServiceCode::parse(s))
                        .collect::<Result<_, _>>()?,
                    languages: vec![Language::Sv],
                    password_hash: hash.clone(),
                },
                now.as_second(),
            )
            .await?;
            let token = session_token(
                db,
                &keys,
                &Subject::Staff(staff.id.clone()),
                120,
                now.as_second(),
            )
            .await?;
            members.push(Member {
                token,
                municipality,
                services,
            });
        }
        let late = members.pop().expect("one more than --staff");
        let mut residents = Vec::with_capacity(options.queued + options.opens());
        for i in 0..options.queued + options.opens() {
            let home = municipalities[i % municipalities.len()].clone();
            let service = CHAT_SERVICES[i % CHAT_SERVICES.len()];
            let resident = accounts::create_resident(
                db,
                &EmailAddress::parse(&format!("queue-resident{i}@example.se"))?,
                &PersonName::parse("Bench Resident")?,
                &MunicipalityCode::parse(&home)?,
                Language::Sv,
                now.as_second(),
            )
            .await?;
            let token = session_token(
                db,
                &keys,
                &Subject::Resident(resident.id.clone()),
                120,
                now.as_second(),
            )
            .await?;
            residents.push(Resident {
                token,
                home,
                service,
            });
        }
        let opening = residents.split_off(options.queued);
        let mut hosts = HashMap::new();
        for home in &municipalities {
            let home_code = MunicipalityCode::parse(home)?;
            for service in CHAT_SERVICES {
                // The server's own rule for who hears of a chat.
                let allowed: BTreeSet<String> =
                    chats::pre_assessors(db, &ServiceCode::parse(service)?, &home_code, now)
                        .await?
                        .unwrap_or_default()
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                hosts.insert((home.clone(), service), allowed);
            }
        }
        Ok(Population {
            staff: members,
            late,
            queued: residents,
            opening,
            hosts,
        })
    }

    fn may_see(&self, member: &Member, home: &str, service: &'static str) -> bool {
        member.services.contains(service)
            && self
                .hosts
                .get(&(home.to_owned(), service))
                .is_some_and(|hosts| hosts.contains(&member.municipality))
    }

    /// The bench staff members who may see a chat of `resident`.
    fn eligible(&self, resident: &Resident) -> Vec<u32> {
        (0..self.staff.len())
            .filter(|&i| self.may_see(&self.staff[i], &resident.home, resident.service))
            .map(|i| i as u32)
            .collect()
    }
}

/// What the reader tasks record while the run is on.
struct Recorder {
    base: Instant,
    recording: AtomicBool,
    /// `queue.entry` arrivals on staff sockets, by room: (staff, µs after
    /// `base`).
    entries: Mutex<HashMap<String, Vec<(u32, u64)>>>,
    entry_frames: AtomicU64,
    /// `queue.assigned` arrivals, by room: (staff, µs after `base`).
    assigned: Mutex<HashMap<String, (u32, u64)>>,
    /// The chat room each resident of the run got, with when `joined`
    /// arrived, by the resident's place in the run.
    joined: Mutex<HashMap<u32, (String, u64)>>,
    staff_errors: AtomicU64,
    resident_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    offline_forms: AtomicU64,
    /// Text frames every client got while recording.
    frames: AtomicU64,
    closed: AtomicUsize,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            base: Instant::now(),
            recording: AtomicBool::new(false),
            entries: Mutex::default(),
            entry_frames: AtomicU64::new(0),
            assigned: Mutex::default(),
            joined: Mutex::default(),
            staff_errors: AtomicU64::new(0),
            resident_errors: AtomicU64::new(0),
            first_error: Mutex::default(),
            offline_forms: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            closed: AtomicUsize::new(0),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_micros() as u64
    }

    fn error(&self, counter: &AtomicU64, text: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .expect("unpoisoned")
            .get_or_insert_with(|| text.to_owned());
    }

    fn staff_frame(&self, staff: u32, text: &str) {
        let at = self.micros(Instant::now());
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        self.frames.fetch_add(1, Ordering::Relaxed);
        if text.contains(r#""type":"queue.entry""#) {
            if let Some(room) = entry_room(text) {
                self.entries
                    .lock()
                    .expect("unpoisoned")
                    .entry(room)
                    .or_default()
                    .push((staff, at));
                self.entry_frames.fetch_add(1, Ordering::Relaxed);
            }
        } else if text.contains(r#""type":"queue.assigned""#) {
            if let Some(room) = entry_room(text) {
                self.assigned
                    .lock()
                    .expect("unpoisoned")
                    .entry(room)
                    .or_insert((staff, at));
            }
        } else if text.contains(r#""type":"error""#) {
            self.error(&self.staff_errors, text);
        }
    }

    fn resident_frame(&self, resident: Option<u32>, text: &str) {
        let at = self.micros(Instant::now());
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        self.frames.fetch_add(1, Ordering::Relaxed);
        if text.contains(r#""type":"joined""#) {
            let Some(resident) = resident else { return };
            let room = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v["room"].as_str().map(str::to_owned));
            if let Some(room) = room {
                self.joined
                    .lock()
                    .expect("unpoisoned")
                    .insert(resident, (room, at));
            }
        } else if text.contains(r#""type":"queue.offline_form""#) {
            self.offline_forms.fetch_add(1, Ordering::Relaxed);
        } else if text.contains(r#""type":"error""#) {
            self.error(&self.resident_errors, text);
        }
    }
}

/// The room of a `queue.entry` or `queue.assigned` frame.
fn entry_room(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value["entry"]["room"].as_str().map(str::to_owned)
}

async fn read_staff(mut stream: SplitStream<Socket>, staff: u32, recorder: Arc<Recorder>) {
    while let Some(Ok(frame)) = stream.next().await {
        if let Message::Text(text) = frame {
            recorder.staff_frame(staff, text.as_str());
        }
    }
    recorder.closed.fetch_add(1, Ordering::Relaxed);
}

async fn read_resident(
    mut stream: SplitStream<Socket>,
    resident: Option<u32>,
    recorder: Arc<Recorder>,
) {
    while let Some(Ok(frame)) = stream.next().await {
        if let Message::Text(text) = frame {
            recorder.resident_frame(resident, text.as_str());
        }
    }
    recorder.closed.fetch_add(1, Ordering::Relaxed);
}

type Sink = SplitSink<Socket, Message>;

/// A waiting chat of the filled queue, oldest first.
struct Waiting {
    room: String,
    /// Its resident, in `Population::queued`.
    resident: usize,
}

async fn bench_one(name: &str, database: TestDb, options: &Options) -> anyhow::Result<()> {
    let server = start_server(
        &database.url,
        &[("KONTAKT_RELAY_ENABLED", "false".to_owned())],
    )
    .await?;
    let pid = server.child.id();
    let db = &database.db;
    let started = Instant::now();
    let population = Population::create(db, options).await?;
    let eligible: Vec<Vec<u32>> = population
        .opening
        .iter()
        .map(|r| population.eligible(r))
        .collect();
    let per_chat: Vec<usize> = eligible.iter().map(Vec::len).collect();
    println!(
        "# {} staff members over {} municipalities, {} residents; pre_assessment eligibility from booking's policy for {} (home, service) pairs; {} to {} staff sockets (mean {:.0}) eligible per chat of the run; made in {:.1} s",
        population.staff.len(),
        population.hosts.keys().map(|(home, _)| home).collect::<BTreeSet<_>>().len(),
        population.queued.len() + population.opening.len(),
        population.hosts.len(),
        per_chat.iter().min().copied().unwrap_or(0),
        per_chat.iter().max().copied().unwrap_or(0),
        per_chat.iter().sum::<usize>() as f64 / per_chat.len().max(1) as f64,
        started.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(OPENING)
        .build()?;
    let endpoint = Endpoint::Kontakt {
        http,
        base: server.base.clone(),
        addr: socket_addr(&server.base)?,
    };
    let recorder = Arc::new(Recorder::new());
    let mut readers = Vec::new();

    // Staff first, so that every chat finds its staff online.
    let started = Instant::now();
    let max_chats = options.max_chats;
    let staff: Vec<anyhow::Result<Socket>> =
        futures::stream::iter(population.staff.iter().enumerate())
            .map(|(i, member)| {
                let endpoint = &endpoint;
                async move {
                    let mut socket = endpoint.connect(&member.token, source(i)).await?;
                    send_json(
                        &mut socket,
                        json!({"v": 1, "type": "staff.availability", "available": true, "max_chats": max_chats}),
                    )
                    .await?;
                    // The hub applies a connection's messages in order.
                    send_json(&mut socket, json!({"v": 1, "type": "ping"})).await?;
                    until(&mut socket, "pong").await?;
                    Ok(socket)
                }
            })
            .buffered(OPENING)
            .collect()
            .await;
    let mut staff_sinks: Vec<Sink> = Vec::with_capacity(staff.len());
    for (i, socket) in staff.into_iter().enumerate() {
        let (sink, stream) = socket?.split();
        readers.push(tokio::spawn(read_staff(stream, i as u32, recorder.clone())));
        staff_sinks.push(sink);
    }
    println!(
        "# {} staff consoles connected and available (max_chats {max_chats}) in {:.1} s",
        staff_sinks.len(),
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let residents: Vec<anyhow::Result<Socket>> = futures::stream::iter(
        population
            .queued
            .iter()
            .chain(&population.opening)
            .enumerate(),
    )
    .map(|(i, resident)| endpoint.connect(&resident.token, source(i)))
    .buffered(OPENING)
    .collect()
    .await;
    let mut residents = residents
        .into_iter()
        .collect::<anyhow::Result<Vec<Socket>>>()?;
    let opening_sockets = residents.split_off(population.queued.len());
    println!(
        "# {} residents connected in {:.1} s",
        residents.len() + opening_sockets.len(),
        started.elapsed().as_secs_f64()
    );

    // Fill the queue; the order in which the chats are opened is about the
    // order of their tickets, which is what the claims follow.
    let started = Instant::now();
    let filled: Vec<anyhow::Result<(usize, String, Socket)>> =
        futures::stream::iter(residents.into_iter().enumerate())
            .map(|(i, mut socket)| {
                let service = population.queued[i].service;
                async move {
                    send_json(
                        &mut socket,
                        json!({"v": 1, "type": "queue.open", "service": service}),
                    )
                    .await?;
                    let joined = until(&mut socket, "joined").await?;
                    let room = joined["room"]
                        .as_str()
                        .context("joined without a room")?
                        .to_owned();
                    Ok((i, room, socket))
                }
            })
            .buffer_unordered(FILLING)
            .collect()
            .await;
    let mut waiting = Vec::with_capacity(filled.len());
    let mut queued_sinks = Vec::with_capacity(filled.len());
    for outcome in filled {
        let (resident, room, socket) = outcome?;
        let (sink, stream) = socket.split();
        readers.push(tokio::spawn(read_resident(stream, None, recorder.clone())));
        queued_sinks.push(sink);
        waiting.push(Waiting { room, resident });
    }
    let fill = started.elapsed().as_secs_f64();
    println!(
        "# {} chats queued in {fill:.1} s ({:.0} queue.open a second, {FILLING} at a time)",
        waiting.len(),
        waiting.len() as f64 / fill
    );
    let mut opening_sinks = Vec::with_capacity(opening_sockets.len());
    for (i, socket) in opening_sockets.into_iter().enumerate() {
        let (sink, stream) = socket.split();
        readers.push(tokio::spawn(read_resident(
            stream,
            Some(i as u32),
            recorder.clone(),
        )));
        opening_sinks.push(sink);
    }

    // The claims: the oldest waiting chats, each by the next eligible staff
    // member under their limit.
    let mut load = vec![0u32; population.staff.len()];
    let mut turn: HashMap<(String, &'static str), usize> = HashMap::new();
    let mut claims = Vec::with_capacity(population.opening.len());
    let mut unclaimable = 0;
    for chat in waiting.iter() {
        if claims.len() == population.opening.len() {
            break;
        }
        let resident = &population.queued[chat.resident];
        let candidates = population.eligible(resident);
        let next = turn
            .entry((resident.home.clone(), resident.service))
            .or_insert(0);
        let pick = (0..candidates.len())
            .map(|k| candidates[(*next + k) % candidates.len()])
            .find(|&s| load[s as usize] < max_chats);
        match pick {
            Some(s) => {
                *next += 1;
                load[s as usize] += 1;
                claims.push((chat.room.clone(), s));
            }
            None => unclaimable += 1,
        }
    }
    if claims.len() < population.opening.len() {
        println!(
            "# only {} claims planned: {unclaimable} chats had no eligible staff member under max_chats {max_chats}",
            claims.len()
        );
    }

    // The run.
    let ticks = clock_ticks_per_second()?;
    let start = Instant::now() + Duration::from_millis(200);
    recorder.recording.store(true, Ordering::Relaxed);
    let cpu_before = cpu_ticks(pid)?;
    let postgres_before = (name == "postgres").then(postgres_ticks);
    let client_before = cpu_ticks(std::process::id())?;
    let plan = Plan {
        start,
        interval: options.interval,
        base: recorder.base,
    };
    let services: Vec<&'static str> = population.opening.iter().map(|r| r.service).collect();
    let sender = tokio::spawn(send_planned(
        plan,
        services,
        claims.clone(),
        opening_sinks,
        staff_sinks,
    ));
    let sent = sender.await?;
    let sending = start.elapsed().as_secs_f64();
    let opened = sent.opens.iter().flatten().count();
    let claimed_count = sent.claims.iter().flatten().count();
    let expected_entries: u64 = per_chat
        .iter()
        .zip(&sent.opens)
        .filter(|(_, planned)| planned.is_some())
        .map(|(&n, _)| n as u64)
        .sum();
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline {
        let entries = recorder.entry_frames.load(Ordering::Relaxed);
        let joined = recorder.joined.lock().expect("unpoisoned").len();
        let assigned = recorder.assigned.lock().expect("unpoisoned").len();
        if entries >= expected_entries && joined >= opened && assigned >= claimed_count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let server_cpu = (cpu_ticks(pid)? - cpu_before) as f64 / ticks;
    let client_cpu = (cpu_ticks(std::process::id())? - client_before) as f64 / ticks;
    let postgres_cpu =
        postgres_before.map(|before| postgres_ticks().saturating_sub(before) as f64 / ticks);
    recorder.recording.store(false, Ordering::Relaxed);

    // What arrived, against what the policy says should have.
    let entries = std::mem::take(&mut *recorder.entries.lock().expect("unpoisoned"));
    let joined = std::mem::take(&mut *recorder.joined.lock().expect("unpoisoned"));
    let assigned = std::mem::take(&mut *recorder.assigned.lock().expect("unpoisoned"));
    let mut to_last = Vec::new();
    let mut to_first = Vec::new();
    let mut to_joined = Vec::new();
    let (mut not_opened, mut incomplete, mut missing, mut unexpected) = (0, 0, 0, 0);
    for (n, planned) in sent.opens.iter().enumerate() {
        let Some(planned) = *planned else {
            not_opened += 1;
            continue;
        };
        let Some((room, joined_at)) = joined.get(&(n as u32)) else {
            not_opened += 1;
            continue;
        };
        to_joined.push(micros(joined_at.saturating_sub(planned)));
        let mut got: HashMap<u32, u64> = HashMap::new();
        for &(staff, at) in entries.get(room).into_iter().flatten() {
            got.entry(staff).or_insert(at);
        }
        let expected: BTreeSet<u32> = eligible[n].iter().copied().collect();
        unexpected += got.keys().filter(|s| !expected.contains(s)).count();
        let absent = expected.iter().filter(|s| !got.contains_key(s)).count();
        missing += absent;
        if absent > 0 {
            incomplete += 1;
            continue;
        }
        let arrivals = expected.iter().map(|s| got[s]);
        if let (Some(first), Some(last)) = (arrivals.clone().min(), arrivals.max()) {
            to_first.push(micros(first.saturating_sub(planned)));
            to_last.push(micros(last.saturating_sub(planned)));
        }
    }
    let mut to_assigned = Vec::new();
    let (mut unassigned, mut elsewhere) = (0, 0);
    for (k, planned) in sent.claims.iter().enumerate() {
        let (room, staff) = &claims[k];
        let Some(planned) = *planned else {
            unassigned += 1;
            continue;
        };
        match assigned.get(room) {
            Some((to, at)) if to == staff => to_assigned.push(micros(at.saturating_sub(planned))),
            Some(_) => elsewhere += 1,
            None => unassigned += 1,
        }
    }
    for samples in [
        &mut to_last,
        &mut to_first,
        &mut to_joined,
        &mut to_assigned,
    ] {
        samples.sort_unstable();
    }
    let updates = opened + claimed_count;
    println!(
        "queue: {} chats opened, one every {} ms, and {} claimed, oldest first, half an interval after each, in {sending:.1} s (sender at most {:.1} ms behind plan), {} waiting before, {} after",
        opened,
        options.interval.as_millis(),
        claimed_count,
        ms(sent.late),
        waiting.len(),
        waiting.len() + opened - claimed_count,
    );
    println!(
        "queue.open -> queue.entry on every eligible staff socket (mean {:.0} sockets): p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {} chats ({} not opened, {} with {} eligible sockets never told, {} told an ineligible socket); to the first socket p50 {:.2} ms, p99 {:.2} ms; to the resident's joined p50 {:.2} ms, p99 {:.2} ms",
        per_chat.iter().sum::<usize>() as f64 / per_chat.len().max(1) as f64,
        pms(&to_last, 50.0),
        pms(&to_last, 99.0),
        max_ms(&to_last),
        to_last.len(),
        not_opened,
        incomplete,
        missing,
        unexpected,
        pms(&to_first, 50.0),
        pms(&to_first, 99.0),
        pms(&to_joined, 50.0),
        pms(&to_joined, 99.0),
    );
    println!(
        "queue.claim -> queue.assigned: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {} claims ({} not assigned, {} assigned to another)",
        pms(&to_assigned, 50.0),
        pms(&to_assigned, 99.0),
        max_ms(&to_assigned),
        to_assigned.len(),
        unassigned,
        elsewhere,
    );
    println!(
        "server CPU: {:.2} ms per queue update ({server_cpu:.2} s over {elapsed:.1} s, {:.2} cores; {updates} updates: {} opens, {} claims); client {:.2} cores; {} frames to clients, {:.0} per update",
        server_cpu * 1000.0 / updates.max(1) as f64,
        server_cpu / elapsed,
        opened,
        claimed_count,
        client_cpu / elapsed,
        recorder.frames.load(Ordering::Relaxed),
        recorder.frames.load(Ordering::Relaxed) as f64 / updates.max(1) as f64,
    );
    if let Some(cpu) = postgres_cpu {
        println!(
            "postgres CPU: {:.2} ms per queue update ({cpu:.2} s over {elapsed:.1} s; every local process named postgres)",
            cpu * 1000.0 / updates.max(1) as f64
        );
    }
    let errors = recorder.staff_errors.load(Ordering::Relaxed)
        + recorder.resident_errors.load(Ordering::Relaxed);
    println!(
        "errors: {} to staff, {} to residents{}; {} offline forms; {} connections closed",
        recorder.staff_errors.load(Ordering::Relaxed),
        recorder.resident_errors.load(Ordering::Relaxed),
        if errors > 0 {
            format!(
                ", the first: {}",
                recorder
                    .first_error
                    .lock()
                    .expect("unpoisoned")
                    .as_deref()
                    .unwrap_or("")
            )
        } else {
            String::new()
        },
        recorder.offline_forms.load(Ordering::Relaxed),
        recorder.closed.load(Ordering::Relaxed),
    );

    // A console that connects to the full queue.
    let claimed: BTreeSet<&str> = claims
        .iter()
        .zip(&sent.claims)
        .filter(|(_, planned)| planned.is_some())
        .map(|((room, _), _)| room.as_str())
        .collect();
    let late = &population.late;
    let still_waiting = waiting
        .iter()
        .filter(|w| !claimed.contains(w.room.as_str()))
        .map(|w| &population.queued[w.resident])
        .chain(
            population
                .opening
                .iter()
                .zip(&sent.opens)
                .filter(|(_, planned)| planned.is_some())
                .map(|(r, _)| r),
        );
    let may_see = still_waiting
        .filter(|r| population.may_see(late, &r.home, r.service))
        .count();
    late_console(&endpoint, late, may_see).await?;

    for reader in readers {
        reader.abort();
    }
    drop(queued_sinks);
    drop(sent.sinks);
    drop(server);
    drop(database);
    Ok(())
}

/// Connects one more staff console and counts the chats it is shown (its
/// `queue.snapshot` and any `queue.entry` after it): `may_see` if the hub
/// hands it the whole queue it may see.
async fn late_console(endpoint: &Endpoint, late: &Member, may_see: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut socket = endpoint.connect(&late.token, source(0)).await?;
    let mut entries = 0;
    let mut last = started;
    let mut closed = None;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(3), socket.next()).await;
        match next {
            Err(_) => break,
            Ok(None) => {
                closed = Some("without a close frame".to_owned());
                break;
            }
            Ok(Some(Err(e))) => {
                closed = Some(format!("with {e}"));
                break;
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                closed = Some(match frame {
                    Some(f) => format!("with {} {:?}", u16::from(f.code), f.reason.as_str()),
                    None => format!("with {}", u16::from(CloseCode::Status)),
                });
                break;
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                let arrived = if text.as_str().contains(r#""type":"queue.snapshot""#) {
                    serde_json::from_str::<serde_json::Value>(text.as_str())?["entries"]
                        .as_array()
                        .map_or(0, Vec::len)
                } else {
                    usize::from(text.as_str().contains(r#""type":"queue.entry""#))
                };
                if arrived > 0 {
                    entries += arrived;
                    last = Instant::now();
                    if entries >= may_see {
                        break;
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    println!(
        "late console (staff of {}, all five services) connecting to the full queue: {entries} of the {may_see} waiting chats it may see arrived, the last {:.1} ms after the ticket was asked for; {}",
        late.municipality,
        ms(last.duration_since(started)),
        match closed {
            Some(how) => format!("the server closed the socket {how}"),
            None => "the socket stayed open".to_owned(),
        }
    );
    let _ = socket.close(None).await;
    Ok(())
}

#[derive(Clone, Copy)]
struct Plan {
    start: Instant,
    interval: Duration,
    base: Instant,
}

struct Sent {
    /// Planned send times of the opens, µs after the recorder's base;
    /// `None` for one whose socket refused it.
    opens: Vec<Option<u64>>,
    /// Planned send times of the claims, likewise.
    claims: Vec<Option<u64>>,
    late: Duration,
    sinks: Vec<Sink>,
}

/// Open `n` of the run is planned at `start + n * interval`, from the
/// `n`th resident of the run; claim `n` half an interval later.
async fn send_planned(
    plan: Plan,
    services: Vec<&'static str>,
    claims: Vec<(String, u32)>,
    mut opening: Vec<Sink>,
    mut staff: Vec<Sink>,
) -> Sent {
    let mut sent = Sent {
        opens: Vec::with_capacity(services.len()),
        claims: Vec::with_capacity(claims.len()),
        late: Duration::ZERO,
        sinks: Vec::new(),
    };
    let planned = |at: Instant| at.duration_since(plan.base).as_micros() as u64;
    for (n, service) in services.iter().enumerate() {
        let at = plan.start + plan.interval * n as u32;
        tokio::time::sleep_until(at.into()).await;
        sent.late = sent.late.max(Instant::now().saturating_duration_since(at));
        let frame = json!({"v": 1, "type": "queue.open", "service": service}).to_string();
        let ok = opening[n].send(Message::text(frame)).await.is_ok();
        sent.opens.push(ok.then(|| planned(at)));
        let Some((room, s)) = claims.get(n) else {
            continue;
        };
        let at = at + plan.interval / 2;
        tokio::time::sleep_until(at.into()).await;
        sent.late = sent.late.max(Instant::now().saturating_duration_since(at));
        let frame = json!({"v": 1, "type": "queue.claim", "room": room}).to_string();
        let ok = staff[*s as usize].send(Message::text(frame)).await.is_ok();
        sent.claims.push(ok.then(|| planned(at)));
    }
    sent.sinks = opening;
    sent.sinks.append(&mut staff);
    sent
}

fn micros(us: u64) -> Duration {
    Duration::from_micros(us)
}

fn pms(sorted: &[Duration], p: f64) -> f64 {
    ms(percentile(sorted, p))
}

fn max_ms(sorted: &[Duration]) -> f64 {
    ms(sorted.last().copied().unwrap_or_default())
}
