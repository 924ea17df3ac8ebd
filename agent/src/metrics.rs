//! The agent's metrics (`netctl agent --metrics-addr`): reconcile pass
//! duration, sandbox setup time, rule sets written, tasks by state, DNS
//! queries answered.

use crate::reconcile::Pass;
use netctl_proto::metrics::{Exposition, Histogram};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the agent counts, rendered at each scrape.
pub struct AgentMetrics {
    passes: Histogram,
    sandbox_setup: Histogram,
    rules_written: AtomicU64,
    tasks: Mutex<BTreeMap<&'static str, usize>>,
    dns_queries: Arc<AtomicU64>,
}

impl AgentMetrics {
    /// Metrics reading the resolver's query count from `dns_queries`.
    pub fn new(dns_queries: Arc<AtomicU64>) -> Self {
        Self {
            passes: Histogram::default(),
            sandbox_setup: Histogram::default(),
            rules_written: AtomicU64::new(0),
            tasks: Mutex::new(BTreeMap::new()),
            dns_queries,
        }
    }

    /// Counts one reconcile pass that took `took`.
    pub fn record(&self, pass: &Pass, took: Duration) {
        self.passes.observe(took);
        if pass.new_sandboxes > 0 {
            // The apply time of a pass that made sandboxes, per sandbox.
            let each = pass.applied_in / pass.new_sandboxes as u32;
            (0..pass.new_sandboxes).for_each(|_| self.sandbox_setup.observe(each));
        }
        self.rules_written.fetch_add(pass.rules_written as u64, Ordering::Relaxed);
        let mut tasks = BTreeMap::new();
        for report in &pass.reports {
            *tasks.entry(report.state().word()).or_default() += 1;
        }
        *self.tasks.lock().expect("metrics lock") = tasks;
    }

    /// The text of a scrape.
    pub fn render(&self) -> String {
        let mut text = Exposition::default();
        text.histogram(
            "netctl_agent_reconcile_seconds",
            "Duration of reconcile passes.",
            &[(&[], &self.passes)],
        );
        text.histogram(
            "netctl_agent_sandbox_setup_seconds",
            "Time to build a task sandbox (a pass's apply time per sandbox it made).",
            &[(&[], &self.sandbox_setup)],
        );
        let rules = self.rules_written.load(Ordering::Relaxed) as f64;
        text.counter("netctl_agent_rules_written_total", "Rule sets and sysctls written.", &[(&[], rules)]);
        let tasks = self.tasks.lock().expect("metrics lock").clone();
        text.gauge_counts(
            "netctl_agent_tasks",
            "Tasks of this node by state.",
            "state",
            tasks.iter().map(|(state, n)| (*state, *n)),
        );
        let queries = self.dns_queries.load(Ordering::Relaxed) as f64;
        text.counter(
            "netctl_agent_dns_queries_total",
            "DNS queries the sandboxes' resolver answered.",
            &[(&[], queries)],
        );
        text.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_proto::{TaskState, TaskStatusReport};

    #[test]
    fn a_pass_is_counted_in_every_family() {
        let queries = Arc::new(AtomicU64::new(7));
        let metrics = AgentMetrics::new(queries);
        let running = TaskStatusReport { state: TaskState::Running.into(), ..Default::default() };
        let pass = Pass {
            reports: vec![running.clone(), running],
            new_sandboxes: 2,
            applied_in: Duration::from_millis(8),
            rules_written: 3,
            ..Pass::default()
        };
        metrics.record(&pass, Duration::from_millis(20));
        let text = metrics.render();
        assert!(text.contains("netctl_agent_reconcile_seconds_count 1\n"), "{text}");
        assert!(text.contains("netctl_agent_sandbox_setup_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("netctl_agent_rules_written_total 3\n"), "{text}");
        assert!(text.contains("netctl_agent_tasks{state=\"running\"} 2\n"), "{text}");
        assert!(text.contains("netctl_agent_dns_queries_total 7\n"), "{text}");
    }
}
