//! The node's identity, kept in the agent's state dir: the certificate the
//! manager signed (its subject is the node ID), the private key, and the
//! cluster CA, all mode 0600. A restarted agent reconnects with them, without
//! the join token; the node ID is also written alone, for operators.

use netctl_proto::pki::{self, CertificateInfo};
use netctl_proto::NodeIdentity;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const NODE_ID_FILE: &str = "node-id";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";
const CA_FILE: &str = "ca.crt";

/// What a node proves itself with.
#[derive(Clone)]
pub struct Credentials {
    /// The node ID its certificate names.
    pub node_id: String,
    /// Its certificate and key.
    pub identity: NodeIdentity,
    /// The cluster CA, the only one it trusts.
    pub ca_pem: String,
    /// What its certificate says (expiry, renewal time).
    pub certificate: CertificateInfo,
    /// The CA's digest.
    pub ca_digest: String,
}

impl Credentials {
    /// Reads credentials from their PEM texts.
    pub fn from_pem(certificate_pem: String, key_pem: String, ca_pem: String) -> Result<Self, String> {
        let der = pki::pem_certificates(&certificate_pem).into_iter().next().ok_or("no node certificate")?;
        let certificate = CertificateInfo::parse(&der)?;
        let ca = pki::pem_certificates(&ca_pem).into_iter().next().ok_or("no CA certificate")?;
        Ok(Self {
            node_id: certificate.common_name.clone(),
            identity: NodeIdentity { certificate_pem, key_pem },
            ca_digest: pki::digest(&ca),
            ca_pem,
            certificate,
        })
    }
}

/// The credentials kept from an earlier join, if any.
pub fn load(state_dir: &Path) -> Result<Option<Credentials>, String> {
    let read = |name: &str| match std::fs::read_to_string(state_dir.join(name)) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("reading {}: {err}", state_dir.join(name).display())),
    };
    let (Some(certificate), Some(key), Some(ca)) = (read(CERT_FILE)?, read(KEY_FILE)?, read(CA_FILE)?) else {
        return Ok(None);
    };
    Credentials::from_pem(certificate, key, ca)
        .map(Some)
        .map_err(|err| format!("the node certificate in {} is not usable: {err}", state_dir.display()))
}

/// Keeps `credentials` for the next start. Each file is written to a
/// temporary one (mode 0600 from the first byte), synced, then renamed;
/// the key is written first and the certificate last, so a crash leaves the
/// old pair or a certificate that the next join replaces.
pub fn save(state_dir: &Path, credentials: &Credentials) -> std::io::Result<()> {
    write_private(&state_dir.join(KEY_FILE), &credentials.identity.key_pem)?;
    write_private(&state_dir.join(CA_FILE), &credentials.ca_pem)?;
    write_private(&state_dir.join(NODE_ID_FILE), &format!("{}\n", credentials.node_id))?;
    write_private(&state_dir.join(CERT_FILE), &credentials.identity.certificate_pem)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A CA and a certificate it signed for `node`, PEM.
    fn signed(node: &str) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, node);
        let certificate = params.signed_by(&key, &ca).unwrap();
        (certificate.pem(), key.serialize_pem(), ca.pem())
    }

    #[test]
    fn saved_credentials_are_private_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        let (certificate, key, ca) = signed("abc123");
        let credentials = Credentials::from_pem(certificate, key, ca).unwrap();
        save(dir.path(), &credentials).unwrap();
        for file in [CERT_FILE, KEY_FILE, CA_FILE, NODE_ID_FILE] {
            let mode = std::fs::metadata(dir.path().join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.node_id, "abc123");
        assert_eq!(loaded.ca_digest, credentials.ca_digest);
    }
}
