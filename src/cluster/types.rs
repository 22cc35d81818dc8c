//! The openraft type configuration.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's Raft id, derived from its name (`--node-id`, by default the
/// hostname) by [`node_id`]: openraft needs a `Copy` id, operators want names.
pub type NodeId = u64;

/// The Raft id of a node name: 64-bit FNV-1a, so every node derives the same
/// id from a name with no coordination. A collision between two names of one
/// cluster is refused at join (the id is already a member with another name).
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the cluster knows of a member: where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name (`--node-id`).
    pub name: String,
    /// Advertised peer address (Raft, join, forwarding).
    pub peer_addr: String,
    /// Advertised client address (what `GetServers` reports).
    pub client_addr: String,
    /// The failure domain (`--failure-domain`: a Kubernetes node or zone);
    /// voters are spread over domains. Empty: none given. Omitted from the
    /// JSON when empty, so memberships written before it existed read the
    /// same and older builds read newer ones (serde skips unknown keys).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (peer={} client={}", self.name, self.peer_addr, self.client_addr)?;
        if !self.domain.is_empty() {
            write!(f, " domain={}", self.domain)?;
        }
        f.write_str(")")
    }
}

/// A batch of records to replicate: `count` records framed as in the
/// storage format (`storage::encode_body`), so the leader encodes a batch
/// once and every replica stores the same bytes. `base_offset` is
/// meaningless when proposing; entries read back from the log carry the
/// offset the log gave the batch's first record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub count: u32,
    pub body: Bytes,
    #[serde(skip)]
    pub base_offset: u64,
    /// A change to the catalog of named logs instead of records (the
    /// default log's group only; `count` is 0): stored as a control batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<super::catalog::CatalogOp>,
}

impl Request {
    pub fn catalog(op: super::catalog::CatalogOp) -> Request {
        Request {
            op: Some(op),
            ..Default::default()
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Some(op) => write!(f, "catalog({op})"),
            None => write!(f, "batch({} records, {} bytes)", self.count, self.body.len()),
        }
    }
}

/// The applied batch's first data offset (for control entries: the next
/// data offset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub offset: u64,
    /// A catalog change: what applying it did (`catalog::Applied`).
    #[serde(default)]
    pub catalog: u8,
}

openraft::declare_raft_types!(
    /// sidelog's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = super::snapshot::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;

pub fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}
