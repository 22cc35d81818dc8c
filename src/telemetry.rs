//! Logging setup and the metrics exposition, in one place.

use std::fmt::Write;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{config::LogFormat, node::LogNode};

/// Installs the global tracing subscriber: JSON lines (default) or text on
/// stdout, filtered by `RUST_LOG` if set, else by `level`. Safe to call more
/// than once (later calls are no-ops), which tests rely on.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true))
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
}

/// Prometheus text exposition of the node's log figures.
pub fn render_metrics(node: &LogNode) -> String {
    let stats = node.log().stats();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    gauge(
        "sidelog_log_first_offset",
        "First data offset retained.",
        "gauge",
        stats.first_offset,
    );
    gauge(
        "sidelog_log_next_offset",
        "Offset the next record will get.",
        "gauge",
        stats.next_offset,
    );
    gauge(
        "sidelog_log_committed_offset",
        "One past the last committed offset.",
        "gauge",
        node.committed(),
    );
    gauge(
        "sidelog_log_segments",
        "Segments on disk.",
        "gauge",
        stats.segments as u64,
    );
    gauge(
        "sidelog_log_size_bytes",
        "Bytes of segments and indexes on disk.",
        "gauge",
        stats.disk_bytes,
    );
    gauge(
        "sidelog_fsyncs_total",
        "fdatasync calls on the log.",
        "counter",
        stats.fsyncs,
    );
    out
}
