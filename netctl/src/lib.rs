//! What other crates use of the `netctl` binary: the lab (a cluster of
//! namespace hosts on one machine), which the end-to-end tests build their
//! clusters with, exactly as `netctl lab up` does.

pub mod lab;
