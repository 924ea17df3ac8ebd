//! The conventions the manager, the agent and the CLI must agree on, each
//! defined once: what the manager allocates, the agent builds under the
//! same names, and the CLI finds again.

use std::net::Ipv4Addr;

/// docker_gwbridge's network address (172.18.0.0/16): no overlay may
/// overlap it.
pub const GATEWAY_BRIDGE_NETWORK: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 0);
/// docker_gwbridge's prefix length.
pub const GATEWAY_BRIDGE_PREFIX: u8 = 16;
/// docker_gwbridge's own address, every sandbox's default gateway.
pub const GATEWAY_BRIDGE_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
/// ingress_sbox's address on docker_gwbridge, the same on every node.
pub const INGRESS_SANDBOX_GATEWAY_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);

/// docker_gwbridge's subnet as iptables and ip write it: `172.18.0.0/16`.
pub fn gateway_bridge_subnet() -> String {
    format!("{GATEWAY_BRIDGE_NETWORK}/{GATEWAY_BRIDGE_PREFIX}")
}

/// The MAC address of an endpoint: `02:42:` and the four bytes of its IPv4
/// address, so that every node can compute any endpoint's MAC.
pub fn endpoint_mac(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x42, a, b, c, d]
}

/// [`endpoint_mac`] as text: `02:42:c0:a8:c8:03`.
pub fn endpoint_mac_text(address: Ipv4Addr) -> String {
    let bytes = endpoint_mac(address);
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// IPv4 `text` as the number an endpoint item carries (10.0.0.2 is
/// 0x0a000002); `None` if it is not one (an address not allocated yet).
pub fn endpoint_address_number(text: &str) -> Option<u32> {
    text.parse::<Ipv4Addr>().ok().map(u32::from)
}

/// `<task id[:12]>`: the name of a task's sandbox namespace (and of its
/// folder of task files).
pub fn sandbox_name(task_id: &str) -> &str {
    &task_id[..task_id.len().min(12)]
}

/// `1-<network id[:10]>`: the name of an overlay network's namespace.
pub fn overlay_namespace(network_id: &str) -> String {
    format!("1-{}", &network_id[..network_id.len().min(10)])
}

/// The manager's data dir when none is given.
pub const DEFAULT_MANAGER_DATA_DIR: &str = "/var/lib/netctl/manager";
/// The agent's run dir when none is given.
pub const DEFAULT_RUN_DIR: &str = "/var/run/netctl";
/// The join token's file in the manager's data dir.
pub const JOIN_TOKEN_FILE: &str = "join-token";
/// The admin token's file in the manager's data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_follow_swarm() {
        let id = "jv8c30bcmnza0ab12cd34ef56";
        assert_eq!(overlay_namespace(id), "1-jv8c30bcmn");
        assert_eq!(sandbox_name(id), "jv8c30bcmnza");
        assert_eq!(sandbox_name("short"), "short");
        let address = Ipv4Addr::new(192, 168, 200, 3);
        assert_eq!(endpoint_mac(address), [0x02, 0x42, 0xc0, 0xa8, 0xc8, 0x03]);
        assert_eq!(endpoint_mac_text(address), "02:42:c0:a8:c8:03");
        assert_eq!(gateway_bridge_subnet(), "172.18.0.0/16");
    }
}
