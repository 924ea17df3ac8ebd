//! Several managers on etcd, as a user builds them: `netctl lab up --nodes 3
//! --managers 3` (an etcd member and a manager on each host, Debian's etcd),
//! then the leader killed in the middle of 16 clients' creates, an etcd
//! member killed, and every member stopped and resumed.

use e2e::{netctl_bin, wait_until};
use netctl_proto::convention::sandbox_name;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A lab of 3 hosts with 3 managers, removed on drop.
struct HaLab {
    root: tempfile::TempDir,
    name: String,
}

impl HaLab {
    fn up() -> Self {
        let root = tempfile::Builder::new().prefix("netctl-ha-").tempdir().unwrap();
        let lab = Self { root, name: e2e::netns::unique_prefix() };
        let up = lab.netctl(&["lab", "up", "--nodes", "3", "--managers", "3", "--name", &lab.name]);
        assert!(up.status.success(), "lab up: {}{}", text(&up.stdout), text(&up.stderr));
        assert!(text(&up.stdout).contains("etcd + manager + agent"), "{}", text(&up.stdout));
        lab
    }

    fn netctl(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run netctl")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(netctl_bin());
        command.args(args).env("NETCTL_LAB_ROOT", self.root.path());
        command
    }

    /// `netctl ARGS` on host `node` (NETCTL_MANAGER lists every manager).
    fn on(&self, node: usize, args: &[&str]) -> Output {
        let node = format!("node{node}");
        let mut full = vec!["lab", "exec", "--name", &self.name, &node, "--"];
        full.extend_from_slice(args);
        self.netctl(&full)
    }

    fn ok(&self, node: usize, args: &[&str]) -> String {
        let output = self.on(node, args);
        assert!(output.status.success(), "{args:?}: {}", text(&output.stderr));
        text(&output.stdout)
    }

    fn host_dir(&self, node: usize) -> PathBuf {
        self.root.path().join(&self.name).join(format!("node{node}"))
    }

    fn pid(&self, node: usize, daemon: &str) -> i32 {
        let file = self.host_dir(node).join(format!("{daemon}.pid"));
        std::fs::read_to_string(&file).unwrap().trim().parse().unwrap()
    }

    fn signal(&self, node: usize, daemon: &str, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid(node, daemon)), signal).unwrap();
    }

    /// (host index, status) of every manager `cluster info` shows, asked on
    /// `node`.
    fn managers(&self, node: usize) -> Vec<(usize, String)> {
        let output = self.on(node, &["netctl", "cluster", "info"]);
        e2e::managers_in(&text(&output.stdout))
            .into_iter()
            .filter_map(|(address, status)| Some((lab_host(&address)?, status)))
            .collect()
    }

    fn leader(&self, node: usize) -> Option<usize> {
        self.managers(node).into_iter().find(|(_, status)| status == "Leader").map(|(host, _)| host)
    }

    fn json(&self, node: usize, args: &[&str]) -> Vec<Value> {
        e2e::json_lines(&self.ok(node, args))
    }

    /// Network `demonet` on `subnet` and service `pinger` (3 replicas) on
    /// it; two of its running tasks on different hosts.
    fn pingers(&self, subnet: &str) -> (Value, Value) {
        self.ok(0, &["netctl", "network", "create", "--subnet", subnet, "demonet"]);
        let service = ["service", "create", "--replicas", "3", "--network", "demonet", "--name", "pinger"];
        let mut args = vec!["netctl"];
        args.extend_from_slice(&service);
        args.extend_from_slice(&["sleep", "100000"]);
        self.ok(0, &args);
        self.tasks_on_two_hosts("pinger")
    }

    /// Whether `network create NAME` on `node` succeeds within 30 s.
    fn creates_network(&self, node: usize, name: &str) -> bool {
        wait_until(Duration::from_secs(30), || {
            self.on(node, &["netctl", "network", "create", name]).status.success()
        })
    }

    /// Whether `service` runs exactly `count` tasks within 30 s.
    fn runs(&self, service: &str, count: usize) -> bool {
        wait_until(Duration::from_secs(30), || {
            let tasks = self.json(0, &["netctl", "service", "ps", "--format", "json", service]);
            tasks.iter().filter(|t| t["CurrentState"] == "running").count() == count
        })
    }

    /// Two running tasks of `service` on different hosts.
    fn tasks_on_two_hosts(&self, service: &str) -> (Value, Value) {
        let mut found = None;
        wait_until(Duration::from_secs(40), || {
            let tasks = self.json(0, &["netctl", "service", "ps", "--format", "json", service]);
            let running: Vec<Value> = tasks.into_iter().filter(|t| t["CurrentState"] == "running").collect();
            let first = running.first().cloned();
            let other = first.as_ref().and_then(|f| running.iter().find(|t| t["Node"] != f["Node"]).cloned());
            found = first.zip(other);
            found.is_some()
        });
        found.expect("two running tasks on two hosts")
    }

    /// Starts pinging from task `from`'s sandbox (entered directly: the
    /// ping must not need the control plane) to `to`'s overlay address
    /// every 0.1 s.
    fn start_ping(&self, from: &Value, to: &Value, count: usize) -> Child {
        let host: usize = from["Node"].as_str().unwrap().trim_start_matches("node").parse().unwrap();
        let run_dir = self.host_dir(host).join("run");
        let sandbox = netlib::NamespaceDir::new(&run_dir).path(sandbox_name(from["ID"].as_str().unwrap()));
        e2e::netns::command_in(&sandbox, "ping")
            .args(["-i", "0.1", "-c", &count.to_string(), "-W", "1", &e2e::lab::endpoint_address(to, 0)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for HaLab {
    fn drop(&mut self) {
        let _ = self.netctl(&["lab", "down", "--name", &self.name]);
    }
}

/// The lab host of a manager address (`192.168.10.6:4243` is node0).
fn lab_host(address: &str) -> Option<usize> {
    let octet: usize = address.strip_prefix("192.168.10.")?.split(':').next()?.parse().ok()?;
    octet.checked_sub(6)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Packets a finished ping lost.
fn packets_lost(ping: Child) -> usize {
    let output = ping.wait_with_output().unwrap();
    let summary = text(&output.stdout);
    let line = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("ping said: {summary}{}", text(&output.stderr)));
    let numbers: Vec<usize> =
        line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    numbers[0] - numbers[1]
}

#[test]
fn the_leader_killed_during_16_clients_creates_loses_nothing() {
    let lab = HaLab::up();
    assert!(wait_until(Duration::from_secs(20), || {
        let managers = lab.managers(0);
        managers.len() == 3 && managers.iter().filter(|(_, s)| s == "Leader").count() == 1
    }));
    let (from, to) = lab.pingers("192.168.200.0/24");
    let ping = lab.start_ping(&from, &to, 120);

    // 16 clients, each on its own manager order, creating networks and
    // services with published ports.
    let clients: Vec<_> = (0..16)
        .map(|client| {
            let managers: Vec<String> =
                (0..3).map(|i| format!("http://192.168.10.{}:4243", 6 + (client + i) % 3)).collect();
            let (root, name) = (lab.root.path().to_path_buf(), lab.name.clone());
            std::thread::spawn(move || create_for_a_while(&root, &name, client, &managers.join(",")))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let leader = lab.leader(1).expect("a leader");
    lab.signal(leader, "manager", nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let asked_on = (leader + 1) % 3;
    let mut new_leader = None;
    wait_until(Duration::from_secs(15), || {
        new_leader = lab.leader(asked_on).filter(|l| *l != leader);
        new_leader.is_some()
    });
    let failover = killed.elapsed();
    assert!(new_leader.is_some(), "no new leader after the leader manager was killed");
    assert!(failover < Duration::from_secs(5), "a new leader took {failover:?}");
    let statuses = lab.managers(asked_on);
    assert!(statuses.contains(&(leader, "Unreachable".to_string())), "{statuses:?}");

    let acknowledged: Vec<(String, String)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(acknowledged.len() >= 32, "too few creates acknowledged: {}", acknowledged.len());
    let networks = lab.json(asked_on, &["netctl", "network", "ls", "--format", "json"]);
    let services = lab.json(asked_on, &["netctl", "service", "ls", "--format", "json"]);
    for (kind, name) in &acknowledged {
        let listed = if kind == "network" { &networks } else { &services };
        assert!(listed.iter().any(|n| n["Name"] == name.as_str()), "acknowledged {kind} {name} is lost");
    }
    let distinct = |values: Vec<String>| values.len() == values.iter().collect::<BTreeSet<_>>().len();
    assert!(
        distinct(networks.iter().map(|n| n["Subnet"].to_string()).collect()),
        "a subnet twice: {networks:?}"
    );
    assert!(distinct(networks.iter().map(|n| n["VNI"].to_string()).collect()), "a VNI twice: {networks:?}");
    assert!(
        distinct(services.iter().map(|s| s["Ports"].to_string()).collect()),
        "a port twice: {services:?}"
    );
    let mut addresses = Vec::new();
    for service in &services {
        let name = service["Name"].as_str().unwrap();
        for task in lab.json(asked_on, &["netctl", "service", "ps", "--format", "json", name]) {
            if task["DesiredState"] == "running" {
                let endpoints = task["Endpoints"].as_array().cloned().unwrap_or_default();
                addresses.extend(endpoints.iter().map(|e| e["Address"].to_string()));
            }
        }
    }
    assert!(distinct(addresses.clone()), "an address twice: {addresses:?}");
    let lost = packets_lost(ping);
    assert!(lost <= 1, "the ping across the failover lost {lost} packets");

    // `lab up` again starts the killed manager; it is Reachable again.
    let again = lab.netctl(&["lab", "up", "--nodes", "3", "--managers", "3", "--name", &lab.name]);
    let said = text(&again.stdout);
    assert!(said.contains(&format!("restarted: manager on node{leader}")), "{said}{}", text(&again.stderr));
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .managers(asked_on)
            .contains(&(leader, "Reachable".into()))),
        "the restarted manager is not Reachable: {:?}",
        lab.managers(asked_on)
    );
}

/// One client: for 8 seconds, networks and services with a published port
/// through `managers`; what was acknowledged.
fn create_for_a_while(root: &Path, lab: &str, client: usize, managers: &str) -> Vec<(String, String)> {
    let run = |args: &[&str]| {
        let mut full = vec!["lab", "exec", "--name", lab, "node0", "--", "netctl", "--manager", managers];
        full.extend_from_slice(args);
        Command::new(netctl_bin()).args(&full).env("NETCTL_LAB_ROOT", root).output().unwrap()
    };
    let mut acknowledged = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let network = format!("c{client}n{i}");
        if run(&["network", "create", &network]).status.success() {
            acknowledged.push(("network".to_string(), network.clone()));
            let service = format!("c{client}s{i}");
            let created = run(&[
                "service",
                "create",
                "--name",
                &service,
                "--network",
                &network,
                "--publish",
                "target=80",
                "sleep",
                "100000",
            ]);
            if created.status.success() {
                acknowledged.push(("service".to_string(), service));
            }
        }
        i += 1;
    }
    acknowledged
}

#[test]
fn etcd_losing_a_member_keeps_working_and_losing_all_keeps_the_data_path() {
    let lab = HaLab::up();
    let (from, to) = lab.pingers("192.168.201.0/24");

    // One member killed: quorum remains, everything keeps working.
    lab.signal(2, "etcd", nix::sys::signal::Signal::SIGKILL);
    assert!(lab.creates_network(0, "after-one"), "creating a network with one etcd member down failed");
    lab.ok(1, &["netctl", "service", "scale", "pinger=4"]);
    assert!(lab.runs("pinger", 4), "scaling to 4 with one etcd member down");

    // Every member stopped: Control errors quickly, the overlay still passes
    // traffic.
    let ping = lab.start_ping(&from, &to, 60);
    for node in [0, 1] {
        lab.signal(node, "etcd", nix::sys::signal::Signal::SIGSTOP);
    }
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    let refused = lab.on(0, &["netctl", "network", "create", "during-outage"]);
    assert!(!refused.status.success(), "a create succeeded with etcd stopped");
    assert!(asked.elapsed() < Duration::from_secs(10), "the refusal took {:?}", asked.elapsed());
    let refusal = text(&refused.stderr);
    assert!(refusal.contains("store unavailable"), "{refusal}");
    let lost = packets_lost(ping);
    assert!(lost <= 1, "the overlay lost {lost} of 60 pings while etcd was stopped");

    // etcd back: the cluster converges with no manual step.
    for node in [0, 1] {
        lab.signal(node, "etcd", nix::sys::signal::Signal::SIGCONT);
    }
    assert!(lab.creates_network(2, "after-outage"), "creates did not resume after etcd came back");
    // Nothing was rescheduled: the same two tasks still run and answer.
    let running = lab.json(0, &["netctl", "service", "ps", "--format", "json", "pinger"]);
    for task in [&from, &to] {
        let same = running.iter().find(|t| t["ID"] == task["ID"]);
        assert!(same.is_some_and(|t| t["CurrentState"] == "running"), "{} moved: {running:?}", task["Name"]);
    }
    let ping = lab.start_ping(&from, &to, 5);
    assert_eq!(packets_lost(ping), 0, "the overlay after etcd came back");
    lab.ok(0, &["netctl", "service", "scale", "pinger=2"]);
    assert!(lab.runs("pinger", 2), "scaling to 2 after etcd came back");
    // A create sent to a stopped member is delivered when it runs again:
    // it may take effect only if the refusal said so, and then whole.
    let networks = lab.json(0, &["netctl", "network", "ls", "--format", "json"]);
    if networks.iter().any(|n| n["Name"] == "during-outage") {
        assert!(
            refusal.contains("may still take effect"),
            "a create refused as not made was made: {refusal}"
        );
    }
    let subnets: BTreeSet<String> = networks.iter().map(|n| n["Subnet"].to_string()).collect();
    assert_eq!(subnets.len(), networks.len(), "a subnet twice: {networks:?}");
}
