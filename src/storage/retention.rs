//! Retention: which whole sealed segments to delete.

use std::time::{Duration, SystemTime};

use super::{Log, Result, lock, segment::Segment};

/// Limits on how much history the log keeps. Only whole sealed segments are
/// ever removed, oldest first, and never the active one, so the log may
/// hold somewhat more than `max_bytes` (up to one segment more).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the log's size on disk at or under this many bytes.
    pub max_bytes: Option<u64>,
    /// Remove segments whose newest record is older than this (judged by
    /// the segment file's modification time, i.e. when it was sealed).
    pub max_age: Option<Duration>,
}

impl Retention {
    pub fn is_unlimited(&self) -> bool {
        self.max_bytes.is_none() && self.max_age.is_none()
    }

    /// How many of the oldest `sealed` segments to remove.
    pub(crate) fn segments_to_remove(
        &self,
        sealed: &[Segment],
        active_bytes: u64,
        keep_from: u64,
        now: SystemTime,
    ) -> usize {
        let mut total: u64 = sealed.iter().map(Segment::disk_bytes).sum::<u64>() + active_bytes;
        let mut n = 0;
        for seg in sealed {
            if seg.next_index() > keep_from {
                break;
            }
            let over_size = self.max_bytes.is_some_and(|max| total > max);
            let too_old = self.max_age.is_some_and(|max_age| {
                std::fs::metadata(&seg.log_path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > max_age)
            });
            if !over_size && !too_old {
                break;
            }
            total -= seg.disk_bytes();
            n += 1;
        }
        n
    }
}

impl Log {
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
}
