//! The task shim (`netctl task-shim`): the process between the agent and a
//! task, as containerd's shim is between Docker and a container.
//!
//! The agent spawns it already inside the task's sandbox network namespace
//! and in new UTS, mount, IPC and PID namespaces. The shim forks the task's
//! command, which becomes PID 1 of the new PID namespace: when it ends, the
//! kernel ends every other process of the task, so nothing of a task
//! outlives it. Before the command runs, the child makes the mount
//! namespace private, drops the host's namespace mounts (they would pin
//! other sandboxes), mounts its own `/proc`, limits its capabilities to the
//! task's set and switches to the task's user. The shim itself stays
//! outside the PID namespace, drains the task's output into size-capped log
//! segments and records how the task ended, also when the agent is gone.
//!
//! With `--exec` the shim runs a command inside a running task instead (for
//! `netctl exec`, which joins the task's namespaces before starting it).

use crate::capabilities;
use crate::task_files::{private_file, TaskExit, TaskFiles};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Gid, Pid, Uid};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// The output of a task, capped on disk.
#[derive(Debug, Clone)]
pub struct LogLimits {
    /// Bytes per log segment.
    pub max_size: u64,
    /// Segments kept (the oldest are deleted).
    pub max_file: u32,
}

impl LogLimits {
    /// Docker's json-file defaults when the service sets none: 10 MiB × 3.
    pub fn or_default(max_size: u64, max_file: u32) -> Self {
        Self {
            max_size: if max_size == 0 { 10 * 1024 * 1024 } else { max_size },
            max_file: if max_file == 0 { 3 } else { max_file },
        }
    }
}

/// What the shim runs, and how.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// The task's folder (logs and exit record); `None` for `--exec`.
    pub task: Option<(PathBuf, LogLimits)>,
    /// `UID[:GID]` or `NAME[:GROUP]`; empty = root.
    pub user: String,
    /// `--cap-add` of the service.
    pub cap_add: Vec<String>,
    /// `--cap-drop` of the service.
    pub cap_drop: Vec<String>,
    /// The command and its arguments.
    pub command: Vec<String>,
}

/// Runs the shim; returns its exit status (the task's, or 128 + signal).
pub fn run(config: ShimConfig) -> i32 {
    let (files, limits) = match &config.task {
        Some((dir, limits)) => (Some(TaskFiles::at(dir.clone())), Some(limits.clone())),
        None => (None, None),
    };
    let pipes = (|| -> std::io::Result<_> {
        let output = match files {
            Some(_) => Some(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?),
            None => None,
        };
        Ok((output, nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?))
    })();
    let (output, (error_read, error_write)) = match pipes {
        Ok(pipes) => pipes,
        Err(err) => return not_started(files.as_ref(), &format!("making the task's pipes: {err}")),
    };
    // SAFETY: the shim is single-threaded, so the child may do anything.
    match unsafe { fork() } {
        Err(err) => not_started(files.as_ref(), &format!("forking the task: {err}")),
        Ok(ForkResult::Child) => {
            drop(error_read);
            let output_write = output.map(|(read, write)| {
                drop(read);
                write
            });
            let failure = start_command(&config, output_write);
            let mut error_write = std::fs::File::from(error_write);
            let _ = error_write.write_all(failure.as_bytes());
            // SAFETY: leaves the child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(error_write);
            for stop in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGPIPE] {
                // SAFETY: SIG_IGN installs no handler code.
                let _ = unsafe { signal(stop, SigHandler::SigIgn) };
            }
            let output_read = output.map(|(read, write)| {
                drop(write);
                read
            });
            supervise(child, error_read, output_read, files.as_ref().zip(limits))
        }
    }
}

/// In the parent: learns whether the command started, drains its output
/// into the logs, waits for it and records how it ended.
fn supervise(
    child: Pid,
    error_read: OwnedFd,
    output_read: Option<OwnedFd>,
    task: Option<(&TaskFiles, LogLimits)>,
) -> i32 {
    let mut failure = String::new();
    let _ = std::fs::File::from(error_read).read_to_string(&mut failure);
    let mut log =
        task.as_ref().and_then(|(files, limits)| LogWriter::open((*files).clone(), limits.clone()).ok());
    if let Some(read) = output_read {
        let mut read = std::fs::File::from(read);
        let mut buffer = vec![0; 64 * 1024];
        loop {
            match read.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(log) = log.as_mut() {
                        // A full disk loses output, never blocks the task.
                        let _ = log.write(&buffer[..n]);
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let exit = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break TaskExit::Exited(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => break TaskExit::Killed(signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => break TaskExit::NotStarted(format!("waiting for the task: {err}")),
        }
    };
    let exit = if failure.is_empty() { exit } else { TaskExit::NotStarted(failure) };
    if let Some((files, _)) = &task {
        if let (TaskExit::NotStarted(reason), Some(log)) = (&exit, log.as_mut()) {
            let _ = log.write(format!("netctl: {reason}\n").as_bytes());
        }
        let _ = files.write_exit(&exit);
    }
    match exit {
        TaskExit::Exited(code) => code,
        TaskExit::Killed(signal) => 128 + signal,
        TaskExit::NotStarted(reason) => {
            if task.is_none() {
                eprintln!("netctl: {reason}");
            }
            127
        }
    }
}

/// In the child: confines itself and execs the command; returns why it
/// could not.
fn start_command(config: &ShimConfig, output: Option<OwnedFd>) -> String {
    let steps = || -> Result<std::convert::Infallible, String> {
        if let Some(output) = output {
            for target in [1, 2] {
                // SAFETY: dup2 on descriptors this process owns.
                if unsafe { libc::dup2(output.as_raw_fd(), target) } < 0 {
                    return Err(format!("redirecting the output: {}", std::io::Error::last_os_error()));
                }
            }
            isolate_mounts()?;
        }
        if let Some((dir, _)) = &config.task {
            bind_name_files(&TaskFiles::at(dir.clone()))?;
        }
        let keep = capabilities::task_set(&config.cap_add, &config.cap_drop).map_err(|e| e.to_string())?;
        capabilities::limit_bounding_set(&keep).map_err(|e| format!("limiting capabilities: {e}"))?;
        let user = resolve_user(&config.user)?;
        if !config.user.is_empty() {
            nix::unistd::setgroups(&[user.gid]).map_err(|e| format!("setgroups: {e}"))?;
            nix::unistd::setgid(user.gid).map_err(|e| format!("setgid {}: {e}", user.gid))?;
            nix::unistd::setuid(user.uid).map_err(|e| format!("setuid {}: {e}", user.uid))?;
        }
        if user.uid.is_root() {
            capabilities::limit_own_sets(&keep).map_err(|e| format!("limiting capabilities: {e}"))?;
        }
        if std::env::var_os("HOME").is_none() {
            std::env::set_var("HOME", &user.home);
        }
        let program = &config.command[0];
        let argv: Vec<CString> = config
            .command
            .iter()
            .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("argument {a:?} holds a NUL byte")))
            .collect::<Result<_, _>>()?;
        let error = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
        Err(format!("starting task failed: {program}: {}", std::io::Error::from(error)))
    };
    match steps() {
        Err(reason) => reason,
        Ok(never) => match never {},
    }
}

/// Binds the task's `resolv.conf` and `hosts` over the host's, in the
/// task's own mount namespace. A host without one of them (a minimal
/// image; a dangling link to a stopped systemd-resolved) keeps it so: the
/// shim does not create files in the host's `/etc`.
fn bind_name_files(files: &TaskFiles) -> Result<(), String> {
    let none = None::<&str>;
    for (source, target) in files.name_files() {
        if !std::path::Path::new(target).exists() {
            continue;
        }
        mount(Some(&source), target, none, MsFlags::MS_BIND, none)
            .map_err(|e| format!("binding {} over {target}: {e}", source.display()))?;
    }
    Ok(())
}

/// Makes the mount namespace private, unmounts every namespace file it
/// copied from the host (each would keep another sandbox alive for as long
/// as this task runs) and mounts a `/proc` of the task's PID namespace.
fn isolate_mounts() -> Result<(), String> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(|e| format!("making the task's mounts private: {e}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in namespace_mounts(&mountinfo).iter().rev() {
        let _ = umount2(point.as_str(), MntFlags::MNT_DETACH);
    }
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    )
    .map_err(|e| format!("mounting the task's /proc: {e}"))
}

/// What to unmount so that no namespace file (`nsfs`) of a mountinfo text
/// stays mounted: a folder that is a mount point of its own holding
/// namespace files (a run dir's `netns/`, `/run/netns`) goes whole, in one
/// unmount however many namespaces it holds; a namespace file elsewhere
/// goes alone.
fn namespace_mounts(mountinfo: &str) -> Vec<String> {
    struct Mount {
        id: String,
        parent: String,
        point: String,
        nsfs: bool,
    }
    let mounts: Vec<Mount> = mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let mut fields = fields.split_whitespace();
            let (id, parent) = (fields.next()?.to_string(), fields.next()?.to_string());
            let point = unescape_mount_point(fields.nth(2)?);
            Some(Mount { id, parent, point, nsfs: rest.split_whitespace().next()? == "nsfs" })
        })
        .collect();
    let mut targets: Vec<String> = Vec::new();
    for file in mounts.iter().filter(|m| m.nsfs) {
        let folder = std::path::Path::new(&file.point).parent().map(|p| p.display().to_string());
        let own_folder = mounts.iter().find(|m| m.id == file.parent && Some(&m.point) == folder.as_ref());
        let target = own_folder.map_or(&file.point, |m| &m.point);
        if !targets.contains(target) {
            targets.push(target.clone());
        }
    }
    targets
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_point(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who a task runs as.
struct TaskUser {
    uid: Uid,
    gid: Gid,
    home: String,
}

/// Resolves `UID[:GID]` or `NAME[:GROUP]` against this host's user
/// database, as Docker does: a numeric user needs no entry (group 0 then).
fn resolve_user(spec: &str) -> Result<TaskUser, String> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let entry = match user {
        "" => nix::unistd::User::from_uid(Uid::from_raw(0)).ok().flatten(),
        name => match name.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(Uid::from_raw(uid)).ok().flatten(),
            Err(_) => Some(
                nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("unknown user {name:?} on this node"))?,
            ),
        },
    };
    let uid = match (user.parse::<u32>(), &entry) {
        (Ok(uid), _) => Uid::from_raw(uid),
        (Err(_), Some(entry)) => entry.uid,
        (Err(_), None) => Uid::from_raw(0),
    };
    let gid = match group {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => Gid::from_raw(gid),
            Err(_) => {
                nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("unknown group {group:?} on this node"))?
                    .gid
            }
        },
        None => entry.as_ref().map_or(Gid::from_raw(0), |e| e.gid),
    };
    let home = entry.map_or_else(|| "/".to_string(), |e| e.dir.display().to_string());
    Ok(TaskUser { uid, gid, home })
}

/// Not started: recorded (for a task) and reported.
fn not_started(files: Option<&TaskFiles>, reason: &str) -> i32 {
    match files {
        Some(files) => {
            let _ = files.write_exit(&TaskExit::NotStarted(reason.to_string()));
        }
        None => eprintln!("netctl: {reason}"),
    }
    127
}

/// Writes a task's output into segments of at most `max_size` bytes,
/// keeping the newest `max_file`.
struct LogWriter {
    files: TaskFiles,
    limits: LogLimits,
    file: std::fs::File,
    start: u64,
    len: u64,
}

impl LogWriter {
    /// Continues after the newest segment, if there is one.
    fn open(files: TaskFiles, limits: LogLimits) -> std::io::Result<Self> {
        let (start, len) = match files.log_segments().last() {
            Some((start, path)) => (*start, std::fs::metadata(path)?.len()),
            None => (0, 0),
        };
        let file = private_file(&files.log_segment(start), true)?;
        Ok(Self { files, limits, file, start, len })
    }

    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.len >= self.limits.max_size {
                self.rotate()?;
            }
            let room = (self.limits.max_size - self.len) as usize;
            let (now, later) = data.split_at(data.len().min(room));
            self.file.write_all(now)?;
            self.len += now.len() as u64;
            data = later;
        }
        Ok(())
    }

    /// Drops the oldest segments first, then opens the next one: at no
    /// moment are more than `max_file` segments on disk.
    fn rotate(&mut self) -> std::io::Result<()> {
        let segments = self.files.log_segments();
        let excess = (segments.len() + 1).saturating_sub(self.limits.max_file as usize);
        for (_, old) in &segments[..excess.min(segments.len())] {
            std::fs::remove_file(old)?;
        }
        self.start += self.len;
        self.len = 0;
        self.file = private_file(&self.files.log_segment(self.start), true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_within_their_cap_and_keep_offsets() {
        let root = tempfile::tempdir().unwrap();
        let files = TaskFiles::new(root.path(), "t");
        files.create().unwrap();
        let limits = LogLimits { max_size: 100, max_file: 3 };
        let mut writer = LogWriter::open(files.clone(), limits.clone()).unwrap();
        for _ in 0..50 {
            writer.write(&[b'x'; 37]).unwrap();
        }
        let segments = files.log_segments();
        assert_eq!(segments.len(), 3);
        let total: u64 = segments.iter().map(|(_, p)| std::fs::metadata(p).unwrap().len()).sum();
        assert!(total <= 300, "{total} bytes kept");
        let (last_start, last) = segments.last().unwrap();
        assert_eq!(last_start + std::fs::metadata(last).unwrap().len(), 50 * 37);
        // A new writer (a shim started again) continues where this one was.
        let mut again = LogWriter::open(files.clone(), limits).unwrap();
        again.write(b"y").unwrap();
        assert_eq!(again.start + again.len, 50 * 37 + 1);
    }

    #[test]
    fn namespace_mounts_are_found_in_mountinfo() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
29 22 8:1 /run/netctl/netns /run/netctl/netns rw shared:5 - ext4 /dev/sda1 rw
610 29 0:4 net:[4026532281] /run/netctl/netns/1-abc rw shared:5 - nsfs nsfs rw
612 29 0:4 net:[4026532283] /run/netctl/netns/sandbox rw shared:5 - nsfs nsfs rw
611 22 0:4 net:[4026532282] /run/my\\040dir/x rw - nsfs nsfs rw
";
        assert_eq!(namespace_mounts(mountinfo), ["/run/netctl/netns", "/run/my dir/x"]);
    }

    #[test]
    fn numeric_users_need_no_entry() {
        let user = resolve_user("4321:765").unwrap();
        assert_eq!((user.uid.as_raw(), user.gid.as_raw()), (4321, 765));
        let root = resolve_user("").unwrap();
        assert!(root.uid.is_root());
        assert!(resolve_user("no-such-user-here").is_err());
    }
}
