//! iptables rule sets written whole with `iptables-restore --noflush -w`:
//! a chain declared in the input is flushed and rewritten in one call, other
//! chains are left alone. Run inside a namespace by entering it in the child,
//! and awaited without holding an async worker (tokio's process support).

use crate::error::{Error, Result};
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs `program args` in the namespace at `namespace` (or the caller's),
/// feeding it `input`, and returns its stdout.
async fn run(namespace: Option<(&str, &Path)>, program: &str, args: &[&str], input: &str) -> Result<String> {
    let label = namespace.map_or("host", |(name, _)| name);
    let action = format!("running {program} {}", args.join(" "));
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some((_, path)) = namespace {
        let enter = crate::netns::enter_network_in_child(path)?;
        // SAFETY: the hook only calls setns (async-signal-safe).
        unsafe {
            command.pre_exec(enter);
        }
    }
    let mut child = command.spawn().map_err(|e| Error::os(&action, label, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(|e| Error::os(&action, label, e))?;
    }
    let output = child.wait_with_output().await.map_err(|e| Error::os(&action, label, e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(Error::other(action, label, format!("{}: {stderr}", output.status)));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Loads `rules` (iptables-save syntax, with `*table` and `COMMIT` lines)
/// beside what the tables hold: only the chains it declares are flushed.
pub async fn restore(namespace: Option<(&str, &Path)>, rules: &str) -> Result<()> {
    run(namespace, "iptables-restore", &["-w", "--noflush"], rules).await.map(|_| ())
}

/// Replaces every table `rules` names with its content: whatever else they
/// held is gone. For tables of a namespace of one's own.
pub async fn replace_tables(namespace: Option<(&str, &Path)>, rules: &str) -> Result<()> {
    run(namespace, "iptables-restore", &["-w"], rules).await.map(|_| ())
}

/// Adds `rule` (e.g. `-j DOCKER-INGRESS`) at the top of `chain` in `table`
/// unless it is there already.
pub async fn ensure_jump(
    namespace: Option<(&str, &Path)>,
    table: &str,
    chain: &str,
    rule: &[&str],
) -> Result<()> {
    let mut check = vec!["-w", "-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if run(namespace, "iptables", &check, "").await.is_ok() {
        return Ok(());
    }
    let mut insert = vec!["-w", "-t", table, "-I", chain, "1"];
    insert.extend_from_slice(rule);
    run(namespace, "iptables", &insert, "").await.map(|_| ())
}

/// The rules of `table` (`iptables-save -t TABLE`).
pub async fn save(namespace: Option<(&str, &Path)>, table: &str) -> Result<String> {
    run(namespace, "iptables-save", &["-t", table], "").await
}

/// Whether iptables is installed.
pub async fn available() -> bool {
    Command::new("iptables-restore")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok()
}
