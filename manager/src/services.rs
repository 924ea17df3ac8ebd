//! Creating, scaling and removing services. A service's VIPs are allocated
//! with it, in one store write; its tasks are made by the orchestrator.

use crate::error::ManagerError;
use crate::networks::now_unix;
use crate::ports::ReservedPorts;
use crate::store::Batch;
use crate::{address_cursors, addresses};
use crate::{ids, resolve, validate, Store};
use ipnetwork::Ipv4Network;
use netctl_proto::{
    EndpointAddress, EndpointMode, Network, NetworkAlias, Node, PortConfig, Service, ServiceCreateRequest,
    ServiceMode, ServiceUpdateRequest, Task, TaskState, VirtualIp,
};
use prost::Message;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Every address in use in `network`: its gateway, every service VIP in it,
/// every endpoint of a task that should run, and on the ingress network every
/// node's ingress_sbox address.
pub fn taken_addresses(
    network: &Network,
    services: &[Service],
    tasks: &[Task],
    nodes: &[Node],
) -> HashSet<Ipv4Addr> {
    // A previous spec's VIPs stay taken: a rollback gets them back.
    let vips = services
        .iter()
        .flat_map(|s| s.virtual_ips.iter().chain(s.previous_spec.iter().flat_map(|p| &p.virtual_ips)))
        .filter(|v| v.network_id == network.id);
    let endpoints = tasks
        .iter()
        .filter(|t| t.desired_state() == TaskState::Running)
        .flat_map(|t| &t.endpoints)
        .filter(|e| e.network_id == network.id);
    let sandboxes = nodes.iter().filter(|_| network.ingress).map(|n| n.ingress_address.as_str());
    let addresses =
        vips.map(|v| v.address.as_str()).chain(endpoints.map(|e| e.address.as_str())).chain(sandboxes);
    std::iter::once(network.gateway.as_str()).chain(addresses).filter_map(|a| a.parse().ok()).collect()
}

fn subnet_of(network: &Network) -> Result<Ipv4Network, ManagerError> {
    network
        .subnet
        .parse()
        .map_err(|_| ManagerError::Refused(format!("network {} has no valid subnet", network.name)))
}

/// Refuses when `network` cannot hold `needed` more addresses.
fn ensure_room(network: &Network, taken: &HashSet<Ipv4Addr>, needed: usize) -> Result<(), ManagerError> {
    let free = addresses::free_count(subnet_of(network)?, taken);
    if free < needed {
        return Err(ManagerError::Refused(format!(
            "network {} ({}) has no free address: {needed} needed, {free} free",
            network.name, network.subnet
        )));
    }
    Ok(())
}

/// Creates a service: validates it, resolves its networks, allocates its VIPs.
pub async fn create(
    store: &Store,
    request: &ServiceCreateRequest,
    reserved: &ReservedPorts,
) -> Result<Service, ManagerError> {
    crate::store::retrying(|| create_once(store, request, reserved)).await
}

async fn create_once(
    store: &Store,
    request: &ServiceCreateRequest,
    reserved: &ReservedPorts,
) -> Result<Service, ManagerError> {
    let mut service = checked_service(request)?;
    let mut writer = store.write_lock().await;
    let services: Vec<Service> = store.all()?;
    if services.iter().any(|s| s.name == service.name) {
        return Err(ManagerError::NameTaken { kind: "service", name: service.name });
    }
    let networks = store.networks()?;
    // Decoded once for this revision with the orchestrator and the nodes'
    // desired state.
    let tasks = store.shared::<Task>()?;
    let nodes = store.nodes()?;
    service.ports = crate::ports::assign(&service.name, &request.ports, &services, reserved)?;
    if service.ports.iter().any(PortConfig::is_ingress) {
        let ingress = networks
            .iter()
            .find(|n| n.ingress)
            .ok_or_else(|| ManagerError::Refused("no ingress network".into()))?;
        ensure_room(
            ingress,
            &taken_addresses(ingress, &services, &tasks, &nodes),
            request.replicas as usize,
        )?;
    }
    // The service, and where its networks' allocation goes on from.
    let mut batch = Batch::new();
    for reference in &request.networks {
        let network = &networks[resolve::resolve(
            "network",
            reference,
            networks.iter().map(|n| (n.id.as_str(), n.name.as_str())),
        )?];
        if service.network_ids.contains(&network.id) {
            continue;
        }
        attach(
            store,
            &mut service,
            network,
            &taken_addresses(network, &services, &tasks, &nodes),
            &mut batch,
        )?;
    }
    service.aliases = aliases(&service, &request.aliases, &networks, &services)?;
    ensure_state_fits(&service, &services, &networks)?;
    batch.put(&service);
    writer.commit(batch).await?;
    Ok(service)
}

/// The service `request` asks for, every field that needs no store read
/// checked (name, replicas and mode, constraints, runtime, command,
/// endpoint mode); its ports, networks and aliases come later.
fn checked_service(request: &ServiceCreateRequest) -> Result<Service, ManagerError> {
    let id = ids::new_id();
    let name = match request.name.as_str() {
        "" => format!("service-{}", &id[..8]),
        given => given.to_string(),
    };
    validate::service_name(&name)?;
    validate::replicas(request.replicas)?;
    let mode = ServiceMode::try_from(request.mode).map_err(|_| {
        ManagerError::Refused(format!("invalid service mode {}: expected replicated or global", request.mode))
    })?;
    if mode == ServiceMode::Global && request.replicas != 0 {
        return Err(ManagerError::Refused(
            "replicas can only be used with replicated mode: a global service runs one task on every node"
                .into(),
        ));
    }
    let constraints = crate::constraints::parse_all(&request.constraints)
        .map_err(|err| ManagerError::Refused(err.to_string()))?;
    let runtime = validate::runtime(&request.runtime.clone().unwrap_or_default())?;
    if request.command.first().is_none_or(|c| c.is_empty()) {
        return Err(ManagerError::Refused("a service needs a command to run".into()));
    }
    let endpoint_mode = EndpointMode::try_from(request.endpoint_mode).map_err(|_| {
        ManagerError::Refused(format!(
            "invalid endpoint mode {}: expected vip or dnsrr",
            request.endpoint_mode
        ))
    })?;
    if endpoint_mode == EndpointMode::Dnsrr && request.ports.iter().any(|p| p.mode != netctl_proto::HOST_MODE)
    {
        return Err(ManagerError::Refused(
            "a port published in ingress mode can't be used with endpoint mode dnsrr (no VIP to balance over)".into(),
        ));
    }
    Ok(Service {
        id,
        name,
        replicas: request.replicas,
        command: request.command.clone(),
        env: request.env.clone(),
        workdir: request.workdir.clone(),
        runtime: Some(runtime),
        created_unix: now_unix(),
        updated_unix: now_unix(),
        endpoint_mode: endpoint_mode.into(),
        mode: mode.into(),
        constraints: constraints.iter().map(ToString::to_string).collect(),
        update_config: Some(crate::updates::default_config()),
        ..Default::default()
    })
}

/// The network aliases of a new `service`, by network ID: each a DNS label,
/// on a network the service is attached to, and taken there by no other
/// service's name or alias (nor is the service's own name taken there by
/// another's alias).
fn aliases(
    service: &Service,
    requested: &[NetworkAlias],
    networks: &[Network],
    others: &[Service],
) -> Result<Vec<NetworkAlias>, ManagerError> {
    let mut stored: Vec<NetworkAlias> = Vec::new();
    for request in requested {
        let network = &networks[resolve::resolve(
            "network",
            &request.network,
            networks.iter().map(|n| (n.id.as_str(), n.name.as_str())),
        )?];
        if !service.network_ids.contains(&network.id) {
            return Err(ManagerError::Refused(format!(
                "alias for network {}, which the service is not attached to (add --network {})",
                network.name, network.name
            )));
        }
        for alias in &request.aliases {
            validate::alias(alias)?;
        }
        match stored.iter_mut().find(|a| a.network == network.id) {
            Some(entry) => entry.aliases.extend(request.aliases.iter().cloned()),
            None => {
                stored.push(NetworkAlias { network: network.id.clone(), aliases: request.aliases.clone() })
            }
        }
    }
    for network_id in &service.network_ids {
        let network_name = networks.iter().find(|n| n.id == *network_id).map_or("?", |n| n.name.as_str());
        let mine: Vec<&String> =
            stored.iter().filter(|a| a.network == *network_id).flat_map(|a| &a.aliases).collect();
        for other in others.iter().filter(|o| o.network_ids.contains(network_id)) {
            let theirs: Vec<&String> =
                other.aliases.iter().filter(|a| a.network == *network_id).flat_map(|a| &a.aliases).collect();
            let clash = mine
                .iter()
                .find(|alias| {
                    other.name.eq_ignore_ascii_case(alias)
                        || theirs.iter().any(|t| t.eq_ignore_ascii_case(alias))
                })
                .map(|alias| alias.as_str())
                .or_else(|| {
                    theirs.iter().find(|t| t.eq_ignore_ascii_case(&service.name)).map(|t| t.as_str())
                });
            if let Some(name) = clash {
                return Err(ManagerError::Refused(format!(
                    "name {name} is taken on network {network_name} by service {} (a service name or alias there)",
                    other.name
                )));
            }
        }
    }
    Ok(stored)
}

/// The most bytes one task can add to a node's desired state: its
/// [`netctl_proto::TaskSpec`], and per endpoint a remote-endpoint entry and
/// a balancing backend (an upper bound, computed from the real encoding).
fn task_state_bytes(service: &Service, networks: &[Network]) -> usize {
    let attached = attached_networks(service, networks);
    let endpoint = EndpointAddress {
        network_id: "n".repeat(25),
        address: "255.255.255.255".into(),
        mac: "02:42:ff:ff:ff:ff".into(),
    };
    let spec = netctl_proto::TaskSpec {
        id: "t".repeat(25),
        name: format!("{}.{}", service.name, validate::MAX_REPLICAS),
        service_id: service.id.clone(),
        command: service.command.clone(),
        env: service.env.clone().into_iter().collect(),
        workdir: service.workdir.clone(),
        endpoints: vec![endpoint; attached.len()],
        ..Default::default()
    };
    let remote = netctl_proto::RemoteEndpoint {
        network_id: "n".repeat(25),
        address: "255.255.255.255".into(),
        mac: "02:42:ff:ff:ff:ff".into(),
        node_addr: "255.255.255.255".into(),
    };
    // Framing of each repeated entry: a tag and a length prefix.
    spec.encoded_len() + 8 + attached.len() * (remote.encoded_len() + 8 + 2 * (15 + 4))
}

/// Refuses a service (new or rescaled) when every task of the cluster,
/// placed on one node, could make that node's desired state larger than a
/// Watch message may be, so that no node's Watch breaks later.
fn ensure_state_fits(
    service: &Service,
    others: &[Service],
    networks: &[Network],
) -> Result<(), ManagerError> {
    let bytes = |s: &Service| s.replicas as usize * task_state_bytes(s, networks);
    let total: usize = others.iter().map(bytes).sum::<usize>() + bytes(service);
    if total > netctl_proto::MAX_NODE_STATE_BYTES {
        return Err(ManagerError::Refused(format!(
            "service {} with {} replicas could make a node's desired state {} MiB, over the {} MiB a node can receive: use fewer replicas or a shorter command and environment",
            service.name,
            service.replicas,
            total.div_ceil(1024 * 1024),
            netctl_proto::MAX_NODE_STATE_BYTES / (1024 * 1024)
        )));
    }
    Ok(())
}

/// The service a name, ID or unique ID prefix designates.
pub fn find(store: &Store, reference: &str) -> Result<Service, ManagerError> {
    let mut services: Vec<Service> = store.all()?;
    let index =
        resolve::resolve("service", reference, services.iter().map(|s| (s.id.as_str(), s.name.as_str())))?;
    Ok(services.swap_remove(index))
}

/// Sets a service's replica count; the orchestrator adds or stops tasks.
pub async fn scale(store: &Store, reference: &str, replicas: u32) -> Result<Service, ManagerError> {
    crate::store::retrying(|| scale_once(store, reference, replicas)).await
}

async fn scale_once(store: &Store, reference: &str, replicas: u32) -> Result<Service, ManagerError> {
    validate::replicas(replicas)?;
    let mut writer = store.write_lock().await;
    let mut service = find(store, reference)?;
    if service.mode() == ServiceMode::Global {
        return Err(ManagerError::Refused(format!(
            "service {} is global: it runs one task on every node and cannot be scaled",
            service.name
        )));
    }
    service.replicas = replicas;
    ensure_fits(store, &service)?;
    service.updated_unix = now_unix();
    writer.put(&service).await?;
    Ok(service)
}

/// Refuses a changed `service` whose replicas its networks have no
/// addresses for, or that would make a node's state too large.
fn ensure_fits(store: &Store, service: &Service) -> Result<(), ManagerError> {
    let services: Vec<Service> = store.all()?;
    let tasks = store.shared::<Task>()?;
    let nodes = store.nodes()?;
    let running_here = tasks
        .iter()
        .filter(|t| t.service_id == service.id && t.desired_state() == TaskState::Running)
        .count();
    let more = (service.replicas as usize).saturating_sub(running_here);
    let ingress = store
        .networks()?
        .into_iter()
        .filter(|n| n.ingress && service.ports.iter().any(PortConfig::is_ingress));
    for network in
        service.network_ids.iter().filter_map(|id| store.get::<Network>(id).ok().flatten()).chain(ingress)
    {
        ensure_room(&network, &taken_addresses(&network, &services, &tasks, &nodes), more)?;
    }
    let others: Vec<Service> = services.into_iter().filter(|s| s.id != service.id).collect();
    ensure_state_fits(service, &others, &store.networks()?)
}

/// Changes a service (`service update`) or returns it to its spec before
/// the last update (`service rollback`); the orchestrator replaces its
/// tasks a batch at a time when what they run changed.
pub async fn update(
    store: &Store,
    request: &ServiceUpdateRequest,
    reserved: &ReservedPorts,
) -> Result<Service, ManagerError> {
    if let Some(replicas) = request.replicas {
        validate::replicas(replicas)?;
    }
    crate::store::retrying(|| update_once(store, request, reserved)).await
}

async fn update_once(
    store: &Store,
    request: &ServiceUpdateRequest,
    reserved: &ReservedPorts,
) -> Result<Service, ManagerError> {
    let mut writer = store.write_lock().await;
    let service = find(store, &request.reference)?;
    let now = now_unix();
    let mut batch = Batch::new();
    let changed = match request.rollback {
        true => {
            crate::updates::rollback(&service, now, "rollback requested").map_err(ManagerError::Refused)?
        }
        false => {
            let mut changed = crate::updates::apply(&service, request, now).map_err(ManagerError::Refused)?;
            let others: Vec<Service> =
                store.all::<Service>()?.into_iter().filter(|s| s.id != service.id).collect();
            change_ports(&mut changed, request, &others, reserved)?;
            change_networks(store, &mut changed, request, &others, &mut batch)?;
            // New endpoints: the tasks are replaced.
            if changed.ports != service.ports || changed.network_ids != service.network_ids {
                crate::updates::begin(&mut changed, &service, now);
                changed.updated_unix = now;
            }
            changed
        }
    };
    if changed == service {
        return Ok(service);
    }
    ensure_fits(store, &changed)?;
    batch.put(&changed);
    writer.commit(batch).await?;
    Ok(changed)
}

/// `--publish-rm` then `--publish-add` applied to `changed`; `others` are
/// the other services.
fn change_ports(
    changed: &mut Service,
    request: &ServiceUpdateRequest,
    others: &[Service],
    reserved: &ReservedPorts,
) -> Result<(), ManagerError> {
    for gone in &request.publish_rm {
        let protocol = if gone.protocol.is_empty() { "tcp" } else { gone.protocol.as_str() };
        let before = changed.ports.len();
        changed.ports.retain(|p| !(p.published_port == gone.published_port && p.protocol == protocol));
        if changed.ports.len() == before {
            return Err(ManagerError::Refused(format!(
                "service {} does not publish port {}/{protocol}",
                changed.name, gone.published_port
            )));
        }
    }
    if request.publish_add.is_empty() {
        return Ok(());
    }
    if changed.endpoint_mode() == EndpointMode::Dnsrr
        && request.publish_add.iter().any(|p| p.mode != netctl_proto::HOST_MODE)
    {
        return Err(ManagerError::Refused(format!(
            "service {} has endpoint mode dnsrr: a port published in ingress mode needs a VIP to balance over",
            changed.name
        )));
    }
    let mut holders = others.to_vec();
    holders.push(Service { name: changed.name.clone(), ports: changed.ports.clone(), ..Default::default() });
    let added = crate::ports::assign(&changed.name, &request.publish_add, &holders, reserved)?;
    changed.ports.extend(added);
    Ok(())
}

/// `--network-add` then `--network-rm` applied to `changed` (a service
/// moved to another network keeps its ports), a VIP given on each added
/// network (the allocation recorded in `batch`).
fn change_networks(
    store: &Store,
    changed: &mut Service,
    request: &ServiceUpdateRequest,
    others: &[Service],
    batch: &mut Batch,
) -> Result<(), ManagerError> {
    if request.network_rm.is_empty() && request.network_add.is_empty() {
        return Ok(());
    }
    let networks = store.networks()?;
    let network_of = |reference: &str| -> Result<&Network, ManagerError> {
        let names = networks.iter().map(|n| (n.id.as_str(), n.name.as_str()));
        Ok(&networks[resolve::resolve("network", reference, names)?])
    };
    let (tasks, nodes): (Vec<Task>, Vec<Node>) = (store.all()?, store.nodes()?);
    for reference in &request.network_add {
        let network = network_of(reference)?;
        if changed.network_ids.contains(&network.id) {
            return Err(ManagerError::Refused(format!(
                "service {} is already attached to network {}",
                changed.name, network.name
            )));
        }
        attach(store, changed, network, &taken_addresses(network, others, &tasks, &nodes), batch)?;
    }
    for reference in &request.network_rm {
        let network = network_of(reference)?;
        if !changed.network_ids.contains(&network.id) {
            return Err(ManagerError::Refused(format!(
                "service {} is not attached to network {}",
                changed.name, network.name
            )));
        }
        if changed.network_ids.len() == 1 && !changed.ports.is_empty() {
            return Err(ManagerError::Refused(format!(
                "network {} is the only network of service {}, which publishes ports: remove its ports (--publish-rm) or add another network first",
                network.name, changed.name
            )));
        }
        changed.network_ids.retain(|id| *id != network.id);
        changed.virtual_ips.retain(|v| v.network_id != network.id);
        changed.aliases.retain(|a| a.network != network.id);
    }
    Ok(())
}

/// Attaches `service` to `network`: room for its tasks, and a VIP unless
/// its endpoint mode is dnsrr (where the allocation goes on from is
/// recorded in `batch`).
fn attach(
    store: &Store,
    service: &mut Service,
    network: &Network,
    taken: &HashSet<Ipv4Addr>,
    batch: &mut Batch,
) -> Result<(), ManagerError> {
    if network.ingress {
        return Err(ManagerError::Refused(format!(
            "network {} is the routing mesh's and is attached through --publish, not --network",
            network.name
        )));
    }
    service.network_ids.push(network.id.clone());
    if service.endpoint_mode() == EndpointMode::Dnsrr {
        return ensure_room(network, taken, service.replicas as usize);
    }
    ensure_room(network, taken, service.replicas as usize + 1)?;
    let last = address_cursors::read_one(store, &network.id)?;
    let vip = addresses::next_free(subnet_of(network)?, taken, last).expect("room was checked");
    address_cursors::record(batch, &network.id, vip);
    service.virtual_ips.push(VirtualIp { network_id: network.id.clone(), address: vip.to_string() });
    Ok(())
}

/// Removes a service and its tasks (agents stop them on their next pass);
/// tasks beyond what one commit holds are the orchestrator's to delete.
pub async fn remove(store: &Store, reference: &str) -> Result<Service, ManagerError> {
    crate::store::retrying(|| remove_once(store, reference)).await
}

async fn remove_once(store: &Store, reference: &str) -> Result<Service, ManagerError> {
    let mut writer = store.write_lock().await;
    let service = find(store, reference)?;
    let mut batch = crate::store::Batch::new();
    batch.delete::<Service>(&service.id);
    let own = store.all::<Task>()?.into_iter().filter(|t| t.service_id == service.id);
    for task in own.take(crate::store::MAX_CHANGES_PER_COMMIT - 1) {
        batch.delete::<Task>(&task.id);
    }
    writer.commit(batch).await?;
    Ok(service)
}

/// The networks a service's tasks attach to, in order: the ingress network
/// first when it publishes ports through the routing mesh (as in Swarm),
/// then its own.
pub fn attached_networks<'a>(service: &'a Service, networks: &'a [Network]) -> Vec<&'a Network> {
    let ingress = networks.iter().filter(|n| n.ingress && service.ports.iter().any(PortConfig::is_ingress));
    let own = service.network_ids.iter().filter_map(|id| networks.iter().find(|n| &n.id == id));
    ingress.chain(own).collect()
}

/// The name `service ps` gives a task: `<service>.<slot>`, or
/// `<service>.<node ID>` for a global service's task (it has no slot).
pub fn task_name(service: &Service, task: &Task) -> String {
    match task.slot {
        GLOBAL_SLOT => format!("{}.{}", service.name, task.node_id),
        slot => format!("{}.{slot}", service.name),
    }
}

/// The slot of every task of a global service: its node tells them apart.
pub const GLOBAL_SLOT: u32 = 0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::networks::{self, AddressPool};
    use netctl_proto::NetworkCreateRequest;
    use std::collections::HashMap;

    async fn create(store: &Store, request: &ServiceCreateRequest) -> Result<Service, ManagerError> {
        super::create(store, request, &ReservedPorts::new(4243, 4789)).await
    }

    async fn store_with_network(subnet: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        networks::ensure_ingress(&store).await.unwrap();
        let pool = AddressPool { pool: "10.0.0.0/8".parse().unwrap(), mask_length: 24 };
        let request =
            NetworkCreateRequest { name: "demonet".into(), subnet: subnet.into(), ..Default::default() };
        networks::create(&store, pool, &request).await.unwrap();
        (dir, store)
    }

    fn request(name: &str, replicas: u32) -> ServiceCreateRequest {
        ServiceCreateRequest {
            name: name.into(),
            replicas,
            networks: vec!["demonet".into()],
            command: vec!["sleep".into(), "10000".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_first_service_gets_vip_2_and_names_are_unique() {
        let (_dir, store) = store_with_network("192.168.200.0/24").await;
        let service = create(&store, &request("demoservice", 2)).await.unwrap();
        assert_eq!(service.virtual_ips[0].address, "192.168.200.2");
        let second = create(&store, &request("other", 1)).await.unwrap();
        assert_eq!(second.virtual_ips[0].address, "192.168.200.3");
        assert!(matches!(
            create(&store, &request("demoservice", 1)).await,
            Err(ManagerError::NameTaken { .. })
        ));
    }

    #[tokio::test]
    async fn a_removed_service_vip_is_not_handed_out_again_after_a_restart() {
        let (dir, store) = store_with_network("192.168.200.0/29").await;
        let first = create(&store, &request("first", 0)).await.unwrap();
        assert_eq!(first.virtual_ips[0].address, "192.168.200.2");
        remove(&store, "first").await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let mut vips = Vec::new();
        for name in ["a", "b", "c", "d", "e"] {
            vips.push(create(&store, &request(name, 0)).await.unwrap().virtual_ips[0].address.clone());
        }
        // .2 comes back only once .3 to .6 were handed out.
        assert_eq!(
            vips,
            ["192.168.200.3", "192.168.200.4", "192.168.200.5", "192.168.200.6", "192.168.200.2"]
        );
    }

    #[tokio::test]
    async fn published_ports_are_assigned_and_conflicts_refused() {
        let (_dir, store) = store_with_network("192.168.200.0/24").await;
        let port = |published| netctl_proto::PortConfig {
            protocol: "tcp".into(),
            published_port: published,
            target_port: 80,
            ..Default::default()
        };
        let web =
            create(&store, &ServiceCreateRequest { ports: vec![port(8080), port(0)], ..request("web", 2) })
                .await
                .unwrap();
        assert_eq!(web.ports.iter().map(|p| p.published_port).collect::<Vec<_>>(), [8080, 30000]);
        let clash =
            create(&store, &ServiceCreateRequest { ports: vec![port(8080)], ..request("other", 1) }).await;
        assert!(clash.unwrap_err().to_string().contains("already published by service web"));
    }

    #[tokio::test]
    async fn dnsrr_services_get_no_vip_and_publish_no_port() {
        let (_dir, store) = store_with_network("192.168.200.0/24").await;
        let dnsrr = ServiceCreateRequest { endpoint_mode: EndpointMode::Dnsrr.into(), ..request("db", 2) };
        let db = create(&store, &dnsrr).await.unwrap();
        assert!(db.virtual_ips.is_empty());
        assert_eq!(db.network_ids.len(), 1);
        let port = netctl_proto::PortConfig {
            protocol: "tcp".into(),
            published_port: 8080,
            target_port: 80,
            ..Default::default()
        };
        let published = ServiceCreateRequest { ports: vec![port], ..dnsrr.clone() };
        let refused = create(&store, &ServiceCreateRequest { name: "db2".into(), ..published }).await;
        assert!(refused.unwrap_err().to_string().contains("dnsrr"));
        let odd = ServiceCreateRequest { endpoint_mode: 7, ..request("db3", 1) };
        assert!(create(&store, &odd).await.unwrap_err().to_string().contains("invalid endpoint mode 7"));
        assert_eq!(store.all::<Service>().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn aliases_are_dns_labels_on_the_services_networks_and_unique_there() {
        let (_dir, store) = store_with_network("192.168.200.0/24").await;
        let alias =
            |network: &str, name: &str| NetworkAlias { network: network.into(), aliases: vec![name.into()] };
        let web = ServiceCreateRequest { aliases: vec![alias("demonet", "www")], ..request("web", 1) };
        let web = create(&store, &web).await.unwrap();
        assert_eq!(web.aliases, [alias(&web.network_ids[0], "www")]);
        let cases = [
            (alias("demonet", "web"), "taken on network demonet by service web"),
            (alias("demonet", "WWW"), "taken on network demonet by service web"),
            (alias("demonet", "bad_label"), "invalid alias"),
            (alias("ingress", "x"), "not attached"),
            (alias("nonet", "x"), "network nonet not found"),
        ];
        for (bad, expected) in cases {
            let request = ServiceCreateRequest { aliases: vec![bad], ..request("api", 1) };
            let error = create(&store, &request).await.unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        // A new service named like an existing alias on the same network.
        let error = create(&store, &request("www", 1)).await.unwrap_err().to_string();
        assert!(error.contains("name www is taken on network demonet"), "{error}");
        assert_eq!(store.all::<Service>().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_services_are_refused_naming_the_problem() {
        let (_dir, store) = store_with_network("10.9.0.0/29").await;
        let unknown = ServiceCreateRequest { networks: vec!["nonet".into()], ..request("s", 1) };
        assert!(create(&store, &unknown).await.unwrap_err().to_string().contains("network nonet not found"));
        let empty = ServiceCreateRequest { command: vec![], ..request("s", 1) };
        assert!(create(&store, &empty).await.unwrap_err().to_string().contains("needs a command"));
        // A /29 has 6 hosts: gateway + VIP + 4 tasks.
        let full = create(&store, &request("s", 5)).await.unwrap_err().to_string();
        assert!(full.contains("network demonet") && full.contains("no free address"), "{full}");
        create(&store, &request("s", 4)).await.unwrap();
        let ingress = ServiceCreateRequest { networks: vec!["ingress".into()], ..request("t", 1) };
        assert!(create(&store, &ingress).await.is_err());
        assert_eq!(store.all::<Service>().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_state_too_large_for_a_node_is_refused_at_the_change() {
        let (_dir, store) = store_with_network("10.8.0.0/16").await;
        let big_env = HashMap::from([("BLOB".to_string(), "x".repeat(100_000))]);
        let big = ServiceCreateRequest { env: big_env, ..request("big", 1000) };
        let refused = create(&store, &big).await.unwrap_err().to_string();
        assert!(refused.contains("desired state") && refused.contains("64 MiB"), "{refused}");
        assert!(store.all::<Service>().unwrap().is_empty());
        let small = create(&store, &ServiceCreateRequest { replicas: 10, ..big }).await.unwrap();
        let scaled = scale(&store, &small.name, 1000).await.unwrap_err().to_string();
        assert!(scaled.contains("desired state"), "{scaled}");
        assert_eq!(store.all::<Service>().unwrap()[0].replicas, 10);
        assert!(scale(&store, &small.name, 1_000_000)
            .await
            .unwrap_err()
            .to_string()
            .contains("at most 100000"));
    }
}
