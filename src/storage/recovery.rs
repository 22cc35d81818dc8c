//! Crash recovery of the active segment.
//!
//! Sealed segments were fsynced (log and trimmed index) before the next
//! segment was created, so opening them checks only the header and the
//! first and last batch. The active segment may have been cut anywhere by a
//! crash: [`Segment::recover_active`] keeps every batch whose checksum
//! verifies, rebuilds the index entries it lost and cuts a torn tail.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufReader, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Error, FORMAT_VERSION, LogConfig, Result,
    batch::{self, HEADER_LEN},
    index::Index,
    markers::{self, CLEAN_MARKER, CleanMarker, RESET_MARKER},
    segment,
    segment::{FILE_HEADER_LEN, Segment, file_name, read_file_header},
    sync_dir,
};

/// What recovery found in the active segment.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub path: PathBuf,
    /// Index entries rebuilt from the log (lost by the crash).
    pub rebuilt_entries: usize,
    /// Bytes cut from the end of the log.
    pub truncated_bytes: u64,
    /// Why the tail was cut, if it was.
    pub reason: Option<String>,
}

impl Segment {
    /// Opens the active (last) segment and recovers it: trusts the index up
    /// to its last entry that verifies against the log, then scans the log
    /// past it, keeping every record whose checksum verifies, rebuilding the
    /// lost index entries and cutting a torn or corrupt tail.
    ///
    /// `fallback_offset` is used only when the file header itself is torn
    /// (a crash while the segment was being created, before any record).
    pub fn recover_active(
        dir: &Path,
        base_index: u64,
        capacity: usize,
        clean: Option<CleanMarker>,
        fallback_offset: u64,
    ) -> Result<(Segment, Recovery)> {
        let log_path = dir.join(file_name(base_index, "log"));
        let idx_path = dir.join(file_name(base_index, "idx"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(|e| Error::io(&log_path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&log_path, e))?.len();
        let base_offset = match read_file_header(&file, &log_path, base_index) {
            Ok(o) => o,
            Err(e) if file_len <= FILE_HEADER_LEN => {
                // Records are written only after the header was fsynced, so
                // a torn header means the segment never held a record.
                tracing::warn!(path = %log_path.display(), cause = %e, "recreating a segment whose creation was interrupted");
                drop(file);
                let seg = Segment::create(dir, base_index, fallback_offset, capacity)?;
                let rec = Recovery {
                    path: log_path,
                    truncated_bytes: file_len,
                    reason: Some(e.to_string()),
                    ..Default::default()
                };
                return Ok((seg, rec));
            }
            Err(e) => return Err(e),
        };
        let mut index = Index::open_active(&idx_path, capacity).map_err(|e| Error::io(&idx_path, e))?;

        // 1. After a clean shutdown (the marker matches this file), the index
        //    was flushed and fsynced with the log: trust it if it is
        //    plausible (positions strictly increase inside the file, offsets
        //    never decrease) and its last batch verifies.
        // 2. Otherwise (a crash) trust nothing: the mmap'd index may hold
        //    stale or missing pages, and unsynced log pages may be holes, so
        //    every record of the active segment is verified from the start.
        //    This is bounded by one segment (64 MiB by default).
        let mut n = 0;
        let mut resume = None;
        if let Some(clean) = clean.filter(|c| c.base_index == base_index && c.file_len == file_len) {
            let mut prev = (0u64, 0u64);
            while n < clean.entries.min(index.capacity()) {
                let (pos, off) = index.entry(n);
                let ok = if n == 0 {
                    pos == FILE_HEADER_LEN && off == base_offset
                } else {
                    pos > prev.0 && off >= prev.1
                };
                if !ok || pos.checked_add(HEADER_LEN as u64).is_none_or(|end| end > file_len) {
                    break;
                }
                prev = (pos, off);
                n += 1;
            }
            let verified = n == clean.entries
                && n > 0
                && read_verified_at(&file, prev.0, file_len).is_some_and(|r| {
                    let ok = base_index.checked_add(n as u64 - 1) == Some(r.index) && r.base_offset == prev.1;
                    if ok {
                        resume = Some((prev.0 + HEADER_LEN as u64 + r.body.len() as u64, r.end_offset()));
                    }
                    ok
                });
            if !verified {
                n = 0;
                resume = None;
            }
        }
        if n == 0 {
            // Untrusted: start from an empty index. Truncating the file zeroes
            // it without touching (and dirtying) every page of the mapping.
            drop(index);
            let f = OpenOptions::new()
                .write(true)
                .open(&idx_path)
                .map_err(|e| Error::io(&idx_path, e))?;
            f.set_len(0).map_err(|e| Error::io(&idx_path, e))?;
            drop(f);
            index = Index::open_active(&idx_path, capacity).map_err(|e| Error::io(&idx_path, e))?;
        }
        index.set_len(n);
        let (mut pos, mut expect_offset) = resume.unwrap_or((FILE_HEADER_LEN, base_offset));
        let mut expect_index = base_index + n as u64;

        // 3. Scan the log past the verified prefix.
        let mut rec = Recovery {
            path: log_path.clone(),
            ..Default::default()
        };
        let mut reader = BufReader::with_capacity(1 << 20, FileReadAt { file: &file, pos });
        let mut hb = [0u8; HEADER_LEN];
        let mut payload = Vec::new();
        let cut_reason = loop {
            if pos == file_len {
                break None;
            }
            if file_len - pos < HEADER_LEN as u64 {
                break Some(format!("torn batch header at position {pos}"));
            }
            reader.read_exact(&mut hb).map_err(|e| Error::io(&log_path, e))?;
            let h = match batch::decode_header(&hb) {
                Ok(h) => h,
                Err(e) => break Some(format!("invalid batch header at position {pos}: {e:?}")),
            };
            if h.index != expect_index || h.base_offset != expect_offset {
                break Some(format!(
                    "batch at position {pos} has index {} offset {} where {expect_index}/{expect_offset} was expected",
                    h.index, h.base_offset
                ));
            }
            if h.batch_len() > file_len - pos {
                break Some(format!(
                    "torn batch at position {pos}: {} bytes promised, {} present",
                    h.batch_len(),
                    file_len - pos
                ));
            }
            payload.resize(h.len as usize, 0);
            reader.read_exact(&mut payload).map_err(|e| Error::io(&log_path, e))?;
            if !batch::verify(&hb, &h, &payload) {
                break Some(format!("checksum mismatch in batch at position {pos}"));
            }
            if index.is_full() {
                let cap = index.capacity() * 2;
                index = index.grow(&idx_path, cap).map_err(|e| Error::io(&idx_path, e))?;
            }
            index.push(pos, h.base_offset).map_err(|e| Error::io(&idx_path, e))?;
            rec.rebuilt_entries += 1;
            expect_index += 1;
            expect_offset = h.end_offset();
            pos += h.batch_len();
        };
        drop(reader);
        if pos < file_len {
            file.set_len(pos).map_err(|e| Error::io(&log_path, e))?;
            rec.truncated_bytes = file_len - pos;
            rec.reason = cut_reason;
        }
        // What survived may have been in the page cache only (a killed
        // process): make it durable before anyone is told it exists.
        file.sync_all().map_err(|e| Error::io(&log_path, e))?;
        let seg = Segment {
            base_index,
            base_offset,
            log_path,
            idx_path,
            file: Arc::new(file),
            size: pos,
            index,
            sealed: false,
            end_offset: expect_offset,
        };
        Ok((seg, rec))
    }
}

/// Reads the batch at `pos` if it is complete and verifies.
fn read_verified_at(file: &File, pos: u64, file_len: u64) -> Option<batch::Batch> {
    let mut hb = [0u8; HEADER_LEN];
    file.read_exact_at(&mut hb, pos).ok()?;
    let h = batch::decode_header(&hb).ok()?;
    if pos + h.batch_len() > file_len {
        return None;
    }
    let mut bytes = vec![0u8; h.batch_len() as usize];
    file.read_exact_at(&mut bytes, pos).ok()?;
    batch::decode_batch(bytes.into())
}

/// `Read` over a file from a position, without moving a shared cursor.
struct FileReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for FileReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Lists, checks and opens the segments of `dir`: finishes an interrupted
/// retention delete or reset, opens the sealed segments cheaply and
/// recovers the active one. Returns `(sealed, active)`.
pub(super) fn open_segments(dir: &Path, config: &LogConfig) -> Result<(Vec<Segment>, Segment)> {
    let dir = dir.to_owned();
    let mut bases = Vec::new();
    let mut orphan_indexes = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name();
        match segment::parse_file_name(&name.to_string_lossy()) {
            Some((base, "log")) => bases.push(base),
            Some((base, "idx")) => orphan_indexes.push(base),
            _ => {}
        }
    }
    bases.sort_unstable();
    // Refuse another format version before anything here is changed.
    for &base in &bases {
        let p = dir.join(file_name(base, "log"));
        match segment::file_format_version(&p) {
            Ok(Some(found)) if found != FORMAT_VERSION => {
                return Err(Error::UnsupportedFormat {
                    path: p,
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    for base in orphan_indexes.into_iter().filter(|b| bases.binary_search(b).is_err()) {
        // A retention delete removes the .log first; finish its job.
        let p = dir.join(file_name(base, "idx"));
        std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
    }

    let capacity = config.index_max_entries.max(1);
    // A clean shutdown leaves a marker vouching for the active segment's
    // index; it is consumed here, before anything can be appended.
    let marker_path = dir.join(CLEAN_MARKER);
    let clean = std::fs::read_to_string(&marker_path)
        .ok()
        .and_then(|t| CleanMarker::decode(&t));
    match std::fs::remove_file(&marker_path) {
        Ok(()) => sync_dir(&dir)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&marker_path, e)),
    }
    // A `reset` interrupted by a crash: finish it (see `Log::reset`).
    // While the marker exists nothing was appended after the reset, so
    // every segment goes and the new one is made afresh.
    let reset_path = dir.join(RESET_MARKER);
    if let Ok(text) = std::fs::read_to_string(&reset_path) {
        if let Some((index, offset)) = markers::decode_reset(&text) {
            tracing::warn!(index, offset, "completing an interrupted reset");
            for &b in &bases {
                for ext in ["log", "idx"] {
                    let p = dir.join(file_name(b, ext));
                    match std::fs::remove_file(&p) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
                        _ => {}
                    }
                }
            }
            Segment::create(&dir, index, offset, capacity)?;
            bases = vec![index];
        } else {
            // Torn while being written: no segment was touched yet.
            tracing::warn!("ignoring an incomplete reset marker");
        }
        sync_dir(&dir)?;
        std::fs::remove_file(&reset_path).map_err(|e| Error::io(&reset_path, e))?;
        sync_dir(&dir)?;
    }
    let mut sealed = Vec::with_capacity(bases.len());
    let active = match bases.split_last() {
        None => Segment::create(&dir, config.initial_index, 0, capacity)?,
        Some((&last, older)) => {
            for &base in older {
                let seg = Segment::open_sealed(&dir, base)?;
                check_contiguous(sealed.last(), &seg)?;
                sealed.push(seg);
            }
            let fallback = sealed.last().map_or(0, |s: &Segment| s.end_offset);
            let (seg, rec) = Segment::recover_active(&dir, last, capacity, clean, fallback)?;
            check_contiguous(sealed.last(), &seg)?;
            if rec.truncated_bytes > 0 {
                tracing::warn!(
                    path = %rec.path.display(),
                    cut_bytes = rec.truncated_bytes,
                    reason = rec.reason.as_deref().unwrap_or(""),
                    rebuilt_index_entries = rec.rebuilt_entries,
                    "recovery cut the unverifiable tail of the active segment"
                );
            } else if rec.rebuilt_entries > 0 {
                tracing::info!(
                    path = %rec.path.display(),
                    rebuilt_index_entries = rec.rebuilt_entries,
                    "recovery rebuilt index entries"
                );
            }
            seg
        }
    };
    sync_dir(&dir)?;
    Ok((sealed, active))
}

fn check_contiguous(prev: Option<&Segment>, seg: &Segment) -> Result<()> {
    let Some(prev) = prev else { return Ok(()) };
    if prev.next_index() != seg.base_index || prev.end_offset != seg.base_offset {
        return Err(Error::Corrupt {
            path: seg.log_path.clone(),
            position: 0,
            reason: format!(
                "segment starts at index {} offset {} but the previous one ends before index {} offset {}",
                seg.base_index,
                seg.base_offset,
                prev.next_index(),
                prev.end_offset
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{super::segment::test_files::*, *};
    use crate::storage::{Log, markers::CleanMarker};

    /// Found with the `segment_recovery` fuzz target (`fuzz/`): a batch
    /// whose offsets run past the last u64 overflowed recovery; it is now
    /// cut like any invalid batch.
    #[test]
    fn a_batch_whose_offsets_overflow_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 5, u64::MAX - 1, &[(5, u64::MAX - 1, 2)]);
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!((log.next_index(), log.next_offset()), (5, u64::MAX - 1));
    }

    /// Found with the `segment_recovery` fuzz target: a segment at the last
    /// index overflowed `index + 1`, after a crash and after a clean
    /// shutdown (the marker's entry count).
    #[test]
    fn a_segment_at_the_last_index_opens_without_its_batch() {
        for (clean, index) in [(false, u64::MAX), (true, u64::MAX), (true, 5)] {
            let dir = tempfile::tempdir().unwrap();
            write_log(dir.path(), u64::MAX, 0, &[(index, 0, 1)]);
            if clean {
                write_index(dir.path(), u64::MAX, &[(FILE_HEADER_LEN, 0)]);
                let marker = CleanMarker {
                    base_index: u64::MAX,
                    file_len: std::fs::metadata(dir.path().join(file_name(u64::MAX, "log")))
                        .unwrap()
                        .len(),
                    entries: 1,
                };
                std::fs::write(dir.path().join(CLEAN_MARKER), marker.encode()).unwrap();
            }
            let log = Log::open(dir.path(), LogConfig::default()).unwrap();
            assert_eq!(log.next_index(), u64::MAX, "clean: {clean}, batch index {index}");
        }
    }

    /// Found with the `segment_recovery` fuzz target: a sealed index with
    /// more entries than indexes are left overflowed `base + entries`.
    #[test]
    fn a_sealed_index_past_the_last_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = u64::MAX - 1;
        let pos = write_log(dir.path(), base, 0, &[(base, 0, 1)]);
        write_index(dir.path(), base, &[(pos[0], 0), (pos[0], 1)]);
        write_log(dir.path(), u64::MAX, 1, &[]);
        let err = match Log::open(dir.path(), LogConfig::default()) {
            Err(e) => e,
            Ok(_) => panic!("a sealed index of 2 entries from index {base} was accepted"),
        };
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
