//! `netctl network inspect`.

use crate::client::{for_each, Control};
use crate::inspect;
use clap::Args;
use netctl_proto::NetworkGetRequest;

/// `netctl network inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Names or IDs (or unique ID prefixes).
    #[arg(required = true)]
    networks: Vec<String>,
}

/// Prints every network found in `docker network inspect`'s shape; like
/// Docker, names the missing ones on stderr and fails if any was missing.
pub async fn run(control: &mut Control, args: InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let outcome = for_each(
        args.networks,
        |reference| {
            let mut control = control.clone();
            async move { Ok(control.get_network(NetworkGetRequest { reference }).await?.into_inner()) }
        },
        |response| found.push(inspect::network(&response.network.unwrap_or_default())),
    )
    .await;
    println!("{}", serde_json::to_string_pretty(&found)?);
    outcome
}
