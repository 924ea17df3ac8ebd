//! Service discovery from inside tasks, as a Swarm user relies on it: the
//! resolver at 127.0.0.11 answers service names, `tasks.` names, aliases,
//! dnsrr services, hostnames and PTR records per network, and forwards the
//! rest; real `dig`, `getent` and `curl` run inside the sandboxes.

use e2e::lab::{endpoint_address, Lab, UNDERLAY_ADDRESS};
use e2e::{wait_until, Daemon};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// `dig @127.0.0.11 +short ARGS` inside `task`'s sandbox, one answer per
/// line.
fn dig(lab: &Lab, task: &Value, args: &[&str]) -> BTreeSet<String> {
    let mut full = vec!["@127.0.0.11", "+short", "+time=3", "+tries=1"];
    full.extend_from_slice(args);
    let output = lab.in_task(task, "dig", &full);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.starts_with(';'))
        .collect()
}

/// The status dig reports (`NOERROR`, `NXDOMAIN`, ...) and the answer count.
fn status(lab: &Lab, task: &Value, args: &[&str]) -> (String, usize) {
    let mut full = vec!["@127.0.0.11", "+time=3", "+tries=1"];
    full.extend_from_slice(args);
    let text = String::from_utf8_lossy(&lab.in_task(task, "dig", &full).stdout).to_string();
    let status =
        text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("none").to_string();
    let answers = text.split("ANSWER: ").nth(1).and_then(|s| s.split(',').next()?.parse().ok()).unwrap_or(0);
    (status, answers)
}

/// `netctl exec TASK -- ARGS` on the task's host: the task's own mount
/// namespace, so its resolv.conf and hosts.
fn exec(lab: &Lab, task: &Value, args: &[&str]) -> String {
    let mut full = vec!["exec", task["Name"].as_str().unwrap(), "--"];
    full.extend_from_slice(args);
    let output = lab.netctl_on(lab.host_of(task), &full);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn addresses(lab: &Lab, service: &str, count: usize) -> BTreeSet<String> {
    lab.wait_running(service, count).iter().map(|t| endpoint_address(t, 0)).collect()
}

fn vip(lab: &Lab, service: &str) -> Option<String> {
    let inspected: Value = serde_json::from_str(&lab.ok(&["service", "inspect", service])).unwrap();
    inspected[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().map(str::to_string)
}

#[test]
fn services_resolve_by_name_on_their_networks() {
    let lab = Lab::start(3);
    lab.create_network("front", "10.210.0.0/24");
    lab.create_network("back", "10.211.0.0/24");
    let serve = ["python3", "-m", "http.server", "80"];
    let mut web =
        vec!["service", "create", "--name", "web", "--replicas", "3", "--network", "name=front,alias=www"];
    web.extend_from_slice(&serve);
    lab.ok(&web);
    lab.ok(&["service", "create", "--name", "db", "--replicas", "2", "--endpoint-mode", "dnsrr"]
        .into_iter()
        .chain(["--network", "front", "sleep", "100000"])
        .collect::<Vec<_>>());
    lab.create_service("client", 1, "front", &["sleep", "100000"]);
    lab.create_service("other", 1, "back", &["sleep", "100000"]);
    // Binds UDP port 53 itself and answers on it, as a task may.
    let echo = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',53))\nwhile True:\n d,a=s.recvfrom(512)\n s.sendto(d,a)";
    lab.create_service("udp53", 1, "front", &["python3", "-c", echo]);

    let web_vip = vip(&lab, "web").expect("web has a VIP");
    let web_tasks = addresses(&lab, "web", 3);
    let db_tasks = addresses(&lab, "db", 2);
    let client = lab.wait_running("client", 1).remove(0);
    let other = lab.wait_running("other", 1).remove(0);
    let udp53 = lab.wait_running("udp53", 1).remove(0);
    assert_eq!(vip(&lab, "db"), None, "a dnsrr service has no VIP");

    assert_eq!(dig(&lab, &client, &["web"]), BTreeSet::from([web_vip.clone()]));
    assert_eq!(dig(&lab, &client, &["WWW."]), BTreeSet::from([web_vip.clone()]), "alias, any case");
    assert_eq!(dig(&lab, &client, &["tasks.web"]), web_tasks);
    assert_eq!(dig(&lab, &client, &["db"]), db_tasks, "dnsrr: the tasks, no VIP");
    assert_eq!(dig(&lab, &client, &["tasks.nosuch"]), BTreeSet::new());
    assert_eq!(status(&lab, &client, &["tasks.nosuch"]).0, "NXDOMAIN");
    assert_eq!(status(&lab, &client, &["AAAA", "web"]), ("NOERROR".to_string(), 0));
    // Another overlay sees none of front's names.
    assert!(dig(&lab, &other, &["web"]).is_empty());
    assert!(dig(&lab, &other, &["www"]).is_empty());
    assert!(dig(&lab, &other, &["tasks.db"]).is_empty());
    // Hostnames and Docker's long task names, and back.
    let web1 = lab.running_tasks("web").into_iter().find(|t| t["Name"] == "web.1").expect("web.1");
    let web1_address = endpoint_address(&web1, 0);
    let long_name = format!("web.1.{}", web1["ID"].as_str().unwrap());
    assert_eq!(dig(&lab, &client, &["web.1"]), BTreeSet::from([web1_address.clone()]));
    assert_eq!(dig(&lab, &client, &[&long_name]), BTreeSet::from([web1_address.clone()]));
    assert_eq!(dig(&lab, &client, &["-x", &web1_address]), BTreeSet::from([format!("{long_name}.front.")]));
    // The task's own files: the resolver, ndots:0, its name and address.
    let resolv = exec(&lab, &client, &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11") && resolv.contains("options ndots:0"), "{resolv}");
    let hosts = exec(&lab, &client, &["cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{}\tclient.1", endpoint_address(&client, 0))), "{hosts}");
    assert!(exec(&lab, &client, &["getent", "hosts", "web"]).starts_with(&web_vip));
    // By name, through the VIP, to one of the replicas.
    let page = exec(&lab, &client, &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://web/"]);
    assert_eq!(page, "200");
    // A task that holds port 53 itself still resolves, and its port works.
    assert_eq!(dig(&lab, &udp53, &["web"]), BTreeSet::from([web_vip.clone()]));
    let sent = lab.in_task(
        &client,
        "python3",
        &["-c", &format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\ns.sendto(b'ping',('{}',53))\nprint(s.recv(16).decode())", endpoint_address(&udp53, 0))],
    );
    assert_eq!(String::from_utf8_lossy(&sent.stdout).trim(), "ping");

    // `netctl topology` shows each sandbox's resolver and what it answers.
    let client_sandbox = &client["ID"].as_str().unwrap()[..12];
    let shown = wait_until(Duration::from_secs(10), || {
        let topology: Value = serde_json::from_str(&lab.ok(&["topology", "--format", "json"])).unwrap();
        let namespaces =
            topology.as_array().unwrap().iter().flat_map(|n| n["Namespaces"].as_array().unwrap().clone());
        namespaces.filter(|n| n["Name"] == client_sandbox).any(|n| {
            let names: Vec<&str> = n["Names"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            n["Resolver"] == "127.0.0.11:53"
                && ["web", "tasks.web", "www", "db"].iter().all(|x| names.contains(x))
        })
    });
    assert!(shown, "topology does not show the client's resolver and names");
    // Scaling: tasks.web follows, and never names a task that stopped.
    for replicas in [1, 3] {
        let started = Instant::now();
        lab.ok(&["service", "scale", &format!("web={replicas}")]);
        let followed = wait_until(Duration::from_secs(15), || {
            let running: BTreeSet<String> =
                lab.running_tasks("web").iter().map(|t| endpoint_address(t, 0)).collect();
            let answered = dig(&lab, &client, &["tasks.web"]);
            answered.len() == replicas && answered.is_subset(&running)
        });
        assert!(followed, "tasks.web did not follow the scale to {replicas}");
        eprintln!("tasks.web followed the scale to {replicas} in {:?}", started.elapsed());
    }
}

#[test]
fn other_names_are_forwarded_and_the_resolver_comes_back_after_a_crash() {
    let mut lab = Lab::start_with(1, &["--dns-forward", &format!("{UNDERLAY_ADDRESS}:5353")]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upstream_dns.py");
    let mut upstream = lab.underlay().command("python3");
    upstream.args([script, UNDERLAY_ADDRESS, "5353"]);
    let log = std::env::temp_dir().join(format!("upstream-dns-{}.log", e2e::unique_suffix()));
    let _upstream = Daemon::spawn(upstream, log, None);
    lab.create_network("demonet", "10.212.0.0/24");
    lab.ok(&[
        "service",
        "create",
        "--name",
        "big",
        "--replicas",
        "40",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "demonet",
        "sleep",
        "100000",
    ]);
    let client = lab.wait_running("big", 40).remove(0);

    let forwarded = wait_until(Duration::from_secs(10), || {
        dig(&lab, &client, &["www.example.org"]) == BTreeSet::from(["203.0.113.7".to_string()])
    });
    assert!(forwarded, "a name outside the cluster was not forwarded");
    // Too big for 512 bytes: truncated over UDP, whole over TCP, whether
    // the cluster's or forwarded.
    assert_eq!(dig(&lab, &client, &["+tcp", "tasks.big"]).len(), 40);
    assert_eq!(dig(&lab, &client, &["+noedns", "tasks.big"]).len(), 40, "dig retries over TCP after TC");
    assert_eq!(dig(&lab, &client, &["+noedns", "large.example"]).len(), 40);
    // An upstream that never answers: SERVFAIL, quickly.
    let asked = Instant::now();
    assert_eq!(status(&lab, &client, &["slow.example"]).0, "SERVFAIL");
    assert!(asked.elapsed() < Duration::from_secs(3), "SERVFAIL took {:?}", asked.elapsed());
    // A malformed packet is answered FORMERR or dropped; the resolver lives on.
    let garbage = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.sendto(b'\\x12\\x34'+b'\\xff'*20,('127.0.0.11',53))\ns.sendto(b'x',('127.0.0.11',53))";
    assert!(lab.in_task(&client, "python3", &["-c", garbage]).status.success());
    assert_eq!(status(&lab, &client, &["big"]), ("NOERROR".to_string(), 40));

    // A flood from one task (names whose upstream never answers, and the
    // cluster's) leaves the other tasks served.
    let tasks = lab.running_tasks("big");
    let (flooder, other) = (&tasks[1], &tasks[2]);
    let queries = std::env::temp_dir().join(format!("flood-{}", e2e::unique_suffix()));
    std::fs::write(&queries, "slow.example A\nbig A\n").unwrap();
    let mut flood = e2e::netns::command_in(&lab.sandbox_path(flooder), "dnsperf")
        .args(["-s", "127.0.0.11", "-l", "5", "-c", "8", "-q", "1000", "-d"])
        .arg(&queries)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("dnsperf");
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..10 {
        assert_eq!(dig(&lab, other, &["big"]).len(), 40, "a flood from another task starved this one");
    }
    let _ = flood.wait();
    let _ = std::fs::remove_file(&queries);

    // kill -9 and restart: answers again, tasks untouched.
    lab.stop_agent(0, Signal::SIGKILL);
    assert!(dig(&lab, &client, &["big"]).is_empty(), "nobody answers while the agent is down");
    let restarted = Instant::now();
    lab.start_agent(0);
    let back = wait_until(Duration::from_secs(15), || dig(&lab, &client, &["big"]).len() == 40);
    assert!(back, "the resolver did not come back after a restart");
    eprintln!("resolution back {:?} after the agent restarted", restarted.elapsed());
    assert_eq!(lab.running_tasks("big").len(), 40);
}
