//! `scopegate demo`: the gateway with sample tool, model and guardrail upstreams running
//! in-process, an embedded store in a temporary folder, and one app and key to try.

use crate::auth::key;
use crate::config::Config;
use crate::model::{now_unix, App};
use crate::routing::{RouteSpec, RouteTable, Upstream};
use crate::server::{serve, ConnectionSettings};
use crate::store::UnauditedWrites;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Scopes the demo app gets: enough for an allowed call, and missing one for a 403.
const DEMO_SCOPES: &[&str] = &["deploy_tool", "view_job_status"];

pub(super) async fn run(config: Config) -> ExitCode {
    match prepare_and_run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("scopegate demo: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn prepare_and_run(mut config: Config) -> Result<(), String> {
    let (stop, stop_rx) = watch::channel(false);
    let mut upstreams = Vec::new();
    for upstream in &config.upstreams {
        let addr = start_sample_upstream(upstream.name.to_string(), stop_rx.clone()).await?;
        let sample = Upstream::single(&upstream.name, &format!("http://{addr}"), upstream.timeouts);
        upstreams.push(Arc::new(Upstream {
            targets: sample.targets,
            path_prefix: String::new(),
            ..(**upstream).clone()
        }));
    }
    let specs: Vec<RouteSpec> = config
        .route_specs
        .iter()
        .map(|spec| {
            let mut spec = spec.clone();
            if let Some(u) = upstreams.iter().find(|u| u.name == spec.upstream.name) {
                spec.upstream = u.clone();
            }
            spec
        })
        .collect();
    config.routes = RouteTable::build(specs).map_err(|_| "cannot rebuild routes".to_owned())?;
    config.upstreams = upstreams;
    let data = DemoData::create()?;
    config.store.redis = None;
    config.store.path = data.0.clone();

    let token = key::random_id() + &key::random_id();
    let store = crate::gateway::open_store(&config.store)
        .await
        .map_err(|e| e.to_string())?;
    let full_key = seed(&*store).await?;
    let scopes: Vec<String> = config.scopes.iter().map(|(n, _)| n.clone()).collect();
    let gateway =
        crate::gateway::start_with_store(config, vec![("admin".into(), token.clone())], store)
            .await
            .map_err(|e| e.to_string())?;
    print_instructions(
        gateway.proxy_addr,
        gateway.admin_addr,
        &full_key,
        &token,
        &scopes,
    );
    super::wait_for_stop_signal().await;
    gateway.shutdown().await;
    let _ = stop.send(true);
    Ok(())
}

/// The demo's store folder: private to this run and removed however the demo ends.
struct DemoData(std::path::PathBuf);

impl DemoData {
    fn create() -> Result<DemoData, String> {
        let name = format!("scopegate-demo-{}-{}", std::process::id(), key::random_id());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(DemoData(path))
    }
}

impl Drop for DemoData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One app with [`DEMO_SCOPES`] and one key for it; returns the full key.
async fn seed(store: &dyn crate::store::KeyStore) -> Result<String, String> {
    let app = App {
        id: key::random_id(),
        name: format!("demo-agent-{}", now_unix()),
        scopes: DEMO_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        rate_limit: None,
        quota: None,
        token_quota: None,
        created_at: now_unix(),
        created_by: "demo".into(),
        version: 0,
        credentials: Default::default(),
    };
    store.create_app(&app).await.map_err(|e| e.to_string())?;
    let new = key::generate();
    let record = new.record(&app.id, "demo key", "demo", None);
    store.create_key(&record).await.map_err(|e| e.to_string())?;
    Ok(new.full)
}

fn print_instructions(
    proxy: SocketAddr,
    admin: SocketAddr,
    key: &str,
    token: &str,
    scopes: &[String],
) {
    println!("scopegate demo is running (Ctrl-C to stop). Sample upstreams answer with what they received.");
    println!(
        "The demo app holds {} of the config's {} scopes.\n",
        DEMO_SCOPES.join(" and "),
        scopes.len()
    );
    println!("# allowed (200): deploy_tool");
    println!("curl -i -X POST -H 'X-API-Key: {key}' http://{proxy}/api/v1/tools/web-search/deploy -d '{{\"env\":\"staging\"}}'");
    println!("# no key (401 missing_key)");
    println!("curl -i -X POST http://{proxy}/api/v1/tools/web-search/deploy");
    println!("# wrong key (401 invalid_key)");
    println!("curl -i -X POST -H 'Authorization: Bearer sg_nosuchkey_x' http://{proxy}/api/v1/tools/web-search/deploy");
    println!("# scope missing (403 scope_denied: deploy_model)");
    println!("curl -i -X POST -H 'X-API-Key: {key}' http://{proxy}/api/v1/models/llama/deploy");
    println!("# admin API");
    println!("curl -s -H 'Authorization: Bearer {token}' http://{admin}/v1/keys");
}

/// An upstream that answers every request with a JSON echo of what it received.
async fn start_sample_upstream(
    name: String,
    stop: watch::Receiver<bool>,
) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let settings = ConnectionSettings {
        max_connections: 1024,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(30),
        max_header_bytes: 32 * 1024,
        grace: Duration::from_secs(1),
        slots: None,
        accepted: None,
    };
    let name: Arc<str> = Arc::from(name);
    tokio::spawn(serve(
        listener,
        settings,
        move |request: Request<hyper::body::Incoming>, _peer| {
            let name = name.clone();
            async move { echo(&name, &request) }
        },
        stop,
    ));
    Ok(addr)
}

fn echo<B>(upstream: &str, request: &Request<B>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").into()))
        .collect();
    let body = serde_json::json!({
        "upstream": upstream,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query(),
        "headers": headers,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
