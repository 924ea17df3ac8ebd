//! The cluster CA on the manager host: a root CA (ECDSA P-256) made at the
//! first start, the manager's own certificate, and the node certificates it
//! signs. Key files are mode 0600 in the data dir; later starts reuse them.

use crate::error::ManagerError;
use netctl_proto::pki::{
    self, CertificateInfo, MANAGER_ROLE, MANAGER_SERVER_NAME, ORGANIZATION, WORKER_ROLE,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// The CA certificate's file in the data dir.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file in the data dir (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The manager certificate's file in the data dir (with the CA after it).
const MANAGER_CERT_FILE: &str = "manager.crt";
/// The manager key's file in the data dir (mode 0600).
const MANAGER_KEY_FILE: &str = "manager.key";
/// How long the root CA is valid (Swarm's is 20 years too).
const CA_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long the manager's own certificate is valid; a start past half of it
/// issues a new one.
const MANAGER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The node certificate lifetime when none is configured (Docker's
/// `--cert-expiry` default).
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);

/// The cluster's root CA, able to sign node certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Its SHA-256 digest, hex: what tokens pin.
    pub digest: String,
    /// When the CA expires, seconds since the epoch.
    pub not_after_unix: i64,
    /// How long the node certificates it signs are valid.
    pub node_cert_lifetime: Duration,
}

/// The manager's certificate chain and key, PEM, for its TLS server.
pub struct ManagerIdentity {
    /// The manager certificate followed by the CA certificate.
    pub chain_pem: String,
    /// The manager's private key.
    pub key_pem: String,
}

/// A certificate just signed for a node.
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    /// The certificate, PEM.
    pub pem: String,
    /// What it says.
    pub info: CertificateInfo,
}

/// Why a certificate request is refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrRefusal {
    /// It is not a well-formed, self-signed PKCS#10 request.
    #[error("the certificate request is malformed: {0}")]
    Malformed(String),
    /// It asks for another node's identity.
    #[error("the certificate request names node {requested}, but this node is {node}: a node gets the ID the manager gives it")]
    OtherNode {
        /// The common name it asked for.
        requested: String,
        /// The node it is signed for.
        node: String,
    },
}

impl ClusterCa {
    /// Loads the CA from `data_dir`, or creates it (and its key, mode 0600)
    /// when either file is missing.
    pub fn load_or_create(data_dir: &Path, node_cert_lifetime: Duration) -> Result<Self, ManagerError> {
        let (cert_path, key_path) = (data_dir.join(CA_CERT_FILE), data_dir.join(CA_KEY_FILE));
        let (ca_pem, key) = match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (Some(cert), Some(key)) => {
                let key = KeyPair::from_pem(&key).map_err(|err| invalid(&key_path, err))?;
                (cert, key)
            }
            _ => {
                let key = new_key()?;
                let certificate =
                    ca_params().self_signed(&key).map_err(|err| refused("making the cluster CA", err))?;
                write_secret(&key_path, &key.serialize_pem())?;
                write_file(&cert_path, &certificate.pem(), 0o644)?;
                (certificate.pem(), key)
            }
        };
        let der = pki::pem_certificates(&ca_pem)
            .into_iter()
            .next()
            .ok_or_else(|| ManagerError::Refused(format!("{} holds no certificate", cert_path.display())))?;
        let info = CertificateInfo::parse(&der).map_err(|err| invalid(&cert_path, err))?;
        let issuer =
            Issuer::from_ca_cert_der(&der.clone().into(), key).map_err(|err| invalid(&cert_path, err))?;
        Ok(Self {
            issuer,
            ca_pem,
            digest: pki::digest(&der),
            not_after_unix: info.not_after_unix,
            node_cert_lifetime,
        })
    }

    /// The manager's TLS identity from `data_dir`: the kept one while it was
    /// signed by this CA and is not past half its lifetime, else a new one.
    pub fn manager_identity(&self, data_dir: &Path) -> Result<ManagerIdentity, ManagerError> {
        let (cert_path, key_path) = (data_dir.join(MANAGER_CERT_FILE), data_dir.join(MANAGER_KEY_FILE));
        if let (Some(chain_pem), Some(key_pem)) = (read_optional(&cert_path)?, read_optional(&key_path)?) {
            let chain = pki::pem_certificates(&chain_pem);
            let fresh = chain.first().and_then(|der| CertificateInfo::parse(der).ok()).is_some_and(|info| {
                info.common_name == MANAGER_SERVER_NAME && info.renew_at_unix() > now_unix()
            });
            if fresh && chain.last().is_some_and(|ca| pki::digest(ca) == self.digest) {
                return Ok(ManagerIdentity { chain_pem, key_pem });
            }
        }
        let key = new_key()?;
        let mut params = leaf_params(MANAGER_SERVER_NAME, MANAGER_ROLE, MANAGER_CERT_LIFETIME);
        params.subject_alt_names = vec![SanType::DnsName(
            MANAGER_SERVER_NAME.try_into().map_err(|err| refused("naming the manager certificate", err))?,
        )];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(|err| refused("signing the manager certificate", err))?;
        let identity = ManagerIdentity {
            chain_pem: format!("{}{}", certificate.pem(), self.ca_pem),
            key_pem: key.serialize_pem(),
        };
        write_secret(&key_path, &identity.key_pem)?;
        write_file(&cert_path, &identity.chain_pem, 0o644)?;
        Ok(identity)
    }

    /// Signs a worker certificate for `node_id` with the public key of the
    /// DER request `csr`. The request may leave its subject empty or name
    /// `node_id` itself; the manager writes the subject.
    pub fn sign_node(&self, csr: &[u8], node_id: &str) -> Result<SignedCertificate, CsrRefusal> {
        let mut request = CertificateSigningRequestParams::from_der(&csr.to_vec().into())
            .map_err(|err| CsrRefusal::Malformed(err.to_string()))?;
        let requested = match request.params.distinguished_name.get(&DnType::CommonName) {
            None => None,
            Some(rcgen::DnValue::Utf8String(name)) => Some(name.clone()),
            Some(rcgen::DnValue::PrintableString(name)) => Some(name.as_str().to_string()),
            Some(other) => Some(format!("{other:?}")),
        };
        if let Some(requested) = requested.filter(|name| name != node_id) {
            return Err(CsrRefusal::OtherNode { requested, node: node_id.to_string() });
        }
        let mut params = leaf_params(node_id, WORKER_ROLE, self.node_cert_lifetime);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        request.params = params;
        let certificate = request
            .signed_by(&self.issuer)
            .map_err(|err| CsrRefusal::Malformed(format!("signing it: {err}")))?;
        let info = CertificateInfo::parse(certificate.der()).map_err(CsrRefusal::Malformed)?;
        Ok(SignedCertificate { pem: certificate.pem(), info })
    }
}

/// A new ECDSA P-256 key.
fn new_key() -> Result<KeyPair, ManagerError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|err| refused("generating a P-256 key", err))
}

/// The root CA's certificate settings.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name("netctl root CA", None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + CA_LIFETIME;
    params
}

/// The settings of a certificate for `common_name` in `role`, valid from now
/// for `lifetime`, with a random serial number. A lifetime of an hour or
/// more starts a minute early, for clocks slightly behind the manager's.
fn leaf_params(common_name: &str, role: &str, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, Some(role));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    let early =
        if lifetime >= Duration::from_secs(3600) { time::Duration::minutes(1) } else { time::Duration::ZERO };
    params.not_before = now - early;
    params.not_after = now + lifetime;
    params.serial_number = Some(rcgen::SerialNumber::from(rand::random::<u64>() >> 1));
    params
}

/// `CN=<common_name>,OU=<role>,O=netctl`.
fn name(common_name: &str, role: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(role) = role {
        name.push(DnType::OrganizationalUnitName, role);
    }
    name.push(DnType::OrganizationName, ORGANIZATION);
    name
}

/// Seconds since the epoch.
fn now_unix() -> i64 {
    crate::networks::now_unix()
}

fn refused(what: &str, err: impl std::fmt::Display) -> ManagerError {
    ManagerError::Refused(format!("{what}: {err}"))
}

fn invalid(path: &Path, err: impl std::fmt::Display) -> ManagerError {
    ManagerError::Refused(format!("{} is not usable: {err}", path.display()))
}

/// The file's text, or None when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, ManagerError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text)),
        Ok(_) => Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ManagerError::Io { context: format!("reading {}", path.display()), source }),
    }
}

/// Writes a key: mode 0600 from the first byte.
pub fn write_secret(path: &Path, text: &str) -> Result<(), ManagerError> {
    write_file(path, text, 0o600)
}

/// Writes `text` to a temporary file with `mode`, syncs it and renames it
/// over `path`: a crash leaves the old file or the new one.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), ManagerError> {
    let temporary = path.with_extension("tmp");
    let io_err = |what: &str| {
        let context = format!("{what} {}", path.display());
        move |source| ManagerError::Io { context, source }
    };
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io_err("creating"))?;
    file.write_all(text.as_bytes()).map_err(io_err("writing"))?;
    file.sync_all().map_err(io_err("syncing"))?;
    std::fs::rename(&temporary, path).map_err(io_err("renaming into"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_proto::pki::NodeKey;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_ca_is_made_once_and_its_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = ClusterCa::load_or_create(dir.path(), DEFAULT_CERT_EXPIRY).unwrap();
        let identity = first.manager_identity(dir.path()).unwrap();
        for key in [CA_KEY_FILE, MANAGER_KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let again = ClusterCa::load_or_create(dir.path(), DEFAULT_CERT_EXPIRY).unwrap();
        assert_eq!(again.digest, first.digest);
        assert_eq!(again.manager_identity(dir.path()).unwrap().chain_pem, identity.chain_pem);
        let chain = pki::pem_certificates(&identity.chain_pem);
        assert_eq!(chain.len(), 2);
        assert_eq!(pki::digest(&chain[1]), first.digest);
    }

    #[test]
    fn node_certificates_carry_the_node_the_manager_chose() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(dir.path(), Duration::from_secs(60)).unwrap();
        let signed = ca.sign_node(&NodeKey::generate().unwrap().csr_der, "node1").unwrap();
        assert_eq!(signed.info.common_name, "node1");
        assert_eq!(signed.info.role, WORKER_ROLE);
        assert_eq!(signed.info.subject, "CN=node1,OU=worker,O=netctl");
        assert_eq!(signed.info.not_after_unix - signed.info.not_before_unix, 60);
        let own = ca.sign_node(&NodeKey::generate_for(Some("node1")).unwrap().csr_der, "node1");
        assert!(own.is_ok());
        let other =
            ca.sign_node(&NodeKey::generate_for(Some("node2")).unwrap().csr_der, "node1").unwrap_err();
        assert!(other.to_string().contains("names node node2"), "{other}");
        let garbage = ca.sign_node(b"not a request", "node1").unwrap_err();
        assert!(matches!(garbage, CsrRefusal::Malformed(_)), "{garbage}");
    }
}
