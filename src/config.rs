//! The agent's configuration: one [`Config`], built from flags, `SIDELOG_*`
//! environment variables and a TOML file, in that order of precedence, then
//! validated before anything starts.
//!
//! clap handles flags and environment variables (each field of
//! [`AgentArgs`] is optional, so "not given" is visible); [`FileConfig`]
//! holds the same keys from `--config`; [`Config::resolve`] merges them over
//! the defaults, which live only in [`Config::default`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{security::TlsFiles, storage::Retention};

/// Errors in configuration; each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

// Settings types owned by their subsystems, named here too.
pub use crate::{storage::FsyncPolicy, telemetry::LogFormat};

/// How a node finds its peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// The `--join` list.
    #[default]
    Static,
    /// Multicast DNS on the local link (`_sidelog._tcp.local.`).
    Mdns,
    /// DNS: SRV or A/AAAA records of `--dns-name` (a Kubernetes headless Service).
    Dns,
}

impl DiscoveryMode {
    pub fn name(self) -> &'static str {
        match self {
            DiscoveryMode::Static => "static",
            DiscoveryMode::Mdns => "mdns",
            DiscoveryMode::Dns => "dns",
        }
    }
}

/// `sidelog agent` flags. Every flag also reads `SIDELOG_<FLAG>` and the
/// same key in the `--config` file; flag beats env beats file beats default.
#[derive(Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// TOML file with the same keys as the flags (e.g. `data-dir = "/data"`).
    #[arg(long, env = "SIDELOG_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory holding the log's segments [default: ./sidelog-data].
    #[arg(long, env = "SIDELOG_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's id [default: the hostname].
    #[arg(long, env = "SIDELOG_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Client API (gRPC log.v1, health, reflection) [default: 127.0.0.1:8400].
    #[arg(long, env = "SIDELOG_CLIENT_ADDR", value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub client_addr: Option<SocketAddr>,
    /// HTTP: JSON produce/consume, /metrics, /healthz, /readyz [default: 127.0.0.1:8080].
    #[arg(long, env = "SIDELOG_HTTP_ADDR", value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub http_addr: Option<SocketAddr>,
    /// A plaintext health-only listener: gRPC health (services "", log.v1.Log,
    /// sidelog.started, sidelog.live) and HTTP /healthz, /readyz, /metrics,
    /// nothing else. For Kubernetes probes and scrapes on the pod IP while the
    /// data APIs stay on localhost or behind TLS [default: none].
    #[arg(long, env = "SIDELOG_HEALTH_ADDR", value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub health_addr: Option<SocketAddr>,
    /// The client address other nodes and clients should dial [default: the bound client address; for a wildcard bind such as 0.0.0.0, this host's first non-loopback interface address].
    #[arg(long, env = "SIDELOG_ADVERTISE_CLIENT_ADDR", value_name = "HOST:PORT")]
    pub advertise_client_addr: Option<String>,
    /// Peer API: Raft replication, join/leave, write forwarding [default: 127.0.0.1:8401].
    #[arg(long, env = "SIDELOG_PEER_ADDR", value_name = "HOST:PORT", value_parser = parse_listen_addr)]
    pub peer_addr: Option<SocketAddr>,
    /// The peer address other nodes should dial [default: the bound peer address; for a wildcard bind such as 0.0.0.0, this host's first non-loopback interface address].
    #[arg(long, env = "SIDELOG_ADVERTISE_PEER_ADDR", value_name = "HOST:PORT")]
    pub advertise_peer_addr: Option<String>,
    /// Peer addresses to contact to form or join a cluster (comma-separated).
    #[arg(long, env = "SIDELOG_JOIN", value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// How peers are found: static (the --join list), mdns (the local
    /// link), dns (--dns-name, e.g. a Kubernetes headless Service) [default: static].
    #[arg(long, env = "SIDELOG_DISCOVERY", value_enum)]
    pub discovery: Option<DiscoveryMode>,
    /// With --discovery dns: the name to resolve. SRV records
    /// `_peer._tcp.NAME` are used when present, else A/AAAA records with
    /// our peer port; a NAME starting with `_` is the SRV name itself.
    #[arg(long, env = "SIDELOG_DNS_NAME", value_name = "NAME")]
    pub dns_name: Option<String>,
    /// With --discovery dns: longest time a DNS answer is reused [default: 5s].
    #[arg(long, env = "SIDELOG_DNS_REFRESH", value_name = "DURATION", value_parser = parse_duration)]
    pub dns_refresh: Option<Duration>,
    /// Nameserver to ask instead of the system's (tests; unusual setups).
    #[arg(long, env = "SIDELOG_DNS_SERVER", value_name = "ADDR", hide = true)]
    pub dns_server: Option<SocketAddr>,
    /// With --dns-server: search domains for a short --dns-name (the
    /// system resolver takes them from resolv.conf).
    #[arg(
        long,
        env = "SIDELOG_DNS_SEARCH",
        value_name = "DOMAIN[,DOMAIN]",
        value_delimiter = ',',
        hide = true
    )]
    pub dns_search: Option<Vec<String>>,
    /// With --discovery mdns: only nodes announcing the same name form a
    /// cluster, so several clusters can share a LAN [default: sidelog].
    #[arg(long, env = "SIDELOG_CLUSTER_NAME", value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// With --discovery mdns: interfaces to announce and browse on
    /// (comma-separated) [default: all but loopback and container bridges].
    #[arg(
        long,
        env = "SIDELOG_MDNS_INTERFACE",
        value_name = "NAME[,NAME]",
        value_delimiter = ','
    )]
    pub mdns_interface: Option<Vec<String>>,
    /// Form a new cluster once this many nodes (this one included) see each
    /// other; the lowest node id initializes it [default: 1 without --join
    /// (a lone node forms its own cluster), 0 with --join (only join an
    /// existing cluster); required with --discovery mdns or dns].
    #[arg(long, env = "SIDELOG_BOOTSTRAP_EXPECT", value_name = "N")]
    pub bootstrap_expect: Option<usize>,
    /// How many voters the group keeps (1, 3, 5 or 7; fewer while fewer
    /// nodes exist) [default: 3].
    #[arg(long, env = "SIDELOG_VOTERS", value_name = "N")]
    pub voters: Option<usize>,
    /// How many non-voters hold a full replica, ready to take a dead
    /// voter's place within seconds (0-16). Sidecars beyond the voters and
    /// standbys hold no log: they forward their apps' writes to the leader
    /// and read from a replica, so the leader's replication work stays
    /// bounded however many pods there are. The leader's setting counts
    /// [default: 2].
    #[arg(long, env = "SIDELOG_STANDBYS", value_name = "N")]
    pub standbys: Option<usize>,
    /// A member no peer has heard from for this long is replaced: a
    /// caught-up non-voter takes a dead voter's place, dead non-voters are
    /// removed [default: 30s].
    #[arg(long, env = "SIDELOG_DEAD_MEMBER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub dead_member_timeout: Option<Duration>,
    /// This node's failure domain (a Kubernetes node or zone): voters are
    /// spread over domains [default: none].
    #[arg(long, env = "SIDELOG_FAILURE_DOMAIN", value_name = "NAME")]
    pub failure_domain: Option<String>,
    /// On SIGTERM/SIGINT, leave the cluster (a voter hands its place to a
    /// non-voter first). For nodes that will not come back under this name
    /// (a Deployment's sidecars); nodes that restart with their data (a
    /// StatefulSet) keep their place instead [default: false].
    #[arg(long, env = "SIDELOG_LEAVE_ON_TERMINATE", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub leave_on_terminate: Option<bool>,
    /// Named logs to create at start if missing (comma-separated names);
    /// every member may list them, creating is idempotent. The `default`
    /// log always exists [default: none].
    #[arg(long, env = "SIDELOG_LOGS", value_name = "NAME[,NAME]", value_delimiter = ',')]
    pub logs: Option<Vec<String>>,
    /// The most named logs the cluster holds (each is a Raft group: a
    /// task, a flusher thread, heartbeats to every replica; and a label
    /// value of the per-log metrics). The leader's setting counts
    /// [default: 256].
    #[arg(long, env = "SIDELOG_MAX_LOGS", value_name = "N")]
    pub max_logs: Option<usize>,
    /// Producing to a log that does not exist creates it (as Kafka's
    /// auto.create.topics.enable); off, such a write is NOT_FOUND / 404
    /// [default: false].
    #[arg(long, env = "SIDELOG_AUTO_CREATE_LOGS", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub auto_create_logs: Option<bool>,
    /// Lost-quorum recovery: make this node the only voter of its group
    /// from its own log, then serve; others join it again as new nodes.
    /// Records acknowledged only by the lost voters may be gone. Use once,
    /// on one survivor, when a majority of voters is gone for good.
    #[arg(long, env = "SIDELOG_FORCE_NEW_CLUSTER", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub force_new_cluster: Option<bool>,
    /// Serve plaintext on non-loopback addresses (otherwise refused: give TLS flags instead).
    #[arg(long, env = "SIDELOG_INSECURE", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: Option<bool>,
    /// Server certificate (PEM) for the client and HTTP ports; enables TLS.
    #[arg(long, env = "SIDELOG_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SIDELOG_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs client certificates: enables mutual TLS; the
    /// certificate's Common Name is the subject the ACL judges.
    #[arg(long, env = "SIDELOG_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Peer-port certificate [default: --tls-cert]. Peers always use mutual TLS.
    #[arg(long, env = "SIDELOG_PEER_TLS_CERT", value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// Peer-port key [default: --tls-key].
    #[arg(long, env = "SIDELOG_PEER_TLS_KEY", value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// Peer-port CA [default: --tls-ca].
    #[arg(long, env = "SIDELOG_PEER_TLS_CA", value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
    /// The name every peer's certificate is verified against, whatever
    /// address it was dialed at [default: the host part of that address].
    /// For peers found by IP (DNS A records, mDNS) whose certificates name a
    /// Service, e.g. `sidelog-headless.NS.svc.cluster.local`.
    #[arg(long, env = "SIDELOG_PEER_TLS_SERVER_NAME", value_name = "NAME")]
    pub peer_tls_server_name: Option<String>,
    /// Common Names a peer certificate may carry on the peer port, as glob
    /// patterns (`*` matches any run), comma-separated; client certificates
    /// are refused there [default: the Common Name of our own peer certificate].
    #[arg(
        long,
        env = "SIDELOG_PEER_ALLOWED_NAMES",
        value_name = "PATTERN[,PATTERN]",
        value_delimiter = ','
    )]
    pub peer_allowed_names: Option<Vec<String>>,
    /// File holding a shared secret (at least 16 printable characters) every
    /// peer call must carry; required to serve the peer port without TLS on
    /// a non-loopback address.
    #[arg(long, env = "SIDELOG_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Casbin-format ACL model (needs --tls-ca: subjects come from client certificates).
    #[arg(long, env = "SIDELOG_ACL_MODEL", value_name = "FILE")]
    pub acl_model: Option<PathBuf>,
    /// Casbin-format ACL policy, lines like `p, root, *, produce`.
    #[arg(long, env = "SIDELOG_ACL_POLICY", value_name = "FILE")]
    pub acl_policy: Option<PathBuf>,
    /// How often certificate and policy files are checked for changes (SIGHUP checks at once) [default: 5s].
    #[arg(long, env = "SIDELOG_TLS_RELOAD_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub tls_reload_interval: Option<Duration>,
    /// When a produce is acknowledged [default: always].
    #[arg(long, env = "SIDELOG_FSYNC", value_enum)]
    pub fsync: Option<FsyncPolicy>,
    /// Roll to a new segment before one exceeds this size, e.g. 64MiB [default: 64MiB].
    #[arg(long, env = "SIDELOG_SEGMENT_MAX_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub segment_max_bytes: Option<u64>,
    /// Delete the oldest sealed segments beyond this total size, e.g. 10GiB [default: unlimited].
    #[arg(long, env = "SIDELOG_RETENTION_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments older than this, e.g. 7d or 12h [default: unlimited].
    #[arg(long, env = "SIDELOG_RETENTION_AGE", value_name = "DURATION", value_parser = parse_duration)]
    pub retention_age: Option<Duration>,
    /// Largest record value accepted, e.g. 1MiB; at most 16MiB. Every API refuses a larger one
    /// the same way: gRPC INVALID_ARGUMENT, HTTP 413 [default: 1MiB].
    #[arg(long, env = "SIDELOG_MAX_RECORD_BYTES", value_name = "SIZE", value_parser = parse_size)]
    pub max_record_bytes: Option<u64>,
    /// Concurrent HTTP/2 streams (calls) per connection on every port [default: 256].
    #[arg(long, env = "SIDELOG_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    pub max_streams_per_connection: Option<u32>,
    /// Open ConsumeStream calls in total; more get RESOURCE_EXHAUSTED [default: 1024].
    #[arg(long, env = "SIDELOG_MAX_CONSUME_STREAMS", value_name = "N")]
    pub max_consume_streams: Option<usize>,
    /// TLS handshakes in progress per port; connections beyond are closed at once [default: 256].
    #[arg(long, env = "SIDELOG_MAX_TLS_HANDSHAKES", value_name = "N")]
    pub max_tls_handshakes: Option<usize>,
    /// Time an HTTP/1 client has to send a request's headers [default: 10s].
    #[arg(long, env = "SIDELOG_HTTP_HEADER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub http_header_timeout: Option<Duration>,
    /// An HTTP connection with no traffic either way for this long is closed [default: 2m].
    #[arg(long, env = "SIDELOG_HTTP_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub http_idle_timeout: Option<Duration>,
    /// After a fatal storage or Raft error, liveness fails at once and the
    /// process exits (code 1) after this delay, so Kubernetes restarts it [default: 10s].
    #[arg(long, env = "SIDELOG_FATAL_EXIT_DELAY", value_name = "DURATION", value_parser = parse_duration)]
    pub fatal_exit_delay: Option<Duration>,
    /// How long in-flight requests may take to finish on shutdown [default: 10s].
    #[arg(long, env = "SIDELOG_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Log output format [default: json].
    #[arg(long, env = "SIDELOG_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or debug,hyper=info (RUST_LOG also works) [default: info].
    #[arg(long, env = "SIDELOG_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// The `--config` file: the same keys as the flags, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub node_id: Option<String>,
    pub client_addr: Option<String>,
    pub http_addr: Option<String>,
    pub health_addr: Option<String>,
    pub advertise_client_addr: Option<String>,
    pub peer_addr: Option<String>,
    pub advertise_peer_addr: Option<String>,
    pub join: Option<Vec<String>>,
    pub discovery: Option<DiscoveryMode>,
    pub dns_name: Option<String>,
    pub dns_refresh: Option<String>,
    pub dns_server: Option<String>,
    pub dns_search: Option<Vec<String>>,
    pub cluster_name: Option<String>,
    pub mdns_interface: Option<Vec<String>>,
    pub bootstrap_expect: Option<usize>,
    pub voters: Option<usize>,
    pub standbys: Option<usize>,
    pub dead_member_timeout: Option<String>,
    pub failure_domain: Option<String>,
    pub leave_on_terminate: Option<bool>,
    pub logs: Option<Vec<String>>,
    pub max_logs: Option<usize>,
    pub auto_create_logs: Option<bool>,
    pub force_new_cluster: Option<bool>,
    pub insecure: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub peer_tls_cert: Option<PathBuf>,
    pub peer_tls_key: Option<PathBuf>,
    pub peer_tls_ca: Option<PathBuf>,
    pub peer_tls_server_name: Option<String>,
    pub peer_allowed_names: Option<Vec<String>>,
    pub cluster_secret_file: Option<PathBuf>,
    pub acl_model: Option<PathBuf>,
    pub acl_policy: Option<PathBuf>,
    pub tls_reload_interval: Option<String>,
    pub fsync: Option<FsyncPolicy>,
    pub segment_max_bytes: Option<SizeValue>,
    pub retention_bytes: Option<SizeValue>,
    pub retention_age: Option<String>,
    pub max_record_bytes: Option<SizeValue>,
    pub max_streams_per_connection: Option<u32>,
    pub max_consume_streams: Option<usize>,
    pub max_tls_handshakes: Option<usize>,
    pub http_header_timeout: Option<String>,
    pub http_idle_timeout: Option<String>,
    pub fatal_exit_delay: Option<String>,
    pub shutdown_grace: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

/// A size in a file: a number of bytes or a string such as "64MiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// The effective, validated configuration of an agent.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub data_dir: PathBuf,
    pub node_id: String,
    pub client_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub health_addr: Option<SocketAddr>,
    pub advertise_client_addr: Option<String>,
    pub peer_addr: SocketAddr,
    pub advertise_peer_addr: Option<String>,
    pub join: Vec<String>,
    pub discovery: DiscoveryConfig,
    pub bootstrap_expect: usize,
    pub voters: usize,
    pub standbys: usize,
    #[serde(with = "humantime_secs")]
    pub dead_member_timeout: Duration,
    pub failure_domain: String,
    pub leave_on_terminate: bool,
    /// `--logs`: named logs created at start if missing.
    pub logs: Vec<String>,
    pub max_logs: usize,
    pub auto_create_logs: bool,
    pub force_new_cluster: bool,
    pub insecure: bool,
    /// TLS for the client and HTTP ports.
    pub tls: Option<TlsFiles>,
    /// Mutual TLS for the peer port.
    pub peer_tls: Option<TlsFiles>,
    pub peer_tls_server_name: Option<String>,
    /// Peer certificate names admitted on the peer port (with peer TLS);
    /// `None`: the Common Name of our own peer certificate.
    pub peer_allowed_names: Option<Vec<String>>,
    /// Shared secret every peer call carries (the path; the value is never logged).
    pub cluster_secret_file: Option<PathBuf>,
    /// ACL (model, policy).
    pub acl: Option<(PathBuf, PathBuf)>,
    #[serde(with = "humantime_secs")]
    pub tls_reload_interval: Duration,
    pub fsync: FsyncPolicy,
    pub segment_max_bytes: u64,
    pub retention_bytes: Option<u64>,
    #[serde(with = "humantime_opt")]
    pub retention_age: Option<Duration>,
    pub max_record_bytes: u64,
    pub limits: Limits,
    #[serde(with = "humantime_secs")]
    pub fatal_exit_delay: Duration,
    #[serde(with = "humantime_secs")]
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// How peers are found (`--discovery` and its companions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiscoveryConfig {
    pub mode: DiscoveryMode,
    pub dns_name: Option<String>,
    #[serde(with = "humantime_secs")]
    pub dns_refresh: Duration,
    pub dns_server: Option<SocketAddr>,
    pub dns_search: Vec<String>,
    pub cluster_name: String,
    pub mdns_interfaces: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            mode: DiscoveryMode::Static,
            dns_name: None,
            dns_refresh: Duration::from_secs(5),
            dns_server: None,
            dns_search: Vec::new(),
            cluster_name: "sidelog".into(),
            mdns_interfaces: Vec::new(),
        }
    }
}

/// Bounds on what clients and peers can make the agent hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` on every port.
    pub max_streams_per_connection: u32,
    /// Open ConsumeStreams in total.
    pub max_consume_streams: usize,
    /// TLS handshakes in progress per port.
    pub max_tls_handshakes: usize,
    #[serde(with = "humantime_secs")]
    pub http_header_timeout: Duration,
    #[serde(with = "humantime_secs")]
    pub http_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams_per_connection: 256,
            max_consume_streams: 1024,
            max_tls_handshakes: 256,
            http_header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(120),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("sidelog-data"),
            node_id: hostname(),
            client_addr: "127.0.0.1:8400".parse().expect("valid"),
            http_addr: "127.0.0.1:8080".parse().expect("valid"),
            health_addr: None,
            advertise_client_addr: None,
            peer_addr: "127.0.0.1:8401".parse().expect("valid"),
            advertise_peer_addr: None,
            join: Vec::new(),
            discovery: DiscoveryConfig::default(),
            bootstrap_expect: 1,
            voters: 3,
            standbys: crate::cluster::DEFAULT_STANDBYS,
            dead_member_timeout: crate::cluster::DEFAULT_DEAD_MEMBER_TIMEOUT,
            failure_domain: String::new(),
            leave_on_terminate: false,
            logs: Vec::new(),
            max_logs: crate::cluster::catalog::DEFAULT_MAX_LOGS,
            auto_create_logs: false,
            force_new_cluster: false,
            insecure: false,
            tls: None,
            peer_tls: None,
            peer_tls_server_name: None,
            peer_allowed_names: None,
            cluster_secret_file: None,
            acl: None,
            tls_reload_interval: Duration::from_secs(5),
            fsync: FsyncPolicy::Always,
            segment_max_bytes: 64 << 20,
            retention_bytes: None,
            retention_age: None,
            max_record_bytes: 1 << 20,
            limits: Limits::default(),
            fatal_exit_delay: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Json,
            log_level: "info".into(),
        }
    }
}

impl Config {
    /// Merges flags/env over the file over the defaults, then validates.
    pub fn resolve(args: AgentArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let addr = |key: &'static str, v: Option<String>| -> Result<Option<SocketAddr>, ConfigError> {
            v.map(|s| parse_listen_addr(&s).map_err(|e| invalid(key, e)))
                .transpose()
        };
        let size = |key: &'static str, v: Option<SizeValue>| -> Result<Option<u64>, ConfigError> {
            v.map(|v| match v {
                SizeValue::Bytes(n) => Ok(n),
                SizeValue::Text(s) => parse_size(&s).map_err(|e| invalid(key, e)),
            })
            .transpose()
        };
        let duration = |key: &'static str, v: Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.map(|s| parse_duration(&s).map_err(|e| invalid(key, e))).transpose()
        };
        let pair = |a: Option<PathBuf>, b: Option<PathBuf>, ka: &'static str, kb: &'static str| match (a, b) {
            (Some(a), Some(b)) => Ok(Some((a, b))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(invalid(kb, format!("is required with --{ka}"))),
            (None, Some(_)) => Err(invalid(ka, format!("is required with --{kb}"))),
        };
        let tls_ca = args.tls_ca.or(file.tls_ca);
        let tls = match pair(
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            "tls-cert",
            "tls-key",
        )? {
            Some((cert, key)) => Some(TlsFiles { cert, key, ca: tls_ca }),
            None if tls_ca.is_some() => return Err(invalid("tls-ca", "needs --tls-cert and --tls-key")),
            None => None,
        };
        let (pc, pk, pca) = (
            args.peer_tls_cert.or(file.peer_tls_cert),
            args.peer_tls_key.or(file.peer_tls_key),
            args.peer_tls_ca.or(file.peer_tls_ca),
        );
        let peer_explicit = pc.is_some() || pk.is_some() || pca.is_some();
        let peer_tls = match (
            pc.or_else(|| tls.as_ref().map(|t| t.cert.clone())),
            pk.or_else(|| tls.as_ref().map(|t| t.key.clone())),
        ) {
            (Some(cert), Some(key)) => match pca.or_else(|| tls.as_ref().and_then(|t| t.ca.clone())) {
                Some(ca) => Some(TlsFiles {
                    cert,
                    key,
                    ca: Some(ca),
                }),
                None if peer_explicit => {
                    return Err(invalid(
                        "peer-tls-ca",
                        "peers always use mutual TLS: give --peer-tls-ca or --tls-ca",
                    ));
                }
                None => None,
            },
            (None, None) => None,
            (Some(_), None) => return Err(invalid("peer-tls-key", "is required with --peer-tls-cert")),
            (None, Some(_)) => return Err(invalid("peer-tls-cert", "is required with --peer-tls-key")),
        };
        let acl = pair(
            args.acl_model.or(file.acl_model),
            args.acl_policy.or(file.acl_policy),
            "acl-model",
            "acl-policy",
        )?;
        if acl.is_some() && tls.as_ref().and_then(|t| t.ca.as_ref()).is_none() {
            return Err(invalid(
                "acl-model",
                "ACL decisions need client certificates: give --tls-cert, --tls-key and --tls-ca",
            ));
        }
        let join: Vec<String> = args
            .join
            .or(file.join)
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        let dd = d.discovery.clone();
        let discovery = DiscoveryConfig {
            mode: args.discovery.or(file.discovery).unwrap_or(dd.mode),
            dns_name: args.dns_name.or(file.dns_name).map(|n| n.trim().to_owned()),
            dns_refresh: args
                .dns_refresh
                .or(duration("dns-refresh", file.dns_refresh)?)
                .unwrap_or(dd.dns_refresh),
            dns_server: args.dns_server.or(addr("dns-server", file.dns_server)?),
            dns_search: args.dns_search.or(file.dns_search).unwrap_or_default(),
            cluster_name: args.cluster_name.or(file.cluster_name).unwrap_or(dd.cluster_name),
            mdns_interfaces: args.mdns_interface.or(file.mdns_interface).unwrap_or_default(),
        };
        let bootstrap_expect = args.bootstrap_expect.or(file.bootstrap_expect);
        if bootstrap_expect.is_none() && discovery.mode != DiscoveryMode::Static {
            return Err(invalid(
                "bootstrap-expect",
                "is required with --discovery mdns or dns: the number of nodes that form the \
                 cluster together (0: only join an existing cluster)",
            ));
        }
        let config = Config {
            data_dir: args.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            node_id: args.node_id.or(file.node_id).unwrap_or(d.node_id),
            client_addr: args
                .client_addr
                .or(addr("client-addr", file.client_addr)?)
                .unwrap_or(d.client_addr),
            http_addr: args
                .http_addr
                .or(addr("http-addr", file.http_addr)?)
                .unwrap_or(d.http_addr),
            health_addr: args.health_addr.or(addr("health-addr", file.health_addr)?),
            advertise_client_addr: args.advertise_client_addr.or(file.advertise_client_addr),
            peer_addr: args
                .peer_addr
                .or(addr("peer-addr", file.peer_addr)?)
                .unwrap_or(d.peer_addr),
            advertise_peer_addr: args.advertise_peer_addr.or(file.advertise_peer_addr),
            bootstrap_expect: bootstrap_expect.unwrap_or(if join.is_empty() { 1 } else { 0 }),
            voters: args.voters.or(file.voters).unwrap_or(d.voters),
            standbys: args.standbys.or(file.standbys).unwrap_or(d.standbys),
            dead_member_timeout: args
                .dead_member_timeout
                .or(duration("dead-member-timeout", file.dead_member_timeout)?)
                .unwrap_or(d.dead_member_timeout),
            failure_domain: args
                .failure_domain
                .or(file.failure_domain)
                .map(|f| f.trim().to_owned())
                .unwrap_or(d.failure_domain),
            leave_on_terminate: args
                .leave_on_terminate
                .or(file.leave_on_terminate)
                .unwrap_or(d.leave_on_terminate),
            logs: args
                .logs
                .or(file.logs)
                .unwrap_or(d.logs)
                .into_iter()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect(),
            max_logs: args.max_logs.or(file.max_logs).unwrap_or(d.max_logs),
            auto_create_logs: args
                .auto_create_logs
                .or(file.auto_create_logs)
                .unwrap_or(d.auto_create_logs),
            force_new_cluster: args
                .force_new_cluster
                .or(file.force_new_cluster)
                .unwrap_or(d.force_new_cluster),
            join,
            discovery,
            insecure: args.insecure.or(file.insecure).unwrap_or(d.insecure),
            tls,
            peer_tls,
            peer_tls_server_name: args.peer_tls_server_name.or(file.peer_tls_server_name),
            peer_allowed_names: args.peer_allowed_names.or(file.peer_allowed_names),
            cluster_secret_file: args.cluster_secret_file.or(file.cluster_secret_file),
            acl,
            tls_reload_interval: args
                .tls_reload_interval
                .or(duration("tls-reload-interval", file.tls_reload_interval)?)
                .unwrap_or(d.tls_reload_interval),
            fsync: args.fsync.or(file.fsync).unwrap_or(d.fsync),
            segment_max_bytes: args
                .segment_max_bytes
                .or(size("segment-max-bytes", file.segment_max_bytes)?)
                .unwrap_or(d.segment_max_bytes),
            retention_bytes: args.retention_bytes.or(size("retention-bytes", file.retention_bytes)?),
            retention_age: args.retention_age.or(duration("retention-age", file.retention_age)?),
            max_record_bytes: args
                .max_record_bytes
                .or(size("max-record-bytes", file.max_record_bytes)?)
                .unwrap_or(d.max_record_bytes),
            limits: Limits {
                max_streams_per_connection: args
                    .max_streams_per_connection
                    .or(file.max_streams_per_connection)
                    .unwrap_or(d.limits.max_streams_per_connection),
                max_consume_streams: args
                    .max_consume_streams
                    .or(file.max_consume_streams)
                    .unwrap_or(d.limits.max_consume_streams),
                max_tls_handshakes: args
                    .max_tls_handshakes
                    .or(file.max_tls_handshakes)
                    .unwrap_or(d.limits.max_tls_handshakes),
                http_header_timeout: args
                    .http_header_timeout
                    .or(duration("http-header-timeout", file.http_header_timeout)?)
                    .unwrap_or(d.limits.http_header_timeout),
                http_idle_timeout: args
                    .http_idle_timeout
                    .or(duration("http-idle-timeout", file.http_idle_timeout)?)
                    .unwrap_or(d.limits.http_idle_timeout),
            },
            fatal_exit_delay: args
                .fatal_exit_delay
                .or(duration("fatal-exit-delay", file.fatal_exit_delay)?)
                .unwrap_or(d.fatal_exit_delay),
            shutdown_grace: args
                .shutdown_grace
                .or(duration("shutdown-grace", file.shutdown_grace)?)
                .unwrap_or(d.shutdown_grace),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            log_level: args.log_level.or(file.log_level).unwrap_or(d.log_level),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks values that are well-formed but unusable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.is_empty() {
            return Err(invalid("node-id", "must not be empty"));
        }
        if self.segment_max_bytes < 4096 {
            return Err(invalid(
                "segment-max-bytes",
                format!("{} is below the 4KiB minimum", self.segment_max_bytes),
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > u64::from(u32::MAX) {
            return Err(invalid("max-record-bytes", "must be between 1 byte and 4GiB"));
        }
        if self.max_record_bytes > 16 << 20 {
            return Err(invalid(
                "max-record-bytes",
                "must be at most 16MiB (a record travels in one Raft entry, which is replicated within one \
                 heartbeat)",
            ));
        }
        if self.client_addr == self.http_addr && self.client_addr.port() != 0 {
            return Err(invalid(
                "http-addr",
                format!("{} is also the client address", self.http_addr),
            ));
        }
        if let Err(e) = crate::telemetry::log_filter(&self.log_level) {
            return Err(invalid("log-level", format!("{:?}: {e}", self.log_level)));
        }
        if let Some(h) = self.health_addr
            && h.port() != 0
            && [self.client_addr, self.http_addr, self.peer_addr].contains(&h)
        {
            return Err(invalid(
                "health-addr",
                format!("{h} is also the client, HTTP or peer address"),
            ));
        }
        if self.peer_addr.port() != 0 && (self.peer_addr == self.client_addr || self.peer_addr == self.http_addr) {
            return Err(invalid(
                "peer-addr",
                format!("{} is also the client or HTTP address", self.peer_addr),
            ));
        }
        if ![1, 3, 5, 7].contains(&self.voters) {
            return Err(invalid(
                "voters",
                format!(
                    "{} is not 1, 3, 5 or 7 (an even count tolerates no more failures than the odd count below it)",
                    self.voters
                ),
            ));
        }
        if self.data_dir.exists() && !self.data_dir.is_dir() {
            return Err(invalid(
                "data-dir",
                format!("{} is a file, not a directory", self.data_dir.display()),
            ));
        }
        for log in &self.logs {
            crate::cluster::catalog::check_name(log).map_err(|e| invalid("logs", e))?;
        }
        if self.max_logs > crate::cluster::catalog::MAX_MAX_LOGS {
            return Err(invalid(
                "max-logs",
                format!(
                    "{} is above {}: every log is a Raft group",
                    self.max_logs,
                    crate::cluster::catalog::MAX_MAX_LOGS
                ),
            ));
        }
        if self.standbys > 16 {
            return Err(invalid(
                "standbys",
                format!(
                    "{} is above 16: every standby costs the leader a replication stream",
                    self.standbys
                ),
            ));
        }
        if self.dead_member_timeout < Duration::from_secs(5) {
            return Err(invalid(
                "dead-member-timeout",
                "must be at least 5s: a restart or a slow disk must not be taken for a death",
            ));
        }
        self.validate_discovery()?;
        // (A member restarting with its Raft state has nothing to join: it
        // may keep a `--bootstrap-expect 0` it was started with.)
        if self.join.is_empty()
            && self.bootstrap_expect == 0
            && self.discovery.mode == DiscoveryMode::Static
            && !self.data_dir.join("raft-state.json").exists()
        {
            return Err(invalid(
                "bootstrap-expect",
                "0 means \"only join an existing cluster\", but no --join peers are given to join through \
                 (leave it out for a lone node)",
            ));
        }
        if self.join.is_empty() && self.bootstrap_expect > 1 && self.discovery.mode == DiscoveryMode::Static {
            return Err(invalid(
                "bootstrap-expect",
                format!(
                    "{} nodes are expected but no --join peers are given to find them",
                    self.bootstrap_expect
                ),
            ));
        }
        for a in &self.join {
            if !a.contains(':') {
                return Err(invalid("join", format!("{a:?} is not HOST:PORT")));
            }
        }
        // Without peer credentials anyone who reaches the peer port is a
        // peer: only loopback (as open as the client port then is), unless
        // the operator says --insecure.
        if !self.insecure
            && self.peer_tls.is_none()
            && self.cluster_secret_file.is_none()
            && !self.peer_addr.ip().is_loopback()
        {
            return Err(invalid(
                "peer-addr",
                format!(
                    "{} is not a loopback address and peers have no credentials; give peer TLS \
                     (--peer-tls-cert/--peer-tls-key/--peer-tls-ca) or --cluster-secret-file, \
                     or --insecure (SIDELOG_INSECURE=true) to serve it open",
                    self.peer_addr
                ),
            ));
        }
        if let Some(name) = &self.peer_tls_server_name {
            if self.peer_tls.is_none() {
                return Err(invalid(
                    "peer-tls-server-name",
                    "names the peers' certificate name: give peer TLS (--peer-tls-* or --tls-* with a CA)",
                ));
            }
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(invalid(
                    "peer-tls-server-name",
                    format!("{name:?} is not a DNS name or IP address"),
                ));
            }
        }
        if self.peer_allowed_names.is_some() && self.peer_tls.is_none() {
            return Err(invalid(
                "peer-allowed-names",
                "names are checked on peer certificates: give peer TLS (--peer-tls-* or --tls-* with a CA)",
            ));
        }
        if let Some(names) = &self.peer_allowed_names {
            let parsed =
                crate::security::PeerNames::parse(names).map_err(|e| invalid("peer-allowed-names", e.to_string()))?;
            if parsed.patterns().is_empty() {
                return Err(invalid("peer-allowed-names", "is empty: no peer could connect"));
            }
        }
        let l = &self.limits;
        for (key, v) in [
            ("max-streams-per-connection", l.max_streams_per_connection as usize),
            ("max-consume-streams", l.max_consume_streams),
            ("max-tls-handshakes", l.max_tls_handshakes),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, v) in [
            ("http-header-timeout", l.http_header_timeout),
            ("http-idle-timeout", l.http_idle_timeout),
        ] {
            if v.is_zero() {
                return Err(invalid(key, "must be above zero"));
            }
        }
        if !self.insecure && self.tls.is_none() {
            for (key, addr) in [("client-addr", self.client_addr), ("http-addr", self.http_addr)] {
                if !addr.ip().is_loopback() {
                    return Err(invalid(
                        key,
                        format!(
                            "{addr} is not a loopback address and TLS is not configured; \
                             serving plaintext there needs --insecure (SIDELOG_INSECURE=true)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_discovery(&self) -> Result<(), ConfigError> {
        let d = &self.discovery;
        match d.mode {
            DiscoveryMode::Dns if d.dns_name.as_deref().is_none_or(str::is_empty) => {
                return Err(invalid("dns-name", "is required with --discovery dns"));
            }
            DiscoveryMode::Dns => {}
            _ if d.dns_name.is_some() => {
                return Err(invalid("dns-name", "is only used with --discovery dns"));
            }
            _ => {}
        }
        if d.mode != DiscoveryMode::Mdns && !d.mdns_interfaces.is_empty() {
            return Err(invalid("mdns-interface", "is only used with --discovery mdns"));
        }
        if d.mode != DiscoveryMode::Static && !self.join.is_empty() {
            return Err(invalid(
                "join",
                format!(
                    "is the static peer list; --discovery {} finds peers itself",
                    d.mode.name()
                ),
            ));
        }
        if let Some(name) = &d.dns_name
            && (name.len() > 253 || name.contains(char::is_whitespace))
        {
            return Err(invalid("dns-name", format!("{name:?} is not a DNS name")));
        }
        if d.dns_refresh.is_zero() {
            return Err(invalid("dns-refresh", "must be above zero"));
        }
        // The name travels in an mDNS TXT record and an instance name.
        let c = &d.cluster_name;
        if c.is_empty() || c.len() > 63 || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch)) {
            return Err(invalid(
                "cluster-name",
                format!("{c:?}: use 1 to 63 letters, digits, '-' or '_'"),
            ));
        }
        Ok(())
    }

    pub fn retention(&self) -> Retention {
        Retention {
            max_bytes: self.retention_bytes,
            max_age: self.retention_age,
        }
    }
}

/// The machine's hostname, or "sidelog" if it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // Safety: the buffer is valid for its length; gethostname NUL-terminates
    // within it on success (we also bound the search to the buffer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end])
            && !s.is_empty()
        {
            return s.to_owned();
        }
    }
    "sidelog".into()
}

/// Parses "1048576", "64MiB", "1GiB", "500KB", "10 MB" into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 1048576, 64MiB or 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ));
        }
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses "30s", "12h", "7d", "1h 30m".
/// A listen address: `IP:PORT`, or `HOST:PORT` with a host name that
/// resolves (`localhost:8400`; its first address is used).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not HOST:PORT"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{s:?}: the port {port:?} is not a number from 0 to 65535"));
    }
    if host.is_empty() {
        return Err(format!("{s:?}: no host (use 0.0.0.0:{port} for every interface)"));
    }
    use std::net::ToSocketAddrs;
    match s.to_socket_addrs() {
        // IPv4 first: `localhost` may list ::1 first, which does not bind
        // where IPv6 is off, and clients dialling 127.0.0.1 would miss it.
        Ok(found) => {
            let found: Vec<SocketAddr> = found.collect();
            found
                .iter()
                .find(|a| a.is_ipv4())
                .or(found.first())
                .copied()
                .ok_or_else(|| format!("{host:?} resolves to no address"))
        }
        Err(e) => Err(format!("cannot resolve {host:?}: {e}")),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration ({e}; try 30s, 12h or 7d)"))
}

mod humantime_opt {
    pub fn serialize<S: serde::Serializer>(v: &Option<std::time::Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

mod humantime_secs {
    pub fn serialize<S: serde::Serializer>(v: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_human_units() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1 GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("12 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_size("").is_err());
    }

    #[test]
    fn openraft_state_dumps_stay_out_of_the_default_logs() {
        let info = crate::telemetry::log_filter("info").unwrap();
        assert!(!info.would_enable("openraft::engine", &tracing::Level::INFO));
        assert!(info.would_enable("openraft::engine", &tracing::Level::WARN));
        assert!(info.would_enable("sidelog::cluster", &tracing::Level::INFO));
        let asked = crate::telemetry::log_filter("info,openraft=info").unwrap();
        assert!(asked.would_enable("openraft::engine", &tracing::Level::INFO));
        let debug = crate::telemetry::log_filter("debug").unwrap();
        assert!(debug.would_enable("openraft::engine", &tracing::Level::DEBUG));
        let quiet = crate::telemetry::log_filter("error").unwrap();
        assert!(!quiet.would_enable("openraft::engine", &tracing::Level::WARN));
    }

    #[test]
    fn listen_addresses_take_host_names_and_bootstrap_expect_0_needs_peers() {
        assert_eq!(
            parse_listen_addr("localhost:8440").unwrap().port(),
            8440,
            "a host name resolves"
        );
        assert!(parse_listen_addr("localhost:8440").unwrap().ip().is_loopback());
        for bad in ["localhost", "localhost:99999", ":8400"] {
            assert!(parse_listen_addr(bad).is_err(), "{bad:?} accepted");
        }
        let args = AgentArgs {
            client_addr: Some(parse_listen_addr("localhost:8440").unwrap()),
            ..Default::default()
        };
        assert!(Config::resolve(args).is_ok());
        let args = AgentArgs {
            bootstrap_expect: Some(0),
            ..Default::default()
        };
        let err = Config::resolve(args).unwrap_err().to_string();
        assert!(err.contains("bootstrap-expect") && err.contains("only join"), "{err}");
    }

    #[test]
    fn a_bad_log_level_is_refused_by_name() {
        let args = AgentArgs {
            log_level: Some("loud".into()),
            ..Default::default()
        };
        let err = Config::resolve(args).unwrap_err().to_string();
        assert!(err.contains("log-level") && err.contains("loud"), "{err}");
        for bad in ["debug,", "info,=debug", "info,sidelog=loud"] {
            let args = AgentArgs {
                log_level: Some(bad.into()),
                ..Default::default()
            };
            assert!(Config::resolve(args).is_err(), "{bad:?} accepted");
        }
        let args = AgentArgs {
            log_level: Some("warn, sidelog::cluster = debug".into()),
            ..Default::default()
        };
        assert!(Config::resolve(args).is_ok());
        let f = crate::telemetry::log_filter("warn, sidelog::cluster = debug").unwrap();
        assert!(f.would_enable("sidelog::cluster", &tracing::Level::DEBUG));
        assert!(!f.would_enable("sidelog::api", &tracing::Level::INFO));
    }

    #[test]
    fn the_health_address_must_be_a_port_of_its_own() {
        let args = AgentArgs {
            health_addr: Some("127.0.0.1:8080".parse().unwrap()),
            ..Default::default()
        };
        let err = Config::resolve(args).unwrap_err().to_string();
        assert!(err.contains("health-addr") && err.contains("127.0.0.1:8080"), "{err}");
        let args = AgentArgs {
            health_addr: Some("0.0.0.0:8402".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            Config::resolve(args).unwrap().health_addr,
            Some("0.0.0.0:8402".parse().unwrap())
        );
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "data-dir = \"/from/file\"\nnode-id = \"file-node\"\nmax-record-bytes = \"2MiB\"\n",
        )
        .unwrap();
        let args = AgentArgs {
            config: Some(path),
            node_id: Some("flag-node".into()),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.node_id, "flag-node");
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.max_record_bytes, 2 << 20);
        assert_eq!(c.client_addr, Config::default().client_addr);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "data-dri = \"x\"\n").unwrap();
        let err = Config::resolve(AgentArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("data-dri"), "{err}");
        std::fs::write(&path, "retention-age = \"soon\"\n").unwrap();
        let err = Config::resolve(AgentArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("retention-age"), "{err}");
    }

    #[test]
    fn tls_flags_must_come_in_usable_combinations() {
        let p = |s: &str| Some(PathBuf::from(s));
        let err = Config::resolve(AgentArgs {
            tls_cert: p("c.pem"),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("tls-key"), "{err}");
        let args = AgentArgs {
            tls_cert: p("c.pem"),
            tls_key: p("k.pem"),
            acl_model: p("m"),
            acl_policy: p("p"),
            ..Default::default()
        };
        let err = Config::resolve(args).unwrap_err();
        assert!(
            err.to_string().contains("acl-model") && err.to_string().contains("--tls-ca"),
            "{err}"
        );
        let args = AgentArgs {
            tls_cert: p("c.pem"),
            tls_key: p("k.pem"),
            peer_tls_cert: p("pc.pem"),
            peer_tls_key: p("pk.pem"),
            ..Default::default()
        };
        let err = Config::resolve(args).unwrap_err();
        assert!(err.to_string().contains("peer-tls-ca"), "{err}");
        // With TLS, a public address is fine; peer TLS defaults to the client files.
        let args = AgentArgs {
            tls_cert: p("c.pem"),
            tls_key: p("k.pem"),
            tls_ca: p("ca.pem"),
            client_addr: Some("0.0.0.0:8400".parse().unwrap()),
            http_addr: Some("0.0.0.0:8080".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.peer_tls, c.tls);
    }

    #[test]
    fn plaintext_on_a_public_address_needs_insecure() {
        let args = AgentArgs {
            client_addr: Some("0.0.0.0:8400".parse().unwrap()),
            ..Default::default()
        };
        let err = Config::resolve(args.clone()).unwrap_err();
        assert!(err.to_string().contains("--insecure"), "{err}");
        let ok = Config::resolve(AgentArgs {
            insecure: Some(true),
            ..args
        })
        .unwrap();
        assert!(ok.insecure);
    }

    #[test]
    fn a_public_peer_port_needs_peer_credentials() {
        let public = AgentArgs {
            peer_addr: Some("0.0.0.0:8401".parse().unwrap()),
            ..Default::default()
        };
        let err = Config::resolve(public.clone()).unwrap_err().to_string();
        assert!(
            err.contains("peer-addr") && err.contains("--cluster-secret-file"),
            "{err}"
        );
        let c = Config::resolve(AgentArgs {
            cluster_secret_file: Some("secret".into()),
            ..public
        })
        .unwrap();
        assert_eq!(c.cluster_secret_file, Some(PathBuf::from("secret")));
        // Names are checked on certificates: without peer TLS they mean nothing.
        let err = Config::resolve(AgentArgs {
            peer_allowed_names: Some(vec!["sidelog-*".into()]),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("peer-allowed-names"), "{err}");
    }

    #[test]
    fn limits_have_defaults_and_refuse_zero() {
        let c = Config::resolve(AgentArgs::default()).unwrap();
        assert_eq!(c.limits, Limits::default());
        let err = Config::resolve(AgentArgs {
            max_consume_streams: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("max-consume-streams"), "{err}");
    }
}
