//! The Rust clients the CLI and tests use.
//!
//! - [`Client`]: one connection to one agent, a thin typed layer over the
//!   `log.v1` gRPC API with sensible connection settings, plaintext or TLS.
//!   The agent forwards writes to the leader for it.
//! - [`RoutedClient`]: the book's resolver and picker: learns the servers
//!   through `GetServers`, sends writes to the leader itself, spreads reads
//!   over the followers, and retries through elections and lost nodes.

mod backoff;
mod routed;
mod servers;

pub use backoff::Backoff;
pub use routed::{RoutedClient, RoutingOptions};
pub use servers::ServerSet;

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use tonic::{
    Status, Streaming,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::pb::log::{self as pb, log_client::LogClient};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {addr:?}: {message}")]
    Address { addr: String, message: String },
    #[error("cannot read {}: {source}", path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup for {addr} failed: {source}")]
    Tls {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no agent answered (tried {tried}): {cause}")]
    NoServers { tried: String, cause: String },
    /// An agent answered, and refused: the named log does not exist, or
    /// its name is invalid.
    #[error("{0}")]
    Refused(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A failed call in the user's terms: what went wrong, with the cause
/// behind a transport error (a TLS handshake, a refused connection), each
/// said once, and a hint at the likely fix. `tls` is what the client used.
pub fn describe_status(status: &tonic::Status, tls: Option<&ClientTls>) -> String {
    use std::error::Error;
    let mut parts: Vec<String> = Vec::new();
    let mut push = |p: String| {
        let p = p.trim().to_owned();
        if !p.is_empty() && !parts.iter().any(|q| q.contains(&p)) {
            parts.retain(|q| !p.contains(q.as_str()));
            parts.push(p);
        }
    };
    push(status.message().to_owned());
    let mut source = status.source();
    while let Some(e) = source {
        push(e.to_string());
        source = e.source();
    }
    let text = parts.join(": ");
    let lower = text.to_ascii_lowercase();
    let dropped = [
        "broken pipe",
        "reset by peer",
        "connection closed",
        "frame",
        "http2",
        "h2 protocol",
    ]
    .iter()
    .any(|w| lower.contains(w));
    let hint = match status.code() {
        tonic::Code::Unauthenticated => " (the agent wants a client certificate: --tls-cert and --tls-key)",
        tonic::Code::PermissionDenied => " (the agent's ACL does not allow this)",
        _ if lower.contains("certificate") => {
            " (a TLS problem: check --tls-ca, --tls-cert, --tls-key and the server name)"
        }
        _ if dropped && tls.is_none() => " (the agent's port may use TLS: give --tls-ca)",
        _ if dropped && tls.is_some_and(|t| t.cert.is_some()) => {
            " (the agent closed the connection: does its --tls-ca trust this client certificate?)"
        }
        _ => "",
    };
    format!("{:?}: {text}{hint}", status.code())
}

/// TLS settings for a client: the CA that signed the server's certificate
/// and, for mutual TLS, this client's certificate and key.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify in the server certificate [default: the address's host].
    pub domain: Option<String>,
}

/// A connection to one sidelog agent. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    inner: LogClient<Channel>,
    channel: Channel,
    /// The named log the calls are for (empty: `default`).
    log: String,
}

/// `127.0.0.1:8400` or `http://127.0.0.1:8400` → a URI.
fn uri_of(addr: &str, tls: bool) -> String {
    match (addr.contains("://"), tls) {
        (true, _) => addr.to_owned(),
        (false, false) => format!("http://{addr}"),
        (false, true) => format!("https://{addr}"),
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::TlsFile {
        path: path.clone(),
        source,
    })
}

impl Client {
    /// Connects over plaintext.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Self::connect_with(addr, None).await
    }

    /// Connects, over TLS when `tls` is given.
    pub async fn connect_with(addr: &str, tls: Option<&ClientTls>) -> Result<Client, ClientError> {
        let endpoint = Self::endpoint(addr, tls)?;
        let channel = endpoint.connect().await.map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
        Ok(Self::from_channel(channel))
    }

    /// A client that connects on first use (and reconnects after a
    /// failure): connection errors surface as UNAVAILABLE from the calls.
    pub fn lazy(addr: &str, tls: Option<&ClientTls>) -> Result<Client, ClientError> {
        Ok(Self::from_channel(Self::endpoint(addr, tls)?.connect_lazy()))
    }

    fn from_channel(channel: Channel) -> Client {
        let inner = LogClient::new(channel.clone())
            .max_decoding_message_size(512 << 20)
            .max_encoding_message_size(512 << 20);
        Client {
            inner,
            channel,
            log: String::new(),
        }
    }

    fn endpoint(addr: &str, tls: Option<&ClientTls>) -> Result<Endpoint, ClientError> {
        let mut endpoint = Endpoint::from_shared(uri_of(addr, tls.is_some()))
            .map_err(|e| ClientError::Address {
                addr: addr.to_owned(),
                message: e.to_string(),
            })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30));
        if let Some(t) = tls {
            let mut config = ClientTlsConfig::new();
            if let Some(ca) = &t.ca {
                config = config.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(domain) = &t.domain {
                config = config.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(config).map_err(|source| ClientError::Tls {
                addr: addr.to_owned(),
                source,
            })?;
        }
        Ok(endpoint)
    }

    /// The cluster admin service of the same agent.
    pub fn cluster(&self) -> crate::pb::sidelog::cluster_client::ClusterClient<Channel> {
        crate::pb::sidelog::cluster_client::ClusterClient::new(self.channel.clone())
    }

    /// The same connection, for the named log `log` (empty: `default`).
    pub fn with_log(mut self, log: &str) -> Client {
        self.log = log.to_owned();
        self
    }

    /// The named log the calls are for.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// The generated client, for calls this type does not wrap.
    pub fn raw(&self) -> LogClient<Channel> {
        self.inner.clone()
    }

    /// Produces one record; returns its offset once it is committed.
    pub async fn produce(&mut self, value: impl Into<Bytes>) -> Result<u64, Status> {
        let record = pb::Record {
            value: value.into(),
            ..Default::default()
        };
        let resp = self
            .inner
            .produce(pb::ProduceRequest {
                record: Some(record),
                log: self.log.clone(),
            })
            .await?;
        Ok(resp.into_inner().offset)
    }

    /// Produces records atomically in one call; returns their offsets.
    pub async fn produce_batch(&mut self, values: Vec<Bytes>) -> Result<Vec<u64>, Status> {
        let records = values
            .into_iter()
            .map(|value| pb::Record {
                value,
                ..Default::default()
            })
            .collect();
        let resp = self
            .inner
            .produce_batch(pb::ProduceBatchRequest {
                records,
                log: self.log.clone(),
            })
            .await?;
        Ok(resp.into_inner().offsets)
    }

    pub async fn consume(&mut self, offset: u64) -> Result<pb::Record, Status> {
        let resp = self
            .inner
            .consume(pb::ConsumeRequest {
                offset,
                linearizable: false,
                log: self.log.clone(),
            })
            .await?;
        resp.into_inner()
            .record
            .ok_or_else(|| Status::internal("response without a record"))
    }

    /// Every record from `offset`, then new ones as they are committed.
    pub async fn consume_stream(&mut self, offset: u64) -> Result<Streaming<pb::ConsumeResponse>, Status> {
        Ok(self
            .inner
            .consume_stream(pb::ConsumeRequest {
                offset,
                linearizable: false,
                log: self.log.clone(),
            })
            .await?
            .into_inner())
    }

    pub async fn get_servers(&mut self) -> Result<Vec<pb::Server>, Status> {
        Ok(self
            .inner
            .get_servers(pb::GetServersRequest { log: self.log.clone() })
            .await?
            .into_inner()
            .servers)
    }
}
