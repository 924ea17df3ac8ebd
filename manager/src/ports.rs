//! Published ports (pure): checks, conflicts, and assignment of a port from
//! 30000-32767 when none is given, as Swarm does.

use netctl_proto::{PortConfig, Service};
use std::collections::HashSet;

/// The range published ports are assigned from.
pub const DYNAMIC_RANGE: std::ops::RangeInclusive<u32> = 30000..=32767;

/// Why a published port was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    /// Not tcp or udp.
    #[error("invalid protocol {0:?} for a published port: expected tcp or udp")]
    Protocol(String),
    /// 0 or above 65535.
    #[error("invalid target port {0}: expected 1-65535")]
    Target(u32),
    /// Above 65535.
    #[error("invalid published port {0}: expected 1-65535")]
    Published(u32),
    /// Used by another service (or twice in this one).
    #[error("port {port}/{protocol} is already published by service {service}")]
    Taken {
        /// The port.
        port: u32,
        /// Its protocol.
        protocol: String,
        /// Who has it.
        service: String,
    },
    /// A port the cluster itself uses on every node.
    #[error("port {port} cannot be published: it is {user}")]
    Reserved {
        /// The port.
        port: u32,
        /// What uses it.
        user: String,
    },
    /// Neither ingress nor host.
    #[error("invalid publish mode {0:?}: expected ingress or host")]
    Mode(String),
    /// A host-mode port needs its number: there is no range to pick from.
    #[error("a port published in host mode needs published=PORT (target {0})")]
    HostWithoutPort(u32),
    /// Every port of the dynamic range is in use.
    #[error("no free port left in 30000-32767 for {0}")]
    Exhausted(String),
}

/// Ports no service may publish (on any protocol), with what uses them: a
/// published port is DNATed away on every node, so publishing one of these
/// would cut the cluster off from itself or its operators.
#[derive(Debug, Clone)]
pub struct ReservedPorts(Vec<(u32, String)>);

impl ReservedPorts {
    /// The manager's API port, the VXLAN data-path port and SSH.
    pub fn new(api_port: u16, data_path_port: u16) -> Self {
        Self(vec![
            (u32::from(api_port), format!("the manager's API port ({api_port}/tcp)")),
            (u32::from(data_path_port), format!("the VXLAN data-path port ({data_path_port}/udp)")),
            (22, "SSH (22/tcp), kept reachable on every node".to_string()),
        ])
    }

    fn check(&self, port: u32) -> Result<(), PortError> {
        match self.0.iter().find(|(reserved, _)| *reserved == port) {
            Some((_, user)) => Err(PortError::Reserved { port, user: user.clone() }),
            None => Ok(()),
        }
    }
}

/// Checks `requested` and gives each a published port, refusing ports that
/// `others` (other services) already publish or held before their last
/// update, and `reserved` ones.
pub fn assign(
    name: &str,
    requested: &[PortConfig],
    others: &[Service],
    reserved: &ReservedPorts,
) -> Result<Vec<PortConfig>, PortError> {
    // A previous spec's ports stay taken: a rollback gets them back.
    let held = |s: &Service| {
        s.ports.iter().chain(s.previous_spec.iter().flat_map(|p| &p.ports)).cloned().collect::<Vec<_>>()
    };
    // (protocol, port, owner, ingress mode) of every port published.
    let mut used: Vec<(String, u32, String, bool)> = others
        .iter()
        .flat_map(|s| {
            held(s)
                .into_iter()
                .map(move |p| (p.protocol.clone(), p.published_port, s.name.clone(), p.is_ingress()))
        })
        .collect();
    let mut assigned = Vec::new();
    for port in requested {
        let protocol = match port.protocol.as_str() {
            "" | "tcp" => "tcp",
            "udp" => "udp",
            other => return Err(PortError::Protocol(other.to_string())),
        };
        let ingress = match port.mode.as_str() {
            "" | "ingress" => true,
            netctl_proto::HOST_MODE => false,
            other => return Err(PortError::Mode(other.to_string())),
        };
        if !(1..=65535).contains(&port.target_port) {
            return Err(PortError::Target(port.target_port));
        }
        let published = match port.published_port {
            0 if !ingress => return Err(PortError::HostWithoutPort(port.target_port)),
            0 => {
                let taken: HashSet<u32> =
                    used.iter().filter(|(p, ..)| p == protocol).map(|(_, port, ..)| *port).collect();
                DYNAMIC_RANGE
                    .clone()
                    .find(|p| !taken.contains(p))
                    .ok_or_else(|| PortError::Exhausted(name.into()))?
            }
            p if p > 65535 => return Err(PortError::Published(p)),
            p => p,
        };
        reserved.check(published)?;
        // Host-mode ports of different services may be the same: their
        // tasks are never placed on one node. Any other pair clashes.
        let clash = used.iter().find(|(p, port, owner, other_ingress)| {
            p == protocol && *port == published && (ingress || *other_ingress || owner == name)
        });
        if let Some((_, _, owner, _)) = clash {
            return Err(PortError::Taken {
                port: published,
                protocol: protocol.into(),
                service: owner.clone(),
            });
        }
        used.push((protocol.to_string(), published, name.to_string(), ingress));
        assigned.push(PortConfig {
            protocol: protocol.into(),
            published_port: published,
            target_port: port.target_port,
            mode: if ingress { "ingress" } else { netctl_proto::HOST_MODE }.to_string(),
        });
    }
    Ok(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(protocol: &str, published: u32, target: u32) -> PortConfig {
        PortConfig {
            protocol: protocol.into(),
            published_port: published,
            target_port: target,
            mode: "ingress".into(),
        }
    }

    fn host(published: u32, target: u32) -> PortConfig {
        PortConfig { mode: netctl_proto::HOST_MODE.into(), ..port("tcp", published, target) }
    }

    fn service(name: &str, ports: Vec<PortConfig>) -> Service {
        Service { name: name.into(), ports, ..Default::default() }
    }

    fn assign(
        name: &str,
        requested: &[PortConfig],
        others: &[Service],
    ) -> Result<Vec<PortConfig>, PortError> {
        super::assign(name, requested, others, &ReservedPorts::new(4243, 4789))
    }

    #[test]
    fn the_clusters_own_ports_are_reserved() {
        let reserved = ReservedPorts::new(5000, 4790);
        for (port, user) in [(5000, "manager's API"), (4790, "data-path"), (22, "SSH")] {
            let refused = super::assign("x", &[port_of(port)], &[], &reserved).unwrap_err().to_string();
            assert!(refused.contains(user) && refused.contains(&port.to_string()), "{refused}");
        }
        assert!(super::assign("x", &[port_of(4243)], &[], &reserved).is_ok());
    }

    fn port_of(published: u32) -> PortConfig {
        port("udp", published, 80)
    }

    #[test]
    fn a_port_a_service_published_before_its_last_update_stays_its_own() {
        let previous = service("web", vec![port("tcp", 8080, 80)]);
        let web = Service { previous_spec: Some(Box::new(previous)), ..service("web", vec![]) };
        let taken = assign("other", &[port("tcp", 8080, 80)], &[web]).unwrap_err();
        assert_eq!(taken.to_string(), "port 8080/tcp is already published by service web");
    }

    #[test]
    fn host_mode_ports_may_be_shared_by_services_but_never_with_the_mesh() {
        let hosted = [service("a", vec![host(8080, 80)])];
        assert_eq!(
            assign("b", &[host(8080, 81)], &hosted),
            Ok(vec![host(8080, 81)]),
            "placement separates them"
        );
        let message = |requested: &[PortConfig], others: &[Service]| {
            assign("b", requested, others).unwrap_err().to_string()
        };
        assert_eq!(
            message(&[port("tcp", 8080, 80)], &hosted),
            "port 8080/tcp is already published by service a"
        );
        let meshed = [service("a", vec![port("tcp", 8080, 80)])];
        assert_eq!(message(&[host(8080, 80)], &meshed), "port 8080/tcp is already published by service a");
        assert_eq!(
            message(&[host(0, 80)], &[]),
            "a port published in host mode needs published=PORT (target 80)"
        );
        let bridge = PortConfig { mode: "bridge".into(), ..port("tcp", 8080, 80) };
        assert_eq!(message(&[bridge], &[]), "invalid publish mode \"bridge\": expected ingress or host");
    }

    #[test]
    fn ports_are_checked_and_dynamic_ones_assigned() {
        let others = [service("web", vec![port("tcp", 8080, 80), port("tcp", 30000, 80)])];
        assert_eq!(assign("x", &[port("", 9090, 90)], &others), Ok(vec![port("tcp", 9090, 90)]));
        assert_eq!(assign("x", &[port("udp", 8080, 53)], &others), Ok(vec![port("udp", 8080, 53)]));
        assert_eq!(assign("x", &[port("tcp", 0, 80)], &others), Ok(vec![port("tcp", 30001, 80)]));
    }

    #[test]
    fn conflicts_name_the_service_and_bad_values_are_refused() {
        let others = [service("web", vec![port("tcp", 8080, 80)])];
        let taken = assign("x", &[port("tcp", 8080, 80)], &others).unwrap_err();
        assert_eq!(taken.to_string(), "port 8080/tcp is already published by service web");
        assert!(matches!(
            assign("x", &[port("tcp", 9, 80), port("tcp", 9, 81)], &[]),
            Err(PortError::Taken { .. })
        ));
        assert_eq!(assign("x", &[port("sctp", 1, 1)], &[]), Err(PortError::Protocol("sctp".into())));
        assert_eq!(assign("x", &[port("tcp", 1, 0)], &[]), Err(PortError::Target(0)));
        assert_eq!(assign("x", &[port("tcp", 70000, 1)], &[]), Err(PortError::Published(70000)));
    }
}
