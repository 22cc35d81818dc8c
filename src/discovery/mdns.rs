//! `--discovery mdns`: peers on the local link, by multicast DNS.
//!
//! Every node announces `_sidelog._tcp.local.` with its peer port and TXT
//! records `node`, `peer`, `client` and `cluster`, and browses for the same
//! type. Only announcements with our `--cluster-name` count, so two
//! clusters can share one LAN. Announcements stay up while the node runs,
//! so nodes that start later find the cluster and join it.
//!
//! Interfaces: by default every interface except loopback and the virtual
//! ones container runtimes create (docker0, br-*, veth*, cni*, podman*,
//! virbr*, flannel*, cali*...): peers on those are not our LAN, and a
//! bridge's address would be advertised to machines that cannot reach it.
//! `--mdns-interface NAME` names the interfaces to use instead.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use futures_util::future::{BoxFuture, FutureExt};
use mdns_sd::{IfKind, IfPredicate, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};

use super::{DiscoveryError, PeerSource};

/// The DNS-SD service type sidelog nodes announce.
pub const SERVICE_TYPE: &str = "_sidelog._tcp.local.";

#[derive(Clone, Debug)]
pub struct MdnsSettings {
    pub node: String,
    pub cluster: String,
    /// What peers dial (`--advertise-peer-addr`, or the bound address).
    pub peer_addr: String,
    pub client_addr: String,
    /// The bound peer port (announced in the SRV record).
    pub peer_port: u16,
    /// Interfaces to use; empty: every non-virtual, non-loopback one.
    pub interfaces: Vec<String>,
}

/// Peers seen, by mDNS instance name (so a removal finds its entry).
type Seen = Arc<Mutex<BTreeMap<String, Vec<String>>>>;

pub struct MdnsDiscovery {
    settings: MdnsSettings,
    daemon: ServiceDaemon,
    fullname: String,
    // A std Mutex: it is never held across an await.
    seen: Seen,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("settings", &self.settings)
            .finish()
    }
}

/// A host label from a node name: mDNS host names are DNS labels.
fn host_label(node: &str) -> String {
    let label: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if label.is_empty() { "sidelog".into() } else { label }
}

fn is_virtual(name: &str) -> bool {
    super::is_virtual_interface(name)
}

/// The addresses to dial for an announcement: the announced peer address,
/// unless its host is a wildcard or loopback (meaningless to others), then
/// the port on each address the announcement resolved to.
fn dial_addresses(service: &ResolvedService) -> Vec<String> {
    let announced = service.get_property_val_str("peer").unwrap_or_default();
    match announced.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() || a.ip().is_loopback() => {}
        Ok(a) => return vec![a.to_string()],
        // A host name: dial it as announced.
        Err(_) if announced.contains(':') => return vec![announced.to_owned()],
        Err(_) => {}
    }
    let port = announced
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(service.get_port());
    let mut ips: Vec<IpAddr> = service
        .get_addresses()
        .iter()
        .map(|a| a.to_ip_addr())
        .filter(|ip| !ip.is_loopback())
        .collect();
    ips.sort();
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port).to_string())
        .collect()
}

impl MdnsDiscovery {
    /// Starts announcing this node and browsing for its cluster.
    pub fn start(settings: MdnsSettings) -> Result<Self, DiscoveryError> {
        let daemon = ServiceDaemon::new()?;
        daemon.disable_interface(IfKind::All)?;
        if settings.interfaces.is_empty() {
            daemon.enable_interface(IfKind::Predicate(IfPredicate::new(|i| {
                !i.is_loopback() && !is_virtual(&i.name)
            })))?;
        } else {
            daemon.enable_interface(
                settings
                    .interfaces
                    .iter()
                    .map(|n| IfKind::Name(n.clone()))
                    .collect::<Vec<_>>(),
            )?;
        }
        // Instance names must be unique on the link, also across clusters.
        let instance = format!("{}.{}", settings.node, settings.cluster);
        let host = format!(
            "{}.local.",
            host_label(&format!("{}-{}", settings.node, settings.cluster))
        );
        let txt = [
            ("node", settings.node.as_str()),
            ("peer", settings.peer_addr.as_str()),
            ("client", settings.client_addr.as_str()),
            ("cluster", settings.cluster.as_str()),
        ];
        let info =
            ServiceInfo::new(SERVICE_TYPE, &instance, &host, "", settings.peer_port, &txt[..])?.enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon.register(info)?;
        let events = daemon.browse(SERVICE_TYPE)?;
        let seen: Seen = Default::default();
        tokio::spawn(browse(events, settings.cluster.clone(), fullname.clone(), seen.clone()));
        tracing::info!(service = %fullname, cluster = %settings.cluster, "announcing on mDNS");
        Ok(MdnsDiscovery {
            settings,
            daemon,
            fullname,
            seen,
        })
    }
}

/// Keeps `seen` up to date from the browse events, until the daemon stops.
async fn browse(events: mdns_sd::Receiver<ServiceEvent>, cluster: String, own: String, seen: Seen) {
    while let Ok(event) = events.recv_async().await {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                if service.get_fullname() == own {
                    continue;
                }
                if service.get_property_val_str("cluster") != Some(cluster.as_str()) {
                    tracing::debug!(service = %service.get_fullname(), "mDNS: another cluster");
                    continue;
                }
                let addrs = dial_addresses(&service);
                tracing::debug!(service = %service.get_fullname(), peers = ?addrs, "mDNS: found a peer");
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(service.get_fullname().to_owned(), addrs);
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&fullname);
            }
            _ => {}
        }
    }
}

impl PeerSource for MdnsDiscovery {
    fn peers(&self) -> BoxFuture<'_, Result<Vec<String>, DiscoveryError>> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let peers: Vec<String> = seen.values().flatten().cloned().collect();
        std::future::ready(Ok(peers)).boxed()
    }

    fn close(&self) {
        // Say goodbye so peers forget us now rather than when the TTL ends.
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_bridges_are_not_used_by_default() {
        for name in ["docker0", "br-1a2b", "veth12ab", "cni0", "podman1", "virbr0"] {
            assert!(is_virtual(name), "{name}");
        }
        for name in ["eth0", "enp3s0", "wlan0", "ens5"] {
            assert!(!is_virtual(name), "{name}");
        }
    }

    #[test]
    fn host_labels_are_dns_labels() {
        assert_eq!(host_label("Node_1.example"), "node-1-example");
        assert_eq!(host_label(""), "sidelog");
    }
}
