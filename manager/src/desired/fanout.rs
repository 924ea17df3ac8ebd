//! Watch fan-out: one task builds the desired-state [`Model`] at every new
//! revision, compares it with the previous one once, and hands each
//! watching node the delta of what it holds (nothing when none of it
//! changed). Each node's stream takes from its own outbox at its own pace:
//! a slow or stuck node delays no other. Deltas it has not taken yet are
//! merged into one (one entry per changed item, so the outbox never holds
//! more than the items the node's state has); once they touch more items
//! than its whole state holds, it is sent the whole state instead. Large
//! states and deltas go in parts of about [`MESSAGE_BUDGET`] bytes.

use super::changes::{Changes, NodeDelta};
use super::model::{Model, Records};
use super::rebuild::Rebuild;
use crate::nodes;
use crate::store::{Store, StoreError};
use netctl_proto::desired::{ItemChanges, Parts};
use netctl_proto::WatchMessage;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tonic::Status;

/// What sending one node a delta costs, the manager and the node together,
/// about (`bench-fleet` at 1,000 nodes): a build rests this long for each
/// node it sent something (see [`Fanout::run`]).
const NODE_SEND_COST: Duration = Duration::from_micros(100);
/// The longest rest between two builds.
const MAX_REST: Duration = Duration::from_millis(250);
/// How long after a failed read of the store the model is built again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// About how many encoded bytes one Watch message carries at most: a
/// larger whole state or delta goes in parts. The gRPC encoder keeps a
/// buffer as large as the largest message of each stream for as long as
/// the stream lives (at a thousand nodes, whole states of 200 KB kept
/// 200 MB of them); a part fits the 8 KiB it starts with
/// (`netctl_proto::codec`).
const MESSAGE_BUDGET: usize = 6 * 1024;

/// The latest model and the watching nodes.
pub struct Fanout {
    latest: watch::Sender<Option<Arc<Model>>>,
    subscribers: Mutex<HashMap<u64, Arc<Subscriber>>>,
    next_id: AtomicU64,
}

/// What waits to be sent to one watching node.
#[derive(Default)]
struct Outbox {
    /// The changes not yet sent, merged (their items shared with the
    /// model and the other nodes), and the revision they bring the node to.
    pending: Option<(u64, ItemChanges)>,
    /// Send a whole state next (the node is new, or the changes waiting
    /// outgrew its state).
    resync: bool,
    /// The node is no longer in the model.
    gone: bool,
}

struct Subscriber {
    node_id: String,
    outbox: Mutex<Outbox>,
    ready: Notify,
}

impl Subscriber {
    /// Adds the node's `delta` to `revision` to what waits for it; a
    /// whole state of the node has `whole_items` items.
    fn deliver(&self, delta: NodeDelta, revision: u64, whole_items: usize) {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        match delta {
            NodeDelta::Unchanged => return,
            NodeDelta::Changed(_) if outbox.resync => {}
            NodeDelta::Changed(changes) => {
                let (pending, merged) = outbox.pending.get_or_insert_with(Default::default);
                *pending = revision;
                merged.merge(changes);
                if merged.len() > whole_items {
                    outbox.pending = None;
                    outbox.resync = true;
                }
            }
            NodeDelta::Whole => {
                outbox.pending = None;
                outbox.resync = true;
            }
            NodeDelta::Gone => outbox.gone = true,
        }
        self.ready.notify_one();
    }
}

/// Every record a model is built from, read from the store.
fn read_records(store: &Store) -> Result<Records, StoreError> {
    Ok(Records {
        networks: store.shared()?,
        services: store.shared()?,
        tasks: store.shared()?,
        nodes: store.shared()?,
    })
}

/// The last model built and the records it was built from.
type Built = (Arc<Model>, Records);

/// Reads the store and builds the model labelled `revision`, a revision
/// this manager saw committed before the read: the records read hold that
/// revision and maybe parts of later ones, still to be announced. Only the
/// scopes the records changed since `last` are built anew.
fn read_model(
    store: &Store,
    revision: u64,
    data_path_port: u32,
    last: Option<&Built>,
) -> Result<Built, StoreError> {
    let records = read_records(store)?;
    let cluster = records.view();
    let model = match last {
        Some((model, before)) => {
            let rebuild = Rebuild::between(&before.view(), &cluster);
            Model::build_after(model, &rebuild, &cluster, data_path_port, revision)
        }
        None => Model::build(&cluster, data_path_port, revision),
    };
    Ok((Arc::new(model), records))
}

impl Fanout {
    /// A fan-out with no model yet and no one watching.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            latest: watch::channel(None).0,
            subscribers: Mutex::default(),
            next_id: AtomicU64::new(0),
        })
    }

    /// Builds a model at every new revision of `store` and queues each
    /// watching node its delta, until `stopping` turns true.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<Store>,
        data_path_port: u16,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut revisions = store.subscribe();
        let mut failing = false;
        let mut last: Option<Built> = None;
        loop {
            revisions.mark_unchanged();
            let revision = store.revision();
            // Built already: what a read now adds beyond that model belongs
            // to commits not yet announced, and each brings a new build. A
            // second model under one label would be skipped by nodes that
            // hold the first.
            if !self.is_newer(revision) {
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
                continue;
            }
            let started = tokio::time::Instant::now();
            let (fanout, reader, before) = (self.clone(), store.clone(), last.take());
            let built = tokio::task::spawn_blocking(move || {
                let built = read_model(&reader, revision, u32::from(data_path_port), before.as_ref());
                let sent = built.as_ref().map_or(0, |(model, _)| fanout.publish(model.clone()));
                built.map(|built| (built, sent))
            });
            let rest = match built.await.expect("the model builder does not panic") {
                Ok((built, sent)) => {
                    last = Some(built);
                    if std::mem::take(&mut failing) {
                        tracing::info!("desired state built again from the store");
                    }
                    started.elapsed() + NODE_SEND_COST * sent as u32
                }
                Err(err) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!("building the nodes' desired state: {err}; retrying every second");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => continue,
                        _ = stopping.wait_for(|stop| *stop) => return,
                    }
                }
            };
            // In a burst of changes (a thousand nodes reporting their
            // tasks), builds back to back would each send every node a
            // sliver, each costing it and the manager. Resting as long as
            // the build and the sending of what it gave took sends each a
            // delta of what came meanwhile: after a round to a thousand
            // nodes, 0.1 s (Swarm's dispatcher batches for as long); after
            // a change to a hundred, 10 ms. A change after a quiet spell
            // goes out at once.
            tokio::select! {
                _ = tokio::time::sleep(rest.min(MAX_REST)) => {},
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                changed = revisions.changed() => if changed.is_err() { return },
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Whether no model of `revision` or later was published.
    fn is_newer(&self, revision: u64) -> bool {
        self.latest.borrow().as_ref().is_none_or(|latest| latest.revision < revision)
    }

    /// Makes `model` the latest and queues every watching node what
    /// changed for it since the previous one (blocking: a node's delta is
    /// cut here); how many nodes were given something. A model not newer
    /// than the latest is dropped: every label is one model, so that a
    /// node holding it can skip it.
    fn publish(&self, model: Arc<Model>) -> usize {
        if !self.is_newer(model.revision) {
            tracing::warn!(
                revision = model.revision,
                "a desired state not newer than the latest was dropped"
            );
            return 0;
        }
        let previous = self.latest.send_replace(Some(model.clone()));
        // Listed after the model is published: a node that subscribes later
        // starts from this model or a newer one.
        let subscribers: Vec<Arc<Subscriber>> =
            self.subscribers.lock().expect("subscribers lock").values().cloned().collect();
        let Some(previous) = previous else { return 0 };
        if subscribers.is_empty() {
            return 0;
        }
        let changes = Changes::between(&previous, &model);
        let mut given = 0;
        for subscriber in subscribers {
            let delta = changes.for_node(&previous, &model, &subscriber.node_id);
            given += usize::from(!matches!(delta, NodeDelta::Unchanged));
            let whole_items = model.item_count(&subscriber.node_id);
            subscriber.deliver(delta, model.revision, whole_items);
        }
        given
    }

    /// Starts watching for `node_id`: the first message will be its whole
    /// state, then deltas.
    pub fn subscribe(self: &Arc<Self>, node_id: &str, store: Arc<Store>) -> Subscription {
        let subscriber = Arc::new(Subscriber {
            node_id: node_id.to_string(),
            outbox: Mutex::new(Outbox { resync: true, ..Default::default() }),
            ready: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers.lock().expect("subscribers lock").insert(id, subscriber.clone());
        Subscription {
            fanout: self.clone(),
            id,
            subscriber,
            store,
            latest: self.latest.subscribe(),
            sent: 0,
            parts: None,
        }
    }
}

/// One node's Watch stream: what it was sent and what waits for it.
pub struct Subscription {
    fanout: Arc<Fanout>,
    id: u64,
    subscriber: Arc<Subscriber>,
    store: Arc<Store>,
    latest: watch::Receiver<Option<Arc<Model>>>,
    /// The revision the node holds once it got every part.
    sent: u64,
    /// What is left to send of a whole state or delta.
    parts: Option<Parts>,
}

impl Subscription {
    /// The next message for the node, waiting for one; an error (the node
    /// was removed) ends the stream.
    pub async fn next(&mut self) -> Result<WatchMessage, Status> {
        loop {
            if let Some(part) = self.parts.as_mut().and_then(Iterator::next) {
                return Ok(part);
            }
            // Sent in full: its lists keep their buffers until dropped (at a
            // thousand nodes, 50 MB of them).
            self.parts = None;
            let (resync, gone, pending) = {
                let mut outbox = self.subscriber.outbox.lock().expect("outbox lock");
                (std::mem::take(&mut outbox.resync), std::mem::take(&mut outbox.gone), outbox.pending.take())
            };
            if gone {
                nodes::member(&self.store, &self.subscriber.node_id)?;
            }
            if resync || gone {
                self.parts = Some(self.whole_state().await?);
                continue;
            }
            match pending {
                // Already in the whole state it was sent.
                Some((revision, _)) if revision <= self.sent => continue,
                // Changes merged before that whole state was read are in it
                // too: applying them again changes nothing.
                Some((revision, changes)) => {
                    self.parts = Some(changes.into_parts(self.sent, revision, MESSAGE_BUDGET));
                    self.sent = revision;
                }
                None => self.subscriber.ready.notified().await,
            }
        }
    }

    /// The node's whole state from the latest model that holds it, in
    /// parts.
    async fn whole_state(&mut self) -> Result<Parts, Status> {
        loop {
            let model = self.latest.borrow_and_update().clone();
            if let Some((model, items)) =
                model.as_ref().and_then(|m| Some((m, m.items(&self.subscriber.node_id)?)))
            {
                self.sent = model.revision;
                return Ok(Parts::whole(items, model.revision, MESSAGE_BUDGET));
            }
            // Not in the model: removed, or joined after it was built.
            nodes::member(&self.store, &self.subscriber.node_id)?;
            if self.latest.changed().await.is_err() {
                return Err(Status::unavailable("the manager is stopping"));
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fanout.subscribers.lock().expect("subscribers lock").remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::model::ClusterView;
    use netctl_proto::{watch_message, Network, Node};

    /// A model at `revision` of one node on ingress whose ingress_sbox
    /// address has host number `host`, beside a second node.
    fn model(revision: u64, host: u64) -> Arc<Model> {
        let networks = [Network { id: "ing".into(), ingress: true, ..Default::default() }];
        let nodes = [
            Node { id: "a".into(), advertise_addr: "192.168.10.6".into(), ..Default::default() },
            Node {
                id: "b".into(),
                advertise_addr: "192.168.10.7".into(),
                ingress_address: format!("10.255.{}.{}", host / 250, host % 250 + 2),
                ..Default::default()
            },
        ];
        let cluster = ClusterView { networks: &networks, services: &[], tasks: &[], nodes: &nodes };
        Arc::new(Model::build(&cluster, 4789, revision))
    }

    fn kind(message: &WatchMessage) -> (&'static str, u64, u64) {
        match message.message.as_ref().expect("a message") {
            watch_message::Message::Snapshot(state) => ("whole", 0, state.revision),
            watch_message::Message::Delta(delta) => ("delta", delta.base_revision, delta.revision),
        }
    }

    /// Node a watching, sent its whole state at revision 1 and a delta to 2.
    async fn watching_at_revision_2() -> (tempfile::TempDir, Arc<Fanout>, Subscription) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let fanout = Fanout::new();
        fanout.publish(model(1, 0));
        let mut subscription = fanout.subscribe("a", store);
        assert_eq!(kind(&subscription.next().await.unwrap()), ("whole", 0, 1));
        fanout.publish(model(2, 1));
        assert_eq!(kind(&subscription.next().await.unwrap()), ("delta", 1, 2));
        (dir, fanout, subscription)
    }

    #[tokio::test]
    async fn a_node_gets_its_whole_state_then_deltas_merged_while_it_is_behind_then_a_whole_state() {
        let (_dir, fanout, mut subscription) = watching_at_revision_2().await;
        // No change for the node at revision 3; 4 and 5 wait together.
        fanout.publish(model(3, 1));
        fanout.publish(model(4, 2));
        fanout.publish(model(5, 3));
        let message = subscription.next().await.unwrap();
        assert_eq!(kind(&message), ("delta", 2, 5), "one delta from what it holds");
        let Some(watch_message::Message::Delta(delta)) = message.message else { unreachable!() };
        // b's ingress_sbox endpoint moved twice: the one at revision 4 is
        // sent as removed, not added then removed.
        assert_eq!((delta.upserts.len(), delta.removals.len()), (1, 2), "{delta:?}");

        // Every revision moves b's endpoint to a new key: the waiting
        // changes soon touch more items than a's whole state holds.
        let whole = model(5, 3).item_count("a") as u64;
        let last = 6 + whole;
        for revision in 6..=last {
            fanout.publish(model(revision, revision));
        }
        assert_eq!(kind(&subscription.next().await.unwrap()), ("whole", 0, last), "a whole state instead");
        fanout.publish(model(last + 1, 0));
        assert_eq!(kind(&subscription.next().await.unwrap()), ("delta", last, last + 1));
    }

    #[tokio::test]
    async fn a_second_model_under_a_published_label_is_dropped_and_its_changes_come_with_the_next() {
        let (_dir, fanout, mut subscription) = watching_at_revision_2().await;

        // Read while a commit was not yet announced: more than revision 2.
        fanout.publish(model(2, 5));
        fanout.publish(model(3, 5));
        let next = tokio::time::timeout(Duration::from_secs(5), subscription.next());
        let message = next.await.expect("the move to host 5 is delivered").unwrap();
        assert_eq!(kind(&message), ("delta", 2, 3));
        let Some(watch_message::Message::Delta(delta)) = message.message else { unreachable!() };
        assert_eq!((delta.upserts.len(), delta.removals.len()), (1, 1), "b's endpoint moved: {delta:?}");
    }

    #[tokio::test]
    async fn a_large_whole_state_comes_in_parts_that_make_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // 1,000 nodes: node a holds 1,000 cluster nodes and ingress_sbox
        // endpoints, far more than one message's budget.
        let networks = [Network { id: "ing".into(), ingress: true, ..Default::default() }];
        let nodes: Vec<Node> = (0..1000u32)
            .map(|i| Node {
                id: if i == 0 { "a".into() } else { format!("n{i}") },
                advertise_addr: format!("10.64.{}.{}", i / 250, i % 250 + 1),
                ingress_address: format!("10.255.{}.{}", i / 250, i % 250 + 2),
                ..Default::default()
            })
            .collect();
        let cluster = ClusterView { networks: &networks, services: &[], tasks: &[], nodes: &nodes };
        let model = Arc::new(Model::build(&cluster, 4789, 1));
        let fanout = Fanout::new();
        fanout.publish(model.clone());
        let mut subscription = fanout.subscribe("a", store);
        let mut held = netctl_proto::desired::HeldState::default();
        let mut parts = 0;
        let state = loop {
            let part = subscription.next().await.unwrap();
            assert!(prost::Message::encoded_len(&part) <= MESSAGE_BUDGET + 200);
            parts += 1;
            if let Some(state) = held.receive(part).unwrap() {
                break state;
            }
        };
        assert!(parts > 3, "{parts} parts");
        assert_eq!(Some(state), model.snapshot("a"));
    }

    #[tokio::test]
    async fn a_node_not_in_the_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let fanout = Fanout::new();
        fanout.publish(model(1, 0));
        let mut subscription = fanout.subscribe("nosuch", store);
        let refused = subscription.next().await.unwrap_err();
        assert!(refused.message().contains("not a member"), "{refused:?}");
    }
}
