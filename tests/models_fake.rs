//! The fake model providers, driven directly with the tests' HTTP client, and their bodies fed
//! through `scopegate::meter::ResponseMeter`: the fakes and the meter agree on every shape
//! before a gateway stands between them.

mod common;

use common::http::send;
use common::models::{FakeModel, Streamed, ANTHROPIC_PATH, OPENAI_PATH};
use http::{HeaderMap, Method, StatusCode};
use scopegate::meter::{include_usage, Provider, ResponseMeter, Tokens};
use serde_json::{json, Value};

fn meter(provider: Provider, headers: &HeaderMap) -> ResponseMeter {
    ResponseMeter::new(
        provider,
        headers.get("content-type"),
        headers.get("content-encoding"),
    )
}

fn tokens(input: u64, output: u64) -> Option<Tokens> {
    Some(Tokens { input, output })
}

/// Reads the rest of `answer` into `meter`, frame by frame, and finishes the meter as the
/// gateway will; the bytes read and whether the body ended cleanly.
async fn drain(answer: &mut Streamed, meter: &mut ResponseMeter) -> (String, bool) {
    let mut seen = Vec::new();
    let mut clean = true;
    while let Some(frame) = answer.next().await {
        match frame {
            Ok(data) => {
                meter.observe(&data);
                seen.extend_from_slice(&data);
            }
            Err(_) => {
                clean = false;
                break;
            }
        }
    }
    meter.finish();
    (String::from_utf8_lossy(&seen).into_owned(), clean)
}

/// Reads frames into `meter` until the bytes read so far contain `needle`.
async fn read_until(answer: &mut Streamed, meter: &mut ResponseMeter, needle: &str) -> String {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let data = answer.next().await.expect("more frames").expect("a frame");
        meter.observe(&data);
        seen.extend_from_slice(&data);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn openai_json_counts_message_words_in_and_max_tokens_out() {
    let fake = FakeModel::start().await;
    let request = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one two  three"}]},
        ],
        "max_tokens": 5,
    });
    let url = format!("{}{OPENAI_PATH}", fake.url());
    let answer = send(
        Method::POST,
        &url,
        &[("authorization", "Bearer sk-fake")],
        request.to_string(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["choices"][0]["message"]["content"], "w0 w1 w2 w3 w4");

    let mut meter = meter(Provider::OpenAi, &answer.headers);
    meter.observe(&answer.body);
    assert_eq!(meter.tokens(), tokens(5, 5));
    assert!(meter.complete());

    let seen = fake.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", OPENAI_PATH)
    );
    assert_eq!(seen.headers["authorization"], "Bearer sk-fake");
    assert_eq!(seen.json(), request);
}

#[tokio::test]
async fn openai_stream_has_usage_only_when_the_request_asks_and_include_usage_asks() {
    let fake = FakeModel::start().await;
    let url = format!("{}{OPENAI_PATH}", fake.url());
    let request = json!({
        "model": "gpt-4o",
        "stream": true,
        "messages": [{"role": "user", "content": "a b c d"}],
        "max_tokens": 3,
    })
    .to_string();

    let mut plain = Streamed::post(&url, &[], &request).await;
    assert_eq!(plain.headers["content-type"], "text/event-stream");
    let mut unmetered = meter(Provider::OpenAi, &plain.headers);
    let (text, clean) = drain(&mut plain, &mut unmetered).await;
    assert!(clean);
    assert_eq!(text.matches("\"content\":\" w").count(), 2, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("usage"), "{text}");
    assert_eq!(unmetered.tokens(), None);
    assert!(!unmetered.complete());

    let edited = include_usage(request.as_bytes()).expect("a stream without include_usage");
    let edited = String::from_utf8(edited).expect("utf-8");
    let mut asked = Streamed::post(&url, &[], &edited).await;
    let mut metered = meter(Provider::OpenAi, &asked.headers);
    let (text, clean) = drain(&mut asked, &mut metered).await;
    assert!(clean);
    // Every chunk says `"usage":null`, the last one the counts.
    assert_eq!(text.matches("\"usage\":null").count(), 5, "{text}");
    assert_eq!(metered.tokens(), tokens(4, 3));
    assert!(metered.complete());
    assert_eq!(fake.last().json()["stream_options"]["include_usage"], true);
    assert_eq!(fake.finished(), 2);
}

#[tokio::test]
async fn anthropic_json_and_stream_agree_with_the_meter() {
    let fake = FakeModel::start().await;
    let url = format!("{}{ANTHROPIC_PATH}", fake.url());
    let json_request = json!({
        "model": "claude",
        "system": "you are terse",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
    });
    let answer = send(Method::POST, &url, &[], json_request.to_string()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json()["usage"],
        json!({"input_tokens": 5, "output_tokens": 4})
    );
    let mut metered = meter(Provider::Anthropic, &answer.headers);
    metered.observe(&answer.body);
    assert_eq!(metered.tokens(), tokens(5, 4));
    assert!(metered.complete());

    // metadata.input_tokens sets the input count outright.
    let stream_request = json!({
        "model": "claude",
        "stream": true,
        "metadata": {"input_tokens": 100000},
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6,
    });
    let mut streamed = Streamed::post(&url, &[], &stream_request.to_string()).await;
    let mut metered = meter(Provider::Anthropic, &streamed.headers);
    let (text, clean) = drain(&mut streamed, &mut metered).await;
    assert!(clean);
    assert_eq!(
        text.matches("event: content_block_delta").count(),
        6,
        "{text}"
    );
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    assert_eq!(metered.tokens(), tokens(100000, 6));
    assert!(metered.complete());
}

#[tokio::test]
async fn a_held_stream_sends_its_first_chunk_before_the_rest_is_released() {
    let fake = FakeModel::start().await;
    let url = format!("{}{OPENAI_PATH}", fake.url());
    let request = json!({
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 3,
    })
    .to_string();
    let mut answer = Streamed::post(&url, &[("x-fake-hold", "1")], &request).await;
    let mut metered = meter(Provider::OpenAi, &answer.headers);
    let first = read_until(&mut answer, &mut metered, "\"content\":\"w0\"").await;
    // The fake waits for the release: nothing past the first content chunk can have come.
    assert!(!first.contains("w1"), "{first}");
    assert_eq!(metered.tokens(), None);
    assert!(!metered.complete());
    assert_eq!(fake.finished(), 0);

    fake.release();
    let (rest, clean) = drain(&mut answer, &mut metered).await;
    assert!(clean);
    assert!(rest.contains("w2"), "{rest}");
    assert_eq!(metered.tokens(), tokens(1, 3));
    assert!(metered.complete());
    assert_eq!(fake.finished(), 1);
}

#[tokio::test]
async fn a_held_json_answer_sends_all_but_its_usage_first() {
    let fake = FakeModel::start().await;
    let url = format!("{}{ANTHROPIC_PATH}", fake.url());
    let request = json!({"messages": [{"role": "user", "content": "x y"}], "max_tokens": 2});
    let mut answer = Streamed::post(&url, &[("x-fake-hold", "0")], &request.to_string()).await;
    assert_eq!(answer.headers["content-type"], "application/json");
    let mut metered = meter(Provider::Anthropic, &answer.headers);
    let first = read_until(&mut answer, &mut metered, "\"stop_reason\"").await;
    assert!(!first.contains("usage"), "{first}");
    assert_eq!(metered.tokens(), None);

    fake.release();
    let (_, clean) = drain(&mut answer, &mut metered).await;
    assert!(clean);
    assert_eq!(metered.tokens(), tokens(2, 2));
    assert!(metered.complete());
}

#[tokio::test]
async fn a_cut_stream_ends_in_an_error_without_usage() {
    let fake = FakeModel::start().await;
    // Anthropic: message_start came, so input is known, output only message_start's 1.
    let url = format!("{}{ANTHROPIC_PATH}", fake.url());
    let request = json!({"stream": true, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 5});
    let mut answer = Streamed::post(&url, &[("x-fake-cut", "2")], &request.to_string()).await;
    let mut metered = meter(Provider::Anthropic, &answer.headers);
    let (text, clean) = drain(&mut answer, &mut metered).await;
    assert!(!clean, "the body must end in an error: {text}");
    assert_eq!(
        text.matches("event: content_block_delta").count(),
        2,
        "{text}"
    );
    assert!(!text.contains("message_delta"), "{text}");
    assert_eq!(metered.tokens(), tokens(3, 1));
    assert!(!metered.complete());

    // OpenAI: no usage at all, though the request asked for it.
    let url = format!("{}{OPENAI_PATH}", fake.url());
    let request =
        json!({"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 5});
    let mut answer = Streamed::post(&url, &[("x-fake-cut", "1")], &request.to_string()).await;
    let mut metered = meter(Provider::OpenAi, &answer.headers);
    let (text, clean) = drain(&mut answer, &mut metered).await;
    assert!(!clean, "{text}");
    assert!(text.contains("\"content\":\"w0\""), "{text}");
    assert_eq!(metered.tokens(), None);
    assert_eq!(fake.finished(), 0);
}

#[tokio::test]
async fn a_status_answers_the_providers_error_shape_without_usage() {
    let fake = FakeModel::start().await;
    let request = json!({"stream": true, "max_tokens": 5}).to_string();
    for (path, provider) in [
        (OPENAI_PATH, Provider::OpenAi),
        (ANTHROPIC_PATH, Provider::Anthropic),
    ] {
        let url = format!("{}{path}", fake.url());
        let answer = send(
            Method::POST,
            &url,
            &[("x-fake-status", "429")],
            request.clone(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        let body = answer.json();
        match provider {
            Provider::OpenAi => assert_eq!(body["error"]["code"], "rate_limit_exceeded"),
            Provider::Anthropic => {
                assert_eq!(body["type"], "error");
                assert_eq!(body["error"]["type"], "rate_limit_error");
            }
        }
        let mut metered = meter(provider, &answer.headers);
        metered.observe(&answer.body);
        assert_eq!(metered.tokens(), None, "{path}");
        assert!(!metered.complete());
    }
    let unknown = send(Method::POST, &format!("{}/v1/other", fake.url()), &[], "{}").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let seen = fake.requests();
    assert_eq!(seen.len(), 3);
    let sent: Value = serde_json::from_str(&request).expect("JSON");
    assert_eq!((seen[0].json(), seen[1].json()), (sent.clone(), sent));
    assert_eq!(seen[2].path, "/v1/other");
}
