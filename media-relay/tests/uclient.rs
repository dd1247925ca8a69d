//! Our relay against coturn's test client, `turnutils_uclient`, with `turnutils_peer` echoing.
//! Needs Debian's `coturn` package; without it these tests print a notice and pass, unless
//! `CI` is set.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use media_relay::Relay;

/// Starts an echo peer on loopback and waits until it echoes.
fn start_peer() -> (KillOnDrop, u16) {
    let port = free_udp_port();
    let child = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer starts");
    let guard = KillOnDrop(child);
    wait_until_answering(SocketAddr::from(([127, 0, 0, 1], port)), b"ping", TIMEOUT);
    (guard, port)
}

struct Totals {
    sent: u64,
    received: u64,
    lost: u64,
}

fn totals(output: &str) -> Totals {
    let mut totals = Totals {
        sent: 0,
        received: 0,
        lost: u64::MAX,
    };
    for line in output.lines() {
        if let Some(rest) = line.split("start_mclient: tot_send_msgs=").nth(1) {
            let mut parts = rest.split(", tot_recv_msgs=");
            totals.sent = parts.next().unwrap().trim().parse().unwrap();
            totals.received = parts.next().unwrap().trim().parse().unwrap();
        }
        if let Some(rest) = line.split("Total lost packets ").nth(1) {
            totals.lost = rest.split(' ').next().unwrap().parse().unwrap();
        }
    }
    totals
}

fn uclient(relay_port: u16, peer_port: u16, flags: &[&str]) -> String {
    let mut command = Command::new("turnutils_uclient");
    command
        .args(flags)
        .args([
            "-u",
            "uclient",
            "-W",
            SECRET,
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
        ])
        .args([
            "-p",
            &relay_port.to_string(),
            "-m",
            "10",
            "-n",
            "100",
            "-l",
            "170",
            "-z",
            "5",
        ])
        .arg("127.0.0.1");
    run_with_timeout(command, Duration::from_secs(60))
}

fn check_zero_loss(relay_port: u16, flags: &[&str]) {
    let (_peer, peer_port) = start_peer();
    let output = uclient(relay_port, peer_port, flags);
    let totals = totals(&output);
    assert!(
        totals.sent >= 1000,
        "{flags:?} sent {}\n{output}",
        totals.sent
    );
    assert_eq!(totals.received, totals.sent, "{flags:?}\n{output}");
    assert_eq!(totals.lost, 0, "{flags:?}\n{output}");
}

fn relay_with_tls() -> (Relay, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    // uclient opens two allocations per client, and clients killed in the negative modes
    // leave theirs until they expire, so these relays get a wider port range.
    static SLOT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let slot = SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let min_port = 10_000 + slot * 3000;
    let config = media_relay::RelayConfig {
        min_port,
        max_port: min_port + 2999,
        listen_tls: Some("127.0.0.1:0".parse().unwrap()),
        tls_cert: Some(dir.path().join("cert.pem")),
        tls_key: Some(dir.path().join("key.pem")),
        max_allocations_per_user: 1000,
        bandwidth_bytes_per_sec: 0,
        ..loopback_config()
    };
    (start(config), dir)
}

mod tempdir {
    /// A directory removed when the test ends.
    pub struct Dir(std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!(
                "media-relay-test-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn have_coturn_tools() -> bool {
    require_binary("turnutils_uclient") && require_binary("turnutils_peer")
}

#[test]
fn udp_with_channels_and_with_send_indications_loses_nothing() {
    if !have_coturn_tools() {
        return;
    }
    let (relay, _dir) = relay_with_tls();
    let port = relay.udp_addr().unwrap().port();
    check_zero_loss(port, &[]);
    check_zero_loss(port, &["-s"]);
    check_zero_loss(port, &["-g", "-X"]);
    relay.shutdown();
}

#[test]
fn tcp_and_tls_lose_nothing() {
    if !have_coturn_tools() {
        return;
    }
    let (relay, _dir) = relay_with_tls();
    check_zero_loss(relay.tcp_addr().unwrap().port(), &["-t"]);
    check_zero_loss(relay.tcp_addr().unwrap().port(), &["-t", "-s"]);
    check_zero_loss(relay.tls_addr().unwrap().port(), &["-t", "-S"]);
    check_zero_loss(relay.tls_addr().unwrap().port(), &["-t", "-S", "-s"]);
    relay.shutdown();
}

/// `-N` and `-R` send malformed and out-of-order requests. `-R` never finishes on its own,
/// against coturn too (it keeps waiting for answers the RFC says not to send), so each mode
/// runs for a bounded time; what matters is that the relay is still serving afterwards.
#[test]
fn negative_modes_leave_the_relay_serving() {
    if !have_coturn_tools() {
        return;
    }
    let (relay, _dir) = relay_with_tls();
    let port = relay.udp_addr().unwrap().port();
    let (_peer, peer_port) = start_peer();
    for flags in [&["-N"][..], &["-R"], &["-t", "-N"], &["-t", "-R"], &["-O"]] {
        let port = if flags.contains(&"-t") {
            relay.tcp_addr().unwrap().port()
        } else {
            port
        };
        let mut command = Command::new("turnutils_uclient");
        command
            .args(flags)
            .args(["-u", "negative", "-W", SECRET, "-e", "127.0.0.1"])
            .args(["-r", &peer_port.to_string(), "-p", &port.to_string()])
            .args(["-m", "2", "-n", "20", "-l", "170", "-z", "5", "127.0.0.1"]);
        let _ = run_bounded(command, Duration::from_secs(8));
    }
    // The relay still answers and still relays.
    wait_until_answering(relay.udp_addr().unwrap(), &binding_request(), TIMEOUT);
    check_zero_loss(port, &[]);
    relay.shutdown();
}
