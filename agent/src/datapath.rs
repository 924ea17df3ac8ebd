//! VXLAN closed to strangers: on the host, UDP to the data-path port is
//! accepted only from the cluster's nodes and dropped (and counted) from
//! anyone else, so that no one outside the cluster can inject frames into
//! an overlay (Swarm's GHSA-vwm3-crmr-xfxw). One chain in the host's filter
//! table, rewritten whole when nodes join or leave.

use crate::model::{NamespaceModel, RuleSet};
use std::fmt::Write;

/// The host filter chain that admits VXLAN from the cluster's nodes only.
pub const CHAIN: &str = "NETCTL-DATAPATH";

/// The jump into [`CHAIN`]: every UDP packet for the host (the chain
/// returns at once for any other port).
const JUMPS: &[(&str, &str, &[&str])] = &[("filter", "INPUT", &["-p", "udp", "-j", CHAIN])];

/// The chain's rules: other ports return, the nodes' addresses return,
/// everything else to `port` is dropped. No node known yet: nothing dropped.
pub fn rules(port: u16, nodes: &[String]) -> String {
    let mut text = format!("*filter\n:{CHAIN} - [0:0]\n-A {CHAIN} -p udp ! --dport {port} -j RETURN\n");
    for node in nodes {
        let _ = writeln!(text, "-A {CHAIN} -s {node}/32 -j RETURN");
    }
    if !nodes.is_empty() {
        let _ = writeln!(text, "-A {CHAIN} -j DROP");
    }
    text.push_str("COMMIT\n");
    text
}

/// Adds the chain for `port` and `nodes` to the host's desired rules.
pub fn model(host: &mut NamespaceModel, port: u16, nodes: &[String]) {
    host.rules.insert("datapath".into(), RuleSet::chains(rules(port, nodes), JUMPS));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nodes_reach_the_data_path_port() {
        let text = rules(4789, &["192.168.10.6".into(), "192.168.10.7".into()]);
        assert_eq!(
            text,
            "*filter\n:NETCTL-DATAPATH - [0:0]\n\
             -A NETCTL-DATAPATH -p udp ! --dport 4789 -j RETURN\n\
             -A NETCTL-DATAPATH -s 192.168.10.6/32 -j RETURN\n\
             -A NETCTL-DATAPATH -s 192.168.10.7/32 -j RETURN\n\
             -A NETCTL-DATAPATH -j DROP\nCOMMIT\n"
        );
        assert!(!rules(4789, &[]).contains("DROP"), "no node known: nothing dropped");
    }
}
