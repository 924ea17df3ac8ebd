//! Endpoint addresses inside an overlay subnet, and the MAC derived from each
//! (pure). The gateway takes the first host; service VIPs and task addresses
//! take the lowest free ones after it, so the first service's VIP is .2 and
//! its tasks .3, .4, ... as in Swarm.

use ipnetwork::Ipv4Network;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The lowest usable host address of `subnet` that is not in `taken`
/// (`taken` holds the gateway too).
pub fn lowest_free(subnet: Ipv4Network, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    (first..=last).map(Ipv4Addr::from).find(|ip| !taken.contains(ip))
}

/// How many usable host addresses of `subnet` are not in `taken`.
pub fn free_count(subnet: Ipv4Network, taken: &HashSet<Ipv4Addr>) -> usize {
    let usable = (subnet.size() as usize).saturating_sub(2);
    let taken_inside = taken
        .iter()
        .filter(|ip| subnet.contains(**ip) && **ip != subnet.network() && **ip != subnet.broadcast());
    usable.saturating_sub(taken_inside.count())
}

pub use netctl_proto::convention::endpoint_mac_text as mac_for;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn the_first_free_host_after_the_gateway_is_taken() {
        let subnet: Ipv4Network = "192.168.200.0/24".parse().unwrap();
        let mut taken = HashSet::from([ip("192.168.200.1")]);
        assert_eq!(lowest_free(subnet, &taken), Some(ip("192.168.200.2")));
        taken.insert(ip("192.168.200.2"));
        taken.insert(ip("192.168.200.4"));
        assert_eq!(lowest_free(subnet, &taken), Some(ip("192.168.200.3")));
    }

    #[test]
    fn network_and_broadcast_addresses_are_never_handed_out() {
        let subnet: Ipv4Network = "10.1.0.0/29".parse().unwrap();
        let taken: HashSet<_> = (1..=6).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        assert_eq!(lowest_free(subnet, &taken), None);
        assert_eq!(free_count(subnet, &taken), 0);
        assert_eq!(free_count(subnet, &HashSet::from([ip("10.1.0.1")])), 5);
    }

    #[test]
    fn macs_carry_the_address_bytes() {
        assert_eq!(mac_for(ip("192.168.200.3")), "02:42:c0:a8:c8:03");
    }
}
