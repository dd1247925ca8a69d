//! `cargo xtask bench notify`: how fast the delivery worker empties the
//! outbox into a local SMTP server (aiosmtpd), and what writing the outbox
//! adds to the transaction that books a meeting. It prints figures; it
//! asserts nothing about time.
//!
//! Options: `--mails N` (default 2000), `--bookings N` (default 2000),
//! `--concurrency N` (default 8, the worker's parallel SMTP connections).
//! SQLite always; PostgreSQL too when `DATABASE_URL` is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use booking::outbox::{enqueue, Message};
use booking::{BookingId, Db, EmailAddress, Language};
use sqlx::{AssertSqlSafe, Executor};

pub fn run(args: &[String]) -> Result<()> {
    let mails = option(args, "--mails", 2000)?;
    let bookings = option(args, "--bookings", 2000)?;
    let concurrency = option(args, "--concurrency", 8)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let scratch = std::env::temp_dir().join(format!("kontakt-bench-{}", unique()));
        std::fs::create_dir_all(&scratch)?;
        let result = bench(&scratch, mails, bookings, concurrency).await;
        let _ = std::fs::remove_dir_all(&scratch);
        result
    })
}

async fn bench(scratch: &Path, mails: usize, bookings: usize, concurrency: usize) -> Result<()> {
    let python = python_with_aiosmtpd()?;
    let postgres = std::env::var("DATABASE_URL").ok();
    println!("notify benchmark: {mails} mails, {bookings} bookings per database");

    println!("\n## delivery to aiosmtpd on loopback (worker batch 64, concurrency {concurrency})");
    let sqlite = sqlite_db(scratch, "delivery").await?;
    delivery(Some(&python), scratch, "sqlite", sqlite, mails, concurrency).await?;
    if let Some(url) = &postgres {
        let (db, guard) = postgres_db(url).await?;
        let result = delivery(Some(&python), scratch, "postgres", db, mails, concurrency).await;
        // Drop the database whether or not the run went well.
        guard.drop_database().await?;
        result?;
    }
    // The same worker writing .eml files: its own ceiling, without a
    // single-threaded Python server on the other end.
    let sqlite = sqlite_db(scratch, "files").await?;
    delivery(
        None,
        scratch,
        "sqlite, .eml files",
        sqlite,
        mails,
        concurrency,
    )
    .await?;

    println!(
        "\n## booking transaction, without and with the outbox (confirmation + two reminders)"
    );
    let sqlite = sqlite_db(scratch, "overhead").await?;
    overhead("sqlite", &sqlite, bookings).await?;
    if let Some(url) = &postgres {
        let (db, guard) = postgres_db(url).await?;
        let result = overhead("postgres", &db, bookings).await;
        db.close().await;
        guard.drop_database().await?;
        result?;
    }
    Ok(())
}

/// Delivers `mails` booking confirmations to aiosmtpd when `python` is given,
/// otherwise to `.eml` files, and prints the rate.
async fn delivery(
    python: Option<&Path>,
    scratch: &Path,
    name: &str,
    db: Db,
    mails: usize,
    concurrency: usize,
) -> Result<()> {
    let maildir = scratch.join(format!("maildir-{}", name.replace([' ', ',', '.'], "")));
    let mut settings = notify::Settings::new("https://kontakt.example.se");
    settings.batch_size = 64;
    settings.concurrency = concurrency as u32;
    let (_server, delivered_dir) = match python {
        Some(python) => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            settings.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
            (
                Some(SmtpServer::start(python, port, &maildir)?),
                maildir.join("new"),
            )
        }
        None => {
            settings.outbox_dir = maildir.clone();
            (None, maildir)
        }
    };
    let now = jiff::Timestamp::now().as_second();
    let mut conn = db.pool().acquire().await?;
    for i in 0..mails {
        let message = Message::BookingConfirmed {
            booking_id: BookingId::parse(format!("bench-{i}"))?,
            starts_at: now + 86_400,
            ends_at: now + 86_400 + 2700,
            sequence: 0,
            manage_token: format!("token-{i}"),
        };
        let to = EmailAddress::parse(&format!("resident{i}@example.se"))?;
        enqueue(&mut conn, &to, Language::Sv, &message, None, now, now).await?;
    }
    drop(conn);
    let worker = notify::Worker::new(db.clone(), settings)?;
    let started = Instant::now();
    let mut sent = 0;
    loop {
        let report = worker.run_once(jiff::Timestamp::now()).await?;
        if report.claimed == 0 {
            break;
        }
        if report.sent != report.claimed {
            bail!("{name}: a mail was not accepted: {report:?}");
        }
        sent += report.sent;
    }
    let elapsed = started.elapsed();
    let delivered = std::fs::read_dir(&delivered_dir)?.count();
    if delivered != mails || sent != mails {
        bail!("{name}: {sent} sent, {delivered} in the Maildir, {mails} expected");
    }
    println!(
        "{name:18} {mails} mails in {:.2} s = {:.0} mails/s (with ICS attachment)",
        elapsed.as_secs_f64(),
        mails as f64 / elapsed.as_secs_f64()
    );
    db.close().await;
    Ok(())
}

async fn overhead(name: &str, db: &Db, bookings: usize) -> Result<()> {
    seed(db).await?;
    let base = jiff::Timestamp::now().as_second() + 86_400;
    let mut without = Vec::with_capacity(bookings);
    let mut with = Vec::with_capacity(bookings);
    // Alternate the two kinds so that drift (WAL growth, caches) hits both.
    for i in 0..bookings * 2 {
        let with_outbox = i % 2 == 1;
        let starts_at = base + i as i64 * 3600;
        let started = Instant::now();
        let mut tx = db.pool().begin().await?;
        let id = BookingId::parse(format!("bench-{i}"))?;
        sqlx::query(
            "INSERT INTO bookings (id, resident_id, staff_id, service_code, step, starts_at, ends_at, status, \
             performed_by, performed_for, rule, manage_token_hash, created_at, updated_at) \
             VALUES ($1, 'bench-resident', 'bench-staff', 'bench-service', 'meeting', $2, $3, 'booked', \
             '0001', '0001', 'open', $4, $5, $5)",
        )
        .bind(id.as_str())
        .bind(starts_at)
        .bind(starts_at + 2700)
        .bind(format!("hash-{i}"))
        .bind(base)
        .execute(&mut *tx)
        .await?;
        if with_outbox {
            let to = EmailAddress::parse("bench@example.se")?;
            let confirmed = Message::BookingConfirmed {
                booking_id: id.clone(),
                starts_at,
                ends_at: starts_at + 2700,
                sequence: 0,
                manage_token: "token".into(),
            };
            enqueue(&mut tx, &to, Language::Sv, &confirmed, None, base, base).await?;
            for minutes_before in [1440, 60] {
                let reminder = Message::Reminder {
                    booking_id: id.clone(),
                    starts_at,
                    ends_at: starts_at + 2700,
                    minutes_before,
                    manage_token: "token".into(),
                };
                enqueue(
                    &mut tx,
                    &to,
                    Language::Sv,
                    &reminder,
                    None,
                    starts_at - minutes_before * 60,
                    base,
                )
                .await?;
            }
        }
        tx.commit().await?;
        let took = started.elapsed();
        if with_outbox {
            with.push(took)
        } else {
            without.push(took)
        }
    }
    let (p50_without, p99_without) = percentiles(&mut without);
    let (p50_with, p99_with) = percentiles(&mut with);
    println!(
        "{name:8} without outbox p50 {:>7.3} ms p99 {:>7.3} ms | with outbox p50 {:>7.3} ms p99 {:>7.3} ms | added p50 {:+.3} ms p99 {:+.3} ms",
        ms(p50_without),
        ms(p99_without),
        ms(p50_with),
        ms(p99_with),
        ms(p50_with) - ms(p50_without),
        ms(p99_with) - ms(p99_without),
    );
    Ok(())
}

/// The few rows a booking refers to.
async fn seed(db: &Db) -> Result<()> {
    let statements = [
        "INSERT INTO municipalities (code, name, time_zone) VALUES ('0001', 'Bench', 'Europe/Stockholm')",
        "INSERT INTO services (code, name_key, anonymous_chat, slot_minutes, buffer_minutes) \
         VALUES ('bench-service', 'service.bench', 0, 45, 15)",
        "INSERT INTO staff (id, municipality_code, email, name, role, password_hash, created_at) \
         VALUES ('bench-staff', '0001', 'staff@example.se', 'Bench', 'staff', 'x', 0)",
        "INSERT INTO residents (id, email, name, home_code, language, created_at) \
         VALUES ('bench-resident', 'bench@example.se', 'Bench', '0001', 'sv', 0)",
    ];
    for statement in statements {
        sqlx::query(statement)
            .execute(db.pool())
            .await
            .with_context(|| statement.to_owned())?;
    }
    Ok(())
}

/// A name no other run on this machine uses: the process id and the time.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}_{nanos}", std::process::id())
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn option(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .context(format!("{name} needs a number"))?
            .parse()
            .with_context(|| format!("{name} needs a number")),
    }
}

async fn sqlite_db(scratch: &Path, name: &str) -> Result<Db> {
    let url = format!("sqlite://{}/{name}.db?mode=rwc", scratch.display());
    let db = Db::connect(&url, 8).await?;
    db.migrate().await?;
    Ok(db)
}

/// A throwaway PostgreSQL database next to the one `DATABASE_URL` names.
struct PostgresDatabase {
    admin_url: String,
    name: String,
}

async fn postgres_db(admin_url: &str) -> Result<(Db, PostgresDatabase)> {
    let name = format!("bench_notify_{}", unique());
    let admin = Db::connect(admin_url, 1).await?;
    admin
        .pool()
        // The name is this bench's own (`unique()`), never input.
        .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    admin.close().await;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("DATABASE_URL names a database")?;
    let db = Db::connect(&format!("{base}/{name}"), 8).await?;
    db.migrate().await?;
    Ok((
        db,
        PostgresDatabase {
            admin_url: admin_url.to_owned(),
            name,
        },
    ))
}

impl PostgresDatabase {
    async fn drop_database(self) -> Result<()> {
        let admin = Db::connect(&self.admin_url, 1).await?;
        admin
            .pool()
            // The name is the one `postgres_db` made.
            .execute(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await?;
        Ok(())
    }
}

/// `notify/tests/smtp_server.py`, killed when dropped.
struct SmtpServer(Child);

impl SmtpServer {
    fn start(python: &Path, port: u16, maildir: &Path) -> Result<SmtpServer> {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../notify/tests/smtp_server.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string(), "--maildir"])
            .arg(maildir)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting smtp_server.py")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("smtp_server.py did not start: {line:?}");
        }
        Ok(SmtpServer(child))
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_with_aiosmtpd() -> Result<PathBuf> {
    // Debian's python3-aiosmtpd installs for the system Python, which a
    // pyenv or venv python3 earlier on PATH does not see.
    for candidate in ["/usr/bin/python3", "python3"] {
        let found = Command::new(candidate)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if found {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("python3-aiosmtpd is missing: apt-get install -y python3-aiosmtpd")
}
