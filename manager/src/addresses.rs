//! Endpoint addresses inside an overlay subnet, and the MAC derived from each
//! (pure). The gateway takes the first host; service VIPs and task addresses
//! take the free ones after it in turn, so the first service's VIP is .2 and
//! its tasks .3, .4, ... as in Swarm. Allocation goes on from the address
//! handed out last, round the subnet: a freed address is handed out again
//! only once every other free one has been, so an FDB or neighbour entry
//! that lingers somewhere never delivers to the address's next owner
//! (Swarm's stale-FDB-on-reuse bug, moby#52661).

use ipnetwork::Ipv4Network;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The first usable host address of `subnet` after `last_handed_out` that
/// is not in `taken` (which holds the gateway too), going round from the
/// highest to the lowest; the lowest free one when nothing of the subnet
/// was handed out yet.
pub fn next_free(
    subnet: Ipv4Network,
    taken: &HashSet<Ipv4Addr>,
    last_handed_out: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    let start = match last_handed_out.map(u32::from) {
        Some(previous) if (first..last).contains(&previous) => previous + 1,
        _ => first,
    };
    (start..=last).chain(first..start).map(Ipv4Addr::from).find(|ip| !taken.contains(ip))
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
        assert_eq!(next_free(subnet, &taken, None), Some(ip("192.168.200.2")));
        taken.insert(ip("192.168.200.2"));
        taken.insert(ip("192.168.200.4"));
        assert_eq!(next_free(subnet, &taken, None), Some(ip("192.168.200.3")));
    }

    #[test]
    fn allocation_goes_on_after_the_last_address_and_round_the_subnet() {
        let subnet: Ipv4Network = "10.1.0.0/29".parse().unwrap();
        let mut taken = HashSet::from([ip("10.1.0.1"), ip("10.1.0.3")]);
        // .2 was freed; .4 comes first, then .5 and .6, then .2 again.
        assert_eq!(next_free(subnet, &taken, Some(ip("10.1.0.3"))), Some(ip("10.1.0.4")));
        taken.extend([ip("10.1.0.4"), ip("10.1.0.5")]);
        assert_eq!(next_free(subnet, &taken, Some(ip("10.1.0.5"))), Some(ip("10.1.0.6")));
        taken.insert(ip("10.1.0.6"));
        assert_eq!(next_free(subnet, &taken, Some(ip("10.1.0.6"))), Some(ip("10.1.0.2")));
        // A last address outside the subnet (the network was made again)
        // starts from the lowest.
        assert_eq!(next_free(subnet, &taken, Some(ip("10.9.0.3"))), Some(ip("10.1.0.2")));
    }

    proptest::proptest! {
        /// Handing out and freeing in any order, an address comes back
        /// only after every address that stayed free meanwhile was handed
        /// out, and never while it is taken.
        #[test]
        fn a_freed_address_comes_back_last(steps in proptest::collection::vec(0u8..4, 1..300)) {
            let subnet: Ipv4Network = "10.2.0.0/28".parse().unwrap();
            let usable: Vec<Ipv4Addr> = (2..=14).map(|i| Ipv4Addr::new(10, 2, 0, i)).collect();
            let mut taken = HashSet::from([ip("10.2.0.1")]);
            // Each hand-out, and the addresses taken at some point since.
            let mut handed: Vec<(Ipv4Addr, HashSet<Ipv4Addr>)> = Vec::new();
            let mut last = None;
            for step in steps {
                if step == 0 {
                    // Free the oldest address still taken.
                    if let Some((oldest, _)) = handed.iter().find(|(a, _)| taken.contains(a)) {
                        taken.remove(&oldest.clone());
                    }
                    continue;
                }
                let Some(address) = next_free(subnet, &taken, last) else { continue };
                proptest::prop_assert!(!taken.contains(&address));
                if let Some(previous) = handed.iter().rposition(|(a, _)| *a == address) {
                    let (_, busy) = &handed[previous];
                    let since: HashSet<_> = handed[previous + 1..].iter().map(|(a, _)| *a).collect();
                    for other in usable.iter().filter(|a| **a != address) {
                        proptest::prop_assert!(
                            since.contains(other) || busy.contains(other),
                            "{address} came back before {other}, free all along, was handed out"
                        );
                    }
                }
                taken.insert(address);
                for (_, busy) in &mut handed {
                    busy.insert(address);
                }
                handed.push((address, taken.clone()));
                last = Some(address);
            }
        }
    }

    #[test]
    fn network_and_broadcast_addresses_are_never_handed_out() {
        let subnet: Ipv4Network = "10.1.0.0/29".parse().unwrap();
        let taken: HashSet<_> = (1..=6).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        assert_eq!(next_free(subnet, &taken, None), None);
        assert_eq!(free_count(subnet, &taken), 0);
        assert_eq!(free_count(subnet, &HashSet::from([ip("10.1.0.1")])), 5);
    }

    #[test]
    fn macs_carry_the_address_bytes() {
        assert_eq!(mac_for(ip("192.168.200.3")), "02:42:c0:a8:c8:03");
    }
}
