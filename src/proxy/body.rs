//! Response bodies that stream through the gateway: the upstream's, cut off at its deadline and
//! returning its connection to the pool when done, or the gateway's own. Never buffered whole.
//! (Request bodies toward the upstream are in [`super::request_body`].)

use super::pool::Lease;
use super::request_body::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The upstream's whole-response deadline passed while the body was still streaming, or the
/// body was silent for longer than its `read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream response exceeded its deadline or went silent")]
pub(crate) struct DeadlineExceeded;

/// Stands for "never" where a timer is needed all the same (`timeout: none`, no
/// `read_timeout`): far enough that no response lives to see it.
const NEVER: Duration = Duration::from_secs(30 * 365 * 86_400);

/// When the body's timer fires: the whole deadline, or the end of the allowed silence from now,
/// whichever is first. The clock is read only for a silence bound (or neither): the common
/// case, a deadline alone, costs nothing.
fn next_deadline(ends: Option<Instant>, read_timeout: Option<Duration>) -> Instant {
    match (ends, read_timeout) {
        (Some(ends), None) => ends,
        (ends, quiet) => {
            let quiet = Instant::now() + quiet.unwrap_or(NEVER);
            ends.map_or(quiet, |ends| ends.min(quiet))
        }
    }
}

/// Sees each data frame of a response as it passes, in order, and when it ended whole. What it
/// does with them is its own (token metering reports on drop); it never holds a frame back.
pub trait BodyTap: Send + Sync {
    fn data(&mut self, data: &[u8]);
    /// The body reached its end (no error, nothing cut).
    fn ended(&mut self);
}

pin_project! {
    /// A response body from the gateway itself or streamed from an upstream, or such a body
    /// with a [`BodyTap`] watching it.
    #[project = GatewayBodyProj]
    pub enum GatewayBody {
        Local { #[pin] body: Full<Bytes> },
        Upstream {
            #[pin] body: Incoming,
            // Fires at `next_deadline`: the whole deadline or the end of the allowed silence.
            #[pin] deadline: Sleep,
            ends: Option<Instant>,
            read_timeout: Option<Duration>,
            // The connection, given back to its pool when the body is complete.
            lease: Option<Lease>,
        },
        Tapped {
            body: Pin<Box<GatewayBody>>,
            tap: Box<dyn BodyTap>,
        },
    }
}

impl GatewayBody {
    /// `ends`: the whole-response deadline (`None`: `timeout: none`); `read_timeout`: the
    /// longest silence between frames (`None`: unbounded).
    pub(crate) fn upstream(
        body: Incoming,
        ends: Option<Instant>,
        read_timeout: Option<Duration>,
        lease: Lease,
    ) -> GatewayBody {
        // An empty body may never be polled: its connection is free now.
        let lease = if body.is_end_stream() {
            lease.release();
            None
        } else {
            Some(lease)
        };
        GatewayBody::Upstream {
            body,
            deadline: tokio::time::sleep_until(next_deadline(ends, read_timeout)),
            ends,
            read_timeout,
            lease,
        }
    }
}

impl GatewayBody {
    /// This body, with `tap` watching every frame that passes.
    pub(crate) fn tapped(self, tap: Box<dyn BodyTap>) -> GatewayBody {
        GatewayBody::Tapped {
            body: Box::pin(self),
            tap,
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
                ends,
                read_timeout,
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
                        } else if read_timeout.is_some() {
                            // A frame ends a silence: the next may be as long again.
                            deadline.reset(next_deadline(*ends, *read_timeout));
                        }
                        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                    }
                    Poll::Pending if deadline.poll(cx).is_ready() => {
                        Poll::Ready(Some(Err(Box::new(DeadlineExceeded))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            GatewayBodyProj::Tapped { body, tap } => {
                let frame = body.as_mut().poll_frame(cx);
                match &frame {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(data) = f.data_ref() {
                            tap.data(data);
                        }
                        if body.is_end_stream() {
                            tap.ended();
                        }
                    }
                    Poll::Ready(None) => tap.ended(),
                    _ => {}
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Local { body } => body.is_end_stream(),
            GatewayBody::Upstream { body, .. } => body.is_end_stream(),
            GatewayBody::Tapped { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Local { body } => body.size_hint(),
            GatewayBody::Upstream { body, .. } => body.size_hint(),
            GatewayBody::Tapped { body, .. } => body.size_hint(),
        }
    }
}
