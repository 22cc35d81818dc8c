//! The fixed-width, memory-mapped index of one segment.
//!
//! Entry `i` describes the record with Raft index `base_index + i`:
//!
//! ```text
//!  offset  size  field
//!       0     8  pos     byte position of the record in the segment's .log
//!       8     8  offset  the record's data offset (header field `offset`)
//! ```
//!
//! Example: a segment based at index 1024 holding a data record (offset 900),
//! a control entry, then a data record of 100 bytes each has entries
//! `(0, 900) (136, 901) (272, 901)`. Data offset 901 is the *last* entry whose
//! offset is <= 901, found by binary search: entry 2 at position 272.
//!
//! The active segment's index file is pre-sized to its capacity (a sparse
//! file) and mapped writable; entries past `len` are zero. The index is
//! derived data: it is never fsynced on the hot path, and recovery rebuilds
//! whatever part of it a crash lost from the checksummed `.log`. Sealing
//! flushes it and trims the file to exactly `len` entries, so a sealed
//! segment's entry count is its file length / 16.

use std::{fs::File, fs::OpenOptions, path::Path};

use memmap2::{Mmap, MmapMut, MmapOptions};

/// Bytes per index entry.
pub const ENTRY_LEN: usize = 16;

enum Map {
    /// No mapping: zero-length file.
    None,
    ReadOnly(Mmap),
    Writable(MmapMut),
}

pub struct Index {
    file: File,
    map: Map,
    len: usize,
    capacity: usize,
    /// Bytes of the file known to have blocks (writable maps only).
    reserved: usize,
}

impl Index {
    /// Opens a sealed index read-only; every entry in the file is valid.
    pub fn open_sealed(path: &Path) -> std::io::Result<Index> {
        let file = File::open(path)?;
        let bytes = file.metadata()?.len() as usize;
        let len = bytes / ENTRY_LEN;
        let map = if bytes == 0 {
            Map::None
        } else {
            // Safety: the data directory is locked by this process (see
            // `Log::open`) and sealed index files are never written again, so
            // the mapping cannot change under us.
            Map::ReadOnly(unsafe { MmapOptions::new().len(len * ENTRY_LEN).map(&file)? })
        };
        Ok(Index {
            file,
            map,
            len,
            capacity: len,
            reserved: 0,
        })
    }

    /// Opens (creating if needed) a writable index sized for `capacity`
    /// entries. `len` is left 0: the caller establishes how many entries are
    /// valid and calls [`Index::set_len`].
    pub fn open_active(path: &Path, capacity: usize) -> std::io::Result<Index> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let existing = file.metadata()?.len() as usize / ENTRY_LEN;
        let capacity = capacity.max(existing).max(1);
        file.set_len((capacity * ENTRY_LEN) as u64)?;
        // Safety: as in `open_sealed`, only this process touches the file; the
        // file is at least `capacity * ENTRY_LEN` bytes long and is never
        // shrunk while mapped (sealing remaps first).
        let map = unsafe { MmapOptions::new().len(capacity * ENTRY_LEN).map_mut(&file)? };
        Ok(Index {
            file,
            map: Map::Writable(map),
            len: 0,
            capacity,
            reserved: 0,
        })
    }

    fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::None => &[],
            Map::ReadOnly(m) => m,
            Map::Writable(m) => m,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// Number of entries the mapping could hold (for recovery scans).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entry `i` as (position, data offset). Reads past `len` are allowed up
    /// to the capacity (recovery inspects them).
    pub fn entry(&self, i: usize) -> (u64, u64) {
        let b = &self.bytes()[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
        (
            u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        )
    }

    /// Number of leading entries whose data offset is <= `offset`.
    pub fn count_offset_le(&self, offset: u64) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid).1 <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Appends an entry. The caller checks `is_full` first. Fails (instead
    /// of a SIGBUS later) when the filesystem has no block for it.
    pub fn push(&mut self, pos: u64, offset: u64) -> std::io::Result<()> {
        let i = self.len;
        let end = (i + 1) * ENTRY_LEN;
        if end > self.reserved {
            let upto = end
                .div_ceil(RESERVE_STEP)
                .saturating_mul(RESERVE_STEP)
                .min(self.capacity * ENTRY_LEN);
            reserve(&self.file, self.reserved, upto)?;
            self.reserved = upto;
        }
        self.write_at(i, pos, offset);
        self.len += 1;
        Ok(())
    }

    fn write_at(&mut self, i: usize, pos: u64, offset: u64) {
        let Map::Writable(m) = &mut self.map else {
            panic!("write to a sealed index");
        };
        let b = &mut m[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
        b[0..8].copy_from_slice(&pos.to_le_bytes());
        b[8..16].copy_from_slice(&offset.to_le_bytes());
    }

    /// Declares the first `len` entries valid and zeroes the rest of the
    /// mapping, so stale entries never survive a truncation.
    pub fn set_len(&mut self, len: usize) {
        let Map::Writable(m) = &mut self.map else {
            panic!("set_len on a sealed index");
        };
        let end = (self.len.max(len) * ENTRY_LEN).min(m.len());
        let start = len * ENTRY_LEN;
        if start < end {
            m[start..end].fill(0);
        }
        self.len = len;
    }

    /// Flushes the mapping, trims the file to exactly `len` entries, fsyncs
    /// it and remaps it read-only.
    pub fn seal(&mut self) -> std::io::Result<()> {
        if let Map::Writable(m) = &self.map {
            m.flush()?;
        }
        self.map = Map::None;
        self.file.set_len((self.len * ENTRY_LEN) as u64)?;
        self.file.sync_all()?;
        self.capacity = self.len;
        if self.len > 0 {
            // Safety: see `open_sealed`.
            self.map = Map::ReadOnly(unsafe { MmapOptions::new().len(self.len * ENTRY_LEN).map(&self.file)? });
        }
        Ok(())
    }

    /// Bytes of index that are meaningful (what a sealed file would hold).
    pub fn used_bytes(&self) -> u64 {
        (self.len * ENTRY_LEN) as u64
    }

    /// Remaps with room for `capacity` entries, keeping the valid ones.
    pub fn grow(self, path: &Path, capacity: usize) -> std::io::Result<Index> {
        let len = self.len;
        self.flush()?;
        drop(self);
        let mut index = Index::open_active(path, capacity)?;
        index.len = len;
        Ok(index)
    }

    /// Flushes the mapping and fsyncs the file (clean shutdown).
    pub fn sync(&self) -> std::io::Result<()> {
        self.flush()?;
        self.file.sync_all()
    }

    /// Flushes dirty pages of a writable mapping (used on clean close).
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.map {
            Map::Writable(m) => m.flush(),
            _ => Ok(()),
        }
    }
}

/// Bytes of index file given blocks at a time (4096 entries).
const RESERVE_STEP: usize = 64 << 10;

/// Gives bytes `from..to` of the file blocks now. Entries are stored through
/// the writable map, and a store into a page with no block behind it on a
/// full filesystem is a SIGBUS that kills the process, not an error: with
/// blocks reserved before the store, a full disk is an ENOSPC here instead
/// (found by the fault harness's disk-full run). Reserved a step at a time,
/// so a fresh segment does not take its whole index's room up front.
/// Filesystems without fallocate keep the sparse file.
fn reserve(file: &File, from: usize, to: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if to <= from {
        return Ok(());
    }
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(to - from)) else {
        return Err(std::io::Error::other("index too large"));
    };
    // Safety: a plain syscall on a descriptor this index owns.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, off, len) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}
