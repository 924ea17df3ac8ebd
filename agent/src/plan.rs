//! The step between observing and applying (pure): what to do to turn the
//! kernel as observed into the kernel as desired, as typed actions in an
//! order the kernel accepts: namespaces, bridges, tunnels and veth pairs
//! before what is set on them; stale links before their replacements;
//! namespaces removed last. A converged node plans nothing.

use crate::model::{KernelModel, LinkKind, LinkModel, NamespaceModel, RuleSet, HOST};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make a network namespace under the run dir.
    CreateNamespace(String),
    /// Remove a namespace netctl made (and everything in it).
    DeleteNamespace(String),
    /// Make a bridge.
    CreateBridge { namespace: String, name: String, mtu: u32 },
    /// Make a VXLAN device: in the host namespace (its socket lives there),
    /// then moved into `namespace` and renamed `name`.
    CreateVxlan { namespace: String, name: String, vni: u32, port: u16, local: Ipv4Addr, mtu: u32 },
    /// Make a veth pair with its inner end born in `inner_namespace`.
    CreateVeth {
        namespace: String,
        name: String,
        inner_namespace: String,
        inner: String,
        mtu: u32,
        inner_mac: Option<[u8; 6]>,
    },
    /// Delete a link.
    DeleteLink { namespace: String, name: String },
    /// Set a link's MTU.
    SetMtu { namespace: String, name: String, mtu: u32 },
    /// Enslave a link to a bridge.
    SetMaster { namespace: String, name: String, bridge: String },
    /// Isolate a bridge port, or no longer.
    SetIsolated { namespace: String, name: String, isolated: bool },
    /// Add an address to a link.
    AddAddress { namespace: String, name: String, address: Ipv4Addr, prefix: u8 },
    /// Bring a link up.
    SetUp { namespace: String, name: String },
    /// Set the default route.
    SetDefaultRoute { namespace: String, gateway: Ipv4Addr },
    /// Write (replace) a neighbour entry on vxlan0.
    ReplaceNeighbour { namespace: String, address: Ipv4Addr, mac: [u8; 6] },
    /// Delete a neighbour entry on vxlan0.
    DeleteNeighbour { namespace: String, address: Ipv4Addr, mac: [u8; 6] },
    /// Write (replace) an FDB entry on vxlan0.
    ReplaceFdb { namespace: String, mac: [u8; 6], node: Ipv4Addr },
    /// Delete an FDB entry on vxlan0.
    DeleteFdb { namespace: String, mac: [u8; 6], node: Ipv4Addr },
    /// Set a sysctl.
    SetSysctl { namespace: String, key: String, value: String },
    /// Write a rule set whole.
    WriteRules { namespace: String, purpose: String, rules: RuleSet },
}

impl Action {
    /// Every namespace the action changes (a veth pair: both).
    pub fn namespaces(&self) -> Vec<&str> {
        match self {
            Action::CreateVeth { namespace, inner_namespace, .. } => vec![namespace, inner_namespace],
            other => vec![other.namespace()],
        }
    }

    /// The link the action is about, if it is about one.
    pub fn link(&self) -> Option<&str> {
        match self {
            Action::CreateBridge { name, .. }
            | Action::CreateVxlan { name, .. }
            | Action::CreateVeth { name, .. }
            | Action::DeleteLink { name, .. }
            | Action::SetMtu { name, .. }
            | Action::SetMaster { name, .. }
            | Action::SetIsolated { name, .. }
            | Action::AddAddress { name, .. }
            | Action::SetUp { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The namespace the action changes (a veth pair: its outer end's).
    pub fn namespace(&self) -> &str {
        match self {
            Action::CreateNamespace(namespace) | Action::DeleteNamespace(namespace) => namespace,
            Action::CreateBridge { namespace, .. }
            | Action::CreateVxlan { namespace, .. }
            | Action::CreateVeth { namespace, .. }
            | Action::DeleteLink { namespace, .. }
            | Action::SetMtu { namespace, .. }
            | Action::SetMaster { namespace, .. }
            | Action::SetIsolated { namespace, .. }
            | Action::AddAddress { namespace, .. }
            | Action::SetUp { namespace, .. }
            | Action::SetDefaultRoute { namespace, .. }
            | Action::ReplaceNeighbour { namespace, .. }
            | Action::DeleteNeighbour { namespace, .. }
            | Action::ReplaceFdb { namespace, .. }
            | Action::DeleteFdb { namespace, .. }
            | Action::SetSysctl { namespace, .. }
            | Action::WriteRules { namespace, .. } => namespace,
        }
    }
}

/// Whether a link is not there (or is being made anew) before the plan's
/// creations.
fn missing(
    observed: &KernelModel,
    recreated: &BTreeSet<(String, String)>,
    namespace: &str,
    name: &str,
) -> bool {
    recreated.contains(&(namespace.to_string(), name.to_string()))
        || observed_link(observed, namespace, name).is_none()
}

/// What a link looks like where it should be, or nothing.
fn observed_link<'a>(observed: &'a KernelModel, namespace: &str, name: &str) -> Option<&'a LinkModel> {
    observed.namespaces.get(namespace)?.links.get(name)
}

/// Whether an observed link is the desired one (same kind and identity;
/// properties are fixed in place).
fn same_link(desired: &LinkModel, observed: &LinkModel) -> bool {
    match (&desired.kind, &observed.kind) {
        (LinkKind::Veth { .. }, LinkKind::Veth { .. }) => {
            desired.mac.is_none() || desired.mac == observed.mac
        }
        (wanted, found) => wanted == found,
    }
}

/// The actions that turn `observed` into `desired`: new namespaces; wrong
/// links deleted; bridges, tunnels and veth pairs made; every link's and
/// namespace's properties set; namespaces no longer wanted deleted.
pub fn plan(desired: &KernelModel, observed: &KernelModel) -> Vec<Action> {
    let mut actions = Vec::new();
    for name in desired.namespaces.keys().filter(|n| *n != HOST && !observed.namespaces.contains_key(*n)) {
        actions.push(Action::CreateNamespace(name.clone()));
    }
    let mut recreated = delete_stale_links(desired, observed, &mut actions);
    create_bridges_and_tunnels(desired, observed, &recreated, &mut actions);
    let new_pairs = create_veth_pairs(desired, observed, &recreated, &mut actions);
    recreated.extend(new_pairs);
    let empty = NamespaceModel::default();
    for (namespace, wanted) in &desired.namespaces {
        let found = observed.namespaces.get(namespace).unwrap_or(&empty);
        for (name, link) in &wanted.links {
            let new = missing(observed, &recreated, namespace, name);
            let current = if new { None } else { found.links.get(name) };
            link_properties(&mut actions, namespace, name, link, current);
        }
        namespace_properties(&mut actions, namespace, wanted, found);
    }
    for namespace in observed.namespaces.keys() {
        if *namespace != HOST
            && !desired.namespaces.contains_key(namespace)
            && !desired.keep.contains(namespace)
        {
            actions.push(Action::DeleteNamespace(namespace.clone()));
        }
    }
    actions
}

/// Deletes the links that are wrong or should not be there, first: their
/// names are free again for what replaces them. Returns them as
/// (namespace, name).
fn delete_stale_links(
    desired: &KernelModel,
    observed: &KernelModel,
    actions: &mut Vec<Action>,
) -> BTreeSet<(String, String)> {
    let mut recreated = BTreeSet::new();
    for (namespace, found) in &observed.namespaces {
        let Some(wanted) = desired.namespaces.get(namespace) else { continue };
        for (name, link) in &found.links {
            if desired.keep_links.contains(&(namespace.clone(), name.clone())) {
                continue;
            }
            let stale = match wanted.links.get(name) {
                None => !matches!(link.kind, LinkKind::Loopback | LinkKind::Other) || namespace == HOST,
                Some(want) => !same_link(want, link),
            };
            if stale {
                actions.push(Action::DeleteLink { namespace: namespace.clone(), name: name.clone() });
                recreated.insert((namespace.clone(), name.clone()));
            }
        }
    }
    recreated
}

/// Makes the missing bridges, then the missing VXLAN tunnels (before the
/// veth pairs, whose ends are enslaved to the bridges).
fn create_bridges_and_tunnels(
    desired: &KernelModel,
    observed: &KernelModel,
    recreated: &BTreeSet<(String, String)>,
    actions: &mut Vec<Action>,
) {
    for (namespace, wanted) in &desired.namespaces {
        for (name, link) in wanted.links.iter().filter(|(_, l)| l.kind == LinkKind::Bridge) {
            if missing(observed, recreated, namespace, name) {
                let mtu = link.mtu.unwrap_or(1500);
                actions.push(Action::CreateBridge { namespace: namespace.clone(), name: name.clone(), mtu });
            }
        }
    }
    for (namespace, wanted) in &desired.namespaces {
        for (name, link) in &wanted.links {
            if let LinkKind::Vxlan { vni, port, local, .. } = link.kind {
                if missing(observed, recreated, namespace, name) {
                    let mtu = link.mtu.unwrap_or(1450);
                    let (namespace, name) = (namespace.clone(), name.clone());
                    actions.push(Action::CreateVxlan { namespace, name, vni, port, local, mtu });
                }
            }
        }
    }
}

/// Makes every veth pair one of whose ends is missing, once, from its
/// outer end (the one without a MAC); the end still there is deleted
/// first. Returns both ends of each new pair as (namespace, name).
fn create_veth_pairs(
    desired: &KernelModel,
    observed: &KernelModel,
    recreated: &BTreeSet<(String, String)>,
    actions: &mut Vec<Action>,
) -> Vec<(String, String)> {
    let mut new_pairs = Vec::new();
    for (namespace, wanted) in &desired.namespaces {
        for (name, link) in &wanted.links {
            let LinkKind::Veth { peer_namespace, peer } = &link.kind else { continue };
            if link.mac.is_some() {
                continue;
            }
            if missing(observed, recreated, namespace, name)
                || missing(observed, recreated, peer_namespace, peer)
            {
                for (ns, end) in [(namespace, name), (peer_namespace, peer)] {
                    let there = observed_link(observed, ns, end).is_some();
                    if there && !recreated.contains(&(ns.clone(), end.clone())) {
                        actions.push(Action::DeleteLink { namespace: ns.clone(), name: end.clone() });
                    }
                }
                let inner = desired.namespaces.get(peer_namespace).and_then(|n| n.links.get(peer));
                actions.push(Action::CreateVeth {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    inner_namespace: peer_namespace.clone(),
                    inner: peer.clone(),
                    mtu: link.mtu.unwrap_or(1500),
                    inner_mac: inner.and_then(|i| i.mac),
                });
                new_pairs.push((namespace.clone(), name.clone()));
                new_pairs.push((peer_namespace.clone(), peer.clone()));
            }
        }
    }
    new_pairs
}

/// What to set on a link (`current`: as observed; `None` when just made).
fn link_properties(
    actions: &mut Vec<Action>,
    namespace: &str,
    name: &str,
    link: &LinkModel,
    current: Option<&LinkModel>,
) {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    let created_with_mtu = !matches!(link.kind, LinkKind::Loopback | LinkKind::Other);
    if let Some(mtu) = link.mtu {
        let wrong = match current {
            Some(current) => current.mtu != Some(mtu),
            None => !created_with_mtu,
        };
        if wrong {
            actions.push(Action::SetMtu { namespace: namespace.clone(), name: name.clone(), mtu });
        }
    }
    if let Some(bridge) = &link.master {
        if current.is_none_or(|c| c.master.as_ref() != Some(bridge)) {
            let bridge = bridge.clone();
            actions.push(Action::SetMaster { namespace: namespace.clone(), name: name.clone(), bridge });
        }
    }
    if current.map_or(link.isolated, |c| c.isolated != link.isolated) {
        let isolated = link.isolated;
        actions.push(Action::SetIsolated { namespace: namespace.clone(), name: name.clone(), isolated });
    }
    for (address, prefix) in &link.addresses {
        if current.is_none_or(|c| !c.addresses.contains(&(*address, *prefix))) {
            let (address, prefix) = (*address, *prefix);
            actions.push(Action::AddAddress {
                namespace: namespace.clone(),
                name: name.clone(),
                address,
                prefix,
            });
        }
    }
    if link.up && current.is_none_or(|c| !c.up) {
        actions.push(Action::SetUp { namespace, name });
    }
}

/// Routes, vxlan0's entries, sysctls and rules of a namespace.
fn namespace_properties(
    actions: &mut Vec<Action>,
    namespace: &str,
    wanted: &NamespaceModel,
    found: &NamespaceModel,
) {
    let ns = || namespace.to_string();
    if let Some(gateway) = wanted.default_gateway {
        if found.default_gateway != Some(gateway) {
            actions.push(Action::SetDefaultRoute { namespace: ns(), gateway });
        }
    }
    for (address, mac) in found.neighbours.difference(&wanted.neighbours) {
        actions.push(Action::DeleteNeighbour { namespace: ns(), address: *address, mac: *mac });
    }
    for (address, mac) in wanted.neighbours.difference(&found.neighbours) {
        actions.push(Action::ReplaceNeighbour { namespace: ns(), address: *address, mac: *mac });
    }
    for (mac, node) in found.fdb.difference(&wanted.fdb) {
        actions.push(Action::DeleteFdb { namespace: ns(), mac: *mac, node: *node });
    }
    for (mac, node) in wanted.fdb.difference(&found.fdb) {
        actions.push(Action::ReplaceFdb { namespace: ns(), mac: *mac, node: *node });
    }
    for (key, value) in &wanted.sysctls {
        if found.sysctls.get(key) != Some(value) {
            actions.push(Action::SetSysctl { namespace: ns(), key: key.clone(), value: value.clone() });
        }
    }
    for (purpose, rules) in &wanted.rules {
        if found.rules.get(purpose) != Some(rules) {
            actions.push(Action::WriteRules {
                namespace: ns(),
                purpose: purpose.clone(),
                rules: rules.clone(),
            });
        }
    }
}

/// A simulated kernel for tests: applies actions to a model the way the
/// kernel would.
#[cfg(test)]
pub mod simulated {
    use super::*;

    /// Applies `actions` to `kernel`.
    pub fn apply(kernel: &mut KernelModel, actions: &[Action]) {
        for action in actions {
            apply_one(kernel, action);
        }
    }

    fn link<'a>(kernel: &'a mut KernelModel, namespace: &str, name: &str) -> &'a mut LinkModel {
        kernel
            .namespaces
            .get_mut(namespace)
            .and_then(|n| n.links.get_mut(name))
            .unwrap_or_else(|| panic!("{name} in {namespace} does not exist"))
    }

    fn add_link(kernel: &mut KernelModel, namespace: &str, name: &str, link: LinkModel) {
        let links = &mut kernel.namespaces.get_mut(namespace).expect("namespace exists").links;
        assert!(links.insert(name.to_string(), link).is_none(), "{name} in {namespace} exists already");
    }

    fn apply_one(kernel: &mut KernelModel, action: &Action) {
        match action.clone() {
            Action::CreateNamespace(name) => {
                let mut namespace = NamespaceModel::default();
                namespace.links.insert("lo".into(), LinkModel::new(LinkKind::Loopback));
                assert!(kernel.namespaces.insert(name, namespace).is_none());
            }
            Action::DeleteNamespace(name) => {
                kernel.namespaces.remove(&name).expect("namespace exists");
                // Veths die with their other end.
                for namespace in kernel.namespaces.values_mut() {
                    namespace.links.retain(|_, l| !matches!(&l.kind, LinkKind::Veth { peer_namespace, .. } if *peer_namespace == name));
                }
            }
            Action::CreateBridge { namespace, name, mtu } => {
                let link = LinkModel { mtu: Some(mtu), ..LinkModel::new(LinkKind::Bridge) };
                add_link(kernel, &namespace, &name, link);
            }
            Action::CreateVxlan { namespace, name, vni, port, local, mtu } => {
                let kind = LinkKind::Vxlan { vni, port, local, learning: false };
                let link = LinkModel { mtu: Some(mtu), ..LinkModel::new(kind) };
                add_link(kernel, &namespace, &name, link);
            }
            Action::CreateVeth { namespace, name, inner_namespace, inner, mtu, inner_mac } => {
                let outer_kind =
                    LinkKind::Veth { peer_namespace: inner_namespace.clone(), peer: inner.clone() };
                let inner_kind = LinkKind::Veth { peer_namespace: namespace.clone(), peer: name.clone() };
                add_link(
                    kernel,
                    &namespace,
                    &name,
                    LinkModel { mtu: Some(mtu), ..LinkModel::new(outer_kind) },
                );
                let inner_link = LinkModel { mtu: Some(mtu), mac: inner_mac, ..LinkModel::new(inner_kind) };
                add_link(kernel, &inner_namespace, &inner, inner_link);
            }
            Action::DeleteLink { namespace, name } => {
                let removed = kernel.namespaces.get_mut(&namespace).and_then(|n| n.links.remove(&name));
                if let Some(LinkKind::Veth { peer_namespace, peer }) = removed.map(|l| l.kind) {
                    if let Some(other) = kernel.namespaces.get_mut(&peer_namespace) {
                        other.links.remove(&peer);
                    }
                }
            }
            Action::SetMtu { namespace, name, mtu } => link(kernel, &namespace, &name).mtu = Some(mtu),
            Action::SetMaster { namespace, name, bridge } => {
                link(kernel, &namespace, &name).master = Some(bridge)
            }
            Action::SetIsolated { namespace, name, isolated } => {
                link(kernel, &namespace, &name).isolated = isolated
            }
            Action::AddAddress { namespace, name, address, prefix } => {
                link(kernel, &namespace, &name).addresses.insert((address, prefix));
            }
            Action::SetUp { namespace, name } => link(kernel, &namespace, &name).up = true,
            Action::SetDefaultRoute { namespace, gateway } => {
                kernel.namespaces.get_mut(&namespace).expect("namespace").default_gateway = Some(gateway);
            }
            Action::ReplaceNeighbour { namespace, address, mac } => {
                let entries = &mut kernel.namespaces.get_mut(&namespace).expect("namespace").neighbours;
                entries.retain(|(a, _)| *a != address);
                entries.insert((address, mac));
            }
            Action::DeleteNeighbour { namespace, address, mac } => {
                kernel.namespaces.get_mut(&namespace).expect("namespace").neighbours.remove(&(address, mac));
            }
            Action::ReplaceFdb { namespace, mac, node } => {
                let entries = &mut kernel.namespaces.get_mut(&namespace).expect("namespace").fdb;
                entries.retain(|(m, _)| *m != mac);
                entries.insert((mac, node));
            }
            Action::DeleteFdb { namespace, mac, node } => {
                kernel.namespaces.get_mut(&namespace).expect("namespace").fdb.remove(&(mac, node));
            }
            Action::SetSysctl { namespace, key, value } => {
                kernel.namespaces.get_mut(&namespace).expect("namespace").sysctls.insert(key, value);
            }
            Action::WriteRules { namespace, purpose, rules } => {
                kernel.namespaces.get_mut(&namespace).expect("namespace").rules.insert(purpose, rules);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::simulated;
    use super::*;
    use crate::desired::{self, NodeFacts};
    use crate::names;
    use netctl_proto::{
        EndpointAddress, Network, NetworkAttachment, NodeState, PublishedPort, RemoteEndpoint, TaskSpec,
    };
    use proptest::prelude::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 6);

    fn facts() -> NodeFacts {
        NodeFacts { local: LOCAL, underlay_mtu: 1500, gateway_bridge: true, bridge_netfilter: true }
    }

    fn network(i: u8) -> Network {
        Network {
            id: format!("net{i}aaaaaaaaaaaaaaaaaaaaa"),
            name: format!("net{i}"),
            subnet: format!("10.{i}.0.0/24"),
            gateway: format!("10.{i}.0.1"),
            vni: 4097 + u32::from(i),
            ..Default::default()
        }
    }

    fn task(i: u8, networks: &[u8]) -> TaskSpec {
        TaskSpec {
            id: format!("task{i:02}bbbbbbbbbbbbbbbbbbbb"),
            name: format!("web.{i}"),
            command: vec!["sleep".into(), "1000".into()],
            endpoints: networks
                .iter()
                .map(|n| EndpointAddress {
                    network_id: network(*n).id,
                    address: format!("10.{n}.0.{}", 10 + i),
                    mac: String::new(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn remote(network_index: u8, host: u8) -> RemoteEndpoint {
        let address = Ipv4Addr::new(10, network_index, 0, 100 + host);
        RemoteEndpoint {
            network_id: network(network_index).id,
            address: address.to_string(),
            mac: netctl_proto::convention::endpoint_mac_text(address),
            node_addr: format!("192.168.10.{}", 7 + host),
        }
    }

    /// A node with two overlays, three tasks, peers and the routing mesh.
    fn state() -> NodeState {
        let mut ingress = network(255);
        ingress.ingress = true;
        let networks = [network(1), network(2), ingress];
        NodeState {
            networks: networks.into_iter().map(|n| NetworkAttachment { network: Some(n) }).collect(),
            tasks: vec![task(1, &[1]), task(2, &[1, 2]), task(3, &[2])],
            remote_endpoints: vec![remote(1, 0), remote(2, 1)],
            ingress_address: "10.255.0.3".into(),
            published_ports: vec![PublishedPort {
                service: String::new(),
                protocol: "tcp".into(),
                published_port: 8080,
                target_port: 80,
                backends: vec!["10.255.0.9".into()],
            }],
            data_path_port: 4789,
            ..Default::default()
        }
    }

    /// A kernel with only the host namespace.
    fn bare() -> KernelModel {
        KernelModel {
            namespaces: [(HOST.to_string(), NamespaceModel::default())].into(),
            ..Default::default()
        }
    }

    fn desired_for(state: &NodeState, observed: &KernelModel) -> KernelModel {
        desired::build(state, &facts(), observed, &BTreeSet::new()).model
    }

    /// The kernel after converging `state` from `start`; panics unless one
    /// plan is enough.
    fn converge(state: &NodeState, start: KernelModel) -> KernelModel {
        let mut kernel = start;
        let desired = desired_for(state, &kernel);
        let actions = plan(&desired, &kernel);
        simulated::apply(&mut kernel, &actions);
        let left = plan(&desired_for(state, &kernel), &kernel);
        assert!(left.is_empty(), "not converged after one plan: {left:#?}");
        kernel
    }

    #[test]
    fn missing_objects_are_created_in_an_order_the_kernel_accepts() {
        let actions = plan(&desired_for(&state(), &bare()), &bare());
        let position = |wanted: &dyn Fn(&Action) -> bool| actions.iter().position(wanted).expect("planned");
        let overlay = names::overlay_namespace(&network(1).id);
        let namespace = position(&|a| *a == Action::CreateNamespace(overlay.clone()));
        let bridge = position(
            &|a| matches!(a, Action::CreateBridge { namespace, name, .. } if *namespace == overlay && name == "br0"),
        );
        let vxlan = position(
            &|a| matches!(a, Action::CreateVxlan { namespace, vni: 4098, .. } if *namespace == overlay),
        );
        let enslaved = position(
            &|a| matches!(a, Action::SetMaster { namespace, name, .. } if *namespace == overlay && name == "vxlan0"),
        );
        let fdb = position(&|a| matches!(a, Action::ReplaceFdb { namespace, .. } if *namespace == overlay));
        assert!(namespace < bridge && bridge < vxlan && vxlan < enslaved && enslaved < fdb, "{actions:#?}");
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::CreateVeth { inner, inner_mac: Some(_), .. } if inner == "eth1")));
        assert!(actions.iter().any(|a| matches!(a, Action::WriteRules { namespace, purpose, .. } if namespace == INGRESS && purpose == "mesh")));
        assert!(!actions.iter().any(|a| matches!(a, Action::DeleteLink { .. } | Action::DeleteNamespace(_))));
    }

    const INGRESS: &str = crate::names::INGRESS_SANDBOX;

    #[test]
    fn overlay_bridges_skip_iptables_where_the_kernel_has_br_netfilter() {
        let overlay = names::overlay_namespace(&network(1).id);
        let with = desired_for(&state(), &bare());
        assert_eq!(
            with.namespaces[&overlay].sysctls.get(netlib::sysctl::BRIDGE_NETFILTER).map(String::as_str),
            Some("0")
        );
        let without = NodeFacts { bridge_netfilter: false, ..facts() };
        let model = desired::build(&state(), &without, &bare(), &BTreeSet::new()).model;
        assert!(model.namespaces[&overlay].sysctls.is_empty(), "no such sysctl to write");
    }

    #[test]
    fn a_converged_node_plans_nothing_also_after_a_restart() {
        let kernel = converge(&state(), bare());
        assert_eq!(plan(&desired_for(&state(), &kernel), &kernel), []);
        // A restarted agent reads veths back without knowing their peers.
        let mut restarted = kernel.clone();
        for namespace in restarted.namespaces.values_mut() {
            for link in namespace.links.values_mut() {
                if let LinkKind::Veth { peer_namespace, peer } = &mut link.kind {
                    peer_namespace.clear();
                    peer.clear();
                }
            }
        }
        assert_eq!(plan(&desired_for(&state(), &restarted), &restarted), []);
    }

    #[test]
    fn extra_objects_are_removed() {
        let mut kernel = converge(&state(), bare());
        let mut smaller = state();
        smaller.tasks.retain(|t| t.name != "web.3");
        smaller.remote_endpoints.retain(|e| e.network_id != network(2).id);
        smaller.networks.retain(|a| a.network.as_ref().is_some_and(|n| n.name != "net2"));
        smaller.tasks.iter_mut().for_each(|t| t.endpoints.retain(|e| e.network_id != network(2).id));
        let actions = plan(&desired_for(&smaller, &kernel), &kernel);
        let gone: Vec<&Action> = actions.iter().filter(|a| matches!(a, Action::DeleteNamespace(_))).collect();
        assert_eq!(gone.len(), 2, "the task's sandbox and net2's overlay: {actions:#?}");
        // web.2 left net2: its eth1 is now the gateway leg, made anew.
        let web2 = names::sandbox_namespace(&task(2, &[1]).id);
        assert!(
            actions.contains(&Action::DeleteLink { namespace: web2, name: "eth1".into() }),
            "{actions:#?}"
        );
        simulated::apply(&mut kernel, &actions);
        assert_eq!(plan(&desired_for(&smaller, &kernel), &kernel), []);
    }

    #[test]
    fn each_sandbox_nat_table_sends_dns_to_the_resolver_and_balances_its_vips() {
        let nat_writes = |actions: &[Action]| -> Vec<(String, String)> {
            actions
                .iter()
                .filter_map(|a| match a {
                    Action::WriteRules { namespace, purpose, rules } if purpose == "nat" => {
                        assert_eq!(
                            rules.scope,
                            crate::model::RuleScope::Tables,
                            "a sandbox's table is its own"
                        );
                        Some((namespace.clone(), rules.text.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        let writes = nat_writes(&plan(&desired_for(&state(), &bare()), &bare()));
        assert_eq!(writes.len(), 3, "one table per task sandbox: {writes:#?}");
        assert!(writes
            .iter()
            .all(|(_, text)| text.contains("-j NETCTL-DNS") && !text.contains("-A NETCTL-VIP")));
        let mut kernel = converge(&state(), bare());
        let mut with_vip = state();
        with_vip.service_vips.push(netctl_proto::ServiceVip {
            service: String::new(),
            network_id: network(2).id,
            address: "10.2.0.2".into(),
            backends: vec!["10.2.0.13".into()],
        });
        // A VIP on net2: rewritten in the two sandboxes on net2 only.
        let actions = plan(&desired_for(&with_vip, &kernel), &kernel);
        let writes = nat_writes(&actions);
        let on_net2: Vec<String> =
            [task(2, &[1, 2]), task(3, &[2])].iter().map(|t| names::sandbox_namespace(&t.id)).collect();
        assert_eq!(writes.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), on_net2, "{writes:#?}");
        assert!(writes.iter().all(|(_, text)| text.contains("-A NETCTL-VIP -d 10.2.0.2/32")), "{writes:#?}");
        simulated::apply(&mut kernel, &actions);
        assert_eq!(plan(&desired_for(&with_vip, &kernel), &kernel), []);
        // Its last backend gone: those two tables lose the VIP, once.
        with_vip.service_vips[0].backends.clear();
        let actions = plan(&desired_for(&with_vip, &kernel), &kernel);
        let writes = nat_writes(&actions);
        assert_eq!(writes.len(), 2, "{writes:#?}");
        assert!(writes.iter().all(|(_, text)| !text.contains("-A NETCTL-VIP")), "{writes:#?}");
        simulated::apply(&mut kernel, &actions);
        assert_eq!(plan(&desired_for(&with_vip, &kernel), &kernel), []);
    }

    #[test]
    fn changed_objects_are_fixed_in_place() {
        let mut kernel = converge(&state(), bare());
        let overlay = names::overlay_namespace(&network(1).id);
        let links = &mut kernel.namespaces.get_mut(&overlay).unwrap().links;
        links.get_mut("br0").unwrap().mtu = Some(1400);
        links.get_mut("vxlan0").unwrap().up = false;
        // A port made isolated by an older agent, or by hand.
        let overlay_port = links.values_mut().find(|l| l.master.as_deref() == Some("br0")).unwrap();
        overlay_port.isolated = true;
        let host = kernel.namespaces.get_mut(HOST).unwrap();
        let port = host.links.values_mut().find(|l| l.isolated).unwrap();
        port.isolated = false;
        kernel.namespaces.get_mut(&overlay).unwrap().fdb.clear();
        let actions = plan(&desired_for(&state(), &kernel), &kernel);
        assert!(actions.contains(&Action::SetMtu {
            namespace: overlay.clone(),
            name: "br0".into(),
            mtu: 1450
        }));
        assert!(actions.contains(&Action::SetUp { namespace: overlay.clone(), name: "vxlan0".into() }));
        assert!(actions.iter().any(|a| matches!(a, Action::SetIsolated { isolated: true, .. })));
        assert!(actions.iter().any(|a| matches!(a, Action::SetIsolated { isolated: false, .. })));
        assert!(actions.iter().any(|a| matches!(a, Action::ReplaceFdb { .. })));
        assert!(
            !actions.iter().any(|a| matches!(a, Action::CreateBridge { .. } | Action::DeleteLink { .. })),
            "{actions:#?}"
        );
    }

    #[test]
    fn a_wrong_tunnel_or_half_a_veth_pair_is_made_anew() {
        let mut kernel = converge(&state(), bare());
        let overlay = names::overlay_namespace(&network(1).id);
        let vxlan = kernel.namespaces.get_mut(&overlay).unwrap().links.get_mut("vxlan0").unwrap();
        vxlan.kind = LinkKind::Vxlan { vni: 4098, port: 4789, local: LOCAL, learning: true };
        let sandbox = names::sandbox_namespace(&task(1, &[1]).id);
        kernel.namespaces.get_mut(&sandbox).unwrap().links.remove("eth0");
        let actions = plan(&desired_for(&state(), &kernel), &kernel);
        assert!(actions.contains(&Action::DeleteLink { namespace: overlay.clone(), name: "vxlan0".into() }));
        assert!(actions.iter().any(|a| matches!(a, Action::CreateVxlan { .. })));
        assert!(actions.iter().any(|a| matches!(a, Action::CreateVeth { inner_namespace, inner, .. } if *inner_namespace == sandbox && inner == "eth0")));
        // The simulated kernel removes the stale outer end with its peer gone.
        kernel
            .namespaces
            .get_mut(&overlay)
            .unwrap()
            .links
            .retain(|n, _| n != &names::overlay_veth(&task(1, &[1]).id, 0));
        let actions = plan(&desired_for(&state(), &kernel), &kernel);
        simulated::apply(&mut kernel, &actions);
        assert_eq!(plan(&desired_for(&state(), &kernel), &kernel), []);
    }

    #[test]
    fn gateway_addresses_are_distinct_and_kept() {
        let mut many = state();
        many.tasks = (0..10).map(|i| task(i, &[1])).collect();
        let kernel = converge(&many, bare());
        let addresses: Vec<Ipv4Addr> = many
            .tasks
            .iter()
            .map(|t| {
                let links = &kernel.namespaces[&names::sandbox_namespace(&t.id)].links;
                links["eth1"].addresses.iter().next().unwrap().0
            })
            .collect();
        let distinct: BTreeSet<&Ipv4Addr> = addresses.iter().collect();
        assert_eq!(distinct.len(), 10, "{addresses:?}");
        assert!(!addresses.contains(&Ipv4Addr::new(172, 18, 0, 2)), "ingress_sbox's address was given out");
        // A new task gets a fresh address; the others keep theirs.
        many.tasks.push(task(20, &[1]));
        let grown = converge(&many, kernel.clone());
        for t in &many.tasks[..10] {
            let sandbox = names::sandbox_namespace(&t.id);
            assert_eq!(grown.namespaces[&sandbox].links["eth1"], kernel.namespaces[&sandbox].links["eth1"]);
        }
        let new = &grown.namespaces[&names::sandbox_namespace(&task(20, &[1]).id)].links["eth1"];
        assert!(!addresses.contains(&new.addresses.iter().next().unwrap().0));
    }

    #[test]
    fn kept_sandboxes_are_left_alone() {
        let kernel = converge(&state(), bare());
        let mut fewer = state();
        let leaving = fewer.tasks.remove(0);
        let sandbox = names::sandbox_namespace(&leaving.id);
        let kept = BTreeSet::from([sandbox.clone()]);
        let desired = desired::build(&fewer, &facts(), &kernel, &kept).model;
        let actions = plan(&desired, &kernel);
        assert!(!actions.iter().any(|a| a.namespace() == sandbox), "{actions:#?}");
        let gateway_leg = names::gateway_veth(&leaving.id);
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::DeleteLink { name, .. } if *name == gateway_leg)));
    }

    /// A node state from a few choices: which networks each task joins, the
    /// remote endpoints, the routing mesh.
    fn random_state(tasks: Vec<Vec<bool>>, remotes: Vec<(u8, u8)>, mesh: bool) -> NodeState {
        let mut state = state();
        state.tasks = tasks
            .iter()
            .enumerate()
            .map(|(i, joins)| {
                let networks: Vec<u8> =
                    joins.iter().enumerate().filter(|(_, j)| **j).map(|(n, _)| n as u8 + 1).collect();
                task(i as u8, &networks)
            })
            .collect();
        state.remote_endpoints = remotes.into_iter().map(|(n, h)| remote(n % 2 + 1, h)).collect();
        if !mesh {
            state.networks.retain(|a| a.network.as_ref().is_some_and(|n| !n.ingress));
            state.ingress_address.clear();
        }
        state
    }

    /// Damage done to a converged kernel, by a person or a crash.
    #[derive(Debug, Clone)]
    enum Damage {
        DeleteNamespace(usize),
        DeleteLink(usize, usize),
        Down(usize, usize),
        Mtu(usize, usize),
        ForgetEntries(usize),
        Junk,
    }

    fn damage(kernel: &mut KernelModel, damage: &Damage) {
        let names: Vec<String> = kernel.namespaces.keys().filter(|n| *n != HOST).cloned().collect();
        let pick = |i: usize| names.get(i % names.len().max(1)).cloned();
        match damage {
            Damage::DeleteNamespace(i) => {
                if let Some(name) = pick(*i) {
                    simulated::apply(kernel, &[Action::DeleteNamespace(name)]);
                }
            }
            Damage::DeleteLink(i, j) | Damage::Down(i, j) | Damage::Mtu(i, j) => {
                let Some(name) = pick(*i) else { return };
                let links: Vec<String> =
                    kernel.namespaces[&name].links.keys().filter(|l| *l != "lo").cloned().collect();
                let Some(link) = links.get(j % links.len().max(1)).cloned() else { return };
                match damage {
                    Damage::DeleteLink(..) => {
                        simulated::apply(kernel, &[Action::DeleteLink { namespace: name, name: link }])
                    }
                    Damage::Down(..) => {
                        kernel.namespaces.get_mut(&name).unwrap().links.get_mut(&link).unwrap().up = false
                    }
                    _ => {
                        kernel.namespaces.get_mut(&name).unwrap().links.get_mut(&link).unwrap().mtu =
                            Some(1234)
                    }
                }
            }
            Damage::ForgetEntries(i) => {
                if let Some(name) = pick(*i) {
                    let namespace = kernel.namespaces.get_mut(&name).unwrap();
                    namespace.fdb.clear();
                    namespace.neighbours.clear();
                    namespace.rules.clear();
                }
            }
            Damage::Junk => {
                if !kernel.namespaces.contains_key("zz-leftover") {
                    simulated::apply(kernel, &[Action::CreateNamespace("zz-leftover".into())]);
                }
            }
        }
    }

    fn any_damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            (0..20usize).prop_map(Damage::DeleteNamespace),
            (0..20usize, 0..10usize).prop_map(|(i, j)| Damage::DeleteLink(i, j)),
            (0..20usize, 0..10usize).prop_map(|(i, j)| Damage::Down(i, j)),
            (0..20usize, 0..10usize).prop_map(|(i, j)| Damage::Mtu(i, j)),
            (0..20usize).prop_map(Damage::ForgetEntries),
            Just(Damage::Junk),
        ]
    }

    proptest! {
        /// From any kernel (empty, converged for another state, damaged),
        /// one plan applied reaches the desired state.
        #[test]
        fn one_plan_reaches_the_desired_state(
            before in (prop::collection::vec(prop::collection::vec(any::<bool>(), 2), 0..5),
                       prop::collection::vec((0..2u8, 0..3u8), 0..4), any::<bool>()),
            after in (prop::collection::vec(prop::collection::vec(any::<bool>(), 2), 0..6),
                      prop::collection::vec((0..2u8, 0..3u8), 0..4), any::<bool>()),
            damages in prop::collection::vec(any_damage(), 0..6),
        ) {
            let mut kernel = converge(&random_state(before.0, before.1, before.2), bare());
            for d in &damages {
                damage(&mut kernel, d);
            }
            converge(&random_state(after.0, after.1, after.2), kernel);
        }
    }
}
