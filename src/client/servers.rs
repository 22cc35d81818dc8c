//! What a client knows of the cluster, from `GetServers` (the book's
//! resolver), and how it picks a server for each call (the book's picker):
//! writes to the leader, reads round-robin over the followers.

use crate::pb::log as pb;

#[derive(Clone, Debug, Default)]
pub struct ServerSet {
    leader: Option<String>,
    followers: Vec<String>,
    /// Round-robin position over `followers`.
    next: usize,
}

impl ServerSet {
    pub fn from_servers(servers: &[pb::Server]) -> Self {
        let mut set = ServerSet::default();
        for s in servers {
            if s.rpc_addr.is_empty() {
                continue;
            }
            if s.is_leader {
                set.leader = Some(s.rpc_addr.clone());
            } else {
                set.followers.push(s.rpc_addr.clone());
            }
        }
        set.followers.sort();
        set
    }

    pub fn is_empty(&self) -> bool {
        self.leader.is_none() && self.followers.is_empty()
    }

    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// A not-the-leader answer named the leader: believe it until the next
    /// refresh (it comes from a member, and saves a GetServers round trip).
    pub fn set_leader(&mut self, addr: String) {
        if let Some(old) = self.leader.take()
            && old != addr
            && !self.followers.contains(&old)
        {
            self.followers.push(old);
        }
        self.followers.retain(|f| *f != addr);
        self.leader = Some(addr);
    }

    /// Forgets `addr` as the leader (it failed): the next write refreshes.
    pub fn forget_leader(&mut self, addr: &str) {
        if self.leader.as_deref() == Some(addr) {
            self.leader = None;
            self.followers.push(addr.to_owned());
        }
    }

    /// The next follower, round-robin; the leader when there is none.
    pub fn pick_reader(&mut self) -> Option<String> {
        self.pick_reader_avoiding(|_| false)
    }

    /// The next follower, round-robin, skipping those `down` says failed
    /// lately; the leader when there is none or every follower failed (the
    /// next follower anyway when no leader is known either).
    pub fn pick_reader_avoiding(&mut self, down: impl Fn(&str) -> bool) -> Option<String> {
        if self.followers.is_empty() {
            return self.leader.clone();
        }
        let n = self.followers.len();
        let up = (0..n).map(|k| (self.next + k) % n).find(|&i| !down(&self.followers[i]));
        if up.is_none()
            && let Some(leader) = &self.leader
        {
            return Some(leader.clone());
        }
        let i = up.unwrap_or(self.next % n);
        self.next = i.wrapping_add(1);
        Some(self.followers[i].clone())
    }

    /// Takes over `old`'s round-robin position, so a refresh (which rebuilds
    /// the set in sorted order) does not send every read back to the first
    /// follower.
    pub fn keep_rotation(&mut self, old: &ServerSet) {
        self.next = old.next;
    }

    /// Every known server, leader first.
    pub fn all(&self) -> Vec<String> {
        self.leader.iter().chain(self.followers.iter()).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(addr: &str, is_leader: bool) -> pb::Server {
        pb::Server {
            id: addr.into(),
            rpc_addr: addr.into(),
            is_leader,
        }
    }

    #[test]
    fn reads_skip_a_follower_that_failed_lately_unless_all_did() {
        let mut set = ServerSet::from_servers(&[server("a:1", false), server("b:1", true), server("c:1", false)]);
        for _ in 0..4 {
            assert_eq!(set.pick_reader_avoiding(|a| a == "a:1").as_deref(), Some("c:1"));
        }
        assert_eq!(
            set.pick_reader_avoiding(|a| a != "b:1").as_deref(),
            Some("b:1"),
            "every follower failed: the leader serves reads"
        );
        let mut set = ServerSet::from_servers(&[server("a:1", false), server("c:1", false)]);
        let picks: Vec<_> = (0..2).map(|_| set.pick_reader_avoiding(|_| true).unwrap()).collect();
        assert!(
            picks.contains(&"a:1".to_string()) && picks.contains(&"c:1".to_string()),
            "{picks:?}"
        );
        let mut fresh = ServerSet::from_servers(&[server("a:1", false), server("b:1", true), server("c:1", false)]);
        let before = set.pick_reader().unwrap();
        fresh.keep_rotation(&set);
        assert_ne!(fresh.pick_reader().unwrap(), before, "a refresh keeps rotating");
    }

    #[test]
    fn reads_rotate_over_followers_and_writes_go_to_the_leader() {
        let mut set = ServerSet::from_servers(&[server("a:1", false), server("b:1", true), server("c:1", false)]);
        assert_eq!(set.leader(), Some("b:1"));
        let picks: Vec<_> = (0..4).map(|_| set.pick_reader().unwrap()).collect();
        assert_eq!(picks, ["a:1", "c:1", "a:1", "c:1"]);
        set.set_leader("c:1".into());
        assert_eq!(set.leader(), Some("c:1"));
        let mut followers: Vec<_> = (0..2).map(|_| set.pick_reader().unwrap()).collect();
        followers.sort();
        assert_eq!(followers, ["a:1", "b:1"]);
    }

    #[test]
    fn a_lone_leader_serves_reads() {
        let mut set = ServerSet::from_servers(&[server("a:1", true)]);
        assert_eq!(set.pick_reader().as_deref(), Some("a:1"));
        set.forget_leader("a:1");
        assert_eq!(set.leader(), None);
        assert_eq!(set.pick_reader().as_deref(), Some("a:1"));
    }
}
