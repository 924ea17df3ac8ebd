//! The store test suite: the same tests against every backend, sled in a
//! temp dir and a real etcd (Debian's etcd-server) started in a temp dir on
//! the loopback of a private network namespace. On etcd, "another manager"
//! is a second store on the same prefix; on sled it is the same store.

use super::etcd::EtcdConfig;
use super::{retrying, Batch, Kind, Store, StoreError};
use crate::networks::{self, AddressPool};
use netctl_proto::{Network, NetworkCreateRequest, Node};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// What a test runs against.
#[allow(async_fn_in_trait)]
trait Fixture {
    /// A manager's store.
    async fn store(&mut self) -> Arc<Store>;
    /// Another manager's view of the same state (sled: the same store).
    async fn peer(&mut self) -> Arc<Store>;
    /// The same state after every handle was dropped and opened again.
    async fn reopen(&mut self) -> Arc<Store>;
    /// Another cluster's state on the same backend.
    async fn other_cluster(&mut self) -> Arc<Store>;
}

struct Sled {
    dir: tempfile::TempDir,
    other: tempfile::TempDir,
    open: Option<Arc<Store>>,
}

impl Sled {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), other: tempfile::tempdir().unwrap(), open: None }
    }
}

impl Fixture for Sled {
    async fn store(&mut self) -> Arc<Store> {
        self.open.get_or_insert_with(|| Arc::new(Store::open(self.dir.path()).unwrap())).clone()
    }
    async fn peer(&mut self) -> Arc<Store> {
        self.store().await
    }
    async fn reopen(&mut self) -> Arc<Store> {
        let old = self.open.take().expect("opened before");
        assert_eq!(Arc::strong_count(&old), 1, "every handle dropped before reopening");
        drop(old);
        self.store().await
    }
    async fn other_cluster(&mut self) -> Arc<Store> {
        Arc::new(Store::open(self.other.path()).unwrap())
    }
}

/// A one-member etcd in a temp dir, on 127.0.0.1 of this thread's own
/// network namespace; killed on drop.
struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    endpoint: String,
    prefix: String,
}

impl Etcd {
    fn start() -> Self {
        // Only this thread (and the etcd it forks) moves: the test's
        // current-thread runtime runs every task here.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the network namespace");
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("run ip");
        assert!(up.success(), "bringing lo up");
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = ("http://127.0.0.1:23790", "http://127.0.0.1:23800");
        let child = Command::new("etcd")
            .args(["--name", "suite", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", client, "--advertise-client-urls", client])
            .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("suite={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server package) must be installed");
        Self { child, _dir: dir, endpoint: client.to_string(), prefix: "/suite".into() }
    }

    fn config(&self, prefix: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.endpoint.clone()],
            prefix: prefix.into(),
            ca_file: None,
            client_identity: None,
        }
    }

    async fn open(&self, prefix: &str) -> Arc<Store> {
        for _ in 0..100 {
            match Store::open_etcd(&self.config(prefix)).await {
                Ok((store, _)) => return Arc::new(store),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("etcd did not answer within 10 s");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fixture for Etcd {
    async fn store(&mut self) -> Arc<Store> {
        let prefix = self.prefix.clone();
        self.open(&prefix).await
    }
    async fn peer(&mut self) -> Arc<Store> {
        self.store().await
    }
    async fn reopen(&mut self) -> Arc<Store> {
        self.store().await
    }
    async fn other_cluster(&mut self) -> Arc<Store> {
        self.open("/suite-other").await
    }
}

fn network(id: &str, vni: u32) -> Network {
    Network { id: id.into(), name: format!("net-{id}"), vni, ..Default::default() }
}

async fn records_settings_and_revisions(fixture: &mut impl Fixture) {
    let store = fixture.store().await;
    assert_eq!(store.revision(), 0);
    let mut writer = store.write_lock().await;
    assert_eq!(writer.put(&network("a", 4097)).await.unwrap(), 1);
    assert_eq!(writer.put(&network("b", 4098)).await.unwrap(), 2);
    assert_eq!(writer.delete::<Network>("a").await.unwrap(), 3);
    let mut batch = Batch::new();
    batch.put_setting("blob", b"\x00binary\xff").put(&Node { id: "n1".into(), ..Default::default() });
    assert_eq!(writer.commit(batch).await.unwrap(), 4);
    writer.put_setting("data_path_port", 4789).await.unwrap();
    drop(writer);
    assert_eq!(store.revision(), 5);
    assert_eq!(store.networks().unwrap(), vec![network("b", 4098)]);
    assert_eq!(store.get::<Network>("a").unwrap(), None);
    assert_eq!(store.setting("data_path_port").unwrap(), Some(4789));
    assert_eq!(store.setting_bytes("blob").unwrap().as_deref(), Some(&b"\x00binary\xff"[..]));
    assert_eq!(store.setting("missing").unwrap(), None);
    let kinds: BTreeSet<&str> = store.dump().unwrap().iter().map(|c| c.kind.name()).collect();
    assert_eq!(kinds, BTreeSet::from(["network", "node", "setting"]));
    drop(store);
    let reopened = fixture.reopen().await;
    assert_eq!(reopened.revision(), 5);
    assert_eq!(reopened.networks().unwrap(), vec![network("b", 4098)]);
    assert_eq!(reopened.setting("data_path_port").unwrap(), Some(4789));
}

async fn a_writer_that_read_an_old_revision_conflicts(fixture: &mut impl Fixture) {
    let store = fixture.store().await;
    let peer = fixture.peer().await;
    let mut writer = store.write_lock().await;
    writer.put(&network("a", 4097)).await.unwrap();
    drop(writer);
    let mut seen = peer.subscribe();
    tokio::time::timeout(Duration::from_secs(5), seen.wait_for(|r| *r == 1)).await.unwrap().unwrap();
    // A stale writer: it read revision 1, someone committed revision 2.
    let stale = store.revision();
    peer.write_lock().await.put(&network("b", 4098)).await.unwrap();
    let changes = vec![super::Change { kind: Kind::Network, key: "c".into(), value: Some(vec![]) }];
    let refused = store.backend.commit(&changes, stale, "writing network c".into()).await;
    match refused {
        Err(StoreError::Conflict { expected, found, .. }) => assert_eq!((expected, found), (1, 2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.get::<Network>("c").unwrap(), None, "a refused commit writes nothing");
    // A retried operation reads again and succeeds.
    let mut attempts = 0;
    let done: Result<u64, StoreError> = retrying(|| {
        attempts += 1;
        let expected = if attempts == 1 { stale } else { store.revision() };
        let store = store.clone();
        let changes = changes.clone();
        async move { store.backend.commit(&changes, expected, "writing network c".into()).await }
    })
    .await;
    assert_eq!((done.unwrap(), attempts), (3, 2));
}

async fn every_manager_sees_every_revision(fixture: &mut impl Fixture) {
    let store = fixture.store().await;
    let peer = fixture.peer().await;
    let mut revisions = peer.subscribe();
    let node = Node { id: "n1".into(), hostname: "node0".into(), ..Default::default() };
    store.write_lock().await.put(&node).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), revisions.wait_for(|r| *r == 1)).await.unwrap().unwrap();
    assert_eq!(peer.node("n1").unwrap(), Some(node));
}

async fn concurrent_creates_on_two_managers_never_share(fixture: &mut impl Fixture) {
    let managers = [fixture.store().await, fixture.peer().await];
    networks::ensure_ingress(&managers[0]).await.unwrap();
    let pool = AddressPool { pool: "10.0.0.0/8".parse().unwrap(), mask_length: 24 };
    let creates: Vec<_> = (0..24)
        .map(|i| {
            let store = managers[i % 2].clone();
            let request = NetworkCreateRequest { name: format!("n{i}"), ..Default::default() };
            tokio::spawn(async move { networks::create(&store, pool, &request).await })
        })
        .collect();
    for create in creates {
        create.await.unwrap().unwrap();
    }
    // Each manager has seen its own commits: together, all of them.
    let expected_revision = managers[0].revision().max(managers[1].revision());
    for store in &managers {
        let mut revisions = store.subscribe();
        tokio::time::timeout(Duration::from_secs(5), revisions.wait_for(|r| *r >= expected_revision))
            .await
            .unwrap()
            .unwrap();
        let networks = store.networks().unwrap();
        let subnets: BTreeSet<_> = networks.iter().map(|n| n.subnet.clone()).collect();
        let vnis: BTreeSet<_> = networks.iter().map(|n| n.vni).collect();
        assert_eq!((networks.len(), subnets.len(), vnis.len()), (25, 25, 25));
    }
}

async fn clusters_never_see_each_other(fixture: &mut impl Fixture) {
    let store = fixture.store().await;
    store.write_lock().await.put(&network("a", 4097)).await.unwrap();
    assert_eq!(store.networks().unwrap(), vec![network("a", 4097)], "before");
    let other = fixture.other_cluster().await;
    assert_eq!(store.networks().unwrap(), vec![network("a", 4097)], "after open");
    assert_eq!(other.revision(), 0);
    assert!(other.networks().unwrap().is_empty());
    other.write_lock().await.put(&network("z", 5000)).await.unwrap();
    assert_eq!(store.networks().unwrap(), vec![network("a", 4097)]);
}

async fn a_large_batch_is_committed_in_parts(fixture: &mut impl Fixture) {
    let store = fixture.store().await;
    let mut batch = Batch::new();
    for i in 0..250 {
        batch.put(&network(&format!("n{i:03}"), 5000 + i));
    }
    let revision = store.write_lock().await.commit_in_parts(batch).await.unwrap();
    assert_eq!(revision, 3, "250 changes in parts of {}", super::MAX_CHANGES_PER_COMMIT);
    assert_eq!(store.networks().unwrap().len(), 250);
    let revision = store.write_lock().await.commit_in_parts(Batch::new()).await.unwrap();
    assert_eq!((revision, store.revision()), (3, 3), "an empty batch commits nothing");
}

async fn shared_records_are_read_once_per_revision_and_hold_every_write_seen(fixture: &mut impl Fixture) {
    let store = fixture.store().await;
    let peer = fixture.peer().await;
    store.write_lock().await.put(&network("a", 4097)).await.unwrap();
    let first = store.shared::<Network>().unwrap();
    assert_eq!(*first, vec![network("a", 4097)]);
    assert!(Arc::ptr_eq(&first, &store.shared().unwrap()), "read once at one revision");
    // Its own write, read right after the commit returned.
    store.write_lock().await.put(&network("b", 4098)).await.unwrap();
    assert_eq!(*store.shared::<Network>().unwrap(), vec![network("a", 4097), network("b", 4098)]);
    // Another manager's write, once this manager has seen its revision.
    let mut revisions = store.subscribe();
    // (The peer may not have seen revision 2 yet: a lost race is retried.)
    retrying(|| async { peer.write_lock().await.delete::<Network>("a").await }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), revisions.wait_for(|r| *r == 3)).await.unwrap().unwrap();
    assert_eq!(*store.shared::<Network>().unwrap(), vec![network("b", 4098)]);
    assert_eq!(*first, vec![network("a", 4097)], "a reader keeps what it read");
}

async fn shared_records_are_brought_to_this_managers_commits_and_read_again_after_anothers(
    fixture: &mut impl Fixture,
) {
    let store = fixture.store().await;
    let peer = fixture.peer().await;
    let mut batch = Batch::new();
    for i in 1..=40 {
        batch.put(&network(&format!("n{i:02}"), 4096 + i));
    }
    let created = store.write_lock().await.commit(batch).await.unwrap();
    let first = store.shared::<Network>().unwrap();
    let nodes = store.shared::<Node>().unwrap();
    // Another kind written: the networks read are still the networks.
    store.write_lock().await.put(&Node { id: "n1".into(), ..Default::default() }).await.unwrap();
    assert!(Arc::ptr_eq(&first, &store.shared().unwrap()), "no network was written");
    assert!(!Arc::ptr_eq(&nodes, &store.shared().unwrap()), "a node was written");
    // One network added before the first, one replaced, one removed, over
    // two commits: brought in from the commits, the same as a whole read.
    let mut batch = Batch::new();
    batch.put(&network("n00", 4000)).put(&network("n02", 4200));
    store.write_lock().await.commit(batch).await.unwrap();
    let removed = store.write_lock().await.delete::<Network>("n03").await.unwrap();
    let written =
        store.written_since::<Network>(created, removed, first.len()).expect("this manager's commits");
    assert_eq!(written.keys().collect::<Vec<_>>(), ["n00", "n02", "n03"]);
    let brought = store.shared::<Network>().unwrap();
    assert_eq!(*brought, store.networks().unwrap());
    assert_eq!(brought.iter().take(4).map(|n| n.vni).collect::<Vec<_>>(), [4000, 4097, 4200, 4100]);
    assert_eq!(first.len(), 40, "a reader keeps what it read");
    // Another manager's commit: read again, whole.
    let mut revisions = store.subscribe();
    let after =
        retrying(|| async { peer.write_lock().await.put(&network("n99", 4999)).await }).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), revisions.wait_for(|r| *r >= after)).await.unwrap().unwrap();
    assert_eq!(
        store.written_since::<Network>(removed, after, brought.len()).is_some(),
        Arc::ptr_eq(&store, &peer),
        "another manager's commit is not known here"
    );
    assert_eq!(*store.shared::<Network>().unwrap(), store.networks().unwrap());
    assert_eq!(store.shared::<Network>().unwrap().len(), 41);
}

async fn task_progress_is_known_to_the_manager_that_committed_it(fixture: &mut impl Fixture) {
    let store = fixture.store().await;
    let peer = fixture.peer().await;
    let start = store.write_lock().await.put(&network("a", 4097)).await.unwrap();
    assert!(store.only_task_progress_since(start), "nothing committed since");
    let mut progress = Batch::task_progress();
    progress.put(&network("b", 4098));
    let after = store.write_lock().await.commit(progress).await.unwrap();
    assert!(store.only_task_progress_since(start));
    let mut seen = peer.subscribe();
    tokio::time::timeout(Duration::from_secs(5), seen.wait_for(|r| *r >= after)).await.unwrap().unwrap();
    assert_eq!(
        peer.only_task_progress_since(start),
        Arc::ptr_eq(&store, &peer),
        "another manager does not know what a commit was"
    );
    store.write_lock().await.put(&network("c", 4099)).await.unwrap();
    assert!(!store.only_task_progress_since(start), "a network was created since");
    assert!(!store.only_task_progress_since(after));
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&mut super::Sled::new()).await;
                }
            )*
        }
        mod on_etcd {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&mut super::Etcd::start()).await;
                }
            )*
        }
    };
}

suite!(
    records_settings_and_revisions,
    a_writer_that_read_an_old_revision_conflicts,
    every_manager_sees_every_revision,
    concurrent_creates_on_two_managers_never_share,
    clusters_never_see_each_other,
    a_large_batch_is_committed_in_parts,
    shared_records_are_read_once_per_revision_and_hold_every_write_seen,
    task_progress_is_known_to_the_manager_that_committed_it,
    shared_records_are_brought_to_this_managers_commits_and_read_again_after_anothers,
);

/// etcd only: a member that refuses connections and one that accepts them
/// but never answers (a stopped process) are skipped for one that answers.
#[tokio::test]
async fn on_etcd_members_that_do_not_answer_are_skipped() {
    let etcd = Etcd::start();
    // Bound but never read: the kernel completes the TCP handshake.
    let silent = std::net::TcpListener::bind("127.0.0.1:23792").unwrap();
    let mut config = etcd.config("/suite-members");
    config.endpoints =
        vec!["http://127.0.0.1:23791".into(), "http://127.0.0.1:23792".into(), etcd.endpoint.clone()];
    let _ready = etcd.open("/suite-ready").await;
    let (store, _) = Store::open_etcd(&config).await.expect("opened through the answering member");
    store.write_lock().await.put(&network("a", 4097)).await.expect("committed through the answering member");
    assert_eq!(store.networks().unwrap(), vec![network("a", 4097)]);
    drop(silent);
}

/// `migrate_to_etcd`, tried again while the sled store's file lock is still
/// held: in one process, sled's IO threads let go of it a moment after its
/// last handle is dropped (seen once in CI: "could not acquire lock").
async fn migrate_when_free(
    dir: &std::path::Path,
    config: &EtcdConfig,
) -> Result<usize, crate::error::ManagerError> {
    for _ in 0..50 {
        match crate::cluster::migrate_to_etcd(dir, config).await {
            Err(err) if err.to_string().contains("could not acquire lock") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            done => return done,
        }
    }
    crate::cluster::migrate_to_etcd(dir, config).await
}

/// etcd only: `--migrate-to-etcd` copies a sled data dir into an empty
/// prefix, the data dir then refuses to start on sled, and a second copy
/// into the now used prefix is refused.
#[tokio::test]
async fn on_etcd_a_sled_store_migrates_once_into_an_empty_prefix() {
    let etcd = Etcd::start();
    let _ready = etcd.open("/suite-ready").await;
    let dir = tempfile::tempdir().unwrap();
    let (sled, _) = crate::cluster::open_store(dir.path(), None).await.unwrap();
    let request = NetworkCreateRequest { name: "kept".into(), ..Default::default() };
    let pool = AddressPool { pool: "10.0.0.0/8".parse().unwrap(), mask_length: 24 };
    let kept = networks::create(&sled, pool, &request).await.unwrap();
    drop(sled);
    let config = etcd.config("/suite-migrated");
    let copied = migrate_when_free(dir.path(), &config).await.unwrap();
    assert!(copied >= 1, "copied {copied} entries");
    let (store, _) = crate::cluster::open_store(dir.path(), Some(&config)).await.unwrap();
    assert_eq!(store.networks().unwrap(), vec![kept]);
    let on_sled = crate::cluster::open_store(dir.path(), None).await.map(drop);
    assert!(on_sled.unwrap_err().to_string().contains("--etcd-endpoints"));
    let again = migrate_when_free(dir.path(), &config).await.map(drop);
    assert!(again.unwrap_err().to_string().contains("is not empty"));
}
