//! Wiring: opens the log, binds the listeners, starts the services and the
//! retention loop, and shuts everything down in order.
//!
//! Start order: open (and recover) the log, bind every listener (so a bad
//! address fails before anything serves), start serving, then report
//! SERVING. Shutdown order: NOT_SERVING, stop accepting and let in-flight
//! requests finish within the grace period, fsync, close.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::{
    api::{self, LogService, http::HttpState},
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
    node: Arc<LogNode>,
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

        let node = Arc::new(LogNode::new(
            log.clone(),
            config.fsync,
            config.max_record_bytes,
            config.node_id.clone(),
            advertise,
        ));
        // Detached: it ends by itself when the node is dropped.
        drop(node.spawn_commit_follower());
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
            .add_service(LogService::new(node.clone(), auth.clone(), metrics.clone(), shutdown.clone()).into_server());

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

        let mut background = Vec::new();
        let retention = config.retention();
        if !retention.is_unlimited() {
            let (log, token) = (log.clone(), shutdown.clone());
            background.push(tokio::spawn(async move {
                loop {
                    let l = log.clone();
                    let r = retention.clone();
                    match tokio::task::spawn_blocking(move || l.apply_retention(&r, u64::MAX)).await {
                        Ok(Err(e)) => tracing::error!(cause = %e, "retention failed"),
                        Err(e) => tracing::error!(cause = %e, "retention task panicked"),
                        Ok(Ok(_)) => {}
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

        health.set_service_status("", ServingStatus::Serving).await;
        health.set_serving::<api::pb::log_server::LogServer<LogService>>().await;
        tracing::info!(
            client_addr = %client_addr,
            http_addr = %http_addr,
            node_id = %config.node_id,
            first_offset = log.first_offset(),
            next_offset = log.next_offset(),
            "sidelog agent serving"
        );
        Ok(Agent {
            client_addr,
            http_addr,
            node,
            shutdown,
            health,
            servers: vec![("gRPC", grpc), ("HTTP", http)],
            background,
            grace: config.shutdown_grace,
        })
    }

    pub fn node(&self) -> &Arc<LogNode> {
        &self.node
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
        self.health.set_service_status("", ServingStatus::NotServing).await;
        self.health
            .set_not_serving::<api::pb::log_server::LogServer<LogService>>()
            .await;
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
