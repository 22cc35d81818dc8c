//! Forwarding a follower's writes to the leader.
//!
//! One forward is in flight at a time, so the order in which producers
//! submitted is the order in the log. The proposals queued meanwhile go
//! together in the next forward, which the leader writes as one entry (see
//! `proposer`): all of a forward's records, or none.
//!
//! The queue is bounded ([`QUEUE`] proposals): producers wait when it is
//! full (backpressure, up to the write timeout), and a proposal whose caller
//! gave up before its forward was sent is dropped, never sent. Once sent,
//! a forward that times out may still be written by the leader: the caller
//! is told so.

use std::sync::Weak;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{
    Cluster, pb,
    proposer::{self, Proposal},
    unavailable,
};
use crate::node::NodeError;

/// Proposals waiting to be forwarded.
pub const QUEUE: usize = 4096;

/// Forwards queued proposals to the leader until every sender is gone.
pub async fn run(cluster: Weak<Cluster>, mut queue: mpsc::Receiver<Proposal>) {
    let mut carry: Option<Proposal> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        if first.reply.is_closed() {
            continue;
        }
        let mut batch = vec![first];
        let (mut records, mut bytes) = (batch[0].values.len(), batch[0].bytes());
        while records < proposer::MAX_RECORDS && bytes < proposer::MAX_BYTES {
            let Ok(p) = queue.try_recv() else { break };
            if p.reply.is_closed() {
                continue;
            }
            let (r, b) = (p.values.len(), p.bytes());
            if records + r > proposer::MAX_RECORDS || bytes + b > proposer::MAX_BYTES {
                carry = Some(p);
                break;
            }
            records += r;
            bytes += b;
            batch.push(p);
        }
        let Some(cluster) = cluster.upgrade() else { return };
        let values: Vec<Bytes> = batch.iter().flat_map(|p| p.values.iter().cloned()).collect();
        // The forward joins the trace of the first traced request in it
        // (one call carries one traceparent); the others' spans still show
        // their wait in `raft.commit`.
        let span = match batch.iter().find(|p| !p.span.is_none()) {
            Some(p) => tracing::debug_span!(parent: &p.span, "raft", otel.name = "raft.forward", records = values.len()),
            None => tracing::Span::none(),
        };
        let result = cluster.forward_batch(values).instrument(span).await;
        drop(cluster);
        match result {
            Ok(offsets) => {
                let mut at = 0;
                for p in batch {
                    let _ = p.reply.send(Ok(offsets[at]));
                    at += p.values.len();
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
}

impl Cluster {
    /// Sends `values` to the leader in one Forward call; returns their
    /// offsets (one per value, consecutive).
    async fn forward_batch(&self, values: Vec<Bytes>) -> Result<Vec<u64>, NodeError> {
        let n = values.len();
        let (leader, info) = self
            .wait_leader(self.config.write_timeout)
            .await
            .ok_or_else(|| unavailable("no leader known: the cluster has no quorum or is still forming"))?;
        if leader == self.config.id {
            return self.produce(&values).await;
        }
        let mut client = self
            .peers
            .client(Some(&leader), &info.peer_addr)
            .map_err(|e| unavailable(format!("forwarding to leader {leader}: {e}")))?;
        let mut req = tonic::Request::new(pb::ForwardRequest { values });
        req.set_timeout(self.config.write_timeout);
        crate::trace_context::inject(&mut req);
        let offsets = client
            .forward(req)
            .await
            .map_err(|s| unavailable(format!("forwarding to leader {leader}: {}", s.message())))?
            .into_inner()
            .offsets;
        let consecutive = offsets.windows(2).all(|w| w[1] == w[0] + 1);
        if offsets.len() != n || !consecutive {
            return Err(unavailable(format!(
                "leader {leader} answered {} offsets for {n} records",
                offsets.len()
            )));
        }
        Ok(offsets)
    }
}
