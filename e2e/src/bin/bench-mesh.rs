//! Routing-mesh benchmarks, written to `bench/results/routing_mesh.json` (or
//! the path given as the first argument):
//! - requests/s and p99 latency (wrk) through a published port from outside
//!   the cluster, against the same replica reached straight on its
//!   docker_gwbridge address from its node;
//! - the time to rewrite the balancing rules of 100 published ports × 10
//!   replicas (ingress_sbox's set, one iptables-restore) and the host's set.

use e2e::lab::Lab;
use e2e::netns::{command_in, TestNamespace};
use netctl_agent::mesh;
use netctl_proto::PublishedPort;
use serde_json::{json, Value};
use std::time::Instant;

/// Milliseconds from a wrk duration such as `812.00us`, `3.10ms` or `1.20s`.
fn millis(text: &str) -> f64 {
    let number = |suffix: &str| text.strip_suffix(suffix).and_then(|n| n.parse::<f64>().ok());
    number("us")
        .map(|n| n / 1000.0)
        .or_else(|| number("ms"))
        .or_else(|| number("s").map(|n| n * 1000.0))
        .unwrap_or(0.0)
}

/// Requests/s and p99 latency from wrk's `--latency` output.
fn wrk_figures(output: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    let requests = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let p99 =
        text.lines().find_map(|l| l.trim().strip_prefix("99%")).map(|n| millis(n.trim())).unwrap_or(0.0);
    json!({ "requests_per_second": requests, "latency_ms_p99": p99 })
}

fn wrk(command: &mut std::process::Command, url: &str) -> Value {
    let output = command
        .args(["-t", "2", "-c", "16", "-d", "5s", "--latency", url])
        .output()
        .expect("wrk (apt-get install wrk)");
    wrk_figures(&output)
}

fn published_vs_direct() -> Value {
    let lab = Lab::start(2);
    let server = std::env::current_exe().expect("own path").with_file_name("hostname-http");
    let server = server.to_str().expect("UTF-8 path");
    lab.ok(&["service", "create", "--replicas", "1", "--name", "web", "--publish", "8080:80", server]);
    let task = lab.wait_running("web", 1).remove(0);
    let host = lab.host_of(&task);
    let gateway_leg =
        String::from_utf8_lossy(&lab.in_task(&task, "ip", &["-o", "-4", "addr", "show", "eth1"]).stdout)
            .split_whitespace()
            .nth(3)
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_default()
            .to_string();
    let published_url = format!("http://{}:8080/", lab.hosts()[host].address);
    let answered = e2e::wait_until(std::time::Duration::from_secs(20), || {
        command_in(&lab.underlay().path(), "curl")
            .args(["-sf", "-o", "/dev/null", "-m", "2", &published_url])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(answered, "the published port does not answer");
    let through_mesh = wrk(&mut command_in(&lab.underlay().path(), "wrk"), &published_url);
    let direct = wrk(&mut lab.host_command(host, "wrk"), &format!("http://{gateway_leg}:80/"));
    let ratio = through_mesh["requests_per_second"].as_f64().unwrap_or(0.0)
        / direct["requests_per_second"].as_f64().unwrap_or(1.0).max(1.0);
    json!({ "through_published_port": through_mesh, "straight_to_replica": direct, "mesh_over_direct_rps": ratio })
}

fn rule_rewrite() -> Value {
    let namespace = TestNamespace::new(&format!("{}-rules", e2e::netns::unique_prefix()));
    let path = namespace.path();
    let target = Some((namespace.name(), path.as_path()));
    let ports: Vec<PublishedPort> = (0..100)
        .map(|p| PublishedPort {
            protocol: "tcp".into(),
            published_port: 20000 + p,
            target_port: 80,
            backends: (0..10).map(|r| format!("10.255.{p}.{}", r + 3)).collect(),
        })
        .collect();
    let routes = mesh::port_routes(&ports, &Default::default());
    let sandbox_rules = mesh::ingress_sandbox_rules(&routes, "10.255.0.2", "10.255.0.0/16");
    let host_rules = mesh::host_rules(&routes, &[]);
    let mut sandbox_ms = Vec::new();
    let mut host_ms = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for _ in 0..5 {
        let started = Instant::now();
        runtime.block_on(netlib::iptables::restore(target, &sandbox_rules)).expect("ingress_sbox rules");
        sandbox_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        runtime.block_on(netlib::iptables::restore(target, &host_rules)).expect("host rules");
        host_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    json!({
        "ports": 100, "replicas_per_port": 10,
        "ingress_sbox_rules": sandbox_rules.lines().filter(|l| l.starts_with("-A")).count(),
        "ingress_sbox_restore_ms_median": median(sandbox_ms),
        "host_restore_ms_median": median(host_ms),
    })
}

fn main() {
    let output = std::env::args().nth(1).unwrap_or_else(|| "bench/results/routing_mesh.json".into());
    let rules = rule_rewrite();
    let traffic = published_vs_direct();
    e2e::write_report(&output, json!({ "http": traffic, "rule_rewrite": rules }));
}
