//! TLS on the wire: the proxy listener over TLS (HTTP/1.1 and HTTP/2 by ALPN), certificate
//! reload without dropping open connections, and `https://` upstreams trusted through `ca:`.
//! Certificates are made per test with rcgen: one test CA, leaves for 127.0.0.1/localhost.

mod common;

use bytes::Bytes;
use common::gateway::{config_yaml, TestGateway, Upstreams};
use common::http::{get, raw};
use common::upstream::Upstream;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use scopegate::tls::TlsAcceptorSource;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA, and leaf certificates it signs for 127.0.0.1 and localhost.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate: PEM for files, DER to compare with what a client sees.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "scopegate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Pki {
            ca: CertifiedIssuer::self_signed(params, key).expect("CA cert"),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn leaf(&self, common_name: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf cert");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client config trusting only this CA, with these ALPN protocols.
    fn client_config(&self, alpn: &[&[u8]]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("CA as root");
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).expect("write PEM");
}

/// The common test config with `tls:` pointing at `cert.pem`/`key.pem` beside it.
fn tls_yaml(upstream: &Upstream, dir: &Path) -> String {
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        None,
        &dir.join("data"),
    );
    yaml.replacen(
        "listen: 127.0.0.1:0\n",
        "listen: 127.0.0.1:0\ntls:\n  cert: cert.pem\n  key: key.pem\n",
        1,
    )
}

/// A gateway whose proxy listener speaks TLS with `leaf`.
async fn tls_gateway(leaf: &Leaf, upstream: &Upstream) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "cert.pem", &leaf.cert_pem);
    write(dir.path(), "key.pem", &leaf.key_pem);
    let yaml = tls_yaml(upstream, dir.path());
    TestGateway::start_in(&yaml, dir).await
}

/// A TLS connection to `addr` verified against the test CA (server name 127.0.0.1).
async fn tls_connect(pki: &Pki, addr: SocketAddr) -> TlsStream<TcpStream> {
    let connector = TlsConnector::from(Arc::new(pki.client_config(&[b"http/1.1"])));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a peer certificate")
        .clone()
}

/// An HTTP/1.1 keep-alive connection over `stream`.
async fn http1_over(
    stream: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

async fn get_status(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> StatusCode {
    sender.ready().await.expect("connection ready");
    let request = Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    status
}

#[tokio::test]
async fn proxy_listener_serves_http1_and_http2_over_tls() {
    let pki = Pki::new();
    let leaf = pki.leaf("gateway");
    let upstream = Upstream::start().await;
    let gw = tls_gateway(&leaf, &upstream).await;
    let url = format!("https://127.0.0.1:{}/api/v1/health", gw.proxy.port());

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config(&[]))
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let response = client
        .request(Request::get(&url).body(Full::default()).expect("request"))
        .await
        .expect("HTTP/1.1 over TLS");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(
        upstream.last().headers["x-forwarded-proto"],
        "https",
        "the upstream is told the client used TLS"
    );

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(pki.client_config(&[]))
        .https_only()
        .enable_http2()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let response = client
        .request(Request::get(&url).body(Full::default()).expect("request"))
        .await
        .expect("HTTP/2 over TLS");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2, "ALPN h2 is served");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let pki = Pki::new();
    let upstream = Upstream::start().await;
    let gw = tls_gateway(&pki.leaf("gateway"), &upstream).await;
    // A client that connects and never starts its handshake holds up no one else.
    let _silent = TcpStream::connect(gw.proxy).await.expect("connect");
    let answer = raw(
        gw.proxy,
        b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    assert!(
        !answer.starts_with("HTTP/"),
        "answered in plain HTTP: {answer:?}"
    );
    assert_eq!(upstream.count(), 0);
    // The listener still serves TLS clients afterwards.
    let mut sender = http1_over(tls_connect(&pki, gw.proxy).await).await;
    assert_eq!(get_status(&mut sender, "/api/v1/health").await, 200);
}

#[tokio::test]
async fn replaced_certificate_serves_new_connections_and_keeps_open_ones() {
    let pki = Pki::new();
    let first = pki.leaf("first");
    let second = pki.leaf("second");
    let upstream = Upstream::start().await;
    let gw = tls_gateway(&first, &upstream).await;

    let old = tls_connect(&pki, gw.proxy).await;
    assert_eq!(peer_leaf(&old), first.der);
    let mut old = http1_over(old).await;
    assert_eq!(get_status(&mut old, "/api/v1/health").await, 200);

    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "second.pem", &second.cert_pem);
    write(dir.path(), "second.key", &second.key_pem);
    let config = TlsAcceptorSource::load(
        &dir.path().join("second.pem"),
        &dir.path().join("second.key"),
    )
    .expect("second certificate loads");
    let source = gw
        .inner
        .as_ref()
        .and_then(|g| g.tls.clone())
        .expect("the gateway exposes its TLS source");
    source.replace(config);

    let new = tls_connect(&pki, gw.proxy).await;
    assert_eq!(
        peer_leaf(&new),
        second.der,
        "a new connection sees the new certificate"
    );
    let mut new = http1_over(new).await;
    assert_eq!(get_status(&mut new, "/api/v1/health").await, 200);

    // The connection opened before the swap keeps working, on the same TCP connection.
    assert_eq!(get_status(&mut old, "/api/v1/health").await, 200);
    assert_eq!(get_status(&mut old, "/api/v1/health").await, 200);
}

/// A TLS upstream answering every request with 200 `secure`, with a certificate from `leaf`.
async fn start_tls_upstream(leaf: &Leaf) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"secure"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// The common test config (plain listener) plus an upstream `secure` at `https://addr` with
/// `ca_line` (e.g. `ca: ca.pem`, or empty) and a public route `GET /secure` to it.
fn secure_yaml(upstream: &Upstream, dir: &Path, addr: SocketAddr, ca_line: &str) -> String {
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream.url(),
        },
        None,
        &dir.join("data"),
    );
    let ca = if ca_line.is_empty() {
        String::new()
    } else {
        format!("    {ca_line}\n")
    };
    yaml.replacen(
        "upstreams:\n",
        &format!("upstreams:\n  secure:\n    url: https://{addr}\n{ca}"),
        1,
    )
    .replacen(
        "routes:\n",
        "routes:\n  - method: GET\n    path: /secure\n    scope: public\n    upstream: secure\n",
        1,
    )
}

#[tokio::test]
async fn https_upstream_is_trusted_through_its_ca_file_only() {
    let pki = Pki::new();
    let upstream = Upstream::start().await;
    let secure = start_tls_upstream(&pki.leaf("upstream")).await;

    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "ca.pem", &pki.ca_pem());
    let yaml = secure_yaml(&upstream, dir.path(), secure, "ca: ca.pem");
    let gw = TestGateway::start_in(&yaml, dir).await;
    let answer = get(&gw.url("/secure"), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body, "secure");

    // Without `ca:` only the webpki roots are trusted: the test CA's certificate is refused.
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = secure_yaml(&upstream, dir.path(), secure, "");
    let gw = TestGateway::start_in(&yaml, dir).await;
    let answer = get(&gw.url("/secure"), &[]).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.error_code(), "upstream_unavailable");
}

#[test]
fn check_names_the_line_of_a_missing_ca_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = config_yaml(
        &Upstreams {
            tools: "http://127.0.0.1:1".to_owned(),
        },
        None,
        &dir.path().join("data"),
    )
    .replacen(
        "upstreams:\n",
        "upstreams:\n  secure:\n    url: https://127.0.0.1:2\n    ca: certs/missing.pem\n",
        1,
    );
    let path = dir.path().join("gateway.yaml");
    let errors = match scopegate::config::parse(&path, &yaml) {
        Ok(_) => panic!("a missing CA file was accepted"),
        Err(e) => e.problems,
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let line = yaml
        .lines()
        .position(|l| l.trim_start().starts_with("ca: certs/missing.pem"))
        .expect("the ca line")
        + 1;
    let problem = &errors[0];
    assert_eq!(problem.line, Some(line), "{problem}");
    assert_eq!(problem.column, Some(9), "{problem}");
    assert!(problem.message.contains("upstreams.secure.ca"), "{problem}");
    assert!(problem.message.contains("missing.pem"), "{problem}");
    assert!(problem.message.contains("cannot read"), "{problem}");

    // A file without a certificate is refused the same way.
    std::fs::create_dir_all(dir.path().join("certs")).expect("mkdir");
    write(&dir.path().join("certs"), "missing.pem", "no PEM here\n");
    let errors = match scopegate::config::parse(&path, &yaml) {
        Ok(_) => panic!("a CA file without certificates was accepted"),
        Err(e) => e.problems,
    };
    assert_eq!(errors[0].line, Some(line), "{}", errors[0]);
    assert!(
        errors[0].message.contains("no certificate"),
        "{}",
        errors[0]
    );

    // A CA for a plain-http upstream is a mistake worth naming, even when the file is fine.
    write(
        &dir.path().join("certs"),
        "missing.pem",
        &Pki::new().ca_pem(),
    );
    let http_yaml = yaml.replacen("url: https://127.0.0.1:2", "url: http://127.0.0.1:2", 1);
    let errors = match scopegate::config::parse(&path, &http_yaml) {
        Ok(_) => panic!("`ca:` on an http upstream was accepted"),
        Err(e) => e.problems,
    };
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].line, Some(line), "{}", errors[0]);
    assert!(
        errors[0].message.contains("only to an https://"),
        "{}",
        errors[0]
    );
    // With https it is accepted.
    assert!(scopegate::config::parse(&path, &yaml).is_ok());
}

#[tokio::test]
async fn a_config_reload_picks_up_rotated_certificate_files_and_refuses_broken_ones() {
    let pki = Pki::new();
    let first = pki.leaf("first");
    let second = pki.leaf("second");
    let upstream = Upstream::start().await;
    let gw = tls_gateway(&first, &upstream).await;
    let running = gw.inner.as_ref().expect("running");

    // A broken rotation (key of another certificate) is refused; the first certificate stays.
    write(gw.dir.path(), "cert.pem", &second.cert_pem);
    write(gw.dir.path(), "key.pem", &first.key_pem);
    running.reload();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(peer_leaf(&tls_connect(&pki, gw.proxy).await), first.der);

    // A good rotation is served to new connections after the reload (what SIGHUP does).
    write(gw.dir.path(), "key.pem", &second.key_pem);
    running.reload();
    let mut served = None;
    for _ in 0..40 {
        let leaf = peer_leaf(&tls_connect(&pki, gw.proxy).await);
        if leaf == second.der {
            served = Some(leaf);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        served,
        Some(second.der.clone()),
        "the rotated certificate is served"
    );
    let metrics = common::http::get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    let samples = common::prom::parse(&String::from_utf8_lossy(&metrics.body));
    let reloads = |result| {
        common::prom::sum(
            &samples,
            "scopegate_config_reloads_total",
            &[("result", result)],
        )
    };
    assert_eq!((reloads("error"), reloads("ok")), (1.0, 1.0));
}

#[test]
fn check_names_the_tls_line_when_the_certificate_and_key_do_not_load() {
    let pki = Pki::new();
    let first = pki.leaf("first");
    let second = pki.leaf("second");
    let upstream_url = "http://127.0.0.1:1".to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = config_yaml(
        &Upstreams {
            tools: upstream_url,
        },
        None,
        &dir.path().join("data"),
    )
    .replacen(
        "listen: 127.0.0.1:0\n",
        "listen: 127.0.0.1:0\ntls:\n  cert: cert.pem\n  key: key.pem\n",
        1,
    );
    let path = dir.path().join("gateway.yaml");
    let line = yaml
        .lines()
        .position(|l| l.trim_start().starts_with("cert: cert.pem"))
        .expect("line")
        + 1;
    let problem_of = |yaml: &str| match scopegate::config::parse(&path, yaml) {
        Ok(_) => panic!("a broken certificate pair was accepted"),
        Err(e) => e.problems.into_iter().next().expect("a problem"),
    };
    let missing = problem_of(&yaml);
    assert_eq!(missing.line, Some(line), "{missing}");
    assert!(missing.message.contains("cert.pem"), "{missing}");

    write(dir.path(), "cert.pem", &first.cert_pem);
    write(dir.path(), "key.pem", &second.key_pem);
    let mismatch = problem_of(&yaml);
    assert_eq!(mismatch.line, Some(line), "{mismatch}");

    write(dir.path(), "key.pem", &first.key_pem);
    assert!(
        scopegate::config::parse(&path, &yaml).is_ok(),
        "a matching pair passes"
    );
}

/// Reads until the server closes the connection (end of stream, reset, or a TLS stream cut
/// without `close_notify`).
async fn until_closed(mut stream: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[tokio::test]
async fn a_tls_client_that_never_sends_a_request_is_closed_after_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    // A bound, not a speed: far past the 300 ms header timeout, far short of the 60 s idle one.
    const CLOSED_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
    let pki = Pki::new();
    let leaf = pki.leaf("gateway");
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "cert.pem", &leaf.cert_pem);
    write(dir.path(), "key.pem", &leaf.key_pem);
    let yaml = tls_yaml(&upstream, dir.path()).replace(
        "upstreams:\n",
        "limits:\n  header_read_timeout: 300ms\n  idle_timeout: 60s\nupstreams:\n",
    );
    let gw = TestGateway::start_in(&yaml, dir).await;
    let closes = |what: &'static str| {
        move |outcome: Result<(), tokio::time::error::Elapsed>| {
            outcome.unwrap_or_else(|_| panic!("{what}: still open after {CLOSED_WITHIN:?}"))
        }
    };

    let silent = TcpStream::connect(gw.proxy).await.expect("connect");
    closes("no handshake")(tokio::time::timeout(CLOSED_WITHIN, until_closed(silent)).await);

    // A TLS record header announcing a ClientHello that never comes.
    let mut half = TcpStream::connect(gw.proxy).await.expect("connect");
    half.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff, 0x01])
        .await
        .expect("write");
    closes("half a handshake")(tokio::time::timeout(CLOSED_WITHIN, until_closed(half)).await);

    for (what, alpn) in [
        ("no ALPN, no request", &[][..]),
        ("ALPN http/1.1, no request", &[&b"http/1.1"[..]][..]),
    ] {
        let connector = TlsConnector::from(Arc::new(pki.client_config(alpn)));
        let tcp = TcpStream::connect(gw.proxy).await.expect("connect");
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let stream = connector.connect(name, tcp).await.expect("TLS handshake");
        closes(what)(tokio::time::timeout(CLOSED_WITHIN, until_closed(stream)).await);
    }
    assert_eq!(upstream.count(), 0);
}
