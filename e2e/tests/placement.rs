//! Where tasks run: node availability (drain, pause), node labels and
//! placement constraints, global services.

use e2e::lab::Lab;
use e2e::wait_until;
use std::collections::BTreeSet;
use std::time::Duration;

/// The HTTP server tasks run: answers with its host name (the task name).
const HOSTNAME_HTTP: &str = env!("CARGO_BIN_EXE_hostname-http");

fn refused(lab: &Lab, args: &[&str], needle: &str) {
    e2e::assert_refused(&lab.netctl(args), args, needle);
}

/// The hosts (lab indexes) running tasks of `service` that should run and do.
fn hosts_running(lab: &Lab, service: &str) -> Vec<usize> {
    let mut hosts: Vec<usize> = lab.running_tasks(service).iter().map(|t| lab.host_of(t)).collect();
    hosts.sort();
    hosts
}

/// Waits until `service`'s running tasks are on exactly `hosts` (sorted,
/// one entry per task).
fn wait_placed(lab: &Lab, service: &str, hosts: &[usize]) {
    let placed = wait_until(Duration::from_secs(60), || {
        hosts_running(lab, service) == hosts
            && lab.tasks(service).iter().filter(|t| t["DesiredState"] == "running").count() == hosts.len()
    });
    assert!(placed, "{service} not on hosts {hosts:?}: {:#?}", lab.tasks(service));
}

/// `node inspect NODE` as JSON.
fn node_spec(lab: &Lab, node: &str) -> serde_json::Value {
    let inspected: serde_json::Value = serde_json::from_str(&lab.ok(&["node", "inspect", node])).unwrap();
    inspected[0]["Spec"].clone()
}

/// What the published port 8080 of host `i` answers, from the underlay.
fn ask(lab: &Lab, i: usize) -> String {
    let url = format!("http://{}:8080/", lab.hosts()[i].address);
    let output = lab.in_namespace(&lab.underlay().path(), "curl", &["-s", "--max-time", "3", &url]);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_drained_node_hands_its_tasks_over_and_its_published_port_still_answers() {
    let lab = Lab::start(3);
    lab.create_network("drainnet", "10.21.0.0/24");
    let create = ["service", "create", "--replicas", "3", "--network", "drainnet", "--name", "web"];
    lab.ok(&[&create[..], &["--publish", "8080:80", HOSTNAME_HTTP]].concat());
    wait_placed(&lab, "web", &[0, 1, 2]);

    lab.ok(&["node", "update", "--availability", "drain", "node1"]);
    assert_eq!(node_spec(&lab, "node1")["Availability"], "drain");
    let moved = wait_until(Duration::from_secs(60), || {
        let hosts = hosts_running(&lab, "web");
        hosts.len() == 3 && !hosts.contains(&1)
    });
    assert!(moved, "tasks still on node1 or not replaced: {:#?}", lab.tasks("web"));
    let drained = lab.tasks("web").into_iter().find(|t| lab.host_of(t) == 1).unwrap();
    assert_eq!(
        (drained["DesiredState"].as_str(), drained["Error"].as_str()),
        (Some("shutdown"), Some("node is drained"))
    );
    // The drained node still answers through the mesh.
    let answered = wait_until(Duration::from_secs(10), || ask(&lab, 1).starts_with("web."));
    assert!(answered, "node1's published port: {:?}", ask(&lab, 1));

    // Paused: node2 keeps its tasks and gets no new one; scaling up goes to node0.
    lab.ok(&["node", "update", "--availability", "pause", "node2"]);
    let on_node2 = hosts_running(&lab, "web").iter().filter(|h| **h == 2).count();
    lab.ok(&["service", "scale", "web=4"]);
    lab.wait_running("web", 4);
    let hosts = hosts_running(&lab, "web");
    assert_eq!(hosts.iter().filter(|h| **h == 2).count(), on_node2, "{hosts:?}");
    assert!(!hosts.contains(&1), "{hosts:?}");
    let listed = lab.ok(&["node", "ls"]);
    assert!(listed.contains("Drain") && listed.contains("Pause"), "{listed}");
}

#[test]
fn a_global_service_follows_nodes_joining_and_draining() {
    let mut lab = Lab::start_some(3, 2);
    lab.create_network("globalnet", "10.22.0.0/24");
    lab.create_global_service("agentd", "globalnet", &["sleep", "10000"]);
    wait_placed(&lab, "agentd", &[0, 1]);

    lab.start_agent(2);
    wait_placed(&lab, "agentd", &[0, 1, 2]);
    let names: BTreeSet<String> =
        lab.running_tasks("agentd").iter().map(|t| t["Name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 3, "one task name per node: {names:?}");

    lab.ok(&["node", "update", "--availability", "drain", "node0"]);
    wait_placed(&lab, "agentd", &[1, 2]);
    let row = lab.ok(&["service", "ls"]).lines().find(|l| l.contains("agentd")).unwrap().to_string();
    assert!(row.contains("global") && row.contains("2/2"), "{row}");
    let inspected: serde_json::Value =
        serde_json::from_str(&lab.ok(&["service", "inspect", "agentd"])).unwrap();
    assert_eq!(inspected[0]["Spec"]["Mode"], serde_json::json!({ "Global": {} }));
}

#[test]
fn constraints_place_tasks_where_they_hold_and_tasks_wait_with_the_reason_otherwise() {
    let lab = Lab::start(2);
    lab.create_network("zonenet", "10.23.0.0/24");
    lab.ok(&["node", "update", "--label-add", "zone=a", "node0"]);
    assert_eq!(node_spec(&lab, "node0")["Labels"], serde_json::json!({ "zone": "a" }));
    let create = ["service", "create", "--replicas", "2", "--network", "zonenet", "--name", "zoned"];
    lab.ok(&[&create[..], &["--constraint", "node.labels.zone==b", "sleep", "10000"]].concat());
    let waiting = wait_until(Duration::from_secs(20), || {
        let tasks = lab.tasks("zoned");
        tasks.len() == 2
            && tasks.iter().all(|t| {
                t["CurrentState"] == "pending"
                    && t["Error"] == "no suitable node (constraint node.labels.zone==b)"
            })
    });
    assert!(waiting, "{:#?}", lab.tasks("zoned"));
    let table = lab.ok(&["service", "ps", "zoned"]);
    assert!(
        table.contains("Pending") && table.contains("no suitable node (constraint node.labels.zone==b)"),
        "{table}"
    );

    lab.ok(&["node", "update", "--label-add", "zone=b", "node1"]);
    wait_placed(&lab, "zoned", &[1, 1]);
    let inspected: serde_json::Value =
        serde_json::from_str(&lab.ok(&["service", "inspect", "zoned"])).unwrap();
    assert_eq!(inspected[0]["Spec"]["TaskTemplate"]["Placement"]["Constraints"][0], "node.labels.zone==b");

    // Taking the label away moves the tasks off; they wait again.
    lab.ok(&["node", "update", "--label-rm", "zone", "node1"]);
    let waiting = wait_until(Duration::from_secs(20), || {
        let wanted: Vec<_> =
            lab.tasks("zoned").into_iter().filter(|t| t["DesiredState"] == "running").collect();
        wanted.len() == 2 && wanted.iter().all(|t| t["CurrentState"] == "pending")
    });
    assert!(waiting, "{:#?}", lab.tasks("zoned"));
}

#[test]
fn bad_placement_requests_change_nothing() {
    let lab = Lab::start(1);
    lab.create_network("badnet", "10.24.0.0/24");
    lab.create_global_service("everywhere", "badnet", &["sleep", "10000"]);
    let nodes_before = lab.ok(&["node", "inspect", "node0"]);
    for (args, needle) in [
        (
            &["node", "update", "--availability", "sideways", "node0"][..],
            "invalid availability \"sideways\": expected active, pause or drain",
        ),
        (&["node", "update", "--availability", "drain", "nosuchnode"][..], "node nosuchnode not found"),
        (&["node", "update", "--label-add", "bad key=x", "node0"][..], "invalid label key \"bad key\""),
        (&["node", "update", "--label-rm", "zone", "node0"][..], "has no label \"zone\" to remove"),
        (&["node", "update", "node0"][..], "nothing to update"),
        (
            &[
                "service",
                "create",
                "--mode",
                "global",
                "--replicas",
                "2",
                "--network",
                "badnet",
                "sleep",
                "1",
            ][..],
            "--replicas can only be used with replicated mode",
        ),
        (&["service", "create", "--mode", "sideways", "sleep", "1"][..], "invalid mode \"sideways\""),
        (
            &["service", "create", "--constraint", "node.hostname=node0", "--name", "x", "sleep", "1"][..],
            "invalid constraint \"node.hostname=node0\": expected KEY==VALUE or KEY!=VALUE",
        ),
        (
            &["service", "create", "--constraint", "node.lables.zone==a", "--name", "x", "sleep", "1"][..],
            "unknown key \"node.lables.zone\"",
        ),
        (&["service", "scale", "everywhere=3"][..], "service everywhere is global"),
    ] {
        refused(&lab, args, needle);
    }
    assert_eq!(lab.ok(&["node", "inspect", "node0"]), nodes_before);
    let services = lab.ok(&["service", "ls"]);
    assert_eq!(services.lines().count(), 2, "only the header and everywhere: {services}");
}
