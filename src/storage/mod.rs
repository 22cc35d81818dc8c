//! The segmented, crash-safe commit log every other layer stands on.
//!
//! A [`Log`] is a directory of segments (see [`segment`]): sealed, immutable
//! ones and a single active one that takes appends. The unit of storage is
//! the *batch* (see [`batch`]): one Raft entry, one header, one CRC32C. Each
//! batch carries its position in the log (`index`, which Raft uses) and the
//! dense data offset of its first record (what consumers see: control
//! entries take no offset); record `i` of a batch has offset `base + i`.
//!
//! Where things live:
//!
//! | file | concept |
//! |---|---|
//! | `batch.rs` | the batch format: header, records, checksum |
//! | `segment.rs`, `index.rs` | one segment file and its mmap'd index |
//! | `recovery.rs` | opening and repairing the active segment after a crash |
//! | `markers.rs` | the `CLEAN` and `RESET` marker files |
//! | `flusher.rs` | group commit: the flusher thread and durable watermark |
//! | `reading.rs` | reads by index and by offset, iterators |
//! | `layout.rs` | rolling, truncating and resetting segments |
//! | `retention.rs` | which sealed segments to delete |
//! | `snapshot_files.rs` | hard-linked segment files for snapshots |
//!
//! # Write path and group commit
//!
//! [`Log::append`] encodes batches into an in-memory write buffer and
//! updates the memory-mapped index under one short mutex: no system call
//! (except a segment roll, once per segment). Durability is separate:
//! [`Log::wait_durable`] asks the log's flusher thread to write the buffer
//! and `fdatasync` the active file, then waits until the durable watermark
//! covers the caller's index. While one fsync is in flight, new appends
//! accumulate in the next buffer, so N concurrent appenders are released by
//! one `fdatasync`. [`Log::write_out`] hands the buffer to the OS without an
//! fsync (the `--fsync never|interval` policies); [`Log::sync`] fsyncs
//! synchronously.
//!
//! Reads see every appended batch, durable or not, whether it is still in
//! the write buffer, being written, or in the file. Callers that must only
//! expose durable (or committed) records bound their reads themselves. File
//! reads happen outside the mutex, so a slow disk read never stalls appends.
//!
//! # Crash safety
//!
//! Sealed segments were fsynced before they were sealed and are only checked
//! cheaply on open. The active segment is recovered on open: see
//! [`Segment::recover_active`]. The index is derived data and never fsynced
//! on the hot path.
//!
//! # Format versions
//!
//! Every segment file starts with a magic that names its format version
//! ([`FORMAT_VERSION`]). `open` checks every segment before it changes
//! anything in the directory, and refuses another version with
//! [`Error::UnsupportedFormat`].

mod batch;
mod error;
mod flusher;
mod index;
mod layout;
pub mod manifest;
mod markers;
mod reading;
mod recovery;
mod retention;
mod segment;
mod snapshot_files;

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64},
    },
    task::Waker,
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::watch;

pub use batch::{
    Batch, BodyError, Entry, FORMAT_VERSION, HEADER_LEN, Kind, Producer, RECORD_OVERHEAD, Record, Records, check_body,
    encode_body, push_record,
};
pub use error::{Error, Result};

use flusher::{FlushRequest, Inflight, LINGER_MICROS, WRITE_BEHIND_BYTES};
use markers::{CLEAN_MARKER, CleanMarker};
pub use reading::{BatchIter, RecordIter};
pub use recovery::Recovery;
pub use retention::Retention;
use segment::Segment;
pub use snapshot_files::{LinkedSegment, SegmentFileReader, read_segment_file};

/// When a produce is acknowledged relative to fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Acknowledge only after fdatasync (group commit). The default.
    Always,
    /// Acknowledge after the write; fsync every 100 ms. A crash may lose
    /// the last interval of acknowledged records.
    Interval,
    /// Acknowledge after the write; never fsync explicitly (the OS decides).
    Never,
}

/// Told about every fsync of the log (for metrics; must be cheap).
pub trait FlushObserver: Send + Sync + std::fmt::Debug {
    /// `records` is how many records the fsync made durable.
    fn on_fsync(&self, took: Duration, records: u64);
}

/// Tuning of a [`Log`].
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// A segment rolls before its `.log` would exceed this many bytes (a
    /// single larger record still fits in an empty segment).
    pub segment_max_bytes: u64,
    /// A segment rolls when its index holds this many entries.
    pub index_max_entries: usize,
    /// Index of the first record of a brand-new log.
    pub initial_index: u64,
    /// When set, the flusher also fsyncs on this period without being asked
    /// (the `--fsync=interval` policy).
    pub sync_interval: Option<Duration>,
    /// Pause after an fsync that released a large batch, so the released
    /// appenders join the next one (see `run_flusher`). Zero disables it.
    pub group_commit_linger: Duration,
    pub observer: Option<Arc<dyn FlushObserver>>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_max_bytes: 64 << 20,
            index_max_entries: 1 << 20,
            initial_index: 0,
            sync_interval: None,
            group_commit_linger: Duration::from_micros(LINGER_MICROS),
            observer: None,
        }
    }
}

/// What [`Log::append`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub first_index: u64,
    /// One past the last index written.
    pub next_index: u64,
    /// Data offset of the first data record written (if any were).
    pub first_offset: u64,
    pub next_offset: u64,
}

/// The durable watermark: every record below these bounds is fsynced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    pub next_index: u64,
    pub next_offset: u64,
    /// Set when a write or fsync failed: nothing more will become durable.
    pub failed: Option<String>,
}

/// A snapshot of the log's extent and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub first_index: u64,
    pub next_index: u64,
    pub first_offset: u64,
    pub next_offset: u64,
    pub segments: usize,
    pub disk_bytes: u64,
    pub fsyncs: u64,
}

/// The mutable state of a log, behind one short mutex.
struct Inner {
    sealed: Vec<Segment>,
    active: Segment,
    /// Appended bytes not yet handed to the flusher; they belong at
    /// `pending_pos` in the active segment's file.
    pending: Vec<u8>,
    pending_pos: u64,
    inflight: Option<Arc<Inflight>>,
    /// A recycled buffer, so steady-state appends do not allocate.
    spare: Vec<u8>,
    next_index: u64,
    next_offset: u64,
    failed: Option<String>,
}

struct Shared {
    dir: PathBuf,
    config: LogConfig,
    inner: Mutex<Inner>,
    /// Held by whoever writes buffers or changes files outside `inner`;
    /// taken before `inner`, never after.
    io_lock: Mutex<()>,
    durable: watch::Sender<Durable>,
    /// Mirrors of the watermark for the lock-free fast path.
    durable_index: AtomicU64,
    failed: AtomicBool,
    /// Tasks in `wait_durable`, with the index each waits for. Only those a
    /// new watermark satisfies are woken (a watch channel would wake every
    /// waiter on every fsync, half of them just to wait again).
    waiters: Mutex<Vec<(u64, Waker)>>,
    request: Mutex<FlushRequest>,
    wake: Condvar,
    fsyncs: std::sync::atomic::AtomicU64,
    /// The log was deleted (its directory is going away): closing it only
    /// stops the flusher.
    discarded: AtomicBool,
    /// Holds the data directory's advisory lock for the log's lifetime.
    _lock: File,
}

/// A segmented, checksummed, crash-safe log. See the module docs.
pub struct Log {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, and
    // every write is re-validated on recovery, so poisoning is not fatal.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering the active segment.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        if lock_file.try_lock().is_err() {
            return Err(Error::Locked { path: dir });
        }
        // Before recovery changes anything: a newer format is refused.
        let manifest = manifest::check(&dir)?;

        let (sealed, active) = recovery::open_segments(&dir, &config)?;
        manifest::record(&dir, &manifest, crate::version())?;
        let (next_index, next_offset) = (active.next_index(), active.end_offset);
        let pending_pos = active.size;
        let inner = Inner {
            sealed,
            active,
            pending: Vec::new(),
            pending_pos,
            inflight: None,
            spare: Vec::new(),
            next_index,
            next_offset,
            failed: None,
        };
        let (durable, _) = watch::channel(Durable {
            next_index,
            next_offset,
            failed: None,
        });
        let shared = Arc::new(Shared {
            dir,
            config,
            inner: Mutex::new(inner),
            io_lock: Mutex::new(()),
            durable,
            durable_index: AtomicU64::new(next_index),
            failed: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            request: Mutex::new(FlushRequest::default()),
            wake: Condvar::new(),
            fsyncs: Default::default(),
            discarded: Default::default(),
            _lock: lock_file,
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sidelog-flush".into())
                .spawn(move || shared.run_flusher())
                .map_err(|e| Error::io("<flusher thread>", e))?
        };
        Ok(Log {
            shared,
            flusher: Some(flusher),
        })
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends batches atomically: either all are accepted or none. Indexes
    /// given in the entries must continue the log without gaps, and data
    /// bodies must hold exactly the records their count says (checked here:
    /// a malformed body would shift every later offset). The batches are
    /// readable at once and durable after [`Log::wait_durable`].
    pub fn append(&self, entries: &[Entry<'_>]) -> Result<Appended> {
        let s = &self.shared;
        let mut inner = lock(&s.inner);
        if let Some(f) = &inner.failed {
            return Err(Error::Failed(f.clone()));
        }
        let mut expected = inner.next_index;
        for e in entries {
            if let Some(got) = e.index
                && got != expected
            {
                return Err(Error::NonSequential { expected, got });
            }
            if e.body.len() > u32::MAX as usize {
                return Err(Error::BatchTooLarge { len: e.body.len() });
            }
            check_body(e.kind, e.count, e.body).map_err(|source| Error::BadBatch {
                index: expected,
                source,
            })?;
            expected += 1;
        }
        let first_index = inner.next_index;
        let first_offset = inner.next_offset;
        for e in entries {
            let batch_len = (HEADER_LEN + e.body.len()) as u64;
            let active = &inner.active;
            if !active.is_empty() && (active.size + batch_len > s.config.segment_max_bytes || active.index.is_full()) {
                if let Err(err) = s.roll(&mut inner) {
                    s.fail(&mut inner, &err);
                    return Err(err);
                }
            }
            let pos = inner.active.size;
            let next_offset = inner.next_offset;
            if let Err(e) = inner.active.index.push(pos, next_offset) {
                let err = Error::io(&inner.active.idx_path, e);
                s.fail(&mut inner, &err);
                return Err(err);
            }
            let inner = &mut *inner;
            batch::encode(&mut inner.pending, inner.next_index, inner.next_offset, e);
            inner.active.size += batch_len;
            inner.next_index += 1;
            inner.next_offset += u64::from(e.count);
        }
        let appended = Appended {
            first_index,
            next_index: inner.next_index,
            first_offset,
            next_offset: inner.next_offset,
        };
        let large = inner.pending.len() >= WRITE_BEHIND_BYTES;
        drop(inner);
        if large {
            let mut r = lock(&s.request);
            r.write = true;
            if r.idle {
                drop(r);
                s.wake.notify_one();
            }
        }
        Ok(appended)
    }

    /// True when appending `bytes` (encoded batches, headers included)
    /// would roll the active segment, which costs fsyncs and file creation:
    /// callers on an async runtime then append from a blocking thread.
    pub fn append_would_roll(&self, bytes: u64) -> bool {
        let inner = lock(&self.shared.inner);
        let active = &inner.active;
        !active.is_empty() && (active.size + bytes > self.shared.config.segment_max_bytes || active.index.is_full())
    }

    /// First index held (== `next_index` when empty).
    pub fn first_index(&self) -> u64 {
        lock(&self.shared.inner).first_index()
    }

    /// One past the last index held.
    pub fn next_index(&self) -> u64 {
        lock(&self.shared.inner).next_index
    }

    /// First data offset held (== `next_offset` when no data is held).
    pub fn first_offset(&self) -> u64 {
        lock(&self.shared.inner).first_offset()
    }

    /// The offset the next data record will get.
    pub fn next_offset(&self) -> u64 {
        lock(&self.shared.inner).next_offset
    }

    /// Extent, size and counters.
    pub fn stats(&self) -> Stats {
        let inner = lock(&self.shared.inner);
        Stats {
            first_index: inner.first_index(),
            next_index: inner.next_index,
            first_offset: inner.first_offset(),
            next_offset: inner.next_offset,
            segments: inner.sealed.len() + 1,
            disk_bytes: inner.segments().map(Segment::disk_bytes).sum(),
            fsyncs: self.shared.fsyncs.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Bytes on disk (logs plus meaningful index bytes).
    pub fn disk_bytes(&self) -> u64 {
        lock(&self.shared.inner).segments().map(Segment::disk_bytes).sum()
    }

    /// Flushes and fsyncs everything, then stops the flusher. Dropping the
    /// log does the same but cannot report errors.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Marks the log deleted: closing it (at the last drop) writes nothing.
    pub fn discard(&self) {
        self.shared.discarded.store(true, std::sync::atomic::Ordering::Release);
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(handle) = self.flusher.take() else {
            return Ok(());
        };
        lock(&self.shared.request).shutdown = true;
        // Notified unconditionally: the flusher may be about to park.
        self.shared.wake.notify_one();
        let _ = handle.join();
        if self.shared.discarded.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let failed = lock(&self.shared.inner).failed.clone();
        if let Some(f) = failed {
            return Err(Error::Failed(f));
        }
        self.shared.flush(true)?;
        // Vouch for the index so the next open need not rescan the active
        // segment: the index is flushed and fsynced, the log was fsynced above.
        let inner = lock(&self.shared.inner);
        let active = &inner.active;
        active.index.sync().map_err(|e| Error::io(&active.idx_path, e))?;
        let marker = CleanMarker {
            base_index: active.base_index,
            file_len: active.size,
            entries: active.index.len(),
        };
        let path = self.shared.dir.join(CLEAN_MARKER);
        std::fs::write(&path, marker.encode())
            .and_then(|_| File::open(&path)?.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        sync_dir(&self.shared.dir)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(cause = %e, "closing the log failed");
        }
    }
}

impl Inner {
    fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.sealed.iter().chain(std::iter::once(&self.active))
    }

    fn first_index(&self) -> u64 {
        self.sealed.first().map_or(self.active.base_index, |s| s.base_index)
    }

    fn first_offset(&self) -> u64 {
        self.sealed.first().map_or(self.active.base_offset, |s| s.base_offset)
    }

    fn segment_of_index(&self, index: u64) -> &Segment {
        if index >= self.active.base_index {
            return &self.active;
        }
        let i = self.sealed.partition_point(|s| s.base_index <= index);
        &self.sealed[i - 1]
    }

    fn index_of_offset(&self, offset: u64) -> Result<u64> {
        let (first, next) = (self.first_offset(), self.next_offset);
        let out_of_range = Error::OffsetOutOfRange { offset, first, next };
        if offset < first || offset >= next {
            return Err(out_of_range);
        }
        // The last segment whose base offset is <= offset holds it: a later
        // segment's base offset counts every data record before it.
        let seg = if offset >= self.active.base_offset && !self.active.is_empty() {
            &self.active
        } else {
            let i = self.sealed.partition_point(|s| s.base_offset <= offset);
            if i == 0 {
                return Err(out_of_range);
            }
            &self.sealed[i - 1]
        };
        match seg.find_offset(offset) {
            Some(i) => Ok(seg.base_index + i as u64),
            None => Err(out_of_range),
        }
    }

    /// Writes the write buffer to the active file synchronously (roll and
    /// truncate need every byte in the file).
    fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let a = &self.active;
        a.file
            .write_all_at(&self.pending, self.pending_pos)
            .map_err(|e| Error::io(&a.log_path, e))?;
        // The bytes are in the file now: reads must go there.
        self.pending_pos += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }
}
