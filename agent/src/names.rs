//! The names of everything the agent makes, as Swarm names them, so that
//! every object is findable by name on the next pass or after a restart
//! (pure).

use std::net::Ipv4Addr;

/// The gateway bridge in the host namespace.
pub const GWBRIDGE: &str = "docker_gwbridge";
/// The bridge inside an overlay namespace.
pub const OVERLAY_BRIDGE: &str = "br0";
/// The VXLAN device inside an overlay namespace.
pub const VXLAN: &str = "vxlan0";
/// The alias that marks a bridge as made by netctl.
pub const OWNER_ALIAS: &str = "netctl";
/// The gateway bridge's subnet, gateway and prefix.
pub const GWBRIDGE_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// The gateway bridge's prefix length.
pub const GWBRIDGE_PREFIX: u8 = 16;
/// The gateway bridge's subnet, as iptables writes it.
pub const GWBRIDGE_SUBNET: &str = "172.18.0.0/16";

/// The routing mesh's sandbox on every node.
pub const INGRESS_SANDBOX: &str = "ingress_sbox";
/// ingress_sbox's address on docker_gwbridge, the same on every node.
pub const INGRESS_SANDBOX_GATEWAY_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);

/// `1-<network id[:10]>`: the namespace of an overlay network.
pub fn overlay_namespace(network_id: &str) -> String {
    format!("1-{}", prefix(network_id, 10))
}

/// Whether a namespace name is an overlay namespace's.
pub fn is_overlay_namespace(name: &str) -> bool {
    name.starts_with("1-")
}

/// `<task id[:12]>`: the sandbox namespace of a task.
pub fn sandbox_namespace(task_id: &str) -> String {
    prefix(task_id, 12).to_string()
}

/// The VXLAN device's name in the host namespace, before it moves into the
/// overlay namespace and becomes `vxlan0`.
pub fn vxlan_staging(vni: u32) -> String {
    format!("vx-{vni:06x}")
}

/// The overlay end of a task's veth on network `index` (the sandbox end is
/// `eth<index>`).
pub fn overlay_veth(task_id: &str, index: usize) -> String {
    format!("veth{}{index}", prefix(task_id, 9))
}

/// The host end of a task's veth on the gateway bridge.
pub fn gateway_veth(task_id: &str) -> String {
    format!("gw{}", prefix(task_id, 12))
}

/// `eth<index>` inside a sandbox.
pub fn sandbox_interface(index: usize) -> String {
    format!("eth{index}")
}

/// The MAC address of an endpoint: `02:42:` and the four address bytes.
pub fn endpoint_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x42, a, b, c, d]
}

fn prefix(id: &str, len: usize) -> &str {
    &id[..id.len().min(len)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_swarm_and_fit_the_kernel_limit() {
        let id = "jv8c30bcmnza0ab12cd34ef56";
        assert_eq!(overlay_namespace(id), "1-jv8c30bcmn");
        assert!(is_overlay_namespace(&overlay_namespace(id)));
        assert_eq!(sandbox_namespace(id), "jv8c30bcmnza");
        assert!(!is_overlay_namespace(&sandbox_namespace(id)));
        assert_eq!(vxlan_staging(4097), "vx-001001");
        for name in [overlay_veth(id, 9), gateway_veth(id), vxlan_staging(0xffffff)] {
            assert!(name.len() <= 15, "{name} is too long for an interface name");
        }
        assert_eq!(endpoint_mac(Ipv4Addr::new(192, 168, 200, 3)), [0x02, 0x42, 0xc0, 0xa8, 0xc8, 0x03]);
    }
}
