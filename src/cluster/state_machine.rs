//! openraft's state machine: the applied index, the membership and the
//! node's commit watermark. Applying an entry stores nothing: the records
//! are already in the log; applying only makes them visible to consumers.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, storage::RaftStateMachine};

use super::{
    snapshot::{SnapshotData, snapshot_id, snapshot_next_offset},
    store::{AppliedCheckpoint, Store, io_error, lock},
    types::{Entry, LogId, Request, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig},
};
use crate::storage::{self, Batch};

#[derive(Clone, Debug, Default)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership,
    /// The data offset after the last applied record.
    next_offset: u64,
    /// When `raft-applied` was last written.
    saved_at: Option<Instant>,
}

/// `raft-applied` is rewritten at most this often: a restart re-applies at
/// most this much of the log.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(10);

/// Writes the applied checkpoint; a failure only costs re-application at
/// the next start, so it is logged, never fatal to Raft.
fn save_checkpoint(store: &Store, c: &AppliedCheckpoint) {
    if let Err(e) = store.save_applied(c) {
        tracing::warn!(cause = %e, "could not write raft-applied; a restart will re-apply more of the log");
    }
}

impl Applied {
    fn checkpoint(&self) -> Option<AppliedCheckpoint> {
        Some(AppliedCheckpoint {
            last: self.last?,
            membership: self.membership.clone(),
            next_offset: self.next_offset,
        })
    }
}

/// openraft's state machine: the applied index and membership.
#[derive(Clone, Debug)]
pub struct StateMachine {
    store: Arc<Store>,
    applied: Arc<Mutex<Applied>>,
    /// The default log's group: the catalog of named logs it applies.
    catalog: Option<Arc<super::catalog::CatalogStore>>,
}

impl StateMachine {
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_catalog(store, None)
    }

    pub fn with_catalog(store: Arc<Store>, catalog: Option<Arc<super::catalog::CatalogStore>>) -> Self {
        let mut applied = match store.current_snapshot() {
            Some(meta) => Applied {
                last: meta.last_log_id,
                next_offset: snapshot_next_offset(&meta.snapshot_id).unwrap_or(0),
                membership: meta.last_membership,
                saved_at: None,
            },
            None => Applied {
                next_offset: store.log().first_offset(),
                ..Default::default()
            },
        };
        // Resume from the applied checkpoint when it is past the snapshot:
        // openraft then re-applies only what came after it.
        if let Some(saved) = store.read_applied()
            && applied.last.is_none_or(|l| saved.last.index > l.index)
        {
            applied = Applied {
                last: Some(saved.last),
                membership: saved.membership,
                next_offset: saved.next_offset,
                saved_at: None,
            };
        }
        store.node().advance_commit(applied.next_offset);
        StateMachine {
            store,
            applied: Arc::new(Mutex::new(applied)),
            catalog,
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
                    EntryPayload::Normal(Request { op: Some(op), .. }) => {
                        // A catalog change: the same outcome on every
                        // replica (see `catalog`). Failing to record it is
                        // a storage failure like any other.
                        let applied = match &self.catalog {
                            Some(c) => c
                                .apply(e.log_id.index, &op)
                                .map_err(|err| io_error(ErrorSubject::Apply(e.log_id), ErrorVerb::Write, err))?,
                            None => super::catalog::Applied::Done,
                        };
                        out.push(Response {
                            offset: a.next_offset,
                            catalog: applied as u8,
                        });
                    }
                    EntryPayload::Normal(req) => {
                        if req.base_offset != a.next_offset && a.last.is_some() {
                            // Offsets come from the log, which assigns them
                            // from the previous batch's end; this cannot
                            // differ unless the log and the applied state
                            // disagree about history.
                            tracing::error!(
                                index = e.log_id.index,
                                batch_offset = req.base_offset,
                                applied_next_offset = a.next_offset,
                                "applied batch does not continue the applied offsets"
                            );
                        }
                        a.next_offset = req.base_offset + u64::from(req.count);
                        out.push(Response {
                            offset: req.base_offset,
                            catalog: 0,
                        });
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(Response {
                            offset: a.next_offset,
                            catalog: 0,
                        });
                    }
                    EntryPayload::Blank => out.push(Response {
                        offset: a.next_offset,
                        catalog: 0,
                    }),
                }
            }
            let due = a.saved_at.is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY);
            let checkpoint = if due {
                a.saved_at = Some(Instant::now());
                a.checkpoint()
            } else {
                None
            };
            (a.next_offset, checkpoint)
        };
        let (next_offset, checkpoint) = next_offset;
        self.store.node().advance_commit(next_offset);
        if let Some(c) = checkpoint {
            save_checkpoint(&self.store, &c);
        }
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
        let catalog = self.catalog.clone();
        tokio::task::spawn_blocking(move || {
            // The catalog first: the entries the snapshot covers are never
            // applied here, and a catalog ahead of the log is harmless (its
            // index skips what it holds).
            if let (
                Some(c),
                SnapshotData::Received {
                    catalog: Some(theirs), ..
                },
            ) = (catalog, &*data)
            {
                c.install(theirs.clone())
                    .map_err(|e| io_error(ErrorSubject::Snapshot(Some(m.signature())), ErrorVerb::Write, e))?;
            }
            install(&store, &m, &data, next_offset)
        })
        .await
        .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))??;
        let checkpoint = {
            let mut a = lock(&self.applied);
            a.last = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            a.next_offset = next_offset;
            a.saved_at = Some(Instant::now());
            a.checkpoint()
        };
        self.store.node().advance_commit(next_offset);
        if let Some(c) = checkpoint {
            save_checkpoint(&self.store, &c);
        }
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
        // Received files came from a peer: verify every batch before the
        // log is reset, so a bad snapshot is refused and the log kept.
        if let SnapshotData::Received { .. } = data {
            let mut expect = None;
            for r in data.batches(last.index) {
                let r = r.map_err(|e| io_error(sig(), ErrorVerb::Read, e))?;
                if expect.is_some_and(|i| i != r.index) {
                    return Err(io_error(
                        sig(),
                        ErrorVerb::Read,
                        std::io::Error::other(format!("snapshot batch {} out of sequence", r.index)),
                    ));
                }
                expect = Some(r.index + 1);
            }
        }
        store.update(|s| s.installing = true)?;
        let mut records = data.batches(last.index).peekable();
        let (first_index, first_offset) = match records.peek() {
            Some(Ok(r)) => (r.index, r.base_offset),
            Some(Err(e)) => return Err(io_error(sig(), ErrorVerb::Read, std::io::Error::other(e.to_string()))),
            None => (last.index + 1, next_offset),
        };
        log.reset(first_index, first_offset)
            .map_err(|e| io_error(sig(), ErrorVerb::Write, e))?;
        let mut batch: Vec<Batch> = Vec::with_capacity(1024);
        let flush = |batch: &mut Vec<Batch>| -> Result<(), StorageError> {
            let entries: Vec<storage::Entry<'_>> = batch
                .iter()
                .map(|r| storage::Entry {
                    index: Some(r.index),
                    term: r.term,
                    kind: r.kind,
                    count: r.count,
                    producer: r.producer,
                    body: &r.body,
                })
                .collect();
            log.append(&entries).map_err(|e| io_error(sig(), ErrorVerb::Write, e))?;
            batch.clear();
            Ok(())
        };
        let mut bytes = 0;
        for r in records {
            let r = r.map_err(|e| io_error(sig(), ErrorVerb::Read, e))?;
            bytes += r.body.len();
            batch.push(r);
            // Bounded by count and bytes: batches may be large.
            if batch.len() == 1024 || bytes >= 8 << 20 {
                flush(&mut batch)?;
                bytes = 0;
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

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::Arc,
    };

    use openraft::{EntryPayload, storage::RaftStateMachine};

    use super::*;
    use crate::{
        cluster::types::{Membership, NodeInfo, Request, log_id},
        node::LogNode,
        storage::FsyncPolicy,
        storage::{Kind, Log, LogConfig, Producer, encode_body},
    };

    /// A log of `n` one-record data batches in term 2; the store over it.
    fn store_with(dir: &std::path::Path, n: u8) -> Arc<Store> {
        let log = Arc::new(Log::open(dir, LogConfig::default()).unwrap());
        for i in log.next_index()..u64::from(n) {
            let body = encode_body(&[[i as u8]]);
            log.append(&[storage::Entry {
                index: None,
                term: 2,
                kind: Kind::Data,
                count: 1,
                producer: Producer::default(),
                body: &body,
            }])
            .unwrap();
        }
        let node = Arc::new(LogNode::new(log, 1 << 20));
        Store::open(node, dir, FsyncPolicy::Always).unwrap()
    }

    /// Saves a checkpoint with no membership.
    fn save_plain(store: &Store, last: LogId, next_offset: u64) {
        store
            .save_applied(&AppliedCheckpoint {
                last,
                membership: StoredMembership::default(),
                next_offset,
            })
            .unwrap();
    }

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: log_id(2, index),
            payload: EntryPayload::Normal(Request {
                count: 1,
                body: encode_body(&[[index as u8]]).into(),
                base_offset: index,
                op: None,
            }),
        }
    }

    /// A restarted state machine resumes from its checkpoint (openraft then
    /// re-applies nothing before it) and makes those records visible at
    /// once, without a leader.
    #[tokio::test]
    async fn a_restart_resumes_from_the_applied_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 8);
        let mut sm = StateMachine::new(store.clone());
        assert_eq!(sm.applied_state().await.unwrap().0, None);
        sm.apply((0..8).map(entry)).await.unwrap();
        drop((sm, store));

        let store = store_with(dir.path(), 8);
        let mut sm = StateMachine::new(store.clone());
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2, 7)));
        assert_eq!(store.node().committed(), 8, "records visible without re-applying");

        // The membership comes back with it.
        let node = NodeInfo {
            name: "n1".into(),
            peer_addr: "10.0.0.1:8401".into(),
            client_addr: "10.0.0.1:8400".into(),
            domain: "zone-a".into(),
        };
        let membership = StoredMembership::new(
            Some(log_id(2, 1)),
            Membership::new(vec![BTreeSet::from([7])], BTreeMap::from([(7, node)])),
        );
        store
            .save_applied(&AppliedCheckpoint {
                last: log_id(2, 7),
                membership: membership.clone(),
                next_offset: 8,
            })
            .unwrap();
        let mut sm = StateMachine::new(store.clone());
        assert_eq!(sm.applied_state().await.unwrap(), (Some(log_id(2, 7)), membership));
    }

    /// A checkpoint at or below the current snapshot loses to it.
    #[tokio::test]
    async fn the_snapshot_wins_over_an_older_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 8);
        save_plain(&store, log_id(2, 3), 4);
        let last = log_id(2, 5);
        store
            .update(|s| {
                s.snapshot = Some(SnapshotMeta {
                    last_log_id: Some(last),
                    last_membership: StoredMembership::default(),
                    snapshot_id: crate::cluster::snapshot::snapshot_id(Some(last), 6),
                })
            })
            .unwrap();
        let mut sm = StateMachine::new(store.clone());
        assert_eq!(sm.applied_state().await.unwrap().0, Some(last));
        assert_eq!(store.node().committed(), 6);
    }

    /// A checkpoint the log does not bear out (another term at its index,
    /// or an index the log no longer has) is ignored: openraft re-applies
    /// from the snapshot as before.
    #[tokio::test]
    async fn a_checkpoint_the_log_does_not_bear_out_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), 4);
        // Another term; beyond the log; the right entry but another end offset.
        for (last, next_offset) in [(log_id(3, 3), 4), (log_id(2, 9), 10), (log_id(2, 3), 9)] {
            save_plain(&store, last, next_offset);
            let mut sm = StateMachine::new(store.clone());
            assert_eq!(
                sm.applied_state().await.unwrap().0,
                None,
                "{last:?} / {next_offset} trusted"
            );
        }
        // The same checkpoint with the log's own term is trusted.
        save_plain(&store, log_id(2, 3), 4);
        let mut sm = StateMachine::new(store.clone());
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2, 3)));
    }
}
