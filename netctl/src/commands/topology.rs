//! `netctl topology`: what every node's kernel holds, as its agent read it
//! back.

use crate::cli::ClientArgs;
use crate::client::{self, rpc_error};
use crate::topology_view;
use clap::{Args, ValueEnum};
use netctl_proto::TopologyRequest;

/// `netctl topology` arguments.
#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Only this node (hostname or ID).
    #[arg(long)]
    node: Option<String>,
    /// Output format (dot renders with `dot -Tsvg`).
    #[arg(long, value_enum, default_value = "text")]
    format: TopologyFormat,
}

/// Output formats of `netctl topology`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TopologyFormat {
    /// Indented text.
    Text,
    /// A JSON array, one object per node.
    Json,
    /// A Graphviz graph.
    Dot,
}

/// Fetches the topology from the manager and prints it.
pub async fn run(client_args: &ClientArgs, args: TopologyArgs) -> anyhow::Result<()> {
    let mut control = client::connect(client_args).await?;
    let request = TopologyRequest { node: args.node.unwrap_or_default() };
    let nodes = control.topology(request).await.map_err(rpc_error)?.into_inner().nodes;
    match args.format {
        TopologyFormat::Text => print!("{}", topology_view::text(&nodes)),
        TopologyFormat::Json => println!("{}", serde_json::to_string_pretty(&topology_view::json(&nodes))?),
        TopologyFormat::Dot => print!("{}", topology_view::dot(&nodes)),
    }
    Ok(())
}
