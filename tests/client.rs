//! The leader-aware client: GetServers, writes straight to the leader,
//! reads spread over the followers, retries across a leader's death.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use sidelog::{
    agent::Agent,
    client::{Client, RoutedClient},
    cluster::types::node_id,
    telemetry::Metrics,
};

use crate::common::config_in;

async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A produce of `value` marked for the leader only (no forwarding).
fn leader_only(value: &'static [u8]) -> tonic::Request<sidelog::api::pb::ProduceRequest> {
    let mut req = tonic::Request::new(sidelog::api::pb::ProduceRequest {
        record: Some(sidelog::api::pb::Record {
            value: Bytes::from_static(value),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut()
        .insert(sidelog::api::convert::ROUTE_KEY, "leader".parse().unwrap());
    req
}

struct Trio {
    agents: Vec<Option<Agent>>,
    metrics: Vec<Arc<Metrics>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Trio {
    async fn start() -> Trio {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl Fn(&mut sidelog::config::Config)) -> Trio {
        let ports: Vec<u16> = (0..3).map(|_| crate::common::free_port()).collect();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let metrics: Vec<_> = (0..3).map(|_| Metrics::new()).collect();
        let starts = (0..3).map(|i| {
            let mut c = config_in(dirs[i].path().join("data"));
            c.node_id = format!("client-{i}");
            c.peer_addr = format!("127.0.0.1:{}", ports[i]).parse().unwrap();
            c.join = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            c.bootstrap_expect = 3;
            tweak(&mut c);
            Agent::start_with(c, metrics[i].clone())
        });
        let agents: Vec<_> = futures_util::future::join_all(starts)
            .await
            .into_iter()
            .map(|a| Some(a.unwrap()))
            .collect();
        let trio = Trio {
            agents,
            metrics,
            _dirs: dirs,
        };
        wait_until("a ready cluster of three", 30, || {
            trio.live().all(|i| trio.agent(i).cluster().is_ready())
        })
        .await;
        trio
    }

    fn agent(&self, i: usize) -> &Agent {
        self.agents[i].as_ref().unwrap()
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..3).filter(|i| self.agents[*i].is_some())
    }

    fn leader(&self) -> Option<usize> {
        let id = self.agent(self.live().next()?).cluster().metrics().current_leader?;
        self.live().find(|&i| node_id(&format!("client-{i}")) == id)
    }

    fn addr(&self, i: usize) -> String {
        self.agent(i).client_addr.to_string()
    }

    fn forwarded(&self) -> u64 {
        self.metrics.iter().map(|m| m.records_forwarded.get()).sum()
    }

    async fn stop(mut self) {
        for a in self.agents.iter_mut().filter_map(Option::take) {
            a.stop_without_leave().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_produce_sent_to_a_followers_address_reaches_the_leader_without_a_forward() {
    let trio = Trio::start().await;
    let leader = trio.leader().unwrap();
    let follower = (leader + 1) % 3;
    let client = RoutedClient::connect(&[trio.addr(follower)], None).await.unwrap();
    assert_eq!(client.servers().leader(), Some(trio.addr(leader).as_str()));
    for i in 0..20u64 {
        assert_eq!(client.produce(format!("r{i}")).await.unwrap(), i);
    }
    assert_eq!(trio.forwarded(), 0, "no follower forwarded a write");
    assert_eq!(trio.metrics[leader].records_in.get(), 20);
    // The counter works: a plain client at the follower is forwarded.
    let mut plain = Client::connect(&trio.addr(follower)).await.unwrap();
    plain.produce("forwarded").await.unwrap();
    assert_eq!(trio.metrics[follower].records_forwarded.get(), 1);
    trio.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_not_the_leader_answer_names_the_leader_in_metadata() {
    let trio = Trio::start().await;
    let leader = trio.leader().unwrap();
    let follower = (leader + 1) % 3;
    let plain = Client::connect(&trio.addr(follower)).await.unwrap();
    let status = plain.raw().produce(leader_only(b"x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(sidelog::api::convert::leader_of(&status), Some(trio.addr(leader)));
    assert_eq!(trio.forwarded(), 0);
    trio.stop().await;
}

/// Sidecars each serve their own pod on `127.0.0.1:8400`, so every member
/// advertises the same client address, and it is not one this test can
/// reach (a closed port stands for "another pod's loopback").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_client_address_shared_by_all_leader_only_writes_are_forwarded_and_the_client_gets_through() {
    let shared = format!("127.0.0.1:{}", crate::common::free_port());
    let trio = Trio::start_with(|c| c.advertise_client_addr = Some(shared.clone())).await;
    let leader = trio.leader().unwrap();
    let follower = (leader + 1) % 3;

    // Redirecting to the leader's address would come back here: forwarded.
    let plain = Client::connect(&trio.addr(follower)).await.unwrap();
    let offset = plain
        .raw()
        .produce(leader_only(b"r0"))
        .await
        .expect("forwarded, not refused");
    assert_eq!(offset.into_inner().offset, 0);
    assert_eq!(trio.metrics[follower].records_forwarded.get(), 1);

    // The routed client learns only the unreachable address, finds it does
    // not answer, and goes through its seed (which forwards).
    let client = RoutedClient::connect(&[trio.addr(follower)], None).await.unwrap();
    assert_eq!(client.servers().leader(), Some(shared.as_str()));
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        for i in 1..=5u64 {
            assert_eq!(client.produce(format!("r{i}")).await.unwrap(), i);
        }
        client.consume(3).await.unwrap()
    })
    .await
    .expect("the client gets through its seed well before its retry budget");
    assert_eq!(&done.value[..], b"r3");
    assert_eq!(trio.metrics[follower].records_forwarded.get(), 6);
    trio.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumes_are_spread_round_robin_over_the_followers() {
    let trio = Trio::start().await;
    let leader = trio.leader().unwrap();
    let client = RoutedClient::connect(&[trio.addr(leader)], None).await.unwrap();
    let values: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("r{i}"))).collect();
    client.produce_batch(values).await.unwrap();
    wait_until("followers applied the batch", 10, || {
        trio.live().all(|i| trio.agent(i).node().committed() >= 10)
    })
    .await;
    for round in 0..5 {
        for offset in 0..10u64 {
            let r = client.consume(offset).await.unwrap();
            assert_eq!(r.value, format!("r{offset}"), "round {round}");
        }
    }
    let out: Vec<u64> = trio.metrics.iter().map(|m| m.records_out.get()).collect();
    assert_eq!(out[leader], 0, "reads avoid the leader: {out:?}");
    for f in (0..3).filter(|&i| i != leader) {
        assert_eq!(out[f], 25, "each follower serves half the reads: {out:?}");
    }
    trio.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_moves_on_when_the_leader_dies_mid_stream_and_every_acknowledged_record_is_kept() {
    let mut trio = Trio::start().await;
    let leader = trio.leader().unwrap();
    let seeds: Vec<String> = (0..3).map(|i| trio.addr(i)).collect();
    let client = RoutedClient::connect(&seeds, None).await.unwrap();
    let (tx, mut acked) = tokio::sync::mpsc::unbounded_channel();
    let producer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..300u32 {
                let value = format!("v{i}");
                let offset = client
                    .produce(value.clone())
                    .await
                    .expect("the client retries through the election");
                if tx.send((offset, value)).is_err() {
                    return;
                }
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 50 {
        seen.push(acked.recv().await.unwrap());
    }
    trio.agents[leader].take().unwrap().stop_without_leave().await.unwrap();
    producer.await.unwrap();
    while let Ok(a) = acked.try_recv() {
        seen.push(a);
    }
    assert_eq!(seen.len(), 300);
    let new_leader = trio.leader().expect("a new leader");
    assert_ne!(new_leader, leader);
    let top = seen.iter().map(|(o, _)| *o).max().unwrap();
    for i in trio.live().collect::<Vec<_>>() {
        wait_until("survivors committed every acknowledged record", 30, || {
            trio.agent(i).node().committed() > top
        })
        .await;
        for (offset, value) in &seen {
            let r = trio.agent(i).node().read(*offset).unwrap();
            assert_eq!(&r.value[..], value.as_bytes(), "offset {offset} on node {i}");
        }
    }
    // Reads go on through the survivors too.
    assert_eq!(client.consume(seen[0].0).await.unwrap().value, seen[0].1);
    trio.stop().await;
}

/// A scripted log.v1 server: it leads a one-server cluster at its own
/// address, and fails the first calls with the statuses given.
mod scripted {
    use std::{
        collections::VecDeque,
        pin::Pin,
        sync::{Arc, Mutex},
    };

    use sidelog::api::pb::{self, log_server::Log};
    use tonic::{Request, Response, Status, Streaming};

    #[derive(Clone, Default)]
    pub struct Script {
        pub addr: String,
        pub failures: Arc<Mutex<VecDeque<Status>>>,
        pub calls: Arc<Mutex<u32>>,
    }

    impl Script {
        fn next(&self) -> Result<(), Status> {
            *self.calls.lock().unwrap() += 1;
            match self.failures.lock().unwrap().pop_front() {
                Some(s) => Err(s),
                None => Ok(()),
            }
        }

        pub fn calls(&self) -> u32 {
            *self.calls.lock().unwrap()
        }
    }

    type Stream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

    #[tonic::async_trait]
    impl Log for Script {
        async fn produce(&self, _: Request<pb::ProduceRequest>) -> Result<Response<pb::ProduceResponse>, Status> {
            self.next()?;
            Ok(Response::new(pb::ProduceResponse { offset: 7 }))
        }
        async fn produce_batch(
            &self,
            _: Request<pb::ProduceBatchRequest>,
        ) -> Result<Response<pb::ProduceBatchResponse>, Status> {
            self.next()?;
            Ok(Response::new(pb::ProduceBatchResponse { offsets: vec![7] }))
        }
        async fn consume(&self, r: Request<pb::ConsumeRequest>) -> Result<Response<pb::ConsumeResponse>, Status> {
            self.next()?;
            Ok(Response::new(pb::ConsumeResponse {
                record: Some(pb::Record {
                    offset: r.into_inner().offset,
                    value: "v".into(),
                    ..Default::default()
                }),
            }))
        }
        type ConsumeStreamStream = Stream<pb::ConsumeResponse>;
        async fn consume_stream(
            &self,
            _: Request<pb::ConsumeRequest>,
        ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
            Err(Status::unimplemented("scripted"))
        }
        type ProduceStreamStream = Stream<pb::ProduceResponse>;
        async fn produce_stream(
            &self,
            _: Request<Streaming<pb::ProduceRequest>>,
        ) -> Result<Response<Self::ProduceStreamStream>, Status> {
            Err(Status::unimplemented("scripted"))
        }
        async fn get_servers(
            &self,
            _: Request<pb::GetServersRequest>,
        ) -> Result<Response<pb::GetServersResponse>, Status> {
            Ok(Response::new(pb::GetServersResponse {
                servers: vec![pb::Server {
                    id: "scripted".into(),
                    rpc_addr: self.addr.clone(),
                    is_leader: true,
                }],
            }))
        }
    }

    pub async fn serve(failures: Vec<Status>) -> Script {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let script = Script {
            addr: listener.local_addr().unwrap().to_string(),
            failures: Arc::new(Mutex::new(failures.into())),
            calls: Default::default(),
        };
        let server = tonic::transport::Server::builder().add_service(pb::log_server::LogServer::new(script.clone()));
        tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
        script
    }
}

fn failed(outcome: sidelog::node::Outcome) -> tonic::Status {
    sidelog::api::convert::with_outcome(tonic::Status::unavailable("scripted failure"), outcome)
}

/// Issue 22: the routed client decides its retries from the typed outcome.
#[tokio::test]
async fn the_routed_client_retries_a_write_that_wrote_nothing() {
    use sidelog::node::Outcome;
    let script = scripted::serve(vec![failed(Outcome::NotWritten), failed(Outcome::NotWritten)]).await;
    let client = RoutedClient::connect(&[script.addr.clone()], None).await.unwrap();
    assert_eq!(client.produce("x").await.unwrap(), 7);
    assert_eq!(script.calls(), 3, "two refusals, then the write");
}

#[tokio::test]
async fn the_routed_client_does_not_retry_a_write_of_unknown_outcome() {
    use sidelog::node::Outcome;
    let script = scripted::serve(vec![failed(Outcome::Unknown)]).await;
    let client = RoutedClient::connect(&[script.addr.clone()], None).await.unwrap();
    let e = client.produce("x").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert_eq!(sidelog::api::convert::outcome_of(&e), Some(Outcome::Unknown), "{e:?}");
    assert_eq!(
        script.calls(),
        1,
        "an unknown outcome is not retried without idempotence"
    );
    // The same for a batch; a read of unknown outcome is retried (no side effect).
    let script = scripted::serve(vec![failed(Outcome::Unknown)]).await;
    let client = RoutedClient::connect(&[script.addr.clone()], None).await.unwrap();
    assert!(client.produce_batch(vec![Bytes::from_static(b"x")]).await.is_err());
    assert_eq!(script.calls(), 1);
    let script = scripted::serve(vec![failed(Outcome::Unknown)]).await;
    let client = RoutedClient::connect(&[script.addr.clone()], None).await.unwrap();
    assert_eq!(client.consume(3).await.unwrap().offset, 3);
    assert_eq!(script.calls(), 2);
}
