//! `sidelog perf produce --mode etcd`: the same load against etcd's v3 gRPC
//! API, for a side-by-side comparison (scripts/bench-compare.sh).
//!
//! etcd has no streaming write, so this is `--inflight` concurrent unary
//! `etcdserverpb.KV/Put` calls multiplexed on one HTTP/2 connection, each
//! to its own key: the same window of writes awaiting their acknowledgement
//! as the other modes keep. etcd acknowledges a Put once it is fsynced on a
//! quorum, as sidelog does, which makes it the like-for-like peer.
//!
//! Only the two request fields the benchmark sets are declared here (etcd's
//! `PutRequest` numbers its key 1 and its value 2); the response's fields are
//! not needed and are skipped on decode.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::{client::Grpc, transport::Channel};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "bytes", tag = "1")]
    key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

const PUT: &str = "/etcdserverpb.KV/Put";

/// Puts `total` records of `value` to etcd at `addr` (`http://HOST:PORT` or
/// `HOST:PORT`), `inflight` at a time, under keys `<prefix>/<n>`; returns
/// per-record latencies in microseconds.
pub async fn produce(
    addr: &str,
    prefix: &str,
    total: u64,
    inflight: usize,
    value: Bytes,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<u32>> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = Channel::from_shared(uri.clone())
        .with_context(|| format!("bad etcd address {addr:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to etcd at {uri}"))?;
    let prefix = prefix.to_owned();
    super::perf::run_workers(&channel, inflight, total, 1, done, move |channel, i, _| {
        let request = PutRequest {
            key: Bytes::from(format!("{prefix}/{i}")),
            value: value.clone(),
        };
        async move {
            let mut grpc = Grpc::new(channel);
            grpc.ready().await.context("etcd connection")?;
            grpc.unary::<_, PutResponse, _>(
                tonic::Request::new(request),
                PathAndQuery::from_static(PUT),
                ProstCodec::default(),
            )
            .await
            .with_context(|| format!("etcd refused Put #{i}"))?;
            Ok::<_, anyhow::Error>(())
        }
    })
    .await
}
