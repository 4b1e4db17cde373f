//! Bodies that stream through the gateway: requests counted against `max_body` as they flow,
//! responses cut off at the upstream's deadline. Neither is ever buffered whole.

use super::pool::Lease;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the route's `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit")]
pub(crate) struct BodyLimitExceeded;

/// The upstream's whole-response deadline passed while the body was still streaming.
#[derive(Debug, thiserror::Error)]
#[error("upstream response exceeded its deadline")]
pub(crate) struct DeadlineExceeded;

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

pin_project! {
    /// A response body from the gateway itself or streamed from an upstream.
    #[project = GatewayBodyProj]
    pub enum GatewayBody {
        Local { #[pin] body: Full<Bytes> },
        Upstream {
            #[pin] body: Incoming,
            #[pin] deadline: Sleep,
            // The connection, given back to its pool when the body is complete.
            lease: Option<Lease>,
        },
    }
}

impl GatewayBody {
    pub fn upstream(body: Incoming, deadline: Instant, lease: Lease) -> GatewayBody {
        // An empty body may never be polled: its connection is free now.
        let lease = if body.is_end_stream() {
            lease.release();
            None
        } else {
            Some(lease)
        };
        GatewayBody::Upstream {
            body,
            deadline: tokio::time::sleep_until(deadline),
            lease,
        }
    }
}

impl From<Full<Bytes>> for GatewayBody {
    fn from(body: Full<Bytes>) -> GatewayBody {
        GatewayBody::Local { body }
    }
}

impl From<Bytes> for GatewayBody {
    fn from(bytes: Bytes) -> GatewayBody {
        GatewayBody::Local {
            body: Full::new(bytes),
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            GatewayBodyProj::Local { body } => body.poll_frame(cx).map_err(|e| match e {}),
            GatewayBodyProj::Upstream {
                mut body,
                deadline,
                lease,
            } => {
                // The body first: a frame already here needs no timer (most answers are whole
                // in the first read), and the deadline only matters while we wait.
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(frame) => {
                        // Complete (the last frame, or the end): the connection is free. After
                        // an error it is dropped instead, which closes it.
                        let complete = match &frame {
                            Some(Ok(_)) => body.is_end_stream(),
                            Some(Err(_)) => false,
                            None => true,
                        };
                        if complete {
                            if let Some(lease) = lease.take() {
                                lease.release();
                            }
                        } else if matches!(frame, Some(Err(_))) {
                            lease.take();
                        }
                        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                    }
                    Poll::Pending if deadline.poll(cx).is_ready() => {
                        Poll::Ready(Some(Err(Box::new(DeadlineExceeded))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Local { body } => body.is_end_stream(),
            GatewayBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Local { body } => body.size_hint(),
            GatewayBody::Upstream { body, .. } => body.size_hint(),
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
