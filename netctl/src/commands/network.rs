//! `netctl network create | ls | inspect | rm`.

use crate::cli::{ListFormat, NetworkCommand};
use crate::client::{self, rpc_error, AlreadyReported, Control};
use crate::{cli::ClientArgs, inspect, table};
use netctl_proto::*;
use serde_json::json;

/// Runs one `network` subcommand.
pub async fn run(args: &ClientArgs, command: NetworkCommand) -> anyhow::Result<()> {
    let mut control = client::connect(args).await?;
    match command {
        NetworkCommand::Create { driver, subnet, gateway, opt, name } => {
            let request = NetworkCreateRequest {
                name,
                driver,
                subnet: subnet.unwrap_or_default(),
                gateway: gateway.unwrap_or_default(),
                options: opt.into_iter().collect(),
            };
            let response = control.create_network(request).await.map_err(rpc_error)?.into_inner();
            println!("{}", response.network.unwrap_or_default().id);
            Ok(())
        }
        NetworkCommand::Ls { format } => list(&mut control, format).await,
        NetworkCommand::Inspect { networks } => inspect_all(&mut control, networks).await,
        NetworkCommand::Rm { networks } => remove_all(&mut control, networks).await,
    }
}

async fn list(control: &mut Control, format: ListFormat) -> anyhow::Result<()> {
    let networks =
        control.list_networks(NetworkListRequest {}).await.map_err(rpc_error)?.into_inner().networks;
    match format {
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = networks
                .iter()
                .map(|n| {
                    let short_id = n.id.chars().take(12).collect();
                    vec![
                        short_id,
                        n.name.clone(),
                        n.driver.clone(),
                        "swarm".into(),
                        n.subnet.clone(),
                        n.vni.to_string(),
                    ]
                })
                .collect();
            print!("{}", table::render(&["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "VNI"], &rows));
        }
        ListFormat::Json => {
            for n in &networks {
                let line = json!({
                    "ID": n.id, "Name": n.name, "Driver": n.driver, "Scope": "swarm",
                    "Subnet": n.subnet, "Gateway": n.gateway, "VNI": n.vni, "Ingress": n.ingress,
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// Prints every network found; like Docker, names the missing ones on stderr
/// and fails if any was missing.
async fn inspect_all(control: &mut Control, references: Vec<String>) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut missing = 0;
    for reference in references {
        match control.get_network(NetworkGetRequest { reference }).await {
            Ok(response) => found.push(inspect::network(&response.into_inner().network.unwrap_or_default())),
            Err(status) => {
                eprintln!("{}", rpc_error(status));
                missing += 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    match missing {
        0 => Ok(()),
        _ => Err(AlreadyReported.into()),
    }
}

/// Removes each network, printing what was removed; fails if any removal did.
async fn remove_all(control: &mut Control, references: Vec<String>) -> anyhow::Result<()> {
    let mut failed = 0;
    for reference in references {
        match control.remove_network(NetworkRemoveRequest { reference: reference.clone() }).await {
            Ok(_) => println!("{reference}"),
            Err(status) => {
                eprintln!("{}", rpc_error(status));
                failed += 1;
            }
        }
    }
    match failed {
        0 => Ok(()),
        _ => Err(AlreadyReported.into()),
    }
}
