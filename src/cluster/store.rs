//! The Raft state kept beside the log, shared by the log store and the
//! state machine of one node.
//!
//! The Raft log *is* the data log (see `log_store`): each Raft entry is one
//! batch. The state machine holds no data of its own (see `state_machine`).
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
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use serde::{Deserialize, Serialize};

use super::types::{LogId, NodeId, SnapshotMeta, StorageError, StoredMembership, Vote};
use crate::{
    node::LogNode,
    storage::FsyncPolicy,
    storage::{self, Log},
};

const STATE_FILE: &str = "raft-state.json";
/// The last committed log id, rewritten in place on every commit (see
/// [`Store::save_committed`]).
pub(super) const COMMITTED_FILE: &str = "raft-committed";
/// The state machine's last applied state, rewritten in place now and then
/// (see [`Store::save_applied`]).
pub(super) const APPLIED_FILE: &str = "raft-applied";

/// What the state machine had applied: the last entry's id, the membership
/// as of it, and the data offset after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AppliedCheckpoint {
    pub(super) last: LogId,
    pub(super) membership: StoredMembership,
    pub(super) next_offset: u64,
}

/// The persisted Raft state besides the log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct PersistentState {
    pub(super) vote: Option<Vote>,
    pub(super) purged: Option<LogId>,
    pub(super) snapshot: Option<SnapshotMeta>,
    /// A snapshot install replaced the log and had not finished.
    #[serde(default)]
    pub(super) installing: bool,
    /// The id of the cluster this data belongs to (set when the cluster
    /// forms, or learned from its leader); a node refuses to serve another
    /// cluster's data. Absent in data dirs from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) cluster_id: Option<String>,
    /// The log index of the membership entry `--force-new-cluster` wrote:
    /// a flag left set is not applied again on later starts (that would
    /// throw out every member that joined since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) forced_at: Option<u64>,
}

pub fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

pub fn log_error(verb: ErrorVerb, e: storage::Error) -> StorageError {
    io_error(ErrorSubject::Logs, verb, e)
}

/// State shared by the log store and the state machine of one node.
pub struct Store {
    node: Arc<LogNode>,
    dir: PathBuf,
    pub(super) fsync: FsyncPolicy,
    pub(super) state: Mutex<PersistentState>,
    /// `raft-committed`, opened at the first save.
    committed_file: Mutex<Option<std::fs::File>>,
    /// `raft-applied`, opened at the first save.
    applied_file: Mutex<Option<std::fs::File>>,
    /// Retention may delete records below this index once they are purged.
    retention_floor: AtomicU64,
    /// The trace the leader's next entry belongs to (see `AppendTrace`).
    pub(super) append_trace: Arc<AppendTrace>,
}

/// The request span behind the entry the leader proposes, so that the
/// entry's append and fsync, which openraft runs from its own task, show in
/// that request's trace. One entry is proposed at a time
/// (`proposer::MAX_IN_FLIGHT`); the log store claims the span when it
/// appends the entry whose body is the very buffer proposed (compared by
/// address, so an entry from elsewhere never takes another's trace).
#[derive(Default)]
pub struct AppendTrace(Mutex<Option<(usize, tracing::Span)>>);

impl AppendTrace {
    /// The entry about to be proposed with `body`, and its trace (none
    /// when untraced, which also forgets an unclaimed earlier one).
    pub fn set(&self, body: &bytes::Bytes, span: tracing::Span) {
        *lock(&self.0) = (!span.is_none()).then(|| (body.as_ptr() as usize, span));
    }

    /// The span of the entry with `body`, if it was proposed here traced.
    pub fn claim(&self, body: &bytes::Bytes) -> Option<tracing::Span> {
        let mut slot = lock(&self.0);
        match &*slot {
            Some((at, _)) if *at == body.as_ptr() as usize => slot.take().map(|(_, s)| s),
            _ => None,
        }
    }

    /// Drops the span of the entry with `body` if the log never claimed it
    /// (the proposal failed or leadership moved), so the request's span
    /// ends when the request does.
    pub fn forget(&self, body: &bytes::Bytes) {
        drop(self.claim(body));
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
            committed_file: Mutex::new(None),
            applied_file: Mutex::new(None),
            retention_floor: AtomicU64::new(0),
            append_trace: Arc::default(),
        };
        if state.installing {
            tracing::warn!("an interrupted snapshot install is discarded; the node will catch up again");
            store.log().reset(0, 0).map_err(|e| log_error(ErrorVerb::Write, e))?;
            state = PersistentState {
                vote: state.vote,
                cluster_id: state.cluster_id,
                forced_at: state.forced_at,
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

    /// Records the committed log id before openraft applies up to it (so
    /// before any write up to it is acknowledged): a restarted node applies
    /// its log up to there at once instead of serving reads from the last
    /// snapshot until the next commit (found by the fault harness: a leader
    /// killed and restarted in the same term answered linearizable reads
    /// without records it had acknowledged). One small `pwrite` per commit,
    /// no fsync: it survives a process crash; after a power loss an older
    /// value only means that window again, never a wrong record. Format:
    /// u32 length, u32 CRC32C, JSON.
    pub(super) fn save_committed(&self, committed: Option<&LogId>) -> Result<(), StorageError> {
        self.write_small(&self.committed_file, COMMITTED_FILE, &committed)
    }

    /// The committed log id [`Self::save_committed`] left, if it is intact
    /// and within the log this node still has (otherwise none: openraft
    /// then learns it from the leader, as before).
    pub(super) fn read_committed(&self) -> Option<LogId> {
        let committed: Option<LogId> = self.read_small(COMMITTED_FILE)?;
        let committed = committed?;
        if committed.index >= self.log().next_index() {
            // The log lost its tail (a power loss with --fsync never).
            return None;
        }
        Some(committed)
    }

    /// Records what the state machine has applied, so that a restart
    /// resumes from there instead of re-applying (reading back) every entry
    /// since the last snapshot: on a 1 GiB log that re-application took half
    /// a second. Same format and durability as `raft-committed`: no fsync;
    /// an older or missing checkpoint only means more re-application, and
    /// one the log does not bear out is ignored (see [`Self::read_applied`]).
    pub(super) fn save_applied(&self, applied: &AppliedCheckpoint) -> Result<(), StorageError> {
        self.write_small(&self.applied_file, APPLIED_FILE, applied)
    }

    /// The checkpoint [`Self::save_applied`] left, if it is intact and the
    /// log still holds its last entry with the same term and the same end
    /// offset (Raft's log matching: then every entry up to it is the one
    /// that was applied). After a power loss that cost the log its tail, or
    /// a log replaced by a snapshot install, it does not match: none.
    pub(super) fn read_applied(&self) -> Option<AppliedCheckpoint> {
        let saved: AppliedCheckpoint = self.read_small(APPLIED_FILE)?;
        let batch = self.log().read(saved.last.index).ok()?;
        let matches =
            batch.term == saved.last.leader_id.term && batch.base_offset + u64::from(batch.count) == saved.next_offset;
        if !matches {
            tracing::info!(
                index = saved.last.index,
                "raft-applied does not match the log; re-applying from the snapshot"
            );
            return None;
        }
        Some(saved)
    }

    /// Rewrites a small file in place: u32 length, u32 CRC32C, JSON. One
    /// `pwrite`, no fsync.
    fn write_small(
        &self,
        slot: &Mutex<Option<std::fs::File>>,
        name: &str,
        value: &impl Serialize,
    ) -> Result<(), StorageError> {
        use std::os::unix::fs::FileExt;
        let err = |e: std::io::Error| io_error(ErrorSubject::Store, ErrorVerb::Write, e);
        let json = serde_json::to_vec(value).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let mut buf = Vec::with_capacity(8 + json.len());
        buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        buf.extend_from_slice(&json);
        let mut file = lock(slot);
        if file.is_none() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.dir.join(name))
                .map_err(err)?;
            *file = Some(f);
        }
        file.as_ref().expect("opened above").write_all_at(&buf, 0).map_err(err)
    }

    /// Reads what [`Self::write_small`] wrote; none if missing or damaged.
    fn read_small<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        let bytes = std::fs::read(self.dir.join(name)).ok()?;
        let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
        let json = bytes.get(8..8usize.checked_add(len)?)?;
        if crc32c::crc32c(json) != crc {
            tracing::warn!(file = name, "damaged; ignoring it");
            return None;
        }
        serde_json::from_slice(json).ok()
    }

    /// The cluster this data belongs to, once known.
    pub fn cluster_id(&self) -> Option<String> {
        lock(&self.state).cluster_id.clone()
    }

    /// Records the cluster id (durably).
    pub fn set_cluster_id(&self, id: &str) -> Result<(), StorageError> {
        self.update(|s| s.cluster_id = Some(id.to_owned()))
    }

    /// Lost-quorum recovery (`--force-new-cluster`): appends a membership
    /// entry that makes this node the only voter of its group, in a term
    /// above every term it has seen, votes for itself there (not committed:
    /// it still has to win, alone, at start) and takes a new cluster id. Every record in
    /// this node's log is kept; records only the lost voters held are gone.
    /// Returns false (and changes nothing) when this data dir was already
    /// forced once.
    pub fn force_single_voter(
        &self,
        id: NodeId,
        info: &super::types::NodeInfo,
        new_cluster_id: &str,
    ) -> Result<bool, StorageError> {
        use super::types::Membership;
        if let Some(at) = lock(&self.state).forced_at {
            tracing::warn!(
                index = at,
                "--force-new-cluster was already applied to this data dir (at log index {at}); ignoring it: remove \
                 the flag"
            );
            return Ok(false);
        }
        let log = self.log().clone();
        let last = if log.next_index() > log.first_index() {
            let r = log
                .read(log.next_index() - 1)
                .map_err(|e| log_error(ErrorVerb::Read, e))?;
            Some((r.term, r.index))
        } else {
            self.purged().map(|p| (p.leader_id.term, p.index))
        };
        let vote_term = lock(&self.state).vote.map_or(0, |v| v.leader_id.term);
        let term = last.map_or(0, |l| l.0).max(vote_term) + 1;
        let index = last.map_or(0, |l| l.1 + 1);
        let membership = Membership::new(
            vec![std::collections::BTreeSet::from([id])],
            std::collections::BTreeMap::from([(id, info.clone())]),
        );
        let body = bytes::Bytes::from(
            serde_json::to_vec(&membership).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?,
        );
        if log.next_index() != index {
            // A log purged past its end: continue after the purge point.
            let offset = self.offset_at(index);
            log.reset(index, offset).map_err(|e| log_error(ErrorVerb::Write, e))?;
        }
        let entry = storage::Entry {
            index: Some(index),
            term,
            kind: storage::Kind::Control,
            count: 0,
            producer: storage::Producer::default(),
            body: &body,
        };
        log.append(&[entry]).map_err(|e| log_error(ErrorVerb::Write, e))?;
        log.sync().map_err(|e| log_error(ErrorVerb::Write, e))?;
        self.update(|s| {
            s.vote = Some(Vote::new(term, id));
            s.forced_at = Some(index);
            // A new cluster: a lost voter that comes back with its old data
            // (whose tail may conflict with this new history) is refused at
            // start instead of rejoining.
            s.cluster_id = Some(new_cluster_id.to_owned());
        })?;
        tracing::warn!(
            term,
            index,
            node = %info.name,
            "FORCED A NEW CLUSTER: this node is now the only voter of its group. Records acknowledged only by the \
             lost voters may be gone; start new nodes empty to add voters back, and remove --force-new-cluster"
        );
        Ok(true)
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut PersistentState)) -> Result<(), StorageError> {
        let mut state = lock(&self.state);
        let mut next = state.clone();
        f(&mut next);
        self.persist(&next)?;
        *state = next;
        Ok(())
    }
}
