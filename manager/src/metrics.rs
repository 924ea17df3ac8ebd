//! The manager's metrics (`netctl manager --metrics-addr`): nodes by
//! status, tasks by state, gRPC requests and their latency by method, and
//! each node's Watch revision and how far it lags the store.

use crate::liveness::{Heartbeats, NodeLiveness};
use crate::Store;
use netctl_proto::metrics::{Exposition, Histogram};
use netctl_proto::{Task, WatchMessage};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

/// What the manager counts; the rest is read from the store at scrape.
#[derive(Default)]
pub struct ManagerMetrics {
    /// Latency by gRPC method path.
    rpcs: Mutex<BTreeMap<String, Arc<Histogram>>>,
    /// The revision each node's Watch stream brought it to last.
    watched: Mutex<HashMap<String, u64>>,
}

impl ManagerMetrics {
    fn rpc(&self, method: &str) -> Arc<Histogram> {
        self.rpcs.lock().expect("metrics lock").entry(method.to_string()).or_default().clone()
    }

    /// Notes what `message` on `node`'s Watch stream brings it to.
    pub fn watched(&self, node: &str, message: &WatchMessage) {
        if message.continues {
            return;
        }
        let revision = match &message.message {
            Some(netctl_proto::watch_message::Message::Snapshot(state)) => state.revision,
            Some(netctl_proto::watch_message::Message::Delta(delta)) => delta.revision,
            None => return,
        };
        self.watched.lock().expect("metrics lock").insert(node.to_string(), revision);
    }

    /// The text of a scrape.
    pub fn render(&self, store: &Store, heartbeats: &Heartbeats) -> String {
        let mut text = Exposition::default();
        let nodes = store.nodes().unwrap_or_default();
        let mut by_status: BTreeMap<&str, usize> = [("ready", 0), ("down", 0)].into();
        for node in &nodes {
            let status = if heartbeats.status(&node.id).0 == NodeLiveness::Ready { "ready" } else { "down" };
            *by_status.entry(status).or_default() += 1;
        }
        text.gauge_counts("netctl_nodes", "Nodes by status.", "status", by_status);

        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for task in store.all::<Task>().unwrap_or_default() {
            *by_state.entry(task.state().word()).or_default() += 1;
        }
        text.gauge_counts("netctl_tasks", "Tasks (current and recent history) by state.", "state", by_state);

        let rpcs = self.rpcs.lock().expect("metrics lock").clone();
        let series: Vec<([(&str, &str); 1], &Histogram)> =
            rpcs.iter().map(|(method, h)| ([("method", method.as_str())], h.as_ref())).collect();
        let series: Vec<_> = series.iter().map(|(l, h)| (&l[..], *h)).collect();
        text.histogram(
            "netctl_rpc_duration_seconds",
            "gRPC requests by method, until the response began.",
            &series,
        );

        let revision = store.revision();
        let watched = self.watched.lock().expect("metrics lock").clone();
        let hostnames: HashMap<&str, &str> =
            nodes.iter().map(|n| (n.id.as_str(), n.hostname.as_str())).collect();
        let mut rows: Vec<([(&str, &str); 2], u64)> = watched
            .iter()
            .filter_map(|(id, sent)| {
                Some(([("node", id.as_str()), ("hostname", *hostnames.get(id.as_str())?)], *sent))
            })
            .collect();
        rows.sort_by(|a, b| a.0[0].1.cmp(b.0[0].1));
        let sent: Vec<_> = rows.iter().map(|(l, r)| (&l[..], *r as f64)).collect();
        text.gauge("netctl_watch_revision", "The revision each node's Watch stream brought it to.", &sent);
        let lag: Vec<_> = rows.iter().map(|(l, r)| (&l[..], revision.saturating_sub(*r) as f64)).collect();
        text.gauge(
            "netctl_watch_lag_revisions",
            "How many revisions each node's Watch stream is behind the store.",
            &lag,
        );
        text.finish()
    }
}

/// Times every gRPC request by method (a tower layer on the server).
#[derive(Clone)]
pub struct RpcLayer(pub Arc<ManagerMetrics>);

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timed { inner, metrics: self.0.clone() }
    }
}

/// A service whose requests [`RpcLayer`] times.
#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    metrics: Arc<ManagerMetrics>,
}

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let histogram = self.metrics.rpc(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            histogram.observe(started.elapsed());
            response
        })
    }
}
