//! What is broken by hand is repaired by the next reconcile pass, and what
//! is not ours is reported rather than taken over.

use e2e::lab::{endpoint_address, Lab};
use e2e::wait_until;
use serde_json::Value;
use std::time::Duration;

fn ping(lab: &Lab, from: &Value, to: &Value) -> bool {
    lab.pings(from, &endpoint_address(to, 0))
}

#[test]
fn deleted_links_and_namespaces_are_recreated() {
    let lab = Lab::start(2);
    let net = lab.create_network("fixnet", "192.168.90.0/24");
    lab.create_service("fix", 2, "fixnet", &["sleep", "10000"]);
    let tasks = lab.wait_running("fix", 2);
    let (first, second) = (&tasks[0], &tasks[1]);
    assert!(ping(&lab, first, second));
    let host = lab.host_of(first);
    let overlay = lab.overlay_path(host, &net);

    // vxlan0 deleted by hand.
    assert!(lab.in_namespace(&overlay, "ip", &["link", "del", "vxlan0"]).status.success());
    assert!(wait_until(Duration::from_secs(15), || ping(&lab, first, second)), "vxlan0 not repaired");

    // The whole overlay namespace deleted by hand: it is rebuilt, and the
    // sandbox gets its overlay leg back.
    let _ = nix::mount::umount2(&overlay, nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_file(&overlay).unwrap();
    assert!(wait_until(Duration::from_secs(20), || ping(&lab, first, second)), "overlay not repaired");
    assert_eq!(lab.running_tasks("fix").len(), 2);
}

#[test]
fn a_deleted_sandbox_ends_its_task_and_a_replacement_runs() {
    let lab = Lab::start(1);
    lab.create_network("sbxnet", "192.168.91.0/24");
    lab.ok(&["service", "create", "--network", "sbxnet", "--name", "sbx", "sleep", "10000"]);
    let task = lab.wait_running("sbx", 1).remove(0);
    let sandbox = lab.sandbox_path(&task);
    let _ = nix::mount::umount2(&sandbox, nix::mount::MntFlags::MNT_DETACH);
    std::fs::remove_file(&sandbox).unwrap();
    let replaced = wait_until(Duration::from_secs(30), || {
        let running = lab.running_tasks("sbx");
        running.len() == 1 && running[0]["ID"] != task["ID"]
    });
    assert!(replaced, "{:#?}", lab.tasks("sbx"));
    let old = lab.tasks("sbx").into_iter().find(|t| t["ID"] == task["ID"]).unwrap();
    assert_eq!(old["Error"], "the task's sandbox namespace was removed");
    // Its process is stopped too, though no namespace file leads to it.
    let sandbox = sandbox.file_name().unwrap().to_string_lossy().into_owned();
    let shim_of_old = format!("/tasks/{sandbox}");
    let gone =
        wait_until(Duration::from_secs(30), || !running_commands().iter().any(|c| c.contains(&shim_of_old)));
    assert!(gone, "the task whose sandbox was removed still runs");
}

/// The command lines of every process on the machine.
fn running_commands() -> Vec<String> {
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    pids.filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .collect()
}

#[test]
fn a_foreign_docker_gwbridge_is_reported_and_the_overlay_still_works() {
    let mut lab = Lab::start(1);
    lab.stop_agent(0, nix::sys::signal::Signal::SIGKILL);
    let _ = lab.on_host(0, "ip", &["link", "del", "docker_gwbridge"]);
    assert!(lab.on_host(0, "ip", &["link", "add", "docker_gwbridge", "type", "bridge"]).status.success());
    lab.start_agent(0);
    lab.create_network("gwnet", "192.168.92.0/24");
    lab.ok(&["service", "create", "--replicas", "2", "--network", "gwnet", "--name", "gw", "sleep", "10000"]);
    let tasks = lab.wait_running("gw", 2);
    assert!(ping(&lab, &tasks[0], &tasks[1]), "the overlay works without the gateway bridge");
    // Every running task says why it has no egress leg.
    assert!(wait_until(Duration::from_secs(10), || lab.running_tasks("gw").iter().all(|t| t["Error"]
        .as_str()
        .unwrap()
        .contains("docker_gwbridge exists and was not made by netctl"))));
    // Said once when it begins, not at every pass (every 2 s at most).
    std::thread::sleep(Duration::from_secs(5));
    let said = lab.agent_log(0).matches("was not made by netctl").count();
    assert_eq!(said, 1, "{}", lab.agent_log(0));
}
