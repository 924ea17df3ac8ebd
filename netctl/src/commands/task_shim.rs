//! `netctl task-shim`: the process the agent starts for each task (and
//! `netctl exec` for a command inside one); see [`netctl_agent::shim`].

use clap::Args;
use netctl_agent::shim::{self, LogLimits, ShimConfig};
use std::path::PathBuf;

/// `netctl task-shim` flags: how the agent (or `netctl exec`) asks for a
/// task to run.
#[derive(Debug, Args)]
pub struct TaskShimArgs {
    /// The task's folder (logs, exit record); without it, run a command in
    /// the task whose namespaces the caller joined (`netctl exec`).
    #[arg(long)]
    pub task_dir: Option<PathBuf>,
    /// Bytes per log file.
    #[arg(long, default_value_t = 0)]
    pub log_max_size: u64,
    /// Log files kept.
    #[arg(long, default_value_t = 0)]
    pub log_max_file: u32,
    /// UID[:GID] or NAME[:GROUP].
    #[arg(long, default_value = "")]
    pub user: String,
    /// Capabilities added to Docker's default set.
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Capabilities removed from it.
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// The command and its arguments (after --).
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// Runs the shim until the task ends; its exit status.
pub fn run(args: TaskShimArgs) -> u8 {
    let config = ShimConfig {
        task: args.task_dir.map(|dir| (dir, LogLimits::or_default(args.log_max_size, args.log_max_file))),
        user: args.user,
        cap_add: args.cap_add,
        cap_drop: args.cap_drop,
        command: args.command,
    };
    shim::run(config).clamp(0, 255) as u8
}
