//! The peer port is a trust boundary: only cluster peers (peer certificate
//! with an allowed name, or the cluster secret) may call `sidelog.v1.Peer`.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use sidelog::{
    cluster::pb::{self, peer_client::PeerClient},
    security::{ClientAuth, PeerClientTls, PeerCredentials, TlsFiles, certs, tls},
};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::common::TestNode;

const PROMPTLY: Duration = Duration::from_secs(10);

fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certs::write_dev_certs(dir.path(), &[]).unwrap();
    dir
}

fn files(dir: &Path, cert: &str) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{cert}.pem")),
        key: dir.join(format!("{cert}-key.pem")),
        ca: Some(dir.join("ca.pem")),
    }
}

/// A node with TLS and the ACL on the client port, and `peer` as its peer
/// certificate (`None`: peer TLS defaults to the client port's files).
async fn tls_node(dir: &Path, peer: Option<&str>) -> TestNode {
    TestNode::start_with(|c| {
        c.tls = Some(files(dir, "server"));
        c.peer_tls = Some(files(dir, peer.unwrap_or("server")));
        c.acl = Some((dir.join("model.conf"), dir.join("policy.csv")));
    })
    .await
}

/// A peer client presenting `cert` (e.g. "root-client", "peer"), or none.
async fn peer_client(node: &TestNode, dir: &Path, cert: Option<&str>) -> Option<PeerClient<Channel>> {
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(dir.join("ca.pem")).unwrap()))
        .domain_name("localhost");
    if let Some(c) = cert {
        cfg = cfg.identity(Identity::from_pem(
            std::fs::read(dir.join(format!("{c}.pem"))).unwrap(),
            std::fs::read(dir.join(format!("{c}-key.pem"))).unwrap(),
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", node.agent().peer_addr))
        .unwrap()
        .tls_config(cfg)
        .unwrap();
    let channel = tokio::time::timeout(PROMPTLY, endpoint.connect())
        .await
        .expect("no hang")
        .ok()?;
    Some(PeerClient::new(channel))
}

/// Calls every Peer RPC; returns each one's status code.
async fn call_every_rpc(client: &mut PeerClient<Channel>, secret: Option<&str>) -> Vec<(&'static str, Code)> {
    fn req<T>(msg: T, secret: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(Duration::from_secs(5));
        if let Some(s) = secret {
            r.metadata_mut().insert("x-sidelog-cluster-secret", s.parse().unwrap());
        }
        r
    }
    let code = |r: Result<tonic::Code, tonic::Status>| r.unwrap_or_else(|s| s.code());
    let node = pb::NodeInfo {
        id: "intruder".into(),
        peer_addr: "127.0.0.1:1".into(),
        client_addr: "127.0.0.1:1".into(),
        ..Default::default()
    };
    let vote = pb::Vote {
        term: 1_000_000,
        node_id: Some(42),
        committed: true,
    };
    let mut out = Vec::new();
    out.push((
        "Forward",
        code(
            client
                .forward(req(
                    pb::ForwardRequest {
                        values: vec![Bytes::from_static(b"written-by-nobody")],
                        ..Default::default()
                    },
                    secret,
                ))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    out.push((
        "AppendEntries",
        code(
            client
                .append_entries(req(
                    pb::AppendEntriesRequest {
                        vote: Some(vote),
                        prev_log_id: None,
                        entries: vec![],
                        leader_commit: None,
                        ..Default::default()
                    },
                    secret,
                ))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    out.push((
        "Vote",
        code(
            client
                .vote(req(
                    pb::VoteRequest {
                        vote: Some(vote),
                        last_log_id: None,
                        ..Default::default()
                    },
                    secret,
                ))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    out.push((
        "PreVote",
        code(
            client
                .pre_vote(req(
                    pb::PreVoteRequest {
                        candidate: "intruder".into(),
                        term: 1_000_000,
                        last_log_id: None,
                        ..Default::default()
                    },
                    secret,
                ))
                .await
                .map(|r| {
                    if r.get_ref().granted {
                        Code::Ok
                    } else {
                        Code::FailedPrecondition
                    }
                }),
        ),
    ));
    let chunk = pb::SnapshotChunk {
        vote: Some(vote),
        meta: Bytes::from_static(b"{}"),
        ..Default::default()
    };
    out.push((
        "InstallSnapshot",
        code(
            client
                .install_snapshot(req(tokio_stream::iter(vec![chunk]), secret))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    out.push((
        "Hello",
        code(
            client
                .hello(req(
                    pb::HelloRequest {
                        node: Some(node.clone()),
                        ..Default::default()
                    },
                    secret,
                ))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    out.push((
        "Join",
        code(
            client
                .join(req(
                    pb::JoinRequest {
                        node: Some(node),
                        ..Default::default()
                    },
                    secret,
                ))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    out.push((
        "Leave",
        code(
            client
                .leave(req(pb::LeaveRequest { id: "test-node".into() }, secret))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    out.push((
        "ReadIndex",
        code(
            client
                .read_index(req(pb::ReadIndexRequest { ..Default::default() }, secret))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    // Reads around the client ACL: an attached sidecar's path to records.
    out.push((
        "Read",
        code(
            client
                .read(req(
                    pb::ReadRequest {
                        max_records: 1,
                        max_bytes: 1 << 20,
                        ..Default::default()
                    },
                    secret,
                ))
                .await
                .map(|_| Code::Ok),
        ),
    ));
    out
}

fn assert_all_refused(who: &str, codes: &[(&str, Code)]) {
    assert_eq!(codes.len(), 10);
    for (rpc, code) in codes {
        assert!(
            matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{who} calling {rpc} got {code:?}"
        );
    }
}

#[tokio::test]
async fn client_certificates_are_refused_on_every_peer_rpc() {
    let dir = pki();
    let node = tls_node(dir.path(), Some("peer")).await;
    for who in ["root-client", "nobody-client", "server"] {
        let mut client = peer_client(&node, dir.path(), Some(who))
            .await
            .expect("the handshake succeeds");
        assert_all_refused(who, &call_every_rpc(&mut client, None).await);
    }
    // Without any certificate the handshake itself fails (or every call does).
    if let Some(mut anonymous) = peer_client(&node, dir.path(), None).await {
        for (rpc, code) in call_every_rpc(&mut anonymous, None).await {
            assert_ne!(code, Code::Ok, "anonymous {rpc}");
        }
    }
    // Nothing was written, the node still leads its one-node cluster.
    assert_eq!(node.agent().node().committed(), 0);
    let m = node.agent().cluster().metrics();
    assert_eq!(m.current_leader, Some(*node.agent().cluster().id()));
    assert_eq!(m.membership_config.membership().nodes().count(), 1);
    // The peer certificate is admitted.
    let mut peer = peer_client(&node, dir.path(), Some("peer")).await.unwrap();
    let hello = peer
        .hello(pb::HelloRequest {
            node: None,
            ..Default::default()
        })
        .await
        .expect("a peer may say hello")
        .into_inner();
    assert!(hello.initialized);
}

#[tokio::test]
async fn with_peer_tls_defaulting_to_the_server_certificate_clients_are_still_refused() {
    let dir = pki();
    // Only --tls-*: the peer port uses server.pem and admits its name only.
    let node = tls_node(dir.path(), None).await;
    for who in ["root-client", "nobody-client"] {
        let mut client = peer_client(&node, dir.path(), Some(who)).await.unwrap();
        assert_all_refused(who, &call_every_rpc(&mut client, None).await);
    }
    assert_eq!(node.agent().node().committed(), 0);
}

#[tokio::test]
async fn allowed_peer_names_are_glob_patterns() {
    let dir = pki();
    let node = TestNode::start_with(|c| {
        c.tls = Some(files(dir.path(), "server"));
        c.peer_tls = Some(files(dir.path(), "peer"));
        c.peer_allowed_names = Some(vec!["sidelog-*".into()]);
    })
    .await;
    let mut peer = peer_client(&node, dir.path(), Some("peer")).await.unwrap();
    peer.hello(pb::HelloRequest {
        node: None,
        ..Default::default()
    })
    .await
    .expect("sidelog-peer matches sidelog-*");
    let mut root = peer_client(&node, dir.path(), Some("root-client")).await.unwrap();
    let e = root
        .hello(pb::HelloRequest {
            node: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("root"), "{e}");
    // The allowed names are the operator's business, not the caller's.
    assert!(
        !e.message().contains("sidelog-"),
        "the denial lists the allowed peer names: {e}"
    );
}

const SECRET: &str = "8d3e5f0c2b7a4e19a1c6d0f3b5e7a9c1";

#[tokio::test]
async fn without_tls_a_peer_call_without_the_cluster_secret_is_refused() {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("cluster-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let node = TestNode::start_with(|c| c.cluster_secret_file = Some(secret_file.clone())).await;
    let channel = Endpoint::from_shared(format!("http://{}", node.agent().peer_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = PeerClient::new(channel);
    assert_all_refused("no secret", &call_every_rpc(&mut client, None).await);
    assert_all_refused(
        "wrong secret",
        &call_every_rpc(&mut client, Some("0000000000000000000000000000000")).await,
    );
    assert_eq!(node.agent().node().committed(), 0);
    // With the secret a peer gets through (Forward on the leader writes).
    let codes = call_every_rpc(&mut client, Some(SECRET)).await;
    let forward = codes.iter().find(|(r, _)| *r == "Forward").unwrap().1;
    assert_eq!(forward, Code::Ok);
    let hello = codes.iter().find(|(r, _)| *r == "Hello").unwrap().1;
    assert_eq!(hello, Code::Ok);
}

#[tokio::test]
async fn a_bad_cluster_secret_file_stops_the_start() {
    let d = tempfile::tempdir().unwrap();
    let short = d.path().join("short");
    std::fs::write(&short, "tiny").unwrap();
    let mut config = crate::common::config_in(d.path().join("data"));
    config.cluster_secret_file = Some(short);
    let err = sidelog::agent::Agent::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("short") && err.contains("16"), "{err}");
    assert!(!err.contains("tiny"), "the secret must not be shown: {err}");
}

/// The certificate the peer port serves to a new connection.
async fn peer_port_cert(addr: &str, ca: &Path, client: &Path) -> Option<Vec<u8>> {
    let config = tls::client_config(ca, Some((&client.join("peer.pem"), &client.join("peer-key.pem")))).ok()?;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    Some(stream.get_ref().1.peer_certificates()?[0].to_vec())
}

fn der(path: &Path) -> Vec<u8> {
    tls::load_certs(path).unwrap()[0].to_vec()
}

#[tokio::test]
async fn the_peer_port_serves_a_rotated_certificate_to_new_connections() {
    let dir = pki();
    let node = TestNode::start_with(|c| {
        c.tls = Some(files(dir.path(), "server"));
        c.peer_tls = Some(files(dir.path(), "peer"));
        c.tls_reload_interval = Duration::from_millis(100);
    })
    .await;
    let addr = node.agent().peer_addr.to_string();
    let old = der(&dir.path().join("peer.pem"));
    assert_eq!(
        peer_port_cert(&addr, &dir.path().join("ca.pem"), dir.path()).await,
        Some(old.clone())
    );
    // Rotation, new CA included (cert-manager style).
    let fresh = pki();
    for f in ["ca.pem", "peer.pem", "peer-key.pem"] {
        std::fs::copy(fresh.path().join(f), dir.path().join(f)).unwrap();
    }
    let new = der(&dir.path().join("peer.pem"));
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while peer_port_cert(&addr, &dir.path().join("ca.pem"), dir.path())
        .await
        .as_ref()
        != Some(&new)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the peer port kept its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn new_peer_connections_present_a_rotated_client_certificate() {
    let dir = pki();
    let fresh = pki();
    // A TLS server that records the client certificate of each connection;
    // it trusts the CAs of both the old and the rotated certificate.
    let both = dir.path().join("both-cas.pem");
    let mut cas = std::fs::read(dir.path().join("ca.pem")).unwrap();
    cas.extend(std::fs::read(fresh.path().join("ca.pem")).unwrap());
    std::fs::write(&both, cas).unwrap();
    let server_files = TlsFiles {
        ca: Some(both),
        ..files(dir.path(), "server")
    };
    let server = tls::server_config(&server_files, ClientAuth::Required, &[b"h2"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen_tx) = (acceptor.clone(), seen_tx.clone());
            tokio::spawn(async move {
                if let Ok(s) = acceptor.accept(tcp).await
                    && let Some(c) = s.get_ref().1.peer_certificates()
                {
                    let _ = seen_tx.send(c[0].to_vec());
                }
            });
        }
    });
    let peer_tls = Arc::new(PeerClientTls::new(files(dir.path(), "peer"), None).unwrap());
    let peers = sidelog::cluster::Peers::new(
        sidelog::cluster::types::node_id("me"),
        PeerCredentials {
            tls: Some(peer_tls.clone()),
            secret: None,
        },
        None,
    );
    let call = || async {
        let mut c = peers.client(None, &addr).unwrap();
        let _ = tokio::time::timeout(
            PROMPTLY,
            c.hello(pb::HelloRequest {
                node: None,
                ..Default::default()
            }),
        )
        .await;
    };
    call().await;
    let first = tokio::time::timeout(PROMPTLY, seen.recv()).await.unwrap().unwrap();
    assert_eq!(first, der(&dir.path().join("peer.pem")));

    // Rotate the peer certificate and let the reload see it.
    std::fs::copy(fresh.path().join("peer.pem"), dir.path().join("peer.pem")).unwrap();
    std::fs::copy(fresh.path().join("peer-key.pem"), dir.path().join("peer-key.pem")).unwrap();
    assert!(peer_tls.reload_if_changed(), "the new files are taken");
    while seen.try_recv().is_ok() {}
    call().await;
    let second = tokio::time::timeout(PROMPTLY, seen.recv()).await.unwrap().unwrap();
    assert_eq!(second, der(&dir.path().join("peer.pem")));
    assert_ne!(first, second);
}

/// Peers found by IP (DNS A records, mDNS) present certificates that name a
/// Service, not the IP: `--peer-tls-server-name` verifies them against that
/// name, and without it the handshake fails.
#[tokio::test]
async fn peers_dialed_by_ip_are_verified_against_the_configured_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::Ca::generate("test peer CA").unwrap();
    let (cert, key) = ca.issue("sidelog-peer", &["peers.sidelog.test".into()], None).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.path().join("p.pem"), cert).unwrap();
    std::fs::write(dir.path().join("p-key.pem"), key).unwrap();
    let node = TestNode::start_with(|c| c.peer_tls = Some(files(dir.path(), "p"))).await;
    let dial = |name: Option<&str>| {
        let tls = PeerClientTls::new(files(dir.path(), "p"), name.map(str::to_owned)).unwrap();
        let endpoint = Endpoint::from_shared(format!("https://{}", node.agent().peer_addr))
            .unwrap()
            .tls_config(tls.config())
            .unwrap();
        async move {
            tokio::time::timeout(PROMPTLY, endpoint.connect())
                .await
                .expect("no hang")
        }
    };
    assert!(dial(None).await.is_err(), "the certificate does not name 127.0.0.1");
    let channel = dial(Some("peers.sidelog.test"))
        .await
        .expect("verified against the server name");
    // And the peer port admits it as a peer (an RPC past authentication).
    let mut client = PeerClient::new(channel);
    let hello = pb::HelloRequest {
        node: Some(pb::NodeInfo {
            id: "peer-by-name".into(),
            peer_addr: "127.0.0.1:1".into(),
            client_addr: "127.0.0.1:1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    client.hello(hello).await.expect("a peer's Hello is answered");
}
