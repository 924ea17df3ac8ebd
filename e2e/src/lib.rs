//! Test harness that runs the real `netctl` binary. [`ControlPlane`]: a manager
//! and agents on the loopback of one private network namespace, for the
//! control plane. [`lab::Lab`]: several hosts made of namespaces on an
//! underlay bridge, for the data plane. Every process is killed, every
//! namespace and file removed on drop, also when a test fails; nothing runs
//! in the root network namespace.

pub mod fleet;
pub mod lab;
pub mod netns;

use netctl_proto::convention::{ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE};
use netns::TestNamespace;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `netctl` binary under test: `$NETCTL_BIN`, or the one cargo built next
/// to the test executable.
pub fn netctl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("NETCTL_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let bin = profile_dir.join("netctl");
    assert!(bin.exists(), "{} is missing: run `cargo build` first (make test does)", bin.display());
    bin
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) when dropped, with its stderr in a file.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `command` with stderr to `log` and stdout to `stdout` (or nowhere).
    pub fn spawn(mut command: Command, log: PathBuf, stdout: Option<PathBuf>) -> Self {
        let stderr = std::fs::File::create(&log).expect("log file");
        let stdout = match stdout {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("stdout file")),
            None => Stdio::null(),
        };
        let child = command.stdout(stdout).stderr(stderr).spawn().expect("spawn netctl");
        Self { child, log }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if the process has ended.
    pub fn try_exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().expect("wait").map(|s| s.code().unwrap_or(-1))
    }

    /// The process ID.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` and waits for the process to end; its exit code
    /// (`None` when a signal ended it).
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        self.child.wait().ok().and_then(|status| status.code())
    }
}

impl Daemon {
    /// Waits until this agent has connected with its node certificate twice
    /// (it reconnected after a manager restart) and asserts it joined with
    /// the join token only once: no rejoin, the same node.
    pub fn assert_reconnected_with_its_certificate(&self) {
        let connected = wait_until(Duration::from_secs(15), || {
            self.log().matches("connected with the node certificate").count() >= 2
        });
        assert!(connected, "the agent did not reconnect: {}", self.log());
        assert_eq!(self.log().matches("with the join token").count(), 1, "a rejoin: {}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `token` with its last character changed: the same kind and CA digest, a
/// wrong secret (a last '0' becomes '1', anything else '0').
pub fn with_wrong_secret(token: &str) -> String {
    let mut wrong = token.to_string();
    let last = wrong.pop();
    wrong.push(if last == Some('0') { '1' } else { '0' });
    wrong
}

/// A manager on loopback with its data dir, plus any agents started on it,
/// all inside one private network namespace.
pub struct ControlPlane {
    namespace: TestNamespace,
    dir: tempfile::TempDir,
    port: u16,
    manager_args: Vec<String>,
    manager: Option<Daemon>,
    /// etcd, when the manager keeps its state there.
    etcd: Option<Daemon>,
    starts: usize,
}

impl ControlPlane {
    /// Starts a manager with extra `netctl manager` flags.
    pub fn start(extra_manager_args: &[&str]) -> Self {
        let mut cluster = Self::prepare(extra_manager_args);
        cluster.start_manager();
        cluster
    }

    /// Starts etcd (Debian's etcd-server: one member on 127.0.0.1:2379 of
    /// the cluster's namespace, its data in the cluster's folder) and a
    /// manager keeping its state there.
    pub fn start_on_etcd(extra_manager_args: &[&str]) -> Self {
        let mut cluster = Self::prepare(extra_manager_args);
        let endpoint = "http://127.0.0.1:2379";
        cluster.manager_args.extend(["--etcd-endpoints".to_string(), endpoint.to_string()]);
        let mut etcd = cluster.namespace.command("etcd");
        etcd.arg("--data-dir")
            .arg(cluster.dir.path().join("etcd"))
            .args(["--listen-client-urls", endpoint, "--advertise-client-urls", endpoint])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"]);
        cluster.etcd = Some(Daemon::spawn(etcd, cluster.dir.path().join("etcd.log"), None));
        let healthy = wait_until(Duration::from_secs(20), || {
            let health =
                cluster.command("curl").args(["-sf", "-m", "1", &format!("{endpoint}/health")]).output();
            health.is_ok_and(|h| String::from_utf8_lossy(&h.stdout).contains("\"true\""))
        });
        assert!(
            healthy,
            "etcd did not become healthy: {}",
            cluster.etcd.as_ref().map(Daemon::log).unwrap_or_default()
        );
        cluster.start_manager();
        cluster
    }

    fn prepare(extra_manager_args: &[&str]) -> Self {
        Self {
            namespace: TestNamespace::new(&netns::unique_prefix()),
            dir: tempfile::Builder::new().prefix("netctl-e2e-").tempdir().expect("tempdir"),
            port: 4243,
            manager_args: extra_manager_args.iter().map(|s| s.to_string()).collect(),
            manager: None,
            etcd: None,
            starts: 0,
        }
    }

    /// The manager's gRPC address.
    pub fn manager_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The cluster's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("manager")
    }

    /// The admin token written by the manager.
    pub fn admin_token(&self) -> String {
        read_token(&self.data_dir().join(ADMIN_TOKEN_FILE))
    }

    /// The join token written by the manager.
    pub fn join_token(&self) -> String {
        read_token(&self.data_dir().join(JOIN_TOKEN_FILE))
    }

    /// The running manager process.
    pub fn manager(&mut self) -> &mut Daemon {
        self.manager.as_mut().expect("manager is running")
    }

    /// The running manager's process ID.
    pub fn manager_pid(&self) -> i32 {
        self.manager.as_ref().expect("manager is running").pid()
    }

    /// What the manager printed on stdout at its latest start.
    pub fn manager_stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("manager-{}.out", self.starts)))
            .unwrap_or_default()
    }

    /// Starts the manager (again) on the same port and data dir and waits
    /// until it accepts connections.
    pub fn start_manager(&mut self) {
        self.starts += 1;
        let mut command = self.namespace.command(netctl_bin());
        command
            .arg("manager")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.manager_args);
        let log = self.dir.path().join(format!("manager-{}.log", self.starts));
        let stdout = self.dir.path().join(format!("manager-{}.out", self.starts));
        self.manager = Some(Daemon::spawn(command, log, Some(stdout)));
        let token_file = self.data_dir().join(ADMIN_TOKEN_FILE);
        let up = wait_until(Duration::from_secs(20), || {
            token_file.exists()
                && self.netctl_with_token(Some(&self.admin_token()), &["node", "ls"]).status.success()
        });
        let log = self.manager().log();
        assert!(up, "manager did not answer on port {}: {log}", self.port);
    }

    /// Kills the manager with `signal` and waits for it to end.
    pub fn stop_manager(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut manager) = self.manager.take() {
            manager.stop(signal);
        }
    }

    /// Starts an agent named `hostname` that joins with `join_token`.
    pub fn start_agent(&self, hostname: &str, join_token: &str) -> Daemon {
        let state_dir = self.dir.path().join(format!("agent-{hostname}"));
        let mut command = self.namespace.command(netctl_bin());
        command
            .args(["agent", "--manager", &self.manager_url(), "--join-token", join_token])
            .args(["--advertise-addr", "127.0.0.1", "--hostname", hostname])
            .arg("--run-dir")
            .arg(state_dir.join("run"))
            .arg("--state-dir")
            .arg(&state_dir);
        let log = self.dir.path().join(format!("agent-{hostname}-{}.log", unique_suffix()));
        Daemon::spawn(command, log, None)
    }

    /// Runs `netctl ARGS` as a client of this cluster (admin token set).
    pub fn netctl(&self, args: &[&str]) -> Output {
        self.netctl_with_token(Some(&self.admin_token()), args)
    }

    /// Runs `netctl ARGS` with the given token, or none at all.
    pub fn netctl_with_token(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = self.namespace.command(netctl_bin());
        command.args(args).env("NETCTL_MANAGER", self.manager_url()).env_remove("NETCTL_TOKEN");
        if let Some(token) = token {
            command.env("NETCTL_TOKEN", token);
        }
        command.output().expect("run netctl")
    }

    /// Runs `netctl ARGS`, asserts success, returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.netctl(args);
        assert!(
            output.status.success(),
            "netctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// `netctl network ls --format json`, one value per network.
    pub fn networks(&self) -> Vec<serde_json::Value> {
        json_lines(&self.ok(&["network", "ls", "--format", "json"]))
    }

    /// `netctl node ls --format json`, one value per node.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        json_lines(&self.ok(&["node", "ls", "--format", "json"]))
    }
}

impl ControlPlane {
    /// Runs `work` on a thread inside the cluster's namespace (for clients
    /// that are not processes, such as benchmarks).
    pub fn run_inside<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.namespace.path()).expect("cluster namespace");
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("entering the namespace");
                    work()
                })
                .join()
                .expect("thread inside the cluster namespace")
        })
    }

    /// A command that runs inside the cluster's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.namespace.command(program)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_manager(nix::sys::signal::Signal::SIGKILL);
        netns::kill_processes_in(&[self.namespace.path()]);
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with("agent-") {
                netns::clean_run_dir(&entry.path().join("run"));
            }
        }
    }
}

/// Parses one JSON value per non-empty line.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn read_token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
        .trim()
        .to_string()
}

/// Nanoseconds since the epoch, to name files uniquely.
pub fn unique_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// Asserts that a `netctl` run failed with exit code 1 and `needle` in its
/// stderr.
pub fn assert_refused(output: &Output, args: &[&str], needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "netctl {args:?} should fail: {stderr}");
    assert!(stderr.contains(needle), "netctl {args:?}: expected {needle:?} in {stderr:?}");
}

/// Writes a benchmark report (with the machine's CPU count and the time) to
/// `path` as pretty JSON, and prints it.
pub fn write_report(path: &str, mut report: serde_json::Value) {
    report["machine"] =
        serde_json::json!({ "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()) });
    report["unix_time"] = serde_json::json!(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()));
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).expect("results dir");
    }
    let text = serde_json::to_string_pretty(&report).expect("JSON") + "\n";
    std::fs::write(path, &text).expect("write results");
    print!("{text}");
    println!("written to {path}");
}

/// The managers table of `netctl cluster info`: (address, status) of each.
pub fn managers_in(cluster_info: &str) -> Vec<(String, String)> {
    cluster_info
        .lines()
        .skip_while(|line| !line.starts_with("Managers:"))
        .skip(2)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((fields.get(2)?.to_string(), fields.last()?.to_string()))
        })
        .collect()
}
