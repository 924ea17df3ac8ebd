//! The cluster's public-key conventions, shared by the manager, the agent
//! and the CLI: the CA digest, tokens that pin it, what a node certificate
//! says, and the key and certificate request a node makes.

use rand::distr::{Alphanumeric, Distribution};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The name every manager certificate carries and every client checks,
/// whatever address it dialled (Swarm does the same with `swarm-manager`).
pub const MANAGER_SERVER_NAME: &str = "netctl-manager";
/// The organizational unit of a worker node's certificate.
pub const WORKER_ROLE: &str = "worker";
/// The organizational unit of a manager's certificate.
pub const MANAGER_ROLE: &str = "manager";
/// The organization of every certificate the cluster CA signs.
pub const ORGANIZATION: &str = "netctl";

/// The SHA-256 digest of a DER certificate, as 64 lowercase hex digits.
pub fn digest(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER certificates in a PEM text, in order.
pub fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect()
}

/// A DER certificate as PEM text.
pub fn certificate_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Join as a new worker node.
    Join,
    /// Call every Control method (the CLI).
    Admin,
}

impl TokenKind {
    /// "join" or "admin", for messages.
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Join => "join",
            TokenKind::Admin => "admin",
        }
    }

    fn word(self) -> &'static str {
        match self {
            TokenKind::Join => "JOIN",
            TokenKind::Admin => "ADMIN",
        }
    }
}

/// `NETCTL-<JOIN|ADMIN>-1-<CA digest>-<secret>`: a secret that also pins
/// the cluster CA. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// What it lets its holder do.
    pub kind: TokenKind,
    /// The digest of the CA certificate it trusts ([`digest`]).
    pub ca_digest: String,
    secret: String,
}

/// Why a text is not a netctl token. Never holds the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(String);

impl Token {
    /// A new token of `kind` pinning the CA with `ca_digest`.
    pub fn generate(kind: TokenKind, ca_digest: &str) -> Self {
        let secret = Alphanumeric.sample_iter(rand::rng()).take(40).map(char::from).collect();
        Self { kind, ca_digest: ca_digest.to_string(), secret }
    }

    /// Parses a token, naming which part is wrong (never echoing it).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let fields: Vec<&str> = text.trim().splitn(5, '-').collect();
        let [prefix, kind, version, digest, secret] = fields.as_slice() else {
            return Err(TokenError("the token is not NETCTL-<KIND>-1-<CA digest>-<secret>".into()));
        };
        let kind = match *kind {
            "JOIN" => TokenKind::Join,
            "ADMIN" => TokenKind::Admin,
            _ => return Err(TokenError("the token is neither a join token nor an admin token".into())),
        };
        if *prefix != "NETCTL" || *version != "1" {
            return Err(TokenError("the token is not a netctl token of version 1".into()));
        }
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TokenError("the token's CA digest is not 64 hex digits".into()));
        }
        if secret.len() < 16 || !secret.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(TokenError("the token's secret is malformed".into()));
        }
        Ok(Self { kind, ca_digest: digest.to_ascii_lowercase(), secret: secret.to_string() })
    }

    /// The whole token, to write to a file or print on request.
    pub fn reveal(&self) -> String {
        format!("NETCTL-{}-1-{}-{}", self.kind.word(), self.ca_digest, self.secret)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({:?}, ca {}, secret hidden)", self.kind, self.ca_digest)
    }
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's common name: a node ID, or `netctl-manager`.
    pub common_name: String,
    /// The subject's organizational unit: `worker` or `manager`.
    pub role: String,
    /// The subject as text: `CN=...,OU=...,O=...`.
    pub subject: String,
    /// The serial number, hex.
    pub serial: String,
    /// Seconds since the epoch.
    pub not_before_unix: i64,
    /// Seconds since the epoch.
    pub not_after_unix: i64,
}

impl CertificateInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, certificate) =
            X509Certificate::from_der(der).map_err(|err| format!("not an X.509 certificate: {err}"))?;
        let subject = certificate.subject();
        let common_name =
            subject.iter_common_name().next().and_then(|v| v.as_str().ok()).unwrap_or_default().to_string();
        let role = subject
            .iter_organizational_unit()
            .next()
            .and_then(|v| v.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let subject = subject_text(subject);
        Ok(Self {
            common_name,
            role,
            subject,
            serial: certificate.raw_serial_as_string().replace(':', ""),
            not_before_unix: certificate.validity().not_before.timestamp(),
            not_after_unix: certificate.validity().not_after.timestamp(),
        })
    }

    /// When a holder should renew it: half way through its lifetime.
    pub fn renew_at_unix(&self) -> i64 {
        self.not_before_unix + (self.not_after_unix - self.not_before_unix) / 2
    }
}

/// `CN=...,OU=...,O=...` in the certificate's own order.
fn subject_text(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_attributes()
        .map(|attribute| {
            let key = match attribute.attr_type().to_id_string().as_str() {
                "2.5.4.3" => "CN".to_string(),
                "2.5.4.11" => "OU".to_string(),
                "2.5.4.10" => "O".to_string(),
                other => other.to_string(),
            };
            format!("{key}={}", attribute.as_str().unwrap_or("?"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A node's new private key (ECDSA P-256) and a certificate request for it
/// with no subject: the manager chooses the node's identity.
pub struct NodeKey {
    /// The private key, PKCS#8 PEM (a secret: mode 0600 on disk).
    pub key_pem: String,
    /// The certificate request, DER.
    pub csr_der: Vec<u8>,
}

impl NodeKey {
    /// Generates a key and its certificate request.
    pub fn generate() -> Result<Self, String> {
        Self::generate_for(None)
    }

    /// Generates a key and a request naming `common_name` (only tests ask for
    /// a name: the manager refuses requests that choose their own identity).
    pub fn generate_for(common_name: Option<&str>) -> Result<Self, String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|err| format!("generating a P-256 key: {err}"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(name) = common_name {
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
        }
        let csr =
            params.serialize_request(&key).map_err(|err| format!("making a certificate request: {err}"))?;
        Ok(Self { key_pem: key.serialize_pem(), csr_der: csr.der().to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_round_trips_and_hides_its_secret() {
        let token = Token::generate(TokenKind::Join, DIGEST);
        let text = token.reveal();
        assert!(text.starts_with(&format!("NETCTL-JOIN-1-{DIGEST}-")), "{text}");
        assert_eq!(Token::parse(&text).unwrap(), token);
        assert!(!format!("{token:?}").contains(&text[text.len() - 40..]));
        assert_ne!(Token::generate(TokenKind::Join, DIGEST), token);
    }

    #[test]
    fn malformed_tokens_are_refused_without_being_echoed() {
        let good = Token::generate(TokenKind::Admin, DIGEST).reveal();
        for bad in [
            "nonsense".to_string(),
            good.replace("ADMIN", "ROOT"),
            good.replace(DIGEST, &DIGEST[1..]),
            good.replace(DIGEST, &DIGEST.replace('a', "z")),
            good.replace("-1-", "-2-"),
            format!("{}-", &good[..good.len() - 30]),
        ] {
            let err = Token::parse(&bad).unwrap_err();
            assert!(!err.to_string().contains(&bad), "{err}");
        }
    }

    #[test]
    fn a_node_key_makes_a_request_without_a_subject() {
        let key = NodeKey::generate().unwrap();
        assert!(key.key_pem.contains("PRIVATE KEY"));
        let request = rcgen::CertificateSigningRequestParams::from_der(&key.csr_der.clone().into()).unwrap();
        assert_eq!(request.params.distinguished_name.iter().count(), 0);
        let named = NodeKey::generate_for(Some("abc")).unwrap();
        let request = rcgen::CertificateSigningRequestParams::from_der(&named.csr_der.into()).unwrap();
        assert_eq!(request.params.distinguished_name.iter().count(), 1);
    }
}
