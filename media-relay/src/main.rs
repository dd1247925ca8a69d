//! The standalone relay: `media-relay [--config FILE]`.
//!
//! It reads the same keys as the `[relay]` section of `kontakt`'s configuration from a TOML
//! file, and takes the secret from `MEDIA_RELAY_SECRET` when set, so the secret need not be
//! written to disk. With `metrics_listen` set it serves Prometheus metrics there over HTTP.

use anyhow::Context as _;
use media_relay::{Relay, RelayConfig};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let mut config_path = std::env::var_os("MEDIA_RELAY_CONFIG").map(std::path::PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => config_path = args.next().map(Into::into),
            "--help" | "-h" => {
                println!("usage: media-relay [--config FILE]\nenvironment: MEDIA_RELAY_CONFIG, MEDIA_RELAY_SECRET");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument `{other}`; try --help"),
        }
    }
    let mut config: RelayConfig = match &config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => RelayConfig::default(),
    };
    if let Ok(secret) = std::env::var("MEDIA_RELAY_SECRET") {
        config.secret = secret;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let relay = runtime.block_on(async {
        // The recorder goes in before the workers start, so their first figures are kept.
        if let Some(addr) = config.metrics_listen {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!(%addr, "serving Prometheus metrics");
        }
        Relay::start(config).context("starting the relay")
    })?;
    runtime.block_on(wait_for_signal())?;
    tracing::info!("shutting down");
    relay.shutdown();
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
