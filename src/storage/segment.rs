//! One segment: a `.log` file of records and its `.idx` index.
//!
//! Files are named by the segment's first Raft index, zero-padded to 20
//! digits, so sorting names sorts segments: `00000000000000001024.log`.
//!
//! Every `.log` starts with a 32-byte file header, written and fsynced when
//! the segment is created, before any record:
//!
//! ```text
//!  0  8  magic "SIDELOG2" (the format version is its last byte; see
//!          `batch::FORMAT_VERSION`)
//!  8  8  base index   (must match the file name)
//! 16  8  base offset  (data offset of the first record to be stored here)
//! 24  4  reserved, zero
//! 28  4  CRC32C of bytes 0..28
//! ```
//!
//! Batches follow back to back (see [`super::batch`]). A segment is *active*
//! (the single one that takes appends; index mapped writable) or *sealed*
//! (immutable, index trimmed and read-only).

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Error, Result,
    batch::{self, FORMAT_VERSION, HEADER_LEN},
    index::Index,
};

pub const FILE_HEADER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"SIDELOG2";
/// Magic bytes without the version digit: files of older formats share it.
const MAGIC_STEM: &[u8; 7] = b"SIDELOG";

/// The format version of a segment file, from its first bytes: `Some(v)`
/// for a sidelog segment of any version, `None` for anything else (or a
/// file too short to tell, which recovery handles).
pub fn file_format_version(path: &Path) -> std::io::Result<Option<u32>> {
    let mut magic = [0u8; 8];
    let file = File::open(path)?;
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if &magic[..7] != MAGIC_STEM || !magic[7].is_ascii_digit() {
        return Ok(None);
    }
    Ok(Some(u32::from(magic[7] - b'0')))
}

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

pub(super) fn encode_file_header(base_index: u64, base_offset: u64) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&base_index.to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads and checks the file header; returns the base offset.
pub(crate) fn read_file_header(file: &File, path: &Path, base_index: u64) -> Result<u64> {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0).map_err(|e| Error::io(path, e))?;
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    let corrupt = |reason: &str| Error::Corrupt {
        path: path.to_owned(),
        position: 0,
        reason: reason.to_owned(),
    };
    if &h[0..8] != MAGIC {
        if &h[0..7] == MAGIC_STEM && h[7].is_ascii_digit() {
            return Err(Error::UnsupportedFormat {
                path: path.to_owned(),
                found: u32::from(h[7] - b'0'),
                supported: FORMAT_VERSION,
            });
        }
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
        if base_index.checked_add(n as u64).is_none() {
            return Err(Error::Corrupt {
                path: seg.idx_path.clone(),
                position: 0,
                reason: format!("{n} index entries from base index {base_index} run past the last index"),
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
            return Err(corrupt(pos, format!("last batch is truncated ({len} bytes)")));
        }
        let bytes = seg.read_file(pos, len).map_err(|e| Error::io(&seg.log_path, e))?;
        match batch::decode_batch(bytes.into()) {
            Some(r) if r.index == base_index + n as u64 - 1 && r.base_offset == seg.index.entry(n - 1).1 => {
                seg.end_offset = r.end_offset();
                Ok(seg)
            }
            Some(r) => Err(corrupt(
                pos,
                format!(
                    "last batch has index {} where the index expects {}",
                    r.index,
                    base_index + n as u64 - 1
                ),
            )),
            None => Err(corrupt(pos, "last batch fails its checksum or is truncated".into())),
        }
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

    /// Entry position of the batch that holds data offset `offset`: the
    /// last entry whose base offset is <= `offset` (control entries before
    /// a data batch share its base offset, those after it carry its end).
    /// The caller has checked that the offset is inside this segment.
    pub fn find_offset(&self, offset: u64) -> Option<usize> {
        self.index.count_offset_le(offset).checked_sub(1)
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

/// Writes raw segment files for tests of damaged data directories.
#[cfg(test)]
pub(crate) mod test_files {
    use std::path::Path;

    use super::{encode_file_header, file_name};
    use crate::storage::batch::{self, Entry};

    /// Writes `<base>.log` holding data batches `(index, base offset,
    /// records)`, one record `"r"` each; returns their positions.
    pub fn write_log(dir: &Path, base_index: u64, base_offset: u64, batches: &[(u64, u64, u32)]) -> Vec<u64> {
        let mut bytes = encode_file_header(base_index, base_offset).to_vec();
        let mut positions = Vec::new();
        for &(index, offset, count) in batches {
            positions.push(bytes.len() as u64);
            let body = batch::encode_body(&vec![&b"r"[..]; count as usize]);
            batch::encode(&mut bytes, index, offset, &Entry::data(&body, count));
        }
        std::fs::write(dir.join(file_name(base_index, "log")), bytes).unwrap();
        positions
    }

    /// Writes `<base>.idx` with the given `(position, offset)` entries.
    pub fn write_index(dir: &Path, base_index: u64, entries: &[(u64, u64)]) {
        let bytes: Vec<u8> = entries
            .iter()
            .flat_map(|(p, o)| p.to_le_bytes().into_iter().chain(o.to_le_bytes()))
            .collect();
        std::fs::write(dir.join(file_name(base_index, "idx")), bytes).unwrap();
    }
}
