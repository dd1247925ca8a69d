//! `cargo xtask bench callsetup`: how long a resident waits for video. It
//! builds `kontakt`, runs the browser test `tests/e2e/callsetup.test.mjs`
//! (five times: from the join link clicked, already admitted, to the first
//! decoded frame of the social worker's camera through the embedded relay)
//! and prints the median and the maximum with the machine's load. The
//! targets are a median under 1.5 s and a maximum under 3 s; like every
//! benchmark here it prints, and judges nothing.
//!
//! Options: `--runs N` (default 5), `--release` (a release build instead of
//! the debug one the browser tests use).

use std::process::Command;

use anyhow::{bail, Context};

use crate::process;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut runs = 5u32;
    let mut release = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--runs" => {
                runs = rest
                    .next()
                    .context("--runs needs a number")?
                    .parse()
                    .context("--runs needs a number")?;
            }
            "--release" => release = true,
            other => bail!("unknown option {other}: try --runs N or --release"),
        }
    }
    let profile = if release { "release" } else { "debug" };
    let mut build = vec!["build", "-p", "web", "--bin", "kontakt"];
    if release {
        build.push("--release");
    }
    process::run("cargo", &build)?;
    if !std::path::Path::new("tests/e2e/node_modules").exists() {
        process::run(
            "npm",
            &["ci", "--no-audit", "--no-fund", "--prefix", "tests/e2e"],
        )?;
    }
    // Absolute: the test starts the server in a data directory of its own.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| process::workspace_root().join("target"));
    let bin = target.join(profile).join("kontakt").display().to_string();
    let load_before = load_average();
    eprintln!(
        "$ node --test tests/e2e/callsetup.test.mjs (KONTAKT_BIN={bin}, CALLSETUP_RUNS={runs})"
    );
    let output = Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "tests/e2e/callsetup.test.mjs",
        ])
        .env("KONTAKT_BIN", &bin)
        .env("CALLSETUP_RUNS", runs.to_string())
        .output()
        .context("starting node")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        bail!("the call set-up test failed: {}", output.status);
    }
    let figure = |name: &str| {
        stdout.lines().find_map(|line| {
            let at = line.find(&format!("{name}="))?;
            Some(
                line[at + name.len() + 1..]
                    .split_whitespace()
                    .next()?
                    .to_owned(),
            )
        })
    };
    let (Some(runs_ms), Some(median), Some(max)) =
        (figure("runs_ms"), figure("median_ms"), figure("max_ms"))
    else {
        eprintln!("{stdout}");
        bail!("the test printed no figures");
    };
    println!("call set-up, join clicked (admitted) to the first decoded remote frame");
    println!("  kontakt:  {profile} build, embedded relay, SQLite, headless Chromium");
    println!("  runs:     {runs_ms} ms");
    println!("  median:   {median} ms   (target < 1500 ms)");
    println!("  maximum:  {max} ms   (target < 3000 ms)");
    println!(
        "  load:     {} before, {} after (1, 5, 15 min; {} cores)",
        load_before,
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

/// `/proc/loadavg`'s three averages, or "unknown".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}
