//! Incremental Watch from outside: a node whose stream is cut in the middle
//! of a burst of changes ends with the same routing mesh and overlay
//! entries as a node whose stream never broke, and a whole state sent
//! afresh (agent restart) changes nothing it built from deltas.

use e2e::lab::Lab;
use e2e::wait_until;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const CUT_HOST: usize = 2;

fn stdout(output: std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The load-balancing rules of host `i`'s ingress_sbox: (published port,
/// the ingress address and port it DNATs to).
fn mesh_rules(lab: &Lab, i: usize) -> BTreeSet<(String, String)> {
    let sbox = lab.hosts()[i].run_dir.join("netns").join("ingress_sbox");
    let rules = stdout(lab.in_namespace(&sbox, "iptables-save", &["-t", "nat"]));
    rules
        .lines()
        .filter(|l| l.starts_with("-A") && l.contains("DNAT"))
        .filter_map(|l| {
            let after = |flag: &str| l.split(flag).nth(1)?.split_whitespace().next().map(str::to_string);
            Some((after("--dport ")?, after("--to-destination ")?))
        })
        .collect()
}

/// What host `i`'s ingress_sbox should balance: each of `services`' port
/// (`sK` publishes 3100K) over the ingress addresses of its running tasks
/// on other hosts, or of all of them when every one runs on host `i`.
fn expected_mesh_rules(lab: &Lab, i: usize, services: &[String]) -> BTreeSet<(String, String)> {
    let ingress = lab.network_id("ingress");
    let mut expected = BTreeSet::new();
    for service in services {
        let port = 31000 + service[1..].parse::<u16>().expect("service sK");
        let tasks = lab.running_tasks(service);
        let elsewhere: Vec<&Value> = tasks.iter().filter(|t| lab.host_of(t) != i).collect();
        let behind = if elsewhere.is_empty() { tasks.iter().collect() } else { elsewhere };
        for task in behind {
            let endpoints = task["Endpoints"].as_array().expect("endpoints");
            let on_ingress =
                endpoints.iter().find(|e| e["NetworkID"] == ingress).expect("an ingress endpoint");
            let address = on_ingress["Address"].as_str().expect("ingress address");
            expected.insert((port.to_string(), format!("{address}:80")));
        }
    }
    expected
}

/// The remote entries (`MAC dst ADDRESS`) of host `i`'s overlay of `network`.
fn overlay_peers(lab: &Lab, i: usize, network: &str) -> BTreeSet<String> {
    if !lab.overlay_path(i, network).exists() {
        return BTreeSet::new();
    }
    let fdb =
        stdout(lab.in_namespace(&lab.overlay_path(i, network), "bridge", &["fdb", "show", "dev", "vxlan0"]));
    fdb.lines()
        .filter(|l| l.contains(" dst "))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let dst = fields.iter().position(|f| *f == "dst")?;
            Some(format!("{} dst {}", fields[0], fields.get(dst + 1)?))
        })
        .collect()
}

/// The overlay entries host `i` should hold: every running task of
/// `services` on another host (by their MAC on `network`), if it runs one
/// itself (an overlay exists only where a task uses it).
fn expected_peers(lab: &Lab, i: usize, network: &str, services: &[String]) -> BTreeSet<String> {
    let tasks: Vec<Value> = services.iter().flat_map(|s| lab.running_tasks(s)).collect();
    if !tasks.iter().any(|t| lab.host_of(t) == i) {
        return BTreeSet::new();
    }
    tasks
        .iter()
        .filter(|t| lab.host_of(t) != i)
        .map(|t| {
            let endpoints = t["Endpoints"].as_array().expect("endpoints");
            let on_network =
                endpoints.iter().find(|e| e["NetworkID"] == network).expect("an endpoint on the network");
            let mac = on_network["MAC"].as_str().expect("task MAC");
            format!("{mac} dst {}", lab.hosts()[lab.host_of(t)].address)
        })
        .collect()
}

/// Cuts (`-I`) or restores (`-D`) host `i`'s TCP to the manager: every
/// packet to port 4243 answered with a reset, so its streams break.
fn cut(lab: &Lab, i: usize, action: &str) {
    let args =
        [action, "OUTPUT", "-p", "tcp", "--dport", "4243", "-j", "REJECT", "--reject-with", "tcp-reset"];
    let output = lab.on_host(i, "iptables", &args);
    assert!(output.status.success(), "iptables {action}: {}", String::from_utf8_lossy(&output.stderr));
}

fn create(lab: &Lab, name: &str, replicas: usize, port: u16) {
    let publish = format!("{port}:80");
    let replicas = replicas.to_string();
    lab.ok(&["service", "create", "--name", name, "--replicas", &replicas, "--network", "burst"]
        .into_iter()
        .chain(["--publish", &publish, "sleep", "100000"])
        .collect::<Vec<_>>());
}

#[test]
fn a_watch_stream_cut_during_a_burst_of_changes_converges_like_one_never_cut() {
    let mut lab = Lab::start(3);
    lab.create_network("burst", "10.77.0.0/24");
    let network = lab.network_id("burst");
    let mut services = Vec::new();
    for i in 0..3 {
        create(&lab, &format!("s{i}"), 2, 31000 + i as u16);
        services.push(format!("s{i}"));
    }
    cut(&lab, CUT_HOST, "-I");
    for i in 3..6 {
        create(&lab, &format!("s{i}"), 2, 31000 + i as u16);
        services.push(format!("s{i}"));
    }
    lab.ok(&["service", "scale", "s0=5", "s1=1"]);
    lab.ok(&["service", "rm", "s2"]);
    services.retain(|s| s != "s2");
    std::thread::sleep(Duration::from_secs(2));
    cut(&lab, CUT_HOST, "-D");
    lab.ok(&["service", "scale", "s3=4"]);
    for (service, replicas) in [("s0", 5), ("s1", 1), ("s3", 4), ("s4", 2), ("s5", 2)] {
        lab.wait_running(service, replicas);
    }
    let reconnected = wait_until(Duration::from_secs(20), || {
        lab.agent_log(CUT_HOST).matches("connected with the node certificate").count() >= 2
    });
    assert!(reconnected, "the stream was not cut: {}", lab.agent_log(CUT_HOST));

    let converged = wait_until(Duration::from_secs(30), || {
        (0..3).all(|i| {
            mesh_rules(&lab, i) == expected_mesh_rules(&lab, i, &services)
                && overlay_peers(&lab, i, &network) == expected_peers(&lab, i, &network, &services)
        })
    });
    for i in 0..3 {
        let rules = mesh_rules(&lab, i);
        let expected = expected_mesh_rules(&lab, i, &services);
        let differ: Vec<_> = rules.symmetric_difference(&expected).collect();
        assert!(differ.is_empty(), "host {i}'s ingress_sbox (converged: {converged}): {differ:#?}");
        assert_eq!(
            overlay_peers(&lab, i, &network),
            expected_peers(&lab, i, &network, &services),
            "host {i}"
        );
    }
    let rules = mesh_rules(&lab, CUT_HOST);
    for port in 31000..31006 {
        let published = rules.iter().any(|(dport, _)| *dport == port.to_string());
        assert_eq!(published, port != 31002, "port {port} in {rules:#?}");
    }

    // A whole state sent afresh builds nothing different.
    let before = (mesh_rules(&lab, CUT_HOST), overlay_peers(&lab, CUT_HOST, &network));
    lab.stop_agent(CUT_HOST, Signal::SIGTERM);
    lab.start_agent(CUT_HOST);
    let received =
        wait_until(Duration::from_secs(20), || lab.agent_log(CUT_HOST).contains("desired state received"));
    assert!(received, "{}", lab.agent_log(CUT_HOST));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((mesh_rules(&lab, CUT_HOST), overlay_peers(&lab, CUT_HOST, &network)), before);
}
