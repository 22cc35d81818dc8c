//! Batching and dispatching writes: many records, one Raft entry.
//!
//! openraft 0.9 appends one entry per `client_write` and waits for that
//! append's flush before it takes the next, so one record per entry costs
//! one fsync per record. Every write of a node goes through one queue and
//! one dispatcher task, which packs what queued meanwhile into one batch:
//!
//! - on the leader a batch becomes one Raft entry. At most
//!   [`MAX_IN_FLIGHT`] entries are proposed and not yet answered; the
//!   dispatcher waits for a slot *before* it drains the queue, so what
//!   arrives meanwhile goes into one entry and batches grow with load. At
//!   light load a slot is free and a lone record goes out at once (no
//!   linger);
//! - on a follower a batch is forwarded to the leader in one `Forward` call
//!   (see `forwarder`), which the leader writes as one entry; one forward is
//!   in flight at a time;
//! - an entry holds at most [`MAX_RECORDS`] records and about
//!   [`MAX_BYTES`] of values, but a proposal is never split: a
//!   `ProduceBatch` call or a follower's forward is all in one entry, so it
//!   is written all or none;
//! - a proposal whose caller gave up (timed out, disconnected) before it was
//!   proposed or forwarded is dropped, never written.
//!
//! One queue and one task keep order across leadership changes: batches
//! leave in queue order, and the dispatcher switches between proposing and
//! forwarding only once every earlier batch is answered, so a producer that
//! submits records one after another never sees offsets go backwards.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use openraft::error::ClientWriteError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Cluster,
    store::AppendTrace,
    types::{Raft, Request},
};
use crate::{node::NodeError, storage};

/// Entries proposed and not yet committed. One gives the largest batches
/// and the fewest fsyncs; measured on 2 cores, 100 B records, 256 in flight,
/// two or three slots were no faster (one node) or slower (three nodes) and
/// cost up to 40 % more fsyncs (docs/architecture.md).
pub const MAX_IN_FLIGHT: usize = 1;
/// Most records in one entry.
pub const MAX_RECORDS: usize = 4096;
/// An entry stops taking proposals once its values reach this many bytes.
/// Entries are replicated whole within one heartbeat (openraft's
/// AppendEntries timeout), so they stay small; a single larger proposal
/// (a big ProduceBatch) still goes alone.
pub const MAX_BYTES: usize = 256 << 10;
/// Proposals waiting for the dispatcher; producers wait (backpressure) when
/// it is full.
pub const QUEUE: usize = 4096;

/// The answer to a proposal: the offset of its first record.
pub type Reply = oneshot::Sender<Result<u64, NodeError>>;

/// Records to write together, in order, all or none.
pub struct Proposal {
    pub values: Vec<Bytes>,
    pub reply: Reply,
    /// Forwarded by a follower: write here or refuse, never forward again
    /// (two nodes that each think the other leads would bounce it).
    pub local_only: bool,
    /// The request span that proposed (none when untraced): a forward
    /// continues its trace on the leader.
    pub span: tracing::Span,
}

impl Proposal {
    pub fn bytes(&self) -> usize {
        self.values.iter().map(Bytes::len).sum()
    }
}

/// Takes a first proposal and whatever else is queued, up to the limits.
/// Proposals whose callers gave up are dropped; one that does not fit is
/// left in `carry` for the next batch.
fn drain(first: Proposal, queue: &mut mpsc::Receiver<Proposal>, carry: &mut Option<Proposal>) -> Vec<Proposal> {
    let mut batch = vec![first];
    let (mut records, mut bytes) = (batch[0].values.len(), batch[0].bytes());
    while records < MAX_RECORDS && bytes < MAX_BYTES {
        let Ok(p) = queue.try_recv() else { break };
        if p.reply.is_closed() {
            continue;
        }
        // A forwarded proposal only goes with other proposals bound for the
        // local log (the batch's mode follows its first proposal).
        let (r, b) = (p.values.len(), p.bytes());
        if records + r > MAX_RECORDS || bytes + b > MAX_BYTES || p.local_only != batch[0].local_only {
            *carry = Some(p);
            break;
        }
        records += r;
        bytes += b;
        batch.push(p);
    }
    batch
}

/// Takes proposals from `queue` and writes them, batched, until `cancel`
/// fires or every sender is gone: proposed locally while this node leads,
/// forwarded to the leader while it follows.
pub async fn run(
    cluster: Weak<Cluster>,
    raft: Raft,
    trace: Arc<AppendTrace>,
    mut queue: mpsc::Receiver<Proposal>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carry: Option<Proposal> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                p = queue.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                () = cancel.cancelled() => return,
            },
        };
        if first.reply.is_closed() {
            continue;
        }
        let Some(leader) = cluster.upgrade().map(|c| c.is_leader()) else {
            return;
        };
        if leader || first.local_only {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
                () = cancel.cancelled() => return,
            };
            let batch = drain(first, &mut queue, &mut carry);
            propose(&raft, &trace, batch, slot).await;
        } else {
            // Forwarding starts only once every local entry is answered, so
            // order holds when leadership moves away.
            let all = tokio::select! {
                s = slots.clone().acquire_many_owned(MAX_IN_FLIGHT as u32) => s.expect("never closed"),
                () = cancel.cancelled() => return,
            };
            let batch = drain(first, &mut queue, &mut carry);
            let Some(c) = cluster.upgrade() else { return };
            // Cancellable: a forward may wait up to the write timeout for a
            // leader, and must not keep the node (and its log, and the data
            // directory's lock) alive after shutdown.
            let forwarded = tokio::select! {
                r = super::forwarder::forward(&c, batch) => r,
                () = cancel.cancelled() => return,
            };
            drop(c);
            if let Err(batch) = forwarded {
                // This node became the leader meanwhile: write here.
                drop(all);
                let slot = slots.clone().acquire_owned().await.expect("never closed");
                propose(&raft, &trace, batch, slot).await;
            }
        }
    }
}

/// Proposes one batch as one entry and answers its proposals once the entry
/// is committed and applied (or failed), releasing `slot` then.
async fn propose(raft: &Raft, trace: &Arc<AppendTrace>, batch: Vec<Proposal>, slot: OwnedSemaphorePermit) {
    // Callers may have given up while the dispatcher waited for the slot.
    let batch: Vec<Proposal> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let records: usize = batch.iter().map(|p| p.values.len()).sum();
    let bytes: usize = batch.iter().map(Proposal::bytes).sum();
    let mut body = Vec::with_capacity(bytes + records * storage::RECORD_OVERHEAD);
    for p in &batch {
        for v in &p.values {
            storage::push_record(&mut body, v);
        }
    }
    let body = Bytes::from(body);
    // The entry's append and fsync join the first traced proposal's trace.
    let span = batch
        .iter()
        .find(|p| !p.span.is_none())
        .map_or_else(tracing::Span::none, |p| p.span.clone());
    trace.set(&body, span);
    let request = Request {
        count: records as u32,
        body: body.clone(),
        base_offset: 0,
        op: None,
    };
    let answer = match raft.client_write_ff(request).await {
        Ok(rx) => rx,
        Err(e) => {
            trace.forget(&body);
            // The entry never reached Raft's core: nothing was written.
            reply_all(
                batch,
                Err(NodeError::Unavailable(format!(
                    "raft stopped: {e}; nothing was written"
                ))),
            );
            return;
        }
    };
    let trace = trace.clone();
    tokio::spawn(async move {
        let answer = answer.await;
        trace.forget(&body);
        let result = match answer {
            Ok(Ok(resp)) => Ok(resp.data.offset),
            // openraft answers pending writes with ForwardToLeader when the
            // leader steps down after taking them: they may be committed.
            Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(NodeError::Unknown(format!(
                "leadership moved (new leader: {}) before the records were committed; they may or may not \
                 have been written",
                f.leader_id.map_or("unknown".to_owned(), |l| l.to_string())
            ))),
            Ok(Err(e)) => Err(NodeError::Unknown(e.to_string())),
            Err(_) => Err(NodeError::Unknown(
                "raft stopped or leadership moved before the records were committed; they may or may not have \
                 been written"
                    .into(),
            )),
        };
        drop(slot);
        reply_all(batch, result);
    });
}

/// Answers each proposal of an entry with the offset of its first record.
fn reply_all(batch: Vec<Proposal>, result: Result<u64, NodeError>) {
    match result {
        Ok(mut offset) => {
            for p in batch {
                let n = p.values.len() as u64;
                let _ = p.reply.send(Ok(offset));
                offset += n;
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(e.same_outcome()));
            }
        }
    }
}
