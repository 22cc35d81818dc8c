//! Keeping the group whole without an operator (DESIGN decision 8: sidecars
//! are cattle).
//!
//! Three loops run on every node, each cancellable:
//!
//! - **Elections** ([`run_elections`]). openraft's own election timer is
//!   off; this loop waits a randomized election timeout (the jitter is ours)
//!   without hearing from a leader, then asks the other voters a *pre-vote*
//!   (Raft thesis 9.6): would you vote for me? A voter says yes only when it
//!   has not heard from a leader for an election timeout itself, the
//!   candidate is a voter in its own view of the membership, and the
//!   candidate's log is at least as up to date as its own. Only a node that
//!   wins the pre-vote starts a real election. So a node that was partitioned
//!   away, or removed while stopped, never raises the group's term and never
//!   deposes a healthy leader when it returns.
//! - **Upkeep** ([`run_upkeep`], acting on the leader only). It keeps
//!   `--voters` voters: a voter no peer has heard from for
//!   `--dead-member-timeout` is replaced by the most caught-up live
//!   non-voter (in one joint change, so the group never has fewer live
//!   voters than before), dead non-voters are removed, voters are added while
//!   there are fewer than the target and demoted when there are more, and
//!   voters are moved to failure domains that hold none. No change is made
//!   unless both the old and the new voter sets have a live majority. The
//!   pure decision is [`plan`].
//! - **Watch** ([`run_watch`], every node). A node that finds it is no
//!   longer a member (its own log says so, a leader told it, or, after a
//!   while without a leader, a peer that has one says so) stops serving
//!   reads, reports not ready, and asks the leader to add it again as a
//!   non-voter; it is ready again once it is a member that hears from the
//!   leader. It also learns the cluster id from the leader.

use std::{
    collections::{BTreeSet, HashMap},
    hash::{BuildHasher, Hasher},
    sync::{Arc, Mutex, Weak, atomic::Ordering},
    time::{Duration, Instant},
};

use openraft::{ChangeMembers, ServerState};
use tokio_util::sync::CancellationToken;

use super::{Cluster, pb, types::NodeId};

/// How many entries a non-voter may trail the leader's log and still be
/// promoted: a voter far behind would slow every commit while it catches up.
pub const PROMOTE_MAX_LAG: u64 = 1_000;

/// How long the upkeep waits for one change to commit.
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// How often the upkeep and watch loops look.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// When peers last answered this node, and when a leader last reached it.
#[derive(Debug)]
pub struct Contacts {
    started: Instant,
    answered: Mutex<HashMap<NodeId, Instant>>,
    /// When each member was added here (a join on this leader).
    joined: Mutex<HashMap<NodeId, Instant>>,
    leader_seen: Mutex<Option<Instant>>,
    /// When this node last granted a pre-vote: it then waits a full
    /// timeout before campaigning itself, so the candidate it backed can win.
    granted: Mutex<Option<Instant>>,
}

impl Default for Contacts {
    fn default() -> Self {
        Contacts {
            started: Instant::now(),
            answered: Default::default(),
            joined: Default::default(),
            leader_seen: Default::default(),
            granted: Default::default(),
        }
    }
}

impl Contacts {
    /// `id` answered a Raft RPC of ours.
    pub fn answered(&self, id: NodeId) {
        lock(&self.answered).insert(id, Instant::now());
    }

    /// When `id` last answered a Raft RPC of ours.
    pub fn last_answer(&self, id: &NodeId) -> Option<Instant> {
        lock(&self.answered).get(id).copied()
    }

    /// `id` was just added (a join).
    pub fn joined(&self, id: NodeId) {
        lock(&self.joined).insert(id, Instant::now());
    }

    /// Whether member `id` counts as alive for the leader, which leads
    /// since `since`: it answered within `timeout` (or the leader is newer
    /// than that). A member added here that has not answered since gets
    /// four timeouts: its address may not resolve yet (a new pod's DNS
    /// record, a container network's resolver that lags), and a non-voter
    /// that never answered costs nothing but a backed-off stream.
    pub fn alive(&self, id: &NodeId, since: Instant, timeout: Duration) -> bool {
        let answered = self.last_answer(id);
        let joined = lock(&self.joined).get(id).copied();
        match (answered, joined) {
            (a, Some(j)) if a.is_none_or(|a| a < j) => j.elapsed() < timeout * 4,
            (a, _) => a.map_or(since, |a| a.max(since)).elapsed() < timeout,
        }
    }

    /// A leader's AppendEntries or snapshot was accepted here.
    pub fn leader_seen(&self) {
        *lock(&self.leader_seen) = Some(Instant::now());
    }

    /// Time since a leader last reached this node (since start if never).
    pub fn since_leader(&self) -> Duration {
        lock(&self.leader_seen).map_or_else(|| self.started.elapsed(), |t| t.elapsed())
    }

    /// This node granted a pre-vote.
    pub fn granted(&self) {
        *lock(&self.granted) = Some(Instant::now());
    }

    /// Time since this node last granted a pre-vote (since start if never).
    pub fn since_granted(&self) -> Duration {
        lock(&self.granted).map_or_else(|| self.started.elapsed(), |t| t.elapsed())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A uniformly random duration in `[min, max]`: every node draws its own
/// election timeout, so they rarely campaign at once.
pub fn jitter(min: Duration, max: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let spread = max.saturating_sub(min).as_nanos().max(1) as u64;
    min + Duration::from_nanos(h.finish() % spread)
}

/// A majority of every configuration of `joint` is in `yes`.
pub fn majority_in_each(joint: &[BTreeSet<NodeId>], yes: impl Fn(&NodeId) -> bool) -> bool {
    joint
        .iter()
        .all(|cfg| cfg.iter().filter(|id| yes(id)).count() * 2 > cfg.len())
}

/// How long a follower waits without a leader before campaigning: a
/// random time in the election timeout; in a named log's group, its
/// preferred voter campaigns first (after the minimum) and the others
/// after the maximum, so leadership returns to the preferred voter and
/// stays spread (see `host`).
fn election_wait(c: &Cluster, min: Duration, max: Duration) -> Duration {
    if c.follows.is_none() {
        return jitter(min, max);
    }
    if super::host::prefers_me(c) {
        min
    } else {
        jitter(max, max + (max - min))
    }
}

/// Drives elections with a pre-vote (see the module docs).
pub(super) async fn run_elections(cluster: Weak<Cluster>, token: CancellationToken) {
    let Some((min, max)) = cluster.upgrade().map(|c| c.config.election_timeout) else {
        return;
    };
    let mut wait = jitter(min, max);
    let mut last_attempt = Instant::now();
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(min / 5) => {}
            _ = token.cancelled() => return,
        }
        let Some(c) = cluster.upgrade() else { return };
        let m = c.metrics();
        if m.state == ServerState::Leader {
            was_leader = true;
            continue;
        }
        if was_leader {
            // Just stepped down: give the others a full timeout first.
            was_leader = false;
            last_attempt = Instant::now();
        }
        if !matches!(m.state, ServerState::Follower | ServerState::Candidate) {
            continue;
        }
        let joint = m.membership_config.membership().get_joint_config().clone();
        let me = c.config.id;
        if !joint.iter().any(|cfg| cfg.contains(&me)) {
            continue;
        }
        let alone = joint.iter().all(|cfg| cfg.len() == 1 && cfg.contains(&me));
        let contacts = c.peers.contacts();
        let quiet = contacts
            .since_leader()
            .min(contacts.since_granted())
            .min(last_attempt.elapsed());
        if quiet < if alone { min / 5 } else { wait } {
            continue;
        }
        last_attempt = Instant::now();
        wait = election_wait(&c, min, max);
        let won = alone
            || tokio::select! {
                won = c.pre_vote(&joint, m.current_term) => won,
                _ = token.cancelled() => return,
            };
        // Someone may have won (or reached us) while we asked.
        let now = c.metrics();
        let unchanged = now.current_term == m.current_term
            && matches!(now.state, ServerState::Follower | ServerState::Candidate)
            && c.peers.contacts().since_leader() >= quiet.min(min);
        if won && unchanged {
            tracing::info!(term = m.current_term + 1, "no leader heard from: starting an election");
            if let Err(e) = c.raft.trigger().elect().await {
                tracing::warn!(cause = %e, "could not start an election");
            }
        }
    }
}

/// A joint configuration that outlived the call that made it (a leader
/// change, a cancelled call): openraft 0.9 never finishes it by itself.
/// Once its entry is applied, its last configuration, to move to.
pub(super) fn joint_to_finish(m: &super::types::RaftMetrics) -> Option<BTreeSet<NodeId>> {
    let joint = m.membership_config.membership().get_joint_config();
    let applied = m
        .membership_config
        .log_id()
        .is_some_and(|l| m.last_applied.is_some_and(|a| a >= l));
    (joint.len() > 1 && applied).then(|| joint.last().cloned()).flatten()
}

/// What the leader knows of one member, for [`plan`].
#[derive(Clone, Debug)]
pub struct MemberView {
    pub id: NodeId,
    pub name: String,
    pub voter: bool,
    /// Heard from within the dead-member timeout (the leader always is).
    pub alive: bool,
    pub domain: String,
    /// The member's matched log index (the leader: its own last index).
    pub matched: Option<u64>,
    /// A Raft member holding a replica; false for a sidecar attached
    /// without a log (see `attach`), which the upkeep may add as a standby.
    pub replica: bool,
    /// Its build can run attached (peer protocol 2 or later), so removing
    /// it as a spare standby makes it attach rather than rejoin as one.
    pub attachable: bool,
}

/// Whether a sidecar in `domain` would spread the voters: the domain holds
/// no live replica at all while two live voters share another domain.
pub fn domain_lacks_replica(members: &[MemberView], domain: &str) -> bool {
    if domain.is_empty() || members.iter().any(|m| m.replica && m.alive && m.domain == domain) {
        return false;
    }
    let mut voters_per_domain: HashMap<&str, usize> = HashMap::new();
    for m in members.iter().filter(|m| m.voter && m.alive && !m.domain.is_empty()) {
        *voters_per_domain.entry(m.domain.as_str()).or_default() += 1;
    }
    voters_per_domain.values().any(|n| *n > 1)
}

/// One membership change the leader should make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The new voter set; members leaving it stay as non-voters if `retain`.
    Voters { voters: BTreeSet<NodeId>, retain: bool },
    /// Non-voters to remove.
    RemoveNodes(BTreeSet<NodeId>),
    /// An attached sidecar to add as a non-voter (a standby).
    AddLearner(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub step: Step,
    /// A metric label: one of a fixed set.
    pub reason: &'static str,
    /// For the log line: who and why.
    pub detail: String,
}

/// The voter set after `leaving` goes (a leave or an operator's remove):
/// the best caught-up live non-voter takes its place when there is one.
/// `None` when the change could not commit with the members alive now (the
/// old and the new set each need a live majority).
pub fn without(me: NodeId, members: &[MemberView], last_index: u64, leaving: NodeId) -> Option<BTreeSet<NodeId>> {
    // The leaving member counts as it is: alive while it is still running
    // (a leave), which the old set's majority may need; never in the new set
    // (it is a voter, so never picked as a learner either).
    let p = Planner::new(me, members, last_index, 0, 0);
    let mut next = p.voters.clone();
    next.remove(&leaving);
    if let Some(best) = p.best_learners(&next, 1).first() {
        next.insert(best.id);
    }
    (p.live_quorum(&p.voters) && p.live_quorum(&next)).then_some(next)
}

/// The largest odd number not above `n` (at least 1).
pub fn odd(n: usize) -> usize {
    if n <= 1 { 1 } else { n - (1 - n % 2) }
}

/// The next membership change, if any (see the module docs for the rules).
/// `me` is the leader; `last_index` its last log index; `voters_target`
/// and `standbys` the `--voters` and `--standbys` settings. `members` also
/// lists the attached sidecars (`replica: false`).
///
/// Voter counts stay odd: an even count tolerates no more failures than
/// the odd count below it, and moving through one (3 voters, one dead,
/// dropped; then one promoted back) opens a window in which one more
/// failure wedges the group in a joint configuration it cannot commit. So
/// a dead voter is only ever *replaced*, never dropped alone, promotions go
/// two at a time (1 to 3, 3 to 5), and an even count left behind (a leave,
/// an operator's remove, an older build) is made odd again.
pub fn plan(me: NodeId, all: &[MemberView], last_index: u64, voters_target: usize, standbys: usize) -> Option<Change> {
    let p = Planner::new(me, all, last_index, voters_target, standbys);
    // In this order; the first rule with something to do decides.
    p.replace_dead_voter()
        .or_else(|| p.remove_dead_non_voters())
        .or_else(|| p.add_standby())
        .or_else(|| p.promote())
        .or_else(|| p.demote())
        .or_else(|| p.spread_domains())
        .or_else(|| p.shed_standby())
}

/// What [`plan`] decides from: the replicas (`members`), the attached
/// sidecars too (`all`), and the settings.
struct Planner<'a> {
    me: NodeId,
    all: &'a [MemberView],
    /// The replicas of `all` (attached sidecars are not members).
    members: Vec<MemberView>,
    voters: BTreeSet<NodeId>,
    /// Live replicas (the leader always is).
    live: usize,
    last_index: u64,
    voters_target: usize,
    standbys: usize,
}

impl<'a> Planner<'a> {
    fn new(me: NodeId, all: &'a [MemberView], last_index: u64, voters_target: usize, standbys: usize) -> Self {
        let members: Vec<MemberView> = all.iter().filter(|m| m.replica).cloned().collect();
        Planner {
            me,
            all,
            voters: members.iter().filter(|m| m.voter).map(|m| m.id).collect(),
            live: members.iter().filter(|m| m.id == me || m.alive).count(),
            members,
            last_index,
            voters_target,
            standbys,
        }
    }

    fn by_id(&self, id: &NodeId) -> Option<&MemberView> {
        self.members.iter().find(|m| m.id == *id)
    }

    fn alive(&self, id: &NodeId) -> bool {
        *id == self.me || self.by_id(id).is_some_and(|m| m.alive)
    }

    fn live_quorum(&self, set: &BTreeSet<NodeId>) -> bool {
        !set.is_empty() && set.iter().filter(|id| self.alive(id)).count() * 2 > set.len()
    }

    fn caught_up(&self, m: &MemberView) -> bool {
        m.matched.is_some_and(|i| i + PROMOTE_MAX_LAG >= self.last_index)
    }

    /// The replicas wanted: the voters (the target, or more while there
    /// are more) and the standbys.
    fn replicas_wanted(&self) -> usize {
        self.voters_target.max(self.voters.len()) + self.standbys
    }

    /// The best `n` non-voters to add to `voters`, one at a time: each in a
    /// failure domain the set so far lacks, then the most caught up, then
    /// by name. Fewer than `n` when not enough are live and caught up.
    fn best_learners(&self, voters: &BTreeSet<NodeId>, n: usize) -> Vec<&MemberView> {
        let mut set = voters.clone();
        let mut picked: Vec<&MemberView> = Vec::new();
        for _ in 0..n {
            let held: BTreeSet<&str> = set
                .iter()
                .filter_map(|id| self.by_id(id))
                .map(|m| m.domain.as_str())
                .collect();
            let next = self
                .members
                .iter()
                .filter(|m| !m.voter && m.alive && self.caught_up(m) && !set.contains(&m.id))
                .min_by(|a, b| {
                    let fresh = |m: &MemberView| !(m.domain.is_empty() || held.contains(m.domain.as_str()));
                    fresh(b)
                        .cmp(&fresh(a))
                        .then(b.matched.cmp(&a.matched))
                        .then(a.name.cmp(&b.name))
                });
            let Some(m) = next else { break };
            set.insert(m.id);
            picked.push(m);
        }
        picked
    }

    /// A voter change, unless the old or the new set lacks a live majority.
    fn voters_change(
        &self,
        next: BTreeSet<NodeId>,
        retain: bool,
        reason: &'static str,
        detail: String,
    ) -> Option<Change> {
        (self.live_quorum(&self.voters) && self.live_quorum(&next)).then_some(Change {
            step: Step::Voters { voters: next, retain },
            reason,
            detail,
        })
    }

    /// Live voters per failure domain (voters without one not counted).
    fn voters_per_domain(&self) -> HashMap<&str, usize> {
        let mut per_domain: HashMap<&str, usize> = HashMap::new();
        for id in &self.voters {
            if let Some(m) = self.by_id(id)
                && !m.domain.is_empty()
            {
                *per_domain.entry(m.domain.as_str()).or_default() += 1;
            }
        }
        per_domain
    }

    /// The voter to demote first (never the leader, nor one in `skip`):
    /// dead before live, then the most crowded domain, then the least
    /// caught up, then by name.
    fn demotable(&self, skip: &BTreeSet<NodeId>) -> Option<&MemberView> {
        let per_domain = self.voters_per_domain();
        let crowded = |m: &MemberView| per_domain.get(m.domain.as_str()).copied().unwrap_or(0);
        self.members
            .iter()
            .filter(|m| m.voter && m.id != self.me && !skip.contains(&m.id))
            .max_by(|a, b| {
                (!self.alive(&a.id))
                    .cmp(&!self.alive(&b.id))
                    .then(crowded(a).cmp(&crowded(b)))
                    .then(b.matched.cmp(&a.matched))
                    .then(a.name.cmp(&b.name))
            })
    }

    /// 1. A dead voter is replaced by a caught-up live non-voter (never
    ///    dropped alone: that would leave an even count).
    fn replace_dead_voter(&self) -> Option<Change> {
        let dead = self.members.iter().find(|m| m.voter && !self.alive(&m.id))?;
        let mut next = self.voters.clone();
        next.remove(&dead.id);
        let w = *self.best_learners(&next, 1).first()?;
        next.insert(w.id);
        self.voters_change(
            next,
            false,
            "replace_dead_voter",
            format!("voter {} is dead; promoting {} in its place", dead.name, w.name),
        )
    }

    /// 2. Dead non-voters go.
    fn remove_dead_non_voters(&self) -> Option<Change> {
        let dead: Vec<&MemberView> = self.members.iter().filter(|m| !m.voter && !m.alive).collect();
        if dead.is_empty() {
            return None;
        }
        let names: Vec<&str> = dead.iter().map(|m| m.name.as_str()).collect();
        Some(Change {
            step: Step::RemoveNodes(dead.iter().map(|m| m.id).collect()),
            reason: "remove_dead_member",
            detail: format!("non-voters {} are dead: removing them", names.join(", ")),
        })
    }

    /// 2b. Fewer live replicas than voters plus standbys, or a failure
    ///     domain without any replica while voters share one: an attached
    ///     sidecar becomes a standby (it catches up, then may be promoted).
    fn add_standby(&self) -> Option<Change> {
        let spread = self
            .all
            .iter()
            .filter(|m| !m.replica && m.alive && domain_lacks_replica(self.all, &m.domain))
            .min_by(|a, b| a.name.cmp(&b.name));
        let refill = if self.live < self.replicas_wanted() {
            spread.or_else(|| {
                self.all
                    .iter()
                    .filter(|m| !m.replica && m.alive)
                    .min_by(|a, b| a.name.cmp(&b.name))
            })
        } else {
            spread
        };
        let m = refill?;
        Some(Change {
            step: Step::AddLearner(m.id),
            reason: "add_standby",
            detail: format!("{} live replicas: {} becomes a standby non-voter", self.live, m.name),
        })
    }

    /// 3. Fewer voters than wanted: promote, to the next odd count.
    fn promote(&self) -> Option<Change> {
        let target = odd(self.voters_target.min(self.live));
        if self.voters.len() >= target {
            return None;
        }
        let need = if self.voters.len() % 2 == 1 { 2 } else { 1 };
        let picked = self.best_learners(&self.voters, need);
        if picked.len() != need {
            return None;
        }
        let mut next = self.voters.clone();
        next.extend(picked.iter().map(|m| m.id));
        self.voters_change(
            next,
            true,
            "promote",
            format!(
                "{} voters, {target} wanted: promoting {}",
                self.voters.len(),
                names(&picked)
            ),
        )
    }

    /// 4. More voters than --voters, or an even count nobody can make odd
    ///    by promotion: demote (never the leader), keeping the count odd.
    fn demote(&self) -> Option<Change> {
        let over = self.voters.len() > self.voters_target.max(1);
        let even = self.voters.len() % 2 == 0;
        if !(over || even) {
            return None;
        }
        let want = if over {
            odd(self.voters_target.max(1)).max(1)
        } else {
            self.voters.len() - 1
        };
        let mut next = self.voters.clone();
        let mut gone = Vec::new();
        while next.len() > want {
            let Some(v) = self.demotable(&self.voters.difference(&next).copied().collect()) else {
                break;
            };
            next.remove(&v.id);
            gone.push(v);
        }
        if gone.is_empty() {
            return None;
        }
        self.voters_change(
            next,
            true,
            "demote",
            format!(
                "{} voters, {want} wanted: {} become non-voters",
                self.voters.len(),
                names(&gone)
            ),
        )
    }

    /// 5. Two voters share a domain while a caught-up non-voter's domain
    ///    has none: swap them.
    fn spread_domains(&self) -> Option<Change> {
        let per_domain = self.voters_per_domain();
        let v = self
            .demotable(&BTreeSet::new())
            .filter(|v| per_domain.get(v.domain.as_str()).copied().unwrap_or(0) > 1)?;
        let mut rest = self.voters.clone();
        rest.remove(&v.id);
        let w = *self
            .best_learners(&rest, 1)
            .first()
            .filter(|w| !w.domain.is_empty() && !per_domain.contains_key(w.domain.as_str()))?;
        let mut next = rest;
        next.insert(w.id);
        self.voters_change(
            next,
            true,
            "spread_domains",
            format!(
                "voters share domain {:?}: {} (domain {:?}) takes {}'s place",
                v.domain, w.name, w.domain, v.name
            ),
        )
    }

    /// 6. More live replicas than voters plus standbys (after a demotion, a
    ///    swap, or from builds before standbys had a bound): a spare
    ///    non-voter goes and attaches without a log. Never one that alone
    ///    holds a domain the voters could move to, nor an older build (it
    ///    would rejoin as a non-voter at once), nor one not replicating yet.
    fn shed_standby(&self) -> Option<Change> {
        if self.live <= self.replicas_wanted() {
            return None;
        }
        let spare_ok = |m: &MemberView| {
            let others: Vec<MemberView> = self.members.iter().filter(|o| o.id != m.id).cloned().collect();
            !domain_lacks_replica(&others, &m.domain)
        };
        let m = self
            .members
            .iter()
            .filter(|m| !m.voter && m.alive && m.attachable && m.matched.is_some() && m.id != self.me && spare_ok(m))
            .min_by(|a, b| a.matched.cmp(&b.matched).then(b.name.cmp(&a.name)))?;
        Some(Change {
            step: Step::RemoveNodes(BTreeSet::from([m.id])),
            reason: "shed_standby",
            detail: format!(
                "{} live replicas, {} wanted: {} holds no log from now on",
                self.live,
                self.replicas_wanted(),
                m.name
            ),
        })
    }
}

fn names(ms: &[&MemberView]) -> String {
    ms.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Applies [`plan`] on the leader, once a second (see the module docs).
pub(super) async fn run_upkeep(cluster: Weak<Cluster>, token: CancellationToken) {
    // (term, when this node became leader in it): a new leader has not
    // heard from anybody yet, so it counts every member alive for one
    // timeout from then.
    let mut leading: Option<(u64, Instant)> = None;
    let mut pass = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
            _ = token.cancelled() => return,
        }
        let Some(c) = cluster.upgrade() else { return };
        let m = c.metrics();
        if m.state != ServerState::Leader {
            leading = None;
            pass = 0; // a new leader surveys the builds at once
            continue;
        }
        // Every member's build, now and then (`cluster status`, the
        // cluster protocol).
        if pass % 10 == 0 {
            tokio::select! {
                _ = c.survey_builds() => {}
                _ = token.cancelled() => return,
            }
        }
        pass += 1;
        let since = match leading {
            Some((term, at)) if term == m.current_term => at,
            _ => {
                let now = Instant::now();
                leading = Some((m.current_term, now));
                now
            }
        };
        if c.leaving.load(Ordering::Acquire) {
            continue;
        }
        let _one_change = tokio::select! {
            g = c.change_lock.lock() => g,
            _ = token.cancelled() => return,
        };
        let m = c.metrics();
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            if let Some(last) = joint_to_finish(&m) {
                tracing::warn!(voters = ?last, "finishing a joint membership change left half done");
                let step = Step::Voters {
                    voters: last,
                    retain: true,
                };
                let result = tokio::select! {
                    r = c.apply_change(&step) => r,
                    _ = token.cancelled() => return,
                };
                if let Err(e) = result {
                    tracing::warn!(cause = %e, "finishing the joint membership change failed");
                }
            }
            continue;
        }
        let views = c.member_views_since(since);
        let Some(change) = plan(
            c.config.id,
            &views,
            m.last_log_index.unwrap_or(0),
            c.config.voters,
            c.config.standbys,
        ) else {
            continue;
        };
        tracing::warn!(reason = change.reason, detail = %change.detail, "changing the membership");
        c.count_change(change.reason);
        // A shed standby is told at once, so it attaches without waiting
        // to notice.
        let told: Vec<super::NodeInfo> = match &change.step {
            Step::RemoveNodes(ids) if change.reason == "shed_standby" => {
                ids.iter().filter_map(|id| membership.get_node(id).cloned()).collect()
            }
            _ => Vec::new(),
        };
        // A long deadline (the change lock is held meanwhile): openraft
        // makes a change in two steps, and a call dropped between them
        // leaves the joint configuration, which a later pass finishes.
        let result = tokio::select! {
            r = tokio::time::timeout(CHANGE_DEADLINE, c.apply_change(&change.step)) => r,
            _ = token.cancelled() => return,
        };
        match result {
            Ok(Ok(())) => {
                tracing::info!(reason = change.reason, "membership changed");
                for info in &told {
                    c.tell_removed(info).await;
                }
            }
            Ok(Err(e)) => tracing::warn!(reason = change.reason, cause = %e, "membership change failed"),
            Err(_) => tracing::warn!(
                reason = change.reason,
                "membership change still not committed; giving up the wait"
            ),
        }
    }
}

/// Notices that this node was removed and rejoins (see the module docs).
pub(super) async fn run_watch(cluster: Weak<Cluster>, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
            _ = token.cancelled() => return,
        }
        let Some(c) = cluster.upgrade() else { return };
        if c.leaving.load(Ordering::Acquire) || !c.raft.is_initialized().await.unwrap_or(false) {
            continue;
        }
        tokio::select! {
            _ = c.watch_step() => {}
            _ = token.cancelled() => return,
        }
    }
}

impl Cluster {
    /// Asks the other voters of `joint` whether they would vote for this
    /// node in `term + 1`; true when a majority of each configuration
    /// (this node included) would.
    pub(super) async fn pre_vote(&self, joint: &[BTreeSet<NodeId>], term: u64) -> bool {
        use futures_util::StreamExt;
        let me = self.config.id;
        let last = self.raft.data_metrics().borrow().last_log;
        let req = pb::PreVoteRequest {
            candidate: self.config.info.name.clone(),
            term: term + 1,
            last_log_id: last.as_ref().map(super::network::log_id_to_pb),
            group: self.config.group.clone(),
        };
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let others: BTreeSet<NodeId> = joint.iter().flatten().copied().filter(|id| *id != me).collect();
        let mut asks: futures_util::stream::FuturesUnordered<_> = others
            .into_iter()
            .filter_map(|id| {
                let info = membership.get_node(&id)?.clone();
                let client = self.peers.client(Some(&id), &info.peer_addr).ok()?;
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(self.config.election_timeout.0);
                let timeout = self.config.election_timeout.0;
                Some(async move {
                    let mut client = client;
                    let Some(answer) = super::within(timeout, client.pre_vote(r)).await else {
                        return (id, false);
                    };
                    match answer {
                        Ok(resp) => {
                            let resp = resp.into_inner();
                            if !resp.granted {
                                tracing::debug!(peer = %info.name, reason = %resp.reason, "pre-vote refused");
                            }
                            (id, resp.granted)
                        }
                        // A build before pre-vote: let Raft's own vote decide.
                        Err(s) if s.code() == tonic::Code::Unimplemented => (id, true),
                        Err(_) => (id, false),
                    }
                })
            })
            .collect();
        let mut yes = BTreeSet::from([me]);
        while let Some((id, granted)) = asks.next().await {
            if granted {
                yes.insert(id);
            }
            if majority_in_each(joint, |id| yes.contains(id)) {
                return true;
            }
        }
        majority_in_each(joint, |id| yes.contains(id))
    }

    /// Answers a pre-vote (see the module docs).
    pub(super) fn answer_pre_vote(&self, req: &pb::PreVoteRequest) -> pb::PreVoteResponse {
        let m = self.metrics();
        let refuse = |reason: String| pb::PreVoteResponse {
            granted: false,
            reason,
            term: m.current_term,
        };
        let candidate = super::types::node_id(&req.candidate);
        let joint = m.membership_config.membership().get_joint_config();
        if !joint.iter().any(|cfg| cfg.contains(&candidate)) {
            return refuse(format!("{} is not a voter in this node's membership", req.candidate));
        }
        let (min, max) = self.config.election_timeout;
        if m.state == ServerState::Leader {
            if self.reaches_quorum(max) {
                return refuse("this node leads and reaches a quorum".into());
            }
        } else {
            let since = self.peers.contacts().since_leader();
            if since < min {
                return refuse(format!("heard from the leader {} ms ago", since.as_millis()));
            }
        }
        let ours = self.raft.data_metrics().borrow().last_log;
        let theirs = req.last_log_id.clone().map(super::network::log_id_from_pb);
        if theirs < ours {
            return refuse("the candidate's log is behind this node's".into());
        }
        self.peers.contacts().granted();
        pb::PreVoteResponse {
            granted: true,
            reason: String::new(),
            term: m.current_term,
        }
    }

    /// This node leads and a majority of every voter configuration (itself
    /// included) answered it within `window`.
    pub fn reaches_quorum(&self, window: Duration) -> bool {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return false;
        }
        let me = self.config.id;
        let contacts = self.peers.contacts();
        majority_in_each(m.membership_config.membership().get_joint_config(), |id| {
            *id == me || contacts.last_answer(id).is_some_and(|t| t.elapsed() < window)
        })
    }

    /// Every member as the leader sees it; `since` is when it became leader.
    pub(super) fn member_views_since(&self, since: Instant) -> Vec<MemberView> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let contacts = self.peers.contacts();
        let timeout = self.config.dead_member_timeout;
        let builds = lock(&self.builds).clone();
        let mut views: Vec<MemberView> = membership
            .nodes()
            .map(|(id, info)| {
                let me = *id == self.config.id;
                let alive = me || contacts.alive(id, since, timeout);
                MemberView {
                    id: *id,
                    name: info.name.clone(),
                    voter: voters.contains(id),
                    alive,
                    domain: info.domain.clone(),
                    matched: if me {
                        m.last_log_index
                    } else {
                        replication.get(id).and_then(|l| l.map(|l| l.index))
                    },
                    replica: true,
                    attachable: builds.get(id).is_some_and(|b| b.1 >= 2),
                }
            })
            .collect();
        views.extend(
            self.attached_sidecars(timeout)
                .into_iter()
                .map(|(id, info, at)| MemberView {
                    id,
                    name: info.name,
                    voter: false,
                    // Heartbeats come every second: one missing for a few
                    // means it is gone (a stopped pod); not a standby pick.
                    alive: at.elapsed() < super::attach::ATTACHED_ALIVE,
                    domain: info.domain,
                    matched: None,
                    replica: false,
                    attachable: true,
                }),
        );
        views
    }

    /// Makes one planned change.
    pub(super) async fn apply_change(&self, step: &Step) -> Result<(), String> {
        let change = match step {
            Step::Voters { voters, .. } => ChangeMembers::ReplaceAllVoters(voters.clone()),
            Step::RemoveNodes(ids) => ChangeMembers::RemoveNodes(ids.clone()),
            Step::AddLearner(id) => {
                let info = lock(&self.attached)
                    .get(id)
                    .map(|(info, _)| info.clone())
                    .ok_or("the attached sidecar is gone")?;
                self.peers.contacts().joined(*id);
                // Not blocking: the upkeep promotes it once caught up.
                return self
                    .raft
                    .add_learner(*id, info, false)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            }
        };
        let retain = matches!(step, Step::Voters { retain: true, .. });
        self.raft
            .change_membership(change, retain)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Counts an automatic membership change by reason.
    pub(super) fn count_change(&self, reason: &'static str) {
        if let Some(counter) = &self.config.membership_changes {
            counter(reason);
        }
    }

    /// One look of [`run_watch`].
    async fn watch_step(&self) {
        let m = self.metrics();
        let me = self.config.id;
        if m.membership_config.membership().nodes().next().is_none() {
            return; // Raft has not reported its state yet
        }
        let member = m.membership_config.membership().get_node(&me).is_some();
        let leads = m.state == ServerState::Leader;
        let (_, max) = self.config.election_timeout;
        let quiet = !leads && self.peers.contacts().since_leader() > 3 * max;
        let removed_flag = self.removed.load(Ordering::Acquire);
        if member && !quiet && !removed_flag && self.store.cluster_id().is_some() {
            return;
        }
        // Attached without a log (after a removal): the heartbeat through
        // the leader it knows is enough while it answers.
        if (!member || removed_flag) && self.is_attached() && self.heartbeat().await && self.is_attached() {
            return;
        }
        // Ask around: the members we know and whatever discovery finds.
        let mut addrs: Vec<String> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(_, n)| n.peer_addr.clone())
            .collect();
        if let Ok(found) = self.config.discovery.peers().await {
            addrs.extend(found);
        }
        addrs.sort();
        addrs.dedup();
        let view = self.survey(&addrs).await;
        if self.store.cluster_id().is_none() {
            match &view.cluster_id {
                Some(id) => self.adopt_cluster_id(id),
                // A cluster formed before ids existed: once every other
                // member has answered without one, the leader names it.
                None if leads
                    && m.membership_config
                        .membership()
                        .nodes()
                        .all(|(id, _)| *id == me || view.answered.contains(id)) =>
                {
                    self.adopt_cluster_id(&super::new_cluster_id())
                }
                None => {}
            }
        }
        let ours = self.store.cluster_id();
        if let (Some(a), Some(b)) = (&ours, &view.cluster_id)
            && a != b
        {
            // Said once, not on every look (once a second).
            if !removed_flag {
                tracing::error!(ours = %a, theirs = %b, "the peers found belong to another cluster; not rejoining");
                self.set_removed(true);
            }
            return;
        }
        let removed = !member || removed_flag || view.says_removed;
        if !removed {
            return;
        }
        if !removed_flag {
            tracing::warn!(
                "this node is no longer a member of its cluster: it stops serving reads and asks to rejoin as a non-voter"
            );
            self.set_removed(true);
        }
        // Back once our own membership has us, a leader reaches us, and no
        // leader says otherwise (a 0.1.0 leader says nothing either way).
        if member && !view.says_removed && (leads || self.peers.contacts().since_leader() < max) {
            tracing::info!("rejoined the cluster");
            self.set_removed(false);
            return;
        }
        if let Some((lid, linfo)) = view.leader {
            if let Err(e) = self.join_via(lid, &linfo, super::JOIN_TIMEOUT).await {
                tracing::info!(cause = %e, "rejoin not done yet");
            }
        }
    }

    pub(super) fn set_removed(&self, removed: bool) {
        self.removed.store(removed, Ordering::Release);
        self.node.refuse_reads(removed);
        if removed {
            self.count_change("removed_self_detected");
        }
    }
}

/// What the peers said when asked (see [`Cluster::survey`]).
#[derive(Debug, Default)]
pub(super) struct Survey {
    pub leader: Option<(NodeId, super::types::NodeInfo)>,
    /// The leader (a build that says) says this node is not a member.
    pub says_removed: bool,
    pub cluster_id: Option<String>,
    /// The initialized peers that answered.
    pub answered: BTreeSet<NodeId>,
}

impl Cluster {
    /// Says hello to every address and sums up the answers of initialized peers.
    pub(super) async fn survey(&self, addrs: &[String]) -> Survey {
        let targets = addrs.iter().map(|a| ((), None, a.clone()));
        let mut survey = Survey::default();
        for ((), r) in self.peers.hello_each(&self.config.info, targets).await {
            if !r.initialized {
                continue;
            }
            // Our own address may be among the discovered ones.
            let Some(node) = &r.node else { continue };
            let (id, _) = super::network::node_info_from_pb(node.clone());
            if id == self.config.id || self.peers.partition().is_some_and(|p| p.is_cut(&self.config.id, &id)) {
                continue;
            }
            survey.answered.insert(id);
            if !r.cluster_id.is_empty() && survey.cluster_id.is_none() {
                survey.cluster_id = Some(r.cluster_id.clone());
            }
            if let Some(l) = r.leader {
                // Only the leader's own word on our membership counts (a
                // lagging follower may not know we joined); an older build
                // does not say.
                if l.id == node.id && r.protocol > 0 && !r.asker_is_member {
                    survey.says_removed = true;
                }
                survey.leader = Some(super::network::node_info_from_pb(l));
            }
        }
        survey
    }

    /// Asks every member its build (`Hello`) and keeps the answers.
    pub(super) async fn survey_builds(&self) {
        let m = self.metrics();
        let members: Vec<(NodeId, Option<NodeId>, String)> = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.config.id)
            .map(|(id, n)| (*id, Some(*id), n.peer_addr.clone()))
            .collect();
        let answers = self.peers.hello_each(&self.config.info, members).await;
        // A member that did not answer is not known (counts as protocol 0):
        // it may have come back on an older build.
        let mut builds = lock(&self.builds);
        builds.clear();
        for (id, r) in answers {
            builds.insert(id, (r.version, r.protocol));
        }
    }

    /// Records the cluster id in the data dir (once).
    pub(super) fn adopt_cluster_id(&self, id: &str) {
        match self.store.set_cluster_id(id) {
            Ok(()) => tracing::info!(cluster_id = %id, "cluster id recorded"),
            Err(e) => tracing::warn!(cause = %e, "could not record the cluster id"),
        }
    }
}

/// Starts the three loops; [`Cluster::shutdown`] waits for them, so none
/// holds the cluster (and its log) after the node stopped.
pub(super) fn spawn_loops(cluster: &Arc<Cluster>) {
    let token = cluster.shutdown.clone();
    if let Some(default) = &cluster.follows {
        // A named log's group: elections, and its leader makes its
        // membership the default group's (see `host`).
        let handles = [
            tokio::spawn(run_elections(Arc::downgrade(cluster), token.clone())),
            tokio::spawn(super::host::run_mirror(Arc::downgrade(cluster), default.clone(), token)),
        ];
        lock(&cluster.loops).extend(handles);
        return;
    }
    let handles = [
        tokio::spawn(run_elections(Arc::downgrade(cluster), token.clone())),
        tokio::spawn(run_upkeep(Arc::downgrade(cluster), token.clone())),
        tokio::spawn(run_watch(Arc::downgrade(cluster), token)),
    ];
    lock(&cluster.loops).extend(handles);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u64, voter: bool, alive: bool, domain: &str, matched: u64) -> MemberView {
        MemberView {
            id,
            name: format!("n{id}"),
            voter,
            alive,
            domain: domain.into(),
            matched: Some(matched),
            replica: true,
            attachable: true,
        }
    }

    fn attached(id: u64, domain: &str) -> MemberView {
        MemberView {
            matched: None,
            replica: false,
            ..view(id, false, true, domain, 0)
        }
    }

    #[test]
    fn an_attached_sidecar_becomes_a_standby_only_while_replicas_are_missing() {
        // 3 voters, 1 standby, 2 attached; 2 standbys wanted: one is added.
        let mut members = vec![
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, true, true, "", 100),
            view(4, false, true, "", 100),
            attached(6, ""),
            attached(5, ""),
        ];
        let c = plan(1, &members, 100, 3, 2).expect("a change");
        assert_eq!(c.reason, "add_standby");
        assert_eq!(c.step, Step::AddLearner(5));
        // With both standbys there: nothing to do.
        members[4] = view(6, false, true, "", 100);
        assert_eq!(plan(1, &members, 100, 3, 2), None);
        // A dead voter with nobody caught up to replace it: an attached
        // sidecar is added first (it catches up, then takes the place).
        let members = [
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, true, false, "", 100),
            attached(4, ""),
        ];
        assert_eq!(plan(1, &members, 100, 3, 0).unwrap().step, Step::AddLearner(4));
    }

    #[test]
    fn spare_standbys_are_shed_but_never_an_older_build_or_the_only_replica_of_a_needed_domain() {
        let mut members = vec![
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, true, true, "", 100),
            view(4, false, true, "", 100),
            view(5, false, true, "", 90),
            view(6, false, true, "", 100),
        ];
        // 6 replicas, 3 + 2 wanted: the least caught up goes.
        let c = plan(1, &members, 100, 3, 2).expect("a change");
        assert_eq!(c.reason, "shed_standby");
        assert_eq!(c.step, Step::RemoveNodes(BTreeSet::from([5])));
        // An older build would only rejoin as a non-voter: it stays.
        // (then, among equals, the last by name).
        members[4].attachable = false;
        assert_eq!(
            plan(1, &members, 100, 3, 2).unwrap().step,
            Step::RemoveNodes(BTreeSet::from([6]))
        );
        // Voters share domain a; 6 alone holds domain b: it is not shed
        // (the swap rule wants it), and once it is caught up it swaps in.
        let members = [
            view(1, true, true, "a", 100),
            view(2, true, true, "a", 100),
            view(3, true, true, "c", 100),
            view(4, false, true, "a", 100),
            view(5, false, true, "c", 100),
            view(6, false, true, "b", 100),
        ];
        let c = plan(1, &members, 100, 3, 2).unwrap();
        assert_eq!(c.reason, "spread_domains");
        assert!(voters(&c).contains(&6));
    }

    #[test]
    fn an_attached_sidecar_in_a_domain_without_replicas_is_added_while_voters_share_one() {
        let mut members = vec![
            view(1, true, true, "a", 100),
            view(2, true, true, "a", 100),
            view(3, true, true, "c", 100),
            view(4, false, true, "a", 100),
            view(5, false, true, "c", 100),
            attached(6, "b"),
        ];
        // At the cap, but domain b has no replica and two voters share a.
        assert_eq!(plan(1, &members, 100, 3, 2).unwrap().step, Step::AddLearner(6));
        // Voters spread already: domain b gets nothing beyond the cap.
        members[1].domain = "d".into();
        assert_eq!(plan(1, &members, 100, 3, 2), None);
    }

    fn voters(change: &Change) -> BTreeSet<NodeId> {
        match &change.step {
            Step::Voters { voters, .. } => voters.clone(),
            s => panic!("expected a voter change, got {s:?}"),
        }
    }

    #[test]
    fn a_dead_voter_is_replaced_by_the_most_caught_up_live_learner() {
        let members = [
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, true, false, "", 10),
            view(4, false, true, "", 90),
            view(5, false, true, "", 99),
            view(6, false, false, "", 100),
        ];
        let c = plan(1, &members, 100, 3, 16).expect("a change");
        assert_eq!(c.reason, "replace_dead_voter");
        assert_eq!(voters(&c), BTreeSet::from([1, 2, 5]));
        assert!(matches!(c.step, Step::Voters { retain: false, .. }));
    }

    #[test]
    fn no_change_leaves_the_group_without_a_live_majority() {
        // Two of three voters dead: nothing may change (recovery is manual).
        let members = [
            view(1, true, true, "", 100),
            view(2, true, false, "", 100),
            view(3, true, false, "", 100),
            view(4, false, true, "", 100),
        ];
        assert_eq!(plan(1, &members, 100, 3, 16), None);
        // Two voters, one dead: dropping it would need the dead one's vote.
        let members = [view(1, true, true, "", 100), view(2, true, false, "", 100)];
        assert_eq!(plan(1, &members, 100, 3, 16), None);
    }

    #[test]
    fn dead_learners_are_removed_and_voters_are_topped_up_to_the_target() {
        let members = [
            view(1, true, true, "", 100),
            view(2, false, false, "", 100),
            view(3, false, true, "", 100),
        ];
        let c = plan(1, &members, 100, 3, 16).unwrap();
        assert_eq!(c.step, Step::RemoveNodes(BTreeSet::from([2])));
        // One voter and one non-voter: promoting it would make two voters.
        let members = [view(1, true, true, "", 100), view(3, false, true, "", 100)];
        assert_eq!(plan(1, &members, 100, 3, 16), None);
        // Two caught-up non-voters: both at once, one to three.
        let members = [
            view(1, true, true, "", 100),
            view(3, false, true, "", 100),
            view(4, false, true, "", 95),
        ];
        let c = plan(1, &members, 100, 3, 16).unwrap();
        assert_eq!(c.reason, "promote");
        assert_eq!(voters(&c), BTreeSet::from([1, 3, 4]));
    }

    #[test]
    fn a_dead_voter_nobody_can_replace_stays_and_an_even_count_is_made_odd() {
        // Dropping it would leave two voters: no more failures tolerated,
        // and a window where one more wedges the group. It stays.
        let members = [
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, true, false, "", 100),
        ];
        assert_eq!(plan(1, &members, 100, 3, 16), None);
        // Two voters left behind (a leave, an operator's remove): one
        // becomes a non-voter, never the leader.
        let members = [view(1, true, true, "", 100), view(2, true, true, "", 100)];
        let c = plan(1, &members, 100, 3, 16).unwrap();
        assert_eq!(c.reason, "demote");
        assert_eq!(voters(&c), BTreeSet::from([1]));
        // Two voters and a caught-up non-voter: promote it instead.
        let members = [
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, false, true, "", 100),
        ];
        let c = plan(1, &members, 100, 3, 16).unwrap();
        assert_eq!(c.reason, "promote");
        assert_eq!(voters(&c), BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn odd_rounds_down() {
        assert_eq!((0..=8).map(odd).collect::<Vec<_>>(), vec![1, 1, 1, 3, 3, 5, 5, 7, 7]);
    }

    #[test]
    fn a_leaving_voter_is_replaced_and_never_leaves_too_few_live_voters() {
        let members = [
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, true, true, "", 100),
            view(4, false, true, "", 100),
        ];
        // The leader itself leaves: a non-voter takes its place.
        assert_eq!(without(1, &members, 100, 1), Some(BTreeSet::from([2, 3, 4])));
        // A voter is already down and nobody can replace the leaving one:
        // {1,2,3} -> {1,3} with 3 dead would stall every write.
        let members = [
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, true, false, "", 100),
        ];
        assert_eq!(without(1, &members, 100, 2), None);
    }

    #[test]
    fn a_learner_far_behind_is_not_promoted() {
        let members = [view(1, true, true, "", 5000), view(3, false, true, "", 10)];
        assert_eq!(plan(1, &members, 5000, 3, 16), None);
    }

    #[test]
    fn voters_above_the_target_are_demoted_but_never_the_leader() {
        let members = [
            view(1, true, true, "", 100),
            view(2, true, true, "", 100),
            view(3, true, true, "", 100),
            view(4, true, true, "", 100),
            view(5, true, true, "", 100),
        ];
        let c = plan(1, &members, 100, 3, 16).unwrap();
        assert_eq!(c.reason, "demote");
        let v = voters(&c);
        assert_eq!(v.len(), 3, "two at once: never an even count");
        assert!(v.contains(&1));
    }

    #[test]
    fn voters_spread_over_failure_domains() {
        let members = [
            view(1, true, true, "a", 100),
            view(2, true, true, "a", 100),
            view(3, true, true, "b", 100),
            view(4, false, true, "c", 100),
            view(5, false, true, "a", 100),
        ];
        let c = plan(1, &members, 100, 3, 16).unwrap();
        assert_eq!(c.reason, "spread_domains");
        assert_eq!(voters(&c), BTreeSet::from([1, 3, 4]));
        // Once spread, nothing more to do.
        let members = [
            view(1, true, true, "a", 100),
            view(2, false, true, "a", 100),
            view(3, true, true, "b", 100),
            view(4, true, true, "c", 100),
        ];
        assert_eq!(plan(1, &members, 100, 3, 16), None);
    }

    #[test]
    fn a_dead_voter_is_replaced_from_a_domain_without_a_voter() {
        let members = [
            view(1, true, true, "a", 100),
            view(2, true, true, "b", 100),
            view(3, true, false, "c", 100),
            view(4, false, true, "a", 100),
            view(5, false, true, "c", 90),
        ];
        let c = plan(1, &members, 100, 3, 16).unwrap();
        assert_eq!(voters(&c), BTreeSet::from([1, 2, 5]));
    }

    #[test]
    fn majority_counts_each_configuration_of_a_joint_membership() {
        let joint = vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 4, 5])];
        assert!(majority_in_each(&joint, |id| [1, 2, 4].contains(id)));
        assert!(!majority_in_each(&joint, |id| [1, 2, 3].contains(id)));
    }

    #[test]
    fn jitter_stays_in_range() {
        let (min, max) = (Duration::from_millis(500), Duration::from_millis(1000));
        let draws: BTreeSet<Duration> = (0..50).map(|_| jitter(min, max)).collect();
        assert!(draws.iter().all(|d| *d >= min && *d <= max));
        assert!(draws.len() > 1, "jitter never varies");
    }
}
