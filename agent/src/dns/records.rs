//! The names a node's resolver answers, built from the node's desired state
//! (pure): per overlay network, each service's name and aliases (its VIP,
//! or in dnsrr mode its running tasks), `tasks.<service>` (its running
//! tasks), each task's `<service>.<slot>` (its hostname) and
//! `<service>.<slot>.<task id>`, and the reverse (PTR) names of every VIP
//! and task address, in Docker's shape. A sandbox sees only the networks
//! its task is on. Lookups are case-insensitive.

use netctl_proto::NodeState;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// What a name stands for on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One address (a VIP or a single task).
    One(Ipv4Addr),
    /// Running tasks, answered in random order (may be none).
    Tasks(Vec<Ipv4Addr>),
}

/// The answer to a name, for one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A cluster name: its addresses.
    Found(&'a Target),
    /// A name in the cluster's space that does not exist (`tasks.nosuch`).
    NoSuchName,
    /// Not the cluster's: ask the upstream resolvers.
    Elsewhere,
}

/// The names of one network.
#[derive(Debug, Default)]
struct NetworkRecords {
    /// Lowercase name → target.
    forward: HashMap<String, Target>,
    /// Address → reverse name (without the trailing dot).
    reverse: HashMap<Ipv4Addr, String>,
}

/// Every name of every overlay of the node.
#[derive(Debug, Default)]
pub struct Records {
    networks: HashMap<String, NetworkRecords>,
}

/// The prefix of the names that answer a service's tasks.
const TASKS_PREFIX: &str = "tasks.";

impl Records {
    /// The names in `state`.
    pub fn build(state: &NodeState) -> Self {
        let network_names: HashMap<&str, &str> = state
            .networks
            .iter()
            .filter_map(|a| a.network.as_ref())
            .map(|n| (n.id.as_str(), n.name.as_str()))
            .collect();
        let mut records = Records::default();
        for service in &state.names {
            let network_name = network_names.get(service.network_id.as_str()).copied().unwrap_or_default();
            let network = records.networks.entry(service.network_id.clone()).or_default();
            let tasks: Vec<Ipv4Addr> = service.tasks.iter().filter_map(|t| t.address.parse().ok()).collect();
            let vip: Option<Ipv4Addr> = service.vip.parse().ok();
            let by_name = match vip {
                Some(vip) => Target::One(vip),
                None => Target::Tasks(tasks.clone()),
            };
            for name in std::iter::once(&service.service).chain(&service.aliases) {
                let name = name.to_ascii_lowercase();
                network.forward.insert(format!("{TASKS_PREFIX}{name}"), Target::Tasks(tasks.clone()));
                network.forward.insert(name, by_name.clone());
            }
            if let Some(vip) = vip {
                network.reverse.insert(vip, on_network(&service.service, network_name));
            }
            for task in &service.tasks {
                let Ok(address) = task.address.parse() else { continue };
                let full = format!("{}.{}", task.name, task.id);
                network.forward.insert(task.name.to_ascii_lowercase(), Target::One(address));
                network.forward.insert(full.to_ascii_lowercase(), Target::One(address));
                network.reverse.insert(address, on_network(&full, network_name));
            }
        }
        records
    }

    /// What `name` (any case, with or without the final dot) is for a
    /// sandbox on `networks` (searched in order).
    pub fn lookup<'a>(&'a self, networks: &[String], name: &str) -> Lookup<'a> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        for network in networks.iter().filter_map(|id| self.networks.get(id)) {
            if let Some(target) = network.forward.get(&name) {
                return Lookup::Found(target);
            }
        }
        if name.starts_with(TASKS_PREFIX) && !name[TASKS_PREFIX.len()..].contains('.') {
            Lookup::NoSuchName
        } else {
            Lookup::Elsewhere
        }
    }

    /// Every name a sandbox on `networks` resolves, sorted.
    pub fn names(&self, networks: &[String]) -> Vec<String> {
        let mut names: Vec<String> = networks
            .iter()
            .filter_map(|id| self.networks.get(id))
            .flat_map(|network| network.forward.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The name of `address` for a sandbox on `networks`.
    pub fn reverse(&self, networks: &[String], address: Ipv4Addr) -> Option<&str> {
        networks
            .iter()
            .filter_map(|id| self.networks.get(id))
            .find_map(|network| network.reverse.get(&address))
            .map(String::as_str)
    }
}

/// `name.network` (just `name` if the network's name is unknown).
fn on_network(name: &str, network: &str) -> String {
    match network {
        "" => name.to_string(),
        network => format!("{name}.{network}"),
    }
}

/// The address an `in-addr.arpa` name stands for.
pub fn reverse_address(name: &str) -> Option<Ipv4Addr> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let octets = name.strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = octets.split('.').map(str::parse).collect::<Result<_, _>>().ok()?;
    match parts[..] {
        [d, c, b, a] => Some(Ipv4Addr::new(a, b, c, d)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_proto::{Network, NetworkAttachment, ServiceNames, TaskName};

    fn names(
        network: &str,
        service: &str,
        vip: &str,
        aliases: &[&str],
        tasks: &[(&str, &str)],
    ) -> ServiceNames {
        ServiceNames {
            network_id: network.into(),
            service: service.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            vip: vip.into(),
            tasks: tasks
                .iter()
                .enumerate()
                .map(|(i, (id, address))| TaskName {
                    id: id.to_string(),
                    name: format!("{service}.{}", i + 1),
                    address: address.to_string(),
                })
                .collect(),
        }
    }

    fn state() -> NodeState {
        let network = |id: &str, name: &str| NetworkAttachment {
            network: Some(Network { id: id.into(), name: name.into(), ..Default::default() }),
        };
        NodeState {
            networks: vec![network("n1", "front"), network("n2", "back")],
            names: vec![
                names("n1", "web", "10.1.0.2", &["www"], &[("t1", "10.1.0.3"), ("t2", "10.1.0.4")]),
                names("n2", "db", "", &[], &[("t3", "10.2.0.3"), ("t4", "10.2.0.4")]),
                names("n2", "web", "10.2.0.2", &[], &[("t1", "10.2.0.5")]),
            ],
            ..Default::default()
        }
    }

    fn one(address: &str) -> Target {
        Target::One(address.parse().unwrap())
    }

    fn tasks(addresses: &[&str]) -> Target {
        Target::Tasks(addresses.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[test]
    fn services_tasks_aliases_and_hostnames_resolve_per_network() {
        let records = Records::build(&state());
        let front = ["n1".to_string()];
        let back = ["n2".to_string()];
        assert_eq!(records.lookup(&front, "web"), Lookup::Found(&one("10.1.0.2")));
        assert_eq!(records.lookup(&back, "WEB."), Lookup::Found(&one("10.2.0.2")), "its VIP on that network");
        assert_eq!(records.lookup(&front, "www"), Lookup::Found(&one("10.1.0.2")));
        assert_eq!(records.lookup(&back, "www"), Lookup::Elsewhere, "an alias is on its network only");
        assert_eq!(records.lookup(&front, "tasks.web"), Lookup::Found(&tasks(&["10.1.0.3", "10.1.0.4"])));
        assert_eq!(records.lookup(&front, "tasks.www"), Lookup::Found(&tasks(&["10.1.0.3", "10.1.0.4"])));
        assert_eq!(records.lookup(&back, "db"), Lookup::Found(&tasks(&["10.2.0.3", "10.2.0.4"])), "dnsrr");
        assert_eq!(records.lookup(&front, "db"), Lookup::Elsewhere, "not on front");
        assert_eq!(records.lookup(&front, "web.2"), Lookup::Found(&one("10.1.0.4")));
        assert_eq!(records.lookup(&front, "web.2.T2"), Lookup::Found(&one("10.1.0.4")));
        assert_eq!(records.lookup(&front, "tasks.nosuch"), Lookup::NoSuchName);
        assert_eq!(records.lookup(&front, "example.com"), Lookup::Elsewhere);
        let expected =
            ["db", "db.1", "db.1.t3", "db.2", "db.2.t4", "tasks.db", "tasks.web", "web", "web.1", "web.1.t1"];
        assert_eq!(records.names(&back), expected);
        let both = ["n1".to_string(), "n2".to_string()];
        assert_eq!(records.lookup(&both, "db"), Lookup::Found(&tasks(&["10.2.0.3", "10.2.0.4"])));
    }

    #[test]
    fn addresses_resolve_back_in_dockers_shape() {
        let records = Records::build(&state());
        let front = ["n1".to_string()];
        assert_eq!(records.reverse(&front, "10.1.0.3".parse().unwrap()), Some("web.1.t1.front"));
        assert_eq!(records.reverse(&front, "10.1.0.2".parse().unwrap()), Some("web.front"));
        assert_eq!(records.reverse(&front, "10.2.0.3".parse().unwrap()), None, "another network's");
        assert_eq!(reverse_address("3.0.1.10.in-addr.arpa."), Some("10.1.0.3".parse().unwrap()));
        assert_eq!(reverse_address("1.10.in-addr.arpa"), None);
        assert_eq!(reverse_address("example.com"), None);
    }
}
