//! `netctl node ls`.

use crate::cli::{ClientArgs, ListFormat};
use crate::client::{self, rpc_error};
use crate::table;
use clap::Subcommand;
use netctl_proto::NodeListRequest;
use serde_json::json;

/// `netctl node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

/// Runs one `node` subcommand.
pub async fn run(args: &ClientArgs, command: NodeCommand) -> anyhow::Result<()> {
    let NodeCommand::Ls { format } = command;
    let mut control = client::connect(args).await?;
    let nodes = control.list_nodes(NodeListRequest {}).await.map_err(rpc_error)?.into_inner().nodes;
    let manager_status = |manager_host: bool| if manager_host { "Leader" } else { "" };
    match format {
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|status| {
                    let node = status.node.clone().unwrap_or_default();
                    vec![
                        node.id,
                        node.hostname,
                        status.status.clone(),
                        node.availability,
                        node.advertise_addr,
                        manager_status(node.manager_host).into(),
                    ]
                })
                .collect();
            let headers = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ADDRESS", "MANAGER STATUS"];
            print!("{}", table::render(&headers, &rows));
        }
        ListFormat::Json => {
            for status in &nodes {
                let node = status.node.clone().unwrap_or_default();
                let line = json!({
                    "ID": node.id, "Hostname": node.hostname, "Status": status.status,
                    "Availability": node.availability, "Address": node.advertise_addr,
                    "ManagerStatus": manager_status(node.manager_host),
                    "LastHeartbeat": status.last_heartbeat_unix,
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}
