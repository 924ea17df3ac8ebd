//! Host ports a process on this node already holds. A published port is
//! DNATed to the routing mesh before any local socket sees it, so a process
//! listening on it gets nothing: the agent says so in the ERROR of the tasks
//! behind that port and in its log. The manager cannot see node-local
//! sockets; the agent reads them from `/proc/self/net` (the host namespace:
//! the agent's main thread never leaves it).

use netctl_proto::{PublishedPort, TaskSpec};
use std::collections::BTreeSet;

/// A TCP socket in LISTEN (`/proc/net/tcp`'s `st` column).
const TCP_LISTEN: &str = "0A";

/// The local ports in one `/proc/net/{tcp,udp}[6]` table: TCP sockets that
/// listen, or every UDP socket (pure).
pub fn parse_table(text: &str, tcp: bool) -> BTreeSet<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            if tcp && *state != TCP_LISTEN {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// The (protocol, port) pairs bound on this host: TCP listeners and UDP
/// sockets, IPv4 and IPv6.
pub fn bound() -> BTreeSet<(&'static str, u16)> {
    let mut bound = BTreeSet::new();
    for (protocol, tables) in [("tcp", ["tcp", "tcp6"]), ("udp", ["udp", "udp6"])] {
        for table in tables {
            let text = std::fs::read_to_string(format!("/proc/self/net/{table}")).unwrap_or_default();
            bound.extend(parse_table(&text, protocol == "tcp").into_iter().map(|port| (protocol, port)));
        }
    }
    bound
}

/// For each of `tasks` behind a published port (through the mesh, or in
/// host mode on this node) some process on this host holds: what to say
/// in its ERROR (pure).
pub fn conflicts(
    ports: &[PublishedPort],
    tasks: &[TaskSpec],
    bound: &BTreeSet<(&str, u16)>,
) -> Vec<(String, String)> {
    let held = |protocol: &str, published: u32| {
        let number = u16::try_from(published).ok()?;
        bound.contains(&(protocol, number)).then(|| {
            format!(
                "port {published}/{protocol} is published, but a process on this node listens on it: the published port is DNATed away before that process sees its traffic"
            )
        })
    };
    let mut said = Vec::new();
    for port in ports {
        let Some(problem) = held(&port.protocol, port.published_port) else { continue };
        for task in tasks.iter().filter(|t| t.endpoints.iter().any(|e| port.backends.contains(&e.address))) {
            said.push((task.id.clone(), problem.clone()));
        }
    }
    for task in tasks {
        said.extend(
            task.host_ports
                .iter()
                .filter_map(|p| held(&p.protocol, p.published_port))
                .map(|problem| (task.id.clone(), problem)),
        );
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0 0
";

    #[test]
    fn listening_tcp_and_bound_udp_ports_are_read() {
        assert_eq!(parse_table(TCP, true), BTreeSet::from([8080]), "port 80 is a connection, not a listener");
        assert_eq!(parse_table(UDP, false), BTreeSet::from([53]));
        assert!(parse_table("header only\n", true).is_empty());
    }

    #[test]
    fn only_tasks_behind_a_held_port_are_told() {
        let port = PublishedPort {
            service: String::new(),
            protocol: "tcp".into(),
            published_port: 8080,
            target_port: 80,
            backends: vec!["10.0.0.5".into()],
        };
        let task = |id: &str, address: &str| TaskSpec {
            id: id.into(),
            endpoints: vec![netctl_proto::EndpointAddress { address: address.into(), ..Default::default() }],
            ..Default::default()
        };
        let tasks = [task("behind", "10.0.0.5"), task("other", "10.0.0.6")];
        let said = conflicts(std::slice::from_ref(&port), &tasks, &BTreeSet::from([("tcp", 8080)]));
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].0, "behind");
        assert!(said[0]
            .1
            .starts_with("port 8080/tcp is published, but a process on this node listens on it"));
        assert!(conflicts(std::slice::from_ref(&port), &tasks, &BTreeSet::from([("udp", 8080)])).is_empty());
        // A host-mode port of a task of this node.
        let direct = TaskSpec {
            id: "direct".into(),
            host_ports: vec![netctl_proto::PortConfig {
                protocol: "udp".into(),
                published_port: 8080,
                ..Default::default()
            }],
            ..Default::default()
        };
        let said = conflicts(&[], &[direct], &BTreeSet::from([("udp", 8080)]));
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].0, "direct");
    }
}
