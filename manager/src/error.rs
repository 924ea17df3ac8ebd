//! The manager's errors and how each reaches a gRPC client.

use crate::ipam::IpamError;
use crate::ports::PortError;
use crate::resolve::ResolveError;
use crate::store::{AsConflict, StoreError};
use crate::validate::ValidationError;
use tonic::{Code, Status};

/// Anything a manager request or start-up can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Input refused before touching the store.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// A subnet or gateway refused, or the pool exhausted.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A published port refused.
    #[error(transparent)]
    Port(#[from] PortError),
    /// A name or ID that designates no single object.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object with that name exists already.
    #[error("{kind} with name {name} already exists")]
    NameTaken {
        /// "network", ...
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// A request that is well-formed but not allowed in the current state.
    #[error("{0}")]
    Refused(String),
    /// Every VNI is in use.
    #[error("no free VXLAN network identifier left (4097-16777215 are all in use)")]
    VniExhausted,
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, on which path or address.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl AsConflict for ManagerError {
    fn is_conflict(&self) -> bool {
        matches!(self, ManagerError::Store(err) if err.is_conflict())
    }
}

impl From<ManagerError> for Status {
    fn from(err: ManagerError) -> Self {
        let code = match &err {
            ManagerError::Validation(_) => Code::InvalidArgument,
            ManagerError::Ipam(IpamError::PoolExhausted { .. }) | ManagerError::VniExhausted => {
                Code::ResourceExhausted
            }
            ManagerError::Ipam(IpamError::Overlap { .. }) => Code::AlreadyExists,
            ManagerError::Ipam(_) => Code::InvalidArgument,
            ManagerError::Port(PortError::Taken { .. }) => Code::AlreadyExists,
            ManagerError::Port(PortError::Exhausted(_)) => Code::ResourceExhausted,
            ManagerError::Port(_) => Code::InvalidArgument,
            ManagerError::Resolve(ResolveError::NotFound { .. }) => Code::NotFound,
            ManagerError::Resolve(ResolveError::Ambiguous { .. }) => Code::InvalidArgument,
            ManagerError::NameTaken { .. } => Code::AlreadyExists,
            ManagerError::Refused(_) => Code::FailedPrecondition,
            ManagerError::Store(StoreError::Unavailable { .. }) => Code::Unavailable,
            ManagerError::Store(StoreError::Conflict { .. }) => Code::Aborted,
            ManagerError::Store(StoreError::NotEmpty { .. }) => Code::FailedPrecondition,
            ManagerError::Store(_) | ManagerError::Io { .. } => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}

/// A conflict that reached a gRPC status (see [`From<ManagerError>`]).
impl AsConflict for Status {
    fn is_conflict(&self) -> bool {
        self.code() == Code::Aborted
    }
}
