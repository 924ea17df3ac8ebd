//! `netctl service` commands and their refusals.

use e2e::lab::Lab;

fn refused(lab: &Lab, args: &[&str], needle: &str) {
    e2e::assert_refused(&lab.netctl(args), args, needle);
}

#[test]
fn services_are_listed_inspected_scaled_and_removed() {
    let lab = Lab::start(2);
    lab.create_network("demonet", "192.168.200.0/24");
    let id = lab.create_service("demoservice", 2, "demonet", &["sleep", "10000"]);
    assert_eq!(id.trim().len(), 25);
    lab.wait_running("demoservice", 2);

    let table = lab.ok(&["service", "ls"]);
    let row = table.lines().find(|l| l.contains("demoservice")).unwrap();
    assert!(row.contains("replicated") && row.contains("2/2") && row.contains("sleep 10000"), "{row}");

    let inspected: serde_json::Value =
        serde_json::from_str(&lab.ok(&["service", "inspect", "demoservice"])).unwrap();
    assert_eq!(inspected[0]["Spec"]["Name"], "demoservice");
    assert_eq!(inspected[0]["Spec"]["Mode"]["Replicated"]["Replicas"], 2);
    assert_eq!(inspected[0]["Endpoint"]["VirtualIPs"][0]["Addr"], "192.168.200.2");

    let ps = lab.ok(&["service", "ps", "demoservice"]);
    let header: Vec<&str> =
        ps.lines().next().unwrap().split("   ").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(header, ["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"]);
    assert!(ps.contains("demoservice.1") && ps.contains("demoservice.2"), "{ps}");
    assert!(ps.contains("Running") && ps.contains("ago"), "{ps}");

    lab.ok(&["service", "scale", "demoservice=3"]);
    lab.wait_running("demoservice", 3);
    refused(&lab, &["network", "rm", "demonet"], "in use by service demoservice");
    assert_eq!(lab.ok(&["service", "rm", "demoservice"]).trim(), "demoservice");
    lab.ok(&["network", "rm", "demonet"]);
    assert!(!lab.ok(&["service", "ls"]).contains("demoservice"));
}

#[test]
fn service_logs_show_what_each_task_wrote() {
    let lab = Lab::start(2);
    lab.create_network("lognet", "192.168.201.0/24");
    lab.ok(&[
        "service",
        "create",
        "--replicas",
        "2",
        "--network",
        "lognet",
        "--name",
        "talker",
        "--env",
        "GREETING=hello",
        "sh",
        "-c",
        "echo \"$GREETING from $(hostname)\"; sleep 10000",
    ]);
    lab.wait_running("talker", 2);
    let complete = e2e::wait_until(std::time::Duration::from_secs(15), || {
        let logs = lab.ok(&["service", "logs", "talker"]);
        logs.contains("| hello from talker.1") && logs.contains("| hello from talker.2")
    });
    assert!(complete, "{}", lab.ok(&["service", "logs", "talker"]));
    let logs = lab.ok(&["service", "logs", "talker"]);
    assert!(logs.lines().all(|l| l.starts_with("talker.") && l.contains("@node")), "{logs}");
}

#[test]
fn bad_service_requests_change_nothing() {
    let lab = Lab::start(1);
    lab.create_network("tiny", "10.77.0.0/29");
    refused(&lab, &["service", "create", "--network", "nonet", "sleep", "1"], "network nonet not found");
    refused(&lab, &["service", "create", "--replicas", "-1", "sleep", "1"], "--replicas");
    refused(&lab, &["service", "create", "--replicas", "two", "sleep", "1"], "invalid value 'two'");
    refused(&lab, &["service", "create", "--name", "x"], "required");
    refused(&lab, &["service", "create", "--name", "x", ""], "needs a command");
    refused(
        &lab,
        &["service", "create", "--replicas", "5", "--network", "tiny", "sleep", "1"],
        "network tiny",
    );
    refused(&lab, &["service", "create", "--name", "bad name", "sleep", "1"], "invalid name");
    refused(&lab, &["service", "scale", "nosuch=2"], "service nosuch not found");
    refused(&lab, &["service", "scale", "x=-2"], "non-negative integer");
    refused(&lab, &["service", "rm", "nosuch"], "service nosuch not found");
    assert_eq!(lab.ok(&["service", "ls", "--format", "json"]).trim(), "");
}

#[test]
fn exec_runs_inside_a_task_sandbox_on_its_host() {
    let lab = Lab::start(2);
    lab.create_network("execnet", "192.168.202.0/24");
    lab.create_service("shell", 2, "execnet", &["sleep", "10000"]);
    let tasks = lab.wait_running("shell", 2);
    for task in &tasks {
        let here = lab.host_of(task);
        let name = task["Name"].as_str().unwrap();
        let output = lab.netctl_on(here, &["exec", name, "--", "ip", "-o", "addr", "show", "eth0"]);
        let shown = String::from_utf8_lossy(&output.stdout);
        let address = e2e::lab::endpoint_address(task, 0);
        assert!(
            output.status.success() && shown.contains(&address),
            "{shown} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let hostname = lab.netctl_on(here, &["exec", &task["ID"].as_str().unwrap()[..8], "--", "hostname"]);
        assert_eq!(String::from_utf8_lossy(&hostname.stdout).trim(), name);
        let failing = lab.netctl_on(here, &["exec", name, "--", "sh", "-c", "exit 3"]);
        assert_eq!(failing.status.code(), Some(3), "the command's exit code is passed on");
        let elsewhere = lab.netctl_on(1 - here, &["exec", name, "--", "true"]);
        e2e::assert_refused(&elsewhere, &["exec", name], &format!("runs on node{here}"));
    }
    e2e::assert_refused(
        &lab.netctl(&["exec", "nosuch.1", "--", "true"]),
        &["exec"],
        "no running task nosuch.1",
    );
}

#[test]
fn a_new_task_gets_no_address_a_removed_one_had_while_others_are_free() {
    let lab = Lab::start(1);
    lab.create_network("reusenet", "192.168.202.0/24");
    let vip = |service: &str| {
        let inspected: serde_json::Value =
            serde_json::from_str(&lab.ok(&["service", "inspect", service])).unwrap();
        inspected[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap().to_string()
    };
    let addresses = |service: &str, replicas: usize| {
        let tasks = lab.wait_running(service, replicas);
        let mut addresses: Vec<String> = tasks.iter().map(|t| e2e::lab::endpoint_address(t, 0)).collect();
        addresses.push(vip(service));
        addresses
    };
    lab.create_service("first", 2, "reusenet", &["sleep", "10000"]);
    let old = addresses("first", 2);
    lab.ok(&["service", "rm", "first"]);
    lab.create_service("second", 2, "reusenet", &["sleep", "10000"]);
    let new = addresses("second", 2);
    assert!(new.iter().all(|a| !old.contains(a)), "second {new:?} reuses an address of first {old:?}");
}
