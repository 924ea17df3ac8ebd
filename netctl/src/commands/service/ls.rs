//! `netctl service ls`.

use crate::cli::ListFormat;
use crate::client::{rpc_error, Control};
use crate::table;
use clap::Args;
use netctl_proto::{Service, ServiceListRequest, ServiceMode, ServiceView, TaskState};
use serde_json::json;

/// `netctl service ls` arguments.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: ListFormat,
}

/// Lists services with their running/desired replicas.
pub async fn run(control: &mut Control, args: LsArgs) -> anyhow::Result<()> {
    let views = control.list_services(ServiceListRequest {}).await.map_err(rpc_error)?.into_inner().services;
    // Running of wanted: a replicated service wants its replica count, a
    // global one a task on each node it placed one on.
    let replicas = |view: &ServiceView| {
        let service = view.service.clone().unwrap_or_default();
        let wanted = view
            .tasks
            .iter()
            .filter_map(|t| t.task.as_ref())
            .filter(|t| t.desired_state() == TaskState::Running);
        let running = wanted.clone().filter(|t| t.state() == TaskState::Running).count();
        match service.mode() {
            ServiceMode::Replicated => format!("{running}/{}", service.replicas),
            ServiceMode::Global => format!("{running}/{}", wanted.count()),
        }
    };
    match args.format {
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|view| {
                    let service = view.service.clone().unwrap_or_default();
                    vec![
                        service.id.chars().take(12).collect(),
                        service.name.clone(),
                        mode_word(&service).into(),
                        replicas(view),
                        service.command.join(" "),
                        ports(&service),
                    ]
                })
                .collect();
            print!("{}", table::render(&["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"], &rows));
        }
        ListFormat::Json => {
            for view in &views {
                let service = view.service.clone().unwrap_or_default();
                let line = json!({
                    "ID": service.id, "Name": service.name, "Mode": mode_word(&service),
                    "Replicas": replicas(view),
                    "Command": service.command.join(" "),
                    "Ports": ports(&service),
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// `*:8080->80/tcp, ...` as `docker service ls` shows published ports.
fn ports(service: &Service) -> String {
    let ports: Vec<String> = service
        .ports
        .iter()
        .map(|p| {
            // Host mode: only where a task runs.
            let host = if p.is_ingress() { "" } else { " (host)" };
            format!("*:{}->{}/{}{host}", p.published_port, p.target_port, p.protocol)
        })
        .collect();
    ports.join(", ")
}

/// `replicated` or `global`, as `service ls` shows the mode.
pub fn mode_word(service: &Service) -> &'static str {
    match service.mode() {
        ServiceMode::Replicated => "replicated",
        ServiceMode::Global => "global",
    }
}
