//! Per-request observation for gRPC and HTTP: one span per request (with the
//! W3C `traceparent` of the caller as its parent), request metrics, and a
//! debug log line when the request finishes.
//!
//! The span is declared with every field the handlers may fill in
//! (`subject`, `offset`, `records`); handlers record into
//! `Span::current()`, which is this span while they run.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use opentelemetry::propagation::Extractor;
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{security::PeerInfo, telemetry::Metrics};

/// Reads W3C trace context from request headers (gRPC metadata).
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

fn parent_context(headers: &HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// The remote address and certificate subject of the caller, whichever
/// transport carried the request.
fn peer_of<B>(req: &Request<B>) -> (Option<String>, Option<String>) {
    if let Some(p) = req.extensions().get::<PeerInfo>() {
        return (p.remote.map(|a| a.to_string()), p.subject.clone());
    }
    let remote = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| a.to_string());
    (remote, None)
}

/// Label value for anything outside the fixed sets below.
pub const OTHER: &str = "other";

/// The gRPC methods served on the client port, by full path. Metric labels
/// come only from this list: a label per request path would let any caller
/// grow `/metrics` (and memory) without bound.
const GRPC_METHODS: &[(&str, &str)] = &[
    ("/log.v1.Log/Produce", "Produce"),
    ("/log.v1.Log/Consume", "Consume"),
    ("/log.v1.Log/ConsumeStream", "ConsumeStream"),
    ("/log.v1.Log/ProduceStream", "ProduceStream"),
    ("/log.v1.Log/GetServers", "GetServers"),
    ("/log.v1.Log/ProduceBatch", "ProduceBatch"),
    ("/sidelog.v1.Cluster/Status", "Status"),
    ("/sidelog.v1.Cluster/Remove", "Remove"),
    ("/grpc.health.v1.Health/Check", "Check"),
    ("/grpc.health.v1.Health/Watch", "Watch"),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "ServerReflectionInfo",
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "ServerReflectionInfo",
    ),
];

/// The metric label for a gRPC request path.
pub fn grpc_method_label(path: &str) -> &'static str {
    GRPC_METHODS.iter().find(|(p, _)| *p == path).map_or(OTHER, |(_, m)| m)
}

/// The metric label for an HTTP request: a standard method and a route the
/// router matched (both finite), else `other`.
pub fn http_label(method: &http::Method, route: Option<&str>) -> String {
    let method = match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => OTHER,
    };
    format!("{method} {}", route.unwrap_or(OTHER))
}

/// Canonical gRPC status names, as Prometheus labels and span attributes.
pub fn grpc_code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// tower layer for the gRPC server.
#[derive(Clone)]
pub struct GrpcObserveLayer {
    metrics: Arc<Metrics>,
}

impl GrpcObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        GrpcObserveLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcObserveLayer {
    type Service = GrpcObserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcObserve {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcObserve<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<Request<B>> for GrpcObserve<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path.as_str()));
        let (service, method) = (service.to_owned(), method.to_owned());
        let label = grpc_method_label(&path);
        let (remote, subject) = peer_of(&req);
        let span = tracing::debug_span!(
            "grpc.request",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            peer = remote.as_deref().unwrap_or(""),
            subject = subject.as_deref().unwrap_or(""),
            log = Empty,
            offset = Empty,
            records = Empty,
            rpc.grpc.status_code = Empty,
            status = Empty,
            duration_ms = Empty,
        );
        if !span.is_disabled() {
            let _ = span.set_parent(parent_context(req.headers()));
        }
        let metrics = self.metrics.clone();
        let started = Instant::now();
        // Take the service that was driven to readiness; leave a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        Box::pin(async move {
            let mut result = fut.instrument(span.clone()).await;
            if let Ok(resp) = &mut result {
                too_large_is_invalid_argument(resp.headers_mut());
            }
            let took = started.elapsed();
            // Errors travel as trailers-only responses (grpc-status in the
            // headers); a successful call's OK arrives in the trailers.
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                Err(_) => 13,
            };
            let name = grpc_code_name(code);
            metrics.observe_request(label, name, took);
            span.record("rpc.grpc.status_code", code);
            span.record("status", name);
            span.record("duration_ms", took.as_secs_f64() * 1e3);
            tracing::debug!(parent: &span, method = %method, status = name, duration_ms = took.as_secs_f64() * 1e3, "request finished");
            result
        })
    }
}

/// tonic refuses a request over the port's message limit before any of our
/// code runs, with OUT_OF_RANGE (which log.v1 uses for "no record at this
/// offset"): said as INVALID_ARGUMENT here, as our own size check says it.
/// (A ProduceStream's oversize message is mapped where the stream reads it.)
pub fn too_large_is_invalid_argument(headers: &mut http::HeaderMap) {
    let is_too_large = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11")
        && headers.get("grpc-message").is_some_and(|m| {
            // Percent-encoded on the wire (spaces as %20).
            let m = String::from_utf8_lossy(m.as_bytes()).replace("%20", " ");
            m.contains("message length too large")
        });
    if is_too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "the request is larger than this port accepts: a record may be at most --max-record-bytes",
            ),
        );
    }
}

/// axum middleware: the same for HTTP routes.
pub async fn http_observe(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let matched = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let route = matched.clone().unwrap_or_else(|| req.uri().path().to_owned());
    let method = format!("{} {}", req.method(), route);
    let label = http_label(req.method(), matched.as_deref());
    let (remote, subject) = peer_of(&req);
    let span = tracing::debug_span!(
        "http.request",
        otel.name = %method,
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        peer = remote.as_deref().unwrap_or(""),
        subject = subject.as_deref().unwrap_or(""),
        log = Empty,
        offset = Empty,
        records = Empty,
        status = Empty,
        duration_ms = Empty,
    );
    if !span.is_disabled() {
        let _ = span.set_parent(parent_context(req.headers()));
    }
    let started = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let status = resp.status().as_u16().to_string();
    metrics.observe_request(&label, &status, took);
    span.record("status", status.as_str());
    span.record("duration_ms", took.as_secs_f64() * 1e3);
    tracing::debug!(parent: &span, method = %method, status = %status, "request finished");
    resp
}
