//! Proxy workers (`workers: N`): one single-threaded tokio runtime per worker, each accepting
//! on its own `SO_REUSEPORT` listener bound to the same address, so the kernel spreads new
//! connections across them and a connection's requests, upstream calls and responses stay on
//! one thread (no work-stealing, no wake-ups across cores). What the workers share (key cache,
//! limiters, metrics) is `Sync` and read without a lock on the hot path; upstream connections
//! are listed per worker (`proxy::pool`), each list behind its own, uncontended, lock.
//!
//! Shutdown comes in two steps: [`Workers::drain`] waits until every worker stopped accepting
//! and finished its connections; [`Workers::finish`] then ends their runtimes. In between, the
//! caller flushes bookkeeping, while tasks the requests left on a worker's runtime (a quota
//! lease in flight, a connection going back to its pool) still run to their end.

use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Pending connections each listener queues before accepting (tokio's own default).
const BACKLOG: i32 = 1024;

/// `count` listeners on `addr` with `SO_REUSEPORT`; with port 0 the first picks the port and
/// the others join it.
pub(crate) fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        at = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The running workers.
#[derive(Debug)]
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    thread: JoinHandle<()>,
    drained: oneshot::Receiver<()>,
    finish: oneshot::Sender<()>,
}

impl Workers {
    /// Starts one thread and runtime per listener; each runs `serve(listener, index)` until it
    /// returns (once shutdown is signalled and its connections drained).
    pub(crate) fn start<F, Fut>(
        listeners: Vec<std::net::TcpListener>,
        serve: F,
    ) -> io::Result<Workers>
    where
        F: Fn(TcpListener, usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let mut workers = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (drained_tx, drained) = oneshot::channel();
            let (finish, finish_rx) = oneshot::channel::<()>();
            let serve = serve.clone();
            let thread = std::thread::Builder::new()
                .name(format!("scopegate-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => serve(listener, index).await,
                            Err(e) => tracing::error!(worker = index, error = %e, "worker could not listen"),
                        }
                        let _ = drained_tx.send(());
                        // Tasks left on this runtime keep running until the gateway is done.
                        let _ = finish_rx.await;
                    });
                })?;
            workers.push(Worker {
                thread,
                drained,
                finish,
            });
        }
        Ok(Workers { workers })
    }

    /// Waits until every worker has stopped accepting and drained its connections.
    pub(crate) async fn drain(&mut self) {
        for worker in &mut self.workers {
            let _ = (&mut worker.drained).await;
        }
    }

    /// Ends the workers' runtimes (dropping any task still on them) and joins their threads.
    pub(crate) async fn finish(self) {
        let threads: Vec<JoinHandle<()>> = self
            .workers
            .into_iter()
            .map(|w| {
                let _ = w.finish.send(());
                w.thread
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn listeners_share_one_port() {
        let listeners = bind_reuseport("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(
            ports[0] != 0 && ports.iter().all(|p| *p == ports[0]),
            "{ports:?}"
        );
    }

    /// Every worker accepts on its own thread; after `drain` none accepts any more, and tasks
    /// left on a worker's runtime keep running until `finish`.
    #[tokio::test]
    async fn workers_accept_on_their_own_threads_then_drain_and_finish() {
        let listeners = bind_reuseport("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        let addr = listeners[0].local_addr().expect("addr");
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let after_drain = Arc::new(AtomicUsize::new(0));
        let (counts, left_over) = (served.clone(), after_drain.clone());
        let mut workers = Workers::start(listeners, move |listener, index| {
            let mut stop = stop.clone();
            let (counts, left_over) = (counts.clone(), left_over.clone());
            async move {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                assert_eq!(name, format!("scopegate-worker-{index}"));
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let (mut stream, _) = accepted.expect("accept");
                            counts[index].fetch_add(1, Ordering::SeqCst);
                            stream.write_all(&[index as u8]).await.expect("write");
                        }
                        _ = stop.changed() => break,
                    }
                }
                // A task this worker leaves behind: it runs while the worker waits to finish.
                tokio::spawn(async move {
                    left_over.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
        .expect("start");

        // Connections until both workers have answered one (the kernel's spread is by hash).
        let mut seen = [false, false];
        for _ in 0..200 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut byte = [0u8];
            stream.read_exact(&mut byte).await.expect("read");
            seen[usize::from(byte[0])] = true;
            if seen == [true, true] {
                break;
            }
        }
        assert_eq!(seen, [true, true], "one worker never accepted");

        stop_tx.send(true).expect("stop");
        workers.drain().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still accepting after drain"
        );
        // Both left-over tasks run before finish: the runtimes are still being driven.
        for _ in 0..1000 {
            if after_drain.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(after_drain.load(Ordering::SeqCst), 2);
        workers.finish().await;
        let total: usize = served.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        assert!(total >= 2);
    }
}
