//! The secure control plane from outside: every call over TLS, tokens that
//! pin the cluster CA, a node's identity taken from its certificate (never
//! from a request field), rotation and removal, certificates renewed under
//! traffic, and VXLAN closed to anyone who is not a node.

use e2e::lab::{endpoint_address, Lab, UNDERLAY_ADDRESS};
use e2e::{wait_until, ControlPlane};
use netctl_proto::control_client::ControlClient;
use netctl_proto::dispatcher_client::DispatcherClient;
use netctl_proto::pki::{NodeKey, Token};
use netctl_proto::*;
use nix::sys::signal::Signal;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tonic::Code;

/// Runs `work` on a fresh runtime inside the cluster's namespace.
fn inside<T: Send>(cluster: &ControlPlane, work: impl std::future::Future<Output = T> + Send) -> T {
    cluster.run_inside(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(work)
    })
}

/// A Dispatcher client over a channel that trusts the CA the join token
/// pins and presents the join token.
async fn token_dispatcher(
    manager: &str,
    join_token: &str,
) -> DispatcherClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>>
{
    let token = Token::parse(join_token).unwrap();
    let (channel, _) = netctl_proto::connect_with_token(manager, &token).await.unwrap();
    DispatcherClient::with_interceptor(channel, BearerToken::new(join_token).unwrap())
}

/// A join request for `hostname` with `key`'s certificate request.
fn join_request(hostname: &str, key: &NodeKey) -> JoinRequest {
    JoinRequest {
        hostname: hostname.into(),
        advertise_addr: "127.0.0.2".into(),
        csr: key.csr_der.clone(),
        desired_state_version: DESIRED_STATE_VERSION,
        ..Default::default()
    }
}

/// The credentials an agent keeps in its state dir.
fn kept_identity(state_dir: &Path) -> (String, NodeIdentity, String) {
    let read = |name: &str| std::fs::read_to_string(state_dir.join(name)).unwrap();
    let identity = NodeIdentity { certificate_pem: read("node.crt"), key_pem: read("node.key") };
    (read("node-id").trim().to_string(), identity, read("ca.crt"))
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn a_node_is_what_its_certificate_says_and_nothing_else() {
    let cluster = ControlPlane::start(&[]);
    let agent = cluster.start_agent("node0", &cluster.join_token());
    assert!(wait_until(Duration::from_secs(15), || agent
        .log()
        .contains("connected with the node certificate")));
    let state_dir = cluster.dir().join("agent-node0");
    for file in ["node.crt", "node.key", "ca.crt"] {
        let mode = std::fs::metadata(state_dir.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let (node0, node0_identity, ca) = kept_identity(&state_dir);
    let (manager, join_token, admin_token) =
        (cluster.manager_url(), cluster.join_token(), cluster.admin_token());

    inside(&cluster, async {
        let mut joining = token_dispatcher(&manager, &join_token).await;
        let node1 =
            joining.join(join_request("node1", &NodeKey::generate().unwrap())).await.unwrap().into_inner();
        assert!(node1.certificate.contains("BEGIN CERTIFICATE"));

        // The join token cannot buy another node's identity.
        let named = NodeKey::generate_for(Some(&node0)).unwrap();
        let refused = joining.join(join_request("thief", &named)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(&format!("names node {node0}")), "{refused:?}");
        let claimed =
            JoinRequest { node_id: node0.clone(), ..join_request("thief", &NodeKey::generate().unwrap()) };
        let refused = joining.join(claimed).await.unwrap_err();
        assert!(refused.message().contains(&format!("cannot act as node {node0}")), "{refused:?}");
        let garbage = JoinRequest { csr: b"not a request".to_vec(), ..join_request("thief", &named) };
        let refused = joining.join(garbage).await.unwrap_err();
        assert!(refused.message().contains("certificate request is malformed"), "{refused:?}");
        // The data path runs over IPv4: an IPv6 advertise address joins nothing.
        let ipv6 = JoinRequest {
            advertise_addr: "fd00::2".into(),
            ..join_request("v6", &NodeKey::generate().unwrap())
        };
        let refused = joining.join(ipv6).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("advertise address fd00::2 is IPv6"), "{refused:?}");
        // An agent of an earlier desired-state version waits (a status it
        // retries), told what to upgrade, and joins nothing.
        let older =
            JoinRequest { desired_state_version: 0, ..join_request("older", &NodeKey::generate().unwrap()) };
        let refused = joining.join(older).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let versions =
            format!("reads desired-state version 0; this manager sends version {DESIRED_STATE_VERSION}");
        assert!(refused.message().contains(&versions), "{refused:?}");
        assert!(refused.message().contains("upgrade the agent"), "{refused:?}");
        // The join token alone opens nothing else.
        let refused = joining.watch(WatchRequest { node_id: node1.node_id.clone() }).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

        // node0's certificate acts for node0 only.
        let channel = netctl_proto::connect(&manager, &ca, Some(&node0_identity)).await.unwrap();
        let mut as_node0 = DispatcherClient::new(channel.clone());
        let other = node1.node_id.clone();
        let denied = [
            as_node0.watch(WatchRequest { node_id: other.clone() }).await.map(|_| ()).unwrap_err(),
            as_node0.heartbeat(HeartbeatRequest { node_id: other.clone() }).await.map(|_| ()).unwrap_err(),
            as_node0
                .report_status(ReportStatusRequest { node_id: other.clone(), tasks: vec![] })
                .await
                .map(|_| ())
                .unwrap_err(),
            as_node0.log_offsets(LogOffsetsRequest { node_id: other.clone() }).await.map(|_| ()).unwrap_err(),
        ];
        for status in denied {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(status.message().contains(&format!("for node {other}")), "{status:?}");
        }
        as_node0.heartbeat(HeartbeatRequest { node_id: node0.clone() }).await.unwrap();
        // ... and gives no access to Control.
        let refused = ControlClient::new(channel).list_nodes(NodeListRequest {}).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

        // A certificate from another CA does not even get a connection through.
        let foreign_ca = rcgen::CertifiedIssuer::self_signed(
            {
                let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                params
            },
            rcgen::KeyPair::generate().unwrap(),
        )
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, node0.as_str());
        params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "worker");
        let forged = NodeIdentity {
            certificate_pem: params.signed_by(&key, &foreign_ca).unwrap().pem(),
            key_pem: key.serialize_pem(),
        };
        let forged_call = async {
            let channel = netctl_proto::connect(&manager, &ca, Some(&forged)).await.map_err(|e| e.reason)?;
            DispatcherClient::new(channel)
                .heartbeat(HeartbeatRequest { node_id: node0.clone() })
                .await
                .map_err(|s| s.to_string())
        };
        assert!(forged_call.await.is_err(), "a foreign CA's certificate was accepted");
    });

    // An admin token, presented over TLS, opens Control.
    let digest = Token::parse(&admin_token).unwrap().ca_digest;
    let info = cluster.ok(&["cluster", "info"]);
    assert!(info.contains(&format!("sha256:{digest}")), "{info}");
    assert!(info.contains("Node cert expiry:     90 days"), "{info}");
    let fingerprint = cluster
        .command("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cluster.dir().join("manager").join("ca.crt"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout).replace(':', "").to_lowercase();
    assert!(fingerprint.contains(&digest), "openssl sees another CA: {fingerprint}");
    let inspected: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["node", "inspect", "node0"])).unwrap();
    let certificate = &inspected[0]["Certificate"];
    assert_eq!(certificate["Subject"], format!("CN={node0},OU=worker,O=netctl"));
    assert_eq!(certificate["IssuerDigest"], format!("sha256:{digest}"));
    assert!(certificate["NotAfter"].as_str().unwrap().starts_with("20"), "{certificate}");
    drop(agent);
}

#[test]
fn a_member_whose_agent_reads_another_version_stays_ready_and_takes_no_new_task() {
    // Down after three missed heartbeats: 0.9 s.
    let cluster = ControlPlane::start(&["--dispatcher-heartbeat", "300ms"]);
    let (manager, join_token) = (cluster.manager_url(), cluster.join_token());
    let key = NodeKey::generate().unwrap();
    let (node, identity, ca) = inside(&cluster, async {
        let mut joining = token_dispatcher(&manager, &join_token).await;
        let joined = joining.join(join_request("outdated", &key)).await.unwrap().into_inner();
        let identity = NodeIdentity { certificate_pem: joined.certificate, key_pem: key.key_pem.clone() };
        (joined.node_id, identity, joined.ca_certificate)
    });
    let status = || {
        let nodes = cluster.nodes();
        nodes.iter().find(|n| n["ID"] == node.as_str()).map(|n| n["Status"].to_string()).unwrap_or_default()
    };
    // Its agent, upgraded later than the manager, asks to join every
    // 200 ms with a version the manager does not send, for 3 s.
    let asking = std::thread::scope(|scope| {
        let asking = scope.spawn(|| {
            inside(&cluster, async {
                let channel = netctl_proto::connect(&manager, &ca, Some(&identity)).await.unwrap();
                let mut as_node = DispatcherClient::new(channel);
                for _ in 0..15 {
                    let older = JoinRequest { desired_state_version: 0, ..join_request("outdated", &key) };
                    let refused = as_node.join(older).await.unwrap_err();
                    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        cluster.ok(&["service", "create", "--replicas", "1", "--name", "waits", "sleep", "1000"]);
        std::thread::sleep(Duration::from_secs(2));
        let inspected: serde_json::Value =
            serde_json::from_str(&cluster.ok(&["node", "inspect", &node])).unwrap();
        let message = inspected[0]["Status"]["Message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("its agent reads desired-state version 0"), "{inspected}");
        assert!(message.contains("no new task until the agent is upgraded"), "{inspected}");
        let seen = (status(), cluster.ok(&["service", "ps", "--format", "json", "waits"]));
        asking.join().unwrap();
        seen
    });
    let (ready, tasks) = asking;
    assert_eq!(ready, "\"Ready\"", "alive while it asks to join");
    let tasks = e2e::json_lines(&tasks);
    assert!(
        tasks.iter().all(|t| t["CurrentState"] == "pending"),
        "no task for an outdated agent: {tasks:#?}"
    );
    // Silent: Down as any other node.
    assert!(wait_until(Duration::from_secs(10), || status() == "\"Down\""), "{}", status());
}

#[test]
fn tokens_pin_the_ca_rotate_and_plaintext_is_told_to_use_tls() {
    let cluster = ControlPlane::start(&["--dispatcher-heartbeat", "300ms"]);
    let join_token = cluster.join_token();
    let digest = Token::parse(&join_token).unwrap().ca_digest;
    let flipped = format!("{}{}", if digest.starts_with('0') { '1' } else { '0' }, &digest[1..]);
    let mut pinned_elsewhere = cluster.start_agent("elsewhere", &join_token.replace(&digest, &flipped));
    assert!(wait_until(Duration::from_secs(10), || pinned_elsewhere.try_exit_code().is_some()));
    assert_eq!(pinned_elsewhere.try_exit_code(), Some(1));
    let log = pinned_elsewhere.log();
    assert!(
        log.contains(&format!("the manager's CA has digest {digest}, but the token pins {flipped}")),
        "{log}"
    );
    let client =
        cluster.netctl_with_token(Some(&cluster.admin_token().replace(&digest, &flipped)), &["node", "ls"]);
    assert_eq!(client.status.code(), Some(1));
    assert!(stderr(&client).contains(&format!("but the token pins {flipped}")), "{}", stderr(&client));

    let agent = cluster.start_agent("node0", &join_token);
    assert!(wait_until(Duration::from_secs(15), || cluster.nodes().iter().any(|n| n["Status"] == "Ready")));

    // Rotation: the old join token is refused, the joined node stays Ready.
    let rotated = cluster.ok(&["cluster", "join-token", "--rotate", "-q"]);
    assert_ne!(rotated.trim(), join_token);
    assert_eq!(cluster.join_token(), rotated.trim(), "the token file follows the rotation");
    let mut late = cluster.start_agent("late", &join_token);
    assert!(wait_until(Duration::from_secs(10), || late.try_exit_code().is_some()));
    assert!(late.log().contains("join token presented is not valid"), "{}", late.log());
    std::thread::sleep(Duration::from_secs(2));
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["Status"], "Ready", "{}", agent.log());
    let fresh = cluster.start_agent("fresh", rotated.trim());
    assert!(wait_until(Duration::from_secs(15), || fresh
        .log()
        .contains("connected with the node certificate")));

    // The admin token rotates the same way.
    let old_admin = cluster.admin_token();
    let new_admin = cluster.ok(&["cluster", "join-token", "--rotate", "admin", "-q"]);
    let refused = cluster.netctl_with_token(Some(&old_admin), &["node", "ls"]);
    assert!(stderr(&refused).contains("admin token presented is not valid"), "{}", stderr(&refused));
    assert!(cluster.netctl_with_token(Some(new_admin.trim()), &["node", "ls"]).status.success());

    // A plaintext client is told to use TLS, over HTTP/1 and HTTP/2.
    for args in
        [&["-s", "http://127.0.0.1:4243/"][..], &["-s", "--http2-prior-knowledge", "http://127.0.0.1:4243/"]]
    {
        let output = cluster.command("curl").args(args).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &stderr(&output);
        if args.len() == 2 {
            assert!(text.contains("requires TLS"), "{args:?}: {text}");
        } else {
            assert!(!output.status.success(), "an HTTP/2 client in clear got an answer: {text}");
        }
    }

    // A manager restart keeps the CA and every certificate: no rejoin.
    let mut cluster = cluster;
    cluster.stop_manager(Signal::SIGTERM);
    cluster.start_manager();
    assert_eq!(Token::parse(&cluster.join_token()).unwrap().ca_digest, digest);
    agent.assert_reconnected_with_its_certificate();
}

#[test]
fn an_expired_certificate_is_refused_and_a_live_one_is_renewed() {
    let cluster = ControlPlane::start(&["--cert-expiry", "10s", "--dispatcher-heartbeat", "300ms"]);
    let agent = cluster.start_agent("node0", &cluster.join_token());
    assert!(wait_until(Duration::from_secs(15), || agent
        .log()
        .contains("connected with the node certificate")));
    let first = std::fs::read_to_string(cluster.dir().join("agent-node0").join("node.crt")).unwrap();
    let (manager, join_token) = (cluster.manager_url(), cluster.join_token());
    let (ca, identity) = inside(&cluster, async {
        let mut joining = token_dispatcher(&manager, &join_token).await;
        let key = NodeKey::generate().unwrap();
        let joined = joining.join(join_request("brief", &key)).await.unwrap().into_inner();
        (joined.ca_certificate, NodeIdentity { certificate_pem: joined.certificate, key_pem: key.key_pem })
    });
    std::thread::sleep(Duration::from_secs(11));
    let expired = inside(&cluster, async {
        let channel = netctl_proto::connect(&manager, &ca, Some(&identity)).await.map_err(|e| e.reason)?;
        DispatcherClient::new(channel).heartbeat(HeartbeatRequest::default()).await.map_err(|s| s.to_string())
    });
    assert!(expired.is_err(), "an expired certificate was accepted");

    let renewed = std::fs::read_to_string(cluster.dir().join("agent-node0").join("node.crt")).unwrap();
    assert_ne!(renewed, first, "node0's certificate was not renewed: {}", agent.log());
    assert!(agent.log().matches("node certificate renewed").count() >= 2, "{}", agent.log());
    let node0 = cluster.nodes().into_iter().find(|n| n["Hostname"] == "node0").unwrap();
    assert_eq!(node0["Status"], "Ready");
}

/// The DROP counter of the host's NETCTL-DATAPATH chain on lab host `i`.
fn dropped_vxlan(lab: &Lab, i: usize) -> u64 {
    let output = lab.on_host(i, "iptables", &["-L", "NETCTL-DATAPATH", "-v", "-n", "-x"]);
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    text.lines()
        .find(|l| l.contains("DROP"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no DROP rule in NETCTL-DATAPATH: {text}"))
}

#[test]
fn the_wire_shows_no_secret_vxlan_admits_only_nodes_and_removal_holds() {
    let mut lab = Lab::start_configured(2, &["--cert-expiry", "10s"], &[]);
    let capture = tempfile::NamedTempFile::new().unwrap();
    let mut tcpdump = lab
        .underlay()
        .command("tcpdump")
        .args(["-i", "any", "-U", "-s", "0", "-w"])
        .arg(capture.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // node1 joins anew under the capture: token, certificate request, watch.
    lab.stop_agent(1, Signal::SIGTERM);
    lab.ok(&["node", "rm", "--force", "node1"]);
    std::fs::remove_file(lab.hosts()[1].state_dir.join("node.crt")).unwrap();
    lab.start_agent(1);
    assert!(wait_until(Duration::from_secs(20), || lab
        .nodes()
        .iter()
        .filter(|n| n["Status"] == "Ready")
        .count()
        == 2));
    lab.create_network("secretnet", "10.220.0.0/24");
    let marker = "netctl-marker-58213";
    lab.ok(&["service", "create", "--name", "quiet", "--replicas", "2", "--network", "secretnet"]
        .into_iter()
        .chain(["--env", &format!("MARKER={marker}"), "sleep", "58213000"])
        .collect::<Vec<_>>());
    let tasks = lab.wait_running("quiet", 2);
    assert_ne!(lab.host_of(&tasks[0]), lab.host_of(&tasks[1]), "one task per node");

    // Someone on the underlay who is not a node sends to the VXLAN port.
    let before = dropped_vxlan(&lab, 0);
    let inject = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(20): s.sendto(b'x'*64,('192.168.10.6',4789))";
    let sent = lab.underlay().command("python3").args(["-c", inject]).status().unwrap();
    assert!(sent.success());
    assert!(dropped_vxlan(&lab, 0) >= before + 20, "the stranger's datagrams were not dropped");
    let _ = UNDERLAY_ADDRESS;

    // Overlay traffic between nodes flows while certificates renew.
    let ping = lab.in_task(&tasks[0], "ping", &["-c", "60", "-i", "0.2", &endpoint_address(&tasks[1], 0)]);
    let summary = String::from_utf8_lossy(&ping.stdout).to_string();
    let received: usize = summary
        .split(", ")
        .find_map(|part| part.strip_suffix(" received").and_then(|n| n.parse().ok()))
        .expect("ping summary");
    assert!(received >= 59, "traffic interrupted: {summary}");
    for i in 0..2 {
        assert!(lab.agent_log(i).contains("node certificate renewed"), "node{i}: {}", lab.agent_log(i));
    }

    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(tcpdump.id() as i32), Signal::SIGINT);
    let _ = tcpdump.wait();
    let wire = std::fs::read(capture.path()).unwrap();
    let read = lab
        .underlay()
        .command("tcpdump")
        .args(["-nn", "-r"])
        .arg(capture.path())
        .arg("tcp port 4243")
        .output();
    let tls_packets = String::from_utf8_lossy(&read.unwrap().stdout).lines().count();
    assert!(tls_packets > 20, "the capture saw no control-plane traffic ({tls_packets} packets)");
    let contains = |needle: &str| wire.windows(needle.len()).any(|w| w == needle.as_bytes());
    for token in lab.tokens() {
        assert!(!contains(token.rsplit('-').next().unwrap()), "a token crossed the wire in clear");
    }
    assert!(
        !contains(marker) && !contains("58213000"),
        "a task's command or environment crossed the wire in clear"
    );

    // node1 removed: its agent stops and says why, its task runs on node0,
    // and node0 drops node1's VXLAN from the next pass on.
    let node0_had_node1 = |lab: &Lab| {
        String::from_utf8_lossy(&lab.on_host(0, "iptables", &["-S", "NETCTL-DATAPATH"]).stdout)
            .contains("192.168.10.7")
    };
    assert!(node0_had_node1(&lab));
    lab.ok(&["node", "rm", "--force", "node1"]);
    assert!(wait_until(Duration::from_secs(10), || lab
        .agent_log(1)
        .contains("was removed from the cluster")));
    assert!(wait_until(Duration::from_secs(5), || !node0_had_node1(&lab)), "node1 is still admitted");
    assert!(wait_until(Duration::from_secs(20), || {
        let running = lab.running_tasks("quiet");
        running.len() == 2 && running.iter().all(|t| lab.host_of(t) == 0)
    }));
}
