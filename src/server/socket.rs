//! A client's TCP socket as its connection uses it (below TLS, so it sees the bytes that leave).
//!
//! - **Stalls.** A write that finds the socket full marks the connection's writes stalled, and
//!   the next write that gets through clears the mark; the connection's watchdog cuts a client
//!   stalled for `send_timeout`. This costs one load per write, and a clock read only when a
//!   stall begins. "Full" means [`NOTSENT_LOWAT`] bytes wait unsent: without that option the
//!   kernel takes writes again only once a third of the send buffer (autotuned up to several
//!   MiB) has drained, which hides a slow reader's progress for longer than the timeout. A
//!   socket dropped while stalled is reset, so the kernel does not keep retrying the
//!   undeliverable bytes toward a client that stopped reading.
//! - **Lingering close.** When the gateway closes a connection whose client is still sending
//!   (a refused upload too large to read), closing a socket with unread bytes in it makes the
//!   kernel send a reset: the client's upload fails before it reads the answer, and the reset
//!   discards any of the answer not yet delivered (some stacks also what was delivered but not
//!   yet read). So a close (hyper's shutdown) first ends the sending side, so the client sees
//!   the answer then end of stream, then reads and discards what the client still sends until
//!   it closes too, for at most [`LINGER`]. A client with nothing left to send is closed at
//!   once, and no timer is armed for it; one whose request was refused with its body unread
//!   (the answer said `Connection: close`) is lingered for even when none of the rest has
//!   arrived yet, since it may be on its way.

use super::Activity;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// How long a close waits for a client that is still sending: ample for the answer to arrive
/// and be noticed by a client that reads while it writes; bounded, as the connection keeps its
/// slot (and file descriptor) meanwhile.
const LINGER: Duration = Duration::from_secs(2);
/// Unsent bytes the kernel holds for a client before writes wait (`TCP_NOTSENT_LOWAT`, Linux):
/// enough to keep a fast link busy between two wakeups. Writes get through again once the
/// client has taken about half of it, so only a client taking under about 5 KiB a second goes
/// the default 30 s `send_timeout` without progress.
#[cfg(any(target_os = "linux", target_os = "android"))]
const NOTSENT_LOWAT: u32 = 128 * 1024;
/// Discarded bytes are read this much at a time (on the stack).
const DISCARD_CHUNK: usize = 8 * 1024;
/// Reads of discarded bytes per poll before yielding, so a fast sender cannot hog the thread.
const DISCARD_READS_PER_POLL: usize = 16;

/// The client's socket, with write stalls reported to the connection's [`Activity`] and a
/// lingering close.
pub(super) struct ClientSocket {
    stream: TcpStream,
    activity: Arc<Activity>,
    closing: Closing,
}

/// Where a close by the gateway stands.
enum Closing {
    Open,
    /// Our side is shut; discarding what the client still sends. The deadline is armed once
    /// the client turns out to be sending.
    Lingering(Option<Pin<Box<Sleep>>>),
    Closed,
}

impl ClientSocket {
    pub(super) fn new(stream: TcpStream, activity: Arc<Activity>) -> ClientSocket {
        // Best effort: without it stalls are still seen, only coarser.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        ClientSocket {
            stream,
            activity,
            closing: Closing::Open,
        }
    }

    /// Whether the client opens with the HTTP/2 connection preface (h2c with prior knowledge):
    /// `Some(true)` or `Some(false)`, or `None` when the first bytes are a part of the preface
    /// and the rest has not arrived (rare; the caller lets hyper-util's detection read on).
    /// Peeked, not read, so the chosen protocol reads every byte itself; one peek, no polling.
    pub(super) async fn opens_with_h2_preface(&self) -> Option<bool> {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut seen = [0u8; PREFACE.len()];
        let n = self.stream.peek(&mut seen).await.ok()?;
        if n == 0 || seen[..n] != PREFACE[..n] {
            return Some(false);
        }
        (n == PREFACE.len()).then_some(true)
    }

    /// Notes whether a write got through or found the socket full.
    fn note<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &poll {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(Ok(_)) => self.activity.write_progressed(),
            Poll::Ready(Err(_)) => {}
        }
        poll
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note(poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.note(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Open => {
                    ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
                    this.closing = Closing::Lingering(None);
                }
                Closing::Lingering(deadline) => {
                    if deadline.is_none() && this.activity.client_may_send() {
                        *deadline = Some(Box::pin(tokio::time::sleep(LINGER)));
                    }
                    ready!(discard(&mut this.stream, deadline, cx));
                    this.closing = Closing::Closed;
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Reads and discards what the client sends; ready once it closes (or fails), once nothing was
/// waiting at the first look, or once the linger deadline passes.
fn discard(
    stream: &mut TcpStream,
    deadline: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut chunk = [0u8; DISCARD_CHUNK];
    for _ in 0..DISCARD_READS_PER_POLL {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            // The client is still sending: linger, from now on.
            Poll::Ready(Ok(())) => {
                deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
            }
            Poll::Pending => {
                return match deadline {
                    // Nothing unread: closing now resets nothing.
                    None => Poll::Ready(()),
                    Some(deadline) => deadline.as_mut().poll(cx),
                };
            }
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        if self.activity.write_stalled() {
            // A reset frees the undeliverable bytes at once, instead of the kernel retrying a
            // client that stopped reading for minutes.
            let _ = self.stream.set_zero_linger();
        }
    }
}
