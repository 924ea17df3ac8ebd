//! The files of one task on its node, in `<run-dir>/tasks/<sandbox>/`
//! (mode 0700, every file 0600):
//!
//! - `shim`: the pid of the task's shim, its start time (against pid reuse)
//!   and the task's stop grace period, written by the agent as soon as the
//!   shim is spawned;
//! - `exit`: how the task ended, written by the shim;
//! - `stopped`: written by the agent once nothing of the task runs any more;
//!   the folder stays until its log has been shipped, then goes;
//! - `log.<offset>`: the task's output, in segments named by the offset of
//!   their first byte in the task's whole output, so a reader that knows how
//!   far it got finds its place again after a rotation;
//! - `resolv.conf` and `hosts` (mode 0644, the task reads them): bound over
//!   `/etc/resolv.conf` and `/etc/hosts` in the task's mount namespace, as
//!   `ip netns exec` does with `/etc/netns/NAME`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The resolver every task is given.
const RESOLVER: std::net::Ipv4Addr = crate::dns::RESOLVER_ADDRESS;

/// Where the files of every task live: `<run-dir>/tasks`.
pub fn tasks_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("tasks")
}

/// The shim of a running task, as recorded by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShimRecord {
    /// The shim's pid (in the agent's pid namespace).
    pub pid: i32,
    /// Its start time, in clock ticks since boot.
    pub started: u64,
    /// How long the task may take to end after SIGTERM.
    pub stop_grace: Duration,
}

impl ShimRecord {
    /// Whether the recorded process is still the shim (alive, not a zombie,
    /// and not a later process that got the same pid).
    pub fn alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.started)
    }
}

/// How a task ended, as its shim saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskExit {
    /// The command exited with this status.
    Exited(i32),
    /// The command was killed by this signal.
    Killed(i32),
    /// The command could not be started.
    NotStarted(String),
}

impl TaskExit {
    fn encode(&self) -> String {
        match self {
            TaskExit::Exited(code) => format!("exited {code}\n"),
            TaskExit::Killed(signal) => format!("killed {signal}\n"),
            TaskExit::NotStarted(reason) => format!("not-started {reason}\n"),
        }
    }

    fn decode(text: &str) -> Option<Self> {
        let (kind, rest) = text.trim_end().split_once(' ')?;
        match kind {
            "exited" => rest.parse().ok().map(TaskExit::Exited),
            "killed" => rest.parse().ok().map(TaskExit::Killed),
            "not-started" => Some(TaskExit::NotStarted(rest.to_string())),
            _ => None,
        }
    }
}

/// The files of one task.
#[derive(Debug, Clone)]
pub struct TaskFiles {
    dir: PathBuf,
}

impl TaskFiles {
    /// The files of the task whose sandbox is `sandbox`.
    pub fn new(tasks_dir: &Path, sandbox: &str) -> Self {
        Self { dir: tasks_dir.join(sandbox) }
    }

    /// The files of the task in `dir`.
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The task's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the task's folder (mode 0700).
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)
    }

    /// Writes the task's `resolv.conf` (the node's resolver, Docker's
    /// `ndots:0`) and `hosts` (its own name and address).
    pub fn write_name_files(&self, hostname: &str, address: Option<&str>) -> std::io::Result<()> {
        let resolv = format!("nameserver {RESOLVER}\noptions ndots:0\n");
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if let Some(address) = address {
            hosts.push_str(&format!("{address}\t{hostname}\n"));
        }
        for (name, text) in [("resolv.conf", resolv), ("hosts", hosts)] {
            let temporary = self.dir.join(format!(".{name}.new"));
            std::fs::write(&temporary, text)?;
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644))?;
            std::fs::rename(&temporary, self.dir.join(name))?;
        }
        Ok(())
    }

    /// The task's name files that exist, and where they go in its mount
    /// namespace.
    pub fn name_files(&self) -> Vec<(PathBuf, &'static str)> {
        [("resolv.conf", "/etc/resolv.conf"), ("hosts", "/etc/hosts")]
            .into_iter()
            .map(|(name, target)| (self.dir.join(name), target))
            .filter(|(source, _)| source.exists())
            .collect()
    }

    /// Records the task's shim (atomically: a reader sees all or nothing).
    pub fn write_shim(&self, record: &ShimRecord) -> std::io::Result<()> {
        let text = format!("{} {} {}\n", record.pid, record.started, record.stop_grace.as_millis());
        self.write_atomically("shim", &text)
    }

    /// The recorded shim, if any.
    pub fn shim(&self) -> Option<ShimRecord> {
        let text = std::fs::read_to_string(self.dir.join("shim")).ok()?;
        let mut fields = text.split_whitespace();
        Some(ShimRecord {
            pid: fields.next()?.parse().ok()?,
            started: fields.next()?.parse().ok()?,
            stop_grace: Duration::from_millis(fields.next()?.parse().ok()?),
        })
    }

    /// Records how the task ended.
    pub fn write_exit(&self, exit: &TaskExit) -> std::io::Result<()> {
        self.write_atomically("exit", &exit.encode())
    }

    /// How the task ended, if it did and its shim recorded it.
    pub fn exit(&self) -> Option<TaskExit> {
        TaskExit::decode(&std::fs::read_to_string(self.dir.join("exit")).ok()?)
    }

    /// Marks the task as stopped: nothing of it runs any more.
    pub fn mark_stopped(&self) -> std::io::Result<()> {
        self.write_atomically("stopped", "")
    }

    /// Whether the task was stopped (its folder only waits for its log to
    /// be shipped).
    pub fn stopped(&self) -> bool {
        self.dir.join("stopped").exists()
    }

    /// The offset after the last byte of the task's output.
    pub fn log_end(&self) -> u64 {
        self.log_segments()
            .last()
            .map_or(0, |(start, path)| start + std::fs::metadata(path).map_or(0, |m| m.len()))
    }

    /// The log segments, oldest first: (offset of the first byte, path).
    pub fn log_segments(&self) -> Vec<(u64, PathBuf)> {
        let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                let offset = name.to_str()?.strip_prefix("log.")?.parse().ok()?;
                Some((offset, entry.path()))
            })
            .collect();
        segments.sort();
        segments
    }

    /// The path of the log segment starting at `offset`.
    pub fn log_segment(&self, offset: u64) -> PathBuf {
        self.dir.join(format!("log.{offset:020}"))
    }

    /// Removes the task's folder.
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    fn write_atomically(&self, name: &str, text: &str) -> std::io::Result<()> {
        let temporary = self.dir.join(format!(".{name}.new"));
        let mut file = private_file(&temporary, false)?;
        file.write_all(text.as_bytes())?;
        std::fs::rename(&temporary, self.dir.join(name))
    }
}

/// Opens `path` for writing, created with mode 0600 (appending when
/// `append`, truncating otherwise).
pub fn private_file(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .mode(0o600)
        .open(path)
}

/// The start time (in clock ticks since boot) of a live, non-zombie process.
pub fn process_start_time(pid: i32) -> Option<u64> {
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_round_trip_and_files_are_private() {
        let root = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(root.path(), "abc123");
        files.create().unwrap();
        let record = ShimRecord { pid: 42, started: 1234, stop_grace: Duration::from_millis(1500) };
        files.write_shim(&record).unwrap();
        assert_eq!(files.shim(), Some(record));
        for exit in [TaskExit::Exited(3), TaskExit::Killed(9), TaskExit::NotStarted("no such file".into())] {
            files.write_exit(&exit).unwrap();
            assert_eq!(files.exit(), Some(exit));
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(files.dir()), 0o700);
        assert_eq!(mode(&files.dir().join("shim")), 0o600);
        files.remove().unwrap();
        files.remove().unwrap();
    }

    #[test]
    fn segments_are_ordered_by_offset() {
        let root = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(root.path(), "t");
        files.create().unwrap();
        for offset in [2048, 0, 1024] {
            private_file(&files.log_segment(offset), true).unwrap();
        }
        let offsets: Vec<u64> = files.log_segments().iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [0, 1024, 2048]);
    }

    #[test]
    fn our_own_process_has_a_start_time() {
        assert!(process_start_time(std::process::id() as i32).is_some());
        assert_eq!(process_start_time(-1), None);
    }
}
