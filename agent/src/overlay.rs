//! An overlay network's namespace `1-<id>`: `br0` holding the gateway address
//! and `vxlan0` (made in the host namespace so that its UDP socket lives
//! there, then moved in and renamed), as Swarm builds it.

use crate::connections::Connections;
use crate::names::{self, OVERLAY_BRIDGE, OWNER_ALIAS, VXLAN};
use ipnetwork::Ipv4Network;
use netctl_proto::Network;
use netlib::{netns, Link, Netlink, VxlanSpec};
use std::net::Ipv4Addr;

/// A built overlay, ready for sandboxes to attach to.
#[derive(Clone)]
pub struct Overlay {
    /// Connection to the overlay namespace.
    pub netlink: Netlink,
    /// The bridge.
    pub bridge: Link,
    /// The subnet (its prefix is each endpoint's).
    pub subnet: Ipv4Network,
    /// MTU of br0, vxlan0 and every veth.
    pub mtu: u32,
}

/// Where the VXLAN tunnel starts.
pub struct Tunnel {
    /// The node's data-path address.
    pub local: Ipv4Addr,
    /// The UDP port.
    pub port: u16,
    /// The MTU overlays get unless a network sets its own.
    pub default_mtu: u32,
}

/// Builds (or checks) the namespace of `network`.
pub async fn ensure(
    connections: &mut Connections,
    host: &Netlink,
    network: &Network,
    tunnel: &Tunnel,
) -> netlib::Result<Overlay> {
    let namespace = names::overlay_namespace(&network.id);
    let invalid =
        |what: &str| netlib::Error::other(format!("building {namespace}"), &namespace, what.to_string());
    let subnet: Ipv4Network = network.subnet.parse().map_err(|_| invalid("invalid subnet"))?;
    let gateway: Ipv4Addr = network.gateway.parse().map_err(|_| invalid("invalid gateway"))?;
    let mtu = if network.mtu != 0 { network.mtu } else { tunnel.default_mtu };
    let overlay = connections.ensure(&namespace).await?;

    let bridge = match overlay.link(OVERLAY_BRIDGE).await? {
        Some(bridge) => bridge,
        None => overlay.create_bridge(OVERLAY_BRIDGE, mtu, OWNER_ALIAS).await?,
    };
    if bridge.mtu != mtu {
        overlay.set_mtu(&bridge, mtu).await?;
    }
    overlay.add_address(&bridge, gateway, subnet.prefix()).await?;
    if !bridge.up {
        overlay.set_up(&bridge).await?;
    }

    let spec = VxlanSpec {
        name: names::vxlan_staging(network.vni),
        vni: network.vni,
        port: tunnel.port,
        local: tunnel.local,
        mtu,
    };
    let vxlan = match overlay.link(VXLAN).await? {
        Some(vxlan) if matches_spec(&vxlan, &spec) => vxlan,
        Some(stale) => {
            overlay.delete_link(&stale).await?;
            make_vxlan(host, &overlay, &namespace, connections, &spec).await?
        }
        None => make_vxlan(host, &overlay, &namespace, connections, &spec).await?,
    };
    if vxlan.mtu != mtu {
        overlay.set_mtu(&vxlan, mtu).await?;
    }
    if vxlan.master != Some(bridge.index) {
        overlay.set_master(&vxlan, &bridge).await?;
    }
    if !vxlan.up {
        overlay.set_up(&vxlan).await?;
    }
    Ok(Overlay { netlink: overlay, bridge, subnet, mtu })
}

fn matches_spec(vxlan: &Link, spec: &VxlanSpec) -> bool {
    vxlan.vxlan.as_ref().is_some_and(|info| {
        info.vni == spec.vni && info.port == spec.port && info.local == Some(spec.local) && !info.learning
    })
}

/// Creates the VXLAN device in the host namespace, moves it into the overlay
/// namespace and renames it `vxlan0`.
async fn make_vxlan(
    host: &Netlink,
    overlay: &Netlink,
    namespace: &str,
    connections: &Connections,
    spec: &VxlanSpec,
) -> netlib::Result<Link> {
    if let Some(leftover) = host.link(&spec.name).await? {
        host.delete_link(&leftover).await?;
    }
    host.create_vxlan(spec).await?;
    let staged = host.require_link(&spec.name).await?;
    let target = netns::open(&connections.namespaces().path(namespace))?;
    host.move_to(&staged, &target, namespace).await?;
    let moved = overlay.require_link(&spec.name).await?;
    overlay.rename(&moved, VXLAN).await?;
    overlay.require_link(VXLAN).await
}
