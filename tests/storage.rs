//! The segmented log: the book's cases, crash cases, and a model-based
//! property test.

use std::{fs::OpenOptions, io::Write, os::unix::fs::FileExt, path::Path, sync::Arc};

use proptest::prelude::*;
use sidelog::storage::{Entry, Error, Kind, Log, LogConfig, Retention, encode_body};

fn small_config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 1024,
        index_max_entries: 64,
        ..Default::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("record number {i}").into_bytes()
}

/// The body of a batch of one record.
fn one(value: &[u8]) -> Vec<u8> {
    encode_body(&[value])
}

fn append_data(log: &Log, n: u64) {
    for _ in 0..n {
        let next = log.next_offset();
        log.append(&[Entry::data(&one(&payload(next)), 1)]).unwrap();
    }
}

fn segment_files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn assert_offsets_readable(log: &Log, n: u64) {
    assert_eq!(log.next_offset(), n);
    for o in 0..n {
        let r = log.read_offset(o).unwrap();
        assert_eq!(r.offset, o);
        assert_eq!(&r.value[..], &payload(o)[..], "payload of offset {o}");
    }
}

#[test]
fn append_and_read_three_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    for (i, v) in [b"hello".as_slice(), b"world", b"!"].into_iter().enumerate() {
        let a = log.append(&[Entry::data(&one(v), 1)]).unwrap();
        assert_eq!(a.first_offset, i as u64);
        assert_eq!(a.first_index, i as u64);
    }
    assert_eq!(&log.read_offset(1).unwrap().value[..], b"world");
    assert_eq!(log.read(2).unwrap().body, one(b"!"));
    assert_eq!(log.next_offset(), 3);
}

#[test]
fn reading_past_the_end_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    append_data(&log, 2);
    match log.read_offset(2) {
        Err(Error::OffsetOutOfRange {
            offset: 2,
            first: 0,
            next: 2,
        }) => {}
        other => panic!("expected out of range, got {other:?}"),
    }
    assert!(matches!(log.read(5), Err(Error::IndexOutOfRange { index: 5, .. })));
}

#[test]
fn reopen_continues_at_the_next_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_config()).unwrap();
        append_data(&log, 30);
        log.close().unwrap();
    }
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_offsets_readable(&log, 30);
    let a = log.append(&[Entry::data(&one(&payload(30)), 1)]).unwrap();
    assert_eq!(a.first_offset, 30);
    assert_offsets_readable(&log, 31);
}

#[test]
fn second_open_of_a_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert!(matches!(
        Log::open(dir.path(), LogConfig::default()),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn store_at_its_limit_rolls_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_max_bytes: 1024,
            ..Default::default()
        },
    )
    .unwrap();
    append_data(&log, 40);
    log.sync().unwrap();
    let logs = segment_files(dir.path(), "log");
    assert!(logs.len() > 1, "expected several segments, got {logs:?}");
    for p in &logs {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= 1024, "{} is {len} bytes, over the limit", p.display());
    }
    assert_offsets_readable(&log, 40);
}

#[test]
fn index_at_its_limit_rolls_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            index_max_entries: 3,
            ..Default::default()
        },
    )
    .unwrap();
    append_data(&log, 10);
    log.sync().unwrap();
    // 10 records, 3 per index: 4 segments; sealed indexes hold exactly 3 entries.
    let idx = segment_files(dir.path(), "idx");
    assert_eq!(idx.len(), 4);
    for p in &idx[..3] {
        assert_eq!(std::fs::metadata(p).unwrap().len(), 3 * 16);
    }
    assert_offsets_readable(&log, 10);
    drop(log);
    let log = Log::open(
        dir.path(),
        LogConfig {
            index_max_entries: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_offsets_readable(&log, 10);
}

#[test]
fn truncate_drops_a_suffix_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    append_data(&log, 50);
    log.truncate_from(20).unwrap();
    assert_eq!(log.next_index(), 20);
    assert!(log.read(20).unwrap_err().is_out_of_range());
    append_data(&log, 5);
    assert_offsets_readable(&log, 25);
    log.sync().unwrap();
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_offsets_readable(&log, 25);
}

#[test]
fn control_entries_do_not_consume_data_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogConfig {
            initial_index: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let blank = Entry {
        index: Some(1),
        term: 1,
        ..Entry::control(b"")
    };
    log.append(&[blank]).unwrap();
    let a = log
        .append(&[Entry {
            term: 1,
            ..Entry::data(&one(b"a"), 1)
        }])
        .unwrap();
    assert_eq!((a.first_index, a.first_offset), (2, 0));
    log.append(&[Entry {
        term: 2,
        ..Entry::control(b"m")
    }])
    .unwrap();
    log.append(&[Entry::data(&encode_body(&[&b"b"[..], b"c"]), 2)]).unwrap();
    assert_eq!(log.read_offset(0).unwrap().value, &b"a"[..]);
    let r = log.read_offset(2).unwrap();
    assert_eq!((r.offset, &r.value[..]), (2, &b"c"[..]));
    let data: Vec<_> = log.iter_from_offset(0).map(|r| r.unwrap().value).collect();
    assert_eq!(data, vec![&b"a"[..], b"b", b"c"]);
    let all: Vec<_> = log.iter_from_index(1).map(|r| r.unwrap().kind).collect();
    assert_eq!(all, vec![Kind::Control, Kind::Data, Kind::Control, Kind::Data]);
    assert_eq!(log.read(4).unwrap().base_offset, 1);
    assert_eq!(log.next_offset(), 3);
}

#[test]
fn non_sequential_index_is_rejected_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let ok = one(b"ok");
    let x = one(b"x");
    let batch = [
        Entry::data(&ok, 1),
        Entry {
            index: Some(7),
            ..Entry::data(&x, 1)
        },
    ];
    assert!(matches!(
        log.append(&batch),
        Err(Error::NonSequential { expected: 1, got: 7 })
    ));
    assert_eq!(log.next_index(), 0);
}

#[test]
fn remove_before_drops_only_whole_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    append_data(&log, 100);
    let before = segment_files(dir.path(), "log").len();
    let removed = log.remove_before(50).unwrap();
    assert!(removed > 0);
    assert_eq!(segment_files(dir.path(), "log").len(), before - removed);
    let first = log.first_index();
    assert!(first <= 50 && first > 0, "first index {first}");
    assert!(log.read(first - 1).unwrap_err().is_out_of_range());
    for i in first..100 {
        assert_eq!(log.read(i).unwrap().base_offset, i);
    }
    // Everything below the next index still leaves the active segment.
    log.remove_before(u64::MAX).unwrap();
    assert_eq!(segment_files(dir.path(), "log").len(), 1);
    assert_eq!(log.next_offset(), 100);
}

#[test]
fn retention_by_bytes_keeps_the_newest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    append_data(&log, 200);
    log.sync().unwrap();
    let total = log.disk_bytes();
    let policy = Retention {
        max_bytes: Some(3000),
        max_age: None,
    };
    let removed = log.apply_retention(&policy, u64::MAX).unwrap();
    assert!(removed > 0);
    assert!(log.disk_bytes() <= 3000, "{} > 3000 (was {total})", log.disk_bytes());
    assert_eq!(log.read_offset(199).unwrap().offset, 199);
    // Retention by age: everything sealed is older than zero seconds.
    let policy = Retention {
        max_bytes: None,
        max_age: Some(std::time::Duration::ZERO),
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    log.apply_retention(&policy, u64::MAX).unwrap();
    assert_eq!(
        segment_files(dir.path(), "log").len(),
        1,
        "only the active segment remains"
    );
}

#[test]
fn reset_restarts_the_log_at_a_given_point() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    append_data(&log, 10);
    log.reset(1000, 700).unwrap();
    assert_eq!(
        (log.first_index(), log.next_index(), log.next_offset()),
        (1000, 1000, 700)
    );
    let a = log.append(&[Entry::data(&one(b"x"), 1)]).unwrap();
    assert_eq!((a.first_index, a.first_offset), (1000, 700));
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.read_offset(700).unwrap().value, &b"x"[..]);
    assert_eq!(log.read(1000).unwrap().base_offset, 700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let a = log
                    .append(&[Entry::data(&one(format!("{t}-{i}").as_bytes()), 1)])
                    .unwrap();
                let d = log.wait_durable(a.next_index).await.unwrap();
                assert!(d >= a.next_index);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.next_offset, 64 * 50);
    assert!(
        stats.fsyncs < 64 * 50,
        "{} fsyncs for {} records: no sharing",
        stats.fsyncs,
        64 * 50
    );
    assert_eq!(log.durable().next_index, 64 * 50);
}

// ---- crash cases: after N synced appends, damage the files, reopen ----

const N: u64 = 25;

/// Writes N records (synced) into a single active segment and returns the
/// active segment's paths.
fn synced_log(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = Log::open(dir, LogConfig::default()).unwrap();
    append_data(&log, N);
    log.sync().unwrap();
    drop(log);
    (
        segment_files(dir, "log").pop().unwrap(),
        segment_files(dir, "idx").pop().unwrap(),
    )
}

fn reopen_expect_prefix(dir: &Path, valid: u64) {
    let log = Log::open(dir, LogConfig::default()).unwrap();
    assert_offsets_readable(&log, valid);
    assert!(log.read_offset(valid).unwrap_err().is_out_of_range());
    // Appends go on right after the valid prefix, and survive another reopen.
    append_data(&log, 3);
    log.sync().unwrap();
    drop(log);
    let log = Log::open(dir, LogConfig::default()).unwrap();
    assert_offsets_readable(&log, valid + 3);
}

/// Bytes on disk of the one-record batch holding `payload(i)`.
fn record_len(i: u64) -> u64 {
    (sidelog::storage::HEADER_LEN + sidelog::storage::RECORD_OVERHEAD + payload(i).len()) as u64
}

#[test]
fn crash_cut_mid_record_keeps_the_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (log_path, _) = synced_log(dir.path());
    let len = std::fs::metadata(&log_path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&log_path).unwrap();
    f.set_len(len - record_len(N - 1) / 2).unwrap();
    reopen_expect_prefix(dir.path(), N - 1);
}

#[test]
fn crash_garbage_appended_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (log_path, _) = synced_log(dir.path());
    let mut f = OpenOptions::new().append(true).open(&log_path).unwrap();
    let garbage: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    f.write_all(&garbage).unwrap();
    reopen_expect_prefix(dir.path(), N);
}

#[test]
fn crash_flipped_bit_in_last_record_drops_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log_path, _) = synced_log(dir.path());
    let len = std::fs::metadata(&log_path).unwrap().len();
    let f = OpenOptions::new().read(true).write(true).open(&log_path).unwrap();
    let at = len - 3; // inside the last payload
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    reopen_expect_prefix(dir.path(), N - 1);
}

#[test]
fn crash_zeroed_index_tail_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx_path) = synced_log(dir.path());
    let f = OpenOptions::new().write(true).open(&idx_path).unwrap();
    // Zero the entries of the last 10 records (and everything after them).
    f.write_all_at(&vec![0u8; 10 * 16], (N - 10) * 16).unwrap();
    reopen_expect_prefix(dir.path(), N);
}

#[test]
fn crash_index_lost_entirely_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (_, idx_path) = synced_log(dir.path());
    std::fs::remove_file(&idx_path).unwrap();
    reopen_expect_prefix(dir.path(), N);
}

#[test]
fn crash_index_pointing_past_a_cut_log_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let (log_path, _) = synced_log(dir.path());
    // The index (mmap) survived but the log lost its last 5 records.
    let keep: u64 = 32 + (0..N - 5).map(record_len).sum::<u64>();
    OpenOptions::new()
        .write(true)
        .open(&log_path)
        .unwrap()
        .set_len(keep)
        .unwrap();
    reopen_expect_prefix(dir.path(), N - 5);
}

#[test]
fn corrupt_sealed_segment_is_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_config()).unwrap();
        append_data(&log, 100);
        log.sync().unwrap();
    }
    let logs = segment_files(dir.path(), "log");
    assert!(logs.len() > 2);
    let victim = &logs[0];
    let len = std::fs::metadata(victim).unwrap().len();
    let f = OpenOptions::new().read(true).write(true).open(victim).unwrap();
    f.write_all_at(b"X", len - 1).unwrap();
    match Log::open(dir.path(), small_config()) {
        Err(e @ Error::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&victim.file_name().unwrap().to_string_lossy().to_string()),
                "{msg}"
            );
        }
        other => panic!("expected a corrupt-segment error, got {:?}", other.map(|_| ())),
    }
}

// ---- property test against an in-memory model ----

#[derive(Clone, Debug)]
enum Op {
    /// A data batch of these records, or (false) a control entry with the
    /// first value as its payload.
    Append(Vec<Vec<u8>>, bool),
    Truncate(u8),
    RemoveBefore(u8),
    Reopen,
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    let values = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..5);
    prop_oneof![
        6 => (values, any::<bool>()).prop_map(|(v, d)| Op::Append(v, d)),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => any::<u8>().prop_map(Op::RemoveBefore),
        1 => Just(Op::Reopen),
        1 => Just(Op::Sync),
    ]
}

/// A batch in the model: index, base offset, kind, records (data) or the
/// control payload (one element).
type ModelBatch = (u64, u64, Kind, Vec<Vec<u8>>);

/// The model: every batch, and the next index and offset.
struct Model {
    recs: Vec<ModelBatch>,
    next_index: u64,
    next_offset: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { segment_max_bytes: 500, index_max_entries: 8, ..Default::default() };
        let mut log = Log::open(dir.path(), cfg.clone()).unwrap();
        let mut m = Model { recs: vec![], next_index: 0, next_offset: 0 };
        for op in ops {
            match op {
                Op::Append(mut values, is_data) => {
                    let (kind, body, count) = if is_data {
                        (Kind::Data, encode_body(&values), values.len() as u32)
                    } else {
                        values.truncate(1);
                        (Kind::Control, values[0].clone(), 0)
                    };
                    let e = Entry { index: None, term: 1, kind, count, producer: Default::default(), body: &body };
                    let a = log.append(&[e]).unwrap();
                    prop_assert_eq!(a.first_index, m.next_index);
                    prop_assert_eq!(a.first_offset, m.next_offset);
                    m.recs.push((m.next_index, m.next_offset, kind, values));
                    m.next_index += 1;
                    m.next_offset += u64::from(count);
                }
                Op::Truncate(k) => {
                    let first = log.first_index();
                    if m.next_index > first {
                        let at = first + u64::from(k) % (m.next_index - first);
                        log.truncate_from(at).unwrap();
                        let pos = m.recs.iter().position(|r| r.0 == at).unwrap();
                        m.next_offset = m.recs[pos].1;
                        m.recs.truncate(pos);
                        m.next_index = at;
                    }
                }
                Op::RemoveBefore(k) => {
                    log.remove_before(u64::from(k) % (m.next_index + 1)).unwrap();
                    let first = log.first_index();
                    m.recs.retain(|r| r.0 >= first);
                }
                Op::Reopen => {
                    log.sync().unwrap();
                    drop(log);
                    log = Log::open(dir.path(), cfg.clone()).unwrap();
                }
                Op::Sync => { log.sync().unwrap(); }
            }
            prop_assert_eq!(log.next_index(), m.next_index);
            prop_assert_eq!(log.next_offset(), m.next_offset);
        }
        // Every batch in the model reads back by index, and every record by
        // offset, singly and by iteration.
        let first = log.first_index();
        prop_assert_eq!(m.recs.first().map_or(m.next_index, |r| r.0), first);
        let mut want = Vec::new();
        for (index, base, kind, values) in &m.recs {
            let r = log.read(*index).unwrap();
            prop_assert_eq!((r.base_offset, r.kind), (*base, *kind));
            if *kind == Kind::Data {
                let got: Vec<Vec<u8>> = r.records().map(|r| r.value.to_vec()).collect();
                prop_assert_eq!(&got, values);
                for (i, v) in values.iter().enumerate() {
                    let rec = log.read_offset(base + i as u64).unwrap();
                    prop_assert_eq!((rec.offset, &rec.value[..]), (base + i as u64, &v[..]));
                    want.push((base + i as u64, v.clone()));
                }
            } else {
                prop_assert_eq!(&r.body[..], &values[0][..]);
            }
        }
        let data: Vec<(u64, Vec<u8>)> =
            log.iter_from_offset(log.first_offset()).map(|r| r.map(|r| (r.offset, r.value.to_vec())).unwrap()).collect();
        prop_assert_eq!(data, want);
    }
}

// ---- cases from review: crash without a clean shutdown, resets, misuse ----

#[test]
fn crash_with_a_hole_mid_segment_keeps_only_the_prefix_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log_path, _) = synced_log(dir.path());
    // A crash (no clean-shutdown marker) that lost a page in the middle of
    // the log while the index and later records survived.
    std::fs::remove_file(dir.path().join("CLEAN")).unwrap();
    let hole_at: u64 = 32 + (0..10).map(record_len).sum::<u64>();
    let f = OpenOptions::new().write(true).open(&log_path).unwrap();
    f.write_all_at(&vec![0u8; record_len(10) as usize], hole_at).unwrap();
    reopen_expect_prefix(dir.path(), 10);
}

#[test]
fn clean_shutdown_leaves_a_marker_that_open_consumes() {
    let dir = tempfile::tempdir().unwrap();
    synced_log(dir.path());
    assert!(dir.path().join("CLEAN").exists());
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert!(
        !dir.path().join("CLEAN").exists(),
        "a crash from here on must not be mistaken for a clean state"
    );
    assert_offsets_readable(&log, N);
}

#[test]
fn interrupted_reset_is_completed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_config()).unwrap();
        append_data(&log, 40);
        log.sync().unwrap();
        for p in segment_files(dir.path(), "log")
            .into_iter()
            .chain(segment_files(dir.path(), "idx"))
        {
            std::fs::copy(&p, saved.path().join(p.file_name().unwrap())).unwrap();
        }
        log.reset(1000, 700).unwrap();
    }
    // As if the crash came after the new segment was made, before the old
    // went and before the marker was removed.
    std::fs::write(dir.path().join("RESET"), "sidelog-reset-v1 1000 700 end\n").unwrap();
    for e in std::fs::read_dir(saved.path()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(dir.path().join("CLEAN")).unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_eq!(
        (log.first_index(), log.next_index(), log.next_offset()),
        (1000, 1000, 700)
    );
    assert_eq!(segment_files(dir.path(), "log").len(), 1);
}

#[test]
fn truncating_below_the_first_index_is_an_error_that_leaves_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    append_data(&log, 100);
    log.remove_before(50).unwrap();
    assert!(log.truncate_from(0).unwrap_err().is_out_of_range());
    append_data(&log, 1);
    log.sync().unwrap();
    assert_eq!(log.next_offset(), 101);
}

#[tokio::test]
async fn waiting_after_a_truncation_completes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    append_data(&log, 10);
    log.wait_durable(10).await.unwrap();
    log.truncate_from(5).unwrap();
    append_data(&log, 5);
    tokio::time::timeout(std::time::Duration::from_secs(10), log.wait_durable(10))
        .await
        .expect("the flusher must be asked again after the watermark went down")
        .unwrap();
}

#[test]
fn damaged_sealed_index_entry_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_config()).unwrap();
        append_data(&log, 40);
    }
    let idx = segment_files(dir.path(), "idx").into_iter().next().unwrap();
    let f = OpenOptions::new().write(true).open(&idx).unwrap();
    f.write_all_at(&u64::MAX.to_le_bytes(), 16).unwrap(); // entry 1's position
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert!(matches!(log.read(1), Err(Error::Corrupt { .. })));
    assert!(log.read(2).is_ok(), "records whose entries are intact still read");
}

#[test]
fn interrupted_reset_onto_an_existing_base_drops_the_old_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        append_data(&log, 10);
        log.sync().unwrap();
    }
    // The crash came after the marker was durable, before anything else:
    // the old active segment at base 0 (offset 0) is still there.
    std::fs::write(dir.path().join("RESET"), "sidelog-reset-v1 0 500 end\n").unwrap();
    std::fs::remove_file(dir.path().join("CLEAN")).unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!((log.first_index(), log.next_index(), log.next_offset()), (0, 0, 500));
    assert!(!dir.path().join("RESET").exists());
}

#[test]
fn a_torn_reset_marker_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    synced_log(dir.path());
    std::fs::write(dir.path().join("RESET"), "sidelog-reset-v1 12345 6").unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_offsets_readable(&log, N);
    assert!(!dir.path().join("RESET").exists());
}

// ---- format versions ----

/// A data directory written by format version 1 (36-byte record headers,
/// magic `SIDELOG1`): opening it must fail with an error that names both
/// versions, and must change nothing in the directory.
#[test]
fn an_old_format_data_dir_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = [0u8; 32];
    header[..8].copy_from_slice(b"SIDELOG1");
    let crc = crc32c::crc32c(&header[..28]);
    header[28..].copy_from_slice(&crc.to_le_bytes());
    let mut segment = header.to_vec();
    segment.extend_from_slice(&[7u8; 60]); // a v1 record, never read
    let seg_path = dir.path().join(format!("{:020}.log", 0));
    std::fs::write(&seg_path, &segment).unwrap();
    std::fs::write(dir.path().join(format!("{:020}.idx", 0)), [0u8; 16]).unwrap();
    std::fs::write(dir.path().join("CLEAN"), "sidelog-clean-v1 0 92 1\n").unwrap();
    let snapshot = |dir: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "LOCK")
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(dir.path());
    let err = Log::open(dir.path(), LogConfig::default())
        .err()
        .expect("an old format is refused");
    match &err {
        Error::UnsupportedFormat {
            path,
            found: 1,
            supported: 2,
        } => assert_eq!(path, &seg_path),
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("version 1") && msg.contains("version 2"), "{msg}");
    assert_eq!(snapshot(dir.path()), before, "the directory was changed");
}

#[test]
fn a_batch_whose_body_does_not_match_its_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let body = encode_body(&[&b"a"[..], b"b"]);
    let err = log.append(&[Entry::data(&body, 3)]).unwrap_err();
    assert!(matches!(err, Error::BadBatch { index: 0, .. }), "{err:?}");
    assert!(matches!(
        log.append(&[Entry::data(&[], 0)]),
        Err(Error::BadBatch { .. })
    ));
    assert_eq!((log.next_index(), log.next_offset()), (0, 0));
    // The log stays usable.
    log.append(&[Entry::data(&body, 2)]).unwrap();
    assert_eq!(log.next_offset(), 2);
}

#[test]
fn reads_inside_large_batches_return_exactly_the_record_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_config()).unwrap();
    let mut next = 0u64;
    for size in [1usize, 7, 1, 30, 2] {
        let values: Vec<Vec<u8>> = (next..next + size as u64).map(payload).collect();
        log.append(&[Entry::data(&encode_body(&values), size as u32)]).unwrap();
        next += size as u64;
    }
    log.sync().unwrap();
    assert_offsets_readable(&log, next);
    // A range that starts and ends inside batches.
    let got: Vec<u64> = log
        .read_data(3, 20, usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(got, (3..20).collect::<Vec<_>>());
    let limited = log.read_data(3, 40, 5, usize::MAX).unwrap();
    assert_eq!(limited.len(), 5);
    drop(log);
    let log = Log::open(dir.path(), small_config()).unwrap();
    assert_offsets_readable(&log, next);
}
