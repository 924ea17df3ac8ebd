//! `netctl service ps`.

use crate::cli::ListFormat;
use crate::client::{rpc_error, Control};
use crate::table;
use clap::Args;
use netctl_proto::ServiceGetRequest;
use serde_json::json;

/// `netctl service ps` arguments.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show full task IDs.
    #[arg(long)]
    no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: ListFormat,
    /// Name or ID.
    service: String,
}

/// Lists the tasks of a service, each slot's history under it.
pub async fn run(control: &mut Control, args: PsArgs) -> anyhow::Result<()> {
    let view = control
        .get_service(ServiceGetRequest { reference: args.service })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let view = view.service.unwrap_or_default();
    if let ListFormat::Json = args.format {
        for entry in &view.tasks {
            let task = entry.task.clone().unwrap_or_default();
            let endpoints: Vec<_> = task
                .endpoints
                .iter()
                .map(|e| json!({ "NetworkID": e.network_id, "Address": e.address, "MAC": e.mac }))
                .collect();
            let line = json!({
                "ID": task.id, "Name": entry.name, "Node": entry.node_hostname, "NodeID": task.node_id,
                "DesiredState": task.desired_state().word(), "CurrentState": task.state().word(), "Error": task.error,
                "Endpoints": endpoints,
            });
            println!("{line}");
        }
        return Ok(());
    }
    let id_len = if args.no_trunc { usize::MAX } else { 12 };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut previous_name: Option<String> = None;
    let rows: Vec<Vec<String>> = view
        .tasks
        .iter()
        .map(|entry| {
            let task = entry.task.clone().unwrap_or_default();
            // A task's predecessors in its slot (or on its node) under it.
            let name = if previous_name.as_ref() == Some(&entry.name) {
                format!(" \\_ {}", entry.name)
            } else {
                entry.name.clone()
            };
            previous_name = Some(entry.name.clone());
            vec![
                task.id.chars().take(id_len).collect(),
                name,
                entry.node_hostname.clone(),
                capitalized(task.desired_state().word()),
                format!("{} {}", capitalized(task.state().word()), ago(now - task.state_changed_unix)),
                task.error.clone(),
            ]
        })
        .collect();
    let headers = ["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"];
    print!("{}", table::render(&headers, &rows));
    Ok(())
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
