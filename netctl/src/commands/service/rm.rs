//! `netctl service rm`.

use crate::client::{for_each, Control};
use clap::Args;
use netctl_proto::ServiceRemoveRequest;

/// `netctl service rm` arguments.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Names or IDs.
    #[arg(required = true)]
    services: Vec<String>,
}

/// Removes each service (and its tasks), printing what was removed.
pub async fn run(control: &mut Control, args: RmArgs) -> anyhow::Result<()> {
    for_each(
        args.services,
        |reference| {
            let mut control = control.clone();
            async move {
                control.remove_service(ServiceRemoveRequest { reference: reference.clone() }).await?;
                Ok(reference)
            }
        },
        |reference| println!("{reference}"),
    )
    .await
}
