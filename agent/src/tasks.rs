//! Task processes. Each task is started through its shim ([`crate::shim`])
//! inside its sandbox's network namespace, in new UTS, mount, IPC and PID
//! namespaces, with exactly the service's environment (plus a default PATH),
//! and recorded in its folder ([`crate::task_files`]) the moment it is
//! spawned. A restarted agent adopts the shims it finds recorded and ends
//! any process in a sandbox it has no record for, so no task process is
//! ever left untracked.
//!
//! Stopping a task sends SIGTERM to every process of it, then SIGKILL to
//! what is left after its grace period; it runs in the background, and the
//! sandbox is only removed once nothing of the task is left
//! ([`Supervisor::holds`]).

use crate::shim::LogLimits;
use crate::task_files::{process_start_time, ShimRecord, TaskExit, TaskFiles};
use netctl_proto::{TaskSpec, TaskState, TaskStatusReport};
use netlib::netns::{namespace_inode, processes_in, signal_processes_in};
use nix::sys::signal::Signal;
use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::task_files::tasks_dir;

/// Docker's default `--stop-grace-period`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// The PATH a task gets unless its service sets one (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The longest host name the kernel keeps for a task (a DNS label).
const MAX_HOSTNAME: usize = 63;

/// What happened to a task's process, as reported to the manager.
fn report(task_id: &str, state: TaskState, error: impl Into<String>) -> TaskStatusReport {
    TaskStatusReport { task_id: task_id.to_string(), state: state.into(), error: error.into() }
}

/// The report for a task that ended as its shim recorded (`None`: no record).
fn ended_report(task_id: &str, exit: Option<TaskExit>) -> TaskStatusReport {
    match exit {
        Some(TaskExit::Exited(0)) => report(task_id, TaskState::Complete, "task exited with status 0"),
        Some(TaskExit::Exited(code)) => {
            report(task_id, TaskState::Failed, format!("task exited with status {code}"))
        }
        Some(TaskExit::Killed(signal)) => {
            report(task_id, TaskState::Failed, format!("task was killed (signal {signal})"))
        }
        Some(TaskExit::NotStarted(reason)) => report(task_id, TaskState::Failed, reason),
        None => report(task_id, TaskState::Failed, "task ended while the agent was away"),
    }
}

/// The host name of a task: its name, cut to one DNS label as the kernel
/// and resolvers want it.
pub fn task_hostname(name: &str) -> String {
    let cut: String = name.chars().take(MAX_HOSTNAME).collect();
    cut.trim_end_matches(['.', '-']).to_string()
}

/// Starts, watches, adopts and stops task processes.
pub struct Supervisor {
    dir: PathBuf,
    shim_program: PathBuf,
    children: HashMap<String, Child>,
    ended: HashMap<String, TaskStatusReport>,
    stopping: Arc<Mutex<HashSet<String>>>,
    stopped: Arc<tokio::sync::Notify>,
}

impl Supervisor {
    /// Keeps task folders in `<run-dir>/tasks`; starts tasks through
    /// `shim_program` (the netctl binary: `netctl task-shim`).
    pub fn new(run_dir: &Path, shim_program: PathBuf) -> std::io::Result<Self> {
        let dir = tasks_dir(run_dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            shim_program,
            children: HashMap::new(),
            ended: HashMap::new(),
            stopping: Arc::default(),
            stopped: Arc::default(),
        })
    }

    /// Notified whenever a task finished stopping (its sandbox may go).
    pub fn stopped(&self) -> Arc<tokio::sync::Notify> {
        self.stopped.clone()
    }

    fn files(&self, sandbox: &str) -> TaskFiles {
        TaskFiles::new(&self.dir, sandbox)
    }

    /// Makes sure `task` was started in the sandbox at `sandbox_path` and
    /// says how it is doing. A task that ended is not started again: the
    /// manager replaces it.
    pub async fn ensure_running(
        &mut self,
        task: &TaskSpec,
        sandbox: &str,
        sandbox_path: &Path,
    ) -> TaskStatusReport {
        if let Some(ended) = self.ended.get(sandbox) {
            return ended.clone();
        }
        let files = self.files(sandbox);
        if let Some(child) = self.children.get_mut(sandbox) {
            return match child.try_wait() {
                Ok(None) => report(&task.id, TaskState::Running, ""),
                Ok(Some(_)) => {
                    self.children.remove(sandbox);
                    let ended = match files.exit() {
                        Some(exit) => ended_report(&task.id, Some(exit)),
                        None => report(&task.id, TaskState::Failed, "the task's shim ended without a record"),
                    };
                    self.record_end(sandbox, ended)
                }
                Err(err) => report(&task.id, TaskState::Failed, format!("waiting for the task: {err}")),
            };
        }
        match files.shim() {
            Some(record) if record.alive() => report(&task.id, TaskState::Running, ""),
            Some(_) => self.record_end(sandbox, ended_report(&task.id, files.exit())),
            None => {
                // Processes without a record come from a start whose record
                // was lost (the agent died right after spawning): end them.
                if let Some(inode) = namespace_inode(sandbox_path) {
                    let strays = signal_processes_in(&[inode], Signal::SIGKILL);
                    if strays > 0 {
                        tracing::warn!(task = %task.id, strays, "ended task processes that had no record");
                    }
                }
                match self.start(task, sandbox, sandbox_path).await {
                    Ok(()) => report(&task.id, TaskState::Running, ""),
                    Err(error) => self.record_end(sandbox, report(&task.id, TaskState::Failed, error)),
                }
            }
        }
    }

    fn record_end(&mut self, sandbox: &str, ended: TaskStatusReport) -> TaskStatusReport {
        tracing::info!(task = %ended.task_id, state = ended.state().word(), error = %ended.error, "task ended");
        self.ended.insert(sandbox.to_string(), ended.clone());
        ended
    }

    async fn start(&mut self, task: &TaskSpec, sandbox: &str, sandbox_path: &Path) -> Result<(), String> {
        if task.command.first().is_none_or(|c| c.is_empty()) {
            return Err("the task has no command".into());
        }
        let files = self.files(sandbox);
        files.create().map_err(|e| format!("making the task folder {}: {e}", files.dir().display()))?;
        let hostname = task_hostname(&task.name);
        let address = task.endpoints.first().map(|e| e.address.as_str());
        files
            .write_name_files(&hostname, address)
            .map_err(|e| format!("writing resolv.conf and hosts in {}: {e}", files.dir().display()))?;
        let runtime = task.runtime.clone().unwrap_or_default();
        let limits = LogLimits::or_default(runtime.log_max_size, runtime.log_max_file);
        let mut command = Command::new(&self.shim_program);
        command
            .arg("task-shim")
            .arg("--task-dir")
            .arg(files.dir())
            .args(["--log-max-size", &limits.max_size.to_string()])
            .args(["--log-max-file", &limits.max_file.to_string()])
            .args(shim_flags(&runtime))
            .arg("--")
            .args(&task.command)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(&task.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.current_dir(if task.workdir.is_empty() { "/" } else { &task.workdir });
        let mut enter = netlib::netns::enter_network_in_child(sandbox_path).map_err(|e| e.to_string())?;
        // SAFETY: only async-signal-safe system calls run between fork and exec.
        unsafe {
            command.pre_exec(move || {
                use nix::sched::{unshare, CloneFlags};
                enter()?;
                let own = CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWNS
                    | CloneFlags::CLONE_NEWIPC
                    | CloneFlags::CLONE_NEWPID;
                unshare(own)?;
                nix::unistd::sethostname(&hostname)?;
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        // Forking and exec'ing take a while: off the async workers.
        let spawned = tokio::task::spawn_blocking(move || command.spawn())
            .await
            .map_err(|e| format!("starting the task's shim: {e}"))?;
        let child = spawned.map_err(|e| format!("starting the task's shim: {e}"))?;
        let pid = child.id() as i32;
        let stop_grace = match runtime.stop_grace_ms {
            0 => DEFAULT_STOP_GRACE,
            ms => Duration::from_millis(ms),
        };
        let record = ShimRecord { pid, started: process_start_time(pid).unwrap_or_default(), stop_grace };
        self.children.insert(sandbox.to_string(), child);
        files
            .write_shim(&record)
            .map_err(|e| format!("recording the task in {}: {e}", files.dir().display()))?;
        tracing::info!(task = %task.id, name = %task.name, pid, "task started");
        Ok(())
    }

    /// Whether a task was started for `sandbox` (and not stopped since).
    pub fn started(&self, sandbox: &str) -> bool {
        let files = self.files(sandbox);
        files.shim().is_some() && !files.stopped()
    }

    /// Whether something of the task of `sandbox` may still run (it is
    /// being stopped, or its shim lives): its sandbox must stay.
    pub fn holds(&self, sandbox: &str) -> bool {
        self.stopping.lock().expect("stopping set poisoned").contains(sandbox)
            || self.files(sandbox).shim().is_some_and(|r| r.alive())
    }

    /// Records that the task of `sandbox` ended because of `error`.
    pub fn mark_lost(&mut self, task: &TaskSpec, sandbox: &str, error: &str) {
        self.record_end(sandbox, report(&task.id, TaskState::Failed, error));
    }

    /// The sandboxes that have a task (running or ended) known here.
    pub fn known(&self) -> Vec<String> {
        let from_files = std::fs::read_dir(&self.dir).into_iter().flatten().filter_map(|entry| {
            let entry = entry.ok()?;
            entry.file_type().ok()?.is_dir().then_some(())?;
            (!TaskFiles::at(entry.path()).stopped()).then_some(())?;
            entry.file_name().into_string().ok()
        });
        let mut known: Vec<String> = from_files.chain(self.ended.keys().cloned()).collect();
        known.sort();
        known.dedup();
        known
    }

    /// Starts stopping the tasks of `sandboxes` (those not being stopped
    /// already), in the background: SIGTERM to every process of each task,
    /// SIGKILL to what is left after its grace period, then its folder is
    /// marked stopped (the log shipper removes it once its output is
    /// shipped) and [`Supervisor::stopped`] notified.
    pub fn stop(&mut self, sandboxes: &[String], namespace_dir: &netlib::NamespaceDir) {
        for sandbox in sandboxes {
            if !self.stopping.lock().expect("stopping set poisoned").insert(sandbox.clone()) {
                continue;
            }
            self.ended.remove(sandbox);
            let files = self.files(sandbox);
            let record = files.shim();
            // The shim's own namespace link still names the task's namespace
            // when the sandbox file was deleted by hand.
            let inode = record
                .filter(ShimRecord::alive)
                .and_then(|r| namespace_inode(Path::new(&format!("/proc/{}/ns/net", r.pid))))
                .or_else(|| namespace_inode(&namespace_dir.path(sandbox)));
            let stop = TaskStop {
                sandbox: sandbox.clone(),
                inode,
                grace: record.map_or(DEFAULT_STOP_GRACE, |r| r.stop_grace),
                child: self.children.remove(sandbox),
                files,
                stopping: self.stopping.clone(),
                stopped: self.stopped.clone(),
            };
            tokio::spawn(stop.run());
        }
    }
}

/// The shim's flags for a task's user and capabilities.
pub fn shim_flags(runtime: &netctl_proto::TaskRuntime) -> Vec<String> {
    let mut flags = Vec::new();
    if !runtime.user.is_empty() {
        flags.extend(["--user".to_string(), runtime.user.clone()]);
    }
    for cap in &runtime.cap_add {
        flags.extend(["--cap-add".to_string(), cap.clone()]);
    }
    for cap in &runtime.cap_drop {
        flags.extend(["--cap-drop".to_string(), cap.clone()]);
    }
    flags
}

/// One task being stopped in the background.
struct TaskStop {
    sandbox: String,
    inode: Option<u64>,
    grace: Duration,
    child: Option<Child>,
    files: TaskFiles,
    stopping: Arc<Mutex<HashSet<String>>>,
    stopped: Arc<tokio::sync::Notify>,
}

impl TaskStop {
    async fn run(mut self) {
        let inodes: Vec<u64> = self.inode.into_iter().collect();
        let poll = Duration::from_millis(50);
        if signal_processes_in(&inodes, Signal::SIGTERM) > 0 {
            let deadline = tokio::time::Instant::now() + self.grace;
            while tokio::time::Instant::now() < deadline && !processes_in(&inodes).is_empty() {
                tokio::time::sleep(poll).await;
            }
            while signal_processes_in(&inodes, Signal::SIGKILL) > 0 {
                tokio::time::sleep(poll).await;
            }
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            while matches!(child.try_wait(), Ok(None)) {
                tokio::time::sleep(poll).await;
            }
        }
        let marked = match self.files.dir().exists() {
            true => self.files.mark_stopped(),
            false => Ok(()),
        };
        if let Err(err) = marked {
            tracing::warn!(sandbox = %self.sandbox, "marking the task folder stopped: {err}");
        }
        tracing::info!(sandbox = %self.sandbox, "task stopped");
        self.stopping.lock().expect("stopping set poisoned").remove(&self.sandbox);
        self.stopped.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_one_dns_label() {
        assert_eq!(task_hostname("web.1"), "web.1");
        let long = format!("{}.100000", "a".repeat(63));
        assert_eq!(task_hostname(&long), "a".repeat(63));
        let cut_at_dot = format!("{}.1", "b".repeat(62));
        assert_eq!(task_hostname(&cut_at_dot), "b".repeat(62));
    }

    #[test]
    fn exits_are_reported_in_dockers_words() {
        assert_eq!(ended_report("t", Some(TaskExit::Exited(0))).state(), TaskState::Complete);
        assert_eq!(ended_report("t", Some(TaskExit::Exited(3))).error, "task exited with status 3");
        assert_eq!(ended_report("t", Some(TaskExit::NotStarted("x".into()))).error, "x");
        assert_eq!(ended_report("t", None).error, "task ended while the agent was away");
    }
}
