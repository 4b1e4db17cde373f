//! A metered route's response, watched as it streams to the client: its token counts read as
//! they pass ([`crate::meter`]) and, once the response is over — whole, cut or abandoned by a
//! client that hung up — counted exactly once: the key's usage, the route's token metrics, the
//! key's token quota, and the missing-usage counter when the response ended without usage.

use crate::budgets::tokens::{KeyTokens, TokenQuotas};
use crate::live::LiveConfig;
use crate::meter::{Provider, ResponseMeter};
use crate::metrics::Metrics;
use crate::proxy::body::BodyTap;
use crate::usage::{UsageRecorder, UseCell};
use http::{header, HeaderMap};
use std::sync::Arc;

/// Where a metered response's tokens go when it is over.
pub(crate) struct TokenReport {
    meter: ResponseMeter,
    /// The body reached its end.
    ended: bool,
    live: Arc<LiveConfig>,
    route: usize,
    app: Option<Arc<str>>,
    /// The key's usage cell, when the route needs a key.
    uses: Option<Arc<UseCell>>,
    usage: UsageRecorder,
    /// The key's token-quota state, when it has a token quota.
    quota: Option<(Arc<TokenQuotas>, Arc<KeyTokens>)>,
    metrics: Arc<Metrics>,
}

opaque_debug!(TokenReport);

/// What a metered response's report needs besides the response itself.
pub(crate) struct ReportTo {
    pub live: Arc<LiveConfig>,
    pub route: usize,
    pub app: Option<Arc<str>>,
    pub uses: Option<Arc<UseCell>>,
    pub usage: UsageRecorder,
    pub quota: Option<(Arc<TokenQuotas>, Arc<KeyTokens>)>,
    pub metrics: Arc<Metrics>,
}

impl TokenReport {
    pub(crate) fn new(provider: Provider, headers: &HeaderMap, to: ReportTo) -> TokenReport {
        TokenReport {
            meter: ResponseMeter::new(
                provider,
                headers.get(header::CONTENT_TYPE),
                headers.get(header::CONTENT_ENCODING),
            ),
            ended: false,
            live: to.live,
            route: to.route,
            app: to.app,
            uses: to.uses,
            usage: to.usage,
            quota: to.quota,
            metrics: to.metrics,
        }
    }
}

impl BodyTap for TokenReport {
    fn data(&mut self, data: &[u8]) {
        self.meter.observe(data);
    }

    fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for TokenReport {
    /// The response is over, however it ended: what was seen is counted now, once.
    fn drop(&mut self) {
        self.meter.finish();
        let route = self.live.route_metrics.get(self.route);
        let seen = self.meter.tokens();
        if let Some(t) = seen {
            if let Some(uses) = &self.uses {
                self.usage.record_tokens(uses, t.input, t.output);
            }
            if let Some((quotas, key)) = &self.quota {
                quotas.spend(key, t.input + t.output);
            }
            if let Some(route) = route {
                self.metrics
                    .record_tokens(route, self.app.as_ref(), t.input, t.output);
            }
        }
        if !(self.ended && self.meter.complete()) {
            if let Some(route) = route {
                self.metrics.token_usage_missing(route);
            }
        }
    }
}
