//! `netctl network create | ls | inspect | rm`: one file per command,
//! holding its arguments and its handler.

mod create;
mod inspect;
mod ls;
mod rm;

use crate::cli::ClientArgs;
use crate::client;
use clap::Subcommand;

/// `netctl network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network; prints its ID.
    Create(create::CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(ls::LsArgs),
    /// Show networks as JSON, in `docker network inspect`'s shape.
    Inspect(inspect::InspectArgs),
    /// Remove networks.
    #[command(alias = "remove")]
    Rm(rm::RmArgs),
}

/// Runs one `network` subcommand.
pub async fn run(args: &ClientArgs, command: NetworkCommand) -> anyhow::Result<()> {
    let mut control = client::connect(args).await?;
    match command {
        NetworkCommand::Create(args) => create::run(&mut control, args).await,
        NetworkCommand::Ls(args) => ls::run(&mut control, args).await,
        NetworkCommand::Inspect(args) => inspect::run(&mut control, args).await,
        NetworkCommand::Rm(args) => rm::run(&mut control, args).await,
    }
}
