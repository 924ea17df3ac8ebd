//! The routing mesh's iptables rule sets, generated from the desired state
//! (pure; `apply` writes each whole with one `iptables-restore` when it
//! changed: the host's chains with `--noflush` beside everyone else's, a
//! sandbox's nat table whole, its jumps included, since it is netctl's
//! alone):
//! - host nat `DOCKER-INGRESS` (from PREROUTING and OUTPUT for local
//!   destinations): each published port DNATed to ingress_sbox (172.18.0.2);
//! - host filter `DOCKER-INGRESS` (from FORWARD): that traffic accepted;
//! - ingress_sbox nat `NETCTL-INGRESS` (from PREROUTING): each published port
//!   balanced over every replica's ingress address, endpoint i of n taken
//!   with probability 1/(n−i); `NETCTL-INGRESS-SNAT` (from POSTROUTING): SNAT
//!   to the sandbox's own ingress address so replies come back through it;
//! - sandbox nat `NETCTL-DNS` (from OUTPUT, to 127.0.0.11): port 53 sent
//!   to the node's resolver ([`crate::dns`]); `NETCTL-VIP` (from OUTPUT):
//!   each service VIP balanced the same way over the service's tasks.

use crate::dns::{RESOLVER_ADDRESS, RESOLVER_PORT};
use crate::names::GWBRIDGE;
use netctl_proto::convention::INGRESS_SANDBOX_GATEWAY_ADDRESS;
use netctl_proto::{PublishedPort, ServiceVip};
use std::fmt::Write;

/// The host's and ingress_sbox's chain for published ports.
pub const INGRESS_CHAIN: &str = "DOCKER-INGRESS";
const SANDBOX_INGRESS_CHAIN: &str = "NETCTL-INGRESS";
const SANDBOX_SNAT_CHAIN: &str = "NETCTL-INGRESS-SNAT";
const VIP_CHAIN: &str = "NETCTL-VIP";
const DNS_CHAIN: &str = "NETCTL-DNS";

/// `-m statistic` DNAT lines spreading `matching` traffic over `backends`
/// (`address` or `address:port`): endpoint i of n with probability 1/(n−i),
/// the last one unconditional.
pub fn balance(chain: &str, matching: &str, backends: &[String]) -> String {
    let mut rules = String::new();
    let n = backends.len();
    for (i, backend) in backends.iter().enumerate() {
        let chance = if i + 1 == n {
            String::new()
        } else {
            format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
        };
        let _ = writeln!(rules, "-A {chain} {matching}{chance} -j DNAT --to-destination {backend}");
    }
    rules
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

/// The host's nat and filter rules for `ports` (to ingress_sbox) and
/// `host_ports` (to their tasks).
pub fn host_rules(ports: &[PublishedPort], host_ports: &[HostPort]) -> String {
    let sandbox = INGRESS_SANDBOX_GATEWAY_ADDRESS;
    let mut nat = format!("*nat\n:{INGRESS_CHAIN} - [0:0]\n");
    let mut filter = format!(
        "*filter\n:{INGRESS_CHAIN} - [0:0]\n-A {INGRESS_CHAIN} -p icmp -m conntrack --ctstate RELATED -j ACCEPT\n"
    );
    for port in host_ports {
        let (protocol, task) = (&port.protocol, port.address);
        let (published, target) = (port.published_port, port.target_port);
        let _ = writeln!(
            nat,
            "-A {INGRESS_CHAIN} -p {protocol} --dport {published} -j DNAT --to-destination {task}:{target}"
        );
        let _ = writeln!(
            filter,
            "-A {INGRESS_CHAIN} -o {GWBRIDGE} -d {task} -p {protocol} --dport {target} -j ACCEPT"
        );
        let _ = writeln!(
            filter,
            "-A {INGRESS_CHAIN} -i {GWBRIDGE} -s {task} -p {protocol} --sport {target} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        );
    }
    for port in ports {
        let (protocol, published) = (&port.protocol, port.published_port);
        let _ = writeln!(nat, "-A {INGRESS_CHAIN} -p {protocol} --dport {published} -j DNAT --to-destination {sandbox}:{published}");
        let _ = writeln!(
            filter,
            "-A {INGRESS_CHAIN} -o {GWBRIDGE} -d {sandbox} -p {protocol} --dport {published} -j ACCEPT"
        );
        let _ = writeln!(
            filter,
            "-A {INGRESS_CHAIN} -i {GWBRIDGE} -s {sandbox} -p {protocol} --sport {published} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        );
    }
    let _ = writeln!(nat, "-A {INGRESS_CHAIN} -j RETURN\nCOMMIT");
    let _ = writeln!(filter, "-A {INGRESS_CHAIN} -j RETURN\nCOMMIT");
    nat + &filter
}

/// ingress_sbox's nat rules: balancing of `ports`, SNAT to `own_address`.
pub fn ingress_sandbox_rules(ports: &[PublishedPort], own_address: &str, ingress_subnet: &str) -> String {
    let mut nat = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :{SANDBOX_INGRESS_CHAIN} - [0:0]\n:{SANDBOX_SNAT_CHAIN} - [0:0]\n\
         -A PREROUTING -j {SANDBOX_INGRESS_CHAIN}\n-A POSTROUTING -j {SANDBOX_SNAT_CHAIN}\n"
    );
    for port in ports {
        let matching = format!("-p {} --dport {}", port.protocol, port.published_port);
        let backends: Vec<String> =
            port.backends.iter().map(|b| format!("{b}:{}", port.target_port)).collect();
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
    nat
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

/// The host's jumps into its DOCKER-INGRESS chains.
pub const HOST_JUMPS: &[(&str, &str, &[&str])] = &[
    ("nat", "PREROUTING", &["-m", "addrtype", "--dst-type", "LOCAL", "-j", INGRESS_CHAIN]),
    ("nat", "OUTPUT", &["-m", "addrtype", "--dst-type", "LOCAL", "-j", INGRESS_CHAIN]),
    ("filter", "FORWARD", &["-j", INGRESS_CHAIN]),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn port(backends: &[&str]) -> PublishedPort {
        PublishedPort {
            protocol: "tcp".into(),
            published_port: 8080,
            target_port: 80,
            backends: backends.iter().map(|b| b.to_string()).collect(),
        }
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
    fn the_host_sends_published_ports_to_ingress_sbox() {
        let rules = host_rules(&[port(&["10.255.0.5"])], &[]);
        assert!(
            rules.contains("-A DOCKER-INGRESS -p tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:8080")
        );
        assert!(rules
            .contains("-A DOCKER-INGRESS -o docker_gwbridge -d 172.18.0.2 -p tcp --dport 8080 -j ACCEPT"));
        assert_eq!(rules.matches("COMMIT").count(), 2);
    }

    #[test]
    fn ingress_sbox_balances_to_target_ports_and_snats() {
        let rules =
            ingress_sandbox_rules(&[port(&["10.255.0.5", "10.255.0.6"])], "10.255.0.2", "10.255.0.0/16");
        assert!(
            rules.contains("--probability 0.5000000000 -j DNAT --to-destination 10.255.0.5:80"),
            "{rules}"
        );
        assert!(
            rules.contains("-A NETCTL-INGRESS -p tcp --dport 8080 -j DNAT --to-destination 10.255.0.6:80")
        );
        assert!(rules.contains("-A NETCTL-INGRESS-SNAT -d 10.255.0.0/16 -j SNAT --to-source 10.255.0.2"));
        assert!(rules.contains("-A PREROUTING -j NETCTL-INGRESS\n-A POSTROUTING -j NETCTL-INGRESS-SNAT\n"));
    }

    #[test]
    fn sandboxes_send_dns_to_the_resolver_and_balance_vips() {
        let vip = ServiceVip {
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
