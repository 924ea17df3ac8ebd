//! `netctl service update` and `netctl service rollback`: tasks replaced a
//! batch at a time, the routing mesh answering throughout, the failure
//! action, and the update status.

use e2e::lab::Lab;
use e2e::wait_until;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

/// The HTTP server tasks run: answers with its host name (the task name).
const HOSTNAME_HTTP: &str = env!("CARGO_BIN_EXE_hostname-http");

/// `service inspect SERVICE` as JSON.
fn inspect(lab: &Lab, service: &str) -> serde_json::Value {
    let inspected: serde_json::Value =
        serde_json::from_str(&lab.ok(&["service", "inspect", service])).unwrap();
    inspected[0].clone()
}

/// Waits until the update of `service` is in `state`.
fn wait_update(lab: &Lab, service: &str, state: &str) -> serde_json::Value {
    let reached =
        wait_until(Duration::from_secs(60), || inspect(lab, service)["UpdateStatus"]["State"] == state);
    assert!(
        reached,
        "update of {service} not {state}: {:#}\n{:#?}",
        inspect(lab, service),
        lab.tasks(service)
    );
    inspect(lab, service)
}

fn running_ids(lab: &Lab, service: &str) -> BTreeSet<String> {
    lab.running_tasks(service).iter().map(|t| t["ID"].as_str().unwrap().to_string()).collect()
}

/// What the task `name` on host `host` has in its environment for `key`.
fn task_env(lab: &Lab, host: usize, name: &str, key: &str) -> String {
    let output = lab.netctl_on(host, &["exec", name, "--", "printenv", key]);
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Python asking `host:port` `count` times, 20 times a second, each on a
/// new connection: one line per answer, the replica's name, or ERROR with
/// the time, the client's port and the step that failed.
fn request_loop(host: &str, port: u16, count: usize) -> String {
    format!(
        r#"import socket, time
for i in range({count}):
    step, local = "connect", None
    try:
        with socket.create_connection(("{host}", {port}), timeout=2) as s:
            local = s.getsockname()[1]
            step = "answer"
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
                if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1]:
                    break
        print(answer.split(b"\r\n\r\n", 1)[1].decode(), flush=True)
    except Exception as e:
        print("ERROR", "%.3f" % time.time(), "port", local, step, repr(e), flush=True)
    time.sleep(0.05)
"#
    )
}

#[test]
fn an_env_update_replaces_tasks_one_at_a_time_and_the_mesh_loses_no_request() {
    let lab = Lab::start(3);
    lab.create_network("updnet", "10.25.0.0/24");
    let create = ["service", "create", "--replicas", "2", "--network", "updnet", "--name", "web"];
    lab.ok(&[&create[..], &["--publish", "8080:80", "--env", "VERSION=1", HOSTNAME_HTTP]].concat());
    let before = running_ids(&lab, "web");
    lab.wait_running("web", 2);
    let url = format!("http://{}:8080/", lab.hosts()[0].address);
    let ask = || {
        let output = lab.in_namespace(&lab.underlay().path(), "curl", &["-s", "--max-time", "2", &url]);
        String::from_utf8_lossy(&output.stdout).starts_with("web.")
    };
    assert!(wait_until(Duration::from_secs(10), ask), "the published port does not answer");

    let client = lab
        .underlay()
        .command("python3")
        .args(["-c", &request_loop(&lab.hosts()[0].address.to_string(), 8080, 400)])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_secs(1));
    lab.ok(&["service", "update", "--env-add", "VERSION=2", "web"]);
    let updated = wait_update(&lab, "web", "completed");
    let answers = client.wait_with_output().expect("the request loop");
    let answers = String::from_utf8_lossy(&answers.stdout);
    let failed: Vec<&str> = answers.lines().filter(|l| !l.starts_with("web.")).collect();
    assert_eq!(answers.lines().count(), 400, "{answers}");
    assert!(failed.is_empty(), "requests failed during the update: {failed:?}");

    assert!(updated["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].to_string().contains("VERSION=2"));
    assert!(updated["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Env"]
        .to_string()
        .contains("VERSION=1"));
    let tasks = lab.wait_running("web", 2);
    let after = running_ids(&lab, "web");
    assert!(before.is_disjoint(&after), "every task was replaced: {before:?} {after:?}");
    for task in &tasks {
        assert_eq!(task_env(&lab, lab.host_of(task), task["Name"].as_str().unwrap(), "VERSION"), "2");
    }

    lab.ok(&["service", "rollback", "web"]);
    let back = wait_update(&lab, "web", "rollback_completed");
    assert!(back["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].to_string().contains("VERSION=1"));
    for task in &lab.wait_running("web", 2) {
        assert_eq!(task_env(&lab, lab.host_of(task), task["Name"].as_str().unwrap(), "VERSION"), "1");
    }
}

#[test]
fn a_failing_update_rolls_back_or_pauses_as_its_failure_action_says() {
    let lab = Lab::start(2);
    lab.create_network("failnet", "10.26.0.0/24");
    // Its tasks fail when MODE=bad.
    let script = "test \"$MODE\" != bad || exit 1; exec sleep 10000";
    let create = ["service", "create", "--replicas", "2", "--network", "failnet", "--name", "picky"];
    lab.ok(&[&create[..], &["--env", "MODE=good", "sh", "-c", script]].concat());
    lab.wait_running("picky", 2);

    let update =
        ["service", "update", "--env-add", "MODE=bad", "--update-failure-action", "rollback", "picky"];
    lab.ok(&update);
    let back = wait_update(&lab, "picky", "rollback_completed");
    assert!(
        back["UpdateStatus"]["Message"].as_str().unwrap().starts_with("update rolled back: task "),
        "{back:#}"
    );
    assert!(back["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].to_string().contains("MODE=good"));
    assert_eq!(back["Spec"]["UpdateConfig"]["FailureAction"], "pause", "the rolled-back spec's own settings");
    lab.wait_running("picky", 2);

    // Watched long enough that a failure reported late under load still
    // falls within the first batch.
    lab.ok(&["service", "update", "--env-add", "MODE=bad", "--update-monitor", "30s", "picky"]);
    let paused = wait_update(&lab, "picky", "paused");
    assert!(
        paused["UpdateStatus"]["Message"].as_str().unwrap().contains("exited with status 1"),
        "{paused:#}"
    );
    // Paused after one batch: the other task still runs the old spec.
    let reached = wait_until(Duration::from_secs(20), || lab.running_tasks("picky").len() == 1);
    assert!(reached, "{:#?}", lab.tasks("picky"));
}

#[test]
fn bad_updates_change_nothing() {
    let lab = Lab::start(1);
    lab.create_network("badupd", "10.27.0.0/24");
    lab.create_service("steady", 1, "badupd", &["sleep", "10000"]);
    lab.create_global_service("all", "badupd", &["sleep", "10000"]);
    let before = inspect(&lab, "steady");
    for (args, needle) in [
        (&["service", "update", "--env-add", "A=1", "nosuch"][..], "service nosuch not found"),
        (&["service", "rollback", "steady"][..], "service steady has no previous spec to roll back to"),
        (
            &["service", "update", "--update-failure-action", "retry", "steady"][..],
            "invalid update failure action \"retry\"",
        ),
        (&["service", "update", "--replicas", "3", "all"][..], "service all is global"),
        (&["service", "update", "--env-add", "novalue", "steady"][..], "expected key=value"),
    ] {
        e2e::assert_refused(&lab.netctl(args), args, needle);
    }
    assert_eq!(inspect(&lab, "steady"), before);
}

#[test]
fn published_ports_and_networks_are_added_and_removed_by_rolling_updates() {
    let lab = Lab::start(2);
    lab.create_network("pubnet", "10.28.0.0/24");
    lab.create_network("extranet", "10.29.0.0/24");
    let create = ["service", "create", "--replicas", "2", "--network", "pubnet", "--name", "web"];
    lab.ok(&[&create[..], &["--publish", "8080:80", HOSTNAME_HTTP]].concat());
    lab.wait_running("web", 2);
    let vip_before = inspect(&lab, "web")["Endpoint"]["VirtualIPs"].clone();
    let answers = |port: u16| {
        (0..2).all(|i| {
            let url = format!("http://{}:{port}/", lab.hosts()[i].address);
            let output = lab.in_namespace(&lab.underlay().path(), "curl", &["-s", "--max-time", "2", &url]);
            String::from_utf8_lossy(&output.stdout).starts_with("web.")
        })
    };
    let closed = |port: u16| {
        (0..2).all(|i| {
            let url = format!("http://{}:{port}/", lab.hosts()[i].address);
            !lab.in_namespace(&lab.underlay().path(), "curl", &["-s", "--max-time", "2", &url])
                .status
                .success()
        })
    };
    let fast = ["--update-parallelism", "0", "--update-monitor", "1s"];
    lab.ok(&[&["service", "update", "--publish-add", "9090:80"][..], &fast, &["web"]].concat());
    wait_update(&lab, "web", "completed");
    assert!(
        wait_until(Duration::from_secs(10), || answers(9090) && answers(8080)),
        "9090 and 8080 on every node"
    );

    lab.ok(&["service", "update", "--publish-rm", "8080", "web"]);
    wait_update(&lab, "web", "completed");
    assert!(wait_until(Duration::from_secs(10), || closed(8080) && answers(9090)), "8080 closed everywhere");

    lab.ok(&["service", "update", "--network-add", "extranet", "--network-rm", "pubnet", "web"]);
    wait_update(&lab, "web", "completed");
    let tasks = lab.wait_running("web", 2);
    let extranet = lab.network_id("extranet");
    for task in &tasks {
        let networks: Vec<&str> =
            task["Endpoints"].as_array().unwrap().iter().map(|e| e["NetworkID"].as_str().unwrap()).collect();
        assert_eq!(networks.len(), 2, "ingress and extranet: {task:#}");
        assert_eq!(networks[1], extranet);
    }
    for (args, needle) in [
        (
            &["service", "update", "--network-rm", "extranet", "web"][..],
            "network extranet is the only network of service web, which publishes ports",
        ),
        (
            &["service", "update", "--network-add", "extranet", "web"][..],
            "service web is already attached to network extranet",
        ),
        (
            &["service", "update", "--network-rm", "pubnet", "web"][..],
            "service web is not attached to network pubnet",
        ),
        (
            &["service", "update", "--publish-rm", "7070", "web"][..],
            "service web does not publish port 7070/tcp",
        ),
        (&["service", "update", "--network-add", "ingress", "web"][..], "attached through --publish"),
    ] {
        e2e::assert_refused(&lab.netctl(args), args, needle);
    }

    // Back to pubnet, with its VIP kept for it.
    lab.ok(&["service", "rollback", "web"]);
    let back = wait_update(&lab, "web", "rollback_completed");
    assert_eq!(back["Endpoint"]["VirtualIPs"], vip_before);
}
