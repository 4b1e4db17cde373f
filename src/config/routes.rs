//! Checks for `upstreams.*.url` and each entry of `routes:`: methods, path patterns, references, sizes.

use super::file::RawRoute;
use super::position::{at, YamlPath};
use super::validate::Check;
use super::values;
use crate::meter::Provider;
use crate::routing::{Access, MethodSet, RouteSpec, Upstream};
use http::uri::{Authority, Scheme};
use http::{Method, Uri};
use serde_yaml::Value;
use std::sync::Arc;

/// The specs of the valid routes, and for each spec the index of its route in the file.
pub(super) fn routes(
    c: &mut Check<'_>,
    raw: Vec<RawRoute>,
    scopes: &[(String, String)],
    upstreams: &[Arc<Upstream>],
    declared_upstreams: &[String],
) -> (Vec<RouteSpec>, Vec<usize>) {
    if raw.is_empty() {
        c.at(&at(&["routes"]), "at least one route is needed");
    }
    let mut specs = Vec::with_capacity(raw.len());
    let mut origin = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let path = at(&["routes"]).index(i);
        let methods = methods(c, &path.key("method"), &r.method);
        let allow_semicolons = r.allow_semicolons.unwrap_or(false);
        let pattern = c.ok(&path.key("path"), route_path(&r.path));
        if pattern.is_some() && r.path.contains(';') && !allow_semicolons {
            c.at(
                &path.key("path"),
                format!(
                    "{:?} contains `;`, which requests are refused for unless the route sets `allow_semicolons: true`",
                    r.path
                ),
            );
        }
        let access = if r.scope == "public" {
            Some(Access::Public)
        } else if scopes.iter().any(|(name, _)| *name == r.scope) {
            Some(Access::Scope(Arc::from(r.scope.as_str())))
        } else {
            c.at(
                &path.key("scope"),
                format!(
                    "scope {:?} is not defined (define it under `scopes:`, or use `public`)",
                    r.scope
                ),
            );
            None
        };
        let upstream = upstreams.iter().find(|u| *u.name == *r.upstream);
        if upstream.is_none() && !declared_upstreams.contains(&r.upstream) {
            c.at(
                &path.key("upstream"),
                format!(
                    "upstream {:?} is not defined under `upstreams:`",
                    r.upstream
                ),
            );
        }
        let max_body = match &r.max_body {
            Some(v) => c.ok(&path.key("max_body"), size_value(v)).map(Some),
            None => Some(None),
        };
        let meter = match r.meter.as_deref() {
            None => Some(None),
            Some("openai") => Some(Some(Provider::OpenAi)),
            Some("anthropic") => Some(Some(Provider::Anthropic)),
            Some(other) => {
                c.at(
                    &path.key("meter"),
                    format!(
                        "{other:?} is not a provider the gateway meters: use openai or anthropic"
                    ),
                );
                None
            }
        };
        if let (
            Some(methods),
            Some(()),
            Some(access),
            Some(upstream),
            Some(max_body),
            Some(meter),
        ) = (methods, pattern, access, upstream, max_body, meter)
        {
            specs.push(RouteSpec {
                methods,
                path: r.path,
                access,
                upstream: Arc::clone(upstream),
                max_body,
                allow_semicolons,
                meter,
            });
            origin.push(i);
        }
    }
    (specs, origin)
}

/// `method:` is one method, a list of methods, or `*`.
fn methods(c: &mut Check<'_>, path: &YamlPath, value: &Value) -> Option<MethodSet> {
    match value {
        Value::String(s) if s == "*" => Some(MethodSet::Any),
        Value::String(s) => c.ok(path, method(s)).map(|m| MethodSet::Only(vec![m])),
        Value::Sequence(items) if items.is_empty() => {
            c.at(path, "the list of methods is empty");
            None
        }
        Value::Sequence(items) => {
            let mut out: Vec<Method> = Vec::new();
            let mut ok = true;
            for (j, item) in items.iter().enumerate() {
                let item_path = path.index(j);
                let parsed = match item {
                    Value::String(s) if s == "*" => Err("`*` stands alone, not in a list".into()),
                    Value::String(s) => method(s),
                    _ => Err("must be a method name such as GET".into()),
                };
                match c.ok(&item_path, parsed) {
                    Some(m) if out.contains(&m) => {
                        c.at(&item_path, format!("{m} is listed twice"));
                        ok = false;
                    }
                    Some(m) => out.push(m),
                    None => ok = false,
                }
            }
            ok.then_some(MethodSet::Only(out))
        }
        _ => {
            c.at(
                path,
                "must be a method (GET), a list of methods ([GET, HEAD]) or `*`",
            );
            None
        }
    }
}

/// One method name: an upper-case HTTP token, not CONNECT or TRACE.
fn method(name: &str) -> Result<Method, String> {
    const TCHAR: &str = "!#$%&'*+-.^_`|~";
    let token = !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || TCHAR.contains(ch));
    if !token {
        return Err(format!("{name:?} is not a method name"));
    }
    if name.chars().any(|ch| ch.is_ascii_lowercase()) {
        let upper = name.to_ascii_uppercase();
        return Err(format!("method {name:?} must be upper-case ({upper})"));
    }
    if name == "CONNECT" || name == "TRACE" {
        return Err(format!("{name} is never forwarded, so it cannot be routed"));
    }
    Method::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a method name"))
}

/// A path pattern: starts with `/`; no `?`, `#`, `%`; `{name}` parameters are whole segments with
/// identifier names, each used once; no segment a normalised request path can never have.
pub(super) fn route_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with `/`"));
    }
    if let Some(ch) = p.chars().find(|ch| matches!(ch, '?' | '#' | '%')) {
        return Err(format!(
            "{p:?} must not contain `{ch}` (patterns match the decoded path, without query)"
        ));
    }
    if let Some(ch) = p.chars().find(|ch| !ch.is_ascii_graphic()) {
        return Err(format!("{p:?} must not contain {ch:?}"));
    }
    let segments: Vec<&str> = p[1..].split('/').collect();
    let mut params: Vec<&str> = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if seg.is_empty() && !last {
            return Err(format!("{p:?} has an empty segment (`//`)"));
        }
        if *seg == "." || *seg == ".." {
            return Err(format!(
                "{p:?} has a `{seg}` segment, which no normalised path has"
            ));
        }
        let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            if seg.contains(['{', '}']) {
                return Err(format!(
                    "{p:?}: segment {seg:?} mixes text and a parameter; `{{name}}` must be a whole segment"
                ));
            }
            continue;
        };
        let mut chars = name.chars();
        let ident = chars
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
            && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !ident {
            return Err(format!(
                "{p:?}: parameter {seg:?} needs an identifier name such as {{tool_id}}"
            ));
        }
        if params.contains(&name) {
            return Err(format!("{p:?}: parameter {{{name}}} appears twice"));
        }
        params.push(name);
    }
    Ok(())
}

/// A `max_body` value: a number of bytes or a size string.
pub(super) fn size_value(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a size (a whole number of bytes, or e.g. 10MiB)")),
        Value::String(s) => values::size(s),
        _ => Err("must be a size such as 1000, 512KiB or 10MiB".to_owned()),
    }
}

/// An upstream URL: absolute `http://` or `https://` with a host, an optional path prefix, no query.
pub(super) fn upstream_url(text: &str) -> Result<(Scheme, Authority, String), String> {
    let bad = |why: &str| format!("{text:?} {why}");
    if text.contains('#') {
        return Err(bad("must not have a fragment (`#`)"));
    }
    let uri: Uri = text
        .parse()
        .map_err(|_| bad("is not a URL (e.g. http://127.0.0.1:7001)"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = uri.authority().cloned().ok_or_else(|| bad("has no host"))?;
    if authority.host().is_empty() {
        return Err(bad("has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials (`user@`)"));
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query (`?`)"));
    }
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok((scheme, authority, prefix))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns() {
        for good in [
            "/",
            "/api/v1/tools/{tool_id}/deploy",
            "/a/{x}/b/{y}",
            "/files/",
        ] {
            assert_eq!(route_path(good), Ok(()), "{good}");
        }
        for bad in [
            "api",
            "/a?b",
            "/a#b",
            "/a%2Fb",
            "/a b",
            "/a//b",
            "/a/../b",
            "/a/{x}y",
            "/a/{1x}",
            "/a/{}",
            "/a/{x}/{x}",
            "/a/{x",
        ] {
            assert!(route_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn method_names() {
        assert_eq!(method("GET"), Ok(Method::GET));
        assert_eq!(
            method("M-SEARCH").map(|m| m.to_string()),
            Ok("M-SEARCH".into())
        );
        assert!(method("get").unwrap_err().contains("upper-case (GET)"));
        assert!(method("CONNECT").is_err());
        assert!(method("TRACE").is_err());
        assert!(method("GE T").is_err());
        assert!(method("").is_err());
    }

    #[test]
    fn upstream_urls() {
        let (s, a, p) = upstream_url("http://127.0.0.1:7001").unwrap();
        assert_eq!(
            (s, a.as_str(), p.as_str()),
            (Scheme::HTTP, "127.0.0.1:7001", "")
        );
        let (s, a, p) = upstream_url("https://models.internal/base/").unwrap();
        assert_eq!(
            (s, a.as_str(), p.as_str()),
            (Scheme::HTTPS, "models.internal", "/base")
        );
        for bad in [
            "127.0.0.1:7001",
            "ftp://x",
            "/only/path",
            "http://",
            "http://h/?q=1",
            "http://h/#f",
            "http://u:p@h/",
            "not a url",
        ] {
            assert!(upstream_url(bad).is_err(), "{bad}");
        }
    }
}
