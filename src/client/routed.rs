//! [`RoutedClient`]: the book's client-side discovery and load balancing.
//!
//! It starts from seed addresses (several, or one DNS name that resolves to
//! several), asks any of them for `GetServers`, and then talks to the
//! servers itself: writes go to the leader, marked leader-only so a
//! follower answers not-the-leader (naming the leader in metadata) instead
//! of forwarding; reads rotate over the followers. The server list is
//! refreshed on an interval and after any failure. UNAVAILABLE answers
//! (node down, election, not the leader) are retried with jittered
//! exponential backoff until `retry_for` runs out. When the leader's
//! advertised address fails from here, writes go to another server without
//! the leader-only mark (it forwards); when every advertised address failed
//! lately (names only the cluster can resolve, seen through a
//! port-forward), calls go through a seed.
//!
//! Retries follow the typed outcome a failed write carries
//! (`x-sidelog-write-outcome`, see `node::Outcome`), never its text: a
//! write refused with nothing written (no leader yet, not the leader, a
//! full queue, a node shutting down, a connection that never opened) is
//! retried; a write whose outcome is unknown (the leader changed or died
//! after taking it, no answer in time) is not, since it may be committed
//! and this client has no idempotent producer yet: the caller gets the
//! error and decides. Reads are always retried.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::Future;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status};

use super::{Backoff, Client, ClientError, ClientTls, ServerSet};
use crate::pb::{
    log as pb,
    meta::{Outcome, ROUTE_KEY, leader_of, never_sent, next_offset_of, outcome_of, with_outcome},
};

#[derive(Clone, Debug)]
pub struct RoutingOptions {
    /// How often the server list is refreshed when nothing fails.
    pub refresh_interval: Duration,
    /// How long one call keeps retrying before it returns the last error.
    pub retry_for: Duration,
    /// Deadline of one attempt.
    pub call_timeout: Duration,
    /// First and longest backoff between attempts.
    pub backoff: (Duration, Duration),
    /// The named log every call is for (empty: `default`): the servers
    /// and the leader are that log's.
    pub log: String,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        RoutingOptions {
            refresh_interval: Duration::from_secs(10),
            retry_for: Duration::from_secs(30),
            call_timeout: Duration::from_secs(15),
            backoff: (Duration::from_millis(20), Duration::from_secs(1)),
            log: String::new(),
        }
    }
}

/// A leader-aware client over the whole cluster. Cloning shares it.
#[derive(Clone)]
pub struct RoutedClient {
    inner: Arc<Inner>,
}

struct Inner {
    seeds: Vec<String>,
    tls: Option<ClientTls>,
    options: RoutingOptions,
    // A std Mutex: never held across an await.
    state: Mutex<State>,
    /// One refresh at a time: after a leader dies every caller fails at
    /// once, and one GetServers answers them all.
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    servers: ServerSet,
    conns: HashMap<String, Client>,
    refreshed: Option<Instant>,
    stale: bool,
    /// One past the highest offset this client had acknowledged: a read
    /// below it that a lagging follower cannot serve yet goes to the leader.
    acked: u64,
    /// Servers whose last call failed (down, unreachable), and when: reads
    /// avoid them for `DOWN_FOR` rather than hitting the same dead follower
    /// after every refresh.
    down: HashMap<String, Instant>,
    /// Why the last refresh found no server, in the user's terms.
    last_error: Option<String>,
    /// An agent refused the named log (missing, bad name).
    refused: Option<String>,
}

/// How long reads avoid a server that failed.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// Whether a failed call surely wrote nothing: the server says so, or an
/// older server's not-the-leader answer, or the connection never opened.
fn nothing_written(s: &Status) -> bool {
    match outcome_of(s) {
        Some(o) => o == Outcome::NotWritten,
        None => leader_of(s).is_some() || never_sent(s),
    }
}

/// Retrying may help: the node is down, overloaded, electing, or not the
/// leader.
fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded)
        // A connection closed or reset mid-call (a node stopping or dying)
        // surfaces as UNKNOWN, CANCELLED or INTERNAL made by this side's
        // transport, not by a server: the error's source says which.
        || (s.code() == Code::Unknown && s.message().contains("transport"))
        || made_by_transport(s)
}

/// Whether the status was made on this side from a connection failure (its
/// source chain holds a transport, hyper or I/O error) rather than sent by
/// a server.
fn made_by_transport(s: &Status) -> bool {
    let mut cause = std::error::Error::source(s);
    while let Some(e) = cause {
        if e.is::<tonic::transport::Error>() || e.is::<hyper::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn leader_only<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(ROUTE_KEY, "leader".parse().expect("ascii"));
    req
}

impl RoutedClient {
    /// Starts from `seeds` (`HOST:PORT`; a host name may resolve to many
    /// servers) and learns the cluster. Fails if no seed answers.
    pub async fn connect(seeds: &[String], tls: Option<ClientTls>) -> Result<Self, ClientError> {
        Self::connect_with(seeds, tls, RoutingOptions::default()).await
    }

    pub async fn connect_with(
        seeds: &[String],
        tls: Option<ClientTls>,
        options: RoutingOptions,
    ) -> Result<Self, ClientError> {
        let client = RoutedClient {
            inner: Arc::new(Inner {
                seeds: seeds.to_vec(),
                tls,
                options,
                state: Mutex::new(State::default()),
                refreshing: tokio::sync::Mutex::new(()),
            }),
        };
        // Invalid addresses and TLS files fail here, not on first use.
        for s in seeds {
            client.conn(s)?;
        }
        if !client.refresh().await {
            if let Some(refused) = client.state().refused.take() {
                return Err(ClientError::Refused(refused));
            }
            let cause = client
                .state()
                .last_error
                .take()
                .unwrap_or_else(|| "no address answered".into());
            return Err(ClientError::NoServers {
                tried: seeds.join(","),
                cause,
            });
        }
        Ok(client)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn(&self, addr: &str) -> Result<Client, ClientError> {
        if let Some(c) = self.state().conns.get(addr) {
            return Ok(c.clone());
        }
        let c = Client::lazy(addr, self.inner.tls.as_ref())?.with_log(&self.inner.options.log);
        self.state().conns.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// The servers as last learned.
    pub fn servers(&self) -> ServerSet {
        self.state().servers.clone()
    }

    /// Seeds, with host names resolved to every address they have.
    async fn resolved_seeds(&self) -> Vec<String> {
        let mut out = Vec::new();
        for seed in &self.inner.seeds {
            let hostport = seed.split_once("://").map_or(seed.as_str(), |(_, rest)| rest);
            match tokio::net::lookup_host(hostport).await {
                Ok(addrs) => out.extend(addrs.map(|a| a.to_string())),
                Err(_) => out.push(seed.clone()),
            }
        }
        out
    }

    /// Asks the known servers, then the seeds, for `GetServers`; keeps the
    /// first non-empty answer. False if nobody answered.
    pub async fn refresh(&self) -> bool {
        let _one = self.inner.refreshing.lock().await;
        let mut candidates = self.state().servers.all();
        candidates.extend(self.resolved_seeds().await);
        candidates.dedup();
        let mut last_error = None;
        let mut refused = None;
        for addr in candidates {
            let c = match self.conn(&addr) {
                Ok(c) => c,
                Err(e) => {
                    last_error = Some(format!("{addr}: {e}"));
                    continue;
                }
            };
            let mut req = Request::new(pb::GetServersRequest {
                log: self.inner.options.log.clone(),
            });
            req.set_timeout(Duration::from_secs(2));
            let resp = match c.raw().get_servers(req).await {
                Ok(r) => r,
                // The agent answered for the named log: it does not exist
                // there, or its name is bad. Another may have applied a
                // create this one has not yet: ask on; if none serves it,
                // the refusal is the answer.
                Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
                    refused = Some(super::describe_status(&status, self.inner.tls.as_ref()));
                    continue;
                }
                Err(status) => {
                    last_error = Some(format!(
                        "{addr}: {}",
                        super::describe_status(&status, self.inner.tls.as_ref())
                    ));
                    continue;
                }
            };
            let set = ServerSet::from_servers(&resp.into_inner().servers);
            if set.is_empty() {
                last_error = Some(format!(
                    "{addr}: the agent is not in a cluster yet (still forming or joining: see its log)"
                ));
                continue;
            }
            let mut st = self.state();
            st.refused = None;
            let mut set = set;
            set.keep_rotation(&st.servers);
            st.servers = set;
            st.refreshed = Some(Instant::now());
            st.stale = false;
            return true;
        }
        let mut st = self.state();
        st.stale = true;
        st.last_error = last_error;
        st.refused = refused;
        false
    }

    async fn refresh_if_due(&self) {
        let due = {
            let st = self.state();
            st.stale
                || st
                    .refreshed
                    .is_none_or(|t| t.elapsed() >= self.inner.options.refresh_interval)
        };
        if due {
            self.refresh().await;
        }
    }

    /// Runs `op` against the server `pick` chooses, retrying as the module
    /// docs describe. `op` gets the client and whether this is the leader.
    async fn call<T, F, Fut>(&self, write: bool, op: F) -> Result<T, Status>
    where
        F: Fn(Client, bool) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        // Only a produce has side effects; anything routed to the leader
        // for another reason (a linearizable read) is safe to repeat.
        self.call_with(write, !write, op).await
    }

    /// [`Self::call`]; `idempotent` says whether an unknown outcome may be
    /// retried.
    async fn call_with<T, F, Fut>(&self, write: bool, idempotent: bool, op: F) -> Result<T, Status>
    where
        F: Fn(Client, bool) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let opts = &self.inner.options;
        let deadline = Instant::now() + opts.retry_for;
        let mut backoff = Backoff::new(opts.backoff.0, opts.backoff.1);
        let mut redirected = false;
        loop {
            self.refresh_if_due().await;
            let (addr, to_leader) = {
                let mut st = self.state();
                let State { servers, down, .. } = &mut *st;
                let recently_down = |a: &str| down.get(a).is_some_and(|t| t.elapsed() < DOWN_FOR);
                match (write, servers.leader().map(str::to_owned)) {
                    (true, Some(l)) if !recently_down(&l) => (Some(l), true),
                    // No leader known (an election), or its address does
                    // not answer from here: any server waits for one and
                    // forwards.
                    _ => (servers.pick_reader_avoiding(recently_down), false),
                }
            };
            // Every advertised address failed lately (they may not be
            // reachable from here at all, e.g. pod names through a
            // port-forward): go through a seed, which forwards writes.
            let addr = match addr {
                Some(a) if self.recently_down(&a) => Some(self.seed_fallback().await.unwrap_or(a)),
                None => self.seed_fallback().await,
                some => some,
            };
            let result = match &addr {
                Some(a) => match self.conn(a) {
                    Ok(c) => tokio::time::timeout(opts.call_timeout, op(c, to_leader))
                        .await
                        .unwrap_or_else(|_| Err(Status::deadline_exceeded(format!("no answer from {a} in time")))),
                    Err(e) => return Err(Status::invalid_argument(e.to_string())),
                },
                None => Err(with_outcome(
                    Status::unavailable("no servers known"),
                    Outcome::NotWritten,
                )),
            };
            let status = match result {
                Ok(v) => {
                    if let Some(a) = &addr {
                        self.state().down.remove(a);
                    }
                    return Ok(v);
                }
                Err(s) if retryable(&s) && (idempotent || nothing_written(&s)) => s,
                Err(s) => return Err(s),
            };
            if let Some(a) = &addr
                && leader_of(&status).is_none()
            {
                self.state().down.insert(a.clone(), Instant::now());
            }
            if let Some(leader) = leader_of(&status) {
                self.state().servers.set_leader(leader);
                // Straight to the leader named, once; then back off.
                if !redirected {
                    redirected = true;
                    continue;
                }
            } else {
                let mut st = self.state();
                st.stale = true;
                if let (true, Some(a)) = (to_leader, &addr) {
                    st.servers.forget_leader(a);
                }
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay > deadline {
                return Err(status);
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn recently_down(&self, addr: &str) -> bool {
        self.state().down.get(addr).is_some_and(|t| t.elapsed() < DOWN_FOR)
    }

    /// The first seed address (resolved) that has not failed lately.
    async fn seed_fallback(&self) -> Option<String> {
        self.resolved_seeds().await.into_iter().find(|a| !self.recently_down(a))
    }

    fn note_acked(&self, next: u64) {
        let mut st = self.state();
        st.acked = st.acked.max(next);
    }

    /// Produces one record on the leader; returns its offset.
    pub async fn produce(&self, value: impl Into<Bytes>) -> Result<u64, Status> {
        let value = value.into();
        let offset = self
            .call(true, |c, to_leader| {
                let record = pb::Record {
                    value: value.clone(),
                    ..Default::default()
                };
                let msg = pb::ProduceRequest {
                    record: Some(record),
                    log: self.inner.options.log.clone(),
                };
                let req = if to_leader { leader_only(msg) } else { Request::new(msg) };
                async move { Ok(c.raw().produce(req).await?.into_inner().offset) }
            })
            .await?;
        self.note_acked(offset + 1);
        Ok(offset)
    }

    /// Produces records atomically on the leader; returns their offsets.
    pub async fn produce_batch(&self, values: Vec<Bytes>) -> Result<Vec<u64>, Status> {
        let offsets = self
            .call(true, |c, to_leader| {
                let records = values
                    .iter()
                    .map(|v| pb::Record {
                        value: v.clone(),
                        ..Default::default()
                    })
                    .collect();
                let msg = pb::ProduceBatchRequest {
                    records,
                    log: self.inner.options.log.clone(),
                };
                let req = if to_leader { leader_only(msg) } else { Request::new(msg) };
                async move { Ok(c.raw().produce_batch(req).await?.into_inner().offsets) }
            })
            .await?;
        if let Some(last) = offsets.last() {
            self.note_acked(last + 1);
        }
        Ok(offsets)
    }

    /// The record at `offset`, from a follower (round-robin). A record this
    /// client was acknowledged that the follower has not applied yet is
    /// read from the leader instead (read your writes).
    pub async fn consume(&self, offset: u64) -> Result<pb::Record, Status> {
        let read = |c: Client, _| async move {
            let mut c = c;
            c.consume(offset).await
        };
        match self.call(false, read).await {
            Err(s)
                if s.code() == Code::OutOfRange
                    && offset < self.state().acked
                    && next_offset_of(&s).is_some_and(|n| offset >= n) =>
            {
                self.call_with(true, true, |c: Client, _| async move {
                    let c = c;
                    let req = pb::ConsumeRequest {
                        offset,
                        linearizable: true,
                        log: c.log().to_owned(),
                    };
                    c.raw()
                        .consume(req)
                        .await?
                        .into_inner()
                        .record
                        .ok_or_else(|| Status::internal("response without a record"))
                })
                .await
            }
            other => other,
        }
    }

    /// Records from `offset` on, following the tail; on a lost server the
    /// stream resumes on another from the next offset. Ends at the first
    /// error retries cannot get past.
    pub fn follow(&self, offset: u64) -> ReceiverStream<Result<pb::Record, Status>> {
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let mut next = offset;
            loop {
                let opened = this
                    .call(false, |c: Client, _| async move {
                        let mut c = c;
                        c.consume_stream(next).await
                    })
                    .await;
                let mut stream = match opened {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            if let Some(r) = resp.record {
                                next = r.offset + 1;
                                if tx.send(Ok(r)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(s) if retryable(&s) => {
                            this.state().stale = true;
                            break;
                        }
                        Err(s) => {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                    }
                }
            }
        });
        ReceiverStream::new(rx)
    }

    /// A connection to the leader (refreshing until one is known), for
    /// calls this type does not wrap.
    pub async fn leader(&self) -> Result<Client, Status> {
        self.call_with(true, true, |c, to_leader| async move {
            if to_leader {
                Ok(c)
            } else {
                Err(Status::unavailable("no leader known"))
            }
        })
        .await
    }

    /// A connection to the next reader (a follower, round-robin).
    pub async fn reader(&self) -> Result<Client, Status> {
        self.call(false, |c, _| async move { Ok(c) }).await
    }

    /// A connection to the first seed that answers, else any known server.
    pub async fn any(&self) -> Result<Client, Status> {
        let mut candidates = self.resolved_seeds().await;
        candidates.extend(self.state().servers.all());
        for addr in candidates {
            let Ok(mut c) = self.conn(&addr) else { continue };
            if c.get_servers().await.is_ok() {
                return Ok(c);
            }
        }
        Err(Status::unavailable("no server answers"))
    }
}
