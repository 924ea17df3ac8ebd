//! Simulated nodes for benchmarks: each joins a real manager with the join
//! token and a certificate request, heartbeats, holds a real Watch stream,
//! keeps the desired state it was sent and reports every task it is given
//! Running at once, with no kernel work. A [`Scenario`] lets a benchmark
//! time when each node's state first satisfies a condition.

use netctl_proto::desired::{DesiredItems, HeldState, ItemKey};
use netctl_proto::desired_item::Item;
use netctl_proto::dispatcher_client::DispatcherClient;
use netctl_proto::pki::{NodeKey, Token};
use netctl_proto::{
    BearerToken, HeartbeatRequest, JoinRequest, NodeIdentity, ReportStatusRequest, TaskState,
    TaskStatusReport, WatchMessage, WatchRequest,
};
use prost::Message;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A condition on a node's desired state (its items, as held; assembling
/// a whole state at every message would cost the simulator more than the
/// manager): `None` while the node is not concerned by the change,
/// `Some(done)` once it is.
pub type Check = dyn Fn(&DesiredItems) -> Option<bool> + Send + Sync;

/// A change being timed: when it started and, for each node, when its
/// state first satisfied its check and whether its latest state concerns
/// the change.
pub struct Scenario {
    started: Instant,
    check: Box<Check>,
    nodes: Mutex<Vec<Observed>>,
    progress: Notify,
}

/// What a scenario saw of one node, from the latest state it completed.
#[derive(Debug, Clone, Copy, Default)]
struct Observed {
    /// When its state first satisfied the check.
    done: Option<Duration>,
    /// Whether its latest state concerns the change (the check said
    /// something).
    concerned: bool,
}

impl Scenario {
    /// A scenario for `nodes` nodes starting now.
    pub fn new(nodes: usize, check: Box<Check>) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            check,
            nodes: Mutex::new(vec![Observed::default(); nodes]),
            progress: Notify::new(),
        })
    }

    /// Which nodes were concerned when the scenario ended.
    pub fn concerned(&self) -> Vec<bool> {
        self.nodes.lock().unwrap().iter().map(|node| node.concerned).collect()
    }

    /// Evaluates the check on node `index`'s `state`, the latest it
    /// completed; wakes the run when the node finished or stopped being
    /// concerned.
    fn observe(&self, index: usize, state: &DesiredItems) {
        let outcome = (self.check)(state);
        let mut nodes = self.nodes.lock().unwrap();
        let node = &mut nodes[index];
        let was = *node;
        node.concerned = outcome.is_some();
        if node.done.is_none() && outcome == Some(true) {
            node.done = Some(self.started.elapsed());
        }
        if node.done != was.done || node.concerned != was.concerned {
            self.progress.notify_one();
        }
    }

    /// When each concerned node satisfied the check, if every concerned
    /// node did (nodes not concerned are left out). Reads what each node's
    /// latest state gave: a node's state changes only with its messages,
    /// each observed as it completes.
    fn finished(&self) -> Option<Vec<Duration>> {
        let nodes = self.nodes.lock().unwrap();
        let mut times = Vec::new();
        for node in nodes.iter() {
            match node.done {
                Some(at) => times.push(at),
                None if !node.concerned => {}
                None => return None,
            }
        }
        Some(times)
    }
}

/// What one simulated node holds and has received.
#[derive(Default)]
pub struct NodeView {
    /// The desired state received so far.
    pub held: HeldState,
    /// Bytes of Watch messages received (protobuf payload).
    pub bytes: u64,
    /// Watch messages received.
    pub messages: u64,
}

/// One simulated node.
pub struct SimNode {
    /// Its node ID.
    pub id: String,
    /// Its data-path address (never used for traffic).
    pub address: String,
    /// What it holds.
    pub view: Arc<Mutex<NodeView>>,
    /// When the manager last answered one of its heartbeats.
    pub last_heartbeat: Arc<Mutex<Option<Instant>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    dispatcher: Dispatcher,
}

impl SimNode {
    /// Prints how the state the node holds differs from a whole state
    /// the manager sends a new stream now (why a node did not finish).
    async fn compare_with_a_whole_state(&self, index: usize) {
        let (held, revision) = {
            let view = self.view.lock().unwrap();
            (view.held.items().clone(), view.held.revision())
        };
        let request = WatchRequest { node_id: self.id.clone() };
        let mut fresh = HeldState::default();
        match self.dispatcher.clone().watch(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                // Every part of the whole state.
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            if fresh.apply(message) != Ok(false) {
                                break;
                            }
                        }
                        other => {
                            eprintln!("sim-{index}: no whole state from a new stream: {other:?}");
                            break;
                        }
                    }
                }
            }
            Err(status) => eprintln!("sim-{index}: no new stream: {status}"),
        }
        let differences = held.diff(fresh.items());
        eprintln!(
            "sim-{index} did not finish: holds revision {revision:?}, {} items; a whole state now: revision {:?}, {} items, {} differ: {:.2000}",
            held.len(),
            fresh.revision(),
            fresh.items().len(),
            differences.len(),
            format!("{differences:?}"),
        );
    }

    /// Stops heartbeating and watching, as a node that died.
    pub fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// A set of simulated nodes and the scenario being timed.
pub struct Fleet {
    /// The nodes, in join order.
    pub nodes: Vec<SimNode>,
    scenario: Arc<Mutex<Option<Arc<Scenario>>>>,
    _heartbeats: HeartbeatThread,
}

/// Where simulated nodes join.
#[derive(Clone)]
pub struct FleetTarget {
    /// The manager's URL.
    pub manager: String,
    /// The cluster's join token.
    pub join_token: String,
    /// How often nodes heartbeat.
    pub heartbeat: Duration,
}

impl Fleet {
    /// Joins `count` nodes, `parallel` at a time.
    pub async fn join(target: &FleetTarget, count: usize, parallel: usize) -> Self {
        let scenario: Arc<Mutex<Option<Arc<Scenario>>>> = Arc::default();
        let heartbeats = HeartbeatThread::start();
        let mut nodes = Vec::with_capacity(count);
        for first in (0..count).step_by(parallel) {
            let joins: Vec<_> = (first..(first + parallel).min(count))
                .map(|index| {
                    let node = sim_node(target.clone(), index, scenario.clone(), heartbeats.handle.clone());
                    tokio::spawn(node)
                })
                .collect();
            for join in joins {
                nodes.push(join.await.expect("node join"));
            }
        }
        Self { nodes, scenario, _heartbeats: heartbeats }
    }

    /// Times `scenario` until every concerned node satisfied its check or
    /// `timeout` passed: each concerned node's time, or `None` on timeout
    /// (with how many nodes had not finished).
    pub async fn run(&self, scenario: Arc<Scenario>, timeout: Duration) -> Result<Vec<Duration>, usize> {
        *self.scenario.lock().unwrap() = Some(scenario.clone());
        for (index, node) in self.nodes.iter().enumerate() {
            scenario.observe(index, node.view.lock().unwrap().held.items());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let result = loop {
            if let Some(times) = scenario.finished() {
                break Ok(times);
            }
            let progress = scenario.progress.notified();
            if tokio::time::timeout_at(deadline, progress).await.is_err() && scenario.finished().is_none() {
                let unfinished: Vec<usize> = {
                    let nodes = scenario.nodes.lock().unwrap();
                    (0..nodes.len()).filter(|i| nodes[*i].concerned && nodes[*i].done.is_none()).collect()
                };
                for index in unfinished.iter().take(3) {
                    self.nodes[*index].compare_with_a_whole_state(*index).await;
                }
                break Err(unfinished.len());
            }
        };
        *self.scenario.lock().unwrap() = None;
        result
    }

    /// (bytes, messages) every node has received so far.
    pub fn received(&self) -> Vec<(u64, u64)> {
        self.nodes
            .iter()
            .map(|n| {
                let view = n.view.lock().unwrap();
                (view.bytes, view.messages)
            })
            .collect()
    }
}

type Dispatcher =
    DispatcherClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>>;

/// Joins node `sim-<index>` with the join token and a certificate request,
/// then heartbeats and watches with its certificate.
async fn sim_node(
    target: FleetTarget,
    index: usize,
    scenario: Arc<Mutex<Option<Arc<Scenario>>>>,
    heartbeat_thread: tokio::runtime::Handle,
) -> SimNode {
    let token = Token::parse(&target.join_token).expect("join token");
    let (channel, ca_pem) = netctl_proto::connect_with_token(&target.manager, &token).await.expect("connect");
    let mut joining =
        DispatcherClient::with_interceptor(channel, BearerToken::new(&target.join_token).expect("token"));
    let key = NodeKey::generate().expect("node key");
    let address = format!("10.{}.{}.{}", 64 + index / 65_000, index / 250 % 256, index % 250 + 1);
    let join = JoinRequest {
        hostname: format!("sim-{index}"),
        advertise_addr: address.clone(),
        csr: key.csr_der,
        desired_state_version: netctl_proto::DESIRED_STATE_VERSION,
        ..Default::default()
    };
    let joined = joining.join(join).await.expect("join").into_inner();
    let identity = NodeIdentity { certificate_pem: joined.certificate, key_pem: key.key_pem };
    let channel = netctl_proto::connect(&target.manager, &ca_pem, Some(&identity)).await.expect("connect");
    let dispatcher: Dispatcher = DispatcherClient::with_interceptor(channel, BearerToken::none())
        .max_decoding_message_size(netctl_proto::MAX_NODE_STATE_BYTES);
    let view: Arc<Mutex<NodeView>> = Arc::default();
    let id = joined.node_id;
    let last_heartbeat: Arc<Mutex<Option<Instant>>> = Arc::default();
    let beating = heartbeat(target.clone(), ca_pem, identity, id.clone(), last_heartbeat.clone());
    let heartbeats = heartbeat_thread.spawn(beating);
    let watch = tokio::spawn(watch(dispatcher.clone(), id.clone(), index, view.clone(), scenario));
    SimNode { id, address, view, last_heartbeat, tasks: Mutex::new(vec![heartbeats, watch]), dispatcher }
}

/// The thread simulated nodes heartbeat on, with a runtime of its own:
/// away from the thousand Watch streams a simulator on two cores reads late
/// (an agent, on its own machine, heartbeats on time). Their connections
/// are made on it too, so that their I/O runs there. Made in the cluster's
/// namespace by the thread that joins the nodes (a new thread starts in
/// its creator's); stopped, with every heartbeat, when dropped.
struct HeartbeatThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HeartbeatThread {
    fn start() -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (sender, handle) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            sender.send(runtime.handle().clone()).expect("handle");
            let _ = runtime.block_on(stopped);
        });
        Self { handle: handle.recv().expect("heartbeat runtime"), stop: Some(stop) }
    }
}

impl Drop for HeartbeatThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Heartbeats node `node_id` forever on a connection of its own (a Watch
/// stream read late must not hold its answers back in the connection's
/// flow window); `last` is when the manager last answered.
async fn heartbeat(
    target: FleetTarget,
    ca_pem: String,
    identity: NodeIdentity,
    node_id: String,
    last: Arc<Mutex<Option<Instant>>>,
) {
    let channel = netctl_proto::connect(&target.manager, &ca_pem, Some(&identity)).await.expect("connect");
    let mut dispatcher = DispatcherClient::with_interceptor(channel, BearerToken::none());
    let interval = target.heartbeat;
    loop {
        if dispatcher.heartbeat(HeartbeatRequest { node_id: node_id.clone() }).await.is_ok() {
            *last.lock().unwrap() = Some(Instant::now());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Holds the node's desired state as the manager sends it and reports each
/// new task Running. As an agent does, it opens a broken stream again (the
/// new one starts with a whole state).
async fn watch(
    mut dispatcher: Dispatcher,
    node_id: String,
    index: usize,
    view: Arc<Mutex<NodeView>>,
    scenario: Arc<Mutex<Option<Arc<Scenario>>>>,
) {
    let request = WatchRequest { node_id: node_id.clone() };
    let mut reported = HashSet::new();
    loop {
        let mut stream = match dispatcher.watch(request.clone()).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                eprintln!("sim-{index}: opening the watch stream: {status}; again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => panic!("sim-{index}: the manager ended the watch stream"),
                Err(status) => {
                    eprintln!("sim-{index}: watch stream broke: {status}; opening it again");
                    break;
                }
            };
            hold(&dispatcher, &node_id, index, &view, &scenario, &mut reported, message);
        }
    }
}

/// Applies one Watch `message` to the node's view, tells the scenario when
/// the view is complete, and reports the tasks it gives for the first time
/// Running.
fn hold(
    dispatcher: &Dispatcher,
    node_id: &str,
    index: usize,
    view: &Mutex<NodeView>,
    scenario: &Mutex<Option<Arc<Scenario>>>,
    reported: &mut HashSet<String>,
    message: WatchMessage,
) {
    let new_tasks: Vec<TaskStatusReport> = {
        let mut view = view.lock().unwrap();
        view.bytes += message.encoded_len() as u64;
        view.messages += 1;
        let complete = view.held.apply(message).unwrap_or_else(|gap| panic!("sim-{index}: {gap}"));
        if let Some(scenario) = scenario.lock().unwrap().as_ref().filter(|_| complete) {
            scenario.observe(index, view.held.items());
        }
        held_tasks(view.held.items())
            .filter(|id| !reported.contains(*id) && reported.insert(id.to_string()))
            .map(|id| TaskStatusReport {
                task_id: id.to_string(),
                state: TaskState::Running.into(),
                ..Default::default()
            })
            .collect()
    };
    if !new_tasks.is_empty() {
        let request = ReportStatusRequest { node_id: node_id.to_string(), tasks: new_tasks };
        let mut reporter = dispatcher.clone();
        tokio::spawn(async move {
            // As an agent does: a report that did not get through is sent again.
            while let Err(status) = reporter.report_status(request.clone()).await {
                eprintln!("sim-{index}: reporting tasks Running: {status}; again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// The IDs of the tasks a node's state gives it.
fn held_tasks(items: &DesiredItems) -> impl Iterator<Item = &str> {
    items.range(&ItemKey::Task(String::new()), |key| matches!(key, ItemKey::Task(_))).filter_map(|item| {
        match item {
            Item::Task(task) => Some(task.id.as_str()),
            _ => None,
        }
    })
}
