//! The client side of peer mutual TLS, reloadable: the certificate a node
//! presents when it dials its peers.
//!
//! tonic fixes a channel's TLS config when the channel is built, so a
//! rotated certificate cannot be swapped into open connections. Instead each
//! successful reload bumps a generation; `cluster::Peers` drops channels of
//! an older generation, so the next call dials again with the new
//! certificate (calls in flight finish on the old connection). Without this
//! a node keeps presenting its rotated-out certificate until it expires, and
//! then peers refuse it and the cluster loses quorum.

use std::{
    path::Path,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::{TlsError, TlsFiles};

pub struct PeerClientTls {
    files: TlsFiles,
    /// Verify every peer's certificate against this name, not the host dialed.
    server_name: Option<String>,
    current: RwLock<ClientTlsConfig>,
    generation: AtomicU64,
    stamp: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl std::fmt::Debug for PeerClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClientTls")
            .field("cert", &self.files.cert)
            .field("generation", &self.generation())
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn stamp_of(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [Some(&files.cert), Some(&files.key), files.ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Builds the config, checking the files parse (tonic would only find out
/// at the first connection).
fn build(files: &TlsFiles, server_name: Option<&str>) -> Result<ClientTlsConfig, TlsError> {
    super::tls::load_certs(&files.cert)?;
    super::tls::load_key(&files.key)?;
    let mut c = ClientTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.ca {
        super::tls::load_roots(ca)?;
        c = c.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let Some(name) = server_name {
        c = c.domain_name(name);
    }
    Ok(c)
}

impl PeerClientTls {
    pub fn new(files: TlsFiles, server_name: Option<String>) -> Result<PeerClientTls, TlsError> {
        let stamp = stamp_of(&files);
        let config = build(&files, server_name.as_deref())?;
        Ok(PeerClientTls {
            files,
            server_name,
            current: RwLock::new(config),
            generation: AtomicU64::new(0),
            stamp: Mutex::new(stamp),
        })
    }

    /// The config new connections use.
    pub fn config(&self) -> ClientTlsConfig {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Bumped by every reload that took effect.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reloads if a file changed since the last look; a bad new file keeps
    /// the old config (and is logged). Returns whether a new one took effect.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp_of(&self.files);
        {
            let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *stamp == now {
                return false;
            }
            *stamp = now;
        }
        match build(&self.files, self.server_name.as_deref()) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(cert = %self.files.cert.display(), "reloaded the peer client certificate");
                true
            }
            Err(e) => {
                tracing::error!(cause = %e, "new peer TLS files are invalid; keeping the previous certificate");
                false
            }
        }
    }
}
