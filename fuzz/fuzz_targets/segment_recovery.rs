//! Opening a data directory built from the fuzzer's input: one or two
//! segment files (the first sealed, with its index), optionally a `CLEAN`
//! marker and the active segment's index (see `sidelog_fuzz::Input` for
//! the layout and flags). The storage layer must refuse the directory with
//! an error or open it and serve only valid batches:
//!
//! - every index from first to next reads, or fails with a clean error
//!   (never "out of range" inside the log's own extent);
//! - every batch read is, byte for byte with its checksum recomputed by an
//!   independent encoder, a batch present in one of the files;
//! - records read by offset carry that offset; iterating by offset gives
//!   strictly increasing offsets inside the log's extent;
//! - a single segment after a crash (no marker) keeps exactly the valid
//!   prefix an independent model of the format finds, and serves it;
//! - the log takes an append afterwards, and reopens after a clean close
//!   with the same extent;
//! - the extent is bounded by the bytes given (no absurd allocations:
//!   libFuzzer's -rss_limit_mb / -malloc_limit_mb catch those).
//!
//! Segment files produced by the storage layer itself seed the corpus
//! (`cargo run --example gen_corpus` in `fuzz/`).
#![no_main]

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use libfuzzer_sys::fuzz_target;
use sidelog::storage::{Batch, Entry, Kind, Log, LogConfig, encode_body};
use sidelog_fuzz::{
    Input, ModelBatch, file_header, file_name, fix_checksums, flags, index_of, renumber, valid_chain, xor_into,
};

/// Reads per phase are capped so that a corrupt sealed index (every entry
/// spanning most of the file) costs time linear in the input, not more.
const MAX_READS: usize = 2048;

fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // tmpfs when there is one: recovery fsyncs files and directories.
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_owned()
        } else {
            std::env::temp_dir()
        };
        base.join(format!("sidelog-fuzz-segment-{}", std::process::id()))
    })
}

fn config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 1 << 20,
        // Small, so recovery grows the index now and then.
        index_max_entries: 8,
        ..LogConfig::default()
    }
}

/// A segment file's bytes and the base index its name carries.
fn segment_file(part: &[u8], base: (u64, u64), f: u8) -> (u64, Vec<u8>) {
    let (name, mut bytes) = if f & flags::HEADERS != 0 {
        let mut b = file_header(base.0, base.1).to_vec();
        b.extend_from_slice(part);
        (base.0, b)
    } else {
        // The name follows the header's base index, as in a real directory.
        let name = part
            .get(8..16)
            .map_or(base.0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        (name, part.to_vec())
    };
    if f & flags::RENUMBER != 0 {
        renumber(&mut bytes);
    }
    if f & flags::FIX_CRC != 0 {
        fix_checksums(&mut bytes);
    }
    (name, bytes)
}

fn model_of(b: &Batch) -> ModelBatch {
    ModelBatch {
        index: b.index,
        base_offset: b.base_offset,
        term: b.term,
        kind: b.kind as u8,
        count: b.count,
        producer_id: b.producer.id,
        producer_seq: b.producer.seq,
        body: b.body.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let f = input.flags;
    let dir = dir();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let _cleanup = RemoveDir(dir);

    // The segment files, oldest first.
    let mut segs = vec![segment_file(input.parts[0], (input.base_index, input.base_offset), f)];
    if f & flags::TWO_SEGMENTS != 0 {
        let base = if f & flags::CONTINUE != 0 {
            valid_chain(&segs[0].1).map_or((0, 0), |(_, i, o)| (i, o))
        } else {
            (
                input.base_index.wrapping_add(u64::from(input.seg1_index_delta.max(1))),
                input.base_offset.wrapping_add(u64::from(input.seg1_offset_delta)),
            )
        };
        let seg = segment_file(input.parts[1], base, f);
        if seg.0 == segs[0].0 {
            segs[0] = seg;
        } else {
            segs.push(seg);
        }
    }
    segs.sort_by_key(|s| s.0);
    let mut disk_bytes = 0usize;
    for (i, (base, bytes)) in segs.iter().enumerate() {
        std::fs::write(dir.join(file_name(*base, "log")), bytes).unwrap();
        disk_bytes += bytes.len();
        let active = i + 1 == segs.len();
        let faithful = || valid_chain(bytes).map_or_else(Vec::new, |(chain, _, _)| index_of(&chain));
        let idx = if !active {
            let mut idx = faithful();
            if f & flags::DAMAGE_SEALED_INDEX != 0 {
                xor_into(&mut idx, input.parts[2]);
            }
            Some(idx)
        } else if f & flags::ACTIVE_INDEX != 0 {
            let mut idx = faithful();
            xor_into(&mut idx, input.parts[3]);
            Some(idx)
        } else {
            None
        };
        if let Some(idx) = idx {
            disk_bytes += idx.len();
            std::fs::write(dir.join(file_name(*base, "idx")), idx).unwrap();
        }
    }
    let (active_base, active_bytes) = segs.last().unwrap();
    if f & flags::CLEAN != 0 {
        let marker = format!(
            "sidelog-clean-v2 {active_base} {} {}\n",
            active_bytes.len(),
            input.clean_entries
        );
        std::fs::write(dir.join("CLEAN"), marker).unwrap();
    }
    // A single segment after a crash: recovery keeps exactly the valid prefix.
    let model = (segs.len() == 1 && f & flags::CLEAN == 0).then(|| valid_chain(active_bytes));

    let log = match Log::open(dir, config()) {
        Ok(log) => log,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if let Some(Some(_)) = model {
                panic!("a single segment with a valid header was refused: {e}");
            }
            return;
        }
    };
    if let Some(None) = model {
        // Only a file too short to hold a header is recreated empty.
        assert!(active_bytes.len() <= 32, "a segment with a bad header was opened");
    }

    let (first, next) = (log.first_index(), log.next_index());
    let (first_offset, next_offset) = (log.first_offset(), log.next_offset());
    assert!(first <= next && first_offset <= next_offset);
    assert!(
        next - first <= disk_bytes as u64,
        "{} batches claimed from {disk_bytes} bytes",
        next - first
    );
    if let Some(Some((chain, model_next, model_next_offset))) = &model {
        assert_eq!((first, next), (*active_base, *model_next), "recovered extent");
        assert_eq!(next_offset, *model_next_offset);
        assert_eq!(
            first_offset,
            chain.first().map_or(*model_next_offset, |(_, b)| b.base_offset)
        );
    }

    // Every batch by index.
    let mut data_batches = Vec::new();
    for (n, i) in (first..next).enumerate().take(MAX_READS) {
        match log.read(i) {
            Ok(b) => {
                assert_eq!(b.index, i);
                let m = model_of(&b);
                if let Some(Some((chain, _, _))) = &model {
                    assert_eq!(m, chain[n].1, "batch {i} differs from the model");
                }
                let bytes = m.encode();
                assert!(
                    segs.iter().any(|(_, f)| memchr::memmem::find(f, &bytes).is_some()),
                    "batch {i} as read is not in any segment file"
                );
                let records: Vec<_> = b.records().collect();
                assert_eq!(records.len(), b.count as usize);
                if b.kind == Kind::Data {
                    let lens: Vec<usize> = records.iter().map(|r| r.value.len()).collect();
                    assert_eq!(m.records().map(|r| r.iter().map(|v| v.len()).collect()), Some(lens));
                    data_batches.push(b);
                }
            }
            Err(e) => {
                assert!(model.is_none(), "read {i} of a recovered segment failed: {e}");
                assert!(
                    !e.is_out_of_range(),
                    "index {i} in [{first}, {next}) is out of range: {e}"
                );
            }
        }
    }

    // Records by offset: each carries the offset asked for.
    let mut reads = 0;
    'outer: for b in &data_batches {
        for r in b.records() {
            if reads == MAX_READS {
                break 'outer;
            }
            reads += 1;
            match log.read_offset(r.offset) {
                Ok(got) => {
                    assert_eq!(got.offset, r.offset);
                    if model.is_some() {
                        assert_eq!(got, r);
                    }
                }
                Err(e) => assert!(model.is_none(), "read of offset {} failed: {e}", r.offset),
            }
        }
    }
    let mut prev = None;
    for r in log.iter_from_offset(first_offset).take(MAX_READS) {
        let Ok(r) = r else { break };
        assert!(r.offset >= first_offset && r.offset < next_offset);
        assert!(prev.is_none_or(|p| r.offset > p), "offsets go back");
        prev = Some(r.offset);
    }
    assert!(log.read(next).is_err_and(|e| e.is_out_of_range()));
    assert!(log.read_offset(next_offset).is_err_and(|e| e.is_out_of_range()));
    if first_offset > 0 {
        assert!(log.read_offset(first_offset - 1).is_err_and(|e| e.is_out_of_range()));
    }

    // It takes an append, and reopens after a clean close.
    let body = encode_body(&[&b"after recovery"[..]]);
    let appended = next_offset.checked_add(1).is_some() && next.checked_add(1).is_some();
    if appended {
        let a = log.append(&[Entry::data(&body, 1)]).expect("append after recovery");
        assert_eq!((a.first_index, a.first_offset), (next, next_offset));
        let r = log.read_offset(next_offset).expect("read the appended record");
        assert_eq!(&r.value[..], b"after recovery");
    }
    log.close().expect("clean close");
    let log = Log::open(dir, config()).expect("reopen after a clean close");
    let grew = u64::from(appended);
    assert_eq!(
        (log.first_index(), log.next_index(), log.next_offset()),
        (first, next + grew, next_offset + grew),
        "reopened with another extent"
    );
    if appended {
        let r = log
            .read_offset(next_offset)
            .expect("read the appended record after reopening");
        assert_eq!(&r.value[..], b"after recovery");
    }
    drop(log);
});

/// Removes the data directory after each input (a crash aborts before, so
/// its directory stays for a look).
struct RemoveDir(&'static Path);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}
