//! `cargo xtask bench relay`: our media relay against coturn under the same
//! `turnutils_uclient` loads, echoed by `turnutils_peer`, all on loopback.
//!
//! For each server and load it prints relayed packets per second of server CPU time (from
//! `/proc/<pid>/stat`), loss, average round trip, peak RSS, memory per allocation, and the
//! ratio ours/coturn. The servers run one after the other with equivalent settings: the same
//! listener, relay port range, REST secret, realm, one worker per core and no quotas.
//!
//! Options: `--quick` runs small loads (a smoke test of the harness); `--load M,N,L,Z` replaces
//! the loads with one of M clients sending N messages of L bytes every Z ms (repeatable).

use std::io::Read as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

const SECRET: &str = "bench-secret";
const REALM: &str = "kontakt";
const LISTEN_PORT: u16 = 34780;
const PEER_PORT: u16 = 34800;
const MIN_PORT: u16 = 61000;
const MAX_PORT: u16 = 65535;
/// The longest a single uclient run may take before the harness gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

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
    peak_rss_kib: u64,
    baseline_rss_kib: u64,
    allocations: u64,
}

impl Outcome {
    /// Packets the server relayed: each message crosses it to the peer and back.
    fn relayed(&self) -> u64 {
        self.sent + self.received
    }

    fn packets_per_cpu_second(&self) -> f64 {
        if self.cpu_seconds > 0.0 {
            self.relayed() as f64 / self.cpu_seconds
        } else {
            0.0
        }
    }

    fn bytes_per_allocation(&self) -> f64 {
        if self.allocations == 0 {
            return 0.0;
        }
        (self.peak_rss_kib.saturating_sub(self.baseline_rss_kib) * 1024) as f64
            / self.allocations as f64
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut loads = Vec::new();
    let mut quick = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => quick = true,
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
            other => bail!("unknown option {other}; use --quick or --load M,N,L,Z"),
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
    for binary in ["turnserver", "turnutils_uclient", "turnutils_peer"] {
        if which(binary).is_none() {
            bail!("`{binary}` is missing: install Debian's coturn package (apt-get install -y coturn)");
        }
    }

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
    let relay_binary = target.join("release").join("media-relay");
    let work = std::env::temp_dir().join(format!("bench-relay-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::fs::write(
        work.join("relay.toml"),
        format!(
            "listen_udp = \"127.0.0.1:{LISTEN_PORT}\"\nlisten_tcp = \"127.0.0.1:{LISTEN_PORT}\"\n\
             relay_ipv4 = \"127.0.0.1\"\nrelay_bind_ipv4 = \"127.0.0.1\"\n\
             min_port = {MIN_PORT}\nmax_port = {MAX_PORT}\nrealm = \"{REALM}\"\nsecret = \"{SECRET}\"\n\
             max_allocations_per_user = 100000\nmax_allocations = 100000\n\
             bandwidth_bytes_per_sec = 0\nallowed_peer_ranges = [\"127.0.0.0/8\"]\nworkers = {workers}\n"
        ),
    )?;
    let clock_ticks = clock_ticks_per_second()?;

    println!("media-relay vs coturn on loopback, {workers} workers/relay threads each");
    println!(
        "{:<20} {:<12} {:>9} {:>7} {:>8} {:>11} {:>7} {:>9} {:>8} {:>7}",
        "load m×n×len@ms",
        "server",
        "relayed",
        "cpu s",
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
        let mut rates = Vec::new();
        for kind in [ServerKind::Coturn, ServerKind::Ours] {
            match run_one(kind, *load, &relay_binary, &work, workers, clock_ticks) {
                Ok(o) => {
                    println!(
                        "{:<20} {:<12} {:>9} {:>7.2} {:>8.3} {:>11.0} {:>7.3} {:>9.1} {:>8.0} {:>7}",
                        label,
                        kind.name(),
                        o.relayed(),
                        o.cpu_seconds,
                        o.loss_percent,
                        o.packets_per_cpu_second(),
                        o.rtt_ms,
                        o.peak_rss_kib as f64 / 1024.0,
                        o.bytes_per_allocation(),
                        o.allocations,
                    );
                    rates.push(o.packets_per_cpu_second());
                }
                Err(error) => {
                    // One failed run should not hide the others' figures.
                    failures += 1;
                    println!("{label:<20} {:<12} failed: {error:#}", kind.name());
                }
            }
        }
        if let [coturn, ours] = rates[..] {
            if coturn > 0.0 {
                println!(
                    "{label:<20} ratio ours/coturn, packets per CPU-second: {:.2}",
                    ours / coturn
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    if failures > 0 {
        bail!("{failures} benchmark run(s) failed");
    }
    Ok(())
}

fn run_one(
    kind: ServerKind,
    load: Load,
    relay_binary: &Path,
    work: &Path,
    workers: usize,
    clock_ticks: f64,
) -> anyhow::Result<Outcome> {
    let peer = ChildGuard(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &PEER_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting turnutils_peer")?,
    );
    let server = ChildGuard(match kind {
        ServerKind::Ours => Command::new(relay_binary)
            .args(["--config", &work.join("relay.toml").to_string_lossy()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting media-relay")?,
        ServerKind::Coturn => Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={LISTEN_PORT}"),
                "--relay-ip=127.0.0.1",
                &format!("--min-port={MIN_PORT}"),
                &format!("--max-port={MAX_PORT}"),
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
    });
    let pid = server.0.id();
    wait_for_stun(LISTEN_PORT, Duration::from_secs(15))?;
    let baseline_rss_kib = status_kib(pid, "VmRSS:")?;
    let cpu_before = cpu_ticks(pid)?;

    println!(
        "running {} clients × {} messages × {} bytes every {} ms against {}",
        load.clients,
        load.messages,
        load.length,
        load.interval_ms,
        kind.name()
    );
    let mut uclient = ChildGuard(
        Command::new("turnutils_uclient")
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
    let cpu_after = cpu_ticks(pid)?;
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
    outcome.cpu_seconds = (cpu_after - cpu_before) as f64 / clock_ticks;
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

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), utime and stime, are at 11 and 12 after the name.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
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

fn clock_ticks_per_second() -> anyhow::Result<f64> {
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
