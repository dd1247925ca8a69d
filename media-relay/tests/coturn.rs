//! Credentials from `media_relay::credentials::issue` work against coturn's `turnserver` with
//! `use-auth-secret`, so operators can run either relay. Needs Debian's `coturn` package;
//! without it this test prints a notice and passes, unless `CI` is set.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn issued_credentials_allocate_on_coturn() {
    if !require_binary("turnserver") {
        return;
    }
    let port = free_udp_port();
    let pidfile =
        std::env::temp_dir().join(format!("media-relay-coturn-{}.pid", std::process::id()));
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            "--relay-ip=127.0.0.1",
            "--min-port=31000",
            "--max-port=31999",
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
            &format!("--realm={REALM}"),
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--no-cli",
            "--no-stdout-log",
            "--log-file=/dev/null",
            &format!("--pidfile={}", pidfile.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnserver starts");
    let _coturn = KillOnDrop(child);
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until_answering(server, &binding_request(), TIMEOUT);

    let mut valid = TurnClient::new(Link::udp(server), credentials_for("coturn-user", 600));
    let reply = valid.allocate();
    assert_eq!(
        reply.code, 200,
        "coturn refused credentials it should accept"
    );
    assert!(TurnClient::relayed_address(&reply).ip().is_loopback());

    let mut expired = TurnClient::new(Link::udp(server), credentials_for("coturn-old", -10));
    assert_eq!(expired.allocate().code, 401);

    let (username, _) = credentials_for("coturn-forger", 600);
    let mut forged = TurnClient::new(Link::udp(server), (username, "wrong".into()));
    assert_eq!(forged.allocate().code, 401);
}
