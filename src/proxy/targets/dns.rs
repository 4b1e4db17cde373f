//! Hostname targets: every address a name resolves to is a target, re-resolved every 10 s or
//! sooner when the record's TTL says so; a name that stops resolving keeps its last addresses.
//!
//! hickory's resolver (TTLs, the system's `resolv.conf` and hosts file, or the config's
//! `resolver:` servers); when the system configuration cannot be read, the C library's
//! resolver (no TTLs: every 10 s).

use super::UpstreamSet;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Re-resolved at least this often (the contract's 10 s) ...
pub(crate) const REFRESH: Duration = Duration::from_secs(10);
/// ... and at most this often, whatever a record's TTL.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// One resolution's bound; past it the name keeps its addresses until the next round.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) enum Resolver {
    Dns(Box<TokioResolver>),
    /// `getaddrinfo`, when the system's DNS configuration is unreadable.
    System,
}

opaque_debug!(Resolver);

/// A name's addresses and how long they hold.
pub(crate) struct Resolved {
    pub(crate) addresses: Vec<SocketAddr>,
    pub(crate) valid_for: Duration,
}

impl Resolver {
    /// The config's `resolver:` servers, or the system's configuration.
    pub(crate) fn new(servers: &[SocketAddr]) -> Resolver {
        let builder = if servers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(builder) => builder,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the system's DNS configuration; hostname targets use the C library's resolver");
                    return Resolver::System;
                }
            }
        } else {
            let group: Vec<NameServerConfig> = servers
                .iter()
                .flat_map(|&s| {
                    [
                        NameServerConfig::new(s, Protocol::Udp),
                        NameServerConfig::new(s, Protocol::Tcp),
                    ]
                })
                .collect();
            let config = ResolverConfig::from_parts(None, Vec::new(), group);
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        Resolver::Dns(Box::new(builder.build()))
    }

    /// Every address of `host` (with `port`), or why not.
    pub(crate) async fn resolve(&self, host: &str, port: u16) -> Result<Resolved, String> {
        let lookup = async {
            let found: Result<Resolved, String> = match self {
                Resolver::Dns(resolver) => {
                    let found = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
                    let valid_for = found
                        .valid_until()
                        .saturating_duration_since(Instant::now());
                    let addresses = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                    Ok(Resolved {
                        addresses,
                        valid_for,
                    })
                }
                Resolver::System => {
                    let found = tokio::net::lookup_host((host, port))
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Resolved {
                        addresses: found.collect(),
                        valid_for: REFRESH,
                    })
                }
            };
            found
        };
        let mut resolved: Resolved = tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
            .await
            .map_err(|_| "no answer in time".to_owned())??;
        resolved.addresses.sort();
        resolved.addresses.dedup();
        if resolved.addresses.is_empty() {
            return Err("no addresses".to_owned());
        }
        Ok(resolved)
    }
}

/// How long until the next round, given the shortest validity seen.
pub(crate) fn next_round(valid_for: Option<Duration>) -> Duration {
    valid_for.map_or(REFRESH, |v| v.clamp(MIN_REFRESH, REFRESH))
}

/// Re-resolves the set's hostname targets until it is retired, swapping in a new target list
/// when an address set changed (targets that stay are kept, with their connections).
pub(super) async fn run(set: Weak<UpstreamSet>, resolver: Arc<Resolver>, first: Duration) {
    let mut wait = first;
    loop {
        tokio::time::sleep(wait).await;
        let Some(s) = UpstreamSet::upgrade(&set) else {
            return;
        };
        let list = s.list.load_full();
        let mut shortest: Option<Duration> = None;
        let mut addresses = Vec::with_capacity(s.labels.len());
        for label in &s.labels {
            let current: Vec<SocketAddr> = list
                .targets
                .iter()
                .filter(|(t, _)| *t.label == *label.spec.url)
                .map(|(t, _)| t.address)
                .collect();
            let Some(host) = &label.hostname else {
                addresses.push(current);
                continue;
            };
            let port = label.spec.authority.port_u16().unwrap_or(
                if label.spec.scheme == http::uri::Scheme::HTTPS {
                    443
                } else {
                    80
                },
            );
            match resolver.resolve(host, port).await {
                Ok(found) => {
                    shortest = Some(shortest.map_or(found.valid_for, |s| s.min(found.valid_for)));
                    if found.addresses != current {
                        tracing::info!(upstream = %s.spec.name, target = %label.spec.url, addresses = ?found.addresses, "upstream target resolved to new addresses");
                    }
                    addresses.push(found.addresses);
                }
                Err(e) => {
                    tracing::warn!(upstream = %s.spec.name, target = %label.spec.url, error = %e, "cannot resolve an upstream target; keeping its last addresses");
                    addresses.push(current);
                }
            }
        }
        let unchanged = addresses
            .iter()
            .flatten()
            .copied()
            .eq(list.targets.iter().map(|(t, _)| t.address));
        if !unchanged && !s.retired.load(std::sync::atomic::Ordering::Relaxed) {
            s.list
                .store(Arc::new(s.build_list(&addresses, Some(&list))));
        }
        wait = next_round(shortest);
    }
}
