//! Several managers in front of one etcd: who leads, who is reachable, and
//! which nodes any of them heard from.
//!
//! Every manager serves Control and Dispatcher; only the leader runs the
//! orchestrator (scheduling, rescheduling, node liveness decisions). The
//! leader is chosen by etcd's election on a lease of [`LEASE_TTL`] seconds
//! that the manager keeps alive every second: when it dies or loses etcd,
//! the lease expires and another manager's campaign wins. Each manager also
//! keeps, on its lease, `alive/ID` (so `node ls` can say Reachable) and
//! `heartbeats/ID` (the nodes it heard from and when), which every manager
//! merges into its own liveness table. On sled there is one manager, and it
//! always leads.

use crate::liveness::Heartbeats;
use crate::store::etcd::{EtcdBackend, EtcdConfig};
use crate::store::Store;
use crate::ManagerError;
use etcd_client::{Client, PutOptions};
use netctl_proto::{HeartbeatReport, ManagerRecord};
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Seconds a manager's lease lives without a keep-alive.
pub const LEASE_TTL: i64 = 3;
/// How often the lease is kept alive.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);
/// How long a keep-alive may go unanswered before leadership is given up
/// (well before the lease expires, so two managers never both lead).
const KEEP_ALIVE_DEADLINE: Duration = Duration::from_millis(1500);

/// Where this manager stands among the managers of its cluster.
#[derive(Clone)]
pub struct Coordination {
    /// This manager's ID (kept in its data dir).
    pub manager_id: String,
    leading: watch::Receiver<bool>,
    backend: Option<Arc<EtcdBackend>>,
}

/// What `cluster info` and `node ls` say of one manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerStatus {
    /// Its record.
    pub record: ManagerRecord,
    /// "Leader", "Reachable" or "Unreachable".
    pub status: &'static str,
}

impl Coordination {
    /// The one manager of a sled store: it leads.
    pub fn alone(manager_id: String) -> Self {
        let (_, leading) = watch::channel(true);
        Self { manager_id, leading, backend: None }
    }

    /// Joins the managers sharing `backend`: campaigns for leadership and
    /// shares heartbeats until `stopping`.
    pub async fn join(
        manager_id: String,
        config: &EtcdConfig,
        backend: Arc<EtcdBackend>,
        heartbeats: Arc<Heartbeats>,
        store: Arc<Store>,
        stopping: watch::Receiver<bool>,
    ) -> Result<Self, ManagerError> {
        // Leases and the election block for long: a client without a
        // request timeout.
        let client = config.client(None).await?;
        let (leading_tx, leading) = watch::channel(false);
        let lease = Lease { client, backend: backend.clone(), manager_id: manager_id.clone() };
        tokio::spawn(lease.run(leading_tx, heartbeats.clone(), store, stopping.clone()));
        tokio::spawn(share_heartbeats(backend.clone(), manager_id.clone(), heartbeats, stopping));
        Ok(Self { manager_id, leading, backend: Some(backend) })
    }

    /// Sees every change of leadership.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Every manager that served the cluster, with its status.
    pub fn managers(&self, store: &Store) -> Result<Vec<ManagerStatus>, ManagerError> {
        let records: Vec<ManagerRecord> = store.all()?;
        let Some(backend) = &self.backend else {
            return Ok(records
                .into_iter()
                .filter(|r| r.id == self.manager_id)
                .map(|record| ManagerStatus { record, status: "Leader" })
                .collect());
        };
        let alive: Vec<String> = backend.cached("alive/")?.into_iter().map(|(id, _)| id).collect();
        let leader = backend
            .cached("leader")?
            .into_iter()
            .next()
            .map(|(_, id)| String::from_utf8_lossy(&id).into_owned());
        Ok(records
            .into_iter()
            .map(|record| {
                let status = if leader.as_deref() == Some(record.id.as_str()) {
                    "Leader"
                } else if alive.contains(&record.id) {
                    "Reachable"
                } else {
                    "Unreachable"
                };
                ManagerStatus { record, status }
            })
            .collect())
    }
}

/// The MANAGER STATUS of `node`: that of the manager on its host (same
/// address or host name), or "" for a worker.
pub fn status_of_node(node: &netctl_proto::Node, managers: &[ManagerStatus]) -> &'static str {
    let on_host = |m: &&ManagerStatus| {
        let ip = m.record.address.rsplit_once(':').map_or(m.record.address.as_str(), |(ip, _)| ip);
        ip == node.advertise_addr || (!m.record.hostname.is_empty() && m.record.hostname == node.hostname)
    };
    match managers.iter().find(on_host) {
        Some(manager) => manager.status,
        None if node.manager_host && managers.len() == 1 => managers[0].status,
        None => "",
    }
}

/// Writes this manager's record (ID, host name, address) unless it is
/// already stored as it is.
pub async fn register(store: &Store, record: ManagerRecord) -> Result<(), ManagerError> {
    crate::store::retrying(|| async {
        let mut writer = store.write_lock().await;
        let kept: Option<ManagerRecord> = store.get(&record.id)?;
        let unchanged = kept
            .as_ref()
            .is_some_and(|k| ManagerRecord { started_unix: record.started_unix, ..k.clone() } == record);
        if !unchanged {
            writer.put(&record).await?;
        }
        Ok(())
    })
    .await
}

/// This manager's lease, presence and campaign.
struct Lease {
    client: Client,
    backend: Arc<EtcdBackend>,
    manager_id: String,
}

impl Lease {
    async fn run(
        mut self,
        leading: watch::Sender<bool>,
        heartbeats: Arc<Heartbeats>,
        store: Arc<Store>,
        mut stopping: watch::Receiver<bool>,
    ) {
        loop {
            let outcome = tokio::select! {
                outcome = self.term(&leading, &heartbeats, &store) => outcome,
                _ = stopping.wait_for(|stop| *stop) => Ok(()),
            };
            if leading.send_replace(false) {
                tracing::warn!(manager = %self.manager_id, "this manager no longer leads");
            }
            if *stopping.borrow() {
                return;
            }
            if let Err(err) = outcome {
                tracing::warn!(manager = %self.manager_id, "etcd lease: {err}; trying again");
            }
            tokio::time::sleep(KEEP_ALIVE_EVERY).await;
        }
    }

    /// One lease: presence, campaign, leadership until the lease is lost.
    async fn term(
        &mut self,
        leading: &watch::Sender<bool>,
        heartbeats: &Heartbeats,
        store: &Store,
    ) -> Result<(), String> {
        let lease = self.client.lease_grant(LEASE_TTL, None).await.map_err(|e| e.to_string())?.id();
        let (mut keeper, mut answers) =
            self.client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
        let on_lease = Some(PutOptions::new().with_lease(lease));
        self.client
            .put(
                self.backend.key(&format!("alive/{}", self.manager_id)),
                self.manager_id.clone(),
                on_lease.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let keep_alive = async {
            loop {
                tokio::time::sleep(KEEP_ALIVE_EVERY).await;
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(KEEP_ALIVE_DEADLINE, answers.message()).await {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return Err::<(), String>("the lease expired".into()),
                    Ok(Ok(None)) => return Err("the keep-alive stream ended".into()),
                    Ok(Err(err)) => return Err(err.to_string()),
                    Err(_) => return Err(format!("no keep-alive answer within {KEEP_ALIVE_DEADLINE:?}")),
                }
            }
        };
        let mut campaign_client = self.client.clone();
        let election = self.backend.key("election");
        let leader_key = self.backend.key("leader");
        let manager_id = self.manager_id.clone();
        let lead = async {
            campaign_client.campaign(election, manager_id.clone(), lease).await.map_err(|e| e.to_string())?;
            campaign_client.put(leader_key, manager_id.clone(), on_lease).await.map_err(|e| e.to_string())?;
            // A new leader gives every node the usual grace: a failover
            // must not reschedule the cluster.
            heartbeats.grant_grace(store.nodes().unwrap_or_default().into_iter().map(|n| n.id));
            leading.send_replace(true);
            tracing::info!(manager = %manager_id, "this manager leads");
            std::future::pending::<Result<(), String>>().await
        };
        let result = tokio::select! {
            result = keep_alive => result,
            result = lead => result,
        };
        let _ = self.client.lease_revoke(lease).await;
        result
    }
}

/// Every heartbeat interval: publishes the nodes this manager heard from
/// and merges what the other managers heard.
async fn share_heartbeats(
    backend: Arc<EtcdBackend>,
    manager_id: String,
    heartbeats: Arc<Heartbeats>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut client = backend.client();
    let key = backend.key(&format!("heartbeats/{manager_id}"));
    loop {
        let report = HeartbeatReport {
            last_seen_unix_ms: heartbeats
                .heard_here()
                .into_iter()
                .map(|(id, at)| (id, unix_ms(at)))
                .collect(),
        };
        // Kept for a few intervals: a manager that died stops vouching.
        let ttl = (heartbeats.interval().as_secs() as i64 * 3).max(LEASE_TTL);
        let published = async {
            let lease = client.lease_grant(ttl, None).await?.id();
            client.put(key.clone(), report.encode_to_vec(), Some(PutOptions::new().with_lease(lease))).await
        };
        if let Err(err) = published.await {
            tracing::debug!("sharing heartbeats: {err}");
        }
        if let Ok(reports) = backend.cached("heartbeats/") {
            for (other, bytes) in reports.into_iter().filter(|(id, _)| *id != manager_id) {
                let Ok(report) = HeartbeatReport::decode(bytes.as_slice()) else { continue };
                for (node, at) in report.last_seen_unix_ms {
                    heartbeats.merge(&node, UNIX_EPOCH + Duration::from_millis(at.max(0) as u64));
                }
                tracing::trace!(manager = %other, "merged heartbeats");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(heartbeats.interval()) => {},
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
