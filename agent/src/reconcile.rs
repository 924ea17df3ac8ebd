//! One reconcile pass, in three steps: *observe* the node's kernel once
//! ([`crate::observe`]), *plan* what turns it into what the desired state
//! asks for ([`crate::desired`] builds that, [`crate::plan`] compares, both
//! pure), *apply* the plan ([`crate::apply`]), one typed error per failed
//! object; then the task processes follow ([`crate::tasks`]). Objects
//! already right are left untouched, so a pass on a converged node plans
//! nothing and a restarted agent adopts what it made before.

use crate::apply::{ActionError, Applier};
use crate::connections::Connections;
use crate::desired::{self, Desired, NodeFacts};
use crate::dns::upstream::Upstreams;
use crate::dns::Resolver;
use crate::failures::{self, Failures, Severity};
use crate::fast_path::{FastPath, Wanted};
use crate::model::HOST;
use crate::names::{self, GWBRIDGE};
use crate::observe::{self, Written};
use crate::plan::{self, Action};
use crate::tasks::Supervisor;
use netctl_proto::{NodeState, TaskSpec, TaskState, TaskStatusReport};
use netlib::{NamespaceDir, Netlink};
use nix::net::if_::if_nametoindex;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest MTU a bridge or a veth takes (ETH_MAX_MTU); loopback's is
/// 65536, so an agent advertising 127.0.0.1 would otherwise make no
/// docker_gwbridge.
const MAX_LINK_MTU: u32 = 65535;

/// Converges one node.
pub struct Reconciler {
    advertise_addr: IpAddr,
    host: Netlink,
    connections: Connections,
    supervisor: Supervisor,
    written: Written,
    resolver: Resolver,
    /// What the passes failed to do, for the log.
    failures: Failures,
    stale_flows: crate::stale_flows::StaleFlows,
    /// How the last pass served the published ports (for `topology`).
    routes: Vec<crate::mesh::PortRoute>,
    /// Whether the kernel has br_netfilter's sysctls.
    bridge_netfilter: bool,
    /// The routing mesh's tc fast path; `None` where it could not load
    /// (iptables then carries everything).
    fast_path: Option<FastPath>,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// The status of every task of the node.
    pub reports: Vec<TaskStatusReport>,
    /// How many actions it planned (0 on a converged node).
    pub actions: usize,
    /// How many sandbox namespaces it made.
    pub new_sandboxes: usize,
    /// How long applying the plan took.
    pub applied_in: Duration,
    /// Of that, how long writing rule sets and sysctls took.
    pub rules_in: Duration,
    /// How many rule sets and sysctls it wrote.
    pub rules_written: usize,
}

impl Reconciler {
    /// A reconciler for the node whose namespaces live under `run_dir`,
    /// starting tasks through `shim_program` (the netctl binary), its
    /// sandboxes' resolver forwarding to `upstreams`.
    pub fn new(
        run_dir: &Path,
        advertise_addr: IpAddr,
        shim_program: PathBuf,
        upstreams: Upstreams,
    ) -> anyhow::Result<Self> {
        let namespaces = NamespaceDir::new(run_dir);
        namespaces.prepare()?;
        let fast_path = match advertise_addr {
            IpAddr::V4(address) => FastPath::load(namespaces.pins(), address)
                .inspect_err(|err| {
                    tracing::warn!("the routing mesh's fast path is off, iptables carries it all: {err:#}")
                })
                .ok(),
            IpAddr::V6(_) => None,
        };
        Ok(Self {
            advertise_addr,
            host: Netlink::host()?,
            connections: Connections::new(run_dir),
            supervisor: Supervisor::new(run_dir, shim_program)?,
            written: Written::load(run_dir),
            resolver: Resolver::new(upstreams),
            failures: Failures::default(),
            stale_flows: Default::default(),
            routes: Vec::new(),
            bridge_netfilter: netlib::sysctl::exists(netlib::sysctl::BRIDGE_NETFILTER),
            fast_path,
        })
    }

    /// Runs one pass: observe, plan, apply, then the tasks; logs what
    /// failed (see [`Failures`]).
    pub async fn pass(&mut self, state: &NodeState) -> Pass {
        let pass = self.converge(state).await;
        failures::log(&self.failures.end_pass(Instant::now()));
        pass
    }

    async fn converge(&mut self, state: &NodeState) -> Pass {
        self.resolver.update(state);
        self.end_tasks_that_lost_their_sandbox(state);
        let IpAddr::V4(local) = self.advertise_addr else {
            let error = format!("advertise address {} is not IPv4", self.advertise_addr);
            return Pass {
                reports: state.tasks.iter().map(|t| self.failed(t, error.clone())).collect(),
                ..Pass::default()
            };
        };
        let observed = observe::observe(&self.host, local, &mut self.connections, &mut self.written).await;
        for error in &observed.errors {
            self.failures.met(Severity::Warning, format!("reading the node back: {error}"));
        }
        let underlay_mtu = observed.underlay_mtu.unwrap_or_else(|| {
            let assumed = format!("no interface holds the advertise address {local}: assuming MTU 1500");
            self.failures.met(Severity::Warning, assumed);
            1500
        });
        let underlay_mtu = underlay_mtu.min(MAX_LINK_MTU);
        let wanted: BTreeSet<String> = state.tasks.iter().map(|t| names::sandbox_namespace(&t.id)).collect();
        let kept: BTreeSet<String> = observed
            .model
            .namespaces
            .keys()
            .filter(|n| !wanted.contains(*n) && self.supervisor.holds(n))
            .cloned()
            .collect();
        let facts = NodeFacts {
            local,
            underlay_mtu,
            gateway_bridge: !observed.foreign_gwbridge,
            bridge_netfilter: self.bridge_netfilter,
        };
        let mut desired = desired::build(state, &facts, &observed.model, &kept);
        let actions = plan::plan(&desired.model, &observed.model);
        let new_sandboxes =
            actions.iter().filter(|a| matches!(a, Action::CreateNamespace(n) if wanted.contains(n))).count();
        let started = Instant::now();
        let mut applier = Applier::new(&self.host, &mut self.connections, &mut self.written);
        let (errors, rules_in) = applier.apply(&actions).await;
        for error in &errors {
            self.failures.met(Severity::Error, error.to_string());
        }
        let applied_in = started.elapsed();
        let rules_written = actions
            .iter()
            .filter(|a| matches!(a, Action::SetSysctl { .. } | Action::WriteRules { .. }))
            .count();
        let wrote = rules_written > 0;
        if wrote || actions.iter().any(|a| matches!(a, Action::DeleteNamespace(_))) {
            if let Err(err) = self.written.save() {
                tracing::warn!("keeping what was written in the run dir: {err}");
            }
        }
        // After the rules: new packets of a deleted flow meet the new backends.
        self.stale_flows.clear(state, &desired.routes, self.connections.namespaces()).await;
        self.sync_fast_path(state, &desired, local, observed.underlay_link.as_deref());
        self.routes = std::mem::take(&mut desired.routes);
        let unwanted: Vec<String> =
            self.supervisor.known().into_iter().filter(|s| !wanted.contains(s)).collect();
        self.supervisor.stop(&unwanted, self.connections.namespaces());
        let problems = self.node_problems(observed.foreign_gwbridge, &errors);
        let held = self.held_ports(state);
        let mut reports = Vec::with_capacity(state.tasks.len());
        for task in &state.tasks {
            let mut problems = problems.clone();
            problems.extend(held.iter().filter(|(id, _)| *id == task.id).map(|(_, problem)| problem.clone()));
            reports.push(self.task_status(task, &desired, &errors, &problems).await);
        }
        self.resolver.retain(|sandbox| wanted.contains(sandbox));
        Pass { reports, actions: actions.len(), new_sandboxes, applied_in, rules_in, rules_written }
    }

    /// Gives the fast path the published ports with replicas here, arriving
    /// on `interface` (the one holding `local`).
    fn sync_fast_path(
        &mut self,
        state: &NodeState,
        desired: &Desired,
        local: Ipv4Addr,
        interface: Option<&str>,
    ) {
        let (Some(fast_path), Some(interface)) = (self.fast_path.as_mut(), interface) else { return };
        // Only the replicas behind published ports: one lookup each.
        let here: BTreeSet<&Ipv4Addr> = desired.routes.iter().flat_map(|route| &route.here).collect();
        let veths = desired
            .gateway_veths
            .iter()
            .filter(|(address, _)| here.contains(address))
            .filter_map(|(address, name)| {
                Some((*address, (name.clone(), if_nametoindex(name.as_str()).ok()?)))
            })
            .collect();
        let peers: Vec<Ipv4Addr> =
            state.cluster_nodes.iter().filter_map(|n| n.parse().ok()).filter(|n| *n != local).collect();
        let wanted = Wanted::new(&desired.routes, &veths, &peers);
        if let Err(err) = fast_path.sync(interface, wanted) {
            self.failures
                .met(Severity::Warning, format!("the routing mesh's fast path on {interface}: {err:#}"));
        }
    }

    /// A sandbox deleted under a running task: the task lost its network for
    /// good, so it ends and the manager replaces it.
    fn end_tasks_that_lost_their_sandbox(&mut self, state: &NodeState) {
        for task in &state.tasks {
            let sandbox = names::sandbox_namespace(&task.id);
            if self.supervisor.started(&sandbox) && !self.connections.namespaces().exists(&sandbox) {
                self.supervisor.stop(std::slice::from_ref(&sandbox), self.connections.namespaces());
                self.supervisor.mark_lost(task, &sandbox, "the task's sandbox namespace was removed");
            }
        }
    }

    /// The tasks behind published ports a process on this node holds, and
    /// what to tell them (logged with the pass's failures).
    fn held_ports(&mut self, state: &NodeState) -> Vec<(String, String)> {
        let publishes =
            !state.published_ports.is_empty() || state.tasks.iter().any(|t| !t.host_ports.is_empty());
        // The host's sockets are read only when this node publishes ports.
        let bound = if publishes { crate::listeners::bound() } else { Default::default() };
        let held = crate::listeners::conflicts(&state.published_ports, &state.tasks, &bound);
        for (_, problem) in &held {
            self.failures.met(Severity::Warning, problem.clone());
        }
        held
    }

    /// What keeps every task of the node from working fully while it runs:
    /// a foreign docker_gwbridge, or egress NAT that could not be written.
    fn node_problems(&mut self, foreign_gwbridge: bool, errors: &[ActionError]) -> Vec<String> {
        let mut problems = Vec::new();
        if foreign_gwbridge {
            let problem = format!(
                "{GWBRIDGE} exists and was not made by netctl (is Docker running on this host?): tasks get no egress leg"
            );
            self.failures.met(Severity::Error, problem.clone());
            problems.push(problem);
        }
        let host_errors = errors
            .iter()
            .filter(|e| e.action.namespace() == HOST && !e.action.link().is_some_and(names::is_gateway_veth));
        problems.extend(host_errors.map(|e| format!("egress NAT on {GWBRIDGE}: {e}")));
        problems
    }

    /// How `task` is doing: refused or broken sandbox → failed; otherwise
    /// its process's state, with what works only partly in ERROR.
    async fn task_status(
        &mut self,
        task: &TaskSpec,
        desired: &Desired,
        errors: &[ActionError],
        problems: &[String],
    ) -> TaskStatusReport {
        if let Some(reason) = desired.refused.get(&task.id) {
            return self.failed(task, format!("setting up the sandbox: {reason}"));
        }
        let sandbox = names::sandbox_namespace(&task.id);
        let (partial, fatal): (Vec<&ActionError>, Vec<&ActionError>) = errors
            .iter()
            .filter(|e| concerns(task, &e.action))
            .partition(|e| partial_problem(&e.action).is_some());
        if let Some(error) = fatal.first() {
            return self.failed(task, format!("setting up the sandbox: {error}"));
        }
        let path = self.connections.namespaces().path(&sandbox);
        let networks: Vec<String> = task.endpoints.iter().map(|e| e.network_id.clone()).collect();
        let resolver = self.resolver.serve(&sandbox, &path, &networks).await.err();
        let mut status = self.supervisor.ensure_running(task, &sandbox, &path).await;
        if status.state() == TaskState::Running {
            let rule_problems =
                partial.iter().filter_map(|e| Some(format!("{}: {}", partial_problem(&e.action)?, e.source)));
            let resolver_problem = resolver.map(|e| format!("name resolution: {e}"));
            let all: Vec<String> =
                problems.iter().cloned().chain(rule_problems).chain(resolver_problem).collect();
            status.error = all.join("; ");
        }
        status
    }

    /// A report of `task` failed for `error`, which the pass's failures
    /// log.
    fn failed(&mut self, task: &TaskSpec, error: String) -> TaskStatusReport {
        self.failures.met(Severity::Error, format!("task {}: {error}", task.id));
        TaskStatusReport { task_id: task.id.clone(), state: TaskState::Failed.into(), error }
    }

    /// How many DNS queries the sandboxes' resolver answered, kept up to
    /// date.
    pub fn dns_queries(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.resolver.queries()
    }

    /// Notified when a task finished stopping, so that its sandbox can be
    /// removed without waiting for the next interval.
    pub fn task_stopped(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.supervisor.stopped()
    }

    /// The node's kernel objects, read back (see [`crate::readback`]).
    pub async fn topology(&mut self, state: &NodeState) -> netctl_proto::NodeTopology {
        let mut topology = crate::readback::read(&self.host, &mut self.connections, state).await;
        for namespace in &mut topology.namespaces {
            if namespace.name == HOST {
                let fast = |route| self.fast_path.as_ref().is_some_and(|f| f.holds(route));
                namespace.published = self.routes.iter().map(|route| route.describe(fast(route))).collect();
            }
            if let Some(names) = self.resolver.names(&namespace.name) {
                namespace.resolver = format!("{}:53", crate::dns::RESOLVER_ADDRESS);
                namespace.names = names;
            }
        }
        topology
    }
}

/// Whether `action`, failed, keeps `task` from working: it is about the
/// task's sandbox, its gateway leg, or an overlay namespace of its networks,
/// there about the network itself (br0, vxlan0, neighbours, rules) or the
/// task's own veth end, not another task's: an overlay namespace is shared
/// by every task on its network.
fn concerns(task: &TaskSpec, action: &Action) -> bool {
    let touched = action.namespaces();
    let sandbox = names::sandbox_namespace(&task.id);
    let own_veth = names::overlay_veth_prefix(&task.id);
    let in_its_overlay =
        task.endpoints.iter().any(|e| touched.contains(&names::overlay_namespace(&e.network_id).as_str()))
            && action.link().is_none_or(|link| !names::is_overlay_veth(link) || link.starts_with(&own_veth));
    touched.contains(&sandbox.as_str())
        || in_its_overlay
        || (touched.contains(&HOST) && action.link() == Some(names::gateway_veth(&task.id).as_str()))
}

/// What a failed `action` takes from a task that runs without it, if the
/// task can run without it: its VIP and DNS rules, or the way to another
/// node's task (a neighbour or FDB entry). Every other failure keeps the
/// task from starting.
fn partial_problem(action: &Action) -> Option<&'static str> {
    match action {
        Action::WriteRules { .. } => Some("service VIP and DNS rules"),
        Action::ReplaceNeighbour { .. }
        | Action::DeleteNeighbour { .. }
        | Action::ReplaceFdb { .. }
        | Action::DeleteFdb { .. } => Some("the way to a task on another node"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_proto::EndpointAddress;

    fn task(id: &str, networks: &[&str]) -> TaskSpec {
        let endpoints = networks
            .iter()
            .map(|n| EndpointAddress { network_id: n.to_string(), ..Default::default() })
            .collect();
        TaskSpec { id: id.into(), endpoints, ..Default::default() }
    }

    fn delete(namespace: &str, name: &str) -> Action {
        Action::DeleteLink { namespace: namespace.into(), name: name.into() }
    }

    #[test]
    fn a_failure_in_a_shared_overlay_concerns_the_tasks_whose_end_or_network_it_is_about() {
        let (mine, other) = (task("aaaaaaaaaaaaaaaaaaaaaaaaa", &["net1"]), "bbbbbbbbbbbbbbbbbbbbbbbbb");
        let overlay = names::overlay_namespace("net1");
        let own_end = names::overlay_veth(&mine.id, 0);
        let others_end = names::overlay_veth(other, 0);
        assert!(!concerns(&mine, &delete(&overlay, &others_end)), "another task's veth end");
        assert!(concerns(&mine, &delete(&overlay, &own_end)), "its own veth end");
        let bridge = Action::CreateBridge {
            namespace: overlay.clone(),
            name: names::OVERLAY_BRIDGE.into(),
            mtu: 1450,
        };
        assert!(concerns(&mine, &bridge), "the network's bridge");
        let elsewhere = names::overlay_namespace("net2");
        assert!(!concerns(&mine, &delete(&elsewhere, names::VXLAN)), "a network it is not on");
        let own_pair = Action::CreateVeth {
            namespace: overlay,
            name: own_end,
            inner_namespace: names::sandbox_namespace(&mine.id),
            inner: names::sandbox_interface(0),
            mtu: 1450,
            inner_mac: None,
        };
        assert!(concerns(&mine, &own_pair));
        assert!(concerns(&mine, &delete(HOST, &names::gateway_veth(&mine.id))), "its gateway leg");
        assert!(!concerns(&mine, &delete(HOST, &names::gateway_veth(other))), "another's gateway leg");
    }

    #[test]
    fn a_task_runs_without_its_rules_or_a_way_to_one_remote_task_but_not_without_its_network() {
        let namespace = names::overlay_namespace("net1");
        let fdb = Action::ReplaceFdb {
            namespace: namespace.clone(),
            mac: [2, 0x42, 10, 0, 0, 5],
            node: [192, 168, 10, 7].into(),
        };
        assert_eq!(partial_problem(&fdb), Some("the way to a task on another node"));
        let bridge = Action::CreateBridge { namespace, name: names::OVERLAY_BRIDGE.into(), mtu: 1450 };
        assert_eq!(partial_problem(&bridge), None);
    }
}
