//! `docker network inspect`'s JSON shape for netctl's networks, so scripts
//! written for Docker keep working.

use netctl_proto::{Network, ServiceView};
use serde_json::{json, Value};

/// The option key Docker uses for an overlay's VNIs.
pub const VXLANID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// One network as `docker network inspect` prints it.
pub fn network(network: &Network) -> Value {
    let created = std::time::UNIX_EPOCH + std::time::Duration::from_secs(network.created_unix.max(0) as u64);
    let mut options = serde_json::Map::new();
    options.insert(VXLANID_OPTION.into(), json!(network.vni.to_string()));
    if network.mtu != 0 {
        options.insert("com.docker.network.driver.mtu".into(), json!(network.mtu.to_string()));
    }
    json!({
        "Name": network.name,
        "Id": network.id,
        "Created": humantime::format_rfc3339_seconds(created).to_string(),
        "Scope": "swarm",
        "Driver": network.driver,
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": null,
            "Config": [{ "Subnet": network.subnet, "Gateway": network.gateway }],
        },
        "Internal": false,
        "Attachable": false,
        "Ingress": network.ingress,
        "ConfigOnly": false,
        "Containers": {},
        "Options": options,
        "Labels": {},
    })
}

/// One service as `docker service inspect` prints it.
pub fn service(view: &ServiceView) -> Value {
    let service = view.service.clone().unwrap_or_default();
    let vips: Vec<Value> =
        service.virtual_ips.iter().map(|v| json!({ "NetworkID": v.network_id, "Addr": v.address })).collect();
    let mut shown = json!({
        "ID": service.id,
        "Version": { "Index": service.version },
        "CreatedAt": time(service.created_unix),
        "UpdatedAt": time(service.updated_unix),
        "Spec": spec(&service),
        "Endpoint": { "Ports": ports(&service), "VirtualIPs": vips },
    });
    if let Some(previous) = &service.previous_spec {
        shown["PreviousSpec"] = spec(previous);
    }
    if let Some(status) = &service.update_status {
        shown["UpdateStatus"] = json!({
            "State": status.state,
            "StartedAt": time(status.started_unix),
            "CompletedAt": (status.completed_unix != 0).then(|| time(status.completed_unix)),
            "Message": status.message,
        });
    }
    shown
}

/// Seconds since the epoch as RFC 3339.
fn time(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// What a service asks for, in Docker's `Spec` shape.
fn spec(service: &netctl_proto::Service) -> Value {
    let env: Vec<String> = service.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // Docker's shape: `{"Target": id, "Aliases": [...]}` per network.
    let networks: Vec<Value> = service
        .network_ids
        .iter()
        .map(|id| {
            let aliases: Vec<&String> =
                service.aliases.iter().filter(|a| a.network == *id).flat_map(|a| &a.aliases).collect();
            if aliases.is_empty() {
                json!({ "Target": id })
            } else {
                json!({ "Target": id, "Aliases": aliases })
            }
        })
        .collect();
    let mode = match service.endpoint_mode() {
        netctl_proto::EndpointMode::Vip => "vip",
        netctl_proto::EndpointMode::Dnsrr => "dnsrr",
    };
    let update = netctl_manager::updates::config_of(service);
    json!({
        "Name": service.name,
        "TaskTemplate": {
            "ContainerSpec": { "Command": service.command, "Env": env, "Dir": service.workdir },
            "Networks": networks,
            "Placement": { "Constraints": service.constraints },
        },
        "Mode": match service.mode() {
            netctl_proto::ServiceMode::Replicated => json!({ "Replicated": { "Replicas": service.replicas } }),
            netctl_proto::ServiceMode::Global => json!({ "Global": {} }),
        },
        "UpdateConfig": {
            "Parallelism": update.parallelism,
            "Delay": update.delay_ms * 1_000_000,
            "FailureAction": update.failure_action,
            "Monitor": update.monitor_ms * 1_000_000,
        },
        "EndpointSpec": { "Mode": mode, "Ports": ports(service) },
    })
}

/// A service's published ports in Docker's shape.
fn ports(service: &netctl_proto::Service) -> Vec<Value> {
    service
        .ports
        .iter()
        .map(|p| {
            json!({ "Protocol": p.protocol, "TargetPort": p.target_port, "PublishedPort": p.published_port, "PublishMode": if p.is_ingress() { "ingress" } else { "host" } })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_where_docker_puts_them() {
        let value = network(&Network {
            id: "jv8c30bcmnza0ab12cd34ef56".into(),
            name: "demonet".into(),
            driver: "overlay".into(),
            subnet: "192.168.200.0/24".into(),
            gateway: "192.168.200.1".into(),
            vni: 4097,
            created_unix: 0,
            ..Default::default()
        });
        assert_eq!(value["Id"], "jv8c30bcmnza0ab12cd34ef56");
        assert_eq!(value["Scope"], "swarm");
        assert_eq!(value["IPAM"]["Config"][0]["Subnet"], "192.168.200.0/24");
        assert_eq!(value["IPAM"]["Config"][0]["Gateway"], "192.168.200.1");
        assert_eq!(value["Options"][VXLANID_OPTION], "4097");
        assert_eq!(value["Created"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn endpoint_mode_and_aliases_are_where_docker_puts_them() {
        let value = service(&ServiceView {
            service: Some(netctl_proto::Service {
                network_ids: vec!["n1".into(), "n2".into()],
                endpoint_mode: netctl_proto::EndpointMode::Dnsrr.into(),
                aliases: vec![netctl_proto::NetworkAlias {
                    network: "n2".into(),
                    aliases: vec!["db".into()],
                }],
                ..Default::default()
            }),
            tasks: vec![],
        });
        assert_eq!(value["Spec"]["EndpointSpec"]["Mode"], "dnsrr");
        assert_eq!(value["Spec"]["TaskTemplate"]["Networks"][0], json!({ "Target": "n1" }));
        assert_eq!(value["Spec"]["TaskTemplate"]["Networks"][1]["Aliases"], json!(["db"]));
    }
}
