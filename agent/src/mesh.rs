//! The routing mesh's iptables rule sets, generated from the desired state
//! (pure; `apply` writes each whole with one `iptables-restore` when it
//! changed: the host's chains with `--noflush` beside everyone else's, a
//! sandbox's nat table whole, its jumps included, since it is netctl's
//! alone):
//! - host nat `DOCKER-INGRESS` (from PREROUTING and OUTPUT for local
//!   destinations): each published port balanced over its replicas, every
//!   replica taking an equal share ([`PortRoute`]): those on this node
//!   DNATed straight to their docker_gwbridge addresses (no SNAT: the
//!   task's default route brings replies back), those on another node sent
//!   to that node's own published port over the underlay (SNAT to this
//!   node's address in `NETCTL-MESH-SNAT`, from POSTROUTING, so replies come
//!   back through it), and ingress_sbox (172.18.0.2) for replicas whose node
//!   is not known. `NETCTL-MESH-PEERS` (first in `DOCKER-INGRESS`) sends
//!   what another node forwarded to `NETCTL-MESH-HERE`: the replicas here,
//!   or ingress_sbox when none runs here, never on to a third node;
//!   `NETCTL-MESH-TASKS` (second) sends what this node's tasks ask to the
//!   other nodes and ingress_sbox, never straight to a replica here (with
//!   br_netfilter on, that DNAT would be bridged back to an isolated port),
//!   and so does the third jump what the tc fast path ([`crate::fast_path`])
//!   marked as its share for the other nodes (the replicas here it serves
//!   itself);
//! - host filter `DOCKER-INGRESS` (from FORWARD): that traffic accepted;
//! - ingress_sbox nat `NETCTL-INGRESS` (from PREROUTING): each published port
//!   balanced over the ingress addresses of its replicas on other nodes,
//!   endpoint i of n taken with probability 1/(n−i); `NETCTL-INGRESS-SNAT`
//!   (from POSTROUTING): SNAT to the sandbox's own ingress address so
//!   replies come back through it; filter FORWARD: those flows only;
//! - sandbox nat `NETCTL-DNS` (from OUTPUT, to 127.0.0.11): port 53 sent
//!   to the node's resolver ([`crate::dns`]); `NETCTL-VIP` (from OUTPUT):
//!   each service VIP balanced the same way over the service's tasks.

use crate::dns::{RESOLVER_ADDRESS, RESOLVER_PORT};
use crate::fast_path::AWAY_MARK;
use crate::names::GWBRIDGE;
use netctl_proto::convention::INGRESS_SANDBOX_GATEWAY_ADDRESS;
use netctl_proto::{PublishedPort, ServiceVip};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The host's and ingress_sbox's chain for published ports.
pub const INGRESS_CHAIN: &str = "DOCKER-INGRESS";
/// The host's chain sending what other nodes forwarded to [`HERE_CHAIN`].
const PEERS_CHAIN: &str = "NETCTL-MESH-PEERS";
/// The host's chain balancing a published port over its replicas here only.
const HERE_CHAIN: &str = "NETCTL-MESH-HERE";
/// The host's chain for what this node's own tasks ask of a published port.
const TASKS_CHAIN: &str = "NETCTL-MESH-TASKS";
/// The host's chain giving connections forwarded to other nodes this
/// node's address.
const FORWARD_SNAT_CHAIN: &str = "NETCTL-MESH-SNAT";
const SANDBOX_INGRESS_CHAIN: &str = "NETCTL-INGRESS";
const SANDBOX_SNAT_CHAIN: &str = "NETCTL-INGRESS-SNAT";
const VIP_CHAIN: &str = "NETCTL-VIP";
const DNS_CHAIN: &str = "NETCTL-DNS";

/// `-m statistic` DNAT lines spreading `matching` traffic over `backends`
/// (`address` or `address:port`): endpoint i of n with probability 1/(n−i),
/// the last one unconditional.
pub fn balance(chain: &str, matching: &str, backends: &[String]) -> String {
    let weighted: Vec<(&String, usize)> = backends.iter().map(|b| (b, 1)).collect();
    balance_weighted(chain, matching, &weighted)
}

/// As [`balance`], each backend taking a share of the traffic proportional
/// to its weight: endpoint i with probability w(i) / (w(i) + … + w(n)).
fn balance_weighted(chain: &str, matching: &str, backends: &[(impl AsRef<str>, usize)]) -> String {
    let mut rules = String::new();
    let mut left: usize = backends.iter().map(|(_, weight)| weight).sum();
    for (i, (backend, weight)) in backends.iter().enumerate() {
        let backend = backend.as_ref();
        let chance = if i + 1 == backends.len() {
            String::new()
        } else {
            format!(" -m statistic --mode random --probability {:.10}", *weight as f64 / left as f64)
        };
        left -= weight;
        let _ = writeln!(rules, "-A {chain} {matching}{chance} -j DNAT --to-destination {backend}");
    }
    rules
}

/// How this node serves one published port: its replicas here are reached
/// straight on their docker_gwbridge addresses, skipping ingress_sbox and
/// the ingress overlay; those on other nodes on their node's own published
/// port, over the underlay, where that node sends them to its replicas; the
/// rest (whose node is not known) through ingress_sbox. Each replica takes
/// an equal share of new connections.
#[derive(Debug, Clone, PartialEq)]
pub struct PortRoute {
    /// The port and every replica's ingress address.
    pub port: PublishedPort,
    /// The docker_gwbridge addresses of its replicas on this node.
    pub here: Vec<Ipv4Addr>,
    /// The other nodes running its replicas (data-path address), with how
    /// many each runs.
    pub nodes: Vec<(Ipv4Addr, usize)>,
    /// The ingress addresses of its replicas on other nodes.
    pub elsewhere: Vec<String>,
    /// How many of those have no known node (reached through ingress_sbox).
    pub unplaced: usize,
}

impl PortRoute {
    /// Whether the host sends some of the port's traffic to ingress_sbox:
    /// for replicas whose node is not known, or when no replica runs at all
    /// (ingress_sbox then answers for the port as the walkthrough's path
    /// does).
    pub fn through_ingress_sandbox(&self) -> bool {
        self.unplaced > 0 || (self.here.is_empty() && self.nodes.is_empty())
    }

    /// The path the port takes from this node, in one line: e.g. `8080/tcp:
    /// 1 of 3 here -> 172.18.0.9:80; 2 of 3 -> nodes 192.168.10.7:8080 (1)
    /// 192.168.10.8:8080 (1)`, with a leg `-> ingress_sbox 172.18.0.2:8080 ->
    /// 10.255.0.5:80` for replicas whose node is not known; `1 of 3 here (tc
    /// fast path)` when the fast path reaches the replicas here.
    pub fn describe(&self, fast_path: bool) -> String {
        let port = &self.port;
        let total = port.backends.len();
        let mut legs = Vec::new();
        if !self.here.is_empty() {
            let tasks: Vec<String> = self.here.iter().map(|a| format!("{a}:{}", port.target_port)).collect();
            let how = if fast_path { " (tc fast path)" } else { "" };
            legs.push(format!("{} of {total} here{how} -> {}", self.here.len(), tasks.join(" ")));
        }
        if !self.nodes.is_empty() {
            let share: usize = self.nodes.iter().map(|(_, count)| count).sum();
            let nodes: Vec<String> = self
                .nodes
                .iter()
                .map(|(node, count)| format!("{node}:{} ({count})", port.published_port))
                .collect();
            legs.push(format!("{share} of {total} -> nodes {}", nodes.join(" ")));
        }
        if self.through_ingress_sandbox() {
            let behind: Vec<String> =
                self.sandbox_backends().iter().map(|b| format!("{b}:{}", port.target_port)).collect();
            let share =
                if total == 0 { "none running".to_string() } else { format!("{} of {total}", self.unplaced) };
            let behind = if behind.is_empty() { "nothing".to_string() } else { behind.join(" ") };
            legs.push(format!(
                "{share} -> ingress_sbox {INGRESS_SANDBOX_GATEWAY_ADDRESS}:{} -> {behind}",
                port.published_port
            ));
        }
        format!("{}/{}: {}", port.published_port, port.protocol, legs.join("; "))
    }

    /// Where the host sends the port's new connections, each with how many
    /// replicas it stands for: the replicas here, the other nodes, and
    /// ingress_sbox for replicas of no known node (or none at all).
    fn targets(&self) -> Vec<(String, usize)> {
        let mut targets = self.here_targets();
        targets.extend(self.node_targets());
        if self.through_ingress_sandbox() {
            targets.push(self.sandbox_target());
        }
        targets
    }

    /// Where the host sends what another node forwarded: the replicas here,
    /// or ingress_sbox when none runs here.
    fn forwarded_targets(&self) -> Vec<(String, usize)> {
        match self.here.is_empty() {
            true => vec![self.sandbox_target()],
            false => self.here_targets(),
        }
    }

    /// Where the host sends what this node's own tasks ask (from
    /// docker_gwbridge): the other nodes, and ingress_sbox for replicas of
    /// no known node or when all run here, never a replica's docker_gwbridge
    /// address: with br_netfilter on, that DNAT is bridged straight back to
    /// an isolated port and dropped.
    fn task_targets(&self) -> Vec<(String, usize)> {
        let mut targets = self.node_targets();
        if self.unplaced > 0 || targets.is_empty() {
            targets.push(self.sandbox_target());
        }
        targets
    }

    /// The replicas here, one share each.
    fn here_targets(&self) -> Vec<(String, usize)> {
        self.here.iter().map(|task| (format!("{task}:{}", self.port.target_port), 1)).collect()
    }

    /// The other nodes' own published port, a share per replica there.
    fn node_targets(&self) -> Vec<(String, usize)> {
        let published = self.port.published_port;
        self.nodes.iter().map(|(node, count)| (format!("{node}:{published}"), *count)).collect()
    }

    /// ingress_sbox, a share per replica of no known node (at least one).
    fn sandbox_target(&self) -> (String, usize) {
        (format!("{INGRESS_SANDBOX_GATEWAY_ADDRESS}:{}", self.port.published_port), self.unplaced.max(1))
    }

    /// What ingress_sbox balances the port over: the replicas elsewhere,
    /// or every replica when all run here.
    pub fn sandbox_backends(&self) -> &[String] {
        if self.elsewhere.is_empty() {
            &self.port.backends
        } else {
            &self.elsewhere
        }
    }
}

/// The route of each of `ports` on a node whose tasks hold the ingress
/// addresses in `local` (ingress address → the task's docker_gwbridge
/// address), the other replicas running on the nodes `node_of` gives
/// (ingress address → node's data-path address).
pub fn port_routes(
    ports: &[PublishedPort],
    local: &HashMap<String, Ipv4Addr>,
    node_of: &HashMap<String, Ipv4Addr>,
) -> Vec<PortRoute> {
    ports
        .iter()
        .map(|port| {
            let (mut here, mut elsewhere, mut unplaced) = (Vec::new(), Vec::new(), 0);
            let mut nodes: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
            for backend in &port.backends {
                if let Some(gateway_address) = local.get(backend) {
                    here.push(*gateway_address);
                    continue;
                }
                elsewhere.push(backend.clone());
                match node_of.get(backend) {
                    Some(node) => *nodes.entry(*node).or_default() += 1,
                    None => unplaced += 1,
                }
            }
            PortRoute { port: port.clone(), here, nodes: nodes.into_iter().collect(), elsewhere, unplaced }
        })
        .collect()
}

/// A port published in host mode by a task of this node: sent straight to
/// the task's docker_gwbridge address, with no SNAT (the task sees the
/// client's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// "tcp" or "udp".
    pub protocol: String,
    /// The port on this node.
    pub published_port: u32,
    /// The task's port.
    pub target_port: u32,
    /// The task's docker_gwbridge address.
    pub address: std::net::Ipv4Addr,
}

/// The filter lines accepting `protocol` traffic to `task`'s `port` out of
/// docker_gwbridge and its replies.
fn accept_to_task(filter: &mut String, protocol: &str, task: impl std::fmt::Display, port: u32) {
    let _ =
        writeln!(filter, "-A {INGRESS_CHAIN} -o {GWBRIDGE} -d {task} -p {protocol} --dport {port} -j ACCEPT");
    let _ = writeln!(
        filter,
        "-A {INGRESS_CHAIN} -i {GWBRIDGE} -s {task} -p {protocol} --sport {port} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    );
}

/// The host's nat and filter rules for `routes` (to the replicas here, to
/// other nodes and ingress_sbox) and `host_ports` (to their tasks), as
/// node `own_address` among `peers` (the other nodes' data-path addresses).
pub fn host_rules(
    routes: &[PortRoute],
    host_ports: &[HostPort],
    own_address: Ipv4Addr,
    peers: &[Ipv4Addr],
) -> String {
    let mut rules = HostRules::new();
    for port in host_ports {
        rules.host_port(port);
    }
    for route in routes {
        rules.published(route, own_address);
    }
    rules.finish(own_address, peers)
}

/// The host's nat and filter tables as they are written.
struct HostRules {
    /// nat: the chains' declarations and `DOCKER-INGRESS`, then the rest.
    nat: String,
    /// nat `NETCTL-MESH-HERE`.
    here: String,
    /// nat `NETCTL-MESH-TASKS`.
    tasks: String,
    /// filter `DOCKER-INGRESS`.
    filter: String,
}

impl HostRules {
    fn new() -> Self {
        let nat = format!(
            "*nat\n:{INGRESS_CHAIN} - [0:0]\n:{PEERS_CHAIN} - [0:0]\n:{HERE_CHAIN} - [0:0]\n:{TASKS_CHAIN} - [0:0]\n\
             :{FORWARD_SNAT_CHAIN} - [0:0]\n-A {INGRESS_CHAIN} -j {PEERS_CHAIN}\n-A {INGRESS_CHAIN} -i {GWBRIDGE} -j {TASKS_CHAIN}\n\
             -A {INGRESS_CHAIN} -m mark --mark {AWAY_MARK:#x}/{AWAY_MARK:#x} -j {TASKS_CHAIN}\n"
        );
        let filter = format!(
            "*filter\n:{INGRESS_CHAIN} - [0:0]\n-A {INGRESS_CHAIN} -p icmp -m conntrack --ctstate RELATED -j ACCEPT\n"
        );
        Self { nat, here: String::new(), tasks: String::new(), filter }
    }

    /// A host-mode port: straight to its task.
    fn host_port(&mut self, port: &HostPort) {
        let (protocol, task) = (&port.protocol, port.address);
        let (published, target) = (port.published_port, port.target_port);
        let _ = writeln!(
            self.nat,
            "-A {INGRESS_CHAIN} -p {protocol} --dport {published} -j DNAT --to-destination {task}:{target}"
        );
        accept_to_task(&mut self.filter, protocol, task, target);
    }

    /// A published port: balanced over every replica, what another node
    /// forwarded over the replicas here (or ingress_sbox), what this node's
    /// tasks ask over the other nodes and ingress_sbox, what goes to another
    /// node given this node's address; all of it accepted.
    fn published(&mut self, route: &PortRoute, own_address: Ipv4Addr) {
        let (protocol, published, target) =
            (&route.port.protocol, route.port.published_port, route.port.target_port);
        let matching = format!("-p {protocol} --dport {published}");
        for task in &route.here {
            accept_to_task(&mut self.filter, protocol, task, target);
        }
        accept_to_task(&mut self.filter, protocol, INGRESS_SANDBOX_GATEWAY_ADDRESS, published);
        if !route.nodes.is_empty() {
            let forwarded = format!("{matching} -m conntrack --ctstate DNAT ! -o {GWBRIDGE}");
            let _ =
                writeln!(self.nat, "-A {FORWARD_SNAT_CHAIN} {forwarded} -j SNAT --to-source {own_address}");
            // Both ways of a flow to another node, from outside or from a
            // task here.
            for side in ["! -o", "! -i"] {
                let _ = writeln!(
                    self.filter,
                    "-A {INGRESS_CHAIN} -p {protocol} -m conntrack --ctstate DNAT --ctorigdstport {published} {side} {GWBRIDGE} -j ACCEPT"
                );
            }
        }
        self.nat.push_str(&balance_weighted(INGRESS_CHAIN, &matching, &route.targets()));
        self.here.push_str(&balance_weighted(HERE_CHAIN, &matching, &route.forwarded_targets()));
        self.tasks.push_str(&balance_weighted(TASKS_CHAIN, &matching, &route.task_targets()));
    }

    /// Both tables whole, with what each of `peers` (but this node) forwards
    /// sent to `NETCTL-MESH-HERE`.
    fn finish(mut self, own_address: Ipv4Addr, peers: &[Ipv4Addr]) -> String {
        self.nat.push_str(&self.here);
        self.nat.push_str(&self.tasks);
        for peer in peers.iter().filter(|peer| **peer != own_address) {
            let _ = writeln!(self.nat, "-A {PEERS_CHAIN} -s {peer}/32 -j {HERE_CHAIN}");
        }
        let _ = writeln!(self.nat, "-A {INGRESS_CHAIN} -j RETURN\nCOMMIT");
        let _ = writeln!(self.filter, "-A {INGRESS_CHAIN} -j RETURN\nCOMMIT");
        self.nat + &self.filter
    }
}

/// ingress_sbox's nat rules: balancing of `routes` over their
/// [`PortRoute::sandbox_backends`], SNAT to `own_address`; its filter
/// rules: only those flows forwarded.
pub fn ingress_sandbox_rules(routes: &[PortRoute], own_address: &str, ingress_subnet: &str) -> String {
    let mut nat = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :{SANDBOX_INGRESS_CHAIN} - [0:0]\n:{SANDBOX_SNAT_CHAIN} - [0:0]\n\
         -A PREROUTING -j {SANDBOX_INGRESS_CHAIN}\n-A POSTROUTING -j {SANDBOX_SNAT_CHAIN}\n"
    );
    for route in routes {
        let port = &route.port;
        let matching = format!("-p {} --dport {}", port.protocol, port.published_port);
        let backends: Vec<String> =
            route.sandbox_backends().iter().map(|b| format!("{b}:{}", port.target_port)).collect();
        if backends.is_empty() {
            let _ =
                writeln!(nat, "-A {SANDBOX_INGRESS_CHAIN} {matching} -j DNAT --to-destination 127.0.0.1:1");
        }
        nat.push_str(&balance(SANDBOX_INGRESS_CHAIN, &matching, &backends));
    }
    let _ = writeln!(
        nat,
        "-A {SANDBOX_SNAT_CHAIN} -d {ingress_subnet} -j SNAT --to-source {own_address}\nCOMMIT"
    );
    // Its docker_gwbridge port is not isolated (tasks reach it for their own
    // node's published ports): it forwards published ports' flows only, so
    // that no task routes through it to the ingress network or to another
    // task's docker_gwbridge leg.
    nat + "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate DNAT -j ACCEPT\n-A FORWARD -j DROP\nCOMMIT\n"
}

/// A task sandbox's nat table: 127.0.0.11:53 (UDP and TCP) sent to the
/// node's resolver on its real port, then each of `vips` balanced over its
/// backends.
pub fn sandbox_rules(vips: &[&ServiceVip]) -> String {
    let (resolver, port) = (RESOLVER_ADDRESS, RESOLVER_PORT);
    let mut nat = format!(
        "*nat\n:OUTPUT ACCEPT [0:0]\n:{DNS_CHAIN} - [0:0]\n:{VIP_CHAIN} - [0:0]\n\
         -A OUTPUT -d {resolver}/32 -j {DNS_CHAIN}\n-A OUTPUT -j {VIP_CHAIN}\n\
         -A {DNS_CHAIN} -p udp --dport 53 -j DNAT --to-destination {resolver}:{port}\n\
         -A {DNS_CHAIN} -p tcp --dport 53 -j DNAT --to-destination {resolver}:{port}\n"
    );
    for vip in vips {
        nat.push_str(&balance(VIP_CHAIN, &format!("-d {}/32", vip.address), &vip.backends));
    }
    nat.push_str("COMMIT\n");
    nat
}

/// The host's jumps into its DOCKER-INGRESS chains and the SNAT of
/// connections forwarded to other nodes.
pub const HOST_JUMPS: &[(&str, &str, &[&str])] = &[
    ("nat", "PREROUTING", &["-m", "addrtype", "--dst-type", "LOCAL", "-j", INGRESS_CHAIN]),
    ("nat", "OUTPUT", &["-m", "addrtype", "--dst-type", "LOCAL", "-j", INGRESS_CHAIN]),
    ("nat", "POSTROUTING", &["-j", FORWARD_SNAT_CHAIN]),
    ("filter", "FORWARD", &["-j", INGRESS_CHAIN]),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn port(backends: &[&str]) -> PublishedPort {
        PublishedPort {
            service: String::new(),
            protocol: "tcp".into(),
            published_port: 8080,
            target_port: 80,
            backends: backends.iter().map(|b| b.to_string()).collect(),
        }
    }

    /// This node's data-path address in the tests.
    const OWN: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 6);

    /// The route of a port over `backends` on a node running the replicas
    /// in `here` (ingress address, docker_gwbridge address), the others on
    /// the nodes in `nodes` (ingress address, node address).
    fn route_on(backends: &[&str], here: &[(&str, &str)], nodes: &[(&str, &str)]) -> PortRoute {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, Ipv4Addr> {
            pairs.iter().map(|(ingress, address)| (ingress.to_string(), address.parse().unwrap())).collect()
        };
        port_routes(&[port(backends)], &map(here), &map(nodes)).remove(0)
    }

    /// As [`route_on`], no other node known.
    fn route(backends: &[&str], here: &[(&str, &str)]) -> PortRoute {
        route_on(backends, here, &[])
    }

    /// Each DNAT target's chance of taking a new connection in `chain` (to
    /// six decimals), from the `--probability` of the lines before it and
    /// its own.
    fn shares(rules: &str, chain: &str) -> Vec<(String, f64)> {
        let mut left = 1.0;
        let mut shares = Vec::new();
        let start = format!("-A {chain} ");
        for line in rules.lines().filter(|l| l.starts_with(&start) && l.contains("-j DNAT")) {
            let target = line.rsplit(' ').next().unwrap().to_string();
            let chance = line
                .split("--probability ")
                .nth(1)
                .map(|rest| rest.split(' ').next().unwrap().parse::<f64>().unwrap())
                .unwrap_or(1.0);
            shares.push((target, (left * chance * 1e6).round() / 1e6));
            left *= 1.0 - chance;
        }
        shares
    }

    #[test]
    fn endpoint_i_of_n_is_taken_with_probability_one_over_n_minus_i() {
        let rules = balance("C", "-p tcp --dport 8080", &["a:80".into(), "b:80".into(), "c:80".into()]);
        let lines: Vec<&str> = rules.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains("--probability 0.3333333333 -j DNAT --to-destination a:80"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("--probability 0.5000000000 -j DNAT --to-destination b:80"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "-A C -p tcp --dport 8080 -j DNAT --to-destination c:80");
    }

    #[test]
    fn the_host_sends_published_ports_whose_replicas_have_no_known_node_to_ingress_sbox() {
        let rules = host_rules(&[route(&["10.255.0.5"], &[])], &[], OWN, &[]);
        assert!(
            rules.contains("-A DOCKER-INGRESS -p tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:8080")
        );
        assert!(rules
            .contains("-A DOCKER-INGRESS -o docker_gwbridge -d 172.18.0.2 -p tcp --dport 8080 -j ACCEPT"));
        assert_eq!(rules.matches("COMMIT").count(), 2);
    }

    #[test]
    fn ingress_sbox_balances_to_target_ports_and_snats() {
        let rules = ingress_sandbox_rules(
            &[route(&["10.255.0.5", "10.255.0.6"], &[])],
            "10.255.0.2",
            "10.255.0.0/16",
        );
        assert!(
            rules.contains("--probability 0.5000000000 -j DNAT --to-destination 10.255.0.5:80"),
            "{rules}"
        );
        assert!(
            rules.contains("-A NETCTL-INGRESS -p tcp --dport 8080 -j DNAT --to-destination 10.255.0.6:80")
        );
        assert!(rules.contains("-A NETCTL-INGRESS-SNAT -d 10.255.0.0/16 -j SNAT --to-source 10.255.0.2"));
        assert!(rules.contains("-A PREROUTING -j NETCTL-INGRESS\n-A POSTROUTING -j NETCTL-INGRESS-SNAT\n"));
        assert!(
            rules.ends_with("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate DNAT -j ACCEPT\n-A FORWARD -j DROP\nCOMMIT\n"),
            "it forwards published ports' flows only: {rules}"
        );
    }

    #[test]
    fn a_replica_here_is_reached_straight_on_its_gateway_address_and_the_others_on_their_nodes() {
        let backends = ["10.255.0.5", "10.255.0.6", "10.255.0.7", "10.255.0.8"];
        let nodes =
            [("10.255.0.5", "192.168.10.7"), ("10.255.0.7", "192.168.10.7"), ("10.255.0.8", "192.168.10.8")];
        let route = route_on(&backends, &[("10.255.0.6", "172.18.0.9")], &nodes);
        assert_eq!(route.here, ["172.18.0.9".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(route.elsewhere, ["10.255.0.5", "10.255.0.7", "10.255.0.8"]);
        assert!(!route.through_ingress_sandbox());
        let peers: Vec<Ipv4Addr> =
            ["192.168.10.6", "192.168.10.7", "192.168.10.8"].map(|a| a.parse().unwrap()).into();
        let host = host_rules(std::slice::from_ref(&route), &[], OWN, &peers);
        let nat = host.split("*filter").next().unwrap();
        assert_eq!(
            shares(nat, INGRESS_CHAIN),
            [
                ("172.18.0.9:80".to_string(), 0.25),
                ("192.168.10.7:8080".to_string(), 0.5),
                ("192.168.10.8:8080".to_string(), 0.25)
            ],
            "{nat}"
        );
        // What another node forwarded goes to the replica here only.
        assert_eq!(shares(nat, HERE_CHAIN), [("172.18.0.9:80".to_string(), 1.0)], "{nat}");
        assert!(nat.starts_with("*nat\n:DOCKER-INGRESS - [0:0]\n"), "{nat}");
        assert!(nat.contains("\n-A DOCKER-INGRESS -j NETCTL-MESH-PEERS\n"), "the first rule: {nat}");
        assert!(nat.contains("-A NETCTL-MESH-PEERS -s 192.168.10.7/32 -j NETCTL-MESH-HERE\n"), "{nat}");
        assert!(!nat.contains("-s 192.168.10.6/32"), "not this node itself: {nat}");
        assert!(nat.contains(
            "-A NETCTL-MESH-SNAT -p tcp --dport 8080 -m conntrack --ctstate DNAT ! -o docker_gwbridge -j SNAT --to-source 192.168.10.6"
        ));
        assert!(
            host.contains("-A DOCKER-INGRESS -o docker_gwbridge -d 172.18.0.9 -p tcp --dport 80 -j ACCEPT")
        );
        assert!(host.contains(
            "-A DOCKER-INGRESS -i docker_gwbridge -s 172.18.0.9 -p tcp --sport 80 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        ));
        for side in ["! -o", "! -i"] {
            assert!(host.contains(&format!(
                "-A DOCKER-INGRESS -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 {side} docker_gwbridge -j ACCEPT"
            )));
        }
        // What a task here asks goes to the other nodes only.
        assert!(nat.contains("\n-A DOCKER-INGRESS -i docker_gwbridge -j NETCTL-MESH-TASKS\n"), "{nat}");
        // What the tc fast path leaves for the other nodes goes only there.
        assert!(
            nat.contains("\n-A DOCKER-INGRESS -m mark --mark 0x100000/0x100000 -j NETCTL-MESH-TASKS\n"),
            "{nat}"
        );
        assert_eq!(
            shares(nat, TASKS_CHAIN),
            [("192.168.10.7:8080".to_string(), 0.666667), ("192.168.10.8:8080".to_string(), 0.333333)],
            "{nat}"
        );
        assert_eq!(
            route.describe(false),
            "8080/tcp: 1 of 4 here -> 172.18.0.9:80; 3 of 4 -> nodes 192.168.10.7:8080 (2) 192.168.10.8:8080 (1)"
        );
        let sandbox = ingress_sandbox_rules(&[route], "10.255.0.2", "10.255.0.0/16");
        assert_eq!(
            shares(&sandbox, SANDBOX_INGRESS_CHAIN).len(),
            3,
            "ingress_sbox knows those elsewhere: {sandbox}"
        );
    }

    #[test]
    fn with_no_replica_here_what_other_nodes_forward_goes_to_ingress_sbox_never_to_a_third_node() {
        let route = route_on(&["10.255.0.5"], &[], &[("10.255.0.5", "192.168.10.7")]);
        let host = host_rules(std::slice::from_ref(&route), &[], OWN, &[Ipv4Addr::new(192, 168, 10, 8)]);
        let nat = host.split("*filter").next().unwrap();
        assert_eq!(shares(nat, INGRESS_CHAIN), [("192.168.10.7:8080".to_string(), 1.0)], "{nat}");
        assert_eq!(shares(nat, HERE_CHAIN), [("172.18.0.2:8080".to_string(), 1.0)], "{nat}");
        assert!(
            host.contains("-A DOCKER-INGRESS -o docker_gwbridge -d 172.18.0.2 -p tcp --dport 8080 -j ACCEPT")
        );
    }

    #[test]
    fn replicas_of_no_known_node_go_through_ingress_sbox() {
        let route = route(&["10.255.0.5", "10.255.0.6", "10.255.0.7"], &[("10.255.0.6", "172.18.0.9")]);
        assert!(route.through_ingress_sandbox());
        let host = host_rules(std::slice::from_ref(&route), &[], OWN, &[]);
        let nat = host.split("*filter").next().unwrap();
        assert_eq!(
            shares(nat, INGRESS_CHAIN),
            [("172.18.0.9:80".to_string(), 0.333333), ("172.18.0.2:8080".to_string(), 0.666667)],
            "{nat}"
        );
        assert!(!nat.contains("NETCTL-MESH-SNAT -p"), "nothing forwarded: {nat}");
        assert_eq!(
            route.describe(false),
            "8080/tcp: 1 of 3 here -> 172.18.0.9:80; 2 of 3 -> ingress_sbox 172.18.0.2:8080 -> 10.255.0.5:80 10.255.0.7:80"
        );
        let sandbox = ingress_sandbox_rules(&[route], "10.255.0.2", "10.255.0.0/16");
        assert_eq!(
            shares(&sandbox, SANDBOX_INGRESS_CHAIN),
            [("10.255.0.5:80".to_string(), 0.5), ("10.255.0.7:80".to_string(), 0.5)],
            "ingress_sbox balances the replicas elsewhere only: {sandbox}"
        );
    }

    #[test]
    fn with_every_replica_here_ingress_sbox_is_not_in_the_path_but_still_knows_them() {
        let route = route(
            &["10.255.0.5", "10.255.0.6"],
            &[("10.255.0.5", "172.18.0.3"), ("10.255.0.6", "172.18.0.4")],
        );
        assert!(!route.through_ingress_sandbox());
        let host = host_rules(std::slice::from_ref(&route), &[], OWN, &[]);
        let nat = host.split("*filter").next().unwrap();
        assert!(
            !shares(nat, INGRESS_CHAIN).iter().any(|(target, _)| target.starts_with("172.18.0.2")),
            "{nat}"
        );
        // What a task here asks goes through ingress_sbox and the ingress
        // overlay: a DNAT to a replica's docker_gwbridge address would be
        // bridged back to an isolated port when br_netfilter is on.
        assert_eq!(shares(nat, TASKS_CHAIN), [("172.18.0.2:8080".to_string(), 1.0)], "{nat}");
        let sandbox = ingress_sandbox_rules(&[route], "10.255.0.2", "10.255.0.0/16");
        assert_eq!(shares(&sandbox, SANDBOX_INGRESS_CHAIN).len(), 2, "{sandbox}");
    }

    proptest::proptest! {
        /// Wherever the replicas run (here, on known nodes, or on nodes not
        /// known), the host's rules give each of them the same share of new
        /// connections.
        #[test]
        fn every_replica_takes_an_equal_share(here in 0usize..6, elsewhere in 0usize..6, placed: bool) {
            proptest::prop_assume!(here + elsewhere > 0);
            let backends: Vec<String> = (0..here + elsewhere).map(|i| format!("10.255.1.{i}")).collect();
            let local: HashMap<String, Ipv4Addr> =
                (0..here).map(|i| (backends[i].clone(), Ipv4Addr::new(172, 18, 1, i as u8))).collect();
            let node_of: HashMap<String, Ipv4Addr> = match placed {
                true => (here..here + elsewhere)
                    .map(|i| (backends[i].clone(), Ipv4Addr::new(192, 168, 10, 7 + (i % 3) as u8)))
                    .collect(),
                false => HashMap::new(),
            };
            let port = PublishedPort { backends, ..port(&[]) };
            let routes = port_routes(&[port], &local, &node_of);
            let host = host_rules(&routes, &[], OWN, &[]);
            let host = shares(host.split("*filter").next().unwrap(), INGRESS_CHAIN);
            let sandbox = shares(&ingress_sandbox_rules(&routes, "10.255.0.2", "10.255.0.0/16"), SANDBOX_INGRESS_CHAIN);
            let n = (here + elsewhere) as f64;
            for (target, share) in &host {
                if target.starts_with("172.18.0.2:") {
                    for (_, inner) in &sandbox {
                        proptest::prop_assert!((share * inner - 1.0 / n).abs() < 1e-5, "{target}: {share} × {inner}");
                    }
                } else if target.starts_with("192.168.10.") {
                    let node: Ipv4Addr = target.split(':').next().unwrap().parse().unwrap();
                    let count = node_of.values().filter(|a| **a == node).count() as f64;
                    proptest::prop_assert!((share - count / n).abs() < 1e-5, "{target}: {share}");
                } else {
                    proptest::prop_assert!((share - 1.0 / n).abs() < 1e-5, "{target}: {share}");
                }
            }
            let nodes = if placed { elsewhere.min(3) } else { usize::from(elsewhere > 0) };
            proptest::prop_assert_eq!(host.len(), here + nodes);
        }
    }

    #[test]
    fn sandboxes_send_dns_to_the_resolver_and_balance_vips() {
        let vip = ServiceVip {
            service: String::new(),
            network_id: "n".into(),
            address: "192.168.200.2".into(),
            backends: vec!["192.168.200.3".into()],
        };
        let rules = sandbox_rules(&[&vip]);
        assert!(
            rules.contains("-A NETCTL-VIP -d 192.168.200.2/32 -j DNAT --to-destination 192.168.200.3"),
            "{rules}"
        );
        assert!(rules.contains("-A OUTPUT -d 127.0.0.11/32 -j NETCTL-DNS\n-A OUTPUT -j NETCTL-VIP\n"));
        assert!(rules.contains("-A NETCTL-DNS -p udp --dport 53 -j DNAT --to-destination 127.0.0.11:63053\n"));
    }
}
