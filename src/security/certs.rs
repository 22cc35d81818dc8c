//! `sidelog dev-certs`: a CA, a server certificate, a peer certificate and
//! two client certificates plus an ACL model and policy, for development
//! and tests (the book's cfssl setup in one command).
//!
//! The peer certificate has its own Common Name, [`PEER_CN`]: the peer port
//! admits only certificates with the peer name (see
//! `security::peer_auth`), so the client certificates (`root`, `nobody`)
//! signed by the same CA cannot call Raft, join or forward RPCs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub const MODEL: &str = "\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
";

pub const POLICY: &str = "\
p, root, *, produce
p, root, *, consume
p, root, *, admin
";

/// Common Name of the development peer certificate.
pub const PEER_CN: &str = "sidelog-peer";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A generated certificate authority.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "sidelog");
    dn
}

impl Ca {
    pub fn generate(cn: &str) -> Result<Ca, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a leaf certificate: (cert PEM, key PEM). `sans` empty means a
    /// client certificate; otherwise a server (and peer) certificate.
    pub fn issue(
        &self,
        cn: &str,
        sans: &[String],
        validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
    ) -> Result<(String, String), CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(cn);
        for san in sans {
            params.subject_alt_names.push(match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into()?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = if sans.is_empty() {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            // Server certs double as peer identities (peers dial each other).
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        };
        if let Some((from, to)) = validity {
            params.not_before = from;
            params.not_after = to;
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(dir: &Path, name: &str, content: &str) -> Result<PathBuf, CertError> {
    let path = dir.join(name);
    std::fs::write(&path, content).map_err(|source| CertError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Writes the development PKI into `dir`; returns the files written.
pub fn write_dev_certs(dir: &Path, extra_sans: &[String]) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let ca = Ca::generate("sidelog development CA")?;
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    sans.extend(extra_sans.iter().cloned());
    let (server, server_key) = ca.issue("server", &sans, None)?;
    let (peer, peer_key) = ca.issue(PEER_CN, &sans, None)?;
    let (root, root_key) = ca.issue("root", &[], None)?;
    let (nobody, nobody_key) = ca.issue("nobody", &[], None)?;
    let mut files = Vec::new();
    for (name, content) in [
        ("ca.pem", ca.cert_pem.as_str()),
        ("ca-key.pem", ca.key_pem.as_str()),
        ("server.pem", &server),
        ("server-key.pem", &server_key),
        ("peer.pem", &peer),
        ("peer-key.pem", &peer_key),
        ("root-client.pem", &root),
        ("root-client-key.pem", &root_key),
        ("nobody-client.pem", &nobody),
        ("nobody-client-key.pem", &nobody_key),
        ("model.conf", MODEL),
        ("policy.csv", POLICY),
    ] {
        files.push(write(dir, name, content)?);
    }
    #[cfg(unix)]
    for key in [
        "ca-key.pem",
        "server-key.pem",
        "peer-key.pem",
        "root-client-key.pem",
        "nobody-client-key.pem",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600));
    }
    Ok(files)
}
