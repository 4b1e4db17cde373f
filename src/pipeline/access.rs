//! The access log (`log.access`) and the 5xx log: one line per proxied request, and one warning
//! per 5xx that says which route and upstream it was about and why.
//!
//! Lines are written from the pipeline's outer handler, after the response's headers are known.
//! Everything is borrowed from the request's own state: with the access log off, a request
//! pays one branch here and nothing else (no string is built, no allocation is made).
//! The key's secret never reaches this module: only the key id, which the pipeline learns
//! once the key checked out.
//!
//! Under `scopegate serve` an access line skips `tracing`'s field machinery (its formatting was
//! most of a proxied request's cost): the fields are written straight into the thread's reused
//! [`LineBuf`], in the same shape `tracing-subscriber` gives the other lines (text or JSON), and
//! the line is handed to the process's [`LogSink`], which orders it with every other line.
//! Without an installed sink (the library embedded elsewhere) lines go through `tracing`.

use crate::log::{LineBuf, LogSink};
use crate::routing::{Route, Upstream};
use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

/// The `target` of access lines, so they can be filtered (`RUST_LOG=scopegate::access=off`).
pub const TARGET: &str = "scopegate::access";

/// What one finished request leaves in the access log.
pub struct Entry<'a> {
    pub method: &'a http::Method,
    /// The matched route, `None` when no route matched.
    pub route: Option<&'a Route>,
    /// The request's path, without its query string (which may carry data the log must not).
    pub path: &'a str,
    pub status: u16,
    pub app: Option<&'a str>,
    pub key: Option<&'a str>,
    pub client: SocketAddr,
    /// The upstream's own status, when it answered.
    pub upstream_status: Option<u16>,
    pub elapsed: Duration,
    /// The response body's length when known at the headers (a streamed answer has none).
    pub bytes: Option<u64>,
}

opaque_debug!(Entry<'_>);

/// Where access lines go once [`install`]ed.
struct AccessSink {
    sink: LogSink,
    json: bool,
    /// `RUST_LOG` lets `scopegate::access` lines through (it cannot change while running).
    enabled: bool,
}

static SINK: OnceLock<AccessSink> = OnceLock::new();

thread_local! {
    static LINE: RefCell<LineBuf> = RefCell::new(LineBuf::default());
}

/// Sends access lines to `sink`, as JSON objects or text lines. Call after the `tracing`
/// subscriber is set, whose filter decides whether access lines are written at all.
pub fn install(sink: LogSink, json: bool) {
    let enabled = tracing::enabled!(target: TARGET, tracing::Level::INFO);
    let _ = SINK.set(AccessSink {
        sink,
        json,
        enabled,
    });
}

/// Writes the access line of one request.
pub fn write(entry: &Entry<'_>) {
    let Some(access) = SINK.get() else {
        return write_through_tracing(entry);
    };
    if !access.enabled {
        return;
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        access_line(line, entry, if access.json { &JSON } else { &TEXT });
        access.sink.append(line.as_bytes());
    });
}

fn route_and_upstream<'a>(entry: &Entry<'a>) -> (&'a str, Option<&'a str>) {
    let route = entry
        .route
        .map_or(crate::metrics::UNMATCHED, |r| &*r.pattern);
    (route, entry.route.map(|r| &*r.spec.upstream.name))
}

/// How one format writes an access line: the text before each field's value, and whether the
/// values `tracing` writes bare in text (the method, the client address) are JSON strings.
struct Shape {
    /// Before the timestamp, and from it to the method's value.
    open: &'static str,
    to_method: &'static str,
    quote_bare: bool,
    route: &'static str,
    path: &'static str,
    status: &'static str,
    app: &'static str,
    key: &'static str,
    client: &'static str,
    upstream: &'static str,
    upstream_status: &'static str,
    duration_ms: &'static str,
    bytes: &'static str,
    close: &'static str,
}

/// `2026-12-07T00:47:07.123456Z  INFO scopegate::access: access method=GET route="/x" ...`,
/// as `tracing-subscriber`'s text format writes the same event (strings quoted).
const TEXT: Shape = Shape {
    open: "",
    to_method: "  INFO scopegate::access: access method=",
    quote_bare: false,
    route: " route=",
    path: " path=",
    status: " status=",
    app: " app=",
    key: " key=",
    client: " client=",
    upstream: " upstream=",
    upstream_status: " upstream_status=",
    duration_ms: " duration_ms=",
    bytes: " bytes=",
    close: "\n",
};

/// One JSON object, fields at the top level, as `log.format: json` writes every line.
const JSON: Shape = Shape {
    open: "{\"timestamp\":\"",
    to_method: "\",\"level\":\"INFO\",\"message\":\"access\",\"method\":",
    quote_bare: true,
    route: ",\"route\":",
    path: ",\"path\":",
    status: ",\"status\":",
    app: ",\"app\":",
    key: ",\"key\":",
    client: ",\"client\":",
    upstream: ",\"upstream\":",
    upstream_status: ",\"upstream_status\":",
    duration_ms: ",\"duration_ms\":",
    bytes: ",\"bytes\":",
    close: ",\"target\":\"scopegate::access\"}\n",
};

fn access_line(line: &mut LineBuf, entry: &Entry<'_>, shape: &Shape) {
    let (route, upstream) = route_and_upstream(entry);
    line.push(shape.open);
    line.push_now();
    line.push(shape.to_method);
    // A method is a token: nothing in it to escape.
    push_bare(line, shape, entry.method.as_str());
    line.push(shape.route);
    line.push_quoted(route);
    line.push(shape.path);
    line.push_quoted(entry.path);
    line.push(shape.status);
    line.push_u64(entry.status.into());
    if let Some(app) = entry.app {
        line.push(shape.app);
        line.push_quoted(app);
    }
    if let Some(key) = entry.key {
        line.push(shape.key);
        line.push_quoted(key);
    }
    line.push(shape.client);
    if shape.quote_bare {
        line.push("\"");
        line.push_socket_addr(entry.client);
        line.push("\"");
    } else {
        line.push_socket_addr(entry.client);
    }
    if let Some(upstream) = upstream {
        line.push(shape.upstream);
        line.push_quoted(upstream);
    }
    if let Some(status) = entry.upstream_status {
        line.push(shape.upstream_status);
        line.push_u64(status.into());
    }
    line.push(shape.duration_ms);
    line.push_thousandths(micros(entry.elapsed));
    if let Some(bytes) = entry.bytes {
        line.push(shape.bytes);
        line.push_u64(bytes);
    }
    line.push(shape.close);
}

/// `text` as it is (text), or between quotes (JSON); for text that needs no escaping.
fn push_bare(line: &mut LineBuf, shape: &Shape, text: &str) {
    if shape.quote_bare {
        line.push("\"");
        line.push(text);
        line.push("\"");
    } else {
        line.push(text);
    }
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

fn write_through_tracing(entry: &Entry<'_>) {
    let (route, upstream) = route_and_upstream(entry);
    tracing::info!(
        target: TARGET,
        method = %entry.method,
        route,
        path = entry.path,
        status = entry.status,
        app = entry.app,
        key = entry.key,
        client = %entry.client,
        upstream,
        upstream_status = entry.upstream_status,
        duration_ms = entry.elapsed.as_secs_f64() * 1000.0,
        bytes = entry.bytes,
        "access"
    );
}

/// Says why a request ended in a 5xx: the route, the upstream's URL and the cause.
pub fn server_error(route: Option<&Route>, status: u16, cause: &dyn fmt::Display) {
    let pattern = route.map_or(crate::metrics::UNMATCHED, |r| &r.pattern);
    let upstream = route.map(|r| UpstreamUrl(&r.spec.upstream));
    tracing::warn!(
        route = pattern,
        upstream = upstream.as_ref().map(tracing::field::display),
        status,
        cause = %cause,
        "request failed with a server error"
    );
}

/// `scheme://authority/prefix` of an upstream, formatted only when a line is written.
struct UpstreamUrl<'a>(&'a Upstream);

impl fmt::Display for UpstreamUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.0;
        let mut targets = u.targets.iter();
        if let Some(first) = targets.next() {
            write!(f, "{}{}", first.url, u.path_prefix)?;
        }
        for t in targets {
            write!(f, ",{}{}", t.url, u.path_prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::SinkGuard;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry(app: Option<&'static str>, bytes: Option<u64>) -> Entry<'static> {
        Entry {
            method: &http::Method::POST,
            route: None,
            path: "/api/v1/odd \"path\"",
            status: 401,
            app,
            key: app.map(|_| "k9x8y7w6v5u4"),
            client: "10.0.0.9:52114".parse().expect("addr"),
            upstream_status: Some(503),
            elapsed: Duration::from_micros(1_423),
            bytes,
        }
    }

    /// What `tracing-subscriber` itself writes for the same entry, in `format`.
    fn through_tracing(entry: &Entry<'_>, json: bool) -> String {
        let output = Captured::default();
        let (sink, guard): (LogSink, SinkGuard) = LogSink::start(output.clone(), 1 << 16);
        let builder = tracing_subscriber::fmt().with_writer(sink).with_ansi(false);
        if json {
            let subscriber = builder.json().flatten_event(true).finish();
            tracing::subscriber::with_default(subscriber, || write_through_tracing(entry));
        } else {
            tracing::subscriber::with_default(builder.finish(), || write_through_tracing(entry));
        }
        drop(guard);
        let text = String::from_utf8(output.0.lock().expect("lock").clone()).expect("utf-8");
        text
    }

    fn ours(entry: &Entry<'_>, json: bool) -> String {
        let mut line = LineBuf::default();
        access_line(&mut line, entry, if json { &JSON } else { &TEXT });
        String::from_utf8(line.as_bytes().to_vec()).expect("utf-8")
    }

    /// The part after the timestamp, which differs by when each was written.
    fn after_timestamp(line: &str) -> &str {
        let end = line.find('Z').expect("a timestamp");
        &line[end + 1..]
    }

    #[test]
    fn text_lines_are_what_tracing_would_write() {
        for e in [entry(Some("a1b2c3"), Some(57)), entry(None, None)] {
            let (mine, theirs) = (ours(&e, false), through_tracing(&e, false));
            assert_eq!(after_timestamp(&mine), after_timestamp(&theirs));
            assert!(mine.ends_with('\n') && mine.matches('\n').count() == 1);
        }
    }

    #[test]
    fn json_lines_are_what_tracing_would_write() {
        for e in [entry(Some("a1b2c3"), Some(57)), entry(None, None)] {
            let parse = |line: &str| -> serde_json::Value {
                let mut value: serde_json::Value = serde_json::from_str(line).expect(line);
                let timestamp = value["timestamp"].take();
                assert!(timestamp.as_str().is_some_and(|t| t.len() == 27), "{line}");
                value
            };
            let (mine, theirs) = (ours(&e, true), through_tracing(&e, true));
            assert_eq!(parse(&mine), parse(&theirs), "{mine}{theirs}");
            // The same keys in the same order, too.
            let keys = |line: &str| -> Vec<String> {
                line.split("\":")
                    .map(|k| k.rsplit('"').next().unwrap_or("").to_owned())
                    .collect()
            };
            assert_eq!(keys(&mine), keys(&theirs));
        }
    }

    #[test]
    fn upstream_url_keeps_the_path_prefix() {
        let upstream = Upstream::single(
            "tools",
            "http://10.0.0.5:7001/internal",
            crate::routing::Timeouts::whole(Duration::from_secs(1)),
        );
        assert_eq!(
            UpstreamUrl(&upstream).to_string(),
            "http://10.0.0.5:7001/internal"
        );
    }
}
