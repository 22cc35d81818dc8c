//! openraft's log storage and state machine over [`storage::Log`].
//!
//! The Raft log *is* the data log: each Raft entry is one record (normal
//! entries are data records, blank and membership entries are control
//! records with the membership as JSON). The state machine holds no data of
//! its own: applying an entry only moves the applied index, the membership
//! and the node's commit watermark. A snapshot is therefore "the log up to
//! index S": building one only writes its metadata; sending one streams the
//! segment files (see `network`), hard-linked so retention cannot remove them
//! mid-transfer.
//!
//! Small Raft state (vote, last purged id, current snapshot metadata) lives
//! in `raft-state.json`, replaced atomically (write, fsync, rename, fsync the
//! directory).
//!
//! Purging is bookkeeping: openraft may declare logs purged (it will not read
//! them again) but records are only deleted by retention, and only up to
//! the purged id, so a follower that installed a snapshot keeps the records
//! it received and consumers can read them.

use std::{
    fmt,
    ops::{Bound, RangeBounds},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError,
    storage::{LogFlushed, RaftLogStorage, RaftStateMachine},
};
use serde::{Deserialize, Serialize};

use super::types::{
    Entry, LogId, Membership, NodeId, Request, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, Vote, log_id,
};
use crate::{
    config::FsyncPolicy,
    node::LogNode,
    storage::{self, Kind, Log, Record},
};

const STATE_FILE: &str = "raft-state.json";

/// The persisted Raft state besides the log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PersistentState {
    vote: Option<Vote>,
    purged: Option<LogId>,
    snapshot: Option<SnapshotMeta>,
    /// A snapshot install replaced the log and had not finished.
    #[serde(default)]
    installing: bool,
}

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn log_error(verb: ErrorVerb, e: storage::Error) -> StorageError {
    io_error(ErrorSubject::Logs, verb, e)
}

/// State shared by the log store and the state machine of one node.
pub struct Store {
    node: Arc<LogNode>,
    dir: PathBuf,
    fsync: FsyncPolicy,
    state: Mutex<PersistentState>,
    /// Retention may delete records below this index once they are purged.
    retention_floor: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens the Raft state in `dir` beside the node's log. An install that
    /// a crash interrupted leaves a log that matches neither the old nor the
    /// new state: it is discarded (the node catches up again from the
    /// leader, as a new node would), keeping the vote.
    pub fn open(node: Arc<LogNode>, dir: &Path, fsync: FsyncPolicy) -> Result<Arc<Store>, StorageError> {
        let path = dir.join(STATE_FILE);
        let mut state: PersistentState = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PersistentState::default(),
            Err(e) => return Err(io_error(ErrorSubject::Store, ErrorVerb::Read, e)),
        };
        let store = Store {
            node,
            dir: dir.to_owned(),
            fsync,
            state: Mutex::new(PersistentState::default()),
            retention_floor: AtomicU64::new(0),
        };
        if state.installing {
            tracing::warn!("an interrupted snapshot install is discarded; the node will catch up again");
            store.log().reset(0, 0).map_err(|e| log_error(ErrorVerb::Write, e))?;
            state = PersistentState {
                vote: state.vote,
                ..Default::default()
            };
            store.persist(&state)?;
        }
        *lock(&store.state) = state;
        Ok(Arc::new(store))
    }

    pub fn log(&self) -> &Arc<Log> {
        self.node.log()
    }

    pub fn node(&self) -> &Arc<LogNode> {
        &self.node
    }

    /// Lets retention delete sealed segments below `index` once openraft
    /// has purged them.
    pub fn set_retention_floor(&self, index: u64) {
        self.retention_floor.fetch_max(index, Ordering::AcqRel);
    }

    /// Deletes the sealed segments retention asked for that Raft has purged.
    /// Blocking.
    pub fn remove_purged(&self) -> storage::Result<usize> {
        let Some(purged) = self.purged() else { return Ok(0) };
        let floor = self.retention_floor.load(Ordering::Acquire).min(purged.index + 1);
        let n = self.log().remove_before(floor)?;
        if n > 0 {
            tracing::info!(segments = n, below = floor, "retention removed sealed segments");
        }
        Ok(n)
    }

    pub fn purged(&self) -> Option<LogId> {
        lock(&self.state).purged
    }

    pub fn current_snapshot(&self) -> Option<SnapshotMeta> {
        lock(&self.state).snapshot.clone()
    }

    fn persist(&self, state: &PersistentState) -> Result<(), StorageError> {
        let err = |e: std::io::Error| io_error(ErrorSubject::Store, ErrorVerb::Write, e);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, self.dir.join(STATE_FILE)).map_err(err)?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(err)
    }

    fn update(&self, f: impl FnOnce(&mut PersistentState)) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let mut next = state.clone();
        f(&mut next);
        self.persist(&next)?;
        *state = next;
        Ok(())
    }

    fn read_entries(&self, from: u64, to: u64) -> Result<Vec<Entry>, StorageError> {
        let log = self.log();
        let from = from.max(log.first_index());
        let to = to.min(log.next_index());
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        let mut next = from;
        while next < to {
            let batch = log
                .read_range(next, to, 4 << 20)
                .map_err(|e| io_error(ErrorSubject::LogIndex(next), ErrorVerb::Read, e))?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                next = r.index + 1;
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

/// Decodes a record into a Raft entry.
pub fn decode_entry(r: Record) -> Result<Entry, StorageError> {
    let payload = match r.kind {
        Kind::Data => EntryPayload::Normal(Request {
            value: r.payload,
            offset: r.offset,
        }),
        Kind::Control if r.payload.is_empty() => EntryPayload::Blank,
        Kind::Control => EntryPayload::Membership(
            serde_json::from_slice::<Membership>(&r.payload)
                .map_err(|e| io_error(ErrorSubject::LogIndex(r.index), ErrorVerb::Read, e))?,
        ),
    };
    Ok(Entry {
        log_id: log_id(r.term, r.index),
        payload,
    })
}

/// The record kind and payload of an entry.
pub fn encode_payload(payload: &EntryPayload<TypeConfig>) -> (Kind, bytes::Bytes) {
    match payload {
        EntryPayload::Normal(req) => (Kind::Data, req.value.clone()),
        EntryPayload::Blank => (Kind::Control, bytes::Bytes::new()),
        EntryPayload::Membership(m) => (
            Kind::Control,
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
        self.store.read_entries(from, to)
    }
}

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

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(reason) = self.store.node.take_injected_failure() {
            return Err(io_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                std::io::Error::other(reason),
            ));
        }
        let encoded: Vec<(u64, u64, Kind, bytes::Bytes)> = entries
            .into_iter()
            .map(|e| {
                let (kind, payload) = encode_payload(&e.payload);
                (e.log_id.index, e.log_id.leader_id.term, kind, payload)
            })
            .collect();
        let records: Vec<storage::Entry<'_>> = encoded
            .iter()
            .map(|(index, term, kind, payload)| storage::Entry {
                index: Some(*index),
                term: *term,
                kind: *kind,
                payload,
            })
            .collect();
        let log = self.store.log().clone();
        if let Some(first) = records.first().and_then(|r| r.index)
            && first > log.next_index()
            && (log.first_index() == log.next_index() || self.store.purged().is_some_and(|p| p.index + 1 == first))
        {
            // An empty log may start anywhere, and a log purged past its
            // end continues after the purge point (openraft's suite does
            // both). In a cluster this only follows a snapshot install,
            // which already placed the log.
            log.reset(first, log.next_offset())
                .map_err(|e| log_error(ErrorVerb::Write, e))?;
        }
        let appended = log.append(&records).map_err(|e| log_error(ErrorVerb::Write, e))?;
        if self.store.fsync == FsyncPolicy::Always {
            tokio::spawn(async move {
                let result = log.wait_durable(appended.next_index).await;
                callback.log_io_completed(result.map(|_| ()).map_err(std::io::Error::other));
            });
        } else {
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let log = self.store.log();
        if log_id.index < log.next_index() {
            log.truncate_from(log_id.index.max(log.first_index()))
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

/// Snapshot data: where the records up to the snapshot's last index are.
pub enum SnapshotData {
    /// In this node's log (a snapshot built here).
    Local(Arc<Log>),
    /// Segment files received from the leader, in order; the directory is
    /// removed when the data is dropped.
    Received { dir: PathBuf, files: Vec<PathBuf> },
    /// Nothing yet (`begin_receiving_snapshot`).
    Empty,
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotData::Local(log) => write!(f, "Local({})", log.dir().display()),
            SnapshotData::Received { dir, files } => write!(f, "Received({}, {} files)", dir.display(), files.len()),
            SnapshotData::Empty => f.write_str("Empty"),
        }
    }
}

impl Drop for SnapshotData {
    fn drop(&mut self) {
        if let SnapshotData::Received { dir, .. } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl SnapshotData {
    /// The records up to `last` (inclusive), oldest first.
    fn records(&self, last: u64) -> Box<dyn Iterator<Item = storage::Result<Record>> + Send + '_> {
        match self {
            SnapshotData::Local(log) => Box::new(
                log.iter_from_index(log.first_index())
                    .take_while(move |r: &storage::Result<Record>| r.as_ref().map_or(true, |r| r.index <= last)),
            ),
            SnapshotData::Received { files, .. } => Box::new(
                files
                    .iter()
                    .flat_map(|path| match storage::read_segment_file(path) {
                        Ok(reader) => Box::new(reader) as Box<dyn Iterator<Item = _> + Send>,
                        Err(e) => Box::new(std::iter::once(Err(e))),
                    })
                    .take_while(move |r: &storage::Result<Record>| r.as_ref().map_or(true, |r| r.index <= last)),
            ),
            SnapshotData::Empty => Box::new(std::iter::empty()),
        }
    }
}

/// The snapshot id encodes the data offset that follows the snapshot, which
/// a receiver needs when the snapshot holds no records.
pub fn snapshot_id(last: Option<LogId>, next_offset: u64) -> String {
    match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, next_offset),
        None => format!("none-{next_offset}"),
    }
}

pub fn snapshot_next_offset(id: &str) -> Option<u64> {
    id.rsplit('-').next()?.parse().ok()
}

#[derive(Clone, Debug, Default)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership,
    /// The data offset after the last applied record.
    next_offset: u64,
}

/// openraft's state machine: the applied index and membership.
#[derive(Clone, Debug)]
pub struct StateMachine {
    store: Arc<Store>,
    applied: Arc<Mutex<Applied>>,
}

impl StateMachine {
    pub fn new(store: Arc<Store>) -> Self {
        let applied = match store.current_snapshot() {
            Some(meta) => Applied {
                last: meta.last_log_id,
                next_offset: snapshot_next_offset(&meta.snapshot_id).unwrap_or(0),
                membership: meta.last_membership,
            },
            None => Applied {
                next_offset: store.log().first_offset(),
                ..Default::default()
            },
        };
        store.node.advance_commit(applied.next_offset);
        StateMachine {
            store,
            applied: Arc::new(Mutex::new(applied)),
        }
    }

    fn snapshot_of(&self, meta: SnapshotMeta) -> Snapshot {
        Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::Local(self.store.log().clone())),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let applied = lock(&self.applied).clone();
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership,
            snapshot_id: snapshot_id(applied.last, applied.next_offset),
        };
        let store = self.store.clone();
        let m = meta.clone();
        tokio::task::spawn_blocking(move || store.update(|s| s.snapshot = Some(m)))
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))??;
        Ok(self.snapshot_of(meta))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = lock(&self.applied);
        Ok((a.last, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let next_offset = {
            let mut a = lock(&self.applied);
            for e in entries {
                a.last = Some(e.log_id);
                match e.payload {
                    EntryPayload::Normal(req) => {
                        a.next_offset = req.offset + 1;
                        out.push(Response { offset: req.offset });
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(Response { offset: a.next_offset });
                    }
                    EntryPayload::Blank => out.push(Response { offset: a.next_offset }),
                }
            }
            a.next_offset
        };
        self.store.node.advance_commit(next_offset);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(SnapshotData::Empty))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Box<SnapshotData>) -> Result<(), StorageError> {
        let next_offset = snapshot_next_offset(&meta.snapshot_id).ok_or_else(|| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                std::io::Error::other(format!("malformed snapshot id {:?}", meta.snapshot_id)),
            )
        })?;
        let store = self.store.clone();
        let m = meta.clone();
        tokio::task::spawn_blocking(move || install(&store, &m, &data, next_offset))
            .await
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))??;
        {
            let mut a = lock(&self.applied);
            a.last = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.next_offset = next_offset;
        }
        self.store.node.advance_commit(next_offset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.store.current_snapshot().map(|meta| self.snapshot_of(meta)))
    }
}

/// Makes the local log hold the snapshot's records (unless it already holds
/// the snapshot's last entry, hence every committed entry before it) and
/// records the snapshot as current. Blocking.
fn install(store: &Store, meta: &SnapshotMeta, data: &SnapshotData, next_offset: u64) -> Result<(), StorageError> {
    let sig = || ErrorSubject::Snapshot(Some(meta.signature()));
    let Some(last) = meta.last_log_id else {
        return store.update(|s| s.snapshot = Some(meta.clone()));
    };
    let log = store.log();
    let present = last.index >= log.first_index() && log.read(last.index).is_ok_and(|r| r.term == last.leader_id.term);
    if !present && !matches!(data, SnapshotData::Local(l) if Arc::ptr_eq(l, log)) {
        store.update(|s| s.installing = true)?;
        let mut records = data.records(last.index).peekable();
        let (first_index, first_offset) = match records.peek() {
            Some(Ok(r)) => (r.index, r.offset),
            Some(Err(_)) => (0, 0),
            None => (last.index + 1, next_offset),
        };
        log.reset(first_index, first_offset)
            .map_err(|e| io_error(sig(), ErrorVerb::Write, e))?;
        let mut batch: Vec<Record> = Vec::with_capacity(1024);
        let flush = |batch: &mut Vec<Record>| -> Result<(), StorageError> {
            let entries: Vec<storage::Entry<'_>> = batch
                .iter()
                .map(|r| storage::Entry {
                    index: Some(r.index),
                    term: r.term,
                    kind: r.kind,
                    payload: &r.payload,
                })
                .collect();
            log.append(&entries).map_err(|e| io_error(sig(), ErrorVerb::Write, e))?;
            batch.clear();
            Ok(())
        };
        for r in records {
            batch.push(r.map_err(|e| io_error(sig(), ErrorVerb::Read, e))?);
            if batch.len() == 1024 {
                flush(&mut batch)?;
            }
        }
        flush(&mut batch)?;
        log.sync().map_err(|e| io_error(sig(), ErrorVerb::Write, e))?;
        if log.next_index() != last.index + 1 || log.next_offset() != next_offset {
            return Err(io_error(
                sig(),
                ErrorVerb::Read,
                std::io::Error::other(format!(
                    "snapshot ends at index {} offset {}, its records at index {} offset {}",
                    last.index + 1,
                    next_offset,
                    log.next_index(),
                    log.next_offset()
                )),
            ));
        }
        tracing::info!(first_index, last = last.index, "installed a snapshot's records");
        return store.update(|s| {
            s.installing = false;
            s.purged = Some(last);
            s.snapshot = Some(meta.clone());
        });
    }
    store.update(|s| s.snapshot = Some(meta.clone()))
}
