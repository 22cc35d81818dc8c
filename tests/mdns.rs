//! mDNS discovery with real binaries in network namespaces: each node has
//! its own namespace with an `eth0` on one bridge (which lives in a
//! namespace of its own, so the host's network is never touched), and
//! multicast crosses the bridge as on a LAN. Skipped, with a message, where
//! `ip netns` cannot be used (not root, no iproute2, no netns support).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Namespaces and processes of one test; removed on drop, even on failure.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// A bridge in a hub namespace and `nodes` namespaces on it, node i
    /// at 10.231.0.(i+1)/24. Err when namespaces are unavailable here.
    fn new(nodes: usize) -> Result<Lab, String> {
        let prefix = format!("sl{}", std::process::id());
        let mut lab = Lab {
            prefix: prefix.clone(),
            namespaces: Vec::new(),
            children: Vec::new(),
        };
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub])?;
        lab.namespaces.push(hub.clone());
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let ns = lab.ns(i);
            ip(&["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", lab.addr(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.231.0.{}", i + 1)
    }

    /// Starts node i in its namespace, in cluster `cluster` of `expect` nodes.
    fn start(&mut self, i: usize, cluster: &str, expect: usize, dir: &Path, secret: &Path) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), env!("CARGO_BIN_EXE_sidelog"), "agent"])
            .args(["--node-id", &format!("{cluster}-{i}"), "--data-dir"])
            .arg(dir.join(format!("n{i}")))
            .args(["--peer-addr", "0.0.0.0:8401"])
            .args(["--advertise-peer-addr", &format!("{}:8401", self.addr(i))])
            .args(["--client-addr", "127.0.0.1:8400", "--http-addr", "127.0.0.1:8080"])
            .arg("--cluster-secret-file")
            .arg(secret)
            .args(["--discovery", "mdns", "--cluster-name", cluster])
            .args(["--bootstrap-expect", &expect.to_string()])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("sidelog starts");
        self.children.push(child);
    }

    /// Member names node i reports, if it answers and knows a leader.
    fn members(&self, i: usize) -> Option<Vec<String>> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(i),
                env!("CARGO_BIN_EXE_sidelog"),
                "cluster",
                "status",
            ])
            .args(["--addr", "127.0.0.1:8400"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("leader:    unknown") {
            return None;
        }
        let mut names: Vec<String> = text
            .lines()
            .filter(|l| l.contains(" voter ") || l.contains(" learner "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        names.sort();
        Some(names)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace deletes its veth end, and the hub's bridge.
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

async fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn nodes_on_one_bridge_find_each_other_by_mdns_and_cluster_names_keep_clusters_apart() {
    let mut lab = match Lab::new(5) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("SKIPPED: network namespaces are not available here ({e})");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-shared-secret-for-tests").unwrap();
    for i in 0..3 {
        lab.start(i, "alpha", 3, dir.path(), &secret);
    }
    for i in 3..5 {
        lab.start(i, "beta", 2, dir.path(), &secret);
    }
    let alpha: Vec<String> = (0..3).map(|i| format!("alpha-{i}")).collect();
    let beta: Vec<String> = (3..5).map(|i| format!("beta-{i}")).collect();
    wait_for("cluster alpha of three", 60, || {
        (0..3).all(|i| lab.members(i).as_ref() == Some(&alpha))
    })
    .await;
    wait_for("cluster beta of two", 60, || {
        (3..5).all(|i| lab.members(i).as_ref() == Some(&beta))
    })
    .await;
}
