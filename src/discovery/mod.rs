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

use std::{fmt, sync::Arc};

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
