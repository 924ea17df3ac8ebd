//! The netctl manager: the cluster's desired state in sled, subnet, VNI and
//! address allocation, node liveness, the orchestrator that keeps services at
//! their replica count, and the gRPC services `Control` (for the
//! `netctl` client commands) and `Dispatcher` (for agents).
//!
//! It never touches the kernel.

mod address_cursors;
mod addresses;
mod auth;
mod cluster;
pub mod constraints;
mod control;
mod coordination;
mod desired;
mod dispatcher;
mod error;
mod ids;
mod ipam;
mod liveness;
mod logs;
mod memory;
mod metrics;
pub mod networks;
pub use cluster::migrate_to_etcd;
mod nodes;
mod orchestrator;
pub mod pki;
mod plaintext;
mod ports;
mod reports;
pub mod resolve;
mod scheduler;
mod secrets;
mod server;
mod services;
mod status_reports;
pub mod store;
mod tokens;
pub mod updates;
mod validate;
mod vni;

pub use error::ManagerError;
pub use server::{Manager, ManagerConfig};
pub use store::Store;
