//! Service-discovery benchmark, written to `bench/results/dns.json` (or the
//! path given as the first argument): queries/s (dnsperf, Debian's) and
//! p50/p99 latency (one query at a time) from inside a task's sandbox,
//! against netctl's resolver at 127.0.0.11 and, in the same run and the
//! same sandbox, against aardvark-dns (podman's resolver, Debian's package)
//! serving the same names.

use e2e::lab::Lab;
use e2e::netns::command_in;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// Services on the benchmark network, each a name to resolve.
const SERVICES: usize = 10;
/// aardvark-dns, as Debian installs it.
const AARDVARK: &str = "/usr/lib/podman/aardvark-dns";
/// Where aardvark listens and the address it knows the client by.
const AARDVARK_LISTEN: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const AARDVARK_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// Queries per latency measurement.
const LATENCY_QUERIES: usize = 5000;

/// A DNS query for the A record of `name`, ID `id`.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}

/// p50 and p99 of one-at-a-time queries from `from` to `server`, inside
/// the namespace at `path`.
fn latency(path: &Path, from: Ipv4Addr, server: SocketAddr) -> Value {
    let file = std::fs::File::open(path).expect("sandbox namespace");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let socket = UdpSocket::bind((from, 0)).expect("client socket");
                socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                socket.connect(server).expect("connect");
                let mut times = Vec::with_capacity(LATENCY_QUERIES);
                let mut buffer = [0u8; 1500];
                for i in 0..LATENCY_QUERIES {
                    let packet = query(&format!("svc{}", i % SERVICES), i as u16);
                    let started = Instant::now();
                    socket.send(&packet).unwrap();
                    if socket.recv(&mut buffer).is_ok() {
                        times.push(started.elapsed());
                    }
                }
                times.sort();
                assert!(!times.is_empty(), "no answer from {server} in {}", path.display());
                let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
                json!({
                    "answered": times.len(),
                    "latency_ms_p50": at(0.5).as_secs_f64() * 1000.0,
                    "latency_ms_p99": at(0.99).as_secs_f64() * 1000.0,
                })
            })
            .join()
            .expect("latency thread")
    })
}

/// dnsperf for 10 s with 4 clients from inside the sandbox.
fn dnsperf(path: &Path, queries: &Path, server: Ipv4Addr, from: Option<Ipv4Addr>) -> Value {
    let mut command = command_in(path, "dnsperf");
    command.args(["-s", &server.to_string(), "-d"]).arg(queries).args(["-l", "10", "-c", "4", "-q", "200"]);
    if let Some(from) = from {
        command.args(["-a", &from.to_string()]);
    }
    let output = command.output().expect("dnsperf");
    let text = String::from_utf8_lossy(&output.stdout);
    let figure = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    json!({
        "queries_per_second": figure("Queries per second:"),
        "average_latency_ms": figure("Average Latency (s):") * 1000.0,
        "lost": figure("Queries lost:"),
    })
}

/// aardvark-dns's configuration for the same names: one "container" per
/// service holding its VIP, and the client.
fn aardvark_config(dir: &Path, vips: &[(String, String)]) {
    let mut text = format!("{AARDVARK_LISTEN}\n");
    for (name, vip) in vips {
        text.push_str(&format!("{name}0000000000 {vip}  {name}\n"));
    }
    text.push_str(&format!("client000000 {AARDVARK_CLIENT}  client\n"));
    std::fs::write(dir.join("benchnet"), text).expect("aardvark config");
}

fn main() {
    let output = std::env::args().nth(1).unwrap_or_else(|| "bench/results/dns.json".into());
    let lab = Lab::start(1);
    lab.create_network("benchnet", "10.230.0.0/16");
    for i in 0..SERVICES {
        lab.create_service(&format!("svc{i}"), 2, "benchnet", &["sleep", "100000"]);
    }
    lab.create_service("client", 1, "benchnet", &["sleep", "100000"]);
    let client = lab.wait_running("client", 1).remove(0);
    for i in 0..SERVICES {
        lab.wait_running(&format!("svc{i}"), 2);
    }
    let sandbox = lab.sandbox_path(&client);
    let vips: Vec<(String, String)> = (0..SERVICES)
        .map(|i| {
            let name = format!("svc{i}");
            let inspected: Value = serde_json::from_str(&lab.ok(&["service", "inspect", &name])).unwrap();
            (name, inspected[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap().to_string())
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let queries = dir.path().join("queries");
    let lines: Vec<String> = (0..SERVICES).map(|i| format!("svc{i} A")).collect();
    std::fs::write(&queries, lines.join("\n") + "\n").unwrap();

    let resolver = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 11), 53));
    let netctl = json!({
        "dnsperf": dnsperf(&sandbox, &queries, Ipv4Addr::new(127, 0, 0, 11), None),
        "one_at_a_time": latency(&sandbox, Ipv4Addr::UNSPECIFIED, resolver),
    });

    // aardvark-dns in the same sandbox, on addresses of its own.
    for address in [AARDVARK_LISTEN, AARDVARK_CLIENT] {
        let added =
            command_in(&sandbox, "ip").args(["addr", "add", &format!("{address}/32"), "dev", "lo"]).status();
        assert!(added.is_ok_and(|s| s.success()), "adding {address} in the sandbox");
    }
    let config = dir.path().join("aardvark");
    std::fs::create_dir_all(&config).unwrap();
    aardvark_config(&config, &vips);
    let started =
        command_in(&sandbox, AARDVARK).arg("--config").arg(&config).args(["-p", "53", "run"]).status();
    assert!(started.is_ok_and(|s| s.success()), "aardvark-dns did not start");
    let aardvark = json!({
        "dnsperf": dnsperf(&sandbox, &queries, AARDVARK_LISTEN, Some(AARDVARK_CLIENT)),
        "one_at_a_time": latency(&sandbox, AARDVARK_CLIENT, SocketAddr::from((AARDVARK_LISTEN, 53))),
    });
    if let Ok(pid) = std::fs::read_to_string(config.join("aardvark.pid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    drop(lab);
    let version =
        std::process::Command::new(AARDVARK).arg("--version").output().expect("aardvark-dns --version");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    e2e::write_report(
        &output,
        json!({ "names": SERVICES, "netctl": netctl, "aardvark_dns": aardvark, "aardvark_version": version }),
    );
}
