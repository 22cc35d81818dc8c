//! Forwarding a follower's writes to the leader.
//!
//! The dispatcher (`proposer`) hands over one batch at a time and waits for
//! its answer, so the order in which producers submitted is the order in
//! the log. The leader writes a forward as one entry (see `proposer`): all
//! of its records, or none. Once sent, a forward that times out may still be
//! written by the leader: the caller is told so.

use bytes::Bytes;
use tracing::Instrument;

use super::{Cluster, pb, proposer::Proposal, unavailable};
use crate::node::NodeError;

/// Forwards one batch to the leader and answers its proposals. Gives the
/// batch back when this node turned out to be the leader itself.
pub async fn forward(cluster: &Cluster, batch: Vec<Proposal>) -> Result<(), Vec<Proposal>> {
    let (leader, info) = match cluster.wait_leader(cluster.config.write_timeout).await {
        Some(l) => l,
        None => {
            reply_err(
                batch,
                "no leader known: the cluster has no quorum or is still forming; nothing was written",
            );
            return Ok(());
        }
    };
    if leader == cluster.config.id {
        return Err(batch);
    }
    // Callers may have given up while we waited for a leader.
    let batch: Vec<Proposal> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
    if batch.is_empty() {
        return Ok(());
    }
    let values: Vec<Bytes> = batch.iter().flat_map(|p| p.values.iter().cloned()).collect();
    // The forward joins the trace of the first traced request in it (one
    // call carries one traceparent); the others' spans still show their
    // wait in `raft.commit`.
    let span = match batch.iter().find(|p| !p.span.is_none()) {
        Some(p) => tracing::debug_span!(parent: &p.span, "raft", otel.name = "raft.forward", records = values.len()),
        None => tracing::Span::none(),
    };
    match cluster
        .forward_batch(leader, &info.peer_addr, values)
        .instrument(span)
        .await
    {
        Ok(offsets) => {
            let mut at = 0;
            for p in batch {
                let _ = p.reply.send(Ok(offsets[at]));
                at += p.values.len();
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(e.same_outcome()));
            }
        }
    }
    Ok(())
}

/// Nothing was sent: each proposal is refused, safe to retry.
fn reply_err(batch: Vec<Proposal>, msg: &str) {
    for p in batch {
        let _ = p.reply.send(Err(unavailable(msg)));
    }
}

impl Cluster {
    /// Sends `values` to the leader in one Forward call; returns their
    /// offsets (one per value, consecutive).
    async fn forward_batch(
        &self,
        leader: super::NodeId,
        addr: &str,
        values: Vec<Bytes>,
    ) -> Result<Vec<u64>, NodeError> {
        let n = values.len();
        let mut client = self
            .peers
            .client(Some(&leader), addr)
            .map_err(|e| unavailable(format!("forwarding to leader {leader}: {e}")))?;
        let mut req = tonic::Request::new(pb::ForwardRequest {
            values,
            group: self.config.group.clone(),
            catalog_op: Default::default(),
        });
        req.set_timeout(self.config.write_timeout);
        crate::trace_context::inject(&mut req);
        let offsets = client
            .forward(req)
            .await
            .map_err(|s| {
                // The leader's own answer says what it wrote (a refusal by
                // code, or the outcome it carries; an older leader's
                // not-the-leader names the leader); a connection that never
                // opened wrote nothing; anything else may have.
                use crate::api::convert::{leader_of, never_sent, outcome_of};
                let msg = format!("forwarding to leader {leader}: {}", s.message());
                match s.code() {
                    tonic::Code::InvalidArgument => NodeError::InvalidArgument(msg),
                    // The log's group is not on the leader (deleted): nothing written.
                    tonic::Code::NotFound => NodeError::NotFound(msg),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::Unimplemented => {
                        unavailable(msg)
                    }
                    _ => match outcome_of(&s) {
                        Some(crate::node::Outcome::NotWritten) => unavailable(msg),
                        Some(crate::node::Outcome::Unknown) => NodeError::Unknown(msg),
                        None if leader_of(&s).is_some() || never_sent(&s) => unavailable(msg),
                        None => NodeError::Unknown(msg),
                    },
                }
            })?
            .into_inner()
            .offsets;
        let consecutive = offsets.windows(2).all(|w| w[1] == w[0] + 1);
        if offsets.len() != n || !consecutive {
            return Err(NodeError::Unknown(format!(
                "leader {leader} answered {} offsets for {n} records",
                offsets.len()
            )));
        }
        Ok(offsets)
    }
}

impl Cluster {
    /// Sends a catalog change to the default group's leader; returns its
    /// Raft index and what applying it did.
    pub(super) async fn forward_catalog(
        &self,
        op: &super::catalog::CatalogOp,
    ) -> Result<(u64, super::catalog::Applied), NodeError> {
        let (leader, info) = self
            .wait_leader(self.config.write_timeout)
            .await
            .ok_or_else(|| unavailable("no leader known for the catalog change; nothing was changed"))?;
        let mut client = self
            .peers
            .client(Some(&leader), &info.peer_addr)
            .map_err(|e| unavailable(format!("forwarding to leader {}: {e}", info.name)))?;
        let op = serde_json::to_vec(op).map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        let mut req = tonic::Request::new(pb::ForwardRequest {
            catalog_op: op.into(),
            ..Default::default()
        });
        req.set_timeout(self.config.write_timeout);
        let resp = client
            .forward(req)
            .await
            .map_err(|s| {
                let msg = format!("the catalog change through leader {}: {}", info.name, s.message());
                match s.code() {
                    // An older leader ignores the change and finds no records.
                    tonic::Code::InvalidArgument if s.message().contains("no records to produce") => {
                        NodeError::FailedPrecondition(format!(
                            "the leader {} runs a build that does not know named logs; upgrade every member first",
                            info.name
                        ))
                    }
                    tonic::Code::InvalidArgument => NodeError::InvalidArgument(msg),
                    tonic::Code::NotFound => NodeError::NotFound(msg),
                    tonic::Code::AlreadyExists => NodeError::AlreadyExists(msg),
                    tonic::Code::FailedPrecondition => NodeError::FailedPrecondition(msg),
                    tonic::Code::Unimplemented => unavailable(msg),
                    _ => match crate::api::convert::outcome_of(&s) {
                        Some(crate::node::Outcome::NotWritten) => unavailable(msg),
                        _ => NodeError::Unknown(msg),
                    },
                }
            })?
            .into_inner();
        if resp.catalog_index == 0 {
            // A leader whose build does not know catalog changes.
            return Err(NodeError::FailedPrecondition(format!(
                "the leader {} runs a build that does not know named logs; upgrade every member first",
                info.name
            )));
        }
        Ok((
            resp.catalog_index,
            super::catalog::Applied::from_u8(resp.catalog_applied as u8),
        ))
    }
}
