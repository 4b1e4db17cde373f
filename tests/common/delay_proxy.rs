//! A TCP proxy in front of Redis that holds the server's replies back for a fixed delay, as a
//! congested link would, so a cache fill's reply can arrive after the invalidation that
//! superseded it.
//!
//! Only command connections are slowed: a connection that sends `SUBSCRIBE` is passed through
//! from then on, so invalidations travel fast while a read's reply is still on the wire (the
//! race the generation counters close). Every held reply is logged, so a test can wait until a
//! stale reply is in flight and then check it really was delivered after its write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One reply chunk held back on a command connection.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub text: String,
    pub release_at: Instant,
}

pub(crate) struct DelayProxy {
    pub addr: SocketAddr,
    held: Arc<Mutex<Vec<Held>>>,
    /// The delay in milliseconds, read for each reply (see [`DelayProxy::set_delay`]).
    delay: Arc<AtomicU64>,
}

impl DelayProxy {
    /// Listens on an ephemeral port and forwards to `target`, replies `delay` late.
    pub(crate) async fn start(target: SocketAddr, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let held = Arc::new(Mutex::new(Vec::new()));
        let log = held.clone();
        let millis = u64::try_from(delay.as_millis()).expect("delay");
        let delay = Arc::new(AtomicU64::new(millis));
        let current = delay.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, current.clone(), log.clone()));
            }
        });
        DelayProxy { addr, held, delay }
    }

    /// Replies read from now on are held back `delay` (those already held keep their time).
    pub(crate) fn set_delay(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).expect("delay");
        self.delay.store(millis, Ordering::SeqCst);
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Waits (up to 10 s) until a held reply contains `needle`; returns it.
    pub(crate) async fn wait_held(&self, needle: &str) -> Held {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let found = self
                .held
                .lock()
                .expect("log")
                .iter()
                .find(|h| h.text.contains(needle))
                .cloned();
            if let Some(h) = found {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("no reply containing {needle:?} went through the proxy");
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    delay: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<Held>>>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let subscriber = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = subscriber.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_rx.read(&mut buf).await {
            if n == 0 || server_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
            if contains(&buf[..n], b"SUBSCRIBE") {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _ = server_tx.shutdown().await;
    });
    // One FIFO queue per connection: a chunk passed through at once still waits for the held
    // ones before it, so the byte stream keeps its order.
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, bytes)) = queued.recv().await {
            tokio::time::sleep_until(at).await;
            if client_tx.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = client_tx.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = server_rx.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let bytes = buf[..n].to_vec();
        let release_at = if subscriber.load(std::sync::atomic::Ordering::SeqCst) {
            Instant::now()
        } else {
            let at = Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
            log.lock().expect("log").push(Held {
                text: String::from_utf8_lossy(&bytes).into_owned(),
                release_at: at,
            });
            at
        };
        if queue.send((release_at, bytes)).is_err() {
            break;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
