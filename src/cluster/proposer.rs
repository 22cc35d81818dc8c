//! Batching proposals on the leader: many records, one Raft entry.
//!
//! openraft 0.9 appends one entry per `client_write` and waits for that
//! append's flush before it takes the next, so one record per entry costs
//! one fsync per record. The proposer packs every proposal that arrives
//! while earlier entries are in flight into the next entry:
//!
//! - at most [`MAX_IN_FLIGHT`] entries are proposed and not yet answered;
//!   the proposer waits for a slot *before* it drains its queue, so what
//!   arrives meanwhile goes into one entry and batches grow with load;
//! - at light load a slot is free and a lone record goes out at once (no
//!   linger);
//! - an entry holds at most [`MAX_RECORDS`] records and about
//!   [`MAX_BYTES`] of values, but a proposal is never split: a
//!   `ProduceBatch` call or a follower's forward is all in one entry, so it
//!   is written all or none;
//! - a proposal whose caller gave up (timed out, disconnected) before it was
//!   proposed is dropped, never written.
//!
//! Proposals are taken in queue order and entries are proposed in order, so
//! a producer that submits records one after another gets increasing
//! offsets (ProduceStream relies on it).

use std::sync::Arc;

use bytes::Bytes;
use openraft::error::ClientWriteError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::types::{Raft, Request};
use crate::{node::NodeError, storage};

/// Entries proposed and not yet committed. Two keep the leader's disk busy:
/// one entry is being flushed while the next waits in openraft's queue.
pub const MAX_IN_FLIGHT: usize = 2;
/// Most records in one entry.
pub const MAX_RECORDS: usize = 8192;
/// An entry stops taking proposals once its values reach this many bytes.
pub const MAX_BYTES: usize = 1 << 20;
/// Proposals waiting for the proposer; producers wait (backpressure) when
/// it is full.
pub const QUEUE: usize = 4096;

/// The answer to a proposal: the offset of its first record.
pub type Reply = oneshot::Sender<Result<u64, NodeError>>;

/// Records to write together, in order, all or none.
pub struct Proposal {
    pub values: Vec<Bytes>,
    pub reply: Reply,
    /// The request span that proposed (none when untraced): a forward
    /// continues its trace on the leader.
    pub span: tracing::Span,
}

impl Proposal {
    pub fn bytes(&self) -> usize {
        self.values.iter().map(Bytes::len).sum()
    }
}

fn unavailable(msg: impl Into<String>) -> NodeError {
    NodeError::Unavailable(msg.into())
}

/// Takes proposals from `queue` and proposes them as batched entries until
/// `cancel` fires or every sender is gone.
pub async fn run(raft: Raft, mut queue: mpsc::Receiver<Proposal>, cancel: CancellationToken) {
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
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            () = cancel.cancelled() => return,
        };
        let mut batch = vec![first];
        let (mut records, mut bytes) = (batch[0].values.len(), batch[0].bytes());
        while records < MAX_RECORDS && bytes < MAX_BYTES {
            let Ok(p) = queue.try_recv() else { break };
            if p.reply.is_closed() {
                continue;
            }
            let (r, b) = (p.values.len(), p.bytes());
            if records + r > MAX_RECORDS || bytes + b > MAX_BYTES {
                carry = Some(p);
                break;
            }
            records += r;
            bytes += b;
            batch.push(p);
        }
        let mut body = Vec::with_capacity(bytes + records * storage::RECORD_OVERHEAD);
        for p in &batch {
            for v in &p.values {
                storage::push_record(&mut body, v);
            }
        }
        let request = Request {
            count: records as u32,
            body: body.into(),
            base_offset: 0,
        };
        let answer = match raft.client_write_ff(request).await {
            Ok(rx) => rx,
            Err(e) => {
                reply_all(batch, Err(unavailable(format!("raft stopped: {e}"))));
                continue;
            }
        };
        tokio::spawn(async move {
            let result = match answer.await {
                Ok(Ok(resp)) => Ok(resp.data.offset),
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(unavailable(format!(
                    "leadership moved (new leader: {}) before the records were committed; they may or may not \
                     have been written: retry",
                    f.leader_id.map_or("unknown".to_owned(), |l| l.to_string())
                ))),
                Ok(Err(e)) => Err(unavailable(e.to_string())),
                Err(_) => Err(unavailable("raft stopped before the records were committed")),
            };
            drop(slot);
            reply_all(batch, result);
        });
    }
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
            let msg = e.to_string();
            for p in batch {
                let _ = p.reply.send(Err(unavailable(msg.clone())));
            }
        }
    }
}
