//! Snapshot data. A snapshot is "the log up to index S": building one only
//! writes its metadata; sending one streams the segment files (see
//! `network`), hard-linked so retention cannot remove them mid-transfer.

use std::{fmt, path::PathBuf, sync::Arc};

use super::types::LogId;
use crate::storage::{self, Batch, Log};

/// Snapshot data: where the records up to the snapshot's last index are.
pub enum SnapshotData {
    /// In this node's log (a snapshot built here).
    Local(Arc<Log>),
    /// Segment files received from the leader, in order; the directory is
    /// removed when the data is dropped.
    Received {
        dir: PathBuf,
        files: Vec<PathBuf>,
        /// The sender's catalog of named logs (the default log's group).
        catalog: Option<super::catalog::Catalog>,
    },
    /// Nothing yet (`begin_receiving_snapshot`).
    Empty,
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotData::Local(log) => write!(f, "Local({})", log.dir().display()),
            SnapshotData::Received { dir, files, .. } => {
                write!(f, "Received({}, {} files)", dir.display(), files.len())
            }
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
    /// The batches up to index `last` (inclusive), oldest first.
    pub(super) fn batches(&self, last: u64) -> Box<dyn Iterator<Item = storage::Result<Batch>> + Send + '_> {
        match self {
            SnapshotData::Local(log) => Box::new(
                log.iter_from_index(log.first_index())
                    .take_while(move |r: &storage::Result<Batch>| r.as_ref().map_or(true, |r| r.index <= last)),
            ),
            SnapshotData::Received { files, .. } => Box::new(
                files
                    .iter()
                    .flat_map(|path| match storage::read_segment_file(path) {
                        Ok(reader) => Box::new(reader) as Box<dyn Iterator<Item = _> + Send>,
                        Err(e) => Box::new(std::iter::once(Err(e))),
                    })
                    .take_while(move |r: &storage::Result<Batch>| r.as_ref().map_or(true, |r| r.index <= last)),
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
