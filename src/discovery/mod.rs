//! Finding peer addresses: a static list, DNS (a Kubernetes headless
//! Service), or mDNS on the local link.
//!
//! A source only answers "which peer addresses might there be now?". It
//! knows nothing of Raft: the cluster's membership loop (`cluster`) polls
//! the source on every attempt, says hello to each address, and from the
//! answers either joins the existing cluster or, once `--bootstrap-expect`
//! nodes see each other, lets the lowest name bootstrap (DESIGN decision
//! 8). Because the source is polled again on every attempt, pods that come
//! and go while a cluster forms are picked up, and no source has to be
//! exact: an address that is stale, or is our own, costs one failed or
//! pointless hello.

mod dns;
mod mdns;
mod static_list;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use futures_util::future::BoxFuture;

pub use dns::{DnsDiscovery, DnsSettings, SRV_PORT_NAME, own_addresses};
pub use mdns::{MdnsDiscovery, MdnsSettings, SERVICE_TYPE};
pub use static_list::StaticList;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("invalid DNS name {name:?}: {message}")]
    DnsName { name: String, message: String },
    #[error("DNS lookup of {name} failed: {source}")]
    Dns {
        name: String,
        #[source]
        source: hickory_resolver::net::NetError,
    },
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(#[source] hickory_resolver::net::NetError),
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// Interface name prefixes of container and VPN plumbing: never announced
/// on or advertised from unless named explicitly.
pub(crate) const VIRTUAL_PREFIXES: &[&str] = &[
    "docker", "br-", "veth", "cni", "podman", "virbr", "flannel", "cali", "vxlan", "weave", "kube-", "tun", "tap",
];

pub(crate) fn is_virtual_interface(name: &str) -> bool {
    VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The address to tell others for a listener bound to `bound`: the bound
/// address itself, unless it is a wildcard (`0.0.0.0`, `::`), which means
/// nothing to another host. Then the port on this host's first usable
/// interface address: not loopback, not link-local, not a container or VPN
/// interface; IPv4 only for `0.0.0.0` (it accepts nothing else), IPv6 first
/// for `::` (dual-stack sockets accept both). None when there is no such
/// address.
pub fn advertised_for(bound: SocketAddr) -> Option<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return Some(bound);
    }
    let interfaces = if_addrs::get_if_addrs().ok()?;
    pick_advertised(bound, interfaces.iter().map(|i| (i.name.as_str(), i.ip())))
}

fn pick_advertised<'a>(bound: SocketAddr, interfaces: impl Iterator<Item = (&'a str, IpAddr)>) -> Option<SocketAddr> {
    let v6_bind = bound.is_ipv6();
    let usable = |ip: &IpAddr| {
        !ip.is_loopback()
            && !ip.is_unspecified()
            && match ip {
                IpAddr::V4(v4) => !v4.is_link_local(),
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            }
    };
    let mut candidates: Vec<IpAddr> = interfaces
        .filter(|(name, ip)| !is_virtual_interface(name) && usable(ip) && (v6_bind || ip.is_ipv4()))
        .map(|(_, ip)| ip)
        .collect();
    // Stable: the bind's own family first, then in interface order.
    candidates.sort_by_key(|ip| ip.is_ipv6() != v6_bind);
    candidates.first().map(|ip| SocketAddr::new(*ip, bound.port()))
}

/// One way of finding peers.
pub trait PeerSource: Send + Sync + fmt::Debug {
    /// Peer addresses (`HOST:PORT` of peer ports) seen now. May include
    /// addresses that are gone or our own: callers must cope.
    fn peers(&self) -> BoxFuture<'_, Result<Vec<String>, DiscoveryError>>;

    /// False when this source can never name a peer (an empty static
    /// list): the node then forms a cluster on its own, or stays alone.
    fn may_find_peers(&self) -> bool {
        true
    }

    /// Stops announcing this node (mDNS) and releases sockets.
    fn close(&self) {}
}

/// The node's discovery source, shared by the membership loop and shutdown.
#[derive(Clone)]
pub struct Discovery(Arc<dyn PeerSource>);

impl Discovery {
    pub fn new(source: impl PeerSource + 'static) -> Self {
        Discovery(Arc::new(source))
    }

    /// A fixed list of peer addresses (`--join`).
    pub fn fixed(addrs: Vec<String>) -> Self {
        Self::new(StaticList::new(addrs))
    }

    pub async fn peers(&self) -> Result<Vec<String>, DiscoveryError> {
        self.0.peers().await
    }

    pub fn may_find_peers(&self) -> bool {
        self.0.may_find_peers()
    }

    pub fn close(&self) {
        self.0.close()
    }
}

impl Default for Discovery {
    fn default() -> Self {
        Self::fixed(Vec::new())
    }
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bound_address_is_advertised_as_it_is() {
        let bound: SocketAddr = "10.1.2.3:8401".parse().unwrap();
        assert_eq!(advertised_for(bound), Some(bound));
    }

    #[test]
    fn a_wildcard_advertises_the_first_real_interface_of_its_family() {
        let v4: SocketAddr = "0.0.0.0:8401".parse().unwrap();
        let v6: SocketAddr = "[::]:8401".parse().unwrap();
        let ifs = [
            ("lo", ip("127.0.0.1")),
            ("docker0", ip("172.17.0.1")),
            ("veth12ab", ip("10.88.0.1")),
            ("eth0", ip("fe80::1")),
            ("eth0", ip("2001:db8::5")),
            ("eth0", ip("169.254.3.4")),
            ("eth1", ip("192.168.7.20")),
        ];
        assert_eq!(
            pick_advertised(v4, ifs.into_iter()),
            Some("192.168.7.20:8401".parse().unwrap())
        );
        assert_eq!(
            pick_advertised(v6, ifs.into_iter()),
            Some("[2001:db8::5]:8401".parse().unwrap()),
            "a dual-stack bind prefers its own family"
        );
        let v6_only = [("lo", ip("::1")), ("eth0", ip("2001:db8::5"))];
        assert_eq!(
            pick_advertised(v4, v6_only.into_iter()),
            None,
            "0.0.0.0 accepts no IPv6 connection"
        );
        let v4_only = [("eth0", ip("10.0.0.7"))];
        assert_eq!(
            pick_advertised(v6, v4_only.into_iter()),
            Some("10.0.0.7:8401".parse().unwrap())
        );
        let nothing = [("lo", ip("127.0.0.1")), ("docker0", ip("172.17.0.1"))];
        assert_eq!(pick_advertised(v4, nothing.into_iter()), None);
    }
}
