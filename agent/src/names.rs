//! The names of everything the agent makes, as Swarm names them, so that
//! every object is findable by name on the next pass or after a restart
//! (pure).

/// The gateway bridge in the host namespace.
pub const GWBRIDGE: &str = "docker_gwbridge";
/// The bridge inside an overlay namespace.
pub const OVERLAY_BRIDGE: &str = "br0";
/// The VXLAN device inside an overlay namespace.
pub const VXLAN: &str = "vxlan0";
/// The alias that marks a bridge as made by netctl.
pub const OWNER_ALIAS: &str = "netctl";

/// The routing mesh's sandbox on every node.
pub const INGRESS_SANDBOX: &str = "ingress_sbox";

pub use netctl_proto::convention::overlay_namespace;

/// Whether a namespace name is an overlay namespace's.
pub fn is_overlay_namespace(name: &str) -> bool {
    name.starts_with("1-")
}

/// `<task id[:12]>`: the sandbox namespace of a task.
pub fn sandbox_namespace(task_id: &str) -> String {
    netctl_proto::convention::sandbox_name(task_id).to_string()
}

/// The VXLAN device's name in the host namespace, before it moves into the
/// overlay namespace and becomes `vxlan0`.
pub fn vxlan_staging(vni: u32) -> String {
    format!("vx-{vni:06x}")
}

/// The overlay end of a task's veth on network `index` (the sandbox end is
/// `eth<index>`).
pub fn overlay_veth(task_id: &str, index: usize) -> String {
    format!("{}{index}", overlay_veth_prefix(task_id))
}

/// What every overlay end of a task's veths starts with.
pub fn overlay_veth_prefix(task_id: &str) -> String {
    format!("veth{}", prefix(task_id, 9))
}

/// Whether a link in an overlay namespace is a sandbox's veth end (the
/// others are the network's own: br0, vxlan0).
pub fn is_overlay_veth(name: &str) -> bool {
    name.starts_with("veth")
}

/// Whether a link is the host end of a sandbox's gateway-bridge veth.
pub fn is_gateway_veth(name: &str) -> bool {
    name.starts_with("gw")
}

/// The host end of a task's veth on the gateway bridge.
pub fn gateway_veth(task_id: &str) -> String {
    format!("gw{}", prefix(task_id, 12))
}

/// `eth<index>` inside a sandbox.
pub fn sandbox_interface(index: usize) -> String {
    format!("eth{index}")
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
    }
}
