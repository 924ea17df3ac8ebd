//! The desired state of one node, as streamed to its agent by `Watch` (pure).

use crate::addresses::mac_for;
use netctl_proto::{
    Network, NetworkAttachment, Node, NodeState, PublishedPort, RemoteEndpoint, Service, ServiceNames,
    ServiceVip, Task, TaskName, TaskSpec, TaskState,
};
use std::collections::HashMap;

/// Everything a node's desired state is computed from.
pub struct ClusterView<'a> {
    /// All networks.
    pub networks: &'a [Network],
    /// All services.
    pub services: &'a [Service],
    /// All tasks.
    pub tasks: &'a [Task],
    /// All nodes.
    pub nodes: &'a [Node],
}

/// Every node's data-path address, sorted and without repeats: the only
/// senders whose VXLAN packets a node accepts.
fn cluster_node_addresses(nodes: &[Node]) -> Vec<String> {
    let addresses: std::collections::BTreeSet<&str> =
        nodes.iter().map(|n| n.advertise_addr.as_str()).collect();
    addresses.into_iter().map(str::to_string).collect()
}

/// Builds `node`'s whole desired state at `revision`: the tasks it runs, the
/// ingress network (on every node, so that every node answers published
/// ports) and the networks its tasks attach to (an overlay exists only where
/// it has a task), every endpoint of those networks that lives on another
/// node, the published ports and the service VIPs with their backends.
pub fn node_state(node: &Node, cluster: &ClusterView, data_path_port: u32, revision: u64) -> NodeState {
    let services: HashMap<&str, &Service> = cluster.services.iter().map(|s| (s.id.as_str(), s)).collect();
    let wanted =
        |t: &&Task| t.desired_state() == TaskState::Running && services.contains_key(t.service_id.as_str());
    let local: Vec<&Task> = cluster.tasks.iter().filter(wanted).filter(|t| t.node_id == node.id).collect();
    // Balancing goes only to tasks that run (not to ones still starting).
    let serving: Vec<&Task> =
        cluster.tasks.iter().filter(wanted).filter(|t| t.state() == TaskState::Running).collect();

    let mut network_ids: Vec<&str> =
        cluster.networks.iter().filter(|n| n.ingress).map(|n| n.id.as_str()).collect();
    for endpoint in local.iter().flat_map(|t| &t.endpoints) {
        if !network_ids.contains(&endpoint.network_id.as_str()) {
            network_ids.push(&endpoint.network_id);
        }
    }
    let networks = network_ids
        .iter()
        .filter_map(|id| cluster.networks.iter().find(|n| n.id == *id))
        .map(|n| NetworkAttachment { network: Some(n.clone()) })
        .collect();

    let node_addresses: HashMap<&str, &str> =
        cluster.nodes.iter().map(|n| (n.id.as_str(), n.advertise_addr.as_str())).collect();
    let remote_endpoints = cluster
        .tasks
        .iter()
        .filter(wanted)
        .filter(|t| t.node_id != node.id)
        .flat_map(|t| t.endpoints.iter().map(move |e| (t, e)))
        .filter(|(_, e)| network_ids.contains(&e.network_id.as_str()))
        .filter_map(|(t, e)| {
            Some(RemoteEndpoint {
                network_id: e.network_id.clone(),
                address: e.address.clone(),
                mac: e.mac.clone(),
                node_addr: node_addresses.get(t.node_id.as_str())?.to_string(),
            })
        })
        .chain(other_ingress_sandboxes(node, cluster))
        .collect();

    let published_ports = cluster
        .services
        .iter()
        .flat_map(|service| {
            let backends: Vec<String> = serving
                .iter()
                .filter(|t| t.service_id == service.id)
                .filter_map(|t| t.endpoints.iter().find(|e| is_ingress(cluster, &e.network_id)))
                .map(|e| e.address.clone())
                .collect();
            service.ports.iter().map(move |port| PublishedPort {
                protocol: port.protocol.clone(),
                published_port: port.published_port,
                target_port: port.target_port,
                backends: backends.clone(),
            })
        })
        .collect();

    let service_vips = cluster
        .services
        .iter()
        .flat_map(|service| service.virtual_ips.iter().map(move |vip| (service, vip)))
        .filter(|(_, vip)| network_ids.contains(&vip.network_id.as_str()))
        .map(|(service, vip)| ServiceVip {
            network_id: vip.network_id.clone(),
            address: vip.address.clone(),
            backends: serving
                .iter()
                .filter(|t| t.service_id == service.id)
                .flat_map(|t| &t.endpoints)
                .filter(|e| e.network_id == vip.network_id)
                .map(|e| e.address.clone())
                .collect(),
        })
        .collect();

    let names = service_names(cluster, &network_ids, &serving);

    let tasks = local
        .iter()
        .map(|t| {
            let service = services[t.service_id.as_str()];
            TaskSpec {
                id: t.id.clone(),
                name: crate::services::task_name(service, t),
                service_id: service.id.clone(),
                command: service.command.clone(),
                env: service.env.clone(),
                workdir: service.workdir.clone(),
                endpoints: t.endpoints.clone(),
                runtime: service.runtime.clone(),
            }
        })
        .collect();

    NodeState {
        revision,
        node_id: node.id.clone(),
        advertise_addr: node.advertise_addr.clone(),
        data_path_port,
        networks,
        tasks,
        remote_endpoints,
        published_ports,
        ingress_address: node.ingress_address.clone(),
        service_vips,
        names,
        cluster_nodes: cluster_node_addresses(cluster.nodes),
    }
}

/// What the node's resolver answers on each overlay it has (ingress aside,
/// as in Swarm): every service on it, with its VIP, aliases and running
/// tasks there.
fn service_names(cluster: &ClusterView, network_ids: &[&str], serving: &[&Task]) -> Vec<ServiceNames> {
    let mut names = Vec::new();
    for service in cluster.services {
        for network_id in &service.network_ids {
            if !network_ids.contains(&network_id.as_str()) || is_ingress(cluster, network_id) {
                continue;
            }
            let tasks = serving
                .iter()
                .filter(|t| t.service_id == service.id)
                .filter_map(|t| {
                    let endpoint = t.endpoints.iter().find(|e| e.network_id == *network_id)?;
                    Some(TaskName {
                        id: t.id.clone(),
                        name: crate::services::task_name(service, t),
                        address: endpoint.address.clone(),
                    })
                })
                .collect();
            names.push(ServiceNames {
                network_id: network_id.clone(),
                service: service.name.clone(),
                aliases: service
                    .aliases
                    .iter()
                    .filter(|a| a.network == *network_id)
                    .flat_map(|a| a.aliases.clone())
                    .collect(),
                vip: service
                    .virtual_ips
                    .iter()
                    .find(|v| v.network_id == *network_id)
                    .map(|v| v.address.clone())
                    .unwrap_or_default(),
                tasks,
            });
        }
    }
    names
}

fn is_ingress(cluster: &ClusterView, network_id: &str) -> bool {
    cluster.networks.iter().any(|n| n.ingress && n.id == network_id)
}

/// The ingress_sbox endpoints of the other nodes: replies of tasks on this
/// node to connections balanced there go back through them.
fn other_ingress_sandboxes<'a>(
    node: &'a Node,
    cluster: &'a ClusterView,
) -> impl Iterator<Item = RemoteEndpoint> + 'a {
    let ingress = cluster.networks.iter().find(|n| n.ingress);
    cluster
        .nodes
        .iter()
        .filter(move |other| other.id != node.id && !other.ingress_address.is_empty())
        .filter_map(move |other| {
            let address: std::net::Ipv4Addr = other.ingress_address.parse().ok()?;
            Some(RemoteEndpoint {
                network_id: ingress?.id.clone(),
                address: address.to_string(),
                mac: mac_for(address),
                node_addr: other.advertise_addr.clone(),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_proto::EndpointAddress;

    fn task(id: &str, node: &str, address: &str) -> Task {
        Task {
            id: id.into(),
            service_id: "svc".into(),
            slot: 1,
            node_id: node.into(),
            desired_state: TaskState::Running.into(),
            endpoints: vec![EndpointAddress {
                network_id: "net".into(),
                address: address.into(),
                mac: "m".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_node_gets_its_tasks_their_networks_and_the_remote_endpoints() {
        let nodes = [
            Node { id: "a".into(), advertise_addr: "192.168.10.6".into(), ..Default::default() },
            Node { id: "b".into(), advertise_addr: "192.168.10.7".into(), ..Default::default() },
            Node { id: "c".into(), advertise_addr: "192.168.10.8".into(), ..Default::default() },
        ];
        let networks = [
            Network { id: "ing".into(), name: "ingress".into(), ingress: true, ..Default::default() },
            Network { id: "net".into(), name: "demonet".into(), vni: 4097, ..Default::default() },
        ];
        let services = [Service {
            id: "svc".into(),
            name: "demoservice".into(),
            network_ids: vec!["net".into()],
            ..Default::default()
        }];
        let mut stopped = task("t3", "b", "192.168.200.5");
        stopped.set_desired_state(TaskState::Shutdown);
        let tasks = [task("t1", "a", "192.168.200.3"), task("t2", "b", "192.168.200.4"), stopped];
        let cluster = ClusterView { networks: &networks, services: &services, tasks: &tasks, nodes: &nodes };

        let state = node_state(&nodes[0], &cluster, 4789, 7);
        assert_eq!((state.revision, state.data_path_port), (7, 4789));
        let names: Vec<_> =
            state.networks.iter().map(|a| a.network.as_ref().unwrap().name.as_str()).collect();
        assert_eq!(names, ["ingress", "demonet"]);
        assert_eq!(state.tasks.len(), 1);
        assert_eq!(state.tasks[0].name, "demoservice.1");
        assert_eq!(state.remote_endpoints.len(), 1, "{:?}", state.remote_endpoints);
        assert_eq!(state.remote_endpoints[0].address, "192.168.200.4");
        assert_eq!(state.remote_endpoints[0].node_addr, "192.168.10.7");

        // Names: the service on demonet with only its running task.
        assert_eq!(state.names.len(), 1, "{:?}", state.names);
        assert_eq!(state.names[0].service, "demoservice");
        assert!(state.names[0].tasks.is_empty(), "no task reports Running yet");

        let idle = node_state(&nodes[2], &cluster, 4789, 7);
        assert_eq!(idle.networks.len(), 1, "only ingress");
        assert!(idle.tasks.is_empty() && idle.remote_endpoints.is_empty());
        assert!(idle.names.is_empty(), "no overlay, no names");
    }

    #[test]
    fn names_hold_the_vip_the_aliases_and_only_running_tasks() {
        let nodes = [Node { id: "a".into(), advertise_addr: "192.168.10.6".into(), ..Default::default() }];
        let networks = [
            Network { id: "ing".into(), name: "ingress".into(), ingress: true, ..Default::default() },
            Network { id: "net".into(), name: "demonet".into(), vni: 4097, ..Default::default() },
        ];
        let services = [Service {
            id: "svc".into(),
            name: "web".into(),
            network_ids: vec!["net".into(), "ing".into()],
            virtual_ips: vec![netctl_proto::VirtualIp {
                network_id: "net".into(),
                address: "192.168.200.2".into(),
            }],
            aliases: vec![netctl_proto::NetworkAlias { network: "net".into(), aliases: vec!["www".into()] }],
            ..Default::default()
        }];
        let mut running = task("t1", "a", "192.168.200.3");
        running.set_state(TaskState::Running);
        let starting = task("t2", "a", "192.168.200.4");
        let tasks = [running, starting];
        let cluster = ClusterView { networks: &networks, services: &services, tasks: &tasks, nodes: &nodes };
        let state = node_state(&nodes[0], &cluster, 4789, 1);
        assert_eq!(state.names.len(), 1, "ingress has no names: {:?}", state.names);
        let names = &state.names[0];
        assert_eq!(
            (names.vip.as_str(), names.aliases.as_slice()),
            ("192.168.200.2", &["www".to_string()][..])
        );
        let addresses: Vec<&str> = names.tasks.iter().map(|t| t.address.as_str()).collect();
        assert_eq!(addresses, ["192.168.200.3"]);
        assert_eq!(names.tasks[0].name, "web.1");
    }
}
