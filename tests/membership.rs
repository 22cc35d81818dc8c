//! Sidecars are cattle (DESIGN decision 8): restarts and rollouts, bounded
//! voters, dead members replaced, removed members that come back, failure
//! domains, lost-quorum recovery.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use bytes::Bytes;
use sidelog::{
    agent::Agent,
    client::Client,
    cluster::{pb::RemoveRequest, types::NodeId},
    config::Config,
    telemetry::Metrics,
};

use crate::{
    cluster::{Load, TestCluster, assert_history, no_tweak, start_when_unlocked, wait_until},
    common::config_in,
};

fn fast_dead(config: &mut Config) {
    config.dead_member_timeout = Duration::from_secs(5);
}

fn ids(c: &TestCluster, nodes: &[usize]) -> BTreeSet<NodeId> {
    let _ = c;
    nodes.iter().map(|&i| TestCluster::id(i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_and_a_full_restart_keep_every_voter_and_record() {
    let mut c = TestCluster::start(3, no_tweak).await;
    let load = Load::start(&c, 4);
    // A StatefulSet rollout: SIGTERM (no leave by default) and restart each
    // node in turn with its data dir, waiting for ready between them.
    for i in 0..3 {
        wait_until("writes between restarts", 30, || {
            load.acked_since() < Duration::from_millis(500)
        })
        .await;
        c.nodes[i].take().unwrap().shutdown().await.unwrap();
        load.follow(&c);
        c.restart(i).await;
        load.follow(&c);
        c.wait_formed().await;
        let leader = c.leader().await;
        assert_eq!(c.voters(leader), ids(&c, &[0, 1, 2]), "after restarting node {i}");
    }
    // All at once (helm uninstall, a node drain), then all again.
    let agents: Vec<Agent> = (0..3).map(|i| c.nodes[i].take().unwrap()).collect();
    for r in futures_util::future::join_all(agents.into_iter().map(|a| a.shutdown())).await {
        r.unwrap();
    }
    let configs: Vec<Config> = (0..3).map(|i| c.config(i)).collect();
    let started = futures_util::future::join_all(
        configs
            .into_iter()
            .map(|cfg| start_when_unlocked(cfg, c.partition.clone())),
    )
    .await;
    for (i, a) in started.into_iter().enumerate() {
        c.nodes[i] = Some(a);
    }
    load.follow(&c);
    c.wait_formed().await;
    let leader = c.leader().await;
    assert_eq!(c.voters(leader), ids(&c, &[0, 1, 2]));
    wait_until("writes after the full restart", 30, || {
        load.acked_since() < Duration::from_millis(500)
    })
    .await;
    let (acked, _) = load.stop().await;
    assert_history(&c, &acked).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_running_node_stops_reads_at_once_and_rejoins() {
    let c = TestCluster::start(3, no_tweak).await;
    let leader = c.leader().await;
    let mut client = c.client(leader).await;
    assert_eq!(client.produce("r0").await.unwrap(), 0);
    c.wait_committed(1).await;
    let f = (leader + 1) % 3;
    client
        .cluster()
        .remove(RemoveRequest {
            id: TestCluster::name(f),
        })
        .await
        .expect("removed");
    // At once: no reads, not ready.
    let err = c
        .client(f)
        .await
        .consume(0)
        .await
        .expect_err("a removed node serves no reads");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(!c.agent(f).cluster().is_ready(), "a removed node is not ready");
    // It rejoins on its own as a non-voter, and the leader promotes it back
    // (fewer voters than --voters).
    wait_until("the removed node is a voter again and ready", 60, || {
        c.voters(leader).contains(&TestCluster::id(f)) && c.agent(f).cluster().is_ready()
    })
    .await;
    assert_eq!(&c.client(f).await.consume(0).await.unwrap().value[..], b"r0");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_dir_of_another_cluster_is_refused() {
    // The README's lone agent...
    let dir = tempfile::tempdir().unwrap();
    let mut lone = config_in(dir.path().join("data"));
    lone.node_id = "lone".into();
    let agent = Agent::start(lone.clone()).await.unwrap();
    Client::connect(&agent.client_addr.to_string())
        .await
        .unwrap()
        .produce("mine")
        .await
        .unwrap();
    agent.shutdown().await.unwrap();
    // ...restarted with --join to a cluster of its own.
    let c = TestCluster::start(3, no_tweak).await;
    let mut config = lone;
    config.join = c.peer_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    config.bootstrap_expect = 0;
    let err = match Agent::start(config).await {
        Ok(_) => panic!("an agent on another cluster's data started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("belongs to cluster"), "{err}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_agents_keep_three_voters_two_standbys_and_seven_sidecars_without_a_log() {
    let mut c = TestCluster::start(12, fast_dead).await;
    let leader = c.leader().await;
    let shape = |c: &TestCluster, leader: usize, replicas: usize, attached: usize| {
        let cl = c.agent(leader).cluster();
        cl.is_leader()
            && cl.metrics().membership_config.membership().nodes().count() == replicas
            && cl.status().attached.len() == attached
            && c.live().iter().all(|&i| c.agent(i).cluster().is_ready())
    };
    wait_until("5 replicas and 7 attached sidecars, all ready", 60, || {
        shape(&c, leader, 5, 7)
    })
    .await;
    assert_eq!(c.voters(leader).len(), 3);
    let attached: Vec<usize> = c
        .live()
        .into_iter()
        .filter(|&i| c.agent(i).cluster().is_attached())
        .collect();
    assert_eq!(attached.len(), 7, "sidecars beyond 3 voters and 2 standbys hold no log");
    // Writes and reads through sidecars without a log: forwarded to the
    // leader, read from their home replica, streams follow the tail.
    let (a, b) = (attached[0], attached[1]);
    let mut client = c.client(a).await;
    for i in 0..10u64 {
        assert_eq!(client.produce(format!("r{i}")).await.unwrap(), i);
    }
    assert_eq!(&client.consume(3).await.unwrap().value[..], b"r3");
    let status = client.consume(10).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let mut stream = client.consume_stream(8).await.unwrap();
    for i in 8..10u64 {
        let r = stream.message().await.unwrap().unwrap().record.unwrap();
        assert_eq!((r.offset, r.value), (i, Bytes::from(format!("r{i}"))));
    }
    let mut other = c.client(b).await;
    assert_eq!(other.produce("from another sidecar").await.unwrap(), 10);
    let r = stream.message().await.unwrap().unwrap().record.unwrap();
    assert_eq!((r.offset, &r.value[..]), (10, &b"from another sidecar"[..]));
    assert_eq!(
        c.agent(a).node().log().next_offset(),
        0,
        "an attached sidecar writes no log"
    );
    let servers = client.get_servers().await.unwrap();
    assert_eq!(servers.len(), 5, "GetServers lists the replicas: {servers:?}");
    assert_eq!(servers.iter().filter(|s| s.is_leader).count(), 1);
    // A voter dies: a standby takes its place, and an attached sidecar
    // becomes a standby, so the group is back to 3 + 2 replicas.
    let victim = c
        .voters(leader)
        .into_iter()
        .filter_map(|id| c.live().into_iter().find(|&i| TestCluster::id(i) == id))
        .find(|&i| i != leader)
        .unwrap();
    c.kill(victim).await;
    wait_until("the dead voter replaced, a sidecar a standby", 90, || {
        let v = c.voters(leader);
        shape(&c, leader, 5, 6) && v.len() == 3 && !v.contains(&TestCluster::id(victim))
    })
    .await;
    assert_eq!(other.produce("after the loss").await.unwrap(), 11);
    c.wait_committed(12).await;
    c.shutdown().await;
}

fn no_standbys(config: &mut Config) {
    config.standbys = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attached_sidecars_stream_survives_its_home_and_a_stopped_sidecar_detaches() {
    // 3 voters, no standbys: the other two sidecars attach at once.
    let mut c = TestCluster::start(5, no_standbys).await;
    let leader = c.leader().await;
    let attached: Vec<usize> = c
        .live()
        .into_iter()
        .filter(|&i| c.agent(i).cluster().is_attached())
        .collect();
    assert_eq!(attached.len(), 2);
    let (a, b) = (attached[0], attached[1]);
    let mut client = c.client(a).await;
    let mut stream = client.consume_stream(0).await.unwrap();
    let mut writer = c.client(b).await;
    for i in 0..5u64 {
        assert_eq!(writer.produce(format!("before {i}")).await.unwrap(), i);
    }
    for i in 0..5u64 {
        let r = stream.message().await.unwrap().unwrap().record.unwrap();
        assert_eq!((r.offset, r.value), (i, Bytes::from(format!("before {i}"))));
    }
    // Kill the replica the stream reads from: the stream goes on (the
    // leader answers until the next heartbeat names another home).
    // (The leader itself until it has heard which builds the others run.)
    wait_until("a non-leader replica as the home", 30, || {
        c.agent(a).cluster().status().home != TestCluster::name(leader)
    })
    .await;
    let home = c.agent(a).cluster().status().home;
    let home = c
        .live()
        .into_iter()
        .find(|&i| TestCluster::name(i) == home)
        .expect("the home runs");
    c.kill(home).await;
    let mut writer = c.client(leader).await;
    for i in 5..10u64 {
        assert_eq!(writer.produce(format!("after {i}")).await.unwrap(), i);
    }
    for i in 5..10u64 {
        let r = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the stream goes on after its home died")
            .unwrap()
            .unwrap()
            .record
            .unwrap();
        assert_eq!((r.offset, r.value), (i, Bytes::from(format!("after {i}"))));
    }
    // A stopped sidecar tells the leader: it is no longer listed, long
    // before the dead-member timeout (30 s) would drop it.
    let stopped_at = Instant::now();
    c.kill(b).await;
    wait_until("the stopped sidecar is no longer attached", 10, || {
        c.agent(leader).cluster().status().attached.len() == 1
    })
    .await;
    assert!(stopped_at.elapsed() < Duration::from_secs(30));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_replaces_dead_voters_and_loses_nothing() {
    let mut c = TestCluster::start(3, fast_dead).await;
    let load = Load::start(&c, 4);
    let mut outages = Vec::new();
    for round in 0..10 {
        let leader = c.leader().await;
        let voters = c.voters(leader);
        // Kill a voter for good (every third round, the leader).
        let victim = if round % 3 == 2 {
            leader
        } else {
            *c.live()
                .iter()
                .find(|&&i| i != leader && voters.contains(&TestCluster::id(i)))
                .unwrap()
        };
        let killed_at = Instant::now();
        let a = c.nodes[victim].take().unwrap();
        a.stop_without_leave().await.unwrap();
        let new = c.add_node(None).await;
        load.follow(&c);
        wait_until("writes acknowledged again", 60, || {
            load.acked_since() < killed_at.elapsed() && load.acked_since() < Duration::from_millis(500)
        })
        .await;
        outages.push(killed_at.elapsed());
        // Back to three live voters, the dead one gone.
        wait_until("three live voters, the dead one removed", 60, || {
            let Some(l) = c.live().into_iter().find(|&i| c.agent(i).cluster().is_leader()) else {
                return false;
            };
            let m = c.agent(l).cluster().metrics();
            let live = ids(&c, &c.live());
            let v = c.voters(l);
            v.len() == 3
                && v.is_subset(&live)
                && m.membership_config
                    .membership()
                    .get_node(&TestCluster::id(victim))
                    .is_none()
        })
        .await;
        let _ = new;
    }
    let (acked, gap) = load.stop().await;
    println!(
        "churn: 10 rounds, {} records, longest time without an acknowledged write {gap:?}",
        acked.len()
    );
    assert_history(&c, &acked).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_voter_is_replaced_and_returns_as_a_non_voter_without_raising_the_term() {
    let mut c = TestCluster::start(3, fast_dead).await;
    let spare = c.add_node(None).await;
    let leader = c.leader().await;
    wait_until("the spare is a member", 60, || c.agent(spare).cluster().is_ready()).await;
    let mut client = c.client(leader).await;
    for i in 0..20u64 {
        assert_eq!(client.produce(format!("x{i}")).await.unwrap(), i);
    }
    let term = c.agent(leader).cluster().metrics().current_term;
    let v = (0..3).find(|&i| i != leader).unwrap();
    let all: Vec<NodeId> = (0..4).map(TestCluster::id).collect();
    c.partition.isolate(&TestCluster::id(v), &all);
    wait_until("the partitioned voter is replaced by the spare", 60, || {
        let voters = c.voters(leader);
        voters.contains(&TestCluster::id(spare)) && !voters.contains(&TestCluster::id(v))
    })
    .await;
    assert_eq!(client.produce("while away").await.unwrap(), 20);
    c.partition.heal();
    wait_until("the returned node is a ready non-voter with every record", 60, || {
        let m = c.agent(leader).cluster().metrics();
        m.membership_config.membership().get_node(&TestCluster::id(v)).is_some()
            && c.agent(v).cluster().is_ready()
            && c.agent(v).node().committed() == 21
    })
    .await;
    assert!(!c.voters(leader).contains(&TestCluster::id(v)));
    assert_eq!(c.records(v), c.records(leader));
    let m = c.agent(leader).cluster().metrics();
    assert_eq!(m.current_term, term, "the group's term never rose");
    assert_eq!(
        m.current_leader,
        Some(TestCluster::id(leader)),
        "the leader was never deposed"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voters_spread_over_failure_domains_and_stay_spread_after_a_loss() {
    let mut c = TestCluster::start_in_domains(&["a", "a", "b", "b", "c", "c"], fast_dead).await;
    let domain_of = |c: &TestCluster, id: &NodeId| {
        (0..6)
            .find(|&i| TestCluster::id(i) == *id)
            .map(|i| c.domains[i].clone())
    };
    let spread = |c: &TestCluster| {
        let Some(l) = c.live().into_iter().find(|&i| c.agent(i).cluster().is_leader()) else {
            return false;
        };
        let v = c.voters(l);
        let domains: BTreeSet<String> = v.iter().filter_map(|id| domain_of(c, id)).collect();
        v.len() == 3 && domains.len() == 3 && v.is_subset(&ids(c, &c.live()))
    };
    wait_until("one voter per domain", 60, || spread(&c)).await;
    let leader = c.leader().await;
    let victim = c
        .voters(leader)
        .into_iter()
        .map(|id| (0..6).find(|&i| TestCluster::id(i) == id).unwrap())
        .find(|&i| i != leader)
        .unwrap();
    c.nodes[victim].take().unwrap().stop_without_leave().await.unwrap();
    wait_until("one voter per domain after the loss", 60, || spread(&c)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_new_cluster_restores_service_from_one_survivor() {
    let mut c = TestCluster::start(3, no_tweak).await;
    let leader = c.leader().await;
    let mut client = c.client(leader).await;
    for i in 0..10u64 {
        assert_eq!(client.produce(format!("k{i}")).await.unwrap(), i);
    }
    c.wait_committed(10).await;
    let survivor = (leader + 1) % 3;
    for i in (0..3).filter(|&i| i != survivor) {
        c.kill(i).await;
    }
    // No quorum: nothing is acknowledged.
    let mut req = tonic::Request::new(sidelog::api::pb::ProduceRequest {
        record: Some(sidelog::api::pb::Record {
            value: Bytes::from_static(b"lost"),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(2));
    c.client(survivor)
        .await
        .raw()
        .produce(req)
        .await
        .expect_err("no quorum");
    // The operator restarts the survivor with --force-new-cluster.
    c.kill(survivor).await;
    let mut config = c.config(survivor);
    config.force_new_cluster = true;
    // (A Raft replication task may still hold the log for a moment: see
    // `start_when_unlocked`.)
    let metrics = Metrics::new();
    let started = std::time::Instant::now();
    let agent = loop {
        match Agent::start_opts(config.clone(), metrics.clone(), Some(c.partition.clone())).await {
            Err(sidelog::agent::AgentError::Storage(sidelog::storage::Error::Locked { .. }))
                if started.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            r => break r.expect("the survivor restarts with --force-new-cluster"),
        }
    };
    c.nodes[survivor] = Some(agent);
    wait_until("the survivor leads alone", 30, || {
        c.agent(survivor).cluster().is_ready()
    })
    .await;
    assert_eq!(c.voters(survivor), ids(&c, &[survivor]));
    let expected: Vec<(u64, Bytes)> = (0..10).map(|i| (i, Bytes::from(format!("k{i}")))).collect();
    assert_eq!(c.records(survivor), expected);
    assert_eq!(c.client(survivor).await.produce("after").await.unwrap(), 10);
    let text = metrics.render(c.agent(survivor).node(), &[]);
    assert!(text.contains("reason=\"force_new_cluster\""), "{text}");
    // New agents join it: the first stays a non-voter (voter counts stay
    // odd), with the second both become voters at once.
    let new = c.add_node(None).await;
    wait_until("the new node is a ready member", 60, || {
        c.agent(new).cluster().is_ready()
    })
    .await;
    assert_eq!(c.voters(survivor), ids(&c, &[survivor]));
    let newer = c.add_node(None).await;
    wait_until("three ready voters", 60, || {
        c.voters(survivor) == ids(&c, &[survivor, new, newer]) && c.agent(newer).cluster().is_ready()
    })
    .await;
    // The flag left set does not force again on a later start (which
    // would throw the new voter out).
    c.kill(survivor).await;
    let agent = crate::cluster::start_when_unlocked(config, c.partition.clone()).await;
    c.nodes[survivor] = Some(agent);
    c.wait_formed().await;
    let leader = c.leader().await;
    assert_eq!(c.voters(leader), ids(&c, &[survivor, new, newer]));
    c.shutdown().await;
}
