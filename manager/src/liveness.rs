//! Node liveness from heartbeats, kept in memory: a node is Ready while its
//! last heartbeat is at most three intervals old, Down otherwise. Nodes known
//! when the manager starts get the benefit of the doubt for three intervals,
//! so that a manager restart does not reschedule every task.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How many heartbeat intervals may pass before a node is Down.
pub const MISSED_HEARTBEATS_BEFORE_DOWN: u32 = 3;

/// What the manager knows of a node's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLiveness {
    /// Heartbeats arrive.
    Ready,
    /// No heartbeat for too long, or none since the manager started.
    Down,
}

impl NodeLiveness {
    /// The word `node ls` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeLiveness::Ready => "Ready",
            NodeLiveness::Down => "Down",
        }
    }
}

/// The liveness of a node whose last heartbeat was at `last` (pure).
pub fn liveness(last: Option<SystemTime>, now: SystemTime, interval: Duration) -> NodeLiveness {
    let grace = interval * MISSED_HEARTBEATS_BEFORE_DOWN;
    match last.map(|t| now.duration_since(t).unwrap_or_default()) {
        Some(age) if age <= grace => NodeLiveness::Ready,
        _ => NodeLiveness::Down,
    }
}

/// Why a node whose agent reads desired-state `version` takes no new task
/// (`node inspect`'s status message).
pub fn outdated_message(version: u32) -> String {
    format!(
        "its agent reads desired-state version {version}, this manager sends version {}: no new task until \
         the agent is upgraded",
        netctl_proto::DESIRED_STATE_VERSION
    )
}

/// Last heartbeat per node ID.
#[derive(Debug)]
pub struct Heartbeats {
    interval: Duration,
    last_seen: Mutex<HashMap<String, SystemTime>>,
    heard: Mutex<std::collections::HashSet<String>>,
    /// Nodes whose agent reads another desired-state version (that
    /// version): alive, but given no new task until it joins.
    outdated: Mutex<HashMap<String, u32>>,
    /// Heartbeats this manager received itself (shared with the others).
    here: Mutex<HashMap<String, SystemTime>>,
    /// Told when a node is first heard from here (to share it at once).
    new_node: tokio::sync::Notify,
    /// With several managers: when heartbeats were last exchanged with
    /// the others through the store (`Some(None)`: not yet).
    exchanged: Mutex<Option<Option<Instant>>>,
    /// How long judging waits after a stall or a change of leader: long
    /// enough for every other manager to share its heartbeats again.
    recovery: Mutex<Duration>,
    /// No node is judged Down before this.
    quiet_until: Mutex<Option<Instant>>,
}

impl Heartbeats {
    /// Heartbeats expected every `interval`; `known` nodes count as seen now.
    pub fn new(interval: Duration, known: impl IntoIterator<Item = String>) -> Self {
        let now = SystemTime::now();
        let last_seen = known.into_iter().map(|id| (id, now)).collect();
        Self {
            interval,
            last_seen: Mutex::new(last_seen),
            heard: Mutex::default(),
            outdated: Mutex::default(),
            here: Mutex::default(),
            new_node: tokio::sync::Notify::new(),
            exchanged: Mutex::default(),
            recovery: Mutex::new(interval * MISSED_HEARTBEATS_BEFORE_DOWN),
            quiet_until: Mutex::default(),
        }
    }

    /// The interval agents are told to use.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Records a heartbeat from `node_id` now.
    pub fn record(&self, node_id: &str) {
        let now = SystemTime::now();
        let first =
            self.here.lock().expect("heartbeat table poisoned").insert(node_id.to_string(), now).is_none();
        self.merge(node_id, now);
        if first {
            self.new_node.notify_one();
        }
    }

    /// Records that `node_id` joined: a heartbeat, and it can take new
    /// tasks again if it was outdated.
    pub fn joined(&self, node_id: &str) {
        self.outdated.lock().expect("heartbeat table poisoned").remove(node_id);
        self.record(node_id);
    }

    /// Records that the agent of member `node_id` asked to join but reads
    /// another desired-state version (refused until it is upgraded): it is
    /// alive and its tasks run on the data path it keeps, so it stays
    /// Ready and its tasks stay, but it gets no new task before it joins.
    /// Whether it was not outdated before.
    pub fn record_outdated(&self, node_id: &str, version: u32) -> bool {
        let before =
            self.outdated.lock().expect("heartbeat table poisoned").insert(node_id.to_string(), version);
        self.record(node_id);
        before.is_none()
    }

    /// The desired-state version `node_id`'s agent reads, if it is not
    /// this manager's ([`Heartbeats::record_outdated`]).
    pub fn outdated_version(&self, node_id: &str) -> Option<u32> {
        self.outdated.lock().expect("heartbeat table poisoned").get(node_id).copied()
    }

    /// Completes when a node is heard from here for the first time (or was
    /// since the last call).
    pub async fn heard_a_new_node(&self) {
        self.new_node.notified().await
    }

    /// Takes in a heartbeat another manager received at `at`.
    pub fn merge(&self, node_id: &str, at: SystemTime) {
        let mut last_seen = self.last_seen.lock().expect("heartbeat table poisoned");
        let last = last_seen.entry(node_id.to_string()).or_insert(at);
        *last = (*last).max(at);
        if liveness(Some(at), SystemTime::now(), self.interval) == NodeLiveness::Ready {
            self.heard.lock().expect("heartbeat table poisoned").insert(node_id.to_string());
        }
    }

    /// The heartbeats this manager received itself, by node.
    pub fn heard_here(&self) -> HashMap<String, SystemTime> {
        self.here.lock().expect("heartbeat table poisoned").clone()
    }

    /// From now on, heartbeats other managers received count too: nodes are
    /// judged only while they are exchanged ([`Heartbeats::exchanged`]),
    /// and not for `recovery` after a stall or a change of leader: the time
    /// another manager may take to share its heartbeats again (to hold a
    /// lease again, perhaps after trying a member that is gone).
    pub fn share_with_other_managers(&self, recovery: Duration) {
        *self.exchanged.lock().expect("heartbeat table poisoned") = Some(None);
        *self.recovery.lock().expect("heartbeat table poisoned") = recovery;
    }

    /// Notes an exchange with the other managers through the store. After a
    /// stall (none for two intervals: the store did not answer) judging
    /// waits while the others catch up ([`Heartbeats::hold_judgement`]):
    /// what arrives late is not a node that died.
    pub fn exchanged(&self) {
        let now = Instant::now();
        let mut exchanged = self.exchanged.lock().expect("heartbeat table poisoned");
        let previous = exchanged.flatten();
        if previous.is_none_or(|at| now - at > self.interval * 2) {
            // Before judging resumes: a pass that sees the exchange again
            // also sees the wait.
            self.hold_judgement();
        }
        *exchanged = Some(Some(now));
    }

    /// No node is judged Down for the recovery time from now (a new
    /// leader's wait, as after a stall): the heartbeats other managers
    /// received reach this one again meanwhile.
    pub fn hold_judgement(&self) {
        let until = Instant::now() + *self.recovery.lock().expect("heartbeat table poisoned");
        *self.quiet_until.lock().expect("heartbeat table poisoned") = Some(until);
    }

    /// Whether nodes may be judged Down now: not while judgement is held;
    /// otherwise always for a manager alone and, with several, only while
    /// heartbeats are exchanged.
    pub fn can_judge(&self) -> bool {
        let quiet_until = *self.quiet_until.lock().expect("heartbeat table poisoned");
        if quiet_until.is_some_and(|until| Instant::now() < until) {
            return false;
        }
        match *self.exchanged.lock().expect("heartbeat table poisoned") {
            None => true,
            Some(last) => last.is_some_and(|at| at.elapsed() <= self.interval * 2),
        }
    }

    /// Whether `node_id` sent a heartbeat (or joined) since this manager
    /// started and is not outdated: a known node is Ready for a grace
    /// period after a restart, but gets no new task before it is heard
    /// from (or while its agent reads another desired-state version).
    pub fn heard_from(&self, node_id: &str) -> bool {
        self.heard.lock().expect("heartbeat table poisoned").contains(node_id)
            && !self.outdated.lock().expect("heartbeat table poisoned").contains_key(node_id)
    }

    /// How long until the next Ready node turns Down if it stays silent
    /// (`None`: no node is Ready).
    pub fn next_down_in(&self) -> Option<Duration> {
        let grace = self.interval * MISSED_HEARTBEATS_BEFORE_DOWN;
        let now = SystemTime::now();
        let last_seen = self.last_seen.lock().expect("heartbeat table poisoned");
        last_seen
            .values()
            .filter_map(|last| grace.checked_sub(now.duration_since(*last).unwrap_or_default()))
            .min()
    }

    /// The node's liveness now and its last heartbeat.
    pub fn status(&self, node_id: &str) -> (NodeLiveness, Option<SystemTime>) {
        let last = self.last_seen.lock().expect("heartbeat table poisoned").get(node_id).copied();
        (liveness(last, SystemTime::now(), self.interval), last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_three_missed_intervals() {
        let now = SystemTime::now();
        let interval = Duration::from_secs(5);
        let ago = |s| Some(now - Duration::from_secs(s));
        assert_eq!(liveness(ago(0), now, interval), NodeLiveness::Ready);
        assert_eq!(liveness(ago(15), now, interval), NodeLiveness::Ready);
        assert_eq!(liveness(ago(16), now, interval), NodeLiveness::Down);
        assert_eq!(liveness(None, now, interval), NodeLiveness::Down);
    }

    #[test]
    fn the_next_node_to_turn_down_is_the_longest_silent_one() {
        let heartbeats = Heartbeats::new(Duration::from_secs(5), []);
        assert_eq!(heartbeats.next_down_in(), None, "no node");
        let now = SystemTime::now();
        heartbeats.merge("quiet", now - Duration::from_secs(12));
        heartbeats.merge("chatty", now);
        heartbeats.merge("gone", now - Duration::from_secs(60));
        let next = heartbeats.next_down_in().expect("two Ready nodes");
        assert!(next <= Duration::from_secs(3) && next > Duration::from_secs(2), "{next:?}");
    }

    #[test]
    fn an_outdated_agent_keeps_its_node_ready_but_takes_no_new_task_until_it_joins() {
        let heartbeats = Heartbeats::new(Duration::from_secs(5), []);
        heartbeats.record("n1");
        assert!(heartbeats.record_outdated("n1", 1), "newly outdated");
        assert!(!heartbeats.record_outdated("n1", 1), "outdated already");
        assert_eq!(heartbeats.outdated_version("n1"), Some(1));
        assert_eq!(heartbeats.status("n1").0, NodeLiveness::Ready);
        assert!(!heartbeats.heard_from("n1"), "outdated: no new task");
        heartbeats.record("n1");
        assert!(!heartbeats.heard_from("n1"), "still outdated until it joins");
        heartbeats.joined("n1");
        assert!(heartbeats.heard_from("n1"));
        assert_eq!(heartbeats.outdated_version("n1"), None);
    }

    #[test]
    fn recorded_heartbeats_make_a_node_ready() {
        let heartbeats = Heartbeats::new(Duration::from_secs(5), ["known".to_string()]);
        assert_eq!(heartbeats.status("n1").0, NodeLiveness::Down);
        heartbeats.record("n1");
        assert_eq!(heartbeats.status("n1").0, NodeLiveness::Ready);
        assert_eq!(heartbeats.status("known").0, NodeLiveness::Ready);
        assert!(heartbeats.heard_from("n1") && !heartbeats.heard_from("known"));
    }

    #[test]
    fn heartbeats_heard_elsewhere_count_but_are_not_shared_again() {
        let heartbeats = Heartbeats::new(Duration::from_secs(5), []);
        heartbeats.merge("far", SystemTime::now() - Duration::from_secs(60));
        assert_eq!(heartbeats.status("far").0, NodeLiveness::Down);
        assert!(!heartbeats.heard_from("far"));
        heartbeats.merge("far", SystemTime::now());
        assert_eq!(heartbeats.status("far").0, NodeLiveness::Ready);
        assert!(heartbeats.heard_from("far"));
        assert!(heartbeats.heard_here().is_empty());
    }

    #[test]
    fn nodes_are_judged_only_while_managers_exchange_heartbeats_and_not_while_they_recover() {
        let heartbeats = Heartbeats::new(Duration::from_secs(1), ["quiet".to_string()]);
        assert!(heartbeats.can_judge(), "a manager alone always judges");
        heartbeats.share_with_other_managers(Duration::from_millis(100));
        assert!(!heartbeats.can_judge(), "nothing exchanged yet");
        heartbeats.exchanged();
        assert!(!heartbeats.can_judge(), "the first exchange: the others may not have shared yet");
        std::thread::sleep(Duration::from_millis(200));
        heartbeats.exchanged();
        assert!(heartbeats.can_judge(), "exchanging, recovered");
        heartbeats.hold_judgement();
        assert!(!heartbeats.can_judge(), "a new leader waits for the others");

        let stalling = Heartbeats::new(Duration::from_millis(100), []);
        stalling.share_with_other_managers(Duration::from_millis(300));
        stalling.exchanged();
        std::thread::sleep(Duration::from_millis(400));
        assert!(!stalling.can_judge(), "the exchange stalled");
        stalling.exchanged();
        assert!(!stalling.can_judge(), "after a stall, the others recover first");
    }
}
