//! `netctl exec TASK -- CMD...`: runs a command inside a task's sandbox (its
//! network and UTS namespaces), as `docker exec` / `nsenter --net=...` do in
//! the walkthroughs. The task must run on this host.

use crate::cli::{ClientArgs, ExecArgs};
use crate::client::{self, rpc_error};
use anyhow::{anyhow, bail};
use netctl_proto::{NodeListRequest, ServiceListRequest, Task};
use std::os::unix::process::CommandExt;
use std::path::Path;

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
        .into_iter()
        .flat_map(|view| view.tasks)
        .filter_map(|entry| Some((entry.name, entry.task?)))
        .filter(|(_, task)| task.desired_state == "running")
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
    let sandbox_name = &task.id[..task.id.len().min(12)];
    let sandbox = exec.run_dir.join("netns").join(sandbox_name);
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
    let uts = task_uts_namespace(&exec.run_dir, sandbox_name);
    let status = enter_and_run(&sandbox, uts.as_deref(), &exec.command)?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(CommandExit(code).into()),
        None => Err(anyhow!("{} was killed ({status})", exec.command[0])),
    }
}

/// The UTS namespace of the task's process, if it runs.
fn task_uts_namespace(run_dir: &Path, sandbox: &str) -> Option<std::path::PathBuf> {
    let pid_file = run_dir.join("tasks").join(format!("{sandbox}.pid"));
    let pid = std::fs::read_to_string(pid_file).ok()?.split_whitespace().next()?.to_string();
    let uts = std::path::PathBuf::from(format!("/proc/{pid}/ns/uts"));
    uts.exists().then_some(uts)
}

fn enter_and_run(
    sandbox: &Path,
    uts: Option<&Path>,
    command: &[String],
) -> anyhow::Result<std::process::ExitStatus> {
    let open =
        |path: &Path| std::fs::File::open(path).map_err(|e| anyhow!("opening {}: {e}", path.display()));
    let network = open(sandbox)?;
    let hostname = uts.map(open).transpose()?;
    let mut child = std::process::Command::new(&command[0]);
    child.args(&command[1..]);
    // SAFETY: only setns (async-signal-safe) runs between fork and exec.
    unsafe {
        child.pre_exec(move || {
            use nix::sched::{setns, CloneFlags};
            setns(&network, CloneFlags::CLONE_NEWNET)?;
            if let Some(uts) = &hostname {
                setns(uts, CloneFlags::CLONE_NEWUTS)?;
            }
            Ok(())
        });
    }
    child.status().map_err(|e| anyhow!("running {}: {e}", command[0]))
}
