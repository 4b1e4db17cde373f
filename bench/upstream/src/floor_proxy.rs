//! The floor of a hyper proxy, for `bench/run instr`: hyper's HTTP/1 server handing every
//! request to hyper-util's pooled client, with no logic (no auth, no header rules, no
//! metrics). What any gateway built on this stack pays before doing its own work.
//!
//! Usage: `bench-floor-proxy LISTEN_ADDR UPSTREAM_ADDR` (prints `listening on ADDR` once bound).

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;

type Upstream = Client<HttpConnector, Incoming>;

async fn forward(
    client: Upstream,
    upstream: http::uri::Authority,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, Infallible> {
    let target = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *request.uri_mut() = http::Uri::builder()
        .scheme("http")
        .authority(upstream)
        .path_and_query(target)
        .build()
        .expect("upstream uri");
    request.headers_mut().remove("x-api-key");
    // The bench upstream always answers; a failure here is a broken bench, not a 502 to time.
    let response = client.request(request).await.expect("upstream answers");
    debug_assert_eq!(response.status(), StatusCode::OK);
    Ok(response)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let upstream: http::uri::Authority = args
        .next()
        .expect("usage: bench-floor-proxy LISTEN UPSTREAM")
        .parse()
        .expect("UPSTREAM is host:port");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        println!(
            "listening on {}",
            listener.local_addr().expect("local addr")
        );
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Upstream = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service =
                    service_fn(move |request| forward(client.clone(), upstream.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
