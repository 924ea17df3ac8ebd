//! One module per command group; `run` sends the parsed command to it.

pub mod agent;
pub mod cluster;
pub mod completion;
pub mod exec;
pub mod lab;
pub mod manager;
pub mod network;
pub mod node;
pub mod service;
pub mod task_shim;
pub mod topology;

use crate::cli::{Cli, Command};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Manager(args) => manager::run(args).await,
        Command::Agent(args) => agent::run(cli.client.manager, args).await,
        Command::Cluster(command) => cluster::run(&cli.client, command).await,
        Command::Network(command) => network::run(&cli.client, command).await,
        Command::Node(command) => node::run(&cli.client, command).await,
        Command::Service(command) => service::run(&cli.client, command).await,
        Command::Exec(exec) => exec::run(&cli.client, exec).await,
        Command::Lab(command) => lab::run(command).await,
        Command::Topology(args) => topology::run(&cli.client, args).await,
        Command::Completion(args) => {
            completion::run(args, <Cli as clap::CommandFactory>::command());
            Ok(())
        }
        Command::TaskShim(_) => unreachable!("the task shim runs before the async runtime starts"),
    }
}

/// `--hostname`, or this host's name (as the kernel has it).
pub fn hostname_or_default(hostname: Option<String>) -> String {
    hostname.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string())
    })
}
