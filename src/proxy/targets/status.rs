//! What `GET /v1/upstreams` shows of an upstream's targets right now.

use super::UpstreamSet;
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub balance: &'static str,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// As configured; addresses of one hostname share it.
    pub url: String,
    pub address: String,
    pub weight: u32,
    /// The active check's verdict (true without a check).
    pub healthy: bool,
    /// RFC 3339 UTC, while passively ejected.
    pub ejected_until: Option<String>,
    pub in_flight: u64,
    pub open_connections: u64,
}

impl UpstreamSet {
    pub fn status(&self) -> UpstreamStatus {
        let list = self.list.load();
        UpstreamStatus {
            name: self.spec.name.to_string(),
            balance: self.spec.balance.as_str(),
            targets: list
                .targets
                .iter()
                .map(|(t, weight)| TargetStatus {
                    url: t.label.to_string(),
                    address: t.address.to_string(),
                    weight: *weight,
                    healthy: !t.state.failing_check(),
                    ejected_until: t.state.ejected_until().map(|ms| {
                        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms))
                            .to_string()
                    }),
                    in_flight: t.in_flight(),
                    open_connections: t.connections.open() as u64,
                })
                .collect(),
        }
    }
}
