//! `netctl`: the one binary. `netctl manager` and `netctl agent` run the
//! daemons; every other command is a client of the manager, in Docker's CLI
//! style.

mod cli;
mod client;
mod commands;
mod inspect;

mod syntax;
mod table;
mod topology_view;

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

/// jemalloc for every command, the daemons' allocator (see
/// `netctl_proto::memory`).
#[global_allocator]
static ALLOCATOR: netctl_proto::memory::Allocator = netctl_proto::memory::Allocator;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // Help and --version succeed; a usage error exits 1 like any other.
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    if let cli::Command::TaskShim(args) = cli.command {
        // Single-threaded on purpose: the shim forks the task.
        return ExitCode::from(commands::task_shim::run(args));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // netlink-packet-route warns about every attribute newer than itself.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(commands::exec::CommandExit(code)) = err.downcast_ref() {
                return ExitCode::from(*code as u8);
            }
            if err.is::<client::ManagerRefusal>() {
                eprintln!("{err}");
            } else if !err.is::<client::AlreadyReported>() {
                eprintln!("Error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}
