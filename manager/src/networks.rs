//! Creating and removing overlay networks: validation, subnet and VNI
//! allocation, and the one store write that owns them.

use crate::error::ManagerError;
use crate::{ids, ipam, resolve, validate, vni, Store};
use ipnetwork::Ipv4Network;
use netctl_proto::{Network, NetworkCreateRequest};
use std::collections::BTreeSet;

/// Where overlay subnets come from when none is given.
#[derive(Debug, Clone, Copy)]
pub struct AddressPool {
    /// The pool, e.g. 10.0.0.0/8.
    pub pool: Ipv4Network,
    /// The prefix length of each allocated subnet, e.g. 24.
    pub mask_length: u8,
}

/// The ingress network's subnet.
pub const INGRESS_SUBNET: &str = "10.255.0.0/16";
/// The ingress network's name.
pub const INGRESS_NAME: &str = "ingress";

/// Creates an overlay network from an operator's request.
pub async fn create(
    store: &Store,
    pool: AddressPool,
    request: &NetworkCreateRequest,
) -> Result<Network, ManagerError> {
    crate::store::retrying(|| create_once(store, pool, request)).await
}

async fn create_once(
    store: &Store,
    pool: AddressPool,
    request: &NetworkCreateRequest,
) -> Result<Network, ManagerError> {
    validate::name(&request.name)?;
    let driver = validate::driver(&request.driver)?;
    let mtu = validate::mtu_option(&request.options)?;
    let requested_subnet = match request.subnet.as_str() {
        "" if !request.gateway.is_empty() => {
            return Err(ManagerError::Refused("--gateway needs --subnet".into()))
        }
        "" => None,
        text => Some(ipam::parse_subnet(text)?),
    };
    let requested_gateway = (!request.gateway.is_empty()).then_some(request.gateway.as_str());
    if let Some(subnet) = requested_subnet {
        ipam::gateway(subnet, requested_gateway)?;
    }

    let mut writer = store.write_lock().await;
    let existing = store.networks()?;
    if existing.iter().any(|n| n.name == request.name) {
        return Err(ManagerError::NameTaken { kind: "network", name: request.name.clone() });
    }
    let taken: Vec<(&str, Ipv4Network)> =
        existing.iter().filter_map(|n| Some((n.name.as_str(), n.subnet.parse().ok()?))).collect();
    let subnet = match requested_subnet {
        Some(subnet) => {
            ipam::check_overlap(subnet, taken.iter().copied())?;
            subnet
        }
        None => {
            let taken: Vec<Ipv4Network> = taken.iter().map(|(_, net)| *net).collect();
            ipam::allocate_subnet(pool.pool, pool.mask_length, &taken)?
        }
    };
    let gateway = ipam::gateway(subnet, requested_gateway)?;
    let vnis: BTreeSet<u32> = existing.iter().map(|n| n.vni).collect();
    let vni = vni::lowest_free(&vnis).ok_or(ManagerError::VniExhausted)?;
    let network = Network {
        id: ids::new_id(),
        name: request.name.clone(),
        driver: driver.to_string(),
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        vni,
        mtu,
        ingress: false,
        created_unix: now_unix(),
    };
    writer.put(&network).await?;
    Ok(network)
}

/// The network a name, ID or unique ID prefix designates.
pub fn find(store: &Store, reference: &str) -> Result<Network, ManagerError> {
    let mut networks = store.networks()?;
    let index =
        resolve::resolve("network", reference, networks.iter().map(|n| (n.id.as_str(), n.name.as_str())))?;
    Ok(networks.swap_remove(index))
}

/// Removes a network, freeing its subnet and VNI. The ingress network stays.
pub async fn remove(store: &Store, reference: &str) -> Result<Network, ManagerError> {
    crate::store::retrying(|| remove_once(store, reference)).await
}

async fn remove_once(store: &Store, reference: &str) -> Result<Network, ManagerError> {
    let mut writer = store.write_lock().await;
    let network = find(store, reference)?;
    if network.ingress {
        return Err(ManagerError::Refused(format!(
            "network {} is the routing mesh's ingress network and cannot be removed",
            network.name
        )));
    }
    let services: Vec<netctl_proto::Service> = store.all()?;
    if let Some(user) = services.iter().find(|s| s.network_ids.contains(&network.id)) {
        return Err(ManagerError::Refused(format!(
            "network {} is in use by service {}: remove the service first",
            network.name, user.name
        )));
    }
    let mut batch = crate::store::Batch::new();
    batch.delete::<Network>(&network.id);
    crate::address_cursors::forget(&mut batch, &network.id);
    writer.commit(batch).await?;
    Ok(network)
}

/// Creates the cluster-wide ingress network unless it exists. Returns whether
/// it was created (the cluster's first start).
pub async fn ensure_ingress(store: &Store) -> Result<bool, ManagerError> {
    crate::store::retrying(|| ensure_ingress_once(store)).await
}

async fn ensure_ingress_once(store: &Store) -> Result<bool, ManagerError> {
    let mut writer = store.write_lock().await;
    if store.networks()?.iter().any(|n| n.ingress) {
        return Ok(false);
    }
    let subnet: Ipv4Network = INGRESS_SUBNET.parse().expect("valid ingress subnet");
    let network = Network {
        id: ids::new_id(),
        name: INGRESS_NAME.to_string(),
        driver: validate::OVERLAY_DRIVER.to_string(),
        subnet: subnet.to_string(),
        gateway: ipam::first_host(subnet).to_string(),
        vni: vni::INGRESS_VNI,
        mtu: 0,
        ingress: true,
        created_unix: now_unix(),
    };
    writer.put(&network).await?;
    Ok(true)
}

/// Seconds since the epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pool() -> AddressPool {
        AddressPool { pool: "10.0.0.0/8".parse().unwrap(), mask_length: 24 }
    }

    fn request(name: &str, subnet: &str) -> NetworkCreateRequest {
        NetworkCreateRequest { name: name.into(), subnet: subnet.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn concurrent_creates_never_share_a_subnet_or_vni() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        ensure_ingress(&store).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { create(&store, pool(), &request(&format!("n{i}"), "")).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let networks = store.networks().unwrap();
        let subnets: BTreeSet<_> = networks.iter().map(|n| n.subnet.clone()).collect();
        let vnis: BTreeSet<_> = networks.iter().map(|n| n.vni).collect();
        assert_eq!((networks.len(), subnets.len(), vnis.len()), (21, 21, 21));
        assert_eq!(vnis.iter().max(), Some(&(4097 + 19)));
    }

    #[tokio::test]
    async fn removal_frees_subnet_and_vni_but_not_ingress() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(ensure_ingress(&store).await.unwrap());
        assert!(!ensure_ingress(&store).await.unwrap());
        let first = create(&store, pool(), &request("first", "")).await.unwrap();
        create(&store, pool(), &request("b", "")).await.unwrap();
        remove(&store, "first").await.unwrap();
        let again = create(&store, pool(), &request("c", "")).await.unwrap();
        assert_eq!((again.subnet, again.vni), (first.subnet, first.vni));
        assert!(matches!(remove(&store, "ingress").await, Err(ManagerError::Refused(_))));
        assert!(matches!(remove(&store, "first").await, Err(ManagerError::Resolve(_))));
    }

    #[tokio::test]
    async fn bad_requests_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        ensure_ingress(&store).await.unwrap();
        create(&store, pool(), &request("demonet", "192.168.200.0/24")).await.unwrap();
        let revision = store.revision();
        for bad in [
            request("demonet", ""),
            request("other", "192.168.200.128/25"),
            request("other", "10.255.1.0/24"),
            request("other", "172.18.0.0/16"),
            request("bad name", ""),
            NetworkCreateRequest { gateway: "10.9.9.1".into(), ..request("other", "10.9.8.0/24") },
            NetworkCreateRequest { driver: "bridge".into(), ..request("other", "") },
        ] {
            assert!(create(&store, pool(), &bad).await.is_err(), "{bad:?}");
        }
        assert_eq!(store.revision(), revision);
        assert_eq!(store.networks().unwrap().len(), 2);
    }
}
