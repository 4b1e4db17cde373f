//! What a refused request leaves unread on its HTTP/1 connection, and how the connection stays
//! honest about it.
//!
//! hyper's HTTP/1 server starts the next request on a connection only once the current
//! request's body has been read. When a handler answers without reading it, hyper reads what
//! has already arrived and otherwise closes the connection after the answer, without saying so
//! in it: the client's next request on that connection then fails. So a refusal first reads and
//! discards a bounded remainder ([`DRAIN_LIMIT`], within [`DRAIN_TIMEOUT`]) and keeps the
//! connection; past either bound it answers with `Connection: close`, and the listener's
//! lingering close (`server::socket`) lets the answer reach a client that is still sending.
//! HTTP/2 needs none of this: a refused stream is reset on its own, the connection unaffected.

use super::declared_length;
use http::{header, Request, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Duration;

/// At most this much of a refused request's body is read and discarded to keep its
/// connection: reading 1 MiB costs less than the new connection (TCP and TLS handshakes) the
/// client would otherwise open; past it, closing is cheaper than reading on.
pub(super) const DRAIN_LIMIT: u64 = 1024 * 1024;
/// ... and only for this long: [`DRAIN_LIMIT`] at about 4 Mbit/s. A slower body is not waited
/// for: the answer goes out with `Connection: close`.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The part of a refused request's body the gateway has not read.
#[derive(Debug)]
pub(super) enum Unread {
    /// Nothing that concerns the connection: no body, or HTTP/2.
    Nothing,
    /// A body still the gateway's to read.
    Body(Incoming),
    /// A body not worth reading (too large, or awaiting `100 Continue`), or one handed to the
    /// upstream and maybe left half-read: the connection closes after the answer.
    Abandoned,
}

impl Unread {
    /// What `request`, refused before its body was touched, leaves on the connection.
    pub(super) fn of(request: Request<Incoming>) -> Unread {
        if !has_http1_body(&request) {
            Unread::Nothing
        } else if worth_draining(&request) {
            Unread::Body(request.into_body())
        } else {
            Unread::Abandoned
        }
    }

    /// What `request` will leave on the connection if it fails after its body was handed to
    /// the upstream (which may have read some of it, or none). Decided before forwarding.
    pub(super) fn after_forwarding<B: Body>(request: &Request<B>) -> Unread {
        if has_http1_body(request) {
            Unread::Abandoned
        } else {
            Unread::Nothing
        }
    }

    /// Reads and discards what is left, within the bounds; returns whether the connection can
    /// carry another request after the answer (if not, the answer says `Connection: close`).
    pub(super) async fn settle(self) -> bool {
        match self {
            Unread::Nothing => true,
            Unread::Abandoned => false,
            Unread::Body(body) => tokio::time::timeout(DRAIN_TIMEOUT, discard(body, DRAIN_LIMIT))
                .await
                .unwrap_or(false),
        }
    }
}

/// Whether `request` has a body on an HTTP/1 connection (where it shares the byte stream with
/// the requests after it).
fn has_http1_body<B: Body>(request: &Request<B>) -> bool {
    matches!(request.version(), Version::HTTP_10 | Version::HTTP_11)
        && !request.body().is_end_stream()
}

/// Whether the body may be read at all: not when the client waits for `100 Continue` (reading
/// would send it, inviting a body the gateway has already refused), nor when it declares more
/// than [`DRAIN_LIMIT`].
fn worth_draining<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    !expects_continue && declared_length(headers).is_none_or(|len| len <= DRAIN_LIMIT)
}

/// Reads `body` to its end, unless it holds more than `limit` bytes or fails; returns whether
/// it ended.
async fn discard(mut body: Incoming, limit: u64) -> bool {
    let mut left = limit;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return false;
        };
        if let Some(data) = frame.data_ref() {
            let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
            let Some(rest) = left.checked_sub(len) else {
                return false;
            };
            left = rest;
        }
    }
    true
}
