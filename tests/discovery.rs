//! Peer discovery feeding the one bootstrap/join path: DNS (against a test
//! DNS server whose records change while the agents run) and configuration.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use sidelog::{
    agent::Agent,
    cluster::types::NodeId,
    config::{AgentArgs, Config, DiscoveryConfig, DiscoveryMode},
};

use crate::{common::config_in, support_dns::TestDns};

/// Waits for `cond`, checking every 20 ms, failing after `secs`.
async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn dns_config(dir: &tempfile::TempDir, name: &str, peer: SocketAddr, dns: &TestDns, dns_name: &str) -> Config {
    let mut c = config_in(dir.path().join("data"));
    c.node_id = name.into();
    c.peer_addr = peer;
    c.bootstrap_expect = 3;
    c.discovery = DiscoveryConfig {
        mode: DiscoveryMode::Dns,
        dns_name: Some(dns_name.into()),
        dns_refresh: Duration::from_millis(200),
        dns_server: Some(dns.addr),
        ..DiscoveryConfig::default()
    };
    c
}

/// (voters, leader) as `agent` sees them.
fn view(agent: &Agent) -> (BTreeSet<NodeId>, Option<NodeId>) {
    let m = agent.cluster().metrics();
    (m.membership_config.membership().voter_ids().collect(), m.current_leader)
}

/// True when every agent sees the same leader and exactly `names` as voters.
fn one_cluster_of(agents: &[&Agent], names: &[&str]) -> bool {
    let want: BTreeSet<NodeId> = names.iter().map(|n| sidelog::cluster::types::node_id(n)).collect();
    let views: Vec<_> = agents.iter().map(|a| view(a)).collect();
    views[0].1.is_some() && views.iter().all(|v| v == &views[0] && v.0 == want)
}

/// A port free on every one of `ips` (loopback aliases).
fn port_free_on(ips: &[Ipv4Addr]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        if ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_found_by_a_records_form_one_cluster_and_a_fourth_joins_later() {
    let dns = TestDns::start("sidelog.test.").await;
    let service = "peers.sidelog.test.";
    // Every pod of a headless Service shares one port and has its own IP:
    // loopback aliases stand in for pod IPs.
    let ips: Vec<Ipv4Addr> = (11..=14).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let port = port_free_on(&ips);
    // The Service lists two pods at first: nobody may bootstrap with two.
    dns.set_a(service, &ips[..2]).await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = ["dns-a", "dns-b", "dns-c", "dns-d"];
    let mut agents = Vec::new();
    for i in 0..3 {
        let peer = SocketAddr::new(ips[i].into(), port);
        agents.push(
            Agent::start(dns_config(&dirs[i], names[i], peer, &dns, service))
                .await
                .unwrap(),
        );
    }
    // The membership loop polls DNS on every attempt; give it a few.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        for a in &agents {
            assert!(view(a).0.is_empty(), "a cluster formed before three nodes were listed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The third pod appears in DNS: exactly one cluster of three forms.
    dns.set_a(service, &ips[..3]).await;
    {
        let refs: Vec<&Agent> = agents.iter().collect();
        wait_until("one cluster of three", 30, || one_cluster_of(&refs, &names[..3])).await;
    }
    // A fourth pod appears later and joins the cluster instead of
    // bootstrapping, as a non-voter (--voters 3).
    dns.set_a(service, &ips).await;
    let peer = SocketAddr::new(ips[3].into(), port);
    agents.push(
        Agent::start(dns_config(&dirs[3], names[3], peer, &dns, service))
            .await
            .unwrap(),
    );
    let refs: Vec<&Agent> = agents.iter().collect();
    let fourth = sidelog::cluster::types::node_id(names[3]);
    wait_until("the fourth node to join", 60, || {
        one_cluster_of(&refs, &names[..3])
            && refs.iter().all(|a| {
                let m = a.cluster().metrics();
                m.membership_config.membership().get_node(&fourth).is_some()
            })
    })
    .await;
    for a in agents {
        a.stop_without_leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn srv_records_carry_each_peers_port_and_win_over_a_records() {
    let dns = TestDns::start("sidelog.test.").await;
    let service = "srv.sidelog.test.";
    let ports: Vec<u16> = (0..3).map(|_| crate::common::free_port()).collect();
    dns.set_a("pod.sidelog.test.", &[Ipv4Addr::LOCALHOST]).await;
    // An A record for the Service itself points nowhere useful: SRV wins.
    dns.set_a(service, &[Ipv4Addr::new(127, 0, 0, 99)]).await;
    let targets: Vec<(&str, u16)> = ports.iter().map(|p| ("pod.sidelog.test.", *p)).collect();
    dns.set_srv(&format!("_peer._tcp.{service}"), &targets).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = ["srv-a", "srv-b", "srv-c"];
    let mut agents = Vec::new();
    for i in 0..3 {
        let peer = SocketAddr::from(([127, 0, 0, 1], ports[i]));
        agents.push(
            Agent::start(dns_config(&dirs[i], names[i], peer, &dns, service))
                .await
                .unwrap(),
        );
    }
    let refs: Vec<&Agent> = agents.iter().collect();
    wait_until("one cluster of three", 30, || one_cluster_of(&refs, &names)).await;
    for a in agents {
        a.stop_without_leave().await.unwrap();
    }
}

/// `--dns-name sidelog-headless`, as Kubernetes users write a Service in
/// their namespace: resolved through the search list (here the test
/// server's zone), not as a top-level name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_dns_name_resolves_through_the_search_list() {
    let dns = TestDns::start("sidelog.test.").await;
    let ports: Vec<u16> = (0..3).map(|_| crate::common::free_port()).collect();
    dns.set_a("pod.sidelog.test.", &[Ipv4Addr::LOCALHOST]).await;
    let targets: Vec<(&str, u16)> = ports.iter().map(|p| ("pod.sidelog.test.", *p)).collect();
    dns.set_srv("_peer._tcp.headless.sidelog.test.", &targets).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = ["short-a", "short-b", "short-c"];
    let mut agents = Vec::new();
    for i in 0..3 {
        let peer = SocketAddr::from(([127, 0, 0, 1], ports[i]));
        let mut config = dns_config(&dirs[i], names[i], peer, &dns, "headless");
        config.discovery.dns_search = vec!["sidelog.test".into()];
        agents.push(Agent::start(config).await.unwrap());
    }
    let refs: Vec<&Agent> = agents.iter().collect();
    wait_until("one cluster of three", 30, || one_cluster_of(&refs, &names)).await;
    for a in agents {
        a.stop_without_leave().await.unwrap();
    }
}

#[test]
fn discovery_flags_are_validated_and_name_their_key() {
    let err = |args: AgentArgs| Config::resolve(args).unwrap_err().to_string();
    let dns = AgentArgs {
        discovery: Some(DiscoveryMode::Dns),
        bootstrap_expect: Some(3),
        ..Default::default()
    };
    assert!(err(dns.clone()).contains("dns-name"));
    let e = err(AgentArgs {
        discovery: Some(DiscoveryMode::Mdns),
        ..Default::default()
    });
    assert!(e.contains("bootstrap-expect"), "{e}");
    let e = err(AgentArgs {
        dns_name: Some("x.svc".into()),
        ..Default::default()
    });
    assert!(e.contains("dns-name"), "{e}");
    let e = err(AgentArgs {
        dns_name: Some("x.svc".into()),
        join: Some(vec!["a:1".into()]),
        ..dns.clone()
    });
    assert!(e.contains("join"), "{e}");
    let e = err(AgentArgs {
        discovery: Some(DiscoveryMode::Mdns),
        bootstrap_expect: Some(3),
        cluster_name: Some("two words".into()),
        ..Default::default()
    });
    assert!(e.contains("cluster-name"), "{e}");
    let c = Config::resolve(AgentArgs {
        dns_name: Some("sidelog.default.svc.cluster.local".into()),
        ..dns
    })
    .unwrap();
    assert_eq!(c.discovery.mode, DiscoveryMode::Dns);
    assert_eq!(c.discovery.cluster_name, "sidelog");
    assert_eq!(c.discovery.dns_refresh, Duration::from_secs(5));
}
