//! Opening a gRPC channel to the manager, with errors that say where and why.

use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Why the manager could not be reached.
#[derive(Debug)]
pub struct ConnectError {
    /// The address tried.
    pub manager: String,
    /// What went wrong, with every cause.
    pub reason: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach manager at {}: {}", self.manager, self.reason)
    }
}

impl std::error::Error for ConnectError {}

/// Connects to `manager` (e.g. `http://192.168.10.6:4243`), giving up after
/// three seconds. HTTP/2 keep-alives detect a manager that vanished.
pub async fn connect(manager: &str) -> Result<Channel, ConnectError> {
    let error = |reason: String| ConnectError { manager: manager.to_string(), reason };
    Endpoint::from_shared(manager.to_string())
        .map_err(|err| error(format!("invalid address: {}", error_chain(&err))))?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|err| error(error_chain(&err)))
}

/// An error and its sources joined with ": " (tonic's top-level transport
/// errors say little on their own).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
