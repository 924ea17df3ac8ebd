//! netlib: the kernel plumbing of netctl, with no cluster knowledge —
//! namespaces, links (bridge, VXLAN, veth), addresses, routes, neighbour and
//! FDB entries, sysctls and iptables, and reading them back.
//!
//! Every netlink request goes through a [`Netlink`] connection bound to one
//! namespace; namespace switches happen only on dedicated threads.

pub mod addr;
pub mod conntrack;
pub mod error;
pub mod iptables;
pub mod link;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod route;
pub mod sysctl;

pub use error::{Error, Result};
pub use link::{Link, VxlanSpec};
pub use netlink::Netlink;
pub use netns::NamespaceDir;
