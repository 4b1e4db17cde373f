//! Active health checks: every `interval`, a `GET path` on a connection of its own to each
//! target address; `unhealthy_after` failures in a row (no 2xx within `timeout`) take it out,
//! `healthy_after` passes bring it back.

use super::state::Change;
use super::{Target, UpstreamSet};
use crate::proxy::pool;
use crate::routing::HealthCheck;
use http::{header, HeaderValue, Request};
use std::sync::{Arc, Weak};

pub(super) async fn run(set: Weak<UpstreamSet>) {
    loop {
        let Some(s) = UpstreamSet::upgrade(&set) else {
            return;
        };
        let Some(health) = s.spec.health.clone() else {
            return;
        };
        let list = s.list.load_full();
        let connect = s.spec.timeouts.connect.min(health.timeout);
        let name = s.spec.name.clone();
        // Not held while waiting: a retired set is dropped as soon as its requests finish.
        drop(s);
        let checks = list
            .targets
            .iter()
            .map(|(target, _)| check(target, &health, connect));
        let results = futures_util::future::join_all(checks).await;
        for ((target, _), passed) in list.targets.iter().zip(results) {
            match target
                .state
                .check(passed, health.unhealthy_after, health.healthy_after)
            {
                Change::Out => {
                    target.metrics.rotation(true);
                    tracing::warn!(upstream = %name, target = %target.label, address = %target.address, path = %health.path, "upstream target failed its health check; out of rotation");
                }
                Change::In => {
                    target.metrics.rotation(false);
                    tracing::info!(upstream = %name, target = %target.label, address = %target.address, "upstream target passed its health check; back in rotation");
                }
                Change::None => {}
            }
        }
        drop(list);
        tokio::time::sleep(health.interval).await;
    }
}

/// Whether `target` answers `GET path` with a 2xx within the check's timeout.
async fn check(target: &Arc<Target>, health: &HealthCheck, connect: std::time::Duration) -> bool {
    let attempt = async {
        let mut sender = pool::dial(target, connect).await.ok()?;
        let request = Request::get(health.path.as_str())
            .header(header::HOST, target.endpoint.host_header.clone())
            .header(header::CONNECTION, HeaderValue::from_static("close"))
            .header(
                header::USER_AGENT,
                HeaderValue::from_static("scopegate-health-check"),
            )
            .body(crate::proxy::request_body::LimitedBody::empty())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status().is_success())
    };
    tokio::time::timeout(health.timeout, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
