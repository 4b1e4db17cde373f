//! `GET /v1/upstreams`: each upstream of the config in force with the live state of its
//! targets, as the admin API, the CLI (`scopegate upstreams list`) and the console show it.
//!
//! These two structs are the contract's JSON shape and nothing else: the proxy's upstream sets
//! fill them in (`UpstreamSet::status()`), so the field names here are the wire names. Unlike
//! `GET /v1/routes`, the view is taken per call: health, ejections and counts move between
//! reloads.

use serde::Serialize;

/// One upstream, in config order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct UpstreamStatus {
    pub name: String,
    /// `least_requests` or `round_robin`, as the config writes it.
    pub balance: &'static str,
    /// In config order; a hostname target shows one entry per address it resolves to.
    pub targets: Vec<TargetStatus>,
}

/// One target (one address of a configured target URL) and what it is doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TargetStatus {
    /// The target's `url` as configured: the label its metrics carry.
    pub url: String,
    /// The socket address connected to (`127.0.0.1:7001`, `[::1]:7001`).
    pub address: String,
    pub weight: u32,
    /// The active health check's verdict; `true` when the upstream has no `health:`.
    pub healthy: bool,
    /// RFC 3339 UTC; `None` (JSON null) unless the target is passively ejected.
    pub ejected_until: Option<String>,
    /// Requests sent to it and not yet answered in full.
    pub in_flight: u64,
    pub open_connections: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The wire names and types are the contract's, null included.
    #[test]
    fn serializes_as_the_contract_says() {
        let status = UpstreamStatus {
            name: "models".into(),
            balance: "round_robin",
            targets: vec![
                TargetStatus {
                    url: "http://127.0.0.1:7002".into(),
                    address: "127.0.0.1:7002".into(),
                    weight: 2,
                    healthy: true,
                    ejected_until: None,
                    in_flight: 3,
                    open_connections: 4,
                },
                TargetStatus {
                    url: "http://models-b.internal:7002".into(),
                    address: "10.0.0.7:7002".into(),
                    weight: 1,
                    healthy: false,
                    ejected_until: Some("2026-01-31T12:00:10Z".into()),
                    in_flight: 0,
                    open_connections: 0,
                },
            ],
        };
        assert_eq!(
            serde_json::to_value(&status).expect("JSON"),
            json!({"name": "models", "balance": "round_robin", "targets": [
                {"url": "http://127.0.0.1:7002", "address": "127.0.0.1:7002", "weight": 2,
                 "healthy": true, "ejected_until": null, "in_flight": 3, "open_connections": 4},
                {"url": "http://models-b.internal:7002", "address": "10.0.0.7:7002", "weight": 1,
                 "healthy": false, "ejected_until": "2026-01-31T12:00:10Z", "in_flight": 0,
                 "open_connections": 0},
            ]})
        );
    }
}
