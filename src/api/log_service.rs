//! The `log.v1.Log` gRPC service.

use std::{pin::Pin, sync::Arc};

use futures_util::{FutureExt, Stream, StreamExt, stream::FuturesOrdered};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::pb::{self, log_server::Log as LogApi};
use crate::{
    cluster::{Cluster, catalog::DEFAULT_LOG, host::Host},
    node::NodeError,
    security::{ACT_ADMIN, ACT_CONSUME, ACT_PRODUCE, Authorizer, PeerInfo},
    telemetry::Metrics,
};

/// Responses a ConsumeStream may have queued for a slow client. Together
/// with the batch size below this bounds the memory one stream can hold.
const STREAM_QUEUE: usize = 64;
const STREAM_BATCH_RECORDS: usize = 256;
const STREAM_BATCH_BYTES: usize = 1 << 20;
/// ProduceStream requests whose commit may be awaited at once.
const PRODUCE_STREAM_WINDOW: usize = 1024;

#[derive(Clone)]
pub struct LogService {
    host: Arc<Host>,
    /// `--max-record-bytes` of the default log (the decoder's bound).
    max_record_bytes: u64,
    auth: Arc<Authorizer>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// One permit per open ConsumeStream (`--max-consume-streams`): each
    /// holds a task and up to a queue of records, so their number is bounded.
    streams: Arc<tokio::sync::Semaphore>,
    max_streams: usize,
}

/// Default bound on open ConsumeStreams (see `config::Limits`).
const DEFAULT_MAX_STREAMS: usize = 1024;

impl LogService {
    pub fn new(host: Arc<Host>, auth: Arc<Authorizer>, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        LogService {
            max_record_bytes: host.default_group().node().max_record_bytes(),
            host,
            auth,
            metrics,
            shutdown,
            streams: Arc::new(tokio::sync::Semaphore::new(DEFAULT_MAX_STREAMS)),
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }

    /// Bounds the number of ConsumeStreams open at once.
    pub fn with_max_consume_streams(mut self, max: usize) -> Self {
        self.streams = Arc::new(tokio::sync::Semaphore::new(max));
        self.max_streams = max;
        self
    }

    /// Refuses a write on a follower when the caller asked for the leader
    /// only (see `convert::ROUTE_KEY`), unless the leader's client address
    /// is ours too (sidecars on loopback: redirecting would loop);
    /// otherwise counts what will be forwarded.
    fn route<T>(&self, cluster: &Cluster, request: &Request<T>, records: u64) -> Result<(), Status> {
        if cluster.is_leader() {
            return Ok(());
        }
        let leader_only = request
            .metadata()
            .get(super::convert::ROUTE_KEY)
            .is_some_and(|v| v.as_bytes() == b"leader");
        if leader_only && !cluster.leader_shares_our_client_addr() {
            return Err(cluster.not_leader().into());
        }
        self.metrics.records_forwarded.inc_by(records);
        Ok(())
    }

    fn count_in(&self, records: u64, bytes: usize) {
        self.metrics.records_in.inc_by(records);
        self.metrics.bytes_in.inc_by(bytes as u64);
    }

    /// Checks the caller (the client certificate's subject, with TLS) may
    /// do `action` on the log `log` (empty: `default`).
    fn authorize<T>(&self, request: &Request<T>, log: &str, action: &'static str) -> Result<(), Status> {
        let peer = request.extensions().get::<PeerInfo>();
        if let Some(subject) = peer.and_then(|p| p.subject.as_deref()) {
            tracing::Span::current().record("subject", subject);
        }
        self.auth.check_on(peer, object(log), action).map_err(Status::from)
    }

    /// The group of the log a request names, once the caller may do
    /// `action` on it.
    async fn target<T>(&self, request: &Request<T>, log: &str, action: &'static str) -> Result<Arc<Cluster>, Status> {
        self.authorize(request, log, action)?;
        if !log.is_empty() {
            tracing::Span::current().record("log", log);
        }
        if action == ACT_PRODUCE {
            let peer = request.extensions().get::<PeerInfo>();
            let may_create = self.auth.check_on(peer, object(log), ACT_ADMIN).is_ok();
            return Ok(self.host.group_or_create(log, may_create).await?);
        }
        Ok(self.host.group(log)?)
    }

    pub fn into_server(self) -> pb::log_server::LogServer<Self> {
        // Leave room above the record limit for framing and batches, so an
        // oversize record reaches our check and gets INVALID_ARGUMENT.
        let limit = (self.max_record_bytes as usize)
            .saturating_mul(2)
            .saturating_add(1 << 20)
            .max(4 << 20);
        pb::log_server::LogServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

/// The ACL object of a log name (empty: `default`).
fn object(log: &str) -> &str {
    if log.is_empty() { DEFAULT_LOG } else { log }
}

fn value_of(req: pb::ProduceRequest) -> Result<bytes::Bytes, Status> {
    req.record
        .map(|r| r.value)
        .ok_or_else(|| Status::invalid_argument("ProduceRequest.record is required"))
}

/// Why a produce stream's chunk stopped taking requests.
enum StreamStop {
    /// The client closed its side.
    End,
    /// A request without a record, one too large, one tonic could not
    /// decode, or a broken transport.
    Invalid(Status),
}

/// Produce-stream requests that arrived together, submitted as one proposal.
#[derive(Default)]
struct StreamChunk {
    values: Vec<bytes::Bytes>,
    bytes: usize,
    stop: Option<StreamStop>,
}

impl StreamChunk {
    /// Records and bytes one chunk takes at most (the dispatcher bounds its
    /// entries alike).
    const MAX_RECORDS: usize = 256;
    const MAX_BYTES: usize = 256 << 10;

    fn wants_more(&self) -> bool {
        self.values.len() < Self::MAX_RECORDS && self.bytes < Self::MAX_BYTES
    }

    fn take(&mut self, req: Option<Result<pb::ProduceRequest, Status>>, node: &crate::node::LogNode, log: &str) {
        match req {
            Some(Ok(req)) if object(&req.log) != object(log) => {
                self.stop = Some(StreamStop::Invalid(Status::invalid_argument(format!(
                    "a ProduceStream writes one log: this stream writes {:?}, a request named {:?}",
                    object(log),
                    object(&req.log)
                ))))
            }
            Some(Ok(req)) => match value_of(req).and_then(|v| node.check_size(&v).map(|()| v).map_err(Status::from)) {
                Ok(v) => {
                    self.bytes += v.len();
                    self.values.push(v);
                }
                Err(e) => self.stop = Some(StreamStop::Invalid(e)),
            },
            // A message tonic could not decode (too large, malformed) or a
            // broken transport: answered after the records before it, like a
            // bad record, so their acknowledgements are not lost.
            Some(Err(status)) if status.code() == tonic::Code::OutOfRange => {
                // tonic's "decoded message length too large": a bad request,
                // not a read past the end.
                self.stop = Some(StreamStop::Invalid(Status::invalid_argument(format!(
                    "{}: a record may be at most {} bytes (--max-record-bytes)",
                    status.message(),
                    node.max_record_bytes()
                ))))
            }
            Some(Err(status)) => self.stop = Some(StreamStop::Invalid(status)),
            None => self.stop = Some(StreamStop::End),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// How long a remote read waits for new records before asking again.
const REMOTE_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// The pause before asking a replica again after an empty or failed read.
const REMOTE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

impl LogService {
    /// A ConsumeStream on a sidecar attached without a log: long polls of
    /// its home replica (`Peer/Read`), in order, one batch at a time. A
    /// home that is behind the stream (a new home after a membership
    /// change) is waited for; an unavailable one is retried for up to the
    /// write timeout; once this sidecar holds a caught-up replica itself,
    /// the polls read it instead.
    async fn consume_stream_remote(
        &self,
        cluster: Arc<Cluster>,
        request: pb::ConsumeRequest,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Response<BoxStream<pb::ConsumeResponse>>, Status> {
        // The first read answers out-of-range (and a linearizable read's
        // barrier) as a status on the call.
        let (first, _, _) = cluster
            .read_records(
                request.offset,
                STREAM_BATCH_RECORDS,
                STREAM_BATCH_BYTES,
                std::time::Duration::ZERO,
                request.linearizable,
            )
            .await?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        let patience = cluster.write_timeout();
        let mut next = request.offset;
        tokio::spawn(async move {
            let _permit = permit;
            metrics.consume_streams.inc();
            let _open = scopeguard(|| {
                metrics.consume_streams.dec();
            });
            let mut batch = first;
            let mut failing_since: Option<std::time::Instant> = None;
            loop {
                if !send_records(batch, &mut next, &tx, &shutdown, &metrics).await {
                    return;
                }
                let read = cluster.read_records(next, STREAM_BATCH_RECORDS, STREAM_BATCH_BYTES, REMOTE_POLL, false);
                let result = tokio::select! {
                    r = read => r,
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => {
                        let _ = tx.try_send(Err(Status::unavailable("server is shutting down")));
                        return;
                    }
                };
                batch = match result {
                    Ok((b, _, _)) => {
                        failing_since = None;
                        b
                    }
                    // Behind us, not past us: that replica has not
                    // committed `next` yet.
                    Err(NodeError::OutOfRange { first, .. }) if next >= first => Vec::new(),
                    Err(e @ NodeError::Unavailable(_))
                        if failing_since.get_or_insert_with(std::time::Instant::now).elapsed() < patience =>
                    {
                        tracing::debug!(cause = %e, "remote read failed; retrying");
                        Vec::new()
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    // Nothing new: the long poll already waited, unless the
                    // answer came early (a lagging or failing replica).
                    tokio::select! {
                        _ = tokio::time::sleep(REMOTE_RETRY) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl LogApi for LogService {
    async fn produce(&self, request: Request<pb::ProduceRequest>) -> Result<Response<pb::ProduceResponse>, Status> {
        let cluster = self.target(&request, &request.get_ref().log, ACT_PRODUCE).await?;
        self.route(&cluster, &request, 1)?;
        let value = value_of(request.into_inner())?;
        let offset = cluster.produce(std::slice::from_ref(&value)).await?[0];
        self.count_in(1, value.len());
        tracing::Span::current().record("offset", offset);
        Ok(Response::new(pb::ProduceResponse { offset }))
    }

    async fn produce_batch(
        &self,
        request: Request<pb::ProduceBatchRequest>,
    ) -> Result<Response<pb::ProduceBatchResponse>, Status> {
        let cluster = self.target(&request, &request.get_ref().log, ACT_PRODUCE).await?;
        self.route(&cluster, &request, request.get_ref().records.len() as u64)?;
        let values: Vec<bytes::Bytes> = request.into_inner().records.into_iter().map(|r| r.value).collect();
        tracing::Span::current().record("records", values.len());
        let offsets = cluster.produce(&values).await?;
        self.count_in(values.len() as u64, values.iter().map(|v| v.len()).sum());
        tracing::Span::current().record("offset", offsets[0]);
        Ok(Response::new(pb::ProduceBatchResponse { offsets }))
    }

    async fn consume(&self, request: Request<pb::ConsumeRequest>) -> Result<Response<pb::ConsumeResponse>, Status> {
        let cluster = self.target(&request, &request.get_ref().log, ACT_CONSUME).await?;
        let request = request.into_inner();
        let record = cluster.read(request.offset, request.linearizable).await?;
        self.metrics.records_out.inc();
        self.metrics.bytes_out.inc_by(record.value.len() as u64);
        Ok(Response::new(pb::ConsumeResponse {
            record: Some(record.into()),
        }))
    }

    type ConsumeStreamStream = BoxStream<pb::ConsumeResponse>;

    async fn consume_stream(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<Self::ConsumeStreamStream>, Status> {
        // Subscribed before the right is checked: a reload while the
        // stream opens (a read barrier may wait) is not missed.
        let changes = self.auth.changes();
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let log = object(&request.get_ref().log).to_owned();
        let resp = self.open_consume_stream(request).await?;
        Ok(resp.map(|s| revocable(s, changes, self.auth.clone(), peer, log, ACT_CONSUME)))
    }

    type ProduceStreamStream = BoxStream<pb::ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        // The producer task checks the right again on every policy reload
        // (see `open_produce_stream`).
        self.open_produce_stream(request).await
    }

    async fn get_servers(
        &self,
        request: Request<pb::GetServersRequest>,
    ) -> Result<Response<pb::GetServersResponse>, Status> {
        // Membership is no secret to any authenticated client (the book's
        // resolver needs it before it can produce or consume).
        self.auth
            .authenticate(request.extensions().get::<PeerInfo>())
            .map_err(Status::from)?;
        let log = request.get_ref().log.clone();
        if !log.is_empty() {
            // Which logs exist, and who leads them, is for those who may read them.
            self.authorize(&request, &log, ACT_CONSUME)?;
        }
        let mut servers = match self.host.group(&log) {
            Ok(group) => group.servers(),
            // A log the first write will create (--auto-create-logs): any
            // member takes that write.
            Err(NodeError::NotFound(_)) if self.host.settings().auto_create => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        if servers.is_empty() {
            // A log just created whose group has not formed yet: any member
            // takes its writes (they wait for its leader).
            servers = self.host.default_group().servers();
            for s in &mut servers {
                s.is_leader = false;
            }
        }
        let servers = servers
            .into_iter()
            .map(|s| pb::Server {
                id: s.id,
                rpc_addr: s.rpc_addr,
                is_leader: s.is_leader,
            })
            .collect();
        Ok(Response::new(pb::GetServersResponse { servers }))
    }
}

/// Runs `f` when dropped (however the task ends).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl LogService {
    async fn open_consume_stream(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<BoxStream<pb::ConsumeResponse>>, Status> {
        let cluster = self.target(&request, &request.get_ref().log, ACT_CONSUME).await?;
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many open ConsumeStreams (limit {}, --max-consume-streams): retry later",
                self.max_streams
            ))
        })?;
        let request = request.into_inner();
        if cluster.reads_remote().is_some() {
            return self.consume_stream_remote(cluster, request, permit).await;
        }
        if request.linearizable {
            cluster.read_barrier().await?;
        }
        let mut next = request.offset;
        let node = cluster.node().clone();
        // Fail fast, as a status on the call, for an offset that is out of range now.
        node.read_batch(next, 0, 0)?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        // A deleted log ends its streams.
        let gone = cluster.stopped();
        let shutdown = self.shutdown.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.consume_streams.inc();
            let _open = scopeguard(|| {
                metrics.consume_streams.dec();
            });
            let mut commit = node.subscribe_commit();
            loop {
                let batch = match node
                    .read_batch_off_runtime(next, STREAM_BATCH_RECORDS, STREAM_BATCH_BYTES)
                    .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        // e.g. retention removed records this slow reader had not read.
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    // Caught up: sleep until the commit watermark moves, the
                    // client goes away, or the server shuts down. No polling.
                    commit.borrow_and_update();
                    if node.committed() > next {
                        continue;
                    }
                    tokio::select! {
                        changed = commit.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                        _ = gone.cancelled(), if !shutdown.is_cancelled() => {
                            let _ = tx.try_send(Err(Status::not_found("the log was deleted")));
                            return;
                        }
                        _ = shutdown.cancelled() => {
                            let _ = tx.try_send(Err(Status::unavailable("server is shutting down")));
                            return;
                        }
                    }
                    continue;
                }
                if !send_records(batch, &mut next, &tx, &shutdown, &metrics).await {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// A ProduceStream's log, once the caller may produce to it (and this
    /// node leads it, or shares the leader's address, when the caller
    /// asked for the leader only).
    async fn stream_target(
        &self,
        peer: Option<&PeerInfo>,
        log: &str,
        leader_only: bool,
    ) -> Result<Arc<Cluster>, Status> {
        self.auth
            .check_on(peer, object(log), ACT_PRODUCE)
            .map_err(Status::from)?;
        let may_create = self.auth.check_on(peer, object(log), ACT_ADMIN).is_ok();
        let cluster = self.host.group_or_create(log, may_create).await?;
        if leader_only && !cluster.is_leader() && !cluster.leader_shares_our_client_addr() {
            return Err(cluster.not_leader().into());
        }
        Ok(cluster)
    }

    async fn open_produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<BoxStream<pb::ProduceResponse>>, Status> {
        let mut changes = self.auth.changes();
        let auth = self.auth.clone();
        let peer = request.extensions().get::<PeerInfo>().cloned();
        self.auth.authenticate(peer.as_ref()).map_err(Status::from)?;
        let leader_only = request
            .metadata()
            .get(super::convert::ROUTE_KEY)
            .is_some_and(|v| v.as_bytes() == b"leader");
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let this = self.clone();
        let metrics = self.metrics.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Requests are submitted in arrival order, the ones already
            // received together (one proposal, one commit wait for the
            // chunk); commits are awaited concurrently and answered in order,
            // one response per record.
            //
            // The stream's log is the one its first request names: the
            // right to it and the leader-only route are checked then (a
            // leader-aware client reopens its stream elsewhere when
            // leadership moves); a refusal is the stream's first answer.
            let mut first = match inbound.next().await {
                Some(Ok(first)) => Some(first),
                Some(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                None => return,
            };
            let log = first.as_ref().map(|f| f.log.clone()).unwrap_or_default();
            let cluster = match this.stream_target(peer.as_ref(), &log, leader_only).await {
                Ok(c) => c,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let mut waiting = FuturesOrdered::new();
            let mut in_flight = 0usize;
            let mut inbound_open = true;
            let mut policy_live = true;
            loop {
                tokio::select! {
                    biased;
                    // A policy reload that took the right away: nothing more
                    // is read or appended; what was submitted is answered,
                    // then PERMISSION_DENIED in the next record's place.
                    changed = changes.changed(), if inbound_open && policy_live => {
                        if changed.is_err() {
                            policy_live = false;
                        } else if let Err(e) = auth.check_on(peer.as_ref(), object(&log), ACT_PRODUCE) {
                            tracing::info!(cause = %e, "a policy reload revoked an open ProduceStream's right");
                            inbound_open = false;
                            let status = Status::from(e);
                            waiting.push_back(Box::pin(async move { (1usize, Err::<u64, Status>(status)) })
                                as Pin<Box<dyn Future<Output = (usize, Result<u64, Status>)> + Send>>);
                            in_flight += 1;
                        }
                    },
                    req = async { match first.take() { Some(f) => Some(Ok(f)), None => inbound.next().await } },
                        if inbound_open && in_flight < PRODUCE_STREAM_WINDOW => {
                        let mut chunk = StreamChunk::default();
                        chunk.take(req, cluster.node(), &log);
                        while chunk.stop.is_none() && chunk.wants_more() {
                            match inbound.next().now_or_never() {
                                Some(req) => chunk.take(req, cluster.node(), &log),
                                None => break,
                            }
                        }
                        if !chunk.values.is_empty() {
                            let n = chunk.values.len();
                            let bytes = chunk.bytes as u64;
                            let pending = cluster.submit_many(std::mem::take(&mut chunk.values)).await;
                            let failed = pending.is_err();
                            let metrics = metrics.clone();
                            in_flight += n;
                            waiting.push_back(Box::pin(async move {
                                let offset = async { pending?.await }.await.map_err(Status::from);
                                if offset.is_ok() {
                                    metrics.records_in.inc_by(n as u64);
                                    metrics.bytes_in.inc_by(bytes);
                                }
                                (n, offset)
                            }) as Pin<Box<dyn Future<Output = (usize, Result<u64, Status>)> + Send>>);
                            // The stream ends at the first rejected request:
                            // append nothing after it.
                            if failed {
                                inbound_open = false;
                            }
                        }
                        match chunk.stop {
                            None => {}
                            Some(StreamStop::End) => inbound_open = false,
                            // A bad record: answered in its place, after the
                            // records before it; nothing after it is appended.
                            Some(StreamStop::Invalid(status)) => {
                                inbound_open = false;
                                waiting.push_back(Box::pin(async move { (1, Err(status)) }));
                                in_flight += 1;
                            }
                        }
                    },
                    // A shutdown stops taking requests; what was submitted
                    // is still answered, then the stream ends.
                    () = shutdown.cancelled(), if inbound_open => inbound_open = false,
                    Some((n, result)) = waiting.next() => {
                        in_flight -= n;
                        match result {
                            Ok(base) => {
                                for i in 0..n as u64 {
                                    if tx.send(Ok(pb::ProduceResponse { offset: base + i })).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(status) => {
                                // Later groups of this stream may already be
                                // committed (a forward to a new leader after
                                // this one's refusal): the stream as a whole
                                // is then of unknown outcome, whatever this
                                // group's was.
                                let status = if waiting.is_empty() {
                                    status
                                } else {
                                    crate::api::convert::with_outcome(status, crate::node::Outcome::Unknown)
                                };
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends a ConsumeStream's records in order, moving `next` past each;
/// false once the stream is over (the client went away, or the server shuts
/// down, which the client is told). The queue is bounded: a slow client
/// makes this await, so the server holds at most STREAM_QUEUE responses for
/// it, and a client that stays connected but stops reading does not hold up
/// a graceful shutdown either.
async fn send_records(
    batch: Vec<crate::storage::Record>,
    next: &mut u64,
    tx: &mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> bool {
    for record in batch {
        *next = record.offset + 1;
        metrics.records_out.inc();
        metrics.bytes_out.inc_by(record.value.len() as u64);
        let response = Ok(pb::ConsumeResponse {
            record: Some(record.into()),
        });
        tokio::select! {
            sent = tx.send(response) => if sent.is_err() { return false },
            _ = shutdown.cancelled() => {
                let _ = tx.try_send(Err(Status::unavailable("server is shutting down")));
                return false;
            }
        }
    }
    true
}

/// Ends a stream with PERMISSION_DENIED once a policy reload takes the
/// caller's right to `action` away (checked again on every reload).
fn revocable<T: Send + 'static>(
    inner: BoxStream<T>,
    changes: tokio::sync::watch::Receiver<u64>,
    auth: Arc<Authorizer>,
    peer: Option<PeerInfo>,
    log: String,
    action: &'static str,
) -> BoxStream<T> {
    Box::pin(futures_util::stream::unfold(
        (inner, changes, auth, peer, log, false),
        move |(mut inner, mut changes, auth, peer, log, ended)| async move {
            if ended {
                return None;
            }
            loop {
                tokio::select! {
                    item = inner.next() => return item.map(|i| (i, (inner, changes, auth, peer, log, false))),
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // The policy can no longer change: just the stream.
                            return inner.next().await.map(|i| (i, (inner, changes, auth, peer, log, false)));
                        }
                        if let Err(e) = auth.check_on(peer.as_ref(), &log, action) {
                            tracing::info!(cause = %e, "a policy reload revoked an open stream's right");
                            return Some((Err(Status::from(e)), (inner, changes, auth, peer, log, true)));
                        }
                    }
                }
            }
        },
    ))
}
