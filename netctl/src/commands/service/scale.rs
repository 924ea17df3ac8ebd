//! `netctl service scale SERVICE=REPLICAS...`.

use crate::client::{for_each, Control};
use clap::Args;
use netctl_proto::ServiceScaleRequest;

/// `netctl service scale` arguments.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// SERVICE=REPLICAS pairs.
    #[arg(required = true, value_parser = parse_scale)]
    scales: Vec<(String, u32)>,
}

/// Sets each service's replica count.
pub async fn run(control: &mut Control, args: ScaleArgs) -> anyhow::Result<()> {
    for_each(
        args.scales,
        |(reference, replicas)| {
            let mut control = control.clone();
            async move {
                control.scale_service(ServiceScaleRequest { reference, replicas }).await?;
                Ok(())
            }
        },
        |_| {},
    )
    .await
}

/// Parses `SERVICE=REPLICAS`.
fn parse_scale(text: &str) -> Result<(String, u32), String> {
    let (service, replicas) =
        text.split_once('=').ok_or_else(|| format!("invalid scale {text:?}: expected SERVICE=REPLICAS"))?;
    let replicas = replicas
        .parse()
        .map_err(|_| format!("invalid replicas {replicas:?}: expected a non-negative integer"))?;
    Ok((service.to_string(), replicas))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_service_equals_count() {
        assert_eq!(parse_scale("web=3"), Ok(("web".into(), 3)));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("web=-1").unwrap_err().contains("non-negative integer"));
    }
}
