//! Shared helpers: a real agent on port 0 in a fresh temp dir.

use std::path::PathBuf;

use sidelog::{agent::Agent, client::Client, config::Config};

/// A loopback port for a listener a test starts later (peer ports, which
/// other nodes must know in advance). Taken below the kernel's ephemeral
/// range (32768+), so a port-0 bind elsewhere in the test binary cannot take
/// it between this check and the real bind; a counter keeps the tests of
/// one run apart, and the process id runs of several binaries.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 50) * 200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 10_000) as u16;
        if port >= 32_000 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct TestNode {
    pub agent: Option<Agent>,
    pub dir: tempfile::TempDir,
}

pub fn config_in(dir: PathBuf) -> Config {
    Config {
        data_dir: dir,
        node_id: "test-node".into(),
        client_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        peer_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path().join("data"));
        tweak(&mut config);
        let agent = Agent::start(config).await.expect("agent starts");
        TestNode {
            agent: Some(agent),
            dir,
        }
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("running")
    }

    pub fn client_addr(&self) -> String {
        self.agent().client_addr.to_string()
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.client_addr()).await.expect("client connects")
    }

    /// Graceful shutdown, then a new agent on the same data dir.
    pub async fn restart(&mut self) {
        self.agent.take().unwrap().shutdown().await.expect("clean shutdown");
        let config = config_in(self.dir.path().join("data"));
        self.agent = Some(Agent::start(config).await.expect("agent restarts"));
    }
}
