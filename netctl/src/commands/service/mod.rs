//! `netctl service create | ls | inspect | ps | logs | scale | update |
//! rollback | rm`: one
//! file per command, holding its arguments and its handler.

mod create;
mod inspect;
mod logs;
mod ls;
mod ps;
mod rm;
mod scale;
mod update;

use crate::cli::ClientArgs;
use crate::client;
use clap::Subcommand;

/// `netctl service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service; prints its ID.
    Create(Box<create::CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls(ls::LsArgs),
    /// Show services as JSON, in `docker service inspect`'s shape.
    Inspect(inspect::InspectArgs),
    /// List the tasks of a service, with their history.
    Ps(ps::PsArgs),
    /// Show what the tasks of a service wrote.
    Logs(logs::LogsArgs),
    /// Set the number of tasks: SERVICE=REPLICAS...
    Scale(scale::ScaleArgs),
    /// Change a service; tasks are replaced a batch at a time when what
    /// they run changes.
    Update(Box<update::UpdateArgs>),
    /// Return a service to its spec before the last update.
    Rollback(update::RollbackArgs),
    /// Remove services and their tasks.
    #[command(alias = "remove")]
    Rm(rm::RmArgs),
}

/// Runs one `service` subcommand.
pub async fn run(args: &ClientArgs, command: ServiceCommand) -> anyhow::Result<()> {
    let mut control = client::connect(args).await?;
    match command {
        ServiceCommand::Create(args) => create::run(&mut control, *args).await,
        ServiceCommand::Ls(args) => ls::run(&mut control, args).await,
        ServiceCommand::Inspect(args) => inspect::run(&mut control, args).await,
        ServiceCommand::Ps(args) => ps::run(&mut control, args).await,
        ServiceCommand::Logs(args) => logs::run(&mut control, args).await,
        ServiceCommand::Scale(args) => scale::run(&mut control, args).await,
        ServiceCommand::Update(args) => update::run(&mut control, *args).await,
        ServiceCommand::Rollback(args) => update::rollback(&mut control, args).await,
        ServiceCommand::Rm(args) => rm::run(&mut control, args).await,
    }
}
