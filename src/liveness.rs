//! Liveness: whether this process can still do its job at all, as opposed
//! to readiness (whether it can take writes right now).
//!
//! A storage error (EMFILE on a segment roll, ENOSPC, EIO on fsync) poisons
//! the log and stops openraft's core for good: every later write fails, and
//! only a restart (which reopens and recovers the log) helps. Before this
//! existed `/healthz` stayed 200, so Kubernetes never restarted the pod.
//! Now the first fatal error is recorded here; gRPC health (`""` and
//! `liveness`) turns NOT_SERVING, `/healthz` answers 503 with the reason,
//! and the agent exits non-zero after `--fatal-exit-delay` (long enough for
//! a probe or an operator to see why).

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;

/// gRPC health service that reports liveness only: SERVING until a fatal
/// error (a Kubernetes liveness probe; never follows quorum, so a minority
/// partition does not restart-loop).
pub const LIVENESS_SERVICE: &str = "sidelog.live";
/// The name the liveness service had before `sidelog.live`; still reported,
/// so probes written against it keep working.
pub const LIVENESS_SERVICE_OLD: &str = "liveness";
/// gRPC health service that reports start-up: SERVING once the local log is
/// open and the agent serves, whether or not a cluster has formed (a
/// Kubernetes startup probe), NOT_SERVING from the start of a shutdown.
pub const STARTED_SERVICE: &str = "sidelog.started";

/// The first fatal error, shared by the health services and the agent.
#[derive(Clone, Debug)]
pub struct Liveness {
    fatal: Arc<watch::Sender<Option<String>>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            fatal: Arc::new(watch::channel(None).0),
        }
    }
}

impl Liveness {
    /// Why the process is no longer alive, if it is not.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    /// Records a fatal error; the first one wins (it is the cause, later
    /// ones are usually consequences).
    pub fn set_fatal(&self, reason: String) {
        self.fatal.send_if_modified(|f| {
            if f.is_some() {
                return false;
            }
            tracing::error!(cause = %reason, "fatal error: liveness fails and the process will exit");
            *f = Some(reason);
            true
        });
    }

    /// Resolves with the reason once a fatal error is recorded.
    pub async fn failed(&self) -> String {
        let mut rx = self.fatal.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: cannot be dropped while we wait.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What is fatal now: a stopped Raft core or a poisoned log.
fn fatal_reason(cluster: &Cluster) -> Option<String> {
    if let Err(fatal) = &cluster.metrics().running_state {
        return Some(format!("the Raft core stopped: {fatal}"));
    }
    cluster
        .node()
        .storage_failure()
        .map(|f| format!("the log failed and refuses writes until restarted: {f}"))
}

/// Watches Raft and storage until `token` is cancelled (a shutdown, after
/// which Raft stopping is expected) or a fatal error is found.
pub async fn watch(cluster: Arc<Cluster>, liveness: Liveness, token: CancellationToken) {
    let mut metrics = cluster.raft().metrics();
    loop {
        if token.is_cancelled() {
            return;
        }
        if let Some(reason) = fatal_reason(&cluster) {
            liveness.set_fatal(reason);
            return;
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() {
                if !token.is_cancelled() {
                    liveness.set_fatal("the Raft core stopped".into());
                }
                return;
            },
            // Storage failures are not in the Raft metrics.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = token.cancelled() => return,
        }
    }
}
