//! `cargo xtask bench relay`: our media relay against coturn under the same
//! `turnutils_uclient` loads, echoed by `turnutils_peer`, all on loopback.
//!
//! For each server and load it prints relayed packets per second of server CPU time (from
//! `/proc/<pid>/stat`), loss, average round trip, peak RSS, memory per allocation, and the
//! ratio ours/coturn. Beside each ratio it prints a ceiling: the ratio ours would reach if our
//! code took no time at all, from our system time alone, since on loopback both servers spend
//! most of their CPU in the kernel. After each load's rounds it prints a verdict on the issue's
//! target (1.5× coturn at 0 % loss, a round trip no longer than coturn's), judged only on the
//! rounds in which ours lost nothing. The servers run one after the other with equivalent
//! settings: the same listener, relay port range, REST secret, realm, one worker per core and
//! no quotas.
//!
//! Then it measures memory per allocation on its own: it opens `--allocations N` allocations
//! (default 10,000) from as many UDP sockets, each with one channel bound to a peer, and divides
//! the server's RSS growth by N.
//!
//! Options: `--quick` runs small loads (a smoke test of the harness); `--load M,N,L,Z` replaces
//! the loads with one of M clients sending N messages of L bytes every Z ms (repeatable);
//! `--allocations N` sets the allocations of the memory measurement (0 skips it);
//! `--pin` runs each server on core 0 and the load generator and echo peer on the others,
//! with `taskset`, so that neither starves the other; `--relay-binary PATH` runs that
//! media-relay binary instead of building one, e.g. a copy of an earlier build, so that a
//! baseline can be measured while the sources change.

use std::io::Read as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use media_relay::credentials;
use media_relay::stun::{attr, Class, Message, MessageBuilder, Method};

const SECRET: &str = "bench-secret";
const REALM: &str = "kontakt";
const LISTEN_PORT: u16 = 34780;
const PEER_PORT: u16 = 34800;
const MIN_PORT: u16 = 61000;
const MAX_PORT: u16 = 65535;
/// The longest a single uclient run may take before the harness gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);
/// Relay ports for the memory measurement: room for 20,000 allocations, below the kernel's
/// ephemeral range so that the measuring client's own sockets never take one.
const MEMORY_MIN_PORT: u16 = 10_000;
const MEMORY_MAX_PORT: u16 = 30_000;

#[derive(Clone, Copy, Debug)]
struct Load {
    clients: u32,
    messages: u32,
    length: u32,
    interval_ms: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerKind {
    Coturn,
    Ours,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Coturn => "coturn",
            ServerKind::Ours => "media-relay",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    sent: u64,
    received: u64,
    loss_percent: f64,
    rtt_ms: f64,
    cpu_seconds: f64,
    /// The part of `cpu_seconds` spent in user space; the rest is the kernel's.
    user_seconds: f64,
    peak_rss_kib: u64,
    baseline_rss_kib: u64,
    allocations: u64,
}

impl Outcome {
    /// Packets the server relayed: each message crosses it to the peer and back.
    fn relayed(&self) -> u64 {
        self.sent + self.received
    }

    /// Relayed packets per second of `seconds`, or 0 when none were counted.
    fn packets_per(&self, seconds: f64) -> f64 {
        if seconds > 0.0 {
            self.relayed() as f64 / seconds
        } else {
            0.0
        }
    }

    fn packets_per_cpu_second(&self) -> f64 {
        self.packets_per(self.cpu_seconds)
    }

    /// This server's packets per CPU-second over `other`'s: the figure the issue's target names.
    fn ratio_to(&self, other: &Outcome) -> f64 {
        self.packets_per_cpu_second() / other.packets_per_cpu_second()
    }

    /// Packets per second of the server's system time alone: what the server would reach if
    /// its own code took no time, with the kernel's work per packet unchanged.
    fn packets_per_kernel_cpu_second(&self) -> f64 {
        self.packets_per(self.cpu_seconds - self.user_seconds)
    }

    fn bytes_per_allocation(&self) -> f64 {
        if self.allocations == 0 {
            return 0.0;
        }
        (self.peak_rss_kib.saturating_sub(self.baseline_rss_kib) * 1024) as f64
            / self.allocations as f64
    }
}

const USAGE: &str = "usage: cargo xtask bench relay [--quick] [--pin] [--allocations N] \
     [--load M,N,L,Z]... [--rounds N] [--relay-binary PATH]
  --quick              one small load (10 clients x 200 messages of 170 bytes every 2 ms)
  --pin                servers on the first half of the cores, uclient and peer on the rest
  --allocations N      allocations opened for the memory figure (default 10000, 500 with --quick; 0 skips it)
  --load M,N,L,Z       M clients sending N messages of L bytes every Z ms (repeatable)
  --rounds N           run each load N times, coturn and ours in turn, and print the median ratio (default 1)
  --relay-binary PATH  measure that media-relay binary instead of building this one";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut loads = Vec::new();
    let mut quick = false;
    let mut pin = false;
    let mut allocations: Option<u32> = None;
    let mut relay_binary: Option<PathBuf> = None;
    let mut rounds = 1usize;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--pin" => pin = true,
            "--relay-binary" => {
                let path = iter.next().context("--relay-binary needs a path")?;
                relay_binary = Some(PathBuf::from(path));
            }
            "--rounds" => {
                let count = iter.next().context("--rounds needs a number")?;
                rounds = count.parse().context("--rounds needs a number")?;
                if rounds == 0 {
                    bail!("--rounds needs a number above 0");
                }
            }
            "--allocations" => {
                let count = iter.next().context("--allocations needs a number")?;
                allocations = Some(count.parse().context("--allocations needs a number")?);
            }
            "--load" => {
                let spec = iter.next().context("--load needs M,N,L,Z")?;
                let parts: Vec<u32> = spec
                    .split(',')
                    .map(|p| p.trim().parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--load {spec}: expected four numbers"))?;
                let [clients, messages, length, interval_ms] = parts[..] else {
                    bail!("--load {spec}: expected M,N,L,Z");
                };
                loads.push(Load {
                    clients,
                    messages,
                    length,
                    interval_ms,
                });
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if loads.is_empty() {
        loads = if quick {
            vec![Load {
                clients: 10,
                messages: 200,
                length: 170,
                interval_ms: 2,
            }]
        } else {
            vec![
                // The load from the issue.
                Load {
                    clients: 200,
                    messages: 2000,
                    length: 170,
                    interval_ms: 2,
                },
                // Twice the clients at twice the rate, which drives coturn to loss here.
                Load {
                    clients: 400,
                    messages: 2000,
                    length: 170,
                    interval_ms: 1,
                },
            ]
        };
    }
    let allocations = allocations.unwrap_or(if quick { 500 } else { 10_000 });
    let pinning = if pin {
        if which("taskset").is_none() {
            bail!("--pin needs `taskset` (util-linux)");
        }
        Some(Pinning::new()?)
    } else {
        None
    };
    for binary in ["turnserver", "turnutils_uclient", "turnutils_peer"] {
        if which(binary).is_none() {
            bail!("`{binary}` is missing: install Debian's coturn package (apt-get install -y coturn)");
        }
    }

    let relay_binary = match relay_binary {
        Some(path) => path,
        None => build_relay()?,
    };
    let work = std::env::temp_dir().join(format!("bench-relay-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = pinning.as_ref().map_or(workers, |p| p.server_cores);
    for (name, (min_port, max_port)) in [
        ("relay.toml", (MIN_PORT, MAX_PORT)),
        ("relay-memory.toml", (MEMORY_MIN_PORT, MEMORY_MAX_PORT)),
    ] {
        std::fs::write(
            work.join(name),
            format!(
                "listen_udp = \"127.0.0.1:{LISTEN_PORT}\"\nlisten_tcp = \"127.0.0.1:{LISTEN_PORT}\"\n\
                 relay_ipv4 = \"127.0.0.1\"\nrelay_bind_ipv4 = \"127.0.0.1\"\n\
                 min_port = {min_port}\nmax_port = {max_port}\nrealm = \"{REALM}\"\n\
                 secret = \"{SECRET}\"\nmax_allocations_per_user = 100000\n\
                 max_allocations = 100000\nbandwidth_bytes_per_sec = 0\n\
                 allowed_peer_ranges = [\"127.0.0.0/8\"]\nworkers = {workers}\n"
            ),
        )?;
    }
    let clock_ticks = clock_ticks_per_second()?;

    let setup = Setup {
        relay_binary,
        work: work.clone(),
        workers,
        clock_ticks,
        pinning,
    };
    match &setup.pinning {
        Some(p) => println!(
            "media-relay vs coturn on loopback, {workers} workers/relay threads each, \
             servers on CPUs {}, uclient and peer on CPUs {}",
            p.server_cpus, p.load_cpus
        ),
        None => println!("media-relay vs coturn on loopback, {workers} workers/relay threads each"),
    }
    println!(
        "{:<20} {:<12} {:>9} {:>7} {:>7} {:>8} {:>11} {:>7} {:>9} {:>8} {:>7}",
        "load m×n×len@ms",
        "server",
        "relayed",
        "cpu s",
        "user s",
        "loss %",
        "pkts/cpu-s",
        "rtt ms",
        "peak MiB",
        "B/alloc",
        "allocs"
    );
    let mut failures = 0;
    for load in &loads {
        let label = format!(
            "{}×{}×{}@{}",
            load.clients, load.messages, load.length, load.interval_ms
        );
        // Coturn's own figure moves by a third from one run to the next on this machine, so a
        // single ratio says little; rounds run the pair again, turn about, for a median.
        let mut ratios = Vec::new();
        let mut ceilings = Vec::new();
        let mut pairs = Vec::new();
        for _ in 0..rounds {
            let mut outcomes = Vec::new();
            for kind in [ServerKind::Coturn, ServerKind::Ours] {
                match run_one(kind, *load, &setup) {
                    Ok(o) => {
                        println!(
                            "{:<20} {:<12} {:>9} {:>7.2} {:>7.2} {:>8.3} {:>11.0} {:>7.3} {:>9.1} {:>8.0} {:>7}",
                            label,
                            kind.name(),
                            o.relayed(),
                            o.cpu_seconds,
                            o.user_seconds,
                            o.loss_percent,
                            o.packets_per_cpu_second(),
                            o.rtt_ms,
                            o.peak_rss_kib as f64 / 1024.0,
                            o.bytes_per_allocation(),
                            o.allocations,
                        );
                        outcomes.push(o);
                    }
                    Err(error) => {
                        // One failed run should not hide the others' figures.
                        failures += 1;
                        println!("{label:<20} {:<12} failed: {error:#}", kind.name());
                    }
                }
            }
            if let [coturn, ours] = &outcomes[..] {
                let coturn_rate = coturn.packets_per_cpu_second();
                if coturn_rate > 0.0 {
                    let ratio = ours.ratio_to(coturn);
                    println!("{label:<20} ratio ours/coturn, packets per CPU-second: {ratio:.2}");
                    ratios.push(ratio);
                    // Both servers' CPU is mostly the kernel carrying datagrams through
                    // sockets, which no code of ours can skip: this is the ratio our relay
                    // would reach if its own code cost nothing.
                    let ceiling = ours.packets_per_kernel_cpu_second() / coturn_rate;
                    println!(
                        "{label:<20} ceiling: the ratio if ours spent no user time: {ceiling:.2}"
                    );
                    ceilings.push(ceiling);
                    pairs.push((coturn.clone(), ours.clone()));
                }
            }
        }
        if ratios.len() > 1 {
            ratios.sort_by(f64::total_cmp);
            println!(
                "{label:<20} median ratio over {} rounds: {:.2} (lowest {:.2}, highest {:.2})",
                ratios.len(),
                median(&ratios),
                ratios[0],
                ratios[ratios.len() - 1]
            );
            ceilings.sort_by(f64::total_cmp);
            println!(
                "{label:<20} median ceiling over {} rounds: {:.2} (lowest {:.2}, highest {:.2})",
                ceilings.len(),
                median(&ceilings),
                ceilings[0],
                ceilings[ceilings.len() - 1]
            );
        }
        if !pairs.is_empty() {
            println!("{label:<20} {}", verdict(&pairs));
        }
    }
    if allocations > 0 {
        println!("memory: {allocations} allocations, each with one channel bound to a peer");
        println!(
            "{:<12} {:>10} {:>10} {:>9}",
            "server", "RSS before", "RSS after", "B/alloc"
        );
        for kind in [ServerKind::Coturn, ServerKind::Ours] {
            match measure_memory(kind, allocations, &setup) {
                Ok((before, after)) => println!(
                    "{:<12} {:>8.1} M {:>8.1} M {:>9.0}",
                    kind.name(),
                    before as f64 / 1024.0,
                    after as f64 / 1024.0,
                    (after.saturating_sub(before) * 1024) as f64 / f64::from(allocations)
                ),
                Err(error) => {
                    failures += 1;
                    println!("{:<12} memory failed: {error:#}", kind.name());
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    if failures > 0 {
        bail!("{failures} benchmark run(s) failed");
    }
    Ok(())
}

/// Builds the relay in release mode and returns the binary's path.
fn build_relay() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "media-relay",
            "--bin",
            "media-relay",
        ])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p media-relay failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("media-relay"))
}

/// What every run shares.
struct Setup {
    relay_binary: PathBuf,
    work: PathBuf,
    workers: usize,
    clock_ticks: f64,
    pinning: Option<Pinning>,
}

/// CPUs for the servers and for the load generator, so that they do not compete.
struct Pinning {
    server_cpus: String,
    load_cpus: String,
    server_cores: usize,
}

impl Pinning {
    /// The first half of the cores (at least one) for the server, the rest for the load.
    fn new() -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            bail!("--pin needs at least two cores");
        }
        let server_cores = (cores / 2).max(1);
        let list = |range: std::ops::Range<usize>| {
            range.map(|c| c.to_string()).collect::<Vec<_>>().join(",")
        };
        Ok(Self {
            server_cpus: list(0..server_cores),
            load_cpus: list(server_cores..cores),
            server_cores,
        })
    }
}

impl Setup {
    /// A command for `program`, under `taskset` on `cpus` when pinning. `taskset` execs the
    /// program, so the child's pid is the program's.
    fn command(&self, program: &Path, cpus: impl Fn(&Pinning) -> &str) -> Command {
        match &self.pinning {
            Some(pinning) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpus(pinning)).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn start_peer(&self) -> anyhow::Result<ChildGuard> {
        Ok(ChildGuard(
            self.command(Path::new("turnutils_peer"), |p| &p.load_cpus)
                .args(["-L", "127.0.0.1", "-p", &PEER_PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting turnutils_peer")?,
        ))
    }

    /// Starts a server with relay ports `min..=max` (ours reads them from `config`).
    fn start_server(
        &self,
        kind: ServerKind,
        config: &str,
        (min_port, max_port): (u16, u16),
    ) -> anyhow::Result<ChildGuard> {
        let workers = self.workers;
        let work = &self.work;
        Ok(ChildGuard(match kind {
            ServerKind::Ours => self
                .command(&self.relay_binary, |p| &p.server_cpus)
                .args(["--config", &work.join(config).to_string_lossy()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting media-relay")?,
            ServerKind::Coturn => self
                .command(Path::new("turnserver"), |p| &p.server_cpus)
                .args([
                    "-n",
                    "--listening-ip=127.0.0.1",
                    &format!("--listening-port={LISTEN_PORT}"),
                    "--relay-ip=127.0.0.1",
                    &format!("--min-port={min_port}"),
                    &format!("--max-port={max_port}"),
                    "--use-auth-secret",
                    &format!("--static-auth-secret={SECRET}"),
                    &format!("--realm={REALM}"),
                    &format!("--relay-threads={workers}"),
                    "--no-tls",
                    "--no-dtls",
                    "--no-cli",
                    "--allow-loopback-peers",
                    "--no-stdout-log",
                    "--log-file=/dev/null",
                    &format!("--pidfile={}", work.join("turnserver.pid").display()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting turnserver")?,
        }))
    }
}

/// The issue's target: ours relays at least this many times coturn's packets per CPU-second,
/// losing nothing, with a round trip no longer than coturn's.
const TARGET_RATIO: f64 = 1.5;

/// What the rounds of one load, each a (coturn, ours) pair, say of the target. Only rounds in
/// which ours lost nothing can judge it. On loopback a loss by both servers means the load
/// generator's core was full: the receivers' sockets overflowed, which neither server caused.
fn verdict(pairs: &[(Outcome, Outcome)]) -> String {
    let judged: Vec<&(Outcome, Outcome)> = pairs
        .iter()
        .filter(|(_, ours)| ours.loss_percent == 0.0)
        .collect();
    if judged.is_empty() {
        let both = pairs
            .iter()
            .filter(|(coturn, _)| coturn.loss_percent > 0.0)
            .count();
        return format!(
            "target ({TARGET_RATIO}× coturn at 0 % loss) not judged: ours lost packets in all \
             {} rounds, coturn too in {both} of them (the load generator's core is full)",
            pairs.len()
        );
    }
    let sorted_median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        median(&values)
    };
    let ratio = sorted_median(
        judged
            .iter()
            .map(|(coturn, ours)| ours.ratio_to(coturn))
            .collect(),
    );
    let our_rtt = sorted_median(judged.iter().map(|(_, ours)| ours.rtt_ms).collect());
    let coturn_rtt = sorted_median(judged.iter().map(|(coturn, _)| coturn.rtt_ms).collect());
    let met = ratio >= TARGET_RATIO && our_rtt <= coturn_rtt;
    format!(
        "target ({TARGET_RATIO}× coturn at 0 % loss, round trip no longer): {} over the {} of {} \
         rounds in which ours lost nothing: median ratio {ratio:.2}, round trip {our_rtt:.3} ms \
         against coturn's {coturn_rtt:.3} ms",
        if met { "met" } else { "not met" },
        judged.len(),
        pairs.len()
    )
}

/// The median of `sorted`, which is sorted and not empty.
fn median(sorted: &[f64]) -> f64 {
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

fn run_one(kind: ServerKind, load: Load, setup: &Setup) -> anyhow::Result<Outcome> {
    let peer = setup.start_peer()?;
    let server = setup.start_server(kind, "relay.toml", (MIN_PORT, MAX_PORT))?;
    let pid = server.0.id();
    wait_for_stun(LISTEN_PORT, Duration::from_secs(15))?;
    let baseline_rss_kib = status_kib(pid, "VmRSS:")?;
    let cpu_before = cpu_split(pid)?;

    println!(
        "running {} clients × {} messages × {} bytes every {} ms against {}",
        load.clients,
        load.messages,
        load.length,
        load.interval_ms,
        kind.name()
    );
    let mut uclient = ChildGuard(
        setup
            .command(Path::new("turnutils_uclient"), |p| &p.load_cpus)
            .args([
                "-u",
                "bench",
                "-W",
                SECRET,
                "-e",
                "127.0.0.1",
                "-r",
                &PEER_PORT.to_string(),
                "-p",
                &LISTEN_PORT.to_string(),
                "-m",
                &load.clients.to_string(),
                "-n",
                &load.messages.to_string(),
                "-l",
                &load.length.to_string(),
                "-z",
                &load.interval_ms.to_string(),
                "127.0.0.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting turnutils_uclient")?,
    );
    let mut output = String::new();
    let mut stdout = uclient.0.stdout.take().context("uclient stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let mut stderr = uclient.0.stderr.take().context("uclient stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    // Peak RSS is read while the load runs, because the allocations are gone afterwards.
    let mut peak_rss_kib = baseline_rss_kib;
    loop {
        if uclient.0.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > RUN_TIMEOUT {
            bail!("turnutils_uclient did not finish within {RUN_TIMEOUT:?}");
        }
        peak_rss_kib = peak_rss_kib.max(status_kib(pid, "VmHWM:")?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu_after = cpu_split(pid)?;
    peak_rss_kib = peak_rss_kib.max(status_kib(pid, "VmHWM:")?);
    output.push_str(&reader.join().unwrap_or_default());
    output.push_str(&err_reader.join().unwrap_or_default());
    drop(server);
    drop(peer);

    let mut outcome = parse_uclient(&output).with_context(|| {
        format!(
            "unexpected turnutils_uclient output:\n{}",
            tail(&output, 20)
        )
    })?;
    let (user, system) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    outcome.cpu_seconds = (user + system) as f64 / setup.clock_ticks;
    outcome.user_seconds = user as f64 / setup.clock_ticks;
    outcome.peak_rss_kib = peak_rss_kib;
    outcome.baseline_rss_kib = baseline_rss_kib;
    // uclient opens an RTP and an RTCP allocation per client unless -c is given.
    outcome.allocations = u64::from(load.clients) * 2;
    Ok(outcome)
}

fn parse_uclient(output: &str) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut found = (false, false);
    for line in output.lines() {
        if let Some(rest) = line.split("start_mclient: tot_send_msgs=").nth(1) {
            let mut parts = rest.split(", tot_recv_msgs=");
            outcome.sent = parts.next().unwrap_or("").trim().parse()?;
            outcome.received = parts.next().unwrap_or("").trim().parse()?;
            found.0 = true;
        }
        if let Some(rest) = line.split("Total lost packets ").nth(1) {
            let percent = rest
                .split('(')
                .nth(1)
                .and_then(|r| r.split('%').next())
                .unwrap_or("");
            outcome.loss_percent = percent.trim().parse()?;
        }
        if let Some(rest) = line.split("Average round trip delay ").nth(1) {
            outcome.rtt_ms = rest.split(' ').next().unwrap_or("").parse()?;
            found.1 = true;
        }
    }
    if found != (true, true) {
        bail!("no totals in the output");
    }
    Ok(outcome)
}

/// Sends STUN Binding requests until one is answered, so a run starts when the server is up.
fn wait_for_stun(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut request = [0u8; 20];
    request[1] = 0x01;
    request[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    request[8..20].copy_from_slice(b"bench-probe!");
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        socket.send_to(&request, ("127.0.0.1", port))?;
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            if len >= 20 && buf[8..20] == request[8..20] {
                return Ok(());
            }
        }
    }
    bail!("no STUN answer on 127.0.0.1:{port} within {timeout:?}")
}

/// CPU time of `pid` in clock ticks, user and system together.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let (user, system) = cpu_split(pid)?;
    Ok(user + system)
}

/// CPU time of `pid` in clock ticks: in user space, and in the kernel on its behalf.
fn cpu_split(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), utime and stime, are at 11 and 12 after the name.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime, stime))
}

pub(crate) fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key}"))?;
    Ok(line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

pub(crate) fn clock_ticks_per_second() -> anyhow::Result<f64> {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(binary))
        .find(|path| path.is_file())
}

/// The workspace holding `media-relay`: the nearest ancestor of the current directory with
/// a `media-relay/Cargo.toml`, else the parent of xtask's own directory.
fn workspace_root() -> PathBuf {
    let from_cwd = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .find(|dir| dir.join("media-relay").join("Cargo.toml").is_file())
            .map(Path::to_path_buf)
    });
    from_cwd.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Kills and reaps a child process when dropped, so a failed run leaves nothing behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens `count` allocations on a fresh server, each from its own UDP socket and with one
/// channel bound to a peer, and returns the server's RSS in KiB before and after. The sockets
/// stay open until the second reading, so no allocation goes early.
fn measure_memory(kind: ServerKind, count: u32, setup: &Setup) -> anyhow::Result<(u64, u64)> {
    let server = setup.start_server(
        kind,
        "relay-memory.toml",
        (MEMORY_MIN_PORT, MEMORY_MAX_PORT),
    )?;
    let pid = server.0.id();
    wait_for_stun(LISTEN_PORT, Duration::from_secs(15))?;
    let before = status_kib(pid, "VmRSS:")?;
    let (username, password) = credentials::issue(
        SECRET,
        "memory",
        Duration::from_secs(3600),
        std::time::SystemTime::now(),
    );
    let key = credentials::long_term_key(&username, REALM, &password);
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], PEER_PORT));
    let mut sockets = Vec::with_capacity(count as usize);
    for index in 0..count {
        let mut client = MemoryClient {
            socket: UdpSocket::bind("127.0.0.1:0")?,
            username: &username,
            key,
            nonce: None,
            next_tid: u64::from(index) << 16,
        };
        client.socket.connect(("127.0.0.1", LISTEN_PORT))?;
        client
            .socket
            .set_read_timeout(Some(Duration::from_millis(500)))?;
        client
            .request(Method::Allocate, |b| {
                b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            })
            .with_context(|| format!("allocation {index}"))?;
        client
            .request(Method::ChannelBind, |b| {
                b.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16);
                b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
            })
            .with_context(|| format!("channel bind {index}"))?;
        sockets.push(client.socket);
    }
    let after = status_kib(pid, "VmRSS:")?;
    drop(sockets);
    drop(server);
    Ok((before, after))
}

/// A blocking TURN client that answers the 401 challenge, enough to open allocations.
struct MemoryClient<'a> {
    socket: UdpSocket,
    username: &'a str,
    key: [u8; 16],
    nonce: Option<String>,
    next_tid: u64,
}

impl MemoryClient<'_> {
    fn request(
        &mut self,
        method: Method,
        attrs: impl Fn(&mut MessageBuilder),
    ) -> anyhow::Result<()> {
        for _ in 0..4 {
            self.next_tid += 1;
            let mut tid = [0x6Du8; 12];
            tid[..8].copy_from_slice(&self.next_tid.to_be_bytes());
            let mut builder = MessageBuilder::new(method, Class::Request, tid);
            attrs(&mut builder);
            if let Some(nonce) = &self.nonce {
                builder
                    .add(attr::USERNAME, self.username.as_bytes())
                    .add(attr::REALM, REALM.as_bytes())
                    .add(attr::NONCE, nonce.as_bytes())
                    .add_integrity(&self.key);
            }
            builder.add_fingerprint();
            let request = builder.finish();
            let Some(response) = self.exchange(&request, tid)? else {
                continue;
            };
            let message = Message::parse(&response)
                .map_err(|_| anyhow::anyhow!("malformed response to {method:?}"))?;
            match message.class() {
                Class::Success => return Ok(()),
                Class::Error => {
                    let code = message
                        .get(attr::ERROR_CODE)
                        .filter(|v| v.len() >= 4)
                        .map_or(0, |v| u16::from(v[2]) * 100 + u16::from(v[3]));
                    match message.get_str(attr::NONCE) {
                        Some(nonce) if code == 401 || code == 438 => {
                            self.nonce = Some(nonce.to_owned());
                        }
                        _ => bail!("{method:?} answered {code}"),
                    }
                }
                other => bail!("{method:?} answered with class {other:?}"),
            }
        }
        bail!("{method:?} got no usable answer")
    }

    /// Sends `request` and returns the response with transaction id `tid`, retransmitting
    /// on silence; `None` when nothing came back at all.
    fn exchange(&self, request: &[u8], tid: [u8; 12]) -> anyhow::Result<Option<Vec<u8>>> {
        let mut buf = [0u8; 1500];
        for _ in 0..4 {
            self.socket.send(request)?;
            loop {
                match self.socket.recv(&mut buf) {
                    Ok(len) if len >= 20 && buf[8..20] == tid => {
                        return Ok(Some(buf[..len].to_vec()))
                    }
                    Ok(_) => continue,
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(packets: u64, cpu_seconds: f64, loss_percent: f64, rtt_ms: f64) -> Outcome {
        Outcome {
            sent: packets / 2,
            received: packets / 2,
            loss_percent,
            rtt_ms,
            cpu_seconds,
            ..Outcome::default()
        }
    }

    #[test]
    fn the_verdict_is_judged_only_on_rounds_in_which_ours_lost_nothing() {
        let pairs = [
            // Lossless, 1.6 times coturn: this round alone is judged.
            (
                outcome(800_000, 4.0, 0.0, 0.5),
                outcome(800_000, 2.5, 0.0, 0.1),
            ),
            // Ours lost packets: a ratio of 1.0 here must not pull the verdict down.
            (
                outcome(700_000, 4.0, 12.0, 50.0),
                outcome(700_000, 4.0, 8.0, 40.0),
            ),
        ];
        let line = verdict(&pairs);
        assert!(line.contains(": met over the 1 of 2 rounds"), "{line}");
        assert!(line.contains("median ratio 1.60"), "{line}");
    }

    #[test]
    fn a_longer_round_trip_or_a_low_ratio_misses_the_target() {
        let slow = [(
            outcome(800_000, 4.0, 0.0, 0.1),
            outcome(800_000, 2.0, 0.0, 0.2),
        )];
        assert!(verdict(&slow).contains("not met"), "{}", verdict(&slow));
        let low = [(
            outcome(800_000, 4.0, 0.0, 0.5),
            outcome(800_000, 3.0, 0.0, 0.1),
        )];
        assert!(verdict(&low).contains("not met"), "{}", verdict(&low));
    }

    #[test]
    fn rounds_in_which_ours_lost_packets_cannot_judge_the_target() {
        let pairs = [(
            outcome(700_000, 7.0, 18.0, 50.0),
            outcome(760_000, 5.5, 9.0, 57.0),
        )];
        let line = verdict(&pairs);
        assert!(line.contains("not judged"), "{line}");
        assert!(line.contains("coturn too in 1 of them"), "{line}");
    }
}
