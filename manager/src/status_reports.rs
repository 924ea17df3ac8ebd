//! Task status reports, committed in groups: a report waits for the
//! store's write lock, and whoever gets it commits every report queued by
//! then in one change (as Swarm's dispatcher batches task updates). When a
//! thousand nodes report their new tasks Running at once, the cluster moves
//! a few revisions instead of a thousand, and every revision costs each
//! reader of the whole cluster (the orchestrator, the nodes' desired state)
//! a pass.

use crate::store::{AsConflict, Batch, Store, StoreError, Writer, CONFLICT_RETRIES};
use crate::updates;
use crate::ManagerError;
use netctl_proto::{Service, Task, TaskState, TaskStatusReport};
use std::collections::BTreeSet;
use std::sync::Mutex;
use tokio::sync::oneshot;
use tonic::Status;

/// One node's reports waiting to be committed, and where its outcome goes.
struct Queued {
    node_id: String,
    reports: Vec<TaskStatusReport>,
    done: oneshot::Sender<Result<(), Status>>,
}

/// The reports waiting for the write lock.
#[derive(Default)]
pub struct StatusReports {
    queue: Mutex<Vec<Queued>>,
}

impl StatusReports {
    /// Applies node `node_id`'s task reports (Running, Failed and Complete
    /// of tasks still meant to run), with those of other nodes that came
    /// meanwhile; refused whole, changing nothing, if one is of a task of
    /// another node.
    pub async fn apply(
        &self,
        store: &Store,
        node_id: &str,
        reports: Vec<TaskStatusReport>,
    ) -> Result<(), Status> {
        let (done, outcome) = oneshot::channel();
        self.queue.lock().expect("report queue lock").push(Queued {
            node_id: node_id.to_string(),
            reports,
            done,
        });
        let mut attempt = 0;
        loop {
            let mut writer = store.write_lock().await;
            let group = std::mem::take(&mut *self.queue.lock().expect("report queue lock"));
            if group.is_empty() {
                // Committed by an earlier holder of the lock.
                break;
            }
            match commit(store, &mut writer, &group).await {
                Err(err) if err.is_conflict() && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    self.queue.lock().expect("report queue lock").splice(0..0, group);
                }
                Ok(outcomes) => {
                    for (queued, outcome) in group.into_iter().zip(outcomes) {
                        let _ = queued.done.send(outcome);
                    }
                    break;
                }
                Err(err) => {
                    let status = Status::from(ManagerError::from(err));
                    for queued in group {
                        let _ = queued.done.send(Err(status.clone()));
                    }
                    break;
                }
            }
        }
        outcome.await.unwrap_or_else(|_| Err(Status::unavailable("the manager is stopping")))
    }
}

/// Commits the changes of every report of `group` in one change; each
/// node's outcome (a node's reports refused change nothing).
async fn commit(
    store: &Store,
    writer: &mut Writer<'_>,
    group: &[Queued],
) -> Result<Vec<Result<(), Status>>, StoreError> {
    let mut tasks = Vec::new();
    let mut outcomes = Vec::with_capacity(group.len());
    for queued in group {
        match changed_tasks(store, &queued.node_id, &queued.reports)? {
            Ok(changed) => {
                tasks.extend(changed);
                outcomes.push(Ok(()));
            }
            Err(refused) => outcomes.push(Err(refused)),
        }
    }
    let mut batch = if only_progress(store, &tasks)? { Batch::task_progress() } else { Batch::new() };
    for task in &tasks {
        batch.put(task);
    }
    writer.commit_in_parts(batch).await?;
    Ok(outcomes)
}

/// Whether `tasks` only started running, each of a service that is there
/// and not being updated (a rollout moves on as its tasks run): nothing
/// the orchestrator plans on changed ([`Batch::task_progress`]). A failed
/// or completed task is replaced.
fn only_progress(store: &Store, tasks: &[Task]) -> Result<bool, StoreError> {
    if tasks.iter().any(|task| task.state() != TaskState::Running) {
        return Ok(false);
    }
    let services: BTreeSet<&str> = tasks.iter().map(|task| task.service_id.as_str()).collect();
    for id in services {
        if store.get::<Service>(id)?.is_none_or(|service| updates::in_progress(&service)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The tasks node `node_id`'s `reports` change, or why they are refused.
fn changed_tasks(
    store: &Store,
    node_id: &str,
    reports: &[TaskStatusReport],
) -> Result<Result<Vec<Task>, Status>, StoreError> {
    let mut changed = Vec::new();
    for status in reports {
        let error = netctl_proto::printable(&status.error, netctl_proto::MAX_REPORTED_CHARS);
        let Some(mut task) = store.get::<Task>(&status.task_id)? else { continue };
        if task.node_id != node_id {
            return Ok(Err(Status::permission_denied(format!(
                "task {} is not node {node_id}'s: a node reports only its own tasks",
                task.id
            ))));
        }
        let state = status.state();
        let news = task.state != status.state || task.error != error;
        if task.desired_state() != TaskState::Running
            || !news
            || !matches!(state, TaskState::Running | TaskState::Failed | TaskState::Complete)
        {
            continue;
        }
        tracing::info!(task = %task.id, state = state.word(), %error, "task status");
        task.set_state(state);
        task.error = error;
        task.state_changed_unix = crate::networks::now_unix();
        changed.push(task);
    }
    Ok(Ok(changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn assigned(id: &str, node: &str) -> Task {
        let mut task = Task { id: id.into(), node_id: node.into(), ..Default::default() };
        task.set_desired_state(TaskState::Running);
        task.set_state(TaskState::Assigned);
        task
    }

    fn running(id: &str) -> TaskStatusReport {
        TaskStatusReport { task_id: id.into(), state: TaskState::Running.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn tasks_that_only_start_running_are_task_progress_unless_their_service_is_updating() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let updating = Service {
            id: "s2".into(),
            update_status: Some(netctl_proto::UpdateStatus {
                state: updates::UPDATING.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut batch = Batch::new();
        batch.put(&Service { id: "s1".into(), ..Default::default() }).put(&updating);
        for (id, service) in [("t1", "s1"), ("t2", "s1"), ("t3", "s2")] {
            batch.put(&Task { service_id: service.into(), ..assigned(id, "a") });
        }
        let before = store.write_lock().await.commit(batch).await.unwrap();
        let reports = StatusReports::default();
        let failed = TaskStatusReport { state: TaskState::Failed.into(), ..running("t2") };
        let cases = [
            (running("t1"), true, "started running"),
            (failed, false, "failed: it is replaced"),
            (running("t3"), false, "its service's rollout moves on as it runs"),
        ];
        for (report, progress, why) in cases {
            let at = store.revision();
            reports.apply(&store, "a", vec![report]).await.unwrap();
            assert_eq!(store.revision(), at + 1);
            assert_eq!(store.only_task_progress_since(at), progress, "{why}");
        }
        assert!(!store.only_task_progress_since(before));
    }

    #[tokio::test]
    async fn reports_that_wait_together_are_one_change_and_a_refused_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut batch = Batch::new();
        batch.put(&assigned("t1", "a")).put(&assigned("t2", "b")).put(&assigned("t3", "b"));
        store.write_lock().await.commit(batch).await.unwrap();
        let reports = Arc::new(StatusReports::default());

        // The lock is held (as by the orchestrator) while three nodes report.
        let held = store.write_lock().await;
        let report = |node: &'static str, tasks: Vec<TaskStatusReport>| {
            let (store, reports) = (store.clone(), reports.clone());
            tokio::spawn(async move { reports.apply(&store, node, tasks).await })
        };
        let a = report("a", vec![running("t1")]);
        let b = report("b", vec![running("t2")]);
        // Node c reports b's task along with nothing of its own.
        let c = report("c", vec![running("t3")]);
        while reports.queue.lock().unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
        drop(held);
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        let refused = c.await.unwrap().unwrap_err();
        assert!(refused.message().contains("not node c's"), "{refused:?}");
        assert_eq!(store.revision(), 2, "one change for both nodes' reports");
        let state = |id: &str| store.get::<Task>(id).unwrap().unwrap().state();
        assert_eq!(
            (state("t1"), state("t2"), state("t3")),
            (TaskState::Running, TaskState::Running, TaskState::Assigned)
        );
    }
}
