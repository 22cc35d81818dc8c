//! The peer network: openraft's RPCs over the `sidelog.v1.Peer` tonic
//! service, one reused HTTP/2 connection per peer, mutual TLS when
//! configured, every call bounded by a deadline.
//!
//! [`Partition`] lets tests cut traffic between chosen nodes: a cut pair's
//! calls fail as if the peer were unreachable.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use openraft::{
    EntryPayload, LeaderId, RaftNetwork, RaftNetworkFactory,
    error::{Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable},
    network::RPCOption,
    raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse},
};
use tokio_stream::StreamExt as _;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use super::{
    pb::{self, peer_client::PeerClient},
    snapshot::SnapshotData,
    types::{Entry, LogId, Membership, NodeId, NodeInfo, Request, Snapshot, TypeConfig, Vote, log_id},
};
use crate::security::{PeerCredentials, peer_auth::SecretInterceptor};

/// Cuts traffic between chosen nodes (tests).
#[derive(Debug, Default)]
pub struct Partition {
    cut: Mutex<HashSet<(NodeId, NodeId)>>,
}

impl Partition {
    /// Drops traffic both ways between `a` and `b`.
    pub fn cut(&self, a: &NodeId, b: &NodeId) {
        let mut cut = self.cut.lock().unwrap();
        cut.insert((*a, *b));
        cut.insert((*b, *a));
    }

    /// Isolates `a` from every node in `others`.
    pub fn isolate(&self, a: &NodeId, others: &[NodeId]) {
        for b in others.iter().filter(|b| *b != a) {
            self.cut(a, b);
        }
    }

    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }

    pub fn is_cut(&self, from: &NodeId, to: &NodeId) -> bool {
        self.cut.lock().unwrap().contains(&(*from, *to))
    }
}

/// Deadline of a plain RPC (not snapshots).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of a `Hello` (forming, joining, surveys).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 pings on peer connections: sent after this long without a frame
/// from the peer, and the connection dropped when one goes unanswered for
/// [`PEER_PING_TIMEOUT`].
pub const PEER_PING_INTERVAL: Duration = Duration::from_secs(1);
pub const PEER_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of a peer's `sidelog.v1.Peer` service, presenting our peer
/// credentials (certificate on the connection, secret on every call).
pub type PeerChannel = InterceptedService<Channel, SecretInterceptor>;

/// Connections to peers, shared by Raft replication, forwarding and joins.
#[derive(Clone, Debug)]
pub struct Peers {
    me: NodeId,
    credentials: PeerCredentials,
    channels: Arc<Mutex<Channels>>,
    partition: Option<Arc<Partition>>,
    contacts: Arc<super::membership::Contacts>,
    /// Each peer's peer protocol, as its last `Hello` said, and when: a
    /// named log's Raft calls go only to peers that know groups.
    protocols: Arc<Mutex<HashMap<NodeId, (u32, std::time::Instant)>>>,
}

/// How long a peer's protocol (see `Peers::protocols`) is trusted.
const PROTOCOL_FRESH: Duration = Duration::from_secs(30);

/// Open channels by address, all built with the peer certificate of
/// `generation` (see `security::peer_tls`).
#[derive(Debug, Default)]
struct Channels {
    generation: u64,
    by_addr: HashMap<String, Channel>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {0} is unreachable (network partition)")]
    Partitioned(NodeId),
    #[error("peer {0} runs a build without named logs (peer protocol {1}): no named log's call is sent to it")]
    OldBuild(NodeId, u32),
    #[error("invalid peer address {addr:?}: {message}")]
    Address { addr: String, message: String },
    #[error(transparent)]
    Status(#[from] tonic::Status),
}

impl Peers {
    pub fn new(me: NodeId, credentials: PeerCredentials, partition: Option<Arc<Partition>>) -> Self {
        Peers {
            me,
            credentials,
            channels: Default::default(),
            partition,
            contacts: Default::default(),
            protocols: Default::default(),
        }
    }

    /// The same connections with contacts of their own: each Raft group
    /// hears from its own leader (one connection per peer for all groups).
    pub fn for_group(&self) -> Peers {
        Peers {
            contacts: Default::default(),
            ..self.clone()
        }
    }

    /// Whether `id` knows named logs (peer protocol 3): its last `Hello`
    /// answer if fresh, else a new one.
    pub async fn knows_groups(&self, me: &NodeInfo, id: NodeId, addr: &str) -> Result<(), PeerError> {
        let min = super::host::NAMED_LOGS_PROTOCOL;
        let cached = self.protocols.lock().unwrap().get(&id).copied();
        let protocol = match cached {
            Some((p, at)) if at.elapsed() < PROTOCOL_FRESH => p,
            _ => self.ask_protocol(me, id, addr).await.ok_or_else(|| {
                PeerError::Status(tonic::Status::unavailable(format!("peer {id} did not answer Hello")))
            })?,
        };
        if protocol < min {
            return Err(PeerError::OldBuild(id, protocol));
        }
        Ok(())
    }

    /// Asks `id` its peer protocol now (`Hello`) and remembers the answer
    /// for [`Peers::knows_groups`]; `None` if it did not answer.
    pub async fn ask_protocol(&self, me: &NodeInfo, id: NodeId, addr: &str) -> Option<u32> {
        let answers = self.hello_each(me, [((), Some(id), addr.to_owned())]).await;
        let ((), r) = answers.into_iter().next()?;
        self.protocols
            .lock()
            .unwrap()
            .insert(id, (r.protocol, std::time::Instant::now()));
        Some(r.protocol)
    }

    /// When each peer last answered, and when a leader last reached us.
    pub fn contacts(&self) -> &super::membership::Contacts {
        &self.contacts
    }

    pub fn partition(&self) -> Option<&Arc<Partition>> {
        self.partition.as_ref()
    }

    /// A client for the peer at `addr` (known as `to`, when known).
    pub fn client(&self, to: Option<&NodeId>, addr: &str) -> Result<PeerClient<PeerChannel>, PeerError> {
        if let (Some(p), Some(to)) = (&self.partition, to)
            && p.is_cut(&self.me, to)
        {
            return Err(PeerError::Partitioned(*to));
        }
        let channel = {
            let mut channels = self.channels.lock().unwrap();
            // A rotated peer certificate: dial again so peers see the new one.
            let generation = self.credentials.tls.as_ref().map_or(0, |t| t.generation());
            if channels.generation != generation {
                channels.by_addr.clear();
                channels.generation = generation;
            }
            match channels.by_addr.get(addr) {
                Some(c) => c.clone(),
                None => {
                    let c = self.endpoint(addr)?.connect_lazy();
                    channels.by_addr.insert(addr.to_owned(), c.clone());
                    c
                }
            }
        };
        Ok(PeerClient::with_interceptor(channel, self.credentials.interceptor())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20))
    }

    /// Says hello, as `me`, to every target at once: `(key, id if known,
    /// peer address)`. Returns the answers with their keys, in target
    /// order; a target that fails or does not answer within
    /// [`HELLO_TIMEOUT`] is left out. The bound is kept here too: a
    /// request's deadline only tells the server, and a peer port that
    /// accepts connections but does not serve yet would hold the call.
    pub async fn hello_each<K>(
        &self,
        me: &NodeInfo,
        targets: impl IntoIterator<Item = (K, Option<NodeId>, String)>,
    ) -> Vec<(K, pb::HelloResponse)> {
        let hello = pb::HelloRequest {
            node: Some(node_info_to_pb(me)),
            evicted: false,
        };
        let asks = targets.into_iter().filter_map(|(key, id, addr)| {
            let mut client = self.client(id.as_ref(), &addr).ok()?;
            let mut req = tonic::Request::new(hello.clone());
            req.set_timeout(HELLO_TIMEOUT);
            Some(async move {
                let answer = super::within(HELLO_TIMEOUT, client.hello(req)).await?.ok()?;
                Some((key, answer.into_inner()))
            })
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, PeerError> {
        let tls = self.credentials.tls.as_ref().map(|t| t.config());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let bad = |message: String| PeerError::Address {
            addr: addr.to_owned(),
            message,
        };
        let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| bad(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            // A peer that came back at a new IP (a restarted container, a
            // rescheduled pod) leaves the old connection a black hole: no
            // reset, no error, calls just time out. An unanswered ping ends
            // it within ~3 s and the next call dials again, resolving the
            // name afresh. A busy peer still answers pings (its connection
            // task does, not its handlers), so a slow disk is not taken for
            // a dead link.
            .http2_keep_alive_interval(PEER_PING_INTERVAL)
            .keep_alive_timeout(PEER_PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20));
        if let Some(tls) = tls {
            e = e.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        Ok(e)
    }
}

// ---- conversions between openraft and protobuf types ----

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.voted_for,
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: Option<pb::Vote>) -> Vote {
    let v = v.unwrap_or_default();
    Vote {
        leader_id: LeaderId {
            term: v.term,
            voted_for: v.node_id,
        },
        committed: v.committed,
    }
}

pub fn log_id_to_pb(l: &LogId) -> pb::LogId {
    pb::LogId {
        term: l.leader_id.term,
        index: l.index,
    }
}

pub fn log_id_from_pb(l: pb::LogId) -> LogId {
    log_id(l.term, l.index)
}

fn entry_to_pb(e: &Entry) -> pb::Entry {
    let (kind, count, payload) = match &e.payload {
        EntryPayload::Blank => (pb::EntryKind::Blank, 0, bytes::Bytes::new()),
        EntryPayload::Normal(Request { op: Some(op), .. }) => {
            (pb::EntryKind::Catalog, 0, super::log_store::encode_catalog(op))
        }
        EntryPayload::Normal(r) => (pb::EntryKind::Normal, r.count, r.body.clone()),
        EntryPayload::Membership(m) => (
            pb::EntryKind::Membership,
            0,
            serde_json::to_vec(m).expect("a membership serializes").into(),
        ),
    };
    pb::Entry {
        term: e.log_id.leader_id.term,
        index: e.log_id.index,
        kind: kind as i32,
        payload,
        count,
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry, tonic::Status> {
    let payload = match pb::EntryKind::try_from(e.kind) {
        Ok(pb::EntryKind::Blank) => EntryPayload::Blank,
        Ok(pb::EntryKind::Normal) => {
            // A malformed batch would shift every later offset: refuse it here.
            crate::storage::check_body(crate::storage::Kind::Data, e.count, &e.payload)
                .map_err(|err| tonic::Status::invalid_argument(format!("bad batch at index {}: {err}", e.index)))?;
            EntryPayload::Normal(Request {
                count: e.count,
                body: e.payload,
                base_offset: 0,
                op: None,
            })
        }
        Ok(pb::EntryKind::Catalog) => {
            EntryPayload::Normal(Request::catalog(super::log_store::decode_catalog(&e.payload).map_err(
                |err| tonic::Status::invalid_argument(format!("bad catalog entry at index {}: {err}", e.index)),
            )?))
        }
        Ok(pb::EntryKind::Membership) => EntryPayload::Membership(
            serde_json::from_slice::<Membership>(&e.payload)
                .map_err(|err| tonic::Status::invalid_argument(format!("bad membership entry: {err}")))?,
        ),
        Err(_) => {
            return Err(tonic::Status::invalid_argument(format!(
                "unknown entry kind {}",
                e.kind
            )));
        }
    };
    Ok(Entry {
        log_id: log_id(e.term, e.index),
        payload,
    })
}

pub fn append_request_to_pb(r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: r.prev_log_id.as_ref().map(log_id_to_pb),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: r.leader_commit.as_ref().map(log_id_to_pb),
        group: String::new(),
    }
}

pub fn append_request_from_pb(r: pb::AppendEntriesRequest) -> Result<AppendEntriesRequest<TypeConfig>, tonic::Status> {
    // Entries must continue `prev_log_id` without gaps: a malformed request
    // is refused here instead of failing (and stopping) the log store. The
    // last index (u64::MAX) has no successor, so no log can hold it (found
    // writing the peer_messages fuzz target: `index + 1` overflowed).
    let successor = |index: u64| {
        index
            .checked_add(1)
            .ok_or_else(|| tonic::Status::invalid_argument(format!("log index {index} is out of range")))
    };
    let mut expect = match &r.prev_log_id {
        Some(p) => successor(p.index)?,
        None => 0,
    };
    for (i, e) in r.entries.iter().enumerate() {
        if (i > 0 || r.prev_log_id.is_some()) && e.index != expect {
            return Err(tonic::Status::invalid_argument(format!(
                "entry {i} has index {} where {expect} was expected",
                e.index
            )));
        }
        expect = successor(e.index)?;
    }
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(r.vote),
        prev_log_id: r.prev_log_id.map(log_id_from_pb),
        entries: r.entries.into_iter().map(entry_from_pb).collect::<Result<_, _>>()?,
        leader_commit: r.leader_commit.map(log_id_from_pb),
    })
}

pub fn append_response_to_pb(r: AppendEntriesResponse<NodeId>) -> pb::AppendEntriesResponse {
    use pb::AppendResult as R;
    let (result, matched, vote) = match r {
        AppendEntriesResponse::Success => (R::Success, None, None),
        AppendEntriesResponse::PartialSuccess(m) => (R::PartialSuccess, m.as_ref().map(log_id_to_pb), None),
        AppendEntriesResponse::Conflict => (R::Conflict, None, None),
        AppendEntriesResponse::HigherVote(v) => (R::HigherVote, None, Some(vote_to_pb(&v))),
    };
    pb::AppendEntriesResponse {
        result: result as i32,
        matched,
        vote,
    }
}

/// A peer's AppendEntries reply (an unknown result counts as a conflict).
pub fn append_response_from_pb(r: pb::AppendEntriesResponse) -> AppendEntriesResponse<NodeId> {
    use pb::AppendResult as R;
    match R::try_from(r.result).unwrap_or(R::Conflict) {
        R::Success => AppendEntriesResponse::Success,
        R::PartialSuccess => AppendEntriesResponse::PartialSuccess(r.matched.map(log_id_from_pb)),
        R::Conflict => AppendEntriesResponse::Conflict,
        R::HigherVote => AppendEntriesResponse::HigherVote(vote_from_pb(r.vote)),
    }
}

pub fn node_info_to_pb(n: &NodeInfo) -> pb::NodeInfo {
    pb::NodeInfo {
        id: n.name.clone(),
        peer_addr: n.peer_addr.clone(),
        client_addr: n.client_addr.clone(),
        failure_domain: n.domain.clone(),
    }
}

pub fn node_info_from_pb(n: pb::NodeInfo) -> (NodeId, NodeInfo) {
    (
        super::types::node_id(&n.id),
        NodeInfo {
            name: n.id,
            peer_addr: n.peer_addr,
            client_addr: n.client_addr,
            domain: n.failure_domain,
        },
    )
}

// ---- openraft's network ----

/// Creates a [`PeerNetwork`] per target.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    peers: Peers,
    /// This node (its `Hello`).
    me: NodeInfo,
    /// The group every call names (empty: the default log's).
    group: String,
    /// The default log's group: the catalog sent with snapshots.
    catalog: Option<Arc<super::catalog::CatalogStore>>,
}

impl NetworkFactory {
    pub fn new(peers: Peers, me: NodeInfo, group: String, catalog: Option<Arc<super::catalog::CatalogStore>>) -> Self {
        NetworkFactory {
            peers,
            me,
            group,
            catalog,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            peers: self.peers.clone(),
            target,
            addr: node.peer_addr.clone(),
            me: self.me.clone(),
            group: self.group.clone(),
            catalog: self.catalog.clone(),
        }
    }
}

/// The link to one peer.
#[derive(Debug)]
pub struct PeerNetwork {
    peers: Peers,
    target: NodeId,
    addr: String,
    me: NodeInfo,
    group: String,
    catalog: Option<Arc<super::catalog::CatalogStore>>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

fn rpc_error<E: std::error::Error>(e: PeerError) -> RpcErr<E> {
    match e {
        PeerError::Status(s) if s.code() != tonic::Code::Unavailable => RPCError::Network(NetworkError::new(&s)),
        e => RPCError::Unreachable(Unreachable::new(&e)),
    }
}

impl PeerNetwork {
    fn client(&self) -> Result<PeerClient<PeerChannel>, PeerError> {
        self.peers.client(Some(&self.target), &self.addr)
    }

    /// A named log's call goes only to a peer that knows groups: an older
    /// build ignores `group` and would take it for its default group's.
    async fn client_for_group(&self) -> Result<PeerClient<PeerChannel>, PeerError> {
        if !self.group.is_empty() {
            self.peers.knows_groups(&self.me, self.target, &self.addr).await?;
        }
        self.client()
    }
}

fn with_deadline<T>(msg: T, ttl: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(ttl.min(RPC_TIMEOUT));
    r
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let mut client = self.client_for_group().await.map_err(|e| rpc_error(e))?;
        let mut msg = append_request_to_pb(&rpc);
        msg.group.clone_from(&self.group);
        let req = with_deadline(msg, option.hard_ttl());
        let resp = client.append_entries(req).await.map_err(|s| rpc_error(s.into()))?;
        self.peers.contacts.answered(self.target);
        Ok(append_response_from_pb(resp.into_inner()))
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        let mut client = self.client_for_group().await.map_err(|e| rpc_error(e))?;
        let req = with_deadline(
            pb::VoteRequest {
                vote: Some(vote_to_pb(&rpc.vote)),
                last_log_id: rpc.last_log_id.as_ref().map(log_id_to_pb),
                group: self.group.clone(),
            },
            option.hard_ttl(),
        );
        let r = client.vote(req).await.map_err(|s| rpc_error(s.into()))?.into_inner();
        self.peers.contacts.answered(self.target);
        Ok(VoteResponse {
            vote: vote_from_pb(r.vote),
            vote_granted: r.vote_granted,
            last_log_id: r.last_log_id.map(log_id_from_pb),
        })
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let net = |e: &dyn std::error::Error| StreamingError::Network(NetworkError::new(&AnyErr(e.to_string())));
        let mut client = self
            .client_for_group()
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let SnapshotData::Local(log) = &*snapshot.snapshot else {
            return Err(net(&AnyErr("only a locally built snapshot can be sent".into())));
        };
        let last = snapshot.meta.last_log_id;
        let dir = log.dir().join(format!("snapshot-out-{}", next_tmp_id()));
        let files = match last {
            Some(last) => {
                let (log, d) = (log.clone(), dir.clone());
                tokio::task::spawn_blocking(move || log.link_segments(last.index, &d))
                    .await
                    .map_err(|e| net(&e))?
                    .map_err(|e| net(&e))?
            }
            None => Vec::new(),
        };
        let _cleanup = RemoveDir(dir);
        let meta = serde_json::to_vec(&snapshot.meta).map_err(|e| net(&e))?;
        let catalog = match &self.catalog {
            Some(c) => serde_json::to_vec(&c.get()).map_err(|e| net(&e))?,
            None => Vec::new(),
        };
        let group = self.group.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let sender = tokio::spawn(async move {
            let first = pb::SnapshotChunk {
                vote: Some(vote_to_pb(&vote)),
                meta: meta.into(),
                catalog: catalog.into(),
                group,
                ..Default::default()
            };
            if tx.send(first).await.is_err() {
                return Ok(());
            }
            for f in files {
                use tokio::io::AsyncReadExt;
                let name = f.path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                let mut file = tokio::fs::File::open(&f.path).await?;
                let mut left = f.len;
                let mut first_chunk = true;
                while left > 0 || first_chunk {
                    let n = left.min(1 << 20) as usize;
                    let mut buf = vec![0u8; n];
                    file.read_exact(&mut buf).await?;
                    left -= n as u64;
                    let chunk = pb::SnapshotChunk {
                        file: if first_chunk { name.clone() } else { String::new() },
                        data: buf.into(),
                        ..Default::default()
                    };
                    first_chunk = false;
                    if tx.send(chunk).await.is_err() {
                        return Ok(());
                    }
                }
            }
            Ok::<_, std::io::Error>(())
        });
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::select! {
            r = call => r,
            closed = cancel => {
                sender.abort();
                return Err(StreamingError::Closed(closed));
            }
        };
        match sender.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(net(&e)),
            Err(e) => return Err(net(&e)),
        }
        let resp = resp.map_err(|s| match s.code() {
            tonic::Code::Unavailable => StreamingError::Unreachable(Unreachable::new(&s)),
            _ => net(&s),
        })?;
        self.peers.contacts.answered(self.target);
        Ok(SnapshotResponse {
            vote: vote_from_pb(resp.into_inner().vote),
        })
    }
}

#[derive(Debug)]
struct AnyErr(String);

impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnyErr {}

/// Removes a temporary directory when dropped.
pub struct RemoveDir(pub PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prefixes of the temporary snapshot directories in a data directory.
pub const TMP_DIR_PREFIXES: [&str; 2] = ["snapshot-out-", "snapshot-in-"];

/// A unique suffix for temporary directories: the pid alone is not (in a
/// container it is always 1, so a restarted node would reuse the names of
/// its previous run), so the process's start time in nanoseconds and a
/// counter follow it.
pub fn next_tmp_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    format!(
        "{}-{started:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes temporary snapshot directories a previous run left behind (a
/// crash or kill skips their `Drop`): they hold hard links that would keep
/// deleted segments on disk forever. Call before the node serves. Returns
/// how many were removed.
pub fn remove_stale_tmp_dirs(data_dir: &std::path::Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if TMP_DIR_PREFIXES.iter().any(|p| name.starts_with(p)) && entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
            tracing::info!(dir = %entry.path().display(), "removed a leftover snapshot directory");
            removed += 1;
        }
    }
    Ok(removed)
}

/// Checks the file name that starts a file of an incoming snapshot: a
/// single path component ending in `.log`, so the file stays inside the
/// snapshot's directory.
pub fn check_snapshot_file_name(name: &str) -> Result<&std::path::Path, tonic::Status> {
    let path = std::path::Path::new(name);
    if path.components().count() != 1 || !name.ends_with(".log") {
        return Err(tonic::Status::invalid_argument(format!(
            "bad snapshot file name {name:?}"
        )));
    }
    Ok(path)
}

/// Collects an incoming snapshot stream into files under `dir`; returns the
/// sender's vote, the metadata and the files in order.
pub async fn receive_snapshot(
    first: pb::SnapshotChunk,
    mut stream: tonic::Streaming<pb::SnapshotChunk>,
    dir: PathBuf,
) -> Result<(Vote, super::types::SnapshotMeta, SnapshotData), tonic::Status> {
    use tokio::io::AsyncWriteExt;
    let internal = |e: std::io::Error| tonic::Status::internal(format!("writing the snapshot: {e}"));
    let vote = vote_from_pb(first.vote);
    let meta: super::types::SnapshotMeta = serde_json::from_slice(&first.meta)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad snapshot metadata: {e}")))?;
    tokio::fs::create_dir_all(&dir).await.map_err(internal)?;
    // From here on the data owns the directory and removes it when dropped.
    let catalog = if first.catalog.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice(&first.catalog)
                .map_err(|e| tonic::Status::invalid_argument(format!("bad snapshot catalog: {e}")))?,
        )
    };
    let mut data = SnapshotData::Received {
        dir: dir.clone(),
        files: Vec::new(),
        catalog,
    };
    let mut current: Option<tokio::fs::File> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if !chunk.file.is_empty() {
            if let Some(mut f) = current.take() {
                f.flush().await.map_err(internal)?;
            }
            let path = dir.join(check_snapshot_file_name(&chunk.file)?);
            current = Some(tokio::fs::File::create(&path).await.map_err(internal)?);
            if let SnapshotData::Received { files, .. } = &mut data {
                files.push(path);
            }
        }
        let Some(f) = current.as_mut() else {
            return Err(tonic::Status::invalid_argument("snapshot data before any file"));
        };
        f.write_all(&chunk.data).await.map_err(internal)?;
    }
    if let Some(mut f) = current.take() {
        f.flush().await.map_err(internal)?;
    }
    Ok((vote, meta, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prev: Option<u64>, indexes: &[u64]) -> pb::AppendEntriesRequest {
        pb::AppendEntriesRequest {
            vote: None,
            prev_log_id: prev.map(|index| pb::LogId { term: 1, index }),
            entries: indexes
                .iter()
                .map(|&index| pb::Entry {
                    term: 1,
                    index,
                    kind: pb::EntryKind::Blank as i32,
                    ..Default::default()
                })
                .collect(),
            group: String::new(),
            leader_commit: None,
        }
    }

    #[test]
    fn append_entries_must_continue_prev_log_id_without_gaps() {
        assert!(append_request_from_pb(request(Some(4), &[5, 6])).is_ok());
        assert!(append_request_from_pb(request(None, &[7, 8])).is_ok());
        for (prev, indexes) in [(Some(4), &[6][..]), (Some(4), &[5, 7]), (None, &[7, 7])] {
            let e = append_request_from_pb(request(prev, indexes)).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
        }
    }

    /// Found writing the `peer_messages` fuzz target (`fuzz/`): the last
    /// index overflowed `index + 1` (a panic with overflow checks, a wrap
    /// to 0 without them).
    #[test]
    fn append_entries_at_the_last_index_are_refused_not_overflowed() {
        for (prev, indexes) in [
            (Some(u64::MAX), &[][..]),
            (Some(u64::MAX - 1), &[u64::MAX]),
            (None, &[u64::MAX]),
        ] {
            let e = append_request_from_pb(request(prev, indexes)).expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        }
    }
}
