//! One session with the manager over TLS: join (the first time with the
//! join token and a certificate request, later with the node's
//! certificate), then heartbeat and watch the node's desired state until the
//! connection is lost or the certificate is renewed.

use crate::identity::Credentials;
use crate::AgentConfig;
use netctl_proto::desired::HeldState;
use netctl_proto::dispatcher_client::DispatcherClient;
use netctl_proto::pki::{NodeKey, Token, TokenKind};
use netctl_proto::{
    BearerToken, HeartbeatRequest, JoinRequest, LogOffsetsRequest, NodeState, NodeTopology,
    ReportStatusRequest, TaskStatusReport, WatchRequest,
};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

/// Seconds since the epoch.
fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A connection failure: retried unless the manager is not the cluster's.
fn connect_error(manager: &str, err: netctl_proto::ConnectError) -> SessionError {
    if err.untrusted {
        SessionError::Refused { manager: manager.to_string(), message: err.reason }
    } else {
        SessionError::Lost { manager: manager.to_string(), during: "connecting", message: err.reason }
    }
}

/// How a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The manager refused this node: retrying will not help.
    #[error("manager at {manager} refused this node: {message}")]
    Refused {
        /// The manager's address.
        manager: String,
        /// What the manager said.
        message: String,
    },
    /// The manager is unreachable or the connection broke: retry.
    #[error("connection to manager at {manager} lost while {during}: {message}")]
    Lost {
        /// The manager's address.
        manager: String,
        /// What the agent was doing.
        during: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// The node's identity and the cluster settings a join returns.
#[derive(Debug, Clone)]
pub struct Joined {
    /// This node's ID.
    pub node_id: String,
    /// How often to send heartbeats.
    pub heartbeat_interval: Duration,
    /// The certificate signed for the request sent, PEM.
    pub certificate_pem: String,
    /// The cluster CA, PEM.
    pub ca_pem: String,
}

/// The managers of `--manager` in a random order: agents spread over the
/// managers, and one that died is not always tried first.
fn spread(managers: &str) -> String {
    let mut addresses = netctl_proto::manager_addresses(managers);
    fastrand::shuffle(&mut addresses);
    addresses.join(",")
}

/// How long a join or the opening of the watch stream may wait for the
/// manager's answer before the session starts over: a connection a manager
/// took but never serves must not hold the agent forever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a manager's error status means for the session: refused (the
/// node is not admitted) or lost (try again).
fn status_error(manager: &str, during: &'static str, status: tonic::Status) -> SessionError {
    match status.code() {
        Code::Unauthenticated | Code::InvalidArgument | Code::PermissionDenied => {
            SessionError::Refused { manager: manager.to_string(), message: status.message().to_string() }
        }
        _ => {
            SessionError::Lost { manager: manager.to_string(), during, message: status.message().to_string() }
        }
    }
}

/// Whether this agent reads the desired state of `version`, the one the
/// manager at `manager` sends; if not, a lost session, tried again while
/// the node keeps its data path, until the manager is upgraded.
fn readable_version(manager: &str, version: u32) -> Result<(), SessionError> {
    if version == netctl_proto::DESIRED_STATE_VERSION {
        return Ok(());
    }
    Err(SessionError::Lost {
        manager: manager.to_string(),
        during: "joining",
        message: format!(
            "the manager sends desired-state version {version}; this agent reads version {}: upgrade the \
             manager (this node keeps its data path as it is until then)",
            netctl_proto::DESIRED_STATE_VERSION
        ),
    })
}

/// The answer of a call to `manager` given [`ANSWER_TIMEOUT`]: none in time
/// (a manager shutting down, or still starting) is a lost session, to be
/// started over.
async fn answer<T>(
    manager: &str,
    during: &'static str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status_error(manager, during, status)),
        Err(_) => Err(SessionError::Lost {
            manager: manager.to_string(),
            during,
            message: format!("no answer within {ANSWER_TIMEOUT:?}"),
        }),
    }
}

/// An open connection to the manager's Dispatcher.
#[derive(Clone)]
pub struct Session {
    manager: String,
    client: DispatcherClient<InterceptedService<Channel, BearerToken>>,
}

impl Session {
    /// Connects with the node's certificate, trusting only the cluster CA.
    pub async fn connect(config: &AgentConfig, credentials: &Credentials) -> Result<Self, SessionError> {
        let manager = spread(&config.manager);
        let expiry = credentials.certificate.not_after_unix;
        if expiry <= unix_now() {
            return Err(SessionError::Refused {
                manager,
                message: format!(
                    "this node's certificate expired (at {expiry} seconds since the epoch) before it could be renewed; \
                     remove node.crt from {} and start the agent again to join anew with the join token",
                    config.state_dir.display()
                ),
            });
        }
        let channel = netctl_proto::connect(&manager, &credentials.ca_pem, Some(&credentials.identity))
            .await
            .map_err(|err| connect_error(&manager, err))?;
        Ok(Self::over(manager, channel, BearerToken::none()))
    }

    /// Connects with only the join token: the manager's CA is trusted once
    /// its digest is the one the token pins.
    pub async fn connect_with_token(config: &AgentConfig) -> Result<(Self, Token), SessionError> {
        let manager = spread(&config.manager);
        let refused = |message: String| SessionError::Refused { manager: manager.clone(), message };
        let token = Token::parse(&config.join_token).map_err(|err| refused(format!("join token: {err}")))?;
        if token.kind != TokenKind::Join {
            return Err(refused("the token given is an admin token, not a join token".into()));
        }
        let interceptor =
            BearerToken::new(&config.join_token).map_err(|err| refused(format!("join token: {err}")))?;
        let (channel, _) = netctl_proto::connect_with_token(&manager, &token)
            .await
            .map_err(|err| connect_error(&manager, err))?;
        Ok((Self::over(manager.clone(), channel, interceptor), token))
    }

    fn over(manager: String, channel: Channel, interceptor: BearerToken) -> Self {
        let client = DispatcherClient::with_interceptor(channel, interceptor)
            .max_decoding_message_size(netctl_proto::MAX_NODE_STATE_BYTES);
        Self { manager, client }
    }

    /// Joins: as a new node over a token session, as the certificate's node
    /// over a certificate session; `key`'s request is signed when given.
    pub async fn join(
        &mut self,
        config: &AgentConfig,
        key: Option<&NodeKey>,
    ) -> Result<Joined, SessionError> {
        let request = JoinRequest {
            node_id: String::new(),
            hostname: config.hostname.clone(),
            advertise_addr: config.advertise_addr.to_string(),
            csr: key.map(|k| k.csr_der.clone()).unwrap_or_default(),
            desired_state_version: netctl_proto::DESIRED_STATE_VERSION,
        };
        let response = answer(&self.manager, "joining", self.client.join(request)).await?;
        readable_version(&self.manager, response.desired_state_version)?;
        Ok(Joined {
            node_id: response.node_id,
            heartbeat_interval: Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(100))),
            certificate_pem: response.certificate,
            ca_pem: response.ca_certificate,
        })
    }

    /// Sends a new key's certificate request once the certificate of
    /// `credentials` is half way through its lifetime; the renewed
    /// credentials (not yet saved).
    pub async fn renew_when_due(
        mut self,
        config: &AgentConfig,
        credentials: &Credentials,
    ) -> Result<Credentials, SessionError> {
        let wait = credentials.certificate.renew_at_unix() - unix_now();
        tokio::time::sleep(Duration::from_secs(wait.max(0) as u64)).await;
        let refused = |message: String| SessionError::Refused { manager: self.manager.clone(), message };
        let key = NodeKey::generate().map_err(refused)?;
        let joined = self.join(config, Some(&key)).await?;
        Credentials::from_pem(joined.certificate_pem, key.key_pem, joined.ca_pem)
            .map_err(|err| SessionError::Refused { manager: self.manager.clone(), message: err })
    }

    /// Sends a heartbeat every interval, forever; failures are logged, and
    /// each send with the time since the previous one (debug level: a gap
    /// longer than the interval means the runtime was held up).
    pub async fn heartbeat_forever(mut client_session: Session, joined: Joined) {
        let mut ticker = tokio::time::interval(joined.heartbeat_interval);
        let mut previous: Option<tokio::time::Instant> = None;
        loop {
            ticker.tick().await;
            let now = tokio::time::Instant::now();
            if let Some(previous) = previous.replace(now) {
                tracing::debug!(gap_ms = (now - previous).as_millis() as u64, "heartbeat sent");
            }
            let request = HeartbeatRequest { node_id: joined.node_id.clone() };
            match tokio::time::timeout(ANSWER_TIMEOUT, client_session.client.heartbeat(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    tracing::warn!(manager = %client_session.manager, "heartbeat failed: {}", status.message())
                }
                Err(_) => {
                    tracing::warn!(manager = %client_session.manager, "heartbeat unanswered in {ANSWER_TIMEOUT:?}")
                }
            }
        }
    }

    /// Sends the latest task statuses every time they change, forever.
    pub async fn report_forever(
        mut self,
        node_id: String,
        mut reports: tokio::sync::watch::Receiver<Vec<TaskStatusReport>>,
    ) {
        loop {
            let tasks = reports.borrow_and_update().clone();
            if !tasks.is_empty() {
                let request = ReportStatusRequest { node_id: node_id.clone(), tasks };
                if let Err(status) = self.client.report_status(request).await {
                    tracing::warn!(manager = %self.manager, "reporting task status failed: {}", status.message());
                }
            }
            if reports.changed().await.is_err() {
                return;
            }
        }
    }

    /// Ships new output of the tasks in `tasks_dir` every second, forever,
    /// from where the manager says it has each task's output.
    pub async fn ship_logs_forever(mut self, node_id: String, tasks_dir: std::path::PathBuf) {
        let request = LogOffsetsRequest { node_id: node_id.clone() };
        let mut offsets = match self.client.log_offsets(request).await {
            Ok(response) => response.into_inner().offsets,
            Err(status) => {
                tracing::warn!(manager = %self.manager, "asking how far task logs were shipped: {}", status.message());
                return;
            }
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let call = self.client.push_logs(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let feed = async move {
            loop {
                // File reads, off the async workers.
                let (dir, node) = (tasks_dir.clone(), node_id.clone());
                let read = tokio::task::spawn_blocking(move || {
                    let sweep = crate::logs::new_output(&dir, &node, &mut offsets);
                    (sweep, offsets)
                });
                let Ok((sweep, advanced)) = read.await else { return };
                offsets = advanced;
                for chunk in sweep.chunks {
                    if sender.send(chunk).await.is_err() {
                        return;
                    }
                }
                for files in sweep.finished {
                    if let Err(err) = files.remove() {
                        tracing::warn!(
                            "removing the folder of a stopped task {}: {err}",
                            files.dir().display()
                        );
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            result = call => if let Err(status) = result {
                tracing::warn!(manager = %self.manager, "shipping task logs failed: {}", status.message());
            },
            _ = feed => {},
        }
    }

    /// Sends the node's topology every time it changes, forever.
    pub async fn report_topology_forever(
        mut self,
        mut topology: tokio::sync::watch::Receiver<Option<NodeTopology>>,
    ) {
        loop {
            let latest = topology.borrow_and_update().clone();
            if let Some(latest) = latest {
                if let Err(status) = self.client.report_topology(latest).await {
                    tracing::warn!(manager = %self.manager, "reporting the topology failed: {}", status.message());
                }
            }
            if topology.changed().await.is_err() {
                return;
            }
        }
    }

    /// Calls `on_state` with each desired state the manager sends (a whole
    /// state, then the previous one with a delta applied), until the stream
    /// breaks. A delta that does not start from the revision held (a
    /// revision was missed) opens the stream again for a whole state.
    pub async fn watch(
        &mut self,
        node_id: &str,
        mut on_state: impl FnMut(NodeState),
    ) -> Result<(), SessionError> {
        loop {
            let request = WatchRequest { node_id: node_id.to_string() };
            let opening = self.client.watch(request);
            let mut stream = answer(&self.manager, "opening the watch stream", opening).await?;
            let mut held = HeldState::default();
            loop {
                let message = match stream.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        return Err(SessionError::Lost {
                            manager: self.manager.clone(),
                            during: "watching",
                            message: "the manager closed the stream".into(),
                        })
                    }
                    Err(status) => return Err(status_error(&self.manager, "watching", status)),
                };
                match held.receive(message) {
                    Ok(Some(state)) => on_state(state),
                    Ok(None) => {}
                    Err(gap) => {
                        tracing::warn!(manager = %self.manager, "{gap}; asking for the whole desired state");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manager_of_another_desired_state_version_is_retried_and_named_for_upgrade() {
        assert!(readable_version("m:4243", netctl_proto::DESIRED_STATE_VERSION).is_ok());
        let older = readable_version("m:4243", 0).unwrap_err();
        assert!(matches!(older, SessionError::Lost { .. }), "retried, not an exit: {older:?}");
        let text = older.to_string();
        assert!(text.contains("manager at m:4243"), "{text}");
        let versions = format!(
            "sends desired-state version 0; this agent reads version {}",
            netctl_proto::DESIRED_STATE_VERSION
        );
        assert!(text.contains(&versions), "{text}");
        assert!(text.contains("upgrade the manager"), "{text}");
    }
}
