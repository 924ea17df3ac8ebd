//! netlib: the kernel plumbing of netctl, with no cluster knowledge —
//! namespaces, links (bridge, VXLAN, veth), addresses, routes,
//! neighbour and FDB entries, sysctls, iptables, and reading a node's
//! topology back. Filled in with the data plane.
