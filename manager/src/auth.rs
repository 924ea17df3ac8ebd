//! Who is calling: the admin token on Control calls, the node certificate
//! (or, for a first join, the join token) on Dispatcher calls.

use crate::tokens::ClusterTokens;
use netctl_proto::pki::{CertificateInfo, TokenKind, WORKER_ROLE};
use netctl_proto::AUTHORIZATION_HEADER;
use std::sync::Arc;
use tonic::{Request, Status};

/// An interceptor that admits only requests carrying `Bearer <admin token>`.
pub fn require_admin_token(
    tokens: Arc<ClusterTokens>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| match presented_token(&request) {
        Some(token) if tokens.accepts(TokenKind::Admin, token) => Ok(request),
        Some(_) => Err(Status::unauthenticated("the admin token presented is not valid for this cluster")),
        None => Err(Status::unauthenticated(
            "no admin token presented (a node certificate gives no access to Control)",
        )),
    }
}

/// The token after `Bearer ` in the request's authorization header.
pub fn presented_token<T>(request: &Request<T>) -> Option<&[u8]> {
    let value = request.metadata().get(AUTHORIZATION_HEADER)?.as_bytes();
    Some(value.strip_prefix(b"Bearer ").unwrap_or(value))
}

/// The worker node named by the client certificate of the request's TLS
/// connection (verified against the cluster CA by the handshake), if any.
pub fn certificate_node<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    let Some(chain) = request.peer_certs() else { return Ok(None) };
    let Some(leaf) = chain.first() else { return Ok(None) };
    let info = CertificateInfo::parse(leaf).map_err(Status::unauthenticated)?;
    if info.role != WORKER_ROLE || info.common_name.is_empty() {
        return Err(Status::permission_denied(format!(
            "the certificate {} is not a worker node's",
            info.subject
        )));
    }
    Ok(Some(info.common_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_the_current_admin_token_passes() {
        let dir = tempfile::tempdir().unwrap();
        let digest = "ab".repeat(32);
        let tokens = Arc::new(ClusterTokens::load_or_create(dir.path(), &digest).unwrap());
        let check = require_admin_token(tokens.clone());
        let admin = tokens.current(TokenKind::Admin).reveal();
        assert!(check(with_header(Some(&format!("Bearer {admin}")))).is_ok());
        let join = tokens.current(TokenKind::Join).reveal();
        let wrong = check(with_header(Some(&format!("Bearer {join}")))).unwrap_err();
        assert!(wrong.message().contains("not valid"), "{wrong}");
        let missing = check(with_header(None)).unwrap_err();
        assert!(missing.message().contains("no admin token"), "{missing}");
        assert!(certificate_node(&with_header(None)).unwrap().is_none());
    }
}
