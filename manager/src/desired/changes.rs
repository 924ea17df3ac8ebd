//! What changed between two [`Model`]s (pure): each scope is compared once
//! per revision ([`Changes::between`]), then each node's delta is cut from
//! the scopes it holds ([`Changes::for_node`]), so that a node is sent only
//! what changed among the items it holds, and nothing when none did.

use super::model::{Model, NodePart, Scope};
use bytes::Bytes;
use netctl_proto::desired::{Change, ItemChanges, ItemKey};
use std::cell::{OnceCell, RefCell};
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

/// One key of a scope whose item changed.
#[derive(Debug)]
struct Changed {
    key: Arc<ItemKey>,
    /// The item now (`None`: removed).
    after: Option<Bytes>,
    /// The key's removal, encoded for the first node that is sent it.
    removal: OnceCell<Bytes>,
}

impl Changed {
    /// The key's removal, encoded once for every node.
    fn removal(&self) -> Bytes {
        self.removal.get_or_init(|| self.key.encoded_removal()).clone()
    }
}

/// What a node is to be sent for a new model.
#[derive(Debug, PartialEq)]
pub enum NodeDelta {
    /// Nothing it holds changed.
    Unchanged,
    /// These items are added, replaced or removed.
    Changed(ItemChanges),
    /// The node was not in the earlier model: it needs its whole state.
    Whole,
    /// The node is not in the new model (it was removed).
    Gone,
}

/// The changed items of every scope between two models.
#[derive(Debug, Default)]
pub struct Changes {
    global: Vec<Changed>,
    networks: HashMap<String, Vec<Changed>>,
    nodes: HashMap<String, Vec<Changed>>,
    /// The removals of every item of a network some node lost, in key
    /// order, encoded for the first such node (a service removed from a
    /// thousand nodes is its items' removals encoded once, not per node).
    lost: RefCell<HashMap<String, Rc<[Bytes]>>>,
    /// The changes of the nodes that hold these networks, as before, and
    /// whose own items did not change: the same for each such node, cut
    /// for the first and shared with the others (a create's endpoints, sent
    /// to a thousand nodes).
    alike: RefCell<HashMap<BTreeSet<String>, Option<ItemChanges>>>,
}

/// The keys of `old` and `new` whose items differ, in one walk over both
/// in key order (none when both models share the scope).
fn compare(old: Option<&Scope>, new: Option<&Scope>) -> Vec<Changed> {
    if let (Some(old), Some(new)) = (old, new) {
        if std::ptr::eq(old, new) {
            // Shared by both models: not built anew, so unchanged.
            return Vec::new();
        }
    }
    let mut old = old.into_iter().flatten().peekable();
    let mut new = new.into_iter().flatten().peekable();
    let mut changed = Vec::new();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return changed,
            (Some((before, _)), Some((after, _))) => before.cmp(after),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
        };
        let before = if order == Ordering::Greater { None } else { old.next() };
        let after = if order == Ordering::Less { None } else { new.next() };
        let Some((key, _)) = before.or(after) else { return changed };
        let (before, after) = (before.map(|(_, item)| item), after.map(|(_, item)| item));
        if before != after {
            changed.push(Changed { key: key.clone(), after: after.cloned(), removal: OnceCell::new() });
        }
    }
}

/// Compares the scope (`scope` of each value) of every key of `old` and
/// `new`; only changed ones are kept.
fn compare_all<V>(
    old: &HashMap<String, V>,
    new: &HashMap<String, V>,
    scope: impl Fn(&V) -> &Scope,
) -> HashMap<String, Vec<Changed>> {
    let ids: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    ids.into_iter()
        .map(|id| (id.clone(), compare(old.get(id).map(&scope), new.get(id).map(&scope))))
        .filter(|(_, changed)| !changed.is_empty())
        .collect()
}

impl Changes {
    /// What changed from `old` to `new`, scope by scope.
    pub fn between(old: &Model, new: &Model) -> Self {
        Self {
            global: compare(Some(&old.global), Some(&new.global)),
            networks: compare_all(&old.networks, &new.networks, |scope| &**scope),
            nodes: compare_all(&old.nodes, &new.nodes, |part| &part.items),
            lost: RefCell::default(),
            alike: RefCell::default(),
        }
    }

    /// What `node_id` is to be sent to go from its state in `old` to its
    /// state in `new`.
    pub fn for_node(&self, old: &Model, new: &Model, node_id: &str) -> NodeDelta {
        let Some(now) = new.nodes.get(node_id) else { return NodeDelta::Gone };
        let Some(before) = old.nodes.get(node_id) else { return NodeDelta::Whole };
        let own = self.nodes.get(node_id).map_or(&[][..], Vec::as_slice);
        let alike = own.is_empty() && before.networks == now.networks;
        if alike {
            if let Some(changes) = self.alike.borrow().get(&now.networks) {
                return changes.clone().map_or(NodeDelta::Unchanged, NodeDelta::Changed);
            }
        }
        let changes = self.cut(before, now, own, old, new);
        if alike {
            self.alike.borrow_mut().insert(now.networks.clone(), changes.clone());
        }
        changes.map_or(NodeDelta::Unchanged, NodeDelta::Changed)
    }

    /// The changes of a node holding `before` in `old` and `now` in `new`
    /// whose own items' changes are `own`; `None` if there are none.
    fn cut(
        &self,
        before: &NodePart,
        now: &NodePart,
        own: &[Changed],
        old: &Model,
        new: &Model,
    ) -> Option<ItemChanges> {
        let mut parts = vec![Part::Changed(&self.global), Part::Changed(own)];
        for network in &now.networks {
            if !before.networks.contains(network) {
                parts.extend(new.networks.get(network).map(|scope| Part::Gained(scope)));
            } else if let Some(changed) = self.networks.get(network) {
                parts.push(Part::Changed(changed));
            }
        }
        for network in before.networks.difference(&now.networks) {
            if let Some(scope) = old.networks.get(network) {
                parts.push(Part::Lost(scope, self.removals_of(network, scope)));
            }
        }
        // Made at its size once: a thousand lists grown by doubling held up
        // to twice what they used.
        let mut changes = Vec::with_capacity(parts.iter().map(Part::len).sum());
        parts.into_iter().for_each(|part| part.add_to(&mut changes));
        // Each key belongs to one scope: no key comes twice. Gathered in a
        // list and sorted once (a thousand nodes each given thousands of
        // changes spent most of a change's time keeping them in a tree).
        (!changes.is_empty()).then(|| changes.into_iter().collect())
    }

    /// The removals of every item of network `id`'s `scope` (lost by a
    /// node), in key order.
    fn removals_of(&self, id: &str, scope: &Scope) -> Rc<[Bytes]> {
        let mut lost = self.lost.borrow_mut();
        let removals = lost
            .entry(id.to_string())
            .or_insert_with(|| scope.keys().map(|key| key.encoded_removal()).collect());
        removals.clone()
    }
}

/// A piece of a node's delta: what changed in a scope it holds, or every
/// item of a network it gained or lost.
enum Part<'a> {
    /// The changed items of a scope the node holds.
    Changed(&'a [Changed]),
    /// A network the node gained: all its items.
    Gained(&'a Scope),
    /// A network the node lost: its items and their removals, in key order.
    Lost(&'a Scope, Rc<[Bytes]>),
}

impl Part<'_> {
    /// How many changes it adds.
    fn len(&self) -> usize {
        match self {
            Part::Changed(changed) => changed.len(),
            Part::Gained(scope) | Part::Lost(scope, _) => scope.len(),
        }
    }

    /// Adds its changes to `changes`.
    fn add_to(self, changes: &mut Vec<(Arc<ItemKey>, Change)>) {
        match self {
            Part::Changed(changed) => changes.extend(changed.iter().map(|change| {
                let key = change.key.clone();
                match &change.after {
                    Some(after) => (key, Change::Upsert(after.clone())),
                    None => (key, Change::Remove(change.removal())),
                }
            })),
            Part::Gained(scope) => {
                changes.extend(scope.iter().map(|(key, item)| (key.clone(), Change::Upsert(item.clone()))))
            }
            Part::Lost(scope, removals) => changes.extend(
                scope
                    .keys()
                    .zip(removals.iter())
                    .map(|(key, removal)| (key.clone(), Change::Remove(removal.clone()))),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::model::Records;
    use crate::desired::rebuild::Rebuild;
    use netctl_proto::desired::DesiredItems;
    use netctl_proto::{
        watch_message, EndpointAddress, Network, Node, NodeState, PortConfig, Service, Task, TaskState,
        VirtualIp, WatchMessage,
    };
    use proptest::prelude::*;
    use std::collections::HashSet;

    const NETWORKS: [&str; 3] = ["ing", "n1", "n2"];
    const NODES: [&str; 3] = ["a", "b", "c"];

    /// A cluster over small alphabets: 3 possible nodes, 2 services on
    /// ingress and two overlays, up to 6 tasks in any state.
    type Cluster = Records;

    fn node() -> impl Strategy<Value = Node> {
        (0..3usize, proptest::option::of(2..4u8)).prop_map(|(i, ingress)| Node {
            id: NODES[i].into(),
            advertise_addr: format!("192.168.10.{}", 6 + i),
            ingress_address: ingress.map(|h| format!("10.255.0.{h}")).unwrap_or_default(),
            ..Default::default()
        })
    }

    fn service() -> impl Strategy<Value = Service> {
        (0..2usize, proptest::sample::subsequence(vec![0usize, 1, 2], 0..=3), any::<bool>(), any::<bool>())
            .prop_map(|(i, networks, port, vip)| Service {
                id: format!("s{i}"),
                name: format!("web{i}"),
                network_ids: networks.iter().map(|n| NETWORKS[*n].to_string()).collect(),
                ports: if port {
                    vec![PortConfig {
                        protocol: "tcp".into(),
                        published_port: 8080 + i as u32,
                        target_port: 80,
                        ..Default::default()
                    }]
                } else {
                    vec![]
                },
                virtual_ips: if vip {
                    networks
                        .iter()
                        .map(|n| VirtualIp {
                            network_id: NETWORKS[*n].into(),
                            address: format!("10.{n}.0.100"),
                        })
                        .collect()
                } else {
                    vec![]
                },
                ..Default::default()
            })
    }

    fn task() -> impl Strategy<Value = Task> {
        (
            0..6usize,
            0..2usize,
            0..3usize,
            any::<bool>(),
            any::<bool>(),
            proptest::sample::subsequence(vec![0usize, 1, 2], 0..=3),
            10..13u8,
        )
            .prop_map(|(i, service, node, wanted, running, networks, host)| {
                let mut task = Task {
                    id: format!("t{i}"),
                    service_id: format!("s{service}"),
                    node_id: NODES[node].into(),
                    slot: i as u32 + 1,
                    endpoints: networks
                        .iter()
                        .map(|n| EndpointAddress {
                            network_id: NETWORKS[*n].into(),
                            address: format!("10.{n}.0.{host}"),
                            mac: format!("m{host}"),
                        })
                        .collect(),
                    ..Default::default()
                };
                task.set_desired_state(if wanted { TaskState::Running } else { TaskState::Shutdown });
                task.set_state(if running { TaskState::Running } else { TaskState::Assigned });
                task
            })
    }

    fn cluster() -> impl Strategy<Value = Cluster> {
        let networks = proptest::sample::subsequence(vec![1usize, 2], 0..=2).prop_map(|chosen| {
            let mut networks =
                vec![Network { id: "ing".into(), vni: 4096, ingress: true, ..Default::default() }];
            networks.extend(chosen.into_iter().map(|n| Network {
                id: NETWORKS[n].into(),
                vni: 4096 + n as u32,
                ..Default::default()
            }));
            networks
        });
        (
            networks,
            proptest::collection::vec(service(), 0..3),
            proptest::collection::vec(task(), 0..7),
            proptest::collection::vec(node(), 0..4),
        )
            .prop_map(|(networks, services, tasks, nodes)| Cluster {
                networks: networks.into(),
                services: distinct(services, |s| &s.id).into(),
                tasks: distinct(tasks, |t| &t.id).into(),
                nodes: distinct(nodes, |n| &n.id).into(),
            })
    }

    /// `records` with one record per ID, the last (a store holds one).
    fn distinct<R>(records: Vec<R>, id: fn(&R) -> &String) -> Vec<R> {
        let mut seen = HashSet::new();
        let mut kept: Vec<R> = records.into_iter().rev().filter(|r| seen.insert(id(r).clone())).collect();
        kept.reverse();
        kept
    }

    /// A cluster and the same a change later: some of its services and
    /// tasks kept, some new or replaced, and now and then its networks or
    /// nodes changed too.
    fn changed_cluster() -> impl Strategy<Value = (Cluster, Cluster)> {
        (
            cluster(),
            cluster(),
            any::<u64>(),
            proptest::collection::vec(service(), 0..2),
            proptest::collection::vec(task(), 0..3),
            0..8u8,
        )
            .prop_map(|(first, other, kept, services, tasks, rare)| {
                let keep = |i: usize| kept >> (i % 64) & 1 == 1;
                let mut second = first.clone();
                let services_kept = if keep(0) { first.services.to_vec() } else { Vec::new() };
                second.services = distinct([services_kept, services].concat(), |s| &s.id).into();
                let tasks_kept =
                    first.tasks.iter().cloned().enumerate().filter(|(i, _)| keep(i + 1)).map(|(_, t)| t);
                second.tasks = distinct(tasks_kept.chain(tasks).collect(), |t| &t.id).into();
                match rare {
                    0 => second.networks = other.networks,
                    1 => second.nodes = other.nodes,
                    _ => {}
                }
                (first, second)
            })
    }

    fn model(cluster: &Cluster, revision: u64) -> Model {
        Model::build(&cluster.view(), 4789, revision)
    }

    /// What a node holds after `delta` is applied to `before`, every part
    /// of it.
    fn applied(before: &NodeState, delta: NodeDelta, revision: u64) -> Option<NodeState> {
        let mut items = DesiredItems::from_state(before);
        match delta {
            NodeDelta::Unchanged => {}
            NodeDelta::Changed(changes) => {
                for part in changes.into_parts(before.revision, revision, usize::MAX) {
                    let Some(watch_message::Message::Delta(delta)) = part.message else { panic!("a delta") };
                    items.apply(&delta).unwrap();
                }
            }
            NodeDelta::Whole | NodeDelta::Gone => return None,
        }
        Some(items.to_state(revision))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// A model built after another, anew only in the scopes the change
        /// touched, is the model built from nothing; the scopes it did not
        /// build anew it shares.
        #[test]
        fn a_model_built_after_another_is_the_one_built_from_nothing((first, second) in changed_cluster()) {
            let (old, view) = (model(&first, 1), second.view());
            let rebuild = Rebuild::between(&first.view(), &view);
            let new = Model::build_after(&old, &rebuild, &view, 4789, 2);
            prop_assert_eq!(&new, &model(&second, 2));
            for (id, scope) in &new.networks {
                if !rebuild.network(id) {
                    prop_assert!(Arc::ptr_eq(scope, &old.networks[id]), "network {} shared", id);
                }
            }
        }

        /// Snapshot + delta always equals the next snapshot, for every node,
        /// whatever changed; a node leaving or arriving is told so.
        #[test]
        fn a_snapshot_plus_the_nodes_delta_is_the_next_snapshot(first in cluster(), second in cluster()) {
            let (old, new) = (model(&first, 1), model(&second, 2));
            let changes = Changes::between(&old, &new);
            for node in NODES {
                let delta = changes.for_node(&old, &new, node);
                match (old.snapshot(node), new.snapshot(node)) {
                    (Some(before), Some(after)) => {
                        let unchanged = matches!(delta, NodeDelta::Unchanged);
                        prop_assert_eq!(unchanged, NodeState { revision: 2, ..before.clone() } == after);
                        prop_assert_eq!(applied(&before, delta, 2), Some(after));
                    }
                    (None, Some(_)) => prop_assert_eq!(delta, NodeDelta::Whole),
                    (_, None) => prop_assert_eq!(delta, NodeDelta::Gone),
                }
            }
        }
    }

    #[test]
    fn a_change_on_a_network_reaches_only_the_nodes_on_it() {
        let mut cluster = Cluster {
            networks: vec![
                Network { id: "ing".into(), vni: 4096, ingress: true, ..Default::default() },
                Network { id: "n1".into(), vni: 4097, ..Default::default() },
            ]
            .into(),
            services: vec![Service {
                id: "s0".into(),
                name: "web".into(),
                network_ids: vec!["n1".into()],
                ..Default::default()
            }]
            .into(),
            tasks: Default::default(),
            nodes: Arc::new(
                NODES
                    .iter()
                    .enumerate()
                    .map(|(i, id)| Node {
                        id: id.to_string(),
                        advertise_addr: format!("192.168.10.{}", 6 + i),
                        ..Default::default()
                    })
                    .collect(),
            ),
        };
        let task = |id: &str, node: &str, host: u8| {
            let mut task = Task {
                id: id.into(),
                service_id: "s0".into(),
                node_id: node.into(),
                endpoints: vec![EndpointAddress {
                    network_id: "n1".into(),
                    address: format!("10.1.0.{host}"),
                    mac: "m".into(),
                }],
                ..Default::default()
            };
            task.set_desired_state(TaskState::Running);
            task.set_state(TaskState::Running);
            task
        };
        cluster.tasks = vec![task("t1", "a", 2), task("t2", "b", 3)].into();
        let old = model(&cluster, 1);
        Arc::make_mut(&mut cluster.tasks).push(task("t3", "b", 4));
        let new = model(&cluster, 2);
        let changes = Changes::between(&old, &new);
        assert_eq!(changes.for_node(&old, &new, "c"), NodeDelta::Unchanged, "c has no task on n1");
        let NodeDelta::Changed(changes) = changes.for_node(&old, &new, "a") else { panic!("a is on n1") };
        let parts: Vec<_> = changes.into_parts(1, 2, usize::MAX).collect();
        let [WatchMessage { message: Some(watch_message::Message::Delta(delta)), .. }] = parts.as_slice()
        else {
            panic!("one delta: {parts:?}")
        };
        assert!(delta.removals.is_empty());
        // The new endpoint (its name and VIP backend with it), nothing else.
        assert_eq!(delta.upserts.len(), 1, "{:?}", delta.upserts);
        assert!(delta.upserts[0].len() < 100, "{} bytes", delta.upserts[0].len());
    }
}
