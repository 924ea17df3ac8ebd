//! `--metrics-addr`: Prometheus text from the manager and every agent,
//! scraped over HTTP from outside the cluster.

use e2e::lab::Lab;
use e2e::wait_until;
use std::time::Duration;

/// `curl` of `http://ADDRESS:PORT/metrics` from the underlay.
fn scrape(lab: &Lab, host: usize, port: u16) -> String {
    let url = format!("http://{}:{port}/metrics", lab.hosts()[host].address);
    let output = lab.in_namespace(&lab.underlay().path(), "curl", &["-s", "--max-time", "3", &url]);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_manager_and_the_agents_serve_prometheus_text() {
    let lab =
        Lab::start_configured(2, &["--metrics-addr", "0.0.0.0:9090"], &["--metrics-addr", "0.0.0.0:9323"]);
    lab.create_network("metricnet", "10.32.0.0/24");
    lab.create_service("web", 2, "metricnet", &["sleep", "10000"]);
    let tasks = lab.wait_running("web", 2);
    // A name looked up inside a task: one query for its node's resolver.
    let lookup = lab.in_task(&tasks[0], "dig", &["+short", "+time=2", "+tries=1", "@127.0.0.11", "web"]);
    assert!(lookup.status.success() && !lookup.stdout.is_empty(), "{lookup:?}");
    let asked_on = lab.host_of(&tasks[0]);

    let manager = scrape(&lab, 0, 9090);
    for expected in [
        "# TYPE netctl_nodes gauge\n",
        "netctl_nodes{status=\"ready\"} 2\n",
        "netctl_tasks{state=\"running\"} 2\n",
        "netctl_rpc_duration_seconds_count{method=\"/netctl.v1.Dispatcher/Heartbeat\"}",
        "netctl_rpc_duration_seconds_bucket{method=\"/netctl.v1.Control/CreateService\",le=\"+Inf\"} 1\n",
        "netctl_watch_revision{node=\"",
        "netctl_watch_lag_revisions{node=\"",
    ] {
        assert!(manager.contains(expected), "manager metrics lack {expected:?}:\n{manager}");
    }

    // Every agent serves its own.
    for host in 0..2 {
        let agent = scrape(&lab, host, 9323);
        assert!(agent.contains("# TYPE netctl_agent_tasks gauge\n"), "node{host}:\n{agent}");
    }
    let agent_has = |needle: &str| scrape(&lab, asked_on, 9323).contains(needle);
    let counted =
        wait_until(Duration::from_secs(10), || agent_has("netctl_agent_tasks{state=\"running\"} 1\n"));
    let agent = scrape(&lab, asked_on, 9323);
    assert!(counted, "{agent}");
    for expected in [
        "# TYPE netctl_agent_reconcile_seconds histogram\n",
        "netctl_agent_sandbox_setup_seconds_count 1\n",
        "# TYPE netctl_agent_rules_written_total counter\n",
    ] {
        assert!(agent.contains(expected), "agent metrics lack {expected:?}:\n{agent}");
    }
    let queries: f64 = agent
        .lines()
        .find_map(|l| l.strip_prefix("netctl_agent_dns_queries_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(queries >= 1.0, "{agent}");
    let missing = lab.in_namespace(
        &lab.underlay().path(),
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{}:9090/other", lab.hosts()[0].address),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&missing.stdout), "404");
}
