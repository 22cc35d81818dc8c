//! Named logs (issue 19): one Raft group per log, created and deleted
//! through the catalog, named by every API.

use std::{collections::BTreeSet, time::Duration};

use bytes::Bytes;
use sidelog::{
    client::{Client, RoutedClient, RoutingOptions},
    cluster::catalog::preferred_leader,
    pb::sidelog::{CreateLogRequest, DeleteLogRequest, DescribeLogRequest, ListLogsRequest},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::{
    cluster::{TestCluster, no_tweak, wait_until},
    common::TestNode,
};

async fn create(c: &Client, name: &str) -> Result<(), tonic::Status> {
    c.cluster()
        .create_log(CreateLogRequest {
            name: name.into(),
            settings: None,
            if_not_exists: false,
        })
        .await
        .map(|_| ())
}

async fn delete(c: &Client, name: &str) -> Result<(), tonic::Status> {
    c.cluster()
        .delete_log(DeleteLogRequest { name: name.into() })
        .await
        .map(|_| ())
}

async fn listed(c: &Client) -> BTreeSet<String> {
    c.cluster()
        .list_logs(ListLogsRequest {})
        .await
        .unwrap()
        .into_inner()
        .logs
        .into_iter()
        .map(|l| l.name)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Every record of `log` through `c`, from offset 0 to the end.
async fn read_all(c: &Client, log: &str) -> Vec<(u64, Bytes)> {
    let mut c = c.clone().with_log(log);
    let mut out = Vec::new();
    loop {
        match c.consume(out.len() as u64).await {
            Ok(r) => out.push((r.offset, r.value)),
            Err(s) if s.code() == Code::OutOfRange => return out,
            Err(s) => panic!("reading {log}: {s}"),
        }
    }
}

/// One HTTP/1.1 request with an optional body; the status code and body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (code, body)
}

#[tokio::test]
async fn records_of_different_logs_never_mix_and_offsets_are_dense_per_log() {
    let c = TestCluster::start(3, no_tweak).await;
    c.wait_formed().await;
    let admin = c.client(0).await;
    create(&admin, "orders").await.unwrap();
    create(&admin, "audit").await.unwrap();
    // Interleaved writes through every node, to each log and to default.
    for round in 0..5u64 {
        for i in 0..3 {
            let base = c.client(i).await;
            for log in ["orders", "audit", ""] {
                let mut w = base.clone().with_log(log);
                let offset = w.produce(format!("{log}-{round}-{i}")).await.unwrap();
                assert_eq!(offset, round * 3 + i as u64, "{log}: offsets are dense per log");
            }
        }
    }
    for log in ["orders", "audit", ""] {
        for i in 0..3 {
            let records = read_all(&c.client(i).await, log).await;
            assert_eq!(records.len(), 15, "{log} on node {i}");
            for (n, (offset, value)) in records.iter().enumerate() {
                assert_eq!(*offset, n as u64);
                let text = String::from_utf8_lossy(value);
                assert!(text.starts_with(&format!("{log}-")), "{log} holds {text}");
            }
        }
    }
    // The book's client (no log named) sees only the default log.
    let mut book = c.client(1).await;
    assert_eq!(book.consume(0).await.unwrap().value, Bytes::from("-0-0"));
    assert_eq!(book.consume(15).await.unwrap_err().code(), Code::OutOfRange);
    assert_eq!(listed(&admin).await, set(&["default", "orders", "audit"]));
    c.shutdown().await;
}

#[tokio::test]
async fn bad_names_duplicates_the_default_log_and_max_logs_are_refused_and_change_nothing() {
    let node = TestNode::start_with(|c| c.max_logs = 2).await;
    let c = node.client().await;
    for bad in ["", "Orders", "-x", "a/b", &"x".repeat(64)] {
        let e = create(&c, bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    let e = c
        .cluster()
        .create_log(CreateLogRequest {
            name: "big".into(),
            settings: Some(sidelog::pb::sidelog::LogSettings {
                max_record_bytes: 2 << 20,
                ..Default::default()
            }),
            if_not_exists: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "above the agent's --max-record-bytes: {e:?}"
    );
    create(&c, "a").await.unwrap();
    let e = create(&c, "a").await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    c.cluster()
        .create_log(CreateLogRequest {
            name: "a".into(),
            settings: None,
            if_not_exists: true,
        })
        .await
        .expect("if_not_exists accepts an existing log");
    assert_eq!(create(&c, "default").await.unwrap_err().code(), Code::AlreadyExists);
    assert_eq!(delete(&c, "default").await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(delete(&c, "nope").await.unwrap_err().code(), Code::NotFound);
    create(&c, "b").await.unwrap();
    let e = create(&c, "c").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("--max-logs 2"), "{}", e.message());
    assert_eq!(listed(&c).await, set(&["default", "a", "b"]));
    // Producing to a log that does not exist: NOT_FOUND, nothing created.
    let e = c.clone().with_log("zz").produce("x").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let h = node.agent().http_addr;
    let (code, body) = http(h, "POST", "/v1/logs/zz/records", r#"{"record":{"value":"eA=="}}"#).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = http(h, "POST", "/v1/logs", r#"{"name":"BAD"}"#).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = http(h, "DELETE", "/v1/logs/default", "").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(listed(&c).await, set(&["default", "a", "b"]));
    // A deleted log frees its directory; its name can be used again.
    delete(&c, "a").await.unwrap();
    let logs_dir = node.dir.path().join("data/logs");
    let dirs = |d: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(dirs(&logs_dir).len(), 1, "{:?}", dirs(&logs_dir));
    create(&c, "c").await.unwrap();
    assert_eq!(listed(&c).await, set(&["default", "b", "c"]));
}

#[tokio::test]
async fn the_http_routes_serve_named_logs_and_the_books_routes_stay_on_default() {
    let node = TestNode::start().await;
    let h = node.agent().http_addr;
    let (code, body) = http(
        h,
        "POST",
        "/v1/logs",
        r#"{"name":"events","settings":{"retention_bytes":1048576}}"#,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = http(h, "POST", "/v1/logs/events/records", r#"{"record":{"value":"aGk="}}"#).await;
    assert_eq!((code, body.as_str()), (200, r#"{"offset":0}"#));
    let (code, body) = http(h, "POST", "/", r#"{"record":{"value":"Ym9vaw=="}}"#).await;
    assert_eq!((code, body.as_str()), (200, r#"{"offset":0}"#));
    let (code, body) = http(h, "GET", "/v1/logs/events/records/0", "").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""value":"aGk=""#), "{body}");
    let (_, body) = http(h, "GET", "/", r#"{"offset":0}"#).await;
    assert!(
        body.contains(r#""value":"Ym9vaw==""#),
        "the book's route reads default: {body}"
    );
    let (code, body) = http(h, "GET", "/v1/logs/events", "").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""retention_bytes":1048576"#), "{body}");
    let (code, body) = http(h, "GET", "/v1/logs/events/records/1", "").await;
    assert_eq!(code, 404, "past the end: {body}");
    let (code, _) = http(h, "DELETE", "/v1/logs/events", "").await;
    assert_eq!(code, 200);
    let (code, _) = http(h, "GET", "/v1/logs/events/records/0", "").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_log_created_or_deleted_while_a_member_is_down_is_matched_when_it_returns() {
    let mut c = TestCluster::start(3, no_tweak).await;
    c.wait_formed().await;
    let admin = c.client(0).await;
    create(&admin, "x").await.unwrap();
    create(&admin, "y").await.unwrap();
    c.kill(2).await;
    delete(&admin, "x").await.unwrap();
    create(&admin, "z").await.unwrap();
    let mut z = admin.clone().with_log("z");
    for i in 0..3u64 {
        assert_eq!(z.produce(format!("z{i}")).await.unwrap(), i);
    }
    c.restart(2).await;
    let logs_dir = c.dirs[2].path().join("data/logs");
    wait_until("the returning member holds exactly y and z", 30, || {
        let names: BTreeSet<String> = c.agent(2).host().groups().into_iter().map(|(n, _)| n).collect();
        let on_disk: BTreeSet<String> = std::fs::read_dir(&logs_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .split('@')
                            .next()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default();
        names == set(&["y", "z"]) && on_disk == set(&["y", "z"])
    })
    .await;
    let z2 = c.agent(2).host().group("z").unwrap();
    wait_until("z replicated to the returning member", 30, || {
        z2.node().committed() >= 3
    })
    .await;
    let records = read_all(&c.client(2).await, "z").await;
    assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(listed(&c.client(2).await).await, set(&["default", "y", "z"]));
    c.shutdown().await;
}

#[tokio::test]
async fn leaders_are_spread_over_the_voters_and_return_to_the_preferred_one() {
    let mut c = TestCluster::start(3, no_tweak).await;
    c.wait_formed().await;
    let admin = c.client(0).await;
    // Names whose preferred leaders cover every node (the choice is a
    // hash: pick names until each node is preferred by one).
    let ids: Vec<u64> = (0..3).map(TestCluster::id).collect();
    let mut names = Vec::new();
    let mut covered = BTreeSet::new();
    for n in 0.. {
        if covered.len() == 3 {
            break;
        }
        let name = format!("log{n}");
        create(&admin, &name).await.unwrap();
        let spec = c.agent(0).host().spec(&name).unwrap();
        let p = preferred_leader(&spec.group_id(), &ids).unwrap();
        if covered.insert(p) {
            names.push(name);
        } else {
            delete(&admin, &name).await.unwrap();
        }
    }
    let leader_of = |c: &TestCluster, name: &str| c.agent(0).host().group(name).unwrap().metrics().current_leader;
    let preferred = |c: &TestCluster, name: &str| {
        let spec = c.agent(0).host().spec(name).unwrap();
        preferred_leader(&spec.group_id(), &ids)
    };
    wait_until("every log led by its preferred voter", 30, || {
        names.iter().all(|n| leader_of(&c, n) == preferred(&c, n))
    })
    .await;
    let leaders: BTreeSet<u64> = names.iter().filter_map(|n| leader_of(&c, n)).collect();
    assert_eq!(leaders.len(), 3, "every node leads a log");
    // The leader of one log goes: another voter takes over, and the
    // preferred one gets it back when it returns.
    let victim = names
        .iter()
        .find(|n| preferred(&c, n) != Some(TestCluster::id(0)))
        .unwrap()
        .clone();
    let gone = ids.iter().position(|id| Some(*id) == preferred(&c, &victim)).unwrap();
    c.kill(gone).await;
    let w = RoutedClient::connect_with(
        &[c.agent(0).client_addr.to_string()],
        None,
        RoutingOptions {
            log: victim.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    w.produce("during").await.unwrap();
    c.restart(gone).await;
    wait_until("leadership back on the preferred voter", 40, || {
        leader_of(&c, &victim) == preferred(&c, &victim)
    })
    .await;
    c.shutdown().await;
}

#[tokio::test]
async fn auto_creation_is_off_by_default_and_creates_the_log_when_on() {
    let node = TestNode::start_with(|c| c.auto_create_logs = true).await;
    let c = node.client().await;
    assert_eq!(c.clone().with_log("fresh").produce("v").await.unwrap(), 0);
    assert_eq!(listed(&c).await, set(&["default", "fresh"]));
    // Through the leader-aware client too (the CLI's): its GetServers for a
    // log not there yet lists servers that take the creating write.
    let routed = RoutedClient::connect_with(
        &[node.client_addr()],
        None,
        RoutingOptions {
            log: "routed".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(routed.produce("r").await.unwrap(), 0);
    assert_eq!(listed(&c).await, set(&["default", "fresh", "routed"]));
    // Consuming never creates.
    assert_eq!(
        c.clone().with_log("other").consume(0).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn configured_logs_are_created_at_start_and_survive_a_restart() {
    let mut node = TestNode::start_with(|c| c.logs = vec!["a".into(), "b".into()]).await;
    let c = node.client().await;
    wait_until_async(|| async { listed(&c).await == set(&["default", "a", "b"]) }).await;
    let mut a = c.clone().with_log("a");
    assert_eq!(a.produce("one").await.unwrap(), 0);
    // A routed client named for the log finds its leader.
    let routed = RoutedClient::connect_with(
        &[node.client_addr()],
        None,
        RoutingOptions {
            log: "b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(routed.produce("bee").await.unwrap(), 0);
    node.restart().await;
    let c = node.client().await;
    let d = c
        .cluster()
        .describe_log(DescribeLogRequest { name: "a".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.first_offset, d.next_offset), (0, 1));
    wait_until_async(|| async { read_all(&c, "b").await.len() == 1 }).await;
    assert_eq!(read_all(&c, "a").await, vec![(0, Bytes::from("one"))]);
}

async fn wait_until_async<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
