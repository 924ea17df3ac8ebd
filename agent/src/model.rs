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

/// The jumps into a rule set's chains: `(table, built-in chain, rule)`.
pub type Jumps = &'static [(&'static str, &'static str, &'static [&'static str])];

/// Where a rule set's text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleScope {
    /// The tables the text names are netctl's alone (a sandbox's,
    /// ingress_sbox's): each is written whole, flushing anything else in
    /// it, with the jumps into its chains in the text. One process, and
    /// nothing to check first.
    Tables,
    /// The host's tables, shared with everyone else's rules: only the
    /// chains the text declares are rewritten (`--noflush`), then each of
    /// these jumps is added unless it is there.
    Chains(Jumps),
}

/// An iptables rule set written whole. Two rule sets are the same when
/// their fingerprints are: what the agent wrote is remembered by
/// fingerprint only (across restarts too), since reading rules back from
/// every namespace each pass would cost a process each.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// iptables-save text (`*table` ... `COMMIT`); empty when only
    /// remembered.
    pub text: String,
    /// Where the text goes.
    pub scope: RuleScope,
    fingerprint: u64,
}

impl RuleSet {
    /// Tables of netctl's own, written whole.
    pub fn tables(text: String) -> Self {
        Self::new(text, RuleScope::Tables)
    }

    /// Chains in the host's tables, and the jumps into them.
    pub fn chains(text: String, jumps: Jumps) -> Self {
        Self::new(text, RuleScope::Chains(jumps))
    }

    fn new(text: String, scope: RuleScope) -> Self {
        let mut hash = Fnv::default();
        hash.write(text.as_bytes());
        if let RuleScope::Chains(jumps) = scope {
            for (table, chain, rule) in jumps {
                hash.write(table.as_bytes());
                hash.write(chain.as_bytes());
                rule.iter().for_each(|part| hash.write(part.as_bytes()));
            }
        }
        Self { text, scope, fingerprint: hash.0 }
    }

    /// A rule set known only by the fingerprint of what was written.
    pub fn written(fingerprint: u64) -> Self {
        Self { text: String::new(), scope: RuleScope::Tables, fingerprint }
    }

    /// The fingerprint of its text and jumps (stable across runs).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

impl PartialEq for RuleSet {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for RuleSet {}

/// FNV-1a, 64 bits: a fingerprint that stays the same from one build and
/// run of the agent to the next (unlike std's hasher).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes.iter().chain(&[0xff]) {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
