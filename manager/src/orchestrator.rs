//! The orchestrator: keeps every service at its replica count. It stops tasks
//! that failed, ended, sit on a Down node or exceed the count, and starts
//! replacements on Ready nodes — after a back-off when a slot keeps failing.
//! The decision is a pure function of the state ([`plan`]); [`run`] applies
//! it after every change and every second.

use crate::addresses;
use crate::constraints::{self, first_unmet, Constraint};
use crate::liveness::{Heartbeats, NodeLiveness};
use crate::networks::now_unix;
#[cfg(test)]
use crate::nodes::PAUSE;
use crate::nodes::{ACTIVE, DRAIN};
use crate::scheduler::{self, Candidate};
use crate::services::taken_addresses;
use crate::services::GLOBAL_SLOT;
use crate::store::{AsConflict, Batch};
use crate::updates;
use crate::{ids, Store};
use netctl_proto::{EndpointAddress, Network, Node, Service, ServiceMode, Task, TaskState};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

/// How many finished tasks per slot `service ps` keeps showing.
const HISTORY_PER_SLOT: usize = 4;
/// The longest back-off between two attempts of a failing slot.
const MAX_BACKOFF_SECONDS: i64 = 30;
/// How long a task may stay `assigned` (its node has not said it runs it)
/// before it is failed and placed again.
pub const ASSIGNED_TIMEOUT_SECONDS: i64 = 60;
/// How long a failure of a service on a node makes the scheduler prefer
/// other nodes for that service.
const FAILURE_MEMORY_SECONDS: i64 = 300;
/// The longest rest between two passes (see [`run`]).
const MAX_REST: Duration = Duration::from_millis(500);
/// How long after a node's Down deadline the pass that moves its tasks runs.
const JUST_AFTER: Duration = Duration::from_millis(20);
/// From this many nodes on, a cluster most of whose nodes look Down at
/// once keeps their tasks ([`most_nodes_look_down`]).
const LARGE_CLUSTER_NODES: usize = 50;

/// Whether more than half of a cluster of at least
/// [`LARGE_CLUSTER_NODES`] nodes looks Down at once (`ready` of `nodes`
/// Ready). That says more about the manager (overloaded, cut off) than
/// about the nodes, and moving most of the cluster's tasks would only add
/// to the load: their tasks stay where they are, as Kubernetes' node
/// lifecycle controller stops evicting in a large disruption (pure).
pub fn most_nodes_look_down(nodes: usize, ready: usize) -> bool {
    nodes >= LARGE_CLUSTER_NODES && ready * 2 < nodes
}

/// Everything the orchestrator decides from.
pub struct ClusterState<'a> {
    /// All services.
    pub services: &'a [Service],
    /// All tasks, current and history.
    pub tasks: &'a [Task],
    /// All networks.
    pub networks: &'a [Network],
    /// All nodes.
    pub nodes: &'a [Node],
    /// IDs of the nodes that are Ready now (their tasks keep running).
    pub ready: &'a HashSet<String>,
    /// IDs of the Ready nodes heard from since the manager started (only
    /// these get new tasks).
    pub schedulable: &'a HashSet<String>,
    /// The address each network handed out last, by network ID: new
    /// tasks' addresses follow it ([`addresses::next_free`]).
    pub last_addresses: &'a HashMap<String, Ipv4Addr>,
    /// Seconds since the epoch.
    pub now: i64,
}

/// Why a task that should run is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopReason {
    /// It ended (failed or completed): its state says how.
    Ended,
    /// Its node never said it started it.
    NeverStarted,
    /// Its node is Down.
    NodeDown,
    /// Its node was drained (`node update --availability drain`).
    NodeDrained,
    /// A constraint of its service no longer holds on its node.
    ConstraintUnmet(String),
    /// Its slot is above the replica count.
    ScaledDown,
}

impl StopReason {
    /// The reason a task should stop now, if any.
    fn of(task: &Task, service: &Service, state: &ClusterState, eligibility: &Eligibility) -> Option<Self> {
        let scaled_down = service.mode() == ServiceMode::Replicated && task.slot > service.replicas;
        if task.state() == TaskState::Pending {
            return scaled_down.then_some(StopReason::ScaledDown);
        }
        let stuck = task.state() == TaskState::Assigned
            && state.now - task.state_changed_unix > ASSIGNED_TIMEOUT_SECONDS;
        if task.state().is_terminal() {
            return Some(StopReason::Ended);
        } else if stuck {
            return Some(StopReason::NeverStarted);
        } else if !state.ready.contains(&task.node_id) {
            return Some(StopReason::NodeDown);
        }
        let node = eligibility.nodes.get(task.node_id.as_str());
        if node.is_some_and(|n| n.availability == DRAIN) {
            Some(StopReason::NodeDrained)
        } else if let Some(unmet) = node.and_then(|n| first_unmet(eligibility.constraints(service), n)) {
            Some(StopReason::ConstraintUnmet(unmet.to_string()))
        } else if scaled_down {
            Some(StopReason::ScaledDown)
        } else {
            None
        }
    }

    /// Marks `task` as stopped for this reason at `now`.
    fn apply(self, task: &mut Task, now: i64) {
        task.set_desired_state(TaskState::Shutdown);
        let (state, error) = match self {
            StopReason::Ended => return,
            StopReason::NeverStarted => {
                (TaskState::Failed, format!("its node did not start it within {ASSIGNED_TIMEOUT_SECONDS} s"))
            }
            StopReason::NodeDown => (TaskState::Shutdown, "node is down".to_string()),
            StopReason::NodeDrained => (TaskState::Shutdown, "node is drained".to_string()),
            StopReason::ConstraintUnmet(constraint) => {
                (TaskState::Shutdown, format!("constraint {constraint} no longer holds on its node"))
            }
            StopReason::ScaledDown => (TaskState::Shutdown, String::new()),
        };
        task.set_state(state);
        task.error = error;
        task.state_changed_unix = now;
    }
}

/// Seconds to wait before restarting a slot whose last `failures` tasks failed.
pub fn backoff_seconds(failures: usize) -> i64 {
    match failures {
        0 => 0,
        n => (1i64 << (n - 1).min(5)).min(MAX_BACKOFF_SECONDS),
    }
}

/// Where a task belongs: its service and slot, or for a global service's
/// task, its node. A replacement takes its predecessor's place.
type Place<'a> = (&'a str, u32, &'a str);

fn place_of(task: &Task) -> Place<'_> {
    let node = if task.slot == GLOBAL_SLOT { task.node_id.as_str() } else { "" };
    (task.service_id.as_str(), task.slot, node)
}

/// The changes that bring the state closer to what the services ask for:
/// stop what should no longer run, roll updates on, start what is missing
/// and place what waits, forget old history. Each step sees the tasks as
/// the steps before it left them.
pub fn plan(state: &ClusterState) -> Batch {
    let mut batch = Batch::new();
    let eligibility = Eligibility::new(state);
    let mut tasks: Vec<Task> = state.tasks.to_vec();
    stop_what_should_not_run(state, &eligibility, &mut tasks, &mut batch);
    roll_updates_on(state, &mut tasks, &mut batch);
    start_and_place(state, &eligibility, &tasks, &mut batch);
    forget_old_history(&tasks, &mut batch);
    batch
}

/// Stops the tasks meant to run that should not: their service is gone,
/// their node is Down or drained, a constraint no longer holds, the
/// service was scaled down, or they ended.
fn stop_what_should_not_run(
    state: &ClusterState,
    eligibility: &Eligibility,
    tasks: &mut [Task],
    batch: &mut Batch,
) {
    let services: HashMap<&str, &Service> = state.services.iter().map(|s| (s.id.as_str(), s)).collect();
    for task in tasks.iter_mut().filter(|t| t.desired_state() == TaskState::Running) {
        let Some(service) = services.get(task.service_id.as_str()) else {
            batch.delete::<Task>(&task.id);
            continue;
        };
        if let Some(reason) = StopReason::of(task, service, state, eligibility) {
            tracing::info!(task = %task.id, node = %task.node_id, ?reason, "stopping task");
            reason.apply(task, state.now);
            batch.put(task);
        }
    }
}

/// Stops the next batch of tasks of an older version of every service
/// being updated or rolled back, and records each update's new status.
/// Only services being updated look at their tasks.
fn roll_updates_on(state: &ClusterState, tasks: &mut [Task], batch: &mut Batch) {
    let updating: HashSet<&str> =
        state.services.iter().filter(|s| updates::in_progress(s)).map(|s| s.id.as_str()).collect();
    if updating.is_empty() {
        return;
    }
    let mut own: HashMap<&str, Vec<&Task>> = HashMap::new();
    for task in tasks.iter().filter(|t| updating.contains(t.service_id.as_str())) {
        own.entry(task.service_id.as_str()).or_default().push(task);
    }
    let mut replace: HashSet<String> = HashSet::new();
    for service in state.services.iter().filter(|s| updating.contains(s.id.as_str())) {
        let step = updates::step(service, own.get(service.id.as_str()).map_or(&[], Vec::as_slice), state.now);
        if let Some(changed) = &step.service {
            let status = changed.update_status.clone().unwrap_or_default();
            tracing::info!(service = %service.name, state = %status.state, message = %status.message, "update");
            batch.put(changed);
        }
        replace.extend(step.replace);
    }
    for task in tasks.iter_mut().filter(|t| replace.contains(&t.id)) {
        tracing::info!(task = %task.id, service = %task.service_id, "replacing task (update)");
        task.set_desired_state(TaskState::Shutdown);
        task.set_state(TaskState::Shutdown);
        task.state_changed_unix = state.now;
        batch.put(task);
    }
}

/// Gives every place a service asks for (a replicated service's slots, a
/// global service's eligible nodes) a task meant to run: a new one once
/// the place's back-off is over, and a node for one still Pending.
fn start_and_place(state: &ClusterState, eligibility: &Eligibility, tasks: &[Task], batch: &mut Batch) {
    let mut places: HashMap<Place, Vec<&Task>> = HashMap::new();
    for task in tasks {
        places.entry(place_of(task)).or_default().push(task);
    }
    let mut placement = Placement::new(state, tasks, eligibility);
    for service in state.services {
        let wanted: Vec<Place> = match service.mode() {
            ServiceMode::Replicated => {
                (1..=service.replicas).map(|slot| (service.id.as_str(), slot, "")).collect()
            }
            ServiceMode::Global => placement
                .takers(service)
                .map(|node| (service.id.as_str(), GLOBAL_SLOT, node.id.as_str()))
                .collect(),
        };
        for place in wanted {
            let here = places.get(&place).map_or(&[][..], Vec::as_slice);
            match here.iter().find(|t| t.desired_state() == TaskState::Running) {
                Some(waiting) if waiting.state() == TaskState::Pending => {
                    if let Some(task) = placement.place_pending(service, waiting) {
                        batch.put(&task);
                    }
                }
                Some(_) => {}
                None if backoff_over(here, state.now) => {
                    batch.put(&placement.new_task(service, place));
                }
                None => {}
            }
        }
    }
    placement.record_last_addresses(batch);
}

/// Deletes all but the newest [`HISTORY_PER_SLOT`] finished tasks of each
/// place.
fn forget_old_history(tasks: &[Task], batch: &mut Batch) {
    let mut finished: HashMap<Place, Vec<&Task>> = HashMap::new();
    for task in tasks.iter().filter(|t| t.desired_state() != TaskState::Running) {
        finished.entry(place_of(task)).or_default().push(task);
    }
    for (_, mut history) in finished {
        history.sort_by_key(|t| std::cmp::Reverse((t.created_unix, t.state_changed_unix)));
        for old in history.iter().skip(HISTORY_PER_SLOT) {
            batch.delete::<Task>(&old.id);
        }
    }
}

/// Adds one to `key`'s count (its key allocated only when first counted:
/// a pass counts every task of the cluster).
fn count_one(counts: &mut HashMap<String, usize>, key: &str) {
    match counts.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}

/// Adds one to the count of `service_id`'s tasks on `node_id`.
fn count_of_service(counts: &mut HashMap<String, HashMap<String, usize>>, service_id: &str, node_id: &str) {
    match counts.get_mut(service_id) {
        Some(of_service) => count_one(of_service, node_id),
        None => {
            counts.insert(service_id.to_string(), HashMap::from([(node_id.to_string(), 1)]));
        }
    }
}

/// Whether the back-off after a slot's trailing failures (or exits: a task is
/// meant to keep running) has passed.
fn backoff_over(slot_tasks: &[&Task], now: i64) -> bool {
    let mut history: Vec<&&Task> = slot_tasks.iter().collect();
    history.sort_by_key(|t| std::cmp::Reverse(t.created_unix));
    let failures: Vec<&&Task> = history
        .iter()
        .copied()
        .take_while(|t| matches!(t.state(), TaskState::Failed | TaskState::Complete))
        .collect();
    let last_failure = failures.iter().map(|t| t.state_changed_unix).max().unwrap_or(0);
    now >= last_failure + backoff_seconds(failures.len())
}

/// Why a node takes no new task of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    /// Down, or not heard from since the manager started.
    NotReady,
    /// Paused or drained.
    NotActive,
    /// This constraint of the service does not hold on it.
    Constraint(String),
    /// A task of another service publishes this port ("8080/tcp") in host
    /// mode there.
    HostPort(String),
}

/// Which nodes may take new tasks of which service: Ready nodes heard from,
/// Active, where every constraint of the service holds.
struct Eligibility<'a> {
    /// Every node by ID.
    nodes: HashMap<&'a str, &'a Node>,
    /// Each service's constraints, parsed once per plan.
    constraints: HashMap<&'a str, Vec<Constraint>>,
}

impl<'a> Eligibility<'a> {
    fn new(state: &ClusterState<'a>) -> Self {
        let constraints = state
            .services
            .iter()
            .map(|service| {
                // Stored constraints were checked when the service was made.
                let parsed = constraints::parse_all(&service.constraints).unwrap_or_else(|err| {
                    tracing::error!(service = %service.name, "a stored constraint does not parse: {err}");
                    Vec::new()
                });
                (service.id.as_str(), parsed)
            })
            .collect();
        let nodes = state.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        Self { nodes, constraints }
    }

    fn constraints(&self, service: &Service) -> &[Constraint] {
        self.constraints.get(service.id.as_str()).map_or(&[], Vec::as_slice)
    }

    /// Why `node` takes no new task of `service`; `None` if it takes them.
    fn refusal(&self, state: &ClusterState, node: &Node, service: &Service) -> Option<Refusal> {
        if !state.schedulable.contains(&node.id) {
            Some(Refusal::NotReady)
        } else if node.availability != ACTIVE {
            Some(Refusal::NotActive)
        } else {
            first_unmet(self.constraints(service), node).map(|c| Refusal::Constraint(c.to_string()))
        }
    }
}

/// The text of a refusal that names one thing (a constraint, a port).
fn refusal_text(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Constraint(text) => format!("constraint {text}"),
        Refusal::HostPort(port) => format!("host port {port} in use"),
        _ => String::new(),
    }
}

/// The host-mode ports of `service`: (protocol, port).
fn host_ports(service: &Service) -> Vec<(&str, u32)> {
    service
        .ports
        .iter()
        .filter(|p| !p.is_ingress())
        .map(|p| (p.protocol.as_str(), p.published_port))
        .collect()
}

/// Where new tasks go: each node's load and each network's taken
/// addresses, counted once per plan and kept up to date as tasks are added.
struct Placement<'a> {
    state: &'a ClusterState<'a>,
    tasks: &'a [Task],
    eligibility: &'a Eligibility<'a>,
    /// Live tasks by node.
    live: HashMap<String, usize>,
    /// Live tasks by service, then node.
    live_of_service: HashMap<String, HashMap<String, usize>>,
    /// Tasks that failed lately by service, then node.
    failed_lately: HashMap<String, HashMap<String, usize>>,
    /// Taken addresses by network ID, counted when first needed.
    taken: HashMap<String, HashSet<Ipv4Addr>>,
    /// The address each network handed out last, as tasks are added.
    last_addresses: HashMap<String, Ipv4Addr>,
    /// Host-mode ports in use by node: (protocol, port).
    host_ports: HashMap<String, HashSet<(String, u32)>>,
    /// The nodes that take tasks of the service placed last (by ID), with
    /// their loads, kept up to date as its tasks are placed: placing a
    /// thousand replicas weighs each node once, not once per replica.
    takers: Option<(String, Vec<Candidate<'a>>)>,
}

impl<'a> Placement<'a> {
    fn new(state: &'a ClusterState<'a>, tasks: &'a [Task], eligibility: &'a Eligibility<'a>) -> Self {
        let mut placement = Self {
            state,
            tasks,
            eligibility,
            live: HashMap::new(),
            live_of_service: HashMap::new(),
            failed_lately: HashMap::new(),
            taken: HashMap::new(),
            last_addresses: state.last_addresses.clone(),
            host_ports: HashMap::new(),
            takers: None,
        };
        let services: HashMap<&str, &Service> = state.services.iter().map(|s| (s.id.as_str(), s)).collect();
        for task in tasks.iter().filter(|t| t.desired_state() == TaskState::Running && !t.node_id.is_empty())
        {
            if let Some(service) = services.get(task.service_id.as_str()) {
                placement.use_host_ports(&task.node_id, service);
            }
        }
        for task in tasks {
            if task.desired_state() == TaskState::Running {
                count_one(&mut placement.live, &task.node_id);
                count_of_service(&mut placement.live_of_service, &task.service_id, &task.node_id);
            } else if task.state() == TaskState::Failed
                && state.now - task.state_changed_unix < FAILURE_MEMORY_SECONDS
            {
                count_of_service(&mut placement.failed_lately, &task.service_id, &task.node_id);
            }
        }
        placement
    }

    /// Counts `service`'s host-mode ports as used on `node_id`.
    fn use_host_ports(&mut self, node_id: &str, service: &Service) {
        let ports = host_ports(service);
        if ports.is_empty() {
            return;
        }
        let used = self.host_ports.entry(node_id.to_string()).or_default();
        used.extend(ports.into_iter().map(|(protocol, port)| (protocol.to_string(), port)));
    }

    /// Why `node` takes no new task of `service` now; `None` if it takes one.
    fn refusal(&self, node: &Node, service: &Service) -> Option<Refusal> {
        self.eligibility.refusal(self.state, node, service).or_else(|| {
            let used = self.host_ports.get(&node.id)?;
            let (protocol, port) = host_ports(service)
                .into_iter()
                .find(|(protocol, port)| used.contains(&(protocol.to_string(), *port)))?;
            Some(Refusal::HostPort(format!("{port}/{protocol}")))
        })
    }

    /// The nodes that take a new task of `service` now.
    fn takers<'s>(&'s self, service: &'s Service) -> impl Iterator<Item = &'a Node> + 's {
        self.state.nodes.iter().filter(move |node| self.refusal(node, service).is_none())
    }

    /// Why no node takes a task of `service`, as `service ps` shows it:
    /// "no suitable node (constraint node.labels.zone==b)".
    fn no_node_reason(&self, service: &Service) -> String {
        let mut counts: std::collections::BTreeMap<Refusal, usize> = Default::default();
        for node in self.state.nodes {
            if let Some(refusal) = self.refusal(node, service) {
                *counts.entry(refusal).or_default() += 1;
            }
        }
        let plural = |n: usize| if n == 1 { "1 node".to_string() } else { format!("{n} nodes") };
        let parts: Vec<String> = match counts.len() {
            0 => vec!["no node has joined".to_string()],
            1 if matches!(counts.keys().next(), Some(Refusal::Constraint(_))) => {
                counts.keys().map(refusal_text).collect()
            }
            _ => counts
                .iter()
                .map(|(refusal, n)| match refusal {
                    Refusal::NotReady => format!("{} not ready", plural(*n)),
                    Refusal::NotActive => format!("{} not available for new tasks", plural(*n)),
                    Refusal::Constraint(_) => format!("{} unmet on {}", refusal_text(refusal), plural(*n)),
                    Refusal::HostPort(_) => format!("{} on {}", refusal_text(refusal), plural(*n)),
                })
                .collect(),
        };
        format!("no suitable node ({})", parts.join("; "))
    }

    /// A new task for `service` at `place`: on its node for a global
    /// service, else on the least loaded node that takes it, with an
    /// address in each of the service's networks. Pending, with the reason,
    /// when no node takes it or a network is full.
    fn new_task(&mut self, service: &Service, place: Place) -> Task {
        let (_, slot, node) = place;
        let now = self.state.now;
        let waiting = Task {
            id: ids::new_id(),
            service_id: service.id.clone(),
            slot,
            service_version: service.version,
            desired_state: TaskState::Running.into(),
            state: TaskState::Pending.into(),
            created_unix: now,
            state_changed_unix: now,
            ..Default::default()
        };
        let chosen = if node.is_empty() { self.pick_node(service) } else { Ok(node.to_string()) };
        match chosen.and_then(|node_id| self.assign(service, &waiting, node_id)) {
            Ok(task) => task,
            Err(reason) => Task { error: reason, ..waiting },
        }
    }

    /// `waiting` placed on a node now, or with a new reason to wait;
    /// `None` when nothing changed.
    fn place_pending(&mut self, service: &Service, waiting: &Task) -> Option<Task> {
        let placed = self.pick_node(service).and_then(|node_id| self.assign(service, waiting, node_id));
        match placed {
            Ok(task) => Some(task),
            Err(reason) if reason != waiting.error => {
                Some(Task { error: reason, state_changed_unix: self.state.now, ..waiting.clone() })
            }
            Err(_) => None,
        }
    }

    /// The least loaded node that takes tasks of `service`, or why none does.
    fn pick_node(&mut self, service: &Service) -> Result<String, String> {
        if self.takers.as_ref().is_none_or(|(id, _)| *id != service.id) {
            self.takers = Some((service.id.clone(), self.candidates(service)));
        }
        let candidates = self.takers.as_ref().map_or(&[][..], |(_, candidates)| candidates.as_slice());
        match scheduler::pick(candidates) {
            Some(node_id) => Ok(node_id.to_string()),
            None => Err(self.no_node_reason(service)),
        }
    }

    /// The nodes that take a new task of `service` now, with their loads.
    fn candidates(&self, service: &Service) -> Vec<Candidate<'a>> {
        let (failed, live) = (self.failed_lately.get(&service.id), self.live_of_service.get(&service.id));
        let count = |of_service: Option<&HashMap<String, usize>>, node: &str| {
            of_service.and_then(|counts| counts.get(node)).copied().unwrap_or(0)
        };
        self.takers(service)
            .map(|n| Candidate {
                node_id: &n.id,
                hostname: &n.hostname,
                recent_failures: count(failed, &n.id),
                service_tasks: count(live, &n.id),
                all_tasks: self.live.get(&n.id).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Counts a task of `service` placed on `node_id` in the takers kept
    /// for it; the takers of another service are weighed again when next
    /// needed (the node's load changed).
    fn count_in_takers(&mut self, service: &Service, node_id: &str) {
        let Some((_, candidates)) = self.takers.as_mut().filter(|(id, _)| *id == service.id) else {
            self.takers = None;
            return;
        };
        if let Some(index) = candidates.iter().position(|c| c.node_id == node_id) {
            if host_ports(service).is_empty() {
                candidates[index].service_tasks += 1;
                candidates[index].all_tasks += 1;
            } else {
                // Its host-mode ports are taken there now.
                candidates.remove(index);
            }
        }
    }

    /// `task` assigned to `node_id` with its addresses, counted in the
    /// node's load; the reason when a network is full.
    fn assign(&mut self, service: &Service, task: &Task, node_id: String) -> Result<Task, String> {
        let endpoints = self.addresses(service)?;
        self.use_host_ports(&node_id, service);
        count_one(&mut self.live, &node_id);
        count_of_service(&mut self.live_of_service, &service.id, &node_id);
        self.count_in_takers(service, &node_id);
        Ok(Task {
            node_id,
            state: TaskState::Assigned.into(),
            error: String::new(),
            endpoints,
            state_changed_unix: self.state.now,
            ..task.clone()
        })
    }

    /// A free address in each of the service's networks, then taken; the
    /// reason (and nothing taken) when a network is full.
    fn addresses(&mut self, service: &Service) -> Result<Vec<EndpointAddress>, String> {
        let state = self.state;
        let mut endpoints: Vec<EndpointAddress> = Vec::new();
        for network in crate::services::attached_networks(service, state.networks) {
            let taken = self
                .taken
                .entry(network.id.clone())
                .or_insert_with(|| taken_addresses(network, state.services, self.tasks, state.nodes));
            let last = self.last_addresses.get(&network.id).copied();
            let free =
                network.subnet.parse().ok().and_then(|subnet| addresses::next_free(subnet, taken, last));
            let Some(address) = free else {
                tracing::warn!(service = %service.name, network = %network.name, "no free address for a new task");
                for endpoint in &endpoints {
                    let taken = self.taken.get_mut(&endpoint.network_id).expect("taken above");
                    taken.remove(&endpoint.address.parse().expect("written above"));
                }
                return Err(format!("no free address in network {}", network.name));
            };
            taken.insert(address);
            self.last_addresses.insert(network.id.clone(), address);
            endpoints.push(EndpointAddress {
                network_id: network.id.clone(),
                address: address.to_string(),
                mac: addresses::mac_for(address),
            });
        }
        Ok(endpoints)
    }

    /// Records where each network that handed out addresses in this plan
    /// goes on from.
    fn record_last_addresses(&self, batch: &mut Batch) {
        for (network_id, address) in &self.last_addresses {
            if self.state.last_addresses.get(network_id) != Some(address) {
                crate::address_cursors::record(batch, network_id, *address);
            }
        }
    }
}

/// Applies [`plan`] after every store change and every second while this
/// manager leads, until `stopping` turns true. Between two passes it rests
/// as long as the last one took ([`MAX_REST`] at most): a pass reads and
/// plans the whole cluster, which takes a while at scale, and a burst of
/// changes (a thousand nodes reporting their new tasks Running) would keep
/// it running back to back, on one core and holding the write lock the
/// reports wait for. So it plans on half a core at most, and the changes of
/// a burst together.
pub async fn run(
    store: Arc<Store>,
    heartbeats: Arc<Heartbeats>,
    mut leading: tokio::sync::watch::Receiver<bool>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut revisions = store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut holding = false;
    let mut rested = tokio::time::Instant::now();
    // The revision the last pass left the cluster at.
    let mut planned: Option<u64> = None;
    loop {
        // A pass also just after the next silent node turns Down: its tasks
        // move then, not at the next tick.
        let next_down = heartbeats.next_down_in().map_or(Duration::MAX, |in_| in_ + JUST_AFTER);
        let changed = tokio::select! {
            _ = revisions.changed() => true,
            _ = tick.tick() => false,
            _ = tokio::time::sleep(next_down) => false,
            // Closed only when the manager stops.
            changed = leading.changed() => if changed.is_err() { return } else { false },
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        if !*leading.borrow() {
            continue;
        }
        // Tasks that only started running leave a pass nothing to do: a
        // thousand nodes reporting their new tasks do not make it read the
        // cluster again and again (the next tick still does).
        if changed && planned.is_some_and(|at| store.only_task_progress_since(at)) {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(rested) => {},
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        // This pass reads the state as it is now: what was committed
        // while it rested is planned in it.
        revisions.mark_unchanged();
        let started = tokio::time::Instant::now();
        let passed = pass(&store, &heartbeats).await;
        rested = tokio::time::Instant::now() + started.elapsed().min(MAX_REST);
        let passed = passed.map(|(liveness, revision)| {
            planned = Some(revision);
            liveness
        });
        match passed {
            Err(err) if err.is_conflict() => tracing::debug!("orchestrator pass lost a race: {err}"),
            Err(err) => tracing::error!("orchestrator pass failed: {err}"),
            Ok(Liveness { ready, nodes, held }) if held != holding => {
                holding = held;
                if held {
                    tracing::warn!(ready, nodes, "most nodes look Down at once: their tasks stay until they are heard from or fewer look Down");
                } else {
                    tracing::info!(ready, nodes, "nodes judged Down again one by one");
                }
            }
            Ok(_) => {}
        }
    }
}

/// How many nodes a pass found Ready, and whether it kept the tasks of
/// the others ([`most_nodes_look_down`]).
struct Liveness {
    ready: usize,
    nodes: usize,
    held: bool,
}

/// Plans and commits one pass; its [`Liveness`] and the revision its
/// changes left the cluster at.
async fn pass(
    store: &Arc<Store>,
    heartbeats: &Arc<Heartbeats>,
) -> Result<(Liveness, u64), crate::store::StoreError> {
    let mut writer = store.write_lock().await;
    // Reading every record and planning take a while at scale (about
    // 150 ms at 11,000 tasks): off the async workers, which answer the
    // nodes' heartbeats meanwhile.
    let (reader, heartbeats) = (store.clone(), heartbeats.clone());
    let planned = tokio::task::spawn_blocking(move || plan_from_store(&reader, &heartbeats));
    let (batch, liveness) = planned.await.expect("the orchestrator's plan does not panic")?;
    let planned = writer.commit_in_parts(batch).await?;
    Ok((liveness, planned))
}

/// Reads the cluster and plans what to change.
fn plan_from_store(
    store: &Store,
    heartbeats: &Heartbeats,
) -> Result<(Batch, Liveness), crate::store::StoreError> {
    let nodes = store.shared::<Node>()?;
    // While heartbeats other managers received do not arrive (the store
    // stalls), no node is judged Down.
    let judging = heartbeats.can_judge();
    let live: HashSet<String> = nodes
        .iter()
        .filter(|n| !judging || heartbeats.status(&n.id).0 == NodeLiveness::Ready)
        .map(|n| n.id.clone())
        .collect();
    let held = most_nodes_look_down(nodes.len(), live.len());
    let liveness = Liveness { ready: live.len(), nodes: nodes.len(), held };
    let schedulable: HashSet<String> = live.iter().filter(|id| heartbeats.heard_from(id)).cloned().collect();
    let ready = if held { nodes.iter().map(|n| n.id.clone()).collect() } else { live };
    let (services, tasks, networks) = (store.shared()?, store.shared()?, store.shared()?);
    let last_addresses = crate::address_cursors::read(store, &networks)?;
    let state = ClusterState {
        services: &services,
        tasks: &tasks,
        networks: &networks,
        nodes: &nodes,
        ready: &ready,
        schedulable: &schedulable,
        last_addresses: &last_addresses,
        now: now_unix(),
    };
    Ok((plan(&state), liveness))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node { id: id.into(), hostname: id.into(), availability: ACTIVE.into(), ..Default::default() }
    }

    fn labelled(id: &str, key: &str, value: &str) -> Node {
        Node { labels: [(key.to_string(), value.to_string())].into(), ..node(id) }
    }

    fn global(constraints: &[&str]) -> Service {
        Service {
            id: "global".into(),
            name: "agentd".into(),
            mode: ServiceMode::Global.into(),
            constraints: constraints.iter().map(|c| c.to_string()).collect(),
            ..service(0)
        }
    }

    fn nodes_of(tasks: &[&Task]) -> Vec<String> {
        let mut nodes: Vec<String> = tasks.iter().map(|t| t.node_id.clone()).collect();
        nodes.sort();
        nodes
    }

    fn network() -> Network {
        Network {
            id: "net".into(),
            subnet: "192.168.200.0/24".into(),
            gateway: "192.168.200.1".into(),
            ..Default::default()
        }
    }

    fn service(replicas: u32) -> Service {
        Service {
            id: "svc".into(),
            name: "demoservice".into(),
            replicas,
            network_ids: vec!["net".into()],
            virtual_ips: vec![netctl_proto::VirtualIp {
                network_id: "net".into(),
                address: "192.168.200.2".into(),
            }],
            ..Default::default()
        }
    }

    /// Applies plans until nothing changes, as the running loop would.
    fn settle(
        services: &[Service],
        tasks: &mut Vec<Task>,
        nodes: &[Node],
        ready: &HashSet<String>,
        now: i64,
    ) {
        let networks = [network()];
        for _ in 0..10 {
            let state = ClusterState {
                services,
                tasks,
                networks: &networks,
                nodes,
                ready,
                schedulable: ready,
                last_addresses: &HashMap::new(),
                now,
            };
            let batch = plan(&state);
            if batch.is_empty() {
                return;
            }
            apply(&batch, tasks);
        }
        panic!("the plan does not settle");
    }

    fn apply(batch: &Batch, tasks: &mut Vec<Task>) {
        for task in batch.tasks() {
            match task {
                (id, Some(task)) => match tasks.iter_mut().find(|t| t.id == id) {
                    Some(existing) => *existing = task,
                    None => tasks.push(task),
                },
                (id, None) => tasks.retain(|t| t.id != id),
            }
        }
    }

    fn live(tasks: &[Task]) -> Vec<&Task> {
        tasks.iter().filter(|t| t.desired_state() == TaskState::Running).collect()
    }

    #[test]
    fn replicas_spread_over_ready_nodes_with_distinct_addresses() {
        let nodes = [node("a"), node("b")];
        let ready: HashSet<String> = ["a".into(), "b".into()].into();
        let mut tasks = Vec::new();
        settle(&[service(2)], &mut tasks, &nodes, &ready, 100);
        let live = live(&tasks);
        assert_eq!(live.len(), 2);
        let placed: HashSet<&str> = live.iter().map(|t| t.node_id.as_str()).collect();
        assert_eq!(placed, HashSet::from(["a", "b"]));
        let addresses: HashSet<&str> = live.iter().map(|t| t.endpoints[0].address.as_str()).collect();
        assert_eq!(addresses, HashSet::from(["192.168.200.3", "192.168.200.4"]));
        assert_eq!(
            live[0].endpoints[0].mac,
            addresses::mac_for(live[0].endpoints[0].address.parse().unwrap())
        );
    }

    #[test]
    fn replicas_placed_in_one_pass_weigh_the_ones_placed_before_them() {
        let nodes = [node("a"), node("b"), node("c")];
        let ready: HashSet<String> = ["a".into(), "b".into(), "c".into()].into();
        let other = Service { id: "other".into(), name: "other".into(), ..service(2) };
        let mut tasks = Vec::new();
        settle(
            &[Service { constraints: vec!["node.id==a".into()], ..other.clone() }],
            &mut tasks,
            &nodes,
            &ready,
            100,
        );
        assert_eq!(nodes_of(&live(&tasks)), ["a", "a"]);
        // Fewest of the service first, then fewest overall, then name: b,
        // c, a, b, c, a, b.
        settle(
            &[Service { constraints: vec!["node.id==a".into()], ..other }, service(7)],
            &mut tasks,
            &nodes,
            &ready,
            101,
        );
        let placed: Vec<&Task> = live(&tasks).into_iter().filter(|t| t.service_id == "svc").collect();
        assert_eq!(nodes_of(&placed), ["a", "a", "b", "b", "b", "c", "c"]);
    }

    #[test]
    fn scaling_down_stops_the_highest_slots() {
        let nodes = [node("a")];
        let ready: HashSet<String> = ["a".into()].into();
        let mut tasks = Vec::new();
        settle(&[service(4)], &mut tasks, &nodes, &ready, 100);
        settle(&[service(1)], &mut tasks, &nodes, &ready, 101);
        let live = live(&tasks);
        assert_eq!(live.iter().map(|t| t.slot).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_large_cluster_mostly_down_at_once_keeps_its_tasks_a_small_one_does_not() {
        assert!(!most_nodes_look_down(3, 1), "a small cluster moves tasks off its Down nodes");
        assert!(!most_nodes_look_down(49, 0));
        assert!(!most_nodes_look_down(50, 25), "half Ready");
        assert!(most_nodes_look_down(50, 24));
        assert!(most_nodes_look_down(1000, 0));
        assert!(!most_nodes_look_down(1000, 999), "one node died");
    }

    #[test]
    fn tasks_on_a_down_node_are_replaced_on_ready_ones() {
        let nodes = [node("a"), node("b")];
        let mut tasks = Vec::new();
        settle(&[service(2)], &mut tasks, &nodes, &["a".into(), "b".into()].into(), 100);
        settle(&[service(2)], &mut tasks, &nodes, &["a".into()].into(), 110);
        let live = live(&tasks);
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|t| t.node_id == "a"));
        let stopped: Vec<_> = tasks.iter().filter(|t| t.node_id == "b").collect();
        assert!(stopped
            .iter()
            .all(|t| t.desired_state() == TaskState::Shutdown && t.error == "node is down"));
    }

    #[test]
    fn a_scaled_up_service_on_a_down_node_is_replaced_whole() {
        let nodes: Vec<Node> = (0..10).map(|i| node(&format!("n{i}"))).collect();
        let all: HashSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let mut tasks = Vec::new();
        settle(&[service(100)], &mut tasks, &nodes, &all, 100);
        settle(&[service(101)], &mut tasks, &nodes, &all, 101);
        let mut alive = all.clone();
        alive.remove("n5");
        settle(&[service(101)], &mut tasks, &nodes, &alive, 120);
        let live = live(&tasks);
        assert_eq!(live.len(), 101);
        assert!(live.iter().all(|t| t.node_id != "n5"));
    }

    #[test]
    fn a_failing_slot_is_retried_with_growing_back_off() {
        let nodes = [node("a")];
        let ready: HashSet<String> = ["a".into()].into();
        let mut tasks = Vec::new();
        settle(&[service(1)], &mut tasks, &nodes, &ready, 100);
        // Fail the slot twice: the second retry waits 2 seconds.
        for (failed_at, retry_at) in [(100, 101), (101, 103)] {
            let task = tasks.iter_mut().find(|t| t.desired_state() == TaskState::Running).unwrap();
            task.set_state(TaskState::Failed);
            task.state_changed_unix = failed_at;
            settle(&[service(1)], &mut tasks, &nodes, &ready, retry_at - 1);
            assert!(live(&tasks).is_empty(), "retried before the back-off at {}", retry_at - 1);
            settle(&[service(1)], &mut tasks, &nodes, &ready, retry_at);
            assert_eq!(live(&tasks).len(), 1, "not retried at {retry_at}");
        }
        assert_eq!(backoff_seconds(10), 30);
    }

    #[test]
    fn with_no_ready_node_tasks_wait_pending_then_take_the_first_that_is() {
        let mut tasks = Vec::new();
        settle(&[service(2)], &mut tasks, &[node("a")], &HashSet::new(), 100);
        assert_eq!(tasks.len(), 2);
        for task in &tasks {
            assert_eq!(task.state(), TaskState::Pending);
            assert_eq!(
                (task.node_id.as_str(), task.error.as_str()),
                ("", "no suitable node (1 node not ready)")
            );
            assert!(task.endpoints.is_empty(), "a waiting task holds no address");
        }
        let waiting: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        settle(&[service(2)], &mut tasks, &[node("a")], &["a".into()].into(), 101);
        assert_eq!(
            tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
            waiting,
            "the same tasks are placed"
        );
        assert!(tasks
            .iter()
            .all(|t| t.state() == TaskState::Assigned && t.node_id == "a" && t.error.is_empty()));
    }

    #[test]
    fn a_drained_node_loses_its_tasks_and_a_paused_one_keeps_them_but_gets_no_new_one() {
        let ready: HashSet<String> = ["a".into(), "b".into(), "c".into()].into();
        let mut nodes = [node("a"), node("b"), node("c")];
        let mut tasks = Vec::new();
        settle(&[service(3)], &mut tasks, &nodes, &ready, 100);
        assert_eq!(nodes_of(&live(&tasks)), ["a", "b", "c"]);
        nodes[0].availability = PAUSE.into();
        nodes[1].availability = DRAIN.into();
        settle(&[service(4)], &mut tasks, &nodes, &ready, 101);
        assert_eq!(nodes_of(&live(&tasks)), ["a", "c", "c", "c"], "b drained, a paused keeps its task");
        let drained = tasks.iter().find(|t| t.node_id == "b").unwrap();
        assert_eq!((drained.state(), drained.error.as_str()), (TaskState::Shutdown, "node is drained"));
    }

    #[test]
    fn constraints_place_tasks_only_where_they_hold_else_tasks_wait_with_the_reason() {
        let ready: HashSet<String> = ["a".into(), "b".into()].into();
        let zoned = Service { constraints: vec!["node.labels.zone==b".into()], ..service(2) };
        let mut nodes = [labelled("a", "zone", "a"), node("b")];
        let mut tasks = Vec::new();
        settle(std::slice::from_ref(&zoned), &mut tasks, &nodes, &ready, 100);
        assert!(
            tasks.iter().all(|t| t.state() == TaskState::Pending
                && t.error == "no suitable node (constraint node.labels.zone==b)"),
            "{tasks:?}"
        );
        nodes[1].labels.insert("zone".into(), "b".into());
        settle(std::slice::from_ref(&zoned), &mut tasks, &nodes, &ready, 101);
        assert_eq!(nodes_of(&live(&tasks)), ["b", "b"]);
        // A label taken away moves the tasks off the node (and they wait).
        nodes[1].labels.clear();
        settle(&[zoned], &mut tasks, &nodes, &ready, 102);
        let stopped =
            tasks.iter().filter(|t| t.error == "constraint node.labels.zone==b no longer holds on its node");
        assert_eq!(stopped.count(), 2);
        assert_eq!(live(&tasks).iter().filter(|t| t.state() == TaskState::Pending).count(), 2);
    }

    #[test]
    fn two_tasks_publishing_one_host_port_never_share_a_node() {
        let ready: HashSet<String> = ["a".into(), "b".into()].into();
        let port = netctl_proto::PortConfig {
            protocol: "tcp".into(),
            published_port: 8080,
            target_port: 80,
            mode: netctl_proto::HOST_MODE.into(),
        };
        let hosted = Service { ports: vec![port], ..service(3) };
        let mut tasks = Vec::new();
        settle(&[hosted], &mut tasks, &[node("a"), node("b")], &ready, 100);
        assert_eq!(nodes_of(&live(&tasks)), ["", "a", "b"]);
        let waiting = tasks.iter().find(|t| t.state() == TaskState::Pending).unwrap();
        assert_eq!(waiting.error, "no suitable node (host port 8080/tcp in use on 2 nodes)");
    }

    #[test]
    fn a_global_service_runs_one_task_on_every_active_node_it_may_use() {
        let ready: HashSet<String> = ["a".into(), "b".into(), "c".into()].into();
        let mut nodes = vec![node("a"), node("b")];
        let mut tasks = Vec::new();
        settle(&[global(&[])], &mut tasks, &nodes, &ready, 100);
        assert_eq!(nodes_of(&live(&tasks)), ["a", "b"]);
        assert!(live(&tasks).iter().all(|t| t.slot == GLOBAL_SLOT));
        // A node joins; one drains.
        nodes.push(node("c"));
        nodes[0].availability = DRAIN.into();
        settle(&[global(&[])], &mut tasks, &nodes, &ready, 101);
        assert_eq!(nodes_of(&live(&tasks)), ["b", "c"]);
        // Constraints narrow it; no task waits for a node that cannot take one.
        settle(&[global(&["node.id!=b"])], &mut tasks, &nodes, &ready, 102);
        assert_eq!(nodes_of(&live(&tasks)), ["c"]);
        assert!(tasks.iter().all(|t| t.state() != TaskState::Pending));
    }

    #[test]
    fn a_task_stuck_in_assigned_is_failed_and_placed_again() {
        let nodes = [node("a"), node("b")];
        let ready: HashSet<String> = ["a".into(), "b".into()].into();
        let mut tasks = Vec::new();
        settle(&[service(1)], &mut tasks, &nodes, &ready, 100);
        let first = live(&tasks)[0].clone();
        settle(&[service(1)], &mut tasks, &nodes, &ready, 100 + ASSIGNED_TIMEOUT_SECONDS);
        assert_eq!(live(&tasks)[0].id, first.id, "failed before the timeout");
        settle(&[service(1)], &mut tasks, &nodes, &ready, 200 + ASSIGNED_TIMEOUT_SECONDS);
        let stuck = tasks.iter().find(|t| t.id == first.id).unwrap();
        assert_eq!((stuck.state(), stuck.desired_state()), (TaskState::Failed, TaskState::Shutdown));
        assert!(stuck.error.contains("did not start it"), "{}", stuck.error);
        settle(&[service(1)], &mut tasks, &nodes, &ready, 201 + ASSIGNED_TIMEOUT_SECONDS);
        let again = live(&tasks);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].node_id, first.node_id, "the retry went back to the node that failed it");
    }

    #[test]
    fn a_node_where_every_task_fails_does_not_swallow_the_replicas() {
        let nodes = [node("a"), node("b")];
        let ready: HashSet<String> = ["a".into(), "b".into()].into();
        let mut tasks = Vec::new();
        let mut now = 100;
        settle(&[service(4)], &mut tasks, &nodes, &ready, now);
        for _ in 0..10 {
            for task in tasks.iter_mut().filter(|t| t.desired_state() == TaskState::Running) {
                task.set_state(if task.node_id == "b" { TaskState::Failed } else { TaskState::Running });
                task.state_changed_unix = now;
            }
            now += 40;
            settle(&[service(4)], &mut tasks, &nodes, &ready, now);
        }
        let live = live(&tasks);
        assert_eq!(live.len(), 4);
        assert!(live.iter().all(|t| t.node_id == "a"), "{live:?}");
    }

    /// The new tasks one plan makes for two replicas on node "a" (and "b",
    /// Ready but not heard from), with the addresses handed out last.
    fn first_tasks(last_addresses: &HashMap<String, Ipv4Addr>) -> Vec<Task> {
        let nodes = [node("a"), node("b")];
        let ready: HashSet<String> = ["a".into(), "b".into()].into();
        let heard: HashSet<String> = ["a".into()].into();
        let state = ClusterState {
            services: &[service(2)],
            tasks: &[],
            networks: &[network()],
            nodes: &nodes,
            ready: &ready,
            schedulable: &heard,
            last_addresses,
            now: 100,
        };
        plan(&state).tasks().into_iter().filter_map(|(_, task)| task).collect()
    }

    #[test]
    fn new_tasks_take_the_addresses_after_the_one_handed_out_last() {
        // .3 and .4 were handed out and freed; .7 was handed out last.
        let last = HashMap::from([("net".to_string(), "192.168.200.7".parse().unwrap())]);
        let mut addresses: Vec<String> =
            first_tasks(&last).iter().map(|task| task.endpoints[0].address.clone()).collect();
        addresses.sort();
        assert_eq!(addresses, ["192.168.200.8", "192.168.200.9"]);
    }

    #[test]
    fn nodes_not_heard_from_since_a_restart_get_no_new_tasks() {
        let tasks = first_tasks(&HashMap::new());
        assert_eq!(tasks.len(), 2);
        assert!(tasks.iter().all(|t| t.node_id == "a"));
    }
}
