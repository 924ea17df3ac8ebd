//! The wire types of netctl: the `Control` service that the `netctl` client
//! commands call, and the `Dispatcher` service that agents call.
//!
//! The messages and services are generated from `proto/netctl.proto` at build
//! time; beside them live the two wire conventions every client shares: the
//! bearer token header, the cluster's PKI, and how a TLS channel to the
//! manager is opened.

/// Package `netctl.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("netctl.v1");
}

pub use v1::*;

pub mod codec;
mod connect;
pub mod convention;
pub mod desired;
pub mod memory;
pub mod metrics;
pub mod pki;
pub use connect::{
    connect, connect_with_token, error_chain, fetch_ca, https_uri, manager_addresses, ConnectError,
    NodeIdentity,
};

/// The `mode` of a port published only on the nodes running its tasks.
pub const HOST_MODE: &str = "host";

impl PortConfig {
    /// Whether it is published on every node through the routing mesh
    /// (not in host mode).
    pub fn is_ingress(&self) -> bool {
        self.mode != HOST_MODE
    }
}

impl TaskState {
    /// The word Docker's CLI shows for the state (`running`, `failed` ...).
    pub fn word(self) -> &'static str {
        match self {
            TaskState::Unspecified => "unknown",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Shutdown => "shutdown",
            TaskState::Pending => "pending",
        }
    }

    /// Whether a task in this state has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Complete | TaskState::Failed | TaskState::Shutdown)
    }
}

/// The largest message a Watch stream carries (one node's whole desired
/// state). The manager refuses a change that could make a node's state
/// larger, and the agent accepts messages up to this size.
pub const MAX_NODE_STATE_BYTES: usize = 64 * 1024 * 1024;

/// The version of the desired state a manager sends and an agent reads: 3
/// since an endpoint names its network by VNI and its addresses as numbers
/// (2: by network ID and as text; 2 since a task is one endpoint item per
/// network, unset before, when remote endpoints and each backend were
/// items of their own). At a join the
/// manager refuses an agent of another version, and the agent a manager of
/// another: each says which to upgrade, and the node keeps its data path as
/// it is until they match (an agent reading items it does not know would
/// drop every remote endpoint and backend).
pub const DESIRED_STATE_VERSION: u32 = 3;

/// The longest text an agent may report in one field (an error, a name):
/// longer text is cut.
pub const MAX_REPORTED_CHARS: usize = 1024;

/// `text` made safe to store and print: control characters (terminal
/// escapes, newlines) become spaces, and it is cut to `max_chars`
/// characters with `...` at the cut. Applied by the manager to what agents
/// report and by the CLI to what it prints.
pub fn printable(text: &str, max_chars: usize) -> String {
    let mut out: String =
        text.chars().take(max_chars).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(max_chars).is_some() {
        out.push_str("...");
    }
    out
}

/// gRPC metadata key carrying a bearer token (admin token or join token).
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// A client interceptor that presents a token as `Bearer <token>` on every
/// request, the way the manager's services expect it (or nothing, for a
/// node that proves itself with its certificate).
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// Fails when the token cannot be sent in a header.
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        let mut value: tonic::metadata::MetadataValue<_> =
            format!("Bearer {token}").parse().map_err(|_| InvalidToken)?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }

    /// Presents no token.
    pub fn none() -> Self {
        Self(None)
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerToken(hidden)" } else { "BearerToken(none)" })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value.clone());
        }
        Ok(request)
    }
}

/// A token that cannot be sent as a gRPC header (it holds control characters
/// or non-ASCII bytes).
#[derive(Debug)]
pub struct InvalidToken;

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the token holds characters that cannot be sent in a header")
    }
}

impl std::error::Error for InvalidToken {}
