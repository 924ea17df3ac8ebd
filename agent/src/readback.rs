//! Reading the node's kernel objects back — every namespace netctl made plus
//! the host's, their interfaces (veth peers resolved to their namespace),
//! bridges, VXLAN devices with their FDB and neighbour entries, addresses,
//! routes, and the routing mesh's rules — for `netctl topology`.

use crate::connections::Connections;
use crate::names::{self, INGRESS_SANDBOX};
use netctl_proto::{
    NodeState, NodeTopology, TopologyEntry, TopologyInterface, TopologyNamespace, TopologyRoute,
};
use netlib::{Link, Netlink};
use std::collections::HashMap;

/// One namespace's links, read with its connection.
struct Read {
    namespace: TopologyNamespace,
    links: Vec<Link>,
    netlink: Netlink,
    file: Option<std::fs::File>,
}

/// Reads the node back. `state` names what each namespace belongs to.
pub async fn read(host: &Netlink, connections: &mut Connections, state: &NodeState) -> NodeTopology {
    let mut reads =
        vec![read_namespace(host, "host", "host", "", std::fs::File::open("/proc/self/ns/net").ok()).await];
    let owners = owners(state);
    let names = connections.namespaces().list().unwrap_or_default();
    for name in names {
        let Some(netlink) = connections.existing(&name).await else { continue };
        let role = if name == INGRESS_SANDBOX {
            "ingress_sbox"
        } else if names::is_overlay_namespace(&name) {
            "overlay"
        } else {
            "sandbox"
        };
        let owner = owners.get(&name).cloned().unwrap_or_default();
        let file = std::fs::File::open(connections.namespaces().path(&name)).ok();
        reads.push(read_namespace(&netlink, &name, role, &owner, file).await);
    }
    resolve_peers(&mut reads).await;
    for read in &mut reads {
        read.namespace.rules = rules(connections, &read.namespace).await;
    }
    NodeTopology {
        node_id: state.node_id.clone(),
        address: state.advertise_addr.clone(),
        namespaces: reads.into_iter().map(|r| r.namespace).collect(),
        read_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        ..Default::default()
    }
}

/// Which network or task each namespace belongs to.
fn owners(state: &NodeState) -> HashMap<String, String> {
    let networks = state
        .networks
        .iter()
        .filter_map(|a| a.network.as_ref())
        .map(|n| (names::overlay_namespace(&n.id), format!("network {}", n.name)));
    let tasks = state.tasks.iter().map(|t| (names::sandbox_namespace(&t.id), format!("task {}", t.name)));
    let mesh = std::iter::once((INGRESS_SANDBOX.to_string(), "routing mesh".to_string()));
    networks.chain(tasks).chain(mesh).collect()
}

async fn read_namespace(
    netlink: &Netlink,
    name: &str,
    role: &str,
    owner: &str,
    file: Option<std::fs::File>,
) -> Read {
    let links = netlink.links().await.unwrap_or_default();
    let addresses = netlink.addresses().await.unwrap_or_default();
    let routes = netlink.routes().await.unwrap_or_default();
    let by_index: HashMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
    let link_name = |index: u32| by_index.get(&index).map(|l| l.name.clone()).unwrap_or_default();
    let mut namespace = TopologyNamespace {
        name: name.to_string(),
        role: role.to_string(),
        owner: owner.to_string(),
        ..Default::default()
    };
    for link in &links {
        let vxlan = link.vxlan.clone().unwrap_or_default();
        namespace.interfaces.push(TopologyInterface {
            name: link.name.clone(),
            index: link.index,
            kind: link.kind.clone(),
            mtu: link.mtu,
            mac: link.mac.clone(),
            master: link.master.map(link_name).unwrap_or_default(),
            addresses: addresses
                .iter()
                .filter(|a| a.index == link.index)
                .map(|a| format!("{}/{}", a.address, a.prefix))
                .collect(),
            vni: vxlan.vni,
            port: u32::from(vxlan.port),
            local: vxlan.local.map(|l| l.to_string()).unwrap_or_default(),
            learning: vxlan.learning,
            up: link.up,
            ..Default::default()
        });
        if link.kind == "vxlan" {
            let entry = |e: netlib::neigh::Neighbour| TopologyEntry {
                device: link.name.clone(),
                mac: e.mac,
                address: e.address.map(|a| a.to_string()).unwrap_or_default(),
            };
            namespace.fdb = netlink.fdb(link).await.unwrap_or_default().into_iter().map(entry).collect();
            namespace.neighbours =
                netlink.neighbours(link).await.unwrap_or_default().into_iter().map(entry).collect();
        }
    }
    namespace.routes = routes
        .iter()
        .map(|r| TopologyRoute {
            destination: format!("{}/{}", r.destination, r.prefix),
            gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: r.output.map(link_name).unwrap_or_default(),
        })
        .collect();
    Read { namespace, links, netlink: netlink.clone(), file }
}

/// Names each veth's other end: the namespace whose id (as this namespace
/// numbers it) is the veth's `link-netnsid`, and the link there whose index
/// is the veth's peer index. Host, overlays and ingress_sbox are asked first:
/// they hold the other end of every sandbox veth.
async fn resolve_peers(reads: &mut [Read]) {
    let mut order: Vec<usize> = (0..reads.len()).collect();
    order.sort_by_key(|i| reads[*i].namespace.role == "sandbox");
    for here in 0..reads.len() {
        let wanted: Vec<(u32, i32, u32)> = reads[here]
            .links
            .iter()
            .filter(|l| l.kind == "veth")
            .filter_map(|l| Some((l.index, l.peer_netns_id?, l.peer_index?)))
            .collect();
        let mut ids: HashMap<i32, usize> = HashMap::new();
        for &there in order.iter().filter(|there| **there != here) {
            if wanted.iter().all(|(_, id, _)| ids.contains_key(id)) {
                break;
            }
            let Some(file) = &reads[there].file else { continue };
            if let Ok(Some(id)) = reads[here].netlink.namespace_id_of(file).await {
                ids.insert(id, there);
            }
        }
        for (index, id, peer_index) in wanted {
            let Some(&there) = ids.get(&id) else { continue };
            let peer_name = reads[there].links.iter().find(|l| l.index == peer_index).map(|l| l.name.clone());
            let peer_namespace = reads[there].namespace.name.clone();
            if let Some(interface) = reads[here].namespace.interfaces.iter_mut().find(|i| i.index == index) {
                interface.peer_namespace = peer_namespace;
                interface.peer_name = peer_name.unwrap_or_default();
            }
        }
    }
}

/// netctl's rules of the host (routing mesh, gateway bridge, data-path
/// filter) and of ingress_sbox, as `<table>: -A ...` lines. (Sandboxes' VIP
/// rules are not read back: that would be one iptables-save process per
/// task every few seconds.)
async fn rules(connections: &Connections, namespace: &TopologyNamespace) -> Vec<String> {
    let path = connections.namespaces().path(&namespace.name);
    let (target, tables, chains): (Option<(&str, &std::path::Path)>, &[&str], &[&str]) =
        match namespace.role.as_str() {
            "host" => (
                None,
                &["nat", "filter"],
                &[crate::mesh::INGRESS_CHAIN, crate::gwbridge::NAT_CHAIN, crate::datapath::CHAIN],
            ),
            "ingress_sbox" => (
                Some((namespace.name.as_str(), path.as_path())),
                &["nat"],
                &["NETCTL-INGRESS", "NETCTL-INGRESS-SNAT"],
            ),
            _ => return Vec::new(),
        };
    let mut rules = Vec::new();
    for table in tables {
        let Ok(saved) = netlib::iptables::save(target, table).await else { continue };
        let kept = saved.lines().filter(|line| chains.iter().any(|c| line.starts_with(&format!("-A {c} "))));
        rules.extend(kept.map(|line| format!("{table}: {line}")));
    }
    rules
}
