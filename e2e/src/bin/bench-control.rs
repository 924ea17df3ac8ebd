//! Control-plane benchmark against a real `netctl manager` on loopback:
//! network create throughput, sequential and with 16 concurrent clients,
//! on sled and on etcd (Debian's etcd-server, one member on the same
//! loopback; each create is durable before it is answered on both); Watch
//! fan-out: how long after a `service create` each of 50 watching nodes
//! receives its task; and failover: in a lab of 3 managers on a 3-member
//! etcd, how long after the leader manager is killed (-9) another says it
//! leads. Writes JSON to `bench/results/control_plane.json` (or the path
//! given as the first argument).

use e2e::fleet::{Fleet, FleetTarget, Scenario};
use e2e::ControlPlane;
use netctl_proto::control_client::ControlClient;
use netctl_proto::desired_item::Item;
use netctl_proto::pki::Token;
use netctl_proto::{BearerToken, NetworkCreateRequest, ServiceCreateRequest, ServiceRemoveRequest};
use std::time::{Duration, Instant};

const SEQUENTIAL_CREATES: usize = 300;
const CONCURRENT_CLIENTS: usize = 16;
const CREATES_PER_CLIENT: usize = 40;
const FAN_OUT_NODES: usize = 50;
const FAN_OUT_ROUNDS: usize = 10;
const FAILOVER_ROUNDS: usize = 5;

type Control =
    ControlClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>>;

/// Where the benchmark's clients connect.
#[derive(Clone)]
struct Target {
    manager: String,
    token: String,
    join_token: String,
}

async fn client(target: &Target) -> Control {
    let token = Token::parse(&target.token).expect("admin token");
    let (channel, _) = netctl_proto::connect_with_token(&target.manager, &token).await.expect("connect");
    ControlClient::with_interceptor(channel, BearerToken::new(&target.token).expect("token"))
}

/// Creates `count` networks named `<prefix>-<i>`, returning each latency.
async fn create_many(mut control: Control, prefix: String, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let request = NetworkCreateRequest { name: format!("{prefix}-{i}"), ..Default::default() };
        let started = Instant::now();
        control.create_network(request).await.expect("create network");
        latencies.push(started.elapsed());
    }
    latencies
}

/// The `p` quantile of sorted `latencies`, in milliseconds.
fn percentile_ms(latencies: &[Duration], p: f64) -> f64 {
    let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
    latencies[index].as_secs_f64() * 1000.0
}

/// Throughput and latency percentiles of one run.
fn summary(latencies: &mut [Duration], wall: Duration) -> serde_json::Value {
    latencies.sort();
    serde_json::json!({
        "creates": latencies.len(),
        "wall_seconds": wall.as_secs_f64(),
        "creates_per_second": latencies.len() as f64 / wall.as_secs_f64(),
        "latency_ms_p50": percentile_ms(latencies, 0.50),
        "latency_ms_p99": percentile_ms(latencies, 0.99),
    })
}

/// Runs `benchmark` against a fresh cluster (`ControlPlane::start` or
/// `ControlPlane::start_on_etcd`), from inside its namespace.
fn on_fresh_cluster<F, Fut>(start: fn(&[&str]) -> ControlPlane, benchmark: F) -> serde_json::Value
where
    F: FnOnce(Target) -> Fut + Send,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    let cluster = start(&[]);
    let target = Target {
        manager: cluster.manager_url(),
        token: cluster.admin_token(),
        join_token: cluster.join_token(),
    };
    cluster.run_inside(|| {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(benchmark(target))
    })
}

async fn sequential(target: Target) -> serde_json::Value {
    let started = Instant::now();
    let mut latencies = create_many(client(&target).await, "seq".into(), SEQUENTIAL_CREATES).await;
    summary(&mut latencies, started.elapsed())
}

async fn concurrent(target: Target) -> serde_json::Value {
    let mut clients = Vec::new();
    for _ in 0..CONCURRENT_CLIENTS {
        clients.push(client(&target).await);
    }
    let started = Instant::now();
    let runs: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, control)| tokio::spawn(create_many(control, format!("c{c}"), CREATES_PER_CLIENT)))
        .collect();
    let mut latencies = Vec::new();
    for run in runs {
        latencies.extend(run.await.expect("client task"));
    }
    summary(&mut latencies, started.elapsed())
}

/// 50 simulated nodes watch their desired state; each round creates a
/// service with one task per node and times, from the create call, when
/// each node has received its task.
async fn fan_out(target: Target) -> serde_json::Value {
    let fleet_target = FleetTarget {
        manager: target.manager.clone(),
        join_token: target.join_token.clone(),
        heartbeat: Duration::from_millis(200),
    };
    let fleet = Fleet::join(&fleet_target, FAN_OUT_NODES, 16).await;
    let mut control = client(&target).await;
    let network = NetworkCreateRequest { name: "fan".into(), ..Default::default() };
    control.create_network(network).await.expect("create network");
    let (mut latencies, mut last_node) = (Vec::new(), Vec::new());
    for round in 0..FAN_OUT_ROUNDS {
        let prefix = format!("fan{round}.");
        let scenario = Scenario::new(
            FAN_OUT_NODES,
            Box::new(move |state: &netctl_proto::desired::DesiredItems| {
                Some(state.iter().any(|item| matches!(item, Item::Task(t) if t.name.starts_with(&prefix))))
            }),
        );
        let request = ServiceCreateRequest {
            name: format!("fan{round}"),
            replicas: FAN_OUT_NODES as u32,
            networks: vec!["fan".into()],
            command: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        };
        let mut creating = control.clone();
        let create =
            tokio::spawn(async move { creating.create_service(request).await.expect("create service") });
        let round_latencies = fleet.run(scenario, Duration::from_secs(30)).await.expect("fan-out");
        let service = create.await.expect("create").into_inner().service.expect("service");
        last_node.push(*round_latencies.iter().max().expect("arrivals"));
        latencies.extend(round_latencies);
        control.remove_service(ServiceRemoveRequest { reference: service.id }).await.expect("remove service");
    }
    latencies.sort();
    last_node.sort();
    serde_json::json!({
        "nodes": FAN_OUT_NODES,
        "rounds": FAN_OUT_ROUNDS,
        "delivery_ms_p50": percentile_ms(&latencies, 0.50),
        "delivery_ms_p99": percentile_ms(&latencies, 0.99),
        "last_node_ms_p50": percentile_ms(&last_node, 0.50),
        "last_node_ms_max": percentile_ms(&last_node, 1.0),
    })
}

/// A lab of 3 hosts, each with an etcd member and a manager, removed on drop.
struct FailoverLab {
    root: tempfile::TempDir,
    name: String,
}

impl FailoverLab {
    fn up() -> Self {
        let root = tempfile::Builder::new().prefix("netctl-bench-lab-").tempdir().expect("tempdir");
        let lab = Self { root, name: e2e::netns::unique_prefix() };
        let up = lab.netctl(&["lab", "up", "--nodes", "3", "--managers", "3", "--name", &lab.name]);
        assert!(up.status.success(), "lab up: {}", String::from_utf8_lossy(&up.stderr));
        lab
    }

    fn netctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(e2e::netctl_bin())
            .args(args)
            .env("NETCTL_LAB_ROOT", self.root.path())
            .output()
            .expect("run netctl")
    }

    /// The host of the manager host `asked` says leads, if any.
    fn leader(&self, asked: usize) -> Option<usize> {
        let node = format!("node{asked}");
        let info =
            self.netctl(&["lab", "exec", "--name", &self.name, &node, "--", "netctl", "cluster", "info"]);
        let managers = e2e::managers_in(&String::from_utf8_lossy(&info.stdout));
        let (address, _) = managers.into_iter().find(|(_, status)| status == "Leader")?;
        address.strip_prefix("192.168.10.")?.split(':').next()?.parse::<usize>().ok()?.checked_sub(6)
    }

    fn manager_pid(&self, host: usize) -> i32 {
        let file = self.root.path().join(&self.name).join(format!("node{host}")).join("manager.pid");
        std::fs::read_to_string(&file).expect("manager pid file").trim().parse().expect("pid")
    }

    /// Starts what died again (`lab up` on a lab of the same shape).
    fn restart_dead(&self) {
        let up = self.netctl(&["lab", "up", "--nodes", "3", "--managers", "3", "--name", &self.name]);
        assert!(up.status.success(), "lab up again: {}", String::from_utf8_lossy(&up.stderr));
    }
}

impl Drop for FailoverLab {
    fn drop(&mut self) {
        let _ = self.netctl(&["lab", "down", "--name", &self.name]);
    }
}

/// Each round: the leader manager killed -9, the time until another
/// manager's `cluster info` (polled every 20 ms) names a new leader; then
/// the killed manager is started again (`lab up`).
fn failover() -> serde_json::Value {
    let lab = FailoverLab::up();
    let mut times = Vec::new();
    for _ in 0..FAILOVER_ROUNDS {
        let mut leader = None;
        assert!(e2e::wait_until(Duration::from_secs(30), || {
            leader = lab.leader(0);
            leader.is_some()
        }));
        let leader = leader.expect("a leader");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(lab.manager_pid(leader)),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the leader");
        let killed = Instant::now();
        let asked = (leader + 1) % 3;
        loop {
            if lab.leader(asked).is_some_and(|l| l != leader) {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "no new leader within 30 s of killing node{leader}'s manager: see {}",
                lab.root.path().join(&lab.name).display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(killed.elapsed());
        lab.restart_dead();
        std::thread::sleep(Duration::from_secs(2));
    }
    times.sort();
    serde_json::json!({
        "managers": 3,
        "etcd_members": 3,
        "lease_ttl_seconds": 3,
        "rounds": FAILOVER_ROUNDS,
        "new_leader_ms_p50": percentile_ms(&times, 0.50),
        "new_leader_ms_max": percentile_ms(&times, 1.0),
    })
}

fn main() {
    let output = std::env::args().nth(1).unwrap_or_else(|| "bench/results/control_plane.json".into());
    let sled = ControlPlane::start;
    let etcd = ControlPlane::start_on_etcd;
    let report = serde_json::json!({
        "benchmark": "network create (gRPC, durable before the answer) on sled and on etcd; Watch fan-out; failover",
        "sequential": on_fresh_cluster(sled, sequential),
        "concurrent_16_clients": on_fresh_cluster(sled, concurrent),
        "etcd_sequential": on_fresh_cluster(etcd, sequential),
        "etcd_concurrent_16_clients": on_fresh_cluster(etcd, concurrent),
        "watch_fan_out_50_nodes": on_fresh_cluster(sled, fan_out),
        "failover": failover(),
    });
    e2e::write_report(&output, report);
}
