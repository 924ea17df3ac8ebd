//! The latest kernel topology each agent read back and reported, kept in
//! memory for `netctl topology`.

use netctl_proto::NodeTopology;
use std::collections::HashMap;
use std::sync::Mutex;

/// What agents report besides task status: logs and topology.
#[derive(Debug, Default)]
pub struct AgentReports {
    /// Task output.
    pub logs: crate::logs::Logs,
    /// Kernel topology per node.
    pub topologies: Topologies,
}

/// The latest topology of every node, by node ID.
#[derive(Debug, Default)]
pub struct Topologies {
    nodes: Mutex<HashMap<String, NodeTopology>>,
}

impl Topologies {
    /// Keeps `topology` as its node's latest.
    pub fn record(&self, topology: NodeTopology) {
        let mut nodes = self.nodes.lock().expect("topology table poisoned");
        nodes.insert(topology.node_id.clone(), topology);
    }

    /// The topologies of the nodes `wanted` accepts, by hostname.
    pub fn select(&self, wanted: impl Fn(&NodeTopology) -> bool) -> Vec<NodeTopology> {
        let nodes = self.nodes.lock().expect("topology table poisoned");
        let mut selected: Vec<NodeTopology> = nodes.values().filter(|t| wanted(t)).cloned().collect();
        selected.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_report_per_node_is_kept() {
        let topologies = Topologies::default();
        let report = |id: &str, host: &str, at| NodeTopology {
            node_id: id.into(),
            hostname: host.into(),
            read_unix: at,
            ..Default::default()
        };
        topologies.record(report("b", "node1", 1));
        topologies.record(report("a", "node0", 1));
        topologies.record(report("a", "node0", 2));
        let all = topologies.select(|_| true);
        assert_eq!(
            all.iter().map(|t| (t.hostname.as_str(), t.read_unix)).collect::<Vec<_>>(),
            [("node0", 2), ("node1", 1)]
        );
        assert_eq!(topologies.select(|t| t.hostname == "node1").len(), 1);
    }
}
