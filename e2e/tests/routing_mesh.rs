//! The second walkthrough: published ports answered on every node and
//! balanced over every replica wherever it runs, service VIPs, UDP.

use e2e::lab::{Lab, UNDERLAY_ADDRESS};
use e2e::wait_until;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// An HTTP server on port 80 answering with the Python expression `body`
/// (`socket.gethostname()`: the task name).
fn http_server(body: &str) -> String {
    format!(
        "import http.server, socket\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        \
         body = ({body}).encode()\n        self.send_response(200)\n        \
         self.send_header('Content-Length', str(len(body)))\n        self.end_headers()\n        \
         self.wfile.write(body)\n    def log_message(self, *args):\n        pass\n\
         http.server.ThreadingHTTPServer(('0.0.0.0', 80), H).serve_forever()\n"
    )
}

/// The task name, as [`http_server`] answers it.
const HOSTNAME: &str = "socket.gethostname()";

/// A UDP echo server on port 7 answering with its hostname.
const UDP_SERVER: &str = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
s.bind(('0.0.0.0',7))\nwhile True:\n    d,a=s.recvfrom(2048)\n    s.sendto(socket.gethostname().encode(),a)\n";

/// Python that makes `count` HTTP requests to `url` and prints one line per
/// answer (the replica's name, or ERROR).
fn http_client(url: &str, count: usize) -> String {
    format!(
        "import urllib.request\nfor i in range({count}):\n    try:\n        \
         print(urllib.request.urlopen('{url}',timeout=3).read().decode())\n    except Exception as e:\n        \
         print('ERROR',e)\n"
    )
}

/// Counts answers by replica name.
fn tally(output: &std::process::Output) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        *counts.entry(line.to_string()).or_default() += 1;
    }
    counts
}

fn from_underlay(lab: &Lab, program: &str, script: &str) -> std::process::Output {
    lab.in_namespace(&lab.underlay().path(), program, &["-c", script])
}

fn names(tasks: &[serde_json::Value]) -> BTreeSet<String> {
    tasks.iter().map(|t| t["Name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn published_ports_answer_on_every_node_from_every_replica() {
    let lab = Lab::start(3);
    lab.create_network("nginxnet", "10.20.30.0/24");
    lab.ok(&[
        "service",
        "create",
        "--replicas",
        "3",
        "--network",
        "nginxnet",
        "--name",
        "web",
        "--publish",
        "8080:80",
        "python3",
        "-c",
        &http_server(HOSTNAME),
    ]);
    let tasks = lab.wait_running("web", 3);
    let replicas = names(&tasks);
    let spread: BTreeSet<usize> = tasks.iter().map(|t| lab.host_of(t)).collect();
    assert_eq!(spread.len(), 3, "one replica per node: {tasks:#?}");
    let listed = lab.ok(&["service", "ls"]);
    assert!(listed.contains("*:8080->80/tcp"), "{listed}");

    for host in lab.hosts() {
        let url = format!("http://{}:8080/", host.address);
        let mut seen = BTreeMap::new();
        let all_answered = wait_until(Duration::from_secs(20), || {
            seen = tally(&from_underlay(&lab, "python3", &http_client(&url, 60)));
            seen.keys().all(|k| replicas.contains(k)) && seen.values().sum::<usize>() == 60 && seen.len() == 3
        });
        assert!(all_answered, "via {}: {seen:?}", host.address);
    }

    // Through the service VIP, from a task on the same network.
    lab.create_service("client", 1, "nginxnet", &["sleep", "10000"]);
    let client = lab.wait_running("client", 1).remove(0);
    let inspected: serde_json::Value = serde_json::from_str(&lab.ok(&["service", "inspect", "web"])).unwrap();
    let vip = inspected[0]["Endpoint"]["VirtualIPs"][0]["Addr"].as_str().unwrap().to_string();
    let mut seen = BTreeMap::new();
    let balanced = wait_until(Duration::from_secs(20), || {
        seen = tally(&lab.in_task(&client, "python3", &["-c", &http_client(&format!("http://{vip}/"), 60)]));
        seen.len() == 3 && seen.keys().all(|k| replicas.contains(k))
    });
    assert!(balanced, "via VIP {vip}: {seen:?}");

    // Scale to 1 and back to 3: requests reach only live replicas.
    lab.ok(&["service", "scale", "web=1"]);
    let live = names(&lab.wait_running("web", 1));
    let url = format!("http://{}:8080/", lab.hosts()[0].address);
    let only_live = wait_until(Duration::from_secs(20), || {
        let seen = tally(&from_underlay(&lab, "python3", &http_client(&url, 20)));
        seen.keys().all(|k| live.contains(k)) && seen.values().sum::<usize>() == 20
    });
    assert!(only_live, "requests still reach removed replicas");
    lab.ok(&["service", "scale", "web=3"]);
    let replicas = names(&lab.wait_running("web", 3));
    let back = wait_until(Duration::from_secs(20), || {
        let seen = tally(&from_underlay(&lab, "python3", &http_client(&url, 60)));
        seen.len() == 3 && seen.keys().all(|k| replicas.contains(k))
    });
    assert!(back, "not every new replica answers");

    // service rm removes every rule; the port can be published again.
    lab.ok(&["service", "rm", "web"]);
    for i in 0..3 {
        let clean = wait_until(Duration::from_secs(15), || {
            let rules = String::from_utf8_lossy(&lab.on_host(i, "iptables-save", &[]).stdout).into_owned();
            !rules.contains("--dport 8080")
        });
        assert!(clean, "host {i} keeps rules for 8080");
    }
    lab.ok(&[
        "service",
        "create",
        "--network",
        "nginxnet",
        "--name",
        "again",
        "--publish",
        "8080:80",
        "python3",
        "-c",
        &http_server(HOSTNAME),
    ]);
}

#[test]
fn a_published_udp_port_answers_from_every_node() {
    let lab = Lab::start(2);
    lab.ok(&[
        "service",
        "create",
        "--replicas",
        "2",
        "--name",
        "echo",
        "--publish",
        "published=9999,target=7,protocol=udp",
        "python3",
        "-c",
        UDP_SERVER,
    ]);
    let replicas = names(&lab.wait_running("echo", 2));
    for host in lab.hosts() {
        let script = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\n\
             s.bind(('{UNDERLAY_ADDRESS}',0))\ns.sendto(b'hi',('{}',9999))\nprint(s.recvfrom(2048)[0].decode())\n",
            host.address
        );
        let mut answer = String::new();
        let answered = wait_until(Duration::from_secs(20), || {
            answer =
                String::from_utf8_lossy(&from_underlay(&lab, "python3", &script).stdout).trim().to_string();
            replicas.contains(&answer)
        });
        let host_rules = String::from_utf8_lossy(&lab.on_host(0, "iptables-save", &[]).stdout).into_owned();
        let sbox = lab.hosts()[0].run_dir.join("netns").join("ingress_sbox");
        let sbox_rules =
            String::from_utf8_lossy(&lab.in_namespace(&sbox, "iptables-save", &[]).stdout).into_owned();
        let sbox_addr =
            String::from_utf8_lossy(&lab.in_namespace(&sbox, "ip", &["-o", "addr"]).stdout).into_owned();
        assert!(
            answered,
            "no UDP answer via {}: {answer:?}\n{host_rules}\n{sbox_rules}\n{sbox_addr}\n{:#?}\n{}",
            host.address,
            lab.tasks("echo"),
            lab.agent_log(0)
        );
    }
}

#[test]
fn bad_published_ports_are_refused() {
    let lab = Lab::start(1);
    lab.ok(&["service", "create", "--name", "first", "--publish", "8080:80", "sleep", "1000"]);
    let refused = |args: &[&str], needle: &str| e2e::assert_refused(&lab.netctl(args), args, needle);
    refused(
        &["service", "create", "--name", "second", "--publish", "8080:80", "sleep", "1"],
        "already published by service first",
    );
    refused(&["service", "create", "--publish", "0:80", "sleep", "1"], "invalid published port");
    refused(&["service", "create", "--publish", "70000:80", "sleep", "1"], "invalid published port");
    refused(&["service", "create", "--publish", "published=8081", "sleep", "1"], "target port is missing");
    refused(&["service", "create", "--publish", "8081:80/sctp", "sleep", "1"], "expected tcp or udp");
    let assigned =
        lab.ok(&["service", "create", "--name", "auto", "--publish", "target=80", "sleep", "1000"]);
    assert_eq!(assigned.trim().len(), 25);
    assert!(lab.ok(&["service", "ls"]).contains("*:30000->80/tcp"));
}

#[test]
fn a_published_port_a_host_process_listens_on_is_reported_on_its_tasks() {
    let lab = Lab::start(1);
    lab.create_network("heldnet", "10.30.0.0/24");
    // A process on node0 itself listens on 8080.
    let mut command = lab.host_command(0, "python3");
    command.args([
        "-c",
        "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', 8080))\ns.listen()\ntime.sleep(600)",
    ]);
    let log = tempfile::NamedTempFile::new().expect("log file");
    let listener = e2e::Daemon::spawn(command, log.path().to_path_buf(), None);
    let create = ["service", "create", "--replicas", "1", "--network", "heldnet", "--name", "held"];
    lab.ok(&[&create[..], &["--publish", "8080:80", "sleep", "10000"]].concat());
    let problem = "port 8080/tcp is published, but a process on this node listens on it";
    let error = || lab.running_tasks("held").first().map(|t| t["Error"].as_str().unwrap_or("").to_string());
    let reported = wait_until(Duration::from_secs(30), || error().is_some_and(|e| e.contains(problem)));
    assert!(reported, "{:#?}", lab.tasks("held"));
    assert!(lab.agent_log(0).contains(problem), "the agent's log says it too");

    drop(listener);
    let cleared = wait_until(Duration::from_secs(30), || error().is_some_and(|e| e.is_empty()));
    assert!(cleared, "{:#?}", lab.tasks("held"));
}

/// Python that sends a datagram every 100 ms from each of `clients` source
/// ports to `address`:`port` for `seconds`, printing "CLIENT TIME REPLICA"
/// for each answer.
fn udp_clients(address: &str, port: u16, clients: usize, seconds: u32) -> String {
    format!(
        "import select, socket, time\nend = time.time() + {seconds}\nsocks = []\n\
         for i in range({clients}):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
         s.bind(('0.0.0.0', 41000 + i))\n    socks.append(s)\n\
         while time.time() < end:\n    for s in socks:\n        s.sendto(b'x', ('{address}', {port}))\n    \
         start = time.time()\n    while time.time() - start < 0.1:\n        \
         ready, _, _ = select.select(socks, [], [], max(0, 0.1 - (time.time() - start)))\n        \
         for s in ready:\n            data, _ = s.recvfrom(256)\n            \
         print(socks.index(s), time.time(), data.decode(), flush=True)\n"
    )
}

#[test]
fn udp_clients_of_a_removed_replica_reach_the_remaining_one_at_once() {
    // Asked on the removed replica's node, its clients' entries are in the
    // host (DNATed straight to it); asked on the other, in ingress_sbox.
    udp_clients_move(true);
    udp_clients_move(false);
}

/// Ten UDP clients send to one node's published port from fixed source
/// ports while the service scales from 2 to 1 (`echo.2` goes); the node is
/// `echo.2`'s when `ask_removed_replicas_node`, else the other.
fn udp_clients_move(ask_removed_replicas_node: bool) {
    let lab = Lab::start(2);
    lab.create_network("udpnet", "10.31.0.0/24");
    let create = ["service", "create", "--replicas", "2", "--network", "udpnet", "--name", "echo"];
    lab.ok(&[&create[..], &["--publish", "7000:7/udp", "python3", "-c", UDP_SERVER]].concat());
    let tasks = lab.wait_running("echo", 2);
    let removed = tasks.iter().find(|t| t["Name"] == "echo.2").expect("echo.2");
    let removed_node = lab.host_of(removed);
    let asked = if ask_removed_replicas_node { removed_node } else { 1 - removed_node };
    let address = lab.hosts()[asked].address.to_string();
    let clients = 10;
    let client = lab
        .underlay()
        .command("python3")
        .args(["-c", &udp_clients(&address, 7000, clients, 10)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_secs(4));
    let scaled_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    lab.ok(&["service", "scale", "echo=1"]);
    let output = client.wait_with_output().expect("the UDP clients");
    let remaining = lab.wait_running("echo", 1)[0]["Name"].as_str().unwrap().to_string();

    // (client, time, replica) of every answer.
    let answers: Vec<(usize, f64, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?, fields.next()?.to_string()))
        })
        .collect();
    let moved: Vec<usize> = (0..clients)
        .filter(|c| {
            answers
                .iter()
                .any(|(client, at, replica)| client == c && *at < scaled_at && *replica != remaining)
        })
        .collect();
    assert!(!moved.is_empty(), "no client was on the removed replica: {answers:?}");
    assert_eq!(remaining, "echo.1");
    for client in moved {
        let first_after = answers
            .iter()
            .filter(|(c, at, replica)| *c == client && *at > scaled_at && *replica == remaining)
            .map(|(_, at, _)| at - scaled_at)
            .next();
        assert!(
            first_after.is_some_and(|seconds| seconds < 1.0),
            "client {client} answered by {remaining} only after {first_after:?} s: {answers:?}"
        );
    }
}

#[test]
fn a_host_mode_port_answers_only_where_a_task_runs_and_the_server_sees_the_client() {
    let lab = Lab::start(2);
    lab.create_network("hostnet", "10.33.0.0/24");
    let create = ["service", "create", "--replicas", "1", "--network", "hostnet", "--name", "direct"];
    // It answers with its name and the address that asked.
    let server = http_server("socket.gethostname() + ' ' + self.client_address[0]");
    let publish = ["--publish", "published=8081,target=80,mode=host", "python3", "-c", &server];
    lab.ok(&[&create[..], &publish[..]].concat());
    let task = lab.wait_running("direct", 1).remove(0);
    let here = lab.host_of(&task);
    let ask = |i: usize| {
        let url = format!("http://{}:8081/", lab.hosts()[i].address);
        let output = lab.in_namespace(&lab.underlay().path(), "curl", &["-s", "--max-time", "2", &url]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let expected = format!("direct.1 {UNDERLAY_ADDRESS}");
    assert!(wait_until(Duration::from_secs(10), || ask(here) == expected), "{:?}", ask(here));
    assert_eq!(ask(1 - here), "", "no task on node{}: nothing answers there", 1 - here);
    let listed = lab.ok(&["service", "ls"]);
    assert!(listed.contains("*:8081->80/tcp (host)"), "{listed}");

    // One task per node can hold the port: the third waits.
    lab.ok(&["service", "scale", "direct=3"]);
    let spread = wait_until(Duration::from_secs(30), || {
        let mut hosts: Vec<usize> = lab.running_tasks("direct").iter().map(|t| lab.host_of(t)).collect();
        hosts.sort();
        hosts == [0, 1]
    });
    assert!(spread, "{:#?}", lab.tasks("direct"));
    let waiting =
        lab.tasks("direct").into_iter().find(|t| t["CurrentState"] == "pending").expect("a waiting task");
    assert_eq!(waiting["Error"], "no suitable node (host port 8081/tcp in use on 2 nodes)");
    assert!(wait_until(Duration::from_secs(10), || ask(0).starts_with("direct.")
        && ask(1).starts_with("direct.")));
}

#[test]
fn a_replica_on_the_asked_node_is_reached_straight_and_the_others_on_their_nodes() {
    let lab = Lab::start(2);
    // It answers with its name and the address that asked.
    let server = http_server("socket.gethostname() + ' ' + self.client_address[0]");
    let create = ["service", "create", "--replicas", "2", "--name", "web", "--publish", "8080:80"];
    lab.ok(&[&create[..], &["python3", "-c", &server]].concat());
    let tasks = lab.wait_running("web", 2);
    let here = tasks.iter().find(|t| lab.host_of(t) == 0).expect("a replica on node0");
    let elsewhere = tasks.iter().find(|t| lab.host_of(t) == 1).expect("a replica on node1");
    let (here, elsewhere) = (here["Name"].as_str().unwrap(), elsewhere["Name"].as_str().unwrap());

    // Both answer through node0; the one there sees the client, the other
    // node0 (which forwarded to node1's published port).
    let url = format!("http://{}:8080/", lab.hosts()[0].address);
    let mut seen = BTreeMap::new();
    let balanced = wait_until(Duration::from_secs(20), || {
        seen = tally(&from_underlay(&lab, "python3", &http_client(&url, 60)));
        seen.len() == 2 && seen.values().sum::<usize>() == 60
    });
    assert!(balanced, "{seen:?}");
    let (mut near, mut far) = (0, 0);
    for (answer, count) in &seen {
        let (name, client) = answer.split_once(' ').expect("name and client address");
        if name == here {
            assert_eq!(client, UNDERLAY_ADDRESS, "the replica on node0 sees the client");
            near += count;
        } else {
            assert_eq!(name, elsewhere);
            assert_eq!(client, lab.hosts()[0].address.to_string(), "the other sees node0");
            far += count;
        }
    }
    assert!(near >= 10 && far >= 10, "an even share each: {seen:?}");

    // The path is shown as such (once the agent has reported it with both
    // replicas running).
    let mut published = String::new();
    let shown = wait_until(Duration::from_secs(30), || {
        let topology = lab.ok(&["topology", "--node", "node0"]);
        let line = topology.lines().find(|l| l.trim_start().starts_with("published 8080/tcp"));
        published = line.unwrap_or_default().trim().to_string();
        published.contains("of 2")
    });
    assert!(shown, "{published}");
    assert!(published.contains(": 1 of 2 here (tc fast path) -> 172.18.0."), "{published}");
    let node1 = lab.hosts()[1].address;
    assert!(published.contains(&format!("; 1 of 2 -> nodes {node1}:8080 (1)")), "{published}");
}

#[test]
fn a_task_reaches_its_own_nodes_published_ports() {
    let lab = Lab::start(2);
    let server = http_server(HOSTNAME);
    let on_node0 = ["--constraint", "node.hostname==node0"];
    let alone = ["service", "create", "--name", "alone", "--publish", "8080:80"];
    lab.ok(&[&alone[..], &on_node0[..], &["python3", "-c", &server]].concat());
    let spread = ["service", "create", "--name", "spread", "--replicas", "2", "--publish", "8081:80"];
    lab.ok(&[&spread[..], &["python3", "-c", &server]].concat());
    lab.ok(&[&["service", "create", "--name", "client"][..], &on_node0[..], &["sleep", "10000"]].concat());
    lab.wait_running("alone", 1);
    lab.wait_running("spread", 2);
    lab.wait_running("client", 1);
    let ask = |address: &str, port: u16| {
        let url = format!("http://{address}:{port}/");
        let output = lab.netctl_on(0, &["exec", "client.1", "--", "curl", "-s", "-m", "2", &url]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // Its only replica on the client's own node (br_netfilter or not): asked
    // on that node's address, its gateway, and the other node.
    let node0 = lab.hosts()[0].address.to_string();
    let node1 = lab.hosts()[1].address.to_string();
    for address in [node0.as_str(), "172.18.0.1", node1.as_str()] {
        let mut answer = String::new();
        let answered = wait_until(Duration::from_secs(20), || {
            answer = ask(address, 8080);
            answer.starts_with("alone.1")
        });
        assert!(answered, "the task asking {address}:8080 got {answer:?}\n{}", lab.agent_log(0));
    }
    // A replica on each node: every request from the task is answered.
    let answers: Vec<String> = (0..10).map(|_| ask(&node0, 8081)).collect();
    assert!(answers.iter().all(|a| a.starts_with("spread.")), "{answers:?}");
}

/// Python asking `url`'s host and port over one kept-alive HTTP connection
/// every 50 ms for `seconds`, one line per answer (ERROR on a failure, then
/// a new connection).
fn kept_alive_client(address: &str, port: u16, seconds: u32) -> String {
    format!(
        "import http.client, time\nend = time.time() + {seconds}\nc = http.client.HTTPConnection('{address}', {port}, timeout=2)\n\
         while time.time() < end:\n    try:\n        c.request('GET', '/')\n        \
         print(c.getresponse().read().decode(), flush=True)\n    except Exception as e:\n        \
         print('ERROR', e, flush=True)\n        c = http.client.HTTPConnection('{address}', {port}, timeout=2)\n    \
         time.sleep(0.05)\n"
    )
}

/// The packets the host's DOCKER-INGRESS DNAT for `port` counted.
fn dnat_packets(lab: &Lab, host: usize, port: u16) -> u64 {
    let rules = lab.on_host(host, "iptables-save", &["-c", "-t", "nat"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    let rule = format!("-A DOCKER-INGRESS -p tcp -m tcp --dport {port} -j DNAT");
    let line = rules.lines().find(|l| l.contains(&rule)).unwrap_or_else(|| panic!("no {rule} in {rules}"));
    line.trim_start_matches('[').split(':').next().unwrap().parse().expect("a packet count")
}

#[test]
fn a_replica_here_is_reached_through_the_tc_fast_path_whose_connections_outlive_its_agent() {
    let mut lab = Lab::start(2);
    let create = ["service", "create", "--replicas", "1", "--name", "fast", "--publish", "8080:80"];
    let pinned = ["--constraint", "node.hostname==node0", "python3", "-c", &http_server(HOSTNAME)];
    lab.ok(&[&create[..], &pinned[..]].concat());
    lab.wait_running("fast", 1);
    let address = lab.hosts()[0].address.to_string();
    let url = format!("http://{address}:8080/");
    let answers = || tally(&from_underlay(&lab, "python3", &http_client(&url, 1)));
    assert!(wait_until(Duration::from_secs(20), || answers().contains_key("fast.1")), "{:?}", answers());

    // One connection across the agent's kill -9 and restart.
    let client = lab
        .underlay()
        .command("python3")
        .args(["-c", &kept_alive_client(&address, 8080, 6)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::thread::sleep(Duration::from_secs(1));
    lab.stop_agent(0, nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_secs(1));
    lab.start_agent(0);
    assert!(wait_until(Duration::from_secs(10), || lab.agent_log(0).contains("desired state received")));
    let output = client.wait_with_output().expect("the client");
    let seen = tally(&output);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["fast.1"], "every answer from fast.1, none lost: {seen:?}");
    assert!(seen["fast.1"] > 50, "{seen:?}");

    // tc took the flows before netfilter: the host's DNAT saw none of them
    // (the first request aside, which may have come before the fast path
    // had the replica), and the restarted agent replaced its filter.
    assert!(dnat_packets(&lab, 0, 8080) <= 1, "the host's DNAT carried the flows");
    let filters = lab.on_host(0, "tc", &["filter", "show", "dev", "eth0", "ingress"]);
    let filters = String::from_utf8_lossy(&filters.stdout);
    assert_eq!(filters.lines().filter(|l| l.contains("mesh_ingress")).count(), 1, "{filters}");
    let topology = lab.ok(&["topology", "--node", "node0"]);
    assert!(topology.contains("published 8080/tcp: 1 of 1 here (tc fast path) -> 172.18.0."), "{topology}");
}
