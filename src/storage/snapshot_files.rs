//! Segment files for snapshots: hard links that keep a range of the log
//! readable while it is sent, and a verifying reader for received files.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use super::{
    Error, Log, Result,
    batch::{self, Batch},
    lock, segment,
};

/// A segment file linked by [`Log::link_segments`].
#[derive(Clone, Debug)]
pub struct LinkedSegment {
    pub path: PathBuf,
    pub base_index: u64,
    /// Leading bytes of the file that hold the linked range.
    pub len: u64,
}

impl Log {
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
}

/// Reads the batches of a segment `.log` file front to back, verifying
/// each (for segment files received in a snapshot). The file must end on a
/// batch boundary.
pub fn read_segment_file(path: &Path) -> Result<SegmentFileReader> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    // The file came from a peer: check that it is a segment of our format
    // before trusting any length in it.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base_index = segment::parse_file_name(&name)
        .map(|(b, _)| b)
        .ok_or_else(|| Error::Corrupt {
            path: path.to_owned(),
            position: 0,
            reason: "not a segment file name".into(),
        })?;
    segment::read_file_header(&file, path, base_index)?;
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; segment::FILE_HEADER_LEN as usize];
    io::Read::read_exact(&mut reader, &mut header).map_err(|e| Error::io(path, e))?;
    Ok(SegmentFileReader {
        path: path.to_owned(),
        reader,
        position: segment::FILE_HEADER_LEN,
        file_len,
    })
}

/// See [`read_segment_file`].
pub struct SegmentFileReader {
    path: PathBuf,
    reader: io::BufReader<File>,
    position: u64,
    file_len: u64,
}

impl Iterator for SegmentFileReader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        use io::Read;
        let corrupt = |position, reason: &str| Error::Corrupt {
            path: self.path.clone(),
            position,
            reason: reason.to_owned(),
        };
        let mut hb = [0u8; batch::HEADER_LEN];
        let mut got = 0;
        while got < hb.len() {
            match self.reader.read(&mut hb[got..]) {
                Ok(0) if got == 0 => return None,
                Ok(0) => return Some(Err(corrupt(self.position, "file ends inside a batch header"))),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(Error::io(&self.path, e))),
            }
        }
        let h = match batch::decode_header(&hb) {
            Ok(h) => h,
            Err(e) => return Some(Err(corrupt(self.position, &format!("{e:?}")))),
        };
        if h.batch_len() > self.file_len - self.position {
            return Some(Err(corrupt(self.position, "batch runs past the end of the file")));
        }
        let mut payload = vec![0u8; h.len as usize];
        if let Err(e) = self.reader.read_exact(&mut payload) {
            return Some(Err(Error::io(&self.path, e)));
        }
        if !batch::verify(&hb, &h, &payload) {
            return Some(Err(corrupt(self.position, "batch checksum mismatch")));
        }
        self.position += h.batch_len();
        Some(Ok(Batch {
            index: h.index,
            base_offset: h.base_offset,
            term: h.term,
            kind: h.kind,
            count: h.count,
            producer: h.producer,
            body: payload.into(),
        }))
    }
}
