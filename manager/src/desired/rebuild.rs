//! Which scopes of the desired-state model a change touches (pure). Two
//! reads of the cluster are compared record by record, and each changed
//! record names the scopes its items live in: a task its node and the
//! networks of its endpoints, a service its networks and the nodes of its
//! tasks (and the published ports, when it publishes one). A new model builds those
//! anew and shares the others with the model before
//! ([`Model::build_after`](super::model::Model::build_after)): at a
//! thousand nodes, a task reporting Running touches a few scopes, not the
//! fifty thousand items of the cluster.

use super::model::ClusterView;
use netctl_proto::{Service, Task};
use std::collections::{HashMap, HashSet};

/// The scopes a new model builds anew.
#[derive(Debug, PartialEq)]
pub enum Rebuild {
    /// Every scope: a network or a node changed, and every scope holds
    /// something of them (the network's item, node addresses, headers,
    /// ingress_sbox endpoints).
    All,
    /// Only these.
    Scopes {
        /// What every node holds (published ports, the cluster's nodes).
        global: bool,
        /// Networks, by ID.
        networks: HashSet<String>,
        /// Nodes' own parts, by node ID.
        nodes: HashSet<String>,
    },
}

/// The records of `new` that differ from `old`'s of the same `id`, added
/// or removed ones included: (before, after).
fn changed<'a, R: PartialEq>(
    old: &'a [R],
    new: &'a [R],
    id: fn(&R) -> &str,
) -> Vec<(Option<&'a R>, Option<&'a R>)> {
    let mut before: HashMap<&str, &R> = old.iter().map(|r| (id(r), r)).collect();
    let mut changed = Vec::new();
    for record in new {
        match before.remove(id(record)) {
            Some(old) if old == record => {}
            old => changed.push((old, Some(record))),
        }
    }
    changed.extend(before.into_values().map(|old| (Some(old), None)));
    changed
}

impl Rebuild {
    /// The scopes whose items may differ between the models of `old` and
    /// `new`.
    pub fn between(old: &ClusterView, new: &ClusterView) -> Self {
        let networks = changed(old.networks, new.networks, |n| &n.id);
        if !networks.is_empty() || !changed(old.nodes, new.nodes, |n| &n.id).is_empty() {
            return Rebuild::All;
        }
        let mut scopes = Touched::default();
        for (before, after) in changed(old.tasks, new.tasks, |t| &t.id) {
            before.into_iter().chain(after).for_each(|task| scopes.task(task));
        }
        let services = changed(old.services, new.services, |s| &s.id);
        if !services.is_empty() {
            let ids: HashSet<&str> =
                services.iter().flat_map(|(b, a)| b.iter().chain(a)).map(|s| s.id.as_str()).collect();
            let tasks = old.tasks.iter().chain(new.tasks).filter(|t| ids.contains(t.service_id.as_str()));
            tasks.for_each(|task| scopes.task(task));
            for service in services.iter().flat_map(|(before, after)| before.iter().chain(after)) {
                scopes.service(service);
            }
        }
        Rebuild::Scopes {
            global: scopes.global,
            networks: scopes.networks.into_iter().map(str::to_string).collect(),
            nodes: scopes.nodes.into_iter().map(str::to_string).collect(),
        }
    }

    /// Whether the published ports are built anew.
    pub fn global(&self) -> bool {
        match self {
            Rebuild::All => true,
            Rebuild::Scopes { global, .. } => *global,
        }
    }

    /// Whether network `id`'s scope is built anew.
    pub fn network(&self, id: &str) -> bool {
        match self {
            Rebuild::All => true,
            Rebuild::Scopes { networks, .. } => networks.contains(id),
        }
    }

    /// Whether node `id`'s own part is built anew.
    pub fn node(&self, id: &str) -> bool {
        match self {
            Rebuild::All => true,
            Rebuild::Scopes { nodes, .. } => nodes.contains(id),
        }
    }
}

/// The scopes touched so far.
#[derive(Default)]
struct Touched<'a> {
    global: bool,
    networks: HashSet<&'a str>,
    nodes: HashSet<&'a str>,
}

impl<'a> Touched<'a> {
    /// A task's items: its spec on its node, its endpoint on each of its
    /// networks (ingress for a published port's backend).
    fn task(&mut self, task: &'a Task) {
        self.nodes.insert(&task.node_id);
        self.networks.extend(task.endpoints.iter().map(|e| e.network_id.as_str()));
    }

    /// A service's own items: its names and VIPs on its networks, its
    /// published ports (its tasks are touched by the caller).
    fn service(&mut self, service: &'a Service) {
        self.networks.extend(service.network_ids.iter().map(String::as_str));
        self.networks.extend(service.virtual_ips.iter().map(|vip| vip.network_id.as_str()));
        self.global |= service.ports.iter().any(|port| port.is_ingress());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::model::Records;
    use netctl_proto::{EndpointAddress, Network, Node, PortConfig};
    use std::sync::Arc;

    fn task(id: &str, node: &str, networks: &[&str]) -> Task {
        Task {
            id: id.into(),
            service_id: "s".into(),
            node_id: node.into(),
            endpoints: networks
                .iter()
                .map(|n| EndpointAddress { network_id: n.to_string(), ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    fn scopes(global: bool, networks: &[&str], nodes: &[&str]) -> Rebuild {
        Rebuild::Scopes {
            global,
            networks: networks.iter().map(|n| n.to_string()).collect(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn cluster() -> Records {
        Records {
            networks: vec![
                Network { id: "ing".into(), vni: 4096, ingress: true, ..Default::default() },
                Network { id: "n1".into(), vni: 4097, ..Default::default() },
                Network { id: "n2".into(), vni: 4098, ..Default::default() },
            ]
            .into(),
            services: vec![Service { id: "s".into(), network_ids: vec!["n1".into()], ..Default::default() }]
                .into(),
            tasks: vec![task("t1", "a", &["n1"]), task("t2", "b", &["n1"])].into(),
            nodes: vec![
                Node { id: "a".into(), ..Default::default() },
                Node { id: "b".into(), ..Default::default() },
            ]
            .into(),
        }
    }

    #[test]
    fn a_task_touches_its_node_and_its_networks_never_every_node() {
        let old = cluster();
        let mut new = cluster();
        Arc::make_mut(&mut new.tasks)[1].state = 2;
        assert_eq!(Rebuild::between(&old.view(), &new.view()), scopes(false, &["n1"], &["b"]));

        Arc::make_mut(&mut new.tasks).push(task("t3", "a", &["ing", "n2"]));
        assert_eq!(
            Rebuild::between(&old.view(), &new.view()),
            scopes(false, &["ing", "n1", "n2"], &["a", "b"])
        );

        // Moved from b to a, removed: before and after both count.
        let mut new = cluster();
        Arc::make_mut(&mut new.tasks)[1].node_id = "a".into();
        assert_eq!(Rebuild::between(&old.view(), &new.view()), scopes(false, &["n1"], &["a", "b"]));
        Arc::make_mut(&mut new.tasks).remove(0);
        assert_eq!(Rebuild::between(&old.view(), &new.view()), scopes(false, &["n1"], &["a", "b"]));
        assert_eq!(Rebuild::between(&old.view(), &old.view()), scopes(false, &[], &[]), "nothing changed");
    }

    #[test]
    fn a_service_touches_its_networks_the_nodes_of_its_tasks_and_the_ports_it_publishes() {
        let old = cluster();
        let mut new = cluster();
        Arc::make_mut(&mut new.services)[0]
            .ports
            .push(PortConfig { published_port: 8080, ..Default::default() });
        Arc::make_mut(&mut new.services)[0].network_ids.push("n2".into());
        assert_eq!(Rebuild::between(&old.view(), &new.view()), scopes(true, &["n1", "n2"], &["a", "b"]));

        let mut new = cluster();
        Arc::make_mut(&mut new.services)[0].ports.push(PortConfig {
            published_port: 8080,
            mode: "host".into(),
            ..Default::default()
        });
        assert_eq!(
            Rebuild::between(&old.view(), &new.view()),
            scopes(false, &["n1"], &["a", "b"]),
            "a host-mode port is not on every node"
        );
    }

    #[test]
    fn a_network_or_a_node_changed_rebuilds_everything() {
        let old = cluster();
        let mut new = cluster();
        Arc::make_mut(&mut new.nodes)[0].ingress_address = "10.255.0.2".into();
        assert_eq!(Rebuild::between(&old.view(), &new.view()), Rebuild::All);
        let mut new = cluster();
        Arc::make_mut(&mut new.networks).pop();
        assert_eq!(Rebuild::between(&old.view(), &new.view()), Rebuild::All);
    }
}
