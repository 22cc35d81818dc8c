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
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    api::{self, LogService, http::HttpState},
    cluster::{self, Cluster, ClusterAdmin, ClusterConfig, NodeInfo, Partition, PeerService},
    config::{Config, FsyncPolicy},
    node::LogNode,
    security::{AclError, Authorizer, ClientAuth, ReloadableTls, TlsError, tls},
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
    #[error("peer TLS: {0}")]
    PeerTls(String),
    #[error("{what} server failed: {message}")]
    Serve { what: &'static str, message: String },
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
    node: Arc<LogNode>,
    cluster: Arc<Cluster>,
    shutdown: CancellationToken,
    health: tonic_health::server::HealthReporter,
    servers: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { what, addr, source })
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
    pub async fn start_opts(
        config: Config,
        metrics: Arc<Metrics>,
        partition: Option<Arc<Partition>>,
    ) -> Result<Agent, AgentError> {
        let log_config = LogConfig {
            observer: Some(metrics.clone()),
            segment_max_bytes: config.segment_max_bytes,
            sync_interval: (config.fsync == FsyncPolicy::Interval).then_some(FSYNC_INTERVAL),
            ..LogConfig::default()
        };
        let data_dir = config.data_dir.clone();
        let log = Arc::new(
            tokio::task::spawn_blocking(move || Log::open(data_dir, log_config))
                .await
                .expect("open task")?,
        );

        let client_listener = bind("client API", config.client_addr).await?;
        let peer_listener = bind("peer API", config.peer_addr).await?;
        let peer_addr = peer_listener.local_addr().map_err(|source| AgentError::Bind {
            what: "peer API",
            addr: config.peer_addr,
            source,
        })?;
        let http_listener = bind("HTTP", config.http_addr).await?;
        let client_addr = client_listener.local_addr().map_err(|source| AgentError::Bind {
            what: "client API",
            addr: config.client_addr,
            source,
        })?;
        let http_addr = http_listener.local_addr().map_err(|source| AgentError::Bind {
            what: "HTTP",
            addr: config.http_addr,
            source,
        })?;
        let advertise = config
            .advertise_client_addr
            .clone()
            .unwrap_or_else(|| client_addr.to_string());

        let node = Arc::new(LogNode::new(log.clone(), config.max_record_bytes));
        let shutdown = CancellationToken::new();

        // Security first: a bad certificate or policy must stop the start.
        let client_tls = match &config.tls {
            Some(files) => Some(ReloadableTls::new(files.clone(), ClientAuth::Optional, vec![b"h2"])?),
            None => None,
        };
        let http_tls = match &config.tls {
            Some(files) => Some(ReloadableTls::new(
                files.clone(),
                ClientAuth::Optional,
                vec![b"h2", b"http/1.1"],
            )?),
            None => None,
        };
        let auth = Arc::new(match &config.tls {
            Some(files) => Authorizer::new(files.ca.is_some(), config.acl.clone())?,
            None => Authorizer::open(),
        });

        let peer_tls = match &config.peer_tls {
            Some(files) => Some(ReloadableTls::new(files.clone(), ClientAuth::Required, vec![b"h2"])?),
            None => None,
        };
        let mut cluster_config = ClusterConfig::new(NodeInfo {
            name: config.node_id.clone(),
            peer_addr: config
                .advertise_peer_addr
                .clone()
                .unwrap_or_else(|| peer_addr.to_string()),
            client_addr: advertise,
        });
        cluster_config.join = config.join.clone();
        cluster_config.bootstrap_expect = config.bootstrap_expect;
        cluster_config.fsync = config.fsync;
        cluster_config.partition = partition;
        cluster_config.peer_tls = match &config.peer_tls {
            Some(files) => Some(peer_client_tls(files)?),
            None => None,
        };
        let cluster = Cluster::start(cluster_config, node.clone()).await?;
        let peer_server = {
            let token = shutdown.clone();
            let server = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(16 << 20))
                .add_service(PeerService::new(cluster.clone()).into_server());
            match &peer_tls {
                None => {
                    let incoming = tonic::transport::server::TcpIncoming::from(peer_listener).with_nodelay(Some(true));
                    tokio::spawn(async move {
                        server
                            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                            .await
                            .map_err(|e| e.to_string())
                    })
                }
                Some(tls) => {
                    let conns = tls::accept_loop(peer_listener, tls.clone(), token.clone());
                    let incoming = ReceiverStream::new(conns).map(Ok::<_, std::io::Error>);
                    tokio::spawn(async move {
                        server
                            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                            .await
                            .map_err(|e| e.to_string())
                    })
                }
            }
        };
        let membership = cluster.spawn_membership();

        let (health, health_service) = tonic_health::server::health_reporter();
        // Both reflection versions: grpcurl before 1.9 speaks only v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| AgentError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| AgentError::Reflection(e.to_string()))?;
        let routes = tonic::service::Routes::new(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(health_service)
            .add_service(ClusterAdmin::new(cluster.clone(), auth.clone()).into_server())
            .add_service(
                LogService::new(cluster.clone(), auth.clone(), metrics.clone(), shutdown.clone()).into_server(),
            );

        let grpc = {
            let token = shutdown.clone();
            // Keepalives find clients that vanished without closing, so their
            // tail-following streams do not park forever.
            let server = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .tcp_keepalive(Some(Duration::from_secs(60)))
                .layer(api::observe::GrpcObserveLayer::new(metrics.clone()))
                .add_routes(routes);
            match &client_tls {
                None => {
                    let incoming =
                        tonic::transport::server::TcpIncoming::from(client_listener).with_nodelay(Some(true));
                    tokio::spawn(async move {
                        server
                            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                            .await
                            .map_err(|e| e.to_string())
                    })
                }
                Some(tls) => {
                    let conns = tls::accept_loop(client_listener, tls.clone(), token.clone());
                    let incoming = ReceiverStream::new(conns).map(Ok::<_, std::io::Error>);
                    tokio::spawn(async move {
                        server
                            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                            .await
                            .map_err(|e| e.to_string())
                    })
                }
            }
        };

        let http_state = HttpState {
            cluster: cluster.clone(),
            node: node.clone(),
            auth: auth.clone(),
            metrics: metrics.clone(),
        };
        let http = {
            use axum::serve::ListenerExt;
            let token = shutdown.clone();
            let app = api::http::router(http_state);
            match &http_tls {
                None => {
                    let listener = http_listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    tokio::spawn(async move {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(token.cancelled_owned())
                            .await
                            .map_err(|e| e.to_string())
                    })
                }
                Some(tls) => {
                    let conns = tls::accept_loop(http_listener, tls.clone(), token.clone());
                    tokio::spawn(api::http::serve_tls(conns, app, token))
                }
            }
        };

        let mut background = vec![membership];
        let retention = config.retention();
        if !retention.is_unlimited() {
            let (cluster, token) = (cluster.clone(), shutdown.clone());
            background.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = cluster.apply_retention(&retention).await {
                        tracing::error!(cause = %e, "retention failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(RETENTION_PERIOD) => {}
                        _ = token.cancelled() => return,
                    }
                }
            }));
        }

        if client_tls.is_some() || config.acl.is_some() {
            let reloadable: Vec<Arc<ReloadableTls>> = client_tls.iter().chain(http_tls.iter()).cloned().collect();
            background.push(tokio::spawn(reload_loop(
                reloadable,
                auth.clone(),
                config.tls_reload_interval,
                shutdown.clone(),
            )));
        }

        background.push(tokio::spawn(readiness_loop(
            cluster.clone(),
            health.clone(),
            shutdown.clone(),
        )));
        if config.join.is_empty() && config.bootstrap_expect <= 1 {
            // A lone node elects itself at once: return when it serves.
            let mut metrics = cluster.raft().metrics();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !cluster.is_ready() {
                if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                    tracing::warn!("the single-node cluster is not ready after 10s");
                    break;
                }
            }
            if cluster.is_ready() {
                set_health(&health, true).await;
            }
        }
        tracing::info!(
            client_addr = %client_addr,
            http_addr = %http_addr,
            peer_addr = %peer_addr,
            node_id = %config.node_id,
            first_offset = log.first_offset(),
            next_offset = log.next_offset(),
            "sidelog agent serving"
        );
        Ok(Agent {
            client_addr,
            http_addr,
            peer_addr,
            node,
            cluster,
            shutdown,
            health,
            servers: vec![("gRPC", grpc), ("HTTP", http), ("peer", peer_server)],
            background,
            grace: config.shutdown_grace,
        })
    }

    pub fn node(&self) -> &Arc<LogNode> {
        &self.node
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// A token that is cancelled when the agent begins shutting down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until `signal` resolves or a server fails, then shuts down.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
        let failed = {
            let watch = futures_util::future::select_all(self.servers.iter_mut().map(|(_, h)| h));
            tokio::select! {
                _ = signal => None,
                (res, i, _) = watch => Some((i, res)),
            }
        };
        if let Some((i, res)) = failed {
            let what = self.servers.remove(i).0;
            let message = match res {
                Ok(Ok(())) => "stopped unexpectedly".to_owned(),
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            };
            self.shutdown().await?;
            return Err(AgentError::Serve { what, message });
        }
        self.shutdown().await
    }

    /// Graceful shutdown: NOT_SERVING, stop accepting, finish in-flight
    /// requests (bounded by the grace period), fsync, close.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        self.stop(true).await
    }

    /// Stops without leaving the cluster, as a crash or a kill would (the
    /// node stays a voter); the log is still closed cleanly.
    pub async fn stop_without_leave(self) -> Result<(), AgentError> {
        self.stop(false).await
    }

    async fn stop(self, leave: bool) -> Result<(), AgentError> {
        set_health(&self.health, false).await;
        if leave {
            self.cluster.leave(self.grace).await;
        }
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + self.grace;
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
        for b in self.background {
            let _ = b.await;
        }
        self.cluster.shutdown().await;
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

/// Keeps gRPC health in step with readiness.
async fn readiness_loop(cluster: Arc<Cluster>, health: tonic_health::server::HealthReporter, token: CancellationToken) {
    let mut metrics = cluster.raft().metrics();
    let mut last = None;
    loop {
        let ready = cluster.is_ready();
        if last != Some(ready) {
            set_health(&health, ready).await;
            tracing::info!(ready, "readiness changed");
            last = Some(ready);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            // Storage health is not in the Raft metrics.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = token.cancelled() => return,
        }
    }
}

/// The client side of peer mutual TLS.
fn peer_client_tls(files: &tls::TlsFiles) -> Result<tonic::transport::ClientTlsConfig, AgentError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| AgentError::PeerTls(format!("{}: {e}", p.display())));
    let mut c = ClientTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.ca {
        c = c.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    Ok(c)
}

/// Picks up rotated certificates and policies: checks the files every
/// `period` and at once on SIGHUP. A bad new file keeps the old config.
async fn reload_loop(
    tls: Vec<Arc<ReloadableTls>>,
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
        auth.reload_if_changed();
    }
}
