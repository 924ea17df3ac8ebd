//! What each node is to hold, and how it reaches the node: the cluster's
//! desired state per revision ([`model`]), which of its scopes a change
//! touches ([`rebuild`]), what changed for each node
//! between two revisions ([`changes`]) and the Watch fan-out ([`fanout`]).

pub mod changes;
pub mod fanout;
pub mod model;
pub mod rebuild;
