//! Choosing the node for a new replica (pure): among Ready nodes, the one
//! where the service failed least recently (so a node where every task fails
//! does not swallow the retries), then with the fewest tasks of the service,
//! then the fewest tasks overall, then by hostname.

/// A candidate node and its current load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Node ID.
    pub node_id: &'a str,
    /// Hostname (the last tie-breaker, so placement is predictable).
    pub hostname: &'a str,
    /// Tasks of the service being placed that failed on this node lately.
    pub recent_failures: usize,
    /// Live tasks of the service being placed.
    pub service_tasks: usize,
    /// Live tasks of every service.
    pub all_tasks: usize,
}

/// The node a new replica goes to, if any node is Ready.
pub fn pick<'a>(candidates: &[Candidate<'a>]) -> Option<&'a str> {
    candidates
        .iter()
        .min_by_key(|c| (c.recent_failures, c.service_tasks, c.all_tasks, c.hostname, c.node_id))
        .map(|c| c.node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate<'a>(id: &'a str, service_tasks: usize, all_tasks: usize) -> Candidate<'a> {
        Candidate { node_id: id, hostname: id, recent_failures: 0, service_tasks, all_tasks }
    }

    #[test]
    fn nodes_where_the_service_failed_lately_come_last() {
        let failing = Candidate { recent_failures: 1, ..candidate("a", 0, 0) };
        assert_eq!(pick(&[failing.clone(), candidate("b", 3, 9)]), Some("b"));
        assert_eq!(pick(&[failing]), Some("a"), "a failing node is still better than none");
    }

    #[test]
    fn fewest_tasks_of_the_service_first_then_overall_then_name() {
        assert_eq!(pick(&[candidate("a", 1, 1), candidate("b", 0, 5)]), Some("b"));
        assert_eq!(pick(&[candidate("a", 1, 3), candidate("b", 1, 2)]), Some("b"));
        assert_eq!(pick(&[candidate("b", 0, 0), candidate("a", 0, 0)]), Some("a"));
        assert_eq!(pick(&[]), None);
    }
}
