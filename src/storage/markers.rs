//! Small marker files that make directory-level operations crash-safe.
//!
//! - `CLEAN` is left by a clean shutdown and vouches for the active
//!   segment's index, so the next open need not rescan the segment. `open`
//!   consumes it before anything can be appended.
//! - `RESET` exists while a [`super::Log::reset`] is under way; `open`
//!   finishes any reset it finds.
//!
//! Both are text with a version tag and an end token, so a torn write is
//! recognized and ignored.

/// Left by a clean shutdown; see `Log::shutdown`.
pub const CLEAN_MARKER: &str = "CLEAN";
/// Present while a `Log::reset` is under way.
pub const RESET_MARKER: &str = "RESET";

/// What a clean shutdown recorded about the active segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanMarker {
    pub base_index: u64,
    pub file_len: u64,
    pub entries: usize,
}

impl CleanMarker {
    pub fn encode(&self) -> String {
        format!(
            "sidelog-clean-v2 {} {} {}\n",
            self.base_index, self.file_len, self.entries
        )
    }

    pub fn decode(text: &str) -> Option<CleanMarker> {
        let mut it = text.split_whitespace();
        if it.next()? != "sidelog-clean-v2" {
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

/// The `RESET` marker's text: where the log restarts.
pub fn encode_reset(next_index: u64, next_offset: u64) -> String {
    format!("sidelog-reset-v1 {next_index} {next_offset} end\n")
}

/// Parses a complete `RESET` marker into `(next_index, next_offset)`.
pub fn decode_reset(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace();
    if it.next()? != "sidelog-reset-v1" {
        return None;
    }
    let r = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    (it.next()? == "end" && it.next().is_none()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_torn_ones_are_ignored() {
        let m = CleanMarker {
            base_index: 1024,
            file_len: 4096,
            entries: 12,
        };
        assert_eq!(CleanMarker::decode(&m.encode()), Some(m));
        let text = m.encode();
        assert_eq!(CleanMarker::decode(&text[..text.len() - 3]), None);
        assert_eq!(decode_reset(&encode_reset(7, 3)), Some((7, 3)));
        assert_eq!(decode_reset("sidelog-reset-v1 7 3"), None);
    }
}
