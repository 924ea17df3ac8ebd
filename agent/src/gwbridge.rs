//! `docker_gwbridge`: the host-side bridge that gives every sandbox its
//! egress leg (172.18.0.0/16, gateway 172.18.0.1), NATed out of the node with
//! MASQUERADE. Sandbox ports are isolated from each other (inter-container
//! communication off).

use crate::names::{GWBRIDGE, OWNER_ALIAS};
use netctl_proto::convention::{gateway_bridge_subnet, GATEWAY_BRIDGE_GATEWAY, GATEWAY_BRIDGE_PREFIX};
use netlib::{iptables, sysctl, Link, Netlink};

/// The nat chain holding the gateway bridge's MASQUERADE rule.
const NAT_CHAIN: &str = "NETCTL-GWBRIDGE";

/// Makes sure the gateway bridge exists, is ours, and is up. Its NAT rules are
/// written when `write_rules` is set (once per agent start; the kernel keeps
/// them). The error says why tasks have no egress.
pub async fn ensure(host: &Netlink, mtu: u32, write_rules: bool) -> Result<Link, String> {
    let bridge = match host.link(GWBRIDGE).await.map_err(|e| e.to_string())? {
        Some(bridge) if bridge.alias != OWNER_ALIAS => {
            return Err(format!(
                "{GWBRIDGE} exists and was not made by netctl (is Docker running on this host?): tasks get no egress leg"
            ))
        }
        Some(bridge) => bridge,
        None => host.create_bridge(GWBRIDGE, mtu, OWNER_ALIAS).await.map_err(|e| e.to_string())?,
    };
    host.add_address(&bridge, GATEWAY_BRIDGE_GATEWAY, GATEWAY_BRIDGE_PREFIX)
        .await
        .map_err(|e| e.to_string())?;
    if !bridge.up {
        host.set_up(&bridge).await.map_err(|e| e.to_string())?;
    }
    if write_rules {
        write_nat(host).await.map_err(|e| format!("egress NAT on {GWBRIDGE}: {e}"))?;
    }
    Ok(bridge)
}

/// Forwarding on (and for the routing mesh, locally-addressed traffic allowed
/// out of the bridge), MASQUERADE for traffic from the bridge leaving by any
/// other interface, for local traffic into the bridge (a published port
/// reached from the node itself), and for hairpinned DNATed traffic.
async fn write_nat(host: &Netlink) -> Result<(), String> {
    let namespace = None;
    sysctl::write(namespace, "net.ipv4.ip_forward", "1").await.map_err(|e| e.to_string())?;
    sysctl::write(namespace, &format!("net/ipv4/conf/{GWBRIDGE}/route_localnet"), "1")
        .await
        .map_err(|e| e.to_string())?;
    if !iptables::available().await {
        return Err(format!(
            "iptables-restore is not installed in {} (apt-get install iptables)",
            host.namespace()
        ));
    }
    let subnet = gateway_bridge_subnet();
    let rules = format!(
        "*nat\n:{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -s {subnet} ! -o {GWBRIDGE} -j MASQUERADE\n\
         -A {NAT_CHAIN} -o {GWBRIDGE} -m addrtype --src-type LOCAL -j MASQUERADE\n\
         -A {NAT_CHAIN} -o {GWBRIDGE} -s {subnet} -m conntrack --ctstate DNAT -j MASQUERADE\n\
         COMMIT\n"
    );
    iptables::restore(namespace, &rules).await.map_err(|e| e.to_string())?;
    iptables::ensure_jump(namespace, "nat", "POSTROUTING", &["-j", NAT_CHAIN])
        .await
        .map_err(|e| e.to_string())
}
