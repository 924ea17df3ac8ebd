//! The `Dispatcher` gRPC service: what agents call to join, to say they are
//! alive, and to watch their node's desired state.

use crate::liveness::Heartbeats;
use crate::networks::now_unix;
use crate::reports::AgentReports;
use crate::{ids, snapshot, ManagerError, Store};
use netctl_proto::convention::sandbox_name;
use netctl_proto::dispatcher_server::Dispatcher;
use netctl_proto::*;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status};

/// The Dispatcher service over the shared store.
pub struct DispatcherService {
    store: Arc<Store>,
    heartbeats: Arc<Heartbeats>,
    data_path_port: u16,
    stopping: watch::Receiver<bool>,
    reports: Arc<AgentReports>,
}

impl DispatcherService {
    /// A Dispatcher telling agents to use `data_path_port` for VXLAN. Its
    /// watch streams end when `stopping` turns true, so that the server can
    /// shut down gracefully.
    pub fn new(
        store: Arc<Store>,
        heartbeats: Arc<Heartbeats>,
        data_path_port: u16,
        stopping: watch::Receiver<bool>,
        reports: Arc<AgentReports>,
    ) -> Self {
        Self { store, heartbeats, data_path_port, stopping, reports }
    }

    fn heartbeat_interval_ms(&self) -> u32 {
        self.heartbeats.interval().as_millis() as u32
    }

    /// An address on the ingress network for a joining node's ingress_sbox.
    fn free_ingress_address(&self) -> Result<String, Status> {
        let networks = self.store.networks().map_err(ManagerError::from)?;
        let ingress =
            networks.iter().find(|n| n.ingress).ok_or_else(|| Status::internal("no ingress network"))?;
        let (services, tasks, nodes) = (
            self.store.all().map_err(ManagerError::from)?,
            self.store.all().map_err(ManagerError::from)?,
            self.store.nodes().map_err(ManagerError::from)?,
        );
        let taken = crate::services::taken_addresses(ingress, &services, &tasks, &nodes);
        let subnet = ingress.subnet.parse().map_err(|_| Status::internal("invalid ingress subnet"))?;
        crate::addresses::lowest_free(subnet, &taken).map(|a| a.to_string()).ok_or_else(|| {
            Status::resource_exhausted("the ingress network has no free address for this node")
        })
    }

    fn known_node(&self, node_id: &str) -> Result<Node, Status> {
        self.store
            .node(node_id)
            .map_err(ManagerError::from)?
            .ok_or_else(|| Status::not_found(format!("node {node_id} has not joined this cluster")))
    }
}

/// The node's desired state now.
fn desired_state(store: &Store, node_id: &str, port: u32) -> Result<NodeState, crate::store::StoreError> {
    let revision = store.revision();
    let node = store.node(node_id)?.unwrap_or_default();
    let (networks, services, tasks, nodes) = (store.networks()?, store.all()?, store.all()?, store.nodes()?);
    let cluster =
        snapshot::ClusterView { networks: &networks, services: &services, tasks: &tasks, nodes: &nodes };
    Ok(snapshot::node_state(&node, &cluster, port, revision))
}

/// Whether the request came from the manager's own host (the connection's
/// two ends share an address).
fn from_manager_host<T>(request: &Request<T>) -> bool {
    let info = request.extensions().get::<TcpConnectInfo>();
    match info.map(|i| (i.local_addr(), i.remote_addr())) {
        Some((Some(local), Some(remote))) => local.ip() == remote.ip(),
        _ => false,
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let manager_host = from_manager_host(&request);
        let join = request.into_inner();
        join.advertise_addr.parse::<IpAddr>().map_err(|_| {
            Status::invalid_argument(format!("invalid advertise address {:?}", join.advertise_addr))
        })?;
        if join.hostname.is_empty() {
            return Err(Status::invalid_argument("a joining node must give its hostname"));
        }
        let hostname = netctl_proto::printable(&join.hostname, crate::validate::MAX_NAME_LEN);
        let _writer = self.store.write_lock().await;
        let existing = match join.node_id.as_str() {
            "" => None,
            id => self.store.node(id).map_err(ManagerError::from)?,
        };
        let ingress_address = match existing.as_ref().map(|n| n.ingress_address.clone()) {
            Some(kept) if !kept.is_empty() => kept,
            _ => self.free_ingress_address()?,
        };
        let node = Node {
            id: match join.node_id.as_str() {
                "" => ids::new_id(),
                kept => kept.to_string(),
            },
            hostname,
            advertise_addr: join.advertise_addr,
            availability: "Active".to_string(),
            manager_host,
            created_unix: existing.as_ref().map_or_else(now_unix, |n| n.created_unix),
            ingress_address,
        };
        let unchanged = existing.as_ref().is_some_and(|old| *old == node);
        if !unchanged {
            self.store.put(&node).await.map_err(ManagerError::from)?;
        }
        self.heartbeats.record(&node.id);
        tracing::info!(node = %node.id, hostname = %node.hostname, addr = %node.advertise_addr, rejoin = existing.is_some(), "node joined");
        Ok(Response::new(JoinResponse {
            node_id: node.id,
            heartbeat_interval_ms: self.heartbeat_interval_ms(),
            data_path_port: u32::from(self.data_path_port),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let node_id = &request.get_ref().node_id;
        self.known_node(node_id)?;
        self.heartbeats.record(node_id);
        Ok(Response::new(HeartbeatResponse { heartbeat_interval_ms: self.heartbeat_interval_ms() }))
    }

    type WatchStream = ReceiverStream<Result<NodeState, Status>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let node_id = request.into_inner().node_id;
        self.known_node(&node_id)?;
        let (sender, receiver) = mpsc::channel(4);
        let store = self.store.clone();
        let port = u32::from(self.data_path_port);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut revisions = store.subscribe();
            let mut last_sent: Option<NodeState> = None;
            loop {
                revisions.mark_unchanged();
                let state = desired_state(&store, &node_id, port);
                match state {
                    Ok(state) => {
                        let same = last_sent
                            .as_ref()
                            .is_some_and(|s| NodeState { revision: s.revision, ..state.clone() } == *s);
                        if !same {
                            if sender.send(Ok(state.clone())).await.is_err() {
                                break;
                            }
                            last_sent = Some(state);
                        }
                    }
                    Err(err) => {
                        let _ = sender.send(Err(ManagerError::from(err).into())).await;
                        break;
                    }
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { break },
                    _ = sender.closed() => break,
                    _ = stopping.wait_for(|stop| *stop) => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn report_status(
        &self,
        request: Request<ReportStatusRequest>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        let report = request.into_inner();
        self.known_node(&report.node_id)?;
        let _writer = self.store.write_lock().await;
        let mut batch = crate::store::Batch::new();
        for status in &report.tasks {
            let error = netctl_proto::printable(&status.error, netctl_proto::MAX_REPORTED_CHARS);
            let Some(mut task) = self.store.get::<Task>(&status.task_id).map_err(ManagerError::from)? else {
                continue;
            };
            let changed = task.state != status.state || task.error != error;
            if task.node_id != report.node_id || task.desired_state() != TaskState::Running || !changed {
                continue;
            }
            let state = status.state();
            if !matches!(state, TaskState::Running | TaskState::Failed | TaskState::Complete) {
                continue;
            }
            tracing::info!(task = %task.id, state = state.word(), %error, "task status");
            task.set_state(state);
            task.error = error;
            task.state_changed_unix = now_unix();
            batch.put(&task);
        }
        if !batch.is_empty() {
            self.store.commit(batch).await.map_err(ManagerError::from)?;
        }
        Ok(Response::new(ReportStatusResponse {}))
    }

    async fn push_logs(
        &self,
        request: Request<tonic::Streaming<LogChunk>>,
    ) -> Result<Response<PushLogsResponse>, Status> {
        let mut chunks = request.into_inner();
        // The task of the last sandbox seen: chunks come in runs per task.
        let mut owner: Option<(String, Option<String>)> = None;
        while let Some(chunk) = chunks.message().await? {
            if owner.as_ref().is_none_or(|(sandbox, _)| *sandbox != chunk.sandbox) {
                let tasks: Vec<Task> = self.store.all().map_err(ManagerError::from)?;
                let task = tasks
                    .into_iter()
                    .find(|t| t.node_id == chunk.node_id && sandbox_name(&t.id) == chunk.sandbox);
                owner = Some((chunk.sandbox.clone(), task.map(|t| t.id)));
            }
            if let Some((_, Some(task_id))) = &owner {
                self.reports.logs.append(task_id, chunk.offset, &chunk.data);
            }
        }
        Ok(Response::new(PushLogsResponse {}))
    }

    async fn log_offsets(
        &self,
        request: Request<LogOffsetsRequest>,
    ) -> Result<Response<LogOffsetsResponse>, Status> {
        let node_id = request.into_inner().node_id;
        self.known_node(&node_id)?;
        let tasks: Vec<Task> = self.store.all().map_err(ManagerError::from)?;
        let offsets = tasks
            .iter()
            .filter(|t| t.node_id == node_id)
            .map(|t| (sandbox_name(&t.id).to_string(), self.reports.logs.received(&t.id)))
            .collect();
        Ok(Response::new(LogOffsetsResponse { offsets }))
    }

    async fn report_topology(
        &self,
        request: Request<NodeTopology>,
    ) -> Result<Response<ReportTopologyResponse>, Status> {
        let topology = request.into_inner();
        self.known_node(&topology.node_id)?;
        self.reports.topologies.record(topology);
        Ok(Response::new(ReportTopologyResponse {}))
    }
}
