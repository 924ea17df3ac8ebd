//! Agents join with the join token, keep their identity, send heartbeats,
//! and watch their node's desired state.

use e2e::{wait_until, ControlPlane};
use nix::sys::signal::Signal;
use std::time::Duration;

fn node_status(cluster: &ControlPlane, hostname: &str) -> Option<String> {
    cluster
        .nodes()
        .into_iter()
        .find(|n| n["Hostname"] == hostname)
        .map(|n| n["Status"].as_str().unwrap().to_string())
}

#[test]
fn a_good_token_joins_and_a_bad_one_is_refused() {
    let cluster = ControlPlane::start(&[]);
    // Each with a state and run dir of its own, as two hosts would have.
    let malformed = cluster.start_agent("intruder-malformed", "NETCTL-JOIN-1-wrong");
    let wrong_secret = e2e::with_wrong_secret(&cluster.join_token());
    let wrong = cluster.start_agent("intruder-wrong", &wrong_secret);
    for (mut bad, expected) in [
        (malformed, "join token: the token is not NETCTL-<KIND>-1-<CA digest>-<secret>"),
        (wrong, "join token presented is not valid"),
    ] {
        assert!(
            wait_until(Duration::from_secs(10), || bad.try_exit_code().is_some()),
            "a refused agent must exit: {}",
            bad.log()
        );
        assert_eq!(bad.try_exit_code(), Some(1));
        assert!(bad.log().contains(expected), "{}", bad.log());
        assert!(!bad.log().contains(&wrong_secret), "the token stays out of the log");
    }

    let _agent = cluster.start_agent("node0", &cluster.join_token());
    assert!(
        wait_until(Duration::from_secs(10), || node_status(&cluster, "node0").as_deref() == Some("Ready"))
    );
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 1, "the refused agent left no node: {nodes:?}");
    assert_eq!(nodes[0]["Address"], "127.0.0.1");
    assert_eq!(nodes[0]["Availability"], "Active");
    let table = cluster.ok(&["node", "ls"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("MANAGER STATUS"), "{table}");
}

#[test]
fn a_restarted_agent_rejoins_as_the_same_node_and_gets_its_state() {
    let cluster = ControlPlane::start(&[]);
    let first = cluster.start_agent("node0", &cluster.join_token());
    assert!(wait_until(Duration::from_secs(10), || first.log().contains("desired state received")));
    let id = cluster.nodes()[0]["ID"].clone();
    drop(first);

    let second = cluster.start_agent("node0", &cluster.join_token());
    assert!(wait_until(Duration::from_secs(10), || second
        .log()
        .contains("connected with the node certificate")));
    assert!(!second.log().contains("with the join token"), "a restart needs no join token: {}", second.log());
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["ID"], id);
}

#[test]
fn a_node_whose_heartbeats_stop_goes_down() {
    let cluster = ControlPlane::start(&["--dispatcher-heartbeat", "300ms"]);
    let mut agent = cluster.start_agent("node0", &cluster.join_token());
    assert!(
        wait_until(Duration::from_secs(10), || node_status(&cluster, "node0").as_deref() == Some("Ready"))
    );
    // Still Ready well after three intervals: heartbeats keep it alive.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node_status(&cluster, "node0").as_deref(), Some("Ready"));
    agent.stop(Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || node_status(&cluster, "node0").as_deref() == Some("Down")),
        "node stayed Ready: {:?}",
        cluster.nodes()
    );
}
