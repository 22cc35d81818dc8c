//! HTTP/JSON: the book's first-chapter API, conventional routes, probes and
//! metrics.
//!
//! ```text
//! POST /                 {"record":{"value":"<base64>"}}  -> {"offset":N}
//! GET  /                 {"offset":N}                     -> {"record":{"value":"<base64>","offset":N}}
//! POST /v1/records       same as POST /
//! GET  /v1/records/{N}   same as GET / with offset N
//! POST /v1/logs/{log}/records       produce to a named log (body as POST /)
//! GET  /v1/logs/{log}/records/{N}   the record at offset N of a named log
//! GET  /v1/logs                     every log            -> {"logs":[{...}]}
//! POST /v1/logs          {"name":"orders","settings":{"retention_bytes":N,...},"if_not_exists":false}
//! GET  /v1/logs/{log}               one log's settings, leader, members, offsets
//! DELETE /v1/logs/{log}             delete a named log (its records, on every member)
//! GET  /healthz          200 while the process is alive; 503 and the reason after a fatal error
//! GET  /readyz           200 when the node can take writes, else 503
//! GET  /metrics          Prometheus text format
//! ```
//! Bodies are parsed whatever their Content-Type (`curl -d` sends a form
//! type), and every error is a JSON body `{"error": "..."}` with a 4xx/5xx.

use std::sync::Arc;

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};

use super::convert::{http_auth_status, http_status};
use crate::{
    cluster::{catalog::DEFAULT_LOG, host::Host},
    config::Limits,
    liveness::Liveness,
    node::LogNode,
    security::{ACT_ADMIN, ACT_CONSUME, ACT_PRODUCE, Authorizer, OBJECT_ANY, PeerInfo, tls::TlsConn},
    telemetry::Metrics,
};

#[derive(Clone)]
pub struct HttpState {
    pub host: Arc<Host>,
    /// The default log's node (metrics).
    pub node: Arc<LogNode>,
    pub auth: Arc<Authorizer>,
    pub metrics: Arc<Metrics>,
    pub liveness: Liveness,
    /// A request body must arrive within this (a trickled body is cut off).
    pub body_timeout: std::time::Duration,
}

/// The largest produce body for a log of `max_record` bytes: the record
/// limit in base64 plus the JSON around it; the record limit itself is
/// checked on the decoded value, as on every API.
fn max_body(max_record: u64) -> usize {
    let b64 = (max_record as usize).div_ceil(3) * 4;
    // Slack for the JSON around it and encoders that escape '/' as '\/'.
    b64 + b64 / 16 + 4096
}

/// The slowest upload a body may take: a trickle below this rate (after
/// the header timeout's grace) is cut off, a slow but real link is not.
const MIN_BODY_RATE: usize = 64 << 10;

/// Reads a request body within the body timeout and the size limit;
/// answers 408 or 413 (JSON, as every error here) otherwise.
async fn read_body(s: &HttpState, max_record: u64, body: axum::body::Body) -> Result<Bytes, Response> {
    use axum::body::HttpBody as _;
    let max = max_body(max_record);
    let expected = body.size_hint().exact().map_or(max, |n| (n as usize).min(max));
    let deadline = s.body_timeout + std::time::Duration::from_secs((expected / MIN_BODY_RATE) as u64);
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, max)).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {deadline:?}"),
        )),
        // (http-body-util's LengthLimitError, told by its text: one crate less.)
        Ok(Err(e)) if format!("{e} {:?}", std::error::Error::source(&e)).contains("length limit exceeded") => {
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over {max} bytes: a record may be at most {max_record} bytes \
                     (--max-record-bytes)"
                ),
            ))
        }
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Health and metrics only, for the `--health-addr` listener: the routes a
/// kubelet or Prometheus needs, none that reads or writes records.
pub fn health_router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Anything but health and metrics on the `--health-addr` listener.
/// gRPC callers get UNIMPLEMENTED the gRPC way (trailers-only), others 404.
pub async fn health_port_not_found(headers: axum::http::HeaderMap) -> Response {
    const WHAT: &str = "this port serves only gRPC health, /healthz, /readyz and /metrics";
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let status = tonic::Status::unimplemented(WHAT);
        let mut response = StatusCode::OK.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/grpc"),
        );
        if let Err(e) = status.add_header(headers) {
            tracing::warn!(cause = %e, "gRPC status header");
        }
        return response;
    }
    error(StatusCode::NOT_FOUND, format!("not found: {WHAT}"))
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(consume_body).post(produce))
        .route("/v1/records", axum::routing::post(produce))
        .route("/v1/records/{offset}", get(consume_path))
        .route("/v1/logs", get(list_logs).post(create_log))
        .route("/v1/logs/{log}", get(describe_log).delete(delete_log))
        .route("/v1/logs/{log}/records", axum::routing::post(produce_log))
        .route("/v1/logs/{log}/records/{offset}", get(consume_log_path))
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            super::observe::http_observe,
        ))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route (records: POST / and GET /; see the README)",
            )
        })
        .with_state(state)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

#[derive(Deserialize)]
struct ProduceBody {
    record: Option<RecordIn>,
}

#[derive(Deserialize)]
struct RecordIn {
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct ConsumeBody {
    #[serde(default, deserialize_with = "offset_from_number_or_string")]
    offset: u64,
}

/// Protobuf JSON writes uint64 as a string; accept both forms, and say in
/// the API's terms what is wrong with anything else.
fn offset_from_number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    let bad = |what: &str| D::Error::custom(format!("offset must be a whole number from 0 up, not {what}"));
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| bad(&n.to_string())),
        serde_json::Value::String(s) => s.trim().parse().map_err(|_| bad(&format!("{s:?}"))),
        serde_json::Value::Null => Err(bad("null")),
        other => Err(bad(&other.to_string())),
    }
}

/// Parses a produce body, `{"record":{"value":"<base64>"}}`, into the
/// record's value. The error is the message of the 400 reply. Public for
/// the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn parse_produce_body(body: &[u8]) -> Result<Bytes, String> {
    let parsed: ProduceBody = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let record = parsed.record.ok_or_else(|| "missing \"record\"".to_owned())?;
    B64.decode(record.value.as_bytes())
        .map(Bytes::from)
        .map_err(|e| format!("record.value is not base64: {e}"))
}

/// Parses a consume body, `{"offset":N}` (N a number or a string), into
/// the offset. The error is the message of the 400 reply. Public for the
/// fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn parse_consume_body(body: &[u8]) -> Result<u64, String> {
    if body.is_empty() {
        return Err("expected a JSON body such as {\"offset\":0}".to_owned());
    }
    serde_json::from_slice::<ConsumeBody>(body)
        .map(|b| b.offset)
        .map_err(|e| format!("invalid JSON: {e}"))
}

/// Parses the `{offset}` of `GET /v1/records/{offset}`. The error is the
/// message of the 400 reply. Public for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn parse_offset_path(offset: &str) -> Result<u64, String> {
    offset
        .parse()
        .map_err(|_| format!("offset {offset:?} is not a non-negative integer"))
}

#[derive(Serialize)]
struct ConsumeOut {
    record: RecordOut,
}

/// Field order as in the book's output: value, then offset.
#[derive(Serialize)]
struct RecordOut {
    value: String,
    offset: u64,
}

type Peer = Option<Extension<PeerInfo>>;

fn authorize(s: &HttpState, peer: &Peer, log: &str, action: &'static str) -> Result<(), Response> {
    s.auth
        .check_on(peer.as_ref().map(|p| &p.0), log, action)
        .map_err(|e| error(http_auth_status(&e), e))
}

async fn produce(State(s): State<HttpState>, peer: Peer, body: axum::body::Body) -> Response {
    produce_to(&s, &peer, DEFAULT_LOG, body).await
}

async fn produce_log(
    State(s): State<HttpState>,
    peer: Peer,
    Path(log): Path<String>,
    body: axum::body::Body,
) -> Response {
    produce_to(&s, &peer, &log, body).await
}

async fn produce_to(s: &HttpState, peer: &Peer, log: &str, body: axum::body::Body) -> Response {
    tracing::Span::current().record("log", log);
    if let Err(r) = authorize(s, peer, log, ACT_PRODUCE) {
        return r;
    }
    // The body first: a bad request creates nothing (--auto-create-logs).
    // Its bound is the agent's record limit (a log's own is at most that).
    let body = match read_body(s, s.host.settings().max_record_bytes, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let value = match parse_produce_body(&body) {
        Ok(v) => v,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let may_create = s.auth.check_on(peer.as_ref().map(|p| &p.0), log, ACT_ADMIN).is_ok();
    let cluster = match s.host.group_or_create(log, may_create).await {
        Ok(c) => c,
        Err(e) => return error(http_status(&e), e),
    };
    let len = value.len() as u64;
    match cluster.produce(&[value]).await.map(|o| o[0]) {
        Ok(offset) => {
            s.metrics.records_in.inc();
            s.metrics.bytes_in.inc_by(len);
            tracing::Span::current().record("offset", offset);
            axum::Json(serde_json::json!({ "offset": offset })).into_response()
        }
        // A failed write says whether it may have been written after all
        // ("not-written": safe to retry; "unknown": it may be committed).
        Err(e) => (
            http_status(&e),
            axum::Json(serde_json::json!({ "error": e.to_string(), "outcome": e.outcome().as_str() })),
        )
            .into_response(),
    }
}

async fn consume_at(s: &HttpState, log: &str, offset: u64) -> Response {
    tracing::Span::current().record("offset", offset);
    tracing::Span::current().record("log", log);
    let cluster = match s.host.group(log) {
        Ok(c) => c,
        Err(e) => return error(http_status(&e), e),
    };
    match cluster.read(offset, false).await {
        Ok(r) => {
            s.metrics.records_out.inc();
            s.metrics.bytes_out.inc_by(r.value.len() as u64);
            axum::Json(ConsumeOut {
                record: RecordOut {
                    value: B64.encode(&r.value),
                    offset: r.offset,
                },
            })
            .into_response()
        }
        Err(e) => error(http_status(&e), e),
    }
}

async fn consume_body(State(s): State<HttpState>, peer: Peer, body: axum::body::Body) -> Response {
    if let Err(r) = authorize(&s, &peer, DEFAULT_LOG, ACT_CONSUME) {
        return r;
    }
    let body = match read_body(&s, 0, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match parse_consume_body(&body) {
        Ok(offset) => consume_at(&s, DEFAULT_LOG, offset).await,
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

async fn consume_path(State(s): State<HttpState>, peer: Peer, Path(offset): Path<String>) -> Response {
    consume_path_of(&s, &peer, DEFAULT_LOG, &offset).await
}

async fn consume_log_path(
    State(s): State<HttpState>,
    peer: Peer,
    Path((log, offset)): Path<(String, String)>,
) -> Response {
    consume_path_of(&s, &peer, &log, &offset).await
}

async fn consume_path_of(s: &HttpState, peer: &Peer, log: &str, offset: &str) -> Response {
    if let Err(r) = authorize(s, peer, log, ACT_CONSUME) {
        return r;
    }
    match parse_offset_path(offset) {
        Ok(o) => consume_at(s, log, o).await,
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

/// A log as JSON (the fields of `sidelog.v1.LogInfo`).
fn log_json(l: &crate::pb::sidelog::LogInfo) -> serde_json::Value {
    let s = l.settings.clone().unwrap_or_default();
    serde_json::json!({
        "name": l.name,
        "settings": {
            "retention_bytes": s.retention_bytes,
            "retention_age_secs": s.retention_age_secs,
            "max_record_bytes": s.max_record_bytes,
            "segment_max_bytes": s.segment_max_bytes,
        },
        "leader": l.leader,
        "preferred_leader": l.preferred_leader,
        "voters": l.voters,
        "non_voters": l.learners,
        "first_offset": l.first_offset,
        "next_offset": l.next_offset,
        "disk_bytes": l.disk_bytes,
        "incarnation": l.incarnation,
    })
}

async fn list_logs(State(s): State<HttpState>, peer: Peer) -> Response {
    if let Err(r) = authorize(&s, &peer, OBJECT_ANY, ACT_CONSUME) {
        return r;
    }
    let mut logs = vec![log_json(&crate::cluster::default_log_info(&s.host))];
    for (spec, c) in s.host.logs() {
        logs.push(log_json(&crate::cluster::log_info(&spec, c.as_deref())));
    }
    axum::Json(serde_json::json!({ "logs": logs })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    settings: crate::cluster::catalog::LogSettings,
    #[serde(default)]
    if_not_exists: bool,
}

async fn create_log(State(s): State<HttpState>, peer: Peer, body: axum::body::Body) -> Response {
    // Who asks, before what they ask is read (the right itself is on the name).
    if let Err(e) = s.auth.authenticate(peer.as_ref().map(|p| &p.0)) {
        return error(http_auth_status(&e), e);
    }
    let body = match read_body(&s, 0, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let req: CreateBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {e} (expected {{\"name\":\"orders\",\"settings\":{{...}}}})"),
            );
        }
    };
    if let Err(r) = authorize(&s, &peer, &req.name, ACT_ADMIN) {
        return r;
    }
    match s.host.create(&req.name, req.settings, req.if_not_exists).await {
        Ok(spec) => {
            let group = s.host.group(&spec.name).ok();
            (
                StatusCode::CREATED,
                axum::Json(log_json(&crate::cluster::log_info(&spec, group.as_deref()))),
            )
                .into_response()
        }
        Err(e) => error(http_status(&e), e),
    }
}

async fn describe_log(State(s): State<HttpState>, peer: Peer, Path(log): Path<String>) -> Response {
    if let Err(r) = authorize(&s, &peer, &log, ACT_CONSUME) {
        return r;
    }
    if log == DEFAULT_LOG {
        return axum::Json(log_json(&crate::cluster::default_log_info(&s.host))).into_response();
    }
    let group = match s.host.group(&log) {
        Ok(c) => c,
        Err(e) => return error(http_status(&e), e),
    };
    match s.host.spec(&log) {
        Some(spec) => axum::Json(log_json(&crate::cluster::log_info(&spec, Some(&group)))).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("log {log:?} does not exist")),
    }
}

async fn delete_log(State(s): State<HttpState>, peer: Peer, Path(log): Path<String>) -> Response {
    if let Err(r) = authorize(&s, &peer, &log, ACT_ADMIN) {
        return r;
    }
    match s.host.delete(&log).await {
        Ok(()) => axum::Json(serde_json::json!({ "deleted": log })).into_response(),
        Err(e) => error(http_status(&e), e),
    }
}

async fn alive(State(s): State<HttpState>) -> Response {
    match s.liveness.fatal() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => error(StatusCode::SERVICE_UNAVAILABLE, format!("fatal: {reason}")),
    }
}

async fn ready(State(s): State<HttpState>) -> Response {
    if s.host.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if !s.host.default_group().is_ready() {
        error(StatusCode::SERVICE_UNAVAILABLE, "not ready")
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: logs without a leader here: {}",
                s.host.not_ready().join(", ")
            ),
        )
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let logs: Vec<crate::telemetry::LogFigures> = s
        .host
        .groups()
        .into_iter()
        .map(|(name, c)| crate::telemetry::LogFigures {
            name,
            first_offset: c.node().log().first_offset(),
            committed_offset: c.node().committed(),
            disk_bytes: c.node().log().disk_bytes(),
            leader: c.is_leader(),
            ready: c.is_ready(),
        })
        .collect();
    let body = s.metrics.render(&s.node, &logs);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Serves HTTP (1.1 and 2) over the connections from an accept loop until
/// `shutdown`, then lets open connections finish gracefully (the caller
/// bounds how long). `info` tells who is on the other end.
///
/// Bounds: `http_header_timeout` for HTTP/1 request headers (a slowloris
/// client is cut off), `http_idle_timeout` for a connection with no traffic
/// either way, and `max_streams_per_connection` for HTTP/2.
pub async fn serve<C>(
    mut conns: tokio::sync::mpsc::Receiver<C>,
    info: fn(&C) -> PeerInfo,
    app: Router,
    limits: Limits,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), String>
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto::Builder, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.http_header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection);
    loop {
        let conn = tokio::select! {
            c = conns.recv() => match c { Some(c) => c, None => break },
            _ = shutdown.cancelled() => break,
        };
        let svc = TowerToHyperService::new(app.clone().layer(Extension(info(&conn))));
        let io = super::idle_timeout::IdleTimeout::new(conn, limits.http_idle_timeout);
        let served = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(cause = %e, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Who a TLS connection comes from.
pub fn tls_info(conn: &TlsConn) -> PeerInfo {
    conn.info().clone()
}

/// Who a plaintext connection comes from (no certificate subject).
pub fn tcp_info(conn: &super::conn_limit::Limited<tokio::net::TcpStream>) -> PeerInfo {
    PeerInfo {
        remote: conn.get_ref().peer_addr().ok(),
        subject: None,
    }
}

/// Accepts plaintext TCP connections (nodelay set) until `shutdown`, at
/// most `limit`'s bound at once (see `conn_limit`).
pub fn tcp_accept_loop(
    listener: tokio::net::TcpListener,
    mut limit: super::conn_limit::ListenerLimit,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::sync::mpsc::Receiver<super::conn_limit::Limited<tokio::net::TcpStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        let mut last_warned = None;
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        super::conn_limit::accept_failed(&e, &mut last_warned).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let Some(permit) = limit.admit(remote) else {
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if tx.send(super::conn_limit::Limited::new(tcp, permit)).await.is_err() {
                return;
            }
        }
    });
    rx
}
