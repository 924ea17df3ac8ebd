//! The `Control` gRPC service: what `netctl network ...` and `netctl node ...`
//! call. Each handler validates, calls one store operation, answers.

use crate::liveness::Heartbeats;
use crate::networks::{self, AddressPool};
use crate::ports::ReservedPorts;
use crate::services;
use crate::topology::AgentReports;
use crate::{ManagerError, Store};
use netctl_proto::control_server::Control;
use netctl_proto::*;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tonic::{Request, Response, Status};

/// The Control service over the shared store.
pub struct ControlService {
    store: Arc<Store>,
    heartbeats: Arc<Heartbeats>,
    pool: AddressPool,
    reports: Arc<AgentReports>,
    reserved_ports: ReservedPorts,
}

impl ControlService {
    /// A Control service allocating from `pool`, serving what agents
    /// reported (`reports`) and refusing to publish `reserved_ports`.
    pub fn new(
        store: Arc<Store>,
        heartbeats: Arc<Heartbeats>,
        pool: AddressPool,
        reports: Arc<AgentReports>,
        reserved_ports: ReservedPorts,
    ) -> Self {
        Self { store, heartbeats, pool, reports, reserved_ports }
    }

    /// A service with its tasks, newest first per slot, and node names.
    fn view(&self, service: Service, tasks: &[Task], nodes: &[Node]) -> ServiceView {
        let mut own: Vec<&Task> = tasks.iter().filter(|t| t.service_id == service.id).collect();
        own.sort_by_key(|t| (t.slot, std::cmp::Reverse((t.desired_state == "running", t.created_unix))));
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
        let nodes = nodes
            .into_iter()
            .map(|node| {
                let (liveness, last) = self.heartbeats.status(&node.id);
                let last_heartbeat_unix =
                    last.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs() as i64);
                NodeStatus { node: Some(node), status: liveness.as_str().to_string(), last_heartbeat_unix }
            })
            .collect();
        Ok(Response::new(NodeListResponse { nodes }))
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

    async fn remove_service(
        &self,
        request: Request<ServiceRemoveRequest>,
    ) -> Result<Response<ServiceRemoveResponse>, Status> {
        let service = services::remove(&self.store, &request.get_ref().reference).await?;
        tracing::info!(name = %service.name, "service removed");
        Ok(Response::new(ServiceRemoveResponse { id: service.id }))
    }

    async fn service_logs(
        &self,
        request: Request<ServiceLogsRequest>,
    ) -> Result<Response<ServiceLogsResponse>, Status> {
        let service = services::find(&self.store, &request.get_ref().reference)?;
        let view = self.views(vec![service])?.pop().unwrap_or_default();
        let logs = view
            .tasks
            .into_iter()
            .map(|entry| {
                let task = entry.task.unwrap_or_default();
                TaskLog {
                    task_name: entry.name,
                    data: self.reports.logs.output(&task.id),
                    task_id: task.id,
                    node_hostname: entry.node_hostname,
                }
            })
            .collect();
        Ok(Response::new(ServiceLogsResponse { logs }))
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
