//! Who may use the peer port, and how a node proves it is one of the peers.
//!
//! Trust boundary: the peer port (`sidelog.v1.Peer`: AppendEntries, Vote,
//! InstallSnapshot, Forward, Hello, Join, Leave, ReadIndex, PreVote, Read)
//! must only ever be reached by other members of the cluster. Each of these
//! RPCs can write around the client ACL (Forward), read around it (Read:
//! an attached sidecar checks its own callers), wipe the log (InstallSnapshot), depose
//! the leader (AppendEntries/Vote with a higher term) or change who receives
//! every record (Join). So every call is checked here, before it reaches
//! the service:
//!
//! - With peer TLS the handshake already required a certificate from the
//!   peer CA (`--peer-tls-ca`); on top of that the certificate's Common Name
//!   must match one of the allowed peer names (`--peer-allowed-names`, glob
//!   patterns, default: the Common Name of our own peer certificate). A
//!   client certificate from the same CA (`root`, `nobody`) has another name
//!   and is refused with PERMISSION_DENIED.
//! - With a cluster secret (`--cluster-secret-file`) every call must carry
//!   it in the `x-sidelog-cluster-secret` metadata; it is compared in
//!   constant time and never logged. Missing or wrong: UNAUTHENTICATED.
//!   Both may be configured; then both are required.
//! - With neither, the configuration only lets the peer port bind a
//!   loopback address (unless `--insecure`), and the client port is just as
//!   open (no TLS means no ACL): the peer port is never more open than the
//!   client port.

use std::{fmt, path::Path, sync::Arc};

use tonic::{Request, Status, metadata::MetadataValue, service::Interceptor};

use super::PeerInfo;

/// Metadata key carrying the cluster secret.
pub const SECRET_HEADER: &str = "x-sidelog-cluster-secret";

/// Shortest secret accepted: a guessable secret is no boundary.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PeerAuthError {
    #[error("cannot read the cluster secret {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster secret in {} {problem}", path.display())]
    BadSecret {
        path: std::path::PathBuf,
        problem: &'static str,
    },
    #[error("invalid peer name pattern {0:?}: use letters, digits, '.', '-', '_' and '*'")]
    BadPattern(String),
    #[error(
        "the peer certificate {} has no Common Name to derive the allowed peer names from; \
         give --peer-allowed-names",
        .0.display()
    )]
    NoCommonName(std::path::PathBuf),
}

/// A shared cluster secret. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct ClusterSecret(MetadataValue<tonic::metadata::Ascii>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(***)")
    }
}

impl ClusterSecret {
    /// Reads the secret from `path` (surrounding whitespace ignored, so
    /// `openssl rand -hex 32 > secret` works).
    pub fn load(path: &Path) -> Result<ClusterSecret, PeerAuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| PeerAuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(text.trim()).map_err(|problem| PeerAuthError::BadSecret {
            path: path.to_owned(),
            problem,
        })
    }

    fn parse(s: &str) -> Result<ClusterSecret, &'static str> {
        if s.len() < MIN_SECRET_LEN {
            return Err("is shorter than 16 characters");
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces (e.g. `openssl rand -hex 32`)");
        }
        MetadataValue::try_from(s)
            .map(ClusterSecret)
            .map_err(|_| "is not a valid metadata value")
    }

    /// Constant-time comparison: the time taken does not depend on where
    /// the first differing byte is.
    fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), presented)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (it is fixed by the operator's generator);
    // the contents are compared without an early exit.
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Glob patterns (`*` matches any run of characters) over certificate
/// Common Names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PeerNames(Vec<String>);

impl PeerNames {
    /// Parses `a,b*,c`; empty items are ignored.
    pub fn parse(patterns: &[String]) -> Result<PeerNames, PeerAuthError> {
        let mut out = Vec::new();
        for p in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            if !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*'))
            {
                return Err(PeerAuthError::BadPattern(p.to_owned()));
            }
            out.push(p.to_owned());
        }
        Ok(PeerNames(out))
    }

    /// The default: the Common Name of our own peer certificate, so that
    /// nodes sharing one peer certificate identity (as `sidelog dev-certs`'
    /// `peer.pem`, or a cert-manager Certificate per StatefulSet) admit
    /// each other and nothing else.
    pub fn from_own_certificate(cert: &Path) -> Result<PeerNames, PeerAuthError> {
        let cn = super::tls::load_certs(cert)
            .ok()
            .and_then(|certs| certs.first().and_then(|c| super::tls::common_name(c)));
        match cn {
            Some(cn) if !cn.is_empty() => Ok(PeerNames(vec![cn])),
            _ => Err(PeerAuthError::NoCommonName(cert.to_owned())),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| glob(p.as_bytes(), name.as_bytes()))
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// `*` matches any (possibly empty) run; everything else literally.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative matcher with one backtrack point (the last `*`): linear
    // enough for names of a few dozen bytes, no recursion to blow up.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The server side: checks every peer-port call (a tonic interceptor).
#[derive(Clone, Debug)]
pub struct PeerGuard {
    inner: Arc<GuardInner>,
}

#[derive(Debug)]
struct GuardInner {
    /// With peer TLS: the names a peer certificate may carry.
    names: Option<PeerNames>,
    secret: Option<ClusterSecret>,
}

impl PeerGuard {
    /// `names` is `Some` exactly when the peer port serves mutual TLS.
    pub fn new(names: Option<PeerNames>, secret: Option<ClusterSecret>) -> PeerGuard {
        PeerGuard {
            inner: Arc::new(GuardInner { names, secret }),
        }
    }

    /// Decides whether the caller is a peer.
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let info = request.extensions().get::<PeerInfo>();
        let remote = info
            .and_then(|i| i.remote)
            .or_else(|| request.remote_addr())
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        if let Some(names) = &self.inner.names {
            let Some(subject) = info.and_then(|i| i.subject.as_deref()) else {
                tracing::warn!(peer = %remote, "peer call without a peer certificate refused");
                return Err(Status::unauthenticated("the peer port needs a peer certificate"));
            };
            if !names.matches(subject) {
                // The allowed names are for the operator's log, not for the caller.
                tracing::warn!(peer = %remote, subject, allowed = %names.patterns().join(","),
                    "peer call from a certificate that is not a peer refused");
                return Err(Status::permission_denied(format!("{subject} is not a cluster peer")));
            }
        }
        if let Some(secret) = &self.inner.secret {
            let presented = request.metadata().get(SECRET_HEADER).map(|v| v.as_bytes());
            match presented {
                Some(p) if secret.matches(p) => {}
                Some(_) => {
                    tracing::warn!(peer = %remote, "peer call with a wrong cluster secret refused");
                    return Err(Status::unauthenticated("wrong cluster secret"));
                }
                None => {
                    tracing::warn!(peer = %remote, "peer call without the cluster secret refused");
                    return Err(Status::unauthenticated("the peer port needs the cluster secret"));
                }
            }
        }
        Ok(())
    }
}

impl Interceptor for PeerGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request)?;
        Ok(request)
    }
}

/// What a node presents when it dials its peers: its (reloadable) peer
/// certificate and the cluster secret, each if configured.
#[derive(Clone, Debug, Default)]
pub struct PeerCredentials {
    pub tls: Option<Arc<super::peer_tls::PeerClientTls>>,
    pub secret: Option<ClusterSecret>,
}

impl PeerCredentials {
    pub fn interceptor(&self) -> SecretInterceptor {
        SecretInterceptor(self.secret.clone())
    }
}

/// The client side: adds the cluster secret (if any) to every peer call.
#[derive(Clone, Debug, Default)]
pub struct SecretInterceptor(Option<ClusterSecret>);

impl SecretInterceptor {
    pub fn new(secret: Option<ClusterSecret>) -> Self {
        SecretInterceptor(secret)
    }
}

impl Interceptor for SecretInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(s) = &self.0 {
            request.metadata_mut().insert(SECRET_HEADER, s.0.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        let names = PeerNames::parse(&["sidelog-peer".into(), "sidelog-*.svc".into()]).unwrap();
        assert!(names.matches("sidelog-peer"));
        assert!(names.matches("sidelog-0.svc"));
        assert!(names.matches("sidelog-.svc"));
        assert!(!names.matches("sidelog-peer2"));
        assert!(!names.matches("root"));
        assert!(!names.matches("sidelog-0.svc.evil"));
        assert!(PeerNames::parse(&["*".into()]).unwrap().matches("anything"));
        assert!(PeerNames::parse(&["a b".into()]).is_err());
        assert!(!PeerNames::parse(&[]).unwrap().matches("x"));
    }

    #[test]
    fn secrets_compare_exactly_and_never_print() {
        let s = ClusterSecret::parse("0123456789abcdef0123").unwrap();
        assert!(s.matches(b"0123456789abcdef0123"));
        assert!(!s.matches(b"0123456789abcdef012"));
        assert!(!s.matches(b"0123456789abcdef01234"));
        assert!(!s.matches(b"x123456789abcdef0123"));
        assert!(!format!("{s:?}").contains("0123"));
        assert!(ClusterSecret::parse("short").is_err());
        assert!(ClusterSecret::parse("has a space in it, long enough").is_err());
    }
}
