//! Reads the providers' usage objects and stream events into token counts.
//!
//! OpenAI (chat completions and the Responses API): input is `prompt_tokens` (or
//! `input_tokens`), output is `completion_tokens` (or `output_tokens`); cached prompt tokens
//! are a part of these already (`*_tokens_details.cached_tokens`), so they are not added. In a
//! stream, the usage is the final chunk's top-level `usage` (chat, sent only when the request
//! asked `stream_options.include_usage`) or `response.usage` of `response.completed`
//! (Responses API); a later usage replaces an earlier one.
//!
//! Anthropic (messages): input is `input_tokens` plus `cache_creation_input_tokens` plus
//! `cache_read_input_tokens` (these are billed input the API reports apart from
//! `input_tokens`), output is `output_tokens`. In a stream, `message_start` carries
//! `message.usage` (input, and a first output count), and each `message_delta` a top-level
//! cumulative `usage` whose fields, where present, replace the earlier ones (the last one wins).

use super::{Provider, Tokens};
use memchr::memmem::Finder;
use serde::Deserialize;
use std::sync::LazyLock;

/// The key of a usage object, quotes included.
const USAGE_KEY: &[u8] = b"\"usage\"";

/// The fields of a `usage` object we read; every other field is ignored.
#[derive(Debug, Default, Deserialize)]
struct Usage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

/// An object that may hold a `usage` (anthropic's `message`, openai's `response`).
#[derive(Debug, Deserialize)]
struct HasUsage {
    usage: Option<Usage>,
}

/// The parts of an openai stream event (`data:` JSON) that can carry usage.
#[derive(Debug, Deserialize)]
struct OpenAiEvent {
    /// Chat completions' final chunk.
    usage: Option<Usage>,
    /// The Responses API's `response.completed` (and its siblings).
    response: Option<HasUsage>,
}

/// The parts of an anthropic stream event (`data:` JSON) that can carry usage.
#[derive(Debug, Deserialize)]
struct AnthropicEvent {
    /// `message_delta`.
    usage: Option<Usage>,
    /// `message_start`.
    message: Option<HasUsage>,
}

/// What one response's usage said so far.
#[derive(Debug, Default)]
pub(super) struct Counts {
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    output: Option<u64>,
    /// A whole usage object was read (openai anything; anthropic JSON body).
    whole: bool,
    /// anthropic stream: `message_start`'s usage was read.
    started: bool,
    /// anthropic stream: a `message_delta` usage with `output_tokens` was read.
    delta: bool,
}

impl Counts {
    /// The raw value of a JSON body's top-level `usage` (`null` or unreadable: nothing).
    pub(super) fn read_json_usage(&mut self, provider: Provider, value: &[u8]) {
        if let Ok(Some(usage)) = serde_json::from_slice::<Option<Usage>>(value) {
            if self.merge(provider, &usage) {
                self.whole = true;
            }
        }
    }

    /// One line of an event stream; only `data:` lines that mention a non-null `"usage"` are
    /// parsed, so a content chunk costs a substring search.
    pub(super) fn read_sse_line(&mut self, provider: Provider, line: &[u8]) {
        let Some(data) = data_field(line) else {
            return;
        };
        if !mentions_usage(data) {
            return;
        }
        match provider {
            Provider::OpenAi => {
                let Ok(event) = serde_json::from_slice::<OpenAiEvent>(data) else {
                    return;
                };
                let usage = event.usage.or(event.response.and_then(|r| r.usage));
                if let Some(usage) = usage {
                    if self.merge(provider, &usage) {
                        self.whole = true;
                    }
                }
            }
            Provider::Anthropic => {
                let Ok(event) = serde_json::from_slice::<AnthropicEvent>(data) else {
                    return;
                };
                if let Some(usage) = event.message.and_then(|m| m.usage) {
                    if self.merge(provider, &usage) {
                        self.started = true;
                    }
                }
                if let Some(usage) = event.usage {
                    self.merge(provider, &usage);
                    if usage.output_tokens.is_some() {
                        self.delta = true;
                    }
                }
            }
        }
    }

    /// Takes the fields `usage` has (each replaces the earlier value); whether it had any.
    fn merge(&mut self, provider: Provider, usage: &Usage) -> bool {
        let (input, output) = match provider {
            Provider::OpenAi => (
                usage.prompt_tokens.or(usage.input_tokens),
                usage.completion_tokens.or(usage.output_tokens),
            ),
            Provider::Anthropic => {
                replace(&mut self.cache_creation, usage.cache_creation_input_tokens);
                replace(&mut self.cache_read, usage.cache_read_input_tokens);
                (usage.input_tokens, usage.output_tokens)
            }
        };
        replace(&mut self.input, input);
        replace(&mut self.output, output);
        input.is_some()
            || output.is_some()
            || provider == Provider::Anthropic
                && (usage.cache_creation_input_tokens.is_some()
                    || usage.cache_read_input_tokens.is_some())
    }

    pub(super) fn tokens(&self) -> Option<Tokens> {
        if self.input.is_none()
            && self.output.is_none()
            && self.cache_creation.is_none()
            && self.cache_read.is_none()
        {
            return None;
        }
        let input = [self.input, self.cache_creation, self.cache_read]
            .into_iter()
            .flatten()
            .fold(0u64, u64::saturating_add);
        Some(Tokens {
            input,
            output: self.output.unwrap_or(0),
        })
    }

    pub(super) fn complete(&self, provider: Provider) -> bool {
        match provider {
            Provider::OpenAi => self.whole,
            Provider::Anthropic => self.whole || self.started && self.delta,
        }
    }
}

fn replace(slot: &mut Option<u64>, value: Option<u64>) {
    if value.is_some() {
        *slot = value;
    }
}

/// The value of a `data` field line (`data:` then one optional space), or `None` for any
/// other line. `[DONE]` is no JSON and never mentions usage, so it needs no case of its own.
fn data_field(line: &[u8]) -> Option<&[u8]> {
    let value = line.strip_prefix(b"data")?;
    match value {
        [] => Some(value),
        [b':', b' ', rest @ ..] => Some(rest),
        [b':', rest @ ..] => Some(rest),
        _ => None,
    }
}

/// Whether `data` has a `"usage"` key whose value is not `null`. OpenAI sends `"usage":null`
/// in every chunk of a stream that asked for usage, so this keeps those from being parsed. A
/// `"usage"` inside a string is written `\"usage\"` and does not match; a false match is only
/// a wasted parse, as the parser decides.
fn mentions_usage(data: &[u8]) -> bool {
    static FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(USAGE_KEY));
    FINDER.find_iter(data).any(|at| {
        let after = &data[at + USAGE_KEY.len()..];
        let after = trim_start(after);
        let Some(after) = after.strip_prefix(b":") else {
            return true;
        };
        !trim_start(after).starts_with(b"null")
    })
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}
