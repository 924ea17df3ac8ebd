//! IPv4 routes.

use crate::error::Result;
use crate::netlink::Netlink;
use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::RouteMessageBuilder;
use std::net::Ipv4Addr;

/// A route of the main table as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network; 0.0.0.0/0 for the default route.
    pub destination: Ipv4Addr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index.
    pub output: Option<u32>,
}

impl Netlink {
    /// Sets the default route via `gateway` (replacing any).
    pub async fn set_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build();
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| self.error(format!("adding default route via {gateway}"), e))
    }

    /// The IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let messages: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.error("listing routes", e))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.table == 254)
            .map(|message| {
                let mut route = Route {
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix: message.header.destination_prefix_length,
                    gateway: None,
                    output: None,
                };
                for attribute in &message.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => route.destination = *d,
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(*g),
                        RouteAttribute::Oif(index) => route.output = Some(*index),
                        _ => {}
                    }
                }
                route
            })
            .collect())
    }
}
