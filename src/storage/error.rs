//! Errors of the storage layer.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::batch::BodyError;

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
    #[error(
        "{} is in on-disk format version {found}, but this build of sidelog reads and writes only version \
         {supported}: nothing was changed. Read the records out with the sidelog release that wrote them, or \
         start this version with an empty --data-dir",
        path.display()
    )]
    UnsupportedFormat { path: PathBuf, found: u32, supported: u32 },
    #[error(
        "{} says the data is in {what} format {found} (written by {written_by}), newer than this build of sidelog \
         knows ({known}): nothing was changed. Run the newer build, or start this one with an empty --data-dir",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        what: &'static str,
        found: u32,
        known: u32,
        written_by: String,
    },
    #[error("index {index} is out of range: the log holds [{first}, {next})")]
    IndexOutOfRange { index: u64, first: u64, next: u64 },
    #[error("offset {offset} is out of range: the log holds offsets [{first}, {next})")]
    OffsetOutOfRange { offset: u64, first: u64, next: u64 },
    #[error("append at index {got} but the next index is {expected}")]
    NonSequential { expected: u64, got: u64 },
    #[error("batch of {len} bytes exceeds the format's 4 GiB limit")]
    BatchTooLarge { len: usize },
    #[error("malformed batch at index {index}: {source}")]
    BadBatch {
        index: u64,
        #[source]
        source: BodyError,
    },
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
