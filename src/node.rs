//! The log a node serves: a [`storage::Log`] plus the *commit watermark*,
//! the data offset below which records may be shown to consumers.
//!
//! With `--fsync=always` a record is committed once it is durable (the
//! group commit in [`storage`]); with `interval` or `never`, once it is
//! appended. Producers advance the watermark after their own record is
//! committed, which is correct because both durability and appends are
//! prefixes of the log. Tail-following readers wait on it.
//!
//! The write path here is the single-node one; Raft replication replaces
//! it with "committed by a quorum" without changing the read side. Nothing
//! assumes one log per process: a process may hold several `LogNode`s.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use crate::{
    config::FsyncPolicy,
    storage::{self, Entry, Log, Record},
};

/// Errors a client can be told about.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("offset {offset} is out of range: the log holds offsets [{first}, {next})")]
    OutOfRange { offset: u64, first: u64, next: u64 },
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: u64 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// One member of the cluster, as `GetServers` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: String,
    pub rpc_addr: String,
    pub is_leader: bool,
}

/// Records appended but not yet known to be committed.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    next_index: u64,
    first_offset: u64,
    next_offset: u64,
}

pub struct LogNode {
    log: Arc<Log>,
    fsync: FsyncPolicy,
    max_record_bytes: u64,
    /// Data offset one past the last committed record.
    commit: watch::Sender<u64>,
    id: String,
    advertise_client_addr: String,
}

impl LogNode {
    pub fn new(
        log: Arc<Log>,
        fsync: FsyncPolicy,
        max_record_bytes: u64,
        id: String,
        advertise_client_addr: String,
    ) -> Self {
        // Everything that survived recovery is durable.
        let (commit, _) = watch::channel(log.next_offset());
        LogNode {
            log,
            fsync,
            max_record_bytes,
            commit,
            id,
            advertise_client_addr,
        }
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

    /// Appends the values as one atomic batch and returns the first one's
    /// offset once they are committed (the rest follow densely). Nothing is
    /// written if any value is too large.
    pub async fn produce(&self, values: &[Bytes]) -> Result<u64> {
        let pending = self.append(values)?;
        self.commit(pending).await
    }

    /// The synchronous half of [`LogNode::produce`]: validates and appends,
    /// fixing the records' offsets (so a stream of requests gets offsets in
    /// request order even when their commits are awaited concurrently).
    pub fn append(&self, values: &[Bytes]) -> Result<Pending> {
        if values.is_empty() {
            return Err(NodeError::InvalidArgument("no records to produce".into()));
        }
        for v in values {
            self.check_size(v)?;
        }
        // Storage spans only under a request span: records of a stream
        // (appended from the stream's task) would otherwise each start a
        // trace of their own.
        let traced = !tracing::Span::current().is_none();
        let span = if traced {
            tracing::debug_span!("log.append", records = values.len())
        } else {
            tracing::Span::none()
        };
        let _entered = span.entered();
        let appended = match values {
            [one] => self.log.append(&[Entry::data(one)])?,
            many => {
                let entries: Vec<Entry<'_>> = many.iter().map(|v| Entry::data(v)).collect();
                self.log.append(&entries)?
            }
        };
        if self.fsync != FsyncPolicy::Always {
            // Visible once written: see `--fsync`.
            self.advance_commit(appended.next_offset);
        }
        Ok(Pending {
            next_index: appended.next_index,
            first_offset: appended.first_offset,
            next_offset: appended.next_offset,
        })
    }

    /// The asynchronous half: waits until the appended records are
    /// committed and returns the first one's offset.
    pub async fn commit(&self, p: Pending) -> Result<u64> {
        if self.fsync == FsyncPolicy::Always {
            use tracing::Instrument;
            // Covers the shared group-commit fdatasync this record waits for.
            let traced = !tracing::Span::current().is_none();
            let span = if traced {
                tracing::debug_span!("log.fsync")
            } else {
                tracing::Span::none()
            };
            self.log.wait_durable(p.next_index).instrument(span).await?;
        }
        self.advance_commit(p.next_offset);
        Ok(p.first_offset)
    }

    fn advance_commit(&self, next_offset: u64) {
        self.commit.send_if_modified(|c| {
            let advance = *c < next_offset;
            if advance {
                *c = next_offset;
            }
            advance
        });
    }

    /// Keeps the commit watermark following the log's durable watermark,
    /// so records become visible even when the producer that wrote them
    /// went away before its acknowledgement (`--fsync=always`). Ends when
    /// the node is dropped.
    pub fn spawn_commit_follower(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let mut durable = self.log.subscribe_durable();
        let always = self.fsync == FsyncPolicy::Always;
        tokio::spawn(async move {
            while always && durable.changed().await.is_ok() {
                let next = durable.borrow_and_update().next_offset;
                match weak.upgrade() {
                    Some(node) => node.advance_commit(next),
                    None => return,
                }
            }
        })
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

    /// The committed record at `offset`.
    pub fn read(&self, offset: u64) -> Result<Record> {
        if offset >= self.committed() {
            return Err(self.out_of_range(offset));
        }
        self.log.read_offset(offset).map_err(|e| match e {
            storage::Error::OffsetOutOfRange { .. } => self.out_of_range(offset),
            e => e.into(),
        })
    }

    /// Committed records from `offset`, at most `max_records` and roughly
    /// `max_bytes` (at least one if any is committed). Empty when `offset`
    /// is the commit watermark; out of range below the first retained or
    /// beyond the watermark.
    pub fn read_batch(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let committed = self.committed();
        if offset > committed || offset < self.log.first_offset() {
            return Err(self.out_of_range(offset));
        }
        self.log
            .read_data(offset, committed, max_records, max_bytes)
            .map_err(|e| match e {
                storage::Error::OffsetOutOfRange { .. } => self.out_of_range(offset),
                e => e.into(),
            })
    }

    pub fn servers(&self) -> Vec<ServerInfo> {
        vec![ServerInfo {
            id: self.id.clone(),
            rpc_addr: self.advertise_client_addr.clone(),
            is_leader: true,
        }]
    }

    /// Ready to take writes (single node: always, unless the log failed).
    pub fn is_ready(&self) -> bool {
        self.log.durable().failed.is_none()
    }
}
