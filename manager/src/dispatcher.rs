//! The `Dispatcher` gRPC service: what agents call to join, to say they are
//! alive, and to watch their node's desired state. A node is the one its
//! TLS client certificate names: it can watch, heartbeat and report only for
//! itself. The join token alone admits only a first Join.

use crate::auth::{certificate_node, presented_token};
use crate::desired::fanout::{Fanout, Subscription};
use crate::liveness::Heartbeats;
use crate::metrics::ManagerMetrics;
use crate::networks::now_unix;
use crate::pki::ClusterCa;
use crate::reports::AgentReports;
use crate::status_reports::StatusReports;
use crate::store::Batch;
use crate::tokens::ClusterTokens;
use crate::{ids, nodes, ManagerError, Store};
use futures_util::Stream;
use netctl_proto::convention::sandbox_name;
use netctl_proto::dispatcher_server::Dispatcher;
use netctl_proto::pki::TokenKind;
use netctl_proto::*;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The Dispatcher service over the shared store.
pub struct DispatcherService {
    store: Arc<Store>,
    heartbeats: Arc<Heartbeats>,
    data_path_port: u16,
    stopping: watch::Receiver<bool>,
    reports: Arc<AgentReports>,
    ca: Arc<ClusterCa>,
    tokens: Arc<ClusterTokens>,
    fanout: Arc<Fanout>,
    metrics: Arc<ManagerMetrics>,
    status_reports: StatusReports,
}

impl DispatcherService {
    /// A Dispatcher telling agents to use `data_path_port` for VXLAN,
    /// signing node certificates with `ca` and admitting first joins with
    /// the join token of `tokens`. Its watch streams are fed by `fanout`
    /// (what each brought its node to is noted in `metrics`) and end when
    /// `stopping` turns true, so that the server can shut down gracefully.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        heartbeats: Arc<Heartbeats>,
        data_path_port: u16,
        stopping: watch::Receiver<bool>,
        reports: Arc<AgentReports>,
        ca: Arc<ClusterCa>,
        tokens: Arc<ClusterTokens>,
        fanout: Arc<Fanout>,
        metrics: Arc<ManagerMetrics>,
    ) -> Self {
        Self {
            store,
            heartbeats,
            data_path_port,
            stopping,
            reports,
            ca,
            tokens,
            fanout,
            metrics,
            status_reports: StatusReports::default(),
        }
    }

    fn heartbeat_interval_ms(&self) -> u32 {
        self.heartbeats.interval().as_millis() as u32
    }

    /// An address on the ingress network for a joining node's ingress_sbox,
    /// and that network's ID.
    fn free_ingress_address(&self) -> Result<(String, Ipv4Addr), Status> {
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
        let last = crate::address_cursors::read_one(&self.store, &ingress.id).map_err(ManagerError::from)?;
        let address = crate::addresses::next_free(subnet, &taken, last).ok_or_else(|| {
            Status::resource_exhausted("the ingress network has no free address for this node")
        })?;
        Ok((ingress.id.clone(), address))
    }

    /// The member node the request's certificate names. `claimed` (a node
    /// ID field of the request, may be empty) must be that node: a node
    /// cannot `acting` for another.
    fn caller<T>(&self, request: &Request<T>, claimed: &str, acting: &str) -> Result<Node, Status> {
        let Some(node_id) = certificate_node(request)? else {
            return Err(Status::unauthenticated(format!(
                "only a node can {acting}: present the node certificate the manager signed at join"
            )));
        };
        if !claimed.is_empty() && claimed != node_id {
            return Err(Status::permission_denied(format!(
                "this connection is node {node_id}'s (its certificate says so); it cannot {acting} for node {claimed}"
            )));
        }
        nodes::member(&self.store, &node_id)
    }

    /// Writes the record of a node that joined (or joined again): its
    /// ingress address and certificate are kept unless a new one was signed.
    /// Returns the record and whether the node was known.
    async fn record_join(
        &self,
        joining: Node,
        signed: Option<&crate::pki::SignedCertificate>,
    ) -> Result<(Node, bool), Status> {
        let mut writer = self.store.write_lock().await;
        let existing = self.store.node(&joining.id).map_err(ManagerError::from)?;
        let mut batch = Batch::new();
        let ingress_address = match existing.as_ref().map(|n| n.ingress_address.clone()) {
            Some(kept) if !kept.is_empty() => kept,
            _ => {
                let (network_id, address) = self.free_ingress_address()?;
                crate::address_cursors::record(&mut batch, &network_id, address);
                address.to_string()
            }
        };
        let certificate = match signed {
            Some(signed) => Some(nodes::certificate_record(signed, &self.ca.digest)),
            None => existing.as_ref().and_then(|n| n.certificate.clone()),
        };
        // What the operator set (`node update`) outlives a rejoin.
        let (availability, labels) = match &existing {
            Some(known) => (known.availability.clone(), known.labels.clone()),
            None => (joining.availability.clone(), joining.labels.clone()),
        };
        let node = Node {
            created_unix: existing.as_ref().map_or_else(now_unix, |n| n.created_unix),
            ingress_address,
            certificate,
            availability,
            labels,
            ..joining
        };
        if existing.as_ref() != Some(&node) {
            batch.put(&node);
            writer.commit(batch).await.map_err(ManagerError::from)?;
        }
        Ok((node, existing.is_some()))
    }

    /// The node ID a Join is for: the certificate's on a rejoin or renewal;
    /// a new one for a first join, which needs the join token and may not
    /// choose its ID.
    fn joining_node_id(&self, request: &Request<JoinRequest>) -> Result<String, Status> {
        let claimed = &request.get_ref().node_id;
        if certificate_node(request)?.is_some() {
            return self.caller(request, claimed, "join").map(|node| node.id);
        }
        match presented_token(request) {
            Some(token) if self.tokens.accepts(TokenKind::Join, token) => {}
            Some(_) => {
                return Err(Status::unauthenticated("the join token presented is not valid for this cluster"))
            }
            None => return Err(Status::unauthenticated("no join token presented")),
        }
        if !claimed.is_empty() {
            return Err(Status::permission_denied(format!(
                "the join token cannot act as node {claimed}: a node rejoins with its own certificate"
            )));
        }
        if request.get_ref().csr.is_empty() {
            return Err(Status::invalid_argument("a joining node must send a certificate request"));
        }
        Ok(ids::new_id())
    }
}

/// Whether the request came from the manager's own host (the connection's
/// two ends share an address).
fn from_manager_host<T>(request: &Request<T>) -> bool {
    match (request.local_addr(), request.remote_addr()) {
        (Some(local), Some(remote)) => local.ip() == remote.ip(),
        _ => false,
    }
}

/// One node's Watch stream, read straight from its subscription (no task
/// or channel of its own between them: at a thousand nodes those held
/// 20 MB): ends when the node is removed or the manager stops.
struct Watching {
    subscription: Subscription,
    node_id: String,
    stopping: watch::Receiver<bool>,
    metrics: Arc<ManagerMetrics>,
}

impl Watching {
    /// The next message and what is left of the stream (nothing after an
    /// error).
    async fn step(watching: Option<Self>) -> Option<(Result<WatchMessage, Status>, Option<Self>)> {
        let mut watching = watching?;
        let next = tokio::select! {
            next = watching.subscription.next() => next,
            _ = watching.stopping.wait_for(|stop| *stop) => return None,
        };
        match &next {
            Ok(message) => watching.metrics.watched(&watching.node_id, message),
            Err(_) => return Some((next, None)),
        }
        Some((next, Some(watching)))
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let manager_host = from_manager_host(&request);
        let node_id = self.joining_node_id(&request)?;
        let member = certificate_node(&request)?.is_some();
        let join = request.into_inner();
        if join.desired_state_version != netctl_proto::DESIRED_STATE_VERSION {
            // A member's agent asking again (every 5 s at most) is alive:
            // judged Down, its tasks would move and every node would drop
            // their endpoints while they still serve.
            if member && self.heartbeats.record_outdated(&node_id, join.desired_state_version) {
                tracing::warn!(
                    node = %node_id,
                    agent_version = join.desired_state_version,
                    "a node's agent reads another desired-state version: the node stays Ready with its tasks \
                     but gets no new task until its agent is upgraded"
                );
            }
            return Err(Status::failed_precondition(format!(
                "this node's agent reads desired-state version {}; this manager sends version {}: upgrade the \
                 agent (the node keeps its data path as it is until then)",
                join.desired_state_version,
                netctl_proto::DESIRED_STATE_VERSION
            )));
        }
        let advertise_addr = join.advertise_addr.parse::<IpAddr>().map_err(|_| {
            Status::invalid_argument(format!("invalid advertise address {:?}", join.advertise_addr))
        })?;
        if advertise_addr.is_ipv6() {
            // The data path (VXLAN between nodes) runs over IPv4.
            return Err(Status::invalid_argument(format!(
                "advertise address {advertise_addr} is IPv6; the data path between nodes runs over IPv4: give \
                 the node's IPv4 address"
            )));
        }
        if join.hostname.is_empty() {
            return Err(Status::invalid_argument("a joining node must give its hostname"));
        }
        let hostname = netctl_proto::printable(&join.hostname, crate::validate::MAX_NAME_LEN);
        let signed = match join.csr.as_slice() {
            [] => None,
            csr => Some(
                self.ca.sign_node(csr, &node_id).map_err(|err| Status::invalid_argument(err.to_string()))?,
            ),
        };
        let joining = Node {
            id: node_id,
            hostname,
            advertise_addr: join.advertise_addr,
            availability: nodes::ACTIVE.to_string(),
            manager_host,
            ..Default::default()
        };
        let (node, rejoin) =
            crate::store::retrying(|| self.record_join(joining.clone(), signed.as_ref())).await?;
        self.heartbeats.joined(&node.id);
        tracing::info!(node = %node.id, hostname = %node.hostname, addr = %node.advertise_addr, rejoin, certificate_signed = signed.is_some(), "node joined");
        Ok(Response::new(JoinResponse {
            node_id: node.id,
            heartbeat_interval_ms: self.heartbeat_interval_ms(),
            data_path_port: u32::from(self.data_path_port),
            certificate: signed.map(|s| s.pem).unwrap_or_default(),
            ca_certificate: self.ca.ca_pem.clone(),
            desired_state_version: netctl_proto::DESIRED_STATE_VERSION,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let node = self.caller(&request, &request.get_ref().node_id, "send heartbeats")?;
        self.heartbeats.record(&node.id);
        Ok(Response::new(HeartbeatResponse { heartbeat_interval_ms: self.heartbeat_interval_ms() }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchMessage, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let node_id = self.caller(&request, &request.get_ref().node_id, "watch the desired state")?.id;
        let watching = Watching {
            subscription: self.fanout.subscribe(&node_id, self.store.clone()),
            node_id,
            stopping: self.stopping.clone(),
            metrics: self.metrics.clone(),
        };
        Ok(Response::new(Box::pin(futures_util::stream::unfold(Some(watching), Watching::step))))
    }

    async fn report_status(
        &self,
        request: Request<ReportStatusRequest>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        let node = self.caller(&request, &request.get_ref().node_id, "report task status")?;
        let report = request.into_inner();
        self.status_reports.apply(&self.store, &node.id, report.tasks).await?;
        Ok(Response::new(ReportStatusResponse {}))
    }

    async fn push_logs(
        &self,
        request: Request<tonic::Streaming<LogChunk>>,
    ) -> Result<Response<PushLogsResponse>, Status> {
        let node = self.caller(&request, "", "ship task logs")?;
        let mut chunks = request.into_inner();
        // The task of the last sandbox seen: chunks come in runs per task.
        let mut owner: Option<(String, Option<String>)> = None;
        while let Some(chunk) = chunks.message().await? {
            if !chunk.node_id.is_empty() && chunk.node_id != node.id {
                return Err(Status::permission_denied(format!(
                    "this connection is node {}'s; it cannot ship logs for node {}",
                    node.id, chunk.node_id
                )));
            }
            if owner.as_ref().is_none_or(|(sandbox, _)| *sandbox != chunk.sandbox) {
                let tasks: Vec<Task> = self.store.all().map_err(ManagerError::from)?;
                let task =
                    tasks.into_iter().find(|t| t.node_id == node.id && sandbox_name(&t.id) == chunk.sandbox);
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
        let node_id = self.caller(&request, &request.get_ref().node_id, "read log offsets")?.id;
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
        let node = self.caller(&request, &request.get_ref().node_id, "report the topology")?;
        let mut topology = request.into_inner();
        topology.node_id = node.id;
        self.reports.topologies.record(topology);
        Ok(Response::new(ReportTopologyResponse {}))
    }
}
