//! `docker_gwbridge`: the host-side bridge that gives every sandbox its
//! egress leg (172.18.0.0/16, gateway 172.18.0.1), NATed out of the node with
//! MASQUERADE. Sandbox ports are isolated from each other (inter-container
//! communication off).

use crate::model::{LinkKind, LinkModel, NamespaceModel, RuleSet};
use crate::names::GWBRIDGE;
use netctl_proto::convention::{gateway_bridge_subnet, GATEWAY_BRIDGE_GATEWAY, GATEWAY_BRIDGE_PREFIX};

/// The nat chain holding the gateway bridge's MASQUERADE rules.
pub const NAT_CHAIN: &str = "NETCTL-GWBRIDGE";

/// The jump into [`NAT_CHAIN`].
const NAT_JUMPS: &[(&str, &str, &[&str])] = &[("nat", "POSTROUTING", &["-j", NAT_CHAIN])];

/// Adds docker_gwbridge to the host's desired objects: the bridge with the
/// gateway address, forwarding on (and locally-addressed traffic allowed out
/// of the bridge, for the routing mesh), MASQUERADE for traffic from the
/// bridge leaving by any other interface, for local traffic into the bridge
/// (a published port reached from the node itself), and for hairpinned
/// DNATed traffic.
pub fn model(host: &mut NamespaceModel, mtu: u32) {
    let mut bridge = LinkModel::new(LinkKind::Bridge);
    bridge.mtu = Some(mtu);
    bridge.up = true;
    bridge.addresses.insert((GATEWAY_BRIDGE_GATEWAY, GATEWAY_BRIDGE_PREFIX));
    host.links.insert(GWBRIDGE.to_string(), bridge);
    host.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
    host.sysctls.insert(format!("net/ipv4/conf/{GWBRIDGE}/route_localnet"), "1".into());
    let subnet = gateway_bridge_subnet();
    let text = format!(
        "*nat\n:{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -s {subnet} ! -o {GWBRIDGE} -j MASQUERADE\n\
         -A {NAT_CHAIN} -o {GWBRIDGE} -m addrtype --src-type LOCAL -j MASQUERADE\n\
         -A {NAT_CHAIN} -o {GWBRIDGE} -s {subnet} -m conntrack --ctstate DNAT -j MASQUERADE\n\
         COMMIT\n"
    );
    host.rules.insert("gwbridge".into(), RuleSet::chains(text, NAT_JUMPS));
}
