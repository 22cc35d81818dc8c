//! Traces reach an OTLP collector with the right names, attributes and
//! parent links; /metrics parses and its counters move exactly.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use sidelog::{
    api::pb,
    config::LogFormat,
    telemetry::{self, Metrics, OtlpConfig},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TestNode;

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            Some(Value::DoubleValue(d)) => Some(d.to_string()),
            Some(Value::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        })
}

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// An in-test OTLP collector on a loopback port.
async fn start_collector() -> (Collector, std::net::SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (collector, addr)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// This module's tests run one at a time: an agent running on a thread
/// with no subscriber while another thread holds a per-thread OTLP
/// subscriber made the latter lose every span now and then (tracing's
/// per-callsite interest cache is process-wide).
static OTLP_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// current_thread: the per-thread subscriber then sees every task of the agent.
#[tokio::test(flavor = "current_thread")]
async fn produce_spans_reach_the_collector_under_the_callers_trace() {
    let _one_at_a_time = OTLP_TESTS.lock().await;
    let (collector, addr) = start_collector().await;

    let otlp = OtlpConfig {
        endpoint: format!("http://{addr}"),
    };
    let (subscriber, telemetry) = telemetry::subscriber(LogFormat::Text, "warn", Some(otlp), Metrics::new());
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut node = TestNode::start().await;
    let client = node.client().await.raw();
    let mut request = tonic::Request::new(pb::ProduceRequest {
        record: Some(pb::Record {
            value: Bytes::from_static(b"traced"),
            ..Default::default()
        }),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    let offset = client.clone().produce(request).await.unwrap().into_inner().offset;
    node.agent.take().unwrap().shutdown().await.unwrap();
    // Flushing blocks; let this thread keep serving the collector meanwhile.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let spans = collector.spans.lock().unwrap().clone();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let produce = spans
        .iter()
        .find(|s| s.name == "log.v1.Log/Produce")
        .unwrap_or_else(|| panic!("no Produce span among {names:?}"));
    assert_eq!(hex(&produce.trace_id), TRACE_ID, "the caller's trace");
    assert_eq!(
        hex(&produce.parent_span_id),
        PARENT_ID,
        "the caller's span is the parent"
    );
    assert_eq!(attr(produce, "rpc.method").as_deref(), Some("Produce"));
    assert_eq!(attr(produce, "rpc.service").as_deref(), Some("log.v1.Log"));
    assert_eq!(attr(produce, "status").as_deref(), Some("OK"));
    assert_eq!(attr(produce, "offset"), Some(offset.to_string()));
    assert!(attr(produce, "duration_ms").is_some());
    for child in ["raft.propose", "raft.commit"] {
        let c = spans
            .iter()
            .find(|s| s.name == child)
            .unwrap_or_else(|| panic!("no {child} span among {names:?}"));
        assert_eq!(c.parent_span_id, produce.span_id, "{child} sits under the request span");
        assert_eq!(c.trace_id, produce.trace_id);
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// Parses Prometheus/OpenMetrics text into series -> value, failing on any
/// line that is not a comment or a well-formed sample.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_owned(), v);
    }
    out
}

#[tokio::test]
async fn metrics_parse_and_count_exactly_what_was_produced() {
    let _one_at_a_time = OTLP_TESTS.lock().await;
    let node = TestNode::start().await;
    let http = node.agent().http_addr;
    let before = parse_metrics(&http_get(http, "/metrics").await);
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);

    let mut c = node.client().await;
    for i in 0..4 {
        c.produce(Bytes::from(format!("unary {i}"))).await.unwrap();
    }
    c.produce_batch((0..3).map(|i| Bytes::from(format!("batch {i}"))).collect())
        .await
        .unwrap();
    assert_eq!(c.consume(99).await.unwrap_err().code(), tonic::Code::OutOfRange);

    let after = parse_metrics(&http_get(http, "/metrics").await);
    assert_eq!(
        get(&after, "sidelog_records_in_total") - get(&before, "sidelog_records_in_total"),
        7.0
    );
    let produce_ok = r#"sidelog_requests_total{method="Produce",code="OK"}"#;
    assert_eq!(get(&after, produce_ok) - get(&before, produce_ok), 4.0);
    let batch_ok = r#"sidelog_requests_total{method="ProduceBatch",code="OK"}"#;
    assert_eq!(get(&after, batch_ok) - get(&before, batch_ok), 1.0);
    assert_eq!(
        get(
            &after,
            r#"sidelog_requests_total{method="Consume",code="OUT_OF_RANGE"}"#
        ),
        1.0
    );
    assert_eq!(get(&after, "sidelog_log_next_offset"), 7.0);
    assert_eq!(get(&after, "sidelog_log_committed_offset"), 7.0);
    assert!(get(&after, "sidelog_fsyncs_total") >= 1.0);
    assert!(get(&after, "sidelog_fsync_duration_seconds_count") >= 1.0);
    assert_eq!(
        get(&after, "sidelog_records_per_fsync_sum") - get(&before, "sidelog_records_per_fsync_sum"),
        7.0
    );
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("sidelog_request_duration_seconds_bucket{"))
    );
}

#[tokio::test]
async fn active_consume_streams_are_counted() {
    let _one_at_a_time = OTLP_TESTS.lock().await;
    let node = TestNode::start().await;
    let http = node.agent().http_addr;
    let mut c = node.client().await;
    let stream = c.consume_stream(0).await.unwrap();
    let gauge = |m: &HashMap<String, f64>| m.get("sidelog_consume_streams_active").copied().unwrap_or(-1.0);
    assert_eq!(gauge(&parse_metrics(&http_get(http, "/metrics").await)), 1.0);
    drop(stream);
    // The server notices the client left on its next wake; produce one.
    c.produce(Bytes::from_static(b"wake")).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while gauge(&parse_metrics(&http_get(http, "/metrics").await)) != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream gauge never went back to 0"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A write sent to a follower is forwarded to the leader: the follower's
/// request span, the forward, the leader's `Peer/Forward` span and its Raft
/// spans all carry the caller's trace (the context crosses the peer call in
/// gRPC metadata).
#[tokio::test(flavor = "current_thread")]
async fn a_forwarded_write_is_one_trace_across_follower_and_leader() {
    use sidelog::{agent::Agent, cluster::types::node_id};

    let _one_at_a_time = OTLP_TESTS.lock().await;
    let (collector, addr) = start_collector().await;
    let otlp = OtlpConfig {
        endpoint: format!("http://{addr}"),
    };
    let tmetrics = Metrics::new();
    let (subscriber, telemetry) = telemetry::subscriber(LogFormat::Text, "warn", Some(otlp), tmetrics.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let ports: Vec<u16> = (0..3).map(|_| crate::common::free_port()).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let starts = (0..3).map(|i| {
        let mut c = crate::common::config_in(dirs[i].path().join("data"));
        c.node_id = format!("trace-{i}");
        c.peer_addr = format!("127.0.0.1:{}", ports[i]).parse().unwrap();
        c.join = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        c.bootstrap_expect = 3;
        Agent::start_with(c, Metrics::new())
    });
    let agents: Vec<Agent> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let leader = loop {
        let id = agents[0].cluster().metrics().current_leader;
        let found = id.and_then(|id| (0..3).find(|&i| node_id(&format!("trace-{i}")) == id));
        if let Some(l) = found
            && agents.iter().all(|a| a.cluster().is_ready())
        {
            break l;
        }
        assert!(tokio::time::Instant::now() < deadline, "no ready cluster of three");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let follower = (leader + 1) % 3;

    let client = sidelog::client::Client::connect(&agents[follower].client_addr.to_string())
        .await
        .unwrap()
        .raw();
    let mut request = tonic::Request::new(pb::ProduceRequest {
        record: Some(pb::Record {
            value: Bytes::from_static(b"forwarded"),
            ..Default::default()
        }),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
    // Agents of other tests run on threads with no subscriber; tracing's
    // interest cache is process-wide: ask every callsite again now.
    tracing::callsite::rebuild_interest_cache();
    client.clone().produce(request).await.unwrap();
    for a in agents {
        a.stop_without_leave().await.unwrap();
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let spans = collector.spans.lock().unwrap().clone();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && hex(&s.trace_id) == TRACE_ID)
            .unwrap_or_else(|| {
                panic!(
                    "no {name} span in the caller's trace among {names:?} (export failures {}, dropped {})",
                    tmetrics.span_export_failures.get(),
                    tmetrics.spans_dropped.get()
                )
            })
    };
    let produce = find("log.v1.Log/Produce");
    let forward = find("raft.forward");
    let served = find("sidelog.v1.Peer/Forward");
    assert_eq!(hex(&produce.parent_span_id), PARENT_ID);
    assert_eq!(
        served.parent_span_id, forward.span_id,
        "the leader's span continues the forward"
    );
    // The leader's quorum wait is in the same trace, under its Forward span.
    let commit = spans
        .iter()
        .find(|s| s.name == "raft.commit" && s.parent_span_id == served.span_id)
        .unwrap_or_else(|| panic!("no raft.commit under the leader's Forward span among {names:?}"));
    assert_eq!(hex(&commit.trace_id), TRACE_ID);
    // The leader's append and fsync of the entry, in the same trace, under
    // the span that proposed it.
    for name in ["log.append", "log.fsync"] {
        let s = spans
            .iter()
            .find(|s| s.name == name && hex(&s.trace_id) == TRACE_ID)
            .unwrap_or_else(|| {
                panic!(
                    "no {name} span in the caller's trace among {names:?} (export failures {}, dropped {})",
                    tmetrics.span_export_failures.get(),
                    tmetrics.spans_dropped.get()
                )
            });
        assert_eq!(
            s.parent_span_id, served.span_id,
            "{name} under the leader's Forward span"
        );
    }
}
