//! openraft's log storage over [`storage::Log`]: one Raft entry is one
//! batch. Normal entries are data batches; blank and membership entries are
//! control batches (the membership as JSON), which take no offsets.

use std::{
    fmt,
    ops::{Bound, RangeBounds},
    sync::Arc,
};

use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader,
    storage::{LogFlushed, RaftLogStorage},
};

use super::{
    snapshot::snapshot_next_offset,
    store::{Store, io_error, lock, log_error},
    types::{Entry, LogId, Membership, Request, StorageError, TypeConfig, Vote, log_id},
};
use crate::{
    storage::FsyncPolicy,
    storage::{self, Batch, Kind},
};

impl Store {
    /// The data offset a log restarted at Raft index `first` must continue
    /// from: the durable snapshot's when it ends right before `first` (the
    /// log may be stale after a crash: its own next offset would hand out
    /// offsets again), else the log's.
    pub(super) fn offset_at(&self, first: u64) -> u64 {
        lock(&self.state)
            .snapshot
            .as_ref()
            .filter(|m| m.last_log_id.map(|l| l.index + 1) == Some(first))
            .and_then(|m| snapshot_next_offset(&m.snapshot_id))
            .unwrap_or_else(|| self.log().next_offset())
    }

    /// Entries in `[from, to)`, stopping after `budget` bytes of bodies (at
    /// least one entry is returned when any is in range).
    fn read_entries(&self, from: u64, to: u64, budget: usize) -> Result<Vec<Entry>, StorageError> {
        let log = self.log();
        let from = from.max(log.first_index());
        let to = to.min(log.next_index());
        let mut out = Vec::with_capacity(to.saturating_sub(from).min(1024) as usize);
        let mut next = from;
        let mut bytes = 0;
        while next < to && (out.is_empty() || bytes < budget) {
            let batch = log
                .read_range(next, to, (budget - bytes.min(budget)).max(1).min(4 << 20))
                .map_err(|e| io_error(ErrorSubject::LogIndex(next), ErrorVerb::Read, e))?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                next = r.index + 1;
                bytes += r.body.len();
                out.push(decode_entry(r)?);
            }
        }
        Ok(out)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let log = self.log();
        let next = log.next_index();
        if next > log.first_index() {
            let r = log
                .read(next - 1)
                .map_err(|e| io_error(ErrorSubject::LogIndex(next - 1), ErrorVerb::Read, e))?;
            return Ok(Some(log_id(r.term, r.index)));
        }
        Ok(None)
    }
}

/// Decodes a batch into a Raft entry.
pub fn decode_entry(r: Batch) -> Result<Entry, StorageError> {
    let payload = match r.kind {
        Kind::Data => EntryPayload::Normal(Request {
            count: r.count,
            body: r.body,
            base_offset: r.base_offset,
            op: None,
        }),
        Kind::Control if r.body.is_empty() => EntryPayload::Blank,
        Kind::Control if r.body.starts_with(CATALOG_PREFIX) => EntryPayload::Normal(Request {
            base_offset: r.base_offset,
            ..Request::catalog(
                decode_catalog(&r.body).map_err(|e| io_error(ErrorSubject::LogIndex(r.index), ErrorVerb::Read, e))?,
            )
        }),
        Kind::Control => EntryPayload::Membership(
            serde_json::from_slice::<Membership>(&r.body)
                .map_err(|e| io_error(ErrorSubject::LogIndex(r.index), ErrorVerb::Read, e))?,
        ),
    };
    Ok(Entry {
        log_id: log_id(r.term, r.index),
        payload,
    })
}

/// How a catalog change's control body starts (a membership's never
/// does): `{"catalog":{"op":...}}`.
pub const CATALOG_PREFIX: &[u8] = b"{\"catalog\":";

#[derive(serde::Serialize, serde::Deserialize)]
struct CatalogEntry {
    catalog: crate::cluster::catalog::CatalogOp,
}

/// A catalog change as a control body.
pub fn encode_catalog(op: &crate::cluster::catalog::CatalogOp) -> bytes::Bytes {
    serde_json::to_vec(&CatalogEntry { catalog: op.clone() })
        .expect("a catalog change serializes")
        .into()
}

/// A control body that starts with [`CATALOG_PREFIX`].
pub fn decode_catalog(body: &[u8]) -> Result<crate::cluster::catalog::CatalogOp, serde_json::Error> {
    serde_json::from_slice::<CatalogEntry>(body).map(|e| e.catalog)
}

/// The batch kind, record count and body of an entry.
pub fn encode_payload(payload: &EntryPayload<TypeConfig>) -> (Kind, u32, bytes::Bytes) {
    match payload {
        EntryPayload::Normal(Request { op: Some(op), .. }) => (Kind::Control, 0, encode_catalog(op)),
        EntryPayload::Normal(req) => (Kind::Data, req.count, req.body.clone()),
        EntryPayload::Blank => (Kind::Control, 0, bytes::Bytes::new()),
        EntryPayload::Membership(m) => (
            Kind::Control,
            0,
            serde_json::to_vec(m).expect("a membership serializes").into(),
        ),
    }
}

fn range_to_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i + 1,
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

/// openraft's log storage.
#[derive(Clone, Debug)]
pub struct LogStore {
    store: Arc<Store>,
}

impl LogStore {
    pub fn new(store: Arc<Store>) -> Self {
        LogStore { store }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = range_to_bounds(&range);
        let from = match self.store.purged() {
            Some(p) => from.max(p.index + 1),
            None => from,
        };
        self.store.read_entries(from, to, usize::MAX)
    }

    /// What replication sends in one AppendEntries. openraft gives each
    /// AppendEntries one heartbeat interval to complete, so a message is
    /// kept to about [`REPLICATION_BUDGET`] bytes (at least one entry)
    /// however many entries a lagging follower needs.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let from = match self.store.purged() {
            Some(p) => start.max(p.index + 1),
            None => start,
        };
        self.store.read_entries(from, end, REPLICATION_BUDGET)
    }
}

/// Bytes of entry bodies per AppendEntries (see `limited_get_log_entries`):
/// 1 MiB crosses a 1 Gbit/s link in ~8 ms, well inside a 100 ms heartbeat.
pub const REPLICATION_BUDGET: usize = 1 << 20;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = self.store.purged();
        let last = self.store.last_log_id()?;
        let last = match (last, purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (None, p) => p,
            (l, _) => l,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let store = self.store.clone();
        let vote = vote.clone();
        tokio::task::spawn_blocking(move || store.update(|s| s.vote = Some(vote)))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))?
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.store.state).vote.clone())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.store.save_committed(committed.as_ref())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.store.read_committed())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(reason) = self.store.node().take_injected_failure() {
            return Err(io_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                std::io::Error::other(reason),
            ));
        }
        let encoded: Vec<Encoded> = entries
            .into_iter()
            .map(|e| {
                let (kind, count, body) = encode_payload(&e.payload);
                (e.log_id.index, e.log_id.leader_id.term, kind, count, body)
            })
            .collect();
        // A catalog entry (named logs): the data dir says so before the
        // log holds one, so an older build refuses the dir instead of
        // failing on the entry.
        if encoded
            .iter()
            .any(|e| e.2 == Kind::Control && e.4.starts_with(CATALOG_PREFIX))
        {
            let dir = self.store.log().dir().to_owned();
            tokio::task::spawn_blocking(move || {
                crate::storage::manifest::raise_raft_state(
                    &dir,
                    crate::storage::manifest::RAFT_STATE_NAMED_LOGS,
                    crate::version(),
                )
            })
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, std::io::Error::other(e)))?
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        }
        // The leader proposes one entry at a time: only the first data
        // entry can be the one proposed here.
        let trace = encoded
            .iter()
            .find(|e| e.2 == Kind::Data)
            .and_then(|e| self.store.append_trace.claim(&e.4));
        // Under the proposing request's span (see `store::AppendTrace`).
        let span = |name: &'static str| match &trace {
            Some(parent) => tracing::debug_span!(parent: parent, "log", otel.name = name, entries = encoded.len()),
            None => tracing::Span::none(),
        };
        let append_span = span("log.append");
        let batches = as_entries(&encoded);
        // Raft's own entries (membership above all) are always fsynced: a
        // node that lost its membership entry could not serve again.
        let control = batches.iter().any(|b| b.kind == Kind::Control);
        let log = self.store.log().clone();
        if let Some(first) = batches.first().and_then(|r| r.index)
            && first > log.next_index()
            && (log.first_index() == log.next_index() || self.store.purged().is_some_and(|p| p.index + 1 == first))
        {
            // An empty log may start anywhere, and a log purged past its
            // end continues after the purge point (openraft's suite does
            // both). In a cluster this only follows a snapshot install,
            // which already placed the log, or a crash that left the
            // durable snapshot ahead of the surviving log: then the
            // snapshot, not the stale log, knows the next offset.
            let offset = self.store.offset_at(first);
            let l = log.clone();
            tokio::task::spawn_blocking(move || l.reset(first, offset))
                .await
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?
                .map_err(|e| log_error(ErrorVerb::Write, e))?;
        }
        let bytes: u64 = batches
            .iter()
            .map(|b| (storage::HEADER_LEN + b.body.len()) as u64)
            .sum();
        let appended = if log.append_would_roll(bytes) {
            // A segment roll fsyncs and creates files: keep it off the
            // runtime's threads (and so off the Raft core's).
            let l = log.clone();
            let owned: Vec<Encoded> = encoded.clone();
            tokio::task::spawn_blocking(move || l.append(&as_entries(&owned)))
                .await
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?
        } else {
            log.append(&batches)
        }
        .map_err(|e| log_error(ErrorVerb::Write, e))?;
        // Spans last from creation to drop: `log.append` covers the write
        // (and a roll), `log.fsync` the wait until it is durable.
        drop(append_span);
        let fsync_span = span("log.fsync");
        if self.store.fsync == FsyncPolicy::Always || control {
            tokio::spawn(async move {
                let result = log.wait_durable(appended.next_index).await;
                drop(fsync_span);
                callback.log_io_completed(result.map(|_| ()).map_err(std::io::Error::other));
            });
        } else {
            // `never` / `interval`: the batch reaches the OS before it is
            // acknowledged, so a crash of the process loses nothing.
            tokio::task::spawn_blocking(move || {
                let result = log.write_out();
                drop(fsync_span);
                callback.log_io_completed(result.map_err(std::io::Error::other));
            });
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let log = self.store.log().clone();
        if log_id.index < log.next_index() {
            tokio::task::spawn_blocking(move || log.truncate_from(log_id.index.max(log.first_index())))
                .await
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?
                .map_err(|e| log_error(ErrorVerb::Delete, e))?;
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            if store.purged().is_some_and(|p| p.index >= log_id.index) {
                return Ok(());
            }
            store.update(|s| s.purged = Some(log_id))?;
            store.remove_purged().map_err(|e| log_error(ErrorVerb::Delete, e))?;
            Ok(())
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?
    }
}

/// One encoded Raft entry: index, term, kind, record count, body.
type Encoded = (u64, u64, Kind, u32, bytes::Bytes);

/// Storage batches borrowing from encoded Raft entries.
fn as_entries(encoded: &[Encoded]) -> Vec<storage::Entry<'_>> {
    encoded
        .iter()
        .map(|(index, term, kind, count, body)| storage::Entry {
            index: Some(*index),
            term: *term,
            kind: *kind,
            count: *count,
            producer: storage::Producer::default(),
            body,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        cluster::{snapshot::snapshot_id, types::SnapshotMeta},
        node::LogNode,
        storage::{Log, LogConfig, encode_body},
    };

    /// A crash left the durable snapshot (index 9, next offset 20) ahead of
    /// the surviving log (5 records): the log must restart at the
    /// snapshot's offset, never reuse offsets 5..20.
    #[test]
    fn a_log_behind_its_snapshot_restarts_at_the_snapshots_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
        for i in 0..5u8 {
            log.append(&[storage::Entry::data(&encode_body(&[[i]]), 1)]).unwrap();
        }
        let node = Arc::new(LogNode::new(log.clone(), 1 << 20));
        let store = Store::open(node, dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(store.offset_at(5), 5, "no snapshot: the log's own next offset");
        let last = log_id(1, 9);
        store
            .update(|s| {
                s.purged = Some(last);
                s.snapshot = Some(SnapshotMeta {
                    last_log_id: Some(last),
                    last_membership: Default::default(),
                    snapshot_id: snapshot_id(Some(last), 20),
                });
            })
            .unwrap();
        assert_eq!(store.offset_at(10), 20);
        assert_eq!(
            store.offset_at(5),
            5,
            "a snapshot that does not end before it is not used"
        );
    }

    /// The committed log id survives a restart (openraft then applies up to
    /// it at once), and is ignored when damaged or beyond the log.
    #[test]
    fn the_committed_log_id_survives_a_restart_within_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
        for i in 0..5u8 {
            log.append(&[storage::Entry::data(&encode_body(&[[i]]), 1)]).unwrap();
        }
        let node = Arc::new(LogNode::new(log.clone(), 1 << 20));
        let store = Store::open(node.clone(), dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(store.read_committed(), None, "nothing saved yet");
        store.save_committed(Some(&log_id(1, 3))).unwrap();
        store.save_committed(Some(&log_id(2, 4))).unwrap();
        let reopened = Store::open(node.clone(), dir.path(), FsyncPolicy::Always).unwrap();
        assert_eq!(reopened.read_committed(), Some(log_id(2, 4)));

        // Beyond the log (it lost its tail): not trusted.
        store.save_committed(Some(&log_id(2, 5))).unwrap();
        assert_eq!(store.read_committed(), None);

        // Damaged: not trusted.
        store.save_committed(Some(&log_id(2, 4))).unwrap();
        let path = dir.path().join(crate::cluster::store::COMMITTED_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(store.read_committed(), None);
    }
}
