//! Sidecars without a log (issue 18: a large group must not cost the
//! leader a replication stream per pod).
//!
//! The group keeps `--voters` voters and `--standbys` non-voters with a
//! full replica (standbys take a dead voter's place within seconds). A
//! sidecar that joins when those places are filled is *attached* instead
//! of added: it is not a Raft member and holds no log. Its apps still talk
//! to it on localhost: it forwards their writes to the leader (as a
//! follower does) and reads from its *home*, a replica the leader picks
//! for it (a non-leader replica when there is one, spread by name), over
//! the peer port's `Read`. It joins again every second (a heartbeat the
//! leader answers without taking the membership lock), which tells it who
//! leads, keeps it in the leader's table of attached sidecars, and lets
//! the leader's upkeep turn it into a standby when a replica is needed.
//!
//! On the leader the table of attached sidecars is soft state: a new
//! leader learns it from the next heartbeats.

use std::{
    hash::{Hash, Hasher},
    time::{Duration, Instant},
};

use openraft::ServerState;

use super::{Cluster, NodeId, NodeInfo, network, pb, unavailable, within};
use crate::{
    node::{NodeError, ServerInfo},
    storage::Record,
};

/// How often an attached sidecar joins again (its heartbeat).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a heartbeat waits for the leader's answer.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the leader counts an attached sidecar alive after a heartbeat
/// (for picking standbys; `cluster status` lists it until the dead-member
/// timeout).
pub const ATTACHED_ALIVE: Duration = Duration::from_secs(3);

/// The longest a `Read` waits for a record to be committed.
const MAX_READ_WAIT: Duration = Duration::from_secs(10);

/// What an attached sidecar knows of its group (from the leader's last
/// answer).
#[derive(Clone, Debug)]
pub struct Attachment {
    pub leader: (NodeId, NodeInfo),
    pub home: (NodeId, NodeInfo),
    pub members: Vec<NodeInfo>,
    pub at: Instant,
    /// Made a member: reads stay with the home until this node's own
    /// replica has committed up to here (the leader's watermark then).
    pub catching_up: Option<u64>,
}

/// How a join was answered.
#[derive(Debug)]
pub enum Admitted {
    /// A member (a non-voter until the upkeep promotes it).
    Member,
    /// Attached, not a member.
    Attached(Box<pb::JoinResponse>),
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// This node's attachment, however old.
    pub fn attachment(&self) -> Option<Attachment> {
        lock(&self.attachment).clone()
    }

    /// This node is in its own view of the membership and not found removed.
    pub(super) fn is_current_member(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&self.config.id).is_some() && !self.is_removed()
    }

    /// Reads go to a replica elsewhere: this node holds no log (attached),
    /// what it holds may be stale (removed, rejoining), or it was just made
    /// a member and has not caught up yet, and it knows a home to read from.
    pub fn reads_remote(&self) -> Option<(NodeId, NodeInfo)> {
        let member = self.is_current_member();
        let mut slot = lock(&self.attachment);
        let a = slot.as_ref()?;
        if member && a.catching_up.is_none_or(|t| self.node.committed() >= t) {
            // A member with its own replica now: what the attachment said
            // (leader, home, members) is history.
            *slot = None;
            return None;
        }
        Some(a.home.clone())
    }

    /// This sidecar runs without a current replica of its own: it reads
    /// from a home replica and forwards writes to the leader it was told.
    pub fn is_attached(&self) -> bool {
        self.attached_leader().is_some()
    }

    /// Attached, and the leader answered within the readiness window.
    pub(super) fn attached_ready(&self) -> bool {
        let window = self.leader_contact_window().max(HEARTBEAT * 3);
        self.attachment().is_some_and(|a| a.at.elapsed() < window)
    }

    /// The leader this attached sidecar forwards to (when not a member).
    pub(super) fn attached_leader(&self) -> Option<(NodeId, NodeInfo)> {
        if self.is_current_member() {
            return None;
        }
        // Not the whole attachment (its member list): this is on the write path.
        let slot = lock(&self.attachment);
        slot.as_ref()
            .filter(|a| a.catching_up.is_none())
            .map(|a| a.leader.clone())
    }

    /// `GetServers` on an attached sidecar: the members the leader named.
    pub(super) fn attached_servers(&self) -> Option<Vec<ServerInfo>> {
        self.attached_leader()?;
        let a = self.attachment()?;
        Some(
            a.members
                .iter()
                .map(|n| ServerInfo {
                    id: n.name.clone(),
                    rpc_addr: n.client_addr.clone(),
                    is_leader: n.name == a.leader.1.name,
                })
                .collect(),
        )
    }

    /// Records the leader's answer to a join: attached (with its view) or
    /// a member.
    pub(super) fn set_attachment(&self, resp: &pb::JoinResponse) {
        let mut slot = lock(&self.attachment);
        if !resp.attached {
            if let Some(a) = slot.as_mut()
                && a.catching_up.is_none()
            {
                tracing::info!(
                    catch_up_to = resp.next_offset,
                    "this sidecar is a member now: it keeps a replica of the log (reads stay with its home until it \
                     has caught up)"
                );
                a.catching_up = Some(resp.next_offset);
            }
            return;
        }
        let (Some(leader), Some(home)) = (resp.leader.clone(), resp.home.clone()) else {
            return;
        };
        let leader = network::node_info_from_pb(leader);
        let home = network::node_info_from_pb(home);
        if slot
            .as_ref()
            .is_none_or(|a| a.home.1 != home.1 || a.leader.1 != leader.1)
        {
            tracing::info!(leader = %leader.1.name, home = %home.1.name,
                "attached without a log: writes go to the leader, reads to the home replica");
        }
        *slot = Some(Attachment {
            leader,
            home,
            members: resp
                .members
                .iter()
                .cloned()
                .map(|n| network::node_info_from_pb(n).1)
                .collect(),
            at: Instant::now(),
            catching_up: None,
        });
    }

    /// On the leader: admits a joining node, as a member or attached.
    /// Attached when it may be (`may_attach`), it is not a member yet, and
    /// the group has all the replicas it wants (see [`Self::wants_replica`]).
    pub(super) async fn admit(&self, id: NodeId, info: NodeInfo, may_attach: bool) -> Result<Admitted, NodeError> {
        let is_member = |c: &Self| c.metrics().membership_config.membership().get_node(&id).is_some();
        if may_attach && !is_member(self) {
            // A heartbeat, or a join while the group has its replicas: no
            // lock, no change (the upkeep may hold the lock for long).
            if lock(&self.attached).contains_key(&id) || !self.wants_replica(&info) {
                return Ok(Admitted::Attached(Box::new(self.attach(id, info))));
            }
            let _one_change = self.change_lock.lock().await;
            if !is_member(self) && !self.wants_replica(&info) {
                return Ok(Admitted::Attached(Box::new(self.attach(id, info))));
            }
            self.add_member_locked(id, info).await?;
        } else {
            self.add_member(id, info).await?;
        }
        lock(&self.attached).remove(&id);
        Ok(Admitted::Member)
    }

    /// On the leader: an attached sidecar is going away (its shutdown).
    pub(super) fn detach(&self, name: &str) -> bool {
        lock(&self.attached).remove(&super::types::node_id(name)).is_some()
    }

    /// Whether the group wants one more replica (a joining `info` becomes
    /// a non-voter rather than attached): fewer live replicas than
    /// `--voters` plus `--standbys`, or `info`'s failure domain holds no
    /// replica at all while voters share one.
    fn wants_replica(&self, info: &NodeInfo) -> bool {
        let views = self.member_views_now();
        let live = views.iter().filter(|m| m.replica && m.alive).count();
        let voters = views.iter().filter(|m| m.voter).count();
        if live < self.config.voters.max(voters) + self.config.standbys {
            return true;
        }
        super::membership::domain_lacks_replica(&views, &info.domain)
    }

    /// Records (or refreshes) an attached sidecar and says where it reads.
    fn attach(&self, id: NodeId, info: NodeInfo) -> pb::JoinResponse {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        // Its home: a live, caught-up non-leader replica whose build serves
        // `Read`, chosen by rendezvous hashing of the two names (a sidecar
        // keeps its home while that replica stays); the leader when there
        // is none.
        let views = self.member_views_now();
        let last = m.last_log_index.unwrap_or(0);
        let home = views
            .iter()
            .filter(|v| v.replica && v.alive && v.attachable && v.id != self.config.id)
            .filter(|v| {
                v.matched
                    .is_some_and(|i| i + super::membership::PROMOTE_MAX_LAG >= last)
            })
            .filter_map(|v| membership.get_node(&v.id))
            .max_by_key(|n| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (info.name.as_str(), n.name.as_str()).hash(&mut h);
                h.finish()
            })
            .cloned()
            .unwrap_or_else(|| self.config.info.clone());
        lock(&self.attached).insert(id, (info, Instant::now()));
        pb::JoinResponse {
            cluster_id: self.store.cluster_id().unwrap_or_default(),
            attached: true,
            leader: Some(network::node_info_to_pb(&self.config.info)),
            home: Some(network::node_info_to_pb(&home)),
            members: membership.nodes().map(|(_, n)| network::node_info_to_pb(n)).collect(),
            next_offset: self.node.committed(),
        }
    }

    /// The attached sidecars the leader heard from within `timeout`
    /// (older entries are dropped), as (id, info, last heard).
    pub(super) fn attached_sidecars(&self, timeout: Duration) -> Vec<(NodeId, NodeInfo, Instant)> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let mut table = lock(&self.attached);
        table.retain(|id, (_, at)| at.elapsed() < timeout && membership.get_node(id).is_none());
        table.iter().map(|(id, (info, at))| (*id, info.clone(), *at)).collect()
    }

    /// Serves a `Read` from an attached sidecar: committed records from
    /// this replica, waiting up to `wait_ms` for the first one.
    pub(super) async fn serve_read(&self, r: pb::ReadRequest) -> Result<pb::ReadResponse, NodeError> {
        if !self.is_current_member() {
            return Err(unavailable(format!(
                "{} holds no current replica to read from",
                self.config.info.name
            )));
        }
        if r.linearizable {
            self.read_barrier().await?;
        }
        let wait = Duration::from_millis(r.wait_ms.into()).min(MAX_READ_WAIT);
        let (records, first, next) = match self
            .read_local(r.offset, r.max_records as usize, r.max_bytes as usize, wait)
            .await
        {
            Ok(batch) => batch,
            Err(NodeError::OutOfRange { first, next, .. }) => {
                return Ok(pb::ReadResponse {
                    records: Vec::new(),
                    out_of_range: true,
                    first,
                    next,
                });
            }
            Err(e) => return Err(e),
        };
        Ok(pb::ReadResponse {
            records: records
                .into_iter()
                .map(|rec| pb::ReadRecord {
                    offset: rec.offset,
                    value: rec.value,
                    term: rec.term,
                })
                .collect(),
            out_of_range: false,
            first,
            next,
        })
    }

    /// Committed records of this node's own log from `offset`, waiting up
    /// to `wait` for the first; with the log's first and next offsets.
    async fn read_local(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<(Vec<Record>, u64, u64), NodeError> {
        let max_records = max_records.clamp(1, 4096);
        let max_bytes = max_bytes.clamp(1, 8 << 20);
        let deadline = tokio::time::Instant::now() + wait;
        let mut commit = self.node.subscribe_commit();
        loop {
            commit.borrow_and_update();
            let batch = self.node.read_batch_off_runtime(offset, max_records, max_bytes).await?;
            if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok((batch, self.node.log().first_offset(), self.node.committed()));
            }
            if self.node.committed() > offset {
                continue;
            }
            tokio::select! {
                changed = commit.changed() => if changed.is_err() { return Err(unavailable("the node is shutting down")) },
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.shutdown.cancelled() => return Err(unavailable("the node is shutting down")),
            }
        }
    }

    /// The committed record at `offset`: from this node's log, or from its
    /// home replica when it reads remotely (see [`Self::reads_remote`]).
    pub async fn read(&self, offset: u64, linearizable: bool) -> Result<Record, NodeError> {
        let Some(home) = self.reads_remote() else {
            if linearizable {
                self.read_barrier().await?;
            }
            return self.node.read_off_runtime(offset).await;
        };
        let (records, first, next) = self
            .read_remote_via(home, offset, 1, 1, Duration::ZERO, linearizable)
            .await?;
        records
            .into_iter()
            .next()
            .ok_or(NodeError::OutOfRange { offset, first, next })
    }

    /// Committed records from `offset` (at most `max_records`, roughly
    /// `max_bytes`), waiting up to `wait` for the first, with the first and
    /// next offsets of the log they came from: this node's own log, or its
    /// home replica's when it reads remotely (decided per call, so a
    /// stream moves to the local replica once it has caught up).
    pub async fn read_records(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
        linearizable: bool,
    ) -> Result<(Vec<Record>, u64, u64), NodeError> {
        match self.reads_remote() {
            Some(home) => {
                self.read_remote_via(home, offset, max_records, max_bytes, wait, linearizable)
                    .await
            }
            None => {
                if linearizable {
                    self.read_barrier().await?;
                }
                self.read_local(offset, max_records, max_bytes, wait).await
            }
        }
    }

    /// [`Self::read_records`] from `home`; when the home cannot answer,
    /// once more from the leader.
    async fn read_remote_via(
        &self,
        home: (NodeId, NodeInfo),
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
        linearizable: bool,
    ) -> Result<(Vec<Record>, u64, u64), NodeError> {
        let first_try = self
            .read_from(&home, offset, max_records, max_bytes, wait, linearizable)
            .await;
        match (first_try, self.attachment().map(|a| a.leader)) {
            (Err(NodeError::Unavailable(e)), Some(leader)) if leader.0 != home.0 => {
                tracing::debug!(cause = %e, leader = %leader.1.name, "home replica unavailable: reading from the leader");
                self.read_from(&leader, offset, max_records, max_bytes, wait, linearizable)
                    .await
            }
            (r, _) => r,
        }
    }

    async fn read_from(
        &self,
        (home, info): &(NodeId, NodeInfo),
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
        linearizable: bool,
    ) -> Result<(Vec<Record>, u64, u64), NodeError> {
        let mut client = self
            .peers
            .client(Some(home), &info.peer_addr)
            .map_err(|e| unavailable(format!("reading from {}: {e}", info.name)))?;
        let mut req = tonic::Request::new(pb::ReadRequest {
            group: self.config.group.clone(),
            offset,
            max_records: max_records.min(u32::MAX as usize) as u32,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
            wait_ms: wait.as_millis().min(u32::MAX as u128) as u32,
            linearizable,
        });
        let limit = wait + self.config.write_timeout;
        req.set_timeout(limit);
        crate::trace_context::inject(&mut req);
        let resp = within(limit, client.read(req))
            .await
            .ok_or_else(|| unavailable(format!("reading from {}: no answer within {limit:?}", info.name)))?
            .map_err(|s| unavailable(format!("reading from {}: {}", info.name, s.message())))?
            .into_inner();
        if resp.out_of_range {
            return Err(NodeError::OutOfRange {
                offset,
                first: resp.first,
                next: resp.next,
            });
        }
        let mut expect = offset;
        let mut records = Vec::with_capacity(resp.records.len());
        for r in resp.records {
            if r.offset != expect {
                return Err(unavailable(format!(
                    "{} answered offset {} where {expect} was due",
                    info.name, r.offset
                )));
            }
            expect += 1;
            records.push(Record {
                offset: r.offset,
                term: r.term,
                value: r.value,
            });
        }
        Ok((records, resp.first, resp.next))
    }

    /// The attached sidecars for `cluster status` (leader only).
    pub(super) fn attached_status(&self) -> Vec<pb::Member> {
        if self.metrics().state != ServerState::Leader {
            return Vec::new();
        }
        let mut list = self.attached_sidecars(self.config.dead_member_timeout);
        list.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        list.into_iter()
            .map(|(_, info, at)| pb::Member {
                id: info.name,
                peer_addr: info.peer_addr,
                client_addr: info.client_addr,
                failure_domain: info.domain,
                last_contact_ms: Some(at.elapsed().as_millis() as u64),
                ..Default::default()
            })
            .collect()
    }

    /// An attached sidecar's heartbeat: joins through the leader it knows.
    /// False when that failed (the caller looks for the group again).
    pub(super) async fn heartbeat(&self) -> bool {
        // Also while told "member" but not one yet (no AppendEntries
        // arrived): the leader may shed it again before it does.
        if self.is_current_member() {
            return false;
        }
        let Some(a) = self.attachment() else {
            return false;
        };
        match self.join_via(a.leader.0, &a.leader.1, HEARTBEAT_TIMEOUT).await {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(cause = %e, "the leader did not answer the heartbeat; looking for the group");
                false
            }
        }
    }

    /// On shutdown: an attached sidecar tells the leader it is going, so
    /// the upkeep does not pick it as a standby.
    pub async fn detach_on_stop(&self) {
        let Some((lid, linfo)) = self.attached_leader() else {
            return;
        };
        let Ok(mut client) = self.peers.client(Some(&lid), &linfo.peer_addr) else {
            return;
        };
        let mut req = tonic::Request::new(pb::LeaveRequest {
            id: self.config.info.name.clone(),
        });
        req.set_timeout(HEARTBEAT_TIMEOUT);
        let _ = within(HEARTBEAT_TIMEOUT, client.leave(req)).await;
    }
}
