//! sidelog: a lightweight, crash-safe commit log that runs beside
//! applications as a sidecar.
//!
//! # Layout
//!
//! - [`storage`]: the segmented on-disk log: records with CRC32C, memory-
//!   mapped indexes, recovery, group commit, retention. Knows nothing of
//!   gRPC or Raft.
//! - [`node`]: the log a node serves: storage plus the commit watermark
//!   consumers read below (one per log).
//! - [`pb`]: the generated protobuf modules, shared by client and servers.
//! - [`cluster`]: once per process, `cluster::host::Host` (the default
//!   log's Raft group, which holds the membership and the catalog of named
//!   logs, and one Raft group per named log, sharing the peer
//!   connections); once per log, `cluster::Cluster` (its Raft, proposer,
//!   forwarder, retention).
//! - [`api`]: the gRPC `log.v1` service, health, reflection and HTTP/JSON
//!   routes; error to status mapping.
//! - [`discovery`]: finding peer addresses (static list, DNS, mDNS) for
//!   the cluster's bootstrap/join loop.
//! - [`client`]: the leader-aware Rust client (GetServers, routing,
//!   retries) used by the CLI and tests.
//! - [`config`]: flags, environment and config file merged into one
//!   validated [`config::Config`].
//! - [`liveness`]: fatal storage/Raft errors made visible (health, exit).
//! - [`agent`]: wiring, start order and graceful shutdown.
//! - [`telemetry`]: logging setup and metrics exposition.
//! - [`trace_context`]: W3C trace context carried across peer calls.
//! - [`cli`]: the `sidelog` command line (subcommands, perf tool).

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod liveness;
pub mod node;
pub mod pb;
pub mod security;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod trace_context;

/// The commit this build comes from (see `build.rs`).
pub const COMMIT: &str = match option_env!("SIDELOG_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// This build's version and commit, as `--version` prints them:
/// `0.2.0-dev (commit 1a2b3c4d5e6f)`.
pub fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| format!("{} (commit {COMMIT})", env!("CARGO_PKG_VERSION")))
}
