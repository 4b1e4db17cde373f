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
    /// A request body that fails once more than `remaining` bytes have passed.
    pub struct LimitedBody {
        #[pin]
        inner: Incoming,
        remaining: u64,
    }
}

impl LimitedBody {
    pub(crate) fn new(inner: Incoming, limit: u64) -> LimitedBody {
        LimitedBody {
            inner,
            remaining: limit,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Request trailers are not forwarded: the upstream never sees them.
                let Ok(data) = frame.into_data() else {
                    return Poll::Ready(None);
                };
                let len = data.len() as u64;
                if len > *this.remaining {
                    return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded))));
                }
                *this.remaining -= len;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
