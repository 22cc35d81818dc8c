//! TLS, mutual TLS and ACL authorization on the client and HTTP ports, and
//! the peer-port mTLS config.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use sidelog::{
    client::{Client, ClientTls},
    security::{
        ClientAuth, TlsFiles,
        certs::{self, Ca},
        tls,
    },
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::common::TestNode;

const PROMPTLY: Duration = Duration::from_secs(10);

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        certs::write_dev_certs(dir.path(), &[]).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn client(&self, who: Option<&str>) -> ClientTls {
        ClientTls {
            ca: Some(self.path("ca.pem")),
            cert: who.map(|w| self.path(&format!("{w}-client.pem"))),
            key: who.map(|w| self.path(&format!("{w}-client-key.pem"))),
            domain: None,
        }
    }

    async fn start_node(&self) -> TestNode {
        let p = |n: &str| self.path(n);
        TestNode::start_with(|c| {
            c.tls = Some(TlsFiles {
                cert: p("server.pem"),
                key: p("server-key.pem"),
                ca: Some(p("ca.pem")),
            });
            c.acl = Some((p("model.conf"), p("policy.csv")));
            c.tls_reload_interval = Duration::from_millis(100);
        })
        .await
    }
}

async fn connect(node: &TestNode, tls: &ClientTls) -> Result<Client, sidelog::client::ClientError> {
    tokio::time::timeout(PROMPTLY, Client::connect_with(&node.client_addr(), Some(tls)))
        .await
        .expect("no hang")
}

#[tokio::test]
async fn root_can_produce_and_consume() {
    let pki = Pki::new();
    let node = pki.start_node().await;
    let mut root = connect(&node, &pki.client(Some("root"))).await.unwrap();
    assert_eq!(root.produce(Bytes::from_static(b"secret")).await.unwrap(), 0);
    assert_eq!(&root.consume(0).await.unwrap().value[..], b"secret");
    let mut stream = root.consume_stream(0).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().record.unwrap().offset, 0);
}

#[tokio::test]
async fn nobody_is_denied_produce_and_consume() {
    let pki = Pki::new();
    let node = pki.start_node().await;
    connect(&node, &pki.client(Some("root")))
        .await
        .unwrap()
        .produce(Bytes::from_static(b"x"))
        .await
        .unwrap();
    let mut nobody = connect(&node, &pki.client(Some("nobody"))).await.unwrap();
    let e = nobody.produce(Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = nobody.consume(0).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = nobody.consume_stream(0).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
}

#[tokio::test]
async fn no_client_certificate_is_unauthenticated_but_health_works() {
    let pki = Pki::new();
    let node = pki.start_node().await;
    let mut anonymous = connect(&node, &pki.client(None)).await.unwrap();
    let e = anonymous.produce(Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert_eq!(anonymous.get_servers().await.unwrap_err().code(), Code::Unauthenticated);
    // Kubernetes' gRPC probe presents no certificate: health must answer.
    for who in [None, Some("nobody")] {
        let tls = pki.client(who);
        let mut cfg = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(tls.ca.unwrap()).unwrap(),
        ));
        if let (Some(c), Some(k)) = (tls.cert, tls.key) {
            cfg = cfg.identity(tonic::transport::Identity::from_pem(
                std::fs::read(c).unwrap(),
                std::fs::read(k).unwrap(),
            ));
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", node.client_addr()))
            .unwrap()
            .tls_config(cfg)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap();
        assert_eq!(resp.into_inner().status(), ServingStatus::Serving, "health for {who:?}");
    }
}

/// A call through `tls` must fail (at connect or on the first call).
async fn assert_refused(node: &TestNode, tls: &ClientTls) {
    match connect(node, tls).await {
        Err(_) => {}
        Ok(mut c) => {
            let r = tokio::time::timeout(PROMPTLY, c.produce(Bytes::from_static(b"x")))
                .await
                .expect("no hang");
            assert!(r.is_err(), "the call went through");
            let code = r.unwrap_err().code();
            assert!(
                code != Code::PermissionDenied && code != Code::Ok,
                "refused at the wrong layer: {code:?}"
            );
        }
    }
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let node = pki.start_node().await;
    let other = tempfile::tempdir().unwrap();
    certs::write_dev_certs(other.path(), &[]).unwrap();
    // root's certificate, but signed by a CA the server does not trust.
    let tls = ClientTls {
        ca: Some(pki.path("ca.pem")),
        cert: Some(other.path().join("root-client.pem")),
        key: Some(other.path().join("root-client-key.pem")),
        domain: None,
    };
    assert_refused(&node, &tls).await;
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let pki = Pki::new();
    // The dev PKI's CA key is only on disk; issue from a CA held in memory
    // and start the node trusting it.
    let ca = Ca::generate("expiry test CA").unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let (cert, key) = ca
        .issue("server", &["127.0.0.1".into(), "localhost".into()], None)
        .unwrap();
    std::fs::write(d.path().join("server.pem"), cert).unwrap();
    std::fs::write(d.path().join("server-key.pem"), key).unwrap();
    let past = (
        time::OffsetDateTime::now_utc() - time::Duration::days(30),
        time::OffsetDateTime::now_utc() - time::Duration::days(1),
    );
    let (cert, key) = ca.issue("root", &[], Some(past)).unwrap();
    std::fs::write(d.path().join("expired.pem"), cert).unwrap();
    std::fs::write(d.path().join("expired-key.pem"), key).unwrap();
    let (cert, key) = ca.issue("root", &[], None).unwrap();
    std::fs::write(d.path().join("valid.pem"), cert).unwrap();
    std::fs::write(d.path().join("valid-key.pem"), key).unwrap();
    let p = |n: &str| d.path().join(n);
    let node = TestNode::start_with(|c| {
        c.tls = Some(TlsFiles {
            cert: p("server.pem"),
            key: p("server-key.pem"),
            ca: Some(p("ca.pem")),
        });
        c.acl = Some((pki.path("model.conf"), pki.path("policy.csv")));
    })
    .await;
    let client = |name: &str| ClientTls {
        ca: Some(p("ca.pem")),
        cert: Some(p(&format!("{name}.pem"))),
        key: Some(p(&format!("{name}-key.pem"))),
        domain: None,
    };
    // The same subject with a valid certificate works: only expiry differs.
    connect(&node, &client("valid"))
        .await
        .unwrap()
        .produce(Bytes::from_static(b"ok"))
        .await
        .unwrap();
    assert_refused(&node, &client("expired")).await;
}

#[tokio::test]
async fn plaintext_client_to_a_tls_port_fails_cleanly() {
    let pki = Pki::new();
    let node = pki.start_node().await;
    let r = tokio::time::timeout(PROMPTLY, async {
        let mut c = Client::connect(&node.client_addr()).await?;
        c.produce(Bytes::from_static(b"x")).await.map_err(anyhow::Error::from)
    })
    .await
    .expect("fails promptly instead of hanging");
    assert!(r.is_err());
}

#[tokio::test]
async fn invalid_policy_is_rejected_with_its_line_number() {
    let pki = Pki::new();
    std::fs::write(
        pki.path("policy.csv"),
        "p, root, *, produce\n# ok so far\np, root, consume\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::common::config_in(dir.path().join("data"));
    let p = |n: &str| pki.path(n);
    config.tls = Some(TlsFiles {
        cert: p("server.pem"),
        key: p("server-key.pem"),
        ca: Some(p("ca.pem")),
    });
    config.acl = Some((p("model.conf"), p("policy.csv")));
    let err = sidelog::agent::Agent::start(config)
        .await
        .err()
        .expect("start must fail")
        .to_string();
    assert!(err.contains("policy.csv:3"), "{err}");
}

/// The certificate a new TLS connection to `addr` is served, if it verifies against `ca`.
async fn server_cert_seen(addr: &str, ca: &Path) -> Option<Vec<u8>> {
    let config = tls::client_config(ca, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    Some(stream.get_ref().1.peer_certificates()?[0].to_vec())
}

fn pem_der(path: &Path) -> Vec<u8> {
    tls::load_certs(path).unwrap()[0].to_vec()
}

#[tokio::test]
async fn rotated_server_certificate_is_used_by_new_connections() {
    let pki = Pki::new();
    let node = pki.start_node().await;
    let addr = node.client_addr();
    let old = pem_der(&pki.path("server.pem"));
    assert_eq!(server_cert_seen(&addr, &pki.path("ca.pem")).await, Some(old.clone()));

    // cert-manager style rotation: a new key pair and certificate from a new
    // CA, written in place (CA too, so clients of the new CA verify).
    let fresh = tempfile::tempdir().unwrap();
    certs::write_dev_certs(fresh.path(), &[]).unwrap();
    for f in ["ca.pem", "server.pem", "server-key.pem"] {
        std::fs::copy(fresh.path().join(f), pki.path(f)).unwrap();
    }
    let new = pem_der(&pki.path("server.pem"));
    assert_ne!(old, new);
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        if server_cert_seen(&addr, &pki.path("ca.pem")).await.as_ref() == Some(&new) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never picked up the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Clients with certificates from the new CA are authorized as before.
    let mut root = connect(
        &node,
        &ClientTls {
            ca: Some(pki.path("ca.pem")),
            cert: Some(fresh.path().join("root-client.pem")),
            key: Some(fresh.path().join("root-client-key.pem")),
            domain: None,
        },
    )
    .await
    .unwrap();
    root.produce(Bytes::from_static(b"after rotation")).await.unwrap();
}

#[tokio::test]
async fn a_broken_new_certificate_keeps_the_old_one() {
    let pki = Pki::new();
    let files = TlsFiles {
        cert: pki.path("server.pem"),
        key: pki.path("server-key.pem"),
        ca: Some(pki.path("ca.pem")),
    };
    let reloadable = tls::ReloadableTls::new(files, ClientAuth::Optional, vec![b"h2"]).unwrap();
    std::fs::write(pki.path("server.pem"), "not a certificate").unwrap();
    assert!(!reloadable.reload(), "a broken file must not be taken");
    // The acceptor still works with the old certificate.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = reloadable.acceptor();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let seen = server_cert_seen(&addr.to_string(), &pki.path("ca.pem")).await;
    assert!(seen.is_some(), "the old certificate should still be served");
}

#[tokio::test]
async fn peer_port_config_requires_a_client_certificate() {
    let pki = Pki::new();
    let files = TlsFiles {
        cert: pki.path("server.pem"),
        key: pki.path("server-key.pem"),
        ca: Some(pki.path("ca.pem")),
    };
    let server = tls::server_config(&files, ClientAuth::Required, &[b"h2"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let accepted = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            results.push(
                acceptor
                    .accept(tcp)
                    .await
                    .map(|s| tls::common_name(&s.get_ref().1.peer_certificates().unwrap()[0])),
            );
        }
        results
    });
    let handshake = |cfg: Arc<rustls::ClientConfig>| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // TLS 1.3: the server's verdict on our certificate arrives after the
        // client's handshake completes; a read surfaces it.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"ping").await?;
        let mut b = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await;
        Ok::<_, std::io::Error>(())
    };
    let _anonymous = handshake(tls::client_config(&pki.path("ca.pem"), None).unwrap()).await;
    let peer = tls::client_config(
        &pki.path("ca.pem"),
        Some((&pki.path("server.pem"), &pki.path("server-key.pem"))),
    )
    .unwrap();
    let _ = handshake(peer).await;
    let results = tokio::time::timeout(PROMPTLY, accepted).await.unwrap().unwrap();
    assert!(results[0].is_err(), "an anonymous peer was accepted");
    assert_eq!(results[1].as_ref().unwrap().as_deref(), Some("server"));
}

/// Issue 23: a policy reload that takes a subject's right away ends its open
/// streams, not only its next calls.
#[tokio::test]
async fn a_revoked_subjects_open_stream_ends_with_permission_denied() {
    let pki = Pki::new();
    let policy = pki.path("policy.csv");
    let granted = "p, root, *, produce\np, root, *, consume\np, nobody, *, consume\n";
    std::fs::write(&policy, granted).unwrap();
    let node = pki.start_node().await;
    let mut root = connect(&node, &pki.client(Some("root"))).await.unwrap();
    root.produce(Bytes::from_static(b"first")).await.unwrap();
    let mut nobody = connect(&node, &pki.client(Some("nobody"))).await.unwrap();
    let mut stream = nobody.consume_stream(0).await.unwrap();
    assert_eq!(
        &stream.message().await.unwrap().unwrap().record.unwrap().value[..],
        b"first"
    );
    // Revoke (the file's mtime must move for the watcher to see it).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&policy, "p, root, *, produce\np, root, *, consume\n").unwrap();
    let ended = tokio::time::timeout(PROMPTLY, async {
        loop {
            match stream.message().await {
                Err(status) => return status,
                Ok(Some(_)) => panic!("a revoked subject's stream delivered a record"),
                Ok(None) => panic!("the stream ended without saying why"),
            }
        }
    });
    // A record written after the reload must not reach it either.
    let write = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        root.produce(Bytes::from_static(b"after the reload")).await.unwrap();
    };
    let (status, ()) = tokio::join!(ended, write);
    let status = status.expect("the stream ends promptly");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // New calls are refused too, and root's stream is unaffected.
    assert_eq!(nobody.consume(0).await.unwrap_err().code(), Code::PermissionDenied);
    let mut stream = root.consume_stream(0).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().record.unwrap().offset, 0);
}

/// A revoked producer's open ProduceStream appends nothing more: what it
/// sent before the reload is answered, then PERMISSION_DENIED.
#[tokio::test]
async fn a_revoked_producers_stream_appends_nothing_more() {
    use sidelog::api::pb;
    let pki = Pki::new();
    let policy = pki.path("policy.csv");
    std::fs::write(&policy, "p, root, *, consume\np, nobody, *, produce\n").unwrap();
    let node = pki.start_node().await;
    let nobody = connect(&node, &pki.client(Some("nobody"))).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ProduceRequest>(16);
    let record = |v: &'static [u8]| pb::ProduceRequest {
        record: Some(pb::Record {
            value: Bytes::from_static(v),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut acks = nobody
        .raw()
        .produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(record(b"before")).await.unwrap();
    assert_eq!(acks.message().await.unwrap().unwrap().offset, 0);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&policy, "p, root, *, consume\n").unwrap();
    let mut acked = 1;
    let status = tokio::time::timeout(PROMPTLY, async {
        // Keep sending: none of it may be appended once the reload is seen.
        let mut n = 0;
        loop {
            if n < 50 {
                let _ = tx.send(record(b"after")).await;
                n += 1;
            }
            tokio::select! {
                m = acks.message() => match m {
                    Err(status) => return status,
                    Ok(Some(_)) => acked += 1,
                    Ok(None) => panic!("the stream ended without saying why"),
                },
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await
    .expect("the stream ends promptly");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Whatever was acknowledged before the denial is all there is: the
    // log's end does not move any more.
    let mut root = connect(&node, &pki.client(Some("root"))).await.unwrap();
    let end = |e: tonic::Status| sidelog::api::convert::next_offset_of(&e);
    let mut at = 0;
    let next = loop {
        match root.consume(at).await {
            Ok(_) => at += 1,
            Err(e) => break end(e).expect("out of range names the end"),
        }
    };
    assert_eq!(next, acked, "the log holds exactly the acknowledged records");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        end(root.consume(next).await.unwrap_err()),
        Some(next),
        "records were appended after the denial"
    );
}

/// Issue 19: the ACL's object is the log name; `*` covers every log, and
/// creating or deleting a log needs the `admin` action on its name.
#[tokio::test]
async fn a_client_allowed_one_log_is_refused_on_another_and_admin_calls_need_their_right() {
    use sidelog::pb::sidelog::{CreateLogRequest, DeleteLogRequest};
    let pki = Pki::new();
    let policy = pki.path("policy.csv");
    std::fs::write(
        &policy,
        "p, root, *, produce\np, root, *, consume\np, root, *, admin\n\
         p, nobody, orders, produce\np, nobody, orders, consume\n",
    )
    .unwrap();
    let node = pki.start_node().await;
    let root = connect(&node, &pki.client(Some("root"))).await.unwrap();
    for name in ["orders", "audit"] {
        root.cluster()
            .create_log(CreateLogRequest {
                name: name.into(),
                settings: None,
                if_not_exists: false,
            })
            .await
            .unwrap();
    }
    let app = connect(&node, &pki.client(Some("nobody"))).await.unwrap();
    assert_eq!(app.clone().with_log("orders").produce("ok").await.unwrap(), 0);
    assert_eq!(
        app.clone().with_log("orders").consume(0).await.unwrap().value,
        Bytes::from("ok")
    );
    for (log, what) in [("audit", "a named log"), ("", "the default log")] {
        let e = app.clone().with_log(log).produce("no").await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
        let e = app.clone().with_log(log).consume(0).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    }
    // A stream names its log in its first request: refused on audit.
    let e = app.clone().with_log("audit").consume_stream(0).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Producing to orders gives no right to create or delete it.
    let e = app
        .cluster()
        .delete_log(DeleteLogRequest { name: "orders".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = app
        .cluster()
        .create_log(CreateLogRequest {
            name: "mine".into(),
            settings: None,
            if_not_exists: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Nothing of audit was written.
    let e = root.clone().with_log("audit").consume(0).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
}
