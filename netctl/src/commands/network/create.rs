//! `netctl network create`.

use crate::client::{rpc_error, Control};
use crate::syntax::parse_key_value;
use clap::Args;
use netctl_proto::NetworkCreateRequest;

/// `netctl network create` arguments.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Network driver (only overlay).
    #[arg(short, long, default_value = "overlay")]
    driver: String,
    /// Subnet in CIDR form [default: the next free block of the pool].
    #[arg(long)]
    subnet: Option<String>,
    /// Gateway address [default: the subnet's first host].
    #[arg(long)]
    gateway: Option<String>,
    /// Driver options, e.g. mtu=1400.
    #[arg(short, long = "opt", value_parser = parse_key_value)]
    opt: Vec<(String, String)>,
    /// The network's name.
    name: String,
}

/// Creates the network and prints its ID.
pub async fn run(control: &mut Control, args: CreateArgs) -> anyhow::Result<()> {
    let request = NetworkCreateRequest {
        name: args.name,
        driver: args.driver,
        subnet: args.subnet.unwrap_or_default(),
        gateway: args.gateway.unwrap_or_default(),
        options: args.opt.into_iter().collect(),
    };
    let response = control.create_network(request).await.map_err(rpc_error)?.into_inner();
    println!("{}", response.network.unwrap_or_default().id);
    Ok(())
}
