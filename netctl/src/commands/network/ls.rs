//! `netctl network ls`.

use crate::cli::ListFormat;
use crate::client::{rpc_error, Control};
use crate::table;
use clap::Args;
use netctl_proto::NetworkListRequest;
use serde_json::json;

/// `netctl network ls` arguments.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: ListFormat,
}

/// Lists networks with their subnet and VNI.
pub async fn run(control: &mut Control, args: LsArgs) -> anyhow::Result<()> {
    let networks =
        control.list_networks(NetworkListRequest {}).await.map_err(rpc_error)?.into_inner().networks;
    match args.format {
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
