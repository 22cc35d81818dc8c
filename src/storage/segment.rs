//! One segment: a `.log` file of records and its `.idx` index.
//!
//! Files are named by the segment's first Raft index, zero-padded to 20
//! digits, so sorting names sorts segments: `00000000000000001024.log`.
//!
//! Every `.log` starts with a 32-byte file header, written and fsynced when
//! the segment is created, before any record:
//!
//! ```text
//!  0  8  magic "SIDELOG1"
//!  8  8  base index   (must match the file name)
//! 16  8  base offset  (data offset of the first record to be stored here)
//! 24  4  reserved, zero
//! 28  4  CRC32C of bytes 0..28
//! ```
//!
//! Records follow back to back (see [`super::record`]). A segment is *active*
//! (the single one that takes appends; index mapped writable) or *sealed*
//! (immutable, index trimmed and read-only).

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Error, Result,
    index::Index,
    record::{self, HEADER_LEN, Kind},
};

pub const FILE_HEADER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"SIDELOG1";

pub fn file_name(base_index: u64, ext: &str) -> String {
    format!("{base_index:020}.{ext}")
}

/// Parses `00000000000000001024.log` into 1024.
pub fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

/// What a clean shutdown recorded about the active segment (`CLEAN` file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanMarker {
    pub base_index: u64,
    pub file_len: u64,
    pub entries: usize,
}

impl CleanMarker {
    pub fn encode(&self) -> String {
        format!(
            "sidelog-clean-v1 {} {} {}\n",
            self.base_index, self.file_len, self.entries
        )
    }

    pub fn decode(text: &str) -> Option<CleanMarker> {
        let mut it = text.split_whitespace();
        if it.next()? != "sidelog-clean-v1" {
            return None;
        }
        let base_index = it.next()?.parse().ok()?;
        let file_len = it.next()?.parse().ok()?;
        let entries = it.next()?.parse().ok()?;
        it.next().is_none().then_some(CleanMarker {
            base_index,
            file_len,
            entries,
        })
    }
}

pub(crate) struct Segment {
    pub base_index: u64,
    pub base_offset: u64,
    pub log_path: PathBuf,
    pub idx_path: PathBuf,
    pub file: Arc<File>,
    /// Logical size in bytes, including appended bytes not yet written to
    /// the file (the active segment's write buffer).
    pub size: u64,
    pub index: Index,
    pub sealed: bool,
    /// Data offset the record after this segment's last gets (kept current
    /// for sealed segments; the log tracks it for the active one).
    pub end_offset: u64,
}

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

fn encode_file_header(base_index: u64, base_offset: u64) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&base_index.to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads and checks the file header; returns the base offset.
fn read_file_header(file: &File, path: &Path, base_index: u64) -> Result<u64> {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0).map_err(|e| Error::io(path, e))?;
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    let corrupt = |reason: &str| Error::Corrupt {
        path: path.to_owned(),
        position: 0,
        reason: reason.to_owned(),
    };
    if &h[0..8] != MAGIC {
        return Err(corrupt("bad magic: not a sidelog segment"));
    }
    if crc != crc32c::crc32c(&h[0..28]) {
        return Err(corrupt("file header checksum mismatch"));
    }
    if u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")) != base_index {
        return Err(corrupt("file header base index does not match the file name"));
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")))
}

impl Segment {
    /// Creates a new, empty active segment and makes its header durable.
    pub fn create(dir: &Path, base_index: u64, base_offset: u64, capacity: usize) -> Result<Segment> {
        let log_path = dir.join(file_name(base_index, "log"));
        let idx_path = dir.join(file_name(base_index, "idx"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(|e| Error::io(&log_path, e))?;
        file.write_all_at(&encode_file_header(base_index, base_offset), 0)
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(&log_path, e))?;
        let _ = std::fs::remove_file(&idx_path);
        let index = Index::open_active(&idx_path, capacity).map_err(|e| Error::io(&idx_path, e))?;
        Ok(Segment {
            base_index,
            base_offset,
            log_path,
            idx_path,
            file: Arc::new(file),
            size: FILE_HEADER_LEN,
            index,
            sealed: false,
            end_offset: base_offset,
        })
    }

    /// Opens a sealed segment, checking only what is cheap (header, first
    /// and last record): sealed files were fsynced before they were sealed.
    pub fn open_sealed(dir: &Path, base_index: u64) -> Result<Segment> {
        let log_path = dir.join(file_name(base_index, "log"));
        let idx_path = dir.join(file_name(base_index, "idx"));
        let file = File::open(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let size = file.metadata().map_err(|e| Error::io(&log_path, e))?.len();
        let base_offset = read_file_header(&file, &log_path, base_index)?;
        let index = Index::open_sealed(&idx_path).map_err(|e| Error::io(&idx_path, e))?;
        let mut seg = Segment {
            base_index,
            base_offset,
            log_path,
            idx_path,
            file: Arc::new(file),
            size,
            index,
            sealed: true,
            end_offset: base_offset,
        };
        let corrupt = |position: u64, reason: String| Error::Corrupt {
            path: seg.log_path.clone(),
            position,
            reason,
        };
        let n = seg.index.len();
        if n == 0 {
            return Err(Error::Corrupt {
                path: seg.idx_path.clone(),
                position: 0,
                reason: "sealed segment has an empty index".into(),
            });
        }
        if seg.index.entry(0) != (FILE_HEADER_LEN, base_offset) {
            return Err(corrupt(
                FILE_HEADER_LEN,
                "first index entry does not match the file header".into(),
            ));
        }
        let Some((pos, len)) = seg.span(n - 1) else {
            return Err(corrupt(0, "index entries point outside the file".into()));
        };
        if len < HEADER_LEN as u64 {
            return Err(corrupt(pos, format!("last record is truncated ({len} bytes)")));
        }
        let bytes = seg.read_file(pos, len).map_err(|e| Error::io(&seg.log_path, e))?;
        match record::decode_record(&bytes) {
            Some(r) if r.index == base_index + n as u64 - 1 && r.offset == seg.index.entry(n - 1).1 => {
                seg.end_offset = r.offset + u64::from(r.kind == Kind::Data);
                Ok(seg)
            }
            Some(r) => Err(corrupt(
                pos,
                format!(
                    "last record has index {} where the index expects {}",
                    r.index,
                    base_index + n as u64 - 1
                ),
            )),
            None => Err(corrupt(pos, "last record fails its checksum or is truncated".into())),
        }
    }

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
        //    grow by 0 or 1) and its last record verifies.
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
                    pos > prev.0 && off >= prev.1 && off <= prev.1 + 1
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
                    let ok = r.index == base_index + n as u64 - 1 && r.offset == prev.1;
                    if ok {
                        let next_off = prev.1 + u64::from(r.kind == Kind::Data);
                        resume = Some((prev.0 + HEADER_LEN as u64 + r.payload.len() as u64, next_off));
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
                break Some(format!("torn record header at position {pos}"));
            }
            reader.read_exact(&mut hb).map_err(|e| Error::io(&log_path, e))?;
            let h = match record::decode_header(&hb) {
                Ok(h) => h,
                Err(e) => break Some(format!("invalid record header at position {pos}: {e:?}")),
            };
            if h.index != expect_index || h.offset != expect_offset {
                break Some(format!(
                    "record at position {pos} has index {} offset {} where {expect_index}/{expect_offset} was expected",
                    h.index, h.offset
                ));
            }
            if h.record_len() > file_len - pos {
                break Some(format!(
                    "torn record at position {pos}: {} bytes promised, {} present",
                    h.record_len(),
                    file_len - pos
                ));
            }
            payload.resize(h.len as usize, 0);
            reader.read_exact(&mut payload).map_err(|e| Error::io(&log_path, e))?;
            if !record::verify(&hb, &payload) {
                break Some(format!("checksum mismatch in record at position {pos}"));
            }
            if index.is_full() {
                let cap = index.capacity() * 2;
                index = index.grow(&idx_path, cap).map_err(|e| Error::io(&idx_path, e))?;
            }
            index.push(pos, h.offset);
            rec.rebuilt_entries += 1;
            expect_index += 1;
            expect_offset += u64::from(h.kind == Kind::Data);
            pos += h.record_len();
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

    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Index one past the last record (== base when empty).
    pub fn next_index(&self) -> u64 {
        self.base_index + self.index.len() as u64
    }

    /// (position, length) of entry `i`.
    pub fn span(&self, i: usize) -> Option<(u64, u64)> {
        // None when the index is inconsistent (a damaged sealed index): an
        // error for the caller, never a panic or a huge allocation.
        let pos = self.index.entry(i).0;
        let end = if i + 1 < self.index.len() {
            self.index.entry(i + 1).0
        } else {
            self.size
        };
        if end > self.size || pos < FILE_HEADER_LEN {
            return None;
        }
        Some((pos, end.checked_sub(pos)?))
    }

    pub fn read_file(&self, pos: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    /// Entry position of data offset `offset` in this segment, if present.
    pub fn find_offset(&self, offset: u64) -> Option<usize> {
        let k = self.index.count_offset_le(offset);
        (k > 0 && self.index.entry(k - 1).1 == offset).then_some(k - 1)
    }

    /// Bytes on disk that matter: log plus used index.
    pub fn disk_bytes(&self) -> u64 {
        self.size + self.index.used_bytes()
    }

    /// Seals the segment: the caller has already written and fsynced every
    /// record; this trims and fsyncs the index.
    pub fn seal(&mut self) -> Result<()> {
        self.index.seal().map_err(|e| Error::io(&self.idx_path, e))?;
        self.sealed = true;
        Ok(())
    }

    /// Turns a sealed segment back into the active one (after a suffix
    /// truncation removed the segments after it).
    pub fn reopen_active(&mut self, capacity: usize) -> Result<()> {
        let len = self.index.len();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.log_path)
            .map_err(|e| Error::io(&self.log_path, e))?;
        let mut index =
            Index::open_active(&self.idx_path, capacity.max(len)).map_err(|e| Error::io(&self.idx_path, e))?;
        index.set_len(len);
        self.index = index;
        self.file = Arc::new(file);
        self.sealed = false;
        Ok(())
    }

    /// Drops entries from `i` on: the file and the index shrink.
    pub fn truncate_entries(&mut self, i: usize) -> Result<()> {
        let new_size = if i < self.index.len() {
            self.index.entry(i).0
        } else {
            self.size
        };
        self.file
            .set_len(new_size)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| Error::io(&self.log_path, e))?;
        self.index.set_len(i);
        self.size = new_size;
        Ok(())
    }

    pub fn remove_files(&self) -> Result<()> {
        std::fs::remove_file(&self.log_path).map_err(|e| Error::io(&self.log_path, e))?;
        match std::fs::remove_file(&self.idx_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&self.idx_path, e)),
            _ => Ok(()),
        }
    }
}

/// Reads the record at `pos` if it is complete and verifies.
fn read_verified_at(file: &File, pos: u64, file_len: u64) -> Option<record::Record> {
    let mut hb = [0u8; HEADER_LEN];
    file.read_exact_at(&mut hb, pos).ok()?;
    let h = record::decode_header(&hb).ok()?;
    if pos + h.record_len() > file_len {
        return None;
    }
    let mut bytes = vec![0u8; h.record_len() as usize];
    file.read_exact_at(&mut bytes, pos).ok()?;
    record::decode_record(&bytes)
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
