//! A real Redis Cluster per test: three masters and three replicas, six `redis-server`
//! processes on free ports in one temporary directory, joined by `redis-cli --cluster create`.
//! Killed when the [`RedisCluster`] is dropped.
//!
//! Self-contained (std, tempfile and tokio's socket type; `redis-cli` for the cluster commands)
//! so any test binary can use it. A node's cluster bus listens on its port + 10000, so ports are
//! picked at most 55535 with that bus port free as well.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const NODES: usize = 6;
/// The highest port whose bus port (+10000) is still a port.
const MAX_PORT: u16 = 55_535;
const BUS_OFFSET: u16 = 10_000;
/// Short, so a killed master's replica takes over within a few seconds; not so short that
/// a node slowed down by a busy machine is taken for dead.
const NODE_TIMEOUT_MS: u64 = 2_000;
/// Generous: six servers, a cluster handshake and an election on a busy two-core machine.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// How long fresh nodes may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// New sets of ports tried when a node could not start (a port taken in the meantime).
const PORT_ATTEMPTS: usize = 3;

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    child: Option<Child>,
    /// Once killed: its port and bus port, bound but not listening, so connections to them are
    /// refused as from a dead node and no other server (another test's, on a busy machine)
    /// can start there. A stranger on a dead master's address answers the gateway's commands
    /// for the slot without the data and without a redirect, which is not a failover.
    tombstone: Vec<tokio::net::TcpSocket>,
}

/// Six running nodes forming one cluster (three masters, one replica each).
pub(crate) struct RedisCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok` with all slots served.
    pub(crate) fn start() -> RedisCluster {
        for _ in 0..PORT_ATTEMPTS {
            if let Some(cluster) = Self::launch() {
                cluster.create();
                cluster.wait_ok();
                cluster.wait_roles_known();
                return cluster;
            }
            // Most likely someone took a port after we released it: try other ones.
        }
        panic!("could not start six redis-server nodes (is /usr/bin/redis-server installed?)");
    }

    /// Six nodes answering PING, or `None` if one exited or never answered.
    fn launch() -> Option<RedisCluster> {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let nodes = free_ports(NODES)
            .into_iter()
            .map(|port| Node {
                port,
                child: Some(spawn(port, dir.path())),
                tombstone: Vec::new(),
            })
            .collect();
        let mut cluster = RedisCluster { nodes, dir };
        let deadline = Instant::now() + READY_WITHIN;
        for i in 0..cluster.nodes.len() {
            while cli(cluster.nodes[i].port, &["PING"]).is_none_or(|out| out.trim() != "PONG") {
                let exited = cluster.nodes[i]
                    .child
                    .as_mut()
                    .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
                if exited || Instant::now() > deadline {
                    return None;
                }
                sleep(POLL);
            }
        }
        Some(cluster)
    }

    /// A seed URL (the first node); the client learns the others from it.
    pub(crate) fn url(&self) -> String {
        self.url_of(self.nodes[0].port)
    }

    pub(crate) fn url_of(&self, port: u16) -> String {
        format!("redis://127.0.0.1:{port}/")
    }

    /// Ports of the nodes still running.
    pub(crate) fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving the slot `key` hashes to, as a live node sees it.
    pub(crate) fn master_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("CLUSTER KEYSLOT");
        let nodes = cli(port, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        master_serving(&nodes, slot).unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Kills one node with SIGKILL (a crash: no chance to hand anything over) and reaps it.
    pub(crate) fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            node.tombstone = [node.port, node.port + BUS_OFFSET]
                .into_iter()
                .filter_map(|port| {
                    let socket = tokio::net::TcpSocket::new_v4().ok()?;
                    socket.bind(([127, 0, 0, 1], port).into()).ok()?;
                    Some(socket)
                })
                .collect();
        }
    }

    /// Waits until each master's replicas have everything it wrote, so killing a master loses
    /// nothing written before this call.
    pub(crate) fn wait_replicated(&self) {
        for port in self.live_ports() {
            wait_until(&format!("replicas of {port} catch up"), || {
                cli(port, &["INFO", "replication"]).is_some_and(|info| caught_up(&info))
            });
        }
    }

    /// Waits until every live node reports `cluster_state:ok` with all 16384 slots served
    /// (after a kill: once a replica has taken over).
    pub(crate) fn wait_ok(&self) {
        for port in self.live_ports() {
            wait_until(&format!("node {port} reports cluster_state:ok"), || {
                cli(port, &["CLUSTER", "INFO"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                })
            });
        }
    }

    /// Waits until every node sees every other as a healthy master or replica: the replicas'
    /// roles reach the other nodes by gossip, after the slots are served.
    fn wait_roles_known(&self) {
        let replicas = NODES / 2;
        for port in self.live_ports() {
            wait_until(&format!("node {port} knows every replica"), || {
                cli(port, &["CLUSTER", "NODES"]).is_some_and(|nodes| {
                    let healthy = |l: &&str| !l.contains("fail") && !l.contains("handshake");
                    let lines: Vec<&str> = nodes.lines().filter(healthy).collect();
                    lines.len() == NODES
                        && lines.iter().filter(|l| l.contains("slave")).count() == replicas
                })
            });
        }
    }

    fn create(&self) {
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create (is redis-tools installed?)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Where the nodes keep their logs and cluster config files.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for port in self.live_ports() {
            self.kill(port);
        }
    }
}

/// `n` distinct ports at most [`MAX_PORT`] whose bus ports are free too. Taken by someone else
/// between picking and binding is possible but unlikely; the node then fails to start and the
/// test says so.
fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local address").port();
        if port > MAX_PORT || ports.contains(&(port + BUS_OFFSET)) {
            held.push(listener);
            continue;
        }
        let Ok(bus) = TcpListener::bind(("127.0.0.1", port + BUS_OFFSET)) else {
            held.push(listener);
            continue;
        };
        // Held until all are picked, so the OS does not hand the same port out twice.
        held.push(listener);
        held.push(bus);
        ports.push(port);
    }
    ports
}

fn spawn(port: u16, dir: &Path) -> Child {
    Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .arg("--cluster-config-file")
        .arg(dir.join(format!("nodes-{port}.conf")))
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join(format!("redis-{port}.log")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server")
}

/// One `redis-cli` command against a node; its output, or `None` if it failed to answer.
pub(crate) fn cli(port: u16, args: &[&str]) -> Option<String> {
    if TcpStream::connect(("127.0.0.1", port)).is_err() {
        return None;
    }
    let out: Output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
}

/// Whether an `INFO replication` answer shows every replica at the master's offset (true for
/// a replica, which has no replicas of its own).
fn caught_up(info: &str) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::to_owned)
    };
    if field("role:").as_deref() != Some("master") {
        return true;
    }
    let Some(offset) = field("master_repl_offset:").and_then(|o| o.parse::<u64>().ok()) else {
        return false;
    };
    let replicas: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("offset="))
        .collect();
    !replicas.is_empty()
        && replicas.iter().all(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix("offset="))
                .and_then(|o| o.parse::<u64>().ok())
                .is_some_and(|o| o >= offset)
        })
}

/// The master port serving `slot` in a `CLUSTER NODES` answer.
fn master_serving(nodes: &str, slot: u16) -> Option<u16> {
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = fields.get(2)?;
        if !flags.contains("master") || flags.contains("fail") {
            return None;
        }
        let serves = fields.iter().skip(8).any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
        });
        let address = fields.get(1)?.split('@').next()?;
        serves.then(|| address.rsplit(':').next()?.parse().ok())?
    })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE_WITHIN;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        sleep(POLL);
    }
    panic!("timed out waiting until {what}");
}
