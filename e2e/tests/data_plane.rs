//! The first walkthrough on lab hosts: overlay namespaces, sandboxes, the
//! gateway bridge, remote endpoints, and real traffic across them.

use e2e::lab::{endpoint_address as address, Lab, UNDERLAY_ADDRESS};
use e2e::wait_until;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `ip -d -o link` inside a namespace file.
fn links(lab: &Lab, path: &std::path::Path) -> String {
    stdout(&lab.in_namespace(path, "ip", &["-d", "-o", "link"]))
}

/// The namespaces host `i` should hold for the running tasks of `tasks`.
/// The namespaces every node holds whatever runs: the ingress overlay and
/// ingress_sbox.
fn routing_mesh_namespaces(lab: &Lab) -> BTreeSet<String> {
    BTreeSet::from([format!("1-{}", &lab.network_id("ingress")[..10]), "ingress_sbox".to_string()])
}

fn expected_namespaces(lab: &Lab, i: usize, tasks: &[Value], network: &str) -> BTreeSet<String> {
    let local: Vec<&Value> = tasks.iter().filter(|t| lab.host_of(t) == i).collect();
    let mut expected: BTreeSet<String> =
        local.iter().map(|t| t["ID"].as_str().unwrap()[..12].to_string()).collect();
    expected.extend(routing_mesh_namespaces(lab));
    if !local.is_empty() {
        expected.insert(format!("1-{}", &network[..10]));
    }
    expected
}

/// Waits until every host holds exactly the namespaces its tasks need.
fn assert_converged(lab: &Lab, tasks: &[Value], network: &str) {
    for i in 0..lab.hosts().len() {
        let expected = expected_namespaces(lab, i, tasks, network);
        let converged = wait_until(Duration::from_secs(20), || {
            lab.agent_namespaces(i).into_iter().collect::<BTreeSet<_>>() == expected
        });
        assert!(converged, "host {i}: {:?} instead of {expected:?}", lab.agent_namespaces(i));
    }
}

#[test]
fn the_walkthrough_layout_and_traffic() {
    let lab = Lab::start(2);
    lab.create_network("demonet", "192.168.200.0/24");
    lab.create_service("demoservice", 2, "demonet", &["sleep", "10000"]);
    let tasks = lab.wait_running("demoservice", 2);
    let net = lab.network_id("demonet");
    let hosts: BTreeSet<usize> = tasks.iter().map(|t| lab.host_of(t)).collect();
    assert_eq!(hosts.len(), 2, "one replica per node: {tasks:#?}");
    let addresses: BTreeSet<String> = tasks.iter().map(|t| address(t, 0)).collect();
    assert_eq!(addresses, BTreeSet::from(["192.168.200.3".to_string(), "192.168.200.4".to_string()]));
    assert_converged(&lab, &tasks, &net);

    for task in &tasks {
        let i = lab.host_of(task);
        let overlay = lab.overlay_path(i, &net);
        let overlay_links = links(&lab, &overlay);
        let vxlan = overlay_links.lines().find(|l| l.contains("vxlan0")).expect("vxlan0");
        for expected in [
            "vxlan id 4097",
            "dstport 4789",
            "nolearning",
            "proxy",
            "l2miss",
            "l3miss",
            "mtu 1450",
            "master br0",
        ] {
            assert!(vxlan.contains(expected), "vxlan0 lacks {expected:?}: {vxlan}");
        }
        assert!(vxlan.contains(&format!("local {}", lab.hosts()[i].address)), "{vxlan}");
        let veth = overlay_links.lines().find(|l| l.contains(": veth")).expect("a veth in the overlay");
        assert!(veth.contains("master br0") && veth.contains("mtu 1450"), "{veth}");
        let bridge = stdout(&lab.in_namespace(&overlay, "ip", &["-o", "addr", "show", "br0"]));
        assert!(bridge.contains("192.168.200.1/24"), "{bridge}");

        // The remote endpoint: neighbour and FDB entry towards the other node.
        let other = tasks.iter().find(|t| t["ID"] != task["ID"]).unwrap();
        let other_host = lab.hosts()[lab.host_of(other)].address;
        let mac = other["Endpoints"][0]["MAC"].as_str().unwrap();
        let fdb = stdout(&lab.in_namespace(&overlay, "bridge", &["fdb", "show", "dev", "vxlan0"]));
        assert!(fdb.contains(&format!("{mac} dst {other_host}")), "{fdb}");
        let neigh = stdout(&lab.in_namespace(&overlay, "ip", &["neigh", "show", "dev", "vxlan0"]));
        assert!(neigh.contains(&format!("{} lladdr {mac} PERMANENT", address(other, 0))), "{neigh}");

        // The sandbox: eth0 on the overlay, eth1 on docker_gwbridge, routes.
        let sandbox = stdout(&lab.in_task(task, "ip", &["-o", "addr"]));
        assert!(sandbox.contains(&format!("eth0    inet {}/24", address(task, 0))), "{sandbox}");
        assert!(sandbox.contains("eth1    inet 172.18.0.3/16"), "{sandbox}");
        let routes = stdout(&lab.in_task(task, "ip", &["route"]));
        assert!(routes.contains("default via 172.18.0.1 dev eth1"), "{routes}");
        assert!(routes.contains("192.168.200.0/24 dev eth0"), "{routes}");
        let eth0 = stdout(&lab.in_task(task, "ip", &["-o", "link", "show", "eth0"]));
        assert!(
            eth0.contains("mtu 1450")
                && eth0.contains(&task["Endpoints"][0]["MAC"].as_str().unwrap().to_string()),
            "{eth0}"
        );
        let gwbridge = stdout(&lab.on_host(i, "ip", &["-o", "addr", "show", "docker_gwbridge"]));
        assert!(gwbridge.contains("172.18.0.1/16"), "{gwbridge}");
        // The task's shim (recorded in its folder) lives in the task's UTS namespace.
        let shim_file =
            lab.hosts()[i].run_dir.join("tasks").join(&task["ID"].as_str().unwrap()[..12]).join("shim");
        let pid = std::fs::read_to_string(shim_file).unwrap().split_whitespace().next().unwrap().to_string();
        let uts =
            std::process::Command::new("nsenter").args(["-t", &pid, "-u", "hostname"]).output().unwrap();
        assert_eq!(stdout(&uts).trim(), task["Name"].as_str().unwrap(), "the task's hostname is its name");
    }

    // Pings: the gateway, then the task on the other node, seen on the wire
    // as UDP 4789 between the two node addresses.
    let (first, second) = (&tasks[0], &tasks[1]);
    let ping = lab.in_task(first, "ping", &["-c", "2", "-W", "2", "192.168.200.1"]);
    assert!(ping.status.success(), "ping gateway: {}", stdout(&ping));
    let tcpdump = e2e::netns::command_in(&lab.underlay().path(), "tcpdump")
        .args(["-i", "ul", "-nn", "-l", "-c", "2", "udp", "port", "4789"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump (apt-get install tcpdump)");
    std::thread::sleep(Duration::from_millis(500));
    let ping = lab.in_task(first, "ping", &["-c", "3", "-W", "2", &address(second, 0)]);
    assert!(ping.status.success(), "cross-node ping: {}", stdout(&ping));
    let wire = tcpdump.wait_with_output().unwrap();
    let wire = stdout(&wire);
    let (from, to) = (lab.hosts()[lab.host_of(first)].address, lab.hosts()[lab.host_of(second)].address);
    assert!(wire.contains(&format!("{from}.")) && wire.contains(&format!("> {to}.4789")), "{wire}");

    // Egress through docker_gwbridge: the server sees the node's address.
    let server = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
        s.bind(('0.0.0.0',9000))\ns.listen()\ns.settimeout(20)\nc,a=s.accept()\nc.sendall(a[0].encode())\nc.close()";
    let mut listener =
        e2e::netns::command_in(&lab.underlay().path(), "python3").args(["-c", server]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let client = format!(
        "import socket\ns=socket.create_connection(('{UNDERLAY_ADDRESS}',9000),timeout=5)\nprint(s.recv(64).decode())"
    );
    let seen = lab.in_task(first, "python3", &["-c", &client]);
    let _ = listener.wait();
    assert_eq!(stdout(&seen).trim(), from.to_string(), "{}", String::from_utf8_lossy(&seen.stderr));
}

#[test]
fn tasks_on_different_overlays_cannot_reach_each_other() {
    let lab = Lab::start(2);
    lab.create_network("red", "10.10.1.0/24");
    lab.create_network("blue", "10.10.2.0/24");
    lab.ok(&["service", "create", "--replicas", "2", "--network", "red", "--name", "r", "sleep", "10000"]);
    lab.ok(&["service", "create", "--replicas", "2", "--network", "blue", "--name", "b", "sleep", "10000"]);
    let red = lab.wait_running("r", 2);
    let blue = lab.wait_running("b", 2);
    let peer = red.iter().find(|t| lab.host_of(t) != lab.host_of(&red[0])).unwrap();
    assert!(lab.pings(&red[0], &address(peer, 0)), "same overlay");
    for target in &blue {
        assert!(!lab.pings(&red[0], &address(target, 0)), "red reached blue {}", address(target, 0));
    }
}

#[test]
fn scaling_and_removal_leave_exactly_the_expected_objects() {
    let lab = Lab::start(2);
    let net = lab.create_network("scalenet", "192.168.50.0/24");
    lab.create_service("web", 4, "scalenet", &["sleep", "10000"]);
    for replicas in [4, 1, 3] {
        lab.ok(&["service", "scale", &format!("web={replicas}")]);
        let tasks = lab.wait_running("web", replicas);
        assert_converged(&lab, &tasks, &net);
        for i in 0..2 {
            let local = tasks.iter().filter(|t| lab.host_of(t) == i).count();
            if local == 0 {
                continue;
            }
            let overlay = lab.overlay_path(i, &net);
            // A removed sandbox's namespace is destroyed by the kernel
            // asynchronously, taking its veth pair with it.
            let veths = || links(&lab, &overlay).lines().filter(|l| l.contains(": veth")).count();
            assert!(
                wait_until(Duration::from_secs(10), || veths() == local),
                "host {i}: {} veths for {local} tasks",
                veths()
            );
            let settled = wait_until(Duration::from_secs(10), || {
                let fdb = stdout(&lab.in_namespace(&overlay, "bridge", &["fdb", "show", "dev", "vxlan0"]));
                fdb.lines().filter(|l| l.contains(" dst ")).count() == replicas - local
            });
            assert!(settled, "host {i}: one FDB entry per remote task");
        }
    }
    lab.ok(&["service", "rm", "web"]);
    lab.ok(&["network", "rm", "scalenet"]);
    for i in 0..2 {
        assert!(
            wait_until(Duration::from_secs(20), || lab
                .agent_namespaces(i)
                .into_iter()
                .collect::<BTreeSet<_>>()
                == routing_mesh_namespaces(&lab)),
            "{:?}",
            lab.agent_namespaces(i)
        );
        // A stopped task's folder goes once its last output is shipped.
        let tasks_dir = lab.hosts()[i].run_dir.join("tasks");
        let processes = || stdout(&lab.on_host(i, "ls", &[tasks_dir.to_str().unwrap()]));
        assert!(
            wait_until(Duration::from_secs(10), || processes().trim().is_empty()),
            "task files left: {}",
            processes()
        );
    }
}

#[test]
fn a_ping_survives_an_agent_restart() {
    let mut lab = Lab::start(2);
    lab.create_network("pingnet", "192.168.60.0/24");
    lab.create_service("p", 2, "pingnet", &["sleep", "10000"]);
    let tasks = lab.wait_running("p", 2);
    let (first, second) = (&tasks[0], &tasks[1]);
    let target = address(second, 0);
    let ping = e2e::netns::command_in(&lab.sandbox_path(first), "ping")
        .args(["-i", "0.1", "-c", "60", "-W", "1", &target])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let restarted = lab.host_of(second);
    lab.stop_agent(restarted, Signal::SIGKILL);
    lab.start_agent(restarted);
    let output = ping.wait_with_output().unwrap();
    let summary = stdout(&output);
    let received: usize = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" received").and_then(|n| n.parse().ok()))
        .expect("ping summary");
    assert!(received >= 59, "lost more than one packet: {summary}");
    assert!(wait_until(Duration::from_secs(10), || lab
        .agent_log(restarted)
        .contains("connected with the node certificate")));
}

#[test]
fn a_lost_node_s_tasks_move_and_its_endpoints_disappear() {
    let mut lab = Lab::start(3);
    let net = lab.create_network("lostnet", "192.168.70.0/24");
    lab.create_service("l", 3, "lostnet", &["sleep", "10000"]);
    let tasks = lab.wait_running("l", 3);
    assert_eq!(tasks.iter().map(|t| lab.host_of(t)).collect::<BTreeSet<_>>().len(), 3);
    // Node 2 is cut off for good: its agent dies and its link goes down.
    lab.stop_agent(2, Signal::SIGKILL);
    let _ = lab.in_namespace(&lab.underlay().path(), "ip", &["link", "set", "n2", "down"]);
    let lost = lab.hosts()[2].address.to_string();
    assert!(wait_until(Duration::from_secs(20), || lab
        .nodes()
        .iter()
        .any(|n| n["Hostname"] == "node2" && n["Status"] == "Down")));
    let moved = wait_until(Duration::from_secs(30), || {
        let running = lab.running_tasks("l");
        running.len() == 3 && running.iter().all(|t| lab.host_of(t) != 2)
    });
    assert!(moved, "{:#?}", lab.tasks("l"));
    for i in 0..2 {
        let overlay = lab.overlay_path(i, &net);
        let clean = wait_until(Duration::from_secs(15), || {
            let fdb = stdout(&lab.in_namespace(&overlay, "bridge", &["fdb", "show", "dev", "vxlan0"]));
            !fdb.contains(&format!("dst {lost}"))
        });
        assert!(clean, "host {i} still points at the lost node");
    }
    // The moved replica answers across the overlay.
    let tasks = lab.running_tasks("l");
    for target in &tasks[1..] {
        assert!(lab.pings(&tasks[0], &address(target, 0)), "{target}");
    }
}

#[test]
fn a_command_that_cannot_start_fails_and_is_retried() {
    let lab = Lab::start(1);
    lab.create_network("failnet", "192.168.80.0/24");
    lab.ok(&["service", "create", "--network", "failnet", "--name", "broken", "/no/such/program"]);
    let retried = wait_until(Duration::from_secs(30), || {
        let tasks = lab.tasks("broken");
        tasks.iter().filter(|t| t["CurrentState"] == "failed").count() >= 2
    });
    assert!(retried, "{:#?}", lab.tasks("broken"));
    let table = lab.ok(&["service", "ps", "broken"]);
    assert!(table.contains("starting task failed: /no/such/program"), "{table}");
    assert!(table.contains("\\_ broken.1"), "history is shown under the slot: {table}");
}
