//! The segmented, crash-safe commit log every other layer stands on.
//!
//! A [`Log`] is a directory of segments (see [`segment`]): sealed, immutable
//! ones and a single active one that takes appends. Each record carries its
//! position in the log (`index`, which Raft uses) and its dense data
//! `offset` (what consumers see: control entries do not consume one), both
//! protected by a CRC32C (see [`record`]).
//!
//! # Write path and group commit
//!
//! [`Log::append`] encodes records into an in-memory write buffer and updates
//! the memory-mapped index under one short mutex: no system call. Durability
//! is separate: [`Log::wait_durable`] asks the log's flusher thread to write
//! the buffer and `fdatasync` the active file, then waits until the durable
//! watermark covers the caller's index. While one fsync is in flight, new
//! appends accumulate in the next buffer, so N concurrent appenders are
//! released by one `fdatasync`. [`Log::sync`] does the same synchronously.
//!
//! Reads see every appended record, durable or not, whether it is still in
//! the write buffer, being written, or in the file. Callers that must only
//! expose durable (or committed) records bound their reads themselves.
//!
//! # Crash safety
//!
//! Sealed segments were fsynced before they were sealed and are only checked
//! cheaply on open. The active segment is recovered on open: see
//! [`Segment::recover_active`]. The index is derived data and never fsynced
//! on the hot path.

mod index;
pub mod record;
mod retention;
mod segment;

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Poll, Waker},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::watch;

pub use record::{Entry, Kind, Record};
pub use retention::Retention;
pub use segment::Recovery;
use segment::Segment;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt segment file {} at byte {position}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("index {index} is out of range: the log holds [{first}, {next})")]
    IndexOutOfRange { index: u64, first: u64, next: u64 },
    #[error("offset {offset} is out of range: the log holds offsets [{first}, {next})")]
    OffsetOutOfRange { offset: u64, first: u64, next: u64 },
    #[error("append at index {got} but the next index is {expected}")]
    NonSequential { expected: u64, got: u64 },
    #[error("record of {len} bytes exceeds the format's 4 GiB limit")]
    RecordTooLarge { len: usize },
    #[error("data directory {} is in use by another process", path.display())]
    Locked { path: PathBuf },
    #[error("the log failed earlier and refuses writes until reopened: {0}")]
    Failed(String),
}

impl Error {
    pub(crate) fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_owned(),
            source,
        }
    }

    /// True for the "asked past either end" errors.
    pub fn is_out_of_range(&self) -> bool {
        matches!(self, Error::IndexOutOfRange { .. } | Error::OffsetOutOfRange { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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

/// A segment file linked by [`Log::link_segments`].
#[derive(Clone, Debug)]
pub struct LinkedSegment {
    pub path: PathBuf,
    pub base_index: u64,
    /// Leading bytes of the file that hold the linked range.
    pub len: u64,
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

/// Left by a clean shutdown; see `Log::shutdown`.
const CLEAN_MARKER: &str = "CLEAN";
/// Present while a `Log::reset` is under way: "<next_index> <next_offset>".
const RESET_MARKER: &str = "RESET";

fn reset_marker(next_index: u64, next_offset: u64) -> String {
    format!("sidelog-reset-v1 {next_index} {next_offset} end\n")
}

fn parse_reset(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace();
    if it.next()? != "sidelog-reset-v1" {
        return None;
    }
    let r = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    (it.next()? == "end" && it.next().is_none()).then_some(r)
}

/// Default group-commit linger, and the batch size that triggers it.
const LINGER_MICROS: u64 = 20;
const LINGER_MIN_BATCH: u64 = 16;

/// Start flushing the write buffer without being asked once it holds this much.
const WRITE_BEHIND_BYTES: usize = 8 << 20;

/// A write buffer being written by the flusher, readable until it lands.
struct Inflight {
    base_index: u64,
    pos: u64,
    buf: Vec<u8>,
}

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

#[derive(Default)]
struct FlushRequest {
    /// The flusher should make everything below this index durable.
    sync_to: u64,
    /// The write buffer is large: write it out (no fsync needed).
    write: bool,
    shutdown: bool,
    /// The flusher is parked on the condvar (only then is a notify needed:
    /// skipping it saves a futex syscall per append under load).
    idle: bool,
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
        for base in orphan_indexes.into_iter().filter(|b| bases.binary_search(b).is_err()) {
            // A retention delete removes the .log first; finish its job.
            let p = dir.join(segment::file_name(base, "idx"));
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }

        let capacity = config.index_max_entries.max(1);
        // A clean shutdown leaves a marker vouching for the active segment's
        // index; it is consumed here, before anything can be appended.
        let marker_path = dir.join(CLEAN_MARKER);
        let clean = std::fs::read_to_string(&marker_path)
            .ok()
            .and_then(|t| segment::CleanMarker::decode(&t));
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
            if let Some((index, offset)) = parse_reset(&text) {
                tracing::warn!(index, offset, "completing an interrupted reset");
                for &b in &bases {
                    for ext in ["log", "idx"] {
                        let p = dir.join(segment::file_name(b, ext));
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

    /// Appends records atomically: either all are accepted or none. Indexes
    /// given in the entries must continue the log without gaps. The records
    /// are readable at once and durable after [`Log::wait_durable`].
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
            if e.payload.len() > u32::MAX as usize {
                return Err(Error::RecordTooLarge { len: e.payload.len() });
            }
            expected += 1;
        }
        let first_index = inner.next_index;
        let first_offset = inner.next_offset;
        for e in entries {
            let rec_len = (record::HEADER_LEN + e.payload.len()) as u64;
            let active = &inner.active;
            if !active.is_empty() && (active.size + rec_len > s.config.segment_max_bytes || active.index.is_full()) {
                if let Err(err) = s.roll(&mut inner) {
                    s.fail(&mut inner, &err);
                    return Err(err);
                }
            }
            let inner = &mut *inner;
            let pos = inner.active.size;
            record::encode(
                &mut inner.pending,
                inner.next_index,
                inner.next_offset,
                e.term,
                e.kind,
                e.payload,
            );
            inner.active.index.push(pos, inner.next_offset);
            inner.active.size += rec_len;
            inner.next_index += 1;
            inner.next_offset += u64::from(e.kind == Kind::Data);
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

    /// Waits until every record below `next_index` is durable, asking the
    /// flusher for an fsync if needed. Concurrent waiters share fsyncs.
    /// Returns the durable watermark's `next_index` (>= the one asked for).
    pub async fn wait_durable(&self, next_index: u64) -> Result<u64> {
        let s = &self.shared;
        if !s.is_durable(next_index) {
            s.request_sync(next_index);
            std::future::poll_fn(|cx| {
                if s.is_durable(next_index) {
                    return Poll::Ready(());
                }
                let mut waiters = lock(&s.waiters);
                // Checked again under the lock: `publish` stores the new
                // watermark before it takes this lock to wake waiters.
                if s.is_durable(next_index) {
                    return Poll::Ready(());
                }
                waiters.push((next_index, cx.waker().clone()));
                Poll::Pending
            })
            .await;
        }
        if s.failed.load(Ordering::Acquire) {
            let failed = s.durable.borrow().failed.clone().unwrap_or_default();
            return Err(Error::Failed(failed));
        }
        Ok(s.durable_index.load(Ordering::Acquire))
    }

    /// Writes and fsyncs everything appended so far; returns the durable
    /// watermark. Blocking.
    pub fn sync(&self) -> Result<Durable> {
        self.shared.flush(true)
    }

    /// The current durable watermark.
    pub fn durable(&self) -> Durable {
        self.shared.durable.borrow().clone()
    }

    /// Watches the durable watermark (for tail-following readers).
    pub fn subscribe_durable(&self) -> watch::Receiver<Durable> {
        self.shared.durable.subscribe()
    }

    /// Reads the record at Raft index `index`.
    pub fn read(&self, index: u64) -> Result<Record> {
        let inner = lock(&self.shared.inner);
        inner.read_index(index)
    }

    /// Reads the data record at data offset `offset`.
    pub fn read_offset(&self, offset: u64) -> Result<Record> {
        let inner = lock(&self.shared.inner);
        let index = inner.index_of_offset(offset)?;
        inner.read_index(index)
    }

    /// Reads records with indexes in `[from, to)`, stopping early after
    /// `max_bytes` of payload (at least one record is returned).
    pub fn read_range(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<Record>> {
        let inner = lock(&self.shared.inner);
        let to = to.min(inner.next_index);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = from;
        while i < to && (out.is_empty() || bytes < max_bytes) {
            let r = inner.read_index(i)?;
            bytes += r.payload.len();
            out.push(r);
            i += 1;
        }
        Ok(out)
    }

    /// Reads up to `max_records` data records with offsets in `[from, to)`
    /// (control entries skipped), stopping early after `max_bytes` of
    /// payload (at least one record is returned if any is in range).
    pub fn read_data(&self, from: u64, to: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let inner = lock(&self.shared.inner);
        let to = to.min(inner.next_offset);
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        let mut index = inner.index_of_offset(from)?;
        let mut bytes = 0;
        let mut next = from;
        while next < to && out.len() < max_records && (out.is_empty() || bytes < max_bytes) {
            let r = inner.read_index(index)?;
            index += 1;
            if r.kind == Kind::Data {
                next = r.offset + 1;
                bytes += r.payload.len();
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Iterates every record (data and control) from Raft index `from`.
    pub fn iter_from_index(&self, from: u64) -> Iter<'_> {
        Iter {
            log: self,
            next: from,
            by_offset: false,
            buf: Default::default(),
        }
    }

    /// Iterates data records from data offset `from`.
    pub fn iter_from_offset(&self, from: u64) -> Iter<'_> {
        Iter {
            log: self,
            next: from,
            by_offset: true,
            buf: Default::default(),
        }
    }

    /// Drops every record with index >= `index` (Raft conflict resolution).
    /// The next append continues at `index`.
    pub fn truncate_from(&self, index: u64) -> Result<()> {
        let s = &self.shared;
        let _io = lock(&s.io_lock);
        let mut inner = lock(&s.inner);
        let first = inner.first_index();
        if index < first {
            // A caller error: nothing was touched, so the log stays usable.
            return Err(Error::IndexOutOfRange {
                index,
                first,
                next: inner.next_index,
            });
        }
        let result = s.truncate_locked(&mut inner, index);
        if let Err(e) = &result {
            s.fail(&mut inner, e);
        }
        result
    }

    /// Removes whole sealed segments whose records all have index < `index`
    /// (log purge). The active segment is never removed. Returns how many
    /// segments were removed.
    pub fn remove_before(&self, index: u64) -> Result<usize> {
        let s = &self.shared;
        let _io = lock(&s.io_lock);
        let mut inner = lock(&s.inner);
        let n = inner.sealed.iter().take_while(|seg| seg.next_index() <= index).count();
        s.remove_sealed_prefix(&mut inner, n)?;
        Ok(n)
    }

    /// Discards the whole log and restarts it empty at `next_index` /
    /// `next_offset` (installing a snapshot that is ahead of the log).
    pub fn reset(&self, next_index: u64, next_offset: u64) -> Result<()> {
        let s = &self.shared;
        let _io = lock(&s.io_lock);
        let mut inner = lock(&s.inner);
        // Crash safety: a RESET marker is made durable first; `open` finishes
        // any reset it finds (keeps only the segment at `next_index`,
        // creating it if missing). The marker goes once the work is done.
        let marker = s.dir.join(RESET_MARKER);
        let result = (|| -> Result<()> {
            std::fs::write(&marker, reset_marker(next_index, next_offset))
                .and_then(|_| File::open(&marker)?.sync_all())
                .map_err(|e| Error::io(&marker, e))?;
            sync_dir(&s.dir)?;
            let old: Vec<Segment> = inner.sealed.drain(..).collect();
            // An old segment at the same base must go before the new one is made.
            for seg in old
                .iter()
                .chain(std::iter::once(&inner.active))
                .filter(|seg| seg.base_index == next_index)
            {
                seg.remove_files()?;
            }
            let fresh = Segment::create(&s.dir, next_index, next_offset, s.config.index_max_entries)?;
            let previous = std::mem::replace(&mut inner.active, fresh);
            for seg in old
                .iter()
                .chain(std::iter::once(&previous))
                .filter(|seg| seg.base_index != next_index)
            {
                seg.remove_files()?;
            }
            // The new layout is durable before the marker goes.
            sync_dir(&s.dir)?;
            std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
            sync_dir(&s.dir)
        })();
        if let Err(e) = result {
            s.fail(&mut inner, &e);
            return Err(e);
        }
        {
            let mut r = lock(&s.request);
            r.sync_to = r.sync_to.min(next_index);
        }
        inner.pending.clear();
        inner.pending_pos = inner.active.size;
        inner.inflight = None;
        inner.next_index = next_index;
        inner.next_offset = next_offset;
        s.publish(|d| {
            d.next_index = next_index;
            d.next_offset = next_offset;
            true
        });
        Ok(())
    }

    /// Hard-links into `dir` the segment files holding indexes
    /// `[first_index, upto]` and returns, for each, the linked path, its base
    /// index and how many leading bytes of it belong to that range. The links
    /// keep the bytes readable even if retention removes the segments; bytes
    /// past the returned lengths (later appends) must be ignored. Every
    /// record up to `upto` is made durable first. Blocking.
    pub fn link_segments(&self, upto: u64, dir: &Path) -> Result<Vec<LinkedSegment>> {
        self.sync()?;
        let inner = lock(&self.shared.inner);
        if upto >= inner.next_index {
            return Err(Error::IndexOutOfRange {
                index: upto,
                first: inner.first_index(),
                next: inner.next_index,
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut out = Vec::new();
        for seg in inner.segments().filter(|seg| seg.base_index <= upto && !seg.is_empty()) {
            let len = if seg.next_index() - 1 <= upto {
                seg.size
            } else {
                let (pos, len) = seg
                    .span((upto - seg.base_index) as usize)
                    .ok_or_else(|| Error::Corrupt {
                        path: seg.idx_path.clone(),
                        position: 0,
                        reason: "index entry out of bounds".into(),
                    })?;
                pos + len
            };
            let target = dir.join(segment::file_name(seg.base_index, "log"));
            std::fs::hard_link(&seg.log_path, &target).map_err(|e| Error::io(&target, e))?;
            out.push(LinkedSegment {
                path: target,
                base_index: seg.base_index,
                len,
            });
        }
        Ok(out)
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

    /// Applies a retention policy: deletes the oldest whole sealed segments
    /// that are over the byte budget or older than the age limit, never the
    /// active one, and never one holding an index >= `keep_from`. Returns
    /// the number of segments removed.
    pub fn apply_retention(&self, policy: &Retention, keep_from: u64) -> Result<usize> {
        let s = &self.shared;
        let _io = lock(&s.io_lock);
        let mut inner = lock(&s.inner);
        let n = policy.segments_to_remove(
            &inner.sealed,
            inner.active.disk_bytes(),
            keep_from,
            std::time::SystemTime::now(),
        );
        if n > 0 {
            tracing::info!(segments = n, "retention removes sealed segments");
        }
        s.remove_sealed_prefix(&mut inner, n)?;
        Ok(n)
    }

    /// Where a retention policy would cut the log: every sealed segment
    /// wholly below the returned index is over the budget or too old.
    pub fn retention_cut(&self, policy: &Retention) -> Option<u64> {
        let inner = lock(&self.shared.inner);
        let n = policy.segments_to_remove(
            &inner.sealed,
            inner.active.disk_bytes(),
            u64::MAX,
            std::time::SystemTime::now(),
        );
        (n > 0).then(|| inner.sealed[n - 1].next_index())
    }

    /// Flushes and fsyncs everything, then stops the flusher. Dropping the
    /// log does the same but cannot report errors.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(handle) = self.flusher.take() else {
            return Ok(());
        };
        lock(&self.shared.request).shutdown = true;
        // Notified unconditionally: the flusher may be about to park.
        self.shared.wake.notify_one();
        let _ = handle.join();
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
        let marker = segment::CleanMarker {
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

    fn read_index(&self, index: u64) -> Result<Record> {
        let (first, next) = (self.first_index(), self.next_index);
        if index < first || index >= next {
            return Err(Error::IndexOutOfRange { index, first, next });
        }
        let seg = self.segment_of_index(index);
        let Some((pos, len)) = seg.span((index - seg.base_index) as usize) else {
            return Err(Error::Corrupt {
                path: seg.idx_path.clone(),
                position: 0,
                reason: format!("the index entry of record {index} points outside the log"),
            });
        };
        let decoded = if !seg.sealed && pos >= self.pending_pos {
            let at = (pos - self.pending_pos) as usize;
            record::decode_record(&self.pending[at..at + len as usize])
        } else if let Some(f) = self
            .inflight
            .as_ref()
            .filter(|f| f.base_index == seg.base_index && pos >= f.pos && pos < f.pos + f.buf.len() as u64)
        {
            let at = (pos - f.pos) as usize;
            record::decode_record(&f.buf[at..at + len as usize])
        } else {
            let mut buf = vec![0u8; len as usize];
            seg.file
                .read_exact_at(&mut buf, pos)
                .map_err(|e| Error::io(&seg.log_path, e))?;
            record::decode_record(&buf)
        };
        match decoded {
            Some(r) if r.index == index => Ok(r),
            _ => Err(Error::Corrupt {
                path: seg.log_path.clone(),
                position: pos,
                reason: format!("record {index} fails its checksum"),
            }),
        }
    }
}

impl Shared {
    /// Poisons the log after an I/O failure and wakes every waiter with the
    /// error (a write or fsync failure leaves the file's state unknown).
    fn fail(&self, inner: &mut Inner, err: &Error) {
        inner.failed = Some(err.to_string());
        let msg = err.to_string();
        self.publish(|d| {
            d.failed = Some(msg);
            true
        });
    }

    /// fdatasync with the bookkeeping every fsync gets (count, observer).
    fn sync_file(&self, file: &File, records: u64) -> io::Result<()> {
        let started = Instant::now();
        let result = file.sync_data();
        self.fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(o) = &self.config.observer {
            o.on_fsync(started.elapsed(), records);
        }
        result
    }

    fn is_durable(&self, next_index: u64) -> bool {
        self.durable_index.load(Ordering::Acquire) >= next_index || self.failed.load(Ordering::Acquire)
    }

    /// Updates the durable watermark and wakes the waiters it satisfies
    /// (all of them if the log failed).
    fn publish(&self, update: impl FnOnce(&mut Durable) -> bool) {
        if !self.durable.send_if_modified(update) {
            return;
        }
        let (index, failed) = {
            let d = self.durable.borrow();
            (d.next_index, d.failed.is_some())
        };
        self.failed.store(failed, Ordering::Release);
        self.durable_index.store(index, Ordering::Release);
        let ready: Vec<Waker> = lock(&self.waiters)
            .extract_if(.., |(i, _)| failed || *i <= index)
            .map(|(_, w)| w)
            .collect();
        for w in ready {
            w.wake();
        }
    }

    fn request_sync(&self, next_index: u64) {
        let mut r = lock(&self.request);
        if r.sync_to < next_index {
            r.sync_to = next_index;
            if r.idle {
                drop(r);
                self.wake.notify_one();
            }
        }
    }

    /// The flusher thread: waits for a request, flushes, repeats. Requests
    /// that arrive during an fsync are served together by the next one.
    fn run_flusher(&self) {
        // Timer slack defaults to 50 µs, as long as the linger itself.
        // Safety: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64);
        }
        let mut last_sync = Instant::now();
        loop {
            let mut r = lock(&self.request);
            let fsync = loop {
                if r.shutdown {
                    return;
                }
                let durable = self.durable.borrow().next_index;
                // After a failure there is nothing to do but wait for shutdown.
                let failed = self.failed.load(Ordering::Acquire);
                if r.sync_to > durable && !failed {
                    break true;
                }
                if r.write && !failed {
                    break false;
                }
                r.idle = true;
                match self.config.sync_interval {
                    Some(period) => {
                        let elapsed = last_sync.elapsed();
                        if elapsed >= period {
                            r.idle = false;
                            break true;
                        }
                        r = self
                            .wake
                            .wait_timeout(r, period - elapsed)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    None => r = self.wake.wait(r).unwrap_or_else(|p| p.into_inner()),
                }
                r.idle = false;
            };
            r.write = false;
            drop(r);
            if fsync {
                last_sync = Instant::now();
            }
            // Errors poison the log and are reported to waiters through the
            // durable watch; nothing else to do here.
            let before = self.durable_index.load(Ordering::Acquire);
            let _ = self.flush(fsync);
            let batch = self.durable_index.load(Ordering::Acquire).saturating_sub(before);
            if fsync && batch >= LINGER_MIN_BATCH && !self.config.group_commit_linger.is_zero() {
                // Under load, the appenders this fsync released need a few
                // microseconds to append again. Syncing at once would leave
                // them for the next fsync, and the waiters settle into two
                // alternating half-size cohorts; a short pause merges them.
                std::thread::sleep(self.config.group_commit_linger);
            }
        }
    }

    /// Writes the write buffer to the active file and, if `fsync`,
    /// fdatasyncs it and advances the durable watermark.
    fn flush(&self, fsync: bool) -> Result<Durable> {
        let _io = lock(&self.io_lock);
        let (file, path, inflight, target) = {
            let mut inner = lock(&self.inner);
            if let Some(f) = &inner.failed {
                return Err(Error::Failed(f.clone()));
            }
            let target = (inner.next_index, inner.next_offset);
            let inflight = if inner.pending.is_empty() {
                if !fsync || self.durable.borrow().next_index >= target.0 {
                    if fsync {
                        // A waiter may have asked for more than the log holds
                        // (it appended, then a truncation cut its records):
                        // forget that, or the flusher would spin on it.
                        let mut r = lock(&self.request);
                        r.sync_to = r.sync_to.min(target.0);
                    }
                    return Ok(self.durable.borrow().clone());
                }
                None
            } else {
                let spare = std::mem::take(&mut inner.spare);
                let buf = std::mem::replace(&mut inner.pending, spare);
                let f = Arc::new(Inflight {
                    base_index: inner.active.base_index,
                    pos: inner.pending_pos,
                    buf,
                });
                inner.pending_pos += f.buf.len() as u64;
                inner.inflight = Some(f.clone());
                Some(f)
            };
            (
                inner.active.file.clone(),
                inner.active.log_path.clone(),
                inflight,
                target,
            )
        };
        let mut result = Ok(());
        if let Some(f) = inflight {
            result = file.write_all_at(&f.buf, f.pos);
            let mut inner = lock(&self.inner);
            if inner.inflight.as_ref().is_some_and(|g| Arc::ptr_eq(g, &f)) {
                inner.inflight = None;
            }
            if let Ok(mut buf) = Arc::try_unwrap(f).map(|f| f.buf) {
                buf.clear();
                if inner.spare.capacity() < buf.capacity() {
                    inner.spare = buf;
                }
            }
        }
        if fsync && result.is_ok() {
            let records = target.0.saturating_sub(self.durable_index.load(Ordering::Acquire));
            result = self.sync_file(&file, records);
        }
        if let Err(e) = result {
            // After a failed write or fsync the page cache state is unknown
            // (fsyncgate): refuse further writes rather than risk acking lost data.
            let err = Error::io(&path, e);
            lock(&self.inner).failed = Some(err.to_string());
            self.publish(|d| {
                d.failed = Some(err.to_string());
                true
            });
            return Err(err);
        }
        if fsync {
            self.publish(|d| {
                if d.next_index < target.0 {
                    d.next_index = target.0;
                    d.next_offset = target.1;
                    true
                } else {
                    false
                }
            });
        }
        Ok(self.durable.borrow().clone())
    }

    /// Seals the active segment and starts a new one. Called with `inner`
    /// held, from `append`; rare (once per segment), so its fsync under the
    /// lock is acceptable.
    fn roll(&self, inner: &mut Inner) -> Result<()> {
        inner.write_pending()?;
        let active = &mut inner.active;
        // A write-behind buffer (flush without fsync) may still be in flight to
        // this file, and nobody would fsync it after the roll: write it here
        // too (same bytes, same place) so the fsync below covers it.
        if let Some(f) = inner.inflight.as_ref().filter(|f| f.base_index == active.base_index) {
            active
                .file
                .write_all_at(&f.buf, f.pos)
                .map_err(|e| Error::io(&active.log_path, e))?;
        }
        self.sync_file(&active.file, 0)
            .map_err(|e| Error::io(&active.log_path, e))?;
        active.end_offset = inner.next_offset;
        active.seal()?;
        let fresh = Segment::create(
            &self.dir,
            inner.next_index,
            inner.next_offset,
            self.config.index_max_entries,
        )?;
        inner.pending_pos = fresh.size;
        let old = std::mem::replace(&mut inner.active, fresh);
        inner.sealed.push(old);
        sync_dir(&self.dir)
    }

    /// Called by `truncate_from`, which has checked `index >= first_index`.
    fn truncate_locked(&self, inner: &mut Inner, index: u64) -> Result<()> {
        if index >= inner.next_index {
            return Ok(());
        }
        // Put every byte in the file first, so truncation is file-level only.
        inner.write_pending()?;
        let new_offset = {
            let seg = inner.segment_of_index(index);
            seg.index.entry((index - seg.base_index) as usize).1
        };
        let mut removed_files = false;
        // Drop segments that start at or after `index`, but keep at least one.
        while inner.active.base_index >= index && !inner.sealed.is_empty() {
            let prev = inner.sealed.pop().expect("not empty");
            let gone = std::mem::replace(&mut inner.active, prev);
            gone.remove_files()?;
            removed_files = true;
        }
        let capacity = self.config.index_max_entries;
        let active = &mut inner.active;
        if active.sealed {
            active.reopen_active(capacity)?;
        }
        active.truncate_entries((index.max(active.base_index) - active.base_index) as usize)?;
        active.end_offset = new_offset;
        inner.pending_pos = inner.active.size;
        inner.next_index = index;
        inner.next_offset = new_offset;
        if removed_files {
            sync_dir(&self.dir)?;
        }
        {
            let mut r = lock(&self.request);
            r.sync_to = r.sync_to.min(index);
        }
        self.publish(|d| {
            if d.next_index > index {
                d.next_index = index;
                d.next_offset = new_offset;
                true
            } else {
                false
            }
        });
        Ok(())
    }

    fn remove_sealed_prefix(&self, inner: &mut Inner, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        for seg in inner.sealed.drain(..n) {
            seg.remove_files()?;
        }
        sync_dir(&self.dir)
    }
}

/// Iterator over records; see [`Log::iter_from_index`] and
/// [`Log::iter_from_offset`]. It reads in batches and ends at the end of
/// the log as it was when the batch was read.
pub struct Iter<'a> {
    log: &'a Log,
    next: u64,
    by_offset: bool,
    buf: std::collections::VecDeque<Record>,
}

impl Iterator for Iter<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            let batch = if self.by_offset {
                self.log.read_data(self.next, u64::MAX, 256, 1 << 20)
            } else {
                self.log.read_range(self.next, self.next.saturating_add(256), 1 << 20)
            };
            match batch {
                Ok(b) => self.buf.extend(b),
                Err(e) if e.is_out_of_range() => return None,
                Err(e) => return Some(Err(e)),
            }
        }
        let r = self.buf.pop_front()?;
        self.next = if self.by_offset { r.offset + 1 } else { r.index + 1 };
        Some(Ok(r))
    }
}

/// Reads the records of a segment `.log` file front to back, verifying
/// each (for segment files received in a snapshot). The file must end on a
/// record boundary.
pub fn read_segment_file(path: &Path) -> Result<SegmentFileReader> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; segment::FILE_HEADER_LEN as usize];
    io::Read::read_exact(&mut reader, &mut header).map_err(|e| Error::io(path, e))?;
    Ok(SegmentFileReader {
        path: path.to_owned(),
        reader,
        position: segment::FILE_HEADER_LEN,
    })
}

/// See [`read_segment_file`].
pub struct SegmentFileReader {
    path: PathBuf,
    reader: io::BufReader<File>,
    position: u64,
}

impl Iterator for SegmentFileReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        use io::Read;
        let corrupt = |position, reason: &str| Error::Corrupt {
            path: self.path.clone(),
            position,
            reason: reason.to_owned(),
        };
        let mut hb = [0u8; record::HEADER_LEN];
        let mut got = 0;
        while got < hb.len() {
            match self.reader.read(&mut hb[got..]) {
                Ok(0) if got == 0 => return None,
                Ok(0) => return Some(Err(corrupt(self.position, "file ends inside a record header"))),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(Error::io(&self.path, e))),
            }
        }
        let h = match record::decode_header(&hb) {
            Ok(h) => h,
            Err(e) => return Some(Err(corrupt(self.position, &format!("{e:?}")))),
        };
        let mut payload = vec![0u8; h.len as usize];
        if let Err(e) = self.reader.read_exact(&mut payload) {
            return Some(Err(Error::io(&self.path, e)));
        }
        if !record::verify(&hb, &payload) {
            return Some(Err(corrupt(self.position, "record checksum mismatch")));
        }
        self.position += h.record_len();
        Some(Ok(Record {
            index: h.index,
            offset: h.offset,
            term: h.term,
            kind: h.kind,
            payload: payload.into(),
        }))
    }
}
