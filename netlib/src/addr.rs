//! IPv4 addresses on links.

use crate::error::Result;
use crate::link::Link;
use crate::netlink::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use std::net::{IpAddr, Ipv4Addr};

/// An address as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The interface it is on.
    pub index: u32,
    /// The address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

impl Netlink {
    /// Puts `address/prefix` on a link (replacing it if present).
    pub async fn add_address(&self, link: &Link, address: Ipv4Addr, prefix: u8) -> Result<()> {
        self.handle
            .address()
            .add(link.index, IpAddr::V4(address), prefix)
            .replace()
            .execute()
            .await
            .map_err(|e| self.error(format!("adding {address}/{prefix} to {}", link.name), e))
    }

    /// Every IPv4 address of the namespace.
    pub async fn addresses(&self) -> Result<Vec<Address>> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error("listing addresses", e))?;
        Ok(messages
            .iter()
            .filter_map(|message| {
                let address = message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                    _ => None,
                })?;
                Some(Address { index: message.header.index, address, prefix: message.header.prefix_len })
            })
            .collect())
    }
}
