//! Routing-mesh benchmarks, written to `bench/results/routing_mesh.json` (or
//! the path given as the first argument):
//! - what a user pays for the mesh: wrk (`-t1 -c16`, keep-alive, pinned to
//!   CPU 0) from the underlay, outside the cluster, against one replica of
//!   `hostname-http` pinned to CPU 1 on node1, asked through node0's
//!   published port (the replica elsewhere) and node1's (the replica here),
//!   beside the same server program on node1's underlay address (direct);
//!   the same three on the walkthrough's path built by hand with ip and
//!   iptables (`bench/reference-mesh.sh`), to tell the design's cost from
//!   netctl's; with `NETCTL_BEFORE_BIN`, the same on a netctl built before
//!   (its lab in the same run). Rounds interleave the paths; each figure is
//!   the median of its rounds: requests/s, p50/p99 latency, and CPU time
//!   (both cores, all of it) per request;
//! - the time to rewrite the balancing rules of 100 published ports × 10
//!   replicas (ingress_sbox's set, one iptables-restore) and the host's set.

use e2e::lab::Lab;
use e2e::netns::{command_in, TestNamespace};
use netctl_agent::mesh;
use netctl_proto::PublishedPort;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

/// Rounds over every path.
const ROUNDS: usize = 5;

/// Milliseconds from a wrk duration such as `812.00us`, `3.10ms` or `1.20s`.
fn millis(text: &str) -> f64 {
    let number = |suffix: &str| text.strip_suffix(suffix).and_then(|n| n.parse::<f64>().ok());
    number("us")
        .map(|n| n / 1000.0)
        .or_else(|| number("ms"))
        .or_else(|| number("s").map(|n| n * 1000.0))
        .unwrap_or(0.0)
}

/// Clock ticks per second of /proc/stat's counters.
const USER_HZ: f64 = 100.0;

/// Busy clock ticks of every CPU together (/proc/stat: user, nice, system,
/// irq and softirq; not idle, iowait, steal, nor guest, already in user).
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    [0, 1, 2, 5, 6].iter().map(|&i| fields[i]).sum()
}

/// One wrk run from the namespace at `client` against `url`: requests/s,
/// p50/p99 in ms and CPU µs per request.
fn measure(client: &Path, url: &str) -> [f64; 4] {
    let before = busy_ticks();
    let output = command_in(client, "taskset")
        .args(["-c", "0", "wrk", "-t", "1", "-c", "16", "-d", "5s", "--latency", url])
        .output()
        .expect("wrk (apt-get install wrk)");
    let busy_us = (busy_ticks() - before) as f64 * 1e6 / USER_HZ;
    let text = String::from_utf8_lossy(&output.stdout);
    let field =
        |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()));
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse::<f64>().ok()))
        .unwrap_or(0.0);
    let rate = field("Requests/sec:").and_then(|n| n.parse().ok()).unwrap_or(0.0);
    let p50 = field("50%").map(|v| millis(&v)).unwrap_or(0.0);
    let p99 = field("99%").map(|v| millis(&v)).unwrap_or(0.0);
    assert!(rate > 0.0, "wrk got nothing from {url}: {text}");
    [rate, p50, p99, busy_us / requests.max(1.0)]
}

/// One path through the mesh (or around it) and its runs.
struct Route {
    client: PathBuf,
    url: String,
    runs: Vec<[f64; 4]>,
}

impl Route {
    fn figures(&self) -> Value {
        let median = |i: usize| {
            let mut v: Vec<f64> = self.runs.iter().map(|r| r[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        json!({
            "requests_per_second": median(0).round(),
            "latency_ms_p50": median(1),
            "latency_ms_p99": median(2),
            "cpu_us_per_request": (median(3) * 100.0).round() / 100.0,
            "runs_requests_per_second": self.runs.iter().map(|r| r[0].round()).collect::<Vec<_>>(),
        })
    }
}

/// A netctl lab of two nodes with `web` (one `hostname-http` replica on
/// node1, pinned to CPU 1, published on 8080) and the same program on
/// node1's underlay address, port 8081.
struct NetctlPaths {
    lab: Lab,
    direct: Child,
}

impl NetctlPaths {
    fn start(server: &str) -> Self {
        let lab = Lab::start(2);
        let create = ["service", "create", "--name", "web", "--publish", "8080:80"];
        let pinned = ["--constraint", "node.hostname==node1", "taskset", "-c", "1", server];
        lab.ok(&[&create[..], &pinned[..]].concat());
        lab.wait_running("web", 1);
        let direct =
            lab.host_command(1, "taskset").args(["-c", "1", server, "8081"]).spawn().expect("server");
        for i in 0..2 {
            answers(&lab.underlay().path(), &format!("http://{}:8080/", lab.hosts()[i].address));
        }
        answers(&lab.underlay().path(), &format!("http://{}:8081/", lab.hosts()[1].address));
        Self { lab, direct }
    }

    /// direct, replica here, replica elsewhere.
    fn paths(&self) -> Vec<Route> {
        let client = self.lab.underlay().path();
        let address = |i: usize| self.lab.hosts()[i].address;
        let urls = [
            format!("http://{}:8081/", address(1)),
            format!("http://{}:8080/", address(1)),
            format!("http://{}:8080/", address(0)),
        ];
        urls.into_iter().map(|url| Route { client: client.clone(), url, runs: Vec::new() }).collect()
    }
}

impl Drop for NetctlPaths {
    fn drop(&mut self) {
        let _ = self.direct.kill();
        let _ = self.direct.wait();
    }
}

/// The walkthrough's path built by hand (`bench/reference-mesh.sh`), with
/// the task's server and the direct one running; removed on drop.
struct HandBuilt {
    prefix: String,
    servers: Vec<Child>,
}

impl HandBuilt {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/reference-mesh.sh")
    }

    fn namespace(&self, name: &str) -> PathBuf {
        PathBuf::from("/var/run/netns").join(format!("{}-{name}", self.prefix))
    }

    fn start(server: &str) -> Self {
        let prefix = e2e::netns::unique_prefix();
        let mut built = Self { prefix, servers: Vec::new() };
        let status =
            Command::new("bash").arg(Self::script()).args(["up", &built.prefix]).status().expect("bash");
        assert!(status.success(), "bench/reference-mesh.sh up failed");
        for (namespace, port) in [("t", "80"), ("h1", "8081")] {
            let child =
                command_in(&built.namespace(namespace), "taskset").args(["-c", "1", server, port]).spawn();
            built.servers.push(child.expect("server"));
        }
        for url in ["http://192.168.77.7:8081/", "http://192.168.77.7:8080/", "http://192.168.77.6:8080/"] {
            answers(&built.namespace("u"), url);
        }
        built
    }

    /// direct, replica here, replica elsewhere.
    fn paths(&self) -> Vec<Route> {
        let urls = ["http://192.168.77.7:8081/", "http://192.168.77.7:8080/", "http://192.168.77.6:8080/"];
        urls.into_iter()
            .map(|url| Route { client: self.namespace("u"), url: url.into(), runs: Vec::new() })
            .collect()
    }
}

impl Drop for HandBuilt {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("bash").arg(Self::script()).args(["down", &self.prefix]).status();
    }
}

/// Waits until `url` answers from the namespace at `client`.
fn answers(client: &Path, url: &str) {
    let answered = e2e::wait_until(std::time::Duration::from_secs(20), || {
        command_in(client, "curl")
            .args(["-sf", "-o", "/dev/null", "-m", "2", url])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(answered, "{url} does not answer");
}

fn published_vs_direct() -> Value {
    let server = std::env::current_exe().expect("own path").with_file_name("hostname-http");
    let server = server.to_str().expect("UTF-8 path");
    let hand_built = HandBuilt::start(server);
    let mut reference = hand_built.paths();
    let mut groups = Vec::new();
    // A lab per netctl binary, one after the other (both at once would
    // share the cores and the underlay addresses).
    let mut labs = vec![("netctl", e2e::netctl_bin())];
    if let Some(before) = std::env::var_os("NETCTL_BEFORE_BIN") {
        labs.push(("netctl_before", before.into()));
    }
    for (group, binary) in labs {
        // The lab starts the binary NETCTL_BIN names.
        std::env::set_var("NETCTL_BIN", binary);
        let netctl = NetctlPaths::start(server);
        let mut own = netctl.paths();
        for _ in 0..ROUNDS {
            for path in own.iter_mut().chain(reference.iter_mut()) {
                path.runs.push(measure(&path.client, &path.url));
            }
        }
        groups.push((group, own));
    }
    groups.push(("hand_built", reference));
    let mut report = Map::new();
    for (group, routes) in groups {
        let [direct, here, elsewhere] = [&routes[0], &routes[1], &routes[2]].map(Route::figures);
        let ratio = |v: &Value| {
            v["requests_per_second"].as_f64().unwrap_or(0.0)
                / direct["requests_per_second"].as_f64().unwrap_or(1.0).max(1.0)
        };
        let added = |v: &Value| {
            v["latency_ms_p99"].as_f64().unwrap_or(0.0) - direct["latency_ms_p99"].as_f64().unwrap_or(0.0)
        };
        report.insert(
            group.to_string(),
            json!({
                "direct": direct,
                "replica_here": here,
                "replica_elsewhere": elsewhere,
                "here_over_direct_rps": (ratio(&here) * 1000.0).round() / 1000.0,
                "elsewhere_over_direct_rps": (ratio(&elsewhere) * 1000.0).round() / 1000.0,
                "here_p99_added_ms": added(&here),
                "elsewhere_p99_added_ms": added(&elsewhere),
            }),
        );
    }
    Value::Object(report)
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
            service: String::new(),
        })
        .collect();
    // Replica r of each port on node r of 10.
    let node = |r: usize| std::net::Ipv4Addr::new(192, 168, 10, 10 + r as u8);
    let node_of = ports
        .iter()
        .flat_map(|p| p.backends.iter().enumerate().map(move |(r, b)| (b.clone(), node(r))))
        .collect();
    let routes = mesh::port_routes(&ports, &Default::default(), &node_of);
    let sandbox_rules = mesh::ingress_sandbox_rules(&routes, "10.255.0.2", "10.255.0.0/16");
    let peers: Vec<std::net::Ipv4Addr> = (0..10).map(node).collect();
    let host_rules = mesh::host_rules(&routes, &[], std::net::Ipv4Addr::new(192, 168, 10, 9), &peers);
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
    let method = "wrk -t1 -c16 -d5s keep-alive from the underlay namespace pinned to CPU 0; hostname-http pinned to CPU 1 on node1; direct = the same program on node1's underlay address; medians of 5 interleaved rounds; cpu_us_per_request = busy time of both CPUs / requests";
    e2e::write_report(&output, json!({ "method": method, "http": traffic, "rule_rewrite": rules }));
}
