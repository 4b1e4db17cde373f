//! A small client of the admin API, for the management commands.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Calls the admin API at `base` with a bearer token.
pub(super) struct AdminClient {
    base: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A failed management call, ready to print.
#[derive(Debug, thiserror::Error)]
pub(super) enum ClientError {
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("unexpected answer from the admin API: {0}")]
    Garbled(String),
}

impl AdminClient {
    pub(super) fn new(base: &str, token: String) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// Sends a call; returns the parsed JSON answer (`null` for 204).
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        self.exchange(method, path, body)
            .await
            .map(|(value, _)| value)
    }

    /// A listing, every page of it (following `Link: <...>; rel="next"`), as one JSON array.
    pub(super) async fn list(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let mut all = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(page) = next.take() {
            let (value, link) = self.exchange(Method::GET, &page, None).await?;
            match value {
                serde_json::Value::Array(items) => all.extend(items),
                other => return Err(ClientError::Garbled(other.to_string())),
            }
            next = link.as_deref().and_then(next_page);
        }
        Ok(serde_json::Value::Array(all))
    }

    /// A call whose answer is text (CSV), printed as it comes.
    pub(super) async fn text(&self, path: &str) -> Result<String, ClientError> {
        let (status, _, bytes) = self.raw(Method::GET, path, None).await?;
        if status.is_success() {
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        Err(refusal(status, &bytes))
    }

    /// One call: the JSON answer and the `Link` header, if any.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(serde_json::Value, Option<String>), ClientError> {
        let (status, link, bytes) = self.raw(method, path, body).await?;
        if status == StatusCode::NO_CONTENT {
            return Ok((serde_json::Value::Null, None));
        }
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| ClientError::Garbled(String::from_utf8_lossy(&bytes).into_owned()))?;
        Ok((value, link))
    }

    /// One call: status, `Link` header and body.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Option<String>, Bytes), ClientError> {
        let url = format!("{}{}", self.base, path);
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            reason,
        };
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let link = response
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Garbled(e.to_string()))?
            .to_bytes();
        Ok((status, link, bytes))
    }
}

/// The admin API's `{"error": {"message"}}` of a refused call.
fn refusal(status: StatusCode, bytes: &[u8]) -> ClientError {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let message = value["error"]["message"]
        .as_str()
        .unwrap_or("request failed")
        .to_owned();
    ClientError::Refused { status, message }
}

/// The target of a `Link` header's `rel="next"`: a path on the admin API.
fn next_page(link: &str) -> Option<String> {
    link.split(',')
        .find(|part| part.contains("rel=\"next\""))
        .and_then(|part| {
            let start = part.find('<')? + 1;
            let end = part.find('>')?;
            part.get(start..end)
        })
        .filter(|target| target.starts_with('/'))
        .map(str::to_owned)
}

/// Percent-encodes a query value.
pub(super) fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_only_a_next_link_to_a_path() {
        assert_eq!(
            next_page("</v1/keys?cursor=1.a>; rel=\"next\"").as_deref(),
            Some("/v1/keys?cursor=1.a")
        );
        assert_eq!(next_page("</v1/keys?cursor=1.a>; rel=\"prev\""), None);
        assert_eq!(next_page("<http://elsewhere/x>; rel=\"next\""), None);
    }
}
