//! `netctl exec TASK -- CMD...`: runs a command inside a running task, as
//! `docker exec` does: in the task's network, UTS, IPC, mount and PID
//! namespaces, as the task's user, with the task's capabilities and
//! environment (through the task shim in `--exec` mode). The task must run
//! on this host.

use crate::cli::ClientArgs;
use crate::client::{self, rpc_error};
use anyhow::{anyhow, bail};
use clap::Args;
use netctl_agent::task_files::{tasks_dir, ShimRecord, TaskFiles};
use netctl_agent::tasks::{shim_flags, DEFAULT_PATH};
use netctl_proto::convention::sandbox_name;
use netctl_proto::{NodeListRequest, Service, ServiceListRequest, Task, TaskState};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// A command that ran and exited with a non-zero code, passed on as ours.
#[derive(Debug)]
pub struct CommandExit(pub i32);

impl std::fmt::Display for CommandExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command exited with status {}", self.0)
    }
}

impl std::error::Error for CommandExit {}

/// Finds the task, enters its sandbox, runs the command.
pub async fn run(args: &ClientArgs, exec: ExecArgs) -> anyhow::Result<()> {
    let mut control = client::connect(args).await?;
    let services =
        control.list_services(ServiceListRequest {}).await.map_err(rpc_error)?.into_inner().services;
    let candidates: Vec<(String, Task)> = services
        .iter()
        .flat_map(|view| view.tasks.clone())
        .filter_map(|entry| Some((entry.name, entry.task?)))
        .filter(|(_, task)| task.desired_state() == TaskState::Running)
        .collect();
    let matching: Vec<&(String, Task)> = candidates
        .iter()
        .filter(|(name, task)| *name == exec.task || task.id.starts_with(&exec.task))
        .collect();
    let (name, task) = match matching.as_slice() {
        [] => bail!("no running task {} (give a task name such as web.1 or a task ID)", exec.task),
        [only] => *only,
        many => bail!("task {} is ambiguous ({} matches): use more of the ID", exec.task, many.len()),
    };
    let sandbox_name = sandbox_name(&task.id);
    let sandbox = netlib::NamespaceDir::new(&exec.run_dir).path(sandbox_name);
    if !sandbox.exists() {
        let nodes = control.list_nodes(NodeListRequest {}).await.map_err(rpc_error)?.into_inner().nodes;
        let node =
            nodes.into_iter().filter_map(|n| n.node).find(|n| n.id == task.node_id).unwrap_or_default();
        bail!(
            "task {name} runs on {} ({}), not on this host (no {}): run netctl exec there",
            node.hostname,
            node.advertise_addr,
            sandbox.display()
        );
    }
    let files = TaskFiles::new(&tasks_dir(&exec.run_dir), sandbox_name);
    let Some(shim) = files.shim().filter(ShimRecord::alive) else {
        bail!("task {name} is not running on this host (its process has ended)");
    };
    let service = services.iter().filter_map(|v| v.service.as_ref()).find(|s| s.id == task.service_id);
    let status = enter_and_run(shim.pid, service.cloned().unwrap_or_default(), &exec.command)?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(CommandExit(code).into()),
        None => Err(anyhow!("{} was killed ({status})", exec.command[0])),
    }
}

/// `netctl exec` arguments.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The agent's run dir on this host.
    #[arg(long, env = "NETCTL_RUN_DIR", default_value = netctl_proto::convention::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// The task: its name (web.1) or a task ID prefix.
    pub task: String,
    /// The command and its arguments (after --).
    #[arg(required = true, last = true)]
    pub command: Vec<String>,
}

/// Runs `command` through the task shim, in the namespaces of the task whose
/// shim is `shim_pid` (the shim's own, and its PID namespace for children).
fn enter_and_run(
    shim_pid: i32,
    service: Service,
    command: &[String],
) -> anyhow::Result<std::process::ExitStatus> {
    let open = |kind: &str| {
        let path = format!("/proc/{shim_pid}/ns/{kind}");
        std::fs::File::open(&path).map_err(|e| anyhow!("opening {path}: {e}"))
    };
    use nix::sched::CloneFlags;
    // The mount namespace last: after it, paths are the task's.
    let namespaces = [
        (open("net")?, CloneFlags::CLONE_NEWNET),
        (open("uts")?, CloneFlags::CLONE_NEWUTS),
        (open("ipc")?, CloneFlags::CLONE_NEWIPC),
        (open("pid_for_children")?, CloneFlags::CLONE_NEWPID),
        (open("mnt")?, CloneFlags::CLONE_NEWNS),
    ];
    let program = std::env::current_exe().map_err(|e| anyhow!("finding the netctl binary: {e}"))?;
    let runtime = service.runtime.unwrap_or_default();
    let mut child = std::process::Command::new(program);
    child
        .arg("task-shim")
        .args(shim_flags(&runtime))
        .arg("--")
        .args(command)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .envs(&service.env)
        .current_dir(if service.workdir.is_empty() { "/" } else { &service.workdir });
    // SAFETY: the hook only calls setns (async-signal-safe).
    unsafe {
        child.pre_exec(netlib::netns::enter_in_child(namespaces.into()));
    }
    child.status().map_err(|e| anyhow!("running {}: {e}", command[0]))
}
