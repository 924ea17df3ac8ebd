//! Starting the manager: open the store, bootstrap the cluster, serve gRPC
//! over TLS only.

use crate::auth::require_admin_token;
use crate::cluster::{self, Cluster};
use crate::control::ControlService;
use crate::coordination::Coordination;
use crate::dispatcher::DispatcherService;
use crate::liveness::Heartbeats;
use crate::networks::AddressPool;
use crate::ports::ReservedPorts;
use crate::store::etcd::{EtcdBackend, EtcdConfig};
use crate::ManagerError;
use netctl_proto::control_server::ControlServer;
use netctl_proto::dispatcher_server::DispatcherServer;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// How long a client may take over its TLS handshake (one that sends the
/// first bytes and no more would otherwise hold a task for as long as the
/// manager runs).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a manager is started (the `netctl manager` flags).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Where the state store and tokens live.
    pub data_dir: PathBuf,
    /// Where overlay subnets come from.
    pub pool: AddressPool,
    /// The VXLAN UDP port, fixed at cluster creation (None = keep / default).
    pub data_path_port: Option<u16>,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// How long the node certificates it signs are valid.
    pub cert_expiry: Duration,
    /// The address agents and clients reach it at (shown to other managers).
    pub advertise: SocketAddr,
    /// The host name shown for this manager.
    pub hostname: String,
    /// The etcd cluster keeping the state, when several managers share it
    /// (sled in the data dir otherwise).
    pub etcd: Option<EtcdConfig>,
    /// Where Prometheus metrics are served (`GET /metrics`); none: off.
    pub metrics_addr: Option<SocketAddr>,
}

/// A bootstrapped manager, ready to serve.
pub struct Manager {
    config: ManagerConfig,
    cluster: Cluster,
    store: Arc<crate::Store>,
    etcd: Option<Arc<EtcdBackend>>,
    manager_id: String,
}

impl Manager {
    /// Opens the store and creates or loads the cluster.
    pub async fn start(config: ManagerConfig) -> Result<Self, ManagerError> {
        let (store, etcd) = cluster::open_store(&config.data_dir, config.etcd.as_ref()).await?;
        let store = Arc::new(store);
        let cluster =
            cluster::bootstrap(&store, &config.data_dir, config.data_path_port, config.cert_expiry).await?;
        let manager_id = cluster::manager_id(&config.data_dir)?;
        let record = netctl_proto::ManagerRecord {
            id: manager_id.clone(),
            hostname: config.hostname.clone(),
            address: config.advertise.to_string(),
            started_unix: crate::networks::now_unix(),
        };
        crate::coordination::register(&store, record).await?;
        Ok(Self { config, cluster, store, etcd, manager_id })
    }

    /// The cluster this manager serves.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Serves Control and Dispatcher until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ManagerError> {
        let listen = self.config.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ManagerError::Io { context: format!("listening on {listen}"), source })?;
        let known_nodes = self.store.nodes()?.into_iter().map(|n| n.id);
        let heartbeats = Arc::new(Heartbeats::new(self.config.heartbeat_interval, known_nodes));
        let reports = Arc::new(crate::reports::AgentReports::default());
        // Watch streams never end by themselves: close them when stopping, or
        // the graceful shutdown would wait for every agent forever.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let coordination = match &self.etcd {
            Some(backend) => Coordination::join(
                self.manager_id.clone(),
                backend.clone(),
                heartbeats.clone(),
                stopping.clone(),
            ),
            None => Coordination::alone(self.manager_id.clone()),
        };
        let reserved_ports = ReservedPorts::new(listen.port(), self.cluster.data_path_port);
        let control = ControlService::new(
            self.store.clone(),
            heartbeats.clone(),
            self.config.pool,
            reports.clone(),
            reserved_ports,
            crate::control::ClusterSecurity {
                ca: self.cluster.ca.clone(),
                tokens: self.cluster.tokens.clone(),
                data_path_port: self.cluster.data_path_port,
            },
            coordination.clone(),
        );
        let fanout = self.spawn_loops(&heartbeats, &coordination, &reports, &stopping);
        let metrics = Arc::new(crate::metrics::ManagerMetrics::default());
        let _metrics_server = match self.config.metrics_addr {
            Some(address) => Some(self.serve_metrics(address, metrics.clone(), heartbeats.clone()).await?),
            None => None,
        };
        let dispatcher = DispatcherService::new(
            self.store.clone(),
            heartbeats,
            self.cluster.data_path_port,
            stopping.clone(),
            reports,
            self.cluster.ca.clone(),
            self.cluster.tokens.clone(),
            fanout,
            metrics.clone(),
        );
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let listening = stopping.clone();
        let mut stopped = stopping;
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let tls = self.tls_config();
        let io_error =
            |context: String| move |err| ManagerError::Io { context, source: std::io::Error::other(err) };
        tracing::info!(%listen, ca = %self.cluster.ca.digest, store = %self.store.location(), manager = %self.manager_id, "manager serving (TLS)");
        tonic::transport::Server::builder()
            .layer(crate::metrics::RpcLayer(metrics))
            .tls_config(tls)
            .map_err(io_error("setting up TLS".to_string()))?
            .add_service(ControlServer::with_interceptor(
                control,
                require_admin_token(self.cluster.tokens.clone()),
            ))
            .add_service(DispatcherServer::new(dispatcher))
            .serve_with_incoming_shutdown(crate::plaintext::tls_connections(listener, listening), shutdown)
            .await
            .map_err(io_error(format!("serving on {listen}")))
    }
}

impl Manager {
    /// Starts what runs beside the gRPC services until `stopping`: the
    /// orchestrator (while this manager leads), the token follower, the
    /// forgetting of removed tasks' output, the heap release and the Watch
    /// fan-out, which is returned for the Dispatcher.
    fn spawn_loops(
        &self,
        heartbeats: &Arc<Heartbeats>,
        coordination: &Coordination,
        reports: &Arc<crate::reports::AgentReports>,
        stopping: &tokio::sync::watch::Receiver<bool>,
    ) -> Arc<crate::desired::fanout::Fanout> {
        tokio::spawn(crate::orchestrator::run(
            self.store.clone(),
            heartbeats.clone(),
            coordination.leadership(),
            stopping.clone(),
        ));
        tokio::spawn(crate::secrets::follow_tokens(
            self.store.clone(),
            self.cluster.tokens.clone(),
            stopping.clone(),
        ));
        tokio::spawn(forget_removed_task_logs(self.store.clone(), reports.clone(), stopping.clone()));
        tokio::spawn(crate::memory::release_after_changes(self.store.clone(), stopping.clone()));
        let fanout = crate::desired::fanout::Fanout::new();
        tokio::spawn(fanout.clone().run(self.store.clone(), self.cluster.data_path_port, stopping.clone()));
        fanout
    }

    /// TLS with the manager's certificate; a client certificate (a node's)
    /// is checked against the cluster CA when one is presented. A client
    /// that starts a handshake and does not finish it within
    /// [`TLS_HANDSHAKE_TIMEOUT`] is dropped.
    fn tls_config(&self) -> ServerTlsConfig {
        let identity = &self.cluster.identity;
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&identity.chain_pem, &identity.key_pem))
            .client_ca_root(Certificate::from_pem(&self.cluster.ca.ca_pem))
            .client_auth_optional(true)
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// Serves `metrics` on `address` until the returned server is dropped.
    async fn serve_metrics(
        &self,
        address: SocketAddr,
        metrics: Arc<crate::metrics::ManagerMetrics>,
        heartbeats: Arc<Heartbeats>,
    ) -> Result<netctl_proto::metrics::Server, ManagerError> {
        let store = self.store.clone();
        let render: netctl_proto::metrics::Render = Arc::new(move || metrics.render(&store, &heartbeats));
        let server = netctl_proto::metrics::listen(address, render).await.map_err(|source| {
            ManagerError::Io { context: format!("serving metrics on {address}"), source }
        })?;
        tracing::info!(%address, "metrics served on /metrics");
        Ok(server)
    }
}

/// Drops the kept output of tasks that no longer exist (removed services,
/// history the orchestrator forgot), at most once a second.
async fn forget_removed_task_logs(
    store: Arc<crate::Store>,
    reports: Arc<crate::reports::AgentReports>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut revisions = store.subscribe();
    loop {
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        // Reading every task is not free: not while no output is held.
        if !reports.logs.is_empty() {
            let (store, reports) = (store.clone(), reports.clone());
            let forget = tokio::task::spawn_blocking(move || match store.all::<netctl_proto::Task>() {
                Ok(tasks) => {
                    let ids: std::collections::HashSet<String> = tasks.into_iter().map(|t| t.id).collect();
                    reports.logs.retain(|id| ids.contains(id));
                }
                Err(err) => tracing::warn!("reading tasks to forget their logs: {err}"),
            });
            let _ = forget.await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
