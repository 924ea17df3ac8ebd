//! Network namespaces for tests: made with `ip netns add` under a unique
//! name, entered by child processes only (setns in `pre_exec`), and removed
//! on drop together with every process still inside them and every namespace
//! an agent bind-mounted under a run dir.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A prefix no other test (nor another run) uses: `nct<pid><n>`.
pub fn unique_prefix() -> String {
    format!("nct{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Runs `ip ARGS`, panicking with its stderr on failure (test setup only).
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(output.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A named namespace under /var/run/netns, deleted on drop.
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Creates namespace `name` with its loopback up.
    pub fn new(name: &str) -> Self {
        ip(&["netns", "add", name]);
        let namespace = Self { name: name.to_string() };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        namespace
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace (network namespace only, so
    /// that namespace mounts stay shared with the test).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.path(), program)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        kill_processes_in(&[self.path()]);
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A command that enters the network namespace at `path` before it runs.
pub fn command_in(path: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let enter = netlib::netns::enter_network_in_child(path).unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new(program);
    // SAFETY: the hook only calls setns (async-signal-safe).
    unsafe {
        command.pre_exec(enter);
    }
    command
}

pub use netlib::netns::kill_processes_in;

/// The namespaces an agent bind-mounted under `run_dir/netns`.
pub fn agent_namespaces(run_dir: &Path) -> Vec<PathBuf> {
    netlib::NamespaceDir::new(run_dir).files()
}

/// Kills what runs in an agent's namespaces, unmounts them and the folder.
pub fn clean_run_dir(run_dir: &Path) {
    netlib::NamespaceDir::new(run_dir).remove_all();
}
