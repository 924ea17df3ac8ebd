//! The install script run into a scratch root. (The Vagrantfile, the
//! scripts and the systemd units pass their own checkers in `make
//! check-deploy`.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

#[test]
fn the_install_script_installs_the_binary_units_and_agent_settings() {
    let root = tempfile::tempdir().unwrap();
    let manager_root = root.path().join("node0");
    let worker_root = root.path().join("node1");
    let binary = e2e::netctl_bin();
    let binary = binary.to_str().unwrap();
    run(
        "bash",
        &[
            "deploy/install.sh",
            "--role",
            "manager",
            "--advertise-addr",
            "192.168.10.6",
            "--binary",
            binary,
            "--root",
            manager_root.to_str().unwrap(),
            "--no-start",
        ],
    );
    run(
        "bash",
        &[
            "deploy/install.sh",
            "--role",
            "worker",
            "--advertise-addr",
            "192.168.10.7",
            "--manager",
            "http://192.168.10.6:4243",
            "--join-token",
            "NETCTL-JOIN-1-x-y",
            "--binary",
            binary,
            "--root",
            worker_root.to_str().unwrap(),
            "--no-start",
        ],
    );
    for (node, units) in [(&manager_root, 2), (&worker_root, 1)] {
        let installed = node.join("usr/local/bin/netctl");
        assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
        let version = Command::new(&installed).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&version.stdout).starts_with("netctl "));
        let unit_count = std::fs::read_dir(node.join("etc/systemd/system")).unwrap().count();
        assert_eq!(unit_count, units);
        for secret in ["etc/netctl/agent.env", "etc/netctl/join-token"] {
            assert_eq!(
                std::fs::metadata(node.join(secret)).unwrap().permissions().mode() & 0o777,
                0o600,
                "{secret}: the join token is a secret"
            );
        }
    }
    let worker_env = std::fs::read_to_string(worker_root.join("etc/netctl/agent.env")).unwrap();
    assert!(worker_env.contains("NETCTL_MANAGER=http://192.168.10.6:4243"));
    let worker_token = std::fs::read_to_string(worker_root.join("etc/netctl/join-token")).unwrap();
    assert_eq!(worker_token.trim(), "NETCTL-JOIN-1-x-y");
    assert!(!worker_env.contains("NETCTL-JOIN-1-x-y"), "the token stays out of the environment");
    let unit = std::fs::read_to_string(worker_root.join("etc/systemd/system/netctl-agent.service")).unwrap();
    assert!(unit.contains("--join-token-file /etc/netctl/join-token"), "{unit}");
    assert!(worker_env.contains("NETCTL_ADVERTISE_ADDR=192.168.10.7"));

    let refused = Command::new("bash")
        .args(["deploy/install.sh", "--role", "worker", "--advertise-addr", "1.2.3.4", "--no-start"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("a worker needs --manager"));
}
