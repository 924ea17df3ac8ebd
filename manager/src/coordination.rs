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

use crate::liveness::{Heartbeats, MISSED_HEARTBEATS_BEFORE_DOWN};
use crate::store::etcd::EtcdBackend;
use crate::store::Store;
use crate::ManagerError;
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
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
/// How long granting a lease and putting this manager's presence on it may
/// take before the attempt is given up and made again.
const HOLD_DEADLINE: Duration = Duration::from_secs(5);

/// How long another manager may take to share heartbeats again after etcd
/// stalled or the leader changed: a failed term's pause, a lease attempt on
/// a member that is gone (up to [`HOLD_DEADLINE`]), the pause and a lease on
/// the next member, its next publication, and the grace every node gets.
fn recovery(heartbeat_interval: Duration) -> Duration {
    KEEP_ALIVE_EVERY * 2 + HOLD_DEADLINE + heartbeat_interval * (1 + MISSED_HEARTBEATS_BEFORE_DOWN)
}

/// Where this manager stands among the managers of its cluster.
#[derive(Clone)]
pub struct Coordination {
    /// This manager's ID (kept in its data dir).
    pub manager_id: String,
    /// Whether this manager leads; held here as long as the manager runs,
    /// so that the channel never closes (a closed one would wake whoever
    /// waits for a change at once, forever).
    leading: Arc<watch::Sender<bool>>,
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
        Self { manager_id, leading: Arc::new(watch::Sender::new(true)), backend: None }
    }

    /// Joins the managers sharing `backend`: campaigns for leadership and
    /// shares heartbeats until `stopping`.
    pub fn join(
        manager_id: String,
        backend: Arc<EtcdBackend>,
        heartbeats: Arc<Heartbeats>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let leading = Arc::new(watch::Sender::new(false));
        let (current, held) = watch::channel(None);
        heartbeats.share_with_other_managers(recovery(heartbeats.interval()));
        let lease = Lease { current, backend: backend.clone(), manager_id: manager_id.clone() };
        tokio::spawn(lease.run(leading.clone(), heartbeats.clone(), stopping.clone()));
        tokio::spawn(publish_heartbeats(
            backend.clone(),
            manager_id.clone(),
            held,
            heartbeats.clone(),
            stopping.clone(),
        ));
        tokio::spawn(merge_heartbeats(backend.clone(), manager_id.clone(), heartbeats, stopping));
        Self { manager_id, leading, backend: Some(backend) }
    }

    /// Sees every change of leadership.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
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
    /// The lease held now, for the heartbeats shared on it.
    current: watch::Sender<Option<i64>>,
    backend: Arc<EtcdBackend>,
    manager_id: String,
}

/// A lease kept alive on one member.
struct HeldLease {
    id: i64,
    keeper: LeaseKeeper,
    answers: LeaseKeepAliveStream,
    /// The member keeping it, for the campaign.
    client: Client,
}

impl Lease {
    async fn run(
        self,
        leading: Arc<watch::Sender<bool>>,
        heartbeats: Arc<Heartbeats>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut failing = false;
        loop {
            let outcome = tokio::select! {
                outcome = self.term(&leading, &heartbeats, &mut failing) => outcome,
                _ = stopping.wait_for(|stop| *stop) => Ok(()),
            };
            if leading.send_replace(false) {
                tracing::warn!(manager = %self.manager_id, "this manager no longer leads");
            }
            if *stopping.borrow() {
                return;
            }
            if let Err(err) = outcome {
                // Said once per outage, not at every attempt.
                if !failing {
                    tracing::warn!(manager = %self.manager_id, "etcd lease lost: {err}; trying again every {KEEP_ALIVE_EVERY:?}");
                }
                failing = true;
                // The member may be gone: the next term starts on another.
                self.backend.members().move_on();
            }
            tokio::time::sleep(KEEP_ALIVE_EVERY).await;
        }
    }

    /// A new lease, kept alive, with this manager's presence on it.
    async fn hold(&self) -> Result<HeldLease, String> {
        let grant = self.backend.members().call(|mut c| async move { c.lease_grant(LEASE_TTL, None).await });
        let id = grant.await.map_err(|e| e.to_string())?.id();
        let mut client = self.backend.members().stream_client();
        let (keeper, answers) = client.lease_keep_alive(id).await.map_err(|e| e.to_string())?;
        self.put_on_lease(&format!("alive/{}", self.manager_id), id).await?;
        Ok(HeldLease { id, keeper, answers, client })
    }

    /// Puts this manager's ID at `relative`, bound to lease `id`.
    async fn put_on_lease(&self, relative: &str, id: i64) -> Result<(), String> {
        let key = self.backend.key(relative);
        let value = self.manager_id.clone().into_bytes();
        self.backend.members().put_on_lease(key, value, id).await.map_err(|e| e.to_string())
    }

    /// One lease: presence, campaign, leadership until the lease is lost.
    async fn term(
        &self,
        leading: &watch::Sender<bool>,
        heartbeats: &Heartbeats,
        failing: &mut bool,
    ) -> Result<(), String> {
        let HeldLease { id: lease, mut keeper, mut answers, mut client } =
            match tokio::time::timeout(HOLD_DEADLINE, self.hold()).await {
                Ok(held) => held?,
                Err(_) => {
                    return Err(format!("etcd did not grant and keep a lease within {HOLD_DEADLINE:?}"))
                }
            };
        self.current.send_replace(Some(lease));
        if std::mem::take(failing) {
            tracing::info!(manager = %self.manager_id, "etcd lease held again");
        }
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
        let election = self.backend.key("election");
        let lead = async {
            client.campaign(election, self.manager_id.clone(), lease).await.map_err(|e| e.to_string())?;
            self.put_on_lease("leader", lease).await?;
            // A new leader judges no node before the other managers share
            // their heartbeats again: a failover must not reschedule the
            // cluster.
            heartbeats.hold_judgement();
            leading.send_replace(true);
            tracing::info!(manager = %self.manager_id, "this manager leads");
            std::future::pending::<Result<(), String>>().await
        };
        let result = tokio::select! {
            result = keep_alive => result,
            result = lead => result,
        };
        self.current.send_replace(None);
        // Lets another manager lead at once; bounded, as etcd may be gone.
        let revoke = self.backend.members().call(|mut c| async move { c.lease_revoke(lease).await });
        let _ = tokio::time::timeout(KEEP_ALIVE_DEADLINE, revoke).await;
        result
    }
}

/// Every heartbeat interval, and at once when a node is heard from for the
/// first time: publishes the nodes this manager heard from (on its lease:
/// a manager that died stops vouching).
async fn publish_heartbeats(
    backend: Arc<EtcdBackend>,
    manager_id: String,
    held: watch::Receiver<Option<i64>>,
    heartbeats: Arc<Heartbeats>,
    mut stopping: watch::Receiver<bool>,
) {
    let members = backend.members();
    let key = backend.key(&format!("heartbeats/{manager_id}"));
    loop {
        let report = HeartbeatReport {
            last_seen_unix_ms: heartbeats
                .heard_here()
                .into_iter()
                .map(|(id, at)| (id, unix_ms(at)))
                .collect(),
        };
        let lease = *held.borrow();
        if let Some(lease) = lease {
            match members.put_on_lease(key.clone(), report.encode_to_vec(), lease).await {
                Ok(_) => heartbeats.exchanged(),
                Err(err) => tracing::debug!("sharing heartbeats: {err}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(heartbeats.interval()) => {},
            _ = heartbeats.heard_a_new_node() => {},
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// Whenever the store changes: takes in the heartbeats the other managers
/// published, so that a node that joined through any manager is known to
/// the leader at once.
async fn merge_heartbeats(
    backend: Arc<EtcdBackend>,
    manager_id: String,
    heartbeats: Arc<Heartbeats>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut changes = backend.changes();
    loop {
        if let Ok(reports) = backend.cached("heartbeats/") {
            for (_, bytes) in reports.into_iter().filter(|(id, _)| *id != manager_id) {
                let Ok(report) = HeartbeatReport::decode(bytes.as_slice()) else { continue };
                for (node, at) in report.last_seen_unix_ms {
                    heartbeats.merge(&node, UNIX_EPOCH + Duration::from_millis(at.max(0) as u64));
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manager_alone_leads_and_its_leadership_never_changes() {
        let coordination = Coordination::alone("m1".into());
        let mut leadership = coordination.leadership();
        assert!(*leadership.borrow());
        // A closed channel would answer at once (the orchestrator then spun).
        let waited = tokio::time::timeout(Duration::from_millis(200), leadership.changed()).await;
        assert!(waited.is_err(), "the leadership of a manager alone changed or closed: {waited:?}");
    }
}
