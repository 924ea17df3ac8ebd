//! Prometheus metrics, text exposition format 0.0.4, served over plain HTTP
//! on `--metrics-addr` (`GET /metrics`). Each daemon renders its own
//! families at scrape time with an [`Exposition`]; histograms keep their
//! counts in atomics. prometheus-client would do this but is not in the
//! offline crate set this project builds from; the format is small.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Upper bounds (seconds) of the latency histograms: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram of durations in seconds over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, duration: std::time::Duration) {
        let seconds = duration.as_secs_f64();
        if let Some(index) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(duration.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Labels of one sample: name, value.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A scrape's text, built family by family.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// A gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) {
        self.family(name, help, "gauge", samples);
    }

    /// A gauge family of counts, one sample per value of one `label`.
    pub fn gauge_counts<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        counts: impl IntoIterator<Item = (&'a str, usize)>,
    ) {
        let labelled: Vec<([(&str, &str); 1], f64)> =
            counts.into_iter().map(|(value, count)| ([(label, value)], count as f64)).collect();
        let samples: Vec<(Labels, f64)> = labelled.iter().map(|(labels, v)| (&labels[..], *v)).collect();
        self.gauge(name, help, &samples);
    }

    /// A counter family (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) {
        self.family(name, help, "counter", samples);
    }

    fn family(&mut self, name: &str, help: &str, kind: &str, samples: &[(Labels, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{} {value}", label_text(labels, None));
        }
    }

    /// A histogram family, one series per label set.
    pub fn histogram(&mut self, name: &str, help: &str, series: &[(Labels, &Histogram)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (labels, histogram) in series {
            let mut cumulative = 0;
            for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&histogram.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let le = bound.to_string();
                let _ = writeln!(self.0, "{name}_bucket{} {cumulative}", label_text(labels, Some(&le)));
            }
            let count = histogram.count.load(Ordering::Relaxed);
            let _ = writeln!(self.0, "{name}_bucket{} {count}", label_text(labels, Some("+Inf")));
            let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                self.0,
                "{name}_sum{} {sum}\n{name}_count{} {count}",
                label_text(labels, None),
                label_text(labels, None)
            );
        }
    }

    /// The text to serve.
    pub fn finish(self) -> String {
        self.0
    }
}

/// `{a="1",b="2"}` (with `le` last when given), escaped as the format asks.
fn label_text(labels: Labels, le: Option<&str>) -> String {
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    pairs.extend(le.map(|le| format!("le=\"{le}\"")));
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// What a daemon renders at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A metrics server; it stops when dropped.
pub struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `address` and serves `render`'s text on `GET /metrics` there
/// (other paths get 404) until the returned server is dropped. Fails if
/// the address cannot be bound.
pub async fn listen(address: SocketAddr, render: Render) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    Ok(Server(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let render = render.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let response = respond(request.uri().path(), &render);
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    })))
}

fn respond(path: &str, render: &Render) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, body) = match path {
        "/metrics" => (200, render()),
        _ => (404, "only /metrics is served here\n".to_string()),
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn families_are_written_in_the_text_format() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(20));
        let mut text = Exposition::default();
        text.gauge_counts("netctl_nodes", "Nodes by status.", "status", [("ready", 2)]);
        text.histogram("netctl_pass_seconds", "Passes.", &[(&[("node", "a\"b")], &histogram)]);
        let text = text.finish();
        assert!(text.contains("# TYPE netctl_nodes gauge\nnetctl_nodes{status=\"ready\"} 2\n"), "{text}");
        assert!(text.contains("netctl_pass_seconds_bucket{node=\"a\\\"b\",le=\"0.0025\"} 0\n"), "{text}");
        assert!(text.contains("netctl_pass_seconds_bucket{node=\"a\\\"b\",le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("netctl_pass_seconds_bucket{node=\"a\\\"b\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("netctl_pass_seconds_count{node=\"a\\\"b\"} 2\n"), "{text}");
        assert!(text.contains("netctl_pass_seconds_sum{node=\"a\\\"b\"} 20.003\n"), "{text}");
    }
}
