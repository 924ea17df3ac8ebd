//! The small languages of Docker's command line, each a parser with its
//! unit tests: `--publish`, `--network`, `--log-opt`, `KEY=VALUE` pairs,
//! `SERVICE=N`.

mod key_value;
mod log_opt;
mod network;
mod publish;

pub use key_value::{parse_key_value, parse_label};
pub use log_opt::{parse_log_opt, LogOpt};
pub use network::{parse_network, NetworkFlag};
pub use publish::parse_publish;
