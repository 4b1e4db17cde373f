//! A metered OpenAI request on its way out: a streaming request that does not ask for usage
//! gets `stream_options.include_usage` added, so its streamed answer carries its token counts.
//! The body is read whole for that (it is already bounded by the route's `max_body`) and sent
//! with its new length; a request that needs no change goes out as read.

use super::replay::Replay;
use super::request_body::{BodyLimitExceeded, LimitedBody};
use crate::error::ProxyError;
use crate::meter::include_usage;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

/// Whether the request's body is JSON (the only kind an OpenAI request can carry).
pub(super) fn asks_for_json(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || mime.to_ascii_lowercase().ends_with("+json")
        })
}

/// The request with its body read (before `deadline`) and edited to ask for usage when it
/// streams without asking. Never sent twice (an OpenAI completion is a POST), so no copy.
pub(super) async fn with_usage_requested(
    mut parts: Parts,
    body: Incoming,
    max_body: u64,
    deadline: Instant,
) -> Result<(Request<LimitedBody>, Option<Replay>), ProxyError> {
    let read = tokio::time::timeout_at(deadline, LimitedBody::new(body, max_body).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<BodyLimitExceeded>() => {
            return Err(ProxyError::BodyTooLarge { limit: max_body })
        }
        Ok(Err(_)) => return Err(ProxyError::BadRequest("the request body could not be read")),
        Err(_) => return Err(ProxyError::UpstreamTimeout),
    };
    let bytes = match include_usage(&bytes) {
        Some(edited) => Bytes::from(edited),
        None => bytes,
    };
    // Sent whole now: its length is known, whatever framing the client used.
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Ok((Request::from_parts(parts, LimitedBody::held(bytes)), None))
}
