//! Data-plane benchmarks, written to `bench/results/data_plane.json` (or the
//! path given as the first argument):
//! - sandbox setup with 1, 10 and 100 tasks on a node, measured inside the
//!   agent's reconcile pass in a throwaway namespace: the kernel work (the
//!   plan applied) per new sandbox, split into netlink (links, addresses,
//!   routes) and its VIP rule set (one `iptables-restore`), the whole first
//!   pass (task starts included), a steady pass and the actions it plans
//!   (0: converged);
//! - the time from `service create --replicas 10` to all tasks running and
//!   answering a ping across the overlay, on a two-node lab;
//! - iperf3 TCP throughput task-to-task over the overlay divided by
//!   node-to-node throughput over the underlay;
//! - the longest gap between two heartbeats of an agent while it builds 100
//!   sandboxes and writes the rules of 10 published ports x 100 replicas
//!   (goal: under one heartbeat interval, 500 ms in the lab).

use e2e::lab::Lab;
use e2e::netns::{command_in, TestNamespace};
use e2e::wait_until;
use netctl_proto::{EndpointAddress, Network, NetworkAttachment, NodeState, ServiceVip, TaskSpec};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A node state with `count` tasks of one service on one /16 overlay; the
/// service's VIP balances over all of them.
fn node_state(count: usize) -> NodeState {
    let network = Network {
        id: "benchnet0123456789abcdefg".into(),
        name: "benchnet".into(),
        subnet: "10.200.0.0/16".into(),
        gateway: "10.200.0.1".into(),
        vni: 4097,
        ..Default::default()
    };
    let tasks = (0..count)
        .map(|i| {
            let address = std::net::Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 3) as u8);
            TaskSpec {
                id: format!("{i:09}benchtaskxxxxxxx"),
                name: format!("bench.{i}"),
                command: vec!["sleep".into(), "600".into()],
                // Stopped at once between rounds (sleep ignores SIGTERM as PID 1).
                runtime: Some(netctl_proto::TaskRuntime { stop_grace_ms: 1, ..Default::default() }),
                endpoints: vec![EndpointAddress {
                    network_id: network.id.clone(),
                    address: address.to_string(),
                    mac: String::new(),
                }],
                ..Default::default()
            }
        })
        .collect::<Vec<TaskSpec>>();
    let vip = ServiceVip {
        network_id: network.id.clone(),
        address: "10.200.255.254".into(),
        service: String::new(),
        backends: tasks.iter().map(|t| t.endpoints[0].address.clone()).collect(),
    };
    NodeState {
        revision: 1,
        service_vips: if count == 0 { Vec::new() } else { vec![vip] },
        advertise_addr: "192.168.10.6".into(),
        data_path_port: 4789,
        networks: vec![NetworkAttachment { network: Some(network) }],
        tasks,
        ..Default::default()
    }
}

/// Sandbox setup latency inside the reconciler, in a namespace of its own.
fn sandbox_latency() -> Value {
    let host = TestNamespace::new(&format!("{}-bench", e2e::netns::unique_prefix()));
    e2e::netns::ip(&["-n", host.name(), "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]);
    e2e::netns::ip(&["-n", host.name(), "addr", "add", "192.168.10.6/24", "dev", "eth0"]);
    e2e::netns::ip(&["-n", host.name(), "link", "set", "eth0", "up"]);
    let run_dir = tempfile::tempdir().unwrap();
    // Enter the namespace on a dedicated thread that runs the whole benchmark.
    let path = host.path();
    let run_path = run_dir.path().to_path_buf();
    let shim = e2e::netctl_bin();
    let results = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut reconciler = netctl_agent::reconcile::Reconciler::new(
                &run_path,
                "192.168.10.6".parse().unwrap(),
                shim,
                netctl_agent::dns::upstream::Upstreams::Fixed(Vec::new()),
            )
            .unwrap();
            let mut results = serde_json::Map::new();
            for count in [1, 10, 100] {
                let started = Instant::now();
                let first = reconciler.pass(&node_state(count)).await;
                let total = started.elapsed();
                let idle = Instant::now();
                let steady = reconciler.pass(&node_state(count)).await;
                let idle = idle.elapsed();
                let teardown = Instant::now();
                reconciler.pass(&NodeState { revision: 2, ..node_state(0) }).await;
                let teardown = teardown.elapsed();
                // Tasks stop in the background: wait until their sandboxes
                // are gone (and the kernel has cleaned up after them)
                // before the next round.
                let namespaces = netlib::NamespaceDir::new(&run_path);
                for _ in 0..300 {
                    let left = namespaces.list().unwrap_or_default();
                    if left.iter().all(|n| n.starts_with("1-")) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    reconciler.pass(&NodeState { revision: 2, ..node_state(0) }).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let per_sandbox =
                    |time: Duration| time.as_secs_f64() * 1000.0 / first.new_sandboxes.max(1) as f64;
                results.insert(
                    format!("tasks_{count}"),
                    json!({
                        "sandboxes": first.new_sandboxes,
                        "kernel_ms_per_sandbox": per_sandbox(first.applied_in),
                        "links_ms_per_sandbox": per_sandbox(first.applied_in - first.rules_in),
                        "rules_ms_per_sandbox": per_sandbox(first.rules_in),
                        "first_pass_ms": total.as_secs_f64() * 1000.0,
                        "steady_pass_ms": idle.as_secs_f64() * 1000.0,
                        "steady_pass_actions": steady.actions,
                        "teardown_pass_ms": teardown.as_secs_f64() * 1000.0,
                    }),
                );
            }
            Value::Object(results)
        })
    })
    .join()
    .expect("benchmark thread");
    e2e::netns::clean_run_dir(run_dir.path());
    results
}

fn ping(lab: &Lab, from: &Value, address: &str) -> bool {
    lab.in_task(from, "ping", &["-c", "1", "-W", "1", address]).status.success()
}

/// `service create --replicas 10` until every task runs and answers.
fn ten_replicas(lab: &Lab) -> Value {
    lab.create_network("tennet", "10.201.0.0/24");
    let started = Instant::now();
    lab.create_service("ten", 10, "tennet", &["sleep", "600"]);
    let tasks = lab.wait_running("ten", 10);
    let running = started.elapsed();
    let reachable = wait_until(Duration::from_secs(60), || {
        let from = &tasks[0];
        tasks[1..].iter().all(|t| ping(lab, from, t["Endpoints"][0]["Address"].as_str().unwrap()))
    });
    let total = started.elapsed();
    lab.ok(&["service", "rm", "ten"]);
    json!({ "all_running_ms": running.as_secs_f64() * 1000.0, "all_reachable_ms": total.as_secs_f64() * 1000.0, "reachable": reachable })
}

fn iperf_bits_per_second(output: &std::process::Output) -> f64 {
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0)
}

/// Overlay vs underlay single-stream TCP throughput.
fn throughput(lab: &Lab) -> Value {
    let mut underlay_server = lab
        .host_command(1, "iperf3")
        .args(["-s", "-1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(500));
    let node1 = lab.hosts()[1].address.to_string();
    let underlay = iperf_bits_per_second(&lab.on_host(0, "iperf3", &["-c", &node1, "-t", "5", "-J"]));
    let _ = underlay_server.wait();

    lab.create_network("perfnet", "10.202.0.0/24");
    lab.create_service("perf", 2, "perfnet", &["iperf3", "-s"]);
    let tasks = lab.wait_running("perf", 2);
    let (client, server) =
        if lab.host_of(&tasks[0]) == 0 { (&tasks[0], &tasks[1]) } else { (&tasks[1], &tasks[0]) };
    std::thread::sleep(Duration::from_millis(500));
    let target = server["Endpoints"][0]["Address"].as_str().unwrap();
    let overlay = iperf_bits_per_second(
        &command_in(&lab.sandbox_path(client), "iperf3")
            .args(["-c", target, "-t", "5", "-J"])
            .output()
            .unwrap(),
    );
    lab.ok(&["service", "rm", "perf"]);
    json!({
        "underlay_gbit_s": underlay / 1e9,
        "overlay_gbit_s": overlay / 1e9,
        "overlay_over_underlay": if underlay > 0.0 { overlay / underlay } else { 0.0 },
    })
}

/// The heartbeat gaps (ms) an agent logged, in order.
fn heartbeat_gaps(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("heartbeat sent"))
        .filter_map(|l| l.split("gap_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The agent's heartbeats while it builds 100 sandboxes with 1,000 routing-
/// mesh rules, on a one-node lab.
fn heartbeats_under_load() -> Value {
    let lab = Lab::start_configured(1, &["--dispatcher-heartbeat", "500ms"], &[]);
    lab.create_network("loadnet", "10.203.0.0/24");
    let before = heartbeat_gaps(&lab.agent_log(0)).len();
    let mut args = vec!["service", "create", "--replicas", "100", "--network", "loadnet", "--name", "load"];
    let ports: Vec<String> = (0..10).map(|p| format!("{}:80", 20000 + p)).collect();
    for port in &ports {
        args.extend(["--publish", port.as_str()]);
    }
    args.extend(["sleep", "600"]);
    let started = Instant::now();
    lab.ok(&args);
    lab.wait_running("load", 100);
    let built = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let gaps: Vec<u64> = heartbeat_gaps(&lab.agent_log(0)).into_iter().skip(before).collect();
    json!({
        "sandboxes": 100,
        "ingress_rules": 1000,
        "build_ms": built.as_secs_f64() * 1000.0,
        "heartbeat_interval_ms": 500,
        "heartbeats": gaps.len(),
        "longest_gap_ms": gaps.iter().max(),
    })
}

fn main() {
    let output = std::env::args().nth(1).unwrap_or_else(|| "bench/results/data_plane.json".into());
    // The agents log every heartbeat (read back by heartbeats_under_load);
    // set before any thread starts.
    std::env::set_var("RUST_LOG", "info,netlink_packet_route=error,netctl_agent::session=debug");
    let sandbox = sandbox_latency();
    let heartbeats = heartbeats_under_load();
    let lab = Lab::start(2);
    let ten = ten_replicas(&lab);
    let perf = throughput(&lab);
    drop(lab);
    let report = json!({
        "sandbox_setup": sandbox,
        "service_create_10_replicas": ten,
        "iperf3_tcp": perf,
        "heartbeats_while_building": heartbeats,
    });
    e2e::write_report(&output, report);
}
