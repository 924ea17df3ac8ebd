//! Conntrack entries over netfilter netlink (ctnetlink): a namespace's
//! IPv4 flows listed, and the ones a caller picks deleted. A UDP flow DNATed
//! to a backend that is gone keeps going there until its entry times out,
//! and so do a TCP connection's retried SYNs; deleting the entry lets the
//! next packet be balanced again, at once.
//! Messages are built and read here (no ctnetlink crate in the offline set);
//! the socket is opened on a thread inside the namespace.

use crate::error::{Error, Result};
use crate::netns;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::net::Ipv4Addr;
use std::path::Path;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
/// `IPS_SEEN_REPLY` in `CTA_STATUS`: a packet came back.
const IPS_SEEN_REPLY: u32 = 1 << 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const AF_INET: u8 = 2;
/// The nlmsghdr and nfgenmsg before a message's attributes.
const HEADERS: usize = 16 + 4;

/// One direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// Source address.
    pub source: Ipv4Addr,
    /// Destination address.
    pub destination: Ipv4Addr,
    /// Source port (0 for protocols without ports).
    pub source_port: u16,
    /// Destination port.
    pub destination_port: u16,
}

/// A tracked flow: its protocol (6 TCP, 17 UDP) and both directions; a
/// DNATed flow's reply comes from the address it was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number.
    pub protocol: u8,
    /// As the first packet was sent.
    pub original: Tuple,
    /// As replies come back.
    pub reply: Tuple,
    /// Whether any reply came back yet (a TCP connection whose SYN went
    /// unanswered has none).
    pub replied: bool,
}

/// Deletes, in the namespace at `path` (`name` in errors), the IPv4 flows
/// `stale` picks; returns how many went. A flow that ended meanwhile
/// counts as gone.
pub async fn delete_flows(
    name: &str,
    path: &Path,
    stale: impl Fn(&Flow) -> bool + Send + 'static,
) -> Result<usize> {
    let label = name.to_string();
    let done = netns::run_in_async(path, move || {
        let socket = open()?;
        let flows = dump(&socket)?;
        let mut deleted = 0;
        for flow in flows.iter().filter(|flow| stale(flow)) {
            if delete(&socket, flow)? {
                deleted += 1;
            }
        }
        Ok::<usize, std::io::Error>(deleted)
    })
    .await?;
    done.map_err(|e| Error::os("deleting conntrack entries", &label, e))
}

fn open() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Every IPv4 flow of the namespace.
fn dump(socket: &Socket) -> std::io::Result<Vec<Flow>> {
    socket.send(&request(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, &[]), 0)?;
    let mut flows = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        for (kind, payload) in messages(&datagram) {
            match kind {
                NLMSG_DONE => return Ok(flows),
                NLMSG_ERROR => check_ack(payload)?,
                _ => flows.extend(parse_flow(payload.get(4..).unwrap_or_default())),
            }
        }
    }
}

/// Deletes one flow; false if it was already gone.
fn delete(socket: &Socket, flow: &Flow) -> std::io::Result<bool> {
    let mut attributes = Vec::new();
    push_tuple(&mut attributes, CTA_TUPLE_ORIG, flow.protocol, &flow.original);
    socket.send(&request(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, &attributes), 0)?;
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        if let Some((_, payload)) = messages(&datagram).into_iter().find(|(kind, _)| *kind == NLMSG_ERROR) {
            return match check_ack(payload) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(false),
                Err(e) => Err(e),
            };
        }
    }
}

/// An nlmsghdr for ctnetlink message `kind`, an nfgenmsg for IPv4, then
/// `attributes`.
fn request(kind: u16, flags: u16, attributes: &[u8]) -> Vec<u8> {
    let length = (HEADERS + attributes.len()) as u32;
    let mut message = Vec::with_capacity(length as usize);
    message.extend_from_slice(&length.to_ne_bytes());
    message.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    message.extend_from_slice(&[AF_INET, 0, 0, 0]); // nfgenmsg: family, version, resource
    message.extend_from_slice(attributes);
    message
}

/// The (type, payload) of each netlink message of a datagram.
fn messages(datagram: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let length = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        if length < 16 || length > rest.len() {
            break;
        }
        found.push((kind, &rest[16..length]));
        rest = &rest[align(length).min(rest.len())..];
    }
    found
}

/// An NLMSG_ERROR payload as a result: 0 is an acknowledgement.
fn check_ack(payload: &[u8]) -> std::io::Result<()> {
    let code = payload.get(0..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
    match code {
        0 => Ok(()),
        negative => Err(std::io::Error::from_raw_os_error(-negative)),
    }
}

fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// The (type without flags, payload) of each attribute in `bytes`.
fn attributes(bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let length = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & !NLA_F_NESTED;
        if length < 4 || length > rest.len() {
            break;
        }
        found.push((kind, &rest[4..length]));
        rest = &rest[align(length).min(rest.len())..];
    }
    found
}

/// A flow from a ctnetlink message's attributes; `None` for one that is
/// not IPv4 or lacks a direction.
fn parse_flow(bytes: &[u8]) -> Option<Flow> {
    let all = attributes(bytes);
    let direction = |kind: u16| all.iter().find(|(k, _)| *k == kind).and_then(|(_, v)| parse_tuple(v));
    let (protocol, original) = direction(CTA_TUPLE_ORIG)?;
    let (_, reply) = direction(CTA_TUPLE_REPLY)?;
    let status = all.iter().find(|(k, _)| *k == CTA_STATUS).and_then(|(_, v)| <[u8; 4]>::try_from(*v).ok());
    let replied = status.is_some_and(|bits| u32::from_be_bytes(bits) & IPS_SEEN_REPLY != 0);
    Some(Flow { protocol, original, reply, replied })
}

fn parse_tuple(bytes: &[u8]) -> Option<(u8, Tuple)> {
    let parts = attributes(bytes);
    let part = |kind: u16| parts.iter().find(|(k, _)| *k == kind).map(|(_, v)| attributes(v));
    let (ip, proto) = (part(CTA_TUPLE_IP)?, part(CTA_TUPLE_PROTO)?);
    let field =
        |list: &[(u16, &[u8])], kind: u16| list.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.to_vec());
    let address = |kind| field(&ip, kind).and_then(|v| <[u8; 4]>::try_from(v).ok()).map(Ipv4Addr::from);
    let port =
        |kind| field(&proto, kind).and_then(|v| <[u8; 2]>::try_from(v).ok()).map_or(0, u16::from_be_bytes);
    let protocol = *field(&proto, CTA_PROTO_NUM)?.first()?;
    let tuple = Tuple {
        source: address(CTA_IP_V4_SRC)?,
        destination: address(CTA_IP_V4_DST)?,
        source_port: port(CTA_PROTO_SRC_PORT),
        destination_port: port(CTA_PROTO_DST_PORT),
    };
    Some((protocol, tuple))
}

fn push_attribute(buffer: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buffer.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(value);
    buffer.resize(align(buffer.len()), 0);
}

fn push_tuple(buffer: &mut Vec<u8>, direction: u16, protocol: u8, tuple: &Tuple) {
    let mut ip = Vec::new();
    push_attribute(&mut ip, CTA_IP_V4_SRC, &tuple.source.octets());
    push_attribute(&mut ip, CTA_IP_V4_DST, &tuple.destination.octets());
    let mut proto = Vec::new();
    push_attribute(&mut proto, CTA_PROTO_NUM, &[protocol]);
    push_attribute(&mut proto, CTA_PROTO_SRC_PORT, &tuple.source_port.to_be_bytes());
    push_attribute(&mut proto, CTA_PROTO_DST_PORT, &tuple.destination_port.to_be_bytes());
    let mut nested = Vec::new();
    push_attribute(&mut nested, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    push_attribute(&mut nested, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    push_attribute(buffer, direction | NLA_F_NESTED, &nested);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(source: [u8; 4], destination: [u8; 4], ports: (u16, u16)) -> Tuple {
        Tuple {
            source: source.into(),
            destination: destination.into(),
            source_port: ports.0,
            destination_port: ports.1,
        }
    }

    #[test]
    fn a_flow_written_as_the_kernel_does_is_read_back() {
        let flow = Flow {
            protocol: 17,
            original: tuple([10, 0, 0, 1], [172, 18, 0, 2], (40000, 7)),
            reply: tuple([10, 255, 0, 5], [10, 255, 0, 2], (7, 40000)),
            replied: false,
        };
        let mut bytes = Vec::new();
        push_tuple(&mut bytes, CTA_TUPLE_ORIG, flow.protocol, &flow.original);
        push_tuple(&mut bytes, CTA_TUPLE_REPLY, flow.protocol, &flow.reply);
        let mut unreplied = bytes.clone();
        push_attribute(&mut unreplied, CTA_STATUS, &0x188u32.to_be_bytes()); // confirmed, NATed
        assert_eq!(parse_flow(&unreplied), Some(flow));
        push_attribute(&mut bytes, CTA_STATUS, &0x18au32.to_be_bytes()); // and a reply seen
        assert_eq!(parse_flow(&bytes), Some(Flow { replied: true, ..flow }));
        assert_eq!(parse_flow(&bytes[..bytes.len() / 2]), None, "a message cut short is no flow");
    }

    #[test]
    fn requests_carry_their_length_and_kind() {
        let message = request(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, &[1, 2, 3, 4]);
        assert_eq!(message.len(), HEADERS + 4);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()) as usize, message.len());
        assert_eq!(u16::from_ne_bytes([message[4], message[5]]), 0x0102);
        let parsed = messages(&message);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].1, &[AF_INET, 0, 0, 0, 1, 2, 3, 4]);
    }
}
