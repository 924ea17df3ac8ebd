//! Control-plane benchmark: network create throughput against a real
//! `netctl manager` on loopback, sequential and with 16 concurrent clients.
//! Each create is flushed to disk before it is answered, so this measures the
//! durable path. Writes JSON to `bench/results/control_plane.json` (or the
//! path given as the first argument).

use e2e::ControlPlane;
use netctl_proto::control_client::ControlClient;
use netctl_proto::{BearerToken, NetworkCreateRequest};
use std::time::{Duration, Instant};

const SEQUENTIAL_CREATES: usize = 300;
const CONCURRENT_CLIENTS: usize = 16;
const CREATES_PER_CLIENT: usize = 40;

type Control =
    ControlClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>>;

/// Where the benchmark's clients connect.
#[derive(Clone)]
struct Target {
    manager: String,
    token: String,
}

async fn client(target: &Target) -> Control {
    let channel = netctl_proto::connect(&target.manager).await.expect("connect");
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

/// Throughput and latency percentiles of one run.
fn summary(latencies: &mut [Duration], wall: Duration) -> serde_json::Value {
    latencies.sort();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    serde_json::json!({
        "creates": latencies.len(),
        "wall_seconds": wall.as_secs_f64(),
        "creates_per_second": latencies.len() as f64 / wall.as_secs_f64(),
        "latency_ms_p50": percentile(0.50),
        "latency_ms_p99": percentile(0.99),
    })
}

/// Runs `benchmark` against a fresh cluster, from inside its namespace.
fn on_fresh_cluster<F, Fut>(benchmark: F) -> serde_json::Value
where
    F: FnOnce(Target) -> Fut + Send,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    let cluster = ControlPlane::start(&[]);
    let target = Target { manager: cluster.manager_url(), token: cluster.admin_token() };
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

fn main() {
    let output = std::env::args().nth(1).unwrap_or_else(|| "bench/results/control_plane.json".into());
    let sequential = on_fresh_cluster(sequential);
    let concurrent = on_fresh_cluster(concurrent);
    let report = serde_json::json!({
        "benchmark": "network create (gRPC, durable: flushed before the answer)",
        "sequential": sequential,
        "concurrent_16_clients": concurrent,
    });
    e2e::write_report(&output, report);
}
