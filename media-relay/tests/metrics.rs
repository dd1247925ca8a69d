//! The standalone `media-relay` binary serves Prometheus metrics on `metrics_listen`.
//! It needs no external programs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{KillOnDrop, TIMEOUT};

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

#[test]
fn standalone_binary_serves_prometheus_metrics() {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
    let config =
        std::env::temp_dir().join(format!("media-relay-metrics-{}.toml", std::process::id()));
    let min_port = 28_000 + (std::process::id() % 40) as u16 * 50;
    std::fs::write(
        &config,
        format!(
            "listen_udp = \"127.0.0.1:0\"\nlisten_tcp = \"127.0.0.1:0\"\n\
             relay_bind_ipv4 = \"127.0.0.1\"\nmin_port = {min_port}\nmax_port = {}\n\
             secret = \"metrics-secret\"\nworkers = 1\nmetrics_listen = \"{metrics}\"\n",
            min_port + 49
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_media-relay"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("media-relay starts");
    let stdout = child.stdout.take().unwrap();
    let _child = KillOnDrop(child);

    // The binary logs once its listeners are bound; the metrics listener is bound before.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the relay logs its start");
        if line.contains("media relay started") {
            break;
        }
    }
    let _ = std::fs::remove_file(&config);

    // Workers record their first figures as they start, just after that line; scrape until
    // they are there.
    let text = loop {
        let text = scrape(metrics).expect("the metrics listener answers");
        if text.contains("relay_allocations") || Instant::now() > deadline {
            break text;
        }
    };
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("relay_allocations 0"), "{text}");
}
