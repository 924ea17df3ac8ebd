//! `netctl topology` renderings of what agents read back (pure): text for
//! reading, JSON for scripts, Graphviz dot for the walkthroughs' missing
//! diagrams (hosts, namespaces, veth pairs, bridges, VXLAN tunnels).

use netctl_proto::{NodeTopology, TopologyInterface, TopologyNamespace};
use serde_json::{json, Value};
use std::fmt::Write;

fn interface_json(i: &TopologyInterface) -> Value {
    let mut value = json!({
        "Name": i.name, "Kind": i.kind, "MTU": i.mtu, "MAC": i.mac, "Up": i.up,
        "Master": i.master, "Addresses": i.addresses,
    });
    if !i.peer_name.is_empty() {
        value["Peer"] = json!({ "Namespace": i.peer_namespace, "Name": i.peer_name });
    }
    if i.kind == "vxlan" {
        value["VXLAN"] = json!({ "VNI": i.vni, "Port": i.port, "Local": i.local, "Learning": i.learning });
    }
    value
}

fn namespace_json(n: &TopologyNamespace) -> Value {
    json!({
        "Name": n.name, "Role": n.role, "Owner": n.owner,
        "Interfaces": n.interfaces.iter().map(interface_json).collect::<Vec<_>>(),
        "Routes": n.routes.iter().map(|r| json!({ "Destination": r.destination, "Gateway": r.gateway, "Device": r.device })).collect::<Vec<_>>(),
        "FDB": n.fdb.iter().map(|e| json!({ "Device": e.device, "MAC": e.mac, "Remote": e.address })).collect::<Vec<_>>(),
        "Neighbours": n.neighbours.iter().map(|e| json!({ "Device": e.device, "Address": e.address, "MAC": e.mac })).collect::<Vec<_>>(),
        "Rules": n.rules,
        "Resolver": n.resolver,
        "Names": n.names,
        "Published": n.published,
    })
}

/// The topology as a JSON array, one object per node.
pub fn json(nodes: &[NodeTopology]) -> Value {
    Value::Array(
        nodes
            .iter()
            .map(|node| {
                json!({
                    "Node": node.hostname, "NodeID": node.node_id, "Address": node.address, "ReadAt": node.read_unix,
                    "Namespaces": node.namespaces.iter().map(namespace_json).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// The topology as indented text.
pub fn text(nodes: &[NodeTopology]) -> String {
    let mut out = String::new();
    for node in nodes {
        let _ = writeln!(out, "{} ({})", node.hostname, node.address);
        for namespace in &node.namespaces {
            let owner =
                if namespace.owner.is_empty() { String::new() } else { format!(", {}", namespace.owner) };
            let _ = writeln!(out, "  namespace {} ({}{owner})", namespace.name, namespace.role);
            for i in namespace.interfaces.iter().filter(|i| i.name != "lo") {
                let mut line = format!("    {:<16} {:<7} mtu {:<5}", i.name, i.kind, i.mtu);
                if !i.addresses.is_empty() {
                    let _ = write!(line, " {}", i.addresses.join(" "));
                }
                if i.kind == "vxlan" {
                    let learning = if i.learning { "on" } else { "off" };
                    let _ =
                        write!(line, " vni {} port {} local {} learning {learning}", i.vni, i.port, i.local);
                }
                if !i.master.is_empty() {
                    let _ = write!(line, " master {}", i.master);
                }
                if !i.peer_name.is_empty() {
                    let _ = write!(line, " <-> {} in {}", i.peer_name, i.peer_namespace);
                }
                let _ = writeln!(out, "{}", line.trim_end());
            }
            for e in &namespace.fdb {
                let _ = writeln!(out, "    fdb   {} dev {} dst {}", e.mac, e.device, e.address);
            }
            for e in &namespace.neighbours {
                let _ = writeln!(out, "    neigh {} lladdr {} dev {}", e.address, e.mac, e.device);
            }
            for r in namespace.routes.iter().filter(|r| !r.device.is_empty() || !r.gateway.is_empty()) {
                let via = if r.gateway.is_empty() { String::new() } else { format!(" via {}", r.gateway) };
                let destination =
                    if r.destination == "0.0.0.0/0" { "default" } else { r.destination.as_str() };
                let _ = writeln!(out, "    route {destination}{via} dev {}", r.device);
            }
            for path in &namespace.published {
                let _ = writeln!(out, "    published {path}");
            }
            for rule in &namespace.rules {
                let _ = writeln!(out, "    rule  {rule}");
            }
            if !namespace.resolver.is_empty() {
                let _ = writeln!(
                    out,
                    "    resolver  {} answers: {}",
                    namespace.resolver,
                    namespace.names.join(" ")
                );
            }
        }
    }
    out
}

fn dot_id(parts: &[&str]) -> String {
    format!("\"{}\"", parts.join("/").replace('"', "'"))
}

/// The topology as a Graphviz digraph: a cluster per host, a cluster per
/// namespace, veth pairs as plain edges, bridge ports as dashed edges to
/// their bridge, VXLAN tunnels as bold edges between the VXLAN devices of the
/// same VNI on different hosts, and each host's eth0 on the underlay.
pub fn dot(nodes: &[NodeTopology]) -> String {
    let mut out =
        String::from("graph netctl {\n  compound=true; rankdir=LR; node [shape=box, fontsize=10];\n");
    out.push_str("  underlay [shape=ellipse, label=\"underlay\"];\n");
    for node in nodes {
        let _ = writeln!(
            out,
            "  subgraph {} {{\n    label=\"{} ({})\";",
            dot_id(&["cluster", &node.hostname]),
            node.hostname,
            node.address
        );
        for namespace in &node.namespaces {
            let owner =
                if namespace.owner.is_empty() { String::new() } else { format!("\\n{}", namespace.owner) };
            let _ = writeln!(
                out,
                "    subgraph {} {{\n      label=\"{} ({}){owner}\"; style=rounded;",
                dot_id(&["cluster", &node.hostname, &namespace.name]),
                namespace.name,
                namespace.role
            );
            for i in namespace.interfaces.iter().filter(|i| i.name != "lo") {
                let detail = match i.kind.as_str() {
                    "vxlan" => format!("\\nVNI {} :{}", i.vni, i.port),
                    _ => i.addresses.first().map(|a| format!("\\n{a}")).unwrap_or_default(),
                };
                let shape = if i.kind == "bridge" { ", shape=component" } else { "" };
                let _ = writeln!(
                    out,
                    "      {} [label=\"{}{detail}\"{shape}];",
                    dot_id(&[&node.hostname, &namespace.name, &i.name]),
                    i.name
                );
            }
            out.push_str("    }\n");
        }
        out.push_str("  }\n");
    }
    for node in nodes {
        for namespace in &node.namespaces {
            for i in &namespace.interfaces {
                let me = dot_id(&[&node.hostname, &namespace.name, &i.name]);
                if !i.master.is_empty() {
                    let bridge = dot_id(&[&node.hostname, &namespace.name, &i.master]);
                    let _ = writeln!(out, "  {me} -- {bridge} [style=dashed];");
                }
                // Each veth pair once: from the end whose namespace sorts first.
                if !i.peer_name.is_empty()
                    && (namespace.name.as_str(), i.name.as_str())
                        < (i.peer_namespace.as_str(), i.peer_name.as_str())
                {
                    let peer = dot_id(&[&node.hostname, &i.peer_namespace, &i.peer_name]);
                    let _ = writeln!(out, "  {me} -- {peer} [label=\"veth\"];");
                }
                if namespace.role == "host" && i.name == "eth0" {
                    let _ = writeln!(out, "  {me} -- underlay;");
                }
            }
        }
    }
    let vxlans: Vec<(&NodeTopology, &TopologyNamespace, &TopologyInterface)> = nodes
        .iter()
        .flat_map(|n| n.namespaces.iter().map(move |ns| (n, ns)))
        .flat_map(|(n, ns)| ns.interfaces.iter().filter(|i| i.kind == "vxlan").map(move |i| (n, ns, i)))
        .collect();
    for (a, (node_a, ns_a, vx_a)) in vxlans.iter().enumerate() {
        for (node_b, ns_b, vx_b) in vxlans.iter().skip(a + 1) {
            if vx_a.vni == vx_b.vni && node_a.hostname != node_b.hostname {
                let _ = writeln!(
                    out,
                    "  {} -- {} [style=bold, color=blue, label=\"VXLAN {} udp/{}\"];",
                    dot_id(&[&node_a.hostname, &ns_a.name, &vx_a.name]),
                    dot_id(&[&node_b.hostname, &ns_b.name, &vx_b.name]),
                    vx_a.vni,
                    vx_a.port
                );
            }
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(hostname: &str) -> NodeTopology {
        let vxlan = TopologyInterface {
            name: "vxlan0".into(),
            kind: "vxlan".into(),
            vni: 4097,
            port: 4789,
            master: "br0".into(),
            ..Default::default()
        };
        let veth = TopologyInterface {
            name: "veth0".into(),
            kind: "veth".into(),
            master: "br0".into(),
            peer_namespace: "task1".into(),
            peer_name: "eth0".into(),
            ..Default::default()
        };
        let bridge = TopologyInterface { name: "br0".into(), kind: "bridge".into(), ..Default::default() };
        NodeTopology {
            hostname: hostname.into(),
            namespaces: vec![TopologyNamespace {
                name: "1-net".into(),
                role: "overlay".into(),
                interfaces: vec![bridge, vxlan, veth],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn dot_draws_veths_bridge_ports_and_tunnels() {
        let dot = dot(&[node("node0"), node("node1")]);
        assert!(dot.contains("\"node0/1-net/veth0\" -- \"node0/task1/eth0\" [label=\"veth\"]"), "{dot}");
        assert!(dot.contains("\"node0/1-net/vxlan0\" -- \"node0/1-net/br0\" [style=dashed]"), "{dot}");
        assert!(dot.contains("\"node0/1-net/vxlan0\" -- \"node1/1-net/vxlan0\" [style=bold, color=blue, label=\"VXLAN 4097 udp/4789\"]"), "{dot}");
    }

    #[test]
    fn text_and_json_show_peers_and_vnis() {
        let text = text(&[node("node0")]);
        assert!(text.contains("veth0") && text.contains("<-> eth0 in task1"), "{text}");
        assert!(text.contains("vni 4097 port 4789"), "{text}");
        let json = json(&[node("node0")]);
        assert_eq!(json[0]["Namespaces"][0]["Interfaces"][1]["VXLAN"]["VNI"], 4097);
        assert_eq!(json[0]["Namespaces"][0]["Interfaces"][2]["Peer"]["Namespace"], "task1");
    }
}
