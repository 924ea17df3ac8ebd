//! Fleet benchmark: one real `netctl manager` (sled, loopback of a private
//! namespace) and N simulated nodes (`e2e::fleet`: real join, certificate,
//! heartbeats and Watch stream; tasks reported Running at once, no kernel
//! work) holding 10,000 tasks: 100 services of 100 replicas, each service on
//! its own overlay. For N = 10, 100 and 1,000 nodes it times, until every
//! node concerned holds the change: a `service create` of one replica per
//! node with a published port (until every node balances over all of
//! them; then the same with 10 and 100 replicas), a `service scale` of one service by one task, and a node going
//! Down (from its last heartbeat until the others dropped its tasks'
//! endpoints and hold the replacements). For each: delivery p50/p99/max, the Watch
//! bytes the manager sent (to concerned nodes and to the others) and the
//! manager's CPU time and RSS after it (and after the join); the
//! manager's CPU per second while nothing changes (after the setup); and the
//! manager's RSS and peak at the end. Then real labs of namespace
//! hosts: 20 nodes serving a 200-replica published service (time until
//! every node answers through the routing mesh), and one node running 200
//! tasks (its agent's RSS); `FLEET_LAB=0` skips them. JSON to
//! `bench/results/fleet.json` or the first argument; `FLEET_NODES=10,100`
//! picks the sizes.

use e2e::fleet::{Fleet, FleetTarget, Scenario};
use e2e::lab::Lab;
use e2e::netns::command_in;
use e2e::ControlPlane;
use netctl_proto::control_client::ControlClient;
use netctl_proto::desired::{DesiredItems, ItemKey};
use netctl_proto::desired_item::Item;
use netctl_proto::pki::Token;
use netctl_proto::{
    BearerToken, Endpoint, Network, NetworkCreateRequest, PortConfig, ServiceCreateRequest,
    ServiceRemoveRequest, ServiceScaleRequest,
};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The simulator's allocator, the daemons' own. A thousand simulated
/// nodes hold their states in one process on the manager's cores; with
/// glibc's malloc a third of the simulator's time went to growing and
/// faulting in arenas, time the manager then waited for.
#[global_allocator]
static SIMULATOR_ALLOCATOR: netctl_proto::memory::Allocator = netctl_proto::memory::Allocator;

/// The simulator's jemalloc options: it keeps the pages it freed (`-1`:
/// never hands them back), so that a create after a `service rm` reuses
/// them rather than faulting fresh ones in (see [`fleet_of`]).
#[unsafe(export_name = "_rjem_malloc_conf")]
static SIMULATOR_MALLOC_CONF: &[u8; 36] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

const SERVICES: usize = 100;
/// How many heartbeats a node misses before the manager counts it Down
/// (the manager's `liveness::MISSED_HEARTBEATS_BEFORE_DOWN`).
const MISSED_HEARTBEATS_BEFORE_DOWN: u32 = 3;
const REPLICAS: u32 = 100;
/// A node's heartbeat period, Swarm's default (Down after three missed:
/// 15 s). Shorter periods make simulated nodes of a busy 2-core machine
/// look Down.
const HEARTBEAT: Duration = Duration::from_secs(5);
const PUBLISHED_PORT: u32 = 30080;
/// The replicas of the creates timed besides one replica per node (those
/// smaller than the fleet).
const SMALLER_CREATES: [usize; 2] = [10, 100];
/// How long a change may take before it is reported as not converged.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long bringing up the 10,000 tasks may take (not a figure the goals
/// are about: every node's state is rebuilt from nothing).
const SETUP_TIMEOUT: Duration = Duration::from_secs(900);
/// How long the manager's cost is measured while nothing changes.
const IDLE: Duration = Duration::from_secs(10);
/// How long after convergence late messages are still counted.
const SETTLE: Duration = Duration::from_millis(500);

type Control =
    ControlClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>>;

async fn control(manager: &str, admin_token: &str) -> Control {
    let token = Token::parse(admin_token).expect("admin token");
    let (channel, _) = netctl_proto::connect_with_token(manager, &token).await.expect("connect");
    ControlClient::with_interceptor(channel, BearerToken::new(admin_token).expect("token"))
}

/// CPU time (user + system) and RSS of a process.
struct Usage {
    pid: i32,
}

impl Usage {
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks: u64 =
            fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
        Duration::from_millis(ticks * 1000 / 100)
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// Runs one timed change: `change` starts it, `check` says when a node
/// holds it. Reports delivery times, bytes to concerned nodes and to the
/// others, and the CPU time of the manager and of the simulated nodes
/// (this process, on the same cores).
async fn timed(
    name: &str,
    fleet: &Fleet,
    timeout: Duration,
    usage: &Usage,
    change: impl std::future::Future<Output = ()>,
    check: impl Fn(&DesiredItems) -> Option<bool> + Send + Sync + 'static,
) -> serde_json::Value {
    eprintln!("{} nodes: {name}", fleet.nodes.len());
    let before = fleet.received();
    let simulator = Usage { pid: std::process::id() as i32 };
    let (cpu, simulator_cpu) = (usage.cpu(), simulator.cpu());
    let scenario = Scenario::new(fleet.nodes.len(), Box::new(check));
    let started = Instant::now();
    change.await;
    let outcome = fleet.run(scenario.clone(), timeout).await;
    let converged_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let cpu_ms = (usage.cpu() - cpu).as_millis() as u64;
    let simulator_cpu_ms = (simulator.cpu() - simulator_cpu).as_millis() as u64;
    let after = fleet.received();
    let concerned = scenario.concerned();
    let (mut to_concerned, mut to_others, mut messages, mut others_reached) = (0u64, 0u64, 0u64, 0usize);
    for (index, (after, before)) in after.iter().zip(&before).enumerate() {
        let bytes = after.0 - before.0;
        messages += after.1 - before.1;
        if concerned[index] {
            to_concerned += bytes;
        } else {
            to_others += bytes;
            others_reached += usize::from(bytes > 0);
        }
    }
    let concerned_nodes = concerned.iter().filter(|c| **c).count();
    let mut report = serde_json::json!({
        "concerned_nodes": concerned_nodes,
        "bytes_per_concerned_node": to_concerned / concerned_nodes.max(1) as u64,
        "bytes_to_concerned_nodes": to_concerned,
        "bytes_to_other_nodes": to_others,
        "other_nodes_sent_anything": others_reached,
        "messages": messages,
        "manager_cpu_ms": cpu_ms,
        "simulator_cpu_ms": simulator_cpu_ms,
        "converged_seconds": converged_s,
        "manager_rss_mib_after": usage.rss_mib().0,
    });
    match outcome {
        Ok(mut times) => {
            times.sort();
            report["delivery_ms_p50"] = percentile_ms(&times, 0.50).into();
            report["delivery_ms_p99"] = percentile_ms(&times, 0.99).into();
            report["delivery_ms_max"] = percentile_ms(&times, 1.0).into();
        }
        Err(missing) => report["not_converged_nodes"] = missing.into(),
    }
    report
}

/// The task endpoints the state holds on network `id` (none if it does
/// not hold the network).
fn endpoints_on<'a>(state: &'a DesiredItems, id: &str) -> impl Iterator<Item = &'a Endpoint> + 'a {
    let vni = match state.get(&ItemKey::Network(id.to_string())) {
        Some(Item::Network(network)) => Some(network.vni),
        _ => None,
    };
    let first = ItemKey::Endpoint(vni.unwrap_or_default(), 0);
    let on_it = move |key: &ItemKey| matches!(key, ItemKey::Endpoint(v, _) if Some(*v) == vni);
    state.range(&first, on_it).filter_map(|item| match item {
        Item::Endpoint(endpoint) => Some(&**endpoint),
        _ => None,
    })
}

/// How many running tasks of `service` the state holds on network `id`
/// (a task is an endpoint once it runs).
fn running_on(state: &DesiredItems, id: &str, service: &str) -> usize {
    endpoints_on(state, id).filter(|e| e.service == service).count()
}

/// Whether every service name the state holds has its expected number of
/// running tasks (`expected` by service name; others: [`REPLICAS`]).
fn names_complete(state: &DesiredItems, expected: &HashMap<String, usize>) -> bool {
    let mut services =
        state.range(&ItemKey::Names(String::new(), String::new()), |key| matches!(key, ItemKey::Names(..)));
    services.all(|names| {
        let Item::Names(names) = names else { return true };
        running_on(state, &names.network_id, &names.service)
            == expected.get(names.service.as_str()).copied().unwrap_or(REPLICAS as usize)
    })
}

/// Whether the state holds names for `service`.
fn holds_names_of(state: &DesiredItems, service: &str) -> bool {
    state
        .range(&ItemKey::Names(String::new(), String::new()), |key| matches!(key, ItemKey::Names(..)))
        .any(|item| matches!(item, Item::Names(names) if names.service == service))
}

/// The ingress network the state holds.
fn ingress_of(state: &DesiredItems) -> Option<&Network> {
    let mut networks =
        state.range(&ItemKey::Network(String::new()), |key| matches!(key, ItemKey::Network(_)));
    networks.find_map(|item| match item {
        Item::Network(network) if network.ingress => Some(&**network),
        _ => None,
    })
}

/// How many backends the published TCP port `port` has (running tasks of
/// its service on ingress); `None` if the node does not hold the port.
fn port_backends(state: &DesiredItems, port: u32) -> Option<usize> {
    let Some(Item::Port(port)) = state.get(&ItemKey::Port("tcp".into(), port)) else { return None };
    Some(running_on(state, &ingress_of(state)?.id, &port.service))
}

/// Whether the published TCP port `port` has `replicas` backends, where
/// every one of `nodes` nodes has an ingress_sbox on ingress. A node checks
/// this on each state it is sent, and the endpoints of a thousand nodes'
/// states do not fit in a cache: the endpoint keys are counted first (the
/// items not read), and a state short of the ingress_sboxes and `replicas`
/// more endpoints is ruled out on that count.
fn port_balances_over(state: &DesiredItems, port: u32, replicas: usize, nodes: usize) -> bool {
    let Some(vni) = ingress_of(state).map(|ingress| ingress.vni) else { return false };
    let on_ingress = |key: &ItemKey| matches!(key, ItemKey::Endpoint(v, _) if *v == vni);
    let endpoints = state.range_keys(&ItemKey::Endpoint(vni, 0), on_ingress).count();
    endpoints >= nodes + replicas && port_backends(state, port) == Some(replicas)
}

/// What the manager spends while nothing changes: its CPU per second
/// over [`IDLE`] (heartbeats, and any periodic work it does), and the
/// Watch messages it sent meanwhile.
async fn idle_cost(usage: &Usage, fleet: &Fleet) -> serde_json::Value {
    eprintln!("{} nodes: idle", fleet.nodes.len());
    tokio::time::sleep(SETTLE).await;
    let (cpu, before) = (usage.cpu(), fleet.received());
    tokio::time::sleep(IDLE).await;
    let cpu_ms_per_s = (usage.cpu() - cpu).as_secs_f64() * 1000.0 / IDLE.as_secs_f64();
    let messages: u64 = fleet.received().iter().zip(&before).map(|(after, before)| after.1 - before.1).sum();
    serde_json::json!({ "seconds": IDLE.as_secs(), "manager_cpu_ms_per_s": cpu_ms_per_s, "messages": messages })
}

/// 100 networks and 100 services of 100 replicas; waits until every node
/// holds them all running.
async fn background(control: &mut Control, fleet: &Fleet, usage: &Usage) -> serde_json::Value {
    timed(
        "setup",
        fleet,
        SETUP_TIMEOUT,
        usage,
        async {
            for i in 0..SERVICES {
                let network = NetworkCreateRequest { name: format!("bg{i}"), ..Default::default() };
                control.create_network(network).await.expect("create network");
                let service = ServiceCreateRequest {
                    name: format!("bg{i}"),
                    replicas: REPLICAS,
                    networks: vec![format!("bg{i}")],
                    command: vec!["sleep".into(), "infinity".into()],
                    ..Default::default()
                };
                control.create_service(service).await.expect("create service");
            }
        },
        |state| {
            let runs_tasks = state
                .range(&ItemKey::Task(String::new()), |key| matches!(key, ItemKey::Task(_)))
                .next()
                .is_some();
            Some(runs_tasks && names_complete(state, &HashMap::new()))
        },
    )
    .await
}

/// Times a `service create --replicas replicas --network probe --publish
/// PUBLISHED_PORT` (until every node balances over all of them), then its
/// `service rm` (until no node holds the port).
async fn create_and_remove(
    control: &Control,
    fleet: &Fleet,
    usage: &Usage,
    replicas: usize,
) -> (serde_json::Value, serde_json::Value) {
    let nodes = fleet.nodes.len();
    let create = timed(
        &format!("service create --replicas {replicas}"),
        fleet,
        SCENARIO_TIMEOUT,
        usage,
        async {
            let service = ServiceCreateRequest {
                name: "probe".into(),
                replicas: replicas as u32,
                networks: vec!["probe".into()],
                command: vec!["sleep".into(), "infinity".into()],
                ports: vec![PortConfig {
                    protocol: "tcp".into(),
                    published_port: PUBLISHED_PORT,
                    target_port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            };
            control.clone().create_service(service).await.expect("create probe");
        },
        move |state| Some(port_balances_over(state, PUBLISHED_PORT, replicas, nodes)),
    )
    .await;
    let remove = timed(
        "service rm",
        fleet,
        SCENARIO_TIMEOUT,
        usage,
        async {
            let request = ServiceRemoveRequest { reference: "probe".into() };
            control.clone().remove_service(request).await.expect("remove probe");
        },
        |state| Some(state.get(&ItemKey::Port("tcp".into(), PUBLISHED_PORT)).is_none()),
    )
    .await;
    (create, remove)
}

async fn fleet_of(nodes: usize, target: FleetTarget, admin_token: String, pid: i32) -> serde_json::Value {
    let usage = Usage { pid };
    let joined = Instant::now();
    let fleet = Fleet::join(&target, nodes, 32).await;
    let join_seconds = joined.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss_after_join = usage.rss_mib().0;
    let mut control = control(&target.manager, &admin_token).await;
    let setup = background(&mut control, &fleet, &usage).await;
    if setup.get("not_converged_nodes").is_some() {
        return serde_json::json!({ "nodes": nodes, "join_seconds": join_seconds, "setup": setup });
    }
    let idle = idle_cost(&usage, &fleet).await;
    // One address per node's replica: a /20 holds 1,000.
    let network =
        NetworkCreateRequest { name: "probe".into(), subnet: "10.128.0.0/20".into(), ..Default::default() };
    control.create_network(network).await.expect("create network");
    // The first create grows the simulator's heap by every node's copy of
    // the new endpoints, and a third of its CPU went to faulting those
    // pages in on this VM, on the manager's cores: a thousand machines do
    // not fault in one heap. Timed, and again once the heap holds the
    // pages its rm freed (both reported).
    let (first_create, first_remove) = create_and_remove(&control, &fleet, &usage, nodes).await;
    let (create, remove) = create_and_remove(&control, &fleet, &usage, nodes).await;
    // Smaller creates: the cost of a create grows with its replicas.
    let mut smaller_creates = Vec::new();
    for replicas in SMALLER_CREATES.into_iter().filter(|r| *r < nodes) {
        let (create, remove) = create_and_remove(&control, &fleet, &usage, replicas).await;
        smaller_creates.push(serde_json::json!({ "replicas": replicas, "create": create, "remove": remove }));
    }
    let scaled = HashMap::from([("bg0".to_string(), REPLICAS as usize + 1)]);
    let scale = timed(
        "service scale",
        &fleet,
        SCENARIO_TIMEOUT,
        &usage,
        async {
            let request = ServiceScaleRequest { reference: "bg0".into(), replicas: REPLICAS + 1 };
            control.clone().scale_service(request).await.expect("scale");
        },
        {
            let scaled = scaled.clone();
            move |state| holds_names_of(state, "bg0").then(|| names_complete(state, &scaled))
        },
    )
    .await;
    let victim = nodes / 2;
    let dead_id = fleet.nodes[victim].id.clone();
    let dead_address: u32 = fleet.nodes[victim].address.parse::<std::net::Ipv4Addr>().expect("IPv4").into();
    let last_heartbeat = *fleet.nodes[victim].last_heartbeat.lock().unwrap();
    let killed_at = Instant::now();
    // The nodes concerned hold a network one of its tasks is on.
    let its_networks: HashSet<String> = fleet.nodes[victim]
        .view
        .lock()
        .unwrap()
        .held
        .items()
        .range(&ItemKey::Network(String::new()), |key| matches!(key, ItemKey::Network(_)))
        .filter_map(|item| match item {
            Item::Network(network) if !network.ingress => Some(network.id.clone()),
            _ => None,
        })
        .collect();
    let mut node_down = timed(
        "node down",
        &fleet,
        SCENARIO_TIMEOUT,
        &usage,
        async { fleet.nodes[victim].kill() },
        move |state| {
            if matches!(state.get(&ItemKey::Header), Some(Item::Header(h)) if h.node_id == dead_id)
                || !its_networks.iter().any(|id| state.get(&ItemKey::Network(id.clone())).is_some())
            {
                return None;
            }
            // Its tasks' endpoints go (its ingress_sbox stays in the mesh
            // while it is a member).
            let gone =
                !its_networks.iter().any(|id| endpoints_on(state, id).any(|e| e.node_addr == dead_address));
            Some(gone && names_complete(state, &scaled))
        },
    )
    .await;
    // Delivery also counted from when the manager could judge the node
    // Down: three heartbeat periods after the last one it answered.
    let down_after = HEARTBEAT * MISSED_HEARTBEATS_BEFORE_DOWN;
    let since_last = last_heartbeat.map_or(Duration::ZERO, |at| killed_at.saturating_duration_since(at));
    let down_ms = down_after.saturating_sub(since_last).as_secs_f64() * 1000.0;
    node_down["down_after_ms"] = down_ms.into();
    for figure in ["p50", "p99", "max"] {
        if let Some(ms) = node_down[format!("delivery_ms_{figure}")].as_f64() {
            node_down[format!("delivery_after_down_ms_{figure}")] = (ms - down_ms).into();
        }
    }
    let (rss_mib, peak_rss_mib) = usage.rss_mib();
    serde_json::json!({
        "nodes": nodes,
        "tasks": SERVICES * REPLICAS as usize,
        "join_seconds": join_seconds,
        "manager_rss_mib_after_join": rss_after_join,
        "setup": setup,
        "idle": idle,
        "first_service_create": first_create,
        "first_service_remove": first_remove,
        "service_create": create,
        "service_remove": remove,
        "smaller_service_creates": smaller_creates,
        "service_scale_by_one": scale,
        "node_down": node_down,
        "manager_rss_mib": rss_mib,
        "manager_peak_rss_mib": peak_rss_mib,
    })
}

/// A real lab of `nodes` namespace hosts (as `netctl lab up` builds):
/// how long it takes to come up, and from `service create --replicas
/// REPLICAS --publish 8080:80 hostname-http` until every node answers on
/// its published port through the routing mesh; how many replicas answered
/// 10 requests to each node; the agents' and the manager's RSS.
fn lab_of(nodes: usize, replicas: usize) -> serde_json::Value {
    let started = Instant::now();
    let lab = Lab::start(nodes);
    let up_seconds = started.elapsed().as_secs_f64();
    let server = std::env::current_exe().expect("own path").with_file_name("hostname-http");
    let server = server.to_str().expect("UTF-8 path");
    let started = Instant::now();
    let count = replicas.to_string();
    lab.ok(&["service", "create", "--replicas", &count, "--name", "web", "--publish", "8080:80", server]);
    let running = e2e::wait_until(Duration::from_secs(300), || lab.running_tasks("web").len() == replicas);
    assert!(running, "web did not reach {replicas} running tasks");
    let running_seconds = started.elapsed().as_secs_f64();
    let get = |host: usize| {
        let url = format!("http://{}:8080/", lab.hosts()[host].address);
        let output = command_in(&lab.underlay().path(), "curl").args(["-sf", "-m", "2", &url]).output();
        output.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    for host in 0..nodes {
        let answered = e2e::wait_until(Duration::from_secs(120), || get(host).is_some());
        assert!(answered, "node{host} does not answer on its published port");
    }
    let reachable_seconds = started.elapsed().as_secs_f64();
    let answers: std::collections::BTreeSet<String> =
        (0..nodes).flat_map(|host| (0..10).filter_map(move |_| get(host))).collect();
    let rss = |pid: i32| Usage { pid }.rss_mib().0;
    let agents: Vec<f64> = (0..nodes).map(|i| rss(lab.agent_pid(i))).collect();
    serde_json::json!({
        "nodes": nodes,
        "replicas": replicas,
        "lab_up_seconds": up_seconds,
        "create_to_all_running_seconds": running_seconds,
        "create_to_every_node_answering_seconds": reachable_seconds,
        "distinct_replicas_answering_10_requests_per_node": answers.len(),
        "agent_rss_mib_max": agents.iter().copied().fold(0.0, f64::max),
        "manager_rss_mib": rss(lab.manager_pid()),
    })
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "bench/results/fleet.json".into());
    let sizes: Vec<usize> = std::env::var("FLEET_NODES")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("FLEET_NODES: comma-separated node counts"))
        .collect();
    let heartbeat = format!("{}s", HEARTBEAT.as_secs());
    let mut runs = Vec::new();
    for nodes in sizes {
        let cluster = ControlPlane::start(&["--dispatcher-heartbeat", &heartbeat]);
        let target = FleetTarget {
            manager: cluster.manager_url(),
            join_token: cluster.join_token(),
            heartbeat: HEARTBEAT,
        };
        let (admin_token, pid) = (cluster.admin_token(), cluster.manager_pid());
        let run = cluster.run_inside(|| {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(fleet_of(nodes, target, admin_token, pid))
        });
        eprintln!("{}", serde_json::to_string(&run).unwrap_or_default());
        runs.push(run);
    }
    let labs = if std::env::var("FLEET_LAB").as_deref() == Ok("0") {
        Vec::new()
    } else {
        vec![lab_of(20, 200), lab_of(1, 200)]
    };
    e2e::write_report(
        &out,
        serde_json::json!({
            "benchmark": "fleet",
            "labs": labs,
            "heartbeat_seconds": HEARTBEAT.as_secs(),
            "services": SERVICES,
            "replicas_per_service": REPLICAS,
            "runs": runs,
        }),
    );
}
