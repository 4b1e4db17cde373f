//! Every way a request can fail, and the one place each becomes an HTTP response
//! (`{"error": {"code", "message"}}`).

use crate::auth::credential::CredentialError;
use crate::auth::AuthError;
use crate::budgets::headers::{quota_headers, rate_limit_headers, token_quota_headers};
use crate::budgets::quota::{QuotaExceeded, QuotaStatus};
use crate::budgets::tokens::{TokenQuotaExceeded, TokenQuotaStatus};
use crate::budgets::Refused;
use crate::config::Role;
use crate::metrics::AuthFailure;
use crate::routing::normalize::PathError;
use crate::store::StoreError;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// A proxied request that ends at the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("malformed path: {0}")]
    BadPath(#[from] PathError),
    #[error("{0}")]
    Credential(#[from] CredentialError),
    #[error("the request target exceeds {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("the request headers exceed {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("no route for this path")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed { allow: String },
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("rate limit exceeded; retry in {retry_after} s")]
    RateLimited {
        limit: u32,
        retry_after: u64,
        reset: u64,
    },
    #[error(transparent)]
    QuotaExceeded(#[from] QuotaExceeded),
    #[error(transparent)]
    TokenQuotaExceeded(#[from] TokenQuotaExceeded),
    #[error("the request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the upstream could not be reached")]
    UpstreamUnavailable,
    #[error("no target of the upstream is in rotation; retry in {retry_after} s")]
    NoHealthyTarget { retry_after: u64 },
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    /// The upstream's credential (or the app's own for it) is missing or does not open; the
    /// gateway's log names it, the client is told nothing of it.
    #[error("the credential for this upstream is unavailable")]
    CredentialUnavailable,
    /// The store did not answer while the upstream's credential was read.
    #[error("the key store is unavailable")]
    CredentialStore,
}

impl From<crate::credentials::Unavailable> for ProxyError {
    fn from(why: crate::credentials::Unavailable) -> ProxyError {
        use crate::credentials::Unavailable as U;
        match why {
            U::Missing | U::NoMasterKey | U::Sealed => ProxyError::CredentialUnavailable,
            U::Store => ProxyError::CredentialStore,
        }
    }
}

/// An admin API call that fails.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("a valid admin token is required")]
    Unauthorized,
    #[error("this token's role ({role}) may not make this call; it needs {needed}")]
    Forbidden { role: Role, needed: Role },
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("the request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("an app with this name already exists")]
    Conflict,
    #[error("the app changed since the ETag given in If-Match")]
    PreconditionFailed,
    #[error("the key is revoked; nothing changes it any more")]
    KeyRevoked,
    /// No master key is configured (or its variable is not set): credentials cannot be sealed.
    #[error("no master key: set the variable named by credentials.master_key_env (or master_key_file) and restart")]
    CredentialsUnavailable,
    #[error("a credential with this name already exists")]
    CredentialExists,
    /// Names who still uses the credential (never its value).
    #[error("the credential is still used by {0}")]
    CredentialInUse(String),
    #[error("store unavailable")]
    Store(StoreError),
    /// The call's task failed (a bug): its write, if any, was applied whole or not at all.
    #[error("internal error: {0}")]
    Failed(String),
}

impl From<Refused> for ProxyError {
    fn from(refused: Refused) -> ProxyError {
        match refused {
            Refused::RateLimited {
                limit,
                retry_after,
                reset,
            } => ProxyError::RateLimited {
                limit,
                retry_after,
                reset,
            },
            Refused::Quota(exceeded) => ProxyError::QuotaExceeded(exceeded),
            Refused::Tokens(exceeded) => ProxyError::TokenQuotaExceeded(exceeded),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        match e {
            StoreError::Conflict => AdminError::Conflict,
            StoreError::NotFound => AdminError::NotFound,
            StoreError::VersionMismatch => AdminError::PreconditionFailed,
            StoreError::Revoked => AdminError::KeyRevoked,
            other => AdminError::Store(other),
        }
    }
}

/// The status, code and message of an error answer.
pub struct ErrorAnswer {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

opaque_debug!(ErrorAnswer);

/// What a refusal adds to the metrics, besides the request counter every answer adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `scopegate_auth_failures_total{reason}`.
    Auth(AuthFailure),
    /// `scopegate_store_errors_total{op="lookup"}`.
    StoreError,
    /// `scopegate_rate_limited_total{app}`.
    RateLimited,
    /// `scopegate_quota_exceeded_total{app}`.
    QuotaExceeded,
    /// `scopegate_token_quota_exceeded_total{app}`.
    TokenQuotaExceeded,
    Nothing,
}

impl ProxyError {
    /// The refusal table: for every error its status, code and what it counts.
    fn kind(&self) -> (StatusCode, &'static str, Counted) {
        use AuthFailure as F;
        use Counted::{Auth, Nothing};
        use StatusCode as S;
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadPath(_) | ProxyError::Credential(_) => {
                (S::BAD_REQUEST, "bad_request", Nothing)
            }
            ProxyError::UriTooLong { .. } => (S::URI_TOO_LONG, "uri_too_long", Nothing),
            ProxyError::HeadersTooLarge { .. } => (
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                Nothing,
            ),
            ProxyError::RouteNotFound => (S::NOT_FOUND, "route_not_found", Nothing),
            ProxyError::MethodNotAllowed { .. } => {
                (S::METHOD_NOT_ALLOWED, "method_not_allowed", Nothing)
            }
            ProxyError::Auth(AuthError::Missing) => {
                (S::UNAUTHORIZED, "missing_key", Auth(F::MissingKey))
            }
            ProxyError::Auth(AuthError::Invalid) => {
                (S::UNAUTHORIZED, "invalid_key", Auth(F::InvalidKey))
            }
            ProxyError::Auth(AuthError::Expired) => {
                (S::UNAUTHORIZED, "expired_key", Auth(F::ExpiredKey))
            }
            ProxyError::Auth(AuthError::Disabled) => {
                (S::UNAUTHORIZED, "disabled_key", Auth(F::DisabledKey))
            }
            ProxyError::Auth(AuthError::IpNotAllowed) => {
                (S::FORBIDDEN, "ip_not_allowed", Auth(F::IpNotAllowed))
            }
            ProxyError::Auth(AuthError::ScopeDenied(_)) => {
                (S::FORBIDDEN, "scope_denied", Auth(F::ScopeDenied))
            }
            ProxyError::Auth(AuthError::Store(_)) => (
                S::SERVICE_UNAVAILABLE,
                "store_unavailable",
                Counted::StoreError,
            ),
            ProxyError::RateLimited { .. } => {
                (S::TOO_MANY_REQUESTS, "rate_limited", Counted::RateLimited)
            }
            ProxyError::QuotaExceeded(_) => (
                S::TOO_MANY_REQUESTS,
                "quota_exceeded",
                Counted::QuotaExceeded,
            ),
            ProxyError::TokenQuotaExceeded(_) => (
                S::TOO_MANY_REQUESTS,
                "token_quota_exceeded",
                Counted::TokenQuotaExceeded,
            ),
            ProxyError::BodyTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "body_too_large", Nothing),
            ProxyError::UpstreamUnavailable => (S::BAD_GATEWAY, "upstream_unavailable", Nothing),
            ProxyError::NoHealthyTarget { .. } => {
                (S::SERVICE_UNAVAILABLE, "upstream_unavailable", Nothing)
            }
            ProxyError::UpstreamTimeout => (S::GATEWAY_TIMEOUT, "upstream_timeout", Nothing),
            ProxyError::CredentialUnavailable => {
                (S::BAD_GATEWAY, "credential_unavailable", Nothing)
            }
            ProxyError::CredentialStore => (
                S::SERVICE_UNAVAILABLE,
                "store_unavailable",
                Counted::StoreError,
            ),
        }
    }

    /// What this refusal counts in the metrics.
    pub fn counted(&self) -> Counted {
        self.kind().2
    }

    pub fn answer(&self) -> ErrorAnswer {
        let (status, code, _) = self.kind();
        let message = match self {
            // Never echo store internals to a client.
            ProxyError::Auth(AuthError::Store(_)) => "the key store is unavailable".to_owned(),
            other => other.to_string(),
        };
        ErrorAnswer {
            status,
            code,
            message,
        }
    }

    /// The response sent to the client (by reference: the caller may still log the error).
    pub fn to_response<B: From<Full<Bytes>>>(&self) -> Response<B> {
        let mut response = self.answer().into_response();
        let headers = response.headers_mut();
        match self {
            ProxyError::Auth(AuthError::Missing) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ProxyError::Auth(AuthError::Store(_)) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RateLimited {
                limit,
                retry_after,
                reset,
            } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
                rate_limit_headers(headers, *limit, 0, *reset);
            }
            ProxyError::NoHealthyTarget { retry_after } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ProxyError::CredentialStore => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::QuotaExceeded(q) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(q.retry_after));
                quota_headers(
                    headers,
                    QuotaStatus {
                        limit: q.limit,
                        remaining: 0,
                        reset: q.retry_after,
                    },
                );
            }
            ProxyError::TokenQuotaExceeded(q) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(q.retry_after));
                token_quota_headers(
                    headers,
                    TokenQuotaStatus {
                        limit: q.limit,
                        remaining: 0,
                        reset: q.retry_after,
                    },
                );
            }
            ProxyError::MethodNotAllowed { allow } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(ALLOW, v);
                }
            }
            _ => {}
        }
        response.map(B::from)
    }
}

impl AdminError {
    pub(crate) fn answer(&self) -> ErrorAnswer {
        use StatusCode as S;
        let (status, code) = match self {
            AdminError::Unauthorized => (S::UNAUTHORIZED, "unauthorized"),
            AdminError::Forbidden { .. } => (S::FORBIDDEN, "forbidden"),
            AdminError::NotFound => (S::NOT_FOUND, "not_found"),
            AdminError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AdminError::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_request"),
            AdminError::BadJson(_) => (S::BAD_REQUEST, "bad_request"),
            AdminError::Conflict => (S::CONFLICT, "conflict"),
            AdminError::PreconditionFailed => (S::PRECONDITION_FAILED, "precondition_failed"),
            AdminError::KeyRevoked => (S::CONFLICT, "conflict"),
            AdminError::CredentialsUnavailable => {
                (S::SERVICE_UNAVAILABLE, "credentials_unavailable")
            }
            AdminError::CredentialExists => (S::CONFLICT, "conflict"),
            AdminError::CredentialInUse(_) => (S::CONFLICT, "conflict"),
            AdminError::Store(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
            AdminError::Failed(_) => (S::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        ErrorAnswer {
            status,
            code,
            message: self.to_string(),
        }
    }

    pub(crate) fn into_response<B: From<Full<Bytes>>>(self) -> Response<B> {
        let mut response = self.answer().into_response();
        match self {
            AdminError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AdminError::Store(_) => {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response.map(B::from)
    }
}

impl ErrorAnswer {
    fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budgets::quota::Window;

    #[test]
    fn every_refusal_counts_in_its_own_metric() {
        use crate::metrics::AuthFailure as F;
        let cases = [
            (
                ProxyError::Auth(AuthError::Missing),
                Counted::Auth(F::MissingKey),
            ),
            (
                ProxyError::Auth(AuthError::Invalid),
                Counted::Auth(F::InvalidKey),
            ),
            (
                ProxyError::Auth(AuthError::Expired),
                Counted::Auth(F::ExpiredKey),
            ),
            (
                ProxyError::Auth(AuthError::Disabled),
                Counted::Auth(F::DisabledKey),
            ),
            (
                ProxyError::Auth(AuthError::IpNotAllowed),
                Counted::Auth(F::IpNotAllowed),
            ),
            (
                ProxyError::Auth(AuthError::ScopeDenied("s".into())),
                Counted::Auth(F::ScopeDenied),
            ),
            (
                ProxyError::RateLimited {
                    limit: 1,
                    retry_after: 1,
                    reset: 1,
                },
                Counted::RateLimited,
            ),
            (ProxyError::RouteNotFound, Counted::Nothing),
            (ProxyError::UpstreamTimeout, Counted::Nothing),
        ];
        for (error, counted) in cases {
            assert_eq!(error.counted(), counted, "{error}");
        }
    }

    #[test]
    fn proxy_errors_map_to_the_contract() {
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (ProxyError::BadRequest("x"), 400, "bad_request"),
            (
                ProxyError::BadPath(PathError::AboveRoot),
                400,
                "bad_request",
            ),
            (
                ProxyError::Credential(CredentialError::Conflicting),
                400,
                "bad_request",
            ),
            (ProxyError::RouteNotFound, 404, "route_not_found"),
            (ProxyError::UriTooLong { limit: 1 }, 414, "uri_too_long"),
            (
                ProxyError::HeadersTooLarge { limit: 1 },
                431,
                "headers_too_large",
            ),
            (
                ProxyError::MethodNotAllowed {
                    allow: "GET".into(),
                },
                405,
                "method_not_allowed",
            ),
            (AuthError::Missing.into(), 401, "missing_key"),
            (AuthError::Invalid.into(), 401, "invalid_key"),
            (AuthError::Expired.into(), 401, "expired_key"),
            (AuthError::Disabled.into(), 401, "disabled_key"),
            (AuthError::IpNotAllowed.into(), 403, "ip_not_allowed"),
            (
                AuthError::ScopeDenied("deploy_tool".into()).into(),
                403,
                "scope_denied",
            ),
            (
                AuthError::Store(StoreError::Unavailable("down".into())).into(),
                503,
                "store_unavailable",
            ),
            (ProxyError::BodyTooLarge { limit: 1 }, 413, "body_too_large"),
            (
                ProxyError::RateLimited {
                    limit: 5,
                    retry_after: 2,
                    reset: 3,
                },
                429,
                "rate_limited",
            ),
            (
                QuotaExceeded {
                    window: Window::Day,
                    limit: 10,
                    retry_after: 60,
                }
                .into(),
                429,
                "quota_exceeded",
            ),
            (ProxyError::UpstreamUnavailable, 502, "upstream_unavailable"),
            (
                ProxyError::NoHealthyTarget { retry_after: 3 },
                503,
                "upstream_unavailable",
            ),
            (ProxyError::UpstreamTimeout, 504, "upstream_timeout"),
            (
                ProxyError::CredentialUnavailable,
                502,
                "credential_unavailable",
            ),
            (ProxyError::CredentialStore, 503, "store_unavailable"),
        ];
        for (error, status, code) in cases {
            let answer = error.answer();
            assert_eq!(
                (answer.status.as_u16(), answer.code),
                (status, code),
                "{error:?}"
            );
        }
    }

    #[test]
    fn quota_exceeded_says_when_to_retry_and_what_is_left() {
        let e: ProxyError = QuotaExceeded {
            window: Window::Month,
            limit: 1_000,
            retry_after: 3_600,
        }
        .into();
        assert!(
            e.answer().message.contains("month"),
            "{}",
            e.answer().message
        );
        let r: Response<Full<Bytes>> = e.to_response();
        assert_eq!(r.headers()[RETRY_AFTER], "3600");
        assert_eq!(r.headers()["x-quota-limit"], "1000");
        assert_eq!(r.headers()["x-quota-remaining"], "0");
        assert_eq!(r.headers()["x-quota-reset"], "3600");
    }

    #[test]
    fn scope_denied_names_the_scope_and_headers_are_set() {
        let e: ProxyError = AuthError::ScopeDenied("deploy_model".into()).into();
        assert!(e.answer().message.contains("deploy_model"));
        let r: Response<Full<Bytes>> = ProxyError::Auth(AuthError::Missing).to_response();
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        let r: Response<Full<Bytes>> = ProxyError::MethodNotAllowed {
            allow: "GET, POST".into(),
        }
        .to_response();
        assert_eq!(r.headers()[ALLOW], "GET, POST");
    }

    #[test]
    fn admin_errors_map_to_the_contract() {
        let cases: Vec<(AdminError, u16, &str)> = vec![
            (AdminError::Unauthorized, 401, "unauthorized"),
            (
                AdminError::Forbidden {
                    role: Role::Read,
                    needed: Role::Operator,
                },
                403,
                "forbidden",
            ),
            (AdminError::NotFound, 404, "not_found"),
            (
                AdminError::Invalid {
                    field: "name",
                    message: "empty".into(),
                },
                422,
                "invalid_request",
            ),
            (AdminError::Conflict, 409, "conflict"),
            (AdminError::PreconditionFailed, 412, "precondition_failed"),
            (AdminError::KeyRevoked, 409, "conflict"),
            (
                AdminError::CredentialsUnavailable,
                503,
                "credentials_unavailable",
            ),
            (AdminError::CredentialExists, 409, "conflict"),
            (
                AdminError::CredentialInUse("apps a".into()),
                409,
                "conflict",
            ),
            (AdminError::Failed("panic".into()), 500, "internal_error"),
            (
                StoreError::Unavailable("x".into()).into(),
                503,
                "store_unavailable",
            ),
        ];
        for (error, status, code) in cases {
            let answer = error.answer();
            assert_eq!(
                (answer.status.as_u16(), answer.code),
                (status, code),
                "{error:?}"
            );
        }
    }
}
