//! The whole test suite, with everything it needs installed first.

use std::process::Command;

use anyhow::bail;

use crate::process::{has, is_root, run as run_command};

/// Debian packages the tests drive as real peers: a browser, TURN tools and
/// coturn itself, an SMTP server, and load tools for the benchmarks.
const PACKAGES: &[(&str, &str)] = &[
    ("chromium", "chromium"),
    ("turnutils_uclient", "coturn"),
    ("turnserver", "coturn"),
    ("wrk", "wrk"),
    ("hyperfine", "hyperfine"),
    ("sqlite3", "sqlite3"),
];

pub fn run() -> anyhow::Result<()> {
    install_system_packages()?;
    run_command("cargo", &["fmt", "--all", "--", "--check"])?;
    run_command(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    use_local_service(
        "DATABASE_URL",
        "127.0.0.1:5432",
        "postgres://postgres@127.0.0.1:5432/test",
        "PostgreSQL",
    );
    use_local_service(
        "NATS_URL",
        "127.0.0.1:4222",
        "nats://127.0.0.1:4222",
        "NATS",
    );
    run_command("cargo", &["test", "--workspace", "--all-targets"])?;
    e2e()
}

/// Points `var` at the service on `addr` when it is unset and the service
/// answers, so that a newcomer on a machine with the services runs exactly
/// what CI runs. Without it, those suites print a notice and skip.
fn use_local_service(var: &str, addr: &str, url: &str, what: &str) {
    if std::env::var_os(var).is_some() {
        eprintln!("{var} is set: the {what} tests run");
        return;
    }
    let reachable = addr
        .parse()
        .ok()
        .and_then(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).ok()
        })
        .is_some();
    if reachable {
        eprintln!("{what} answers on {addr}: setting {var}={url}");
        // The tests run in child processes, which inherit this. Only this
        // thread runs yet, so changing the environment is sound.
        std::env::set_var(var, url);
    } else {
        eprintln!(
            "notice: {var} is not set and nothing answers on {addr}: the {what} tests are skipped"
        );
    }
}

/// The browser tests in `tests/e2e`.
pub fn e2e() -> anyhow::Result<()> {
    if std::path::Path::new("tests/e2e/run.sh").exists() {
        run_command("bash", &["tests/e2e/run.sh"])
    } else {
        eprintln!("notice: tests/e2e/run.sh is missing; no browser tests to run");
        Ok(())
    }
}

fn install_system_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| !has(program))
        .map(|(_, package)| *package)
        .collect();
    let aiosmtpd = Command::new("/usr/bin/python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !aiosmtpd {
        missing.push("python3-aiosmtpd");
    }
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the tests need these Debian packages: sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    run_command("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    // Should Debian start coturn as a service on install, stop it: the tests
    // and benchmarks start their own on ports of their choosing.
    let _ = Command::new("sh")
        .args(["-c", "service coturn stop >/dev/null 2>&1; true"])
        .status();
    Ok(())
}
