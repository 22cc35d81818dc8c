//! The read side of a node's log: a [`storage::Log`] plus the *commit
//! watermark*, the data offset below which records may be shown to
//! consumers. The Raft state machine (`cluster::store`) moves the watermark
//! as it applies entries, so consumers only ever see records a quorum has
//! made durable. Tail-following readers wait on it. Nothing assumes one log
//! per process: a process may hold several `LogNode`s.

use std::sync::Arc;

use tokio::sync::watch;

use crate::storage::{self, Log, Record};

/// Errors a client can be told about.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("offset {offset} is out of range: the log holds offsets [{first}, {next})")]
    OutOfRange { offset: u64, first: u64, next: u64 },
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: u64 },
    #[error("{0}")]
    InvalidArgument(String),
    /// Refused before anything was written (no leader, a full queue, a
    /// read that cannot be served here): safe to retry.
    #[error("{0}")]
    Unavailable(String),
    /// A write whose outcome is not known: it may be committed or not (the
    /// leader changed or stopped after taking it, no quorum answered in
    /// time). Retry only a write that is idempotent.
    #[error("{0}")]
    Unknown(String),
    /// This node is stopping and took nothing: safe to retry elsewhere.
    #[error("the node is shutting down; nothing was written")]
    ShuttingDown,
    /// The caller asked not to be forwarded and this node does not lead:
    /// `leader` is the leader's client address, if one is known.
    #[error("not the leader{}", leader.as_ref().map_or(" (no leader known yet)".to_owned(), |l| format!("; the leader is at {l}")))]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    NotFound(String),
    /// A named log that exists already (creating it again).
    #[error("{0}")]
    AlreadyExists(String),
    /// A bound is reached (`--max-logs`) or the cluster cannot do this yet
    /// (a member runs an older build): nothing changed.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

impl NodeError {
    /// The same error for another caller of one failed write (each
    /// proposal of a batch gets one): same message, same outcome.
    pub fn same_outcome(&self) -> NodeError {
        match self {
            NodeError::ShuttingDown => NodeError::ShuttingDown,
            NodeError::NotLeader { leader } => NodeError::NotLeader { leader: leader.clone() },
            NodeError::TooLarge { len, max } => NodeError::TooLarge { len: *len, max: *max },
            NodeError::InvalidArgument(m) => NodeError::InvalidArgument(m.clone()),
            NodeError::NotFound(m) => NodeError::NotFound(m.clone()),
            NodeError::AlreadyExists(m) => NodeError::AlreadyExists(m.clone()),
            NodeError::FailedPrecondition(m) => NodeError::FailedPrecondition(m.clone()),
            NodeError::OutOfRange { offset, first, next } => NodeError::OutOfRange {
                offset: *offset,
                first: *first,
                next: *next,
            },
            e => match e.outcome() {
                Outcome::Unknown => NodeError::Unknown(e.to_string()),
                Outcome::NotWritten => NodeError::Unavailable(e.to_string()),
            },
        }
    }

    /// Whether a failed write may have been written after all.
    pub fn outcome(&self) -> Outcome {
        match self {
            NodeError::Unknown(_) => Outcome::Unknown,
            // A storage failure mid-append: the batch may be on disk.
            NodeError::Storage(_) => Outcome::Unknown,
            _ => Outcome::NotWritten,
        }
    }
}

pub use crate::pb::meta::Outcome;

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// One member of the cluster, as `GetServers` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: String,
    pub rpc_addr: String,
    pub is_leader: bool,
}

pub struct LogNode {
    log: Arc<Log>,
    max_record_bytes: u64,
    /// Data offset one past the last committed record.
    commit: watch::Sender<u64>,
    /// Test hook: a write failure to report on the next Raft append.
    injected_failure: std::sync::Mutex<Option<String>>,
    /// Set while this node may not serve reads (it was removed from the
    /// cluster and is rejoining): what it holds may be stale or diverge.
    reads_refused: std::sync::atomic::AtomicBool,
}

impl LogNode {
    /// Nothing is visible until Raft applies it: the watermark starts at
    /// the log's first offset and the state machine moves it.
    pub fn new(log: Arc<Log>, max_record_bytes: u64) -> Self {
        let (commit, _) = watch::channel(log.first_offset());
        LogNode {
            log,
            max_record_bytes,
            commit,
            injected_failure: Default::default(),
            reads_refused: Default::default(),
        }
    }

    /// The log was deleted: its storage stops writing (see `Log::discard`).
    pub fn close(&self) {
        self.log.discard();
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes
    }

    /// Checks a value against the record limit.
    pub fn check_size(&self, value: &[u8]) -> Result<()> {
        if value.len() as u64 > self.max_record_bytes {
            return Err(NodeError::TooLarge {
                len: value.len(),
                max: self.max_record_bytes,
            });
        }
        Ok(())
    }

    /// Moves the commit watermark forward (never back).
    pub fn advance_commit(&self, next_offset: u64) {
        self.commit.send_if_modified(|c| {
            let advance = *c < next_offset;
            if advance {
                *c = next_offset;
            }
            advance
        });
    }

    /// One past the last committed offset.
    pub fn committed(&self) -> u64 {
        *self.commit.borrow()
    }

    /// Watches the commit watermark.
    pub fn subscribe_commit(&self) -> watch::Receiver<u64> {
        self.commit.subscribe()
    }

    fn out_of_range(&self, offset: u64) -> NodeError {
        NodeError::OutOfRange {
            offset,
            first: self.log.first_offset(),
            next: self.committed(),
        }
    }

    /// Refuses (or serves again) every read: a node removed from its
    /// cluster must not answer as if it were a member.
    pub fn refuse_reads(&self, refuse: bool) {
        self.reads_refused.store(refuse, std::sync::atomic::Ordering::Release);
    }

    fn check_reads(&self) -> Result<()> {
        if self.reads_refused.load(std::sync::atomic::Ordering::Acquire) {
            return Err(NodeError::Unavailable(
                "this node was removed from the cluster and is rejoining; its records may be stale: read from \
                 another member"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The committed record at `offset`.
    pub fn read(&self, offset: u64) -> Result<Record> {
        self.check_reads()?;
        if offset >= self.committed() {
            return Err(self.out_of_range(offset));
        }
        self.log.read_offset(offset).map_err(|e| match e {
            storage::Error::OffsetOutOfRange { .. } | storage::Error::IndexOutOfRange { .. } => {
                self.out_of_range(offset)
            }
            e => e.into(),
        })
    }

    /// Committed records from `offset`, at most `max_records` and roughly
    /// `max_bytes` (at least one if any is committed). Empty when `offset`
    /// is the commit watermark; out of range below the first retained or
    /// beyond the watermark.
    pub fn read_batch(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        self.check_reads()?;
        let committed = self.committed();
        if offset > committed || offset < self.log.first_offset() {
            return Err(self.out_of_range(offset));
        }
        self.log
            .read_data(offset, committed, max_records, max_bytes)
            .map_err(|e| match e {
                storage::Error::OffsetOutOfRange { .. } | storage::Error::IndexOutOfRange { .. } => {
                    self.out_of_range(offset)
                }
                e => e.into(),
            })
    }

    /// [`LogNode::read`] on a blocking thread: a read may wait for the disk,
    /// which must not stall the runtime's workers.
    pub async fn read_off_runtime(self: &Arc<Self>, offset: u64) -> Result<Record> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.read(offset))
            .await
            .map_err(|e| NodeError::Unavailable(format!("read task failed: {e}")))?
    }

    /// [`LogNode::read_batch`] on a blocking thread.
    pub async fn read_batch_off_runtime(
        self: &Arc<Self>,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || node.read_batch(offset, max_records, max_bytes))
            .await
            .map_err(|e| NodeError::Unavailable(format!("read task failed: {e}")))?
    }

    /// Test hook: makes the next Raft log append fail with `reason`, as a
    /// full disk or exhausted file descriptors would, so tests can check
    /// that a fatal storage error is visible (liveness) and ends the process.
    #[doc(hidden)]
    pub fn inject_write_failure(&self, reason: impl Into<String>) {
        *self.injected_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }

    /// The failure injected by [`LogNode::inject_write_failure`], taken once.
    pub(crate) fn take_injected_failure(&self) -> Option<String> {
        self.injected_failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Why the storage refuses writes until reopened, if it does.
    pub fn storage_failure(&self) -> Option<String> {
        self.log.durable().failed
    }

    /// The storage is healthy.
    pub fn is_ready(&self) -> bool {
        self.log.durable().failed.is_none()
    }
}
