//! VXLAN network identifier allocation (pure).
//!
//! VNI 4096 belongs to the ingress network; overlays get the lowest free VNI
//! from 4097 up, as in Swarm. A removed network's VNI becomes free again.

use std::collections::BTreeSet;

/// The VNI of the cluster-wide ingress network.
pub const INGRESS_VNI: u32 = 4096;
/// The first VNI handed to an overlay network.
pub const FIRST_OVERLAY_VNI: u32 = 4097;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The lowest VNI from [`FIRST_OVERLAY_VNI`] up that is not in `taken`.
pub fn lowest_free(taken: &BTreeSet<u32>) -> Option<u32> {
    let mut candidate = FIRST_OVERLAY_VNI;
    for &used in taken.range(FIRST_OVERLAY_VNI..) {
        if used != candidate {
            break;
        }
        candidate += 1;
    }
    (candidate <= MAX_VNI).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_overlay_gets_4097_whatever_ingress_holds() {
        assert_eq!(lowest_free(&BTreeSet::new()), Some(4097));
        assert_eq!(lowest_free(&BTreeSet::from([INGRESS_VNI])), Some(4097));
    }

    #[test]
    fn gaps_left_by_removed_networks_are_reused_lowest_first() {
        assert_eq!(lowest_free(&BTreeSet::from([4096, 4097, 4098, 4100])), Some(4099));
        assert_eq!(lowest_free(&BTreeSet::from([4097, 4098])), Some(4099));
    }

    #[test]
    fn the_24_bit_space_can_run_out() {
        let taken: BTreeSet<u32> = (FIRST_OVERLAY_VNI..=MAX_VNI).collect();
        assert_eq!(lowest_free(&taken), None);
    }
}
