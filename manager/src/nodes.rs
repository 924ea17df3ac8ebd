//! Node membership: who may act as which node. A node is what its
//! certificate names; a removed node's certificate is refused from then on.

use crate::liveness::{Heartbeats, NodeLiveness};
use crate::networks::now_unix;
use crate::pki::SignedCertificate;
use crate::{resolve, ManagerError, Store};
use netctl_proto::{Node, NodeCertificate, NodeUpdateRequest, RemovedNode};
use tonic::Status;

/// The node `node_id` as stored, refusing a removed or unknown one with a
/// message its agent can show.
pub fn member(store: &Store, node_id: &str) -> Result<Node, Status> {
    if let Some(node) = store.node(node_id).map_err(ManagerError::from)? {
        return Ok(node);
    }
    match store.get::<RemovedNode>(node_id).map_err(ManagerError::from)? {
        Some(removed) => Err(Status::permission_denied(format!(
            "node {} ({}) was removed from the cluster; its certificate is no longer accepted",
            removed.id, removed.hostname
        ))),
        None => Err(Status::permission_denied(format!("node {node_id} is not a member of this cluster"))),
    }
}

/// What the manager records of a certificate it signed.
pub fn certificate_record(signed: &SignedCertificate, issuer_digest: &str) -> NodeCertificate {
    NodeCertificate {
        subject: signed.info.subject.clone(),
        issuer_digest: issuer_digest.to_string(),
        not_after_unix: signed.info.not_after_unix,
        serial: signed.info.serial.clone(),
    }
}

/// The node a name, ID or unique ID prefix designates.
pub fn find(store: &Store, reference: &str) -> Result<Node, ManagerError> {
    let mut nodes = store.nodes()?;
    let index =
        resolve::resolve("node", reference, nodes.iter().map(|n| (n.id.as_str(), n.hostname.as_str())))?;
    Ok(nodes.swap_remove(index))
}

/// Removes a node: its record goes, a tombstone refuses its certificate,
/// and the orchestrator places its tasks elsewhere (they are on no Ready
/// node any more). A Ready node is removed only with `force`.
pub async fn remove(
    store: &Store,
    heartbeats: &Heartbeats,
    reference: &str,
    force: bool,
) -> Result<Node, ManagerError> {
    crate::store::retrying(|| remove_once(store, heartbeats, reference, force)).await
}

async fn remove_once(
    store: &Store,
    heartbeats: &Heartbeats,
    reference: &str,
    force: bool,
) -> Result<Node, ManagerError> {
    let mut writer = store.write_lock().await;
    let node = find(store, reference)?;
    if !force && heartbeats.status(&node.id).0 == NodeLiveness::Ready {
        return Err(ManagerError::Refused(format!(
            "node {} ({}) is Ready: stop its agent first, or remove it anyway with --force",
            node.id, node.hostname
        )));
    }
    let mut batch = crate::store::Batch::new();
    batch.delete::<Node>(&node.id);
    batch.put(&RemovedNode {
        id: node.id.clone(),
        hostname: node.hostname.clone(),
        removed_unix: now_unix(),
    });
    writer.commit(batch).await?;
    Ok(node)
}

/// What a node accepts: new tasks (Active), none (Pause), or none and its
/// tasks move to other nodes (Drain). Stored capitalized, as `node ls`
/// shows it.
pub fn availability(text: &str) -> Result<&'static str, ManagerError> {
    match text.to_ascii_lowercase().as_str() {
        "active" => Ok(ACTIVE),
        "pause" => Ok(PAUSE),
        "drain" => Ok(DRAIN),
        _ => Err(ManagerError::Refused(format!(
            "invalid availability {:?}: expected active, pause or drain",
            netctl_proto::printable(text, 32)
        ))),
    }
}

/// The availability of a node that takes new tasks.
pub const ACTIVE: &str = "Active";
/// The availability of a node that keeps its tasks and takes no new one.
pub const PAUSE: &str = "Pause";
/// The availability of a node whose tasks move to other nodes.
pub const DRAIN: &str = "Drain";

/// Changes a node's availability and labels (`node update`); the
/// orchestrator then moves tasks off a drained node and places none on a
/// paused or drained one.
pub async fn update(store: &Store, request: &NodeUpdateRequest) -> Result<Node, ManagerError> {
    let availability = match request.availability.as_str() {
        "" => None,
        given => Some(availability(given)?),
    };
    for key in request.label_add.keys().chain(&request.label_rm) {
        crate::validate::label_key(key)?;
    }
    crate::store::retrying(|| update_once(store, request, availability)).await
}

async fn update_once(
    store: &Store,
    request: &NodeUpdateRequest,
    availability: Option<&str>,
) -> Result<Node, ManagerError> {
    let mut writer = store.write_lock().await;
    let mut node = find(store, &request.reference)?;
    if let Some(missing) = request.label_rm.iter().find(|key| !node.labels.contains_key(*key)) {
        return Err(ManagerError::Refused(format!(
            "node {} ({}) has no label {missing:?} to remove",
            node.id, node.hostname
        )));
    }
    let before = node.clone();
    if let Some(availability) = availability {
        node.availability = availability.to_string();
    }
    for key in &request.label_rm {
        node.labels.remove(key);
    }
    node.labels.extend(request.label_add.iter().map(|(k, v)| (k.clone(), v.clone())));
    if node != before {
        writer.put(&node).await?;
    }
    Ok(node)
}
