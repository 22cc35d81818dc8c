//! `sidelog perf produce --mode jetstream`: the same load against a NATS
//! JetStream server, for a side-by-side comparison (scripts/bench-compare.sh).
//!
//! A minimal NATS client over the text protocol: `CONNECT`, one `SUB` on a
//! reply inbox, and `PUB subject inbox len` per record, with at most
//! `--inflight` publishes awaiting their JetStream ack (`{"stream":..,
//! "seq":N}`), exactly as the ProduceStream mode keeps a window of records
//! awaiting their offsets. The stream is created first (file storage, the
//! given replica count).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter},
    net::TcpStream,
    sync::{Semaphore, mpsc},
};

/// One protocol message the benchmark cares about.
enum Incoming {
    /// A message on our inbox: its reply subject suffix and payload.
    Msg {
        subject: String,
        payload: Vec<u8>,
    },
    Ping,
    Err(String),
    Other,
}

async fn read_incoming<R: AsyncBufReadExt + Unpin>(r: &mut R) -> anyhow::Result<Incoming> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        bail!("the NATS server closed the connection");
    }
    let line = line.trim_end();
    let mut parts = line.split_whitespace();
    match parts.next().unwrap_or("") {
        "MSG" => {
            let fields: Vec<&str> = parts.collect();
            let (subject, len) = match fields.as_slice() {
                [subject, _sid, len] | [subject, _sid, _, len] => (subject.to_string(), len.parse::<usize>()?),
                _ => bail!("malformed MSG line {line:?}"),
            };
            let mut payload = vec![0u8; len + 2];
            r.read_exact(&mut payload).await?;
            payload.truncate(len);
            Ok(Incoming::Msg { subject, payload })
        }
        "PING" => Ok(Incoming::Ping),
        "-ERR" => Ok(Incoming::Err(line.to_owned())),
        _ => Ok(Incoming::Other),
    }
}

/// Publishes `total` records of `value` to a JetStream stream named after
/// `subject` on `addr`, `inflight` at a time; returns per-record latencies
/// in microseconds.
pub async fn produce(
    addr: &str,
    subject: &str,
    replicas: u32,
    total: u64,
    inflight: usize,
    value: Bytes,
    done: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<u32>> {
    let addr = addr.trim_start_matches("nats://");
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to NATS at {addr}"))?;
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(1 << 16, rd);
    let mut wr = BufWriter::with_capacity(1 << 16, wr);
    let mut info = String::new();
    rd.read_line(&mut info).await?;
    anyhow::ensure!(info.starts_with("INFO"), "not a NATS server: {info:?}");
    let connect = r#"{"verbose":false,"pedantic":false,"name":"sidelog-perf"}"#;
    wr.write_all(format!("CONNECT {connect}\r\nSUB _INBOX.perf.> 1\r\n").as_bytes())
        .await?;

    // Create the stream (an existing one with the same config is fine). A
    // cluster that is still electing its JetStream leader answers with an
    // error for a few seconds: retry for up to 20 s.
    let config =
        format!(r#"{{"name":"{subject}","subjects":["{subject}"],"storage":"file","num_replicas":{replicas}}}"#);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        wr.write_all(
            format!(
                "PUB $JS.API.STREAM.CREATE.{subject} _INBOX.perf.create {}\r\n{config}\r\n",
                config.len()
            )
            .as_bytes(),
        )
        .await?;
        wr.flush().await?;
        // No JetStream meta leader yet means no responder and no answer at
        // all (this client does not ask for no-responder replies): wait 2 s
        // per try.
        let answer = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            loop {
                match read_incoming(&mut rd).await? {
                    Incoming::Msg { payload, .. } => {
                        return Ok::<_, anyhow::Error>(String::from_utf8_lossy(&payload).into_owned());
                    }
                    Incoming::Ping => {
                        wr.write_all(b"PONG\r\n").await?;
                        wr.flush().await?;
                    }
                    Incoming::Err(e) => bail!("NATS: {e}"),
                    Incoming::Other => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| Ok("{\"error\":\"no answer (no JetStream leader yet?)\"}".to_owned()))?;
        if !answer.contains("\"error\"") || answer.contains("already in use") {
            break;
        }
        if Instant::now() >= deadline {
            bail!("creating the JetStream stream: {answer}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    let window = Arc::new(Semaphore::new(inflight));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let start = Instant::now();
    let (pong_tx, mut pong_rx) = mpsc::unbounded_channel::<()>();
    let writer = {
        let (window, sent, subject) = (window.clone(), sent.clone(), subject.to_owned());
        tokio::spawn(async move {
            let mut i = 0u64;
            while i < total {
                let permit = tokio::select! {
                    p = window.acquire() => p.expect("open"),
                    Some(()) = pong_rx.recv() => {
                        wr.write_all(b"PONG\r\n").await?;
                        continue;
                    }
                };
                permit.forget();
                // Send every publish the window allows, then flush once.
                loop {
                    sent[i as usize].store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    wr.write_all(format!("PUB {subject} _INBOX.perf.{i} {}\r\n", value.len()).as_bytes())
                        .await?;
                    wr.write_all(&value).await?;
                    wr.write_all(b"\r\n").await?;
                    i += 1;
                    match window.try_acquire() {
                        Ok(p) if i < total => p.forget(),
                        Ok(p) => {
                            drop(p);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                wr.flush().await?;
            }
            wr.flush().await?;
            // Keep answering PINGs until the reader has every ack.
            while let Some(()) = pong_rx.recv().await {
                wr.write_all(b"PONG\r\n").await?;
                wr.flush().await?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut lat = Vec::with_capacity(total as usize);
    let mut acked = 0u64;
    while acked < total {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), read_incoming(&mut rd))
            .await
            .map_err(|_| anyhow::anyhow!("no JetStream ack for 10 s after {acked} of {total} records"))?;
        match next? {
            Incoming::Msg { subject, payload } => {
                let Some(i) = subject.rsplit('.').next().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                if !payload.windows(5).any(|w| w == b"\"seq\"") {
                    bail!("JetStream refused a publish: {}", String::from_utf8_lossy(&payload));
                }
                let at = sent
                    .get(i as usize)
                    .context("ack for an unknown publish")?
                    .load(Ordering::Relaxed);
                let now = start.elapsed().as_micros() as u64;
                lat.push(now.saturating_sub(at).min(u64::from(u32::MAX)) as u32);
                window.add_permits(1);
                acked += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Incoming::Ping => {
                let _ = pong_tx.send(());
            }
            Incoming::Err(e) => bail!("NATS: {e}"),
            Incoming::Other => {}
        }
    }
    drop(pong_tx);
    writer.await??;
    Ok(lat)
}
