//! Reads: batches by Raft index, records by data offset, and iterators.
//!
//! A read finds where a batch lives under the log's mutex (a few loads from
//! the mmap'd index) and, when the batch is in the file, reads it *after*
//! releasing the mutex: a slow disk or a large read never holds up appends.
//! Batches still in the write buffer are copied out under the mutex (a
//! memcpy). A batch read outside the mutex may race with a truncation that
//! rewrote its bytes; such a read fails its checksum or index check and is
//! retried once under the mutex, which gives the definitive answer.

use std::{collections::VecDeque, fs::File, os::unix::fs::FileExt, path::PathBuf, sync::Arc};

use bytes::Bytes;

use super::{
    Error, Inner, Log, Result,
    batch::{self, Batch, Kind, Record},
    lock,
};

/// Where one batch is: copied out of a memory buffer, or in a file.
enum Located {
    Bytes(Bytes),
    File {
        file: Arc<File>,
        path: PathBuf,
        pos: u64,
        len: u64,
    },
}

impl Log {
    /// Reads the batch at Raft index `index`.
    pub fn read(&self, index: u64) -> Result<Batch> {
        let located = lock(&self.shared.inner).locate(index)?;
        match located.read(index) {
            Ok(b) => Ok(b),
            // Raced with a truncation or reset: ask again under the lock.
            Err(_) => {
                let inner = lock(&self.shared.inner);
                inner.locate(index)?.read(index)
            }
        }
    }

    /// Reads the data record at data offset `offset` (reading the batch
    /// that holds it).
    pub fn read_offset(&self, offset: u64) -> Result<Record> {
        let index = lock(&self.shared.inner).index_of_offset(offset)?;
        let b = self.read(index)?;
        // A damaged sealed index may map the offset to a batch after it.
        offset
            .checked_sub(b.base_offset)
            .and_then(|i| b.records().nth(i as usize))
            .filter(|r| r.offset == offset)
            .ok_or_else(|| self.misplaced(index, offset))
    }

    pub(super) fn misplaced(&self, index: u64, offset: u64) -> Error {
        Error::Corrupt {
            path: self.shared.dir.clone(),
            position: 0,
            reason: format!("the index maps offset {offset} to batch {index}, which does not hold it"),
        }
    }

    /// Reads batches with indexes in `[from, to)`, stopping early after
    /// `max_bytes` of body (at least one batch is returned).
    pub fn read_range(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        let to = to.min(self.next_index());
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = from;
        while i < to && (out.is_empty() || bytes < max_bytes) {
            let b = self.read(i)?;
            bytes += b.body.len();
            out.push(b);
            i += 1;
        }
        Ok(out)
    }

    /// Reads up to `max_records` data records with offsets in `[from, to)`,
    /// stopping early after `max_bytes` of values (at least one record is
    /// returned if any is in range). Whole batches are read: one lookup for
    /// the first, then one read per batch.
    pub fn read_data(&self, from: u64, to: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let (mut index, to) = {
            let inner = lock(&self.shared.inner);
            let to = to.min(inner.next_offset);
            if from >= to {
                return Ok(Vec::new());
            }
            (inner.index_of_offset(from)?, to)
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = from;
        while next < to && out.len() < max_records && (out.is_empty() || bytes < max_bytes) {
            let b = self.read(index)?;
            index += 1;
            if b.kind != Kind::Data || b.end_offset() <= next {
                continue;
            }
            for r in b.records().skip(next.saturating_sub(b.base_offset) as usize) {
                if r.offset >= to || out.len() >= max_records || (!out.is_empty() && bytes >= max_bytes) {
                    return Ok(out);
                }
                next = r.offset + 1;
                bytes += r.value.len();
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Iterates every batch (data and control) from Raft index `from`.
    pub fn iter_from_index(&self, from: u64) -> BatchIter<'_> {
        BatchIter {
            log: self,
            next: from,
            buf: VecDeque::new(),
        }
    }

    /// Iterates data records from data offset `from`.
    pub fn iter_from_offset(&self, from: u64) -> RecordIter<'_> {
        RecordIter {
            log: self,
            next: from,
            buf: VecDeque::new(),
        }
    }
}

impl Inner {
    /// Where the batch at `index` is, without reading a file.
    fn locate(&self, index: u64) -> Result<Located> {
        let (first, next) = (self.first_index(), self.next_index);
        if index < first || index >= next {
            return Err(Error::IndexOutOfRange { index, first, next });
        }
        let seg = self.segment_of_index(index);
        let Some((pos, len)) = seg.span((index - seg.base_index) as usize) else {
            return Err(Error::Corrupt {
                path: seg.idx_path.clone(),
                position: 0,
                reason: format!("the index entry of batch {index} points outside the log"),
            });
        };
        if !seg.sealed && pos >= self.pending_pos {
            let at = (pos - self.pending_pos) as usize;
            return Ok(Located::Bytes(Bytes::copy_from_slice(
                &self.pending[at..at + len as usize],
            )));
        }
        if let Some(f) = self
            .inflight
            .as_ref()
            .filter(|f| f.base_index == seg.base_index && pos >= f.pos && pos < f.pos + f.buf.len() as u64)
        {
            let at = (pos - f.pos) as usize;
            return Ok(Located::Bytes(Bytes::copy_from_slice(&f.buf[at..at + len as usize])));
        }
        Ok(Located::File {
            file: seg.file.clone(),
            path: seg.log_path.clone(),
            pos,
            len,
        })
    }
}

impl Located {
    /// Reads and verifies the batch, which must be the one at `index`.
    fn read(self, index: u64) -> Result<Batch> {
        let (bytes, path, pos) = match self {
            Located::Bytes(b) => (b, None, 0),
            Located::File { file, path, pos, len } => {
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, pos).map_err(|e| Error::io(&path, e))?;
                (Bytes::from(buf), Some(path), pos)
            }
        };
        match batch::decode_batch(bytes) {
            Some(b) if b.index == index => Ok(b),
            _ => Err(Error::Corrupt {
                path: path.unwrap_or_default(),
                position: pos,
                reason: format!("batch {index} fails its checksum"),
            }),
        }
    }
}

/// Iterator over batches; see [`Log::iter_from_index`]. It reads ahead in
/// groups and ends at the end of the log as it was when a group was read.
pub struct BatchIter<'a> {
    log: &'a Log,
    next: u64,
    buf: VecDeque<Batch>,
}

impl Iterator for BatchIter<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            match self.log.read_range(self.next, self.next.saturating_add(256), 1 << 20) {
                Ok(b) => self.buf.extend(b),
                Err(e) if e.is_out_of_range() => return None,
                Err(e) => return Some(Err(e)),
            }
        }
        let b = self.buf.pop_front()?;
        self.next = b.index + 1;
        Some(Ok(b))
    }
}

/// Iterator over data records; see [`Log::iter_from_offset`].
pub struct RecordIter<'a> {
    log: &'a Log,
    next: u64,
    buf: VecDeque<Record>,
}

impl Iterator for RecordIter<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            match self.log.read_data(self.next, u64::MAX, 4096, 1 << 20) {
                Ok(b) => self.buf.extend(b),
                Err(e) if e.is_out_of_range() => return None,
                Err(e) => return Some(Err(e)),
            }
        }
        let r = self.buf.pop_front()?;
        self.next = r.offset + 1;
        Some(Ok(r))
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::{Error, Log, LogConfig, segment::test_files::*};

    /// Found with the `segment_recovery` fuzz target (`fuzz/`): a damaged
    /// sealed index that maps an offset to a later batch made
    /// `read_offset` subtract past zero; it is now a `Corrupt` error.
    #[test]
    fn an_offset_mapped_to_a_later_batch_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let pos = write_log(dir.path(), 1, 0, &[(1, 0, 1), (2, 1, 1), (3, 2, 1)]);
        // Entry 1 claims offset 0; its batch starts at offset 1.
        write_index(dir.path(), 1, &[(pos[0], 0), (pos[1], 0), (pos[2], 2)]);
        write_log(dir.path(), 4, 3, &[(4, 3, 1)]);
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        assert!(matches!(log.read_offset(0), Err(Error::Corrupt { .. })));
        assert_eq!(log.read_offset(2).unwrap().offset, 2);
        assert_eq!(log.read_offset(3).unwrap().offset, 3);
    }
}
