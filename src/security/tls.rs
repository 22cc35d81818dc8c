//! rustls (ring provider) server and client configs from PEM files, hot
//! reloading, and the TLS accept loop that tells services who the peer is.
//!
//! Trust boundary: with a CA configured, the client port verifies any
//! client certificate against it and the subject (the certificate's Common
//! Name) is what the ACL judges. Connections without a certificate are
//! accepted at the TLS layer so that Kubernetes' gRPC probes (which cannot
//! present one) reach the health service; every other call without a
//! subject is refused with UNAUTHENTICATED. The peer port requires a
//! verified client certificate at the handshake: no plaintext or
//! anonymous peer gets in.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// Certificate, key and optional CA, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Whether a client certificate is needed at the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified against the CA when presented; services decide what an
    /// anonymous client may do (the client port).
    Optional,
    /// A certificate signed by the CA is required (the peer port).
    Required,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.to_owned(),
            message: "no PRIVATE KEY block found".into(),
        })
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: format!("bad CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Builds a server config from the files.
pub fn server_config(files: &TlsFiles, auth: ClientAuth, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.ca, auth) {
        (Some(ca), _) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider());
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
        (None, ClientAuth::Required) => {
            return Err(TlsError::Config("client authentication requires a CA file".into()));
        }
        (None, ClientAuth::Optional) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| TlsError::Config(format!("{} / {}: {e}", files.cert.display(), files.key.display())))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client config that trusts `ca` and, if given, presents `cert`/`key`.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(load_roots(ca)?);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A server config that can be swapped while serving: new connections use
/// the newest good one; a bad new file keeps the old config (and is logged).
pub struct ReloadableTls {
    files: TlsFiles,
    auth: ClientAuth,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

fn stamp_of(paths: &[&Path]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

impl ReloadableTls {
    pub fn new(files: TlsFiles, auth: ClientAuth, alpn: Vec<&'static [u8]>) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp_of(&Self::paths(&files));
        let config = server_config(&files, auth, &alpn)?;
        Ok(Arc::new(ReloadableTls {
            files,
            auth,
            alpn,
            current: RwLock::new(config),
            stamp: Mutex::new(stamp),
        }))
    }

    fn paths(files: &TlsFiles) -> Vec<&Path> {
        let mut v = vec![files.cert.as_path(), files.key.as_path()];
        v.extend(files.ca.as_deref());
        v
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Reloads if any file changed since the last look. Returns whether a
    /// new config took effect.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp_of(&Self::paths(&self.files));
        {
            let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *stamp == now {
                return false;
            }
            *stamp = now;
        }
        self.reload()
    }

    /// Rebuilds the config from the files; keeps the old one on error.
    pub fn reload(&self) -> bool {
        match server_config(&self.files, self.auth, &self.alpn) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
                tracing::info!(cert = %self.files.cert.display(), "reloaded TLS certificates");
                true
            }
            Err(e) => {
                tracing::error!(cause = %e, "new TLS files are invalid; keeping the previous certificates");
                false
            }
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// Common Name of the verified client certificate.
    pub subject: Option<String>,
}

/// A server-side TLS connection that carries its [`PeerInfo`] (tonic puts
/// it into each request's extensions via `Connected`).
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
    /// The listener's connection permit, given back on close.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl TlsConn {
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections, performs TLS handshakes concurrently (a slow
/// or failing client never blocks the others) and yields finished
/// connections until `shutdown`.
///
/// At most `max_handshakes` handshakes run at once: each holds a task, a
/// socket and rustls state for up to [`HANDSHAKE_TIMEOUT`], so without a
/// bound anyone who can open sockets could hold unbounded memory. A
/// connection beyond the bound is closed at once (logged at most once a
/// second) rather than queued: queueing would let the same flood delay
/// every legitimate client by the handshake timeout.
pub fn accept_loop(
    listener: TcpListener,
    tls: Arc<ReloadableTls>,
    max_handshakes: usize,
    mut limit: crate::api::conn_limit::ListenerLimit,
    shutdown: CancellationToken,
) -> mpsc::Receiver<TlsConn> {
    let (tx, rx) = mpsc::channel(128);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    let mut last_warned: Option<tokio::time::Instant> = None;
    let mut last_accept_warned: Option<tokio::time::Instant> = None;
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        crate::api::conn_limit::accept_failed(&e, &mut last_accept_warned).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let Some(connection) = limit.admit(remote) else {
                drop(tcp);
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_warned = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        peer = %remote,
                        limit = max_handshakes,
                        "too many TLS handshakes in progress (--max-tls-handshakes); closing new connections"
                    );
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let subject = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| common_name(c));
                        let info = PeerInfo {
                            remote: Some(remote),
                            subject,
                        };
                        let _ = tx
                            .send(TlsConn {
                                stream,
                                info,
                                _permit: connection,
                            })
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %remote, cause = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %remote, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The Common Name of an X.509 certificate's subject (DER), if any.
pub fn common_name(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?,
    //   serial INTEGER, signature SEQUENCE, issuer Name, validity SEQUENCE,
    //   subject Name, ... } ... }
    let (_, cert, _) = der(cert, 0x30)?;
    let (_, mut tbs, _) = der(cert, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs, 0xa0)?.2;
    }
    let mut rest = tbs;
    for tag in [0x02, 0x30, 0x30, 0x30] {
        rest = der(rest, tag)?.2; // serial, signature, issuer, validity
    }
    let (_, mut subject, _) = der(rest, 0x30)?;
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value string }.
    // With several CNs the last one counts, as in Go's Subject.CommonName
    // (which the book's ACL used).
    let mut cn = None;
    while !subject.is_empty() {
        let (_, rdn, next) = der(subject, 0x31)?;
        subject = next;
        let mut atvs = rdn;
        while !atvs.is_empty() {
            let (_, atv, next) = der(atvs, 0x30)?;
            atvs = next;
            let (_, oid, value) = der(atv, 0x06)?;
            if oid == [0x55, 0x04, 0x03] {
                // UTF8String, PrintableString or IA5String; others are refused.
                let (tag, bytes, _) = der_any(value)?;
                if matches!(tag, 0x0c | 0x13 | 0x16) {
                    cn = String::from_utf8(bytes.to_vec()).ok();
                }
            }
        }
    }
    cn
}

/// Splits one TLV with the expected tag: (tag, content, rest).
fn der(input: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    let r = der_any(input)?;
    (r.0 == tag).then_some(r)
}

fn der_any(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (
            rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
            &rest[n..],
        )
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}
