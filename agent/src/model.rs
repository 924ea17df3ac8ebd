//! The node's kernel objects as the agent manages them, one model for both
//! sides of a pass: what the desired state asks for (built by `network`,
//! `endpoint`, `gwbridge`, `ingress`, `vip` ...) and what the kernel holds
//! (read by `observe`). `plan` compares the two.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The host namespace's key in [`KernelModel::namespaces`].
pub const HOST: &str = "host";

/// Every namespace netctl manages on the node, the host's included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelModel {
    /// By name ([`HOST`] for the host namespace).
    pub namespaces: BTreeMap<String, NamespaceModel>,
    /// Namespaces to leave as they are (desired side only): sandboxes whose
    /// task is still being stopped.
    pub keep: BTreeSet<String>,
    /// Links to leave as they are (desired side only), as (namespace,
    /// name): the host ends of kept sandboxes' veths.
    pub keep_links: BTreeSet<(String, String)>,
}

/// A namespace's objects (in the host namespace: only netctl's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceModel {
    /// Links by name.
    pub links: BTreeMap<String, LinkModel>,
    /// Permanent neighbour entries on vxlan0: address → MAC.
    pub neighbours: BTreeSet<(Ipv4Addr, [u8; 6])>,
    /// Permanent FDB entries on vxlan0: MAC → remote node.
    pub fdb: BTreeSet<([u8; 6], Ipv4Addr)>,
    /// The default route's gateway.
    pub default_gateway: Option<Ipv4Addr>,
    /// Sysctls (`net.ipv4.ip_forward` ...) and their values.
    pub sysctls: BTreeMap<String, String>,
    /// iptables rule sets by purpose (`mesh`, `vip`, `gwbridge`).
    pub rules: BTreeMap<String, RuleSet>,
}

/// A link and the properties netctl sets on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkModel {
    /// What kind of link.
    pub kind: LinkKind,
    /// Its MTU (`None`: netctl does not set it).
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// The bridge it is a port of.
    pub master: Option<String>,
    /// Its IPv4 addresses with prefix lengths (netctl adds, never removes).
    pub addresses: BTreeSet<(Ipv4Addr, u8)>,
    /// Bridge-port isolation.
    pub isolated: bool,
    /// Its MAC, when netctl decides it.
    pub mac: Option<[u8; 6]>,
}

impl LinkModel {
    /// A link of `kind` with nothing set.
    pub fn new(kind: LinkKind) -> Self {
        Self {
            kind,
            mtu: None,
            up: false,
            master: None,
            addresses: BTreeSet::new(),
            isolated: false,
            mac: None,
        }
    }
}

/// The kinds of link netctl makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// `lo`.
    Loopback,
    /// A bridge (br0, docker_gwbridge).
    Bridge,
    /// A VXLAN device.
    Vxlan {
        /// VXLAN network identifier.
        vni: u32,
        /// UDP port.
        port: u16,
        /// The node's data-path address.
        local: Ipv4Addr,
        /// MAC learning (netctl's are always off: entries are static).
        learning: bool,
    },
    /// One end of a veth pair; the other end is `peer` in `peer_namespace`
    /// (as read back: unknown, empty).
    Veth {
        /// The namespace of the other end.
        peer_namespace: String,
        /// The name of the other end.
        peer: String,
    },
    /// Anything else.
    Other,
}

/// An iptables rule set written whole, and the jumps into its chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// iptables-save text (`*table` ... `COMMIT`).
    pub text: String,
    /// `(table, built-in chain, rule)` jumps that must exist.
    pub jumps: &'static [(&'static str, &'static str, &'static [&'static str])],
}
