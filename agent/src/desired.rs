//! The kernel the desired state asks for (pure): a [`KernelModel`] built
//! from the node's [`NodeState`], piece by piece in the walkthrough's words:
//! the `network` (overlay namespace, br0, vxlan0), its `peer` entries, each
//! task's `sandbox` with its `endpoint` legs, `docker_gwbridge`, the
//! `ingress` sandbox and each sandbox's `nat` table (resolver port, VIPs). Node-local choices are made here
//! too: each sandbox's docker_gwbridge address, against what the kernel
//! holds.

use crate::mesh;
use crate::model::{KernelModel, LinkKind, LinkModel, NamespaceModel, RuleSet, HOST};
use crate::names::{self, GWBRIDGE, INGRESS_SANDBOX, OVERLAY_BRIDGE, VXLAN};
use ipnetwork::Ipv4Network;
use netctl_proto::convention::{
    GATEWAY_BRIDGE_GATEWAY, GATEWAY_BRIDGE_PREFIX, INGRESS_SANDBOX_GATEWAY_ADDRESS,
};
use netctl_proto::{Network, NodeState, TaskSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

/// The overhead of VXLAN encapsulation on the underlay MTU.
const VXLAN_OVERHEAD: u32 = 50;

/// What the node itself contributes to its desired kernel.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node's data-path address (VXLAN `local`).
    pub local: Ipv4Addr,
    /// The MTU of the interface carrying it.
    pub underlay_mtu: u32,
    /// Whether docker_gwbridge can be netctl's (no foreign bridge holds the
    /// name).
    pub gateway_bridge: bool,
    /// Whether the kernel has br_netfilter (then every new namespace passes
    /// bridged frames through its iptables, unless told not to).
    pub bridge_netfilter: bool,
}

/// The desired kernel and why some tasks cannot have their sandbox.
#[derive(Debug, Default)]
pub struct Desired {
    /// The kernel to converge to.
    pub model: KernelModel,
    /// Tasks whose sandbox cannot be built, and why, by task ID.
    pub refused: HashMap<String, String>,
    /// How the node serves each published port (empty without ingress).
    pub routes: Vec<mesh::PortRoute>,
    /// The host end of each sandbox's docker_gwbridge veth, by the
    /// sandbox's docker_gwbridge address.
    pub gateway_veths: HashMap<Ipv4Addr, String>,
}

/// Builds the desired kernel. `observed` gives the gateway-bridge addresses
/// sandboxes hold already; `kept` the sandboxes to leave alone while their
/// tasks stop.
pub fn build(
    state: &NodeState,
    facts: &NodeFacts,
    observed: &KernelModel,
    kept: &BTreeSet<String>,
) -> Desired {
    let mut desired = Desired::default();
    let model = &mut desired.model;
    model.keep = kept.clone();
    keep_legs_of_leaving_sandboxes(model, state, observed);
    let mut host = NamespaceModel::default();
    if facts.gateway_bridge {
        crate::gwbridge::model(&mut host, facts.underlay_mtu);
    }
    crate::datapath::model(&mut host, data_path_port(state), &state.cluster_nodes);
    model.namespaces.insert(HOST.to_string(), host);
    let networks: BTreeMap<&str, &Network> =
        state.networks.iter().filter_map(|a| a.network.as_ref()).map(|n| (n.id.as_str(), n)).collect();
    for network in networks.values() {
        let mut namespace = overlay(network, facts, data_path_port(state));
        peers(&mut namespace, state, &network.id);
        model.namespaces.insert(names::overlay_namespace(&network.id), namespace);
    }
    let gateway_addresses = assign_gateway_addresses(state, held_gateway_addresses(observed));
    for task in &state.tasks {
        let gateway = facts
            .gateway_bridge
            .then(|| gateway_addresses.get(&names::sandbox_namespace(&task.id)))
            .flatten();
        match sandbox_legs(task, &networks) {
            Ok(legs) => {
                let name = names::sandbox_namespace(&task.id);
                sandbox(model, &name, &task.id, &legs, gateway.copied(), facts);
                nat(model, state, task, &name);
            }
            Err(reason) => {
                desired.refused.insert(task.id.clone(), reason);
            }
        }
    }
    desired.gateway_veths =
        gateway_addresses.iter().map(|(sandbox, address)| (*address, names::gateway_veth(sandbox))).collect();
    let host_ports = host_ports(state, &gateway_addresses);
    ingress(&mut desired, state, &networks, facts, &host_ports, &gateway_addresses);
    desired
}

/// The ingress address → docker_gwbridge address of each task of the node
/// on the ingress network.
fn ingress_replicas(
    state: &NodeState,
    ingress_network: &str,
    gateway_addresses: &HashMap<String, Ipv4Addr>,
) -> HashMap<String, Ipv4Addr> {
    let mut replicas = HashMap::new();
    for task in &state.tasks {
        let Some(gateway) = gateway_addresses.get(&names::sandbox_namespace(&task.id)) else { continue };
        for endpoint in task.endpoints.iter().filter(|e| e.network_id == ingress_network) {
            replicas.insert(endpoint.address.clone(), *gateway);
        }
    }
    replicas
}

/// The node (data-path address) of each replica on another node, by its
/// ingress address.
fn replica_nodes(state: &NodeState, ingress_network: &str) -> HashMap<String, Ipv4Addr> {
    state
        .remote_endpoints
        .iter()
        .filter(|e| e.network_id == ingress_network)
        .filter_map(|e| Some((e.address.clone(), e.node_addr.parse().ok()?)))
        .collect()
}

/// The host-mode ports of the node's tasks, each sent to its task's
/// docker_gwbridge address.
fn host_ports(state: &NodeState, gateway_addresses: &HashMap<String, Ipv4Addr>) -> Vec<mesh::HostPort> {
    let mut ports = Vec::new();
    for task in &state.tasks {
        let Some(address) = gateway_addresses.get(&names::sandbox_namespace(&task.id)) else { continue };
        ports.extend(task.host_ports.iter().map(|port| mesh::HostPort {
            protocol: port.protocol.clone(),
            published_port: port.published_port,
            target_port: port.target_port,
            address: *address,
        }));
    }
    ports
}

/// The nat table of a sandbox: its resolver's port, and each service VIP
/// of its networks balanced over the service's running tasks.
fn nat(model: &mut KernelModel, state: &NodeState, task: &TaskSpec, name: &str) {
    let vips: Vec<_> = state
        .service_vips
        .iter()
        .filter(|vip| !vip.backends.is_empty())
        .filter(|vip| task.endpoints.iter().any(|e| e.network_id == vip.network_id))
        .collect();
    let namespace = model.namespaces.entry(name.to_string()).or_default();
    namespace.rules.insert("nat".into(), RuleSet::tables(mesh::sandbox_rules(&vips)));
}

/// The legs (overlay and docker_gwbridge ends) of every sandbox that is no
/// longer wanted are left alone: a task being stopped keeps its network
/// through its grace period, and the kernel removes them with the sandbox
/// (far cheaper than deleting each veth).
fn keep_legs_of_leaving_sandboxes(model: &mut KernelModel, state: &NodeState, observed: &KernelModel) {
    let wanted: BTreeSet<String> = state.tasks.iter().map(|t| names::sandbox_namespace(&t.id)).collect();
    let leaving = observed.namespaces.keys().filter(|name| {
        *name != HOST
            && *name != INGRESS_SANDBOX
            && !names::is_overlay_namespace(name)
            && !wanted.contains(*name)
    });
    for sandbox in leaving {
        model.keep_links.insert((HOST.to_string(), names::gateway_veth(sandbox)));
        let prefix = names::overlay_veth_prefix(sandbox);
        for (namespace, found) in observed.namespaces.iter().filter(|(n, _)| names::is_overlay_namespace(n)) {
            for link in found.links.keys().filter(|l| l.starts_with(&prefix)) {
                model.keep_links.insert((namespace.clone(), link.clone()));
            }
        }
    }
}

/// An overlay's namespace: br0 with the gateway, vxlan0 enslaved to it.
fn overlay(network: &Network, facts: &NodeFacts, port: u16) -> NamespaceModel {
    let mtu = overlay_mtu(network, facts);
    let mut namespace = NamespaceModel::default();
    let mut bridge = LinkModel::new(LinkKind::Bridge);
    bridge.mtu = Some(mtu);
    bridge.up = true;
    if let (Ok(gateway), Ok(subnet)) = (network.gateway.parse(), network.subnet.parse::<Ipv4Network>()) {
        bridge.addresses.insert((gateway, subnet.prefix()));
    }
    namespace.links.insert(OVERLAY_BRIDGE.to_string(), bridge);
    let mut vxlan =
        LinkModel::new(LinkKind::Vxlan { vni: network.vni, port, local: facts.local, learning: false });
    vxlan.mtu = Some(mtu);
    vxlan.up = true;
    vxlan.master = Some(OVERLAY_BRIDGE.to_string());
    namespace.links.insert(VXLAN.to_string(), vxlan);
    if facts.bridge_netfilter {
        // br0 only switches: frames need no iptables pass (on the path of
        // every packet to or from a task, twice across nodes).
        namespace.sysctls.insert(netlib::sysctl::BRIDGE_NETFILTER.into(), "0".into());
    }
    namespace
}

/// The cluster's VXLAN port (4789 unless the cluster set another).
fn data_path_port(state: &NodeState) -> u16 {
    u16::try_from(state.data_path_port).ok().filter(|p| *p != 0).unwrap_or(4789)
}

fn overlay_mtu(network: &Network, facts: &NodeFacts) -> u32 {
    if network.mtu != 0 {
        network.mtu
    } else {
        facts.underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    }
}

/// vxlan0's entries: every task of the network on another node, its address
/// to its MAC, its MAC to its node.
fn peers(namespace: &mut NamespaceModel, state: &NodeState, network_id: &str) {
    for endpoint in state.remote_endpoints.iter().filter(|e| e.network_id == network_id) {
        let (Ok(address), Ok(node), Some(mac)) = (
            endpoint.address.parse::<Ipv4Addr>(),
            endpoint.node_addr.parse::<Ipv4Addr>(),
            netlib::neigh::parse_mac(&endpoint.mac),
        ) else {
            continue;
        };
        namespace.neighbours.insert((address, mac));
        namespace.fdb.insert((mac, node));
    }
}

/// One overlay leg of a sandbox: its network and address.
struct Leg<'a> {
    network: &'a Network,
    address: Ipv4Addr,
}

/// A task's overlay legs in attach order, or why it cannot have them.
fn sandbox_legs<'a>(task: &TaskSpec, networks: &BTreeMap<&str, &'a Network>) -> Result<Vec<Leg<'a>>, String> {
    task.endpoints
        .iter()
        .map(|endpoint| {
            let network = networks
                .get(endpoint.network_id.as_str())
                .ok_or_else(|| format!("network {} is not in the desired state", endpoint.network_id))?;
            let address = endpoint
                .address
                .parse()
                .map_err(|_| format!("invalid endpoint address {}", endpoint.address))?;
            Ok(Leg { network, address })
        })
        .collect()
}

/// A sandbox `namespace`: `eth0…` on its overlays (each a veth whose other
/// end is a port of the overlay's br0), then its docker_gwbridge leg with
/// the default route. `owner` names its veths (a task ID, or ingress_sbox).
fn sandbox(
    model: &mut KernelModel,
    namespace: &str,
    owner: &str,
    legs: &[Leg],
    gateway: Option<Ipv4Addr>,
    facts: &NodeFacts,
) {
    let mut inside = NamespaceModel::default();
    let mut loopback = LinkModel::new(LinkKind::Loopback);
    loopback.up = true;
    inside.links.insert("lo".into(), loopback);
    for (index, leg) in legs.iter().enumerate() {
        let overlay_namespace = names::overlay_namespace(&leg.network.id);
        let prefix = leg.network.subnet.parse::<Ipv4Network>().map_or(24, |s| s.prefix());
        let outer = names::overlay_veth(owner, index);
        let inner = names::sandbox_interface(index);
        let mtu = overlay_mtu(leg.network, facts);
        let outer_link = endpoint(namespace, &inner, mtu, None, Some(OVERLAY_BRIDGE), false);
        model
            .namespaces
            .entry(overlay_namespace.clone())
            .or_default()
            .links
            .insert(outer.clone(), outer_link);
        let mut inner_link = endpoint(&overlay_namespace, &outer, mtu, Some(leg.address), None, false);
        inner_link.addresses.insert((leg.address, prefix));
        inside.links.insert(inner, inner_link);
    }
    if let Some(address) = gateway {
        let outer = names::gateway_veth(owner);
        let inner = names::sandbox_interface(legs.len());
        // Tasks' ports are isolated from each other; ingress_sbox's is not,
        // so that tasks reach their own node's published ports through it.
        let isolated = owner != INGRESS_SANDBOX;
        let outer_link = endpoint(namespace, &inner, facts.underlay_mtu, None, Some(GWBRIDGE), isolated);
        model.namespaces.entry(HOST.to_string()).or_default().links.insert(outer.clone(), outer_link);
        let mut inner_link = endpoint(HOST, &outer, facts.underlay_mtu, Some(address), None, false);
        inner_link.addresses.insert((address, GATEWAY_BRIDGE_PREFIX));
        inside.links.insert(inner, inner_link);
        inside.default_gateway = Some(GATEWAY_BRIDGE_GATEWAY);
    }
    let existing = model.namespaces.entry(namespace.to_string()).or_default();
    existing.links.extend(inside.links);
    existing.default_gateway = inside.default_gateway;
}

/// One end of an endpoint's veth pair (the inner end carries the endpoint
/// MAC derived from `address`; the outer end is a bridge port).
fn endpoint(
    peer_namespace: &str,
    peer: &str,
    mtu: u32,
    address: Option<Ipv4Addr>,
    bridge: Option<&str>,
    isolated: bool,
) -> LinkModel {
    let kind = LinkKind::Veth { peer_namespace: peer_namespace.to_string(), peer: peer.to_string() };
    let mut link = LinkModel::new(kind);
    link.mtu = Some(mtu);
    link.up = true;
    link.master = bridge.map(str::to_string);
    link.isolated = isolated;
    link.mac = address.map(netctl_proto::convention::endpoint_mac);
    link
}

/// ingress_sbox: eth0 on the ingress overlay (this node's ingress address),
/// eth1 = 172.18.0.2 on docker_gwbridge, forwarding on, the published
/// ports balanced over their replicas elsewhere; and the host's rules
/// sending published ports to their replicas here, to the other nodes that
/// run them and to ingress_sbox, and host-mode ports straight to their
/// tasks.
fn ingress(
    desired: &mut Desired,
    state: &NodeState,
    networks: &BTreeMap<&str, &Network>,
    facts: &NodeFacts,
    host_ports: &[mesh::HostPort],
    gateway_addresses: &HashMap<String, Ipv4Addr>,
) {
    let Some(network) = networks.values().find(|n| n.ingress) else { return };
    let Ok(address) = state.ingress_address.parse::<Ipv4Addr>() else { return };
    if !facts.gateway_bridge {
        return;
    }
    let legs = [Leg { network, address }];
    sandbox(
        &mut desired.model,
        INGRESS_SANDBOX,
        INGRESS_SANDBOX,
        &legs,
        Some(INGRESS_SANDBOX_GATEWAY_ADDRESS),
        facts,
    );
    let namespace = desired.model.namespaces.entry(INGRESS_SANDBOX.to_string()).or_default();
    namespace.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    let here = ingress_replicas(state, &network.id, gateway_addresses);
    let routes = mesh::port_routes(&state.published_ports, &here, &replica_nodes(state, &network.id));
    let text = mesh::ingress_sandbox_rules(&routes, &state.ingress_address, &network.subnet);
    namespace.rules.insert("mesh".into(), RuleSet::tables(text));
    let host = desired.model.namespaces.entry(HOST.to_string()).or_default();
    let peers: Vec<Ipv4Addr> = state.cluster_nodes.iter().filter_map(|n| n.parse().ok()).collect();
    let text = mesh::host_rules(&routes, host_ports, facts.local, &peers);
    host.rules.insert("mesh".into(), RuleSet::chains(text, mesh::HOST_JUMPS));
    desired.routes = routes;
}

/// The docker_gwbridge address every sandbox holds now, by sandbox name
/// (ingress_sbox's fixed one aside).
fn held_gateway_addresses(observed: &KernelModel) -> HashMap<String, Ipv4Addr> {
    let subnet = Ipv4Network::new(GATEWAY_BRIDGE_GATEWAY, GATEWAY_BRIDGE_PREFIX).expect("valid subnet");
    observed
        .namespaces
        .iter()
        .filter(|(name, _)| *name != HOST && *name != INGRESS_SANDBOX && !names::is_overlay_namespace(name))
        .filter_map(|(name, namespace)| {
            let address = namespace
                .links
                .values()
                .flat_map(|l| &l.addresses)
                .map(|(a, _)| *a)
                .find(|a| subnet.contains(*a))?;
            Some((name.clone(), address))
        })
        .collect()
}

/// The gateway-bridge address of every task's sandbox, by sandbox name:
/// the one it holds already (`held`, which also lists sandboxes on their way
/// out), or else the lowest address after 172.18.0.2 (ingress_sbox's) that
/// no sandbox holds and no other task of this pass was given.
fn assign_gateway_addresses(
    state: &NodeState,
    mut held: HashMap<String, Ipv4Addr>,
) -> HashMap<String, Ipv4Addr> {
    let mut taken: BTreeSet<Ipv4Addr> = held.values().copied().collect();
    let mut candidates = (u32::from(GATEWAY_BRIDGE_GATEWAY) + 2
        ..=u32::from(Ipv4Addr::new(172, 18, 255, 254)))
        .map(Ipv4Addr::from);
    for task in &state.tasks {
        let sandbox = names::sandbox_namespace(&task.id);
        if held.contains_key(&sandbox) {
            continue;
        }
        if let Some(address) = candidates.by_ref().find(|a| !taken.contains(a)) {
            taken.insert(address);
            held.insert(sandbox, address);
        }
    }
    held
}
