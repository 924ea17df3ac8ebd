//! One session with the manager: join, then heartbeat and watch the node's
//! desired state until the connection is lost.

use crate::AgentConfig;
use netctl_proto::dispatcher_client::DispatcherClient;
use netctl_proto::{
    BearerToken, HeartbeatRequest, JoinRequest, LogOffsetsRequest, NodeState, NodeTopology,
    ReportStatusRequest, TaskStatusReport, WatchRequest,
};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

/// How a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The manager refused this node: retrying will not help.
    #[error("manager at {manager} refused to let this node join: {message}")]
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
}

/// An open connection to the manager's Dispatcher.
#[derive(Clone)]
pub struct Session {
    manager: String,
    client: DispatcherClient<InterceptedService<Channel, BearerToken>>,
}

impl Session {
    /// Connects to the manager named in `config`.
    pub async fn connect(config: &AgentConfig) -> Result<Self, SessionError> {
        let manager = config.manager.clone();
        let refused = |message: String| SessionError::Refused { manager: manager.clone(), message };
        let interceptor =
            BearerToken::new(&config.join_token).map_err(|err| refused(format!("join token: {err}")))?;
        let channel = netctl_proto::connect(&manager).await.map_err(|err| SessionError::Lost {
            manager: manager.clone(),
            during: "connecting",
            message: err.reason,
        })?;
        let client = DispatcherClient::with_interceptor(channel, interceptor)
            .max_decoding_message_size(netctl_proto::MAX_NODE_STATE_BYTES);
        Ok(Self { manager, client })
    }

    fn status_error(&self, during: &'static str, status: tonic::Status) -> SessionError {
        match status.code() {
            Code::Unauthenticated | Code::InvalidArgument | Code::PermissionDenied => {
                SessionError::Refused { manager: self.manager.clone(), message: status.message().to_string() }
            }
            _ => SessionError::Lost {
                manager: self.manager.clone(),
                during,
                message: status.message().to_string(),
            },
        }
    }

    /// Joins as `node_id` (or as a new node when `None`).
    pub async fn join(
        &mut self,
        config: &AgentConfig,
        node_id: Option<&str>,
    ) -> Result<Joined, SessionError> {
        let request = JoinRequest {
            node_id: node_id.unwrap_or_default().to_string(),
            hostname: config.hostname.clone(),
            advertise_addr: config.advertise_addr.to_string(),
        };
        let response = self
            .client
            .join(request)
            .await
            .map_err(|status| self.status_error("joining", status))?
            .into_inner();
        Ok(Joined {
            node_id: response.node_id,
            heartbeat_interval: Duration::from_millis(u64::from(response.heartbeat_interval_ms.max(100))),
        })
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
            if let Err(status) = client_session.client.heartbeat(request).await {
                tracing::warn!(manager = %client_session.manager, "heartbeat failed: {}", status.message());
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

    /// Calls `on_state` with each desired state the manager sends, until the
    /// stream breaks.
    pub async fn watch(
        &mut self,
        node_id: &str,
        mut on_state: impl FnMut(NodeState),
    ) -> Result<(), SessionError> {
        let request = WatchRequest { node_id: node_id.to_string() };
        let mut stream = self
            .client
            .watch(request)
            .await
            .map_err(|status| self.status_error("opening the watch stream", status))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(state)) => on_state(state),
                Ok(None) => {
                    return Err(SessionError::Lost {
                        manager: self.manager.clone(),
                        during: "watching",
                        message: "the manager closed the stream".into(),
                    })
                }
                Err(status) => return Err(self.status_error("watching", status)),
            }
        }
    }
}
