//! `netctl lab up | ls | exec | down` as a newcomer uses it.

use e2e::{netctl_bin, wait_until};
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `netctl ARGS` with labs under `root`.
fn netctl(root: &std::path::Path, args: &[&str]) -> Output {
    Command::new(netctl_bin()).args(args).env("NETCTL_LAB_ROOT", root).output().expect("run netctl")
}

fn ok(root: &std::path::Path, args: &[&str]) -> String {
    let output = netctl(root, args);
    assert!(output.status.success(), "netctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Removes the lab even when the test fails.
struct LabGuard<'a>(&'a std::path::Path, &'a str);

impl Drop for LabGuard<'_> {
    fn drop(&mut self) {
        let _ = netctl(self.0, &["lab", "down", "--name", self.1]);
    }
}

#[test]
fn lab_up_exec_down_leaves_nothing_behind() {
    let root = tempfile::Builder::new().prefix("netctl-labcmd-").tempdir().unwrap();
    let name = e2e::netns::unique_prefix();
    let _guard = LabGuard(root.path(), &name);
    let up = ok(root.path(), &["lab", "up", "--nodes", "2", "--name", &name]);
    assert!(up.contains("node1  192.168.10.7"), "{up}");
    assert!(ok(root.path(), &["lab", "up", "--nodes", "2", "--name", &name]).contains("was already up"));
    assert!(ok(root.path(), &["lab", "ls"]).lines().any(|l| l.starts_with(&name) && l.contains(" up ")));

    let on = |node: &str, args: &[&str]| {
        let mut full = vec!["lab", "exec", "--name", &name, node, "--"];
        full.extend_from_slice(args);
        ok(root.path(), &full)
    };
    on("node0", &["netctl", "network", "create", "--subnet", "192.168.200.0/24", "demonet"]);
    on(
        "node0",
        &[
            "netctl",
            "service",
            "create",
            "--replicas",
            "2",
            "--network",
            "demonet",
            "--name",
            "demo",
            "sleep",
            "10000",
        ],
    );
    let running = wait_until(Duration::from_secs(30), || {
        on("node0", &["netctl", "service", "ps", "--format", "json", "demo"])
            .matches("\"CurrentState\":\"running\"")
            .count()
            == 2
    });
    assert!(running);
    let tasks = e2e::json_lines(&on("node0", &["netctl", "service", "ps", "--format", "json", "demo"]));
    let here = tasks.iter().find(|t| t["Node"] == "node1").expect("a task on node1");
    let there = tasks.iter().find(|t| t["Node"] == "node0").expect("a task on node0");
    let target = e2e::lab::endpoint_address(there, 0);
    let pinged = on(
        "node1",
        &["netctl", "exec", here["Name"].as_str().unwrap(), "--", "ping", "-c", "1", "-W", "2", &target],
    );
    assert!(pinged.contains("1 received"), "{pinged}");
    let failing = netctl(root.path(), &["lab", "exec", "--name", &name, "node0", "--", "sh", "-c", "exit 4"]);
    assert_eq!(failing.status.code(), Some(4));

    ok(root.path(), &["lab", "down", "--name", &name]);
    let root_path = root.path().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root_path), "mounts left under {root_path}");
    assert!(!root.path().join(&name).exists());
    let survivors = std::fs::read_dir("/proc").unwrap().flatten().filter(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&root_path))
    });
    assert_eq!(survivors.count(), 0, "processes of the lab survived");
}

#[test]
fn make_demo_runs_both_walkthroughs_and_lab_down_cleans_up() {
    let root = tempfile::Builder::new().prefix("netctl-demo-").tempdir().unwrap();
    let name = e2e::netns::unique_prefix();
    let _guard = LabGuard(root.path(), &name);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("NETCTL_LAB_ROOT", root.path())
        .env("NETCTL_BIN", netctl_bin())
        .env("DEMO_LAB", &name)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}\n{}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "vxlan id 4097",
        "dstport 4789",
        "nolearning",
        "192.168.200.1/24",
        "dst 192.168.10.",
        "default via 172.18.0.1 dev eth1",
        "3 received",
        "hello from web.",
        "DNAT --to-destination 192.168.10.7:8080",
        "-A NETCTL-MESH-PEERS -s 192.168.10.6/32 -j NETCTL-MESH-HERE",
        "--mode random --probability",
        "mesh_ingress direct-action",
        "here (tc fast path) -> 172.18.0.",
        "lab down",
    ] {
        assert!(shown.contains(expected), "the demo does not show {expected:?}:\n{shown}");
    }
    ok(root.path(), &["lab", "down", "--name", &name]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&root.path().display().to_string()), "namespaces left mounted");
    assert!(!root.path().join(&name).exists());
}
