//! The `sidelog` command line: subcommands and their flags.

mod logs;
pub mod perf;
mod perf_etcd;
mod perf_nats;

use std::io::{BufRead, Write};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use std::path::PathBuf;

use crate::{
    client::{Client, ClientTls, RoutedClient},
    config::AgentArgs,
};

#[derive(Parser, Debug)]
#[command(
    name = "sidelog",
    version = crate::version(),
    about = "A lightweight, crash-safe commit log that runs beside your applications",
    long_about = "A lightweight, crash-safe commit log that runs beside your applications.\n\n\
        `sidelog agent` with no flags runs a single node that stores its log in ./sidelog-data and \
        serves gRPC (log.v1) on 127.0.0.1:8400 and HTTP/JSON on 127.0.0.1:8080.\n\n\
        Exit codes: 0 ok, 1 runtime failure, 2 usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a sidelog node.
    Agent(AgentArgs),
    /// Produce records: --value, or one record per line of standard input. Prints offsets.
    Produce(ProduceArgs),
    /// Print records from an offset; --follow keeps waiting for new ones.
    Consume(ConsumeArgs),
    /// Load generator: produce or consume and report throughput and latency.
    Perf(perf::PerfArgs),
    /// Write a development CA, server and client certificates, and an ACL model and policy.
    DevCerts(DevCertsArgs),
    /// Inspect or change the cluster: `status`, `remove NAME`.
    Cluster(ClusterArgs),
    /// Named logs: `create NAME`, `list`, `describe NAME`, `delete NAME`.
    Log(logs::LogArgs),
}

pub use logs::log as log_command;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Members, leader, term, commit and applied index, and each member's
    /// role, failure domain, lag and last contact (as the leader sees
    /// them: ask the leader for lag and contact figures).
    Status {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a member that is gone for good (a node that merely stops stays a
    /// voter, so quorum sizes do not shrink behind your back).
    Remove {
        /// The member's name (its --node-id).
        id: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let connect = match &args.action {
        ClusterAction::Status { connect } | ClusterAction::Remove { connect, .. } => connect,
    };
    // Status describes the node asked (the first address), even while it
    // is still forming a cluster; removal goes to the leader.
    let client = match &args.action {
        ClusterAction::Status { .. } => connect.connect().await?,
        ClusterAction::Remove { .. } => connect.routed().await?.leader().await?,
    };
    let mut admin = client.cluster();
    match args.action {
        ClusterAction::Status { .. } => {
            let s = admin.status(crate::pb::sidelog::StatusRequest {}).await?.into_inner();
            let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            let mut out = std::io::stdout().lock();
            writeln!(out, "node:      {} ({})", s.id, s.state).map_err(stdout_err)?;
            writeln!(out, "leader:    {}", s.leader.as_deref().unwrap_or("unknown")).map_err(stdout_err)?;
            writeln!(out, "term:      {}", s.term).map_err(stdout_err)?;
            writeln!(out, "last log:  {}", opt(s.last_log_index)).map_err(stdout_err)?;
            writeln!(out, "commit:    {}", opt(s.commit_index)).map_err(stdout_err)?;
            writeln!(out, "applied:   {}", opt(s.applied_index)).map_err(stdout_err)?;
            writeln!(out, "offsets:   [{}, {})", s.first_offset, s.next_offset).map_err(stdout_err)?;
            writeln!(
                out,
                "cluster:   {}",
                if s.cluster_id.is_empty() {
                    "(id not known yet)"
                } else {
                    &s.cluster_id
                }
            )
            .map_err(stdout_err)?;
            writeln!(out, "voters:    {} wanted (--voters)", s.voters_target).map_err(stdout_err)?;
            writeln!(out, "build:     {} (peer protocol {})", s.version, s.protocol).map_err(stdout_err)?;
            if s.state == "leader" {
                let note = if s.cluster_protocol < s.protocol {
                    " (a member runs an older build, or is not known yet)"
                } else {
                    ""
                };
                writeln!(out, "cluster protocol: {}{note}", s.cluster_protocol).map_err(stdout_err)?;
            }
            if s.attached_here {
                writeln!(
                    out,
                    "attached:  this sidecar holds no log; it reads from {} and forwards writes to the leader",
                    s.home
                )
                .map_err(stdout_err)?;
            } else if s.removed {
                writeln!(
                    out,
                    "removed:   this node was removed from the membership and is rejoining"
                )
                .map_err(stdout_err)?;
            }
            writeln!(
                out,
                "\n{:<20} {:<9} {:<7} {:<22} {:<22} {:<12} {:>10} {:>8} {:>13}  {}",
                "MEMBER", "ROLE", "LEADER", "PEER", "CLIENT", "DOMAIN", "MATCHED", "LAG", "LAST CONTACT", "BUILD"
            )
            .map_err(stdout_err)?;
            for m in s.members {
                writeln!(
                    out,
                    "{:<20} {:<9} {:<7} {:<22} {:<22} {:<12} {:>10} {:>8} {:>13}  {}",
                    m.id,
                    if m.voter { "voter" } else { "non-voter" },
                    if m.leader { "*" } else { "" },
                    m.peer_addr,
                    m.client_addr,
                    dash(&m.failure_domain),
                    opt(m.matched_index),
                    opt(m.lag),
                    ago(m.last_contact_ms),
                    if m.version.is_empty() {
                        "-".to_owned()
                    } else {
                        format!("{} p{}", m.version, m.protocol)
                    }
                )
                .map_err(stdout_err)?;
            }
            if !s.attached.is_empty() {
                writeln!(
                    out,
                    "\n{:<20} {:<22} {:<22} {:<12} {:>13}",
                    "ATTACHED (NO LOG)", "PEER", "CLIENT", "DOMAIN", "LAST CONTACT"
                )
                .map_err(stdout_err)?;
                for m in s.attached {
                    writeln!(
                        out,
                        "{:<20} {:<22} {:<22} {:<12} {:>13}",
                        m.id,
                        m.peer_addr,
                        m.client_addr,
                        dash(&m.failure_domain),
                        ago(m.last_contact_ms),
                    )
                    .map_err(stdout_err)?;
                }
            }
        }
        ClusterAction::Remove { id, .. } => {
            admin
                .remove(crate::pb::sidelog::RemoveRequest { id: id.clone() })
                .await?;
            println!("removed {id}");
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DevCertsArgs {
    /// Directory to write into (created if missing; existing files are overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Extra subject alternative names for the server certificate (DNS names or IPs).
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
}

pub fn dev_certs(args: DevCertsArgs) -> anyhow::Result<()> {
    let files = crate::security::certs::write_dev_certs(&args.out, &args.sans)?;
    for f in &files {
        println!("{}", f.display());
    }
    let d = args.out.display();
    eprintln!(
        "\nAn agent with mutual TLS and the ACL:\n  sidelog agent --tls-cert {d}/server.pem --tls-key {d}/server-key.pem \\\n    --tls-ca {d}/ca.pem --acl-model {d}/model.conf --acl-policy {d}/policy.csv \\\n    --peer-tls-cert {d}/peer.pem --peer-tls-key {d}/peer-key.pem --peer-tls-ca {d}/ca.pem\nA client as root:\n  sidelog produce --value hi --tls-ca {d}/ca.pem --tls-cert {d}/root-client.pem --tls-key {d}/root-client-key.pem"
    );
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Agent client addresses (comma-separated), or a DNS name that
    /// resolves to several: the client learns the rest with GetServers,
    /// writes to the leader and reads from followers.
    #[arg(
        long,
        env = "SIDELOG_ADDR",
        default_value = "127.0.0.1:8400",
        value_name = "ADDR[,ADDR]",
        value_delimiter = ','
    )]
    pub addr: Vec<String>,
    /// CA (PEM) that signed the agent's certificate: connect over TLS.
    /// (The client's variables are SIDELOG_CLIENT_TLS_*; the agent's own
    /// SIDELOG_TLS_* are never read by the client, so a command run in the
    /// agent's pod does not present the server's certificate.)
    #[arg(long, env = "SIDELOG_CLIENT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "SIDELOG_CLIENT_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Key (PEM) of --tls-cert.
    #[arg(long, env = "SIDELOG_CLIENT_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ConnectArgs {
    fn tls(&self) -> Option<ClientTls> {
        // The agent's variables are not the client's (see `tls_ca`); say so
        // once when they are set and the client's own are not.
        if self.tls_ca.is_none()
            && self.tls_cert.is_none()
            && ["SIDELOG_TLS_CA", "SIDELOG_TLS_CERT"]
                .iter()
                .any(|v| std::env::var_os(v).is_some())
        {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "sidelog: note: SIDELOG_TLS_* configure the agent; client commands read SIDELOG_CLIENT_TLS_* \
                     (or --tls-ca, --tls-cert, --tls-key)"
                )
            });
        }
        (self.tls_ca.is_some() || self.tls_cert.is_some()).then(|| ClientTls {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            domain: None,
        })
    }

    /// A connection to the first address that answers, in the order given.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let mut last = None;
        for addr in &self.addr {
            match Client::connect_with(addr, self.tls().as_ref()).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no --addr given"), Into::into))
    }

    /// The leader-aware client over every server the addresses lead to.
    pub async fn routed(&self) -> anyhow::Result<RoutedClient> {
        Ok(RoutedClient::connect(&self.addr, self.tls()).await?)
    }

    /// The leader-aware client for the named log `log` (empty: `default`).
    pub async fn routed_log(&self, log: &str) -> anyhow::Result<RoutedClient> {
        let options = crate::client::RoutingOptions {
            log: log.to_owned(),
            ..Default::default()
        };
        Ok(RoutedClient::connect_with(&self.addr, self.tls(), options).await?)
    }

    /// A connection to the leader.
    pub async fn leader(&self) -> anyhow::Result<Client> {
        Ok(self.routed().await?.leader().await?)
    }

    /// A connection to a follower (the leader if it is alone).
    pub async fn reader(&self) -> anyhow::Result<Client> {
        Ok(self.routed().await?.reader().await?)
    }
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The named log to write to [default: the `default` log].
    #[arg(long, env = "SIDELOG_LOG", value_name = "NAME", default_value = "")]
    pub log: String,
    /// The record's value; without it, each non-empty line of standard input is a record.
    #[arg(long, value_name = "S")]
    pub value: Option<String>,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The named log to read [default: the `default` log].
    #[arg(long, env = "SIDELOG_LOG", value_name = "NAME", default_value = "")]
    pub log: String,
    /// First offset to print.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub offset: u64,
    /// Keep following the tail of the log until interrupted.
    #[arg(long)]
    pub follow: bool,
}

/// Lines of stdin are sent in batches of this many records.
const STDIN_BATCH: usize = 1000;

pub async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let client = args.connect.routed_log(&args.log).await?;
    let mut out = std::io::stdout().lock();
    if let Some(v) = args.value {
        writeln!(out, "{}", client.produce(v).await?).map_err(stdout_err)?;
        return Ok(());
    }
    let mut batch: Vec<Bytes> = Vec::with_capacity(STDIN_BATCH);
    let mut lines = std::io::stdin().lock().lines();
    loop {
        let line = lines.next().transpose()?;
        let done = line.is_none();
        // Empty lines (a trailing newline, blank lines) are no records;
        // `--value ''` writes an empty one.
        if let Some(l) = line.filter(|l| !l.is_empty()) {
            batch.push(Bytes::from(l));
        }
        if batch.len() == STDIN_BATCH || (done && !batch.is_empty()) {
            for offset in client.produce_batch(std::mem::take(&mut batch)).await? {
                writeln!(out, "{offset}").map_err(stdout_err)?;
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// `cluster status` cells: "-" for none.
fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn ago(ms: Option<u64>) -> String {
    ms.map_or("-".to_owned(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0))
}

/// Standard output was closed by its reader (`sidelog consume | head -1`):
/// the command ends quietly with 0, as every other command-line tool does.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// A failed write to standard output: [`StdoutClosed`] when the reader
/// went away, else the error.
fn stdout_err(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        e.into()
    }
}

fn print_record(out: &mut impl Write, offset: u64, value: &[u8]) -> std::io::Result<()> {
    writeln!(out, "{offset}\t{}", String::from_utf8_lossy(value))
}

pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let client = args.connect.routed_log(&args.log).await?;
    let stdout = std::io::stdout();
    if args.follow {
        let mut stream = client.follow(args.offset);
        while let Some(r) = stream.next().await {
            let r = r?;
            print_record(&mut stdout.lock(), r.offset, &r.value).map_err(stdout_err)?;
        }
        return Ok(());
    }
    let mut offset = args.offset;
    loop {
        match client.consume(offset).await {
            Ok(r) => print_record(&mut stdout.lock(), r.offset, &r.value).map_err(stdout_err)?,
            // Reaching the end of the log ends a read that does not follow;
            // an offset before the first retained record is an error.
            Err(s)
                if s.code() == tonic::Code::OutOfRange
                    && crate::pb::meta::next_offset_of(&s).is_some_and(|n| offset >= n) =>
            {
                return Ok(());
            }
            Err(s) => return Err(s.into()),
        }
        offset += 1;
    }
}
