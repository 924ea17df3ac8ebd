//! `netctl service inspect`.

use crate::client::{for_each, Control};
use crate::inspect;
use clap::Args;
use netctl_proto::ServiceGetRequest;

/// `netctl service inspect` arguments.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Names or IDs.
    #[arg(required = true)]
    services: Vec<String>,
}

/// Prints every service found in `docker service inspect`'s shape; names the
/// missing ones and fails if any was.
pub async fn run(control: &mut Control, args: InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let outcome = for_each(
        args.services,
        |reference| {
            let mut control = control.clone();
            async move {
                let view = control.get_service(ServiceGetRequest { reference }).await?.into_inner();
                Ok(view.service.unwrap_or_default())
            }
        },
        |view| found.push(inspect::service(&view)),
    )
    .await;
    println!("{}", serde_json::to_string_pretty(&found)?);
    outcome
}
