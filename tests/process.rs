//! The real `sidelog` binary as a process: crashes by SIGKILL.

use std::{
    collections::HashMap,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use sidelog::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    crate::common::free_port()
}

struct Ports {
    client: u16,
    http: u16,
    peer: u16,
}

fn spawn_agent(data: &Path, ports: &Ports, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .arg("agent")
        .args(["--node-id", "solo", "--data-dir"])
        .arg(data)
        .args(["--client-addr", &format!("127.0.0.1:{}", ports.client)])
        .args(["--http-addr", &format!("127.0.0.1:{}", ports.http)])
        .args(["--peer-addr", &format!("127.0.0.1:{}", ports.peer)])
        .args(["--log-level", "warn"])
        .args(extra)
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("sidelog agent starts")
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until the agent answers /readyz with 200.
async fn wait_ready(child: &mut Child, port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the agent exited early: {status}");
        }
        if http_status(port, "/readyz").await == Some(200) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "agent not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--fsync never` acknowledges records once the OS has them, so a killed
/// process (SIGKILL, nothing flushed by the agent) loses none of them, and
/// the restarted node serves again, with every acknowledged record at the
/// offset it was acknowledged with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_never_loses_no_acknowledged_record_to_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ports = Ports {
        client: free_port(),
        http: free_port(),
        peer: free_port(),
    };
    let mut child = spawn_agent(&data, &ports, &["--fsync", "never"]);
    wait_ready(&mut child, ports.http).await;
    let addr = format!("127.0.0.1:{}", ports.client);
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (addr, acked) = (addr.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            let mut client = Client::connect(&addr).await.unwrap();
            for i in 0.. {
                let values: Vec<String> = (0..1 + i % 7).map(|k| format!("p{p}-{i}-{k}")).collect();
                let result = if values.len() == 1 {
                    client.produce(Bytes::from(values[0].clone())).await.map(|o| vec![o])
                } else {
                    client
                        .produce_batch(values.iter().map(|v| Bytes::from(v.clone())).collect())
                        .await
                };
                let Ok(offsets) = result else { return };
                acked.lock().unwrap().extend(values.into_iter().zip(offsets));
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 3000 {
        assert!(tokio::time::Instant::now() < deadline, "too few records acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGKILL while producers are still sending.
    child.kill().unwrap();
    child.wait().unwrap();
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let mut child = spawn_agent(&data, &ports, &["--fsync", "never"]);
    wait_ready(&mut child, ports.http).await;
    let mut client = Client::connect(&addr).await.unwrap();
    let top = acked.iter().map(|a| a.1).max().unwrap();
    let mut log: HashMap<u64, Bytes> = HashMap::new();
    for offset in 0..=top {
        let r = client
            .consume(offset)
            .await
            .unwrap_or_else(|e| panic!("offset {offset}: {e}"));
        log.insert(offset, r.value);
    }
    for (value, offset) in &acked {
        assert_eq!(
            log.get(offset).map(|v| &v[..]),
            Some(value.as_bytes()),
            "acknowledged {value}"
        );
    }
    // And it takes writes again, after everything it had.
    let next = client.produce(Bytes::from_static(b"after")).await.unwrap();
    assert!(next > top);
    child.kill().unwrap();
    child.wait().unwrap();
}
