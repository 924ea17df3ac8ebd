//! `netctl network rm`.

use crate::client::{for_each, Control};
use clap::Args;
use netctl_proto::NetworkRemoveRequest;

/// `netctl network rm` arguments.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Names or IDs (or unique ID prefixes).
    #[arg(required = true)]
    networks: Vec<String>,
}

/// Removes each network, printing what was removed; fails if any removal did.
pub async fn run(control: &mut Control, args: RmArgs) -> anyhow::Result<()> {
    for_each(
        args.networks,
        |reference| {
            let mut control = control.clone();
            async move {
                control.remove_network(NetworkRemoveRequest { reference: reference.clone() }).await?;
                Ok(reference)
            }
        },
        |reference| println!("{reference}"),
    )
    .await
}
