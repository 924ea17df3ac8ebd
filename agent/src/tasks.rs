//! Task processes: started inside their sandbox's network namespace with
//! their own UTS namespace (hostname = task name) and session, output to a
//! log file, and watched until they exit. A pid file per task (with the
//! process start time, against PID reuse) lets a restarted agent adopt the
//! processes it started before instead of starting them twice.

use netctl_proto::{TaskSpec, TaskStatusReport};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a stopped task may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where pid files and task logs live: `<run-dir>/tasks`.
pub fn tasks_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("tasks")
}

/// What happened to a task's process, as reported to the manager.
fn report(task_id: &str, state: &str, error: impl Into<String>) -> TaskStatusReport {
    TaskStatusReport { task_id: task_id.to_string(), state: state.to_string(), error: error.into() }
}

/// Starts, watches, adopts and stops task processes.
pub struct Supervisor {
    dir: PathBuf,
    children: HashMap<String, Child>,
    ended: HashMap<String, TaskStatusReport>,
}

impl Supervisor {
    /// Keeps pid files and logs in `<run-dir>/tasks`.
    pub fn new(run_dir: &Path) -> std::io::Result<Self> {
        let dir = tasks_dir(run_dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, children: HashMap::new(), ended: HashMap::new() })
    }

    fn pid_file(&self, sandbox: &str) -> PathBuf {
        self.dir.join(format!("{sandbox}.pid"))
    }

    /// The log file of a task.
    pub fn log_file(&self, sandbox: &str) -> PathBuf {
        self.dir.join(format!("{sandbox}.log"))
    }

    /// Makes sure `task` was started in the sandbox at `sandbox_path` and
    /// says how it is doing. A task that ended is not started again: the
    /// manager replaces it.
    pub fn ensure_running(
        &mut self,
        task: &TaskSpec,
        sandbox: &str,
        sandbox_path: &Path,
    ) -> TaskStatusReport {
        if let Some(ended) = self.ended.get(sandbox) {
            return ended.clone();
        }
        if let Some(child) = self.children.get_mut(sandbox) {
            match child.try_wait() {
                Ok(None) => return report(&task.id, "running", ""),
                Ok(Some(status)) => {
                    self.children.remove(sandbox);
                    let ended = match status.code() {
                        Some(0) => report(&task.id, "complete", "task exited with status 0"),
                        Some(code) => report(&task.id, "failed", format!("task exited with status {code}")),
                        None => report(&task.id, "failed", format!("task was killed ({status})")),
                    };
                    return self.record_end(sandbox, ended);
                }
                Err(err) => return report(&task.id, "failed", format!("waiting for the task: {err}")),
            }
        }
        match read_pid_file(&self.pid_file(sandbox)) {
            Some((pid, started)) if process_start_time(pid) == Some(started) => {
                report(&task.id, "running", "")
            }
            Some(_) => {
                let ended = report(&task.id, "failed", "task ended while the agent was away");
                self.record_end(sandbox, ended)
            }
            None => match self.start(task, sandbox, sandbox_path) {
                Ok(()) => report(&task.id, "running", ""),
                Err(error) => self.record_end(sandbox, report(&task.id, "failed", error)),
            },
        }
    }

    fn record_end(&mut self, sandbox: &str, ended: TaskStatusReport) -> TaskStatusReport {
        tracing::info!(task = %ended.task_id, state = %ended.state, error = %ended.error, "task ended");
        self.ended.insert(sandbox.to_string(), ended.clone());
        ended
    }

    fn start(&mut self, task: &TaskSpec, sandbox: &str, sandbox_path: &Path) -> Result<(), String> {
        let program = task.command.first().ok_or("the task has no command")?;
        let log_path = self.log_file(sandbox);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening log {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("opening log {}: {e}", log_path.display()))?;
        let namespace = std::fs::File::open(sandbox_path)
            .map_err(|e| format!("opening sandbox {}: {e}", sandbox_path.display()))?;
        let hostname = task.name.clone();
        let mut command = Command::new(program);
        command.args(&task.command[1..]).envs(&task.env).stdin(Stdio::null()).stdout(log).stderr(log_err);
        if !task.workdir.is_empty() {
            command.current_dir(&task.workdir);
        }
        // SAFETY: only async-signal-safe system calls run between fork and exec.
        unsafe {
            command.pre_exec(move || {
                use nix::sched::{setns, unshare, CloneFlags};
                setns(&namespace, CloneFlags::CLONE_NEWNET)?;
                unshare(CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(&hostname)?;
                nix::unistd::setsid()?;
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| format!("starting task failed: {program}: {e}"))?;
        let pid = child.id() as i32;
        let started = process_start_time(pid).unwrap_or_default();
        std::fs::write(self.pid_file(sandbox), format!("{pid} {started}\n"))
            .map_err(|e| format!("writing pid file of {sandbox}: {e}"))?;
        tracing::info!(task = %task.id, name = %task.name, pid, "task started");
        self.children.insert(sandbox.to_string(), child);
        Ok(())
    }

    /// Whether a process was started for `sandbox` (and not stopped since).
    pub fn started(&self, sandbox: &str) -> bool {
        self.pid_file(sandbox).exists()
    }

    /// Records that the task of `sandbox` ended because of `error`.
    pub fn mark_lost(&mut self, task: &TaskSpec, sandbox: &str, error: &str) {
        self.record_end(sandbox, report(&task.id, "failed", error));
    }

    /// The sandboxes that have a process (running or ended) known here.
    pub fn known(&self) -> Vec<String> {
        let from_files = std::fs::read_dir(&self.dir).into_iter().flatten().filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".pid").map(str::to_string)
        });
        let mut known: Vec<String> = from_files.chain(self.ended.keys().cloned()).collect();
        known.sort();
        known.dedup();
        known
    }

    /// Stops the tasks of `sandboxes` together: SIGTERM to each process
    /// group, SIGKILL to what is left after a grace period, then forgets them.
    pub async fn stop(&mut self, sandboxes: &[String]) {
        let mut alive: Vec<(String, i32, u64)> = sandboxes
            .iter()
            .filter_map(|sandbox| {
                read_pid_file(&self.pid_file(sandbox)).map(|(pid, started)| (sandbox.clone(), pid, started))
            })
            .filter(|(_, pid, started)| process_start_time(*pid) == Some(*started))
            .collect();
        for (_, pid, _) in &alive {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while !alive.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            alive.retain(|(sandbox, pid, started)| {
                !self.reap(sandbox) && process_start_time(*pid) == Some(*started)
            });
        }
        for (_, pid, _) in &alive {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
        for sandbox in sandboxes {
            if let Some(mut child) = self.children.remove(sandbox) {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_file(self.pid_file(sandbox));
            let _ = std::fs::remove_file(self.log_file(sandbox));
            self.ended.remove(sandbox);
            tracing::info!(sandbox, "task stopped");
        }
    }

    /// Reaps our child of `sandbox` if it exited; whether it did.
    fn reap(&mut self, sandbox: &str) -> bool {
        self.children.get_mut(sandbox).is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))))
    }
}

fn read_pid_file(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// The start time (in clock ticks since boot) of a live, non-zombie process.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_has_a_start_time_and_pid_files_round_trip() {
        assert!(process_start_time(std::process::id() as i32).is_some());
        assert_eq!(process_start_time(-1), None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        std::fs::write(&path, "42 1234\n").unwrap();
        assert_eq!(read_pid_file(&path), Some((42, 1234)));
    }
}
