//! All three signals, set up in one place: structured logs (tracing), the
//! Prometheus registry, and OpenTelemetry traces exported over OTLP/gRPC.
//!
//! Traces are on only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Request and storage spans are
//! at DEBUG level with a per-layer filter: with tracing off (and logs at
//! info) they are disabled at their call sites and cost nothing; with it on,
//! only the OpenTelemetry layer sees them. The exporter runs on its own
//! thread behind a bounded queue: finishing a span is a `try_send`, and a
//! full queue drops the span and counts it (`sidelog_trace_spans_dropped_total`)
//! rather than slow a request.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tracing_subscriber::{Layer, filter::Targets, fmt, prelude::*};

use crate::{node::LogNode, storage::FlushObserver};

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

// ---------------------------------------------------------------- metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// gRPC method (`Produce`, `ConsumeStream`, ...) or HTTP route.
    pub method: String,
    /// gRPC status code name (`OK`, `OUT_OF_RANGE`, ...) or HTTP status.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub commit: &'static str,
    /// The peer protocol level (see `cluster::PEER_PROTOCOL`).
    pub protocol: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// One of a fixed set (see `cluster::membership::plan`).
    pub reason: &'static str,
}

/// A named log (bounded by `--max-logs`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LogLabels {
    pub log: String,
}

/// One named log's figures at a scrape.
#[derive(Clone, Debug)]
pub struct LogFigures {
    pub name: String,
    pub first_offset: u64,
    pub committed_offset: u64,
    pub disk_bytes: u64,
    /// This node leads the log's group.
    pub leader: bool,
    /// A leader is known and this node heard from it lately.
    pub ready: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// Every metric sidelog exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<MethodLabels, Histogram>,
    pub records_in: Counter,
    pub bytes_in: Counter,
    pub records_out: Counter,
    pub bytes_out: Counter,
    /// Records a follower accepted and forwarded to the leader.
    pub records_forwarded: Counter,
    pub fsyncs: Counter,
    pub fsync_seconds: Histogram,
    pub records_per_fsync: Histogram,
    pub consume_streams: Gauge,
    pub spans_dropped: Counter,
    pub span_export_failures: Counter,
    /// Membership changes made without an operator, by reason.
    pub membership_changes: Family<ReasonLabels, Counter>,
    log_first_offset: Gauge,
    log_next_offset: Gauge,
    log_committed_offset: Gauge,
    log_segments: Gauge,
    log_bytes: Gauge,
    /// Per named log (the `default` log is the unlabelled gauges above).
    named_first_offset: Family<LogLabels, Gauge>,
    named_committed_offset: Family<LogLabels, Gauge>,
    named_bytes: Family<LogLabels, Gauge>,
    named_leader: Family<LogLabels, Gauge>,
    named_ready: Family<LogLabels, Gauge>,
    named_logs: Gauge,
    /// Rendering sets the log gauges first; one scrape at a time.
    render: Mutex<()>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 50 µs .. ~3.3 s
    prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 17)
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("sidelog");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds =
            Family::<MethodLabels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        let fsync_seconds = Histogram::new(latency_buckets());
        let records_per_fsync =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 14));
        let m = Metrics {
            requests,
            request_seconds,
            records_in: Counter::default(),
            bytes_in: Counter::default(),
            records_out: Counter::default(),
            bytes_out: Counter::default(),
            records_forwarded: Counter::default(),
            fsyncs: Counter::default(),
            fsync_seconds,
            records_per_fsync,
            consume_streams: Gauge::default(),
            spans_dropped: Counter::default(),
            span_export_failures: Counter::default(),
            membership_changes: Family::default(),
            log_first_offset: Gauge::default(),
            log_next_offset: Gauge::default(),
            log_committed_offset: Gauge::default(),
            log_segments: Gauge::default(),
            log_bytes: Gauge::default(),
            named_first_offset: Family::default(),
            named_committed_offset: Family::default(),
            named_bytes: Family::default(),
            named_leader: Family::default(),
            named_ready: Family::default(),
            named_logs: Gauge::default(),
            render: Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("requests", "Requests by method and status code", m.requests.clone());
        r.register(
            "request_duration_seconds",
            "Request latency (to the response headers for streams)",
            m.request_seconds.clone(),
        );
        r.register("records_in", "Records produced", m.records_in.clone());
        r.register("bytes_in", "Record bytes produced", m.bytes_in.clone());
        r.register("records_out", "Records consumed", m.records_out.clone());
        r.register("bytes_out", "Record bytes consumed", m.bytes_out.clone());
        r.register(
            "records_forwarded",
            "Records this node accepted as a follower and forwarded to the leader",
            m.records_forwarded.clone(),
        );
        r.register("fsyncs", "fdatasync calls by group commit", m.fsyncs.clone());
        r.register("fsync_duration_seconds", "fdatasync latency", m.fsync_seconds.clone());
        r.register(
            "records_per_fsync",
            "Records made durable by one fdatasync",
            m.records_per_fsync.clone(),
        );
        r.register(
            "consume_streams_active",
            "Open ConsumeStream calls",
            m.consume_streams.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Spans dropped because the export queue was full",
            m.spans_dropped.clone(),
        );
        r.register(
            "trace_export_failures",
            "Span batches the collector did not take",
            m.span_export_failures.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: crate::COMMIT,
                protocol: crate::cluster::PEER_PROTOCOL,
            })
            .set(1);
        r.register(
            "build_info",
            "This build: version, commit and peer protocol (always 1)",
            build,
        );
        r.register(
            "membership_changes",
            "Membership changes made without an operator (replace_dead_voter, remove_dead_member, promote, \
             demote, spread_domains, removed_self_detected, force_new_cluster)",
            m.membership_changes.clone(),
        );
        r.register(
            "log_first_offset",
            "First data offset retained",
            m.log_first_offset.clone(),
        );
        r.register(
            "log_next_offset",
            "Offset the next record will get",
            m.log_next_offset.clone(),
        );
        r.register(
            "log_committed_offset",
            "One past the last committed offset",
            m.log_committed_offset.clone(),
        );
        r.register("log_segments", "Segments on disk", m.log_segments.clone());
        r.register(
            "log_size_bytes",
            "Bytes of segments and indexes on disk",
            m.log_bytes.clone(),
        );
        r.register("named_logs", "Named logs this node serves", m.named_logs.clone());
        r.register(
            "named_log_first_offset",
            "A named log's first retained offset",
            m.named_first_offset.clone(),
        );
        r.register(
            "named_log_committed_offset",
            "One past a named log's last committed offset",
            m.named_committed_offset.clone(),
        );
        r.register(
            "named_log_size_bytes",
            "Bytes of a named log's segments and indexes on disk",
            m.named_bytes.clone(),
        );
        r.register(
            "named_log_leader",
            "1 when this node leads the named log's Raft group",
            m.named_leader.clone(),
        );
        r.register(
            "named_log_ready",
            "1 when the named log has a leader this node heard from lately",
            m.named_ready.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// A counter of membership changes for the cluster.
    pub fn membership_change_counter(&self) -> crate::cluster::ChangeCounter {
        let family = self.membership_changes.clone();
        crate::cluster::ChangeCounter(Arc::new(move |reason| {
            family.get_or_create(&ReasonLabels { reason }).inc();
        }))
    }

    /// Counts one finished request.
    pub fn observe_request(&self, method: &str, code: &str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Prometheus text exposition, with the log's current figures.
    pub fn render(&self, node: &LogNode, logs: &[LogFigures]) -> String {
        let _one = self.render.lock().unwrap_or_else(|p| p.into_inner());
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        // Deleted logs' series go with them.
        for f in [
            &self.named_first_offset,
            &self.named_committed_offset,
            &self.named_bytes,
            &self.named_leader,
            &self.named_ready,
        ] {
            f.clear();
        }
        self.named_logs.set(logs.len() as i64);
        for l in logs {
            let label = LogLabels { log: l.name.clone() };
            self.named_first_offset
                .get_or_create(&label)
                .set(as_i64(l.first_offset));
            self.named_committed_offset
                .get_or_create(&label)
                .set(as_i64(l.committed_offset));
            self.named_bytes.get_or_create(&label).set(as_i64(l.disk_bytes));
            self.named_leader.get_or_create(&label).set(i64::from(l.leader));
            self.named_ready.get_or_create(&label).set(i64::from(l.ready));
        }
        let stats = node.log().stats();
        self.log_first_offset.set(as_i64(stats.first_offset));
        self.log_next_offset.set(as_i64(stats.next_offset));
        self.log_committed_offset.set(as_i64(node.committed()));
        self.log_segments.set(as_i64(stats.segments as u64));
        self.log_bytes.set(as_i64(stats.disk_bytes));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(cause = %e, "encoding metrics failed");
        }
        out
    }
}

impl FlushObserver for Metrics {
    fn on_fsync(&self, took: Duration, records: u64) {
        self.fsyncs.inc();
        self.fsync_seconds.observe(took.as_secs_f64());
        if records > 0 {
            self.records_per_fsync.observe(records as f64);
        }
    }
}

// ---------------------------------------------------------------- logs + traces

/// Where to send traces, from the standard environment variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub endpoint: String,
}

impl OtlpConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// `None` (tracing off) when neither is set.
    pub fn from_env() -> Option<OtlpConfig> {
        ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
            .map(|endpoint| OtlpConfig { endpoint })
    }
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes buffered spans (bounded by the exporter timeout) and stops.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(cause = %e, "flushing traces failed");
            }
        }
    }
}

/// Parses a log filter: `LEVEL` and `TARGET=LEVEL` directives,
/// comma-separated (spaces around them ignored). `Targets`, not EnvFilter:
/// no span-field or regex directives, and no regex engine in the binary.
pub fn log_filter(spec: &str) -> Result<Targets, String> {
    let mut clean = Vec::new();
    for d in spec.split(',').map(str::trim) {
        let level = match d.split_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(format!("{d:?} names no target")),
            None => d,
        };
        if d.is_empty() || level.trim().parse::<tracing::level_filters::LevelFilter>().is_err() {
            return Err(format!(
                "{d:?} is not a level (off, error, warn, info, debug, trace) or TARGET=LEVEL"
            ));
        }
        clean.push(match d.split_once('=') {
            Some((t, l)) => format!("{}={}", t.trim(), l.trim()),
            None => d.to_owned(),
        });
    }
    // openraft logs its whole state at INFO on every change: only its
    // warnings and errors unless asked for by name or with a debug level.
    // Only under the default `info` (a quieter default quiets openraft too;
    // a louder one shows its state).
    let default_info = clean
        .iter()
        .find(|d| !d.contains('='))
        .is_none_or(|d| d.eq_ignore_ascii_case("info"));
    if default_info && !clean.iter().any(|d| d.starts_with("openraft")) {
        clean.push("openraft=warn".to_owned());
    }
    clean.join(",").parse::<Targets>().map_err(|e| e.to_string())
}

/// Builds the subscriber: logs on stdout (JSON or text, filtered by
/// `RUST_LOG` or `level`), plus OpenTelemetry when `otlp` is set. Install
/// it globally (`tracing::subscriber::set_global_default`) or per thread.
pub fn subscriber(
    format: LogFormat,
    level: &str,
    otlp: Option<OtlpConfig>,
    metrics: Arc<Metrics>,
) -> (Box<dyn tracing::Subscriber + Send + Sync>, Telemetry) {
    // `RUST_LOG` overrides `level` (checked by `config`) when it parses.
    let from_env = std::env::var("RUST_LOG").ok().and_then(|v| match log_filter(&v) {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("sidelog: ignoring RUST_LOG: {e}");
            None
        }
    });
    let filter = from_env
        .or_else(|| log_filter(level).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let logs = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        // Colours only for a terminal: never escape codes in a file or a
        // log collector.
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    }
    .with_filter(filter);
    let (otel, provider) = match otlp {
        Some(cfg) => {
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let provider = SdkTracerProvider::builder()
                .with_span_processor(QueueProcessor::start(cfg.endpoint.clone(), metrics))
                .with_resource(resource())
                .build();
            let tracer = provider.tracer("sidelog");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("sidelog", tracing::Level::DEBUG));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    let subscriber = tracing_subscriber::registry().with(logs).with(otel);
    (Box::new(subscriber), Telemetry { provider })
}

/// `service.name` defaults to "sidelog" unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` names the service (the SDK reads both).
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name("sidelog").build()
    }
}

/// Installs the subscriber for the whole process.
pub fn init(format: LogFormat, level: &str, metrics: Arc<Metrics>) -> Telemetry {
    let (subscriber, telemetry) = subscriber(format, level, OtlpConfig::from_env(), metrics);
    let _ = tracing::subscriber::set_global_default(subscriber);
    telemetry
}

/// Spans waiting for export; beyond this, new spans are dropped and counted.
const QUEUE_SPANS: usize = 4096;
const BATCH_SPANS: usize = 512;
const BATCH_WAIT: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the final flush, so a down collector delays exit only this much.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);

enum Msg {
    Span(Box<SpanData>),
    Flush(mpsc::Sender<()>),
    Shutdown(mpsc::Sender<()>),
}

/// A span processor that never blocks the caller: spans go into a bounded
/// queue, and a dedicated thread (with its own small runtime, so a stalled
/// collector cannot occupy the server's workers) batches and exports them.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::SyncSender<Msg>,
    metrics: Arc<Metrics>,
    resource: Arc<Mutex<Option<Resource>>>,
}

impl QueueProcessor {
    fn start(endpoint: String, metrics: Arc<Metrics>) -> QueueProcessor {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE_SPANS);
        let resource: Arc<Mutex<Option<Resource>>> = Arc::default();
        let (m, res) = (metrics.clone(), resource.clone());
        let spawned = std::thread::Builder::new()
            .name("sidelog-otlp".into())
            .spawn(move || export_loop(endpoint, rx, m, res));
        if let Err(e) = spawned {
            tracing::error!(cause = %e, "cannot start the trace exporter; spans will be dropped");
        }
        QueueProcessor { tx, metrics, resource }
    }

    fn call(&self, make: impl FnOnce(mpsc::Sender<()>) -> Msg, timeout: Duration) -> OTelSdkResult {
        let (ack, done) = mpsc::channel();
        self.tx.send(make(ack)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        done.recv_timeout(timeout).map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            self.metrics.spans_dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.call(Msg::Flush, EXPORT_TIMEOUT * 2)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.call(Msg::Shutdown, timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self.resource.lock().unwrap_or_else(|p| p.into_inner()) = Some(resource.clone());
    }
}

fn export_loop(
    endpoint: String,
    rx: mpsc::Receiver<Msg>,
    metrics: Arc<Metrics>,
    resource: Arc<Mutex<Option<Resource>>>,
) {
    use opentelemetry_otlp::WithExportConfig;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return eprintln!("sidelog: trace exporter runtime failed: {e}"),
    };
    let built = rt.block_on(async {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
    });
    let mut exporter = match built {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(cause = %e, "cannot build the OTLP exporter; spans will be dropped");
            // Keep draining so senders never block and acks are answered.
            for msg in rx {
                match msg {
                    Msg::Span(_) => {}
                    Msg::Flush(ack) => {
                        let _ = ack.send(());
                    }
                    Msg::Shutdown(ack) => {
                        let _ = ack.send(());
                        return;
                    }
                }
            }
            return;
        }
    };
    let failures = AtomicU64::new(0);
    let mut resource_set = false;
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH_SPANS);
    let mut export = |batch: &mut Vec<SpanData>, exporter: &mut opentelemetry_otlp::SpanExporter| {
        if !resource_set && let Some(r) = resource.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            exporter.set_resource(r);
            resource_set = true;
        }
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let result = rt.block_on(async { tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await });
        if !matches!(result, Ok(Ok(()))) {
            metrics.span_export_failures.inc();
            // Log the first failure and then every 100th: a down collector
            // must not flood the logs either.
            if failures.fetch_add(1, Ordering::Relaxed) % 100 == 0 {
                tracing::warn!(result = ?result.map_err(|_| "timeout"), "exporting spans failed; they are dropped");
            }
        }
    };
    // A batch goes out when full or BATCH_WAIT after its first span,
    // however steadily spans trickle in.
    let mut deadline: Option<std::time::Instant> = None;
    loop {
        let wait = deadline.map_or(BATCH_WAIT, |d| d.saturating_duration_since(std::time::Instant::now()));
        match rx.recv_timeout(wait) {
            Ok(Msg::Span(span)) => {
                batch.push(*span);
                deadline.get_or_insert_with(|| std::time::Instant::now() + BATCH_WAIT);
                if batch.len() >= BATCH_SPANS || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    export(&mut batch, &mut exporter);
                    deadline = None;
                }
            }
            Ok(Msg::Flush(ack)) => {
                export(&mut batch, &mut exporter);
                deadline = None;
                let _ = ack.send(());
            }
            Ok(Msg::Shutdown(ack)) => {
                // Take what is already queued, export it, then stop.
                while let Ok(Msg::Span(span)) = rx.try_recv() {
                    batch.push(*span);
                }
                export(&mut batch, &mut exporter);
                let _ = exporter.shutdown();
                let _ = ack.send(());
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                export(&mut batch, &mut exporter);
                deadline = None;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return export(&mut batch, &mut exporter),
        }
    }
}
