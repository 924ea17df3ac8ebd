//! Network namespaces bind-mounted under `<run-dir>/netns/`, the way
//! `ip netns add` makes them under /var/run/netns, and running code inside
//! one on a dedicated thread so that no other code ever runs in a surprising
//! namespace.

use crate::error::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::path::{Path, PathBuf};

/// `statfs` magic of the namespace filesystem.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `statfs` magic of the BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where the BPF filesystem is mounted.
const BPF_FS: &str = "/sys/fs/bpf";
/// How many times [`kill_processes_in`] looks for processes left.
const KILL_ROUNDS: usize = 50;
/// Where a node's pinned BPF objects go: one folder per run dir, on the
/// BPF filesystem.
const BPF_PIN_ROOT: &str = "/sys/fs/bpf/netctl";

/// The folder holding a node's namespaces (`<run-dir>/netns`), and the
/// folder of its pinned BPF maps, which go with them.
#[derive(Debug, Clone)]
pub struct NamespaceDir {
    dir: PathBuf,
    pins: PathBuf,
}

impl NamespaceDir {
    /// The namespace folder of `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Self { dir: run_dir.join("netns"), pins: bpf_pin_dir(run_dir) }
    }

    /// The folder of the node's pinned BPF maps:
    /// `/sys/fs/bpf/netctl/<run dir, its slashes as dashes>`.
    pub fn pins(&self) -> &Path {
        &self.pins
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the folder and makes it a shared mount point, so that
    /// namespaces mounted in it are seen from every mount namespace.
    pub fn prepare(&self) -> Result<()> {
        let host = "host";
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::os(format!("creating {}", self.dir.display()), host, e))?;
        let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
        if mount(None::<&str>, &self.dir, None::<&str>, shared, None::<&str>).is_ok() {
            return Ok(());
        }
        // Not a mount point yet: bind it onto itself, then share it.
        mount(Some(&self.dir), &self.dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .and_then(|_| mount(None::<&str>, &self.dir, None::<&str>, shared, None::<&str>))
            .map_err(|e| Error::os(format!("making {} a shared mount", self.dir.display()), host, e.into()))
    }

    /// The path of namespace `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether namespace `name` exists (its file is a mounted namespace).
    pub fn exists(&self, name: &str) -> bool {
        is_namespace(&self.path(name))
    }

    /// Creates namespace `name` unless it exists.
    pub fn create(&self, name: &str) -> Result<PathBuf> {
        let Some(path) = self.prepare_file(name)? else { return Ok(self.path(name)) };
        let bound = path.clone();
        let made = std::thread::scope(|scope| {
            scope.spawn(move || bind_new_namespace(&bound)).join().expect("namespace thread panicked")
        });
        self.finish_create(name, path, made)
    }

    /// [`NamespaceDir::create`] for async callers: the namespace is made on
    /// its own thread and awaited without holding an async worker.
    pub async fn create_async(&self, name: &str) -> Result<PathBuf> {
        let Some(path) = self.prepare_file(name)? else { return Ok(self.path(name)) };
        let bound = path.clone();
        let made = on_thread(move || bind_new_namespace(&bound)).await;
        self.finish_create(name, path, made)
    }

    /// The empty file a new namespace is mounted on; `None` when the
    /// namespace exists already.
    fn prepare_file(&self, name: &str) -> Result<Option<PathBuf>> {
        let path = self.path(name);
        if is_namespace(&path) {
            return Ok(None);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::os(format!("creating namespace {name}"), "host", e))?;
        Ok(Some(path))
    }

    fn finish_create(&self, name: &str, path: PathBuf, made: nix::Result<()>) -> Result<PathBuf> {
        if let Err(errno) = made {
            let _ = std::fs::remove_file(&path);
            return Err(Error::os(format!("creating namespace {name}"), "host", errno.into()));
        }
        Ok(path)
    }

    /// Deletes namespace `name` (its kernel object goes once nothing uses it).
    pub fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => {
                return Err(Error::os(format!("unmounting namespace {name}"), "host", errno.into()))
            }
        }
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::os(format!("removing namespace file {name}"), "host", e))
            }
            _ => Ok(()),
        }
    }

    /// Every file in the folder (mounted namespaces and leftovers).
    pub fn files(&self) -> Vec<PathBuf> {
        let entries = std::fs::read_dir(&self.dir).into_iter().flatten().flatten();
        entries.map(|entry| entry.path()).collect()
    }

    /// Removes every namespace of the folder and the folder's own mount:
    /// kills what still runs inside, unmounts, removes the files. For
    /// tearing a node or a lab down whole; errors are ignored so that one
    /// leftover does not keep the rest.
    pub fn remove_all(&self) {
        let files = self.files();
        kill_processes_in(&files);
        for path in &files {
            let _ = umount2(path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(path);
        }
        while umount2(&self.dir, MntFlags::MNT_DETACH).is_ok() {}
        let _ = std::fs::remove_dir_all(&self.pins);
    }

    /// Removes every namespace of `folders` whole, last folder first, as
    /// [`NamespaceDir::remove_all`] does, having first killed what runs in
    /// any of them at once: a process can move from one folder's namespace
    /// into another's between two folders' turns (a task its killed agent
    /// was starting: from the host's namespace into its sandbox's).
    pub fn remove_all_together(folders: &[NamespaceDir]) {
        kill_processes_in(&folders.iter().flat_map(NamespaceDir::files).collect::<Vec<_>>());
        for folder in folders.iter().rev() {
            folder.remove_all();
        }
    }

    /// The names of every namespace in the folder.
    pub fn list(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::os(format!("listing {}", self.dir.display()), "host", e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .filter(|entry| is_namespace(&entry.path()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// The pin folder of `run_dir` (see [`NamespaceDir::pins`]).
fn bpf_pin_dir(run_dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    let name = absolute.to_string_lossy().trim_matches('/').replace('/', "-");
    Path::new(BPF_PIN_ROOT).join(name)
}

/// Mounts the BPF filesystem at /sys/fs/bpf unless it is there, as
/// Cilium's agent does (systemd mounts it at boot; a container or a
/// minimal host may not): maps pinned there outlive the agent. Agents
/// starting together take turns (a lock on /sys/fs) so that only one
/// mounts it: each mount is a filesystem of its own, and a second on top
/// would hide the first one's pins. Whether it mounted it.
pub fn mount_bpf_filesystem() -> Result<bool> {
    let host = "host";
    let mounted = || nix::sys::statfs::statfs(BPF_FS).is_ok_and(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC);
    if mounted() {
        return Ok(false);
    }
    let parent = File::open("/sys/fs").map_err(|e| Error::os("opening /sys/fs", host, e))?;
    let _turn = nix::fcntl::Flock::lock(parent, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::os("locking /sys/fs to mount the BPF filesystem", host, e.into()))?;
    if mounted() {
        return Ok(false);
    }
    mount(Some("bpf"), BPF_FS, Some("bpf"), MsFlags::empty(), None::<&str>)
        .map_err(|e| Error::os(format!("mounting the BPF filesystem at {BPF_FS}"), host, e.into()))?;
    Ok(true)
}

/// Whether `path` is a mounted network namespace.
pub fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type().0 == NSFS_MAGIC)
}

/// On the calling thread (which must be one of its own): moves it into a
/// new network namespace and bind-mounts that namespace onto `path`.
fn bind_new_namespace(path: &Path) -> nix::Result<()> {
    unshare(CloneFlags::CLONE_NEWNET)?;
    mount(Some("/proc/thread-self/ns/net"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
}

/// Runs `work` on a new thread of its own and awaits its result, so an
/// async worker is never held while a thread changes namespace.
pub async fn on_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    receiver.await.expect("namespace thread panicked")
}

/// Runs `work` on a thread of its own that has entered the namespace at
/// `path`, and awaits its result: sockets opened there stay in that
/// namespace wherever they are used afterwards.
pub async fn run_in_async<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let namespace = open(path)?;
    let label = path.display().to_string();
    on_thread(move || {
        setns(&namespace, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::os("entering namespace", &label, e.into()))?;
        Ok(work())
    })
    .await
}

/// Opens a namespace file (to setns into it or to move links into it).
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::os(format!("opening namespace {}", path.display()), "host", e))
}

/// Runs `work` on a dedicated thread that has entered the namespace at
/// `path`; the caller's thread never changes namespace.
pub fn run_in<T: Send>(path: &Path, work: impl FnOnce() -> T + Send) -> Result<T> {
    let namespace = open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&namespace, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::os("entering namespace", &path.display().to_string(), e.into()))?;
                Ok(work())
            })
            .join()
            .expect("namespace thread panicked")
    })
}

/// A `pre_exec` hook that moves a child process into `namespaces` (open
/// namespace files and their kinds, entered in order) before it execs: the
/// one way netctl starts a program inside namespaces. Only `setns` runs in
/// the child, which is async-signal-safe.
pub fn enter_in_child(
    namespaces: Vec<(File, CloneFlags)>,
) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    move || {
        for (namespace, kind) in &namespaces {
            setns(namespace, *kind)?;
        }
        Ok(())
    }
}

/// A `pre_exec` hook that moves a child into the network namespace at
/// `path` (see [`enter_in_child`]).
pub fn enter_network_in_child(
    path: &Path,
) -> Result<impl FnMut() -> std::io::Result<()> + Send + Sync + 'static> {
    Ok(enter_in_child(vec![(open(path)?, CloneFlags::CLONE_NEWNET)]))
}

/// SIGKILLs every process whose network namespace is one of the namespace
/// files `namespaces` (to empty namespaces before removing them), looking
/// again until none is left, at most [`KILL_ROUNDS`] times: a process can
/// move from one of them into another between two looks (a task its
/// agent, killed first, was starting: forked in the host's namespace, then
/// entering its sandbox's).
pub fn kill_processes_in(namespaces: &[PathBuf]) {
    let inodes: Vec<u64> = namespaces.iter().filter_map(|p| namespace_inode(p)).collect();
    for _ in 0..KILL_ROUNDS {
        if signal_processes_in(&inodes, nix::sys::signal::Signal::SIGKILL) == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The inode identifying the network namespace at `path` (a namespace file
/// or `/proc/<pid>/ns/net`), if it exists.
pub fn namespace_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The processes whose network namespace is one of `inodes` (zombies,
/// whose namespaces are gone, are not listed).
pub fn processes_in(inodes: &[u64]) -> Vec<nix::unistd::Pid> {
    if inodes.is_empty() {
        return Vec::new();
    }
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            namespace_inode(Path::new(&format!("/proc/{pid}/ns/net"))).is_some_and(|i| inodes.contains(&i))
        })
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

/// Sends `signal` to every process in the network namespaces `inodes`;
/// how many there were.
pub fn signal_processes_in(inodes: &[u64], signal: nix::sys::signal::Signal) -> usize {
    let processes = processes_in(inodes);
    for pid in &processes {
        let _ = nix::sys::signal::kill(*pid, signal);
    }
    processes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_dir_pins_its_bpf_maps_in_a_folder_of_its_own() {
        let pins = |run_dir: &str| NamespaceDir::new(Path::new(run_dir)).pins().to_path_buf();
        assert_eq!(pins("/var/run/netctl"), Path::new("/sys/fs/bpf/netctl/var-run-netctl"));
        assert_eq!(pins("/tmp/lab/node1/run/"), Path::new("/sys/fs/bpf/netctl/tmp-lab-node1-run"));
        assert_ne!(pins("/tmp/lab/node0/run"), pins("/tmp/lab/node1/run"));
    }
}
