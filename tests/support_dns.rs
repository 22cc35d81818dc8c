//! A DNS server for tests: one authoritative zone on 127.0.0.1 (a random
//! UDP port), whose A and SRV sets the test changes while agents run, as
//! Kubernetes changes a headless Service's records when pods come and go.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use hickory_server::{
    Server,
    proto::rr::{
        LowerName, Name, RData, Record, RecordType, RrKey,
        rdata::{A, SOA, SRV},
    },
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
};

/// Answers live for a second: the agents re-resolve quickly anyway.
const TTL: u32 = 1;

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    _server: Server<Catalog>,
}

fn name(s: &str) -> Name {
    Name::from_str(s).expect("valid name")
}

impl TestDns {
    /// Serves `origin` (e.g. "sidelog.test.") on 127.0.0.1, port 0.
    pub async fn start(origin: &str) -> TestDns {
        let origin_name = name(origin);
        let zone = InMemoryZoneHandler::empty(origin_name.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            name(&format!("ns.{origin}")),
            name(&format!("admin.{origin}")),
            1,
            60,
            60,
            60,
            TTL,
        );
        assert!(
            zone.upsert(Record::from_rdata(origin_name.clone(), TTL, RData::SOA(soa)), 1)
                .await
        );
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin_name), vec![zone.clone() as Arc<dyn ZoneHandler>]);
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(socket);
        TestDns {
            addr,
            zone,
            _server: server,
        }
    }

    async fn replace(&self, owner: &str, rtype: RecordType, rdatas: Vec<RData>) {
        let owner = name(owner);
        self.zone
            .records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&owner), rtype));
        for rdata in rdatas {
            assert!(self.zone.upsert(Record::from_rdata(owner.clone(), TTL, rdata), 1).await);
        }
    }

    /// Makes `owner` answer exactly these A records.
    pub async fn set_a(&self, owner: &str, ips: &[Ipv4Addr]) {
        self.replace(owner, RecordType::A, ips.iter().map(|ip| RData::A(A(*ip))).collect())
            .await;
    }

    /// Makes `owner` answer exactly these SRV records (target, port).
    pub async fn set_srv(&self, owner: &str, targets: &[(&str, u16)]) {
        let rdatas = targets
            .iter()
            .map(|(t, port)| RData::SRV(SRV::new(0, 0, *port, name(t))))
            .collect();
        self.replace(owner, RecordType::SRV, rdatas).await;
    }

    /// Every record the zone holds (for failure messages).
    #[allow(dead_code)]
    pub async fn dump(&self) -> BTreeMap<String, usize> {
        self.zone
            .records()
            .await
            .iter()
            .map(|(k, v)| {
                (
                    format!("{} {:?}", k.name, k.record_type),
                    v.records_without_rrsigs().count(),
                )
            })
            .collect()
    }
}
