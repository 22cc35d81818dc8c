//! Changing which segment files make up the log: rolling to a new
//! segment, truncating a suffix (Raft conflict resolution), resetting the
//! whole log (installing a snapshot) and removing a sealed prefix.
//!
//! Each change is crash-safe on its own: a roll fsyncs the old segment
//! before the new one exists; a truncation fsyncs the shortened file; a
//! reset is guarded by the `RESET` marker (see `markers`).

use std::{fs::File, os::unix::fs::FileExt};

use super::{
    Error, Inner, Log, Result, Segment, Shared, lock,
    markers::{RESET_MARKER, encode_reset},
    sync_dir,
};

impl Log {
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
            std::fs::write(&marker, encode_reset(next_index, next_offset))
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
}

impl Shared {
    /// Seals the active segment and starts a new one. Called with `inner`
    /// held, from `append`; rare (once per segment), so its fsync under the
    /// lock is acceptable.
    pub(super) fn roll(&self, inner: &mut Inner) -> Result<()> {
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
    pub(super) fn truncate_locked(&self, inner: &mut Inner, index: u64) -> Result<()> {
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

    pub(super) fn remove_sealed_prefix(&self, inner: &mut Inner, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        for seg in inner.sealed.drain(..n) {
            seg.remove_files()?;
        }
        sync_dir(&self.dir)
    }
}
