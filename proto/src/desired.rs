//! A node's desired state as a set of keyed items ([`DesiredItems`]), the
//! form deltas are computed in and applied to. A [`NodeState`] splits into
//! items (a published port, a task endpoint, a task...) and is assembled
//! again from them, its lists ordered by key, so that a state, its items
//! and a delta between two of them say the same. A task costs a node one
//! item per network it shares with it, its endpoint: the remote endpoints
//! and the backends of ports, VIPs and names are derived from the
//! endpoints when the state is assembled.

use crate::convention::{endpoint_address_number, endpoint_mac_text};
use crate::desired_item::Item;
use crate::watch_message;
use crate::{
    DesiredItem, Endpoint, Network, NetworkAttachment, NodeHeader, NodeState, NodeStateDelta, PublishedPort,
    RemoteEndpoint, ServiceNames, ServiceVip, TaskName, TaskSpec, WatchMessage,
};
use bytes::Bytes;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// What names an item within a node's desired state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ItemKey {
    /// The node-wide fields.
    Header,
    /// A node of the cluster, by data-path address.
    ClusterNode(String),
    /// A network, by ID.
    Network(String),
    /// A task the node runs, by ID.
    Task(String),
    /// A task's (or an ingress_sbox's) endpoint: its network's VNI, its
    /// address (IPv4 as a number).
    Endpoint(u32, u32),
    /// A published port: protocol, port.
    Port(String, u32),
    /// A service VIP: network ID, address.
    Vip(String, String),
    /// A service's names on a network: network ID, service name.
    Names(String, String),
}

impl ItemKey {
    /// The smallest item with this key, encoded: what a delta sends to
    /// remove it.
    pub fn encoded_removal(&self) -> Bytes {
        let (s, u) = (String::clone, |n: &u32| *n);
        encode(&item(match self {
            ItemKey::Header => Item::Header(Box::default()),
            ItemKey::ClusterNode(address) => Item::ClusterNode(s(address)),
            ItemKey::Network(id) => Item::Network(Box::new(Network { id: s(id), ..Default::default() })),
            ItemKey::Task(id) => Item::Task(Box::new(TaskSpec { id: s(id), ..Default::default() })),
            ItemKey::Endpoint(vni, address) => {
                Item::Endpoint(Box::new(Endpoint { vni: u(vni), address: u(address), ..Default::default() }))
            }
            ItemKey::Port(protocol, port) => Item::Port(Box::new(PublishedPort {
                protocol: s(protocol),
                published_port: u(port),
                ..Default::default()
            })),
            ItemKey::Vip(network_id, address) => Item::Vip(Box::new(ServiceVip {
                network_id: s(network_id),
                address: s(address),
                ..Default::default()
            })),
            ItemKey::Names(network_id, service) => Item::Names(Box::new(ServiceNames {
                network_id: s(network_id),
                service: s(service),
                ..Default::default()
            })),
        }))
    }
}

/// The key of `item`; `None` for an item with nothing set.
pub fn key(item: &DesiredItem) -> Option<ItemKey> {
    Some(match item.item.as_ref()? {
        Item::Header(_) => ItemKey::Header,
        Item::ClusterNode(address) => ItemKey::ClusterNode(address.clone()),
        Item::Network(network) => ItemKey::Network(network.id.clone()),
        Item::Task(task) => ItemKey::Task(task.id.clone()),
        Item::Endpoint(e) => ItemKey::Endpoint(e.vni, e.address),
        Item::Port(p) => ItemKey::Port(p.protocol.clone(), p.published_port),
        Item::Vip(v) => ItemKey::Vip(v.network_id.clone(), v.address.clone()),
        Item::Names(n) => ItemKey::Names(n.network_id.clone(), n.service.clone()),
    })
}

/// Wraps `item` in a [`DesiredItem`].
pub fn item(item: Item) -> DesiredItem {
    DesiredItem { item: Some(item) }
}

/// A node's desired state as items by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredItems {
    items: BTreeMap<ItemKey, DesiredItem>,
}

impl DesiredItems {
    /// Adds or replaces `item`.
    pub fn insert(&mut self, item: DesiredItem) {
        if let Some(key) = key(&item) {
            self.items.insert(key, item);
        }
    }

    /// The item with key `key`.
    pub fn get(&self, key: &ItemKey) -> Option<&Item> {
        self.items.get(key).and_then(|item| item.item.as_ref())
    }

    /// The items of the keys from `first` on while `within` holds for
    /// them, in key order (keys of a kind sort together: a range, where
    /// walking every item would cost the size of the state).
    pub fn range<'a>(
        &'a self,
        first: &ItemKey,
        within: impl Fn(&ItemKey) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Item> + 'a {
        self.items
            .range(first..)
            .take_while(move |(key, _)| within(key))
            .filter_map(|(_, item)| item.item.as_ref())
    }

    /// The keys from `first` on while `within` holds for them, in order
    /// (counting them reads no item).
    pub fn range_keys<'a>(
        &'a self,
        first: &ItemKey,
        within: impl Fn(&ItemKey) -> bool + 'a,
    ) -> impl Iterator<Item = &'a ItemKey> + 'a {
        self.items.range(first..).map(|(key, _)| key).take_while(move |key| within(key))
    }

    /// The items, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = &Item> {
        self.items.values().filter_map(|item| item.item.as_ref())
    }

    /// How many items there are.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Splits `state` into items (what is derived from its endpoints is
    /// not read: remote endpoints, backends, the tasks of names).
    pub fn from_state(state: &NodeState) -> Self {
        let mut items = Self::default();
        items.insert(item(Item::Header(Box::new(NodeHeader {
            node_id: state.node_id.clone(),
            advertise_addr: state.advertise_addr.clone(),
            data_path_port: state.data_path_port,
            ingress_address: state.ingress_address.clone(),
        }))));
        for address in &state.cluster_nodes {
            items.insert(item(Item::ClusterNode(address.clone())));
        }
        for network in state.networks.iter().filter_map(|a| a.network.clone()) {
            items.insert(item(Item::Network(Box::new(network))));
        }
        for task in &state.tasks {
            items.insert(item(Item::Task(Box::new(task.clone()))));
        }
        for endpoint in &state.endpoints {
            items.insert(item(Item::Endpoint(Box::new(endpoint.clone()))));
        }
        for port in &state.published_ports {
            items.insert(item(Item::Port(Box::new(PublishedPort { backends: Vec::new(), ..port.clone() }))));
        }
        for vip in &state.service_vips {
            items.insert(item(Item::Vip(Box::new(ServiceVip { backends: Vec::new(), ..vip.clone() }))));
        }
        for names in &state.names {
            items.insert(item(Item::Names(Box::new(ServiceNames { tasks: Vec::new(), ..names.clone() }))));
        }
        items
    }

    /// The [`NodeState`] at `revision` these items make, every list in key
    /// order, with what the endpoints give: the remote endpoints (those on
    /// another node), and the running tasks' addresses behind their
    /// service's published ports (on ingress), VIPs and names.
    pub fn to_state(&self, revision: u64) -> NodeState {
        let mut state = NodeState { revision, ..Default::default() };
        for item in self.items.values().filter_map(|i| i.item.as_ref()) {
            match item {
                Item::Header(header) => {
                    state.node_id = header.node_id.clone();
                    state.advertise_addr = header.advertise_addr.clone();
                    state.data_path_port = header.data_path_port;
                    state.ingress_address = header.ingress_address.clone();
                }
                Item::ClusterNode(address) => state.cluster_nodes.push(address.clone()),
                Item::Network(n) => state.networks.push(NetworkAttachment { network: Some((**n).clone()) }),
                Item::Task(task) => state.tasks.push((**task).clone()),
                Item::Endpoint(endpoint) => state.endpoints.push((**endpoint).clone()),
                Item::Port(port) => state.published_ports.push((**port).clone()),
                Item::Vip(vip) => state.service_vips.push((**vip).clone()),
                Item::Names(names) => state.names.push((**names).clone()),
            }
        }
        derive_from_endpoints(&mut state);
        state
    }

    /// Applies `delta`: its removals, then its upserts. An item that does
    /// not decode is an error, and then nothing is applied.
    pub fn apply(&mut self, delta: &NodeStateDelta) -> Result<(), prost::DecodeError> {
        let decode = |items: &[Bytes]| -> Result<Vec<DesiredItem>, prost::DecodeError> {
            items.iter().map(|encoded| DesiredItem::decode(encoded.as_ref())).collect()
        };
        let (removals, upserts) = (decode(&delta.removals)?, decode(&delta.upserts)?);
        for removed in removals.iter().filter_map(key) {
            self.items.remove(&removed);
        }
        for upserted in upserts {
            self.insert(upserted);
        }
        Ok(())
    }

    /// What turns these items into `next`.
    pub fn diff(&self, next: &DesiredItems) -> ItemChanges {
        let upserts = next
            .items
            .iter()
            .filter(|(key, item)| self.items.get(*key) != Some(*item))
            .map(|(key, item)| (Arc::new(key.clone()), Change::Upsert(encode(item))));
        let removals = self
            .items
            .keys()
            .filter(|key| !next.items.contains_key(*key))
            .map(|key| (Arc::new(key.clone()), Change::Remove(key.encoded_removal())));
        upserts.chain(removals).collect()
    }
}

/// Fills in what `state`'s endpoints give: its remote endpoints, and the
/// tasks behind each published port (their addresses on the ingress
/// network), VIP and names entry of their service, in endpoint order. An
/// endpoint on no network the state holds gives nothing.
fn derive_from_endpoints(state: &mut NodeState) {
    let networks: HashMap<u32, &str> =
        state.networks.iter().filter_map(|a| a.network.as_ref()).map(|n| (n.vni, n.id.as_str())).collect();
    let ingress = state.networks.iter().filter_map(|a| a.network.as_ref()).find(|n| n.ingress);
    let ingress = ingress.map(|n| n.id.as_str());
    let local = endpoint_address_number(&state.advertise_addr);
    let mut serving: HashMap<(&str, &str), Vec<&Endpoint>> = HashMap::new();
    for endpoint in &state.endpoints {
        let Some(network_id) = networks.get(&endpoint.vni).copied() else { continue };
        if endpoint.node_addr != 0 && Some(endpoint.node_addr) != local {
            let address = Ipv4Addr::from(endpoint.address);
            state.remote_endpoints.push(RemoteEndpoint {
                network_id: network_id.to_string(),
                address: address.to_string(),
                mac: endpoint_mac_text(address),
                node_addr: Ipv4Addr::from(endpoint.node_addr).to_string(),
            });
        }
        if !endpoint.service.is_empty() {
            serving.entry((network_id, &endpoint.service)).or_default().push(endpoint);
        }
    }
    let no_tasks = Vec::new();
    let text = |endpoint: &Endpoint| Ipv4Addr::from(endpoint.address).to_string();
    let addresses = |endpoints: &Vec<&Endpoint>| endpoints.iter().map(|e| text(e)).collect();
    for port in &mut state.published_ports {
        let backends = ingress.and_then(|ingress| serving.get(&(ingress, port.service.as_str())));
        port.backends = addresses(backends.unwrap_or(&no_tasks));
    }
    for vip in &mut state.service_vips {
        vip.backends = addresses(serving.get(&(&vip.network_id, &vip.service)).unwrap_or(&no_tasks));
    }
    for names in &mut state.names {
        let tasks = serving.get(&(&names.network_id, &names.service)).unwrap_or(&no_tasks).iter();
        names.tasks = tasks
            .map(|e| TaskName { id: e.task_id.clone(), name: e.task_name.clone(), address: text(e) })
            .collect();
    }
}

/// The desired state a Watch stream has brought so far.
#[derive(Default)]
pub struct HeldState {
    items: DesiredItems,
    revision: Option<u64>,
}

impl HeldState {
    /// Takes in one Watch message: the new desired state, `None` for an
    /// empty message or a part that more parts follow, or an error if a
    /// delta does not start from the revision held (nothing is applied
    /// then).
    pub fn receive(&mut self, message: WatchMessage) -> Result<Option<NodeState>, String> {
        Ok(if self.apply(message)? { self.state() } else { None })
    }

    /// Takes in one Watch message without assembling the state: whether
    /// it completed a new state (an empty message does not, nor a part
    /// that more parts follow), or an error if a delta does not start from
    /// the revision held (nothing is applied then).
    pub fn apply(&mut self, message: WatchMessage) -> Result<bool, String> {
        let complete = !message.continues;
        match message.message {
            Some(watch_message::Message::Snapshot(state)) => {
                self.items = DesiredItems::from_state(&state);
                self.revision = Some(state.revision);
            }
            Some(watch_message::Message::Delta(delta)) => {
                if self.revision != Some(delta.base_revision) {
                    return Err(format!(
                        "a desired-state change from revision {} arrived while revision {} is held",
                        delta.base_revision,
                        self.revision.map_or_else(|| "none".to_string(), |r| r.to_string())
                    ));
                }
                self.items.apply(&delta).map_err(|err| {
                    format!(
                        "a desired-state change to revision {} has an item that does not decode: {err}",
                        delta.revision
                    )
                })?;
                self.revision = Some(delta.revision);
            }
            None => return Ok(false),
        }
        Ok(complete)
    }

    /// The revision held; `None` before the first whole state.
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }

    /// The items held (none before the first whole state).
    pub fn items(&self) -> &DesiredItems {
        &self.items
    }

    /// The desired state held; `None` before the first whole state.
    pub fn state(&self) -> Option<NodeState> {
        self.revision.map(|revision| self.items.to_state(revision))
    }
}

/// `item` encoded, as a delta carries it.
pub fn encode(item: &DesiredItem) -> Bytes {
    Bytes::from(item.encode_to_vec())
}

/// What a delta does to one key, with the encoded item it sends for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The key holds this item (encoded).
    Upsert(Bytes),
    /// The key is removed: its [`ItemKey::removal`] item (encoded).
    Remove(Bytes),
}

/// Changes to a node's items by key. Merging later changes keeps one entry
/// per key, so that the changes of several revisions never outgrow the
/// items they touch. Keys and encoded items are shared: a change many
/// nodes wait for is one key and one encoding in memory, made once. Kept
/// as a list sorted by key: when a thousand nodes were each handed
/// thousands of changes per revision, building a tree of them per node was
/// near half the time spent cutting the deltas (a sorted list cut that
/// time by a quarter). The list itself is shared too: nodes sent the same
/// changes (a thousand nodes on the networks a create touched) hold one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemChanges {
    changes: Arc<[(Arc<ItemKey>, Change)]>,
}

impl FromIterator<(Arc<ItemKey>, Change)> for ItemChanges {
    /// The changes of distinct keys, sorted once (of a key given twice,
    /// the later).
    fn from_iter<I: IntoIterator<Item = (Arc<ItemKey>, Change)>>(changes: I) -> Self {
        let mut changes: Vec<(Arc<ItemKey>, Change)> = changes.into_iter().collect();
        // Stable: of equal keys, the later stays last.
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        Self { changes: changes.into() }
    }
}

impl ItemChanges {
    /// Adds `later` changes over these (a later change to a key wins), in
    /// one walk over both.
    pub fn merge(&mut self, later: ItemChanges) {
        if self.changes.is_empty() {
            self.changes = later.changes;
            return;
        }
        let mut merged = Vec::with_capacity(self.changes.len() + later.changes.len());
        let (mut earlier, mut later) =
            (self.changes.iter().cloned().peekable(), later.changes.iter().cloned().peekable());
        loop {
            let order = match (earlier.peek(), later.peek()) {
                (Some(a), Some(b)) => a.0.cmp(&b.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => break,
            };
            if order != std::cmp::Ordering::Greater {
                let earlier = earlier.next();
                if order == std::cmp::Ordering::Less {
                    merged.extend(earlier);
                    continue;
                }
            }
            merged.extend(later.next());
        }
        self.changes = merged.into();
    }

    /// How many keys changed.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether none did.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// These changes, bringing a node holding `base_revision` to
    /// `revision`, as Watch messages of about `budget` encoded bytes
    /// ([`Parts`]).
    pub fn into_parts(self, base_revision: u64, revision: u64, budget: usize) -> Parts {
        let (mut removals, mut upserts) = (Vec::new(), Vec::new());
        for (_, change) in self.changes.iter() {
            match change {
                Change::Upsert(item) => upserts.push(item.clone()),
                Change::Remove(removal) => removals.push(removal.clone()),
            }
        }
        Parts::new(Start::Delta(base_revision), revision, budget, removals, upserts)
    }
}

/// How a [`Parts`] sequence starts.
enum Start {
    /// With a delta from this revision.
    Delta(u64),
    /// With a whole state: the items whole if they fit in one message,
    /// else an empty one they are added to.
    Whole,
}

/// A whole state or a delta as Watch messages of at most about `budget`
/// encoded bytes each (an item larger than that goes alone), made one at a
/// time from encoded items shared with the desired state they were cut
/// from and with every other node's messages: the first from the revision
/// the node holds (or a whole state), the others deltas from the new
/// revision to itself, every one but the last marked `continues`.
pub struct Parts {
    start: Option<Start>,
    revision: u64,
    budget: usize,
    removals: std::iter::Peekable<std::vec::IntoIter<Bytes>>,
    upserts: std::iter::Peekable<std::vec::IntoIter<Bytes>>,
    done: bool,
}

/// An encoded item's share of a message: itself and its field header.
fn encoded_size(item: &Bytes) -> usize {
    1 + prost::encoding::encoded_len_varint(item.len() as u64) + item.len()
}

impl Parts {
    fn new(start: Start, revision: u64, budget: usize, removals: Vec<Bytes>, upserts: Vec<Bytes>) -> Self {
        let (removals, upserts) = (removals.into_iter().peekable(), upserts.into_iter().peekable());
        Self { start: Some(start), revision, budget, removals, upserts, done: false }
    }

    /// The whole state of the encoded `items` at `revision`.
    pub fn whole(items: Vec<Bytes>, revision: u64, budget: usize) -> Self {
        Self::new(Start::Whole, revision, budget, Vec::new(), items)
    }

    /// The whole state, if it is to go in one message (else, or if an item
    /// does not decode, it goes as deltas).
    fn whole_in_one(&mut self) -> Option<WatchMessage> {
        let size: usize = self.upserts.clone().map(|item| encoded_size(&item)).sum();
        if size > self.budget {
            return None;
        }
        let mut items = DesiredItems::default();
        let decoded: Result<Vec<DesiredItem>, _> = self.upserts.clone().map(DesiredItem::decode).collect();
        decoded.ok()?.into_iter().for_each(|item| items.insert(item));
        self.upserts.by_ref().for_each(drop);
        self.done = true;
        Some(WatchMessage {
            message: Some(watch_message::Message::Snapshot(items.to_state(self.revision))),
            continues: false,
        })
    }

    /// The next delta, from `base`: removals first, then upserts, until
    /// the budget is spent.
    fn next_delta(&mut self, base: u64) -> WatchMessage {
        let mut delta = NodeStateDelta { base_revision: base, revision: self.revision, ..Default::default() };
        let mut size = 0;
        let mut fits = |item: &Bytes| {
            let fits = size == 0 || size + encoded_size(item) <= self.budget;
            if fits {
                size += encoded_size(item);
            }
            fits
        };
        delta.removals.extend(std::iter::from_fn(|| self.removals.next_if(&mut fits)));
        delta.upserts.extend(std::iter::from_fn(|| self.upserts.next_if(&mut fits)));
        self.done = self.removals.peek().is_none() && self.upserts.peek().is_none();
        WatchMessage { message: Some(watch_message::Message::Delta(delta)), continues: !self.done }
    }
}

impl Iterator for Parts {
    type Item = WatchMessage;

    fn next(&mut self) -> Option<WatchMessage> {
        match self.start.take() {
            Some(Start::Whole) => {
                if let Some(whole) = self.whole_in_one() {
                    return Some(whole);
                }
                let empty = NodeState { revision: self.revision, ..Default::default() };
                let message = watch_message::Message::Snapshot(empty);
                Some(WatchMessage { message: Some(message), continues: true })
            }
            Some(Start::Delta(base)) => Some(self.next_delta(base)),
            None if self.done => None,
            None => Some(self.next_delta(self.revision)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NetworkAttachment, TaskSpec};
    use proptest::prelude::*;

    /// `changes` from revision 1 to 2 as the one delta an unlimited
    /// budget makes.
    fn one_delta(changes: ItemChanges) -> NodeStateDelta {
        let mut parts = changes.into_parts(1, 2, usize::MAX);
        let Some(WatchMessage { message: Some(watch_message::Message::Delta(delta)), continues: false }) =
            parts.next()
        else {
            panic!("one whole delta")
        };
        assert!(parts.next().is_none());
        delta
    }

    fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::sample::select(options).prop_map(str::to_string)
    }

    const NETWORKS: &[&str] = &["n1", "n2", "ingress"];
    const SERVICES: &[&str] = &["web", "db"];

    /// IPv4 `text` as an endpoint's number.
    fn v4(text: &str) -> u32 {
        text.parse::<Ipv4Addr>().unwrap().into()
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        (
            4096u32..4099,
            proptest::sample::select(&["10.0.0.2", "10.0.0.3", "10.0.0.4"][..]),
            proptest::sample::select(&["192.168.1.2", "192.168.1.3", "0.0.0.0"][..]),
            pick(SERVICES),
            pick(&["t1", "t2"]),
        )
            .prop_map(|(vni, address, node_addr, service, task_id)| Endpoint {
                vni,
                address: v4(address),
                node_addr: v4(node_addr),
                task_name: format!("web.{task_id}"),
                service,
                task_id,
            })
    }

    fn port() -> impl Strategy<Value = PublishedPort> {
        (pick(&["tcp", "udp"]), 80u32..82, 8000u32..8002, pick(SERVICES)).prop_map(
            |(protocol, published_port, target_port, service)| PublishedPort {
                protocol,
                published_port,
                target_port,
                service,
                backends: vec![],
            },
        )
    }

    fn vip() -> impl Strategy<Value = ServiceVip> {
        (pick(NETWORKS), pick(&["10.0.0.9", "10.0.0.8"]), pick(SERVICES)).prop_map(
            |(network_id, address, service)| ServiceVip { network_id, address, service, backends: vec![] },
        )
    }

    fn names() -> impl Strategy<Value = ServiceNames> {
        (pick(NETWORKS), pick(SERVICES), pick(&["", "10.0.0.9"])).prop_map(|(network_id, service, vip)| {
            ServiceNames { network_id, service, vip, tasks: vec![], aliases: vec![] }
        })
    }

    fn task() -> impl Strategy<Value = TaskSpec> {
        (pick(&["t1", "t2", "t3"]), pick(&["a", "b"])).prop_map(|(id, command)| TaskSpec {
            id,
            command: vec![command],
            ..Default::default()
        })
    }

    fn attachment() -> impl Strategy<Value = NetworkAttachment> {
        (pick(NETWORKS), 4096u32..4098).prop_map(|(id, vni)| NetworkAttachment {
            network: Some(Network { ingress: id == "ingress", id, vni, ..Default::default() }),
        })
    }

    prop_compose! {
        /// Node states over small alphabets, so that two of them share
        /// items (what is derived from endpoints left empty: it is not
        /// read).
        fn node_state()(
            ingress_address in pick(&["10.1.0.2", "10.1.0.3"]),
            networks in proptest::collection::vec(attachment(), 0..3),
            tasks in proptest::collection::vec(task(), 0..3),
            endpoints in proptest::collection::vec(endpoint(), 0..5),
            published_ports in proptest::collection::vec(port(), 0..3),
            service_vips in proptest::collection::vec(vip(), 0..3),
            names in proptest::collection::vec(names(), 0..3),
            cluster_nodes in proptest::collection::vec(pick(&["192.168.1.2", "192.168.1.3"]), 0..3),
        ) -> NodeState {
            NodeState {
                node_id: "node".into(),
                advertise_addr: "192.168.1.2".into(),
                ingress_address,
                networks,
                tasks,
                endpoints,
                published_ports,
                service_vips,
                names,
                cluster_nodes,
                ..Default::default()
            }
        }
    }

    proptest! {
        #[test]
        fn a_state_assembled_from_its_items_splits_into_the_same_items(state in node_state()) {
            let items = DesiredItems::from_state(&state);
            let assembled = items.to_state(7);
            prop_assert_eq!(assembled.revision, 7);
            prop_assert_eq!(DesiredItems::from_state(&assembled), items);
        }

        #[test]
        fn a_state_plus_its_delta_to_the_next_is_the_next(before in node_state(), after in node_state()) {
            let (old, new) = (DesiredItems::from_state(&before), DesiredItems::from_state(&after));
            let mut applied = old.clone();
            applied.apply(&one_delta(old.diff(&new))).unwrap();
            prop_assert_eq!(applied.to_state(2), new.to_state(2));
        }

        /// Merged changes bring a node to the last state from the first,
        /// and from any state between (a node that was sent a whole state
        /// meanwhile): what a Watch stream that fell behind is sent.
        #[test]
        fn merged_deltas_bring_the_first_or_a_later_state_to_the_last(
            states in proptest::collection::vec(node_state(), 2..5),
        ) {
            let items: Vec<DesiredItems> = states.iter().map(DesiredItems::from_state).collect();
            let mut merged = ItemChanges::default();
            for pair in items.windows(2) {
                merged.merge(pair[0].diff(&pair[1]));
            }
            let last = items.last().unwrap();
            prop_assert!(merged.len() <= items.iter().map(DesiredItems::len).sum::<usize>());
            for start in &items {
                let mut applied = start.clone();
                applied.apply(&one_delta(merged.clone())).unwrap();
                prop_assert_eq!(&applied, last);
            }
        }

        /// A whole state and a delta sent in parts (a budget of a few
        /// items) bring the node to the same state as sent whole; no state
        /// is given before the last part.
        #[test]
        fn a_state_and_a_delta_in_parts_are_the_state_and_delta_sent_whole(
            before in node_state(),
            after in node_state(),
            budget in 0usize..300,
        ) {
            let header = |state: NodeState| NodeState { node_id: "n1".into(), ..state };
            let (before, after) = (header(before), header(after));
            let (old, new) = (DesiredItems::from_state(&before), DesiredItems::from_state(&after));
            let mut held = HeldState::default();
            let whole: Vec<Bytes> = old.items.values().map(encode).collect();
            let parts = Parts::whole(whole, 3, budget).chain(old.diff(&new).into_parts(3, 4, budget));
            let mut states = Vec::new();
            for part in parts {
                prop_assert!(part.encoded_len() <= budget.max(300) + 300, "{} bytes", part.encoded_len());
                let continues = part.continues;
                let state = held.receive(part).unwrap();
                prop_assert_eq!(state.is_some(), !continues);
                states.extend(state);
            }
            prop_assert_eq!(states, vec![old.to_state(3), new.to_state(4)]);
        }
    }

    #[test]
    fn endpoints_give_remote_endpoints_and_their_tasks_to_ports_vips_and_names() {
        let endpoint = |vni, address: &str, node_addr: &str| Endpoint {
            vni,
            address: v4(address),
            node_addr: v4(node_addr),
            service: "web".into(),
            task_id: format!("t{address}"),
            task_name: "web.1".into(),
        };
        let ingress = Network { id: "in".into(), vni: 4096, ingress: true, ..Default::default() };
        let n1 = Network { id: "n1".into(), vni: 4097, ..Default::default() };
        let state = NodeState {
            advertise_addr: "192.168.1.2".into(),
            networks: [ingress, n1].map(|n| NetworkAttachment { network: Some(n) }).into(),
            endpoints: vec![
                endpoint(4096, "10.0.0.5", "192.168.1.3"),
                endpoint(4096, "10.0.0.6", "192.168.1.2"),
                endpoint(4097, "10.1.0.5", "192.168.1.3"),
                // On a network the node does not hold: nothing.
                endpoint(4098, "10.2.0.5", "192.168.1.3"),
                Endpoint { service: String::new(), ..endpoint(4096, "10.0.0.2", "192.168.1.3") },
            ],
            published_ports: vec![PublishedPort { service: "web".into(), ..Default::default() }],
            service_vips: vec![ServiceVip {
                network_id: "n1".into(),
                service: "web".into(),
                ..Default::default()
            }],
            names: vec![ServiceNames {
                network_id: "n1".into(),
                service: "web".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let state = DesiredItems::from_state(&state).to_state(1);
        let remote: Vec<(&str, &str)> =
            state.remote_endpoints.iter().map(|e| (e.address.as_str(), e.mac.as_str())).collect();
        assert_eq!(
            remote,
            [
                ("10.0.0.2", "02:42:0a:00:00:02"),
                ("10.0.0.5", "02:42:0a:00:00:05"),
                ("10.1.0.5", "02:42:0a:01:00:05"),
            ],
            "every endpoint on another node, its MAC from its address"
        );
        assert_eq!(state.published_ports[0].backends, ["10.0.0.5", "10.0.0.6"], "tasks on ingress");
        assert_eq!(state.service_vips[0].backends, ["10.1.0.5"], "tasks on the VIP's network");
        let names: Vec<(&str, &str)> =
            state.names[0].tasks.iter().map(|t| (t.id.as_str(), t.address.as_str())).collect();
        assert_eq!(names, [("t10.1.0.5", "10.1.0.5")]);
    }

    #[test]
    fn a_delta_from_another_revision_is_refused_and_changes_nothing() {
        let snapshot = |revision| WatchMessage {
            message: Some(watch_message::Message::Snapshot(NodeState { revision, ..Default::default() })),
            continues: false,
        };
        let delta = |base_revision, revision, task: &str| WatchMessage {
            message: Some(watch_message::Message::Delta(NodeStateDelta {
                base_revision,
                revision,
                upserts: vec![encode(&item(Item::Task(Box::new(TaskSpec {
                    id: task.into(),
                    ..Default::default()
                }))))],
                removals: vec![],
            })),
            continues: false,
        };
        let mut held = HeldState::default();
        assert!(held.receive(delta(0, 1, "t0")).is_err(), "a delta before any whole state");
        assert_eq!(held.receive(snapshot(3)).unwrap().map(|s| s.revision), Some(3));
        let state = held.receive(delta(3, 5, "t1")).unwrap().unwrap();
        assert_eq!((state.revision, state.tasks.len()), (5, 1));
        let gap = held.receive(delta(6, 7, "t2")).unwrap_err();
        assert!(gap.contains("from revision 6") && gap.contains("revision 5 is held"), "{gap}");
        let state = held.receive(delta(5, 8, "t3")).unwrap().unwrap();
        let tasks: Vec<&str> = state.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(tasks, ["t1", "t3"], "the refused delta left nothing behind");
    }

    #[test]
    fn of_a_key_changed_twice_the_later_change_is_kept() {
        let key = |address: &str| Arc::new(ItemKey::ClusterNode(address.into()));
        let upsert = |text: &'static str| Change::Upsert(Bytes::from_static(text.as_bytes()));
        let first: ItemChanges =
            [(key("b"), upsert("b1")), (key("a"), upsert("a1")), (key("b"), upsert("b2"))]
                .into_iter()
                .collect();
        assert_eq!(*first.changes, [(key("a"), upsert("a1")), (key("b"), upsert("b2"))]);
        let mut merged = first.clone();
        merged.merge([(key("c"), upsert("c1")), (key("a"), upsert("a2"))].into_iter().collect());
        let expected = [(key("a"), upsert("a2")), (key("b"), upsert("b2")), (key("c"), upsert("c1"))];
        assert_eq!(*merged.changes, expected);
    }

    #[test]
    fn a_delta_between_equal_states_is_empty_and_removals_carry_only_keys() {
        let state = NodeState {
            tasks: vec![TaskSpec { id: "t1".into(), command: vec!["sleep".into()], ..Default::default() }],
            ..Default::default()
        };
        let items = DesiredItems::from_state(&state);
        assert!(items.diff(&items).is_empty());
        let delta = one_delta(items.diff(&DesiredItems::from_state(&NodeState::default())));
        assert_eq!(delta.removals, [ItemKey::Task("t1".into()).encoded_removal()]);
    }
}
