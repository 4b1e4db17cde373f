//! The token meter on hostile upstream bytes: never panics, and the answer does not depend on
//! how the body is cut into frames. `include_usage` on hostile request bodies: never panics,
//! and an edit of a JSON body is JSON that asks for usage.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use scopegate::meter::{include_usage, Provider, ResponseMeter};

fn run(provider: Provider, media: &'static str, frames: &[&[u8]]) -> (Option<(u64, u64)>, bool) {
    let content_type = HeaderValue::from_static(media);
    let mut meter = ResponseMeter::new(provider, Some(&content_type), None);
    for frame in frames {
        meter.observe(frame);
    }
    meter.finish();
    (
        meter.tokens().map(|t| (t.input, t.output)),
        meter.complete(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let provider = if choice & 1 == 0 {
        Provider::OpenAi
    } else {
        Provider::Anthropic
    };
    let media = if choice & 2 == 0 {
        "application/json"
    } else {
        "text/event-stream"
    };
    let cut = usize::from(choice >> 2) * body.len() / 64;
    let whole = run(provider, media, &[body]);
    let split = run(provider, media, &[&body[..cut], &body[cut..]]);
    assert_eq!(whole, split, "framing changed the count");
    if let Some(edited) = include_usage(body) {
        let value: serde_json::Value =
            serde_json::from_slice(&edited).expect("edited body is JSON");
        assert_eq!(value["stream_options"]["include_usage"], true);
    }
});
