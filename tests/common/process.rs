//! The real `scopegate` binary as a child process: `serve` on free ports with its stdout and
//! stderr in files, and management commands against it. For tests of what an operator sees
//! (log lines, CLI output, a scrape for promtool).

use super::gateway::ADMIN_TOKEN;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_scopegate");
/// The variable the configs started here name in `admin.token_env`.
pub(crate) const TOKEN_ENV: &str = "SCOPEGATE_PROCESS_TEST_TOKEN";
const READY_WITHIN: Duration = Duration::from_secs(10);
const ZERO_LISTEN: &str = "listen: 127.0.0.1:0";

/// What a finished command left behind.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `scopegate serve` running in `dir`.
pub(crate) struct ServeProcess {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
    /// The path given to `-c`.
    config: PathBuf,
}

impl ServeProcess {
    /// Writes `yaml` (its three `listen: 127.0.0.1:0` lines filled with free ports, and
    /// `token_env` pointing at [`TOKEN_ENV`]) to `dir/gateway.yaml` and serves it.
    pub(crate) async fn start(dir: &Path, yaml: &str) -> ServeProcess {
        let path = dir.join("gateway.yaml");
        Self::start_placed(dir, yaml, |text| {
            std::fs::write(&path, text).expect("write config");
            path.clone()
        })
        .await
    }

    /// Like [`ServeProcess::start`], but `place` puts the filled-in config where the test wants
    /// it (a ConfigMap-like folder of symlinks, say) and returns the path for `-c`. It is
    /// called again, with other ports, if a port was taken meanwhile.
    pub(crate) async fn start_placed(
        dir: &Path,
        yaml: &str,
        place: impl FnMut(&str) -> PathBuf,
    ) -> ServeProcess {
        Self::start_placed_with_env(dir, yaml, place, &[]).await
    }

    /// Like [`ServeProcess::start`], with `env` set for the process (`RUST_LOG=debug`, say).
    pub(crate) async fn start_with_env(
        dir: &Path,
        yaml: &str,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        let path = dir.join("gateway.yaml");
        Self::start_placed_with_env(
            dir,
            yaml,
            |text| {
                std::fs::write(&path, text).expect("write config");
                path.clone()
            },
            env,
        )
        .await
    }

    async fn start_placed_with_env(
        dir: &Path,
        yaml: &str,
        mut place: impl FnMut(&str) -> PathBuf,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        for _ in 0..5 {
            let addrs = free_addrs();
            let text = addrs.iter().fold(yaml.to_owned(), |t, a| {
                t.replacen(ZERO_LISTEN, &format!("listen: {a}"), 1)
            });
            let config = place(&text.replace("SCOPEGATE_TEST_UNUSED_TOKEN", TOKEN_ENV));
            let child = Command::new(BIN)
                .args(["serve", "-c"])
                .arg(&config)
                .env(TOKEN_ENV, ADMIN_TOKEN)
                .env_remove("RUST_LOG")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(File::create(dir.join("serve.stdout")).expect("stdout file"))
                .stderr(File::create(dir.join("serve.log")).expect("log file"))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn scopegate");
            let mut process = ServeProcess {
                child,
                proxy: addrs[0],
                admin: addrs[1],
                metrics: addrs[2],
                dir: dir.to_owned(),
                config,
            };
            if process.wait_ready().await {
                return process;
            }
            let _ = process.child.kill().await;
        }
        panic!(
            "scopegate serve did not start; log:\n{}",
            read(dir, "serve.log")
        );
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            let url = format!("http://{}/readyz", self.metrics);
            if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(1), try_get(&url)).await {
                if a == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.config.clone()
    }

    /// Everything the process wrote to stderr and stdout so far.
    pub(crate) fn output(&self) -> String {
        read(&self.dir, "serve.log") + &read(&self.dir, "serve.stdout")
    }

    /// SIGTERM and wait for the exit, so every line is flushed.
    pub(crate) async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }

    /// `scopegate ARGS -c CONFIG` with the admin token in the environment.
    pub(crate) async fn cli(&self, args: &[&str]) -> Run {
        let config = self.config();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-c", config.to_str().expect("UTF-8 path")]);
        scopegate(&all).await
    }
}

/// Runs `scopegate ARGS` to the end, with the admin token in [`TOKEN_ENV`].
pub(crate) async fn scopegate(args: &[&str]) -> Run {
    let output = Command::new(BIN)
        .args(args)
        .env(TOKEN_ENV, ADMIN_TOKEN)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run scopegate");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

async fn try_get(url: &str) -> Result<u16, String> {
    let request = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let answer = super::http::client()
        .request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.status().as_u16())
}

/// Three distinct ports the OS just handed out.
fn free_addrs() -> [SocketAddr; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addr = |i: usize| listeners[i].local_addr().expect("local address");
    [addr(0), addr(1), addr(2)]
}
