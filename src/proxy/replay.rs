//! When a request may be sent a second time, and the copy that makes it possible.
//!
//! Safe by construction: a request that never reached an upstream is handed back by the pool
//! untouched ([`super::pool::Failed::NotSent`]) and may go to another target whatever its
//! method. One that may have reached an upstream is sent again only if its method is
//! idempotent and its body was held whole before the first attempt (at most
//! [`MAX_REPLAY_BODY`]); a POST or PATCH never gets a copy, so it can never be sent twice.

use super::request_body::LimitedBody;
use crate::error::ProxyError;
use bytes::Bytes;
use http::request::Parts;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

/// Bodies up to this size are held so an idempotent request can be sent again.
pub(crate) const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// What a second attempt sends.
#[derive(Debug)]
pub(crate) struct Replay {
    parts: Parts,
    body: Bytes,
}

impl Replay {
    pub(crate) fn request(&self) -> Request<LimitedBody> {
        Request::from_parts(self.parts.clone(), LimitedBody::held(self.body.clone()))
    }
}

/// Methods a client may expect to be applied more than once without harm (RFC 9110 9.2.2;
/// TRACE is never forwarded).
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// An upstream answer that says it could not serve the request (another target may).
pub(crate) fn gateway_failure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The first attempt's request and, when it may be sent again after reaching an upstream, its
/// copy. Holding the body reads it first (before `deadline`, the head's).
pub(crate) async fn prepare(
    parts: Parts,
    body: Incoming,
    max_body: u64,
    deadline: Instant,
) -> Result<(Request<LimitedBody>, Option<Replay>), ProxyError> {
    if !idempotent(&parts.method) {
        return Ok((
            Request::from_parts(parts, LimitedBody::new(body, max_body)),
            None,
        ));
    }
    let body = if http_body::Body::is_end_stream(&body) {
        Bytes::new()
    } else {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_none_or(|n| n > MAX_REPLAY_BODY.min(max_body)) {
            return Ok((
                Request::from_parts(parts, LimitedBody::new(body, max_body)),
                None,
            ));
        }
        let read = tokio::time::timeout_at(deadline, LimitedBody::new(body, max_body).collect());
        match read.await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(_)) => return Err(ProxyError::BadRequest("the request body could not be read")),
            Err(_) => return Err(ProxyError::UpstreamTimeout),
        }
    };
    let replay = Replay { parts, body };
    Ok((replay.request(), Some(replay)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_are_replayable() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!idempotent(&m), "{m}");
        }
    }

    #[test]
    fn gateway_failures_are_502_503_504() {
        let failures: Vec<u16> = (100..600)
            .filter(|&s| gateway_failure(StatusCode::from_u16(s).unwrap_or(StatusCode::OK)))
            .collect();
        assert_eq!(failures, [502, 503, 504]);
    }
}
