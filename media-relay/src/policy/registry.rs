//! The IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and its updates), as
//! of the registries' 2025 revisions, plus the few blocks outside them that no relay should
//! reach either (multicast, and IPv6 site-local).
//!
//! Each block keeps the registry's "Globally Reachable" column. Blocks nest: 192.0.0.0/24 and
//! 2001::/23 are not globally reachable "unless by virtue of a more specific reservation", so
//! an address is judged by the most specific block that holds it, and an address in no block
//! is ordinary unicast space and globally reachable.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Whether an address is globally reachable according to the special-purpose registries.
pub fn ipv4_is_global(ip: Ipv4Addr) -> bool {
    ipv4_block(ip).is_none_or(|block| block.reachable == Reachable::True)
}

/// Whether an address is globally reachable according to the special-purpose registries.
/// Addresses that embed an IPv4 address are judged here by their own block only; the caller
/// also judges what they embed.
pub fn ipv6_is_global(ip: Ipv6Addr) -> bool {
    ipv6_block(ip).is_none_or(|block| block.reachable == Reachable::True)
}

/// The registry's "Globally Reachable" column for one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachable {
    True,
    False,
    /// "N/A" (Teredo, 6to4), or empty because the block's allocation was terminated (the
    /// deprecated 6to4 relay anycast and ORCHID blocks). Neither promises that a datagram
    /// leaves the operator's network, so the policy treats it as `False`.
    NotApplicable,
}

/// One IPv4 block of the registry.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Block {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub reachable: Reachable,
}

/// One IPv6 block of the registry.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Block {
    pub network: Ipv6Addr,
    pub prefix: u8,
    pub reachable: Reachable,
}

impl Ipv4Block {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network) & mask
    }
}

impl Ipv6Block {
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        u128::from(ip) & mask == u128::from(self.network) & mask
    }
}

/// The most specific block that holds `ip`, if any.
pub fn ipv4_block(ip: Ipv4Addr) -> Option<&'static Ipv4Block> {
    IPV4_BLOCKS
        .iter()
        .filter(|block| block.contains(ip))
        .max_by_key(|block| block.prefix)
}

/// The most specific block that holds `ip`, if any.
pub fn ipv6_block(ip: Ipv6Addr) -> Option<&'static Ipv6Block> {
    IPV6_BLOCKS
        .iter()
        .filter(|block| block.contains(ip))
        .max_by_key(|block| block.prefix)
}

/// Every IPv4 block, in the registry's order, then the block outside it.
pub const IPV4_BLOCKS: [Ipv4Block; 27] = [
    THIS_NETWORK,
    THIS_HOST,
    PRIVATE_10,
    SHARED_ADDRESS_SPACE,
    LOOPBACK_V4,
    LINK_LOCAL_V4,
    PRIVATE_172,
    IETF_PROTOCOL_ASSIGNMENTS_V4,
    SERVICE_CONTINUITY,
    DUMMY_V4,
    PCP_ANYCAST_V4,
    TURN_ANYCAST_V4,
    NAT64_DISCOVERY_170,
    NAT64_DISCOVERY_171,
    TEST_NET_1,
    AS112_V4,
    AMT_V4,
    DEPRECATED_6TO4_RELAY_ANYCAST,
    SIX_A44_RELAY_ANYCAST,
    PRIVATE_192,
    AS112_DIRECT_DELEGATION_V4,
    BENCHMARKING_V4,
    TEST_NET_2,
    TEST_NET_3,
    RESERVED_V4,
    LIMITED_BROADCAST,
    MULTICAST_V4,
];

/// Every IPv6 block, in the registry's order, then the blocks outside it.
pub const IPV6_BLOCKS: [Ipv6Block; 27] = [
    LOOPBACK_V6,
    UNSPECIFIED_V6,
    IPV4_MAPPED,
    NAT64_WELL_KNOWN,
    NAT64_LOCAL_USE,
    DISCARD_ONLY,
    DUMMY_V6,
    IETF_PROTOCOL_ASSIGNMENTS_V6,
    TEREDO,
    PCP_ANYCAST_V6,
    TURN_ANYCAST_V6,
    DNS_SD_SRP_ANYCAST,
    BENCHMARKING_V6,
    AMT_V6,
    AS112_V6,
    DEPRECATED_ORCHID,
    ORCHID_V2,
    DRONE_REMOTE_ID,
    DOCUMENTATION_V6,
    SIX_TO_FOUR,
    AS112_DIRECT_DELEGATION_V6,
    DOCUMENTATION_3FFF,
    SRV6_SIDS,
    UNIQUE_LOCAL,
    LINK_LOCAL_V6,
    SITE_LOCAL,
    MULTICAST_V6,
];

// The IPv4 special-purpose registry.

/// 0.0.0.0/8, "this network" (RFC 791, section 3.2).
pub const THIS_NETWORK: Ipv4Block = v4([0, 0, 0, 0], 8, Reachable::False);
/// 0.0.0.0/32, "this host on this network" (RFC 1122, section 3.2.1.3).
pub const THIS_HOST: Ipv4Block = v4([0, 0, 0, 0], 32, Reachable::False);
/// 10.0.0.0/8, private use (RFC 1918).
pub const PRIVATE_10: Ipv4Block = v4([10, 0, 0, 0], 8, Reachable::False);
/// 100.64.0.0/10, shared address space for carrier-grade NAT (RFC 6598).
pub const SHARED_ADDRESS_SPACE: Ipv4Block = v4([100, 64, 0, 0], 10, Reachable::False);
/// 127.0.0.0/8, loopback (RFC 1122, section 3.2.1.3).
pub const LOOPBACK_V4: Ipv4Block = v4([127, 0, 0, 0], 8, Reachable::False);
/// 169.254.0.0/16, link local (RFC 3927).
pub const LINK_LOCAL_V4: Ipv4Block = v4([169, 254, 0, 0], 16, Reachable::False);
/// 172.16.0.0/12, private use (RFC 1918).
pub const PRIVATE_172: Ipv4Block = v4([172, 16, 0, 0], 12, Reachable::False);
/// 192.0.0.0/24, IETF protocol assignments (RFC 6890, section 2.1): not usable unless by
/// virtue of a more specific reservation.
pub const IETF_PROTOCOL_ASSIGNMENTS_V4: Ipv4Block = v4([192, 0, 0, 0], 24, Reachable::False);
/// 192.0.0.0/29, IPv4 service continuity prefix for DS-Lite and 464XLAT (RFC 7335).
pub const SERVICE_CONTINUITY: Ipv4Block = v4([192, 0, 0, 0], 29, Reachable::False);
/// 192.0.0.8/32, IPv4 dummy address (RFC 7600).
pub const DUMMY_V4: Ipv4Block = v4([192, 0, 0, 8], 32, Reachable::False);
/// 192.0.0.9/32, Port Control Protocol anycast (RFC 7723).
pub const PCP_ANYCAST_V4: Ipv4Block = v4([192, 0, 0, 9], 32, Reachable::True);
/// 192.0.0.10/32, Traversal Using Relays around NAT anycast (RFC 8155).
pub const TURN_ANYCAST_V4: Ipv4Block = v4([192, 0, 0, 10], 32, Reachable::True);
/// 192.0.0.170/32, NAT64/DNS64 discovery (RFC 8880, RFC 7050 section 2.2).
pub const NAT64_DISCOVERY_170: Ipv4Block = v4([192, 0, 0, 170], 32, Reachable::False);
/// 192.0.0.171/32, NAT64/DNS64 discovery (RFC 8880, RFC 7050 section 2.2).
pub const NAT64_DISCOVERY_171: Ipv4Block = v4([192, 0, 0, 171], 32, Reachable::False);
/// 192.0.2.0/24, documentation, TEST-NET-1 (RFC 5737).
pub const TEST_NET_1: Ipv4Block = v4([192, 0, 2, 0], 24, Reachable::False);
/// 192.31.196.0/24, AS112-v4 (RFC 7535).
pub const AS112_V4: Ipv4Block = v4([192, 31, 196, 0], 24, Reachable::True);
/// 192.52.193.0/24, Automatic Multicast Tunneling (RFC 7450).
pub const AMT_V4: Ipv4Block = v4([192, 52, 193, 0], 24, Reachable::True);
/// 192.88.99.0/24, the 6to4 relay anycast prefix, deprecated and its allocation terminated
/// (RFC 7526); the registry leaves its columns empty.
pub const DEPRECATED_6TO4_RELAY_ANYCAST: Ipv4Block =
    v4([192, 88, 99, 0], 24, Reachable::NotApplicable);
/// 192.88.99.2/32, 6a44 relay anycast address (RFC 6751).
pub const SIX_A44_RELAY_ANYCAST: Ipv4Block = v4([192, 88, 99, 2], 32, Reachable::False);
/// 192.168.0.0/16, private use (RFC 1918).
pub const PRIVATE_192: Ipv4Block = v4([192, 168, 0, 0], 16, Reachable::False);
/// 192.175.48.0/24, direct delegation AS112 service (RFC 7534).
pub const AS112_DIRECT_DELEGATION_V4: Ipv4Block = v4([192, 175, 48, 0], 24, Reachable::True);
/// 198.18.0.0/15, benchmarking (RFC 2544).
pub const BENCHMARKING_V4: Ipv4Block = v4([198, 18, 0, 0], 15, Reachable::False);
/// 198.51.100.0/24, documentation, TEST-NET-2 (RFC 5737).
pub const TEST_NET_2: Ipv4Block = v4([198, 51, 100, 0], 24, Reachable::False);
/// 203.0.113.0/24, documentation, TEST-NET-3 (RFC 5737).
pub const TEST_NET_3: Ipv4Block = v4([203, 0, 113, 0], 24, Reachable::False);
/// 240.0.0.0/4, reserved for future use (RFC 1112, section 4).
pub const RESERVED_V4: Ipv4Block = v4([240, 0, 0, 0], 4, Reachable::False);
/// 255.255.255.255/32, limited broadcast (RFC 8190, RFC 919 section 7).
pub const LIMITED_BROADCAST: Ipv4Block = v4([255, 255, 255, 255], 32, Reachable::False);

// Outside the IPv4 special-purpose registry.

/// 224.0.0.0/4, multicast (RFC 5771), which is in the multicast registry rather than the
/// special-purpose one. A relay forwards unicast media; a multicast peer would let one client
/// flood a network segment.
pub const MULTICAST_V4: Ipv4Block = v4([224, 0, 0, 0], 4, Reachable::False);

// The IPv6 special-purpose registry.

/// ::1/128, loopback (RFC 4291).
pub const LOOPBACK_V6: Ipv6Block = v6([0, 0, 0, 0, 0, 0, 0, 1], 128, Reachable::False);
/// ::/128, unspecified (RFC 4291).
pub const UNSPECIFIED_V6: Ipv6Block = v6([0; 8], 128, Reachable::False);
/// ::ffff:0:0/96, IPv4-mapped addresses (RFC 4291). Refused whatever they carry: the
/// registry marks them not globally reachable, and on a dual-stack socket they reach the
/// embedded IPv4 address.
pub const IPV4_MAPPED: Ipv6Block = v6([0, 0, 0, 0, 0, 0xFFFF, 0, 0], 96, Reachable::False);
/// 64:ff9b::/96, the NAT64 well-known prefix (RFC 6052). Globally reachable; the policy judges
/// the IPv4 address it carries, which RFC 6052, section 3.1 forbids to be non-global.
pub const NAT64_WELL_KNOWN: Ipv6Block = v6([0x64, 0xFF9B, 0, 0, 0, 0, 0, 0], 96, Reachable::True);
/// 64:ff9b:1::/48, the local-use NAT64 prefix (RFC 8215), refused whatever it carries.
pub const NAT64_LOCAL_USE: Ipv6Block = v6([0x64, 0xFF9B, 1, 0, 0, 0, 0, 0], 48, Reachable::False);
/// 100::/64, discard-only (RFC 6666).
pub const DISCARD_ONLY: Ipv6Block = v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Reachable::False);
/// 100:0:0:1::/64, dummy IPv6 prefix (RFC 9780).
pub const DUMMY_V6: Ipv6Block = v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, Reachable::False);
/// 2001::/23, IETF protocol assignments (RFC 2928): not globally reachable unless allowed by a
/// more specific allocation.
pub const IETF_PROTOCOL_ASSIGNMENTS_V6: Ipv6Block =
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Reachable::False);
/// 2001::/32, Teredo (RFC 4380, RFC 8190); "N/A" in the registry.
pub const TEREDO: Ipv6Block = v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, Reachable::NotApplicable);
/// 2001:1::1/128, Port Control Protocol anycast (RFC 7723).
pub const PCP_ANYCAST_V6: Ipv6Block = v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, Reachable::True);
/// 2001:1::2/128, Traversal Using Relays around NAT anycast (RFC 8155).
pub const TURN_ANYCAST_V6: Ipv6Block = v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, Reachable::True);
/// 2001:1::3/128, DNS-SD Service Registration Protocol anycast (RFC 9665).
pub const DNS_SD_SRP_ANYCAST: Ipv6Block = v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, Reachable::True);
/// 2001:2::/48, benchmarking (RFC 5180 and its erratum 1752).
pub const BENCHMARKING_V6: Ipv6Block = v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, Reachable::False);
/// 2001:3::/32, Automatic Multicast Tunneling (RFC 7450).
pub const AMT_V6: Ipv6Block = v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, Reachable::True);
/// 2001:4:112::/48, AS112-v6 (RFC 7535).
pub const AS112_V6: Ipv6Block = v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, Reachable::True);
/// 2001:10::/28, previously ORCHID, its allocation terminated (RFC 4843); the registry leaves
/// its columns empty.
pub const DEPRECATED_ORCHID: Ipv6Block = v6(
    [0x2001, 0x10, 0, 0, 0, 0, 0, 0],
    28,
    Reachable::NotApplicable,
);
/// 2001:20::/28, ORCHIDv2 (RFC 7343).
pub const ORCHID_V2: Ipv6Block = v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, Reachable::True);
/// 2001:30::/28, Drone Remote ID Protocol Entity Tags (RFC 9374).
pub const DRONE_REMOTE_ID: Ipv6Block = v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, Reachable::True);
/// 2001:db8::/32, documentation (RFC 3849).
pub const DOCUMENTATION_V6: Ipv6Block = v6([0x2001, 0xDB8, 0, 0, 0, 0, 0, 0], 32, Reachable::False);
/// 2002::/16, 6to4 (RFC 3056); "N/A" in the registry.
pub const SIX_TO_FOUR: Ipv6Block = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, Reachable::NotApplicable);
/// 2620:4f:8000::/48, direct delegation AS112 service (RFC 7534).
pub const AS112_DIRECT_DELEGATION_V6: Ipv6Block =
    v6([0x2620, 0x4F, 0x8000, 0, 0, 0, 0, 0], 48, Reachable::True);
/// 3fff::/20, documentation (RFC 9637).
pub const DOCUMENTATION_3FFF: Ipv6Block = v6([0x3FFF, 0, 0, 0, 0, 0, 0, 0], 20, Reachable::False);
/// 5f00::/16, Segment Routing (SRv6) SIDs (RFC 9602).
pub const SRV6_SIDS: Ipv6Block = v6([0x5F00, 0, 0, 0, 0, 0, 0, 0], 16, Reachable::False);
/// fc00::/7, unique local (RFC 4193, RFC 8190).
pub const UNIQUE_LOCAL: Ipv6Block = v6([0xFC00, 0, 0, 0, 0, 0, 0, 0], 7, Reachable::False);
/// fe80::/10, link-local unicast (RFC 4291).
pub const LINK_LOCAL_V6: Ipv6Block = v6([0xFE80, 0, 0, 0, 0, 0, 0, 0], 10, Reachable::False);

// Outside the IPv6 special-purpose registry.

/// fec0::/10, site-local, deprecated (RFC 3879) but still routed inside some old sites, which is
/// exactly what a relay must not reach.
pub const SITE_LOCAL: Ipv6Block = v6([0xFEC0, 0, 0, 0, 0, 0, 0, 0], 10, Reachable::False);
/// ff00::/8, multicast (RFC 4291, section 2.7), for the same reason as IPv4 multicast.
pub const MULTICAST_V6: Ipv6Block = v6([0xFF00, 0, 0, 0, 0, 0, 0, 0], 8, Reachable::False);

const fn v4(octets: [u8; 4], prefix: u8, reachable: Reachable) -> Ipv4Block {
    let [a, b, c, d] = octets;
    Ipv4Block {
        network: Ipv4Addr::new(a, b, c, d),
        prefix,
        reachable,
    }
}

const fn v6(segments: [u16; 8], prefix: u8, reachable: Reachable) -> Ipv6Block {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Block {
        network: Ipv6Addr::new(a, b, c, d, e, f, g, h),
        prefix,
        reachable,
    }
}
