//! `upstreams:` as written to what the proxy uses: targets, balance, timeouts, the connection
//! bound, health checks, passive ejection and retries, each checked with its own message.

use super::file::{RawCredentialUse, RawHealth, RawPassive, RawRetry, RawTarget, RawUpstream};
use super::position::{at, YamlPath};
use super::routes::upstream_url;
use super::validate::Check;
use super::{values, DEFAULT_HEADER_TIMEOUT, DEFAULT_UPSTREAM_TIMEOUT};
use crate::routing::{
    Balance, CredentialFormat, CredentialUse, HealthCheck, Passive, Retry, TargetSpec, Timeouts,
    Upstream, DEFAULT_MAX_CONNECTIONS,
};
use crate::tls::TrustedCa;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A weight past this is surely a typo, and keeps the round-robin schedule small.
const MAX_WEIGHT: u64 = 1000;
/// Health-check defaults (`health:` names at least `path`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
const HEALTH_THRESHOLD: u32 = 2;

pub(super) fn upstreams(
    c: &mut Check<'_>,
    dir: &Path,
    raw: Vec<(String, RawUpstream)>,
) -> Vec<Arc<Upstream>> {
    if raw.is_empty() {
        c.at(&at(&["upstreams"]), "at least one upstream is needed");
    }
    let mut out = Vec::with_capacity(raw.len());
    for (name, up) in raw {
        let path = at(&["upstreams"]).key(&name);
        if let Err(msg) = values::plain_name("upstream", &name) {
            c.at_key(&path, msg);
        }
        let index = out.len();
        if let Some(upstream) = upstream(c, dir, &path, name, index, up) {
            out.push(Arc::new(upstream));
        }
    }
    out
}

/// One upstream, or `None` with every problem reported.
fn upstream(
    c: &mut Check<'_>,
    dir: &Path,
    path: &YamlPath,
    name: String,
    index: usize,
    up: RawUpstream,
) -> Option<Upstream> {
    let targets = targets(c, path, &up);
    let timeouts = timeouts(c, path, &up);
    let ca = ca(c, dir, path, up.ca.as_deref());
    let balance = match up.balance.as_deref().map(str::trim) {
        None | Some("least_requests") => Some(Balance::LeastRequests),
        Some("round_robin") => Some(Balance::RoundRobin),
        Some(other) => {
            c.at(
                &path.key("balance"),
                format!("{other:?} is not a balance; use least_requests or round_robin"),
            );
            None
        }
    };
    let max_connections = match up.max_connections {
        None => Some(DEFAULT_MAX_CONNECTIONS),
        Some(n) if n >= 1 => usize::try_from(n).ok(),
        Some(_) => {
            c.at(&path.key("max_connections"), "must be at least 1");
            None
        }
    };
    let health = match up.health {
        None => Some(None),
        Some(raw) => health(c, &path.key("health"), raw).map(Some),
    };
    let passive = passive(c, &path.key("passive"), up.passive);
    let retry = retry(c, &path.key("retry"), up.retry);
    let credential = match up.credential {
        None => Some(None),
        Some(raw) => credential(c, &path.key("credential"), raw).map(Some),
    };
    let (targets, path_prefix) = targets?;
    let plain_http = targets.iter().all(|t| t.scheme == http::uri::Scheme::HTTP);
    if plain_http && matches!(ca, Some(Some(_))) {
        c.at(&path.key("ca"), "applies only to an https:// upstream");
    }
    Some(Upstream {
        name: Arc::from(name.as_str()),
        index,
        targets,
        path_prefix,
        balance: balance?,
        timeouts: timeouts?,
        max_connections: max_connections?,
        health: health?,
        passive: passive?,
        retry: retry?,
        ca: ca?,
        credential: credential?,
    })
}

/// `credential:`: a name per the credential name rule, a header the gateway may set, and a
/// format holding `{value}` once whose text fits a header value.
fn credential(c: &mut Check<'_>, path: &YamlPath, raw: RawCredentialUse) -> Option<CredentialUse> {
    let name_path = if raw.mapping {
        path.key("name")
    } else {
        path.clone()
    };
    let name = c
        .ok(
            &name_path,
            crate::credentials::valid_name(&raw.name).map_err(|m| format!("a credential name {m}")),
        )
        .map(|()| Arc::<str>::from(raw.name.as_str()));
    let header = match raw.header.as_deref().map(str::trim) {
        None => Some(http::header::AUTHORIZATION),
        Some(text) => c.ok(&path.key("header"), credential_header(text)),
    };
    let format = match raw.format.as_deref() {
        None => Some(CredentialFormat::bearer()),
        Some(text) => c.ok(
            &path.key("format"),
            CredentialFormat::parse(text).and_then(|f| {
                let sample = format!("{}x{}", f.prefix, f.suffix);
                match http::HeaderValue::from_str(&sample) {
                    Ok(_) => Ok(f),
                    Err(_) => Err("may hold only visible characters and spaces".to_owned()),
                }
            }),
        ),
    };
    Some(CredentialUse {
        name: name?,
        header: header?,
        format: Arc::new(format?),
    })
}

/// A header name the gateway may set toward the upstream: not one of the headers that frame
/// the request, route it or carry the caller's identity.
fn credential_header(text: &str) -> Result<http::HeaderName, String> {
    let name = http::HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("{text:?} is not a header name"))?;
    let reserved = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "x-scopegate-app",
        "x-scopegate-key",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    ];
    if reserved.contains(&name.as_str()) {
        return Err(format!(
            "{name} is set by the gateway itself; pick another header"
        ));
    }
    Ok(name)
}

/// `url:` or `targets:` (exactly one), and the path prefix they share.
fn targets(
    c: &mut Check<'_>,
    path: &YamlPath,
    up: &RawUpstream,
) -> Option<(Vec<TargetSpec>, String)> {
    let listed: Vec<(YamlPath, &str, Option<u64>)> = match (&up.url, &up.targets) {
        (Some(_), Some(_)) => {
            c.at(&path.key("targets"), "give `url` or `targets`, not both");
            return None;
        }
        (None, None) => {
            // A misspelt `url` was reported already; "missing" would only repeat it.
            if !c.reported_under(path) {
                c.at_key(path, "needs `url` (one target) or `targets` (a list)");
            }
            return None;
        }
        (Some(url), None) => vec![(path.key("url"), url.as_str(), None)],
        (None, Some(list)) if list.is_empty() => {
            c.at(&path.key("targets"), "needs at least one target");
            return None;
        }
        (None, Some(list)) => list
            .iter()
            .enumerate()
            .map(|(i, RawTarget { url, weight })| {
                (path.key("targets").index(i), url.as_str(), *weight)
            })
            .collect(),
    };
    let mut out = Vec::with_capacity(listed.len());
    let mut prefix: Option<String> = None;
    let mut ok = true;
    for (at_target, url, weight) in listed {
        let at_url = if up.url.is_some() {
            at_target.clone()
        } else {
            at_target.key("url")
        };
        let weight = match weight {
            None => Some(1),
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => u32::try_from(w).ok(),
            Some(_) => {
                c.at(
                    &at_target.key("weight"),
                    format!("must be 1 to {MAX_WEIGHT}"),
                );
                None
            }
        };
        let Some((scheme, authority, target_prefix)) = c.ok(&at_url, upstream_url(url)) else {
            ok = false;
            continue;
        };
        match &prefix {
            Some(p) if *p != target_prefix => {
                c.at(&at_url, format!("every target needs the same path ({p:?})"));
                ok = false;
            }
            _ => prefix = Some(target_prefix),
        }
        let label = format!("{scheme}://{authority}");
        if out.iter().any(|t: &TargetSpec| *t.url == *label) {
            c.at(
                &at_url,
                format!("{label} is listed twice; give it a weight instead"),
            );
            ok = false;
        }
        let Some(weight) = weight else {
            ok = false;
            continue;
        };
        out.push(TargetSpec {
            url: Arc::from(label),
            scheme,
            authority,
            weight,
        });
    }
    ok.then(|| (out, prefix.unwrap_or_default()))
}

/// An upstream's timeouts (`timeout` may be `none`); `None` if any is wrong (each reported).
fn timeouts(c: &mut Check<'_>, path: &YamlPath, up: &RawUpstream) -> Option<Timeouts> {
    let mut ok = true;
    let mut get = |key: &str, text: &Option<String>| -> Option<Duration> {
        let text = text.as_deref()?;
        let parsed = c.ok(&path.key(key), values::duration(text, false));
        ok &= parsed.is_some();
        parsed
    };
    let whole = match up.timeout.as_deref().map(str::trim) {
        Some("none") => None,
        None => Some(DEFAULT_UPSTREAM_TIMEOUT),
        Some(_) => get("timeout", &up.timeout),
    };
    let connect = get("connect_timeout", &up.connect_timeout).unwrap_or(Timeouts::DEFAULT_CONNECT);
    // The head comes within the whole deadline at the latest.
    let header = get("header_timeout", &up.header_timeout)
        .or(whole)
        .unwrap_or(DEFAULT_HEADER_TIMEOUT);
    let header = whole.map_or(header, |w| header.min(w));
    let read = get("read_timeout", &up.read_timeout);
    ok.then_some(Timeouts {
        connect,
        header,
        read,
        whole,
    })
}

/// `ca:`, read now so a missing or certificate-less file is a `check` problem.
fn ca(
    c: &mut Check<'_>,
    dir: &Path,
    path: &YamlPath,
    file: Option<&str>,
) -> Option<Option<Arc<TrustedCa>>> {
    match file {
        None => Some(None),
        Some(file) if file.trim().is_empty() => {
            c.at(&path.key("ca"), "must name a PEM file of CA certificates");
            None
        }
        Some(file) => c
            .ok(
                &path.key("ca"),
                TrustedCa::load(&dir.join(file)).map_err(|e| e.to_string()),
            )
            .map(|ca| Some(Arc::new(ca))),
    }
}

fn health(c: &mut Check<'_>, path: &YamlPath, raw: RawHealth) -> Option<HealthCheck> {
    let mut ok = true;
    if !raw.path.starts_with('/') || raw.path.parse::<http::uri::PathAndQuery>().is_err() {
        c.at(
            &path.key("path"),
            format!("{:?} is not a path such as /healthz", raw.path),
        );
        ok = false;
    }
    let mut duration = |key: &str, text: Option<&str>, default: Duration| match text {
        None => default,
        Some(text) => c
            .ok(&path.key(key), values::duration(text, false))
            .unwrap_or_else(|| {
                ok = false;
                default
            }),
    };
    let interval = duration("interval", raw.interval.as_deref(), HEALTH_INTERVAL);
    let timeout = duration("timeout", raw.timeout.as_deref(), HEALTH_TIMEOUT);
    let unhealthy_after = count(
        c,
        &path.key("unhealthy_after"),
        raw.unhealthy_after,
        HEALTH_THRESHOLD,
    );
    let healthy_after = count(
        c,
        &path.key("healthy_after"),
        raw.healthy_after,
        HEALTH_THRESHOLD,
    );
    if timeout > interval {
        c.at(&path.key("timeout"), "must not be longer than `interval`");
        ok = false;
    }
    Some(HealthCheck {
        path: raw.path,
        interval,
        timeout,
        unhealthy_after: unhealthy_after?,
        healthy_after: healthy_after?,
    })
    .filter(|_| ok)
}

/// A count of at least 1 (`default` when absent); `None` (reported) when 0 or huge.
fn count(c: &mut Check<'_>, path: &YamlPath, value: Option<u64>, default: u32) -> Option<u32> {
    match value {
        None => Some(default),
        Some(n) if (1..=1000).contains(&n) => u32::try_from(n).ok(),
        Some(_) => {
            c.at(path, "must be 1 to 1000");
            None
        }
    }
}

/// `passive:` (on by default; `failures: 0` turns it off).
fn passive(c: &mut Check<'_>, path: &YamlPath, raw: Option<RawPassive>) -> Option<Option<Passive>> {
    let defaults = Passive::default();
    let Some(raw) = raw else {
        return Some(Some(defaults));
    };
    if raw.failures == Some(0) {
        return Some(None);
    }
    let failures = count(c, &path.key("failures"), raw.failures, defaults.failures);
    let eject_for = match raw.eject_for.as_deref() {
        None => Some(defaults.eject_for),
        Some(text) => c.ok(&path.key("eject_for"), values::duration(text, false)),
    };
    let eject_for = eject_for.map(|d| d.min(Passive::MAX_EJECTION));
    Some(Some(Passive {
        failures: failures?,
        eject_for: eject_for?,
    }))
}

fn retry(c: &mut Check<'_>, path: &YamlPath, raw: Option<RawRetry>) -> Option<Retry> {
    let defaults = Retry::default();
    let Some(raw) = raw else {
        return Some(defaults);
    };
    let attempts = match raw.attempts {
        None => Some(defaults.attempts),
        Some(n) if n <= 10 => u32::try_from(n).ok(),
        Some(_) => {
            c.at(&path.key("attempts"), "must be 0 to 10");
            None
        }
    };
    let budget_ratio = match raw.budget.as_deref() {
        None => Some(defaults.budget_ratio),
        Some(text) => c.ok(&path.key("budget"), percentage(text)),
    };
    Some(Retry {
        attempts: attempts?,
        budget_ratio: budget_ratio?,
        ..defaults
    })
}

/// `20%` as 0.2; 0 to 100 %.
fn percentage(text: &str) -> Result<f32, String> {
    let bad = || format!("{text:?} is not a percentage; write e.g. 20%");
    let number = text.trim().strip_suffix('%').ok_or_else(bad)?;
    let value: f32 = number.trim().parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&value) {
        return Err("must be 0% to 100%".to_owned());
    }
    Ok(value / 100.0)
}

/// `resolver:`: the DNS servers for hostname targets (empty: the system's).
pub(super) fn resolver(c: &mut Check<'_>, raw: Option<Vec<String>>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (i, text) in raw.unwrap_or_default().iter().enumerate() {
        let parsed = text
            .trim()
            .parse::<SocketAddr>()
            .or_else(|_| text.trim().parse().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| {
                format!("{text:?} is not a DNS server address (e.g. 10.0.0.2 or 10.0.0.2:53)")
            });
        out.extend(c.ok(&at(&["resolver"]).index(i), parsed));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percentage;

    #[test]
    fn percentages() {
        assert_eq!(percentage("20%"), Ok(0.2));
        assert_eq!(percentage(" 0 %"), Ok(0.0));
        assert!(percentage("20").is_err());
        assert!(percentage("120%").is_err());
        assert!(percentage("x%").is_err());
    }
}
