//! `kontakt`: serve (the default), migrate, seed, create-staff,
//! deactivate-staff.

use std::path::PathBuf;

use anyhow::Context;
use booking::accounts::{self, NewStaff};
use booking::{
    EmailAddress, Language, MunicipalityCode, NewPassword, PersonName, Role, ServiceCode,
};
use clap::{Parser, Subcommand};
use web::startup::{open_database, redact};
use web::{Application, Settings};

/// mimalloc instead of glibc's allocator: under chat load the server spent
/// about 8% of its CPU in glibc's `malloc`, `free` and their consolidation
/// of freed chunks (`perf record` during `cargo xtask bench signaling`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kontakt",
    about = "Chat and video contact with the social services",
    version
)]
struct Cli {
    /// The settings file; settings from the environment override it.
    #[arg(long, default_value = "kontakt.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Seed the demo data into an empty database and exit.
    Seed,
    /// Create a staff account.
    CreateStaff {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// The four-digit kommunkod of the staff member's municipality.
        #[arg(long)]
        municipality: String,
        /// staff, scheduler or admin.
        #[arg(long, default_value = "staff")]
        role: String,
        /// Service codes, comma separated.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        /// Languages spoken, comma separated (sv, en, fi, ar).
        #[arg(long, value_delimiter = ',', default_value = "sv")]
        languages: Vec<String>,
        /// Read from the environment so it stays out of shell history. At
        /// least 12 characters, and not a common password.
        #[arg(long, env = "KONTAKT_NEW_STAFF_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Deactivate a staff account: it can no longer sign in, and its
    /// sessions end. With NATS configured, running nodes are told at once;
    /// otherwise they stop accepting its sessions within their session
    /// cache's lifetime (30 seconds).
    DeactivateStaff {
        #[arg(long)]
        email: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.config).context("reading settings")?;
    init_tracing(&settings.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            open_database(&settings).await?;
            println!("migrations applied to {}", redact(&settings.database_url));
            Ok(())
        }
        Command::Seed => {
            let db = open_database(&settings).await?;
            anyhow::ensure!(
                booking::seed::is_empty(&db).await?,
                "the database already has data"
            );
            let tz = booking::bookings::zone(booking::bookings::DISPLAY_ZONE)?;
            let now = jiff::Timestamp::now();
            let sign_ins =
                booking::seed::demo(&db, now.to_zoned(tz).date(), now.as_second()).await?;
            print_sign_ins(&sign_ins);
            Ok(())
        }
        Command::CreateStaff {
            email,
            name,
            municipality,
            role,
            services,
            languages,
            password,
        } => {
            let db = open_database(&settings).await?;
            let new = NewStaff {
                municipality: MunicipalityCode::parse(&municipality)?,
                email: EmailAddress::parse(&email)?,
                name: PersonName::parse(&name)?,
                role: Role::parse(&role)?,
                services: services
                    .iter()
                    .map(|s| ServiceCode::parse(s))
                    .collect::<Result<_, _>>()?,
                languages: languages
                    .iter()
                    .map(|l| Language::parse(l))
                    .collect::<Result<_, _>>()?,
                password_hash: accounts::hash_password(&NewPassword::parse(&password)?).await?,
            };
            let staff =
                accounts::create_staff(&db, &new, jiff::Timestamp::now().as_second()).await?;
            println!("created staff account {} ({})", staff.email, staff.id);
            Ok(())
        }
        Command::DeactivateStaff { email } => {
            let db = open_database(&settings).await?;
            let email = EmailAddress::parse(&email)?;
            let id = accounts::staff_id_by_email(&db, &email)
                .await?
                .with_context(|| format!("no staff account has the address {email}"))?;
            let now = jiff::Timestamp::now().as_second();
            let ended = accounts::deactivate_staff(&db, &booking::audit::Actor::System, &id, now)
                .await
                .with_context(|| format!("{email} is already deactivated"))?;
            if let Some(url) = settings.nats_url.as_deref() {
                use futures::StreamExt;
                let bus: std::sync::Arc<dyn signaling::bus::Bus> = std::sync::Arc::new(
                    signaling::bus::NatsBus::connect(url)
                        .await
                        .context("connecting to NATS")?,
                );
                // Our own announcement coming back proves the server has
                // it, before this process exits and drops the connection.
                let mut echo = bus.subscribe(web::sessions::REVOKED_SUBJECT).await?;
                web::sessions::Sessions::new(db.clone(), bus)
                    .announce(&ended)
                    .await;
                if !ended.is_empty() {
                    tokio::time::timeout(std::time::Duration::from_secs(10), echo.next())
                        .await
                        .context("NATS did not confirm the announcement")?;
                }
            }
            println!("deactivated {email}; {} session(s) ended", ended.len());
            db.close().await;
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let public_url = settings.public_url.clone();
    if settings.demo && !settings.serves_dev_mail() {
        tracing::warn!(
            listen = %settings.listen,
            "demo mode on an address other machines can reach: /dev/mail is off, since it \
             shows live sign-in links to anyone"
        );
    }
    let app = Application::build(settings).await?;
    println!();
    println!(
        "  Kontakt is running at {public_url}  (listening on port {})",
        app.port()
    );
    if !app.demo_sign_ins().is_empty() {
        print_sign_ins(app.demo_sign_ins());
    }
    println!();
    app.run_until_stopped(shutdown_signal()).await
}

fn print_sign_ins(sign_ins: &[booking::seed::DemoSignIn]) {
    println!(
        "  Demo sign-ins (staff password: {}):",
        booking::seed::DEMO_PASSWORD
    );
    for s in sign_ins {
        match &s.password {
            Some(_) => println!("    staff     {:<40} {}", s.email, s.who),
            None => println!(
                "    resident  {:<40} {} (sign in by email link; see /dev/mail)",
                s.email, s.who
            ),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
