//! `sidelog perf`: a load generator in the manner of `nats bench` or
//! Kafka's perf-test tools. It prints progress every second on stderr and a
//! summary (records/s, MB/s, latency percentiles) on stdout.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::ConnectArgs;
use crate::{client::Client, pb::log as pb};

#[derive(Args, Debug)]
pub struct PerfArgs {
    #[command(subcommand)]
    pub command: PerfCommand,
}

#[derive(Subcommand, Debug)]
pub enum PerfCommand {
    /// Produce records as fast as acknowledgements allow.
    Produce(ProducePerf),
    /// Consume records with ConsumeStream as fast as they arrive.
    Consume(ConsumePerf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Concurrent unary Produce calls on one connection.
    Unary,
    /// One ProduceStream with --inflight requests outstanding.
    Stream,
    /// Concurrent ProduceBatch calls of --batch records.
    Batch,
    /// Not sidelog: publishes to a NATS JetStream server at --addr
    /// (`nats://HOST:PORT`) with --inflight publishes awaiting their acks,
    /// for comparison (see scripts/bench-compare.sh).
    Jetstream,
    /// Not sidelog: --inflight concurrent Put calls to etcd's v3 gRPC API
    /// at --addr (`HOST:PORT`), one key per record, for comparison.
    Etcd,
}

#[derive(Args, Debug)]
pub struct ProducePerf {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The named log to write to [default: the `default` log].
    #[arg(long, value_name = "NAME", default_value = "")]
    pub log: String,
    /// Records to produce.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Bytes per record.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Records in flight at once.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// How records are sent.
    #[arg(long, value_enum, default_value_t = Mode::Unary)]
    pub mode: Mode,
    /// Records per ProduceBatch call (batch mode).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// JetStream mode: the stream (and subject) to publish to.
    #[arg(long, default_value = "sidelog-bench")]
    pub nats_stream: String,
    /// JetStream mode: the stream's replica count (created if missing).
    #[arg(long, default_value_t = 1)]
    pub nats_replicas: u32,
    /// etcd mode: the key prefix (keys are PREFIX/N).
    #[arg(long, default_value = "sidelog-bench")]
    pub etcd_prefix: String,
}

#[derive(Args, Debug)]
pub struct ConsumePerf {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The named log to read [default: the `default` log].
    #[arg(long, value_name = "NAME", default_value = "")]
    pub log: String,
    /// Records to consume.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// Offset to start from.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
}

/// Latencies in microseconds, merged from all workers.
#[derive(Default)]
struct Latencies(Vec<u32>);

impl Latencies {
    fn record(&mut self, since: Instant, count: usize) {
        let us = since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        self.0.extend(std::iter::repeat_n(us, count));
    }

    fn percentile(sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        f64::from(sorted[i]) / 1000.0
    }
}

fn progress(done: Arc<AtomicU64>, total: u64, what: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = done.load(Ordering::Relaxed);
            eprintln!("{what} {now}/{total} records ({} records/s)", now - last);
            last = now;
        }
    })
}

fn summary(what: &str, n: u64, size: usize, elapsed: Duration, lat: Option<Vec<u32>>) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{what}: {n} records of {size} B in {secs:.2} s: {:.0} records/s, {:.2} MB/s",
        n as f64 / secs,
        n as f64 * size as f64 / secs / 1e6
    );
    if let Some(mut l) = lat {
        l.sort_unstable();
        println!(
            "latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            Latencies::percentile(&l, 0.50),
            Latencies::percentile(&l, 0.99),
            Latencies::percentile(&l, 0.999),
            Latencies::percentile(&l, 1.0)
        );
    }
}

pub async fn run(args: PerfArgs) -> anyhow::Result<()> {
    match args.command {
        PerfCommand::Produce(p) => produce(p).await,
        PerfCommand::Consume(c) => consume(c).await,
    }
}

async fn produce(p: ProducePerf) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.inflight > 0 && p.records > 0 && p.batch > 0,
        "--records, --inflight and --batch must be positive"
    );
    let value = Bytes::from(vec![b'x'; p.size]);
    let done = Arc::new(AtomicU64::new(0));
    let client = match p.mode {
        Mode::Jetstream | Mode::Etcd => None,
        // Straight to the leader, as GetServers names it: no forward hop
        // in the figures.
        _ => Some(p.connect.routed_log(&p.log).await?.leader().await?),
    };
    let reporter = progress(done.clone(), p.records, "produced");
    let start = Instant::now();
    let lat = match (p.mode, &client) {
        (Mode::Unary, Some(client)) => produce_unary(client, &p, value, &done).await?,
        (Mode::Batch, Some(client)) => produce_batch(client, &p, value, &done).await?,
        (Mode::Stream, Some(client)) => produce_stream(client, &p, value, &done).await?,
        (Mode::Etcd, _) => {
            super::perf_etcd::produce(&p.connect.addr[0], &p.etcd_prefix, p.records, p.inflight, value, &done).await?
        }
        _ => {
            let (addr, stream) = (&p.connect.addr[0], &p.nats_stream);
            super::perf_nats::produce(addr, stream, p.nats_replicas, p.records, p.inflight, value, &done).await?
        }
    };
    let elapsed = start.elapsed();
    reporter.abort();
    summary(
        &format!("produce ({:?}, {} in flight)", p.mode, p.inflight).to_lowercase(),
        p.records,
        p.size,
        elapsed,
        Some(lat),
    );
    Ok(())
}

/// Runs `workers` concurrent callers that take `batch` records at a time
/// until `total` are produced; returns per-record latencies (µs). Each call
/// gets a clone of `ctx`, the index of its first record and its record
/// count. The first failure ends the run: the other callers stop with it.
pub(super) async fn run_workers<C, F, Fut, E>(
    ctx: &C,
    workers: usize,
    total: u64,
    batch: u64,
    done: &Arc<AtomicU64>,
    call: F,
) -> anyhow::Result<Vec<u32>>
where
    C: Clone + Send + 'static,
    F: Fn(C, u64, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: Into<anyhow::Error> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Latencies::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (c, next, done, lat, call) = (ctx.clone(), next.clone(), done.clone(), lat.clone(), call.clone());
        tasks.spawn(async move {
            let mut mine = Latencies::default();
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= total {
                    break;
                }
                let n = batch.min(total - from) as usize;
                let t = Instant::now();
                call(c.clone(), from, n).await.map_err(Into::into)?;
                mine.record(t, n);
                done.fetch_add(n as u64, Ordering::Relaxed);
            }
            lat.lock().await.0.extend(mine.0);
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            tasks.abort_all();
            return Err(e);
        }
    }
    Ok(std::mem::take(&mut lat.lock().await.0))
}

async fn produce_unary(
    client: &Client,
    p: &ProducePerf,
    value: Bytes,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<u32>> {
    run_workers(client, p.inflight, p.records, 1, done, move |mut c, _, _| {
        let v = value.clone();
        async move { c.produce(v).await.map(drop) }
    })
    .await
}

async fn produce_batch(
    client: &Client,
    p: &ProducePerf,
    value: Bytes,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<u32>> {
    let calls = p.inflight.div_ceil(p.batch).max(1);
    run_workers(client, calls, p.records, p.batch as u64, done, move |mut c, _, n| {
        let v = value.clone();
        async move { c.produce_batch(vec![v; n]).await.map(drop) }
    })
    .await
}

async fn produce_stream(
    client: &Client,
    p: &ProducePerf,
    value: Bytes,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<u32>> {
    let (tx, rx) = mpsc::channel::<pb::ProduceRequest>(p.inflight);
    let mut responses = client.raw().produce_stream(ReceiverStream::new(rx)).await?.into_inner();
    let window = Arc::new(tokio::sync::Semaphore::new(p.inflight));
    let sent_at = Arc::new(std::sync::Mutex::new(VecDeque::with_capacity(p.inflight)));
    let sender = {
        let (window, sent_at, total) = (window.clone(), sent_at.clone(), p.records);
        let log = p.log.clone();
        tokio::spawn(async move {
            for _ in 0..total {
                window.acquire().await.expect("open").forget();
                sent_at.lock().expect("lock").push_back(Instant::now());
                let record = pb::Record {
                    value: value.clone(),
                    ..Default::default()
                };
                let req = pb::ProduceRequest {
                    record: Some(record),
                    log: log.clone(),
                };
                if tx.send(req).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut lat = Latencies::default();
    let mut received = 0;
    while received < p.records {
        let Some(_resp) = responses.message().await? else {
            anyhow::bail!("the server ended the stream after {received} responses");
        };
        let t = sent_at
            .lock()
            .expect("lock")
            .pop_front()
            .expect("a request per response");
        lat.record(t, 1);
        window.add_permits(1);
        received += 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
    sender.abort();
    Ok(lat.0)
}

async fn consume(c: ConsumePerf) -> anyhow::Result<()> {
    let mut client = c.connect.routed_log(&c.log).await?.reader().await?;
    let done = Arc::new(AtomicU64::new(0));
    let reporter = progress(done.clone(), c.records, "consumed");
    let start = Instant::now();
    let mut stream = client.consume_stream(c.from).await?;
    let mut bytes = 0usize;
    let mut n = 0;
    while n < c.records {
        let Some(resp) = stream.message().await? else {
            break;
        };
        bytes += resp.record.map_or(0, |r| r.value.len());
        n += 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
    let elapsed = start.elapsed();
    reporter.abort();
    summary("consume (stream)", n, bytes / n.max(1) as usize, elapsed, None);
    Ok(())
}
