//! Relay configuration, shared by `kontakt serve` and the standalone `media-relay` binary.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::policy::PeerRange;

/// Everything a relay needs to run. Every key has a default except `secret`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// UDP listener for STUN and TURN. Default `0.0.0.0:3478`; `"off"` opens none, for a
    /// relay that only takes TCP and TLS (or to see how clients fare where UDP is blocked).
    #[serde(deserialize_with = "listener")]
    pub listen_udp: Option<SocketAddr>,
    /// TCP listener. Default `0.0.0.0:3478`; `"off"` opens none.
    #[serde(deserialize_with = "listener")]
    pub listen_tcp: Option<SocketAddr>,
    /// TLS listener; needs `tls_cert` and `tls_key`. Default none; 5349 or 443 are usual.
    #[serde(deserialize_with = "listener")]
    pub listen_tls: Option<SocketAddr>,
    /// PEM certificate chain for the TLS listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the TLS listener.
    pub tls_key: Option<PathBuf>,
    /// The IPv4 address clients and peers reach relayed ports on. Default `127.0.0.1`, which is
    /// only useful on one machine; production sets the public address.
    pub relay_ipv4: Option<Ipv4Addr>,
    /// The IPv6 address of relayed ports, if IPv6 is relayed. Default none.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Local address relay sockets bind to for IPv4. Default `0.0.0.0`, which suits a host
    /// behind 1:1 NAT where `relay_ipv4` is not a local address.
    pub relay_bind_ipv4: Ipv4Addr,
    /// Local address relay sockets bind to for IPv6. Default `::`.
    pub relay_bind_ipv6: Ipv6Addr,
    /// Lowest relayed port. Default 49152.
    pub min_port: u16,
    /// Highest relayed port. Default 65535.
    pub max_port: u16,
    /// The authentication realm. Default `kontakt`.
    pub realm: String,
    /// The shared TURN REST secret (coturn's `static-auth-secret`). Required.
    pub secret: String,
    /// Seconds a nonce stays valid before a request gets 438 Stale Nonce. Default 600.
    pub nonce_lifetime_secs: u64,
    /// Allocations one subject (the part of the username after `:`) may hold. Default 10.
    pub max_allocations_per_user: u32,
    /// Allocations across the whole relay. Default 10000.
    pub max_allocations: u32,
    /// Bytes per second per allocation, both directions together; 0 is unlimited.
    /// Default 1,250,000 (10 Mbit/s), several times what a video call needs.
    pub bandwidth_bytes_per_sec: u64,
    /// Peer ranges allowed even though the default policy refuses them, e.g. `127.0.0.0/8`
    /// for tests whose peers are plain sockets on loopback. Default empty.
    ///
    /// Peers on this same relay need none: the relayed address of an allocation of this relay
    /// (`relay_ipv4` or `relay_ipv6` with that allocation's port) can always be reached, as two
    /// relay-only WebRTC clients do, even when `relay_ipv4` is loopback or private. Other ports
    /// of that address stay refused.
    pub allowed_peer_ranges: Vec<PeerRange>,
    /// Worker threads, each with its own sockets via SO_REUSEPORT. Default: one per core.
    pub workers: Option<usize>,
    /// Where the standalone `media-relay` binary serves Prometheus metrics over HTTP, e.g.
    /// `127.0.0.1:9478`. Default none: no listener. `kontakt serve` ignores it, since it serves
    /// the embedded relay's metrics on its own `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen_udp: Some(SocketAddr::from(([0, 0, 0, 0], 3478))),
            listen_tcp: Some(SocketAddr::from(([0, 0, 0, 0], 3478))),
            listen_tls: None,
            tls_cert: None,
            tls_key: None,
            relay_ipv4: Some(Ipv4Addr::LOCALHOST),
            relay_ipv6: None,
            relay_bind_ipv4: Ipv4Addr::UNSPECIFIED,
            relay_bind_ipv6: Ipv6Addr::UNSPECIFIED,
            min_port: 49152,
            max_port: 65535,
            realm: "kontakt".to_owned(),
            secret: String::new(),
            nonce_lifetime_secs: 600,
            max_allocations_per_user: 10,
            max_allocations: 10_000,
            bandwidth_bytes_per_sec: 1_250_000,
            allowed_peer_ranges: Vec::new(),
            workers: None,
            metrics_listen: None,
        }
    }
}

/// A listener's address, or none when written `"off"` (TOML has no null, so a default
/// listener can only be turned off by a word).
fn listener<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "expected an address such as 0.0.0.0:3478, or off; got {raw:?}"
        ))
    })
}

/// Why a configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("`secret` must be set: it is the TURN REST shared secret")]
    MissingSecret,
    #[error("`min_port` ({0}) must not be greater than `max_port` ({1})")]
    PortRange(u16, u16),
    #[error("the port range has {ports} ports, fewer than the {workers} workers")]
    TooFewPorts { ports: u32, workers: usize },
    #[error("`listen_tls` needs both `tls_cert` and `tls_key`")]
    TlsFiles,
    #[error("neither `relay_ipv4` nor `relay_ipv6` is set, so nothing can be relayed")]
    NoRelayAddress,
}

impl RelayConfig {
    /// Checks the settings that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.secret.is_empty() {
            return Err(ConfigError::MissingSecret);
        }
        if self.min_port > self.max_port {
            return Err(ConfigError::PortRange(self.min_port, self.max_port));
        }
        let ports = u32::from(self.max_port) - u32::from(self.min_port) + 1;
        if (ports as usize) < self.worker_count() {
            return Err(ConfigError::TooFewPorts {
                ports,
                workers: self.worker_count(),
            });
        }
        if self.listen_tls.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(ConfigError::TlsFiles);
        }
        if self.relay_ipv4.is_none() && self.relay_ipv6.is_none() {
            return Err(ConfigError::NoRelayAddress);
        }
        Ok(())
    }

    /// The number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_toml_with_defaults() {
        let config: RelayConfig = toml::from_str(
            r#"
            secret = "s"
            listen_tls = "127.0.0.1:5349"
            tls_cert = "cert.pem"
            tls_key = "key.pem"
            allowed_peer_ranges = ["127.0.0.0/8", "::1/128"]
            bandwidth_bytes_per_sec = 0
            metrics_listen = "127.0.0.1:9478"
            "#,
        )
        .unwrap();
        assert_eq!(config.listen_udp, Some("0.0.0.0:3478".parse().unwrap()));
        assert_eq!(config.allowed_peer_ranges.len(), 2);
        assert_eq!(config.realm, "kontakt");
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9478".parse().unwrap())
        );
        assert_eq!(RelayConfig::default().metrics_listen, None);
        config.validate().unwrap();
    }

    #[test]
    fn a_listener_is_turned_off_by_name() {
        let config: RelayConfig =
            toml::from_str("secret = \"s\"\nlisten_udp = \"off\"\nlisten_tcp = \"OFF\"").unwrap();
        assert_eq!(config.listen_udp, None);
        assert_eq!(config.listen_tcp, None);
        let config: RelayConfig = toml::from_str("listen_tcp = \"127.0.0.1:3479\"").unwrap();
        assert_eq!(config.listen_udp, Some("0.0.0.0:3478".parse().unwrap()));
        assert_eq!(config.listen_tcp, Some("127.0.0.1:3479".parse().unwrap()));
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert!(matches!(
            RelayConfig::default().validate(),
            Err(ConfigError::MissingSecret)
        ));
        let config = RelayConfig {
            secret: "s".into(),
            min_port: 2,
            max_port: 1,
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::PortRange(2, 1))
        ));
        assert!(toml::from_str::<RelayConfig>("unknown_key = 1").is_err());
        assert!(toml::from_str::<RelayConfig>("listen_udp = \"udp\"").is_err());
        assert!(toml::from_str::<RelayConfig>("allowed_peer_ranges = [\"x\"]").is_err());
    }
}
