//! Links: bridges, VXLAN devices, veth pairs; their state, master, MTU,
//! address, name and namespace; and reading them back.

use crate::error::{Error, Result};
use crate::netlink::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute,
    LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

/// What a VXLAN device is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Source address of the tunnel (the node's data-path address).
    pub local: Ipv4Addr,
    /// Device MTU.
    pub mtu: u32,
}

/// A link as read back from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `bridge`, `vxlan`, `veth`, ... (empty for plain devices).
    pub kind: String,
    /// MTU.
    pub mtu: u32,
    /// Index of the bridge it is enslaved to.
    pub master: Option<u32>,
    /// Hardware address, `aa:bb:..`.
    pub mac: String,
    /// Administratively up.
    pub up: bool,
    /// The interface alias (netctl marks the bridges it makes with one).
    pub alias: String,
    /// For a veth: the peer's interface index (in `peer_netns_id`'s namespace).
    pub peer_index: Option<u32>,
    /// For a veth whose peer is elsewhere: the peer namespace's id as seen here.
    pub peer_netns_id: Option<i32>,
    /// For a VXLAN device: VNI, port, local address, learning.
    pub vxlan: Option<VxlanInfo>,
    /// Bridge port isolation (`bridge link ... isolated on`), when the link
    /// is a bridge port.
    pub isolated: Option<bool>,
}

/// The VXLAN attributes of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Local tunnel address.
    pub local: Option<Ipv4Addr>,
    /// Whether the device learns remote MACs.
    pub learning: bool,
    /// proxy ARP.
    pub proxy: bool,
    /// l2miss notifications.
    pub l2miss: bool,
    /// l3miss notifications.
    pub l3miss: bool,
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Netlink {
    async fn add_link(&self, what: &str, message: LinkMessage) -> Result<()> {
        self.handle.link().add(message).execute().await.map_err(|e| self.error(format!("creating {what}"), e))
    }

    async fn set_link(&self, what: String, message: LinkMessage) -> Result<()> {
        self.handle.link().set(message).execute().await.map_err(|e| self.error(what, e))
    }

    /// Creates a bridge, marked with `alias` (the kernel takes an alias only
    /// on an existing link, hence the second request).
    pub async fn create_bridge(&self, name: &str, mtu: u32, alias: &str) -> Result<Link> {
        self.add_link(name, LinkBridge::new(name).mtu(mtu).build()).await?;
        let bridge = self.require_link(name).await?;
        let message = LinkUnspec::new_with_index(bridge.index)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
            .build();
        self.set_link(format!("marking {name} with alias {alias}"), message).await?;
        Ok(Link { alias: alias.to_string(), ..bridge })
    }

    /// Isolates a bridge port, or no longer: isolated ports cannot talk to
    /// each other, only to the bridge and non-isolated ports (inter-container
    /// traffic off).
    pub async fn set_bridge_port_isolated(&self, link: &Link, isolated: bool) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(isolated)]))
            .build();
        let doing = if isolated { "isolating" } else { "no longer isolating" };
        self.handle
            .link()
            .set_port(message)
            .execute()
            .await
            .map_err(|e| self.error(format!("{doing} bridge port {}", link.name), e))
    }

    /// Creates a VXLAN device: learning off, proxy, l2miss and l3miss on.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<()> {
        let message = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .local(spec.local)
            .learning(false)
            .proxy(true)
            .l2miss(true)
            .l3miss(true)
            .mtu(spec.mtu)
            .build();
        self.add_link(&spec.name, message).await
    }

    /// Creates a veth pair in one request: `name` here, `peer` already in the
    /// namespace `peer_namespace`, both with `mtu`, the peer with `peer_mac`.
    pub async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        peer_namespace: &std::fs::File,
        mtu: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let mut peer_message = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .setns_by_fd(peer_namespace.as_raw_fd());
        if let Some(mac) = peer_mac {
            peer_message = peer_message.address(mac.to_vec());
        }
        let message = LinkVeth::new(name, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message.build())))
            .build();
        self.add_link(&format!("veth pair {name}/{peer}"), message).await
    }

    /// Brings a link up.
    pub async fn set_up(&self, link: &Link) -> Result<()> {
        self.set_link(
            format!("bringing {} up", link.name),
            LinkUnspec::new_with_index(link.index).up().build(),
        )
        .await
    }

    /// Enslaves a link to a bridge.
    pub async fn set_master(&self, link: &Link, bridge: &Link) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).controller(bridge.index).build();
        self.set_link(format!("enslaving {} to {}", link.name, bridge.name), message).await
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, link: &Link, mtu: u32) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.set_link(format!("setting MTU {mtu} on {}", link.name), message).await
    }

    /// Renames a link (it must be down).
    pub async fn rename(&self, link: &Link, name: &str) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).name(name.to_string()).build();
        self.set_link(format!("renaming {} to {name}", link.name), message).await
    }

    /// Moves a link into another namespace.
    pub async fn move_to(&self, link: &Link, namespace: &std::fs::File, namespace_name: &str) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).setns_by_fd(namespace.as_raw_fd()).build();
        self.set_link(format!("moving {} to {namespace_name}", link.name), message).await
    }

    /// Deletes a link (a veth takes its peer with it).
    pub async fn delete_link(&self, link: &Link) -> Result<()> {
        self.handle
            .link()
            .del(link.index)
            .execute()
            .await
            .map_err(|e| self.error(format!("deleting {}", link.name), e))
    }

    /// Deletes the link called `name` if there is one: gone already, or
    /// gone between the lookup and the delete (a namespace the kernel
    /// destroys after it was removed takes its veth pairs with it), is
    /// done as well.
    pub async fn delete_link_named(&self, name: &str) -> Result<()> {
        let Some(link) = self.link(name).await? else { return Ok(()) };
        match self.delete_link(&link).await {
            Err(err) if err.is_not_found() => Ok(()),
            deleted => deleted,
        }
    }

    /// The link called `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut found = self.handle.link().get().match_name(name.to_string()).execute();
        match found.try_next().await {
            Ok(message) => Ok(message.map(|m| parse_link(&m))),
            Err(err) => {
                let err = self.error(format!("looking up {name}"), err);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The link called `name`; an error naming it if it is missing.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| Error::other(format!("looking up {name}"), &self.namespace, "no such link"))
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let messages: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error("listing links", e))?;
        Ok(messages.iter().map(parse_link).collect())
    }
}

fn parse_link(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        up: message.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::IfAlias(alias) => link.alias = alias.clone(),
            LinkAttribute::Controller(master) => link.master = Some(*master),
            LinkAttribute::Address(mac) => link.mac = format_mac(mac),
            LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
            LinkAttribute::LinkNetNsId(id) => link.peer_netns_id = Some(*id),
            LinkAttribute::LinkInfo(infos) => parse_link_info(infos, &mut link),
            _ => {}
        }
    }
    link
}

fn parse_link_info(infos: &[NlLinkInfo], link: &mut Link) {
    for info in infos {
        match info {
            NlLinkInfo::Kind(kind) => link.kind = kind_name(kind),
            NlLinkInfo::Data(InfoData::Vxlan(attributes)) => {
                let mut vxlan = VxlanInfo::default();
                for attribute in attributes {
                    match attribute {
                        InfoVxlan::Id(vni) => vxlan.vni = *vni,
                        InfoVxlan::Port(port) => vxlan.port = *port,
                        InfoVxlan::Local(local) => vxlan.local = Some(*local),
                        InfoVxlan::Learning(on) => vxlan.learning = *on,
                        InfoVxlan::Proxy(on) => vxlan.proxy = *on,
                        InfoVxlan::L2Miss(on) => vxlan.l2miss = *on,
                        InfoVxlan::L3Miss(on) => vxlan.l3miss = *on,
                        _ => {}
                    }
                }
                link.vxlan = Some(vxlan);
            }
            NlLinkInfo::PortData(InfoPortData::BridgePort(attributes)) => {
                link.isolated = attributes.iter().find_map(|a| match a {
                    InfoBridgePort::Isolated(on) => Some(*on),
                    _ => None,
                });
            }
            _ => {}
        }
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vxlan => "vxlan".into(),
        other => other.to_string(),
    }
}
