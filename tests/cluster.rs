//! Raft clusters of in-process agents on loopback ports, with a network
//! layer that can cut traffic between chosen nodes.

use std::{
    collections::BTreeSet,
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use openraft::testing::{StoreBuilder, Suite};
use sidelog::{
    agent::Agent,
    client::Client,
    cluster::{
        Partition,
        log_store::LogStore,
        state_machine::StateMachine,
        store::Store,
        types::{NodeId, StorageError, TypeConfig, node_id},
    },
    config::{Config, FsyncPolicy},
    node::LogNode,
    storage::{Log, LogConfig, Retention},
    telemetry::Metrics,
};

use crate::common::config_in;

// ---- openraft's storage conformance suite on our log store ----

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
        let node = Arc::new(LogNode::new(log, 1 << 20));
        let store = Store::open(node, dir.path(), FsyncPolicy::Always)?;
        Ok((dir, LogStore::new(store.clone()), StateMachine::new(store)))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_segmented_log() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

// ---- helpers ----

pub(crate) fn free_port() -> u16 {
    crate::common::free_port()
}

/// Waits for `cond`, checking every 20 ms, failing after `secs`.
pub(crate) async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `SIDELOG_TEST_LOG=sidelog=info` prints the nodes' logs (debugging a
/// failed cluster test).
fn debug_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("SIDELOG_TEST_LOG") {
            let filter: tracing_subscriber::filter::Targets = filter.parse().expect("a filter such as sidelog=info");
            use tracing_subscriber::prelude::*;
            tracing_subscriber::registry()
                .with(tracing_subscriber::fmt::layer().with_test_writer().with_filter(filter))
                .init();
        }
    });
}

pub(crate) struct TestCluster {
    pub(crate) nodes: Vec<Option<Agent>>,
    pub(crate) dirs: Vec<tempfile::TempDir>,
    pub(crate) peer_ports: Vec<u16>,
    pub(crate) partition: Arc<Partition>,
    pub(crate) tweak: fn(&mut Config),
    /// Peer addresses nodes advertise instead of their own (relays).
    pub(crate) advertised_peer: Vec<Option<String>>,
    /// Failure domain of node i (none when absent).
    pub(crate) domains: Vec<String>,
}

impl TestCluster {
    pub(crate) async fn start(n: usize, tweak: fn(&mut Config)) -> TestCluster {
        debug_log();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        Self::start_on(peer_ports, vec![None; n], tweak).await
    }

    /// Nodes on `peer_ports`, advertising `advertised_peer[i]` (when set) as
    /// their peer address.
    pub(crate) async fn start_on(
        peer_ports: Vec<u16>,
        advertised_peer: Vec<Option<String>>,
        tweak: fn(&mut Config),
    ) -> TestCluster {
        Self::launch(peer_ports, advertised_peer, Vec::new(), tweak).await
    }

    /// `domains.len()` nodes, node i in failure domain `domains[i]`.
    pub(crate) async fn start_in_domains(domains: &[&str], tweak: fn(&mut Config)) -> TestCluster {
        debug_log();
        let n = domains.len();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let domains = domains.iter().map(|d| d.to_string()).collect();
        Self::launch(peer_ports, vec![None; n], domains, tweak).await
    }

    async fn launch(
        peer_ports: Vec<u16>,
        advertised_peer: Vec<Option<String>>,
        domains: Vec<String>,
        tweak: fn(&mut Config),
    ) -> TestCluster {
        let n = peer_ports.len();
        let mut c = TestCluster {
            nodes: (0..n).map(|_| None).collect(),
            dirs: (0..n).map(|_| tempfile::tempdir().unwrap()).collect(),
            peer_ports,
            partition: Arc::new(Partition::default()),
            tweak,
            advertised_peer,
            domains,
        };
        // All at once, as a StatefulSet would start them.
        let agents = futures_util::future::join_all((0..n).map(|i| {
            let config = c.config(i);
            let partition = c.partition.clone();
            async move { Agent::start_opts(config, Metrics::new(), Some(partition)).await }
        }))
        .await;
        for (i, a) in agents.into_iter().enumerate() {
            c.nodes[i] = Some(a.expect("agent starts"));
        }
        c.wait_formed().await;
        c
    }

    pub(crate) fn name(i: usize) -> String {
        format!("node-{i}")
    }

    pub(crate) fn id(i: usize) -> NodeId {
        node_id(&Self::name(i))
    }

    pub(crate) fn config(&self, i: usize) -> Config {
        let mut config = config_in(self.dirs[i].path().join("data"));
        config.node_id = Self::name(i);
        config.peer_addr = format!("127.0.0.1:{}", self.peer_ports[i]).parse().unwrap();
        config.join = self.peer_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        config.bootstrap_expect = self.peer_ports.len();
        config.advertise_peer_addr = self.advertised_peer.get(i).cloned().flatten();
        config.failure_domain = self.domains.get(i).cloned().unwrap_or_default();
        (self.tweak)(&mut config);
        config
    }

    pub(crate) fn agent(&self, i: usize) -> &Agent {
        self.nodes[i].as_ref().expect("node running")
    }

    pub(crate) fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    pub(crate) async fn client(&self, i: usize) -> Client {
        Client::connect(&self.agent(i).client_addr.to_string()).await.unwrap()
    }

    /// The leader every live replica agrees on (waits for it).
    pub(crate) async fn leader(&self) -> usize {
        let mut found = None;
        wait_until("one leader all live nodes agree on", 30, || {
            let leaders: HashSet<Option<NodeId>> = self
                .replicas()
                .iter()
                .map(|&i| self.agent(i).cluster().metrics().current_leader)
                .collect();
            found = match leaders.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(l)] => self.live().into_iter().find(|&i| Self::id(i) == *l),
                _ => None,
            };
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    pub(crate) async fn wait_formed(&self) {
        self.leader().await;
        wait_until("every live node ready", 30, || {
            self.live().iter().all(|&i| self.agent(i).cluster().is_ready())
        })
        .await;
    }

    pub(crate) async fn kill(&mut self, i: usize) {
        let a = self.nodes[i].take().expect("running");
        a.stop_without_leave().await.expect("stops");
    }

    /// Starts a new node (an empty dir, the next name) that joins through
    /// the live nodes without bootstrapping; returns its index.
    pub(crate) async fn add_node(&mut self, domain: Option<&str>) -> usize {
        let i = self.nodes.len();
        self.dirs.push(tempfile::tempdir().unwrap());
        self.peer_ports.push(free_port());
        self.nodes.push(None);
        self.advertised_peer.push(None);
        if let Some(d) = domain {
            self.domains.resize(i, String::new());
            self.domains.push(d.to_owned());
        }
        let mut config = self.config(i);
        config.join = self
            .live()
            .iter()
            .map(|&j| format!("127.0.0.1:{}", self.peer_ports[j]))
            .collect();
        config.bootstrap_expect = 0;
        let agent = Agent::start_opts(config, Metrics::new(), Some(self.partition.clone()))
            .await
            .expect("a new node starts");
        self.nodes[i] = Some(agent);
        i
    }

    /// The voters in node `i`'s view of the membership.
    pub(crate) fn voters(&self, i: usize) -> BTreeSet<NodeId> {
        self.agent(i)
            .cluster()
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub(crate) async fn restart(&mut self, i: usize) {
        let agent = start_when_unlocked(self.config(i), self.partition.clone()).await;
        self.nodes[i] = Some(agent);
    }

    /// The committed records of node `i`, by offset.
    pub(crate) fn records(&self, i: usize) -> Vec<(u64, Bytes)> {
        let node = self.agent(i).node();
        let log = node.log();
        let committed = node.committed();
        log.read_data(log.first_offset(), committed, usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| (r.offset, r.value))
            .collect()
    }

    /// The live nodes that hold a replica (not attached without a log).
    pub(crate) fn replicas(&self) -> Vec<usize> {
        self.live()
            .into_iter()
            .filter(|&i| !self.agent(i).cluster().is_attached())
            .collect()
    }

    /// Waits until every live replica has committed `n` data records.
    pub(crate) async fn wait_committed(&self, n: u64) {
        wait_until(&format!("{n} records committed on every live replica"), 30, || {
            self.replicas().iter().all(|&i| self.agent(i).node().committed() >= n)
        })
        .await;
    }

    pub(crate) async fn shutdown(mut self) {
        for i in self.live() {
            self.kill(i).await;
        }
    }
}

pub(crate) fn no_tweak(_: &mut Config) {}

/// Starts an agent on a data dir an agent of this process just stopped:
/// tasks of the old one may still be dropping their handles on the log
/// (a real process exit releases the lock at once), so a locked dir is
/// tried again for a while.
pub(crate) async fn start_when_unlocked(config: Config, partition: Arc<Partition>) -> Agent {
    let started = std::time::Instant::now();
    loop {
        match Agent::start_opts(config.clone(), Metrics::new(), Some(partition.clone())).await {
            Ok(a) => {
                if started.elapsed() > Duration::from_millis(100) {
                    println!("the data dir stayed locked for {:?} after the stop", started.elapsed());
                }
                return a;
            }
            Err(sidelog::agent::AgentError::Storage(sidelog::storage::Error::Locked { .. }))
                if started.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("agent restarts: {e:?}"),
        }
    }
}

/// Produces `{prefix}{i}` through `client` for each `i` in `offsets`, in
/// order, asserting that each lands at offset `i`.
pub(crate) async fn produce_at(client: &mut Client, prefix: &str, offsets: std::ops::Range<u64>) {
    for i in offsets {
        assert_eq!(client.produce(format!("{prefix}{i}")).await.unwrap(), i, "{prefix}{i}");
    }
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_one_cluster_and_a_follower_accepts_writes() {
    let c = TestCluster::start(3, no_tweak).await;
    let leader = c.leader().await;
    // Exactly one cluster: every node sees the same three voters.
    for i in 0..3 {
        let m = c.agent(i).cluster().metrics();
        let voters: HashSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        assert_eq!(voters, (0..3).map(TestCluster::id).collect(), "voters seen by node {i}");
    }
    let servers = c
        .client(0)
        .await
        .raw()
        .get_servers(sidelog::api::pb::GetServersRequest { ..Default::default() })
        .await;
    let servers = servers.unwrap().into_inner().servers;
    assert_eq!(servers.len(), 3);
    let leaders: Vec<_> = servers.iter().filter(|s| s.is_leader).collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0].id, TestCluster::name(leader));
    assert_eq!(leaders[0].rpc_addr, c.agent(leader).client_addr.to_string());

    let follower = (leader + 1) % 3;
    let mut client = c.client(follower).await;
    produce_at(&mut client, "r", 0..20).await;
    let batch: Vec<Bytes> = (20..30).map(|i| Bytes::from(format!("r{i}"))).collect();
    assert_eq!(
        client.produce_batch(batch).await.unwrap(),
        (20..30).collect::<Vec<u64>>()
    );
    c.wait_committed(30).await;
    let expected: Vec<(u64, Bytes)> = (0..30).map(|i| (i, Bytes::from(format!("r{i}")))).collect();
    for i in 0..3 {
        assert_eq!(c.records(i), expected, "records on node {i}");
        let mut reader = c.client(i).await;
        assert_eq!(&reader.consume(29).await.unwrap().value[..], b"r29");
    }
    // A linearizable read on a follower sees a write acknowledged just before.
    let off = c.client(leader).await.produce("fresh").await.unwrap();
    let other = (leader + 2) % 3;
    let resp = c
        .client(other)
        .await
        .raw()
        .consume(sidelog::api::pb::ConsumeRequest {
            offset: off,
            linearizable: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(&resp.into_inner().record.unwrap().value[..], b"fresh");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_loses_no_acknowledged_record_and_a_restarted_node_catches_up() {
    let mut c = TestCluster::start(3, no_tweak).await;
    let old = c.leader().await;
    let mut client = c.client(old).await;
    produce_at(&mut client, "a", 0..50).await;
    c.kill(old).await;
    let new = c.leader().await;
    assert_ne!(new, old);
    let mut client = c.client(new).await;
    produce_at(&mut client, "a", 50..100).await;
    c.restart(old).await;
    c.wait_committed(100).await;
    let expected: Vec<(u64, Bytes)> = (0..100).map(|i| (i, Bytes::from(format!("a{i}")))).collect();
    for i in 0..3 {
        assert_eq!(c.records(i), expected, "records on node {i}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_acknowledges_nothing() {
    let c = TestCluster::start(3, no_tweak).await;
    let old = c.leader().await;
    let mut client = c.client(old).await;
    assert_eq!(client.produce("before").await.unwrap(), 0);
    c.wait_committed(1).await;
    let ids: Vec<NodeId> = (0..3).map(TestCluster::id).collect();
    c.partition.isolate(&TestCluster::id(old), &ids);

    // The isolated leader cannot reach a quorum: no acknowledgement.
    let mut req = tonic::Request::new(sidelog::api::pb::ProduceRequest {
        record: Some(sidelog::api::pb::Record {
            value: Bytes::from_static(b"lost"),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(3));
    let err = client.raw().produce(req).await.expect_err("no quorum, no ack");
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Unavailable | tonic::Code::Cancelled
        ),
        "{err:?}"
    );

    // The majority elects a new leader and goes on.
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let mut new = None;
    wait_until("a new leader in the majority", 30, || {
        let l = c.agent(others[0]).cluster().metrics().current_leader;
        new = others.iter().copied().find(|&i| Some(TestCluster::id(i)) == l);
        new.is_some() && c.agent(others[1]).cluster().metrics().current_leader == l
    })
    .await;
    let mut client = c.client(new.unwrap()).await;
    assert_eq!(client.produce("after").await.unwrap(), 1);

    c.partition.heal();
    c.wait_committed(2).await;
    wait_until("the old leader drops its unacknowledged entry", 30, || {
        c.records(old).len() == 2 && c.agent(old).node().log().next_offset() == 2
    })
    .await;
    let expected = vec![(0, Bytes::from_static(b"before")), (1, Bytes::from_static(b"after"))];
    for i in 0..3 {
        assert_eq!(c.records(i), expected, "records on node {i}");
    }
    c.shutdown().await;
}

/// With the leader gone (no quorum), a follower's writes wait in its
/// bounded forward queue; callers that give up are answered, and what they
/// asked for is never sent once a leader is back (no late duplicates).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_whose_callers_gave_up_without_a_leader_are_never_sent_later() {
    let mut c = TestCluster::start(3, no_tweak).await;
    let leader = c.leader().await;
    let survivor = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    c.kill(leader).await;
    c.kill(other).await;
    // Once it has not heard from a leader for a while the survivor says it
    // is not ready; its forwarder keeps the writes in hand (up to the
    // write timeout) and cannot deliver them. It never campaigns: its
    // pre-votes find no majority.
    wait_until("the survivor is not ready", 30, || {
        !c.agent(survivor).cluster().is_ready()
    })
    .await;
    let term = c.agent(survivor).cluster().metrics().current_term;

    let client = c.client(survivor).await;
    let calls = (0..32).map(|i| {
        let client = client.clone();
        async move {
            let mut req = tonic::Request::new(sidelog::api::pb::ProduceRequest {
                record: Some(sidelog::api::pb::Record {
                    value: Bytes::from(format!("gave-up-{i}")),
                    ..Default::default()
                }),
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(1));
            client.raw().produce(req).await
        }
    });
    for result in futures_util::future::join_all(calls).await {
        let err = result.expect_err("no quorum: nothing is acknowledged");
        assert!(
            matches!(
                err.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Unavailable | tonic::Code::Cancelled
            ),
            "{err:?}"
        );
    }

    assert_eq!(
        c.agent(survivor).cluster().metrics().current_term,
        term,
        "a node without a majority never raises its term"
    );
    // Quorum comes back while the survivor's forwarder may still hold the
    // abandoned writes: none of them may reach the log.
    c.restart(leader).await;
    c.restart(other).await;
    c.wait_formed().await;
    let now = c.leader().await;
    let mut client = c.client(now).await;
    assert_eq!(client.produce("after").await.unwrap(), 0, "nothing was written before");
    c.wait_committed(1).await;
    // Through the survivor: its dispatcher is first-in first-out, so
    // anything it still held went (or was dropped) before this.
    let mut through_survivor = c.client(survivor).await;
    assert_eq!(through_survivor.produce("last").await.unwrap(), 1);
    c.wait_committed(2).await;
    let expected = vec![(0, Bytes::from_static(b"after")), (1, Bytes::from_static(b"last"))];
    for i in 0..3 {
        assert_eq!(c.records(i), expected, "records on node {i}");
    }
    c.shutdown().await;
}

/// A TCP relay in front of a peer port. [`Relay::black_hole`] turns the
/// connections it carries so far into black holes (bytes are read and
/// dropped, nothing is closed or reset), as a peer that came back at a new
/// IP leaves its old connections; connections made later relay normally.
struct Relay {
    addr: std::net::SocketAddr,
    epoch: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let epoch = Arc::new(AtomicU64::new(0));
        let shared = epoch.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                    continue;
                };
                let (epoch, mine) = (shared.clone(), shared.load(Ordering::SeqCst));
                conns.spawn(async move {
                    let (a_read, a_write) = inbound.into_split();
                    let (b_read, b_write) = outbound.into_split();
                    let live = move || epoch.load(Ordering::SeqCst) == mine;
                    tokio::join!(
                        Self::pump(a_read, b_write, live.clone()),
                        Self::pump(b_read, a_write, live)
                    );
                });
            }
        });
        Relay { addr, epoch, task }
    }

    /// Copies `from` to `to` while `live()`; after that reads and drops.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        live: impl Fn() -> bool,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) if live() => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            }
        }
    }

    fn black_hole(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A follower whose connection from the leader goes silent (a black hole,
/// not a reset) is dialed again once a ping goes unanswered (~3 s), and
/// catches up. Keep-alive at its earlier 10 s + 5 s would take 15 s or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_a_silent_connection_is_dialed_again_and_catches_up() {
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut relays = Vec::new();
    for &p in &peer_ports {
        relays.push(Relay::start(p).await);
    }
    let advertised = relays.iter().map(|r| Some(r.addr.to_string())).collect();
    let c = TestCluster::start_on(peer_ports, advertised, no_tweak).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = c.client(leader).await;
    produce_at(&mut client, "before-", 0..10).await;
    c.wait_committed(10).await;

    // Everything the leader sends the follower now vanishes.
    relays[follower].black_hole();
    produce_at(&mut client, "after-", 10..20).await;
    // Ping after 1 s of silence, dropped 2 s later, dialed again; the
    // follower's own campaigns meanwhile may cost the cluster one election.
    wait_until("the follower behind the silent connection has every record", 10, || {
        c.agent(follower).node().committed() >= 20
    })
    .await;
    let expected: Vec<(u64, Bytes)> = (0..20)
        .map(|i| {
            (
                i,
                Bytes::from(if i < 10 {
                    format!("before-{i}")
                } else {
                    format!("after-{i}")
                }),
            )
        })
        .collect();
    assert_eq!(c.records(follower), expected);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_node_joins_as_a_non_voter_when_the_voters_are_full() {
    let mut c = TestCluster::start(3, no_tweak).await;
    let leader = c.leader().await;
    for i in 0..20u64 {
        c.client(leader).await.produce(format!("j{i}")).await.unwrap();
    }
    // A fourth node that only knows one peer and expects no bootstrap.
    c.dirs.push(tempfile::tempdir().unwrap());
    c.peer_ports.push(free_port());
    c.nodes.push(None);
    let mut config = c.config(3);
    config.join = vec![format!("127.0.0.1:{}", c.peer_ports[(leader + 1) % 3])];
    config.bootstrap_expect = 0;
    c.nodes[3] = Some(
        Agent::start_opts(config, Metrics::new(), Some(c.partition.clone()))
            .await
            .unwrap(),
    );
    wait_until("the fourth node is a member", 60, || {
        let m = c.agent(leader).cluster().metrics();
        m.membership_config.membership().nodes().count() == 4
    })
    .await;
    c.wait_committed(20).await;
    assert_eq!(c.records(3), c.records(leader));
    // --voters 3 (the default): it stays a non-voter holding a full replica.
    let m = c.agent(leader).cluster().metrics();
    assert_eq!(m.membership_config.membership().voter_ids().count(), 3);
    assert!(
        !m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == TestCluster::id(3))
    );
    wait_until("the non-voter is ready", 30, || c.agent(3).cluster().is_ready()).await;
    c.shutdown().await;
}

fn small_segments(config: &mut Config) {
    config.segment_max_bytes = 4096;
    config.retention_bytes = Some(8192);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_catches_up_through_a_snapshot_after_retention() {
    let mut c = TestCluster::start(3, small_segments).await;
    let leader = c.leader().await;
    let mut client = c.client(leader).await;
    let value = |i: u64| Bytes::from(format!("{i:0>100}"));
    for chunk in 0..10u64 {
        let batch: Vec<Bytes> = (chunk * 50..chunk * 50 + 50).map(value).collect();
        client.produce_batch(batch).await.unwrap();
    }
    c.wait_committed(500).await;
    let policy = Retention {
        max_bytes: Some(8192),
        max_age: None,
    };
    for i in 0..3 {
        c.agent(i).cluster().apply_retention(&policy).await.unwrap();
    }
    let first = c.agent(leader).node().log().first_offset();
    assert!(first > 0, "retention removed old segments on the leader");

    let follower = (leader + 1) % 3;
    c.kill(follower).await;
    std::fs::remove_dir_all(c.dirs[follower].path().join("data")).unwrap();
    c.restart(follower).await;
    c.wait_committed(500).await;
    wait_until("the wiped follower is ready", 30, || {
        c.agent(follower).cluster().is_ready()
    })
    .await;

    // Exactly the leader's retained range, readable by consumers.
    let leader_records = c.records(leader);
    let follower_records = c.records(follower);
    assert_eq!(follower_records.first().map(|r| r.0), Some(first));
    assert_eq!(follower_records, leader_records);
    assert_eq!(follower_records.last().unwrap(), &(499, value(499)));
    // It takes writes again, as a full member.
    let off = c.client(follower).await.produce("next").await.unwrap();
    assert_eq!(off, 500);
    c.wait_committed(501).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_leave_shrinks_the_membership() {
    let mut c = TestCluster::start(3, no_tweak).await;
    let leader = c.leader().await;
    // A follower leaves...
    let follower = (leader + 1) % 3;
    c.nodes[follower].take().unwrap().leave_and_shutdown().await.unwrap();
    wait_until("membership without the follower", 30, || {
        c.agent(leader)
            .cluster()
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .count()
            == 2
    })
    .await;
    // ...then the leader leaves, handing over to the last node.
    c.nodes[leader].take().unwrap().leave_and_shutdown().await.unwrap();
    let last = 3 - leader - follower;
    wait_until("the last node leads a one-node cluster", 30, || {
        let m = c.agent(last).cluster().metrics();
        m.current_leader == Some(TestCluster::id(last)) && m.membership_config.membership().nodes().count() == 1
    })
    .await;
    assert_eq!(c.client(last).await.produce("alone").await.unwrap(), 0);
    // Removing a name that is not a member is NOT_FOUND.
    let err = c
        .client(last)
        .await
        .cluster()
        .remove(sidelog::cluster::pb::RemoveRequest { id: "ghost".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    c.shutdown().await;
}

/// Producers writing fresh values through whichever nodes are live, one
/// attempt at a time each; they record what was acknowledged where, and
/// the longest time no write at all was acknowledged.
pub(crate) struct Load {
    addrs: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    last_ack: Arc<Mutex<(Instant, Duration)>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, u64)>>>,
}

impl Load {
    pub(crate) fn start(c: &TestCluster, producers: usize) -> Load {
        let load = Load {
            addrs: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            last_ack: Arc::new(Mutex::new((Instant::now(), Duration::ZERO))),
            tasks: Vec::new(),
        };
        load.follow(c);
        let mut load = load;
        for p in 0..producers {
            let (addrs, stop, last_ack) = (load.addrs.clone(), load.stop.clone(), load.last_ack.clone());
            load.tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut attempt = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    attempt += 1;
                    let addr = {
                        let a = addrs.lock().unwrap();
                        a[(p + attempt) % a.len()].clone()
                    };
                    // A fresh value per attempt: a failed one may still be written.
                    let value = format!("p{p}-{attempt}");
                    let Ok(client) = Client::connect(&addr).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let mut req = tonic::Request::new(sidelog::api::pb::ProduceRequest {
                        record: Some(sidelog::api::pb::Record {
                            value: Bytes::from(value.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                    req.set_timeout(Duration::from_secs(5));
                    match client.raw().produce(req).await {
                        Ok(resp) => {
                            acked.push((value, resp.into_inner().offset));
                            let mut l = last_ack.lock().unwrap();
                            let gap = l.0.elapsed();
                            l.1 = l.1.max(gap);
                            l.0 = Instant::now();
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                acked
            }));
        }
        load
    }

    /// Writes go to the cluster's live nodes from now on.
    pub(crate) fn follow(&self, c: &TestCluster) {
        *self.addrs.lock().unwrap() = c.live().iter().map(|&i| c.agent(i).client_addr.to_string()).collect();
    }

    pub(crate) fn acked_since(&self) -> Duration {
        self.last_ack.lock().unwrap().0.elapsed()
    }

    /// Stops the producers; returns what was acknowledged and the longest
    /// stretch without any acknowledgement.
    pub(crate) async fn stop(self) -> (Vec<(String, u64)>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for t in self.tasks {
            acked.extend(t.await.unwrap());
        }
        let gap = self.last_ack.lock().unwrap().1;
        (acked, gap)
    }
}

/// Every acknowledged record is on every live node once, at its offset,
/// and the live nodes agree on one order.
pub(crate) async fn assert_history(c: &TestCluster, acked: &[(String, u64)]) {
    assert!(!acked.is_empty(), "nothing was acknowledged");
    let top = acked.iter().map(|a| a.1).max().unwrap() + 1;
    c.wait_committed(top).await;
    let live = c.replicas();
    let reference = c.records(live[0]);
    for &i in &live[1..] {
        let other = c.records(i);
        let n = reference.len().min(other.len());
        assert_eq!(reference[..n], other[..n], "node {i} disagrees with node {}", live[0]);
    }
    let mut seen = HashSet::new();
    for (_, v) in &reference {
        assert!(seen.insert(v.clone()), "{v:?} appears twice");
    }
    let at: HashMap<u64, &Bytes> = reference.iter().map(|(o, v)| (*o, v)).collect();
    for (value, offset) in acked {
        assert_eq!(
            at.get(offset).map(|v| &v[..]),
            Some(value.as_bytes()),
            "acknowledged {value} at {offset}"
        );
    }
}

/// Many producers through random nodes while nodes are killed and
/// restarted: every acknowledged record is present exactly once, at the
/// offset it was acknowledged with, in one order identical on all nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_check_under_kills_and_restarts() {
    let mut c = TestCluster::start(3, no_tweak).await;
    let load = Load::start(&c, 6);
    for round in 0..3 {
        let victim = (round * 2) % 3;
        wait_until("some records before the kill", 30, || {
            c.live()
                .iter()
                .any(|&i| c.agent(i).node().committed() > (round as u64 + 1) * 20)
        })
        .await;
        c.kill(victim).await;
        load.follow(&c);
        c.leader().await;
        c.restart(victim).await;
        load.follow(&c);
        c.wait_formed().await;
    }
    let (acked, _) = load.stop().await;
    assert!(acked.len() > 60, "only {} records acknowledged", acked.len());
    assert_history(&c, &acked).await;
    c.shutdown().await;
}

/// ProduceBatch calls of mixed sizes through every node while the leader
/// is killed and restarted, twice: each call's records are in the log all
/// or none (atomic, one Raft entry), acknowledged calls sit at the offsets
/// they were told, offsets are dense and unique, and every node agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_batches_are_all_or_none_and_offsets_stay_dense_across_leader_kills() {
    let mut c = TestCluster::start(3, no_tweak).await;
    let addrs: Vec<String> = (0..3).map(|i| c.agent(i).client_addr.to_string()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..6usize {
        let (addrs, stop) = (addrs.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            // (values of the call, offsets if acknowledged)
            let mut calls: Vec<(Vec<String>, Option<Vec<u64>>)> = Vec::new();
            let mut attempt = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                attempt += 1;
                let size = [1, 2, 17, 5, 64, 3][(p + attempt) % 6];
                let values: Vec<String> = (0..size).map(|i| format!("p{p}-{attempt}-{i}")).collect();
                let addr = &addrs[(p + attempt) % addrs.len()];
                let Ok(client) = Client::connect(addr).await else {
                    calls.push((values, None));
                    continue;
                };
                let records = values
                    .iter()
                    .map(|v| sidelog::api::pb::Record {
                        value: Bytes::from(v.clone()),
                        ..Default::default()
                    })
                    .collect();
                let mut req = tonic::Request::new(sidelog::api::pb::ProduceBatchRequest {
                    records,
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(5));
                let acked = client
                    .raw()
                    .produce_batch(req)
                    .await
                    .ok()
                    .map(|r| r.into_inner().offsets);
                calls.push((values, acked));
            }
            calls
        }));
    }
    for round in 0..2u64 {
        wait_until("some records before the kill", 30, || {
            c.live()
                .iter()
                .any(|&i| c.agent(i).node().committed() > (round + 1) * 200)
        })
        .await;
        let leader = c.leader().await;
        c.kill(leader).await;
        c.leader().await;
        c.restart(leader).await;
        c.wait_formed().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut calls = Vec::new();
    for p in producers {
        calls.extend(p.await.unwrap());
    }
    let acked_calls = calls.iter().filter(|c| c.1.is_some()).count();
    assert!(acked_calls > 20, "only {acked_calls} calls acknowledged");
    let top = calls.iter().filter_map(|c| c.1.as_ref()).flatten().max().unwrap() + 1;
    c.wait_committed(top).await;
    let reference = c.records(0);
    for i in 1..3 {
        let other = c.records(i);
        let n = reference.len().min(other.len());
        assert_eq!(reference[..n], other[..n], "node {i} disagrees with node 0");
    }
    let offsets: Vec<u64> = reference.iter().map(|r| r.0).collect();
    assert_eq!(
        offsets,
        (0..reference.len() as u64).collect::<Vec<_>>(),
        "offsets are dense"
    );
    let at: HashMap<&[u8], u64> = reference.iter().map(|(o, v)| (&v[..], *o)).collect();
    assert_eq!(at.len(), reference.len(), "a value appears twice");
    for (values, acked) in &calls {
        let present: Vec<Option<u64>> = values.iter().map(|v| at.get(v.as_bytes()).copied()).collect();
        match acked {
            Some(offsets) => {
                let want: Vec<Option<u64>> = offsets.iter().map(|o| Some(*o)).collect();
                assert_eq!(present, want, "acknowledged batch {:?}", values[0]);
            }
            None => {
                let n = present.iter().filter(|p| p.is_some()).count();
                assert!(
                    n == 0 || n == values.len(),
                    "batch {:?} is partly written: {present:?}",
                    values[0]
                );
                if n > 0 {
                    let first = present[0].unwrap();
                    let want: Vec<Option<u64>> = (first..first + n as u64).map(Some).collect();
                    assert_eq!(present, want, "a batch's records are contiguous");
                }
            }
        }
    }
    c.shutdown().await;
}

// ---- the peer port's credentials ----

/// One development PKI for every node of a test cluster (tweaks are plain
/// `fn`s, so they find it here).
fn shared_pki() -> &'static std::path::Path {
    static PKI: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        sidelog::security::certs::write_dev_certs(dir.path(), &[]).unwrap();
        dir
    })
    .path()
}

fn peer_certificates(config: &mut Config) {
    let p = shared_pki();
    config.peer_tls = Some(sidelog::security::TlsFiles {
        cert: p.join("peer.pem"),
        key: p.join("peer-key.pem"),
        ca: Some(p.join("ca.pem")),
    });
}

fn cluster_secret(config: &mut Config) {
    // Each node's own copy of the same secret, beside its data dir.
    let file = config.data_dir.parent().unwrap().join("cluster-secret");
    std::fs::write(&file, "0f1e2d3c4b5a69788796a5b4c3d2e1f0\n").unwrap();
    config.cluster_secret_file = Some(file);
}

async fn form_and_write_through_a_follower(tweak: fn(&mut Config)) {
    let c = TestCluster::start(3, tweak).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = c.client(follower).await;
    produce_at(&mut client, "p", 0..5).await;
    c.wait_committed(5).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_with_peer_certificates_form_a_cluster_and_forward_writes() {
    form_and_write_through_a_follower(peer_certificates).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_with_a_cluster_secret_form_a_cluster_and_forward_writes() {
    form_and_write_through_a_follower(cluster_secret).await;
}

// ---- shutdown ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_waiting_for_bootstrap_peers_exits_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path().join("data"));
    let me = free_port();
    config.peer_addr = format!("127.0.0.1:{me}").parse().unwrap();
    // The two other nodes never come.
    config.join = [me, free_port(), free_port()]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    config.bootstrap_expect = 3;
    config.shutdown_grace = Duration::from_secs(2);
    let agent = Agent::start(config).await.expect("starts while forming");
    assert!(!agent.cluster().is_ready());
    let started = tokio::time::Instant::now();
    // The signal arrives at once, as SIGTERM during forming would.
    let run = agent.run_until(async {});
    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("shutdown while forming must not hang");
    result.expect("a clean shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(2) + Duration::from_secs(2),
        "took {:?}, beyond the 2s grace",
        started.elapsed()
    );
}
