//! A task's sandbox namespace `<task id[:12]>`: `eth0`, `eth1`, ... on its
//! overlays in attach order (each a veth whose other end is on the overlay's
//! br0), then a leg on docker_gwbridge with the default route, as Swarm
//! builds it. Each veth pair is made in one request with its sandbox end
//! already in the sandbox.

use crate::connections::Connections;
use crate::names;
use crate::overlay::Overlay;
use netctl_proto::convention::{GATEWAY_BRIDGE_GATEWAY, GATEWAY_BRIDGE_PREFIX};
use netlib::{netns, Link, Netlink};
use std::net::Ipv4Addr;

/// The egress leg of a sandbox.
pub struct GatewayLeg<'a> {
    /// docker_gwbridge.
    pub bridge: &'a Link,
    /// The sandbox's address on it.
    pub address: Ipv4Addr,
    /// The MTU of the leg (the underlay's).
    pub mtu: u32,
}

/// The sandbox's address on the gateway bridge, if it has one already.
pub async fn gateway_address(sandbox: &Netlink) -> netlib::Result<Option<Ipv4Addr>> {
    let gateway_subnet =
        ipnetwork::Ipv4Network::new(GATEWAY_BRIDGE_GATEWAY, GATEWAY_BRIDGE_PREFIX).expect("valid subnet");
    Ok(sandbox.addresses().await?.into_iter().map(|a| a.address).find(|a| gateway_subnet.contains(*a)))
}

/// Builds (or checks) the sandbox of `task_id`: one leg per `(overlay,
/// address)` in order, then the gateway leg.
pub async fn ensure(
    connections: &mut Connections,
    host: &Netlink,
    task_id: &str,
    legs: &[(&Overlay, Ipv4Addr)],
    gateway: Option<GatewayLeg<'_>>,
) -> netlib::Result<()> {
    let name = names::sandbox_namespace(task_id);
    let sandbox = connections.ensure(&name).await?;
    let sandbox_file = netns::open(&connections.namespaces().path(&name))?;
    let loopback = sandbox.require_link("lo").await?;
    if !loopback.up {
        sandbox.set_up(&loopback).await?;
    }
    for (index, (overlay, address)) in legs.iter().enumerate() {
        let leg = Leg {
            outer: &overlay.netlink,
            outer_name: names::overlay_veth(task_id, index),
            bridge: &overlay.bridge,
            inner_name: names::sandbox_interface(index),
            address: *address,
            prefix: overlay.subnet.prefix(),
            mtu: overlay.mtu,
            isolated: false,
        };
        leg.ensure(&sandbox, &sandbox_file).await?;
    }
    if let Some(gateway) = gateway {
        let leg = Leg {
            outer: host,
            outer_name: names::gateway_veth(task_id),
            bridge: gateway.bridge,
            inner_name: names::sandbox_interface(legs.len()),
            address: gateway.address,
            prefix: GATEWAY_BRIDGE_PREFIX,
            mtu: gateway.mtu,
            isolated: true,
        };
        leg.ensure(&sandbox, &sandbox_file).await?;
        sandbox.set_default_route(GATEWAY_BRIDGE_GATEWAY).await?;
    }
    Ok(())
}

/// One veth between a bridge (in `outer`) and the sandbox.
struct Leg<'a> {
    outer: &'a Netlink,
    outer_name: String,
    bridge: &'a Link,
    inner_name: String,
    address: Ipv4Addr,
    prefix: u8,
    mtu: u32,
    isolated: bool,
}

impl Leg<'_> {
    async fn ensure(&self, sandbox: &Netlink, sandbox_file: &std::fs::File) -> netlib::Result<()> {
        let existing = match sandbox.link(&self.inner_name).await? {
            // Half a pair (its other end went with a namespace deleted by
            // hand): remove it and make the pair again.
            Some(inner) if self.outer.link(&self.outer_name).await?.is_none() => {
                sandbox.delete_link(&inner).await?;
                None
            }
            existing => existing,
        };
        let inner = match existing {
            Some(inner) => inner,
            None => {
                if let Some(stale) = self.outer.link(&self.outer_name).await? {
                    self.outer.delete_link(&stale).await?;
                }
                let mac = names::endpoint_mac(self.address);
                self.outer
                    .create_veth(&self.outer_name, &self.inner_name, sandbox_file, self.mtu, Some(mac))
                    .await?;
                sandbox.require_link(&self.inner_name).await?
            }
        };
        let outer = self.outer.require_link(&self.outer_name).await?;
        let enslaved = outer.master == Some(self.bridge.index);
        if !enslaved {
            self.outer.set_master(&outer, self.bridge).await?;
        }
        // Read back every pass: isolation turned off by hand is repaired.
        if self.isolated && (!enslaved || outer.isolated != Some(true)) {
            self.outer.isolate_bridge_port(&outer).await?;
        }
        if !outer.up {
            self.outer.set_up(&outer).await?;
        }
        sandbox.add_address(&inner, self.address, self.prefix).await?;
        if !inner.up {
            sandbox.set_up(&inner).await?;
        }
        Ok(())
    }
}
