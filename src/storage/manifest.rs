//! `FORMAT`: which formats the data dir is in, and which build last wrote it.
//!
//! ```text
//! {"data_format":1,"segment_format":2,"raft_state_format":1,"written_by":"0.2.0 (commit 1a2b3c4d5e6f)"}
//! ```
//!
//! - `data_format`: the directory's layout as a whole (which files exist and
//!   what they hold). 1 is what sidelog 0.1.0 wrote (it wrote no `FORMAT`:
//!   a data dir without one is read as 1).
//! - `segment_format`: the batch format of the segments (also the last byte
//!   of every segment's magic, [`FORMAT_VERSION`]).
//! - `raft_state_format`: `raft-state.json` and the Raft entries' control
//!   payloads (memberships). 1: 0.1.0's, plus optional fields (`cluster_id`,
//!   `forced_at`, a member's `domain`) that 0.1.0 ignores, so a downgrade to
//!   0.1.0 stays possible until a format number above 1 is written.
//!
//! A build that finds any number above what it knows refuses to open the
//! directory and changes nothing (checked right after the lock is taken,
//! before recovery touches a file). Otherwise it writes its own numbers and
//! name (atomically: a temporary file, fsync, rename, fsync of the
//! directory). Formats only move forward when a release needs it; then the
//! older build refuses the directory instead of misreading it.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Error, FORMAT_VERSION, Result};

/// The file's name.
pub const MANIFEST: &str = "FORMAT";
/// The directory layout this build reads and writes.
pub const DATA_FORMAT: u32 = 1;
/// `raft-state.json` and control payloads this build reads: 2 adds the
/// catalog entries of named logs. It writes 1 until the data dir holds a
/// catalog entry ([`raise_raft_state`]), so a downgrade stays possible
/// until the first named log is created.
pub const RAFT_STATE_FORMAT: u32 = 2;
/// The Raft state format of a data dir whose log holds catalog entries.
pub const RAFT_STATE_NAMED_LOGS: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub data_format: u32,
    pub segment_format: u32,
    pub raft_state_format: u32,
    #[serde(default)]
    pub written_by: String,
}

impl Manifest {
    /// What this build writes to a data dir without named logs.
    pub fn current(written_by: &str) -> Manifest {
        Self::current_over(written_by, &Self::first_release())
    }

    /// What this build writes over `found`: its own numbers, but the Raft
    /// state format only as high as the directory needs (see
    /// [`RAFT_STATE_FORMAT`]).
    pub fn current_over(written_by: &str, found: &Manifest) -> Manifest {
        Manifest {
            data_format: DATA_FORMAT,
            segment_format: FORMAT_VERSION,
            raft_state_format: found.raft_state_format.max(1),
            written_by: written_by.to_owned(),
        }
    }

    /// What sidelog 0.1.0 wrote (no `FORMAT` file).
    fn first_release() -> Manifest {
        Manifest {
            data_format: 1,
            segment_format: 2,
            raft_state_format: 1,
            written_by: "0.1.0 or earlier (no FORMAT file)".into(),
        }
    }
}

/// Reads `dir/FORMAT` (0.1.0's formats when absent); refuses formats
/// newer than this build's before anything is changed.
pub fn check(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let found = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            position: 0,
            reason: format!("not a FORMAT file: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::first_release(),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let newer = [
        ("data", found.data_format, DATA_FORMAT),
        ("segment", found.segment_format, FORMAT_VERSION),
        ("Raft state", found.raft_state_format, RAFT_STATE_FORMAT),
    ]
    .into_iter()
    .find(|(_, f, known)| f > known);
    if let Some((what, f, known)) = newer {
        return Err(Error::NewerFormat {
            path,
            what,
            found: f,
            known,
            written_by: found.written_by,
        });
    }
    Ok(found)
}

/// Records this build's formats in `dir/FORMAT` (when they differ from
/// what is there).
pub fn record(dir: &Path, found: &Manifest, written_by: &str) -> Result<()> {
    let current = Manifest::current_over(written_by, found);
    if *found == current {
        return Ok(());
    }
    write(dir, &current)
}

/// Raises the Raft state format of `dir` to `format` (before the first
/// catalog entry is written: an older build then refuses the directory
/// instead of failing on an entry it cannot read).
pub fn raise_raft_state(dir: &Path, format: u32, written_by: &str) -> Result<()> {
    let found = check(dir)?;
    if found.raft_state_format >= format {
        return Ok(());
    }
    let mut m = Manifest::current_over(written_by, &found);
    m.raft_state_format = format;
    write(dir, &m)
}

fn write(dir: &Path, current: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    let tmp: PathBuf = dir.join(format!("{MANIFEST}.tmp"));
    let json = serde_json::to_vec(current).expect("a manifest serializes");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| Error::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_without_a_manifest_is_the_first_release_and_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let found = check(dir.path()).unwrap();
        assert_eq!(found, Manifest::first_release());
        record(dir.path(), &found, "test build").unwrap();
        assert_eq!(check(dir.path()).unwrap(), Manifest::current("test build"));
    }

    #[test]
    fn a_newer_format_is_refused_and_names_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let newer = Manifest {
            data_format: DATA_FORMAT + 1,
            ..Manifest::current("sidelog 9.9.9")
        };
        std::fs::write(dir.path().join(MANIFEST), serde_json::to_vec(&newer).unwrap()).unwrap();
        let e = check(dir.path()).unwrap_err().to_string();
        assert!(e.contains("sidelog 9.9.9") && e.contains("data format"), "{e}");
    }

    #[test]
    fn the_raft_state_format_rises_only_when_asked_and_never_falls() {
        let dir = tempfile::tempdir().unwrap();
        let found = check(dir.path()).unwrap();
        record(dir.path(), &found, "b").unwrap();
        assert_eq!(check(dir.path()).unwrap().raft_state_format, 1);
        raise_raft_state(dir.path(), RAFT_STATE_NAMED_LOGS, "b").unwrap();
        let found = check(dir.path()).unwrap();
        assert_eq!(found.raft_state_format, 2);
        // A later start of this build keeps it.
        record(dir.path(), &found, "c").unwrap();
        assert_eq!(check(dir.path()).unwrap().raft_state_format, 2);
        // A build that knows only 1 would refuse it.
        assert!(found.raft_state_format > 1);
    }
}
