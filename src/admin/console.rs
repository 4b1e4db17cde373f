//! The console: a static page, script and stylesheet embedded in the binary and served at
//! `/console/` on the admin listener without a token (they hold no data). Every call the page
//! makes goes to `/v1` with the operator's bearer token, kept in the tab's `sessionStorage`.
//!
//! Never touches the store; answers only `GET`/`HEAD` of the files listed here.

use super::AdminBody;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{Either, Full};

/// Where the console lives on the admin listener.
pub(super) const PREFIX: &str = "/console";

/// The page may load only its own script and style, be framed by nobody and post nowhere else.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// (path under `/console`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("console/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/app.js"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("console/favicon.svg"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("console/style.css"),
    ),
];

/// Whether this request is for the console rather than the API (so it needs no token).
pub(super) fn is_console(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == PREFIX || path.starts_with("/console/"))
}

/// The asset at `path`, `/console` redirected to `/console/`, 404 for anything else.
pub(super) fn serve(method: &Method, path: &str) -> Response<AdminBody> {
    if path == PREFIX {
        let mut response = with_headers(StatusCode::MOVED_PERMANENTLY, Bytes::new());
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/console/"));
        return response;
    }
    let rest = path.strip_prefix(PREFIX).unwrap_or(path);
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(p, _, _)| *p == rest) else {
        let mut response = with_headers(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return response;
    };
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(bytes)
    };
    let mut response = with_headers(StatusCode::OK, body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn with_headers(status: StatusCode, body: Bytes) -> Response<AdminBody> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gets_under_the_prefix_are_console() {
        assert!(is_console(&Method::GET, "/console/"));
        assert!(is_console(&Method::GET, "/console/app.js"));
        assert!(is_console(&Method::HEAD, "/console"));
        assert!(!is_console(&Method::POST, "/console/"));
        assert!(!is_console(&Method::GET, "/consoles"));
        assert!(!is_console(&Method::GET, "/v1/apps"));
    }
}
