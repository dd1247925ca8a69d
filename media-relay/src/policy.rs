//! Which peer addresses a client may reach through the relay.
//!
//! A relay inside a data centre can otherwise be used to reach the operator's own internal
//! services (CVE-2020-26262 and CVE-2026-27624 in coturn were both bypasses of such a filter
//! through `0.0.0.0`, `::` and IPv4-mapped IPv6 forms). The default therefore refuses every
//! address that the IANA special-purpose registries mark as not globally reachable (the table
//! is in `registry`), and looks inside IPv6 forms that embed an IPv4 address. The allow-list
//! is the one way to open a range again.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Deserialize;

mod registry;

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
/// addresses that are not globally reachable ([`is_restricted`]).
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

/// Addresses that the IANA special-purpose registries mark as not globally reachable, and
/// IPv6 addresses that carry such an IPv4 address in any form a stack, tunnel or translator
/// on the way could deliver to it.
pub fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !registry::ipv4_is_global(v4),
        IpAddr::V6(v6) => {
            !registry::ipv6_is_global(v6)
                || embedded_ipv4(v6).any(|v4| !registry::ipv4_is_global(v4))
        }
    }
}

/// The IPv4 addresses that `ip` carries, at most three, found without allocating.
///
/// Some forms are refused by their own block whatever they carry (IPv4-mapped, the local-use
/// NAT64 prefix, Teredo and 6to4); they are decoded all the same, so that the refusal of what
/// they carry does not hang on the registry's column for the form.
fn embedded_ipv4(ip: Ipv6Addr) -> impl Iterator<Item = Ipv4Addr> {
    let s = ip.segments();
    let in_prefix = match s {
        // IPv4-mapped (::ffff:a.b.c.d) reaches the IPv4 address on a dual-stack socket, and the
        // deprecated IPv4-compatible form (::a.b.c.d, RFC 4291, section 2.5.5.1) through an
        // automatic tunnel such as Linux's sit0. The NAT64 well-known prefix (64:ff9b::/96,
        // RFC 6052, section 2.2) is translated to it.
        [0, 0, 0, 0, 0, 0xFFFF | 0, high, low] | [0x64, 0xFF9B, 0, 0, 0, 0, high, low] => {
            [Some(ipv4(high, low)), None]
        }
        // 6to4 (RFC 3056, section 2): 2002:AABB:CCDD::/48 is the site behind a.b.c.d.
        [0x2002, high, low, ..] => [Some(ipv4(high, low)), None],
        // Teredo (RFC 4380, section 4): the server's address in bits 32 to 63, the client's
        // in the last 32 bits with every bit inverted.
        [0x2001, 0, server_high, server_low, _, _, client_high, client_low] => [
            Some(ipv4(server_high, server_low)),
            Some(ipv4(!client_high, !client_low)),
        ],
        _ => [None, None],
    };
    // An ISATAP interface identifier (RFC 5214, section 6.1) under any /64 prefix:
    // 0000:5efe:a.b.c.d, or with the universal/local and group bits of its first octet set.
    let isatap = ((s[4] & 0xFCFF) == 0 && s[5] == 0x5EFE).then(|| ipv4(s[6], s[7]));
    in_prefix.into_iter().chain([isatap]).flatten()
}

fn ipv4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::registry::{self, IPV4_BLOCKS, IPV6_BLOCKS};
    use super::*;

    fn check(ip: &str, allowed: &[&str], expected: bool) {
        let policy = PeerPolicy::new(allowed.iter().map(|r| r.parse().unwrap()).collect());
        assert_eq!(
            policy.permits(ip.parse().unwrap()),
            expected,
            "{ip} with {allowed:?}"
        );
    }

    /// One address inside every block of the registries, with the verdict its "Globally
    /// Reachable" column gives, and where one exists, a globally reachable unicast address
    /// just outside it.
    const REGISTRY_CASES: &[(&str, bool, Option<&str>)] = &[
        ("0.1.2.3", false, Some("1.0.0.0")),
        ("0.0.0.0", false, None),
        ("10.255.255.255", false, Some("11.0.0.0")),
        ("100.64.0.1", false, Some("100.63.255.255")),
        ("100.127.255.255", false, Some("100.128.0.0")),
        ("127.0.0.1", false, Some("128.0.0.0")),
        ("169.254.1.1", false, Some("169.255.0.0")),
        ("172.16.5.4", false, Some("172.15.255.255")),
        ("172.31.255.255", false, Some("172.32.0.1")),
        ("192.0.0.255", false, Some("192.0.1.0")),
        ("192.0.0.1", false, None),
        ("192.0.0.8", false, None),
        ("192.0.0.9", true, None),
        ("192.0.0.10", true, None),
        ("192.0.0.170", false, None),
        ("192.0.0.171", false, None),
        ("192.0.2.1", false, Some("192.0.3.0")),
        ("192.31.196.1", true, None),
        ("192.52.193.1", true, None),
        ("192.88.99.1", false, Some("192.88.100.0")),
        ("192.88.99.2", false, None),
        ("192.168.1.1", false, Some("192.169.0.0")),
        ("192.175.48.1", true, None),
        ("198.18.0.1", false, Some("198.17.255.255")),
        ("198.19.255.255", false, Some("198.20.0.0")),
        ("198.51.100.7", false, Some("198.51.101.0")),
        ("203.0.113.1", false, Some("203.0.114.0")),
        ("224.0.0.1", false, Some("223.255.255.255")),
        ("239.255.255.255", false, None),
        ("240.0.0.1", false, None),
        ("255.255.255.255", false, None),
        ("::1", false, None),
        ("::", false, None),
        ("::ffff:8.8.8.8", false, None),
        ("64:ff9b::808:808", true, None),
        ("64:ff9b:1::808:808", false, None),
        ("100::1", false, None),
        ("100:0:0:1::1", false, None),
        ("2001:1ff:ffff::1", false, Some("2001:200::1")),
        ("2001:1::4", false, None),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false, None),
        ("2001:1::1", true, None),
        ("2001:1::2", true, None),
        ("2001:1::3", true, None),
        ("2001:2::1", false, None),
        ("2001:3::1", true, None),
        ("2001:4:112::1", true, None),
        ("2001:10::1", false, None),
        ("2001:20::1", true, None),
        ("2001:30::1", true, None),
        ("2001:db8::1", false, Some("2001:db9::1")),
        ("2002:808:808::1", false, Some("2003::1")),
        ("2620:4f:8000::1", true, None),
        ("3fff::1", false, Some("3fff:1000::1")),
        ("5f00::1", false, None),
        ("fd00::1", false, None),
        ("fe80::1", false, None),
        ("fec0::1", false, None),
        ("ff02::1", false, None),
    ];

    #[test]
    fn every_registry_block_is_judged_by_its_globally_reachable_column() {
        let mut covered = HashSet::new();
        for &(inside, expected, outside) in REGISTRY_CASES {
            check(inside, &[], expected);
            if let Some(outside) = outside {
                check(outside, &[], true);
            }
            let block = match inside.parse().unwrap() {
                IpAddr::V4(ip) => {
                    registry::ipv4_block(ip).map(|b| (IpAddr::V4(b.network), b.prefix))
                }
                IpAddr::V6(ip) => {
                    registry::ipv6_block(ip).map(|b| (IpAddr::V6(b.network), b.prefix))
                }
            };
            covered.insert(block.unwrap_or_else(|| panic!("{inside} is in no block")));
        }
        let blocks = (IPV4_BLOCKS
            .iter()
            .map(|b| (IpAddr::V4(b.network), b.prefix)))
        .chain(
            IPV6_BLOCKS
                .iter()
                .map(|b| (IpAddr::V6(b.network), b.prefix)),
        );
        for block in blocks {
            assert!(covered.contains(&block), "no case for {block:?}");
        }
    }

    #[test]
    fn ordinary_unicast_is_permitted() {
        for ip in [
            "8.8.8.8",
            "193.10.0.1",
            "2a00:1450:4001:800::200e",
            "2001:4860::8888",
        ] {
            check(ip, &[], true);
        }
    }

    /// Each form, the IPv4 addresses found in it, and the verdict.
    const EMBEDDING_CASES: &[(&str, &[&str], bool)] = &[
        ("::ffff:10.0.0.1", &["10.0.0.1"], false),
        ("::ffff:0.0.0.0", &["0.0.0.0"], false),
        ("::10.0.0.1", &["10.0.0.1"], false),
        ("::127.0.0.1", &["127.0.0.1"], false),
        ("::8.8.8.8", &["8.8.8.8"], true),
        ("64:ff9b::10.0.0.1", &["10.0.0.1"], false),
        ("64:ff9b::198.18.0.1", &["198.18.0.1"], false),
        ("64:ff9b::192.0.0.170", &["192.0.0.170"], false),
        ("64:ff9b::8.8.8.8", &["8.8.8.8"], true),
        ("2002:7f00:1::", &["127.0.0.1"], false),
        ("2002:808:808::1", &["8.8.8.8"], false),
        // Teredo server 65.54.227.120, client 10.0.0.1 obfuscated.
        (
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
            &["65.54.227.120", "10.0.0.1"],
            false,
        ),
        ("2a00:1450:4001:800::5efe:a00:1", &["10.0.0.1"], false),
        ("2a00:1450:4001:800:200:5efe:c612:1", &["198.18.0.1"], false),
        ("2a00:1450:4001:800:200:5efe:808:808", &["8.8.8.8"], true),
        (
            "2002:808:808:1:0:5efe:a00:1",
            &["8.8.8.8", "10.0.0.1"],
            false,
        ),
        ("2a00:1450:4001:800::1", &[], true),
    ];

    #[test]
    fn embedded_ipv4_addresses_are_judged_with_the_same_table() {
        for &(ip, embedded, expected) in EMBEDDING_CASES {
            let found: Vec<Ipv4Addr> = embedded_ipv4(ip.parse().unwrap()).collect();
            let wanted: Vec<Ipv4Addr> = embedded.iter().map(|v4| v4.parse().unwrap()).collect();
            assert_eq!(found, wanted, "{ip}");
            check(ip, &[], expected);
        }
    }

    #[test]
    fn allow_list_opens_a_range() {
        check("127.0.0.1", &["127.0.0.0/8"], true);
        check("127.0.0.1", &["127.0.0.2/32"], false);
        check("::1", &["::1"], true);
        check("10.1.2.3", &["10.1.0.0/16"], true);
        check("10.2.2.3", &["10.1.0.0/16"], false);
        check("198.18.0.1", &["198.18.0.0/15"], true);
        check("203.0.113.1", &["203.0.113.0/24"], true);
        check("2001:db8::1", &["2001:db8::/32"], true);
        check("64:ff9b:1::a00:1", &["64:ff9b:1::/48"], true);
        // A range opens its own family only: the IPv6 forms of an opened IPv4 range stay
        // refused unless they are opened too.
        check("64:ff9b::a00:1", &["10.0.0.0/8"], false);
        check("::ffff:10.0.0.1", &["10.0.0.0/8"], false);
        check("::ffff:10.0.0.1", &["::ffff:10.0.0.0/104"], true);
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

    /// Every IPv6 form that carries `v4`, named, with whether [`embedded_ipv4`] decodes it.
    /// The local-use NAT64 prefix is refused as a whole, so its formats are not decoded.
    fn embeddings(v4: Ipv4Addr) -> [(&'static str, Ipv6Addr, bool); 11] {
        let [a, b, c, d] = v4.octets();
        let (high, low) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        let v6 = |s: [u16; 8]| Ipv6Addr::from(s);
        [
            ("mapped", v6([0, 0, 0, 0, 0, 0xFFFF, high, low]), true),
            ("compatible", v6([0, 0, 0, 0, 0, 0, high, low]), true),
            ("nat64", v6([0x64, 0xFF9B, 0, 0, 0, 0, high, low]), true),
            (
                "nat64 local /96",
                v6([0x64, 0xFF9B, 1, 0, 0, 0, high, low]),
                false,
            ),
            // RFC 6052, section 2.2: with a /48 prefix, bits 64 to 71 are zero.
            (
                "nat64 local /48",
                v6([0x64, 0xFF9B, 1, high, u16::from(c), u16::from(d) << 8, 0, 0]),
                false,
            ),
            ("6to4", v6([0x2002, high, low, 0, 0, 0, 0, 1]), true),
            (
                "teredo server",
                v6([0x2001, 0, high, low, 0x8000, 0x63BF, 0x3FFF, 0xFDD2]),
                true,
            ),
            (
                "teredo client",
                v6([0x2001, 0, 0x4136, 0xE378, 0x8000, 0x63BF, !high, !low]),
                true,
            ),
            (
                "isatap",
                v6([0x2A00, 0x1450, 0x4001, 0x800, 0, 0x5EFE, high, low]),
                true,
            ),
            (
                "isatap global",
                v6([0x2A00, 0x1450, 0x4001, 0x800, 0x200, 0x5EFE, high, low]),
                true,
            ),
            (
                "isatap under 6to4",
                v6([0x2002, 0x808, 0x808, 1, 0, 0x5EFE, high, low]),
                true,
            ),
        ]
    }

    /// Any IPv4 address, or one inside a random block of the table, so that every block is
    /// drawn often rather than only the large ones.
    fn any_ipv4() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<u32>().prop_map(Ipv4Addr::from),
            (0..IPV4_BLOCKS.len(), any::<u32>()).prop_map(|(index, host)| {
                let block = IPV4_BLOCKS[index];
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(block.prefix))
                    .unwrap_or(0);
                Ipv4Addr::from((u32::from(block.network) & mask) | (host & !mask))
            }),
        ]
    }

    proptest! {
        #[test]
        fn an_ipv4_address_refused_natively_is_refused_in_every_embedding(v4 in any_ipv4()) {
            let refused = is_restricted(IpAddr::V4(v4));
            for (form, v6, decoded) in embeddings(v4) {
                if decoded {
                    prop_assert!(embedded_ipv4(v6).any(|found| found == v4), "{form} {v6}");
                }
                if refused {
                    prop_assert!(is_restricted(IpAddr::V6(v6)), "{v4} as {form} {v6}");
                }
            }
        }
    }
}
