//! The lab: N simulated hosts, each a network namespace with `eth0` on an
//! underlay bridge (192.168.10.0/24; node i is 192.168.10.(6+i), the
//! underlay namespace itself is 192.168.10.1), the manager on the first host
//! and an agent on each, every agent with its own run and state dirs.
//! Everything is removed on drop, also when a test fails.

use crate::netns;
use crate::{json_lines, netctl_bin, wait_until, Daemon};
use netctl_proto::convention::{overlay_namespace, sandbox_name, ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The underlay namespace's own address (a server "outside" the cluster).
pub const UNDERLAY_ADDRESS: &str = "192.168.10.1";
/// How much of each daemon's log a failed test prints.
const LOG_TAIL_LINES: usize = 80;
/// How often a lab's agents heartbeat unless the test says otherwise: a
/// node is judged Down after three silent intervals, and on two cores
/// shared by several labs an agent or the manager can stall for more than
/// the 1.5 s that 500 ms gave (a node judged Down has its tasks replaced,
/// which no test of something else expects).
const LAB_HEARTBEAT: &str = "1s";

/// A namespace of the lab (a host or the underlay), by its file.
pub struct LabNamespace {
    path: PathBuf,
}

impl LabNamespace {
    /// Its file.
    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// A command that runs inside it (network namespace only).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns::command_in(&self.path, program)
    }
}

/// One simulated host.
pub struct Host {
    /// Its namespace.
    pub namespace: LabNamespace,
    /// `node<i>`.
    pub hostname: String,
    /// Its underlay address.
    pub address: Ipv4Addr,
    /// The agent's run dir (namespaces under `netns/`, tasks under `tasks/`).
    pub run_dir: PathBuf,
    /// The agent's state dir (its certificate, key and the cluster CA).
    pub state_dir: PathBuf,
}

/// A running multi-host cluster.
pub struct Lab {
    hosts: Vec<Host>,
    agents: Vec<Option<Daemon>>,
    manager: Option<Daemon>,
    underlay: LabNamespace,
    dir: tempfile::TempDir,
    admin_token: String,
    join_token: String,
    agent_args: Vec<String>,
    manager_args: Vec<String>,
}

impl Lab {
    /// Builds `nodes` hosts, starts the manager on the first and an agent on
    /// each, and waits until every node is Ready.
    pub fn start(nodes: usize) -> Self {
        Self::start_with(nodes, &[])
    }

    /// As [`Lab::start`], every agent started with `agent_args` too.
    pub fn start_with(nodes: usize, agent_args: &[&str]) -> Self {
        Self::start_configured(nodes, &[], agent_args)
    }

    /// As [`Lab::start`], the manager started with `manager_args` and every
    /// agent with `agent_args` too.
    pub fn start_configured(nodes: usize, manager_args: &[&str], agent_args: &[&str]) -> Self {
        Self::start_joined(nodes, nodes, manager_args, agent_args)
    }

    /// Builds `hosts` hosts but starts agents only on the first `joined`
    /// (the others join when [`Lab::start_agent`] starts theirs).
    pub fn start_some(hosts: usize, joined: usize) -> Self {
        Self::start_joined(hosts, joined, &[], &[])
    }

    fn start_joined(nodes: usize, joined: usize, manager_args: &[&str], agent_args: &[&str]) -> Self {
        let dir = tempfile::Builder::new().prefix("netctl-lab-").tempdir().expect("tempdir");
        // The hosts are built by the lab users run (`netctl lab up`), in
        // this lab's own folder.
        let namespaces = netlib::NamespaceDir::new(dir.path());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let built = runtime.block_on(netctl::lab::build_hosts(&namespaces, nodes));
        if let Err(err) = built {
            namespaces.remove_all();
            panic!("building the lab's hosts: {err:#}");
        }
        let underlay = LabNamespace { path: namespaces.path(netctl::lab::UNDERLAY) };
        let hosts: Vec<Host> = (0..nodes)
            .map(|i| {
                let host_dir = dir.path().join(format!("node{i}"));
                Host {
                    namespace: LabNamespace { path: namespaces.path(&netctl::lab::host_namespace(i)) },
                    hostname: format!("node{i}"),
                    address: netctl::lab::host_address(i),
                    run_dir: host_dir.join("run"),
                    state_dir: host_dir.join("state"),
                }
            })
            .collect();
        let mut lab = Self {
            agents: (0..nodes).map(|_| None).collect(),
            hosts,
            manager: None,
            underlay,
            dir,
            admin_token: String::new(),
            join_token: String::new(),
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            manager_args: manager_args.iter().map(|a| a.to_string()).collect(),
        };
        lab.start_manager();
        for i in 0..joined {
            lab.start_agent(i);
        }
        let ready = wait_until(Duration::from_secs(30), || {
            lab.nodes().iter().filter(|n| n["Status"] == "Ready").count() == joined
        });
        assert!(ready, "nodes not Ready: {:?}", lab.nodes());
        lab
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The underlay namespace (its address is [`UNDERLAY_ADDRESS`]).
    pub fn underlay(&self) -> &LabNamespace {
        &self.underlay
    }

    /// The manager's address as agents and clients are given it.
    pub fn manager_url(&self) -> String {
        format!("http://{}:4243", self.hosts[0].address)
    }

    fn start_manager(&mut self) {
        let data_dir = self.dir.path().join("manager");
        let mut command = self.hosts[0].namespace.command(netctl_bin());
        command.args(["manager", "--data-dir"]).arg(&data_dir);
        if !self.manager_args.iter().any(|a| a == "--dispatcher-heartbeat") {
            command.args(["--dispatcher-heartbeat", LAB_HEARTBEAT]);
        }
        command.args(&self.manager_args);
        self.manager = Some(Daemon::spawn(command, self.dir.path().join("manager.log"), None));
        let token =
            |name: &str| std::fs::read_to_string(data_dir.join(name)).ok().map(|t| t.trim().to_string());
        assert!(wait_until(Duration::from_secs(20), || token(JOIN_TOKEN_FILE).is_some()
            && token(ADMIN_TOKEN_FILE).is_some()));
        self.join_token = token(JOIN_TOKEN_FILE).unwrap_or_default();
        self.admin_token = token(ADMIN_TOKEN_FILE).unwrap_or_default();
        assert!(wait_until(Duration::from_secs(20), || self.netctl(&["node", "ls"]).status.success()));
    }

    /// Starts (again) the agent of host `i`.
    pub fn start_agent(&mut self, i: usize) {
        let host = &self.hosts[i];
        let mut command = host.namespace.command(netctl_bin());
        command
            .args(["agent", "--manager", &self.manager_url(), "--join-token-file"])
            .arg(self.dir.path().join("manager").join(JOIN_TOKEN_FILE))
            .args(["--advertise-addr", &host.address.to_string(), "--hostname", &host.hostname])
            .arg("--run-dir")
            .arg(&host.run_dir)
            .arg("--state-dir")
            .arg(&host.state_dir)
            .args(&self.agent_args);
        let log = self.dir.path().join(format!("agent-{i}-{}.log", crate::unique_suffix()));
        self.agents[i] = Some(Daemon::spawn(command, log, None));
    }

    /// Stops the agent of host `i` with `signal` (its tasks keep running);
    /// its exit code.
    pub fn stop_agent(&mut self, i: usize, signal: Signal) -> Option<i32> {
        self.agents[i].take().and_then(|mut agent| agent.stop(signal))
    }

    /// What the agent of host `i` logged.
    pub fn agent_log(&self, i: usize) -> String {
        self.agents[i].as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Runs `netctl ARGS` on the manager's host.
    pub fn netctl(&self, args: &[&str]) -> Output {
        self.netctl_on(0, args)
    }

    /// Runs `netctl ARGS` on host `i`, with that host's run dir.
    pub fn netctl_on(&self, i: usize, args: &[&str]) -> Output {
        let mut command = self.hosts[i].namespace.command(netctl_bin());
        self.client_env(&mut command);
        command.args(args).env("NETCTL_RUN_DIR", &self.hosts[i].run_dir).output().expect("run netctl")
    }

    /// Points a `netctl` client command at this lab's manager.
    pub fn client_env(&self, command: &mut Command) {
        command.env("NETCTL_MANAGER", self.manager_url()).env("NETCTL_TOKEN", &self.admin_token);
    }

    /// The agent of host `i`'s process ID.
    pub fn agent_pid(&self, i: usize) -> i32 {
        self.agents[i].as_ref().expect("agent is running").pid()
    }

    /// The cluster's join and admin tokens.
    pub fn tokens(&self) -> [&str; 2] {
        [&self.join_token, &self.admin_token]
    }

    /// What the manager logged.
    pub fn manager_log(&self) -> String {
        self.manager.as_ref().map(Daemon::log).unwrap_or_default()
    }

    /// Prints the end of every daemon's log, for a failed test's report.
    fn print_log_tails(&self) {
        let daemons = self.manager.iter().map(|m| ("manager".to_string(), m));
        let agents =
            self.agents.iter().enumerate().filter_map(|(i, a)| Some((format!("agent {i}"), a.as_ref()?)));
        for (name, daemon) in daemons.chain(agents) {
            let log = daemon.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            eprintln!("--- the last {LOG_TAIL_LINES} lines of the {name}'s log ---\n{tail}");
        }
    }

    /// The manager's process ID.
    pub fn manager_pid(&self) -> i32 {
        self.manager.as_ref().expect("manager is running").pid()
    }

    /// Runs `netctl ARGS`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.netctl(args);
        assert!(output.status.success(), "netctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `node ls` as JSON values.
    pub fn nodes(&self) -> Vec<Value> {
        let output = self.netctl(&["node", "ls", "--format", "json"]);
        json_lines(&String::from_utf8_lossy(&output.stdout))
    }

    /// `service ps SERVICE` as JSON values.
    pub fn tasks(&self, service: &str) -> Vec<Value> {
        json_lines(&self.ok(&["service", "ps", "--format", "json", service]))
    }

    /// The tasks of `service` that should run and do.
    pub fn running_tasks(&self, service: &str) -> Vec<Value> {
        self.tasks(service)
            .into_iter()
            .filter(|t| t["DesiredState"] == "running" && t["CurrentState"] == "running")
            .collect()
    }

    /// Waits until `service` has exactly `count` running tasks.
    pub fn wait_running(&self, service: &str, count: usize) -> Vec<Value> {
        let settled = wait_until(Duration::from_secs(60), || self.running_tasks(service).len() == count);
        assert!(settled, "{service} did not reach {count} running tasks: {:#?}", self.tasks(service));
        self.running_tasks(service)
    }

    /// `netctl network create --subnet SUBNET NAME`; returns the network ID.
    pub fn create_network(&self, name: &str, subnet: &str) -> String {
        self.ok(&["network", "create", "-d", "overlay", "--subnet", subnet, name]).trim().to_string()
    }

    /// `netctl service create --replicas N --network NET --name NAME CMD...`;
    /// returns the service ID.
    pub fn create_service(&self, name: &str, replicas: usize, network: &str, command: &[&str]) -> String {
        let replicas = replicas.to_string();
        let mut args =
            vec!["service", "create", "--replicas", &replicas, "--network", network, "--name", name];
        args.extend_from_slice(command);
        self.ok(&args).trim().to_string()
    }

    /// `netctl service create --mode global --network NET --name NAME CMD...`;
    /// returns the service ID.
    pub fn create_global_service(&self, name: &str, network: &str, command: &[&str]) -> String {
        let mut args = vec!["service", "create", "--mode", "global", "--network", network, "--name", name];
        args.extend_from_slice(command);
        self.ok(&args).trim().to_string()
    }

    /// The full ID of network `name`.
    pub fn network_id(&self, name: &str) -> String {
        let inspected: Value = serde_json::from_str(&self.ok(&["network", "inspect", name])).expect("JSON");
        inspected[0]["Id"].as_str().expect("network ID").to_string()
    }

    /// Whether one ping from `task` to `address` is answered.
    pub fn pings(&self, task: &Value, address: &str) -> bool {
        self.in_task(task, "ping", &["-c", "1", "-W", "1", address]).status.success()
    }

    /// The host a task (a `service ps` JSON value) runs on.
    pub fn host_of(&self, task: &Value) -> usize {
        self.hosts.iter().position(|h| task["Node"] == h.hostname.as_str()).expect("task on a lab host")
    }

    /// The sandbox namespace file of a task.
    pub fn sandbox_path(&self, task: &Value) -> PathBuf {
        let id = task["ID"].as_str().expect("task ID");
        netlib::NamespaceDir::new(&self.hosts[self.host_of(task)].run_dir).path(sandbox_name(id))
    }

    /// The overlay namespace file of a network on host `i`.
    pub fn overlay_path(&self, i: usize, network_id: &str) -> PathBuf {
        netlib::NamespaceDir::new(&self.hosts[i].run_dir).path(&overlay_namespace(network_id))
    }

    /// Runs a command inside a task's sandbox.
    pub fn in_task(&self, task: &Value, program: &str, args: &[&str]) -> Output {
        netns::command_in(&self.sandbox_path(task), program).args(args).output().expect("run in sandbox")
    }

    /// Runs a command inside any namespace file.
    pub fn in_namespace(&self, path: &Path, program: &str, args: &[&str]) -> Output {
        netns::command_in(path, program).args(args).output().expect("run in namespace")
    }

    /// Runs a command on host `i`.
    pub fn on_host(&self, i: usize, program: &str, args: &[&str]) -> Output {
        self.hosts[i].namespace.command(program).args(args).output().expect("run on host")
    }

    /// The namespaces the agent of host `i` made.
    pub fn agent_namespaces(&self, i: usize) -> Vec<String> {
        let mut names: Vec<String> = netns::agent_namespaces(&self.hosts[i].run_dir)
            .iter()
            .filter(|p| netlib_is_namespace(p))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// A command on host `i`, to be spawned by the caller.
    pub fn host_command(&self, i: usize, program: &str) -> Command {
        self.hosts[i].namespace.command(program)
    }
}

/// A task's address in its `index`th network (a `service ps` JSON value).
pub fn endpoint_address(task: &Value, index: usize) -> String {
    task["Endpoints"][index]["Address"].as_str().expect("endpoint address").to_string()
}

/// Whether `path` is a mounted namespace (not a leftover file).
fn netlib_is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type().0 == 0x6e73_6673)
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
        }
        for agent in self.agents.iter_mut() {
            if let Some(mut agent) = agent.take() {
                agent.stop(Signal::SIGKILL);
            }
        }
        if let Some(mut manager) = self.manager.take() {
            manager.stop(Signal::SIGKILL);
        }
        // The hosts and the underlay, and the agents' namespaces, emptied
        // together as `netctl lab down` does.
        let mut folders = vec![netlib::NamespaceDir::new(self.dir.path())];
        folders.extend(self.hosts.iter().map(|host| netlib::NamespaceDir::new(&host.run_dir)));
        netlib::NamespaceDir::remove_all_together(&folders);
    }
}
