//! The manager keeps everything across restarts and loses no acknowledged
//! change to a kill -9.

use e2e::{wait_until, ControlPlane};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[test]
fn a_manager_restart_keeps_networks_nodes_and_tokens() {
    let mut cluster = ControlPlane::start(&["--dispatcher-heartbeat", "300ms"]);
    cluster.ok(&["network", "create", "--subnet", "192.168.200.0/24", "demonet"]);
    cluster.ok(&["network", "create", "other"]);
    let (join_token, admin_token) = (cluster.join_token(), cluster.admin_token());
    let agent = cluster.start_agent("node0", &join_token);
    assert!(wait_until(Duration::from_secs(10), || cluster
        .nodes()
        .first()
        .is_some_and(|n| n["Status"] == "Ready")));
    let networks = cluster.networks();
    let nodes: Vec<_> = cluster.nodes().iter().map(|n| n["ID"].clone()).collect();

    cluster.stop_manager(Signal::SIGTERM);
    cluster.start_manager();
    assert!(cluster.manager_stdout().is_empty(), "a later start creates no cluster");
    assert_eq!((cluster.join_token(), cluster.admin_token()), (join_token, admin_token));
    assert_eq!(cluster.networks(), networks);
    assert_eq!(cluster.nodes().iter().map(|n| n["ID"].clone()).collect::<Vec<_>>(), nodes);
    // The agent reconnects by itself and is Ready again.
    assert!(
        wait_until(Duration::from_secs(15), || cluster.nodes()[0]["Status"] == "Ready"),
        "{}",
        agent.log()
    );
    agent.assert_reconnected_with_its_certificate();
    assert!(!agent.log().contains("ERROR"), "the agent failed to build its node: {}", agent.log());
}

#[test]
fn kill_9_during_creates_loses_no_acknowledged_network() {
    let mut cluster = ControlPlane::start(&[]);
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for stream in 0..4 {
            let (cluster, acknowledged, stop) = (&cluster, &acknowledged, &stop);
            scope.spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let output = cluster.netctl(&["network", "create", &format!("s{stream}-n{i}")]);
                    if output.status.success() {
                        let id = String::from_utf8(output.stdout).unwrap().trim().to_string();
                        acknowledged.lock().unwrap().push(id);
                    }
                }
            });
        }
        assert!(wait_until(Duration::from_secs(60), || acknowledged.lock().unwrap().len() >= 40));
        let pid = nix::unistd::Pid::from_raw(cluster.manager_pid());
        nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    cluster.stop_manager(Signal::SIGKILL);
    cluster.start_manager();
    for i in 0..5 {
        cluster.ok(&["network", "create", &format!("after-{i}")]);
    }

    let networks = cluster.networks();
    let ids: BTreeSet<String> = networks.iter().map(|n| n["ID"].as_str().unwrap().to_string()).collect();
    let acknowledged = acknowledged.into_inner().unwrap();
    for id in &acknowledged {
        assert!(ids.contains(id), "acknowledged network {id} was lost");
    }
    let subnets: BTreeSet<_> = networks.iter().map(|n| n["Subnet"].to_string()).collect();
    let vnis: BTreeSet<_> = networks.iter().map(|n| n["VNI"].as_u64().unwrap()).collect();
    assert_eq!(subnets.len(), networks.len(), "a subnet was handed out twice");
    assert_eq!(vnis.len(), networks.len(), "a VNI was handed out twice");
    assert!(networks.len() >= acknowledged.len() + 6);
}
