//! One DNS query from a sandbox, answered from the node's [`Records`] or
//! marked for forwarding (pure; the wire format is hickory-proto's).
//!
//! A cluster name answers A records (random order for tasks), and NOERROR
//! with no record for any other type; `tasks.<unknown>` is NXDOMAIN; PTR
//! names of cluster addresses answer their Docker-shaped names. Everything
//! else goes upstream. A packet that does not parse gets FORMERR (or
//! nothing, if it has no header). Answers carry TTL 0: a task's address is
//! never cached past the moment it stops.

use super::records::{reverse_address, Lookup, Records, Target};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The largest UDP answer without EDNS.
pub const CLASSIC_UDP_SIZE: usize = 512;
/// The largest UDP answer netctl sends to an EDNS client (the DNS flag
/// day's size, safe from fragmentation).
const EDNS_UDP_SIZE: u16 = 1232;

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not the cluster's name: relay the query upstream.
    Forward,
    /// Not even a header: say nothing.
    Drop,
}

/// Where a query came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: answers are cut to what the client can take.
    Udp,
    /// A stream: answers go whole.
    Tcp,
}

/// Answers `query` for a sandbox on `networks`.
pub fn answer(query: &[u8], records: &Records, networks: &[String], transport: Transport) -> Reply {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(_) => return failure(query, ResponseCode::FormErr),
    };
    if request.message_type() != MessageType::Query {
        return Reply::Drop;
    }
    if request.op_code() != OpCode::Query {
        return refuse(&request, ResponseCode::NotImp);
    }
    let [question] = request.queries() else {
        return refuse(&request, ResponseCode::FormErr);
    };
    let name = question.name().to_ascii();
    let mut response = response_to(&request);
    match question.query_type() {
        RecordType::PTR => {
            let Some(address) = reverse_address(&name) else { return Reply::Forward };
            let Some(target) = records.reverse(networks, address) else { return Reply::Forward };
            let Ok(target) = Name::from_ascii(format!("{target}.")) else { return Reply::Forward };
            response.add_answer(Record::from_rdata(question.name().clone(), 0, RData::PTR(PTR(target))));
        }
        query_type => match records.lookup(networks, &name) {
            Lookup::Elsewhere => return Reply::Forward,
            Lookup::NoSuchName => {
                response.set_response_code(ResponseCode::NXDomain);
            }
            Lookup::Found(target) if matches!(query_type, RecordType::A | RecordType::ANY) => {
                let mut addresses = match target {
                    Target::One(address) => vec![*address],
                    Target::Tasks(addresses) => addresses.clone(),
                };
                fastrand::shuffle(&mut addresses);
                for address in addresses {
                    let rdata = RData::A(A(address));
                    response.add_answer(Record::from_rdata(question.name().clone(), 0, rdata));
                }
            }
            // AAAA and the rest: the name exists, with no such record.
            Lookup::Found(_) => {}
        },
    }
    encode(response, limit(&request, transport))
}

/// A SERVFAIL for `query` (an upstream that did not answer), if it parses.
pub fn server_failure(query: &[u8]) -> Reply {
    match Message::from_vec(query) {
        Ok(request) => refuse(&request, ResponseCode::ServFail),
        Err(_) => failure(query, ResponseCode::FormErr),
    }
}

/// The response skeleton: same ID, question and recursion flag; EDNS
/// when the client spoke it.
fn response_to(request: &Message) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_queries(request.queries().to_vec());
    if request.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_SIZE);
        response.set_edns(edns);
    }
    response
}

fn refuse(request: &Message, code: ResponseCode) -> Reply {
    let mut response = response_to(request);
    response.set_response_code(code);
    encode(response, usize::MAX)
}

/// An error answer to bytes that do not parse, from their ID alone.
fn failure(query: &[u8], code: ResponseCode) -> Reply {
    if query.len() < 12 {
        return Reply::Drop;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    match Message::error_msg(id, OpCode::Query, code).to_vec() {
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => Reply::Drop,
    }
}

/// The most bytes the client can take.
fn limit(request: &Message, transport: Transport) -> usize {
    match (transport, request.extensions()) {
        (Transport::Tcp, _) => u16::MAX as usize,
        (Transport::Udp, None) => CLASSIC_UDP_SIZE,
        (Transport::Udp, Some(edns)) => {
            usize::from(edns.max_payload().min(EDNS_UDP_SIZE)).max(CLASSIC_UDP_SIZE)
        }
    }
}

/// The response's bytes; over `limit`, the answers are dropped and TC set,
/// so the client asks again over TCP.
fn encode(mut response: Message, limit: usize) -> Reply {
    let Ok(bytes) = response.to_vec() else { return Reply::Drop };
    if bytes.len() <= limit {
        return Reply::Answer(bytes);
    }
    response.take_answers();
    response.set_truncated(true);
    response.to_vec().map_or(Reply::Drop, Reply::Answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use netctl_proto::{NodeState, ServiceNames, TaskName};

    fn records(task_count: usize) -> Records {
        Records::build(&NodeState {
            names: vec![ServiceNames {
                network_id: "n".into(),
                service: "web".into(),
                vip: "10.0.0.2".into(),
                tasks: (0..task_count)
                    .map(|i| TaskName {
                        id: format!("id{i}"),
                        name: format!("web.{}", i + 1),
                        address: format!("10.0.{}.{}", i / 200, i % 200 + 3),
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn query(name: &str, query_type: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::new();
        message.set_id(4242).set_recursion_desired(true);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), query_type));
        if edns {
            let mut edns = Edns::new();
            edns.set_max_payload(4096);
            message.set_edns(edns);
        }
        message.to_vec().unwrap()
    }

    fn ask(name: &str, query_type: RecordType, records: &Records, transport: Transport) -> Message {
        let networks = ["n".to_string()];
        match answer(&query(name, query_type, false), records, &networks, transport) {
            Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn addresses(message: &Message) -> Vec<String> {
        let mut found: Vec<String> = message
            .answers()
            .iter()
            .map(|r| match r.data() {
                RData::A(a) => a.0.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn cluster_names_answer_and_others_are_forwarded() {
        let records = records(2);
        let web = ask("WEB", RecordType::A, &records, Transport::Udp);
        assert_eq!((web.id(), web.response_code()), (4242, ResponseCode::NoError));
        assert_eq!(addresses(&web), ["10.0.0.2"]);
        assert_eq!(web.answers()[0].ttl(), 0);
        assert_eq!(
            addresses(&ask("tasks.web.", RecordType::A, &records, Transport::Udp)),
            ["10.0.0.3", "10.0.0.4"]
        );
        let aaaa = ask("web", RecordType::AAAA, &records, Transport::Udp);
        assert_eq!((aaaa.response_code(), aaaa.answers().len()), (ResponseCode::NoError, 0));
        let missing = ask("tasks.nosuch", RecordType::A, &records, Transport::Udp);
        assert_eq!(missing.response_code(), ResponseCode::NXDomain);
        let ptr = ask("3.0.0.10.in-addr.arpa", RecordType::PTR, &records, Transport::Udp);
        assert!(format!("{:?}", ptr.answers()[0].data()).contains("web.1.id0."), "{ptr:?}");
        let networks = ["n".to_string()];
        let outside = query("example.com", RecordType::A, false);
        assert_eq!(answer(&outside, &records, &networks, Transport::Udp), Reply::Forward);
        let unknown_ptr = query("9.9.9.9.in-addr.arpa", RecordType::PTR, false);
        assert_eq!(answer(&unknown_ptr, &records, &networks, Transport::Udp), Reply::Forward);
    }

    #[test]
    fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
        let hundred = records(100);
        let udp = ask("tasks.web", RecordType::A, &hundred, Transport::Udp);
        assert!(udp.truncated() && udp.answers().is_empty());
        let tcp = ask("tasks.web", RecordType::A, &hundred, Transport::Tcp);
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 100);
        // An EDNS client takes up to 1232 bytes over UDP: 60 A records fit.
        let networks = ["n".to_string()];
        let Reply::Answer(bytes) =
            answer(&query("tasks.web", RecordType::A, true), &records(60), &networks, Transport::Udp)
        else {
            panic!()
        };
        assert!(bytes.len() > CLASSIC_UDP_SIZE && !Message::from_vec(&bytes).unwrap().truncated());
    }

    #[test]
    fn malformed_packets_get_formerr_or_nothing() {
        let records = records(1);
        let networks = ["n".to_string()];
        assert_eq!(answer(b"\x01", &records, &networks, Transport::Udp), Reply::Drop);
        let mut garbage = query("web", RecordType::A, false);
        garbage.truncate(15);
        let Reply::Answer(bytes) = answer(&garbage, &records, &networks, Transport::Udp) else { panic!() };
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!((reply.id(), reply.response_code()), (4242, ResponseCode::FormErr));
    }
}
