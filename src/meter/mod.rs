//! Token metering for model backends: reads the token usage of one response as its body streams
//! past, and adds `stream_options.include_usage` to a streaming OpenAI request so its answer
//! carries usage at all.
//!
//! Owns only the reading: it never delays, holds or changes a response (it sees copies of the
//! frames' bytes and keeps at most one bounded piece of them), and knows nothing of keys,
//! quotas or metrics, which the caller does with [`ResponseMeter::tokens`].
//!
//! - [`lines`] splits a server-sent event stream into lines across frames;
//! - [`json_scan`] finds the top-level `"usage"` value of a JSON body across frames;
//! - [`usage`] reads the provider's usage objects and events into counts;
//! - [`request`] edits a streaming OpenAI request ([`include_usage`]).

mod json_scan;
mod lines;
mod request;
mod usage;

pub use self::request::include_usage;

use self::json_scan::TopLevelUsage;
use self::lines::LineSplitter;
use self::usage::Counts;
use http::HeaderValue;

/// The API shape a metered route's upstream speaks (`meter:` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// `openai`: chat completions (`prompt_tokens`/`completion_tokens`) and the Responses API
    /// (`input_tokens`/`output_tokens`, `response.completed` events).
    OpenAi,
    /// `anthropic`: messages (`input_tokens`/`output_tokens`; `message_start`/`message_delta`
    /// events). Input counts `cache_creation_input_tokens` and `cache_read_input_tokens` too.
    Anthropic,
}

impl Provider {
    /// The name as written in the config (`openai`, `anthropic`), e.g. for a label.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

/// Tokens one response used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt tokens (anthropic: with cache creation and cache reads added, see [`Provider`]).
    pub input: u64,
    /// Generated tokens.
    pub output: u64,
}

impl Tokens {
    /// Input plus output: what a token quota counts.
    pub fn total(self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// State of one response's metering. Cheap to create; does nothing for a body it cannot read.
#[derive(Debug)]
pub struct ResponseMeter {
    provider: Provider,
    reader: Reader,
    counts: Counts,
}

/// How the body is read, chosen once from the response's headers.
#[derive(Debug)]
enum Reader {
    /// A body the meter cannot read (another type, or compressed): nothing is looked at.
    Off,
    /// `application/json` or `…+json`: only the top-level `usage` value is kept.
    Json(TopLevelUsage),
    /// `text/event-stream`: `data:` lines that mention `"usage"` are parsed.
    Sse(LineSplitter),
}

impl ResponseMeter {
    /// `content_type`/`content_encoding`: the response's headers. `text/event-stream` → SSE mode;
    /// `application/json` (or `+json`) → JSON mode; anything else, or any Content-Encoding other
    /// than identity → nothing read.
    pub fn new(
        provider: Provider,
        content_type: Option<&HeaderValue>,
        content_encoding: Option<&HeaderValue>,
    ) -> ResponseMeter {
        let reader = if !is_identity(content_encoding) {
            Reader::Off
        } else {
            match media_type(content_type) {
                Some(Media::EventStream) => Reader::Sse(LineSplitter::default()),
                Some(Media::Json) => Reader::Json(TopLevelUsage::default()),
                None => Reader::Off,
            }
        };
        ResponseMeter {
            provider,
            reader,
            counts: Counts::default(),
        }
    }

    /// One body frame's bytes, in order. Never copies more than the bounded pieces it needs.
    pub fn observe(&mut self, data: &[u8]) {
        let provider = self.provider;
        let counts = &mut self.counts;
        match &mut self.reader {
            Reader::Off => {}
            Reader::Json(scanner) => {
                scanner.feed(data, |value| counts.read_json_usage(provider, value));
            }
            Reader::Sse(splitter) => {
                splitter.feed(data, |line| counts.read_sse_line(provider, line));
            }
        }
    }

    /// The body ended (its last frame was observed, or it was cut): a last event-stream line
    /// that came without its line end is read as if it had one (the SSE grammar would drop it,
    /// but the upstream did send that usage), and a JSON body cut after its whole `usage`
    /// value but before the value's end (`,` or `}`) is read too. Calling it again does nothing.
    pub fn finish(&mut self) {
        let provider = self.provider;
        let counts = &mut self.counts;
        match &mut self.reader {
            Reader::Off => {}
            Reader::Json(scanner) => {
                scanner.finish(|value| counts.read_json_usage(provider, value));
            }
            Reader::Sse(splitter) => {
                splitter.finish(|line| counts.read_sse_line(provider, line));
            }
        }
    }

    /// What was seen so far: `Some` once any usage was read (possibly partial, e.g. anthropic
    /// input from message_start but no message_delta yet), `None` if none.
    pub fn tokens(&self) -> Option<Tokens> {
        self.counts.tokens()
    }

    /// Whether the usage is complete (openai: the usage object/chunk seen; anthropic: JSON
    /// usage, or in SSE both message_start and a message_delta with usage seen).
    pub fn complete(&self) -> bool {
        self.counts.complete(self.provider)
    }

    /// Whether this response's body is read at all (a JSON or event-stream body, uncompressed).
    pub fn reads_body(&self) -> bool {
        !matches!(self.reader, Reader::Off)
    }
}

/// The body types the meter reads.
enum Media {
    Json,
    EventStream,
}

/// The media type of a `Content-Type` value, parameters (`; charset=…`) ignored.
fn media_type(content_type: Option<&HeaderValue>) -> Option<Media> {
    let value = content_type?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("text/event-stream") {
        return Some(Media::EventStream);
    }
    let (kind, subtype) = essence.split_once('/')?;
    let json = subtype.eq_ignore_ascii_case("json")
        || subtype.len() > 5
            && subtype.as_bytes()[subtype.len() - 5..].eq_ignore_ascii_case(b"+json");
    (json && kind.eq_ignore_ascii_case("application")).then_some(Media::Json)
}

/// No `Content-Encoding`, or `identity`: the bytes are the body itself.
fn is_identity(content_encoding: Option<&HeaderValue>) -> bool {
    match content_encoding {
        None => true,
        Some(value) => value
            .to_str()
            .map(|v| v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity"))
            .unwrap_or(false),
    }
}

#[cfg(test)]
mod tests;
