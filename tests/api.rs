//! The single-node service through the Rust client, against a real agent.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sidelog::api::pb;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::common::TestNode;

/// Generous bound for "this should happen promptly" waits, never a sleep.
const PROMPTLY: Duration = Duration::from_secs(10);

#[tokio::test]
async fn produce_then_consume_round_trips() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    assert_eq!(c.produce(Bytes::from_static(b"hello world")).await.unwrap(), 0);
    assert_eq!(c.produce(Bytes::from_static(b"second")).await.unwrap(), 1);
    let r = c.consume(0).await.unwrap();
    assert_eq!((&r.value[..], r.offset), (&b"hello world"[..], 0));
    let r = c.consume(1).await.unwrap();
    assert_eq!((&r.value[..], r.offset), (&b"second"[..], 1));
}

#[tokio::test]
async fn consume_past_the_end_is_out_of_range_naming_the_offset() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    c.produce(Bytes::from_static(b"only")).await.unwrap();
    let err = c.consume(1).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("offset 1"), "{}", err.message());
    assert_eq!(sidelog::api::convert::next_offset_of(&err), Some(1));
}

#[tokio::test]
async fn stream_sends_records_with_their_offsets_then_follows_the_tail() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    c.produce(Bytes::from_static(b"first")).await.unwrap();
    c.produce(Bytes::from_static(b"second")).await.unwrap();
    let mut stream = c.consume_stream(0).await.unwrap();
    for (want_offset, want_value) in [(0, &b"first"[..]), (1, &b"second"[..])] {
        let r = tokio::time::timeout(PROMPTLY, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .record
            .unwrap();
        assert_eq!((r.offset, &r.value[..]), (want_offset, want_value));
    }
    // Nothing more yet; a record produced now must arrive on the open stream.
    let mut producer = node.client().await;
    assert_eq!(producer.produce(Bytes::from_static(b"later")).await.unwrap(), 2);
    let r = tokio::time::timeout(PROMPTLY, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .record
        .unwrap();
    assert_eq!((r.offset, &r.value[..]), (2, &b"later"[..]));
}

#[tokio::test]
async fn stream_from_beyond_the_end_is_out_of_range() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    let err = c.consume_stream(5).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("offset 5"), "{}", err.message());
}

#[tokio::test]
async fn oversize_record_is_rejected_and_nothing_is_written() {
    let node = TestNode::start_with(|c| c.max_record_bytes = 1024).await;
    let mut c = node.client().await;
    let err = c.produce(Bytes::from(vec![7u8; 1025])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1025"), "{}", err.message());
    let err = c
        .produce_batch(vec![Bytes::from_static(b"ok"), Bytes::from(vec![0u8; 2000])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The limit itself is fine, and it gets the first offset: nothing was written before.
    assert_eq!(c.produce(Bytes::from(vec![7u8; 1024])).await.unwrap(), 0);
}

#[tokio::test]
async fn produce_without_a_record_is_invalid_argument() {
    let node = TestNode::start().await;
    let err = node
        .client()
        .await
        .raw()
        .produce(pb::ProduceRequest {
            record: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn batch_returns_one_dense_offset_per_record() {
    let node = TestNode::start().await;
    let mut c = node.client().await;
    c.produce(Bytes::from_static(b"x")).await.unwrap();
    let values: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("v{i}"))).collect();
    assert_eq!(c.produce_batch(values).await.unwrap(), vec![1, 2, 3, 4, 5]);
    assert_eq!(&c.consume(4).await.unwrap().value[..], b"v3");
}

#[tokio::test]
async fn produce_stream_answers_each_request_in_order() {
    let node = TestNode::start().await;
    let c = node.client().await;
    let requests = futures_util::stream::iter((0..100).map(|i| pb::ProduceRequest {
        record: Some(pb::Record {
            value: Bytes::from(format!("r{i}")),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let mut responses = c.raw().produce_stream(requests).await.unwrap().into_inner();
    let mut offsets = Vec::new();
    while let Some(r) = responses.next().await {
        offsets.push(r.unwrap().offset);
    }
    assert_eq!(offsets, (0..100).collect::<Vec<u64>>());
    let mut c = node.client().await;
    assert_eq!(&c.consume(42).await.unwrap().value[..], b"r42");
}

#[tokio::test]
async fn restart_keeps_every_record() {
    let mut node = TestNode::start().await;
    let mut c = node.client().await;
    for i in 0..50 {
        c.produce(Bytes::from(format!("record {i}"))).await.unwrap();
    }
    node.restart().await;
    let mut c = node.client().await;
    for i in 0..50u64 {
        assert_eq!(c.consume(i).await.unwrap().value, Bytes::from(format!("record {i}")));
    }
    assert_eq!(c.produce(Bytes::from_static(b"after restart")).await.unwrap(), 50);
}

#[tokio::test]
async fn health_is_serving_and_get_servers_lists_this_node() {
    let node = TestNode::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.client_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "log.v1.Log"] {
        let resp = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "service {service:?}");
    }
    let servers = node.client().await.get_servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].id, "test-node");
    assert_eq!(servers[0].rpc_addr, node.client_addr());
    assert!(servers[0].is_leader);
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_keeps_acknowledged_records() {
    let mut node = TestNode::start().await;
    let mut c = node.client().await;
    c.produce(Bytes::from_static(b"kept")).await.unwrap();
    let mut stream = c.consume_stream(1).await.unwrap();
    let agent = node.agent.take().unwrap();
    tokio::time::timeout(PROMPTLY, agent.shutdown())
        .await
        .expect("shutdown within the bound")
        .unwrap();
    // The tail-following stream ended (with UNAVAILABLE) instead of holding shutdown up.
    let end = tokio::time::timeout(PROMPTLY, stream.message()).await.unwrap();
    assert!(
        matches!(&end, Err(s) if s.code() == Code::Unavailable) || matches!(end, Ok(None)),
        "{end:?}"
    );
    node.agent = Some(
        sidelog::agent::Agent::start(crate::common::config_in(node.dir.path().join("data")))
            .await
            .unwrap(),
    );
    assert_eq!(&node.client().await.consume(0).await.unwrap().value[..], b"kept");
}

#[tokio::test]
async fn produce_stream_stops_at_the_first_rejected_request() {
    let node = TestNode::start_with(|c| c.max_record_bytes = 1024).await;
    let c = node.client().await;
    let record = |n: usize| pb::ProduceRequest {
        record: Some(pb::Record {
            value: Bytes::from(vec![1u8; n]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let requests = futures_util::stream::iter(vec![record(10), record(2000), record(10), record(10)]);
    let mut responses = c.raw().produce_stream(requests).await.unwrap().into_inner();
    assert_eq!(responses.next().await.unwrap().unwrap().offset, 0);
    assert_eq!(
        responses.next().await.unwrap().unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(responses.next().await.is_none());
    // Nothing after the rejected request was written.
    let mut c = node.client().await;
    assert_eq!(c.consume(1).await.unwrap_err().code(), Code::OutOfRange);
    assert_eq!(c.produce(Bytes::from_static(b"next")).await.unwrap(), 1);
}
