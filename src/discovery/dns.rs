//! `--discovery dns --dns-name NAME`: peers from DNS, as a Kubernetes
//! headless Service publishes them.
//!
//! A headless Service answers its name with one A/AAAA record per pod, and
//! `_<port-name>._tcp.<name>` with one SRV record per pod and named port.
//! SRV records are preferred when there are any, since they carry the port
//! (pods may use different ones); otherwise every address gets our own
//! peer port. A NAME that starts with `_` is taken as the SRV name itself.
//!
//! Pods come and go, so answers are cached only briefly: the resolver caps
//! every TTL at the refresh interval, and the membership loop asks again
//! on each attempt. The Service should set `publishNotReadyAddresses: true`:
//! a pod is not ready until the cluster has formed, which needs the others
//! to find it first.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use futures_util::future::{BoxFuture, FutureExt};
use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
};

use super::{DiscoveryError, PeerSource};

/// The port name the Helm chart gives the peer port (`_peer._tcp.<name>`).
pub const SRV_PORT_NAME: &str = "peer";

#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// The Service's name, e.g. `sidelog.default.svc.cluster.local`.
    pub name: String,
    /// The port used with A/AAAA answers (our own peer port).
    pub peer_port: u16,
    /// Longest time an answer is reused.
    pub refresh: Duration,
    /// A nameserver to ask instead of the system's (tests, unusual setups).
    pub server: Option<SocketAddr>,
    /// Search domains for a short name, with `server` (the system's
    /// resolver configuration brings its own: resolv.conf's `search`).
    pub search: Vec<String>,
    /// Our own peer addresses, left out of the answers.
    pub own: Vec<SocketAddr>,
}

pub struct DnsDiscovery {
    settings: DnsSettings,
    resolver: TokioResolver,
    /// The names asked for: fully qualified (a trailing dot: no search
    /// list) when the name given has a dot, relative otherwise.
    srv_name: String,
    host_name: String,
}

impl std::fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsDiscovery")
            .field("settings", &self.settings)
            .finish()
    }
}

/// A name with a dot (`sidelog.ns.svc.cluster.local`, `sidelog.local.`) is
/// taken as fully qualified, as before; a short name (`sidelog-headless`,
/// as Kubernetes users write a Service in their own namespace) goes through
/// the resolver's search list (`<ns>.svc.cluster.local`, or a container
/// network's domain), as every other tool resolves it.
fn qualify(name: &str, short: bool) -> String {
    if short || name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

impl DnsDiscovery {
    pub fn new(settings: DnsSettings) -> Result<Self, DiscoveryError> {
        let name = settings.name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(DiscoveryError::DnsName {
                name: settings.name.clone(),
                message: "must be a DNS name such as sidelog.default.svc.cluster.local".into(),
            });
        }
        let short = !name.contains('.');
        let (srv_name, host_name) = if name.starts_with('_') {
            (qualify(name, short), String::new())
        } else {
            (
                qualify(&format!("_{SRV_PORT_NAME}._tcp.{name}"), short),
                qualify(name, short),
            )
        };
        let mut builder = match settings.server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                let search = settings
                    .search
                    .iter()
                    .map(|d| {
                        hickory_resolver::proto::rr::Name::from_ascii(qualify(d, false)).map_err(|e| {
                            DiscoveryError::DnsName {
                                name: d.clone(),
                                message: format!("not a search domain: {e}"),
                            }
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, search, vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(DiscoveryError::Resolver)?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        // Pods come and go: never trust an answer longer than the refresh
        // interval, and ask again soon after "no such name" (the Service
        // has no endpoints until the first pod starts).
        opts.positive_max_ttl = Some(settings.refresh);
        opts.negative_max_ttl = Some(settings.refresh);
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let resolver = builder.build().map_err(DiscoveryError::Resolver)?;
        Ok(DnsDiscovery {
            settings,
            resolver,
            srv_name,
            host_name,
        })
    }

    /// `ip:port` for every SRV target, or None when there are no SRV records.
    async fn resolve_srv(&self) -> Option<Vec<SocketAddr>> {
        let lookup = self.resolver.srv_lookup(self.srv_name.as_str()).await.ok()?;
        let mut targets = Vec::new();
        for record in lookup.answers() {
            if let hickory_resolver::proto::rr::RData::SRV(srv) = &record.data {
                targets.push((srv.target.to_string(), srv.port));
            }
        }
        if targets.is_empty() {
            return None;
        }
        let mut addrs = Vec::new();
        for (target, port) in targets {
            match self.resolver.lookup_ip(target.as_str()).await {
                Ok(ips) => addrs.extend(ips.iter().map(|ip| SocketAddr::new(ip, port))),
                Err(e) => tracing::debug!(%target, cause = %e, "SRV target does not resolve"),
            }
        }
        Some(addrs)
    }

    async fn resolve(&self) -> Result<Vec<String>, DiscoveryError> {
        let addrs = match self.resolve_srv().await {
            Some(addrs) => addrs,
            None if self.host_name.is_empty() => Vec::new(),
            None => {
                let ips = self
                    .resolver
                    .lookup_ip(self.host_name.as_str())
                    .await
                    .map_err(|source| DiscoveryError::Dns {
                        name: self.host_name.clone(),
                        source,
                    })?;
                ips.iter()
                    .map(|ip: IpAddr| SocketAddr::new(ip, self.settings.peer_port))
                    .collect()
            }
        };
        let unique: BTreeSet<SocketAddr> = addrs.into_iter().filter(|a| !self.settings.own.contains(a)).collect();
        tracing::debug!(name = %self.settings.name, peers = ?unique, "resolved peers");
        Ok(unique.into_iter().map(|a| a.to_string()).collect())
    }
}

impl PeerSource for DnsDiscovery {
    fn peers(&self) -> BoxFuture<'_, Result<Vec<String>, DiscoveryError>> {
        self.resolve().boxed()
    }
}

/// Our own peer addresses as others would see them: the bound address, or
/// with a wildcard bind, the port on every local interface address.
pub fn own_addresses(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs.into_iter().map(|i| SocketAddr::new(i.ip(), bound.port())).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_names_are_fully_qualified_and_short_names_are_searched() {
        let d = |name: &str| {
            DnsDiscovery::new(DnsSettings {
                name: name.into(),
                peer_port: 8401,
                refresh: Duration::from_secs(5),
                server: Some("127.0.0.1:53".parse().unwrap()),
                search: vec![],
                own: vec![],
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let a = d("sidelog.ns.svc.cluster.local").unwrap();
        assert_eq!(a.srv_name, "_peer._tcp.sidelog.ns.svc.cluster.local.");
        assert_eq!(a.host_name, "sidelog.ns.svc.cluster.local.");
        let b = d("_raft._tcp.sidelog.local.").unwrap();
        assert_eq!(b.srv_name, "_raft._tcp.sidelog.local.");
        assert!(b.host_name.is_empty());
        assert!(d("two words").is_err());
        // A short name goes through the search list.
        let c = d("sidelog-headless").unwrap();
        assert_eq!(c.srv_name, "_peer._tcp.sidelog-headless");
        assert_eq!(c.host_name, "sidelog-headless");
    }
}
