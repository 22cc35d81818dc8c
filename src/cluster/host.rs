//! What exists once per process: the default log's group (which holds the
//! membership and the catalog), the peer connections every group shares,
//! and the map of named logs' groups, kept equal to the catalog.
//!
//! Each named log is its own Raft group (a [`Cluster`] over its own
//! segmented log in `<data-dir>/logs/<name>@<incarnation>/`). Its voters and
//! non-voters are the default group's: the leader of each named group
//! makes its membership follow the default group's ([`run_mirror`]), so
//! membership upkeep (joins, standbys, dead voters, failure domains) is
//! decided once, in the default group, and every log follows. Leaders are
//! spread: each group prefers the voter that rendezvous hashing picks
//! (`catalog::preferred_leader`); that voter initializes a new group (so it
//! leads from the start), campaigns first after a leader is lost, and a
//! leader that is not the preferred one hands over once the preferred one
//! is caught up (it stops its heartbeats; the preferred voter, campaigning
//! first, wins).
//!
//! Named groups heartbeat less often than the default group
//! ([`NAMED_SLOWDOWN`]): with many idle logs the heartbeats to a peer,
//! not the records, would otherwise dominate its CPU.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, RwLock, Weak},
    time::{Duration, Instant},
};

use openraft::{ChangeMembers, ServerState};
use tokio_util::sync::CancellationToken;

use super::{
    Cluster, ClusterConfig, NodeId, NodeInfo, Raft,
    catalog::{self, Applied, CatalogOp, CatalogStore, LogSettings, LogSpec},
    network::Peers,
    types::Request,
};
use crate::{
    node::{LogNode, NodeError},
    storage::{Log, LogConfig, Retention},
};

/// Named groups' heartbeat interval and election timeouts are the default
/// group's times this.
pub const NAMED_SLOWDOWN: u32 = 3;

/// How often a named group's leader compares its membership with the
/// default group's.
const MIRROR_EVERY: Duration = Duration::from_millis(500);

/// A leader that is not its group's preferred one hands over at most this
/// often, and gives up after [`HANDOVER_TIMEOUT`].
const HANDOVER_EVERY: Duration = Duration::from_secs(10);
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the groups are compared with the catalog without a change.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// The peer protocol that knows named logs (catalog entries, `group` on
/// every group's call). A log is created only once every member speaks it.
pub const NAMED_LOGS_PROTOCOL: u32 = 3;

/// What a named log's group is made of, beyond its catalog entry.
#[derive(Clone, Debug)]
pub struct GroupSettings {
    pub data_dir: PathBuf,
    /// The log's storage settings (observer, fsync interval, default
    /// segment size); a log's own `segment_max_bytes` overrides.
    pub log_config: LogConfigTemplate,
    /// The agent's `--max-record-bytes`, unless a log sets its own.
    pub max_record_bytes: u64,
    /// The agent's retention, unless a log sets its own.
    pub retention: Retention,
    /// `--max-logs`.
    pub max_logs: usize,
    /// `--auto-create-logs`: producing to an unknown log creates it.
    pub auto_create: bool,
}

/// The parts of a [`LogConfig`] every log shares.
#[derive(Clone)]
pub struct LogConfigTemplate {
    pub segment_max_bytes: u64,
    pub sync_interval: Option<Duration>,
    pub observer: Option<Arc<dyn crate::storage::FlushObserver>>,
}

impl std::fmt::Debug for LogConfigTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogConfigTemplate(segment_max_bytes={})", self.segment_max_bytes)
    }
}

impl GroupSettings {
    /// Settings for tests: defaults under `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        GroupSettings {
            data_dir,
            log_config: LogConfigTemplate {
                segment_max_bytes: LogConfig::default().segment_max_bytes,
                sync_interval: None,
                observer: None,
            },
            max_record_bytes: 1 << 20,
            retention: Retention::default(),
            max_logs: catalog::DEFAULT_MAX_LOGS,
            auto_create: false,
        }
    }

    /// A log's retention: its own settings over the agent's.
    pub fn retention_of(&self, s: &LogSettings) -> Retention {
        Retention {
            max_bytes: if s.retention_bytes > 0 {
                Some(s.retention_bytes)
            } else {
                self.retention.max_bytes
            },
            max_age: if s.retention_age_secs > 0 {
                Some(Duration::from_secs(s.retention_age_secs))
            } else {
                self.retention.max_age
            },
        }
    }
}

/// A named log this node serves.
struct Group {
    spec: LogSpec,
    cluster: Arc<Cluster>,
}

/// The process's groups (see the module docs).
pub struct Host {
    default: Arc<Cluster>,
    catalog: Arc<CatalogStore>,
    groups: RwLock<BTreeMap<String, Group>>,
    settings: GroupSettings,
    /// The default group's settings, which named groups derive theirs from.
    base: ClusterConfig,
    peers: Peers,
    /// One reconciliation at a time.
    reconciling: tokio::sync::Mutex<()>,
    /// The catalog index the groups were last made to match.
    reconciled: tokio::sync::watch::Sender<u64>,
    shutdown: CancellationToken,
    loops: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Host {
    /// Opens every named log of the local catalog and keeps the groups
    /// equal to it from then on.
    pub async fn start(default: Arc<Cluster>, settings: GroupSettings) -> Arc<Host> {
        let catalog = default
            .catalog
            .clone()
            .unwrap_or_else(|| Arc::new(CatalogStore::in_memory()));
        let (reconciled, _) = tokio::sync::watch::channel(0);
        let host = Arc::new(Host {
            peers: default.peers.clone(),
            base: default.config.clone(),
            default,
            catalog,
            groups: Default::default(),
            settings,
            reconciling: Default::default(),
            reconciled,
            shutdown: CancellationToken::new(),
            loops: Default::default(),
        });
        // A deleted (or re-created) log's group takes no more writes from
        // the moment this node applies the change, not from the next
        // reconcile: a write acknowledged after that would vanish with it.
        let weak = Arc::downgrade(&host);
        host.catalog.on_change(move |catalog| {
            if let Some(h) = weak.upgrade() {
                for (name, g) in read(&h.groups).iter() {
                    if catalog.logs.get(name).map(|s| s.incarnation) != Some(g.spec.incarnation) {
                        g.cluster.close_writes();
                    }
                }
            }
        });
        // Subscribed first: a change applied while the first pass runs is
        // seen by the loop.
        let changes = host.catalog.subscribe();
        host.reconcile().await;
        let handle = tokio::spawn(run_reconcile(Arc::downgrade(&host), changes, host.shutdown.clone()));
        host.loops.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
        host
    }

    /// The default log's group (membership, catalog, `log.v1` calls that
    /// name no log).
    pub fn default_group(&self) -> &Arc<Cluster> {
        &self.default
    }

    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// The group of the log `name` (empty or `default`: the default log).
    pub fn group(&self, name: &str) -> Result<Arc<Cluster>, NodeError> {
        if name.is_empty() || name == catalog::DEFAULT_LOG {
            return Ok(self.default.clone());
        }
        let spec = self.catalog.spec(name);
        if let Some(g) = read(&self.groups).get(name) {
            if spec.as_ref().map(|s| s.incarnation) == Some(g.spec.incarnation) {
                return Ok(g.cluster.clone());
            }
            // Deleted or created again since this node opened it.
            if spec.is_none() {
                return Err(NodeError::NotFound(format!("log {name:?} was deleted")));
            }
        }
        catalog::check_name(name).map_err(NodeError::InvalidArgument)?;
        if spec.is_some() {
            return Err(NodeError::Unavailable(format!(
                "log {name:?} exists but this node has not opened it yet (just created, or its storage failed to \
                 open: see this node's log); nothing was written"
            )));
        }
        if self.default.is_attached() {
            return Err(NodeError::Unavailable(format!(
                "log {name:?}: this sidecar is attached without a replica and serves the default log only; use a \
                 replica's address"
            )));
        }
        Err(NodeError::NotFound(format!(
            "log {name:?} does not exist (sidelog log create {name})"
        )))
    }

    /// The group of the log `name`, created first when it is missing,
    /// `--auto-create-logs` is on and the caller may create it
    /// (`may_create`: the ACL's `admin` on the name).
    pub async fn group_or_create(&self, name: &str, may_create: bool) -> Result<Arc<Cluster>, NodeError> {
        match self.group(name) {
            Err(NodeError::NotFound(m)) if self.settings.auto_create => {
                if !may_create {
                    return Err(NodeError::NotFound(format!(
                        "{m}; creating it on first write needs the admin right on it"
                    )));
                }
                self.create(name, LogSettings::default(), true).await?;
                self.group(name)
            }
            r => r,
        }
    }

    /// The group a peer call names: empty for the default group, else
    /// `name@incarnation` (another incarnation of the name is not it).
    pub fn peer_group(&self, id: &str) -> Result<Arc<Cluster>, tonic::Status> {
        if id.is_empty() {
            return Ok(self.default.clone());
        }
        let name = id.split('@').next().unwrap_or_default();
        match read(&self.groups).get(name) {
            Some(g) if g.spec.group_id() == id => Ok(g.cluster.clone()),
            _ => Err(crate::pb::meta::with_outcome(
                tonic::Status::not_found(format!("no Raft group {id} on this node (deleted, or not opened yet)")),
                crate::pb::meta::Outcome::NotWritten,
            )),
        }
    }

    /// Every named log of the catalog, with its group when this node
    /// serves it.
    pub fn logs(&self) -> Vec<(LogSpec, Option<Arc<Cluster>>)> {
        let groups = read(&self.groups);
        self.catalog
            .get()
            .logs
            .into_values()
            .map(|spec| {
                let c = groups
                    .get(&spec.name)
                    .filter(|g| g.spec.incarnation == spec.incarnation)
                    .map(|g| g.cluster.clone());
                (spec, c)
            })
            .collect()
    }

    /// The named groups this node serves, by name.
    pub fn groups(&self) -> Vec<(String, Arc<Cluster>)> {
        read(&self.groups)
            .iter()
            .map(|(n, g)| (n.clone(), g.cluster.clone()))
            .collect()
    }

    pub fn spec(&self, name: &str) -> Option<LogSpec> {
        self.catalog.spec(name)
    }

    /// Creates a named log; with `if_not_exists`, one that exists is fine.
    /// Returns once this node serves it (on a replica).
    pub async fn create(&self, name: &str, settings: LogSettings, if_not_exists: bool) -> Result<LogSpec, NodeError> {
        catalog::check_name(name).map_err(NodeError::InvalidArgument)?;
        settings
            .check()
            .map_err(|e| NodeError::InvalidArgument(format!("log {name}: {e}")))?;
        if settings.max_record_bytes > self.settings.max_record_bytes {
            return Err(NodeError::InvalidArgument(format!(
                "log {name}: max_record_bytes {} is above this agent's --max-record-bytes {} (the gRPC decoder's \
                 bound)",
                settings.max_record_bytes, self.settings.max_record_bytes
            )));
        }
        let exists = || NodeError::AlreadyExists(format!("log {name:?} exists already"));
        if name == catalog::DEFAULT_LOG {
            return if if_not_exists {
                Ok(LogSpec {
                    name: name.into(),
                    settings: LogSettings::default(),
                    incarnation: 0,
                    voters: Vec::new(),
                })
            } else {
                Err(exists())
            };
        }
        if let Some(spec) = self.catalog.spec(name) {
            return if if_not_exists { Ok(spec) } else { Err(exists()) };
        }
        let op = CatalogOp::Create {
            name: name.into(),
            settings,
            voters: Vec::new(),
            max_logs: self.settings.max_logs as u32,
        };
        let (index, applied) = self.propose_catalog(op).await?;
        match applied {
            Applied::Done => {}
            Applied::Exists if if_not_exists => {}
            Applied::Exists => return Err(exists()),
            Applied::TooMany => return Err(self.too_many()),
            Applied::NotFound => return Err(NodeError::Unknown("unexpected catalog answer".into())),
        }
        self.wait_reconciled(index).await;
        // Created, whether or not this node applied it yet (an attached
        // sidecar never does): what the leader applied.
        Ok(self.catalog.spec(name).unwrap_or(LogSpec {
            name: name.into(),
            settings,
            incarnation: index,
            voters: Vec::new(),
        }))
    }

    fn too_many(&self) -> NodeError {
        NodeError::FailedPrecondition(format!(
            "the cluster holds the most named logs its leader allows (--max-logs {}); delete one first",
            self.settings.max_logs
        ))
    }

    /// Deletes a named log on every member (its records and its disk).
    pub async fn delete(&self, name: &str) -> Result<(), NodeError> {
        catalog::check_name(name).map_err(NodeError::InvalidArgument)?;
        if name == catalog::DEFAULT_LOG {
            return Err(NodeError::InvalidArgument("the default log cannot be deleted".into()));
        }
        let missing = || NodeError::NotFound(format!("log {name:?} does not exist"));
        if self.catalog.spec(name).is_none() && !self.default.is_attached() {
            // Perhaps not applied here yet: the leader decides.
            if self.default.is_leader() {
                return Err(missing());
            }
        }
        let (index, applied) = self.propose_catalog(CatalogOp::Delete { name: name.into() }).await?;
        if applied == Applied::NotFound {
            return Err(missing());
        }
        self.wait_reconciled(index).await;
        Ok(())
    }

    /// Waits (bounded) until this node's groups match the catalog at
    /// `index`; an attached sidecar holds none and does not wait.
    async fn wait_reconciled(&self, index: u64) {
        if self.default.is_attached() {
            return;
        }
        let mut rx = self.reconciled.subscribe();
        let _ = tokio::time::timeout(self.default.write_timeout(), rx.wait_for(|i| *i >= index)).await;
    }

    /// Proposes a catalog change through the default group's leader;
    /// returns its Raft index and what applying it did.
    pub(crate) async fn propose_catalog(&self, op: CatalogOp) -> Result<(u64, Applied), NodeError> {
        let d = &self.default;
        if !d.is_leader() {
            return d.forward_catalog(&op).await;
        }
        self.propose_catalog_as_leader(op).await
    }

    /// On the default group's leader: the voters and the bound are its own.
    pub(crate) async fn propose_catalog_as_leader(&self, mut op: CatalogOp) -> Result<(u64, Applied), NodeError> {
        let d = &self.default;
        if !d.is_leader() {
            return Err(d.not_leader());
        }
        if let CatalogOp::Create {
            name, voters, max_logs, ..
        } = &mut op
        {
            let mut protocol = d.cluster_protocol();
            if protocol < NAMED_LOGS_PROTOCOL {
                // Not known yet (a leader asks its members now and then):
                // ask now.
                d.survey_builds().await;
                protocol = d.cluster_protocol();
            }
            if protocol < NAMED_LOGS_PROTOCOL {
                return Err(NodeError::FailedPrecondition(format!(
                    "cannot create log {name}: a member runs a build that does not know named logs (peer protocol \
                     {protocol}, {NAMED_LOGS_PROTOCOL} needed); upgrade every member first"
                )));
            }
            let m = d.metrics();
            let membership = m.membership_config.membership();
            *voters = membership
                .voter_ids()
                .filter_map(|id| membership.get_node(&id).cloned())
                .collect();
            *max_logs = self.settings.max_logs as u32;
        }
        // The leader's data dir says so before the first entry is in its log.
        self.catalog
            .raise_format()
            .map_err(|e| NodeError::Unavailable(format!("recording the data format: {e}")))?;
        let write = d.raft().client_write(Request::catalog(op));
        let resp = tokio::time::timeout(d.write_timeout(), write)
            .await
            .map_err(|_| NodeError::Unknown("the catalog change was not committed in time".into()))?
            .map_err(|e| d.client_write_error(e))?;
        Ok((resp.log_id.index, Applied::from_u8(resp.data.catalog)))
    }

    /// Makes the groups match the catalog: opens the new logs, stops and
    /// deletes the removed ones, removes directories nothing names.
    async fn reconcile(&self) {
        let _one = self.reconciling.lock().await;
        let catalog = self.catalog.get();
        let gone: Vec<(String, Arc<Cluster>, String)> = {
            let mut groups = write(&self.groups);
            let names: Vec<String> = groups
                .iter()
                .filter(|(name, g)| catalog.logs.get(*name).map(|s| s.incarnation) != Some(g.spec.incarnation))
                .map(|(name, _)| name.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| groups.remove(&n).map(|g| (n, g.cluster, g.spec.group_id())))
                .collect()
        };
        for (name, cluster, id) in gone {
            tracing::info!(log = %name, "log deleted: stopping its group and removing its data");
            cluster.shutdown().await;
            cluster.node().close();
            self.remove_dir(&id).await;
        }
        let mut failed = false;
        for spec in catalog.logs.values() {
            if read(&self.groups).contains_key(&spec.name) || self.shutdown.is_cancelled() {
                continue;
            }
            match self.open_group(spec).await {
                Ok(cluster) => {
                    write(&self.groups).insert(
                        spec.name.clone(),
                        Group {
                            spec: spec.clone(),
                            cluster,
                        },
                    );
                }
                Err(e) => {
                    failed = true;
                    tracing::error!(log = %spec.name, cause = %e, "could not open the log's group (tried again in 5 s)")
                }
            }
        }
        self.remove_unnamed_dirs(&catalog).await;
        if !failed {
            self.reconciled.send_replace(catalog.index);
        }
    }

    fn logs_dir(&self) -> PathBuf {
        self.settings.data_dir.join("logs")
    }

    async fn remove_dir(&self, id: &str) {
        let dir = self.logs_dir().join(id);
        let result = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        if let Ok(Err(e)) = result {
            tracing::error!(group = %id, cause = %e, "could not remove a deleted log's directory");
        }
    }

    /// Directories under `logs/` of logs deleted while this node was down.
    async fn remove_unnamed_dirs(&self, catalog: &catalog::Catalog) {
        let wanted: BTreeSet<String> = catalog.logs.values().map(LogSpec::group_id).collect();
        let Ok(entries) = std::fs::read_dir(self.logs_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) && e.file_type().is_ok_and(|t| t.is_dir()) {
                tracing::info!(group = %name, "removing the data of a log deleted while this node was away");
                self.remove_dir(&name).await;
            }
        }
    }

    /// Opens a named log's storage and starts its Raft group; the preferred
    /// voter initializes a brand-new group.
    async fn open_group(&self, spec: &LogSpec) -> Result<Arc<Cluster>, String> {
        let dir = self.logs_dir().join(spec.group_id());
        // `--force-new-cluster` makes this node the only voter of the groups
        // it held before the restart (as of the default group); a group
        // created since starts with its catalog entry's voters, like on
        // every other node.
        let existed = dir.join("raft-state.json").exists();
        let t = &self.settings.log_config;
        let log_config = LogConfig {
            segment_max_bytes: if spec.settings.segment_max_bytes > 0 {
                spec.settings.segment_max_bytes
            } else {
                t.segment_max_bytes
            },
            sync_interval: t.sync_interval,
            observer: t.observer.clone(),
            ..LogConfig::default()
        };
        let log = tokio::task::spawn_blocking(move || -> Result<Arc<Log>, String> {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let log = Log::open(&dir, log_config).map_err(|e| e.to_string())?;
            super::network::remove_stale_tmp_dirs(log.dir()).map_err(|e| e.to_string())?;
            Ok(Arc::new(log))
        })
        .await
        .map_err(|e| e.to_string())??;
        let max_record = if spec.settings.max_record_bytes > 0 {
            spec.settings.max_record_bytes
        } else {
            self.settings.max_record_bytes
        };
        let node = Arc::new(LogNode::new(log, max_record));
        let mut config = self.base.clone();
        config.group = spec.group_id();
        config.heartbeat *= NAMED_SLOWDOWN;
        config.election_timeout = (
            config.election_timeout.0 * NAMED_SLOWDOWN,
            config.election_timeout.1 * NAMED_SLOWDOWN,
        );
        config.discovery = Default::default();
        config.bootstrap_expect = 0;
        config.membership_changes = None;
        config.force_new_cluster = self.base.force_new_cluster && existed;
        let cluster = Cluster::start_group(
            config,
            node,
            self.peers.for_group(),
            None,
            Some(self.default.raft().clone()),
        )
        .await
        .map_err(|e| e.to_string())?;
        if spec.voter_map().contains_key(cluster.id()) {
            tokio::spawn(initialize(Arc::downgrade(&cluster), spec.clone()));
        }
        tracing::info!(log = %spec.name, group = %spec.group_id(), "serving log");
        Ok(cluster)
    }

    /// Ready: the default group is, and every named log this node serves
    /// has a leader this node heard from (or leads with a quorum).
    pub fn is_ready(&self) -> bool {
        self.default.is_ready() && self.not_ready().is_empty()
    }

    /// The named logs whose group counts this node as a member but which
    /// have no leader it heard from lately (for `/readyz`). A group that
    /// has not added this node yet is not counted: its leader will.
    pub fn not_ready(&self) -> Vec<String> {
        read(&self.groups)
            .iter()
            .filter(|(_, g)| g.cluster.is_member() && !g.cluster.is_ready())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Applies each log's retention (the default log's included).
    pub async fn apply_retention(&self) {
        let mut all = vec![(
            catalog::DEFAULT_LOG.to_owned(),
            self.default.clone(),
            self.settings.retention.clone(),
        )];
        for (spec, c) in self.logs() {
            if let Some(c) = c {
                all.push((spec.name.clone(), c, self.settings.retention_of(&spec.settings)));
            }
        }
        for (name, cluster, retention) in all {
            if retention.is_unlimited() {
                continue;
            }
            if let Err(e) = cluster.apply_retention(&retention).await {
                tracing::error!(log = %name, cause = %e, "retention failed");
            }
        }
    }

    /// Stops every group (the named ones first).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let loops: Vec<_> = self.loops.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for l in loops {
            let _ = l.await;
        }
        let groups: Vec<Arc<Cluster>> = std::mem::take(&mut *write(&self.groups))
            .into_values()
            .map(|g| g.cluster)
            .collect();
        futures_util::future::join_all(groups.iter().map(|c| c.shutdown())).await;
        // Flushed and synced now (with --fsync interval or never, records
        // may be acknowledged before): the last drop would too, but tasks
        // may hold a group until the process exits.
        for c in groups {
            let log = c.node().log().clone();
            match tokio::task::spawn_blocking(move || log.sync()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(group = %c.group_id(), cause = %e, "final fsync of a log failed"),
                Err(e) => tracing::error!(group = %c.group_id(), cause = %e, "final fsync of a log failed"),
            }
        }
        self.default.shutdown().await;
    }
}

/// Keeps the groups equal to the catalog: on every change, and now and
/// then (a group that failed to open is tried again).
async fn run_reconcile(host: Weak<Host>, mut changes: tokio::sync::watch::Receiver<u64>, token: CancellationToken) {
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = token.cancelled() => return,
        }
        let Some(h) = host.upgrade() else { return };
        h.reconcile().await;
    }
}

/// A brand-new group is initialized with the voters its catalog entry
/// names: at once by the preferred one (so it leads from the start), by
/// the others only if it did not (down), later. Initializing with one
/// same membership on several nodes is safe (openraft); an initialized
/// group refuses it.
async fn initialize(cluster: Weak<Cluster>, spec: LogSpec) {
    let Some(c) = cluster.upgrade() else { return };
    let voters = spec.voter_map();
    let preferred = catalog::preferred_leader(&spec.group_id(), voters.keys());
    if preferred != Some(*c.id()) {
        let (min, max) = c.config.election_timeout;
        let wait = super::membership::jitter(max, max + (max - min));
        let token = c.shutdown.clone();
        drop(c);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => return,
        }
    }
    let Some(c) = cluster.upgrade() else { return };
    if c.raft().is_initialized().await.unwrap_or(true) {
        return;
    }
    match c.raft().initialize(voters).await {
        Ok(()) => tracing::info!(log = %spec.name, "initialized the log's group"),
        Err(e) => tracing::debug!(log = %spec.name, cause = %e, "group already initialized"),
    }
}

/// The default group's membership, as this node knows it: voters, and
/// every member.
fn default_membership(default: &Raft) -> (BTreeSet<NodeId>, BTreeMap<NodeId, NodeInfo>) {
    let m = default.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    (
        membership.voter_ids().collect(),
        membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
    )
}

/// On a named group's leader: makes its membership the default group's
/// (non-voters added first, then the voters replaced, then the departed
/// removed), and hands leadership to the preferred voter once it is
/// caught up.
pub(super) async fn run_mirror(cluster: Weak<Cluster>, default: Raft, token: CancellationToken) {
    let mut handover: Option<Instant> = None;
    let mut last_handover: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MIRROR_EVERY) => {}
            _ = token.cancelled() => return,
        }
        let Some(c) = cluster.upgrade() else { return };
        if let Some(t) = handover
            && (t.elapsed() >= HANDOVER_TIMEOUT || !c.is_leader())
        {
            c.raft().runtime_config().heartbeat(true);
            handover = None;
        }
        let m = c.metrics();
        if m.state != ServerState::Leader {
            continue;
        }
        let (voters, nodes) = default_membership(&default);
        if voters.is_empty() {
            continue;
        }
        let step = tokio::select! {
            r = mirror_step(&c, &voters, &nodes) => r,
            // A change waits for its commit, which a deleted log's
            // followers never give: stopping must not wait for it.
            _ = token.cancelled() => return,
        };
        if let Err(e) = step {
            tracing::debug!(group = %c.config.group, cause = %e, "membership not mirrored yet");
            continue;
        }
        if handover.is_none() && last_handover.is_none_or(|t| t.elapsed() >= HANDOVER_EVERY) && should_hand_over(&c) {
            tracing::info!(group = %c.config.group, "handing leadership to the preferred voter");
            c.raft().runtime_config().heartbeat(false);
            handover = Some(Instant::now());
            last_handover = handover;
        }
    }
}

/// One membership change towards the default group's, if any is due.
async fn mirror_step(c: &Cluster, voters: &BTreeSet<NodeId>, nodes: &BTreeMap<NodeId, NodeInfo>) -> Result<(), String> {
    let m = c.metrics();
    let membership = m.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        // A change left half done: finished as the default group's upkeep
        // finishes its own (see `membership::joint_to_finish`).
        if let Some(last) = super::membership::joint_to_finish(&m) {
            c.raft()
                .change_membership(last, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    let mine: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    for (id, info) in nodes {
        if !mine.contains(id) {
            // A build that does not know named logs would take this
            // group's calls for its default group's: never add one.
            if !speaks_named_logs(c, *id, info).await {
                continue;
            }
            c.raft()
                .add_learner(*id, info.clone(), false)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
    }
    let my_voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if &my_voters != voters {
        c.raft()
            .change_membership(voters.clone(), true)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let departed: BTreeSet<NodeId> = mine.iter().copied().filter(|id| !nodes.contains_key(id)).collect();
    if !departed.is_empty() {
        c.raft()
            .change_membership(ChangeMembers::RemoveNodes(departed), false)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether the member `id` answers `Hello` with a peer protocol that knows
/// named logs (asked each time: a member may come back on another build).
async fn speaks_named_logs(c: &Cluster, id: NodeId, info: &NodeInfo) -> bool {
    c.peers
        .ask_protocol(&c.config.info, id, &info.peer_addr)
        .await
        .is_some_and(|p| p >= NAMED_LOGS_PROTOCOL)
}

/// This leader is not its group's preferred voter, and the preferred one
/// has every entry.
fn should_hand_over(c: &Cluster) -> bool {
    let m = c.metrics();
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let Some(preferred) = catalog::preferred_leader(&c.config.group, &voters) else {
        return false;
    };
    if preferred == *c.id() {
        return false;
    }
    let last = m.last_log_index.unwrap_or(0);
    m.replication
        .as_ref()
        .and_then(|r| r.get(&preferred))
        .and_then(|matched| matched.as_ref())
        .is_some_and(|l| l.index >= last)
}

/// Whether this node is its named group's preferred voter (it campaigns
/// first: see `membership::run_elections`).
pub(super) fn prefers_me(c: &Cluster) -> bool {
    if c.follows.is_none() {
        return false;
    }
    let m = c.metrics();
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    catalog::preferred_leader(&c.config.group, &voters) == Some(*c.id())
}
