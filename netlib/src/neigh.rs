//! Neighbour (ARP) and forwarding-database entries for remote endpoints:
//! permanent, written with replace semantics, so writing the same entry twice
//! is harmless and a changed one is updated in place.

use crate::error::Result;
use crate::link::{format_mac, Link};
use crate::netlink::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use std::net::{IpAddr, Ipv4Addr};

/// A permanent neighbour or FDB entry as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    /// The interface it is on.
    pub index: u32,
    /// IPv4 address (neighbour entries) or, for FDB entries, the remote
    /// tunnel endpoint (`dst`).
    pub address: Option<Ipv4Addr>,
    /// The MAC address.
    pub mac: String,
}

impl Netlink {
    /// `ip neigh replace IP lladdr MAC dev LINK nud permanent`.
    pub async fn replace_neighbour(&self, link: &Link, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(link.index, IpAddr::V4(ip))
            .link_local_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| self.error(format!("writing neighbour {ip} on {}", link.name), e))
    }

    /// `bridge fdb replace MAC dev LINK dst REMOTE self permanent`.
    pub async fn replace_fdb(&self, link: &Link, mac: [u8; 6], remote: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(link.index, &mac)
            .destination(IpAddr::V4(remote))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| self.error(format!("writing FDB entry {} on {}", format_mac(&mac), link.name), e))
    }

    /// Deletes a neighbour entry read back by [`Netlink::neighbours`].
    pub async fn delete_neighbour(&self, entry: &Neighbour) -> Result<()> {
        let message = entry_message(entry, AddressFamily::Inet, NeighbourFlags::empty());
        self.handle
            .neighbours()
            .del(message)
            .execute()
            .await
            .map_err(|e| self.error(format!("deleting neighbour {:?}", entry.address), e))
    }

    /// Deletes an FDB entry read back by [`Netlink::fdb`].
    pub async fn delete_fdb(&self, entry: &Neighbour) -> Result<()> {
        let message = entry_message(entry, AddressFamily::Bridge, NeighbourFlags::Own);
        self.handle
            .neighbours()
            .del(message)
            .execute()
            .await
            .map_err(|e| self.error(format!("deleting FDB entry {}", entry.mac), e))
    }

    /// The permanent IPv4 neighbour entries on `link`.
    pub async fn neighbours(&self, link: &Link) -> Result<Vec<Neighbour>> {
        self.permanent_entries(link, AddressFamily::Inet).await
    }

    /// The permanent FDB entries on `link` that point at a remote endpoint.
    pub async fn fdb(&self, link: &Link) -> Result<Vec<Neighbour>> {
        let entries = self.permanent_entries(link, AddressFamily::Bridge).await?;
        Ok(entries.into_iter().filter(|e| e.address.is_some()).collect())
    }

    async fn permanent_entries(&self, link: &Link, family: AddressFamily) -> Result<Vec<Neighbour>> {
        let mut request = self.handle.neighbours().get();
        request.message_mut().header.family = family;
        let messages: Vec<NeighbourMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error(format!("listing entries of {}", link.name), e))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.ifindex == link.index && m.header.state == NeighbourState::Permanent)
            .map(|m| {
                let mut entry = Neighbour { index: m.header.ifindex, address: None, mac: String::new() };
                for attribute in &m.attributes {
                    match attribute {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            entry.address = Some(*ip)
                        }
                        // The bridge family's dst (the remote VTEP) arrives as raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                            entry.address = <[u8; 4]>::try_from(bytes.as_slice()).ok().map(Ipv4Addr::from)
                        }
                        NeighbourAttribute::LinkLocalAddress(mac) => entry.mac = format_mac(mac),
                        _ => {}
                    }
                }
                entry
            })
            .collect())
    }
}

fn entry_message(entry: &Neighbour, family: AddressFamily, flags: NeighbourFlags) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = family;
    message.header.ifindex = entry.index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = flags;
    if let Some(ip) = entry.address {
        message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    }
    if let Some(mac) = parse_mac(&entry.mac) {
        message.attributes.push(NeighbourAttribute::LinkLocalAddress(mac.to_vec()));
    }
    message
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> =
        text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<std::result::Result<_, _>>().ok()?;
    bytes.try_into().ok()
}
