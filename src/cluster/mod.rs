//! One Raft group (openraft) over the node's log: replication, forming and
//! changing the cluster, write forwarding, read index.
//!
//! Writes: on the leader, records queue for the [`proposer`], which packs
//! what arrives while earlier entries are in flight into one Raft entry (a
//! batch); a record is acknowledged once its entry is applied, which is
//! after a quorum fsynced it. A follower forwards writes to the leader
//! through one ordered, bounded queue (see [`forwarder`]): the requests
//! queued while one forward is in flight go together in the next, which the
//! leader writes as one entry, so followers keep per-producer order and
//! batch under load.

mod attach;
pub mod catalog;
mod forwarder;
pub mod host;
pub mod log_store;
pub mod membership;
pub mod network;
mod proposer;
mod service;
pub mod snapshot;
pub mod state_machine;
pub mod store;
pub mod types;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use openraft::{ChangeMembers, ServerState};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use network::{Partition, Peers};
pub use service::{ClusterAdmin, PeerService, default_info as default_log_info, log_info};
pub use types::{NodeId, NodeInfo, Raft};

use crate::{
    node::{LogNode, NodeError, ServerInfo},
    storage::FsyncPolicy,
};

pub use crate::pb::sidelog as pb;

/// How far (in entries) a node's applied index may trail its log before it
/// reports not ready.
const READY_MAX_LAG: u64 = 10_000;

/// The voters a new cluster starts with: at most `voters` of the `seen`
/// nodes (sorted by name), one per failure domain first.
fn initial_voters(seen: Vec<(NodeId, NodeInfo)>, voters: usize) -> BTreeMap<NodeId, NodeInfo> {
    let mut chosen = BTreeMap::new();
    let mut domains = BTreeSet::new();
    for pass in 0..2 {
        for (id, info) in &seen {
            if chosen.len() >= voters.max(1) {
                return chosen;
            }
            let fresh = info.domain.is_empty() || !domains.contains(&info.domain);
            if (pass == 1 || fresh) && !chosen.contains_key(id) {
                domains.insert(info.domain.clone());
                chosen.insert(*id, info.clone());
            }
        }
    }
    chosen
}

/// Refuses to start on data of another cluster: asks the peers discovery
/// finds (briefly; none answering is not an error, they may be starting
/// too) and compares their cluster id with the one in the data dir.
async fn check_same_cluster(config: &ClusterConfig, store: &store::Store, peers: &Peers) -> Result<(), ClusterError> {
    let Some(ours) = store.cluster_id() else { return Ok(()) };
    if !config.discovery.may_find_peers() {
        return Ok(());
    }
    let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(3), config.discovery.peers()).await else {
        return Ok(());
    };
    // Our own address may be listed: we do not answer yet.
    let targets = addrs
        .into_iter()
        .filter(|a| *a != config.info.peer_addr)
        .map(|a| ((), None, a));
    for ((), r) in peers.hello_each(&config.info, targets).await {
        let Some(node) = &r.node else { continue };
        if node.id == config.info.name {
            continue;
        }
        if r.initialized && !r.cluster_id.is_empty() && r.cluster_id != ours {
            return Err(ClusterError::OtherCluster {
                ours,
                theirs: r.cluster_id,
            });
        }
    }
    Ok(())
}

/// Cluster settings (from `Config`, or from tests).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub id: NodeId,
    /// What other nodes dial, and what `GetServers` reports.
    pub info: NodeInfo,
    /// Where peer addresses come from (`--join`, DNS, mDNS); asked again
    /// on every membership attempt.
    pub discovery: crate::discovery::Discovery,
    /// Form a cluster once this many nodes are seen (0: only join).
    pub bootstrap_expect: usize,
    pub fsync: FsyncPolicy,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// How long a write may wait to be committed before UNAVAILABLE.
    pub write_timeout: Duration,
    /// Build a snapshot (metadata only: see `store`) every this many entries.
    pub snapshot_every: u64,
    /// What this node presents to its peers (certificate, cluster secret).
    pub peer_credentials: crate::security::PeerCredentials,
    pub partition: Option<Arc<Partition>>,
    /// `--voters`: how many voters the leader keeps (the rest are non-voters).
    pub voters: usize,
    /// `--standbys`: how many non-voters the leader keeps with a full
    /// replica; sidecars beyond those are attached without a log.
    pub standbys: usize,
    /// `--dead-member-timeout`: a member unheard of this long is replaced.
    pub dead_member_timeout: Duration,
    /// `--force-new-cluster`: before starting, make this node the only
    /// voter of its group (lost-quorum recovery).
    pub force_new_cluster: bool,
    /// Counts automatic membership changes by reason (a metric).
    pub membership_changes: Option<ChangeCounter>,
    /// The Raft group: empty for the default log's (which also holds the
    /// catalog and the membership), `name@incarnation` for a named log's.
    pub group: String,
}

/// Counts membership changes by reason (see `telemetry`).
#[derive(Clone)]
pub struct ChangeCounter(pub Arc<dyn Fn(&'static str) + Send + Sync>);

impl std::fmt::Debug for ChangeCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeCounter")
    }
}

impl std::ops::Deref for ChangeCounter {
    type Target = dyn Fn(&'static str) + Send + Sync;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// The default `--dead-member-timeout`: long enough that a restart (seconds)
/// or a rescheduled pod's image pull and start (tens of seconds) are not
/// taken for a death, short enough that the group is back to full fault
/// tolerance within a minute of a node loss (Consul's autopilot waits for
/// its serf failure detection, typically 30-60 s; so do we).
pub const DEFAULT_DEAD_MEMBER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a join may wait for the leader (adding a non-voter commits a
/// membership change).
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The default `--standbys`: two non-voters with a full replica, so a dead
/// voter is replaced by a caught-up standby at once, and a second death
/// soon after still finds one. More cost the leader a replication stream
/// each; sidecars beyond voters and standbys hold no log (see `attach`).
pub const DEFAULT_STANDBYS: usize = 2;

/// The peer protocol level this build speaks (`HelloResponse.protocol`):
/// 1 = pre-vote, membership upkeep, cluster ids; 2 = sidecars attached
/// without a log (`Read`, `JoinRequest.may_attach`); 3 = named logs (catalog
/// entries, `group` on every group's call; see `host`). Builds before 1
/// answer 0 and know none of it.
pub const PEER_PROTOCOL: u32 = 3;

/// `fut` if it finishes within `d`. A request's `set_timeout` only tells
/// the server (grpc-timeout): a peer whose port accepts connections but
/// never answers (bound, not serving yet; stopped) would hold a client
/// call forever.
pub(crate) async fn within<T>(d: Duration, fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(d, fut).await.ok()
}

/// A new cluster's id: 128 random bits, hex.
pub fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl ClusterConfig {
    /// `info.name` is the node's name; its Raft id derives from it.
    pub fn new(info: NodeInfo) -> Self {
        ClusterConfig {
            id: types::node_id(&info.name),
            info,
            discovery: Default::default(),
            bootstrap_expect: 1,
            fsync: FsyncPolicy::Always,
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            write_timeout: Duration::from_secs(10),
            snapshot_every: 100_000,
            peer_credentials: Default::default(),
            partition: None,
            voters: 3,
            standbys: DEFAULT_STANDBYS,
            dead_member_timeout: DEFAULT_DEAD_MEMBER_TIMEOUT,
            force_new_cluster: false,
            membership_changes: None,
            group: String::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("Raft storage: {0}")]
    Storage(#[from] types::StorageError),
    #[error("Raft stopped: {0}")]
    Fatal(String),
    #[error(
        "the data directory belongs to cluster {ours}, but the peers found belong to cluster {theirs}: start with \
         an empty --data-dir to join them, or point --join at this data's own cluster"
    )]
    OtherCluster { ours: String, theirs: String },
}

/// A node of the cluster.
pub struct Cluster {
    config: ClusterConfig,
    raft: Raft,
    store: Arc<store::Store>,
    node: Arc<LogNode>,
    peers: Peers,
    /// Every write of this node, in order, for the dispatcher (`proposer`).
    proposals: mpsc::Sender<proposer::Proposal>,
    shutdown: CancellationToken,
    /// This node found it is no longer a member (see `membership`).
    removed: AtomicBool,
    /// A graceful leave is under way: do not rejoin.
    leaving: AtomicBool,
    /// The membership loops, awaited on shutdown.
    loops: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// One membership change at a time from this node (upkeep, joins,
    /// removes): each is computed from the membership it sees.
    change_lock: tokio::sync::Mutex<()>,
    /// The leader's view of each member's (version, peer protocol).
    builds: std::sync::Mutex<std::collections::HashMap<NodeId, (String, u32)>>,
    /// This node is attached without a log: what the leader last said.
    attachment: std::sync::Mutex<Option<attach::Attachment>>,
    /// The leader's table of attached sidecars: info and last heartbeat.
    attached: std::sync::Mutex<std::collections::HashMap<NodeId, (NodeInfo, std::time::Instant)>>,
    /// Another node answered with this node's name (its peer address).
    name_clash: std::sync::Mutex<Option<String>>,
    /// The default log's group: the catalog of named logs it applies.
    catalog: Option<Arc<catalog::CatalogStore>>,
    /// A named log's group: the default group, whose membership it follows
    /// (see `host`).
    follows: Option<Raft>,
    /// The log was deleted (or created again): no more writes are taken.
    closed: AtomicBool,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(msg: impl Into<String>) -> NodeError {
    NodeError::Unavailable(msg.into())
}

impl Cluster {
    /// Opens the Raft state beside the node's log and starts Raft. The
    /// cluster forms (or is joined) by [`Cluster::spawn_membership`], once
    /// the peer service listens.
    pub async fn start(config: ClusterConfig, node: Arc<LogNode>) -> Result<Arc<Cluster>, ClusterError> {
        let dir = node.log().dir().to_owned();
        let catalog = catalog::CatalogStore::open(&dir).map_err(|e| ClusterError::Config(e.to_string()))?;
        let peers = Peers::new(
            config.id.clone(),
            config.peer_credentials.clone(),
            config.partition.clone(),
        );
        Self::start_group(config, node, peers, Some(Arc::new(catalog)), None).await
    }

    /// Starts one Raft group over `node`'s log: the default log's (with the
    /// catalog; it runs the membership) or a named log's (following the
    /// default group's membership, `follows`), sharing `peers`'
    /// connections.
    pub(crate) async fn start_group(
        config: ClusterConfig,
        node: Arc<LogNode>,
        peers: Peers,
        catalog: Option<Arc<catalog::CatalogStore>>,
        follows: Option<Raft>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let dir = node.log().dir().to_owned();
        let store = store::Store::open(node.clone(), &dir, config.fsync)?;
        if follows.is_none() {
            check_same_cluster(&config, &store, &peers).await?;
        }
        if config.force_new_cluster
            && store.force_single_voter(config.id, &config.info, &new_cluster_id())?
            && let Some(count) = &config.membership_changes
        {
            count("force_new_cluster");
        }
        let raft_config = openraft::Config {
            cluster_name: "sidelog".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            // openraft's election timer is off (`enable_elect` below): these
            // only set its leader lease (= the max), during which a voter
            // refuses any Vote. It must end before our pre-vote lets a
            // candidate through (no leader heard for `election_timeout.0`),
            // or the first candidate would always lose the real vote.
            election_timeout_min: (config.election_timeout.0.as_millis() as u64 * 3 / 5)
                .max(config.heartbeat.as_millis() as u64 + 1),
            election_timeout_max: (config.election_timeout.0.as_millis() as u64 * 4 / 5)
                .max(config.heartbeat.as_millis() as u64 + 2),
            // Bytes per AppendEntries are bounded separately (see
            // `log_store::REPLICATION_BUDGET`); this bounds the count.
            max_payload_entries: 1024,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            // Records are deleted by retention only (see `store`); openraft
            // purges only what retention asks for.
            max_in_snapshot_log_to_keep: u64::MAX,
            install_snapshot_timeout: 60_000,
            // Elections are ours: a pre-vote first (see `membership`).
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let raft = Raft::new(
            config.id.clone(),
            Arc::new(raft_config),
            network::NetworkFactory::new(
                peers.clone(),
                config.info.clone(),
                config.group.clone(),
                catalog.clone(),
            ),
            log_store::LogStore::new(store.clone()),
            state_machine::StateMachine::with_catalog(store.clone(), catalog.clone()),
        )
        .await
        .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let (proposals, proposal_queue) = mpsc::channel(proposer::QUEUE);
        let shutdown = CancellationToken::new();
        let cluster = Arc::new(Cluster {
            config,
            raft,
            store,
            node,
            peers,
            proposals,
            shutdown,
            removed: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            loops: Default::default(),
            change_lock: Default::default(),
            builds: Default::default(),
            attachment: Default::default(),
            attached: Default::default(),
            name_clash: Default::default(),
            catalog,
            follows,
            closed: AtomicBool::new(false),
        });
        membership::spawn_loops(&cluster);
        tokio::spawn(proposer::run(
            Arc::downgrade(&cluster),
            cluster.raft.clone(),
            cluster.store.append_trace.clone(),
            proposal_queue,
            cluster.shutdown.clone(),
        ));
        Ok(cluster)
    }

    /// How long a write may wait to be committed.
    pub fn write_timeout(&self) -> Duration {
        self.config.write_timeout
    }

    pub fn id(&self) -> &NodeId {
        &self.config.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn node(&self) -> &Arc<LogNode> {
        &self.node
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub fn metrics(&self) -> types::RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        if let Some(l) = self.attached_leader() {
            return Some(l);
        }
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    /// Whether the discovery source can name peers at all (not an empty
    /// static list).
    pub fn discovers_peers(&self) -> bool {
        self.config.discovery.may_find_peers()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.as_ref() == Some(&self.config.id)
    }

    /// Waits until some leader is known, up to `timeout`.
    async fn wait_leader(&self, timeout: Duration) -> Option<(NodeId, NodeInfo)> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            // An attached sidecar learns its leader from heartbeats, not
            // from Raft: look again now and then too.
            let poll = tokio::time::Instant::now() + Duration::from_millis(100);
            let changed = tokio::time::timeout_at(deadline.min(poll), rx.changed()).await;
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            if matches!(changed, Ok(Err(_))) {
                return None;
            }
        }
    }

    /// Produces `values` in order, atomically (one Raft entry: all or
    /// none); returns their offsets once committed.
    pub async fn produce(&self, values: &[Bytes]) -> Result<Vec<u64>, NodeError> {
        if values.is_empty() {
            return Err(NodeError::InvalidArgument("no records to produce".into()));
        }
        for v in values {
            self.node.check_size(v)?;
        }
        let n = values.len() as u64;
        let first = self.propose(values.to_vec(), false).await?.await?;
        Ok((first..first + n).collect())
    }

    /// Queues one record; the returned future resolves to its offset once it
    /// is committed. Records submitted one after another (each submit
    /// awaited before the next) are committed in that order.
    pub async fn submit(
        &self,
        value: Bytes,
    ) -> Result<impl Future<Output = Result<u64, NodeError>> + Send + 'static, NodeError> {
        self.node.check_size(&value)?;
        self.propose(vec![value], false).await
    }

    /// Queues records to be written together (one entry, in order, all or
    /// none); the returned future resolves to the first one's offset once
    /// they are committed. Ordering across calls is as for [`Self::submit`].
    pub async fn submit_many(
        &self,
        values: Vec<Bytes>,
    ) -> Result<impl Future<Output = Result<u64, NodeError>> + Send + 'static, NodeError> {
        for v in &values {
            self.node.check_size(v)?;
        }
        self.propose(values, false).await
    }

    /// Queues records for the dispatcher, which proposes them (leader) or
    /// forwards them (follower); `local_only` refuses to forward. Waits
    /// while the queue is full (backpressure), at most the write timeout.
    /// The returned future resolves to the first record's offset; once it
    /// is dropped or times out, the records are not proposed or forwarded
    /// if they have not been yet.
    async fn propose(
        &self,
        values: Vec<Bytes>,
        local_only: bool,
    ) -> Result<impl Future<Output = Result<u64, NodeError>> + Send + 'static, NodeError> {
        use tracing::Instrument;
        if self.closed.load(Ordering::Acquire) {
            return Err(NodeError::NotFound("the log was deleted; nothing was written".into()));
        }
        let timeout = self.config.write_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let leader = self.is_leader();
        // Spans only under a request span: a stream's records would
        // otherwise each start a trace of their own.
        let traced = !tracing::Span::current().is_none();
        let span = |name: &'static str| {
            if traced {
                tracing::debug_span!("raft", otel.name = name, leader)
            } else {
                tracing::Span::none()
            }
        };
        let commit_span = span("raft.commit");
        // `raft.propose` covers the wait for room in the queue (backpressure).
        let proposal = proposer::Proposal {
            values,
            reply: tx,
            local_only,
            span: if traced {
                tracing::Span::current()
            } else {
                tracing::Span::none()
            },
        };
        let queued = self.proposals.send(proposal).instrument(span("raft.propose"));
        match tokio::time::timeout_at(deadline, queued).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(NodeError::ShuttingDown),
            Err(_) => {
                return Err(unavailable(format!(
                    "the write queue stayed full for {timeout:?} (the node is overloaded or has no leader): retry \
                     later; nothing was written"
                )));
            }
        }
        Ok(async move {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(NodeError::Unknown(
                    "the node shut down before the records were committed; they may still be".into(),
                )),
                Err(_) => Err(NodeError::Unknown(format!(
                    "the records were not committed within {timeout:?} (no quorum?); they may still be"
                ))),
            }
        }
        .instrument(commit_span))
    }

    /// True when the leader advertises the same client address as this
    /// node, as sidecars that each serve their own pod on `127.0.0.1:8400`
    /// do: a client redirected there would reach this node again, so a
    /// leader-only write is forwarded instead of refused.
    pub fn leader_shares_our_client_addr(&self) -> bool {
        self.leader()
            .is_some_and(|(_, info)| info.client_addr == self.config.info.client_addr)
    }

    /// Not-the-leader, naming the leader's client address if one is known.
    pub fn not_leader(&self) -> NodeError {
        NodeError::NotLeader {
            leader: self.leader().map(|(_, info)| info.client_addr),
        }
    }

    /// Writes forwarded by a follower: written here as one entry, or
    /// refused when this node does not lead (never forwarded again).
    async fn produce_as_leader(&self, values: Vec<Bytes>) -> Result<Vec<u64>, NodeError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if values.is_empty() {
            return Err(NodeError::InvalidArgument("no records to produce".into()));
        }
        for v in &values {
            self.node.check_size(v)?;
        }
        let n = values.len() as u64;
        let first = self.propose(values, true).await?.await?;
        Ok((first..first + n).collect())
    }

    /// A failed `client_write` (a catalog change) as a node error.
    pub(crate) fn client_write_error(
        &self,
        e: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, NodeInfo>>,
    ) -> NodeError {
        use openraft::error::{ClientWriteError, RaftError};
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => NodeError::Unknown(
                "leadership moved before the catalog change was committed; it may or may not have been made".into(),
            ),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => unavailable(e.to_string()),
            RaftError::Fatal(e) => NodeError::Unknown(format!("raft stopped: {e}")),
        }
    }

    /// Takes no more writes: the log was deleted (see `host`).
    pub(crate) fn close_writes(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// This node is in its group's membership.
    pub fn is_member(&self) -> bool {
        self.metrics()
            .membership_config
            .membership()
            .get_node(&self.config.id)
            .is_some()
    }

    /// Cancelled once this group stops (shutdown, or its log deleted).
    pub fn stopped(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The Raft group's id (empty: the default log's).
    pub fn group_id(&self) -> &str {
        &self.config.group
    }

    /// Every member, with its advertised client address.
    pub fn servers(&self) -> Vec<ServerInfo> {
        if let Some(list) = self.attached_servers() {
            return list;
        }
        let m = self.metrics();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, info)| ServerInfo {
                id: info.name.clone(),
                rpc_addr: info.client_addr.clone(),
                is_leader: m.current_leader.as_ref() == Some(id),
            })
            .collect()
    }

    /// Ready: a member of a cluster (not found removed) with a known
    /// leader that it heard from lately, or a leader that reaches a quorum;
    /// applied state not far behind the log; storage healthy.
    pub fn is_ready(&self) -> bool {
        if self.attached_leader().is_some() {
            return self.attached_ready() && self.node.is_ready();
        }
        let m = self.metrics();
        let member = m.membership_config.membership().get_node(&self.config.id).is_some();
        let lag = m
            .last_log_index
            .unwrap_or(0)
            .saturating_sub(m.last_applied.map_or(0, |l| l.index));
        let window = self.leader_contact_window();
        let led = if m.state == ServerState::Leader {
            self.reaches_quorum(window)
        } else {
            m.current_leader.is_some() && self.peers.contacts().since_leader() < window
        };
        member && !self.removed.load(Ordering::Acquire) && led && lag <= READY_MAX_LAG && self.node.is_ready()
    }

    /// How long a follower may go without hearing from its leader (and a
    /// leader without a quorum's answers) and still call itself ready.
    fn leader_contact_window(&self) -> Duration {
        (self.config.election_timeout.1 * 3).max(Duration::from_secs(3))
    }

    /// The lowest peer protocol among the members, as the leader last
    /// heard (0 for a member whose build is not known or predates
    /// protocols): a feature every member must understand is switched on
    /// only once this reaches its level (as Kafka's `metadata.version`).
    pub fn cluster_protocol(&self) -> u32 {
        let m = self.metrics();
        let builds = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| {
                if *id == self.config.id {
                    PEER_PROTOCOL
                } else {
                    builds.get(id).map_or(0, |b| b.1)
                }
            })
            .min()
            .unwrap_or(PEER_PROTOCOL)
    }

    /// This node found it was removed from the membership and is rejoining.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Waits until this node has applied everything the leader had
    /// committed when asked: a following local read is linearizable.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        if self.is_leader() {
            // Waits until the read index is applied here.
            self.raft
                .ensure_linearizable()
                .await
                .map_err(|e| unavailable(format!("read index: {e}")))?;
            return Ok(());
        }
        let (leader, info) = self
            .wait_leader(self.config.write_timeout)
            .await
            .ok_or_else(|| unavailable("no leader known for a linearizable read"))?;
        let mut client = self
            .peers
            .client(Some(&leader), &info.peer_addr)
            .map_err(|e| unavailable(e.to_string()))?;
        let mut req = tonic::Request::new(pb::ReadIndexRequest {
            group: self.config.group.clone(),
        });
        crate::trace_context::inject(&mut req);
        let index = client
            .read_index(req)
            .await
            .map_err(|s| unavailable(format!("read index from the leader: {}", s.message())))?
            .into_inner()
            .index;
        self.raft
            .wait(Some(self.config.write_timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|e| unavailable(format!("catching up to the read index: {e}")))?;
        Ok(())
    }

    /// The leader's read index (for a follower's linearizable read).
    async fn read_index(&self) -> Result<u64, NodeError> {
        let read = self
            .raft
            .ensure_linearizable()
            .await
            .map_err(|e| unavailable(format!("read index: {e}")))?;
        Ok(read.map_or(0, |l| l.index))
    }

    /// Adds a node as a non-voter; the upkeep loop (see `membership`)
    /// promotes it once it is caught up if the group has fewer voters than
    /// `--voters`. Must run on the leader.
    async fn add_member(&self, id: NodeId, info: NodeInfo) -> Result<(), NodeError> {
        let _one_change = self.change_lock.lock().await;
        self.add_member_locked(id, info).await
    }

    /// [`Self::add_member`], with the change lock held by the caller.
    async fn add_member_locked(&self, id: NodeId, info: NodeInfo) -> Result<(), NodeError> {
        // The upkeep must not take a node that has not answered its first
        // AppendEntries yet for a dead one (see `Contacts::joined`).
        self.peers.contacts().joined(id);
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if let Some(known) = membership.get_node(&id) {
            if *known == info {
                return Ok(());
            }
            if known.name != info.name {
                return Err(NodeError::InvalidArgument(format!(
                    "node names {} and {} map to the same id; rename one",
                    known.name, info.name
                )));
            }
            if membership.voter_ids().any(|v| v == id) {
                return Err(NodeError::InvalidArgument(format!(
                    "a voter named {} already exists at {}; remove it first",
                    info.name, known.peer_addr
                )));
            }
            // A non-voter back at a new address: replace its entry.
            tracing::info!(node = %info, "a non-voter rejoins at a new address");
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|e| unavailable(self.in_names(format!("replacing non-voter {}: {e}", info.name))))?;
        }
        tracing::info!(node = %info, "adding a non-voter");
        self.raft
            // Not blocking until it caught up: the change lock would stall
            // every other change meanwhile; the upkeep promotes it only
            // once it is caught up, and it is ready only then.
            .add_learner(id, info.clone(), false)
            .await
            .map_err(|e| unavailable(self.in_names(format!("adding non-voter {}: {e}", info.name))))?;
        Ok(())
    }

    /// `text` (an openraft error, which names nodes by their numeric Raft
    /// ids) with every member's id replaced by its name: users know names.
    fn in_names(&self, text: String) -> String {
        let m = self.metrics();
        m.membership_config
            .membership()
            .nodes()
            .fold(text, |t, (id, info)| t.replace(&id.to_string(), &info.name))
    }

    /// Removes a member (voter or learner). A voter is replaced by the
    /// best caught-up non-voter in the same change when there is one, so
    /// the group keeps its fault tolerance. Must run on the leader.
    async fn remove_member(&self, id: NodeId, name: &str) -> Result<(), NodeError> {
        let _one_change = self.change_lock.lock().await;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let Some(info) = membership.get_node(&id).cloned() else {
            return Err(NodeError::NotFound(format!("no member named {name}")));
        };
        // The configuration being moved to (the last of a joint one).
        let voters: BTreeSet<NodeId> = membership.get_joint_config().last().cloned().unwrap_or_default();
        let change = if voters.contains(&id) {
            // The last voter may go when a caught-up non-voter takes its
            // place (`without` says when nobody can).
            let views = self.member_views_now();
            let next =
                membership::without(self.config.id, &views, m.last_log_index.unwrap_or(0), id).ok_or_else(|| {
                    NodeError::Unavailable(format!(
                        "removing voter {} now would leave too few live voters to commit the change (the last \
                         voter needs a caught-up non-voter to take its place): nothing was changed",
                        info.name
                    ))
                })?;
            ChangeMembers::ReplaceAllVoters(next)
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tracing::info!(node = %info, ?change, "removing a member");
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| unavailable(self.in_names(format!("removing {}: {e}", info.name))))?;
        self.tell_removed(&info).await;
        Ok(())
    }

    /// Tells a removed member at once, so it stops serving reads and
    /// rejoins as a non-voter instead of waiting to notice.
    async fn tell_removed(&self, info: &NodeInfo) {
        if info.name == self.config.info.name {
            return;
        }
        let Ok(mut client) = self.peers.client(Some(&types::node_id(&info.name)), &info.peer_addr) else {
            return;
        };
        let mut req = tonic::Request::new(pb::HelloRequest {
            node: Some(network::node_info_to_pb(&self.config.info)),
            evicted: true,
        });
        req.set_timeout(Duration::from_secs(1));
        let _ = within(Duration::from_secs(1), client.hello(req)).await;
    }

    /// [`membership::MemberView`]s as the leader sees them now.
    fn member_views_now(&self) -> Vec<membership::MemberView> {
        self.member_views_since(std::time::Instant::now() - self.config.dead_member_timeout)
    }

    /// Removes the member named `name`, on the leader (forwarded if needed).
    pub async fn remove(&self, name: &str) -> Result<(), NodeError> {
        let id = types::node_id(name);
        if self.is_leader() {
            if self.detach(name) {
                // An attached sidecar (no log, not a member): forgotten
                // until its next heartbeat.
                return Ok(());
            }
            return self.remove_member(id, name).await;
        }
        let (leader, info) = self
            .wait_leader(self.config.write_timeout)
            .await
            .ok_or_else(|| unavailable("no leader known"))?;
        let mut client = self
            .peers
            .client(Some(&leader), &info.peer_addr)
            .map_err(|e| unavailable(e.to_string()))?;
        client
            .leave(pb::LeaveRequest { id: name.to_owned() })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => NodeError::NotFound(s.message().to_owned()),
                tonic::Code::InvalidArgument => NodeError::InvalidArgument(s.message().to_owned()),
                _ => unavailable(format!("leader {leader}: {}", s.message())),
            })?;
        Ok(())
    }

    /// Graceful leave (SIGTERM with `--leave-on-terminate`): removes this
    /// node from the membership (a voter is replaced by a caught-up
    /// non-voter in the same change when one exists). A leader removes
    /// itself and steps down once that is committed. A lone node has nobody
    /// to hand over to and stays. Done once this node is out of the
    /// membership, however that is learned (the leader's answer may be
    /// lost when the leader itself is the one leaving).
    pub async fn leave(&self, timeout: Duration) {
        if self.is_attached() {
            self.detach_on_stop().await;
            return;
        }
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&self.config.id).is_none() {
            return;
        }
        if membership.nodes().count() <= 1 {
            return;
        }
        self.leaving.store(true, Ordering::Release);
        tracing::info!("leaving the cluster");
        let me = self.config.id;
        // Out once a membership without this node is committed (applied
        // here), not merely appended: a leader that stopped right after
        // appending it might leave the group without it.
        let out = async {
            let _ = self
                .raft
                .wait(None)
                .metrics(
                    |m| {
                        m.membership_config.membership().get_node(&me).is_none()
                            && m.membership_config
                                .log_id()
                                .is_some_and(|l| m.last_applied.is_some_and(|a| a >= l))
                    },
                    "left",
                )
                .await;
        };
        let remove = async {
            // A leader that is busy changing the membership refuses a
            // second change: try again until the deadline.
            loop {
                match self.remove(&self.config.info.name).await {
                    Ok(()) => return Ok(()),
                    Err(NodeError::NotFound(_)) => return Ok(()),
                    Err(e @ NodeError::InvalidArgument(_)) => return Err(e),
                    Err(e) => {
                        tracing::debug!(cause = %e, "leave not done yet");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        };
        let done = tokio::time::timeout(timeout, async {
            tokio::select! {
                r = remove => r,
                _ = out => Ok(()),
            }
        })
        .await;
        match done {
            Ok(Ok(())) => tracing::info!("left the cluster"),
            Ok(Err(e)) => tracing::warn!(cause = %e, "graceful leave failed; the node stays a member"),
            Err(_) => tracing::warn!("graceful leave timed out; the node stays a member"),
        }
    }

    /// Forms or joins the cluster in the background (DESIGN decision 8).
    pub fn spawn_membership(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let token = this.shutdown.clone();
            tokio::select! {
                _ = this.form_or_join() => {}
                _ = token.cancelled() => {}
            }
        })
    }

    async fn form_or_join(&self) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.membership_step().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::info!(cause = %e, "cluster not formed yet"),
            }
            if self.is_attached() {
                // Attached without a log: the joins go on as heartbeats.
                delay = attach::HEARTBEAT;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// One attempt; true once this node is a member (or nothing more can be done).
    async fn membership_step(&self) -> Result<bool, String> {
        let initialized = self.raft.is_initialized().await.map_err(|e| e.to_string())?;
        let is_member = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&self.config.id)
            .is_some();
        if initialized && is_member {
            return Ok(true);
        }
        if self.heartbeat().await {
            // Attached (the joins go on as heartbeats), or told it is a
            // member: done once Raft has it (the first check above).
            return Ok(false);
        }
        let discovery = &self.config.discovery;
        if !discovery.may_find_peers() {
            if initialized {
                // Removed from its cluster and given nobody to rejoin through.
                tracing::warn!("this node is not a member of its cluster and has no --join peers");
                return Ok(true);
            }
            if self.config.bootstrap_expect <= 1 {
                self.initialize(BTreeMap::from([(self.config.id.clone(), self.config.info.clone())]))
                    .await?;
                return Ok(true);
            }
            return Err("--bootstrap-expect is above 1 but no --join peers are given".into());
        }
        let addrs = discovery.peers().await.map_err(|e| e.to_string())?;
        let (seen, leader) = self.hello_all(&addrs).await;
        if let Some((lid, linfo)) = leader {
            if lid == self.config.id {
                return Ok(true);
            }
            self.join_via(lid, &linfo, JOIN_TIMEOUT).await?;
            // Done once Raft has this node as a member (the first check);
            // attached, the joins go on as heartbeats.
            return Ok(false);
        }
        // A node that belonged to a cluster (it holds its id, or was
        // attached to it) never bootstraps another one.
        if initialized
            || self.config.bootstrap_expect == 0
            || self.store.cluster_id().is_some()
            || self.attachment().is_some()
        {
            return Err("no reachable member knows a leader".into());
        }
        if seen.len() < self.config.bootstrap_expect {
            let clash = lock(&self.name_clash).clone().map_or_else(String::new, |addr| {
                format!(
                    " (the node at {addr} has this node's name {}: give every node its own --node-id)",
                    self.config.info.name
                )
            });
            return Err(format!(
                "waiting for {} nodes to bootstrap, seen {}{clash}",
                self.config.bootstrap_expect,
                seen.len()
            ));
        }
        // Every node computes the same set, so exactly one of them (the
        // lowest name) initializes; the rest are brought in by its leader.
        let mut by_name: Vec<(NodeId, NodeInfo)> = seen.into_iter().collect();
        by_name.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        by_name.truncate(self.config.bootstrap_expect);
        let lowest = by_name.first().map(|n| n.0);
        if lowest == Some(self.config.id) {
            // The rest join as non-voters once the leader exists.
            let members = initial_voters(by_name, self.config.voters);
            self.initialize(members).await?;
            return Ok(true);
        }
        Err("waiting for the lowest id to bootstrap the cluster".into())
    }

    /// Asks the leader `lid` to add this node (as a non-voter), and records
    /// the cluster id it answers with.
    async fn join_via(&self, lid: NodeId, linfo: &NodeInfo, timeout: Duration) -> Result<(), String> {
        if !self.is_attached() {
            tracing::info!(leader = %linfo.name, "joining the cluster");
        }
        let mut client = self
            .peers
            .client(Some(&lid), &linfo.peer_addr)
            .map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(pb::JoinRequest {
            node: Some(network::node_info_to_pb(&self.config.info)),
            cluster_id: self.store.cluster_id().unwrap_or_default(),
            may_attach: true,
        });
        req.set_timeout(timeout);
        let resp = within(timeout, client.join(req))
            .await
            .ok_or_else(|| format!("join via {}: no answer within {timeout:?}", linfo.name))?
            .map_err(|s| format!("join via {}: {}", linfo.name, s.message()))?
            .into_inner();
        if !resp.cluster_id.is_empty() && self.store.cluster_id().is_none() {
            self.adopt_cluster_id(&resp.cluster_id);
        }
        if !resp.attached && !self.is_attached() {
            tracing::info!("joined the cluster");
        }
        self.set_attachment(&resp);
        Ok(())
    }

    /// Says hello to every address: the uninitialized nodes seen (this one
    /// included), and a leader if some reachable node is in a cluster.
    async fn hello_all(&self, addrs: &[String]) -> (BTreeMap<NodeId, NodeInfo>, Option<(NodeId, NodeInfo)>) {
        let mut seen = BTreeMap::from([(self.config.id.clone(), self.config.info.clone())]);
        let mut leader = None;
        // Found again below while it lasts; warned about once.
        let clashed_before = lock(&self.name_clash).take().is_some();
        let targets = addrs.iter().map(|a| ((), None, a.clone()));
        for ((), r) in self.peers.hello_each(&self.config.info, targets).await {
            let Some(node) = r.node else { continue };
            let (id, info) = network::node_info_from_pb(node);
            if self.peers.partition().is_some_and(|p| p.is_cut(&self.config.id, &id)) {
                continue;
            }
            if id == self.config.id && info.peer_addr != self.config.info.peer_addr {
                // Not ourselves: a second node with our name, which no
                // count of nodes would ever include.
                if !clashed_before {
                    tracing::warn!(other = %info.peer_addr, name = %info.name,
                        "another node answers with this node's name: give every node its own --node-id");
                }
                *lock(&self.name_clash) = Some(info.peer_addr.clone());
            }
            if r.initialized {
                if let Some(l) = r.leader {
                    leader = Some(network::node_info_from_pb(l));
                }
            } else if id != self.config.id {
                seen.insert(id, info);
            }
        }
        (seen, leader)
    }

    async fn initialize(&self, members: BTreeMap<NodeId, NodeInfo>) -> Result<(), String> {
        let names: Vec<&str> = members.values().map(|n| n.name.as_str()).collect();
        if self.store.cluster_id().is_none() {
            self.adopt_cluster_id(&new_cluster_id());
        }
        tracing::info!(voters = ?names, cluster_id = ?self.store.cluster_id(), "bootstrapping the cluster");
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Cluster state for `sidelog cluster status`.
    pub fn status(&self) -> pb::StatusResponse {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let commit = m.last_applied.map(|l| l.index);
        let leads = m.state == ServerState::Leader;
        let contacts = self.peers.contacts();
        let builds = self.builds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let members = membership
            .nodes()
            .map(|(id, info)| {
                let matched = replication.get(id).map(|l| l.map_or(0, |l| l.index + 1));
                let last_contact_ms = (leads && *id != self.config.id)
                    .then(|| contacts.last_answer(id).map(|t| t.elapsed().as_millis() as u64))
                    .flatten();
                let (version, protocol) = if *id == self.config.id {
                    (crate::version().to_owned(), PEER_PROTOCOL)
                } else {
                    builds.get(id).cloned().unwrap_or_default()
                };
                pb::Member {
                    version,
                    protocol,
                    last_contact_ms,
                    failure_domain: info.domain.clone(),
                    id: info.name.clone(),
                    peer_addr: info.peer_addr.clone(),
                    client_addr: info.client_addr.clone(),
                    voter: voters.contains(id),
                    leader: m.current_leader.as_ref() == Some(id),
                    matched_index: matched.map(|n| n.saturating_sub(1)),
                    lag: matched.map(|n| m.last_log_index.map_or(0, |l| l + 1).saturating_sub(n)),
                }
            })
            .collect();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        pb::StatusResponse {
            id: self.config.info.name.clone(),
            state: state.into(),
            term: m.current_term,
            leader: m
                .current_leader
                .and_then(|l| membership.get_node(&l))
                .map(|n| n.name.clone()),
            last_log_index: m.last_log_index,
            commit_index: commit,
            applied_index: m.last_applied.map(|l| l.index),
            members,
            first_offset: self.node.log().first_offset(),
            next_offset: self.node.committed(),
            cluster_id: self.store.cluster_id().unwrap_or_default(),
            voters_target: self.config.voters as u32,
            removed: self.is_removed(),
            version: crate::version().to_owned(),
            protocol: PEER_PROTOCOL,
            cluster_protocol: if leads { self.cluster_protocol() } else { 0 },
            attached: self.attached_status(),
            attached_here: self.attached_leader().is_some(),
            home: self
                .attached_leader()
                .and_then(|_| self.attachment())
                .map(|a| a.home.1.name)
                .unwrap_or_default(),
        }
    }

    /// Lets retention delete sealed segments wholly below `index`: snapshots
    /// and purges up to there first, so Raft never needs the deleted entries.
    pub async fn retain_from(&self, index: u64) -> Result<(), String> {
        if index == 0 {
            return Ok(());
        }
        let upto = index - 1;
        let applied = self.metrics().last_applied.map(|l| l.index);
        if applied.is_none_or(|a| a < upto) {
            return Ok(());
        }
        self.store.set_retention_floor(index);
        let snap = self
            .store
            .current_snapshot()
            .and_then(|m| m.last_log_id)
            .map(|l| l.index);
        if snap.is_none_or(|s| s < upto) {
            self.raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
            let _ = self
                .raft
                .wait(Some(Duration::from_secs(30)))
                .snapshot(self.metrics().last_applied.unwrap_or_default(), "retention snapshot")
                .await;
        }
        self.raft.trigger().purge_log(upto).await.map_err(|e| e.to_string())?;
        // The purge runs in the Raft core, after this returns: wait for it
        // (bounded) so that the caller can delete what it frees right away.
        // A purge that takes longer is picked up by the next retention pass.
        let _ = self
            .raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "retention purge")
            .await;
        Ok(())
    }

    /// Applies a retention policy: lets Raft forget the entries first (see
    /// [`Cluster::retain_from`]), then deletes the sealed segments.
    pub async fn apply_retention(&self, policy: &crate::storage::Retention) -> Result<(), String> {
        let log = self.node.log().clone();
        let p = policy.clone();
        let cut = tokio::task::spawn_blocking(move || log.retention_cut(&p))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(cut) = cut {
            self.retain_from(cut).await?;
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.remove_purged())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Stops Raft (after a graceful leave, if wanted).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let loops: Vec<_> = self.loops.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for l in loops {
            let _ = l.await;
        }
        self.config.discovery.close();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(cause = %e, "raft shutdown");
        }
    }
}
