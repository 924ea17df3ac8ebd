//! `netctl topology` against a two-node lab: what agents read back matches
//! what the walkthrough builds, and the dot output renders.

use e2e::lab::{endpoint_address, Lab};
use e2e::wait_until;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

fn namespace<'a>(node: &'a Value, name: &str) -> &'a Value {
    node["Namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["Name"] == name)
        .unwrap_or_else(|| panic!("no namespace {name}"))
}

fn interface<'a>(namespace: &'a Value, name: &str) -> &'a Value {
    namespace["Interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["Name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {}", namespace["Name"]))
}

#[test]
fn topology_shows_namespaces_veth_pairs_vnis_and_fdb_entries() {
    let lab = Lab::start(2);
    let net = lab.create_network("demonet", "192.168.200.0/24");
    lab.create_service("demoservice", 2, "demonet", &["sleep", "10000"]);
    let tasks = lab.wait_running("demoservice", 2);
    let ingress = lab.network_id("ingress");
    let overlay = format!("1-{}", &net[..10]);
    let ingress_overlay = format!("1-{}", &ingress[..10]);

    // Agents report every 5 s: wait for a report that has both sandboxes.
    let mut topology = Value::Null;
    let complete = wait_until(Duration::from_secs(30), || {
        topology = serde_json::from_str(&lab.ok(&["topology", "--format", "json"])).unwrap();
        topology.as_array().is_some_and(|nodes| {
            nodes.len() == 2 && nodes.iter().all(|n| n["Namespaces"].as_array().unwrap().len() == 5)
        })
    });
    assert!(complete, "{topology:#}");
    for task in &tasks {
        let host = lab.host_of(task);
        let node = topology.as_array().unwrap().iter().find(|n| n["Node"] == format!("node{host}")).unwrap();
        let names: BTreeSet<&str> =
            node["Namespaces"].as_array().unwrap().iter().map(|n| n["Name"].as_str().unwrap()).collect();
        let sandbox = &task["ID"].as_str().unwrap()[..12];
        let expected =
            BTreeSet::from(["host", "ingress_sbox", overlay.as_str(), ingress_overlay.as_str(), sandbox]);
        assert_eq!(names, expected);

        let overlay_ns = namespace(node, &overlay);
        assert_eq!(overlay_ns["Role"], "overlay");
        assert_eq!(overlay_ns["Owner"], "network demonet");
        let vxlan = interface(overlay_ns, "vxlan0");
        assert_eq!(vxlan["VXLAN"]["VNI"], 4097);
        assert_eq!(vxlan["VXLAN"]["Port"], 4789);
        assert_eq!(vxlan["VXLAN"]["Learning"], false);
        assert_eq!(vxlan["VXLAN"]["Local"], lab.hosts()[host].address.to_string());
        assert_eq!(vxlan["Master"], "br0");

        // The veth pair: its overlay end on br0, its other end eth0 in the sandbox.
        let sandbox_ns = namespace(node, sandbox);
        assert_eq!(sandbox_ns["Owner"], format!("task {}", task["Name"].as_str().unwrap()));
        let eth0 = interface(sandbox_ns, "eth0");
        assert_eq!(eth0["Peer"]["Namespace"], overlay);
        let peer = interface(overlay_ns, eth0["Peer"]["Name"].as_str().unwrap());
        assert_eq!(peer["Peer"]["Namespace"], sandbox);
        assert_eq!(peer["Peer"]["Name"], "eth0");
        assert_eq!(peer["Master"], "br0");
        let eth1 = interface(sandbox_ns, "eth1");
        assert_eq!(eth1["Peer"]["Namespace"], "host");
        assert_eq!(
            interface(namespace(node, "host"), eth1["Peer"]["Name"].as_str().unwrap())["Master"],
            "docker_gwbridge"
        );

        // The FDB entry for the remote task points at the other node.
        let other = tasks.iter().find(|t| t["ID"] != task["ID"]).unwrap();
        let other_host = lab.hosts()[lab.host_of(other)].address.to_string();
        let fdb = overlay_ns["FDB"].as_array().unwrap();
        assert!(
            fdb.iter()
                .any(|e| e["MAC"] == other["Endpoints"][0]["MAC"] && e["Remote"] == other_host.as_str()),
            "{fdb:?}"
        );
        let neighbours = overlay_ns["Neighbours"].as_array().unwrap();
        assert!(
            neighbours.iter().any(|e| e["Address"] == endpoint_address(other, 0).as_str()),
            "{neighbours:?}"
        );
    }

    let text = lab.ok(&["topology", "--node", "node0"]);
    assert!(text.starts_with("node0 (192.168.10.6)") && text.contains("vni 4097 port 4789"), "{text}");
    let dot = lab.ok(&["topology", "--format", "dot"]);
    assert!(dot.contains("VXLAN 4097 udp/4789"), "{dot}");
    let mut render = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("graphviz (apt-get install graphviz)");
    use std::io::Write;
    render.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
    let svg = render.wait_with_output().unwrap();
    assert!(
        svg.status.success() && String::from_utf8_lossy(&svg.stdout).contains("<svg"),
        "dot failed to render"
    );
    e2e::assert_refused(
        &lab.netctl(&["topology", "--node", "nosuch"]),
        &["topology"],
        "no topology from node nosuch",
    );
}
