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

use super::Activity;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Unsent bytes the kernel holds for a client before writes wait (`TCP_NOTSENT_LOWAT`, Linux):
/// enough to keep a fast link busy between two wakeups. Writes get through again once the
/// client has taken about half of it, so only a client taking under about 5 KiB a second goes
/// the default 30 s `send_timeout` without progress.
#[cfg(any(target_os = "linux", target_os = "android"))]
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// The client's socket, with write stalls reported to the connection's [`Activity`].
pub(super) struct ClientSocket {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl ClientSocket {
    pub(super) fn new(stream: TcpStream, activity: Arc<Activity>) -> ClientSocket {
        // Best effort: without it stalls are still seen, only coarser.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        ClientSocket { stream, activity }
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
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
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
