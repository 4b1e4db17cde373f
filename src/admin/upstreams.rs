//! `GET /v1/upstreams`: each upstream of the config in force with the live state of its
//! targets, as the admin API, the CLI (`scopegate upstreams list`) and the console show it.
//!
//! The proxy's upstream sets report their own state ([`UpstreamStatus`], the contract's JSON
//! shape, pinned by `tests/upstreams_view.rs`); this takes it per call rather than per config,
//! unlike `GET /v1/routes`: health, ejections and counts move between reloads.

use crate::live::LiveConfig;
use crate::proxy::UpstreamStatus;

/// Every upstream, in config order.
pub(super) fn statuses(live: &LiveConfig) -> Vec<UpstreamStatus> {
    live.upstreams.iter().map(|set| set.status()).collect()
}
