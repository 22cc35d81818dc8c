//! The peer service (Raft RPCs, forwarding, join/leave) and the cluster
//! admin service of the client port.

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{
    Cluster,
    host::Host,
    network::{self, receive_snapshot},
    pb::{self, cluster_server::ClusterServer, peer_server::PeerServer},
    types::Snapshot,
};
use super::{
    NodeId,
    catalog::{DEFAULT_LOG, LogSettings, LogSpec},
};
use crate::security::{ACT_ADMIN, ACT_CONSUME, Authorizer, OBJECT_ANY, PeerInfo};

fn raft_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

/// `sidelog.v1.Peer`: every call that belongs to one Raft group names it
/// (empty: the default log's); joins, leaves and hellos are the
/// process's, answered by the default group (it holds the membership).
pub struct PeerService {
    host: Arc<Host>,
    cluster: Arc<Cluster>,
}

impl PeerService {
    pub fn new(host: Arc<Host>) -> Self {
        PeerService {
            cluster: host.default_group().clone(),
            host,
        }
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
        let r = request.into_inner();
        let c = self.host.peer_group(&r.group)?;
        let req = network::append_request_from_pb(r)?;
        let resp = c.raft.append_entries(req).await.map_err(raft_status)?;
        if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
            c.peers.contacts().leader_seen();
        }
        Ok(Response::new(network::append_response_to_pb(resp)))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let r = request.into_inner();
        let c = self.host.peer_group(&r.group)?;
        // A candidate outside this node's membership (removed while away)
        // must not raise the group's term: refused before Raft sees it.
        let candidate = r.vote.as_ref().and_then(|v| v.node_id);
        let m = c.metrics();
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
        let resp = c.raft.vote(req).await.map_err(raft_status)?;
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
        use futures_util::StreamExt;
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let c = self.host.peer_group(&first.group)?;
        let dir = c
            .node
            .log()
            .dir()
            .join(format!("snapshot-in-{}", network::next_tmp_id()));
        let (vote, meta, data) = receive_snapshot(first, stream, dir).await?;
        tracing::info!(group = %c.config.group, last = ?meta.last_log_id, "received a snapshot");
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(data),
        };
        let resp = c
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(raft_status)?;
        c.peers.contacts().leader_seen();
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
        let r = request.into_inner();
        if !r.catalog_op.is_empty() {
            let op = serde_json::from_slice(&r.catalog_op)
                .map_err(|e| Status::invalid_argument(format!("bad catalog change: {e}")))?;
            let (index, applied) = self.host.propose_catalog_as_leader(op).await?;
            return Ok(Response::new(pb::ForwardResponse {
                catalog_index: index,
                catalog_applied: applied as u32,
                ..Default::default()
            }));
        }
        let c = self.host.peer_group(&r.group)?;
        let offsets = c.produce_as_leader(r.values).instrument(span).await?;
        Ok(Response::new(pb::ForwardResponse {
            offsets,
            ..Default::default()
        }))
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
        let c = self.host.peer_group(&request.get_ref().group)?;
        Ok(Response::new(c.answer_pre_vote(request.get_ref())))
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
        let r = request.into_inner();
        let c = self.host.peer_group(&r.group)?;
        let resp = c.serve_read(r).instrument(span).await?;
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
        let c = self.host.peer_group(&request.get_ref().group)?;
        let index = c.read_index().instrument(span).await?;
        Ok(Response::new(pb::ReadIndexResponse {
            index,
            next_offset: c.node.committed(),
        }))
    }
}

/// `sidelog.v1.Cluster` on the client port: status, listing and
/// describing logs need the `consume` permission; removing a node the
/// `admin` permission; creating and deleting a log `admin` on its name.
pub struct ClusterAdmin {
    host: Arc<Host>,
    auth: Arc<Authorizer>,
}

impl ClusterAdmin {
    pub fn new(host: Arc<Host>, auth: Arc<Authorizer>) -> Self {
        ClusterAdmin { host, auth }
    }

    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }

    fn authorize<T>(&self, request: &Request<T>, object: &str, action: &'static str) -> Result<(), Status> {
        let peer = request.extensions().get::<PeerInfo>();
        self.auth.check_on(peer, object, action).map_err(Status::from)
    }
}

fn settings_from_pb(s: Option<pb::LogSettings>) -> LogSettings {
    let s = s.unwrap_or_default();
    LogSettings {
        retention_bytes: s.retention_bytes,
        retention_age_secs: s.retention_age_secs,
        max_record_bytes: s.max_record_bytes,
        segment_max_bytes: s.segment_max_bytes,
    }
}

fn settings_to_pb(s: &LogSettings) -> pb::LogSettings {
    pb::LogSettings {
        retention_bytes: s.retention_bytes,
        retention_age_secs: s.retention_age_secs,
        max_record_bytes: s.max_record_bytes,
        segment_max_bytes: s.segment_max_bytes,
    }
}

/// A log as `describe` shows it: its catalog entry and this node's view of
/// its group.
pub fn log_info(spec: &LogSpec, group: Option<&Cluster>) -> pb::LogInfo {
    let mut info = pb::LogInfo {
        name: spec.name.clone(),
        settings: Some(settings_to_pb(&spec.settings)),
        incarnation: spec.incarnation,
        ..Default::default()
    };
    if let Some(c) = group {
        let m = c.metrics();
        let membership = m.membership_config.membership();
        let name_of = |id: &NodeId| {
            membership
                .get_node(id)
                .map_or_else(|| id.to_string(), |n| n.name.clone())
        };
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        info.leader = m.current_leader.as_ref().map(name_of);
        info.preferred_leader = super::catalog::preferred_leader(&spec.group_id(), &voters)
            .as_ref()
            .map(name_of)
            .unwrap_or_default();
        info.voters = voters.iter().map(name_of).collect();
        info.learners = membership.learner_ids().map(|id| name_of(&id)).collect();
        info.first_offset = c.node().log().first_offset();
        info.next_offset = c.node().committed();
        info.disk_bytes = c.node().log().disk_bytes();
    }
    info
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterAdmin {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        self.authorize(&request, OBJECT_ANY, ACT_CONSUME)?;
        Ok(Response::new(self.host.default_group().status()))
    }

    async fn remove(&self, request: Request<pb::RemoveRequest>) -> Result<Response<pb::RemoveResponse>, Status> {
        self.authorize(&request, OBJECT_ANY, ACT_ADMIN)?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("RemoveRequest.id is required"));
        }
        self.host.default_group().remove(&id).await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }

    async fn create_log(&self, request: Request<pb::CreateLogRequest>) -> Result<Response<pb::LogInfo>, Status> {
        let name = request.get_ref().name.clone();
        self.authorize(&request, &name, ACT_ADMIN)?;
        let r = request.into_inner();
        let spec = self
            .host
            .create(&name, settings_from_pb(r.settings), r.if_not_exists)
            .await?;
        let group = self.host.group(&name).ok();
        Ok(Response::new(log_info(&spec, group.as_deref())))
    }

    async fn list_logs(&self, request: Request<pb::ListLogsRequest>) -> Result<Response<pb::ListLogsResponse>, Status> {
        self.authorize(&request, OBJECT_ANY, ACT_CONSUME)?;
        let mut logs = vec![default_info(&self.host)];
        logs.extend(self.host.logs().iter().map(|(spec, c)| log_info(spec, c.as_deref())));
        Ok(Response::new(pb::ListLogsResponse { logs }))
    }

    async fn describe_log(&self, request: Request<pb::DescribeLogRequest>) -> Result<Response<pb::LogInfo>, Status> {
        let name = request.get_ref().name.clone();
        self.authorize(&request, if name.is_empty() { DEFAULT_LOG } else { &name }, ACT_CONSUME)?;
        if name.is_empty() || name == DEFAULT_LOG {
            return Ok(Response::new(default_info(&self.host)));
        }
        let group = self.host.group(&name)?;
        let spec = self
            .host
            .spec(&name)
            .ok_or_else(|| Status::not_found(format!("log {name:?} does not exist")))?;
        Ok(Response::new(log_info(&spec, Some(&group))))
    }

    async fn delete_log(
        &self,
        request: Request<pb::DeleteLogRequest>,
    ) -> Result<Response<pb::DeleteLogResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.authorize(&request, &name, ACT_ADMIN)?;
        self.host.delete(&name).await?;
        Ok(Response::new(pb::DeleteLogResponse {}))
    }
}

/// The default log, as `list` and `describe` show it.
pub fn default_info(host: &Host) -> pb::LogInfo {
    let s = host.settings();
    let spec = LogSpec {
        name: DEFAULT_LOG.into(),
        settings: LogSettings {
            retention_bytes: s.retention.max_bytes.unwrap_or(0),
            retention_age_secs: s.retention.max_age.map_or(0, |d| d.as_secs()),
            max_record_bytes: s.max_record_bytes,
            segment_max_bytes: s.log_config.segment_max_bytes,
        },
        incarnation: 0,
        voters: Default::default(),
    };
    let mut info = log_info(&spec, Some(host.default_group()));
    info.preferred_leader = String::new();
    info
}
