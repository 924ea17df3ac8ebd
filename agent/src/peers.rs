//! Remote endpoints of an overlay: for every task on another node, a
//! permanent neighbour entry (IP → MAC) and FDB entry (MAC → that node) on
//! vxlan0. Only the difference with what the kernel holds is written, and
//! entries of endpoints that went away are removed.

use crate::names::VXLAN;
use netctl_proto::RemoteEndpoint;
use netlib::neigh::{parse_mac, Neighbour};
use netlib::Netlink;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// What is to be added and removed to turn `actual` into `wanted` (pure).
pub fn difference<T: Ord + Clone>(wanted: &BTreeSet<T>, actual: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (wanted.difference(actual).cloned().collect(), actual.difference(wanted).cloned().collect())
}

/// Converges vxlan0's neighbour and FDB entries to `endpoints`.
pub async fn sync(overlay: &Netlink, endpoints: &[&RemoteEndpoint]) -> netlib::Result<()> {
    let vxlan = overlay.require_link(VXLAN).await?;
    let mut wanted_neighbours = BTreeSet::new();
    let mut wanted_fdb = BTreeSet::new();
    for endpoint in endpoints {
        let (Ok(address), Ok(node)) =
            (endpoint.address.parse::<Ipv4Addr>(), endpoint.node_addr.parse::<Ipv4Addr>())
        else {
            tracing::warn!(?endpoint, "skipping a remote endpoint with an invalid address");
            continue;
        };
        let mac = endpoint.mac.to_lowercase();
        wanted_neighbours.insert(Neighbour { index: vxlan.index, address: Some(address), mac: mac.clone() });
        wanted_fdb.insert(Neighbour { index: vxlan.index, address: Some(node), mac });
    }

    let actual: BTreeSet<Neighbour> = overlay.neighbours(&vxlan).await?.into_iter().collect();
    let (add, remove) = difference(&wanted_neighbours, &actual);
    for entry in &remove {
        overlay.delete_neighbour(entry).await?;
    }
    for entry in &add {
        if let (Some(address), Some(mac)) = (entry.address, parse_mac(&entry.mac)) {
            overlay.replace_neighbour(&vxlan, address, mac).await?;
        }
    }

    let actual: BTreeSet<Neighbour> = overlay.fdb(&vxlan).await?.into_iter().collect();
    let (add, remove) = difference(&wanted_fdb, &actual);
    for entry in &remove {
        overlay.delete_fdb(entry).await?;
    }
    for entry in &add {
        if let (Some(node), Some(mac)) = (entry.address, parse_mac(&entry.mac)) {
            overlay.replace_fdb(&vxlan, mac, node).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_adds_the_missing_and_removes_the_extra() {
        let wanted = BTreeSet::from([1, 2, 3]);
        let actual = BTreeSet::from([2, 3, 4]);
        assert_eq!(difference(&wanted, &actual), (vec![1], vec![4]));
        assert_eq!(difference(&wanted, &wanted), (vec![], vec![]));
    }
}
