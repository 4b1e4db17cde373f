//! An upstream's live targets: which addresses it has, which are in rotation, which one a
//! request goes to, and the retry budget they share. Owns the background work that keeps that
//! true: active health checks ([`health`]), the end of passive ejections, and DNS
//! re-resolution ([`dns`]).
//!
//! One [`UpstreamSet`] per configured upstream and config; a reload builds new sets that take
//! over the [`Target`]s (state and idle connections) of targets that stay, while requests in
//! flight finish on the set they started with.

pub(crate) mod dns;
mod health;
pub(crate) mod pick;
pub(crate) mod state;
mod status;
mod target;

pub(crate) use self::status::UpstreamStatus;
pub(crate) use self::target::{Endpoint, Target};

use self::dns::Resolver;
use self::state::{Change, Ejection};
use crate::metrics::{Metrics, TargetMetrics};
use crate::routing::{TargetSpec, Upstream};
use arc_swap::ArcSwap;
use metrics::Counter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tower::retry::budget::{Budget, TpsBudget};

/// The window the retry budget counts requests over (the contract's 10 s).
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

pub struct UpstreamSet {
    pub(crate) spec: Arc<Upstream>,
    labels: Vec<Label>,
    list: ArcSwap<TargetList>,
    /// `None` when retries are off.
    budget: Option<TpsBudget>,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// Set when a reload replaced this set: its background tasks end.
    retired: AtomicBool,
    retries: Counter,
}

opaque_debug!(UpstreamSet);

/// One configured target (`url`), standing for one address or every address of a hostname.
struct Label {
    spec: TargetSpec,
    endpoint: Arc<Endpoint>,
    metrics: TargetMetrics,
    /// Needs resolving (not an IP literal).
    hostname: Option<String>,
}

/// The addresses in use, each with its label's weight.
pub(crate) struct TargetList {
    targets: Vec<(Arc<Target>, u32)>,
    /// Round robin: target indices, each as often as its weight, interleaved.
    schedule: Vec<u32>,
}

impl UpstreamSet {
    /// The set for `spec`, taking over targets of `previous` (the same upstream in the config
    /// being replaced) that stay; `resolved` gives each hostname label's addresses.
    pub(crate) fn new(
        spec: Arc<Upstream>,
        endpoints: Vec<Arc<Endpoint>>,
        previous: Option<&UpstreamSet>,
        resolved: &dyn Fn(&TargetSpec) -> Vec<SocketAddr>,
        metrics: &Metrics,
    ) -> UpstreamSet {
        let labels: Vec<Label> = spec
            .targets
            .iter()
            .zip(endpoints)
            .map(|(t, endpoint)| {
                let host = t
                    .authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let kept = previous.and_then(|p| p.labels.iter().find(|l| l.spec.url == t.url));
                Label {
                    spec: t.clone(),
                    endpoint,
                    metrics: kept.map_or_else(
                        || metrics.upstream_target(&spec.name, &t.url),
                        |l| l.metrics.clone(),
                    ),
                    hostname: host
                        .parse::<std::net::IpAddr>()
                        .is_err()
                        .then(|| host.to_owned()),
                }
            })
            .collect();
        if let Some(previous) = previous {
            for gone in previous
                .labels
                .iter()
                .filter(|l| !spec.targets.iter().any(|t| t.url == l.spec.url))
            {
                gone.metrics.retire();
            }
        }
        let budget = (spec.retry.attempts > 0).then(|| {
            // tower prices a retry at `(1.0 / ratio) as isize` deposits; 0.2f32 is a hair
            // above 0.2, so 20 % would cost 4 deposits (25 %). One step down keeps 5.
            TpsBudget::new(
                BUDGET_WINDOW,
                spec.retry.min_per_second,
                just_below(spec.retry.budget_ratio),
            )
        });
        let set = UpstreamSet {
            retries: metrics.upstream_retries(&spec.name),
            spec,
            labels,
            list: ArcSwap::from_pointee(TargetList::empty()),
            budget,
            next: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
        };
        let old = previous.map(|p| p.list.load_full());
        let addresses: Vec<Vec<SocketAddr>> =
            set.labels.iter().map(|l| resolved(&l.spec)).collect();
        set.list
            .store(Arc::new(set.build_list(&addresses, old.as_deref())));
        if set.spec.health.is_none() {
            for (target, _) in &set.list.load().targets {
                if target.state.failing_check() {
                    target.state.clear_check();
                    target.metrics.rotation(false);
                }
            }
        }
        set
    }

    /// Starts the set's background work (health checks, DNS); each ends when the set is
    /// dropped or retired.
    pub(crate) fn spawn_upkeep(
        self: &Arc<Self>,
        resolver: &Arc<Resolver>,
        first_dns_round: Duration,
    ) {
        if self.spec.health.is_some() {
            tokio::spawn(health::run(Arc::downgrade(self)));
        }
        if self.labels.iter().any(|l| l.hostname.is_some()) {
            tokio::spawn(dns::run(
                Arc::downgrade(self),
                resolver.clone(),
                first_dns_round,
            ));
        }
    }

    /// A reload replaced it: background work stops (requests in flight finish).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Relaxed);
    }

    fn upgrade(weak: &Weak<UpstreamSet>) -> Option<Arc<UpstreamSet>> {
        weak.upgrade().filter(|s| !s.retired.load(Relaxed))
    }

    /// The list for `addresses` (per label), reusing `old`'s targets where they match.
    fn build_list(&self, addresses: &[Vec<SocketAddr>], old: Option<&TargetList>) -> TargetList {
        let mut targets = Vec::new();
        for (label, addresses) in self.labels.iter().zip(addresses) {
            for &address in addresses {
                let kept = old.and_then(|o| {
                    o.targets.iter().map(|(t, _)| t).find(|t| {
                        t.reusable(
                            &label.spec.url,
                            address,
                            label.endpoint.trust.as_ref(),
                            self.spec.max_connections,
                        )
                    })
                });
                let target = kept.cloned().unwrap_or_else(|| {
                    Arc::new(Target::new(
                        label.spec.url.clone(),
                        address,
                        label.endpoint.clone(),
                        self.spec.max_connections,
                        label.metrics.clone(),
                    ))
                });
                targets.push((target, label.spec.weight));
            }
        }
        TargetList::new(targets)
    }

    pub(crate) fn list(&self) -> arc_swap::Guard<Arc<TargetList>> {
        self.list.load()
    }

    /// Counts a request toward the retry budget (only where a retry is possible).
    pub(crate) fn count_request(&self, list: &TargetList) {
        if list.targets.len() > 1 {
            if let Some(budget) = &self.budget {
                budget.deposit();
            }
        }
    }

    /// Whether one more retry fits the budget (taking it if so).
    pub(crate) fn take_retry(&self) -> bool {
        let granted = self.budget.as_ref().is_some_and(|b| b.withdraw());
        if granted {
            self.retries.increment(1);
        }
        granted
    }

    /// A request to `target` succeeded (a response that is not 502/503/504).
    pub(crate) fn success(&self, target: &Target) {
        target.state.success();
    }

    /// A request to `target` failed: passive ejection may take it out.
    pub(crate) fn failure(&self, target: &Arc<Target>) {
        let Some(Ejection {
            length,
            until,
            left_rotation,
        }) = target.state.failure(self.spec.passive.as_ref())
        else {
            return;
        };
        target.metrics.ejections.increment(1);
        if left_rotation {
            target.metrics.rotation(true);
        }
        tracing::warn!(
            upstream = %self.spec.name,
            target = %target.label,
            address = %target.address,
            seconds = length.as_secs(),
            "upstream target ejected after consecutive failures"
        );
        let target = target.clone();
        let upstream = self.spec.name.clone();
        tokio::spawn(async move {
            tokio::time::sleep(length).await;
            if target.state.end_ejection(until) == Change::In {
                target.metrics.rotation(false);
                tracing::info!(%upstream, target = %target.label, address = %target.address, "upstream target back from ejection");
            }
        });
    }

    /// Seconds until a target may be back in rotation (for `Retry-After`), at least 1.
    pub(crate) fn retry_after(&self, list: &TargetList) -> u64 {
        let now = state::unix_millis();
        let check = self
            .spec
            .health
            .as_ref()
            .map(|h| h.interval.as_millis() as u64);
        list.targets
            .iter()
            .filter_map(|(t, _)| match t.state.ejected_until() {
                Some(until) if !t.state.failing_check() => Some(until.saturating_sub(now)),
                _ => check,
            })
            .min()
            .map_or(1, |ms| ms.div_ceil(1000).max(1))
    }
}

impl Drop for UpstreamSet {
    fn drop(&mut self) {
        self.retired.store(true, Relaxed);
    }
}

impl TargetList {
    fn empty() -> TargetList {
        TargetList::new(Vec::new())
    }

    fn new(targets: Vec<(Arc<Target>, u32)>) -> TargetList {
        let schedule = pick::schedule(&targets.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        TargetList { targets, schedule }
    }

    pub(crate) fn get(&self, index: usize) -> &Arc<Target> {
        &self.targets[index].0
    }

    pub(crate) fn len(&self) -> usize {
        self.targets.len()
    }

    pub(crate) fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.iter().map(|(t, _)| t)
    }
}

/// The `f32` just below a positive `ratio` (0 stays 0): a whole `1 / ratio` stays whole when
/// tower truncates it.
fn just_below(ratio: f32) -> f32 {
    if ratio > 0.0 {
        f32::from_bits(ratio.to_bits() - 1)
    } else {
        ratio
    }
}
