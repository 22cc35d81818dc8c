//! The catalog of named logs: which logs exist and their settings.
//!
//! The catalog is state of the `default` log's Raft group (the group every
//! voter and standby belongs to): a create or delete is a control entry of
//! that group, applied by every replica in the same order, so every member
//! agrees on which logs exist. The applied catalog is kept in
//! `catalog.json` beside the default log (rewritten atomically on every
//! change, with the Raft index of the last change), and travels with
//! snapshots, so a member that was down while a log was created or
//! deleted ends up with exactly the logs the group has.
//!
//! Applying is deterministic: a create of a name that exists, a delete of
//! one that does not, and a create beyond the proposer's `--max-logs`
//! change nothing and say so, on every replica alike.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use super::types::{NodeId, NodeInfo};

/// The log every `log.v1` call that names no log uses. It always exists,
/// is the Raft group that holds the catalog, and cannot be deleted.
pub const DEFAULT_LOG: &str = "default";

/// The default `--max-logs`: named logs per cluster (the `default` log not
/// counted). Each costs a Raft group (a task, a flusher thread, two open
/// segment files, heartbeats to every replica), and bounds the label sets
/// of the per-log metrics.
pub const DEFAULT_MAX_LOGS: usize = 256;

/// The most `--max-logs` may be.
pub const MAX_MAX_LOGS: usize = 4096;

/// Checks a log name: `[a-z0-9][a-z0-9._-]{0,62}` (so it is a directory
/// name, a metric label, a URL path segment and a Kafka topic name as is).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_first = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok_rest = |c: u8| ok_first(c) || matches!(c, b'.' | b'_' | b'-');
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 63 || !ok_first(b[0]) || !b[1..].iter().all(|c| ok_rest(*c)) {
        return Err(format!(
            "invalid log name {name:?}: a name is 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a \
             letter or digit"
        ));
    }
    Ok(())
}

/// A log's own settings; 0 (or absent) means the agent's flag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retention_bytes: u64,
    /// Seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retention_age_secs: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_record_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub segment_max_bytes: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl LogSettings {
    /// Checks values a log cannot work with.
    pub fn check(&self) -> Result<(), String> {
        if self.max_record_bytes > 64 << 20 {
            return Err(format!(
                "max_record_bytes {} is above the limit of 64 MiB",
                self.max_record_bytes
            ));
        }
        if self.segment_max_bytes != 0 && self.segment_max_bytes < 4096 {
            return Err(format!(
                "segment_max_bytes {} is below the minimum of 4096",
                self.segment_max_bytes
            ));
        }
        Ok(())
    }
}

/// One named log as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    pub name: String,
    pub settings: LogSettings,
    /// The Raft index of the entry that created it: a log deleted and
    /// created again is another Raft group, in another directory.
    pub incarnation: u64,
    /// The voters its Raft group started with (the default group's voters
    /// when it was created); the group follows the default group's
    /// membership afterwards. (A list: a node's Raft id derives from its
    /// name, and JSON map keys could not be ids inside a tagged enum.)
    pub voters: Vec<NodeInfo>,
}

impl LogSpec {
    /// The initial voters by Raft id.
    pub fn voter_map(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.voters
            .iter()
            .map(|n| (super::types::node_id(&n.name), n.clone()))
            .collect()
    }

    /// The Raft group's id on the peer port and its directory's name.
    pub fn group_id(&self) -> String {
        group_id(&self.name, self.incarnation)
    }
}

/// `name@incarnation`.
pub fn group_id(name: &str, incarnation: u64) -> String {
    format!("{name}@{incarnation}")
}

/// A change to the catalog, replicated as a control entry of the default
/// log's group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CatalogOp {
    Create {
        name: String,
        settings: LogSettings,
        voters: Vec<NodeInfo>,
        /// The proposer's `--max-logs`: applied identically everywhere.
        max_logs: u32,
    },
    Delete {
        name: String,
    },
}

impl std::fmt::Display for CatalogOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatalogOp::Create { name, .. } => write!(f, "create log {name}"),
            CatalogOp::Delete { name } => write!(f, "delete log {name}"),
        }
    }
}

/// What applying a [`CatalogOp`] did (the same on every replica).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Applied {
    Done = 0,
    Exists = 1,
    NotFound = 2,
    TooMany = 3,
}

impl Applied {
    pub fn from_u8(v: u8) -> Applied {
        match v {
            1 => Applied::Exists,
            2 => Applied::NotFound,
            3 => Applied::TooMany,
            _ => Applied::Done,
        }
    }
}

/// The catalog: every named log, and the Raft index of the last change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub index: u64,
    pub logs: BTreeMap<String, LogSpec>,
}

impl Catalog {
    /// Applies `op`, the entry at Raft `index`.
    pub fn apply(&mut self, index: u64, op: &CatalogOp) -> Applied {
        self.index = index;
        match op {
            CatalogOp::Create {
                name,
                settings,
                voters,
                max_logs,
            } => {
                if self.logs.contains_key(name) {
                    return Applied::Exists;
                }
                if self.logs.len() >= *max_logs as usize {
                    return Applied::TooMany;
                }
                self.logs.insert(
                    name.clone(),
                    LogSpec {
                        name: name.clone(),
                        settings: *settings,
                        incarnation: index,
                        voters: voters.clone(),
                    },
                );
                Applied::Done
            }
            CatalogOp::Delete { name } => match self.logs.remove(name) {
                Some(_) => Applied::Done,
                None => Applied::NotFound,
            },
        }
    }
}

/// The applied catalog of one node, kept in `catalog.json`.
pub struct CatalogStore {
    path: PathBuf,
    state: Mutex<Catalog>,
    changes: tokio::sync::watch::Sender<u64>,
    /// Told of every applied change at once, in the state machine's apply
    /// (the host closes a deleted log's group to writes there, before the
    /// next entry applies).
    on_change: Mutex<Option<Box<dyn Fn(&Catalog) + Send + Sync>>>,
}

impl std::fmt::Debug for CatalogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CatalogStore({})", self.path.display())
    }
}

const FILE: &str = "catalog.json";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CatalogStore {
    /// Reads `dir/catalog.json` (none: an empty catalog).
    pub fn open(dir: &Path) -> std::io::Result<CatalogStore> {
        let path = dir.join(FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a valid catalog: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Catalog::default(),
            Err(e) => return Err(e),
        };
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(CatalogStore {
            path,
            state: Mutex::new(state),
            changes,
            on_change: Mutex::new(None),
        })
    }

    /// An empty catalog that is never written (tests of other parts).
    pub fn in_memory() -> CatalogStore {
        let (changes, _) = tokio::sync::watch::channel(0);
        CatalogStore {
            path: PathBuf::new(),
            state: Mutex::new(Catalog::default()),
            changes,
            on_change: Mutex::new(None),
        }
    }

    pub fn get(&self) -> Catalog {
        lock(&self.state).clone()
    }

    pub fn spec(&self, name: &str) -> Option<LogSpec> {
        lock(&self.state).logs.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        lock(&self.state).logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with the catalog after every change (see `on_change`).
    pub fn on_change(&self, f: impl Fn(&Catalog) + Send + Sync + 'static) {
        *lock(&self.on_change) = Some(Box::new(f));
    }

    fn told(&self, catalog: &Catalog) {
        if let Some(f) = lock(&self.on_change).as_ref() {
            f(catalog);
        }
    }

    /// Changes whenever the catalog does (the value: its index).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Applies the op at `index`; an index already applied (re-applied
    /// after a restart) changes nothing.
    pub fn apply(&self, index: u64, op: &CatalogOp) -> std::io::Result<Applied> {
        let mut state = lock(&self.state);
        if index <= state.index {
            return Ok(Applied::Done);
        }
        let mut next = state.clone();
        let applied = next.apply(index, op);
        self.raise_format()?;
        self.save(&next)?;
        *state = next.clone();
        drop(state);
        self.told(&next);
        self.changes.send_replace(index);
        tracing::info!(%op, index, outcome = ?applied, "catalog changed");
        Ok(applied)
    }

    /// Replaces the catalog with a snapshot's (one at least as new).
    pub fn install(&self, catalog: Catalog) -> std::io::Result<()> {
        let mut state = lock(&self.state);
        if catalog.index < state.index {
            return Ok(());
        }
        if catalog.index > 0 {
            self.raise_format()?;
        }
        self.save(&catalog)?;
        let index = catalog.index;
        *state = catalog.clone();
        drop(state);
        self.told(&catalog);
        self.changes.send_replace(index);
        Ok(())
    }

    /// Marks the data dir as holding catalog entries (`FORMAT`), so a build
    /// that cannot read them refuses it instead of failing on one.
    pub fn raise_format(&self) -> std::io::Result<()> {
        let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) else {
            return Ok(());
        };
        crate::storage::manifest::raise_raft_state(
            dir,
            crate::storage::manifest::RAFT_STATE_NAMED_LOGS,
            crate::version(),
        )
        .map_err(std::io::Error::other)
    }

    fn save(&self, catalog: &Catalog) -> std::io::Result<()> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(catalog).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The preferred leader of `group` among `voters`: rendezvous hashing, so
/// each group prefers a voter at random but every node computes the same
/// one, and a change of voters moves only the groups that preferred the
/// voter that went.
pub fn preferred_leader<'a>(group: &str, voters: impl IntoIterator<Item = &'a NodeId>) -> Option<NodeId> {
    voters.into_iter().copied().max_by_key(|id| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in group.as_bytes().iter().chain(&id.to_le_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // FNV alone mixes the last bytes poorly: finish with a splitmix step.
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "orders", "audit.v2", "x_y-z", "0", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Orders",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a b",
            "é",
            &"a".repeat(64),
            "_catalog",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    fn create(name: &str, max_logs: u32) -> CatalogOp {
        CatalogOp::Create {
            name: name.into(),
            settings: LogSettings::default(),
            voters: Vec::new(),
            max_logs,
        }
    }

    #[test]
    fn applying_is_deterministic_and_refuses_without_changing_anything() {
        let mut c = Catalog::default();
        assert_eq!(c.apply(5, &create("a", 2)), Applied::Done);
        assert_eq!(c.logs["a"].incarnation, 5);
        assert_eq!(c.apply(6, &create("a", 2)), Applied::Exists);
        assert_eq!(c.logs["a"].incarnation, 5);
        assert_eq!(c.apply(7, &create("b", 2)), Applied::Done);
        assert_eq!(c.apply(8, &create("c", 2)), Applied::TooMany);
        assert!(!c.logs.contains_key("c"));
        assert_eq!(c.apply(9, &CatalogOp::Delete { name: "zz".into() }), Applied::NotFound);
        assert_eq!(c.apply(10, &CatalogOp::Delete { name: "a".into() }), Applied::Done);
        assert_eq!(c.apply(11, &create("a", 2)), Applied::Done);
        assert_eq!(c.logs["a"].incarnation, 11, "a new incarnation after a delete");
        assert_eq!(c.index, 11);
    }

    #[test]
    fn a_create_with_voters_survives_json() {
        let op = CatalogOp::Create {
            name: "a".into(),
            settings: LogSettings::default(),
            voters: vec![NodeInfo {
                name: "n1".into(),
                peer_addr: "p".into(),
                client_addr: "c".into(),
                domain: String::new(),
            }],
            max_logs: 3,
        };
        let back: CatalogOp = serde_json::from_slice(&serde_json::to_vec(&op).unwrap()).unwrap();
        assert_eq!(back, op);
        let mut c = Catalog::default();
        c.apply(1, &op);
        let back: Catalog = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(
            back.logs["a"]
                .voter_map()
                .contains_key(&super::super::types::node_id("n1"))
        );
    }

    #[test]
    fn the_store_survives_a_reopen_and_skips_indexes_already_applied() {
        let dir = tempfile::tempdir().unwrap();
        let s = CatalogStore::open(dir.path()).unwrap();
        assert_eq!(s.apply(3, &create("a", 10)).unwrap(), Applied::Done);
        let s = CatalogStore::open(dir.path()).unwrap();
        assert_eq!(s.get().index, 3);
        assert!(s.spec("a").is_some());
        // Re-applied after a restart: nothing changes.
        assert_eq!(
            s.apply(3, &CatalogOp::Delete { name: "a".into() }).unwrap(),
            Applied::Done
        );
        assert!(s.spec("a").is_some());
    }

    #[test]
    fn leaders_spread_over_voters() {
        let voters: Vec<NodeId> = vec![1, 2, 3];
        let mut counts = BTreeMap::new();
        for i in 0..300 {
            let p = preferred_leader(&format!("log{i}@{i}"), &voters).unwrap();
            *counts.entry(p).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c > 60), "{counts:?}");
        // Removing a voter moves only the groups that preferred it.
        let two: Vec<NodeId> = vec![1, 2];
        for i in 0..300 {
            let g = format!("log{i}@{i}");
            let before = preferred_leader(&g, &voters).unwrap();
            if before != 3 {
                assert_eq!(preferred_leader(&g, &two), Some(before));
            }
        }
    }
}
