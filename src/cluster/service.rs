//! The peer service (Raft RPCs, forwarding, join/leave) and the cluster
//! admin service of the client port.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    Cluster,
    network::{self, receive_snapshot},
    pb::{self, cluster_server::ClusterServer, peer_server::PeerServer},
    types::Snapshot,
};
use crate::security::{Authorizer, PeerInfo};

fn raft_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

/// `sidelog.v1.Peer`.
pub struct PeerService {
    cluster: Arc<Cluster>,
}

impl PeerService {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        PeerService { cluster }
    }

    pub fn into_server(self) -> PeerServer<Self> {
        PeerServer::new(self)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let req = network::append_request_from_pb(request.into_inner())?;
        let resp = self.cluster.raft.append_entries(req).await.map_err(raft_status)?;
        if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
            self.cluster.peers.contacts().leader_seen();
        }
        Ok(Response::new(network::append_response_to_pb(resp)))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let r = request.into_inner();
        // A candidate outside this node's membership (removed while away)
        // must not raise the group's term: refused before Raft sees it.
        let candidate = r.vote.as_ref().and_then(|v| v.node_id);
        let m = self.cluster.metrics();
        let joint = m.membership_config.membership().get_joint_config();
        if let Some(candidate) = candidate
            && joint.iter().any(|c| !c.is_empty())
            && !joint.iter().any(|c| c.contains(&candidate))
        {
            return Err(Status::failed_precondition(
                "the candidate is not a voter in this node's membership",
            ));
        }
        let req = openraft::raft::VoteRequest {
            vote: network::vote_from_pb(r.vote),
            last_log_id: r.last_log_id.map(network::log_id_from_pb),
        };
        let resp = self.cluster.raft.vote(req).await.map_err(raft_status)?;
        Ok(Response::new(pb::VoteResponse {
            vote: Some(network::vote_to_pb(&resp.vote)),
            vote_granted: resp.vote_granted,
            last_log_id: resp.last_log_id.as_ref().map(network::log_id_to_pb),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let dir = self
            .cluster
            .node
            .log()
            .dir()
            .join(format!("snapshot-in-{}", network::next_tmp_id()));
        let (vote, meta, data) = receive_snapshot(request.into_inner(), dir).await?;
        tracing::info!(last = ?meta.last_log_id, "received a snapshot");
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(data),
        };
        let resp = self
            .cluster
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(raft_status)?;
        self.cluster.peers.contacts().leader_seen();
        Ok(Response::new(pb::SnapshotResponse {
            vote: Some(network::vote_to_pb(&resp.vote)),
        }))
    }

    async fn forward(&self, request: Request<pb::ForwardRequest>) -> Result<Response<pb::ForwardResponse>, Status> {
        // A follower's forward continues its caller's trace here; untraced
        // forwards get no span (one per batch would flood the collector).
        let span = if request.metadata().get("traceparent").is_some() {
            let span = tracing::info_span!(
                "peer",
                otel.name = "sidelog.v1.Peer/Forward",
                otel.kind = "server",
                records = request.get_ref().values.len()
            );
            crate::trace_context::adopt(request.metadata(), &span);
            span
        } else {
            tracing::Span::none()
        };
        let values = request.into_inner().values;
        let offsets = self.cluster.produce_as_leader(values).instrument(span).await?;
        Ok(Response::new(pb::ForwardResponse { offsets }))
    }

    async fn hello(&self, request: Request<pb::HelloRequest>) -> Result<Response<pb::HelloResponse>, Status> {
        let r = request.into_inner();
        let c = &self.cluster;
        let asker = r.node.as_ref().map(|n| super::types::node_id(&n.id));
        if let Some(from) = &r.node {
            tracing::debug!(from = %from.id, "hello");
        }
        let m = c.metrics();
        if r.evicted
            && let Some(from) = asker
            && m.current_leader == Some(from)
            && !c.is_removed()
        {
            tracing::warn!("the leader removed this node: it stops serving reads and rejoins as a non-voter");
            c.set_removed(true);
        }
        // An attached sidecar belongs to a cluster though its Raft is
        // empty: it must not be counted for bootstrapping another one.
        let initialized = c.raft.is_initialized().await.map_err(raft_status)? || c.attachment().is_some();
        let membership = m.membership_config.membership();
        Ok(Response::new(pb::HelloResponse {
            node: Some(network::node_info_to_pb(&c.config.info)),
            initialized,
            leader: c.leader().map(|(_, info)| network::node_info_to_pb(&info)),
            bootstrap_expect: c.config.bootstrap_expect as u32,
            cluster_id: c.store.cluster_id().unwrap_or_default(),
            asker_is_member: asker.is_some_and(|id| membership.get_node(&id).is_some()),
            term: m.current_term,
            protocol: super::PEER_PROTOCOL,
            version: crate::version().to_owned(),
        }))
    }

    async fn pre_vote(&self, request: Request<pb::PreVoteRequest>) -> Result<Response<pb::PreVoteResponse>, Status> {
        Ok(Response::new(self.cluster.answer_pre_vote(request.get_ref())))
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let request = request.into_inner();
        let node = request
            .node
            .ok_or_else(|| Status::invalid_argument("JoinRequest.node is required"))?;
        let ours = self.cluster.store.cluster_id().unwrap_or_default();
        if !request.cluster_id.is_empty() && !ours.is_empty() && request.cluster_id != ours {
            return Err(Status::failed_precondition(format!(
                "{} holds data of cluster {}, this is cluster {ours}: start it with an empty data dir",
                node.id, request.cluster_id
            )));
        }
        if node.id.is_empty() || node.peer_addr.is_empty() {
            return Err(Status::invalid_argument(
                "a joining node needs an id and a peer address",
            ));
        }
        let c = &self.cluster;
        if !c.is_leader() {
            // Pass it on to the leader.
            let (leader, info) = c
                .wait_leader(c.config.write_timeout)
                .await
                .ok_or_else(|| Status::unavailable("no leader known"))?;
            let mut client = c
                .peers
                .client(Some(&leader), &info.peer_addr)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            return client
                .join(pb::JoinRequest {
                    node: Some(node),
                    cluster_id: request.cluster_id,
                    may_attach: request.may_attach,
                })
                .await;
        }
        let (id, info) = network::node_info_from_pb(node);
        match c.admit(id, info, request.may_attach).await? {
            super::attach::Admitted::Attached(resp) => Ok(Response::new(*resp)),
            super::attach::Admitted::Member => Ok(Response::new(pb::JoinResponse {
                cluster_id: ours,
                next_offset: c.node.committed(),
                ..Default::default()
            })),
        }
    }

    async fn read(&self, request: Request<pb::ReadRequest>) -> Result<Response<pb::ReadResponse>, Status> {
        let span = if request.metadata().get("traceparent").is_some() {
            let span = tracing::info_span!("peer", otel.name = "sidelog.v1.Peer/Read", otel.kind = "server");
            crate::trace_context::adopt(request.metadata(), &span);
            span
        } else {
            tracing::Span::none()
        };
        let resp = self.cluster.serve_read(request.into_inner()).instrument(span).await?;
        Ok(Response::new(resp))
    }

    async fn leave(&self, request: Request<pb::LeaveRequest>) -> Result<Response<pb::LeaveResponse>, Status> {
        let name = request.into_inner().id;
        self.cluster.remove(&name).await?;
        Ok(Response::new(pb::LeaveResponse {}))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let span = if request.metadata().get("traceparent").is_some() {
            let span = tracing::info_span!("peer", otel.name = "sidelog.v1.Peer/ReadIndex", otel.kind = "server");
            crate::trace_context::adopt(request.metadata(), &span);
            span
        } else {
            tracing::Span::none()
        };
        let index = self.cluster.read_index().instrument(span).await?;
        Ok(Response::new(pb::ReadIndexResponse {
            index,
            next_offset: self.cluster.node.committed(),
        }))
    }
}

/// `sidelog.v1.Cluster` on the client port: status needs the `consume`
/// permission, removing a node the `admin` permission.
pub struct ClusterAdmin {
    cluster: Arc<Cluster>,
    auth: Arc<Authorizer>,
}

impl ClusterAdmin {
    pub fn new(cluster: Arc<Cluster>, auth: Arc<Authorizer>) -> Self {
        ClusterAdmin { cluster, auth }
    }

    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }

    fn authorize<T>(&self, request: &Request<T>, action: &'static str) -> Result<(), Status> {
        let peer = request.extensions().get::<PeerInfo>();
        self.auth.check(peer, action).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterAdmin {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        self.authorize(&request, "consume")?;
        Ok(Response::new(self.cluster.status()))
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        self.authorize(&request, "admin")?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("RemoveRequest.id is required"));
        }
        self.cluster.remove(&id).await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }
}
