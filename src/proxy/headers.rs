//! Header rules toward the upstream and back: credentials, hop-by-hop headers and headers that
//! would steer the upstream out, `X-Forwarded-*` and the caller's identity in.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write;
use std::net::IpAddr;

pub(crate) static X_SCOPEGATE_APP: HeaderName = HeaderName::from_static("x-scopegate-app");
pub(crate) static X_SCOPEGATE_KEY: HeaderName = HeaderName::from_static("x-scopegate-key");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers upstream frameworks read as the request's real method, client or URL (Rails and
/// Express method overrides, IIS/Symfony URL rewrites, proxy-set client and prefix headers).
/// From a client they would turn the request that was authorised into another one, so only a
/// trusted proxy may send them. (The request path matches them by name: [`is_steering`].)
#[cfg(test)]
fn steering() -> [HeaderName; 10] {
    [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-original-url",
        "x-rewrite-url",
    ]
    .map(HeaderName::from_static)
}

/// RFC 9110 §7.6.1 connection-specific headers, plus the legacy ones proxies still see
/// (`http2-settings`: RFC 7540 §3.2.1, sent with `Upgrade: h2c`). (The request path matches
/// them by name: [`is_hop_by_hop`].)
#[cfg(test)]
fn hop_by_hop() -> [HeaderName; 10] {
    [
        "connection",
        "http2-settings",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]
    .map(HeaderName::from_static)
}

/// What the gateway tells the upstream about the caller.
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// Whether the peer may speak for earlier hops (its `X-Forwarded-For` and the
    /// [`steering`] headers are kept).
    pub trusted_peer: bool,
    pub proto: &'static str,
    pub host: Option<HeaderValue>,
    pub app_id: Option<&'a HeaderValue>,
    pub key_id: Option<&'a HeaderValue>,
}

opaque_debug!(Forwarded<'_>);

/// Removes `Connection`-named and hop-by-hop headers. Runs before anything is added, so a
/// client cannot use `Connection` to strip what the gateway sets.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_nominated(headers);
    remove_where(headers, |name| is_hop_by_hop(name.as_str()));
}

/// Removes the headers a `Connection` header names (rare: HTTP/1.1 keep-alive needs none).
fn strip_nominated(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
}

/// Rewrites a request's headers for the upstream: one pass over the client's headers decides
/// which go, then the gateway's own are set.
pub(crate) fn prepare_request(headers: &mut HeaderMap, strip_bearer: bool, fwd: &Forwarded<'_>) {
    strip_nominated(headers);
    // Read before the client's copy is removed below.
    let forwarded_for = forwarded_for(headers, fwd);
    remove_where(headers, |name| {
        let name = name.as_str();
        is_hop_by_hop(name)
            || is_replaced(name)
            || (strip_bearer && name == "authorization")
            || (!fwd.trusted_peer && is_steering(name))
    });
    if let Some(host) = &fwd.host {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
    if let Some(v) = forwarded_for {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    if let Some(v) = fwd.app_id {
        headers.insert(&X_SCOPEGATE_APP, v.clone());
    }
    if let Some(v) = fwd.key_id {
        headers.insert(&X_SCOPEGATE_KEY, v.clone());
    }
}

/// Removes every header whose name `doomed` picks; looks each name up once, and allocates
/// only when there is something to remove.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// [`hop_by_hop`], by name.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "http2-settings"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// [`steering`], by name.
fn is_steering(name: &str) -> bool {
    matches!(
        name,
        "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "forwarded"
            | "x-real-ip"
            | "true-client-ip"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-original-url"
            | "x-rewrite-url"
    )
}

/// Headers the gateway sets itself (or drops: the key): the client's copies never pass. The
/// upstream is addressed by its own authority; the client's goes in X-Forwarded-Host.
fn is_replaced(name: &str) -> bool {
    matches!(
        name,
        "x-api-key"
            | "x-scopegate-app"
            | "x-scopegate-key"
            | "host"
            | "x-forwarded-host"
            | "x-forwarded-for"
    )
}

/// The `X-Forwarded-For` to send: the peer's address, after the client's own list when the
/// peer is trusted to speak for earlier hops. An earlier entry that is not a plain address
/// (`ip:port`, `[v6]`, garbage) goes on as `unknown` (RFC 7239's word for it) in its place: the
/// upstream learns the client is unknown, and is never handed garbage as if it were an address.
fn forwarded_for(headers: &HeaderMap, fwd: &Forwarded<'_>) -> Option<HeaderValue> {
    if !fwd.trusted_peer {
        return Some(ip_value(fwd.client_ip));
    }
    let mut list = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        for entry in value.to_str().unwrap_or("-").split(',') {
            let entry = entry.trim();
            list.push_str(if entry.parse::<IpAddr>().is_ok() {
                entry
            } else {
                "unknown"
            });
            list.push_str(", ");
        }
    }
    if list.is_empty() {
        return Some(ip_value(fwd.client_ip));
    }
    let _ = write!(list, "{}", fwd.client_ip);
    HeaderValue::try_from(list).ok()
}

/// An address as header text; IPv4 without the formatting machinery (it runs per request).
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string()).unwrap_or(HeaderValue::from_static(""));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = if octet >= 100 {
            0
        } else if octet >= 10 {
            1
        } else {
            2
        };
        for d in &digits[skip..] {
            text[len] = b'0' + d;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    static APP: HeaderValue = HeaderValue::from_static("app1");
    static KEY: HeaderValue = HeaderValue::from_static("key1");

    fn forwarded(trusted: bool) -> Forwarded<'static> {
        Forwarded {
            client_ip: "10.1.2.3".parse().expect("ip"),
            trusted_peer: trusted,
            proto: "http",
            host: Some(HeaderValue::from_static("api.example.com")),
            app_id: Some(&APP),
            key_id: Some(&KEY),
        }
    }

    fn request_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("sg_a_b"));
        h.insert("authorization", HeaderValue::from_static("Bearer sg_a_b"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Scopegate-App, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("x-scopegate-app", HeaderValue::from_static("forged"));
        h.append("x-scopegate-key", HeaderValue::from_static("forged"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA"),
        );
        h.insert("host", HeaderValue::from_static("api.example.com"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        h
    }

    #[test]
    fn the_name_matchers_cover_exactly_the_lists() {
        for name in hop_by_hop() {
            assert!(is_hop_by_hop(name.as_str()), "{name}");
            assert!(!is_steering(name.as_str()), "{name}");
        }
        for name in steering() {
            assert!(is_steering(name.as_str()), "{name}");
            assert!(!is_hop_by_hop(name.as_str()), "{name}");
        }
        for other in ["accept", "content-type", "x-api-keys", "authorization"] {
            assert!(!is_hop_by_hop(other) && !is_steering(other) && !is_replaced(other));
        }
    }

    #[test]
    fn addresses_become_header_text() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "192.168.100.255",
            "1.22.0.9",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_value(parsed).to_str().expect("text"), ip);
        }
    }

    #[test]
    fn strips_credentials_and_hop_by_hop_and_sets_identity() {
        let mut h = request_headers();
        prepare_request(&mut h, true, &forwarded(false));
        for gone in [
            "x-api-key",
            "authorization",
            "connection",
            "x-custom",
            "te",
            "upgrade",
            "http2-settings",
            "host",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["x-scopegate-app"], "app1");
        assert_eq!(h.get_all("x-scopegate-key").iter().count(), 1);
        assert_eq!(h["x-scopegate-key"], "key1");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn every_hop_by_hop_header_goes_even_when_all_are_present() {
        let mut h = HeaderMap::new();
        for name in hop_by_hop() {
            h.insert(name.clone(), HeaderValue::from_static("x"));
        }
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn trusted_peers_extend_forwarded_for() {
        let mut h = request_headers();
        prepare_request(&mut h, true, &forwarded(true));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
    }

    #[test]
    fn entries_that_are_not_addresses_go_on_as_unknown() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.1:80, [2001:db8::9], 2001:db8::1"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("garbage,"));
        prepare_request(&mut h, true, &forwarded(true));
        assert_eq!(
            h["x-forwarded-for"],
            "unknown, unknown, 2001:db8::1, unknown, unknown, 10.1.2.3"
        );
    }

    fn with_steering_headers() -> HeaderMap {
        let mut h = request_headers();
        for name in steering() {
            h.insert(name.clone(), HeaderValue::from_static("DELETE"));
        }
        h
    }

    #[test]
    fn steering_headers_from_clients_are_dropped() {
        let mut h = with_steering_headers();
        prepare_request(&mut h, true, &forwarded(false));
        for name in steering() {
            assert!(!h.contains_key(&name), "{name} should be removed");
        }
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn steering_headers_from_trusted_proxies_are_kept() {
        let mut h = with_steering_headers();
        prepare_request(&mut h, true, &forwarded(true));
        for name in steering() {
            assert_eq!(h[&name], "DELETE", "{name} should be kept");
        }
    }

    #[test]
    fn non_bearer_authorization_is_left_for_the_upstream() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic dXNlcg=="));
        prepare_request(&mut h, false, &forwarded(false));
        assert_eq!(h["authorization"], "Basic dXNlcg==");
    }
}
