//! Token metering through the gateway, over real sockets: fake OpenAI and Anthropic upstreams
//! (tests/common/models.rs), JSON and event streams, the embedded store and two instances on
//! one real Redis. Exact sums in usage, export and metrics; the `include_usage` edit; streams
//! that flow unbuffered; hang-ups and cut streams; token quotas crossing on both instances.

mod common;

use bytes::Bytes;
use common::gateway::TestGateway;
use common::http::send;
use common::models::{FakeModel, Streamed, ANTHROPIC_PATH, OPENAI_PATH};
use common::prom;
use common::redis::RedisServer;
use http::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Two metered routes and an unmetered one, on the embedded store or Redis.
fn yaml(model: &str, store: &str, token_quota: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
  token_env: SCOPEGATE_TEST_UNUSED_TOKEN
metrics:
  listen: 127.0.0.1:0
store:
  {store}
rate_limit:
  per_second: 1000
  burst: 1000
{token_quota}
scopes:
  chat: Talk to models
upstreams:
  model:
    url: {model}
    timeout: none
    read_timeout: 30s
routes:
  - method: POST
    path: {OPENAI_PATH}
    scope: chat
    upstream: model
    meter: openai
  - method: POST
    path: {ANTHROPIC_PATH}
    scope: chat
    upstream: model
    meter: anthropic
  - method: POST
    path: /v1/unmetered/messages
    scope: chat
    upstream: model
"#
    )
}

async fn embedded_gateway(model: &FakeModel, token_quota: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("dir");
    let store = format!("path: {}", dir.path().join("data").display());
    TestGateway::start_in(&yaml(&model.url(), &store, token_quota), dir).await
}

async fn redis_gateway(model: &FakeModel, redis: &RedisServer, token_quota: &str) -> TestGateway {
    let store = format!("redis: {}", redis.url());
    TestGateway::start(&yaml(&model.url(), &store, token_quota)).await
}

/// A chat request: `input` tokens (the fake's `metadata.input_tokens`), `output` tokens.
fn chat(input: u64, output: u64, stream: bool) -> Value {
    json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": output,
        "metadata": {"input_tokens": input},
        "stream": stream,
    })
}

/// Sends a chat request with `key` and reads the whole answer: (status, headers, body).
async fn call(
    gw: &TestGateway,
    path: &str,
    key: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> common::http::Answer {
    let mut headers = vec![("x-api-key", key), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    send(
        Method::POST,
        &gw.url(path),
        &headers,
        Bytes::from(body.to_string()),
    )
    .await
}

/// A key of an app holding `chat`: (app id, key id, key).
async fn chat_key(gw: &TestGateway, app_body: Value) -> (String, String, String) {
    let answer = gw.admin(Method::POST, "/v1/apps", Some(app_body)).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    let app = answer.json()["id"].as_str().expect("id").to_owned();
    let (id, key) = gw.create_key(&app, None).await;
    (app, id, key)
}

fn app(name: &str) -> Value {
    json!({"name": name, "scopes": ["chat"]})
}

/// Waits (bounded) until the key's usage today shows `want` (requests, input, output).
async fn wait_for_usage(gw: &TestGateway, subject: &str, want: (u64, u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let days = gw
            .admin(Method::GET, &format!("/v1/{subject}/usage?days=1"), None)
            .await
            .json();
        let day = &days[0];
        let got = (
            day["requests"].as_u64().expect("requests"),
            day["input_tokens"].as_u64().expect("input"),
            day["output_tokens"].as_u64().expect("output"),
        );
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{subject}: {got:?}, want {want:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape(gw: &TestGateway) -> Vec<prom::Sample> {
    let text = common::http::get(&format!("http://{}/metrics", gw.metrics), &[]).await;
    prom::parse(std::str::from_utf8(&text.body).expect("utf-8"))
}

fn tokens_metric(samples: &[prom::Sample], route: &str, app: &str, direction: &str) -> f64 {
    prom::sum(
        samples,
        "scopegate_tokens_total",
        &[("route", route), ("app", app), ("direction", direction)],
    )
}

fn missing_metric(samples: &[prom::Sample], route: &str) -> f64 {
    prom::sum(
        samples,
        "scopegate_token_usage_missing_total",
        &[("route", route)],
    )
}

#[tokio::test]
async fn json_and_streamed_answers_are_counted_exactly_on_the_embedded_store() {
    let model = FakeModel::start().await;
    let gw = embedded_gateway(&model, "").await;
    counted_exactly(&[&gw]).await;
}

#[tokio::test]
async fn json_and_streamed_answers_are_counted_exactly_through_two_instances_on_redis() {
    let model = FakeModel::start().await;
    let redis = RedisServer::start();
    let a = redis_gateway(&model, &redis, "").await;
    let b = redis_gateway(&model, &redis, "").await;
    counted_exactly(&[&a, &b]).await;
}

/// Mixed traffic of both providers, JSON and streamed, spread over `gws` (one store): exact
/// sums in usage, the export and the metrics (added up over the instances).
async fn counted_exactly(gws: &[&TestGateway]) {
    let gw = gws[0];
    let (app, key_id, key) = chat_key(gw, app("metered")).await;

    // Mixed traffic: (path, input, output, stream).
    let traffic = [
        (OPENAI_PATH, 120, 30, false),
        (OPENAI_PATH, 7, 3, true),
        (ANTHROPIC_PATH, 55, 21, false),
        (ANTHROPIC_PATH, 9, 14, true),
        (OPENAI_PATH, 1000, 1, true),
        (ANTHROPIC_PATH, 2, 2, false),
    ];
    for (i, (path, input, output, stream)) in traffic.into_iter().enumerate() {
        let on = gws[i % gws.len()];
        let answer = call(on, path, &key, &chat(input, output, stream), &[]).await;
        assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
        let text = String::from_utf8(answer.body.to_vec()).expect("utf-8");
        if stream {
            assert!(text.contains("data: "), "{text}");
        } else {
            let body: Value = serde_json::from_str(&text).expect("json");
            assert!(body["usage"].is_object(), "{body}");
        }
    }
    let input: u64 = traffic.iter().map(|t| t.1).sum();
    let output: u64 = traffic.iter().map(|t| t.2).sum();
    wait_for_usage(gw, &format!("keys/{key_id}"), (6, input, output)).await;
    wait_for_usage(gw, &format!("apps/{app}"), (6, input, output)).await;

    // The export's token columns.
    let today = scopegate::model::utc_date(scopegate::model::now_unix());
    let csv = gw
        .admin(
            Method::GET,
            &format!("/v1/usage/export?from={today}&to={today}&format=csv"),
            None,
        )
        .await;
    let csv = String::from_utf8(csv.body.to_vec()).expect("utf-8");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("date,app_id,key_id,requests,input_tokens,output_tokens")
    );
    assert_eq!(
        lines.collect::<Vec<_>>(),
        [format!("{today},{app},{key_id},6,{input},{output}")]
    );

    // Metrics: exact per route and direction; no response went without usage.
    let mut samples = Vec::new();
    for on in gws {
        samples.extend(scrape(on).await);
    }
    for route in [OPENAI_PATH, ANTHROPIC_PATH] {
        let on_route = traffic.iter().filter(|t| t.0 == route);
        let (input, output) = on_route.fold((0, 0), |(i, o), t| (i + t.1, o + t.2));
        assert_eq!(
            tokens_metric(&samples, route, &app, "input"),
            input as f64,
            "{route} input"
        );
        assert_eq!(
            tokens_metric(&samples, route, &app, "output"),
            output as f64,
            "{route} output"
        );
        assert_eq!(missing_metric(&samples, route), 0.0, "{route}");
    }
}

#[tokio::test]
async fn a_streaming_openai_request_gets_include_usage_and_keeps_the_rest() {
    let model = FakeModel::start().await;
    let gw = embedded_gateway(&model, "").await;
    let (_, key_id, key) = chat_key(&gw, app("streamer")).await;
    // Chunked by the client (no Content-Length): the edited body goes out with its new length.
    let mut body = chat(11, 4, true);
    body["stream_options"] = json!({"some_option": "kept"});
    body["temperature"] = json!(0.25);
    let answer = call(&gw, OPENAI_PATH, &key, &body, &[]).await;
    assert_eq!(answer.status, 200);
    let text = String::from_utf8(answer.body.to_vec()).expect("utf-8");
    assert!(
        text.contains(r#""usage":{"#),
        "the usage chunk reached the client: {text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let sent = model.last();
    let sent_json = sent.json();
    assert_eq!(sent_json["stream_options"]["include_usage"], true);
    assert_eq!(sent_json["stream_options"]["some_option"], "kept");
    assert_eq!(sent_json["temperature"], 0.25);
    assert_eq!(sent_json["messages"], body["messages"]);
    assert_eq!(
        sent.headers["content-length"].to_str().expect("length"),
        sent.body.len().to_string()
    );
    // The answer came uncompressed: the gateway asked for no encoding.
    let compressed = call(
        &gw,
        OPENAI_PATH,
        &key,
        &chat(1, 1, false),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(compressed.status, 200);
    assert!(model.last().headers.get("accept-encoding").is_none());
    // A non-streaming request goes out byte for byte.
    let plain = chat(3, 2, false).to_string();
    let answer = send(
        Method::POST,
        &gw.url(OPENAI_PATH),
        &[
            ("x-api-key", key.as_str()),
            ("content-type", "application/json"),
        ],
        Bytes::from(plain.clone()),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(model.last().body, Bytes::from(plain));
    wait_for_usage(&gw, &format!("keys/{key_id}"), (3, 11 + 1 + 3, 4 + 1 + 2)).await;
}

#[tokio::test]
async fn chunks_flow_unbuffered_and_a_hang_up_or_a_cut_counts_what_was_seen() {
    let model = FakeModel::start().await;
    let gw = embedded_gateway(&model, "").await;
    let (app, key_id, key) = chat_key(&gw, app("streams")).await;
    let headers = |extra: &'static str| {
        vec![
            ("x-api-key", key.clone()),
            ("content-type", "application/json".to_owned()),
            ("x-fake-hold", extra.to_owned()),
        ]
    };
    let as_refs = |h: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { h.clone() };
    let post = |body: Value, h: Vec<(&'static str, String)>| {
        let url = gw.url(ANTHROPIC_PATH);
        async move {
            let refs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
            Streamed::post(&url, &refs, &body.to_string()).await
        }
    };

    // Held after two content chunks: the client has message_start and both chunks while the
    // upstream has not finished.
    let mut held = post(chat(40, 6, true), as_refs(&headers("2"))).await;
    assert_eq!(held.status, 200);
    let mut seen = String::new();
    while !(seen.contains("message_start") && seen.matches("content_block_delta").count() >= 2) {
        let frame = held.next().await.expect("a frame").expect("data");
        seen.push_str(&String::from_utf8_lossy(&frame));
    }
    assert_eq!(
        model.finished(),
        0,
        "the first chunks came before the last was sent"
    );
    model.release();
    while let Some(frame) = held.next().await {
        seen.push_str(&String::from_utf8_lossy(&frame.expect("data")));
    }
    assert!(seen.contains("message_stop"), "{seen}");

    // Hung up after the first chunk: its input (message_start) and output so far are counted.
    let mut hang_up = post(chat(500, 50, true), as_refs(&headers("1"))).await;
    let mut first = String::new();
    while !first.contains("message_start") {
        let frame = hang_up.next().await.expect("a frame").expect("data");
        first.push_str(&String::from_utf8_lossy(&frame));
    }
    drop(hang_up);
    // Cut by the upstream after three chunks: no usage past message_start.
    let cut_headers = vec![
        ("x-api-key", key.clone()),
        ("content-type", "application/json".to_owned()),
        ("x-fake-cut", "3".to_owned()),
    ];
    let mut cut = post(chat(70, 9, true), cut_headers).await;
    while let Some(Ok(_)) = cut.next().await {}
    // An error answer: no usage at all.
    let refused = call(
        &gw,
        OPENAI_PATH,
        &key,
        &chat(5, 5, false),
        &[("x-fake-status", "429")],
    )
    .await;
    assert_eq!(refused.status, 429);

    // message_start says output 1 until the deltas' usage arrives.
    wait_for_usage(
        &gw,
        &format!("keys/{key_id}"),
        (4, 40 + 500 + 70, 6 + 1 + 1),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(&gw).await;
        let missing =
            missing_metric(&samples, ANTHROPIC_PATH) + missing_metric(&samples, OPENAI_PATH);
        if missing == 3.0 {
            assert_eq!(
                tokens_metric(&samples, ANTHROPIC_PATH, &app, "input"),
                610.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "missing: {missing}");
        sleep(Duration::from_millis(50)).await;
    }
    model.release();
}

/// Waits (bounded) until `gw` refuses a metered request of `key` with 429
/// token_quota_exceeded, probing with requests of 2 tokens each; the refusal and how many
/// probes were admitted before it (an instance admits until it has seen the crossing).
async fn wait_refused(gw: &TestGateway, key: &str) -> (common::http::Answer, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut admitted = 0;
    loop {
        let answer = call(gw, ANTHROPIC_PATH, key, &chat(1, 1, false), &[]).await;
        if answer.status == 429 {
            return (answer, admitted);
        }
        assert_eq!(answer.status, 200);
        admitted += 1;
        assert!(Instant::now() < deadline, "never refused");
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_token_quota_crossing_is_refused_on_both_instances_and_apps_override_it() {
    let model = FakeModel::start().await;
    let redis = RedisServer::start();
    let quota = "token_quota:\n  per_day: 1000\n";
    let a = redis_gateway(&model, &redis, quota).await;
    let b = redis_gateway(&model, &redis, quota).await;
    let (_, key_id, key) = chat_key(&a, app("capped")).await;

    // 300 tokens a request: three leave 900 used, the fourth is admitted and crosses.
    for gw in [&a, &b, &a, &b] {
        let answer = call(gw, OPENAI_PATH, &key, &chat(200, 100, false), &[]).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.headers["x-token-quota-limit"], "1000");
    }
    let (refused, probes_b) = wait_refused(&b, &key).await;
    assert_eq!(refused.error_code(), "token_quota_exceeded");
    assert_eq!(refused.headers["x-token-quota-limit"], "1000");
    assert_eq!(refused.headers["x-token-quota-remaining"], "0");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert_eq!(
        refused.headers["x-token-quota-reset"],
        refused.headers["retry-after"]
    );
    // The instance that did not count the crossing refuses too, within the flush interval.
    let started = Instant::now();
    let (on_a, probes_a) = wait_refused(&a, &key).await;
    eprintln!(
        "instance A refused {:?} after B; probes admitted before the crossing was seen: {probes_b} on B, {probes_a} on A",
        started.elapsed()
    );
    assert_eq!(on_a.error_code(), "token_quota_exceeded");
    // Unmetered routes pay nothing for the token quota: forwarded (the fake has no such path).
    let free = call(&a, "/v1/unmetered/messages", &key, &chat(1, 1, false), &[]).await;
    assert_eq!(free.status, 404);
    assert_eq!(model.last().path, "/v1/unmetered/messages");
    let view = a
        .admin(Method::GET, &format!("/v1/keys/{key_id}/quota"), None)
        .await
        .json();
    assert_eq!(view["tokens"]["per_day"]["limit"], 1000);
    // What passed the limit: the crossing request's 200 over, plus the probes each instance
    // admitted before it had seen the crossing (2 tokens each), counted exactly.
    assert_eq!(
        view["tokens"]["per_day"]["used"],
        1200 + 2 * (probes_a + probes_b)
    );
    assert_eq!(view["tokens"]["per_day"]["remaining"], 0);
    assert_eq!(view["tokens"]["per_minute"], Value::Null);

    // An app's own token quota wins over the default: a minute of 50 is crossed by one request.
    let own = json!({"name": "tight", "scopes": ["chat"], "token_quota": {"per_minute": 50}});
    let (tight_app, _, tight) = chat_key(&b, own).await;
    let first = call(&a, ANTHROPIC_PATH, &tight, &chat(60, 10, false), &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-token-quota-limit"], "50");
    let (refused, _) = wait_refused(&b, &tight).await;
    assert_eq!(refused.headers["x-token-quota-limit"], "50");
    let reset: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&reset), "{reset}");
    // Back to the default (1000 a day, 70 used): admitted again once the change reaches b.
    let patch = a
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{tight_app}"),
            Some(json!({"token_quota": null})),
        )
        .await;
    assert_eq!(patch.status, 200, "{:?}", patch.body);
    assert_eq!(patch.json()["token_quota"], Value::Null);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = call(&b, ANTHROPIC_PATH, &tight, &chat(1, 1, false), &[]).await;
        if answer.status == 200 {
            assert_eq!(answer.headers["x-token-quota-limit"], "1000");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused: {:?}",
            answer.body
        );
        sleep(Duration::from_millis(20)).await;
    }
    // Validation: a window of 0 and an empty quota are refused.
    for bad in [json!({"per_day": 0}), json!({})] {
        let answer = a
            .admin(
                Method::PATCH,
                &format!("/v1/apps/{tight_app}"),
                Some(json!({"token_quota": bad})),
            )
            .await;
        assert_eq!(answer.status, 422, "{bad}: {:?}", answer.body);
    }
}

#[tokio::test]
async fn the_overshoot_is_at_most_what_was_in_flight_at_the_crossing() {
    let model = FakeModel::start().await;
    let gw = embedded_gateway(&model, "token_quota:\n  per_day: 1000\n").await;
    let (_, key_id, key) = chat_key(&gw, app("burst")).await;
    // Five streams of 300 tokens admitted together (nothing used yet), held mid-stream.
    let mut streams = Vec::new();
    for _ in 0..5 {
        let h = [
            ("x-api-key", key.as_str()),
            ("content-type", "application/json"),
            ("x-fake-hold", "1"),
        ];
        let body = chat(200, 100, true).to_string();
        let s = Streamed::post(&gw.url(ANTHROPIC_PATH), &h, &body).await;
        assert_eq!(s.status, 200);
        streams.push(s);
    }
    for _ in 0..5 {
        model.release();
    }
    for mut s in streams {
        while let Some(frame) = s.next().await {
            frame.expect("data");
        }
    }
    let (refused, probes) = wait_refused(&gw, &key).await;
    assert_eq!(refused.error_code(), "token_quota_exceeded");
    // One instance knows at once what it counted.
    assert_eq!(probes, 0);
    let view = gw
        .admin(Method::GET, &format!("/v1/keys/{key_id}/quota"), None)
        .await
        .json();
    // All five completed: 1500 used, the overshoot (500) within the five in flight (1500).
    assert_eq!(view["tokens"]["per_day"]["used"], 1500);
}
