//! Overlay subnet allocation and validation (pure: no store, no I/O).
//!
//! Subnets come from the cluster's address pool in blocks of a fixed prefix
//! length, first free block first, as Swarm's default address pool does. A
//! subnet given by the operator must be a network address, at least a /29, and
//! overlap no other network nor the gateway bridge.

use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

/// The subnet of `docker_gwbridge` on every node: overlays may not overlap it.
pub const GWBRIDGE_SUBNET: Ipv4Network = match Ipv4Network::new_checked(
    netctl_proto::convention::GATEWAY_BRIDGE_NETWORK,
    netctl_proto::convention::GATEWAY_BRIDGE_PREFIX,
) {
    Some(net) => net,
    None => panic!("invalid gateway bridge subnet"),
};

/// The longest prefix an overlay may have: a /29 leaves 6 hosts.
pub const MAX_PREFIX: u8 = 29;

/// Why a subnet or gateway was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    /// Not an IPv4 CIDR at all.
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR such as 192.168.200.0/24")]
    InvalidCidr(String),
    /// `192.168.200.5/24`: the address is not the network address.
    #[error("invalid subnet {given}: host bits are set (did you mean {network}?)")]
    HostBitsSet {
        /// What the operator typed.
        given: String,
        /// The network the prefix describes.
        network: Ipv4Network,
    },
    /// Smaller than a /29.
    #[error("subnet {0} is too small: an overlay needs at least a /29")]
    TooSmall(Ipv4Network),
    /// Overlaps an existing network or the gateway bridge.
    #[error("subnet {subnet} overlaps {owner} ({owner_subnet})")]
    Overlap {
        /// The subnet asked for.
        subnet: Ipv4Network,
        /// What already holds the overlapping range.
        owner: String,
        /// That owner's subnet.
        owner_subnet: Ipv4Network,
    },
    /// Not an IPv4 address.
    #[error("invalid gateway {0:?}: expected an IPv4 address")]
    InvalidGateway(String),
    /// Outside the subnet, or its network or broadcast address.
    #[error("gateway {gateway} is not a usable host address of subnet {subnet}")]
    GatewayOutsideSubnet {
        /// The gateway asked for.
        gateway: Ipv4Addr,
        /// The subnet it should belong to.
        subnet: Ipv4Network,
    },
    /// No block of the pool is free.
    #[error("address pool {pool} is exhausted: no free /{prefix} left")]
    PoolExhausted {
        /// The pool searched.
        pool: Ipv4Network,
        /// The block size searched for.
        prefix: u8,
    },
}

/// Parses an operator-given subnet: an IPv4 CIDR whose host bits are zero and
/// whose prefix is at most [`MAX_PREFIX`].
pub fn parse_subnet(text: &str) -> Result<Ipv4Network, IpamError> {
    let net: Ipv4Network = text.parse().map_err(|_| IpamError::InvalidCidr(text.to_string()))?;
    if !text.contains('/') {
        return Err(IpamError::InvalidCidr(text.to_string()));
    }
    let network = Ipv4Network::new(net.network(), net.prefix()).expect("prefix already valid");
    if net.ip() != net.network() {
        return Err(IpamError::HostBitsSet { given: text.to_string(), network });
    }
    if net.prefix() > MAX_PREFIX {
        return Err(IpamError::TooSmall(net));
    }
    Ok(net)
}

/// Whether two subnets share at least one address.
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The first reserved range (by owner name) that overlaps `subnet`, if any.
/// The gateway bridge is always reserved.
pub fn check_overlap<'a>(
    subnet: Ipv4Network,
    taken: impl IntoIterator<Item = (&'a str, Ipv4Network)>,
) -> Result<(), IpamError> {
    let reserved = std::iter::once(("docker_gwbridge", GWBRIDGE_SUBNET));
    match reserved.chain(taken).find(|(_, other)| overlaps(subnet, *other)) {
        Some((owner, owner_subnet)) => {
            Err(IpamError::Overlap { subnet, owner: owner.to_string(), owner_subnet })
        }
        None => Ok(()),
    }
}

/// The gateway of `subnet`: the requested one if it is a usable host of the
/// subnet, otherwise its first host.
pub fn gateway(subnet: Ipv4Network, requested: Option<&str>) -> Result<Ipv4Addr, IpamError> {
    let Some(text) = requested else {
        return Ok(first_host(subnet));
    };
    let gateway: Ipv4Addr = text.parse().map_err(|_| IpamError::InvalidGateway(text.to_string()))?;
    let usable = subnet.contains(gateway) && gateway != subnet.network() && gateway != subnet.broadcast();
    if !usable {
        return Err(IpamError::GatewayOutsideSubnet { gateway, subnet });
    }
    Ok(gateway)
}

/// The first host address of a subnet (network address + 1).
pub fn first_host(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The first `/prefix` block of `pool` that overlaps none of `taken` nor the
/// gateway bridge.
pub fn allocate_subnet(
    pool: Ipv4Network,
    prefix: u8,
    taken: &[Ipv4Network],
) -> Result<Ipv4Network, IpamError> {
    let exhausted = IpamError::PoolExhausted { pool, prefix };
    if prefix < pool.prefix() || prefix > MAX_PREFIX {
        return Err(exhausted);
    }
    let block_size = 1u64 << (32 - prefix);
    let pool_end = u64::from(u32::from(pool.broadcast()));
    let mut reserved: Vec<Ipv4Network> = taken.to_vec();
    reserved.push(GWBRIDGE_SUBNET);
    let mut start = u64::from(u32::from(pool.network()));
    while start + block_size - 1 <= pool_end {
        let candidate = Ipv4Network::new(Ipv4Addr::from(start as u32), prefix).expect("aligned");
        let blocking_end = reserved
            .iter()
            .filter(|other| overlaps(candidate, **other))
            .map(|other| u64::from(u32::from(other.broadcast())))
            .max();
        match blocking_end {
            None => return Ok(candidate),
            // Skip past everything that blocks this block, staying aligned.
            Some(end) => start = (end.max(start + block_size - 1) + 1).div_ceil(block_size) * block_size,
        }
    }
    Err(exhausted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Network {
        text.parse().unwrap()
    }

    #[test]
    fn parse_subnet_accepts_network_addresses() {
        assert_eq!(parse_subnet("192.168.200.0/24"), Ok(net("192.168.200.0/24")));
        assert_eq!(parse_subnet("10.1.2.8/29"), Ok(net("10.1.2.8/29")));
    }

    #[test]
    fn parse_subnet_refuses_bad_input() {
        assert!(matches!(parse_subnet("banana"), Err(IpamError::InvalidCidr(_))));
        assert!(matches!(parse_subnet("192.168.200.0"), Err(IpamError::InvalidCidr(_))));
        assert!(matches!(parse_subnet("192.168.300.0/24"), Err(IpamError::InvalidCidr(_))));
        assert!(matches!(parse_subnet("10.0.0.0/33"), Err(IpamError::InvalidCidr(_))));
        assert_eq!(
            parse_subnet("192.168.200.5/24"),
            Err(IpamError::HostBitsSet {
                given: "192.168.200.5/24".into(),
                network: net("192.168.200.0/24")
            })
        );
        assert_eq!(parse_subnet("10.0.0.0/30"), Err(IpamError::TooSmall(net("10.0.0.0/30"))));
    }

    #[test]
    fn overlap_names_the_owner_and_always_reserves_the_gateway_bridge() {
        let taken = [("demonet", net("192.168.200.0/24"))];
        assert!(check_overlap(net("192.168.201.0/24"), taken).is_ok());
        let err = check_overlap(net("192.168.0.0/16"), taken).unwrap_err();
        assert!(err.to_string().contains("demonet"), "{err}");
        let err = check_overlap(net("172.18.5.0/24"), []).unwrap_err();
        assert!(err.to_string().contains("docker_gwbridge"), "{err}");
    }

    #[test]
    fn gateway_defaults_to_first_host_and_must_be_a_usable_host() {
        let subnet = net("192.168.200.0/24");
        assert_eq!(gateway(subnet, None), Ok(Ipv4Addr::new(192, 168, 200, 1)));
        assert_eq!(gateway(subnet, Some("192.168.200.254")), Ok(Ipv4Addr::new(192, 168, 200, 254)));
        for bad in ["192.168.201.1", "192.168.200.0", "192.168.200.255"] {
            assert!(
                matches!(gateway(subnet, Some(bad)), Err(IpamError::GatewayOutsideSubnet { .. })),
                "{bad}"
            );
        }
        assert!(matches!(gateway(subnet, Some("x")), Err(IpamError::InvalidGateway(_))));
    }

    #[test]
    fn allocation_takes_the_first_free_block_in_order() {
        let pool = net("10.0.0.0/8");
        assert_eq!(allocate_subnet(pool, 24, &[]), Ok(net("10.0.0.0/24")));
        let taken = [net("10.0.0.0/24"), net("10.0.2.0/24")];
        assert_eq!(allocate_subnet(pool, 24, &taken), Ok(net("10.0.1.0/24")));
        // A bigger network in the way is skipped whole.
        let taken = [net("10.0.0.0/16")];
        assert_eq!(allocate_subnet(pool, 24, &taken), Ok(net("10.1.0.0/24")));
        // A smaller one blocks only the block that holds it.
        let taken = [net("10.0.0.64/29")];
        assert_eq!(allocate_subnet(pool, 24, &taken), Ok(net("10.0.1.0/24")));
    }

    #[test]
    fn allocation_skips_the_gateway_bridge_and_reports_exhaustion() {
        assert_eq!(allocate_subnet(net("172.18.0.0/15"), 16, &[]), Ok(net("172.19.0.0/16")));
        let pool = net("10.20.0.0/23");
        let taken = [net("10.20.0.0/24"), net("10.20.1.0/24")];
        assert_eq!(allocate_subnet(pool, 24, &taken), Err(IpamError::PoolExhausted { pool, prefix: 24 }));
        assert!(allocate_subnet(pool, 22, &[]).is_err(), "block larger than the pool");
    }

    #[test]
    fn allocation_reaches_the_last_block_of_the_address_space() {
        let pool = net("255.255.255.0/24");
        let taken = [net("255.255.255.0/25")];
        assert_eq!(allocate_subnet(pool, 25, &taken), Ok(net("255.255.255.128/25")));
    }
}
