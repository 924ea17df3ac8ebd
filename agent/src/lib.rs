//! The netctl agent: joins the manager, keeps the node's identity, sends
//! heartbeats and watches the node's desired state, reconnecting with
//! back-off whenever the manager goes away.
//!
//! Converging the kernel to the desired state (namespaces, bridges, VXLAN,
//! sandboxes) comes with the data plane; today the agent records what it was
//! asked to build.

pub mod backoff;
pub mod identity;
pub mod session;

use anyhow::Context;
use backoff::Backoff;
use netctl_proto::NodeState;
use session::{Session, SessionError};
use std::net::IpAddr;
use std::path::PathBuf;

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
    /// Where the node identity is kept.
    pub state_dir: PathBuf,
}

/// Runs the agent until the manager refuses it (an error) or forever.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    for dir in [&config.state_dir, &config.run_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut node_id = identity::load(&config.state_dir)
        .with_context(|| format!("reading the node identity in {}", config.state_dir.display()))?;
    let mut backoff = Backoff::default();
    loop {
        match run_session(&config, &mut node_id, &mut backoff).await {
            Err(refused @ SessionError::Refused { .. }) => return Err(refused.into()),
            Err(lost) => {
                let delay = backoff.next_delay();
                tracing::warn!("{lost}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Ok(()) => unreachable!("a session only ends with an error"),
        }
    }
}

/// Joins, then heartbeats and watches until the session breaks.
async fn run_session(
    config: &AgentConfig,
    node_id: &mut Option<String>,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let mut session = Session::connect(config).await?;
    let joined = session.join(config, node_id.as_deref()).await?;
    if node_id.as_deref() != Some(joined.node_id.as_str()) {
        identity::save(&config.state_dir, &joined.node_id).map_err(|err| SessionError::Refused {
            manager: config.manager.clone(),
            message: format!("cannot keep node identity in {}: {err}", config.state_dir.display()),
        })?;
        *node_id = Some(joined.node_id.clone());
    }
    tracing::info!(node = %joined.node_id, manager = %config.manager, "joined the cluster");
    backoff.reset();
    let heartbeat = tokio::spawn(Session::heartbeat_forever(session.clone(), joined.clone()));
    let _stop_heartbeat = AbortOnDrop(heartbeat);
    session.watch(&joined.node_id, record_desired_state).await
}

/// Logs a desired state received from the manager.
fn record_desired_state(state: NodeState) {
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
