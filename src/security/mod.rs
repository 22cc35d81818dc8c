//! TLS configs, certificate loading and reloading, and ACL authorization.

pub mod acl;
pub mod certs;
pub mod peer_auth;
pub mod peer_tls;
pub mod tls;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

pub use acl::{ACT_ADMIN, ACT_CONSUME, ACT_PRODUCE, Acl, AclError, OBJECT_ANY};
pub use peer_auth::{ClusterSecret, PeerCredentials, PeerGuard, PeerNames};
pub use peer_tls::PeerClientTls;
pub use tls::{ClientAuth, PeerInfo, ReloadableTls, TlsError, TlsFiles};

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a client certificate is required")]
    Unauthenticated,
    #[error("{subject} is not permitted to {action}{}", if object == "*" { String::new() } else { format!(" on log {object}") })]
    PermissionDenied {
        subject: String,
        action: &'static str,
        /// The log (`*`: the call names none).
        object: String,
    },
}

/// Decides whether a peer may perform an action.
pub struct Authorizer {
    /// Client certificates are verified (a CA is configured): calls need a subject.
    require_subject: bool,
    acl: Option<AclSource>,
    /// Bumped on every policy reload: open streams check their caller again.
    generation: tokio::sync::watch::Sender<u64>,
}

struct AclSource {
    model: PathBuf,
    policy: PathBuf,
    current: RwLock<Arc<Acl>>,
    stamp: Mutex<Vec<Option<SystemTime>>>,
}

impl Authorizer {
    /// No TLS: everyone may do everything (the agent only serves loopback,
    /// or was told `--insecure`).
    pub fn open() -> Authorizer {
        Authorizer {
            require_subject: false,
            acl: None,
            generation: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn new(require_subject: bool, acl_files: Option<(PathBuf, PathBuf)>) -> Result<Authorizer, AclError> {
        let acl = match acl_files {
            Some((model, policy)) => {
                let acl = Acl::load(&model, &policy)?;
                let stamp = Mutex::new(stamp_of(&model, &policy));
                Some(AclSource {
                    model,
                    policy,
                    current: RwLock::new(Arc::new(acl)),
                    stamp,
                })
            }
            None => None,
        };
        Ok(Authorizer {
            require_subject,
            acl,
            generation: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Checks that the peer is authenticated when certificates are required.
    pub fn authenticate(&self, peer: Option<&PeerInfo>) -> Result<(), AuthError> {
        if self.require_subject && peer.and_then(|p| p.subject.as_ref()).is_none() {
            return Err(AuthError::Unauthenticated);
        }
        Ok(())
    }

    /// Checks `action` for a peer on every log (object `*`); health checks
    /// never come here.
    pub fn check(&self, peer: Option<&PeerInfo>, action: &'static str) -> Result<(), AuthError> {
        self.check_on(peer, acl::OBJECT_ANY, action)
    }

    /// Checks `action` on the log `object` (the ACL's object is the log
    /// name): a rule for the object itself or for `*` (every log) allows it.
    pub fn check_on(&self, peer: Option<&PeerInfo>, object: &str, action: &'static str) -> Result<(), AuthError> {
        if !self.require_subject {
            return Ok(());
        }
        let subject = peer
            .and_then(|p| p.subject.as_deref())
            .ok_or(AuthError::Unauthenticated)?;
        if let Some(src) = &self.acl {
            let acl = src.current.read().unwrap_or_else(|p| p.into_inner()).clone();
            let allowed = (object != OBJECT_ANY && acl.enforce(subject, object, action))
                || acl.enforce(subject, OBJECT_ANY, action);
            if !allowed {
                return Err(AuthError::PermissionDenied {
                    subject: subject.to_owned(),
                    action,
                    object: object.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Changes whenever the policy is reloaded: a long-lived call (a
    /// stream) checks its caller again then, so a revoked right ends it.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reloads the policy if its files changed; a bad file keeps the old one.
    pub fn reload_if_changed(&self) -> bool {
        let Some(src) = &self.acl else { return false };
        let now = stamp_of(&src.model, &src.policy);
        {
            let mut stamp = src.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *stamp == now {
                return false;
            }
            *stamp = now;
        }
        match Acl::load(&src.model, &src.policy) {
            Ok(acl) => {
                *src.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(acl);
                tracing::info!(policy = %src.policy.display(), "reloaded ACL policy");
                self.generation.send_modify(|g| *g += 1);
                true
            }
            Err(e) => {
                tracing::error!(cause = %e, "new ACL files are invalid; keeping the previous policy");
                false
            }
        }
    }
}

fn stamp_of(model: &std::path::Path, policy: &std::path::Path) -> Vec<Option<SystemTime>> {
    [model, policy]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}
