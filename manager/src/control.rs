//! The `Control` gRPC service: what `netctl network ...` and `netctl node ...`
//! call. Each handler validates, calls one store operation, answers.

use crate::liveness::Heartbeats;
use crate::networks::{self, AddressPool};
use crate::Store;
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
}

impl ControlService {
    /// A Control service allocating from `pool`.
    pub fn new(store: Arc<Store>, heartbeats: Arc<Heartbeats>, pool: AddressPool) -> Self {
        Self { store, heartbeats, pool }
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
        let mut networks = self.store.networks().map_err(crate::ManagerError::from)?;
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
        let mut nodes = self.store.nodes().map_err(crate::ManagerError::from)?;
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
}
