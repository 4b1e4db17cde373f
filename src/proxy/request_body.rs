//! The request body toward the upstream: counted against the route's `max_body` as it flows,
//! never buffered whole; request trailers are not forwarded.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the route's `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit")]
pub(crate) struct BodyLimitExceeded;

pin_project! {
    /// A request body that fails once more than `remaining` bytes have passed, or one the
    /// gateway holds whole (small, for a request that may be sent twice; or empty).
    #[project = LimitedBodyProj]
    pub enum LimitedBody {
        Streaming {
            #[pin]
            inner: Incoming,
            remaining: u64,
        },
        Held { data: Option<Bytes> },
    }
}

impl LimitedBody {
    pub(crate) fn new(inner: Incoming, limit: u64) -> LimitedBody {
        LimitedBody::Streaming {
            inner,
            remaining: limit,
        }
    }

    /// `data`, already read (and within the limit).
    pub(crate) fn held(data: Bytes) -> LimitedBody {
        LimitedBody::Held {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub(crate) fn empty() -> LimitedBody {
        LimitedBody::Held { data: None }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (inner, remaining) = match self.project() {
            LimitedBodyProj::Held { data } => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            LimitedBodyProj::Streaming { inner, remaining } => (inner, remaining),
        };
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Request trailers are not forwarded: the upstream never sees them.
                let Ok(data) = frame.into_data() else {
                    return Poll::Ready(None);
                };
                let len = data.len() as u64;
                if len > *remaining {
                    return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded))));
                }
                *remaining -= len;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LimitedBody::Streaming { inner, .. } => inner.is_end_stream(),
            LimitedBody::Held { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LimitedBody::Streaming { inner, .. } => inner.size_hint(),
            LimitedBody::Held { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// Whether an error (or anything in its source chain) is a [`BodyLimitExceeded`].
pub(crate) fn is_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyLimitExceeded>() {
            return true;
        }
        current = e.source();
    }
    false
}
