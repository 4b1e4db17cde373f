//! The whole meter on sample bodies of both providers, split at every byte position.

use super::*;

const SSE: &str = "text/event-stream";
const JSON: &str = "application/json";

fn meter(provider: Provider, content_type: &str) -> ResponseMeter {
    let content_type = HeaderValue::from_str(content_type).expect("header value");
    ResponseMeter::new(provider, Some(&content_type), None)
}

fn metered(provider: Provider, content_type: &str, frames: &[&[u8]]) -> ResponseMeter {
    let mut meter = meter(provider, content_type);
    for frame in frames {
        meter.observe(frame);
    }
    meter
}

/// Reads `body` whole, in two frames cut at every position, and in 1-byte frames; each time
/// the result must be `tokens` and `complete`.
fn every_split(
    provider: Provider,
    content_type: &str,
    body: &str,
    tokens: Option<Tokens>,
    complete: bool,
) {
    let body = body.as_bytes();
    let check = |frames: &[&[u8]], how: &str| {
        let meter = metered(provider, content_type, frames);
        assert_eq!(meter.tokens(), tokens, "{how}");
        assert_eq!(meter.complete(), complete, "{how}");
    };
    check(&[body], "whole");
    for cut in 0..=body.len() {
        check(&[&body[..cut], &body[cut..]], &format!("cut at {cut}"));
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    check(&bytes, "1-byte frames");
}

/// `every_split` with the stream's lines ended by `\n`, `\r\n` and `\r`.
fn every_split_and_line_end(
    provider: Provider,
    stream: &str,
    tokens: Option<Tokens>,
    complete: bool,
) {
    for end in ["\n", "\r\n", "\r"] {
        let body = stream.replace('\n', end);
        every_split(provider, SSE, &body, tokens, complete);
    }
}

fn tokens(input: u64, output: u64) -> Option<Tokens> {
    Some(Tokens { input, output })
}

const OPENAI_CHAT_STREAM: &str = r#"data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}

data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"say \"usage\": {\"prompt_tokens\": 99}"},"finish_reason":null}],"usage":null}

data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage": null}

data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":4}}}

data: [DONE]

"#;

const OPENAI_RESPONSES_STREAM: &str = r#"event: response.created
data: {"type":"response.created","response":{"id":"r1","status":"in_progress","usage":null}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","item_id":"m1","delta":"Hi"}

event: response.completed
data: {"type":"response.completed","response":{"id":"r1","status":"completed","usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}}

"#;

const ANTHROPIC_START: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"m1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":3,"cache_read_input_tokens":4,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a \"usage\":{\"output_tokens\":500}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

"#;

const ANTHROPIC_END: &str = r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":10}}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

"#;

#[test]
fn openai_chat_stream_counts_the_final_usage_chunk() {
    every_split_and_line_end(Provider::OpenAi, OPENAI_CHAT_STREAM, tokens(12, 7), true);
}

#[test]
fn openai_chat_stream_without_usage_counts_nothing() {
    let without: String = OPENAI_CHAT_STREAM
        .split("\n\n")
        .filter(|event| !event.contains("\"prompt_tokens\":12"))
        .map(|event| format!("{event}\n\n"))
        .collect();
    every_split(Provider::OpenAi, SSE, &without, None, false);
}

#[test]
fn openai_responses_stream_counts_response_completed() {
    every_split_and_line_end(
        Provider::OpenAi,
        OPENAI_RESPONSES_STREAM,
        tokens(36, 87),
        true,
    );
}

#[test]
fn anthropic_stream_counts_start_input_and_the_last_delta_output() {
    let stream = format!("{ANTHROPIC_START}{ANTHROPIC_END}");
    // Input is input_tokens + cache_creation_input_tokens + cache_read_input_tokens.
    every_split_and_line_end(Provider::Anthropic, &stream, tokens(32, 15), true);
}

#[test]
fn anthropic_stream_cut_before_message_delta_is_partial() {
    every_split_and_line_end(Provider::Anthropic, ANTHROPIC_START, tokens(32, 1), false);
}

#[test]
fn anthropic_message_delta_input_tokens_replace_the_start_ones() {
    let stream = format!(
        "{ANTHROPIC_START}event: message_delta\ndata: {}\n\n",
        r#"{"type":"message_delta","delta":{},"usage":{"input_tokens":30,"cache_read_input_tokens":null,"output_tokens":9}}"#
    );
    every_split(
        Provider::Anthropic,
        SSE,
        &stream,
        tokens(30 + 3 + 4, 9),
        true,
    );
}

#[test]
fn a_stream_read_as_the_other_provider_reads_only_its_shape() {
    // An anthropic stream metered as openai: message_delta's top-level usage reads as output.
    let stream = format!("{ANTHROPIC_START}{ANTHROPIC_END}");
    let meter = metered(Provider::OpenAi, SSE, &[stream.as_bytes()]);
    assert_eq!(meter.tokens(), tokens(0, 15));
    // An openai stream metered as anthropic: no message_start, so never complete.
    let meter = metered(Provider::Anthropic, SSE, &[OPENAI_CHAT_STREAM.as_bytes()]);
    assert!(!meter.complete());
}

#[test]
fn sse_data_without_space_and_comments_are_read_as_the_grammar_says() {
    let stream = ": keep-alive\n\nretry: 10\nid: 1\ndata:{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
    every_split(Provider::OpenAi, SSE, stream, tokens(1, 2), true);
    // `data: ` with two spaces keeps one: still JSON.
    let stream = "data:  {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n";
    every_split(Provider::OpenAi, SSE, stream, tokens(3, 4), true);
    // Not a data field.
    let stream = "datum: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n";
    every_split(Provider::OpenAi, SSE, stream, None, false);
}

#[test]
fn an_oversize_sse_line_is_skipped_and_the_next_usage_read() {
    let huge = "x".repeat(lines::MAX_LINE);
    let body = format!(
        "data: {{\"usage\":{{\"prompt_tokens\":500,\"completion_tokens\":500}},\"pad\":\"{huge}\"}}\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":6}}}}\n\n"
    );
    for size in [1, 4096, 16 * 1024 + 7, body.len()] {
        let frames: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
        let meter = metered(Provider::OpenAi, SSE, &frames);
        assert_eq!(meter.tokens(), tokens(5, 6), "frames of {size}");
    }
}

#[test]
fn openai_json_usage_last_first_or_absent() {
    let last = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"The key \"usage\": {\"prompt_tokens\": 1} and \\ backslash"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"completion_tokens_details":{"reasoning_tokens":0}}}"#;
    every_split(Provider::OpenAi, JSON, last, tokens(9, 12), true);
    let first = "\n {\"usage\" :\t{\"prompt_tokens\":3,\"completion_tokens\":4} , \"choices\":[{\"usage\":{\"prompt_tokens\":100}}]}";
    every_split(Provider::OpenAi, JSON, first, tokens(3, 4), true);
    let absent = r#"{"id":"c1","choices":[{"message":{"content":"no usage"}}]}"#;
    every_split(Provider::OpenAi, JSON, absent, None, false);
}

#[test]
fn openai_responses_json_names_are_aliases() {
    let body = r#"{"id":"r1","object":"response","output":[],"usage":{"input_tokens":8,"output_tokens":2,"total_tokens":10}}"#;
    every_split(Provider::OpenAi, JSON, body, tokens(8, 2), true);
}

#[test]
fn json_usage_nested_or_inside_strings_does_not_count() {
    let nested = r#"{"data":{"usage":{"prompt_tokens":1,"completion_tokens":1}},"list":[{"usage":{"prompt_tokens":2}}],"x":[["usage",{"usage":{"prompt_tokens":3}}]]}"#;
    every_split(Provider::OpenAi, JSON, nested, None, false);
    let in_strings = r#"{"a":"\"usage\":{\"prompt_tokens\":5}","usage\"":{"prompt_tokens":6},"\\usage":{"prompt_tokens":7},"b":"usage","usages":{"prompt_tokens":8},"c":"\\"}"#;
    every_split(Provider::OpenAi, JSON, in_strings, None, false);
    // A value "usage" is not a key, and the real key after it still counts.
    let value_then_key =
        r#"{"k":"usage","v":["usage"],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    every_split(Provider::OpenAi, JSON, value_then_key, tokens(1, 2), true);
}

#[test]
fn json_usage_null_non_object_or_unreadable_counts_nothing() {
    for body in [
        r#"{"usage":null}"#,
        r#"{"usage":17}"#,
        r#"{"usage":{"prompt_tokens":-1}}"#,
        r#"{"usage":{}}"#,
        r#"[{"usage":{"prompt_tokens":1}}]"#,
        r#"{"error":{"message":"rate limited","type":"rate_limit_error"}}"#,
        "",
    ] {
        every_split(Provider::OpenAi, JSON, body, None, false);
    }
}

#[test]
fn json_usage_past_the_bound_is_given_up() {
    let pad = "p".repeat(json_scan::MAX_USAGE);
    let body = format!(r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":2,"pad":"{pad}"}}}}"#);
    for size in [1, 1000, body.len()] {
        let frames: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
        let meter = metered(Provider::OpenAi, JSON, &frames);
        assert_eq!(meter.tokens(), None, "frames of {size}");
    }
    // Just under the bound is read.
    let pad = "p".repeat(json_scan::MAX_USAGE - 100);
    let body = format!(r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":2,"pad":"{pad}"}}}}"#);
    let frames: Vec<&[u8]> = body.as_bytes().chunks(999).collect();
    assert_eq!(
        metered(Provider::OpenAi, JSON, &frames).tokens(),
        tokens(1, 2)
    );
}

#[test]
fn json_usage_twice_the_last_wins() {
    let body = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"x":0,"usage":{"prompt_tokens":2,"completion_tokens":3}}"#;
    every_split(Provider::OpenAi, JSON, body, tokens(2, 3), true);
}

#[test]
fn anthropic_json_counts_cache_tokens_into_input() {
    let body = r#"{"id":"m1","type":"message","role":"assistant","content":[{"type":"text","text":"hi \"usage\""}],"stop_reason":"end_turn","usage":{"input_tokens":20,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":7,"service_tier":"standard"}}"#;
    every_split(Provider::Anthropic, JSON, body, tokens(125, 7), true);
    let plain = r#"{"usage":{"input_tokens":20,"output_tokens":7}}"#;
    every_split(Provider::Anthropic, JSON, plain, tokens(20, 7), true);
}

#[test]
fn anthropic_error_has_no_usage() {
    let json = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    every_split(Provider::Anthropic, JSON, json, None, false);
    let sse = format!("event: error\ndata: {json}\n\n");
    every_split(Provider::Anthropic, SSE, &sse, None, false);
}

#[test]
fn the_headers_choose_what_is_read() {
    let usage = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
    let read = |content_type: Option<&str>, encoding: Option<&str>| {
        let content_type = content_type.map(|v| HeaderValue::from_str(v).expect("value"));
        let encoding = encoding.map(|v| HeaderValue::from_str(v).expect("value"));
        let mut meter =
            ResponseMeter::new(Provider::OpenAi, content_type.as_ref(), encoding.as_ref());
        meter.observe(usage);
        meter.observe(b"\n");
        (meter.reads_body(), meter.tokens().is_some())
    };
    for json in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/vnd.api+json",
        " application/problem+json ;x=y",
    ] {
        assert_eq!(read(Some(json), None), (true, true), "{json}");
        assert_eq!(read(Some(json), Some("identity")), (true, true), "{json}");
    }
    assert_eq!(
        read(Some("text/event-stream; charset=utf-8"), None),
        (true, false)
    );
    for other in [
        "text/plain",
        "application/jsonl",
        "text/json",
        "+json",
        "json",
    ] {
        assert_eq!(read(Some(other), None), (false, false), "{other}");
    }
    assert_eq!(read(None, None), (false, false));
    for encoding in ["gzip", "br", "identity, gzip"] {
        assert_eq!(
            read(Some("application/json"), Some(encoding)),
            (false, false),
            "{encoding}"
        );
    }
}

#[test]
fn provider_names_in_config() {
    let openai: Provider = serde_json::from_str("\"openai\"").expect("openai");
    let anthropic: Provider = serde_json::from_str("\"anthropic\"").expect("anthropic");
    assert_eq!((openai, anthropic), (Provider::OpenAi, Provider::Anthropic));
    assert!(serde_json::from_str::<Provider>("\"open_ai\"").is_err());
}

#[test]
fn finish_reads_a_last_usage_line_without_its_line_end() {
    let body = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}";
    for cut in 0..=body.len() {
        let mut meter = meter(Provider::OpenAi, SSE);
        meter.observe(&body.as_bytes()[..cut]);
        meter.observe(&body.as_bytes()[cut..]);
        assert_eq!(meter.tokens(), None, "cut at {cut}");
        meter.finish();
        assert_eq!(meter.tokens(), tokens(2, 3), "cut at {cut}");
        assert!(meter.complete());
    }
}

#[test]
fn finish_reads_a_whole_json_usage_of_a_cut_body_and_nothing_partial() {
    let whole = br#"{"usage":{"prompt_tokens":2,"completion_tokens":3} "#;
    let mut cut_after_usage = meter(Provider::OpenAi, JSON);
    cut_after_usage.observe(whole);
    assert_eq!(cut_after_usage.tokens(), None);
    cut_after_usage.finish();
    assert_eq!(cut_after_usage.tokens(), tokens(2, 3));
    cut_after_usage.finish();
    assert_eq!(cut_after_usage.tokens(), tokens(2, 3));
    // Cut inside the usage value (up to just before its closing brace): nothing.
    for cut in 10..whole.len() - 1 {
        let mut meter = meter(Provider::OpenAi, JSON);
        meter.observe(&whole[..cut]);
        meter.finish();
        assert_eq!(meter.tokens(), None, "cut at {cut}");
    }
}

#[test]
fn names_and_totals() {
    assert_eq!(Provider::OpenAi.as_str(), "openai");
    assert_eq!(Provider::Anthropic.as_str(), "anthropic");
    assert_eq!(
        Tokens {
            input: 3,
            output: 4
        }
        .total(),
        7
    );
    assert_eq!(
        Tokens {
            input: u64::MAX,
            output: 4
        }
        .total(),
        u64::MAX
    );
}
