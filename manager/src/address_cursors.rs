//! Where each network's address allocation goes on from: the address handed
//! out last, kept as a cluster setting per network so that a restarted or
//! another manager goes on from the same place ([`crate::addresses::next_free`]).

use crate::store::{Batch, Store, StoreError};
use netctl_proto::Network;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The setting that holds the address `network_id` handed out last.
fn setting_key(network_id: &str) -> String {
    format!("last-address-{network_id}")
}

/// The address each of `networks` handed out last, by network ID; a network
/// that never handed one out is absent.
pub fn read(store: &Store, networks: &[Network]) -> Result<HashMap<String, Ipv4Addr>, StoreError> {
    let mut last = HashMap::new();
    for network in networks {
        if let Some(address) = store.setting(&setting_key(&network.id))? {
            last.insert(network.id.clone(), Ipv4Addr::from(address as u32));
        }
    }
    Ok(last)
}

/// The address `network_id` handed out last, if any.
pub fn read_one(store: &Store, network_id: &str) -> Result<Option<Ipv4Addr>, StoreError> {
    Ok(store.setting(&setting_key(network_id))?.map(|address| Ipv4Addr::from(address as u32)))
}

/// Records in `batch` that `network_id` handed out `address` last.
pub fn record(batch: &mut Batch, network_id: &str, address: Ipv4Addr) {
    batch.put_setting(&setting_key(network_id), &u64::from(u32::from(address)).to_be_bytes());
}

/// Forgets, in `batch`, where the removed `network_id` was.
pub fn forget(batch: &mut Batch, network_id: &str) {
    batch.delete_setting(&setting_key(network_id));
}
