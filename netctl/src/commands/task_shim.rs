//! `netctl task-shim`: the process the agent starts for each task (and
//! `netctl exec` for a command inside one); see [`netctl_agent::shim`].

use crate::cli::TaskShimArgs;
use netctl_agent::shim::{self, LogLimits, ShimConfig};

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
