//! Token metering (placeholder until the meter lands): which provider's usage shape a route reads.

/// Whose response shape a metered route reads its token counts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[serde(rename = "openai")]
    OpenAi,
    Anthropic,
}

/// Token counts of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
}

/// Placeholder: reads nothing yet.
#[derive(Debug)]
pub struct ResponseMeter {
    provider: Provider,
}

impl ResponseMeter {
    pub fn new(
        provider: Provider,
        _content_type: Option<&http::HeaderValue>,
        _content_encoding: Option<&http::HeaderValue>,
    ) -> ResponseMeter {
        ResponseMeter { provider }
    }

    pub fn observe(&mut self, _data: &[u8]) {
        let _ = self.provider;
    }

    pub fn tokens(&self) -> Option<Tokens> {
        None
    }

    pub fn complete(&self) -> bool {
        false
    }
}

/// Placeholder: changes nothing yet.
pub fn include_usage(_body: &[u8]) -> Option<Vec<u8>> {
    None
}
