//! Rolling updates (pure). `service update` changes what a service's tasks
//! run and bumps its version; the orchestrator then replaces the tasks of
//! the older version a batch at a time ([`step`]): a batch starts once the
//! previous one runs and the delay has passed, so a published port keeps
//! answering from the tasks not in the batch. A task of the new version
//! that fails pauses the update, rolls it back, or is passed over, as the
//! service's failure action says. `service rollback` returns to the spec
//! before the last update ([`rollback`]), the same way.

use netctl_proto::{Service, ServiceUpdateRequest, Task, TaskState, UpdateConfig, UpdateStatus};

/// An update replacing tasks.
pub const UPDATING: &str = "updating";
/// An update stopped after a task failed (the next `service update` or a
/// `service rollback` goes on).
pub const PAUSED: &str = "paused";
/// Every task runs the new version.
pub const COMPLETED: &str = "completed";
/// A rollback replacing tasks.
pub const ROLLBACK_STARTED: &str = "rollback_started";
/// Every task runs the spec rolled back to.
pub const ROLLBACK_COMPLETED: &str = "rollback_completed";

/// What a failed task of a new version does to its update.
const FAILURE_ACTIONS: [&str; 3] = ["pause", "continue", "rollback"];

/// Whether `service` is being updated or rolled back: its rollout moves
/// on as its new tasks run.
pub fn in_progress(service: &Service) -> bool {
    service.update_status.as_ref().is_some_and(|u| u.state == UPDATING || u.state == ROLLBACK_STARTED)
}

/// Docker's update settings: one task at a time, no delay, each new task
/// watched 5 s for a failure, pause on one.
pub fn default_config() -> UpdateConfig {
    UpdateConfig {
        parallelism: 1,
        delay_ms: 0,
        failure_action: FAILURE_ACTIONS[0].to_string(),
        monitor_ms: 5000,
    }
}

/// The update settings of `service`, Docker's for a service never given any.
pub fn config_of(service: &Service) -> UpdateConfig {
    service.update_config.clone().unwrap_or_else(default_config)
}

/// What a pass does for a service being updated.
#[derive(Debug, Default, PartialEq)]
pub struct UpdateStep {
    /// Tasks of an older version to stop now; their places get tasks of
    /// the current one.
    pub replace: Vec<String>,
    /// The service changed (its update status, or rolled back), if so.
    pub service: Option<Service>,
}

/// The service as `request` changes it at `now`. A change of what the
/// tasks run (the environment) makes a new version and starts an update;
/// replicas and the update settings alone change no task.
pub fn apply(service: &Service, request: &ServiceUpdateRequest, now: i64) -> Result<Service, String> {
    let mut next = service.clone();
    if let Some(replicas) = request.replicas {
        if service.mode() == netctl_proto::ServiceMode::Global {
            return Err(format!(
                "service {} is global: --replicas can only be used with replicated mode",
                service.name
            ));
        }
        next.replicas = replicas;
    }
    let config = next.update_config.get_or_insert_with(default_config);
    if let Some(parallelism) = request.update_parallelism {
        config.parallelism = parallelism;
    }
    if let Some(delay_ms) = request.update_delay_ms {
        config.delay_ms = delay_ms;
    }
    if let Some(monitor_ms) = request.update_monitor_ms {
        config.monitor_ms = monitor_ms;
    }
    match request.update_failure_action.as_str() {
        "" => {}
        action if FAILURE_ACTIONS.contains(&action) => config.failure_action = action.to_string(),
        other => {
            return Err(format!(
                "invalid update failure action {:?}: expected pause, continue or rollback",
                netctl_proto::printable(other, 32)
            ))
        }
    }
    for key in &request.env_rm {
        next.env.remove(key);
    }
    next.env.extend(request.env_add.iter().map(|(k, v)| (k.clone(), v.clone())));
    if next.env != service.env {
        start(&mut next, service, UPDATING, now);
    } else if let Some(status) = next.update_status.as_mut().filter(|s| s.state == PAUSED) {
        // Updating a paused service goes on with its update; the task
        // that failed before counts no more.
        *status = UpdateStatus { state: UPDATING.to_string(), started_unix: now, ..Default::default() };
    }
    if next != *service {
        next.updated_unix = now;
    }
    Ok(next)
}

/// The service back at the spec before its last update, at `now`; the
/// spec it leaves becomes the one before.
pub fn rollback(service: &Service, now: i64, message: &str) -> Result<Service, String> {
    let Some(previous) = service.previous_spec.as_deref() else {
        return Err(format!("service {} has no previous spec to roll back to", service.name));
    };
    // Its VIPs and ports were kept for it (`previous_spec`).
    let mut back = Service {
        env: previous.env.clone(),
        replicas: previous.replicas,
        update_config: previous.update_config.clone(),
        ports: previous.ports.clone(),
        network_ids: previous.network_ids.clone(),
        virtual_ips: previous.virtual_ips.clone(),
        aliases: previous.aliases.clone(),
        ..service.clone()
    };
    start(&mut back, service, ROLLBACK_STARTED, now);
    back.updated_unix = now;
    back.update_status.as_mut().expect("just started").message = message.to_string();
    Ok(back)
}

/// Makes `next` a new version after `current` unless it is one already:
/// its tasks are replaced.
pub fn begin(next: &mut Service, current: &Service, now: i64) {
    if next.version == current.version {
        start(next, current, UPDATING, now);
    }
}

/// Makes `next` a new version after `current`, replacing its tasks.
fn start(next: &mut Service, current: &Service, state: &str, now: i64) {
    next.previous_spec = Some(Box::new(Service { previous_spec: None, ..current.clone() }));
    next.version = current.version + 1;
    next.update_status = Some(UpdateStatus {
        state: state.to_string(),
        started_unix: now,
        completed_unix: 0,
        message: String::new(),
    });
}

/// The spec a task of `service` runs: the one before the last update for
/// a task not replaced yet.
pub fn spec_of<'a>(service: &'a Service, task: &Task) -> &'a Service {
    match service.previous_spec.as_deref() {
        Some(previous)
            if task.service_version != service.version && previous.version == task.service_version =>
        {
            previous
        }
        _ => service,
    }
}

/// The next step of `service`'s update, given its tasks at `now`.
pub fn step(service: &Service, tasks: &[&Task], now: i64) -> UpdateStep {
    let Some(status) = service.update_status.as_ref() else { return UpdateStep::default() };
    let rolling_back = status.state == ROLLBACK_STARTED;
    if status.state != UPDATING && !rolling_back {
        return UpdateStep::default();
    }
    let config = config_of(service);
    let failed = tasks.iter().find(|t| {
        t.service_version == service.version
            && t.state() == TaskState::Failed
            && t.created_unix >= status.started_unix
    });
    if let (Some(failed), false) = (failed, rolling_back) {
        let why = format!("task {} failed: {}", failed.id, failed.error);
        match config.failure_action.as_str() {
            "continue" => {}
            "rollback" => {
                let message = format!("update rolled back: {why}");
                return UpdateStep { service: rollback(service, now, &message).ok(), ..Default::default() };
            }
            _ => return with_status(service, PAUSED, now, format!("update paused: {why}")),
        }
    }
    let live: Vec<&&Task> = tasks.iter().filter(|t| t.desired_state() == TaskState::Running).collect();
    let (fresh, mut outdated): (Vec<&&Task>, Vec<&&Task>) =
        live.into_iter().partition(|t| t.service_version == service.version);
    // A batch is done once its tasks have run for the monitor period
    // without failing.
    let monitor_seconds = config.monitor_ms.div_ceil(1000) as i64;
    if fresh.iter().any(|t| t.state() != TaskState::Running || now < t.state_changed_unix + monitor_seconds) {
        return UpdateStep::default();
    }
    if outdated.is_empty() {
        return match rolling_back {
            // Why it was rolled back stays said.
            true => with_status(
                service,
                ROLLBACK_COMPLETED,
                now,
                format!("{}; rollback completed", status.message),
            ),
            false => with_status(service, COMPLETED, now, "update completed".to_string()),
        };
    }
    let delay_seconds = config.delay_ms.div_ceil(1000) as i64;
    let last_batch_ran = fresh.iter().map(|t| t.state_changed_unix + monitor_seconds).max();
    if last_batch_ran.is_some_and(|at| now < at + delay_seconds) {
        return UpdateStep::default();
    }
    outdated.sort_by_key(|t| (t.slot, t.node_id.clone()));
    let batch = match config.parallelism {
        0 => outdated.len(),
        n => n as usize,
    };
    UpdateStep { replace: outdated.iter().take(batch).map(|t| t.id.clone()).collect(), service: None }
}

fn with_status(service: &Service, state: &str, now: i64, message: String) -> UpdateStep {
    let mut changed = service.clone();
    let status = changed.update_status.get_or_insert_with(UpdateStatus::default);
    status.state = state.to_string();
    status.message = message;
    if state != PAUSED {
        status.completed_unix = now;
    }
    UpdateStep { service: Some(changed), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        Service {
            id: "svc".into(),
            name: "web".into(),
            replicas: 3,
            env: [("A".to_string(), "1".to_string())].into(),
            update_config: Some(UpdateConfig { parallelism: 1, ..Default::default() }),
            ..Default::default()
        }
    }

    fn task(id: &str, slot: u32, version: u64, state: TaskState, at: i64) -> Task {
        Task {
            id: id.into(),
            service_id: "svc".into(),
            slot,
            service_version: version,
            desired_state: TaskState::Running.into(),
            state: state.into(),
            created_unix: at,
            state_changed_unix: at,
            ..Default::default()
        }
    }

    fn env_update(key: &str, value: &str) -> ServiceUpdateRequest {
        ServiceUpdateRequest { env_add: [(key.to_string(), value.to_string())].into(), ..Default::default() }
    }

    #[test]
    fn an_environment_change_is_a_new_version_replicas_alone_are_not() {
        let updated = apply(&service(), &env_update("A", "2"), 100).unwrap();
        assert_eq!((updated.version, updated.env["A"].as_str()), (1, "2"));
        assert_eq!(updated.update_status.as_ref().unwrap().state, UPDATING);
        assert_eq!(updated.previous_spec.as_ref().unwrap().env["A"], "1");
        let scaled =
            apply(&service(), &ServiceUpdateRequest { replicas: Some(5), ..Default::default() }, 100)
                .unwrap();
        assert_eq!((scaled.version, scaled.replicas, scaled.update_status), (0, 5, None));
        let mut paused = apply(&service(), &env_update("A", "2"), 100).unwrap();
        paused.update_status.as_mut().unwrap().state = PAUSED.into();
        let resumed = apply(&paused, &ServiceUpdateRequest::default(), 120).unwrap().update_status.unwrap();
        assert_eq!((resumed.state.as_str(), resumed.started_unix), (UPDATING, 120));
        let bad = ServiceUpdateRequest { update_failure_action: "retry".into(), ..Default::default() };
        assert!(apply(&service(), &bad, 100).unwrap_err().contains("expected pause, continue or rollback"));
    }

    #[test]
    fn tasks_are_replaced_a_batch_at_a_time_each_once_the_last_runs_and_the_delay_passed() {
        let mut updated = apply(&service(), &env_update("A", "2"), 100).unwrap();
        updated.update_config.as_mut().unwrap().delay_ms = 1500;
        let old: Vec<Task> =
            (1..=3).map(|slot| task(&format!("old{slot}"), slot, 0, TaskState::Running, 50)).collect();
        let refs: Vec<&Task> = old.iter().collect();
        assert_eq!(step(&updated, &refs, 100).replace, ["old1"]);

        // old1 replaced by new1, still starting: wait.
        let mut stopped = old[0].clone();
        stopped.set_desired_state(TaskState::Shutdown);
        let new1 = task("new1", 1, 1, TaskState::Assigned, 100);
        let tasks = [&stopped, &new1, &old[1], &old[2]];
        assert_eq!(step(&updated, &tasks, 101), UpdateStep::default());
        // new1 runs since 101: the next batch after the 2 s delay.
        let new1 = task("new1", 1, 1, TaskState::Running, 101);
        let tasks = [&stopped, &new1, &old[1], &old[2]];
        assert_eq!(step(&updated, &tasks, 102), UpdateStep::default());
        assert_eq!(step(&updated, &tasks, 103).replace, ["old2"]);
        // All new: completed.
        let all_new: Vec<Task> =
            (1..=3).map(|slot| task(&format!("n{slot}"), slot, 1, TaskState::Running, 104)).collect();
        let done = step(&updated, &all_new.iter().collect::<Vec<_>>(), 110).service.unwrap();
        let status = done.update_status.unwrap();
        assert_eq!((status.state.as_str(), status.completed_unix), (COMPLETED, 110));
    }

    #[test]
    fn a_new_task_counts_as_done_once_it_ran_for_the_monitor_period() {
        let mut updated = apply(&service(), &env_update("A", "2"), 100).unwrap();
        updated.update_config.as_mut().unwrap().monitor_ms = 5000;
        let mut stopped = task("old1", 1, 0, TaskState::Shutdown, 100);
        stopped.set_desired_state(TaskState::Shutdown);
        let new1 = task("new1", 1, 1, TaskState::Running, 101);
        let old2 = task("old2", 2, 0, TaskState::Running, 50);
        let tasks = [&stopped, &new1, &old2];
        assert_eq!(step(&updated, &tasks, 105), UpdateStep::default(), "new1 may still fail");
        assert_eq!(step(&updated, &tasks, 106).replace, ["old2"]);
    }

    #[test]
    fn a_failed_new_task_pauses_rolls_back_or_is_passed_over() {
        let updated = apply(&service(), &env_update("A", "2"), 100).unwrap();
        let mut failed = task("new1", 1, 1, TaskState::Failed, 101);
        failed.error = "task exited with status 1".into();
        failed.set_desired_state(TaskState::Shutdown);
        let old = task("old2", 2, 0, TaskState::Running, 50);
        let tasks = [&failed, &old];
        let paused = step(&updated, &tasks, 102).service.unwrap().update_status.unwrap();
        assert_eq!(paused.state, PAUSED);
        assert!(paused.message.contains("task new1 failed: task exited with status 1"), "{}", paused.message);

        let mut rolling = updated.clone();
        rolling.update_config.as_mut().unwrap().failure_action = "rollback".into();
        let back = step(&rolling, &tasks, 102).service.unwrap();
        assert_eq!((back.version, back.env["A"].as_str()), (2, "1"));
        assert_eq!(back.update_status.unwrap().state, ROLLBACK_STARTED);
        // Old tasks of version 0 and failed ones of 1 both run specs before 2.
        assert_eq!(back.previous_spec.as_ref().unwrap().env["A"], "2");

        let mut going_on = updated;
        going_on.update_config.as_mut().unwrap().failure_action = "continue".into();
        assert_eq!(step(&going_on, &tasks, 102).replace, ["old2"]);
    }

    #[test]
    fn rollback_needs_a_previous_spec_and_tasks_not_replaced_keep_theirs() {
        assert!(rollback(&service(), 100, "").unwrap_err().contains("has no previous spec to roll back to"));
        let updated = apply(&service(), &env_update("A", "2"), 100).unwrap();
        let old = task("old", 1, 0, TaskState::Running, 50);
        let new = task("new", 2, 1, TaskState::Running, 101);
        assert_eq!(spec_of(&updated, &old).env["A"], "1");
        assert_eq!(spec_of(&updated, &new).env["A"], "2");
    }
}
