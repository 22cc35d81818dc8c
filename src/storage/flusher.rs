//! Group commit: the flusher thread and the durable watermark.
//!
//! Appenders only fill an in-memory buffer. The flusher thread writes it
//! with one `pwrite` and, when asked, one `fdatasync`, then publishes the
//! new durable watermark and wakes exactly the waiters it satisfies. While
//! one fsync is in flight, new appends accumulate in the next buffer, so N
//! concurrent appenders are released by one `fdatasync`.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    sync::{Arc, atomic::Ordering},
    task::{Poll, Waker},
    time::Instant,
};

use tokio::sync::watch;

use super::{Durable, Error, Inner, Log, Result, Shared, lock};

/// Default group-commit linger, and the batch size that triggers it.
pub(super) const LINGER_MICROS: u64 = 20;
const LINGER_MIN_BATCH: u64 = 16;

/// Start flushing the write buffer without being asked once it holds this much.
pub(super) const WRITE_BEHIND_BYTES: usize = 8 << 20;

/// A write buffer being written by the flusher, readable until it lands.
pub(super) struct Inflight {
    pub(super) base_index: u64,
    pub(super) pos: u64,
    pub(super) buf: Vec<u8>,
}

#[derive(Default)]
pub(super) struct FlushRequest {
    /// The flusher should make everything below this index durable.
    pub(super) sync_to: u64,
    /// The write buffer is large: write it out (no fsync needed).
    pub(super) write: bool,
    pub(super) shutdown: bool,
    /// The flusher is parked on the condvar (only then is a notify needed:
    /// skipping it saves a futex syscall per append under load).
    pub(super) idle: bool,
}

impl Log {
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

    /// Hands every appended batch to the operating system (`pwrite`, no
    /// fsync). After this a crash of the process loses nothing; only a
    /// crash of the machine may. Blocking. Used by the `--fsync never` and
    /// `interval` policies before they acknowledge.
    pub fn write_out(&self) -> Result<()> {
        self.shared.flush(false).map(|_| ())
    }
}

impl Shared {
    /// Poisons the log after an I/O failure and wakes every waiter with the
    /// error (a write or fsync failure leaves the file's state unknown).
    pub(super) fn fail(&self, inner: &mut Inner, err: &Error) {
        inner.failed = Some(err.to_string());
        let msg = err.to_string();
        self.publish(|d| {
            d.failed = Some(msg);
            true
        });
    }

    /// fdatasync with the bookkeeping every fsync gets (count, observer).
    pub(super) fn sync_file(&self, file: &File, records: u64) -> io::Result<()> {
        let started = Instant::now();
        let result = file.sync_data();
        self.fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(o) = &self.config.observer {
            o.on_fsync(started.elapsed(), records);
        }
        result
    }

    pub(super) fn is_durable(&self, next_index: u64) -> bool {
        self.durable_index.load(Ordering::Acquire) >= next_index || self.failed.load(Ordering::Acquire)
    }

    /// Updates the durable watermark and wakes the waiters it satisfies
    /// (all of them if the log failed).
    pub(super) fn publish(&self, update: impl FnOnce(&mut Durable) -> bool) {
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

    pub(super) fn request_sync(&self, next_index: u64) {
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
    pub(super) fn run_flusher(&self) {
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
    pub(super) fn flush(&self, fsync: bool) -> Result<Durable> {
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
            let records = target.1.saturating_sub(self.durable.borrow().next_offset);
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
}
