//! `netctl service create | ls | inspect | ps | scale | rm`.

use crate::cli::{ClientArgs, ListFormat, LogOpt, ServiceCommand};
use crate::client::{self, rpc_error, AlreadyReported, Control};
use crate::{inspect, table};
use netctl_proto::*;
use serde_json::json;
use std::io::Write;

/// Runs one `service` subcommand.
pub async fn run(args: &ClientArgs, command: ServiceCommand) -> anyhow::Result<()> {
    let mut control = client::connect(args).await?;
    match command {
        ServiceCommand::Create {
            name,
            replicas,
            networks,
            env,
            workdir,
            publish,
            user,
            cap_add,
            cap_drop,
            stop_grace_period,
            log_opt,
            command,
        } => {
            let mut runtime = TaskRuntime {
                user: user.unwrap_or_default(),
                cap_add,
                cap_drop,
                stop_grace_ms: stop_grace_period.as_millis().max(1) as u64,
                ..Default::default()
            };
            for option in log_opt {
                match option {
                    LogOpt::MaxSize(bytes) => runtime.log_max_size = bytes,
                    LogOpt::MaxFile(count) => runtime.log_max_file = count,
                }
            }
            let request = ServiceCreateRequest {
                name: name.unwrap_or_default(),
                replicas,
                networks,
                command,
                env: env.into_iter().collect(),
                workdir: workdir.unwrap_or_default(),
                ports: publish,
                runtime: Some(runtime),
            };
            let response = control.create_service(request).await.map_err(rpc_error)?.into_inner();
            println!("{}", response.service.unwrap_or_default().id);
            Ok(())
        }
        ServiceCommand::Ls { format } => list(&mut control, format).await,
        ServiceCommand::Inspect { services } => {
            let mut found = Vec::new();
            let outcome = for_each(
                services,
                |reference| {
                    let mut control = control.clone();
                    async move {
                        let view = control.get_service(ServiceGetRequest { reference }).await?.into_inner();
                        Ok(view.service.unwrap_or_default())
                    }
                },
                |view| found.push(inspect::service(&view)),
            )
            .await;
            println!("{}", serde_json::to_string_pretty(&found)?);
            outcome
        }
        ServiceCommand::Ps { service, no_trunc, format } => ps(&mut control, service, no_trunc, format).await,
        ServiceCommand::Logs { service, tail, follow } => logs(&mut control, service, tail, follow).await,
        ServiceCommand::Scale { scales } => {
            for_each(
                scales,
                |(reference, replicas)| {
                    let mut control = control.clone();
                    async move {
                        control.scale_service(ServiceScaleRequest { reference, replicas }).await?;
                        Ok(())
                    }
                },
                |_| {},
            )
            .await?;
            Ok(())
        }
        ServiceCommand::Rm { services } => {
            for_each(
                services,
                |reference| {
                    let mut control = control.clone();
                    async move {
                        control.remove_service(ServiceRemoveRequest { reference: reference.clone() }).await?;
                        Ok(reference)
                    }
                },
                |reference| println!("{reference}"),
            )
            .await
        }
    }
}

/// Runs `call` for each item, handing successes to `done` and printing each
/// refusal; fails at the end if any call did, as Docker does.
async fn for_each<I, T, F, Fut>(items: Vec<I>, call: F, mut done: impl FnMut(T)) -> anyhow::Result<()>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut failed = false;
    for item in items {
        match call(item).await {
            Ok(value) => done(value),
            Err(status) => {
                eprintln!("{}", rpc_error(status));
                failed = true;
            }
        }
    }
    if failed {
        Err(AlreadyReported.into())
    } else {
        Ok(())
    }
}

async fn list(control: &mut Control, format: ListFormat) -> anyhow::Result<()> {
    let views = control.list_services(ServiceListRequest {}).await.map_err(rpc_error)?.into_inner().services;
    let running = |view: &ServiceView| {
        view.tasks
            .iter()
            .filter_map(|t| t.task.as_ref())
            .filter(|t| t.desired_state == "running" && t.state == "running")
            .count()
    };
    match format {
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

async fn ps(
    control: &mut Control,
    reference: String,
    no_trunc: bool,
    format: ListFormat,
) -> anyhow::Result<()> {
    let view = control.get_service(ServiceGetRequest { reference }).await.map_err(rpc_error)?.into_inner();
    let view = view.service.unwrap_or_default();
    if let ListFormat::Json = format {
        for entry in &view.tasks {
            let task = entry.task.clone().unwrap_or_default();
            let endpoints: Vec<_> = task
                .endpoints
                .iter()
                .map(|e| json!({ "NetworkID": e.network_id, "Address": e.address, "MAC": e.mac }))
                .collect();
            let line = json!({
                "ID": task.id, "Name": entry.name, "Node": entry.node_hostname, "NodeID": task.node_id,
                "DesiredState": task.desired_state, "CurrentState": task.state, "Error": task.error,
                "Endpoints": endpoints,
            });
            println!("{line}");
        }
        return Ok(());
    }
    let id_len = if no_trunc { usize::MAX } else { 12 };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut previous_slot = None;
    let rows: Vec<Vec<String>> = view
        .tasks
        .iter()
        .map(|entry| {
            let task = entry.task.clone().unwrap_or_default();
            let name = if previous_slot == Some(task.slot) {
                format!(" \\_ {}", entry.name)
            } else {
                entry.name.clone()
            };
            previous_slot = Some(task.slot);
            vec![
                task.id.chars().take(id_len).collect(),
                name,
                entry.node_hostname.clone(),
                capitalized(&task.desired_state),
                format!("{} {}", capitalized(&task.state), ago(now - task.state_changed_unix)),
                task.error.clone(),
            ]
        })
        .collect();
    let headers = ["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"];
    print!("{}", table::render(&headers, &rows));
    Ok(())
}

/// Prints every line each task wrote, prefixed as Docker does:
/// `demoservice.1.zazcrztrp8no@node0    | line`.
async fn logs(
    control: &mut Control,
    reference: String,
    tail: Option<u64>,
    follow: bool,
) -> anyhow::Result<()> {
    let request = ServiceLogsRequest { reference, tail: tail.map_or(-1, |n| n as i64), follow };
    let mut stream = control.service_logs(request).await.map_err(rpc_error)?.into_inner();
    // Output comes in pieces; a line is printed once it is whole.
    let mut partial: std::collections::HashMap<String, Vec<u8>> = std::collections::HashMap::new();
    let mut out = std::io::stdout().lock();
    while let Some(piece) = stream.message().await.map_err(rpc_error)? {
        let id: String = piece.task_id.chars().take(12).collect();
        let prefix = table::printable(&format!("{}.{id}@{}", piece.task_name, piece.node_hostname));
        let pending = partial.entry(prefix.clone()).or_default();
        pending.extend_from_slice(&piece.data);
        let complete = pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&pending[..complete]).lines() {
            writeln!(out, "{prefix}    | {line}")?;
        }
        pending.drain(..complete);
        out.flush()?;
    }
    for (prefix, rest) in partial.into_iter().filter(|(_, rest)| !rest.is_empty()) {
        writeln!(out, "{prefix}    | {}", String::from_utf8_lossy(&rest))?;
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

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
}

/// "8 minutes ago", as Docker writes it.
pub fn ago(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..=1 => "Less than a second ago".into(),
        2..=59 => format!("{seconds} seconds ago"),
        60..=119 => "About a minute ago".into(),
        120..=3599 => format!("{} minutes ago", seconds / 60),
        3600..=7199 => "About an hour ago".into(),
        7200..=172_799 => format!("{} hours ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(ago(0), "Less than a second ago");
        assert_eq!(ago(42), "42 seconds ago");
        assert_eq!(ago(90), "About a minute ago");
        assert_eq!(ago(8 * 60 + 5), "8 minutes ago");
        assert_eq!(ago(3 * 3600), "3 hours ago");
        assert_eq!(capitalized("running"), "Running");
    }
}
