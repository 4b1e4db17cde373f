//! A real `redis-server` per test, on an ephemeral port, in its own temporary directory.
//!
//! Self-contained (std, tempfile and tokio's socket type) so any test binary can use it. The
//! server is killed when the [`RedisServer`] is dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(5);
/// New ports tried when the chosen one was taken between picking and binding.
const PORT_ATTEMPTS: usize = 5;

/// A running (or stopped) `redis-server` child process.
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    persistent: bool,
    dir: tempfile::TempDir,
    /// While stopped: the port, bound but not listening, so connections are refused as by a
    /// dead server and no other test's server starts there (a gateway would then talk to it).
    tombstone: Option<tokio::net::TcpSocket>,
}

impl RedisServer {
    /// A throwaway server: no RDB snapshots, no AOF; data dies with the process.
    pub(crate) fn start() -> RedisServer {
        Self::launch(false)
    }

    /// A server that writes every change to an append-only file (fsync always), so it can be
    /// killed and [`start_again`](Self::start_again)ed with its data intact.
    pub(crate) fn start_persistent() -> RedisServer {
        Self::launch(true)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no chance to save, like a crash) and reaps it; its port stays
    /// held until [`start_again`](Self::start_again).
    pub(crate) fn stop(&mut self) {
        self.kill();
        self.tombstone = tokio::net::TcpSocket::new_v4()
            .ok()
            .filter(|socket| socket.bind(([127, 0, 0, 1], self.port).into()).is_ok());
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`stop`](Self::stop)).
    pub(crate) fn start_again(&mut self) {
        self.kill();
        self.tombstone = None;
        let child = spawn(self.port, self.dir.path(), self.persistent);
        self.child = Some(child);
        if !self.wait_ready() {
            panic!("redis-server did not come back on port {}", self.port);
        }
    }

    fn launch(persistent: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = RedisServer {
            child: None,
            port: 0,
            persistent,
            dir,
            tombstone: None,
        };
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            server.child = Some(spawn(server.port, server.dir.path(), persistent));
            if server.wait_ready() {
                return server;
            }
            // Most likely someone took the port after we released it: try another.
            server.kill();
        }
        panic!("could not start redis-server (is /usr/bin/redis-server installed?)");
    }

    /// Polls PING until the server answers; `false` if it exited or never answered.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            let exited = match self.child.as_mut() {
                Some(child) => !matches!(child.try_wait(), Ok(None)),
                None => true,
            };
            if exited {
                return false;
            }
            if answers_ping(self.port) {
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port the OS just handed out; free again once the listener is dropped.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

fn spawn(port: u16, dir: &Path, persistent: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--save")
        .arg("")
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"));
    if persistent {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server")
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
