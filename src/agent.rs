//! Wiring: opens the log, binds the listeners, starts the services and the
//! retention loop, and shuts everything down in order.
//!
//! Start order: open (and recover) the log, bind every listener (so a bad
//! address fails before anything serves), start Raft and the peer service,
//! form or join the cluster in the background, serve clients. Health is
//! SERVING (and `/readyz` 200) while the node is a member with a known
//! leader and not far behind. Shutdown order: NOT_SERVING, graceful leave
//! (on SIGTERM), stop accepting and let in-flight requests finish within
//! the grace period, stop Raft, fsync, close.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

use crate::{
    api::{self, LogService, http::HttpState},
    cluster::{
        self, Cluster, ClusterAdmin, ClusterConfig, NodeInfo, Partition, PeerService,
        host::{GroupSettings, Host, LogConfigTemplate},
    },
    config::{Config, DiscoveryMode, FsyncPolicy},
    discovery::{Discovery, DiscoveryError, DnsDiscovery, DnsSettings, MdnsDiscovery, MdnsSettings},
    liveness::{self, LIVENESS_SERVICE, LIVENESS_SERVICE_OLD, Liveness, STARTED_SERVICE},
    node::LogNode,
    security::{
        AclError, Authorizer, ClientAuth, ClusterSecret, PeerClientTls, PeerCredentials, PeerGuard, PeerNames,
        ReloadableTls, TlsError, tls,
    },
    storage::{self, Log, LogConfig},
    telemetry::Metrics,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot open the log: {0}")]
    Storage(#[from] storage::Error),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("invalid ACL: {0}")]
    Acl(#[from] AclError),
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("{what} server failed: {message}")]
    Serve { what: &'static str, message: String },
    #[error(transparent)]
    PeerAuth(#[from] crate::security::peer_auth::PeerAuthError),
    #[error("cannot remove leftover snapshot directories in {}: {source}", dir.display())]
    Cleanup {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fatal error: {0}")]
    Fatal(String),
    #[error("peer discovery: {0}")]
    Discovery(#[from] DiscoveryError),
}

/// Fsync period for `--fsync=interval`.
const FSYNC_INTERVAL: Duration = Duration::from_millis(100);
/// How often retention is applied.
const RETENTION_PERIOD: Duration = Duration::from_secs(30);

/// A running agent.
pub struct Agent {
    pub client_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// The health-only listener's address (`--health-addr`), if any.
    pub health_addr: Option<SocketAddr>,
    node: Arc<LogNode>,
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    shutdown: CancellationToken,
    health: tonic_health::server::HealthReporter,
    liveness: Liveness,
    servers: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    /// Every background task; each holds a child of `shutdown`.
    tasks: TaskTracker,
    grace: Duration,
    leave_on_terminate: bool,
    fatal_exit_delay: Duration,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { what, addr, source })
}

fn local_addr(what: &'static str, listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, AgentError> {
    listener
        .local_addr()
        .map_err(|source| AgentError::Bind { what, addr, source })
}

/// Opens (and recovers) the log, and removes the temporary snapshot
/// directories a previous run left behind.
async fn open_log(config: &Config, metrics: &Arc<Metrics>) -> Result<Arc<Log>, AgentError> {
    let log_config = LogConfig {
        observer: Some(metrics.clone()),
        segment_max_bytes: config.segment_max_bytes,
        sync_interval: (config.fsync == FsyncPolicy::Interval).then_some(FSYNC_INTERVAL),
        ..LogConfig::default()
    };
    let data_dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let log = Log::open(data_dir, log_config)?;
        // The log holds the directory's lock: no other process uses them.
        cluster::network::remove_stale_tmp_dirs(log.dir()).map_err(|source| AgentError::Cleanup {
            dir: log.dir().to_owned(),
            source,
        })?;
        Ok(Arc::new(log))
    })
    .await
    .expect("open task")
}

/// The peer port's credentials, both sides.
struct PeerSecurity {
    /// Mutual TLS on the peer port, if configured.
    server_tls: Option<Arc<ReloadableTls>>,
    /// Checks every peer call.
    guard: PeerGuard,
    /// What we present when we dial peers.
    credentials: PeerCredentials,
}

impl PeerSecurity {
    fn load(config: &Config) -> Result<PeerSecurity, AgentError> {
        let secret = match &config.cluster_secret_file {
            Some(path) => Some(ClusterSecret::load(path)?),
            None => None,
        };
        let Some(files) = &config.peer_tls else {
            return Ok(PeerSecurity {
                server_tls: None,
                guard: PeerGuard::new(None, secret.clone()),
                credentials: PeerCredentials { tls: None, secret },
            });
        };
        let names = match &config.peer_allowed_names {
            Some(patterns) => PeerNames::parse(patterns)?,
            None => PeerNames::from_own_certificate(&files.cert)?,
        };
        tracing::info!(allowed = ?names.patterns(), "peer port admits certificates with these names");
        Ok(PeerSecurity {
            server_tls: Some(ReloadableTls::new(files.clone(), ClientAuth::Required, vec![b"h2"])?),
            guard: PeerGuard::new(Some(names), secret.clone()),
            credentials: PeerCredentials {
                tls: Some(Arc::new(PeerClientTls::new(
                    files.clone(),
                    config.peer_tls_server_name.clone(),
                )?)),
                secret,
            },
        })
    }
}

/// Serves a tonic server on `listener`, through our TLS accept loop when
/// `tls` is given, until `token` is cancelled.
fn serve_grpc<L>(
    server: tonic::transport::server::Router<L>,
    listener: TcpListener,
    tls: Option<Arc<ReloadableTls>>,
    limits: &crate::config::Limits,
    limit: api::conn_limit::ListenerLimit,
    token: CancellationToken,
) -> JoinHandle<Result<(), String>>
where
    L: tower::Layer<tonic::service::Routes> + Send + 'static,
    L::Service: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    match tls {
        None => {
            let conns = api::http::tcp_accept_loop(listener, limit, token.clone());
            let incoming = ReceiverStream::new(conns).map(Ok::<_, std::io::Error>);
            tokio::spawn(async move {
                server
                    .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        Some(tls) => {
            let conns = tls::accept_loop(listener, tls, limits.max_tls_handshakes, limit, token.clone());
            let incoming = ReceiverStream::new(conns).map(Ok::<_, std::io::Error>);
            tokio::spawn(async move {
                server
                    .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                    .await
                    .map_err(|e| e.to_string())
            })
        }
    }
}

/// What this node tells others to dial for a listener: the explicit
/// `--advertise-*-addr`, else the bound address, or for a wildcard bind
/// (`0.0.0.0:8401`, useless to another host) this host's first real
/// interface address with the bound port, said in the log.
fn advertise_addr(what: &str, explicit: Option<&str>, bound: SocketAddr) -> String {
    if let Some(a) = explicit {
        return a.to_owned();
    }
    match crate::discovery::advertised_for(bound) {
        Some(a) if a == bound => a.to_string(),
        Some(a) => {
            tracing::info!(
                bound = %bound,
                advertised = %a,
                "advertising the {what} address {a} for the wildcard bind {bound} (set --advertise-{what}-addr to choose)"
            );
            a.to_string()
        }
        None => {
            tracing::warn!(
                bound = %bound,
                "no interface address to advertise for the {what} listener's wildcard bind {bound}: other nodes cannot dial it; set --advertise-{what}-addr"
            );
            bound.to_string()
        }
    }
}

/// The configured discovery source. mDNS starts announcing here, once the
/// listeners are bound (the announcement carries their ports).
fn discovery_source(config: &Config, me: &NodeInfo, peer_addr: SocketAddr) -> Result<Discovery, AgentError> {
    let d = &config.discovery;
    Ok(match d.mode {
        DiscoveryMode::Static => Discovery::fixed(config.join.clone()),
        DiscoveryMode::Dns => {
            let mut own = crate::discovery::own_addresses(peer_addr);
            if let Ok(advertised) = me.peer_addr.parse() {
                own.push(advertised);
            }
            Discovery::new(DnsDiscovery::new(DnsSettings {
                name: d.dns_name.clone().unwrap_or_default(),
                peer_port: me
                    .peer_addr
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or(peer_addr.port()),
                refresh: d.dns_refresh,
                server: d.dns_server,
                search: d.dns_search.clone(),
                own,
            })?)
        }
        DiscoveryMode::Mdns => Discovery::new(MdnsDiscovery::start(MdnsSettings {
            node: me.name.clone(),
            cluster: d.cluster_name.clone(),
            peer_addr: me.peer_addr.clone(),
            client_addr: me.client_addr.clone(),
            peer_port: peer_addr.port(),
            interfaces: d.mdns_interfaces.clone(),
        })?),
    })
}

/// The agent's listeners, bound, and the addresses they got.
struct Ports {
    client: TcpListener,
    peer: TcpListener,
    http: TcpListener,
    health: Option<TcpListener>,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    http_addr: SocketAddr,
    health_addr: Option<SocketAddr>,
}

impl Ports {
    async fn bind(config: &Config) -> Result<Ports, AgentError> {
        let client = bind("client API", config.client_addr).await?;
        let peer = bind("peer API", config.peer_addr).await?;
        let http = bind("HTTP", config.http_addr).await?;
        let health = match config.health_addr {
            Some(addr) => Some(bind("health", addr).await?),
            None => None,
        };
        Ok(Ports {
            client_addr: local_addr("client API", &client, config.client_addr)?,
            peer_addr: local_addr("peer API", &peer, config.peer_addr)?,
            http_addr: local_addr("HTTP", &http, config.http_addr)?,
            health_addr: match (&health, config.health_addr) {
                (Some(l), Some(addr)) => Some(local_addr("health", l, addr)?),
                _ => None,
            },
            client,
            peer,
            http,
            health,
        })
    }
}

/// TLS for the client and HTTP ports, and who may do what there.
struct ClientSecurity {
    client_tls: Option<Arc<ReloadableTls>>,
    http_tls: Option<Arc<ReloadableTls>>,
    auth: Arc<Authorizer>,
}

impl ClientSecurity {
    /// A bad certificate or policy stops the start.
    fn load(config: &Config) -> Result<ClientSecurity, AgentError> {
        let tls = |alpn: Vec<&'static [u8]>| match &config.tls {
            Some(files) => ReloadableTls::new(files.clone(), ClientAuth::Optional, alpn).map(Some),
            None => Ok(None),
        };
        Ok(ClientSecurity {
            client_tls: tls(vec![b"h2"])?,
            http_tls: tls(vec![b"h2", b"http/1.1"])?,
            auth: Arc::new(match &config.tls {
                Some(files) => Authorizer::new(files.ca.is_some(), config.acl.clone())?,
                None => Authorizer::open(),
            }),
        })
    }
}

/// The cluster's settings from the agent's.
fn cluster_config(
    config: &Config,
    metrics: &Arc<Metrics>,
    peers: &PeerSecurity,
    ports: &Ports,
    partition: Option<Arc<Partition>>,
) -> Result<ClusterConfig, AgentError> {
    let advertise = advertise_addr("client", config.advertise_client_addr.as_deref(), ports.client_addr);
    let mut c = ClusterConfig::new(NodeInfo {
        name: config.node_id.clone(),
        peer_addr: advertise_addr("peer", config.advertise_peer_addr.as_deref(), ports.peer_addr),
        client_addr: advertise,
        domain: config.failure_domain.clone(),
    });
    c.voters = config.voters;
    c.standbys = config.standbys;
    c.dead_member_timeout = config.dead_member_timeout;
    c.force_new_cluster = config.force_new_cluster;
    c.membership_changes = Some(metrics.membership_change_counter());
    c.discovery = discovery_source(config, &c.info, ports.peer_addr)?;
    c.bootstrap_expect = config.bootstrap_expect;
    c.fsync = config.fsync;
    c.partition = partition;
    c.peer_credentials = peers.credentials.clone();
    Ok(c)
}

/// The peer port: peers are trusted with the Raft log, so the guard admits
/// only callers with the peer credentials (see `security::peer_auth`).
fn serve_peer(
    host: &Arc<Host>,
    peers: &PeerSecurity,
    listener: TcpListener,
    limits: &crate::config::Limits,
    budget: &api::conn_limit::ConnBudget,
    token: CancellationToken,
) -> JoinHandle<Result<(), String>> {
    let service = InterceptedService::new(PeerService::new(host.clone()).into_server(), peers.guard.clone());
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .add_service(service);
    let limit = budget.listener("peer", 4);
    serve_grpc(server, listener, peers.server_tls.clone(), limits, limit, token)
}

/// The client port's services: log.v1, cluster admin, health, and both
/// reflection versions (grpcurl before 1.9 speaks only v1alpha), which list
/// only what this port serves (not the peer service, whose messages share a
/// file) and ask for the port's credentials.
fn client_routes(
    host: &Arc<Host>,
    auth: &Arc<Authorizer>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
    limits: &crate::config::Limits,
    health_service: &tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> Result<tonic::service::Routes, AgentError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("log.v1.Log")
            .with_service_name("sidelog.v1.Cluster")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let authenticated = {
        let auth = auth.clone();
        move |req: tonic::Request<()>| {
            auth.authenticate(req.extensions().get::<crate::security::PeerInfo>())
                .map_err(tonic::Status::from)?;
            Ok(req)
        }
    };
    let v1 = reflection()
        .build_v1()
        .map_err(|e| AgentError::Reflection(e.to_string()))?;
    let v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| AgentError::Reflection(e.to_string()))?;
    let log_service = LogService::new(host.clone(), auth.clone(), metrics.clone(), shutdown.clone())
        .with_max_consume_streams(limits.max_consume_streams);
    Ok(
        tonic::service::Routes::new(InterceptedService::new(v1, authenticated.clone()))
            .add_service(InterceptedService::new(v1alpha, authenticated))
            .add_service(health_service.clone())
            .add_service(ClusterAdmin::new(host.clone(), auth.clone()).into_server())
            .add_service(log_service.into_server()),
    )
}

/// The HTTP port (plaintext or TLS).
fn serve_http(
    listener: TcpListener,
    security: &ClientSecurity,
    state: &HttpState,
    limits: &crate::config::Limits,
    budget: &api::conn_limit::ConnBudget,
    token: CancellationToken,
) -> JoinHandle<Result<(), String>> {
    let app = api::http::router(state.clone());
    let limit = budget.listener("http", 2);
    match &security.http_tls {
        None => {
            let conns = api::http::tcp_accept_loop(listener, limit, token.clone());
            tokio::spawn(api::http::serve(conns, api::http::tcp_info, app, limits.clone(), token))
        }
        Some(tls) => {
            let conns = tls::accept_loop(listener, tls.clone(), limits.max_tls_handshakes, limit, token.clone());
            tokio::spawn(api::http::serve(conns, api::http::tls_info, app, limits.clone(), token))
        }
    }
}

/// Health only, plaintext: the kubelet's gRPC probe and Prometheus reach it
/// on the pod IP; the data APIs are not routed here at all. tonic's router
/// answers every unknown path with gRPC UNIMPLEMENTED inside an HTTP 200;
/// the fallback makes anything but health a plain 404 (gRPC clients read it
/// as UNIMPLEMENTED).
fn serve_health(
    listener: TcpListener,
    state: &HttpState,
    health_service: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    limits: &crate::config::Limits,
    budget: &api::conn_limit::ConnBudget,
    token: CancellationToken,
) -> JoinHandle<Result<(), String>> {
    let app = api::http::health_router(state.clone())
        .merge(tonic::service::Routes::new(health_service).into_axum_router())
        .fallback(api::http::health_port_not_found);
    let conns = api::http::tcp_accept_loop(listener, budget.listener("health", 1), token.clone());
    tokio::spawn(api::http::serve(conns, api::http::tcp_info, app, limits.clone(), token))
}

/// Retention of every log that has any (its own, or the agent's): every
/// `RETENTION_PERIOD`.
fn spawn_retention(host: &Arc<Host>, tasks: &TaskTracker, shutdown: &CancellationToken) {
    let (host, token) = (host.clone(), shutdown.child_token());
    tasks.spawn(async move {
        loop {
            host.apply_retention().await;
            tokio::select! {
                _ = tokio::time::sleep(RETENTION_PERIOD) => {}
                _ = token.cancelled() => return,
            }
        }
    });
}

/// The storage and limits every named log shares (see `cluster::host`).
fn group_settings(config: &Config, metrics: &Arc<Metrics>) -> GroupSettings {
    GroupSettings {
        data_dir: config.data_dir.clone(),
        log_config: LogConfigTemplate {
            segment_max_bytes: config.segment_max_bytes,
            sync_interval: (config.fsync == FsyncPolicy::Interval).then_some(FSYNC_INTERVAL),
            observer: Some(metrics.clone()),
        },
        max_record_bytes: config.max_record_bytes,
        retention: config.retention(),
        max_logs: config.max_logs,
        auto_create: config.auto_create_logs,
    }
}

/// Creates the `--logs` that do not exist yet, retrying until the cluster
/// can (a leader, every member's build ready); a name another node created
/// meanwhile is fine.
async fn create_configured_logs(host: Arc<Host>, logs: Vec<String>, token: CancellationToken) {
    for name in logs {
        let mut wait = Duration::from_millis(200);
        loop {
            let created = tokio::select! {
                r = host.create(&name, Default::default(), true) => r,
                _ = token.cancelled() => return,
            };
            match created {
                Ok(_) => break,
                Err(e @ crate::node::NodeError::InvalidArgument(_)) => {
                    tracing::error!(log = %name, cause = %e, "cannot create a log from --logs");
                    break;
                }
                Err(e @ crate::node::NodeError::FailedPrecondition(_)) => {
                    tracing::warn!(log = %name, cause = %e, "log from --logs not created yet")
                }
                Err(e) => tracing::debug!(log = %name, cause = %e, "log from --logs not created yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = token.cancelled() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// A lone node elects itself at once: the start returns when it serves
/// (at most 10 s).
async fn wait_lone_node_ready(cluster: &Arc<Cluster>, health: &tonic_health::server::HealthReporter) {
    let mut metrics = cluster.raft().metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cluster.is_ready() {
        if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
            tracing::warn!("the single-node cluster is not ready after 10s");
            break;
        }
    }
    if cluster.is_ready() {
        set_health(health, true).await;
    }
}

/// Forms or joins the cluster in the background, under the agent's
/// shutdown tree: a node still waiting for `--bootstrap-expect` peers (or
/// retrying a join) stops at once on SIGTERM. The cluster's own loop only
/// ends when it is done or the cluster stops, which is after the agent
/// waited for its tasks, so it is aborted here instead.
fn spawn_membership(cluster: &Arc<Cluster>, tasks: &TaskTracker, token: CancellationToken) {
    let mut membership = cluster.spawn_membership();
    tasks.spawn(async move {
        tokio::select! {
            _ = &mut membership => {}
            _ = token.cancelled() => {
                membership.abort();
                let _ = membership.await;
            }
        }
    });
}

impl Agent {
    /// Starts an agent; returns once it serves (health SERVING).
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        Self::start_with(config, Metrics::new()).await
    }

    /// Starts an agent that reports into `metrics` (shared with telemetry).
    pub async fn start_with(config: Config, metrics: Arc<Metrics>) -> Result<Agent, AgentError> {
        Self::start_opts(config, metrics, None).await
    }

    /// As [`Agent::start_with`]; `partition` lets tests cut peer traffic.
    /// The steps: open the log, bind the ports, load the credentials (a bad
    /// one stops the start), start Raft, serve the peer, client, HTTP and
    /// health ports, start the background loops, and (a lone node) wait
    /// until it serves.
    pub async fn start_opts(
        config: Config,
        metrics: Arc<Metrics>,
        partition: Option<Arc<Partition>>,
    ) -> Result<Agent, AgentError> {
        let log = open_log(&config, &metrics).await?;
        let ports = Ports::bind(&config).await?;
        let node = Arc::new(LogNode::new(log.clone(), config.max_record_bytes));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let limits = config.limits.clone();
        // Connections per port, from the descriptor limit (see `conn_limit`).
        let budget = api::conn_limit::ConnBudget::from_rlimit();
        let security = ClientSecurity::load(&config)?;
        let peers = PeerSecurity::load(&config)?;
        let cluster_config = cluster_config(&config, &metrics, &peers, &ports, partition)?;
        let cluster = Cluster::start(cluster_config, node.clone()).await?;
        let host = Host::start(cluster.clone(), group_settings(&config, &metrics)).await;

        let peer_server = serve_peer(&host, &peers, ports.peer, &limits, &budget, shutdown.clone());
        spawn_membership(&cluster, &tasks, shutdown.child_token());
        let (health, health_service) = tonic_health::server::health_reporter();
        for service in [LIVENESS_SERVICE, LIVENESS_SERVICE_OLD] {
            health.set_service_status(service, ServingStatus::Serving).await;
        }
        let routes = client_routes(&host, &security.auth, &metrics, &shutdown, &limits, &health_service)?;
        let grpc = {
            // Keepalives find clients that vanished without closing, so their
            // tail-following streams do not park forever.
            let server = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .tcp_keepalive(Some(Duration::from_secs(60)))
                .max_concurrent_streams(Some(limits.max_streams_per_connection))
                .layer(api::observe::GrpcObserveLayer::new(metrics.clone()))
                .add_routes(routes);
            let limit = budget.listener("client", 2);
            serve_grpc(
                server,
                ports.client,
                security.client_tls.clone(),
                &limits,
                limit,
                shutdown.clone(),
            )
        };
        let liveness = Liveness::default();
        let http_state = HttpState {
            body_timeout: limits.http_header_timeout,
            host: host.clone(),
            node: node.clone(),
            auth: security.auth.clone(),
            metrics: metrics.clone(),
            liveness: liveness.clone(),
        };
        let http = serve_http(ports.http, &security, &http_state, &limits, &budget, shutdown.clone());
        let mut servers = vec![("gRPC", grpc), ("HTTP", http), ("peer", peer_server)];
        if let Some(listener) = ports.health {
            let server = serve_health(
                listener,
                &http_state,
                health_service,
                &limits,
                &budget,
                shutdown.clone(),
            );
            servers.push(("health", server));
        }

        spawn_retention(&host, &tasks, &shutdown);
        if !config.logs.is_empty() {
            tasks.spawn(create_configured_logs(
                host.clone(),
                config.logs.clone(),
                shutdown.child_token(),
            ));
        }
        let reloadable: Vec<Arc<ReloadableTls>> = [&security.client_tls, &security.http_tls, &peers.server_tls]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if !reloadable.is_empty() || config.acl.is_some() {
            tasks.spawn(reload_loop(
                reloadable,
                peers.credentials.tls.clone(),
                security.auth.clone(),
                config.tls_reload_interval,
                shutdown.child_token(),
            ));
        }
        tasks.spawn(readiness_loop(
            host.clone(),
            health.clone(),
            liveness.clone(),
            shutdown.child_token(),
        ));
        tasks.spawn(liveness::watch(
            cluster.clone(),
            liveness.clone(),
            shutdown.child_token(),
        ));
        tasks.spawn(liveness_health(
            liveness.clone(),
            health.clone(),
            shutdown.child_token(),
        ));
        if !cluster.discovers_peers() && config.bootstrap_expect <= 1 {
            wait_lone_node_ready(&cluster, &health).await;
        }
        health.set_service_status(STARTED_SERVICE, ServingStatus::Serving).await;
        tracing::info!(
            client_addr = %ports.client_addr,
            http_addr = %ports.http_addr,
            peer_addr = %ports.peer_addr,
            node_id = %config.node_id,
            first_offset = log.first_offset(),
            next_offset = log.next_offset(),
            version = crate::version(),
            "sidelog agent serving"
        );
        Ok(Agent {
            client_addr: ports.client_addr,
            http_addr: ports.http_addr,
            peer_addr: ports.peer_addr,
            health_addr: ports.health_addr,
            node,
            cluster,
            host,
            shutdown,
            health,
            liveness,
            servers,
            tasks,
            grace: config.shutdown_grace,
            leave_on_terminate: config.leave_on_terminate,
            fatal_exit_delay: config.fatal_exit_delay,
        })
    }

    pub fn node(&self) -> &Arc<LogNode> {
        &self.node
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Every group of this process: the default log's and the named logs'.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// A token that is cancelled when the agent begins shutting down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Why the agent is no longer alive, if a fatal error happened.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Runs until `signal` resolves, a server fails, or a fatal storage or
    /// Raft error (then, after `--fatal-exit-delay`, returns that error so
    /// the process exits non-zero and is restarted).
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
        enum End {
            Signal,
            Server(usize, Result<Result<(), String>, tokio::task::JoinError>),
            Fatal(String),
        }
        let end = {
            let watch = futures_util::future::select_all(self.servers.iter_mut().map(|(_, h)| h));
            let liveness = self.liveness.clone();
            tokio::select! {
                _ = signal => End::Signal,
                (res, i, _) = watch => End::Server(i, res),
                reason = liveness.failed() => End::Fatal(reason),
            }
        };
        match end {
            End::Signal => self.shutdown().await,
            End::Server(i, res) => {
                let what = self.servers.remove(i).0;
                let message = match res {
                    Ok(Ok(())) => "stopped unexpectedly".to_owned(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                self.shutdown().await?;
                Err(AgentError::Serve { what, message })
            }
            End::Fatal(reason) => {
                // Liveness already reports NOT_SERVING; the delay lets a
                // probe (or an operator) see why before the process goes.
                tracing::error!(cause = %reason, delay = ?self.fatal_exit_delay, "exiting after a fatal error");
                tokio::time::sleep(self.fatal_exit_delay).await;
                if let Err(e) = self.stop(false).await {
                    tracing::warn!(cause = %e, "shutdown after the fatal error was not clean");
                }
                Err(AgentError::Fatal(reason))
            }
        }
    }

    /// Graceful shutdown (SIGTERM): NOT_SERVING, leave the cluster if
    /// `--leave-on-terminate`, stop accepting, finish in-flight requests
    /// (bounded by the grace period), fsync, close.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        let leave = self.leave_on_terminate;
        self.stop(leave).await
    }

    /// Leaves the cluster, then shuts down, whatever `--leave-on-terminate` says.
    pub async fn leave_and_shutdown(self) -> Result<(), AgentError> {
        self.stop(true).await
    }

    /// Stops without leaving the cluster, as a crash or a kill would (the
    /// node stays a voter); the log is still closed cleanly.
    pub async fn stop_without_leave(self) -> Result<(), AgentError> {
        self.stop(false).await
    }

    /// Everything shares one deadline, `--shutdown-grace`: the leave takes
    /// at most half of it, then servers, background tasks and Raft each get
    /// what is left, so no state (forming, joining, leaderless,
    /// mid-snapshot) holds the process. Only Raft may overrun it, by at
    /// most a second, before the final fsync.
    async fn stop(self, leave: bool) -> Result<(), AgentError> {
        let deadline = tokio::time::Instant::now() + self.grace;
        set_health(&self.health, false).await;
        self.health
            .set_service_status(STARTED_SERVICE, ServingStatus::NotServing)
            .await;
        if leave {
            self.cluster.leave(self.grace / 2).await;
        } else {
            // A sidecar attached without a log has no place to keep: it
            // tells the leader it is going either way.
            self.cluster.detach_on_stop().await;
        }
        self.shutdown.cancel();
        for (what, handle) in self.servers {
            let abort = handle.abort_handle();
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(Err(e))) => tracing::error!(server = what, cause = %e, "server failed"),
                Err(_) => {
                    tracing::warn!(server = what, grace = ?self.grace, "in-flight requests did not finish in the grace period");
                    abort.abort();
                }
                _ => {}
            }
        }
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                tasks = self.tasks.len(),
                "background tasks did not stop in the grace period"
            );
        }
        // Raft gets at least a moment even when the grace is used up.
        let raft_deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        if tokio::time::timeout_at(raft_deadline, self.host.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("Raft did not stop in the grace period");
        }
        let log = self.node.log().clone();
        let synced = tokio::task::spawn_blocking(move || log.sync())
            .await
            .expect("sync task");
        match synced {
            Ok(d) => tracing::info!(next_offset = d.next_offset, "log synced; bye"),
            Err(e) => {
                tracing::error!(cause = %e, "final fsync failed");
                return Err(e.into());
            }
        }
        Ok(())
    }
}

async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <api::pb::log_server::LogServer<LogService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Keeps gRPC health in step with readiness (and never SERVING once a
/// fatal error happened).
async fn readiness_loop(
    host: Arc<Host>,
    health: tonic_health::server::HealthReporter,
    liveness: Liveness,
    token: CancellationToken,
) {
    let mut metrics = host.default_group().raft().metrics();
    let mut last = None;
    loop {
        let ready = host.is_ready() && liveness.fatal().is_none();
        if last != Some(ready) {
            set_health(&health, ready).await;
            tracing::info!(ready, "readiness changed");
            last = Some(ready);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { break },
            // Storage health is not in the Raft metrics.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = token.cancelled() => return,
        }
    }
}

/// Turns liveness (and readiness) NOT_SERVING on the first fatal error.
async fn liveness_health(liveness: Liveness, health: tonic_health::server::HealthReporter, token: CancellationToken) {
    tokio::select! {
        _ = liveness.failed() => {
            set_health(&health, false).await;
            for service in [LIVENESS_SERVICE, LIVENESS_SERVICE_OLD] {
                health.set_service_status(service, ServingStatus::NotServing).await;
            }
        }
        _ = token.cancelled() => {}
    }
}

/// Picks up rotated certificates and policies: checks the files every
/// `period` and at once on SIGHUP. A bad new file keeps the old config.
/// Server-side configs apply to new connections; the peer client
/// certificate to new peer connections (see `security::peer_tls`).
async fn reload_loop(
    tls: Vec<Arc<ReloadableTls>>,
    peer_client: Option<Arc<PeerClientTls>>,
    auth: Arc<Authorizer>,
    period: Duration,
    shutdown: CancellationToken,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: checking certificates and policy");
            }
            _ = shutdown.cancelled() => return,
        }
        for t in &tls {
            t.reload_if_changed();
        }
        if let Some(p) = &peer_client {
            p.reload_if_changed();
        }
        auth.reload_if_changed();
    }
}
