//! What a second task, a hostile task, a chatty task or a large number does
//! to a node: gateway addresses, confinement, process tracking, bounded
//! logs, what the agent may delete, and where failing tasks go.

use e2e::lab::{Lab, UNDERLAY_ADDRESS};
use e2e::{wait_until, Daemon};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An HTTP server in the underlay that answers with the client's address.
const PEER_ADDRESS_SERVER: &str = "
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = self.client_address[0].encode()
        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
http.server.HTTPServer(('0.0.0.0', 8000), H).serve_forever()
";

/// The address and MAC of `eth1` (the gateway-bridge leg) of a task.
fn gateway_leg(lab: &Lab, task: &Value) -> (String, String) {
    let address = stdout(&lab.in_task(task, "ip", &["-o", "-4", "addr", "show", "eth1"]));
    let address = address.split_whitespace().nth(3).unwrap_or_default().to_string();
    let link = stdout(&lab.in_task(task, "ip", &["-o", "link", "show", "eth1"]));
    let mac =
        link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap_or_default().to_string();
    (address, mac)
}

/// What the underlay server saw as the address of a request from `task`.
fn egress_address(lab: &Lab, task: &Value) -> String {
    let url = format!("http://{UNDERLAY_ADDRESS}:8000/");
    stdout(&lab.in_task(task, "curl", &["-s", "--max-time", "3", &url]))
}

fn task_ids(tasks: &[Value]) -> BTreeSet<String> {
    tasks.iter().map(|t| t["ID"].as_str().unwrap().to_string()).collect()
}

#[test]
fn ten_tasks_on_one_node_get_their_own_gateway_address_and_egress() {
    let mut lab = Lab::start(1);
    lab.create_network("demonet", "192.168.200.0/24");
    lab.create_service("ten", 10, "demonet", &["sleep", "100000"]);
    let tasks = lab.wait_running("ten", 10);
    let log = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let mut server = lab.underlay().command("python3");
    server.args(["-c", PEER_ADDRESS_SERVER]);
    let _server = Daemon::spawn(server, log.to_path_buf(), None);
    assert!(
        wait_until(Duration::from_secs(10), || !egress_address(&lab, &tasks[0]).is_empty()),
        "the underlay server never answered"
    );
    let legs: Vec<(String, String)> = tasks.iter().map(|t| gateway_leg(&lab, t)).collect();
    let addresses: BTreeSet<&String> = legs.iter().map(|(a, _)| a).collect();
    let macs: BTreeSet<&String> = legs.iter().map(|(_, m)| m).collect();
    assert_eq!((addresses.len(), macs.len()), (10, 10), "gateway legs shared: {legs:?}");
    assert!(addresses.iter().all(|a| a.starts_with("172.18.")), "{addresses:?}");
    for task in &tasks {
        assert_eq!(egress_address(&lab, task), "192.168.10.6", "{} has no egress as the node", task["Name"]);
    }

    // A restarted agent keeps every address; new tasks get fresh ones.
    lab.stop_agent(0, Signal::SIGKILL);
    lab.start_agent(0);
    lab.ok(&["service", "scale", "ten=12"]);
    let grown = lab.wait_running("ten", 12);
    let after: Vec<(String, String)> = tasks.iter().map(|t| gateway_leg(&lab, t)).collect();
    assert_eq!(after, legs, "a restart changed gateway addresses");
    let all: BTreeSet<String> = grown.iter().map(|t| gateway_leg(&lab, t).0).collect();
    assert_eq!(all.len(), 12, "{all:?}");
}

#[test]
fn a_task_is_confined_like_a_container() {
    let lab = Lab::start(1);
    lab.create_network("demonet", "192.168.201.0/24");
    let script = "sleep 1000 & setsid sleep 1001 & exec sleep 1002";
    lab.ok(&[
        "service",
        "create",
        "--name",
        "boxed",
        "--network",
        "demonet",
        "--env",
        "GREETING=hi",
        "--stop-grace-period",
        "2s",
        "sh",
        "-c",
        script,
    ]);
    let task = lab.wait_running("boxed", 1).remove(0);
    let name = task["Name"].as_str().unwrap().to_string();
    let exec = |args: &[&str]| {
        let mut full = vec!["exec", name.as_str(), "--"];
        full.extend_from_slice(args);
        lab.netctl(&full)
    };
    // Its own PID namespace: the command is PID 1 and sees only its own.
    let pid1 = stdout(&exec(&["cat", "/proc/1/cmdline"])).replace('\0', " ");
    assert_eq!(pid1.trim(), "sleep 1002");
    let own = stdout(&exec(&["sh", "-c", "ls /proc | grep -c '^[0-9]'"]));
    assert!(own.trim().parse::<u32>().unwrap() <= 6, "sees more than its own processes: {own}");
    // Docker's capabilities: no CAP_NET_ADMIN, no CAP_SYS_ADMIN.
    let added = exec(&["ip", "addr", "add", "10.99.0.1/32", "dev", "eth0"]);
    assert!(!added.status.success(), "a task could add an address to its eth0");
    let entered = exec(&["nsenter", "--net=/proc/1/ns/net", "true"]);
    assert!(!entered.status.success(), "a task could nsenter");
    let status = stdout(&exec(&["grep", "CapBnd", "/proc/self/status"]));
    assert!(status.contains("00000000a80425fb"), "not Docker's default set: {status}");
    // Exactly the service's environment plus PATH and HOME.
    let env = stdout(&exec(&["env"]));
    let keys: BTreeSet<&str> = env.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
    assert_eq!(keys, BTreeSet::from(["GREETING", "HOME", "PATH"]), "{env}");
    assert!(!env.contains("NETCTL"), "{env}");
    // Its own hostname and /proc; the agent's namespace files are not there.
    assert_eq!(stdout(&exec(&["hostname"])).trim(), name);
    let mounts = stdout(&exec(&["cat", "/proc/self/mountinfo"]));
    assert!(!mounts.contains(" nsfs "), "host namespace files leaked into the task: {mounts}");

    // Every process of the task, the setsid one included, ends with it.
    let sandbox = lab.sandbox_path(&task);
    let inode = netlib::netns::namespace_inode(&sandbox).unwrap();
    let processes = netlib::netns::processes_in(&[inode]);
    assert!(processes.len() >= 4, "shim and three sleeps expected: {processes:?}");
    lab.ok(&["service", "rm", "boxed"]);
    let gone = wait_until(Duration::from_secs(20), || {
        processes.iter().all(|pid| nix::sys::signal::kill(*pid, None).is_err()) && !sandbox.exists()
    });
    assert!(gone, "processes or the sandbox outlived the task: {processes:?}");
}

#[test]
fn user_capabilities_and_the_grace_period_are_the_services() {
    let lab = Lab::start(1);
    lab.create_network("demonet", "192.168.202.0/24");
    let marks = tempfile::tempdir().unwrap();
    std::fs::set_permissions(marks.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let marker = marks.path().join("term");
    let script = format!("trap 'touch {}; exit 0' TERM; while :; do sleep 0.1; done", marker.display());
    lab.ok(&[
        "service",
        "create",
        "--name",
        "asuser",
        "--network",
        "demonet",
        "--user",
        "1000:1000",
        "sh",
        "-c",
        &script,
    ]);
    lab.ok(&[
        "service",
        "create",
        "--name",
        "admin",
        "--network",
        "demonet",
        "--cap-add",
        "NET_ADMIN",
        "--cap-drop",
        "NET_RAW",
        "sleep",
        "100000",
    ]);
    lab.wait_running("asuser", 1);
    lab.wait_running("admin", 1);
    let ids = stdout(&lab.netctl(&["exec", "asuser.1", "--", "sh", "-c", "echo $(id -u):$(id -g)"]));
    assert_eq!(ids.trim(), "1000:1000");
    let added = lab.netctl(&["exec", "admin.1", "--", "ip", "addr", "add", "10.99.0.1/32", "dev", "eth0"]);
    assert!(added.status.success(), "--cap-add NET_ADMIN: {}", String::from_utf8_lossy(&added.stderr));
    let status = stdout(&lab.netctl(&["exec", "admin.1", "--", "grep", "CapBnd", "/proc/self/status"]));
    let mask = u64::from_str_radix(status.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask & (1 << 12), 1 << 12, "CAP_NET_ADMIN missing");
    assert_eq!(mask & (1 << 13), 0, "CAP_NET_RAW not dropped");
    // SIGTERM reaches the task (PID 1 with a handler) and it ends cleanly.
    lab.ok(&["service", "rm", "asuser"]);
    assert!(wait_until(Duration::from_secs(15), || marker.exists()), "the task never got SIGTERM");
}

#[test]
fn a_restarted_agent_adopts_its_tasks_and_leaves_no_process_behind() {
    let mut lab = Lab::start(1);
    lab.create_network("demonet", "192.168.203.0/24");
    lab.ok(&[
        "service",
        "create",
        "--name",
        "kept",
        "--replicas",
        "2",
        "--network",
        "demonet",
        "--stop-grace-period",
        "1s",
        "sh",
        "-c",
        "sleep 1000 & exec sleep 1001",
    ]);
    let before = lab.wait_running("kept", 2);
    let inodes: Vec<u64> =
        before.iter().map(|t| netlib::netns::namespace_inode(&lab.sandbox_path(t)).unwrap()).collect();
    let processes = netlib::netns::processes_in(&inodes);
    lab.stop_agent(0, Signal::SIGKILL);
    lab.start_agent(0);
    std::thread::sleep(Duration::from_secs(3));
    let after = lab.wait_running("kept", 2);
    assert_eq!(task_ids(&after), task_ids(&before), "a restart replaced tasks");
    assert_eq!(netlib::netns::processes_in(&inodes), processes, "a restart started tasks twice");
    lab.ok(&["service", "rm", "kept"]);
    let gone = wait_until(Duration::from_secs(20), || {
        processes.iter().all(|p| nix::sys::signal::kill(*p, None).is_err())
    });
    assert!(gone, "task processes survived service rm after an agent restart");
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_task_writing_as_fast_as_it_can_stays_within_its_log_cap() {
    let mut lab = Lab::start(1);
    lab.create_network("demonet", "192.168.204.0/24");
    lab.ok(&[
        "service",
        "create",
        "--name",
        "chatty",
        "--network",
        "demonet",
        "--log-opt",
        "max-size=1m",
        "--log-opt",
        "max-file=2",
        "yes",
        "netctl log line",
    ]);
    let task = lab.wait_running("chatty", 1).remove(0);
    let task_dir = lab.hosts()[0].run_dir.join("tasks").join(&task["ID"].as_str().unwrap()[..12]);
    let manager = lab.manager_pid();
    let mut peak_disk = 0;
    let mut peak_rss = 0;
    // A minute of `yes`, as fast as it writes.
    for _ in 0..60 {
        std::thread::sleep(Duration::from_secs(1));
        let on_disk: u64 = std::fs::read_dir(&task_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("log."))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum();
        peak_disk = peak_disk.max(on_disk);
        peak_rss = peak_rss.max(rss_kib(manager));
    }
    assert!(peak_disk > 0, "no log was written");
    assert!(peak_disk <= 2 * 1024 * 1024, "{peak_disk} bytes on disk over a 2 x 1 MiB cap");
    assert!(peak_rss < 200 * 1024, "the manager grew to {peak_rss} KiB");
    let tail = lab.ok(&["service", "logs", "--tail", "3", "chatty"]);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 3, "{tail}");
    assert!(lines.iter().all(|l| l.ends_with("| netctl log line")), "{tail}");
    let mode =
        std::fs::metadata(lab.hosts()[0].run_dir.join("tasks").join(&task["ID"].as_str().unwrap()[..12]))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.unwrap(), 0o700);
    lab.stop_agent(0, Signal::SIGKILL);
}

#[test]
fn service_logs_follows_new_output() {
    let lab = Lab::start(1);
    lab.create_network("demonet", "192.168.205.0/24");
    lab.create_service(
        "ticker",
        1,
        "demonet",
        &["sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done"],
    );
    lab.wait_running("ticker", 1);
    let out = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let mut follow = lab.host_command(0, &e2e::netctl_bin().display().to_string());
    follow.args(["service", "logs", "--follow", "--tail", "1", "ticker"]);
    lab.client_env(&mut follow);
    let err = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    let _follower = Daemon::spawn(follow, err.to_path_buf(), Some(out.to_path_buf()));
    let followed = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&out).unwrap_or_default().lines().filter(|l| l.contains("| tick ")).count()
            >= 5
    });
    assert!(followed, "--follow printed: {:?}", std::fs::read_to_string(&out));
}

#[test]
fn a_namespace_the_agent_did_not_make_survives_a_reconcile() {
    let lab = Lab::start(1);
    let netns_dir = lab.hosts()[0].run_dir.join("netns");
    // Made as `ip netns add` makes them (a bind mount of a new network
    // namespace onto a file in the folder), by someone other than the agent,
    // as an operator whose agent runs with --run-dir /run would have them.
    for name in ["nctforeign", "1-nctforeig", "abcdefabcdef"] {
        let file = netns_dir.join(name);
        std::fs::write(&file, b"").unwrap();
        let added = std::process::Command::new("unshare")
            .arg(format!("--net={}", file.display()))
            .arg("true")
            .output();
        let added = added.unwrap();
        assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    }
    let foreign = ["nctforeign", "1-nctforeig", "abcdefabcdef"];
    for name in foreign {
        assert!(netlib::netns::is_namespace(&netns_dir.join(name)), "{name} was not made");
    }
    lab.create_network("demonet", "192.168.206.0/24");
    lab.create_service("web", 1, "demonet", &["sleep", "100000"]);
    lab.wait_running("web", 1);
    lab.ok(&["service", "rm", "web"]);
    std::thread::sleep(Duration::from_secs(5));
    for name in foreign {
        assert!(netlib::netns::is_namespace(&netns_dir.join(name)), "the agent deleted {name}");
    }
}

#[test]
fn gateway_port_isolation_is_repaired() {
    let lab = Lab::start(1);
    lab.create_network("demonet", "192.168.207.0/24");
    let task = {
        lab.create_service("web", 1, "demonet", &["sleep", "100000"]);
        lab.wait_running("web", 1).remove(0)
    };
    let port = format!("gw{}", &task["ID"].as_str().unwrap()[..12]);
    let isolated =
        || stdout(&lab.on_host(0, "bridge", &["-d", "link", "show", "dev", &port])).contains("isolated on");
    assert!(wait_until(Duration::from_secs(10), isolated), "{port} is not isolated");
    let off = lab.on_host(0, "bridge", &["link", "set", "dev", &port, "isolated", "off"]);
    assert!(off.status.success());
    assert!(!isolated());
    assert!(wait_until(Duration::from_secs(10), isolated), "isolation of {port} was not repaired");
}

#[test]
fn a_node_where_every_task_fails_does_not_swallow_the_replicas() {
    let lab = Lab::start(2);
    lab.create_network("demonet", "192.168.208.0/24");
    // node1 forwards nothing to the underlay: a task there cannot reach it.
    let dropped = lab.on_host(1, "iptables", &["-w", "-I", "FORWARD", "-d", UNDERLAY_ADDRESS, "-j", "DROP"]);
    assert!(dropped.status.success(), "{}", String::from_utf8_lossy(&dropped.stderr));
    let check = format!("ping -c 1 -W 1 {UNDERLAY_ADDRESS} >/dev/null || exit 1; exec sleep 100000");
    lab.create_service("picky", 4, "demonet", &["sh", "-c", &check]);
    // A task is Running once started; the ones on node1 fail a moment later.
    let settled = wait_until(Duration::from_secs(90), || {
        let running = lab.running_tasks("picky");
        running.len() == 4 && running.iter().all(|t| t["Node"] == "node0")
    });
    assert!(settled, "{:#?}", lab.tasks("picky"));
    let failed_on_node1 =
        lab.tasks("picky").iter().filter(|t| t["Node"] == "node1" && t["CurrentState"] == "failed").count();
    assert!(failed_on_node1 > 0, "node1 never failed a task: the test proves nothing");
}

#[test]
fn tokens_stay_out_of_process_lists_logs_and_tasks() {
    let lab = Lab::start(1);
    lab.create_network("demonet", "192.168.209.0/24");
    lab.create_service("web", 1, "demonet", &["sleep", "100000"]);
    let task = lab.wait_running("web", 1).remove(0);
    let agent_cmdline = std::fs::read(format!("/proc/{}/cmdline", lab.agent_pid(0))).unwrap();
    let agent_cmdline = String::from_utf8_lossy(&agent_cmdline).replace('\0', " ");
    assert!(agent_cmdline.contains("--join-token-file"), "{agent_cmdline}");
    let task_env = stdout(&lab.netctl(&["exec", task["Name"].as_str().unwrap(), "--", "env"]));
    for token in lab.tokens() {
        let secret = token.rsplit('-').next().unwrap();
        assert!(!agent_cmdline.contains(secret), "the join token is in ps");
        assert!(!lab.agent_log(0).contains(secret), "a token is in the agent's log");
        assert!(!lab.manager_log().contains(secret), "a token is in the manager's log");
        assert!(!task_env.contains(secret), "a token reached a task");
    }
}

#[test]
fn sigterm_stops_the_agent_and_leaves_the_tasks_and_the_data_path() {
    let mut lab = Lab::start(1);
    lab.create_network("demonet", "192.168.210.0/24");
    lab.create_service("web", 2, "demonet", &["sleep", "100000"]);
    let tasks = lab.wait_running("web", 2);
    let namespaces = lab.agent_namespaces(0);
    let inodes: Vec<u64> =
        tasks.iter().map(|t| netlib::netns::namespace_inode(&lab.sandbox_path(t)).unwrap()).collect();
    let processes = netlib::netns::processes_in(&inodes);
    assert_eq!(lab.stop_agent(0, Signal::SIGTERM), Some(0), "the agent did not exit cleanly on SIGTERM");
    assert_eq!(lab.agent_namespaces(0), namespaces, "SIGTERM tore something down");
    assert_eq!(netlib::netns::processes_in(&inodes), processes, "SIGTERM stopped tasks");
    let peer = e2e::lab::endpoint_address(&tasks[1], 0);
    assert!(lab.pings(&tasks[0], &peer), "the overlay stopped working without its agent");
    lab.start_agent(0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(task_ids(&lab.wait_running("web", 2)), task_ids(&tasks), "a restart replaced tasks");
    assert_eq!(netlib::netns::processes_in(&inodes), processes, "a restart started tasks again");
}
