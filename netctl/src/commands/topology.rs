//! `netctl topology`: what every node's kernel holds, as its agent read it
//! back.

use crate::cli::{ClientArgs, TopologyFormat};
use crate::client::{self, rpc_error};
use crate::topology_view;
use netctl_proto::TopologyRequest;

/// Fetches the topology from the manager and prints it.
pub async fn run(args: &ClientArgs, node: Option<String>, format: TopologyFormat) -> anyhow::Result<()> {
    let mut control = client::connect(args).await?;
    let request = TopologyRequest { node: node.unwrap_or_default() };
    let nodes = control.topology(request).await.map_err(rpc_error)?.into_inner().nodes;
    match format {
        TopologyFormat::Text => print!("{}", topology_view::text(&nodes)),
        TopologyFormat::Json => println!("{}", serde_json::to_string_pretty(&topology_view::json(&nodes))?),
        TopologyFormat::Dot => print!("{}", topology_view::dot(&nodes)),
    }
    Ok(())
}
