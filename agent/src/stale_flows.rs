//! Conntrack entries that lead to a backend no longer there. A UDP client
//! sending from one source port keeps its conntrack entry, and with it its
//! backend, for as long as it keeps sending: after a scale-down it would
//! talk to a removed replica until it paused for the UDP timeout. A TCP
//! connection whose SYN was balanced to a replica just as it went (a rolling
//! update) retries its SYN on the same entry, to the same gone replica, until
//! the client gives up. When the backends of a published port or of a VIP
//! change, the UDP entries and the unanswered TCP ones of that port (in the
//! host, DNATed to a replica here or to ingress_sbox; in ingress_sbox) or VIP
//! (in each local sandbox on its network) whose replies would come from an
//! address no longer among them are deleted, so the next packet is balanced
//! again over the live replicas (in the host, also those forwarded to
//! another node that runs none any more). Answered TCP connections are left
//! alone: they end with their replica.

use crate::mesh::PortRoute;
use crate::model::HOST;
use crate::names::{self, INGRESS_SANDBOX};
use ipnetwork::Ipv4Network;
use netctl_proto::convention::{
    GATEWAY_BRIDGE_NETWORK, GATEWAY_BRIDGE_PREFIX, INGRESS_SANDBOX_GATEWAY_ADDRESS,
};
use netctl_proto::NodeState;
use netlib::conntrack::{self, Flow};
use netlib::NamespaceDir;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// TCP.
const TCP: u8 = 6;
/// UDP.
const UDP: u8 = 17;

/// The agent's own (the host's) network namespace.
const OWN_NAMESPACE: &str = "/proc/self/ns/net";

/// What makes a UDP or unanswered TCP entry stale in one namespace.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Staleness {
    /// Published (protocol, port) → its backends: an entry to that port is
    /// stale when its replies come from elsewhere.
    ports: BTreeMap<(u8, u16), BTreeSet<Ipv4Addr>>,
    /// VIP → its backends, likewise.
    vips: BTreeMap<Ipv4Addr, BTreeSet<Ipv4Addr>>,
    /// Only entries whose replies come from this subnet or from these
    /// nodes (connections forwarded to them): the host's own flows to a
    /// port number it publishes are not the mesh's.
    replies_from: Option<(Ipv4Network, BTreeSet<Ipv4Addr>)>,
}

impl Staleness {
    /// Whether `flow` (UDP, or TCP not answered yet) goes to a port or VIP
    /// here and its replies would come from an address no longer behind it
    /// (pure).
    pub fn is_stale(&self, flow: &Flow) -> bool {
        let movable = flow.protocol == UDP || (flow.protocol == TCP && !flow.replied);
        let source = flow.reply.source;
        let foreign = self
            .replies_from
            .as_ref()
            .is_some_and(|(subnet, nodes)| !subnet.contains(source) && !nodes.contains(&source));
        if !movable || foreign {
            return false;
        }
        let behind = self
            .ports
            .get(&(flow.protocol, flow.original.destination_port))
            .or_else(|| self.vips.get(&flow.original.destination));
        behind.is_some_and(|backends| !backends.contains(&flow.reply.source))
    }
}

/// What each namespace of the node deletes by (pure): the host and
/// ingress_sbox by the published ports as `routes` send them, each task's
/// sandbox by the VIPs of its networks.
pub fn wanted(state: &NodeState, routes: &[PortRoute]) -> HashMap<String, Staleness> {
    let addresses =
        |list: &[String]| list.iter().filter_map(|a| a.parse().ok()).collect::<BTreeSet<Ipv4Addr>>();
    let mut by_namespace: HashMap<String, Staleness> = HashMap::new();
    for route in routes {
        let protocol = if route.port.protocol == "udp" { UDP } else { TCP };
        let Ok(number) = u16::try_from(route.port.published_port) else { continue };
        let number = (protocol, number);
        let ingress = by_namespace.entry(INGRESS_SANDBOX.to_string()).or_default();
        ingress.ports.insert(number, addresses(route.sandbox_backends()));
        let host = by_namespace.entry(HOST.to_string()).or_insert_with(|| Staleness {
            replies_from: Ipv4Network::new(GATEWAY_BRIDGE_NETWORK, GATEWAY_BRIDGE_PREFIX)
                .ok()
                .map(|subnet| (subnet, addresses(&state.cluster_nodes))),
            ..Default::default()
        });
        let mut targets: BTreeSet<Ipv4Addr> = route.here.iter().copied().collect();
        targets.extend(route.nodes.iter().map(|(node, _)| *node));
        // ingress_sbox also takes what other nodes forward when none runs here.
        if route.through_ingress_sandbox() || route.here.is_empty() {
            targets.insert(INGRESS_SANDBOX_GATEWAY_ADDRESS);
        }
        host.ports.insert(number, targets);
    }
    for task in &state.tasks {
        let networks: BTreeSet<&str> = task.endpoints.iter().map(|e| e.network_id.as_str()).collect();
        for vip in state.service_vips.iter().filter(|v| networks.contains(v.network_id.as_str())) {
            let Ok(address) = vip.address.parse() else { continue };
            let sandbox = by_namespace.entry(names::sandbox_namespace(&task.id)).or_default();
            sandbox.vips.insert(address, addresses(&vip.backends));
        }
    }
    by_namespace
}

/// Deletes stale entries where what makes them stale changed since the
/// last pass.
#[derive(Default)]
pub struct StaleFlows {
    last: HashMap<String, Staleness>,
    /// The desired state's revision `last` was made from: a pass on the
    /// same revision has nothing new to delete.
    revision: Option<u64>,
}

impl StaleFlows {
    /// Deletes, in each namespace whose ports' or VIPs' backends changed,
    /// the UDP and unanswered TCP entries to a backend no longer there
    /// (published ports as `routes` send them); logs what failed.
    pub async fn clear(&mut self, state: &NodeState, routes: &[PortRoute], namespaces: &NamespaceDir) {
        if self.revision == Some(state.revision) {
            return;
        }
        self.revision = Some(state.revision);
        let wanted = wanted(state, routes);
        for (namespace, staleness) in &wanted {
            let path = if namespace == HOST {
                PathBuf::from(OWN_NAMESPACE)
            } else if namespaces.exists(namespace) {
                namespaces.path(namespace)
            } else {
                continue;
            };
            if self.last.get(namespace) == Some(staleness) {
                continue;
            }
            let picked = staleness.clone();
            match conntrack::delete_flows(namespace, &path, move |f| picked.is_stale(f)).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(namespace, deleted, "deleted conntrack entries to removed backends")
                }
                Err(err) => tracing::warn!("{err}"),
            }
        }
        self.last = wanted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_proto::{EndpointAddress, PublishedPort, ServiceVip, TaskSpec};
    use netlib::conntrack::Tuple;

    fn flow(protocol: u8, to: &str, port: u16, reply_from: &str) -> Flow {
        let tuple = |source: &str, destination: &str| Tuple {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
            source_port: 40000,
            destination_port: port,
        };
        Flow {
            protocol,
            original: tuple("10.0.0.1", to),
            reply: tuple(reply_from, "10.0.0.1"),
            replied: false,
        }
    }

    fn answered(flow: Flow) -> Flow {
        Flow { replied: true, ..flow }
    }

    fn state() -> NodeState {
        NodeState {
            published_ports: vec![
                PublishedPort {
                    protocol: "udp".into(),
                    published_port: 7,
                    backends: vec!["10.255.0.5".into()],
                    ..Default::default()
                },
                PublishedPort {
                    protocol: "tcp".into(),
                    published_port: 80,
                    backends: vec!["10.255.0.8".into()],
                    ..Default::default()
                },
            ],
            service_vips: vec![ServiceVip {
                service: String::new(),
                network_id: "net".into(),
                address: "10.1.0.2".into(),
                backends: vec!["10.1.0.3".into()],
            }],
            tasks: vec![TaskSpec {
                id: "t1".into(),
                endpoints: vec![EndpointAddress { network_id: "net".into(), ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn udp_and_unanswered_tcp_entries_to_a_backend_no_longer_there_are_stale() {
        let state = state();
        let wanted = wanted(&state, &routes(&state, &[], &[]));
        let ingress = &wanted[INGRESS_SANDBOX];
        assert!(ingress.is_stale(&flow(UDP, "172.18.0.2", 7, "10.255.0.6")), "a removed replica");
        assert!(!ingress.is_stale(&flow(UDP, "172.18.0.2", 7, "10.255.0.5")), "a live replica");
        assert!(!ingress.is_stale(&flow(TCP, "172.18.0.2", 7, "10.255.0.6")), "not a TCP published port");
        assert!(!ingress.is_stale(&flow(UDP, "172.18.0.2", 80, "10.255.0.6")), "not a UDP published port");
        assert!(ingress.is_stale(&flow(TCP, "172.18.0.2", 80, "10.255.0.6")), "an unanswered SYN, moved");
        assert!(!ingress.is_stale(&answered(flow(TCP, "172.18.0.2", 80, "10.255.0.6"))), "a connection");
        assert!(!ingress.is_stale(&flow(TCP, "172.18.0.2", 80, "10.255.0.8")), "a SYN to a live replica");
        let sandbox = &wanted[&names::sandbox_namespace("t1")];
        assert!(sandbox.is_stale(&flow(UDP, "10.1.0.2", 53, "10.1.0.9")));
        assert!(!sandbox.is_stale(&flow(UDP, "10.1.0.2", 53, "10.1.0.3")));
        assert!(!sandbox.is_stale(&flow(UDP, "10.1.0.7", 53, "10.1.0.9")), "not a VIP");
        assert!(sandbox.is_stale(&flow(TCP, "10.1.0.2", 80, "10.1.0.9")), "an unanswered SYN to a VIP");
        assert!(!sandbox.is_stale(&answered(flow(TCP, "10.1.0.2", 80, "10.1.0.9"))));
    }

    /// The routes of `state`'s ports with the replicas `here` (ingress
    /// address, docker_gwbridge address) and on the `nodes` (ingress
    /// address, node address).
    fn routes(state: &NodeState, here: &[(&str, &str)], nodes: &[(&str, &str)]) -> Vec<PortRoute> {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, Ipv4Addr> {
            pairs.iter().map(|(ingress, address)| (ingress.to_string(), address.parse().unwrap())).collect()
        };
        crate::mesh::port_routes(&state.published_ports, &map(here), &map(nodes))
    }

    #[test]
    fn in_the_host_udp_entries_to_a_replica_that_left_this_node_are_stale() {
        let state = state();
        let by_namespace = wanted(&state, &routes(&state, &[("10.255.0.5", "172.18.0.7")], &[]));
        let host = &by_namespace[HOST];
        assert!(!host.is_stale(&flow(UDP, "192.168.10.6", 7, "172.18.0.7")), "the replica here");
        assert!(host.is_stale(&flow(UDP, "192.168.10.6", 7, "172.18.0.8")), "a replica no longer here");
        assert!(host.is_stale(&flow(UDP, "192.168.10.6", 7, "172.18.0.2")), "no replica elsewhere any more");
        assert!(!host.is_stale(&flow(UDP, "8.8.8.8", 7, "8.8.8.8")), "the host's own flow to port 7");
        let elsewhere = wanted(&state, &routes(&state, &[], &[]));
        assert!(
            !elsewhere[HOST].is_stale(&flow(UDP, "192.168.10.6", 7, "172.18.0.2")),
            "through ingress_sbox"
        );
    }

    #[test]
    fn in_the_host_entries_forwarded_to_a_node_that_runs_no_replica_any_more_are_stale() {
        let mut state = state();
        state.cluster_nodes = vec!["192.168.10.6".into(), "192.168.10.7".into(), "192.168.10.8".into()];
        let by_namespace = wanted(&state, &routes(&state, &[], &[("10.255.0.5", "192.168.10.7")]));
        let host = &by_namespace[HOST];
        assert!(!host.is_stale(&flow(UDP, "192.168.10.6", 7, "192.168.10.7")), "its node");
        assert!(host.is_stale(&flow(UDP, "192.168.10.6", 7, "192.168.10.8")), "a node that ran it");
        assert!(host.is_stale(&flow(TCP, "192.168.10.6", 80, "192.168.10.8")), "a SYN to a node that ran it");
        assert!(!host.is_stale(&flow(UDP, "192.168.10.6", 7, "172.18.0.2")), "what other nodes forward");
        assert!(!host.is_stale(&flow(UDP, "192.168.10.6", 7, "192.168.10.9")), "not a node of the cluster");
    }
}
