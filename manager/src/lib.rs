//! The netctl manager: the cluster's desired state in sled, subnet, VNI and
//! address allocation, node liveness, the orchestrator that keeps services at
//! their replica count, and the gRPC services `Control` (for the
//! `netctl` client commands) and `Dispatcher` (for agents).
//!
//! It never touches the kernel.

pub mod addresses;
pub mod auth;
pub mod cluster;
pub mod control;
pub mod dispatcher;
pub mod error;
pub mod ids;
pub mod ipam;
pub mod liveness;
pub mod logs;
pub mod networks;
pub mod orchestrator;
pub mod ports;
pub mod resolve;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod snapshot;
pub mod store;
pub mod topology;
pub mod validate;
pub mod vni;

pub use error::ManagerError;
pub use server::{Manager, ManagerConfig};
pub use store::Store;
