//! The `Control` gRPC service: what `netctl network ...` and `netctl node ...`
//! call. Each handler validates, calls one store operation, answers.

use crate::coordination::Coordination;
use crate::liveness::{outdated_message, Heartbeats};
use crate::networks::{self, AddressPool};
use crate::pki::ClusterCa;
use crate::ports::ReservedPorts;
use crate::reports::AgentReports;
use crate::services;
use crate::tokens::ClusterTokens;
use crate::{ManagerError, Store};
use netctl_proto::control_server::Control;
use netctl_proto::*;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The Control service over the shared store.
pub struct ControlService {
    store: Arc<Store>,
    heartbeats: Arc<Heartbeats>,
    pool: AddressPool,
    reports: Arc<AgentReports>,
    reserved_ports: ReservedPorts,
    security: ClusterSecurity,
    coordination: Coordination,
}

/// What `cluster info` and `cluster join-token` show and change.
pub struct ClusterSecurity {
    /// The root CA.
    pub ca: Arc<ClusterCa>,
    /// The join and admin tokens.
    pub tokens: Arc<ClusterTokens>,
    /// The VXLAN UDP port.
    pub data_path_port: u16,
}

impl ControlService {
    /// A Control service allocating from `pool`, serving what agents
    /// reported (`reports`), refusing to publish `reserved_ports`, and
    /// showing or rotating the cluster's `security`.
    pub fn new(
        store: Arc<Store>,
        heartbeats: Arc<Heartbeats>,
        pool: AddressPool,
        reports: Arc<AgentReports>,
        reserved_ports: ReservedPorts,
        security: ClusterSecurity,
        coordination: Coordination,
    ) -> Self {
        Self { store, heartbeats, pool, reports, reserved_ports, security, coordination }
    }

    /// A service with its tasks, newest first per slot, and node names.
    fn view(&self, service: Service, tasks: &[Task], nodes: &[Node]) -> ServiceView {
        let mut own: Vec<&Task> = tasks.iter().filter(|t| t.service_id == service.id).collect();
        own.sort_by_key(|t| {
            (t.slot, std::cmp::Reverse((t.desired_state() == TaskState::Running, t.created_unix)))
        });
        let tasks = own
            .into_iter()
            .map(|task| TaskView {
                name: services::task_name(&service, task),
                node_hostname: nodes
                    .iter()
                    .find(|n| n.id == task.node_id)
                    .map_or_else(|| task.node_id.clone(), |n| n.hostname.clone()),
                task: Some(task.clone()),
            })
            .collect();
        ServiceView { service: Some(service), tasks }
    }

    fn views(&self, services: Vec<Service>) -> Result<Vec<ServiceView>, ManagerError> {
        let tasks: Vec<Task> = self.store.all()?;
        let nodes = self.store.nodes()?;
        Ok(services.into_iter().map(|s| self.view(s, &tasks, &nodes)).collect())
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn create_network(
        &self,
        request: Request<NetworkCreateRequest>,
    ) -> Result<Response<NetworkCreateResponse>, Status> {
        let network = networks::create(&self.store, self.pool, request.get_ref()).await?;
        tracing::info!(id = %network.id, name = %network.name, subnet = %network.subnet, vni = network.vni, "network created");
        Ok(Response::new(NetworkCreateResponse { network: Some(network) }))
    }

    async fn list_networks(
        &self,
        _request: Request<NetworkListRequest>,
    ) -> Result<Response<NetworkListResponse>, Status> {
        let mut networks = self.store.networks().map_err(ManagerError::from)?;
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(NetworkListResponse { networks }))
    }

    async fn get_network(
        &self,
        request: Request<NetworkGetRequest>,
    ) -> Result<Response<NetworkGetResponse>, Status> {
        let network = networks::find(&self.store, &request.get_ref().reference)?;
        Ok(Response::new(NetworkGetResponse { network: Some(network) }))
    }

    async fn remove_network(
        &self,
        request: Request<NetworkRemoveRequest>,
    ) -> Result<Response<NetworkRemoveResponse>, Status> {
        let network = networks::remove(&self.store, &request.get_ref().reference).await?;
        tracing::info!(id = %network.id, name = %network.name, "network removed");
        Ok(Response::new(NetworkRemoveResponse { id: network.id }))
    }

    async fn list_nodes(
        &self,
        _request: Request<NodeListRequest>,
    ) -> Result<Response<NodeListResponse>, Status> {
        let mut nodes = self.store.nodes().map_err(ManagerError::from)?;
        nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        let managers = self.coordination.managers(&self.store)?;
        let nodes = nodes
            .into_iter()
            .map(|node| {
                let (liveness, last) = self.heartbeats.status(&node.id);
                let last_heartbeat_unix =
                    last.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs() as i64);
                let manager_status = crate::coordination::status_of_node(&node, &managers).to_string();
                let message = self.heartbeats.outdated_version(&node.id).map(outdated_message);
                NodeStatus {
                    node: Some(node),
                    status: liveness.as_str().to_string(),
                    last_heartbeat_unix,
                    manager_status,
                    message: message.unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(NodeListResponse { nodes }))
    }

    async fn remove_node(
        &self,
        request: Request<NodeRemoveRequest>,
    ) -> Result<Response<NodeRemoveResponse>, Status> {
        let NodeRemoveRequest { reference, force } = request.into_inner();
        let node = crate::nodes::remove(&self.store, &self.heartbeats, &reference, force).await?;
        tracing::info!(node = %node.id, hostname = %node.hostname, force, "node removed");
        Ok(Response::new(NodeRemoveResponse { id: node.id }))
    }

    async fn update_node(
        &self,
        request: Request<NodeUpdateRequest>,
    ) -> Result<Response<NodeUpdateResponse>, Status> {
        let node = crate::nodes::update(&self.store, request.get_ref()).await?;
        tracing::info!(node = %node.id, hostname = %node.hostname, availability = %node.availability, "node updated");
        Ok(Response::new(NodeUpdateResponse { node: Some(node) }))
    }

    async fn cluster_info(
        &self,
        _request: Request<ClusterInfoRequest>,
    ) -> Result<Response<ClusterInfoResponse>, Status> {
        let ca = &self.security.ca;
        let managers = self.coordination.managers(&self.store)?;
        Ok(Response::new(ClusterInfoResponse {
            ca_digest: ca.digest.clone(),
            cert_expiry_seconds: ca.node_cert_lifetime.as_secs(),
            data_path_port: u32::from(self.security.data_path_port),
            ca_not_after_unix: ca.not_after_unix,
            store: self.store.location(),
            managers: managers
                .into_iter()
                .map(|m| netctl_proto::ManagerStatus {
                    manager: Some(m.record),
                    status: m.status.to_string(),
                })
                .collect(),
        }))
    }

    async fn join_token(
        &self,
        request: Request<JoinTokenRequest>,
    ) -> Result<Response<JoinTokenResponse>, Status> {
        let request = request.into_inner();
        let kind = match request.role() {
            TokenRole::Worker => netctl_proto::pki::TokenKind::Join,
            TokenRole::Admin => netctl_proto::pki::TokenKind::Admin,
        };
        let token = if request.rotate {
            let token = self.security.tokens.rotate(kind, &self.store).await?;
            tracing::info!(?kind, "token rotated");
            token
        } else {
            self.security.tokens.current(kind)
        };
        Ok(Response::new(JoinTokenResponse { token: token.reveal() }))
    }

    async fn create_service(
        &self,
        request: Request<ServiceCreateRequest>,
    ) -> Result<Response<ServiceCreateResponse>, Status> {
        let service = services::create(&self.store, request.get_ref(), &self.reserved_ports).await?;
        tracing::info!(id = %service.id, name = %service.name, replicas = service.replicas, "service created");
        Ok(Response::new(ServiceCreateResponse { service: Some(service) }))
    }

    async fn list_services(
        &self,
        _request: Request<ServiceListRequest>,
    ) -> Result<Response<ServiceListResponse>, Status> {
        let mut all: Vec<Service> = self.store.all().map_err(ManagerError::from)?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ServiceListResponse { services: self.views(all)? }))
    }

    async fn get_service(
        &self,
        request: Request<ServiceGetRequest>,
    ) -> Result<Response<ServiceGetResponse>, Status> {
        let service = services::find(&self.store, &request.get_ref().reference)?;
        let view = self.views(vec![service])?.pop();
        Ok(Response::new(ServiceGetResponse { service: view }))
    }

    async fn scale_service(
        &self,
        request: Request<ServiceScaleRequest>,
    ) -> Result<Response<ServiceScaleResponse>, Status> {
        let request = request.into_inner();
        let service = services::scale(&self.store, &request.reference, request.replicas).await?;
        tracing::info!(name = %service.name, replicas = service.replicas, "service scaled");
        Ok(Response::new(ServiceScaleResponse { service: Some(service) }))
    }

    async fn update_service(
        &self,
        request: Request<ServiceUpdateRequest>,
    ) -> Result<Response<ServiceUpdateResponse>, Status> {
        let service = services::update(&self.store, request.get_ref(), &self.reserved_ports).await?;
        let state = service.update_status.as_ref().map_or("", |s| s.state.as_str());
        tracing::info!(name = %service.name, version = service.version, state, "service updated");
        Ok(Response::new(ServiceUpdateResponse { service: Some(service) }))
    }

    async fn remove_service(
        &self,
        request: Request<ServiceRemoveRequest>,
    ) -> Result<Response<ServiceRemoveResponse>, Status> {
        let service = services::remove(&self.store, &request.get_ref().reference).await?;
        tracing::info!(name = %service.name, "service removed");
        Ok(Response::new(ServiceRemoveResponse { id: service.id }))
    }

    type ServiceLogsStream = ReceiverStream<Result<TaskLog, Status>>;

    async fn service_logs(
        &self,
        request: Request<ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let request = request.into_inner();
        let service = services::find(&self.store, &request.reference)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let stream = LogStream {
            store: self.store.clone(),
            reports: self.reports.clone(),
            service,
            tail: u64::try_from(request.tail).ok(),
            follow: request.follow,
        };
        tokio::spawn(stream.run(sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn topology(
        &self,
        request: Request<TopologyRequest>,
    ) -> Result<Response<TopologyResponse>, Status> {
        let wanted = request.into_inner().node;
        let nodes = self.reports.topologies.select(|t| {
            wanted.is_empty() || t.hostname == wanted || (wanted.len() >= 4 && t.node_id.starts_with(&wanted))
        });
        if nodes.is_empty() && !wanted.is_empty() {
            return Err(Status::not_found(format!(
                "no topology from node {wanted} (unknown, or its agent has not reported yet)"
            )));
        }
        Ok(Response::new(TopologyResponse { nodes }))
    }
}

/// One `service logs` reply: the kept output of each task of a service, in
/// pieces of at most [`LOG_PIECE`] bytes, then (when following) what
/// arrives later, until the client goes away or the service is removed.
struct LogStream {
    store: Arc<Store>,
    reports: Arc<AgentReports>,
    service: Service,
    tail: Option<u64>,
    follow: bool,
}

/// The most output one `TaskLog` message carries.
const LOG_PIECE: usize = 64 * 1024;

impl LogStream {
    async fn run(self, sender: tokio::sync::mpsc::Sender<Result<TaskLog, Status>>) {
        let logs = &self.reports.logs;
        let mut appended = logs.subscribe();
        let mut sent: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut first = true;
        loop {
            appended.mark_unchanged();
            let (Ok(tasks), Ok(nodes)) = (self.store.all::<Task>(), self.store.nodes()) else { return };
            let mut own: Vec<&Task> = tasks.iter().filter(|t| t.service_id == self.service.id).collect();
            if own.is_empty() && self.store.get::<Service>(&self.service.id).ok().flatten().is_none() {
                return;
            }
            own.sort_by_key(|t| (t.slot, t.created_unix));
            for task in own {
                let from = *sent.entry(task.id.clone()).or_insert_with(|| {
                    if first {
                        logs.start_of_tail(&task.id, self.tail)
                    } else {
                        0
                    }
                });
                let (data, end) = logs.since(&task.id, from);
                sent.insert(task.id.clone(), end);
                let node_hostname = nodes
                    .iter()
                    .find(|n| n.id == task.node_id)
                    .map_or(task.node_id.clone(), |n| n.hostname.clone());
                for piece in data.chunks(LOG_PIECE) {
                    let log = TaskLog {
                        task_name: services::task_name(&self.service, task),
                        task_id: task.id.clone(),
                        node_hostname: node_hostname.clone(),
                        data: piece.to_vec(),
                    };
                    if sender.send(Ok(log)).await.is_err() {
                        return;
                    }
                }
            }
            first = false;
            if !self.follow {
                return;
            }
            tokio::select! {
                _ = appended.changed() => {},
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {},
                _ = sender.closed() => return,
            }
        }
    }
}
