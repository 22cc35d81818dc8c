//! The Rust client the CLI and tests use: a thin, typed layer over the
//! `log.v1` gRPC API with sensible connection settings.

use std::time::Duration;

use bytes::Bytes;
use tonic::{
    Status, Streaming,
    transport::{Channel, Endpoint},
};

use crate::api::pb::{self, log_client::LogClient};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {addr:?}: {message}")]
    Address { addr: String, message: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A connection to one sidelog agent. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    inner: LogClient<Channel>,
}

/// `127.0.0.1:8400` or `http://127.0.0.1:8400` → a URI.
fn uri_of(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

impl Client {
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        let endpoint = Endpoint::from_shared(uri_of(addr))
            .map_err(|e| ClientError::Address {
                addr: addr.to_owned(),
                message: e.to_string(),
            })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30));
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let inner = LogClient::new(channel)
            .max_decoding_message_size(512 << 20)
            .max_encoding_message_size(512 << 20);
        Ok(Client { inner })
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
            .produce_batch(pb::ProduceBatchRequest { records })
            .await?;
        Ok(resp.into_inner().offsets)
    }

    pub async fn consume(&mut self, offset: u64) -> Result<pb::Record, Status> {
        let resp = self.inner.consume(pb::ConsumeRequest { offset }).await?;
        resp.into_inner()
            .record
            .ok_or_else(|| Status::internal("response without a record"))
    }

    /// Every record from `offset`, then new ones as they are committed.
    pub async fn consume_stream(
        &mut self,
        offset: u64,
    ) -> Result<Streaming<pb::ConsumeResponse>, Status> {
        Ok(self
            .inner
            .consume_stream(pb::ConsumeRequest { offset })
            .await?
            .into_inner())
    }

    pub async fn get_servers(&mut self) -> Result<Vec<pb::Server>, Status> {
        Ok(self
            .inner
            .get_servers(pb::GetServersRequest {})
            .await?
            .into_inner()
            .servers)
    }
}
