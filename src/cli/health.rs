//! `scopegate health`: exits 0 when the gateway's `/readyz` answers 200, for container health
//! checks (Docker `HEALTHCHECK`, a systemd watchdog script) that have no curl.

use crate::config;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// A health check that hangs is a failed one; Docker's own default timeout is 30s.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Asks `/readyz` on the metrics listener (`url` overrides the config's `metrics.listen`).
pub(super) async fn run(config_path: &Path, url: Option<String>) -> ExitCode {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => match config::load(config_path) {
            Ok(c) => format!("http://{}", reachable(c.metrics.listen)),
            Err(errors) => {
                for p in &errors.problems {
                    eprintln!("{p}");
                }
                return ExitCode::FAILURE;
            }
        },
    };
    let target = format!("{base}/readyz");
    // What is printed of it: a `--url` may carry user info.
    let shown = crate::redact::url(&target);
    match probe(&target).await {
        Ok(200) => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("scopegate: {shown} answered {status}: not ready");
            ExitCode::FAILURE
        }
        Err(why) => {
            eprintln!("scopegate: {shown}: {}", crate::redact::in_text(&why));
            ExitCode::FAILURE
        }
    }
}

async fn probe(url: &str) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    match tokio::time::timeout(TIMEOUT, client.get(uri)).await {
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Ok(Ok(response)) => Ok(response.status().as_u16()),
    }
}

/// A listen address as a client can dial it: a wildcard (`0.0.0.0`, `::`) becomes loopback.
pub(super) fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_dialled_on_loopback() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(reachable(addr("0.0.0.0:8100")), addr("127.0.0.1:8100"));
        assert_eq!(reachable(addr("[::]:8100")), addr("[::1]:8100"));
        assert_eq!(reachable(addr("10.1.2.3:8100")), addr("10.1.2.3:8100"));
    }
}
