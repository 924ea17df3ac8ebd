//! `netctl service ls`.

use crate::cli::ListFormat;
use crate::client::{rpc_error, Control};
use crate::table;
use clap::Args;
use netctl_proto::{Service, ServiceListRequest, ServiceView, TaskState};
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
    let running = |view: &ServiceView| {
        view.tasks
            .iter()
            .filter_map(|t| t.task.as_ref())
            .filter(|t| t.desired_state() == TaskState::Running && t.state() == TaskState::Running)
            .count()
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
                        "replicated".into(),
                        format!("{}/{}", running(view), service.replicas),
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
                    "ID": service.id, "Name": service.name, "Mode": "replicated",
                    "Replicas": format!("{}/{}", running(view), service.replicas),
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
        .map(|p| format!("*:{}->{}/{}", p.published_port, p.target_port, p.protocol))
        .collect();
    ports.join(", ")
}
