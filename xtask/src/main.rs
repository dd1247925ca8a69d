//! `cargo xtask <task>`: the developer tasks of Kontakt.
//!
//! - `ci`: installs what the tests need (through apt and npm), then runs
//!   formatting, clippy, every Rust test and the browser tests. `.ci/run`
//!   calls exactly this.
//! - `bench <booking|relay|notify|signaling|callsetup>`: benchmarks that
//!   print figures; `bench signaling queue` is the chat queue's scenario,
//!   `bench signaling slow-store` measures chat while audit writes are slow,
//!   and `bench callsetup` times a video call's set-up in the browser.
//! - `e2e`: the browser tests alone.
//! - `cycles [crate ...]`: the module cycles inside `booking`, `signaling`
//!   and `web` (or the crates named), from cargo-modules; fails on one.
//! - `db-reset`: deletes the local SQLite database in `./data`.

mod bench_booking;
mod bench_callsetup;
mod bench_notify;
mod bench_queue;
mod bench_relay;
mod bench_signaling;
mod bench_slow_store;
mod ci;
mod cycles;
mod process;
mod smtp_sink;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = process::workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("ci") => ci::run(),
        Some("e2e") => ci::e2e(),
        Some("cycles") => cycles::run(&args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("booking") => bench_booking::run(&args[2..]),
            Some("notify") => bench_notify::run(&args[2..]),
            Some("relay") => bench_relay::run(&args[2..]),
            Some("signaling") => bench_signaling::run(&args[2..]),
            Some("callsetup") => bench_callsetup::run(&args[2..]),
            other => anyhow::bail!(
                "unknown benchmark {other:?}: try booking, relay, notify, signaling or callsetup"
            ),
        },
        Some("db-reset") => {
            let path = root.join("data").join("kontakt.db");
            for suffix in ["", "-wal", "-shm"] {
                let file = format!("{}{suffix}", path.display());
                if std::path::Path::new(&file).exists() {
                    std::fs::remove_file(&file)?;
                }
            }
            println!(
                "removed {}; the next start seeds the demo again",
                path.display()
            );
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | e2e | cycles [crate ...] | bench <booking|relay|notify|signaling|callsetup> | db-reset>"
            );
            std::process::exit(2);
        }
    }
}
