//! `netctl node ls`, `netctl node inspect`, `netctl node update`,
//! `netctl node rm`.

use crate::cli::{ClientArgs, ListFormat};
use crate::client::{self, for_each, rpc_error};
use crate::syntax::parse_label;
use crate::table;
use clap::Subcommand;
use netctl_proto::{NodeListRequest, NodeRemoveRequest, NodeStatus, NodeUpdateRequest};
use serde_json::{json, Value};

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
    /// Show nodes in detail, their certificates included (JSON).
    Inspect {
        /// Hostnames or IDs (or unique ID prefixes).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability or labels.
    Update {
        /// active (takes new tasks), pause (keeps its tasks, takes no new
        /// one) or drain (its tasks move to other nodes).
        #[arg(long)]
        availability: Option<String>,
        /// Add or change a label: KEY=VALUE or KEY (constraints match it as
        /// node.labels.KEY).
        #[arg(long, value_parser = parse_label)]
        label_add: Vec<(String, String)>,
        /// Remove a label.
        #[arg(long)]
        label_rm: Vec<String>,
        /// Hostname or ID (or unique ID prefix).
        node: String,
    },
    /// Remove nodes from the cluster: their certificates are refused from
    /// then on, their tasks are placed elsewhere, their agents stop.
    #[command(alias = "remove")]
    Rm {
        /// Remove a node even while it is Ready.
        #[arg(short, long)]
        force: bool,
        /// Hostnames or IDs (or unique ID prefixes).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Runs one `node` subcommand.
pub async fn run(args: &ClientArgs, command: NodeCommand) -> anyhow::Result<()> {
    let mut control = client::connect(args).await?;
    match command {
        NodeCommand::Ls { format } => {
            let nodes = control.list_nodes(NodeListRequest {}).await.map_err(rpc_error)?.into_inner().nodes;
            list(&nodes, format);
            Ok(())
        }
        NodeCommand::Inspect { nodes: references } => {
            let nodes = control.list_nodes(NodeListRequest {}).await.map_err(rpc_error)?.into_inner().nodes;
            let mut shown = Vec::new();
            for reference in &references {
                let candidates = nodes.iter().map(|s| {
                    let node = s.node.as_ref();
                    (node.map_or("", |n| n.id.as_str()), node.map_or("", |n| n.hostname.as_str()))
                });
                match netctl_manager::resolve::resolve("node", reference, candidates) {
                    Ok(index) => shown.push(inspect(&nodes[index])),
                    Err(err) => {
                        println!("{}", serde_json::to_string_pretty(&shown)?);
                        anyhow::bail!("{err}");
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        NodeCommand::Update { availability, label_add, label_rm, node } => {
            if availability.is_none() && label_add.is_empty() && label_rm.is_empty() {
                anyhow::bail!("nothing to update: give --availability, --label-add or --label-rm");
            }
            let request = NodeUpdateRequest {
                reference: node.clone(),
                availability: availability.unwrap_or_default(),
                label_add: label_add.into_iter().collect(),
                label_rm,
            };
            control.update_node(request).await.map_err(rpc_error)?;
            println!("{node}");
            Ok(())
        }
        NodeCommand::Rm { force, nodes } => {
            for_each(
                nodes,
                |reference| {
                    let mut control = control.clone();
                    async move {
                        control
                            .remove_node(NodeRemoveRequest { reference: reference.clone(), force })
                            .await?;
                        Ok(reference)
                    }
                },
                |reference| println!("{reference}"),
            )
            .await
        }
    }
}

/// `node ls` in `format`.
fn list(nodes: &[NodeStatus], format: ListFormat) {
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
                        status.manager_status.clone(),
                    ]
                })
                .collect();
            let headers = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ADDRESS", "MANAGER STATUS"];
            print!("{}", table::render(&headers, &rows));
        }
        ListFormat::Json => {
            for status in nodes {
                let node = status.node.clone().unwrap_or_default();
                let line = json!({
                    "ID": node.id, "Hostname": node.hostname, "Status": status.status,
                    "Availability": node.availability, "Address": node.advertise_addr,
                    "ManagerStatus": status.manager_status,
                    "LastHeartbeat": status.last_heartbeat_unix,
                    "Message": status.message,
                });
                println!("{line}");
            }
        }
    }
}

/// One node as `node inspect` shows it, with what its certificate says.
fn inspect(status: &NodeStatus) -> Value {
    let node = status.node.clone().unwrap_or_default();
    let certificate = node.certificate.clone().unwrap_or_default();
    json!({
        "ID": node.id,
        "CreatedAt": rfc3339(node.created_unix),
        "Description": { "Hostname": node.hostname },
        "Spec": {
            "Role": netctl_manager::constraints::role(&node),
            "Availability": node.availability.to_lowercase(),
            "Labels": node.labels,
        },
        "Status": { "State": status.status.to_lowercase(), "Message": status.message, "Addr": node.advertise_addr },
        "ManagerStatus": match status.manager_status.as_str() {
            "" => Value::Null,
            reachability => json!({ "Leader": reachability == "Leader", "Reachability": reachability.to_lowercase() }),
        },
        "IngressAddress": node.ingress_address,
        "Certificate": {
            "Subject": certificate.subject,
            "IssuerDigest": format!("sha256:{}", certificate.issuer_digest),
            "NotAfter": rfc3339(certificate.not_after_unix),
            "Serial": certificate.serial,
        },
    })
}

/// Seconds since the epoch as RFC 3339.
pub fn rfc3339(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}
