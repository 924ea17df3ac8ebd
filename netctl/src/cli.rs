//! The command line, in Docker's style.

use crate::commands::agent::AgentArgs;
use crate::commands::cluster::ClusterCommand;
use crate::commands::completion::CompletionArgs;
use crate::commands::exec::ExecArgs;
use crate::commands::lab::LabCommand;
use crate::commands::manager::ManagerArgs;
use crate::commands::network::NetworkCommand;
use crate::commands::node::NodeCommand;
use crate::commands::service::ServiceCommand;
use crate::commands::task_shim::TaskShimArgs;
use crate::commands::topology::TopologyArgs;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Swarm-style overlay networking and routing mesh, inspectable.
#[derive(Debug, Parser)]
#[command(name = "netctl", version, about)]
pub struct Cli {
    /// Where client commands find the manager and their token.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How client commands reach the manager.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The manager's gRPC address (always TLS: http://, https:// or none);
    /// several, comma-separated, are tried in turn.
    #[arg(long, global = true, env = "NETCTL_MANAGER", default_value = "http://127.0.0.1:4243")]
    pub manager: String,
    /// The admin token (default: read from the manager's default data dir).
    #[arg(long, global = true, env = "NETCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the manager: cluster state, allocation, gRPC API.
    Manager(ManagerArgs),
    /// Run the agent of this node: join the manager and build what it asks.
    Agent(AgentArgs),
    /// The cluster's CA, certificate lifetime and tokens.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage overlay networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// List, inspect, update and remove the nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Run a command inside a task's sandbox (on the host the task runs on).
    Exec(ExecArgs),
    /// A cluster of simulated hosts on this machine (namespaces).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Run a task (started by the agent; not for operators).
    #[command(hide = true)]
    TaskShim(TaskShimArgs),
    /// Show every node's namespaces, interfaces, veth pairs, bridges, VXLAN
    /// devices, FDB entries, routes and rules, read back from the kernel.
    Topology(TopologyArgs),
    /// Print a shell completion script: bash, zsh or fish.
    Completion(CompletionArgs),
}

/// Output formats of the list commands.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns.
    Table,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
