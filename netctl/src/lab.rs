//! The lab: a cluster of N simulated hosts on this machine, each a network
//! namespace with `eth0` on an underlay bridge (192.168.10.0/24, host i at
//! 192.168.10.(6+i), the underlay itself at .1), the manager on the first host
//! (or, with `--managers M` > 1, an etcd member and a manager on each of the
//! first M hosts) and an agent on each. Everything lives under `<lab-root>/<name>/`: the
//! namespaces (bind-mounted in `netns/`), each host's run and state dirs, the
//! logs. Nothing outside the lab's own namespaces is touched, and `down`
//! finds everything from the folder alone, also after a crash.

use anyhow::{anyhow, bail, Context};
use netctl_proto::convention::{ADMIN_TOKEN_FILE, JOIN_TOKEN_FILE};
use netlib::{netns, NamespaceDir, Netlink};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The underlay namespace's name.
pub const UNDERLAY: &str = "underlay";
/// The underlay bridge inside it.
const UNDERLAY_BRIDGE: &str = "ul";
/// The underlay's own address.
pub const UNDERLAY_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
/// The manager's gRPC port in the lab.
const MANAGER_PORT: u16 = 4243;
/// etcd's client and peer ports on the lab hosts that run it.
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;

/// One lab, by its folder.
pub struct Lab {
    name: String,
    dir: PathBuf,
}

/// Where labs live: `$NETCTL_LAB_ROOT` or /var/run/netctl-lab.
pub fn root() -> PathBuf {
    std::env::var_os("NETCTL_LAB_ROOT").map_or_else(|| PathBuf::from("/var/run/netctl-lab"), PathBuf::from)
}

/// Host `node`'s address on the underlay: 192.168.10.(6 + node).
pub fn host_address(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 10, 6 + node as u8)
}

/// The namespace of host `node`: `node<i>`.
pub fn host_namespace(node: usize) -> String {
    format!("node{node}")
}

/// Builds a lab's hosts in `namespaces` (a folder of bind-mounted network
/// namespaces): the underlay namespace with a bridge at 192.168.10.1/24, and
/// `nodes` host namespaces, each with `eth0` on that bridge at
/// [`host_address`]. Used by `netctl lab up` and by the end-to-end tests.
pub async fn build_hosts(namespaces: &NamespaceDir, nodes: usize) -> anyhow::Result<()> {
    namespaces.prepare()?;
    let underlay_path = namespaces.create(UNDERLAY)?;
    let underlay = Netlink::in_namespace(UNDERLAY, &underlay_path)?;
    let bridge = underlay.create_bridge(UNDERLAY_BRIDGE, 1500, "netctl-lab").await?;
    underlay.add_address(&bridge, UNDERLAY_ADDRESS, 24).await?;
    underlay.set_up(&bridge).await?;
    underlay.set_up(&underlay.require_link("lo").await?).await?;
    // The underlay is a switch: frames crossing it skip iptables, as on
    // real hosts (br_netfilter, where the kernel has it, is on in every new
    // namespace).
    if netlib::sysctl::exists(netlib::sysctl::BRIDGE_NETFILTER) {
        let target = Some((UNDERLAY, underlay_path.as_path()));
        netlib::sysctl::write(target, netlib::sysctl::BRIDGE_NETFILTER, "0").await?;
    }
    for node in 0..nodes {
        let name = host_namespace(node);
        let path = namespaces.create(&name)?;
        let host = Netlink::in_namespace(&name, &path)?;
        let port = format!("n{node}");
        underlay.create_veth(&port, "eth0", &netns::open(&path)?, 1500, None).await?;
        let port = underlay.require_link(&port).await?;
        underlay.set_master(&port, &bridge).await?;
        underlay.set_up(&port).await?;
        let eth0 = host.require_link("eth0").await?;
        host.add_address(&eth0, host_address(node), 24).await?;
        host.set_up(&eth0).await?;
        host.set_up(&host.require_link("lo").await?).await?;
    }
    Ok(())
}

/// The names of the labs that exist.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("nodes").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

impl Lab {
    /// The lab called `name` (which may not exist yet).
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let valid =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            bail!("invalid lab name {name:?}: use letters, digits, - and _");
        }
        Ok(Self { name: name.to_string(), dir: root().join(name) })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn namespaces(&self) -> NamespaceDir {
        NamespaceDir::new(&self.dir)
    }

    fn host_dir(&self, node: usize) -> PathBuf {
        self.dir.join(host_namespace(node))
    }

    /// Host `node`'s address on the underlay.
    pub fn address(node: usize) -> Ipv4Addr {
        host_address(node)
    }

    /// The managers' addresses, as clients in the lab reach them
    /// (comma-separated when there are several).
    pub fn manager_url(&self) -> String {
        let urls: Vec<String> = (0..self.manager_count())
            .map(|m| format!("http://{}:{MANAGER_PORT}", Self::address(m)))
            .collect();
        urls.join(",")
    }

    /// How many hosts run a manager (and, when more than one, etcd).
    pub fn manager_count(&self) -> usize {
        std::fs::read_to_string(self.dir.join("managers"))
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(1)
    }

    /// The client URLs of the lab's etcd members (none with one manager).
    pub fn etcd_endpoints(&self) -> Vec<String> {
        match self.manager_count() {
            1 => Vec::new(),
            count => (0..count).map(|m| format!("http://{}:{ETCD_CLIENT_PORT}", Self::address(m))).collect(),
        }
    }

    /// How many hosts the lab has (0 when it does not exist).
    pub fn node_count(&self) -> usize {
        std::fs::read_to_string(self.dir.join("nodes")).ok().and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    /// The admin token of the lab's manager.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.host_dir(0).join("manager").join(ADMIN_TOKEN_FILE);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    }

    /// Whether every daemon of the lab runs.
    pub fn healthy(&self) -> bool {
        let count = self.node_count();
        let etcd = self.etcd_endpoints().len();
        count > 0
            && (0..self.manager_count()).all(|node| self.daemon_alive(&self.manager_pid_file(node)))
            && (0..etcd).all(|node| self.daemon_alive(&self.etcd_pid_file(node)))
            && (0..count).all(|node| self.daemon_alive(&self.agent_pid_file(node)))
    }

    /// The pid file of the manager on host `node`.
    pub fn manager_pid_file(&self, node: usize) -> PathBuf {
        self.host_dir(node).join("manager.pid")
    }

    /// The pid file of the etcd member on host `node`.
    pub fn etcd_pid_file(&self, node: usize) -> PathBuf {
        self.host_dir(node).join("etcd.pid")
    }

    fn agent_pid_file(&self, node: usize) -> PathBuf {
        self.host_dir(node).join("agent.pid")
    }

    fn daemon_alive(&self, pid_file: &Path) -> bool {
        let pid = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok());
        pid.is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
        })
    }

    /// Builds the lab with `nodes` hosts and starts its daemons. An existing
    /// lab of that shape keeps its state: daemons that died (a manager
    /// killed to watch a failover) are started again; anything else under
    /// the name is torn down first.
    pub async fn up(&self, nodes: usize, managers: usize) -> anyhow::Result<LabUp> {
        if !(1..=200).contains(&nodes) {
            bail!("--nodes {nodes}: a lab has 1 to 200 hosts");
        }
        if !(1..=nodes.min(7)).contains(&managers) {
            bail!("--managers {managers}: a lab of {nodes} hosts runs 1 to {} managers", nodes.min(7));
        }
        if managers > 1 && !program_exists("etcd") {
            bail!("--managers {managers} runs etcd on the lab hosts: install Debian's etcd-server package");
        }
        if self.node_count() == nodes && self.manager_count() == managers && self.hosts_exist() {
            let restarted = self.restart_dead_daemons()?;
            return Ok(if restarted.is_empty() { LabUp::AlreadyUp } else { LabUp::Restarted(restarted) });
        }
        self.down()?;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::write(self.dir.join("nodes"), format!("{nodes}\n"))?;
        std::fs::write(self.dir.join("managers"), format!("{managers}\n"))?;
        let result = self.build(nodes).await;
        if result.is_err() {
            let _ = self.down();
        }
        result.map(|()| LabUp::Built)
    }

    /// Whether every host namespace of the lab is still there.
    fn hosts_exist(&self) -> bool {
        let namespaces = self.namespaces();
        (0..self.node_count()).all(|node| namespaces.path(&host_namespace(node)).exists())
    }

    /// Starts again the etcd members, managers and agents that are not
    /// running, in that order; what was started.
    fn restart_dead_daemons(&self) -> anyhow::Result<Vec<String>> {
        let mut restarted = Vec::new();
        for node in 0..self.etcd_endpoints().len() {
            if !self.daemon_alive(&self.etcd_pid_file(node)) {
                self.start_etcd(node)?;
                restarted.push(format!("etcd on node{node}"));
            }
        }
        if !restarted.is_empty() {
            self.wait_for_etcd(Duration::from_secs(30))?;
        }
        for node in 0..self.manager_count() {
            if !self.daemon_alive(&self.manager_pid_file(node)) {
                self.start_manager(node)?;
                restarted.push(format!("manager on node{node}"));
            }
        }
        let token_file = self.host_dir(0).join("manager").join(JOIN_TOKEN_FILE);
        for node in 0..self.node_count() {
            if !self.daemon_alive(&self.agent_pid_file(node)) {
                self.start_agent(node, &token_file)?;
                restarted.push(format!("agent on node{node}"));
            }
        }
        Ok(restarted)
    }

    async fn build(&self, nodes: usize) -> anyhow::Result<()> {
        build_hosts(&self.namespaces(), nodes).await?;
        for node in 0..self.etcd_endpoints().len() {
            self.start_etcd(node)?;
        }
        self.wait_for_etcd(Duration::from_secs(30))?;
        for node in 0..self.manager_count() {
            self.start_manager(node)?;
        }
        let token_file = self.host_dir(0).join("manager").join(JOIN_TOKEN_FILE);
        wait_for_file(&token_file, Duration::from_secs(20))?;
        for node in 0..nodes {
            self.start_agent(node, &token_file)?;
        }
        Ok(())
    }

    /// A command that runs inside host `node`'s namespace.
    pub fn command_on(&self, node: usize, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let path = self.namespaces().path(&host_namespace(node));
        let namespace = std::fs::File::open(&path)
            .with_context(|| format!("lab {} has no host node{node}", self.name))?;
        let mut command = Command::new(program);
        // SAFETY: the hook only calls setns (async-signal-safe).
        unsafe {
            command.pre_exec(netlib::netns::enter_in_child(vec![(
                namespace,
                nix::sched::CloneFlags::CLONE_NEWNET,
            )]));
        }
        command
            .env("NETCTL_MANAGER", self.manager_url())
            .env("NETCTL_RUN_DIR", self.host_dir(node).join("run"));
        if let Ok(token) = self.admin_token() {
            command.env("NETCTL_TOKEN", token);
        }
        if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", dir.display()));
        }
        Ok(command)
    }

    /// Starts `netctl ARGS` on host `node` in the background, in its own
    /// session, with its output in `<log>` and its pid in `<pid_file>`.
    fn spawn_daemon(&self, node: usize, args: &[String], log: &Path, pid_file: &Path) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the netctl binary")?;
        self.spawn_program(node, exe, args, log, pid_file)
    }

    /// Starts `program ARGS` on host `node` as [`Self::spawn_daemon`] does.
    fn spawn_program(
        &self,
        node: usize,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[String],
        log: &Path,
        pid_file: &Path,
    ) -> anyhow::Result<()> {
        let output = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = self.command_on(node, program)?;
        command.args(args).stdin(Stdio::null()).stdout(output.try_clone()?).stderr(output);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let child = command.spawn().with_context(|| format!("starting {}", args.join(" ")))?;
        std::fs::write(pid_file, format!("{}\n", child.id()))?;
        Ok(())
    }

    /// Starts the manager of host `node`: on sled with one manager, on the
    /// lab's etcd with several.
    fn start_manager(&self, node: usize) -> anyhow::Result<()> {
        let host = self.host_dir(node);
        std::fs::create_dir_all(&host)?;
        let mut args: Vec<String> = [
            "manager",
            "--listen",
            &format!("0.0.0.0:{MANAGER_PORT}"),
            "--data-dir",
            &host.join("manager").display().to_string(),
            "--dispatcher-heartbeat",
            "1s",
            "--hostname",
            &format!("node{node}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let etcd = self.etcd_endpoints();
        if !etcd.is_empty() {
            args.extend(["--etcd-endpoints".to_string(), etcd.join(",")]);
        }
        self.spawn_daemon(node, &args, &host.join("manager.log"), &self.manager_pid_file(node))
    }

    /// Waits until every etcd member says it is healthy (the cluster has a
    /// leader): a manager refuses to start on an etcd it cannot reach.
    fn wait_for_etcd(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        for endpoint in self.etcd_endpoints() {
            loop {
                let health = self
                    .command_on(0, "curl")?
                    .args(["-sf", "-m", "1", &format!("{endpoint}/health")])
                    .output();
                if health.is_ok_and(|h| String::from_utf8_lossy(&h.stdout).contains("\"true\"")) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "etcd at {endpoint} was not healthy within {timeout:?}: see {}",
                        self.dir.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Starts the etcd member of host `node` (its data in the host's
    /// folder; transactions may hold as many operations as a large
    /// orchestrator pass writes).
    fn start_etcd(&self, node: usize) -> anyhow::Result<()> {
        let host = self.host_dir(node);
        std::fs::create_dir_all(&host)?;
        let address = Self::address(node);
        let members: Vec<String> = (0..self.manager_count())
            .map(|m| format!("node{m}=http://{}:{ETCD_PEER_PORT}", Self::address(m)))
            .collect();
        let client = format!("http://{address}:{ETCD_CLIENT_PORT}");
        let peer = format!("http://{address}:{ETCD_PEER_PORT}");
        let args: Vec<String> = [
            "--name",
            &format!("node{node}"),
            "--data-dir",
            &host.join("etcd").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &members.join(","),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &format!("netctl-lab-{}", self.name),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.spawn_program(node, "etcd", &args, &host.join("etcd.log"), &self.etcd_pid_file(node))
    }

    fn start_agent(&self, node: usize, join_token_file: &Path) -> anyhow::Result<()> {
        let host = self.host_dir(node);
        std::fs::create_dir_all(&host)?;
        let args: Vec<String> = [
            "agent",
            "--manager",
            &self.manager_url(),
            "--join-token-file",
            &join_token_file.display().to_string(),
            "--advertise-addr",
            &Self::address(node).to_string(),
            "--hostname",
            &format!("node{node}"),
            "--run-dir",
            &host.join("run").display().to_string(),
            "--state-dir",
            &host.join("state").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.spawn_daemon(node, &args, &host.join("agent.log"), &self.agent_pid_file(node))
    }

    /// Removes everything the lab made: its processes (whatever their
    /// namespace), the agents' namespaces, the hosts and the underlay, and
    /// the folder. Works from the folder alone, also after a crash.
    pub fn down(&self) -> anyhow::Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        // The hosts' namespaces and every agent's, emptied together first so
        // that no agent rebuilds anything while the rest goes.
        let mut folders = vec![self.namespaces()];
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            folders.push(NamespaceDir::new(&entry.path().join("run")));
        }
        NamespaceDir::remove_all_together(&folders);
        std::fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

/// What `lab up` did.
#[derive(Debug, PartialEq, Eq)]
pub enum LabUp {
    /// Built the lab.
    Built,
    /// Found it running.
    AlreadyUp,
    /// Started these daemons again (e.g. "manager on node1").
    Restarted(Vec<String>),
}

/// Whether `program` is on the PATH.
fn program_exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The trimmed content of `path` once it exists and is not empty.
fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("{} did not appear within {timeout:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
