//! Which peer addresses a client may reach through the relay.
//!
//! A relay inside a data centre can otherwise be used to reach the operator's own internal
//! services (CVE-2020-26262 and CVE-2026-27624 in coturn were both bypasses of such a filter
//! through `0.0.0.0`, `::` and IPv4-mapped IPv6 forms). The default therefore refuses every
//! address that is not globally routable, and looks inside IPv6 forms that embed an IPv4 address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Deserialize;

/// A CIDR range such as `127.0.0.0/8` or `::1/128`, used for the peer allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PeerRange {
    network: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address range like 127.0.0.0/8 or ::1/128")]
pub struct PeerRangeError(String);

impl PeerRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for PeerRange {
    type Err = PeerRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || PeerRangeError(s.to_owned());
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = ip.trim().parse().map_err(|_| error())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| error())?,
            None => max,
        };
        if prefix > max {
            return Err(error());
        }
        Ok(Self { network, prefix })
    }
}

impl TryFrom<String> for PeerRange {
    type Error = PeerRangeError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl fmt::Display for PeerRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    net[full] & mask == ip[full] & mask
}

/// The peer address filter: allow-listed ranges first, then the default refusal of
/// non-global addresses.
///
/// It judges addresses only. The server adds one exception it alone can judge: the relayed
/// transport addresses of its own allocations, port by port (see `Server::check_peer`).
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allowed: Vec<PeerRange>,
}

impl PeerPolicy {
    pub fn new(allowed: Vec<PeerRange>) -> Self {
        Self { allowed }
    }

    /// Whether the relay may send to and accept from `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allowed.iter().any(|range| range.contains(ip)) {
            return true;
        }
        !is_restricted(ip)
    }
}

/// Addresses that are not globally routable, including IPv6 forms that embed one.
pub fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_restricted_v4(v4),
        IpAddr::V6(v6) => is_restricted_v6(v6),
    }
}

fn is_restricted_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    a == 0 // "this network", including 0.0.0.0 (RFC 6890)
        || a == 10 // private (RFC 1918)
        || a == 127 // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 169 && b == 254) // link-local (RFC 3927)
        || (a == 172 && (16..32).contains(&b)) // private (RFC 1918)
        || (a == 192 && b == 168) // private (RFC 1918)
        || a >= 224 // multicast, reserved and broadcast
}

fn is_restricted_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) forms reach the embedded
    // IPv4 address on a dual-stack socket, so judge them by that address.
    if segments[..5] == [0, 0, 0, 0, 0] && (segments[5] == 0xFFFF || segments[5] == 0) {
        return is_restricted_v4(embedded_v4(segments[6], segments[7]));
    }
    // NAT64 (64:ff9b::/96, RFC 6052) and 6to4 (2002::/16, RFC 3056) also embed IPv4 addresses.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_restricted_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return is_restricted_v4(embedded_v4(segments[1], segments[2]));
    }
    (segments[0] & 0xFE00) == 0xFC00 // unique local (RFC 4193)
        || (segments[0] & 0xFFC0) == 0xFE80 // link-local
        || (segments[0] & 0xFFC0) == 0xFEC0 // deprecated site-local
        || (segments[0] & 0xFF00) == 0xFF00 // multicast
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ip: &str, allowed: &[&str], expected: bool) {
        let policy = PeerPolicy::new(allowed.iter().map(|r| r.parse().unwrap()).collect());
        assert_eq!(
            policy.permits(ip.parse().unwrap()),
            expected,
            "{ip} with {allowed:?}"
        );
    }

    #[test]
    fn default_policy_refuses_internal_addresses() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
        ] {
            check(ip, &[], false);
        }
    }

    #[test]
    fn default_policy_permits_global_addresses() {
        for ip in [
            "192.0.2.1",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "172.32.0.1",
        ] {
            check(ip, &[], true);
        }
    }

    #[test]
    fn allow_list_opens_a_range() {
        check("127.0.0.1", &["127.0.0.0/8"], true);
        check("127.0.0.1", &["127.0.0.2/32"], false);
        check("::1", &["::1"], true);
        check("10.1.2.3", &["10.1.0.0/16"], true);
        check("10.2.2.3", &["10.1.0.0/16"], false);
    }

    #[test]
    fn ranges_parse_and_reject() {
        assert!("1.2.3.4/33".parse::<PeerRange>().is_err());
        assert!("nonsense".parse::<PeerRange>().is_err());
        assert_eq!(
            "10.0.0.0/8".parse::<PeerRange>().unwrap().to_string(),
            "10.0.0.0/8"
        );
    }
}
