//! Storage-layer benchmark: durable appends (fsync before ack) under many
//! concurrent appenders, large records against the disk's own limit (dd),
//! and the open time of a 1 GiB log.
//!
//! Run: `cargo bench --bench storage` (figures go in README.md). Set
//! `SIDELOG_BENCH_DIR` to choose the disk (default: a temp dir under ./target).

use std::{path::Path, process::Command, sync::Arc, time::Instant};

use sidelog::storage::{Entry, Log, LogConfig, encode_body};

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `appenders` tasks each append `per_task` records of `size` bytes and wait
/// for durability before the next. Returns (records/s, MB/s, fsyncs/record).
fn durable_appends(dir: &Path, appenders: usize, per_task: usize, size: usize) -> (f64, f64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    let log = Arc::new(Log::open(dir, LogConfig::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let body: Arc<[u8]> = encode_body(&[vec![0x5a; size]]).into();
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..appenders {
            let (log, body) = (log.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    let a = log.append(&[Entry::data(&body, 1)]).unwrap();
                    log.wait_durable(a.next_index).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let n = (appenders * per_task) as f64;
    let fsyncs = log.stats().fsyncs as f64;
    (n / secs, n * size as f64 / secs / 1e6, fsyncs / n)
}

fn dd_mb_per_s(dir: &Path) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join("dd.bin");
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", f.display()))
        .args(["bs=1M", "count=1024", "conv=fdatasync"])
        .output()
        .expect("run dd");
    let _ = std::fs::remove_file(&f);
    // dd prints "... bytes (...) copied, 2.5 s, 430 MB/s" on stderr.
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().last().unwrap_or_default();
    let secs: f64 = line
        .split(", ")
        .find_map(|s| s.strip_suffix(" s").and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("cannot read dd's time from {line:?}"));
    1024.0 * 1024.0 * 1024.0 / secs / 1e6
}

fn main() {
    let base =
        std::env::var_os("SIDELOG_BENCH_DIR").map_or_else(|| Path::new("target/bench-storage").to_owned(), Into::into);
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let dir = base.join("log");
    if std::env::args().any(|a| a == "--small-only") {
        let (rps, _, fpr) = durable_appends(&dir, 256, 8000 / scale, 100);
        println!("durable 100 B appends, 256 appenders: {rps:.0} records/s, fsyncs/record {fpr:.5}");
        return;
    }

    let mut small = Vec::new();
    let mut small_fsync = Vec::new();
    for _ in 0..RUNS {
        let (rps, _, fpr) = durable_appends(&dir, 256, 8000 / scale, 100);
        small.push(rps);
        small_fsync.push(fpr);
    }
    println!(
        "durable 100 B appends, 256 appenders: median {:.0} records/s (runs {:?}), fsyncs/record {:.5}",
        median(small.clone()),
        small.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        median(small_fsync)
    );

    let mut large = Vec::new();
    let mut dd = Vec::new();
    for _ in 0..RUNS {
        dd.push(dd_mb_per_s(&base));
        // 64 appenders x 256 records x 64 KiB = 1 GiB.
        let (_, mbps, _) = durable_appends(&dir, 64, 256 / scale, 64 << 10);
        large.push(mbps);
    }
    let (l, d) = (median(large), median(dd));
    println!(
        "durable 64 KiB appends, 64 appenders: median {l:.0} MB/s; dd conv=fdatasync: median {d:.0} MB/s; ratio {:.0} %",
        100.0 * l / d
    );

    // The last run left a 1 GiB log in `dir` (64 MiB segments, the
    // default): time opening it after a clean shutdown, and after a crash
    // (no clean marker: the whole active segment is verified).
    for (what, crash) in [("clean", false), ("after a crash", true)] {
        let mut opens = Vec::new();
        for _ in 0..5 {
            if crash {
                let _ = std::fs::remove_file(dir.join("CLEAN"));
            }
            let t = Instant::now();
            let log = Log::open(&dir, LogConfig::default()).unwrap();
            opens.push(t.elapsed().as_secs_f64() * 1e3);
            let stats = log.stats();
            drop(log);
            if opens.len() == 1 {
                println!(
                    "open test log: {:.2} GiB in {} segments",
                    stats.disk_bytes as f64 / (1u64 << 30) as f64,
                    stats.segments
                );
            }
        }
        println!("open of that log ({what}): median {:.2} ms over 5 opens", median(opens));
    }
    // Worst case after a crash: a nearly full active segment (60 MiB) to verify.
    let _ = std::fs::remove_dir_all(&dir);
    {
        let log = Log::open(&dir, LogConfig::default()).unwrap();
        let body = encode_body(&[vec![0x5a; 64 << 10]]);
        for _ in 0..960 {
            log.append(&[Entry::data(&body, 1)]).unwrap();
        }
        log.sync().unwrap();
    }
    let mut opens = Vec::new();
    for _ in 0..5 {
        let _ = std::fs::remove_file(dir.join("CLEAN"));
        let t = Instant::now();
        drop(Log::open(&dir, LogConfig::default()).unwrap());
        opens.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "open after a crash with a 60 MiB active segment: median {:.2} ms over 5 opens",
        median(opens)
    );
    let _ = std::fs::remove_dir_all(&base);
}
