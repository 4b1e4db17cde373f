//! Header rules toward the upstream and back: credentials, hop-by-hop headers and headers that
//! would steer the upstream out, `X-Forwarded-*` and the caller's identity in.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub static X_SCOPEGATE_APP: HeaderName = HeaderName::from_static("x-scopegate-app");
pub static X_SCOPEGATE_KEY: HeaderName = HeaderName::from_static("x-scopegate-key");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// RFC 7540 §3.2.1: sent with `Upgrade: h2c`, connection-specific even when `Connection` omits it.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

static X_HTTP_METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-http-method-override");
static X_HTTP_METHOD: HeaderName = HeaderName::from_static("x-http-method");
static X_METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-method-override");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
static X_REWRITE_URL: HeaderName = HeaderName::from_static("x-rewrite-url");

/// Headers upstream frameworks read as the request's real method, client or URL (Rails and
/// Express method overrides, IIS/Symfony URL rewrites, proxy-set client and prefix headers).
/// From a client they would turn the request that was authorised into another one, so only a
/// trusted proxy may send them.
fn steering() -> [&'static HeaderName; 10] {
    [
        &X_HTTP_METHOD_OVERRIDE,
        &X_HTTP_METHOD,
        &X_METHOD_OVERRIDE,
        &header::FORWARDED,
        &X_REAL_IP,
        &TRUE_CLIENT_IP,
        &X_FORWARDED_PORT,
        &X_FORWARDED_PREFIX,
        &X_ORIGINAL_URL,
        &X_REWRITE_URL,
    ]
}

/// RFC 9110 §7.6.1 connection-specific headers, plus the legacy ones proxies still see.
fn hop_by_hop() -> [&'static HeaderName; 10] {
    [
        &header::CONNECTION,
        &HTTP2_SETTINGS,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
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

/// Removes `Connection`-named and hop-by-hop headers. Runs before anything is added, so a
/// client cannot use `Connection` to strip what the gateway sets.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
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
    remove_each(headers, &hop_by_hop());
}

/// Rewrites a request's headers for the upstream.
pub fn prepare_request(headers: &mut HeaderMap, strip_bearer: bool, fwd: &Forwarded<'_>) {
    strip_hop_by_hop(headers);
    // Read before the client's copy is removed below.
    let forwarded_for = forwarded_for(headers, fwd);
    // The upstream is addressed by its own authority; the client's goes in X-Forwarded-Host.
    let replaced = [
        &crate::auth::credential::X_API_KEY,
        &X_SCOPEGATE_APP,
        &X_SCOPEGATE_KEY,
        &header::HOST,
        &X_FORWARDED_HOST,
        &X_FORWARDED_FOR,
        &header::AUTHORIZATION,
    ];
    // Authorization is last: kept unless it carried the key.
    let count = replaced.len() - usize::from(!strip_bearer);
    remove_each(headers, &replaced[..count]);
    if !fwd.trusted_peer {
        remove_each(headers, &steering());
    }
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

/// Removes every header named in `names`.
fn remove_each(headers: &mut HeaderMap, names: &[&HeaderName]) {
    for name in names {
        headers.remove(*name);
    }
}

/// The `X-Forwarded-For` to send: the peer's address, after the client's own list when the
/// peer is trusted to speak for earlier hops.
fn forwarded_for(headers: &HeaderMap, fwd: &Forwarded<'_>) -> Option<HeaderValue> {
    // Owned text becomes the value without another copy.
    let ip = fwd.client_ip.to_string();
    if !fwd.trusted_peer {
        return HeaderValue::try_from(ip).ok();
    }
    let earlier: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if earlier.is_empty() {
        return HeaderValue::try_from(ip).ok();
    }
    HeaderValue::try_from(format!("{}, {ip}", earlier.join(", "))).ok()
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
            assert!(!h.contains_key(name), "{name} should be removed");
        }
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn steering_headers_from_trusted_proxies_are_kept() {
        let mut h = with_steering_headers();
        prepare_request(&mut h, true, &forwarded(true));
        for name in steering() {
            assert_eq!(h[name], "DELETE", "{name} should be kept");
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
