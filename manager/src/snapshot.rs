//! The desired state of one node, as streamed to its agent by `Watch` (pure).

use netctl_proto::{Network, NetworkAttachment, Node, NodeState};

/// Builds `node`'s whole desired state at `revision`.
///
/// The ingress network is on every node so that every node answers published
/// ports. Other networks, tasks, remote endpoints and published ports arrive
/// with services.
pub fn node_state(node: &Node, networks: &[Network], data_path_port: u32, revision: u64) -> NodeState {
    let networks = networks
        .iter()
        .filter(|n| n.ingress)
        .map(|n| NetworkAttachment { network: Some(n.clone()) })
        .collect();
    NodeState {
        revision,
        node_id: node.id.clone(),
        advertise_addr: node.advertise_addr.clone(),
        data_path_port,
        networks,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_tasks_gets_only_the_ingress_network() {
        let node = Node { id: "n1".into(), advertise_addr: "192.168.10.6".into(), ..Default::default() };
        let networks = [
            Network {
                id: "i".into(),
                name: "ingress".into(),
                vni: 4096,
                ingress: true,
                ..Default::default()
            },
            Network { id: "d".into(), name: "demonet".into(), vni: 4097, ..Default::default() },
        ];
        let state = node_state(&node, &networks, 4789, 7);
        assert_eq!((state.revision, state.data_path_port), (7, 4789));
        assert_eq!(state.advertise_addr, "192.168.10.6");
        let names: Vec<_> =
            state.networks.iter().map(|a| a.network.as_ref().unwrap().name.as_str()).collect();
        assert_eq!(names, ["ingress"]);
        assert!(state.tasks.is_empty() && state.remote_endpoints.is_empty());
    }
}
