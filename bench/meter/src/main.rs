//! Throughput of scopegate's meter on sample bodies (release build, outside the crate).
#[path = "../../../src/meter/mod.rs"]
#[allow(dead_code, unreachable_pub)]
mod meter;
use meter::{Provider, ResponseMeter};
use std::time::Instant;

fn run(name: &str, provider: Provider, ct: &str, body: &[u8], frame: usize, rounds: usize) {
    let ct = http::HeaderValue::from_str(ct).unwrap();
    let start = Instant::now();
    let mut last = None;
    for _ in 0..rounds {
        let mut m = ResponseMeter::new(provider, Some(&ct), None);
        for f in body.chunks(frame) {
            m.observe(std::hint::black_box(f));
        }
        last = m.tokens();
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = (body.len() * rounds) as f64;
    println!("{name:<48} {:>8.0} MB/s  {:>8.1} us/body ({} bytes, frames of {frame})  -> {:?}",
        bytes / secs / 1e6, secs / rounds as f64 * 1e6, body.len(), last);
}

fn main() {
    let mut openai = String::new();
    for i in 0..1000 {
        openai.push_str(&format!("data: {{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"));
    }
    openai.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1000,\"total_tokens\":1010}}\n\ndata: [DONE]\n\n");
    let mut anthropic = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n");
    for i in 0..1000 {
        anthropic.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" token{i}\"}}}}\n\n"));
    }
    anthropic.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":1000}}\n\n");
    let content = "lorem ipsum \\\"quoted\\\" dolor ".repeat(40_000);
    let json = format!("{{\"id\":\"c\",\"choices\":[{{\"message\":{{\"content\":\"{content}\"}}}}],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":20}}}}");
    let small = "{\"id\":\"c\",\"choices\":[{\"message\":{\"content\":\"hi\"}}],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20}}";
    let per_event = openai.len() / 1001;
    run("openai SSE, 1000 chunks with usage:null", Provider::OpenAi, "text/event-stream", openai.as_bytes(), per_event, 300);
    run("openai SSE, same, 16 KiB frames", Provider::OpenAi, "text/event-stream", openai.as_bytes(), 16384, 300);
    run("anthropic SSE, 1000 deltas", Provider::Anthropic, "text/event-stream", anthropic.as_bytes(), 16384, 300);
    run("openai JSON, 1.2 MB content, usage last", Provider::OpenAi, "application/json", json.as_bytes(), 16384, 30);
    let request = format!(
        "{{\"model\":\"gpt-4o\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "word ".repeat(200)
    );
    let start = Instant::now();
    let rounds = 20_000;
    for _ in 0..rounds {
        std::hint::black_box(meter::include_usage(std::hint::black_box(request.as_bytes())));
    }
    println!(
        "{:<48} {:>8.1} us/request ({} bytes)",
        "include_usage on a streaming request",
        start.elapsed().as_secs_f64() / rounds as f64 * 1e6,
        request.len()
    );
    run("openai JSON, small body, one frame", Provider::OpenAi, "application/json", small.as_bytes(), 4096, 200_000);
}
