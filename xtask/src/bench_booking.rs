//! `cargo xtask bench booking`: the release server under booking load, on
//! SQLite and (when `DATABASE_URL` is set) PostgreSQL. It prints booking
//! throughput and latency under 64 concurrent clients, search latency over a
//! month for all nine municipalities, and the 200-requests-for-20-slots
//! contention result. With a local PostgreSQL it also prints that server's
//! CPU per booking.
//!
//! `--seconds N` sets the length of the booking run (default 10); `--only
//! sqlite` or `--only postgres` measures one database; `--kontakt-binary
//! PATH` runs that kontakt binary instead of building one, e.g. a copy of an
//! earlier build, so that two builds can be measured turn about on a machine
//! whose speed drifts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use booking::accounts::{self, NewStaff, Staff};
use booking::bookings;
use booking::sessions::Subject;
use booking::slots::{self, Template};
use booking::testing::TestDb;
use booking::{
    EmailAddress, Language, MunicipalityCode, NewPassword, PersonName, Role, ServiceCode,
};
use jiff::{Span, Timestamp};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};
use web::auth::{Keys, SubjectKind};

use crate::bench_relay::{clock_ticks_per_second, cpu_ticks};
use crate::process::run as run_command;
use crate::smtp_sink::SmtpSink;

pub(crate) const SECRET: &str = "bench-secret-that-is-long-enough-for-hs256";
const CLIENTS: usize = 64;
const BENCH_STAFF: usize = 40;

/// The kontakt binary the benchmarks start: `--kontakt-binary`, or the one
/// built from these sources.
static KONTAKT_BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Makes the benchmarks start the kontakt binary at `path` rather than the
/// release build of these sources.
pub(crate) fn use_kontakt_binary(path: &str) {
    let _ = KONTAKT_BINARY.set(PathBuf::from(path));
}

/// The database `--only` names (`sqlite` or `postgres`), if any.
pub(crate) fn only_database(args: &[String]) -> anyhow::Result<Option<String>> {
    let only = text_flag(args, "--only");
    if let Some(db) = only.as_deref() {
        if db != "sqlite" && db != "postgres" {
            bail!("--only takes sqlite or postgres, not {db:?}");
        }
    }
    Ok(only)
}

/// Starts the benchmarks' servers from `--kontakt-binary`, or else builds
/// the release binary of these sources for them.
pub(crate) fn prepare_kontakt_binary(args: &[String]) -> anyhow::Result<()> {
    match text_flag(args, "--kontakt-binary") {
        Some(path) => use_kontakt_binary(&path),
        None => run_command(
            "cargo",
            &["build", "--release", "-p", "web", "--bin", "kontakt"],
        )?,
    }
    Ok(())
}

fn kontakt_binary() -> &'static std::path::Path {
    KONTAKT_BINARY.get_or_init(|| PathBuf::from("target/release/kontakt"))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let seconds: u64 = flag(args, "--seconds").unwrap_or(10);
    let only = only_database(args)?;
    prepare_kontakt_binary(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        println!(
            "# {}",
            ["cargo xtask bench booking"]
                .into_iter()
                .chain(args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "# {} cores; {CLIENTS} concurrent clients; server: {}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kontakt_binary().display()
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
            bench_one(name, database, seconds).await?;
        }
        Ok(())
    })
}

pub(crate) fn flag(args: &[String], name: &str) -> Option<u64> {
    text_flag(args, name).and_then(|v| v.parse().ok())
}

pub(crate) fn text_flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// A kontakt child process (`--kontakt-binary`, or the release build),
/// killed on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `target/release/kontakt` on a free port over `database_url`, with
/// `env` on top of the settings every benchmark uses, and waits until it is
/// healthy.
pub(crate) async fn start_server(
    database_url: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = std::env::temp_dir().join(format!("kontakt-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(kontakt_binary())
        .env("DATABASE_URL", database_url)
        .env("KONTAKT_LISTEN", format!("127.0.0.1:{port}"))
        .env("KONTAKT_PUBLIC_URL", &base)
        .env("KONTAKT_DATA_DIR", &dir)
        .env("KONTAKT_JWT_SECRET", SECRET)
        .env("KONTAKT_DATABASE_MAX_CONNECTIONS", "32")
        // Several servers run at once, and none is scraped.
        .env("KONTAKT_METRICS_LISTEN", "off")
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", kontakt_binary().display()))?;
    let server = Server {
        child,
        base,
        _dir: TempDir(dir),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{}/healthz", server.base)).send().await {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        if Instant::now() > deadline {
            bail!("the server did not become healthy within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bench_one(name: &str, database: TestDb, seconds: u64) -> anyhow::Result<()> {
    // Mail goes out over SMTP as in production, to a sink that keeps nothing.
    let smtp = SmtpSink::start().await?;
    let server = start_server(
        &database.url,
        &[("SMTP_URL", format!("smtp://{}", smtp.addr))],
    )
    .await?;
    let db = &database.db;
    let now = Timestamp::now();
    let tz = bookings::zone(bookings::DISPLAY_ZONE)?;
    let today = now.to_zoned(tz.clone()).date();

    // Enough bookable time for a sustained run: forty more Helsingborg staff
    // for an open service, available around the clock for two months.
    add_staff(db, "bench", BENCH_STAFF, 61).await?;
    let keys = Keys::new(SECRET.as_bytes());
    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        let resident = accounts::create_resident(
            db,
            &EmailAddress::parse(&format!("bench-resident{i}@example.se"))?,
            &PersonName::parse("Bench Resident")?,
            &MunicipalityCode::parse("1283")?,
            Language::Sv,
            now.as_second(),
        )
        .await?;
        tokens.push(
            session_token(
                db,
                &keys,
                &Subject::Resident(resident.id.clone()),
                120,
                now.as_second(),
            )
            .await?,
        );
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let from = today.tomorrow()?;
    let to = from.checked_add(Span::new().days(59))?;
    let times: Vec<Value> = client
        .get(format!(
            "{}/api/search?service=stod-till-anhoriga&home=1283&from={from}&to={to}",
            server.base
        ))
        .send()
        .await?
        .json()
        .await?;
    // Each time as often as staff are free then, so that every request can
    // succeed until the time runs out, in random order: residents spread over
    // the times on offer. Racing for one time is the contention run below.
    let mut queue = Vec::new();
    for t in &times {
        for _ in 0..t["free_staff"].as_u64().unwrap_or(0) {
            queue.push(t["starts_at"].as_str().unwrap_or_default().to_owned());
        }
    }
    queue.shuffle(&mut rand::rngs::StdRng::seed_from_u64(1));
    let queue = Arc::new(queue);
    let next = Arc::new(AtomicUsize::new(0));
    let pid = server.child.id();
    let cpu_before = cpu_ticks(pid)?;
    let postgres_before = (name == "postgres").then(postgres_ticks);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for token in tokens {
        let (client, queue, next, base) = (
            client.clone(),
            queue.clone(),
            next.clone(),
            server.base.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses = [0usize; 3];
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(at) = queue.get(i) else { break };
                let t0 = Instant::now();
                let response = client
                    .post(format!("{base}/api/bookings"))
                    .bearer_auth(&token)
                    .json(&json!({"service": "stod-till-anhoriga", "starts_at": at}))
                    .send()
                    .await;
                latencies.push(t0.elapsed());
                match response.map(|r| r.status().as_u16()) {
                    Ok(201) => statuses[0] += 1,
                    Ok(409) => statuses[1] += 1,
                    _ => statuses[2] += 1,
                }
            }
            (latencies, statuses)
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses = [0usize; 3];
    for w in workers {
        let (l, s) = w.await?;
        latencies.extend(l);
        for k in 0..3 {
            statuses[k] += s[k];
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = (cpu_ticks(pid)? - cpu_before) as f64 / clock_ticks_per_second()?;
    let postgres_cpu = match postgres_before {
        Some(before) => postgres_ticks().saturating_sub(before) as f64 / clock_ticks_per_second()?,
        None => 0.0,
    };
    latencies.sort();
    println!();
    println!("## {name}");
    println!(
        "booking: {:.0} bookings/s ({} booked, {} conflicts, {} errors in {elapsed:.1} s; {} times on offer); p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        statuses[0] as f64 / elapsed,
        statuses[0],
        statuses[1],
        statuses[2],
        queue.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
    );

    println!(
        "server CPU: {:.2} ms per booking ({server_cpu:.1} s of CPU over {elapsed:.1} s, on {:.2} of the 2 cores)",
        server_cpu * 1000.0 / statuses[0].max(1) as f64,
        server_cpu / elapsed,
    );
    if postgres_cpu > 0.0 {
        println!(
            "postgres CPU: {:.2} ms per booking ({postgres_cpu:.1} s of CPU over {elapsed:.1} s, on {:.2} of the 2 cores; every local process named postgres)",
            postgres_cpu * 1000.0 / statuses[0].max(1) as f64,
            postgres_cpu / elapsed,
        );
    }
    println!(
        "mail: {} messages delivered over SMTP meanwhile (confirmations; reminders fall due later)",
        smtp.accepted()
    );

    let mut search = Vec::new();
    let month_end = from.checked_add(Span::new().days(30))?;
    for _ in 0..20 {
        for (code, _) in booking::seed::MUNICIPALITIES {
            let t0 = Instant::now();
            let r = client
                .get(format!("{}/api/search?service=ekonomiskt-bistand&home={code}&from={from}&to={month_end}", server.base))
                .send()
                .await?;
            let ok = r.status().is_success();
            let _ = r.bytes().await?;
            search.push(t0.elapsed());
            if !ok {
                bail!("search failed for {code}");
            }
        }
    }
    search.sort();
    println!(
        "search (a month, all nine municipalities, {} requests): p50 {:.1} ms, p99 {:.1} ms",
        search.len(),
        ms(percentile(&search, 50.0)),
        ms(percentile(&search, 99.0))
    );

    contention(&server, db, &keys, &client).await?;
    Ok(())
}

/// CPU ticks of every process on this machine named `postgres`: the
/// PostgreSQL server's, when `DATABASE_URL` points at one here, and 0 when
/// it is elsewhere. A backend that exits between two readings takes its
/// ticks with it; the server's pool keeps its connections through a run.
pub(crate) fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == "postgres")
        })
        .filter_map(|pid| cpu_ticks(pid).ok())
        .sum()
}

/// A signed session token for `subject`, recorded in the sessions table as
/// a sign-in would record it, so that the server accepts it.
pub(crate) async fn session_token(
    db: &booking::Db,
    keys: &Keys,
    subject: &Subject,
    minutes: i64,
    now: i64,
) -> anyhow::Result<String> {
    let (sub, kind) = match subject {
        Subject::Resident(id) => (id.as_str(), SubjectKind::Resident),
        Subject::Staff(id) => (id.as_str(), SubjectKind::Staff),
    };
    let sid = booking::sessions::create(db, subject, now, now + minutes * 60).await?;
    Ok(keys.issue(sub, kind, &sid, minutes, now).0)
}

/// Adds `count` Helsingborg staff members (`<prefix><i>@kontakt.bench`) for
/// the open service `stod-till-anhoriga`, available around the clock from
/// today for `days` days.
pub(crate) async fn add_staff(
    db: &booking::Db,
    prefix: &str,
    count: usize,
    days: i64,
) -> anyhow::Result<Vec<Staff>> {
    let now = Timestamp::now();
    let today = now.to_zoned(bookings::zone(bookings::DISPLAY_ZONE)?).date();
    let hash = accounts::hash_password(&NewPassword::parse("bench-password-long")?).await?;
    let service = ServiceCode::parse("stod-till-anhoriga")?;
    let mut added = Vec::with_capacity(count);
    for i in 0..count {
        let staff = accounts::create_staff(
            db,
            &NewStaff {
                municipality: MunicipalityCode::parse("1283")?,
                email: EmailAddress::parse(&format!("{prefix}{i}@kontakt.bench"))?,
                name: PersonName::parse(&format!("{prefix} {i}"))?,
                role: Role::Staff,
                services: vec![service.clone()],
                languages: vec![Language::Sv],
                password_hash: hash.clone(),
            },
            now.as_second(),
        )
        .await?;
        for weekday in 1..=7 {
            slots::add_template(
                db,
                &Template {
                    id: String::new(),
                    staff_id: staff.id.clone(),
                    weekday,
                    start_minute: 0,
                    end_minute: 1440,
                    valid_from: today,
                    valid_to: today.checked_add(Span::new().days(days))?,
                },
            )
            .await?;
        }
        added.push(staff);
    }
    Ok(added)
}

/// 200 concurrent requests for 20 single-staff slots.
async fn contention(
    server: &Server,
    db: &booking::Db,
    keys: &Keys,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    let tz = bookings::zone(bookings::DISPLAY_ZONE)?;
    let from = Timestamp::now().to_zoned(tz).date().tomorrow()?;
    let to = from.checked_add(Span::new().days(13))?;
    let times: Vec<Value> = client
        .get(format!(
            "{}/api/search?service=barn-och-familj&home=1283&from={from}&to={to}",
            server.base
        ))
        .send()
        .await?
        .json()
        .await?;
    let slots: Vec<String> = times
        .iter()
        .take(20)
        .filter_map(|t| t["starts_at"].as_str().map(str::to_owned))
        .collect();
    let before = bookings::active_ranges(db).await?.len();
    let mut tokens = Vec::new();
    for i in 0..200 {
        let r = accounts::create_resident(
            db,
            &EmailAddress::parse(&format!("racer{i}@example.se"))?,
            &PersonName::parse("Racer")?,
            &MunicipalityCode::parse("1283")?,
            Language::Sv,
            Timestamp::now().as_second(),
        )
        .await?;
        tokens.push(
            session_token(
                db,
                keys,
                &Subject::Resident(r.id.clone()),
                30,
                Timestamp::now().as_second(),
            )
            .await?,
        );
    }
    let t0 = Instant::now();
    let requests = tokens.iter().enumerate().map(|(i, token)| {
        client
            .post(format!("{}/api/bookings", server.base))
            .bearer_auth(token)
            .json(&json!({"service": "barn-och-familj", "starts_at": slots[i % slots.len()]}))
            .send()
    });
    let results = futures::future::join_all(requests).await;
    let elapsed = t0.elapsed();
    let created = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 201))
        .count();
    let conflicts = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 409))
        .count();
    let ranges = bookings::active_ranges(db).await?;
    let mut overlaps = 0;
    for (i, (sa, a)) in ranges.iter().enumerate() {
        for (sb, b) in &ranges[i + 1..] {
            if sa == sb && a.overlaps(b) {
                overlaps += 1;
            }
        }
    }
    println!(
        "contention: 200 requests for {} slots in {:.0} ms: {created} booked, {conflicts} conflicts, {} new active bookings, {overlaps} overlaps",
        slots.len(),
        ms(elapsed),
        ranges.len() - before
    );
    Ok(())
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
