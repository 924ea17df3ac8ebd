//! The netctl agent: joins the manager, keeps the node's identity, sends
//! heartbeats, watches the node's desired state (reconnecting with back-off
//! whenever the manager goes away) and converges the kernel and the task
//! processes to it: overlay namespaces with br0 and vxlan0, sandboxes,
//! docker_gwbridge, remote endpoints.

mod apply;
mod backoff;
mod capabilities;
mod connections;
mod datapath;
mod desired;
pub mod dns;
mod failures;
mod fast_path;
mod gwbridge;
mod identity;
mod listeners;
mod logs;
pub mod mesh;
pub mod metrics;
mod model;
mod names;
mod observe;
mod plan;
mod readback;
pub mod reconcile;
mod session;
pub mod shim;
mod stale_flows;
pub mod task_files;
pub mod tasks;

use anyhow::Context;
use backoff::Backoff;
use netctl_proto::{NodeState, NodeTopology, TaskStatusReport};
use session::{Session, SessionError};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// How an agent is started (the `netctl agent` flags).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The manager's gRPC address, e.g. `http://192.168.10.6:4243`.
    pub manager: String,
    /// The token printed by the manager at cluster creation.
    pub join_token: String,
    /// This node's data-path address (VXLAN `local`).
    pub advertise_addr: IpAddr,
    /// The name this node shows in `node ls`.
    pub hostname: String,
    /// Where namespaces are bind-mounted.
    pub run_dir: PathBuf,
    /// Where the node's certificate, key and the cluster CA are kept.
    pub state_dir: PathBuf,
    /// Where the sandboxes' resolver forwards names that are not the
    /// cluster's; empty: the nameservers of the host's /etc/resolv.conf.
    pub dns_forward: Vec<std::net::SocketAddr>,
    /// Where Prometheus metrics are served (`GET /metrics`); none: off.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Runs the agent until the manager refuses it (an error) or it gets
/// SIGTERM or SIGINT: then it finishes the reconcile pass under way and
/// returns, leaving the data path and the tasks exactly as they are (the
/// next start adopts them).
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let (stop, stopping) = watch::channel(false);
    let serving = serve(config, stopping);
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => return result,
        _ = terminate.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("stopping: the data path and the tasks stay as they are");
    let _ = stop.send(true);
    serving.await
}

/// Joins, reconciles and serves until refused, or until `stopping` turns
/// true (then returns once the reconcile loop has stopped).
async fn serve(config: AgentConfig, mut stopping: watch::Receiver<bool>) -> anyhow::Result<()> {
    for dir in [&config.state_dir, &config.run_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut credentials = identity::load(&config.state_dir).map_err(anyhow::Error::msg)?;
    // Tasks are started through this very binary (`netctl task-shim`).
    let shim_program = PathBuf::from("/proc/self/exe");
    let upstreams = match config.dns_forward.as_slice() {
        [] => dns::upstream::Upstreams::host(),
        servers => dns::upstream::Upstreams::Fixed(servers.to_vec()),
    };
    let reconciler =
        reconcile::Reconciler::new(&config.run_dir, config.advertise_addr, shim_program, upstreams)
            .with_context(|| format!("preparing the run dir {}", config.run_dir.display()))?;
    let metrics = Arc::new(metrics::AgentMetrics::new(reconciler.dns_queries()));
    let _metrics_server = match config.metrics_addr {
        Some(address) => {
            let shown = metrics.clone();
            let render: netctl_proto::metrics::Render = Arc::new(move || shown.render());
            let server = netctl_proto::metrics::listen(address, render)
                .await
                .with_context(|| format!("serving metrics on {address}"))?;
            tracing::info!(%address, "metrics served on /metrics");
            Some(server)
        }
        None => None,
    };
    let (desired_sender, desired) = watch::channel(None);
    let (report_sender, reports) = watch::channel(Vec::new());
    let (topology_sender, topology) = watch::channel(None);
    let hostname = config.hostname.clone();
    let reconciling = tokio::spawn(reconcile_forever(
        reconciler,
        metrics,
        desired,
        report_sender,
        topology_sender,
        hostname,
        stopping.clone(),
    ));
    let channels = Channels { desired: desired_sender, reports, topology };
    let mut backoff = Backoff::default();
    let sessions = async {
        loop {
            match run_session(&config, &mut credentials, &mut backoff, &channels).await {
                Err(refused @ SessionError::Refused { .. }) => return refused,
                Err(lost) => {
                    let delay = backoff.next_delay();
                    tracing::warn!("{lost}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                Ok(()) => tracing::info!("node certificate renewed; reconnecting with it"),
            }
        }
    };
    tokio::select! {
        refused = sessions => Err(refused.into()),
        _ = stopping.wait_for(|stop| *stop) => {
            let _ = reconciling.await;
            Ok(())
        }
    }
}

/// How often the node is reconciled when nothing changes (to repair what was
/// changed by hand and to notice task exits).
const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What sessions share with the reconcile loop.
struct Channels {
    /// The latest desired state, for the reconcile loop.
    desired: watch::Sender<Option<NodeState>>,
    /// The latest task statuses, for the manager.
    reports: watch::Receiver<Vec<TaskStatusReport>>,
    /// The latest topology read back, for the manager.
    topology: watch::Receiver<Option<NodeTopology>>,
}

/// How often the node's topology is read back for `netctl topology`.
const TOPOLOGY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Reconciles after every new desired state and every interval, once the
/// first desired state has arrived (nothing is torn down before that),
/// until `stopping` turns true.
async fn reconcile_forever(
    mut reconciler: reconcile::Reconciler,
    metrics: Arc<metrics::AgentMetrics>,
    mut desired: watch::Receiver<Option<NodeState>>,
    reports: watch::Sender<Vec<TaskStatusReport>>,
    topology: watch::Sender<Option<NodeTopology>>,
    hostname: String,
    mut stopping: watch::Receiver<bool>,
) {
    let mut topology_read_at: Option<std::time::Instant> = None;
    let task_stopped = reconciler.task_stopped();
    loop {
        let state = desired.borrow_and_update().clone();
        if let Some(state) = state {
            let started = std::time::Instant::now();
            let pass = reconciler.pass(&state).await;
            metrics.record(&pass, started.elapsed());
            let statuses = pass.reports;
            tracing::debug!(
                revision = state.revision,
                actions = pass.actions,
                new_sandboxes = pass.new_sandboxes,
                applied_in = ?pass.applied_in,
                rules_in = ?pass.rules_in,
                elapsed = ?started.elapsed(),
                "reconciled"
            );
            reports.send_if_modified(|current| {
                let changed = *current != statuses;
                *current = statuses;
                changed
            });
            if topology_read_at.is_none_or(|at| at.elapsed() >= TOPOLOGY_INTERVAL) {
                topology_read_at = Some(std::time::Instant::now());
                let read = NodeTopology { hostname: hostname.clone(), ..reconciler.topology(&state).await };
                topology.send_if_modified(|current| {
                    let same = current
                        .as_ref()
                        .is_some_and(|c| NodeTopology { read_unix: read.read_unix, ..c.clone() } == read);
                    *current = Some(read);
                    !same
                });
            }
            // Every pass reads the kernel state of every sandbox and frees
            // it: at 200 tasks the agent held 31 MiB between passes, 24 MiB
            // trimmed after each on glibc's malloc, 22 MiB purged on
            // jemalloc (a release of a heap this size takes well under a
            // millisecond).
            netctl_proto::memory::release_freed_heap();
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {},
            _ = desired.changed() => {},
            _ = task_stopped.notified() => {},
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// Joins for the first time: the join token admits a certificate request,
/// and the certificate, its key and the CA are kept in the state dir.
async fn first_join(config: &AgentConfig) -> Result<identity::Credentials, SessionError> {
    let refused = |message: String| SessionError::Refused { manager: config.manager.clone(), message };
    let (mut session, token) = Session::connect_with_token(config).await?;
    let key = netctl_proto::pki::NodeKey::generate().map_err(refused)?;
    let joined = session.join(config, Some(&key)).await?;
    let credentials = identity::Credentials::from_pem(joined.certificate_pem, key.key_pem, joined.ca_pem)
        .map_err(|err| refused(format!("the certificate the manager sent is not usable: {err}")))?;
    if credentials.ca_digest != token.ca_digest {
        return Err(refused(format!(
            "the manager sent CA {}, but the join token pins {}",
            credentials.ca_digest, token.ca_digest
        )));
    }
    keep(config, &credentials)?;
    tracing::info!(node = %credentials.node_id, "joined the cluster with the join token; certificate kept");
    Ok(credentials)
}

/// Writes `credentials` to the state dir.
fn keep(config: &AgentConfig, credentials: &identity::Credentials) -> Result<(), SessionError> {
    identity::save(&config.state_dir, credentials).map_err(|err| SessionError::Refused {
        manager: config.manager.clone(),
        message: format!("cannot keep the node certificate in {}: {err}", config.state_dir.display()),
    })
}

/// Joins (the first time with the join token), then heartbeats, reports and
/// watches until the session breaks (an error) or the certificate was
/// renewed (`Ok`: reconnect with the new one at once).
async fn run_session(
    config: &AgentConfig,
    credentials: &mut Option<identity::Credentials>,
    backoff: &mut Backoff,
    channels: &Channels,
) -> Result<(), SessionError> {
    let current = match credentials.clone() {
        Some(kept) => kept,
        None => credentials.insert(first_join(config).await?).clone(),
    };
    let mut session = Session::connect(config, &current).await?;
    let joined = session.join(config, None).await?;
    tracing::info!(node = %joined.node_id, manager = %config.manager, "connected with the node certificate");
    backoff.reset();
    let heartbeat = tokio::spawn(Session::heartbeat_forever(session.clone(), joined.clone()));
    let _stop_heartbeat = AbortOnDrop(heartbeat);
    let reporter =
        tokio::spawn(session.clone().report_forever(joined.node_id.clone(), channels.reports.clone()));
    let _stop_reporter = AbortOnDrop(reporter);
    let tasks_dir = tasks::tasks_dir(&config.run_dir);
    let shipper = tokio::spawn(session.clone().ship_logs_forever(joined.node_id.clone(), tasks_dir));
    let _stop_shipper = AbortOnDrop(shipper);
    let topology = tokio::spawn(session.clone().report_topology_forever(channels.topology.clone()));
    let _stop_topology = AbortOnDrop(topology);
    let renewal = session.clone().renew_when_due(config, &current);
    let watching = session.watch(&joined.node_id, |state| {
        log_desired_state(&state);
        channels.desired.send_replace(Some(state));
    });
    tokio::select! {
        watched = watching => watched,
        renewed = renewal => {
            let renewed = renewed?;
            keep(config, &renewed)?;
            *credentials = Some(renewed);
            Ok(())
        }
    }
}

/// Logs a desired state received from the manager.
fn log_desired_state(state: &NodeState) {
    let networks: Vec<String> = state
        .networks
        .iter()
        .filter_map(|a| a.network.as_ref())
        .map(|n| format!("{} (vni {})", n.name, n.vni))
        .collect();
    tracing::info!(
        revision = state.revision,
        networks = %networks.join(", "),
        tasks = state.tasks.len(),
        remote_endpoints = state.remote_endpoints.len(),
        "desired state received"
    );
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
