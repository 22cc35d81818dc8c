//! Bounds on what callers can make the agent hold, fatal errors made
//! visible, and leftovers of earlier runs cleaned.

use std::{str::FromStr, time::Duration};

use bytes::Bytes;
use sidelog::api::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::common::TestNode;

const PROMPTLY: Duration = Duration::from_secs(10);

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/1.1 request; returns the status line and the body.
async fn http(addr: std::net::SocketAddr, request_line: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{request_line}\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(PROMPTLY, s.read_to_string(&mut out))
        .await
        .expect("no hang")
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
}

#[tokio::test]
async fn a_restarted_node_removes_leftover_snapshot_directories() {
    let mut node = TestNode::start().await;
    let data = node.dir.path().join("data");
    // What a killed node leaves: hard links of segments in temp directories.
    let mut leftovers = Vec::new();
    for name in ["snapshot-out-1-0", "snapshot-in-1-3"] {
        let dir = data.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("00000000000000000000.log"), b"stale").unwrap();
        leftovers.push(dir);
    }
    node.restart().await;
    for dir in leftovers {
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
    let mut c = node.client().await;
    assert_eq!(c.produce(Bytes::from_static(b"after")).await.unwrap(), 0);
}

#[tokio::test]
async fn snapshot_temp_names_are_unique_even_with_the_same_pid() {
    let a = sidelog::cluster::network::next_tmp_id();
    let b = sidelog::cluster::network::next_tmp_id();
    assert_ne!(a, b);
    // More than pid and counter: a restarted container (pid 1 again, counter
    // at 0 again) must not reuse a name.
    assert!(a.split('-').count() >= 3, "{a}");
}

#[tokio::test]
async fn an_injected_storage_failure_fails_liveness_and_ends_the_agent() {
    let mut node = TestNode::start_with(|c| {
        c.fatal_exit_delay = Duration::from_millis(500);
        c.shutdown_grace = Duration::from_secs(2);
    })
    .await;
    let http_addr = node.agent().http_addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.client_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = |service: &str| {
        let mut h = health.clone();
        let service = service.to_owned();
        async move {
            h.check(HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status())
                .unwrap_or(ServingStatus::Unknown)
        }
    };
    assert_eq!(
        status(sidelog::liveness::LIVENESS_SERVICE).await,
        ServingStatus::Serving
    );
    assert!(http(http_addr, "GET /healthz HTTP/1.1").await.0.contains(" 200"));

    node.agent()
        .node()
        .inject_write_failure("injected: Too many open files (os error 24)");
    let mut c = node.client().await;
    assert!(c.produce(Bytes::from_static(b"x")).await.is_err());

    wait_for("liveness NOT_SERVING", async || {
        status(sidelog::liveness::LIVENESS_SERVICE).await == ServingStatus::NotServing
    })
    .await;
    assert_eq!(status("").await, ServingStatus::NotServing);
    let (line, body) = http(http_addr, "GET /healthz HTTP/1.1").await;
    assert!(line.contains(" 503"), "{line}");
    assert!(body.contains("Too many open files"), "says why: {body}");
    health
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap();

    // The agent ends by itself, with the reason, after the delay.
    let agent = node.agent.take().unwrap();
    let err = tokio::time::timeout(PROMPTLY, agent.run_until(std::future::pending()))
        .await
        .expect("the agent exits after a fatal error")
        .expect_err("non-zero exit");
    assert!(err.to_string().contains("Too many open files"), "{err}");
}

#[tokio::test]
async fn junk_methods_and_paths_leave_metrics_small() {
    let node = TestNode::start().await;
    let http_addr = node.agent().http_addr;
    // Warm up the known series, then measure.
    http(http_addr, "GET /metrics HTTP/1.1").await;
    let before = http(http_addr, "GET /metrics HTTP/1.1").await.1.len();

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.client_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..150 {
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_str(&format!("/junk{i}.Service/Method{i}")).unwrap();
        let codec = tonic_prost::ProstCodec::<pb::GetServersRequest, pb::GetServersResponse>::default();
        let e = grpc
            .unary(
                tonic::Request::new(pb::GetServersRequest { ..Default::default() }),
                path,
                codec,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
    }
    for i in 0..100 {
        http(http_addr, &format!("JUNK{i} / HTTP/1.1")).await;
        http(http_addr, &format!("GET /junk/{i} HTTP/1.1")).await;
        http(http_addr, &format!("PUT /v1/records/{i} HTTP/1.1")).await;
    }
    let (_, after) = http(http_addr, "GET /metrics HTTP/1.1").await;
    assert!(!after.to_lowercase().contains("junk"), "junk became a label");
    assert!(
        after.len() < before + 8 * 1024,
        "/metrics grew from {before} to {} bytes",
        after.len()
    );
    assert!(after.contains("method=\"other\""), "junk counts as other");
}

#[tokio::test]
async fn consume_streams_beyond_the_limit_are_resource_exhausted() {
    let node = TestNode::start_with(|c| c.limits.max_consume_streams = 2).await;
    let mut c = node.client().await;
    let s1 = c.consume_stream(0).await.unwrap();
    let _s2 = c.consume_stream(0).await.unwrap();
    let e = c.consume_stream(0).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("--max-consume-streams"), "{e}");
    // A closed stream frees its place.
    drop(s1);
    wait_for("a freed stream slot", async || c.consume_stream(0).await.is_ok()).await;
}

#[tokio::test]
async fn a_partial_http_request_is_cut_off_after_the_header_timeout() {
    let node = TestNode::start_with(|c| c.limits.http_header_timeout = Duration::from_millis(500)).await;
    let mut s = tokio::net::TcpStream::connect(node.agent().http_addr).await.unwrap();
    s.write_all(b"GET / HT").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PROMPTLY, s.read_to_end(&mut out))
        .await
        .expect("the server must close a connection whose headers never finish")
        .ok();
}

#[tokio::test]
async fn an_idle_http_connection_is_closed() {
    let node = TestNode::start_with(|c| c.limits.http_idle_timeout = Duration::from_millis(500)).await;
    let mut s = tokio::net::TcpStream::connect(node.agent().http_addr).await.unwrap();
    // A complete request on a keep-alive connection, then silence.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PROMPTLY, s.read_to_end(&mut out))
        .await
        .expect("an idle connection must be closed")
        .ok();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn tls_handshakes_beyond_the_limit_are_closed_at_once() {
    let pki = tempfile::tempdir().unwrap();
    sidelog::security::certs::write_dev_certs(pki.path(), &[]).unwrap();
    let p = |n: &str| pki.path().join(n);
    let node = TestNode::start_with(|c| {
        c.tls = Some(sidelog::security::TlsFiles {
            cert: p("server.pem"),
            key: p("server-key.pem"),
            ca: Some(p("ca.pem")),
        });
        c.limits.max_tls_handshakes = 1;
    })
    .await;
    let addr = node.client_addr();
    // A client that opens a connection and never says hello holds the slot.
    let stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Give the accept loop a moment to take it (it is accepted in order).
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("the connection beyond the bound is closed at once, not queued")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(stalled);
    // Once the stalled handshake is gone, clients get in again.
    let tls = sidelog::client::ClientTls {
        ca: Some(p("ca.pem")),
        cert: Some(p("root-client.pem")),
        key: Some(p("root-client-key.pem")),
        domain: None,
    };
    wait_for(
        "a handshake slot",
        async || match sidelog::client::Client::connect_with(&addr, Some(&tls)).await {
            Ok(mut c) => c.produce(Bytes::from_static(b"in")).await.is_ok(),
            Err(_) => false,
        },
    )
    .await;
}

#[tokio::test]
async fn streams_per_connection_are_bounded() {
    let node = TestNode::start_with(|c| c.limits.max_streams_per_connection = 1).await;
    let mut c = node.client().await;
    let stream = c.consume_stream(0).await.unwrap();
    // One connection, its one stream taken: the next call waits for it.
    let waited = tokio::time::timeout(Duration::from_millis(500), c.produce(Bytes::from_static(b"x"))).await;
    assert!(waited.is_err(), "a second concurrent stream was opened");
    drop(stream);
    let offset = tokio::time::timeout(PROMPTLY, c.produce(Bytes::from_static(b"y")))
        .await
        .expect("the call proceeds once the stream closed")
        .unwrap();
    assert!(offset <= 1);
}

#[tokio::test]
async fn the_health_port_answers_probes_and_scrapes_but_serves_no_records() {
    let node = TestNode::start_with(|c| c.health_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = node.agent().health_addr.expect("a health listener");
    let mut c = node.client().await;
    c.produce(Bytes::from_static(b"secret")).await.unwrap();

    // Native gRPC probes: readiness (""), startup, liveness.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        sidelog::liveness::STARTED_SERVICE,
        sidelog::liveness::LIVENESS_SERVICE,
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
    // HTTP probes and the scrape.
    assert!(http(addr, "GET /healthz HTTP/1.1").await.0.contains(" 200"));
    assert!(http(addr, "GET /readyz HTTP/1.1").await.0.contains(" 200"));
    let (line, body) = http(addr, "GET /metrics HTTP/1.1").await;
    assert!(line.contains(" 200") && body.contains("sidelog_"), "{line}");

    // No data API on this port, by either protocol.
    let mut log = pb::log_client::LogClient::new(channel);
    let err = log
        .consume(pb::ConsumeRequest {
            offset: 0,
            ..Default::default()
        })
        .await
        .expect_err("log.v1 is not served on the health port");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    for line in [
        "GET /v1/records/0 HTTP/1.1",
        "GET / HTTP/1.1",
        "POST /v1/records HTTP/1.1",
    ] {
        let (status, body) = http(addr, line).await;
        assert!(status.contains(" 404") || status.contains(" 405"), "{line}: {status}");
        assert!(!body.contains("c2VjcmV0"), "{line} leaked a record: {body}");
    }
    // The data APIs still serve on their own ports.
    assert_eq!(&c.consume(0).await.unwrap().value[..], b"secret");
}

#[tokio::test]
async fn started_goes_not_serving_when_a_shutdown_begins() {
    let mut node = TestNode::start_with(|c| c.health_addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = node.agent().health_addr.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: sidelog::liveness::STARTED_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    let agent = node.agent.take().unwrap();
    let stopping = tokio::spawn(agent.shutdown());
    // NOT_SERVING is published before the listeners close.
    let next = tokio::time::timeout(PROMPTLY, watch.message()).await.expect("no hang");
    let status = next.expect("the stream is still open").expect("an update").status();
    assert_eq!(status, ServingStatus::NotServing);
    stopping.await.unwrap().unwrap();
}
