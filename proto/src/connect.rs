//! Opening a TLS channel to the manager, with errors that say where and why.
//!
//! Every connection speaks TLS and trusts only the cluster CA. A client that
//! holds only a token learns the CA from the manager's handshake and keeps
//! it only if its digest is the one the token pins ([`fetch_ca`]); then it
//! connects trusting that CA alone ([`connect`]), presenting a node
//! certificate when it has one.

use crate::pki::{self, Token, MANAGER_SERVER_NAME};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a keep-alive ping may go unanswered before the connection is
/// dropped: gRPC's default. The answer waits behind whatever the manager
/// sent before it, and a busy reader takes a while to get through a large
/// state; at 10 s, a thousand simulated nodes on two cores dropped dozens
/// of healthy Watch streams in a large change, each then sent its whole
/// state again. A manager whose process died is still seen at once (its
/// connection is reset), one that became unreachable within 25 s.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the manager could not be reached or trusted.
#[derive(Debug)]
pub struct ConnectError {
    /// The address tried.
    pub manager: String,
    /// What went wrong, with every cause.
    pub reason: String,
    /// The manager answered but is not the one the token pins: retrying
    /// will not help.
    pub untrusted: bool,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach manager at {}: {}", self.manager, self.reason)
    }
}

impl std::error::Error for ConnectError {}

/// A node's certificate and private key, PEM.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The certificate.
    pub certificate_pem: String,
    /// The private key (a secret).
    pub key_pem: String,
}

/// `manager` as an `https://` URI: `http://HOST:PORT`, `https://HOST:PORT`
/// and `HOST:PORT` all mean the manager's TLS port.
pub fn https_uri(manager: &str) -> String {
    let address =
        manager.strip_prefix("https://").or_else(|| manager.strip_prefix("http://")).unwrap_or(manager);
    format!("https://{}", address.trim_end_matches('/'))
}

/// The addresses of a `--manager` value: one, or several separated by
/// commas (`https://A:4243,https://B:4243`).
pub fn manager_addresses(managers: &str) -> Vec<String> {
    managers.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

/// Connects to the first of `managers` (see [`manager_addresses`]) that
/// answers, trusting only `ca_pem` and presenting `identity` when given.
pub async fn connect(
    managers: &str,
    ca_pem: &str,
    identity: Option<&NodeIdentity>,
) -> Result<Channel, ConnectError> {
    first_answering(managers, |manager| async move { connect_one(&manager, ca_pem, identity).await }).await
}

/// Connects to the first of `managers` that answers with only `token`
/// (see [`fetch_ca`]). A manager whose CA is not the one the
/// token pins ends the search: that is an attack or a mistake, not an
/// outage.
pub async fn connect_with_token(managers: &str, token: &Token) -> Result<(Channel, String), ConnectError> {
    first_answering(managers, |manager| async move { connect_one_with_token(&manager, token).await }).await
}

/// Tries `attempt` on each manager in turn; the first success, or an error
/// naming every manager and why each failed.
async fn first_answering<T, F, Fut>(managers: &str, mut attempt: F) -> Result<T, ConnectError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, ConnectError>>,
{
    let addresses = manager_addresses(managers);
    let mut failures = Vec::new();
    for manager in &addresses {
        match attempt(manager.clone()).await {
            Ok(connected) => return Ok(connected),
            Err(err) if err.untrusted || addresses.len() == 1 => return Err(err),
            Err(err) => failures.push(format!("{}: {}", err.manager, err.reason)),
        }
    }
    Err(ConnectError {
        manager: managers.to_string(),
        reason: if failures.is_empty() { "no manager address given".into() } else { failures.join("; ") },
        untrusted: false,
    })
}

/// Connects to `manager` trusting only `ca_pem`, presenting `identity` when
/// given; gives up after three seconds. HTTP/2 keep-alives (every five
/// seconds, [`KEEP_ALIVE_TIMEOUT`]) detect a manager
/// that vanished.
async fn connect_one(
    manager: &str,
    ca_pem: &str,
    identity: Option<&NodeIdentity>,
) -> Result<Channel, ConnectError> {
    let error = |reason: String| ConnectError { manager: manager.to_string(), reason, untrusted: false };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(MANAGER_SERVER_NAME)
        .timeout(CONNECT_TIMEOUT);
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.certificate_pem, &identity.key_pem));
    }
    Endpoint::from_shared(https_uri(manager))
        .map_err(|err| error(format!("invalid address: {}", error_chain(&err))))?
        .tls_config(tls)
        .map_err(|err| error(format!("TLS settings: {}", error_chain(&err))))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|err| error(explain(&error_chain(&err))))
}

/// Connects to one `manager` with only `token`: learns the CA ([`fetch_ca`]),
/// then connects trusting it alone. Returns the channel and the CA (PEM).
async fn connect_one_with_token(manager: &str, token: &Token) -> Result<(Channel, String), ConnectError> {
    let ca_pem = fetch_ca(manager, token).await?;
    let channel = connect_one(manager, &ca_pem, None).await?;
    Ok((channel, ca_pem))
}

/// The cluster CA (PEM) as the manager presents it in its TLS handshake,
/// kept only if its digest is the one `token` pins. A mismatch names both
/// digests: a wrong manager, or someone in the middle.
pub async fn fetch_ca(manager: &str, token: &Token) -> Result<String, ConnectError> {
    let error = |reason: String| ConnectError { manager: manager.to_string(), reason, untrusted: false };
    let address = https_uri(manager).trim_start_matches("https://").to_string();
    let chain = tokio::time::timeout(CONNECT_TIMEOUT, presented_chain(&address))
        .await
        .map_err(|_| error(format!("no TLS handshake within {CONNECT_TIMEOUT:?}")))?
        .map_err(|reason| error(explain(&reason)))?;
    if let Some(ca) = chain.iter().find(|der| pki::digest(der) == token.ca_digest) {
        return Ok(pki::certificate_pem(ca));
    }
    let presented = chain.last().map_or_else(|| "none".to_string(), |der| pki::digest(der));
    Err(ConnectError {
        untrusted: true,
        ..error(format!(
            "the manager's CA has digest {presented}, but the token pins {}: this is another cluster's manager, \
             or someone is in the middle",
            token.ca_digest
        ))
    })
}

/// The certificates the server at `address` presents, read in a handshake
/// that trusts nothing (the caller checks them against a pinned digest).
async fn presented_chain(address: &str) -> Result<Vec<Vec<u8>>, String> {
    let recorder = Arc::new(ChainRecorder::default());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|err| format!("connecting: {err}"))?;
    let name = ServerName::try_from(MANAGER_SERVER_NAME).expect("a valid DNS name");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(name, tcp).await.map_err(|err| format!("TLS handshake: {err}"))?;
    let chain = recorder.chain.lock().expect("chain lock").clone();
    Ok(chain)
}

/// A verifier that accepts any server certificate and keeps the chain, for
/// [`fetch_ca`] alone: what it accepts is checked against the token's digest,
/// and the real connection then verifies the manager against that CA.
#[derive(Debug, Default)]
struct ChainRecorder {
    chain: Mutex<Vec<Vec<u8>>>,
}

impl ServerCertVerifier for ChainRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.to_vec()).collect();
        *self.chain.lock().expect("chain lock") = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}

/// The handshake signatures ring verifies (the server still proves it holds
/// the key of the certificate it presents).
fn signature_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// A transport error with a hint where the cause is known: a manager that
/// does not speak TLS, or one that refused this client's certificate.
fn explain(reason: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("wrong version")
    {
        format!("{reason} (the server does not speak TLS: is it an older, plaintext manager?)")
    } else if lower.contains("certificate") && lower.contains("alert") {
        format!(
            "{reason} (the manager refused this node's certificate: expired, or from another cluster's CA)"
        )
    } else {
        reason.to_string()
    }
}

/// An error and its sources joined with ": " (tonic's top-level transport
/// errors say little on their own).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manager_address_form_means_tls() {
        assert_eq!(https_uri("http://10.0.0.1:4243"), "https://10.0.0.1:4243");
        assert_eq!(https_uri("https://10.0.0.1:4243/"), "https://10.0.0.1:4243");
        assert_eq!(https_uri("manager.example:4243"), "https://manager.example:4243");
    }
}
