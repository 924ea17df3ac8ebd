//! The routing mesh's fast path (`agent/bpf/mesh.bpf.c`, tc BPF): new
//! flows of a published port that arrive on the node's data-path interface
//! and go to a replica here are DNATed in tc and handed straight into the
//! replica's namespace; its replies are un-DNATed on its docker_gwbridge
//! veth and sent straight out. Flows to other nodes stay iptables' (marked
//! with [`AWAY_MARK`], so that `DOCKER-INGRESS` balances them over the other
//! nodes only). The walkthrough's objects all stay; this skips the host's
//! routing, conntrack, NAT and docker_gwbridge for the replicas here.
//!
//! The maps are pinned under the node's pin folder
//! ([`netlib::NamespaceDir::pins`]) and the programs attached through
//! netlink (clsact, cls_bpf): both outlive the agent, so a restarted agent
//! takes them over (and its flows) without a packet lost.

use crate::mesh::PortRoute;
use anyhow::{anyhow, Context};
use aya::maps::{HashMap as BpfMap, MapData};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader, Pod};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;

/// The BPF object built from `bpf/mesh.bpf.c`.
const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh.bpf.o"));
/// The most replicas of one port on one node the fast path takes (as
/// `MAX_HERE` in mesh.bpf.c); a port with more stays iptables'.
pub const MAX_HERE: usize = 32;
/// The mark the fast path sets on new flows it leaves to iptables for
/// another node (as `AWAY_MARK` in mesh.bpf.c).
pub const AWAY_MARK: u32 = 0x100000;
/// The tc filter's priority and handle, the same on every attach so that a
/// restarted agent replaces its predecessor's filter.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: u32 = 0x6e63;
/// The programs: on the data-path interface, on each replica's veth.
const INGRESS_PROGRAM: &str = "mesh_ingress";
const REPLY_PROGRAM: &str = "mesh_reply";

/// A published port, as mesh.bpf.c keys it (port in network order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    port: u16,
    protocol: u8,
    pad: u8,
}

/// One replica here: its docker_gwbridge address (network order) and the
/// index of its veth's host end.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Replica {
    addr: u32,
    ifindex: u32,
}

/// A published port with replicas here: `replicas` of its `total`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Port {
    total: u32,
    replicas: u32,
    target_port: u16,
    pad: u16,
    replica: [Replica; MAX_HERE],
}

/// One direction of a flow (network order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    protocol: u8,
    pad: [u8; 3],
}

/// Where a flow goes, or where its replies say they come from.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nat {
    addr: u32,
    ifindex: u32,
    port: u16,
    pad: u16,
}

// SAFETY: plain `repr(C)` data, every bit pattern valid, padding explicit.
unsafe impl Pod for PortKey {}
unsafe impl Pod for Port {}
unsafe impl Pod for FlowKey {}
unsafe impl Pod for Nat {}

/// What the fast path holds for a set of routes (pure).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Wanted {
    ports: BTreeMap<PortKey, Port>,
    peers: BTreeSet<u32>,
    /// The replicas' veths (host end), by index, that carry replies.
    veths: BTreeMap<u32, String>,
}

impl Wanted {
    /// The fast path's share of `routes`: every TCP or UDP port with
    /// replicas here, all of whose veths are known (`veths`: docker_gwbridge
    /// address → host end's name and index), at most [`MAX_HERE`] of them;
    /// flows from `peers` (the other nodes) go to those replicas only.
    pub fn new(routes: &[PortRoute], veths: &HashMap<Ipv4Addr, (String, u32)>, peers: &[Ipv4Addr]) -> Self {
        let mut wanted = Wanted {
            peers: peers.iter().map(|p| u32::from_ne_bytes(p.octets())).collect(),
            ..Self::default()
        };
        for route in routes {
            let Some((key, port)) = fast_port(route, veths) else { continue };
            wanted.ports.insert(key, port);
            let legs = route.here.iter().filter_map(|address| veths.get(address));
            wanted.veths.extend(legs.map(|(name, index)| (*index, name.clone())));
        }
        wanted
    }

    /// Whether `route`'s port is on the fast path.
    pub fn holds(&self, route: &PortRoute) -> bool {
        port_key(route).is_some_and(|key| self.ports.contains_key(&key))
    }

    /// Whether a pinned flow still leads where these ports send it: to a
    /// replica here of its port, or to iptables for a port that still has
    /// replicas elsewhere.
    fn keeps_flow(&self, flow: &FlowKey, to: &Nat) -> bool {
        let key = PortKey { port: flow.dport, protocol: flow.protocol, pad: 0 };
        self.ports.get(&key).is_some_and(|port| match to.ifindex {
            0 => port.total > port.replicas,
            ifindex => serves(port, to.addr, ifindex) && port.target_port == to.port,
        })
    }

    /// Whether a pinned reply still comes from a replica here of a port.
    fn keeps_reply(&self, reply: &FlowKey, from: &Nat) -> bool {
        let key = PortKey { port: from.port, protocol: reply.protocol, pad: 0 };
        self.ports
            .get(&key)
            .is_some_and(|port| serves(port, reply.saddr, from.ifindex) && port.target_port == reply.sport)
    }
}

fn serves(port: &Port, addr: u32, ifindex: u32) -> bool {
    port.replica[..port.replicas as usize].iter().any(|r| r.addr == addr && r.ifindex == ifindex)
}

fn port_key(route: &PortRoute) -> Option<PortKey> {
    let protocol = match route.port.protocol.as_str() {
        "tcp" => libc::IPPROTO_TCP,
        "udp" => libc::IPPROTO_UDP,
        _ => return None,
    };
    let port = u16::try_from(route.port.published_port).ok()?.to_be();
    Some(PortKey { port, protocol: protocol as u8, pad: 0 })
}

/// `route`'s entry, if the fast path takes it.
fn fast_port(route: &PortRoute, veths: &HashMap<Ipv4Addr, (String, u32)>) -> Option<(PortKey, Port)> {
    let key = port_key(route)?;
    if route.here.is_empty() || route.here.len() > MAX_HERE {
        return None;
    }
    let mut port = Port {
        total: route.port.backends.len() as u32,
        replicas: route.here.len() as u32,
        target_port: u16::try_from(route.port.target_port).ok()?.to_be(),
        pad: 0,
        replica: [Replica::default(); MAX_HERE],
    };
    for (slot, address) in port.replica.iter_mut().zip(&route.here) {
        let (_, index) = veths.get(address)?;
        *slot = Replica { addr: u32::from_ne_bytes(address.octets()), ifindex: *index };
    }
    Some((key, port))
}

/// The loaded programs and maps, and what they were last given.
pub struct FastPath {
    ebpf: Ebpf,
    ports: BpfMap<MapData, PortKey, Port>,
    peers: BpfMap<MapData, u32, u8>,
    flows: BpfMap<MapData, FlowKey, Nat>,
    replies: BpfMap<MapData, FlowKey, Nat>,
    /// The interface `mesh_ingress` is attached to.
    ingress_on: Option<String>,
    /// The veths `mesh_reply` is attached to, by index.
    replies_on: BTreeMap<u32, String>,
    held: Wanted,
}

impl FastPath {
    /// Loads the programs for node `address`, taking over the maps pinned
    /// in `pins` (a previous agent's flows) or pinning new ones there.
    pub fn load(pins: &Path, address: Ipv4Addr) -> anyhow::Result<Self> {
        if netlib::netns::mount_bpf_filesystem()? {
            tracing::info!(
                "mounted the BPF filesystem at /sys/fs/bpf (the fast path's maps are pinned there)"
            );
        }
        std::fs::create_dir_all(pins)
            .with_context(|| format!("creating the pin folder {}", pins.display()))?;
        let node = u32::from_ne_bytes(address.octets());
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins)
            .override_global("node_address", &node, true)
            .load(OBJECT)
            .with_context(|| {
                format!("loading the mesh's BPF programs (maps pinned in {})", pins.display())
            })?;
        for name in [INGRESS_PROGRAM, REPLY_PROGRAM] {
            program(&mut ebpf, name)?.load().with_context(|| format!("loading BPF program {name}"))?;
        }
        let mut map = |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("BPF map {name} missing"));
        let (ports, peers, flows, replies) =
            (map("mesh_ports")?, map("mesh_peers")?, map("mesh_flows")?, map("mesh_replies")?);
        let ports: BpfMap<_, PortKey, Port> = ports.try_into().context("BPF map mesh_ports")?;
        let peers: BpfMap<_, u32, u8> = peers.try_into().context("BPF map mesh_peers")?;
        // What a previous agent left: compared with, never trusted blindly.
        let held = Wanted {
            ports: ports.iter().filter_map(Result::ok).collect(),
            peers: peers.keys().filter_map(Result::ok).collect(),
            veths: BTreeMap::new(),
        };
        Ok(Self {
            ebpf,
            ports,
            peers,
            flows: flows.try_into().context("BPF map mesh_flows")?,
            replies: replies.try_into().context("BPF map mesh_replies")?,
            ingress_on: None,
            replies_on: BTreeMap::new(),
            held,
        })
    }

    /// Whether the maps hold `route`'s port (for `topology`).
    pub fn holds(&self, route: &PortRoute) -> bool {
        self.held.holds(route)
    }

    /// Makes the kernel hold `wanted`, the ingress program on `interface`
    /// (from the first port on): replies first caught on every replica's
    /// veth, then the ports given out; flows to replicas gone deleted.
    pub fn sync(&mut self, interface: &str, wanted: Wanted) -> anyhow::Result<()> {
        // Attached once a port needs it: a node without published replicas
        // keeps its data-path interface (VXLAN included) free of it.
        if !wanted.ports.is_empty() && self.ingress_on.as_deref() != Some(interface) {
            attach(&mut self.ebpf, INGRESS_PROGRAM, interface)?;
            self.ingress_on = Some(interface.to_string());
        }
        for (index, name) in &wanted.veths {
            if self.replies_on.get(index) != Some(name) {
                attach(&mut self.ebpf, REPLY_PROGRAM, name)?;
                self.replies_on.insert(*index, name.clone());
            }
        }
        if wanted == self.held {
            return Ok(());
        }
        self.update_peers(&wanted)?;
        let ports_changed = wanted.ports != self.held.ports;
        self.update_ports(&wanted)?;
        if ports_changed {
            self.delete_stale_flows(&wanted);
        }
        self.replies_on.retain(|index, _| wanted.veths.contains_key(index));
        self.held = wanted;
        Ok(())
    }

    fn update_peers(&mut self, wanted: &Wanted) -> anyhow::Result<()> {
        for peer in wanted.peers.difference(&self.held.peers) {
            let address = Ipv4Addr::from(peer.to_ne_bytes());
            self.peers.insert(peer, 1, 0).with_context(|| format!("adding node {address} to mesh_peers"))?;
        }
        for peer in self.held.peers.difference(&wanted.peers) {
            let _ = self.peers.remove(peer);
        }
        Ok(())
    }

    fn update_ports(&mut self, wanted: &Wanted) -> anyhow::Result<()> {
        for (key, port) in &wanted.ports {
            if self.held.ports.get(key) != Some(port) {
                let published = u16::from_be(key.port);
                self.ports
                    .insert(key, port, 0)
                    .with_context(|| format!("giving port {published} to mesh_ports"))?;
            }
        }
        for key in self.held.ports.keys().filter(|k| !wanted.ports.contains_key(k)) {
            let _ = self.ports.remove(key);
        }
        Ok(())
    }

    /// Deletes the pinned flows (and replies) that lead to a replica no
    /// longer here, or to a port no longer on the fast path: their next
    /// packet takes a fresh path.
    fn delete_stale_flows(&mut self, wanted: &Wanted) {
        retain(&mut self.flows, |flow, to| wanted.keeps_flow(flow, to));
        retain(&mut self.replies, |reply, from| wanted.keeps_reply(reply, from));
    }
}

/// Deletes the entries of a flow map that `keep` turns down.
fn retain(map: &mut BpfMap<MapData, FlowKey, Nat>, keep: impl Fn(&FlowKey, &Nat) -> bool) {
    let stale: Vec<FlowKey> =
        map.iter().filter_map(Result::ok).filter(|(k, v)| !keep(k, v)).map(|(k, _)| k).collect();
    for key in &stale {
        let _ = map.remove(key);
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow!("BPF program {name} missing"))?;
    program.try_into().with_context(|| format!("BPF program {name} is not a tc classifier"))
}

/// Attaches program `name` to `interface`'s ingress (adding its clsact
/// qdisc), replacing a previous agent's filter, and leaves it attached
/// when the agent exits.
fn attach(ebpf: &mut Ebpf, name: &str, interface: &str) -> anyhow::Result<()> {
    // Fails when the qdisc is there already; the attach below says if not.
    let _ = tc::qdisc_add_clsact(interface);
    let program = program(ebpf, name)?;
    let handle = TcHandle::from(FILTER_HANDLE);
    let options = NlOptions { priority: FILTER_PRIORITY, handle, ..Default::default() };
    let link = match program.attach_with_options(
        interface,
        TcAttachType::Ingress,
        TcAttachOptions::Netlink(options),
    ) {
        Ok(link) => link,
        Err(_) => {
            let previous = SchedClassifierLink::attached(
                interface,
                TcAttachType::Ingress,
                FILTER_PRIORITY,
                handle,
                None,
            )
            .with_context(|| format!("finding {interface}'s tc ingress filter"))?;
            program
                .attach_to_link(previous)
                .with_context(|| format!("attaching {name} to {interface}'s tc ingress"))?
        }
    };
    // Dropping the link would detach it: the filter outlives the agent.
    std::mem::forget(program.take_link(link).with_context(|| format!("keeping {name} on {interface}"))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_proto::PublishedPort;

    const GATEWAY_A: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
    const GATEWAY_B: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 4);
    const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 7);

    /// Port 8080/tcp → 80 with `replicas` replicas in all, `here` of them on
    /// this node (the rest on PEER).
    fn route(protocol: &str, replicas: usize, here: &[Ipv4Addr]) -> PortRoute {
        let backends: Vec<String> = (0..replicas).map(|i| format!("10.255.0.{}", i + 10)).collect();
        let elsewhere = backends[here.len()..].to_vec();
        let nodes = if elsewhere.is_empty() { vec![] } else { vec![(PEER, elsewhere.len())] };
        let port = PublishedPort {
            protocol: protocol.into(),
            published_port: 8080,
            target_port: 80,
            backends,
            service: "web".into(),
        };
        PortRoute { port, here: here.to_vec(), nodes, elsewhere, unplaced: 0 }
    }

    fn veths() -> HashMap<Ipv4Addr, (String, u32)> {
        HashMap::from([(GATEWAY_A, ("gwa".to_string(), 7)), (GATEWAY_B, ("gwb".to_string(), 9))])
    }

    fn addr(address: Ipv4Addr) -> u32 {
        u32::from_ne_bytes(address.octets())
    }

    #[test]
    fn a_port_with_replicas_here_takes_each_of_them_and_its_share_of_all() {
        let route = route("tcp", 3, &[GATEWAY_A, GATEWAY_B]);
        let wanted = Wanted::new(std::slice::from_ref(&route), &veths(), &[PEER]);
        assert!(wanted.holds(&route));
        let key = PortKey { port: 8080u16.to_be(), protocol: libc::IPPROTO_TCP as u8, pad: 0 };
        let port = wanted.ports[&key];
        assert_eq!((port.total, port.replicas, port.target_port), (3, 2, 80u16.to_be()));
        assert_eq!(
            port.replica[..2],
            [Replica { addr: addr(GATEWAY_A), ifindex: 7 }, Replica { addr: addr(GATEWAY_B), ifindex: 9 }]
        );
        assert_eq!(wanted.veths, BTreeMap::from([(7, "gwa".to_string()), (9, "gwb".to_string())]));
        assert_eq!(wanted.peers, BTreeSet::from([addr(PEER)]));
    }

    #[test]
    fn a_port_stays_iptables_without_replicas_here_a_known_veth_or_room() {
        let too_many: Vec<Ipv4Addr> = (0..=MAX_HERE as u8).map(|i| Ipv4Addr::new(172, 18, 1, i)).collect();
        let mut veths = veths();
        for (i, address) in too_many.iter().enumerate() {
            veths.insert(*address, (format!("gw{i}"), 100 + i as u32));
        }
        let unknown_veth = Ipv4Addr::new(172, 18, 0, 99);
        for route in [
            route("tcp", 2, &[]),
            route("tcp", 2, &[unknown_veth]),
            route("tcp", too_many.len(), &too_many),
            route("sctp", 1, &[GATEWAY_A]),
        ] {
            let wanted = Wanted::new(std::slice::from_ref(&route), &veths, &[]);
            assert!(!wanted.holds(&route), "{route:?}");
            assert!(wanted.ports.is_empty() && wanted.veths.is_empty(), "{route:?}");
        }
    }

    #[test]
    fn a_pinned_flow_stays_while_its_replica_serves_and_an_away_flow_while_replicas_are_elsewhere() {
        let client = Ipv4Addr::new(192, 168, 10, 1);
        let node = Ipv4Addr::new(192, 168, 10, 6);
        let tcp = libc::IPPROTO_TCP as u8;
        let key = |saddr, daddr, sport: u16, dport: u16| FlowKey {
            saddr: addr(saddr),
            daddr: addr(daddr),
            sport: sport.to_be(),
            dport: dport.to_be(),
            protocol: tcp,
            pad: [0; 3],
        };
        let flow = key(client, node, 40000, 8080);
        let to =
            |gateway: Ipv4Addr, ifindex| Nat { addr: addr(gateway), ifindex, port: 80u16.to_be(), pad: 0 };
        let away = Nat { addr: 0, ifindex: 0, port: 0, pad: 0 };
        let reply = |gateway| key(gateway, client, 80, 40000);
        let from = |ifindex| Nat { addr: addr(node), ifindex, port: 8080u16.to_be(), pad: 0 };

        let spread = Wanted::new(&[route("tcp", 2, &[GATEWAY_A])], &veths(), &[]);
        assert!(spread.keeps_flow(&flow, &to(GATEWAY_A, 7)));
        assert!(!spread.keeps_flow(&flow, &to(GATEWAY_B, 9)), "B serves no more");
        assert!(!spread.keeps_flow(&flow, &to(GATEWAY_A, 8)), "A's veth was remade");
        assert!(spread.keeps_flow(&flow, &away), "a replica is elsewhere");
        assert!(spread.keeps_reply(&reply(GATEWAY_A), &from(7)));
        assert!(!spread.keeps_reply(&reply(GATEWAY_B), &from(9)));

        let all_here = Wanted::new(&[route("tcp", 1, &[GATEWAY_A])], &veths(), &[]);
        assert!(!all_here.keeps_flow(&flow, &away), "no replica elsewhere: chosen again");

        let gone = Wanted::new(&[], &veths(), &[]);
        assert!(!gone.keeps_flow(&flow, &to(GATEWAY_A, 7)) && !gone.keeps_reply(&reply(GATEWAY_A), &from(7)));
    }
}
