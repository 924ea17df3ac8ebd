//! The cluster's desired state at one revision, as every node's items
//! ([`netctl_proto::desired`]) grouped by who needs them (pure): items every
//! node holds (published ports, the cluster's nodes), items of each network
//! (the network, its endpoints, VIPs and names) for the nodes that have a
//! task on it (and every node for ingress), and each node's own (its header
//! and tasks). A task is one endpoint item on each of its networks; the
//! backends of ports, VIPs and names are what nodes derive from them. Built
//! once per revision and shared by every Watch stream.

use bytes::Bytes;
use netctl_proto::convention::endpoint_address_number;
use netctl_proto::desired::{item, ItemKey};
use netctl_proto::desired_item::Item;
use netctl_proto::{
    Endpoint, Network, Node, NodeHeader, PublishedPort, Service, ServiceNames, ServiceVip, Task, TaskSpec,
    TaskState,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::rebuild::Rebuild;
use std::sync::Arc;

/// Everything the desired state is computed from.
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

/// Every record a model is built from: one read of the store, shared with
/// its other readers ([`crate::store::Store::shared`]).
#[derive(Debug, Clone, Default)]
pub struct Records {
    /// All networks.
    pub networks: Arc<Vec<Network>>,
    /// All services.
    pub services: Arc<Vec<Service>>,
    /// All tasks.
    pub tasks: Arc<Vec<Task>>,
    /// All nodes.
    pub nodes: Arc<Vec<Node>>,
}

impl Records {
    /// The records to build a model from.
    pub fn view(&self) -> ClusterView<'_> {
        ClusterView {
            networks: &self.networks,
            services: &self.services,
            tasks: &self.tasks,
            nodes: &self.nodes,
        }
    }
}

/// Items by key, each encoded once for every node it is sent to (an item
/// always encodes the same, so equal encodings are equal items; keys are
/// shared with the changes cut from them).
pub type Scope = BTreeMap<Arc<ItemKey>, Bytes>;

/// One node's own items and the networks it holds.
#[derive(Debug, Default, PartialEq)]
pub struct NodePart {
    /// Its header and the tasks it runs.
    pub items: Scope,
    /// Ingress and the networks its tasks attach to.
    pub networks: BTreeSet<String>,
}

/// The desired state of every node at one revision. Its scopes are shared
/// with the model before it where they did not change ([`Model::build_after`]).
#[derive(Debug, Default, PartialEq)]
pub struct Model {
    /// The store revision it was built at.
    pub revision: u64,
    /// What every node holds.
    pub global: Arc<Scope>,
    /// What the nodes on each network hold, by network ID.
    pub networks: HashMap<String, Arc<Scope>>,
    /// Each node's own part, by node ID.
    pub nodes: HashMap<String, Arc<NodePart>>,
}

/// The scopes a model is building anew; the others are left out here and
/// taken from the model before.
#[derive(Default)]
struct Draft {
    /// What every node holds, if rebuilt.
    global: Option<Scope>,
    /// The networks rebuilt.
    networks: HashMap<String, Scope>,
    /// The nodes' parts rebuilt.
    nodes: HashMap<String, NodePart>,
    /// Every network's VNI, by ID.
    vnis: HashMap<String, u32>,
}

/// A scope `built` anew, or else the one `before` (shared).
fn kept<T>(built: Option<T>, before: Option<&Arc<T>>) -> Option<Arc<T>> {
    built.map(Arc::new).or_else(|| before.cloned())
}

fn put(scope: &mut Scope, new: Item) {
    let new = item(new);
    if let Some(key) = netctl_proto::desired::key(&new) {
        scope.insert(Arc::new(key), netctl_proto::desired::encode(&new));
    }
}

impl Model {
    /// Builds every node's desired state at `revision`: the tasks it runs,
    /// the ingress network (on every node, so that every node answers
    /// published ports) and the networks its tasks attach to (an overlay
    /// exists only where it has a task), the endpoints of those networks
    /// (of running tasks: they are the peers, backends and names), the
    /// published ports, the service VIPs and the names its resolver
    /// answers.
    pub fn build(cluster: &ClusterView, data_path_port: u32, revision: u64) -> Self {
        Draft::build(cluster, &Rebuild::All, data_path_port).finish(None, cluster, revision)
    }

    /// The same as [`Model::build`], building anew only the scopes
    /// `rebuild` names and sharing the others with `previous`: a change's
    /// cost grows with the scopes it touches, not with the cluster.
    /// `rebuild` must name every scope whose items differ from
    /// `previous`'s ([`Rebuild::between`] the clusters both were built
    /// from).
    pub fn build_after(
        previous: &Model,
        rebuild: &Rebuild,
        cluster: &ClusterView,
        data_path_port: u32,
        revision: u64,
    ) -> Self {
        Draft::build(cluster, rebuild, data_path_port).finish(Some(previous), cluster, revision)
    }
}

impl Draft {
    /// Builds the scopes `rebuild` names from `cluster`.
    fn build(cluster: &ClusterView, rebuild: &Rebuild, data_path_port: u32) -> Self {
        let mut draft = Draft {
            global: rebuild.global().then(Scope::new),
            vnis: cluster.networks.iter().map(|n| (n.id.clone(), n.vni)).collect(),
            ..Default::default()
        };
        let ingress = cluster.networks.iter().find(|n| n.ingress).map(|n| n.id.as_str());
        for network in cluster.networks.iter().filter(|n| rebuild.network(&n.id)) {
            let scope = draft.networks.entry(network.id.clone()).or_default();
            put(scope, Item::Network(Box::new(network.clone())));
        }
        for node in cluster.nodes {
            if let Some(global) = draft.global.as_mut() {
                put(global, Item::ClusterNode(node.advertise_addr.clone()));
            }
            if !rebuild.node(&node.id) {
                continue;
            }
            let part = draft.nodes.entry(node.id.clone()).or_default();
            part.networks.extend(ingress.map(str::to_string));
            let header = NodeHeader {
                node_id: node.id.clone(),
                advertise_addr: node.advertise_addr.clone(),
                data_path_port,
                ingress_address: node.ingress_address.clone(),
            };
            put(&mut part.items, Item::Header(Box::new(header)));
        }
        draft.add_tasks(cluster, ingress);
        if let Some(ingress) = ingress {
            draft.add_ingress_sandboxes(ingress, cluster.nodes);
        }
        for service in cluster.services {
            draft.add_ports(service);
            draft.add_vips(service);
            draft.add_names(service, ingress);
        }
        draft
    }

    /// The model of `cluster` at `revision`: the scopes built here, the
    /// others `previous`'s.
    fn finish(mut self, previous: Option<&Model>, cluster: &ClusterView, revision: u64) -> Model {
        let global = kept(self.global.take(), previous.map(|p| &p.global));
        let networks = cluster.networks.iter().filter_map(|network| {
            let before = previous.and_then(|p| p.networks.get(&network.id));
            Some((network.id.clone(), kept(self.networks.remove(&network.id), before)?))
        });
        let networks = networks.collect();
        let nodes = cluster.nodes.iter().filter_map(|node| {
            let before = previous.and_then(|p| p.nodes.get(&node.id));
            Some((node.id.clone(), kept(self.nodes.remove(&node.id), before)?))
        });
        Model { revision, global: global.unwrap_or_default(), networks, nodes: nodes.collect() }
    }

    /// Each wanted task on its node and its endpoints on their networks.
    fn add_tasks(&mut self, cluster: &ClusterView, ingress: Option<&str>) {
        let services: HashMap<&str, &Service> = cluster.services.iter().map(|s| (s.id.as_str(), s)).collect();
        let addresses: HashMap<&str, u32> = cluster
            .nodes
            .iter()
            .filter_map(|n| Some((n.id.as_str(), endpoint_address_number(&n.advertise_addr)?)))
            .collect();
        for task in cluster.tasks.iter().filter(|t| t.desired_state() == TaskState::Running) {
            let Some(service) = services.get(task.service_id.as_str()) else { continue };
            let name = crate::services::task_name(service, task);
            if let Some(part) = self.nodes.get_mut(&task.node_id) {
                // A task not replaced by an update yet runs the spec before.
                let runs = crate::updates::spec_of(service, task);
                let spec = TaskSpec {
                    id: task.id.clone(),
                    name: name.clone(),
                    service_id: service.id.clone(),
                    command: runs.command.clone(),
                    env: runs.env.clone().into_iter().collect(),
                    workdir: runs.workdir.clone(),
                    endpoints: task.endpoints.clone(),
                    runtime: runs.runtime.clone(),
                    host_ports: runs.ports.iter().filter(|p| !p.is_ingress()).cloned().collect(),
                };
                put(&mut part.items, Item::Task(Box::new(spec)));
                let attached = task.endpoints.iter().map(|e| &e.network_id);
                part.networks.extend(attached.filter(|id| self.vnis.contains_key(*id)).cloned());
            }
            // A task's endpoints go out once it runs, as Swarm's peers
            // learn an endpoint when its container joins: until then
            // nothing answers there, and a create costs every node one
            // item per task and network, not two (placed, then running).
            if task.state() != TaskState::Running {
                continue;
            }
            let Some(&node_addr) = addresses.get(task.node_id.as_str()) else { continue };
            for endpoint in &task.endpoints {
                let Some(scope) = self.networks.get_mut(&endpoint.network_id) else { continue };
                let (Some(&vni), Some(address)) =
                    (self.vnis.get(&endpoint.network_id), endpoint_address_number(&endpoint.address))
                else {
                    continue;
                };
                // Names are not answered on ingress: no task identity there.
                let named = Some(endpoint.network_id.as_str()) != ingress;
                let endpoint = Endpoint {
                    vni,
                    address,
                    node_addr,
                    service: service.name.clone(),
                    task_id: if named { task.id.clone() } else { String::new() },
                    task_name: if named { name.clone() } else { String::new() },
                };
                put(scope, Item::Endpoint(Box::new(endpoint)));
            }
        }
    }

    /// The ingress_sbox endpoint of every node: replies of tasks on one node
    /// to connections balanced on another go back through it.
    fn add_ingress_sandboxes(&mut self, ingress: &str, nodes: &[Node]) {
        let (Some(scope), Some(&vni)) = (self.networks.get_mut(ingress), self.vnis.get(ingress)) else {
            return;
        };
        for node in nodes {
            let (Some(address), Some(node_addr)) = (
                endpoint_address_number(&node.ingress_address),
                endpoint_address_number(&node.advertise_addr),
            ) else {
                continue;
            };
            let endpoint = Endpoint { vni, address, node_addr, ..Default::default() };
            put(scope, Item::Endpoint(Box::new(endpoint)));
        }
    }

    /// The service's published ports (nodes balance them over the running
    /// tasks' ingress endpoints).
    fn add_ports(&mut self, service: &Service) {
        let Some(global) = self.global.as_mut() else { return };
        for port in service.ports.iter().filter(|p| p.is_ingress()) {
            put(global, Item::Port(Box::new(port_of(service, port))));
        }
    }

    /// The service's VIPs (nodes balance each over the running tasks'
    /// endpoints on its network).
    fn add_vips(&mut self, service: &Service) {
        for vip in &service.virtual_ips {
            let Some(scope) = self.networks.get_mut(&vip.network_id) else { continue };
            let entry = ServiceVip {
                network_id: vip.network_id.clone(),
                address: vip.address.clone(),
                service: service.name.clone(),
                backends: Vec::new(),
            };
            put(scope, Item::Vip(Box::new(entry)));
        }
    }

    /// What resolvers answer for the service on each of its networks
    /// (ingress aside, as in Swarm): its VIP and aliases (and its running
    /// tasks, which nodes take from their endpoints).
    fn add_names(&mut self, service: &Service, ingress: Option<&str>) {
        for network_id in service.network_ids.iter().filter(|id| Some(id.as_str()) != ingress) {
            let Some(scope) = self.networks.get_mut(network_id) else { continue };
            let names = ServiceNames {
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
                tasks: Vec::new(),
            };
            put(scope, Item::Names(Box::new(names)));
        }
    }
}

impl Model {
    /// How many items a whole state of `node_id` has; 0 if it is not in
    /// this model.
    pub fn item_count(&self, node_id: &str) -> usize {
        let Some(part) = self.nodes.get(node_id) else { return 0 };
        let networks: usize =
            part.networks.iter().filter_map(|id| self.networks.get(id)).map(|scope| scope.len()).sum();
        self.global.len() + part.items.len() + networks
    }

    /// The encoded items of the whole desired state of `node_id`, shared
    /// with this model; `None` if the node is not in it.
    pub fn items(&self, node_id: &str) -> Option<Vec<Bytes>> {
        let part = self.nodes.get(node_id)?;
        let networks = part.networks.iter().filter_map(|id| self.networks.get(id));
        let scopes =
            self.global.values().chain(part.items.values()).chain(networks.flat_map(|scope| scope.values()));
        Some(scopes.cloned().collect())
    }

    /// The whole desired state of `node_id`; `None` if the node is not in
    /// this model.
    #[cfg(test)]
    pub fn snapshot(&self, node_id: &str) -> Option<netctl_proto::NodeState> {
        let mut items = netctl_proto::desired::DesiredItems::default();
        for item in self.items(node_id)? {
            items.insert(prost::Message::decode(item).expect("an item encoded here decodes"));
        }
        Some(items.to_state(self.revision))
    }
}

/// A published port of a service as a node sees it.
fn port_of(service: &Service, port: &netctl_proto::PortConfig) -> PublishedPort {
    PublishedPort {
        protocol: port.protocol.clone(),
        published_port: port.published_port,
        target_port: port.target_port,
        service: service.name.clone(),
        backends: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_proto::EndpointAddress;

    /// Node `id` at data-path address 192.168.10.`host`.
    fn node(id: &str, host: u8) -> Node {
        Node { id: id.into(), advertise_addr: format!("192.168.10.{host}"), ..Default::default() }
    }

    /// The ingress network ("ing") and an overlay ("net", demonet).
    fn ingress_and_demonet() -> [Network; 2] {
        [
            Network {
                id: "ing".into(),
                name: "ingress".into(),
                vni: 4096,
                ingress: true,
                ..Default::default()
            },
            Network { id: "net".into(), name: "demonet".into(), vni: 4097, ..Default::default() },
        ]
    }

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
        let nodes = [node("a", 6), node("b", 7), node("c", 8)];
        let networks = ingress_and_demonet();
        let services = [Service {
            id: "svc".into(),
            name: "demoservice".into(),
            network_ids: vec!["net".into()],
            ..Default::default()
        }];
        let mut stopped = task("t3", "b", "192.168.200.5");
        stopped.set_desired_state(TaskState::Shutdown);
        let mut runs = task("t2", "b", "192.168.200.4");
        runs.set_state(TaskState::Running);
        let tasks = [task("t1", "a", "192.168.200.3"), runs, stopped];
        let cluster = ClusterView { networks: &networks, services: &services, tasks: &tasks, nodes: &nodes };

        let model = Model::build(&cluster, 4789, 7);
        let state = model.snapshot("a").unwrap();
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
        let named: Vec<&str> = state.names[0].tasks.iter().map(|t| t.address.as_str()).collect();
        assert_eq!(named, ["192.168.200.4"], "t1 does not report Running yet");

        let idle = model.snapshot("c").unwrap();
        assert_eq!(idle.networks.len(), 1, "only ingress");
        assert!(idle.tasks.is_empty() && idle.remote_endpoints.is_empty());
        assert!(idle.names.is_empty(), "no overlay, no names");
    }

    #[test]
    fn names_hold_the_vip_the_aliases_and_only_running_tasks() {
        let nodes = [node("a", 6)];
        let networks = ingress_and_demonet();
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
        let state = Model::build(&cluster, 4789, 1).snapshot("a").unwrap();
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

    #[test]
    fn a_task_is_an_endpoint_on_its_networks_only_once_it_runs() {
        let nodes = [node("a", 6), node("b", 7)];
        let networks = ingress_and_demonet();
        let services = [Service {
            id: "svc".into(),
            name: "web".into(),
            network_ids: vec!["net".into(), "ing".into()],
            ..Default::default()
        }];
        let mut placed = task("t1", "a", "192.168.200.3");
        placed.endpoints.push(EndpointAddress {
            network_id: "ing".into(),
            address: "10.255.0.9".into(),
            mac: "m".into(),
        });
        // b holds demonet for a task of its own.
        let mut other = task("t2", "b", "192.168.200.4");
        other.set_state(TaskState::Running);
        let endpoints_seen_by_b = |task: &Task| {
            let tasks = [task.clone(), other.clone()];
            let cluster =
                ClusterView { networks: &networks, services: &services, tasks: &tasks, nodes: &nodes };
            let state = Model::build(&cluster, 4789, 1).snapshot("b").unwrap();
            let a = u32::from(std::net::Ipv4Addr::new(192, 168, 10, 6));
            let of_task = state.endpoints.iter().filter(|e| e.node_addr == a);
            of_task.map(|e| (e.vni, e.service.clone())).collect::<Vec<_>>()
        };
        let (ing, net) = ((4096, "web".to_string()), (4097, "web".to_string()));
        assert_eq!(endpoints_seen_by_b(&placed), [], "not a peer before it runs");
        placed.set_state(TaskState::Running);
        assert_eq!(endpoints_seen_by_b(&placed), [ing, net], "a peer and a backend on each of its networks");
        placed.set_state(TaskState::Failed);
        assert_eq!(endpoints_seen_by_b(&placed), [], "not a peer once it failed");
    }
}
