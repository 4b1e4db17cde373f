//! The admin API: apps, keys, upstream credentials, scopes, routes and upstreams over JSON,
//! behind bearer tokens of named operators, each limited by its role (see [`role`]).
//!
//! Every write goes to the store and drops the matching cache entries here; other instances
//! learn of it through the store's change feed. The full key appears only in the create answer.

mod audit;
mod console;
mod credentials;
mod export;
mod handlers;
mod keys;
mod paging;
mod role;
pub(crate) mod routes;
mod upstreams;
mod validate;
pub(crate) mod views;

use crate::cache::KeyCache;
use crate::config::Role;
use crate::error::AdminError;
use crate::live::Live;
use crate::metrics::{Metrics, StoreOp};
use crate::model::{App, UsageSubject};
use crate::store::KeyStore;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use views::AppView;

/// What the admin API answers: a whole JSON document, or a streamed export.
pub(crate) type AdminBody =
    Either<Full<Bytes>, StreamBody<BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>>;

/// Admin request bodies are small JSON documents.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// An operator allowed to call the admin API.
pub(crate) struct AdminIdentity {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, so comparisons are constant-time whatever the lengths.
    token_digest: [u8; 32],
}

impl AdminIdentity {
    pub(crate) fn new(name: impl Into<String>, token: &str, role: Role) -> AdminIdentity {
        AdminIdentity {
            name: name.into(),
            role,
            token_digest: Sha256::digest(token.as_bytes()).into(),
        }
    }
}

/// The admin API's shared state.
pub(crate) struct Admin {
    pub store: Arc<dyn KeyStore>,
    pub cache: KeyCache,
    /// The config in force (scopes, routes, the `keys:` policy), shared with the proxy.
    pub live: Live,
    pub identities: Vec<AdminIdentity>,
    pub metrics: Arc<Metrics>,
    /// The proxy's quota counts (the default quota is in `live`).
    pub quotas: crate::budgets::quota::Quotas,
    /// The proxy's token-quota state (the default token quota is in `live`).
    pub tokens: Arc<crate::budgets::tokens::TokenQuotas>,
    /// Seals credential values; `None`: credential calls answer 503 `credentials_unavailable`.
    pub master_key: Option<Arc<crate::credentials::MasterKey>>,
}

enum Call<'a> {
    WhoAmI,
    Scopes,
    Routes,
    Upstreams,
    Apps,
    App(&'a str),
    AppKeys(&'a str),
    AppUsage(&'a str),
    KeyUsage(&'a str),
    KeyQuota(&'a str),
    Keys,
    Key(&'a str),
    KeyRoll(&'a str),
    KeyDisable(&'a str),
    KeyEnable(&'a str),
    Audit,
    UsageExport,
    Credentials,
    Credential(&'a str),
}

fn parse_path(path: &str) -> Option<Call<'_>> {
    let rest = path.strip_prefix("/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["whoami"] => Some(Call::WhoAmI),
        ["scopes"] => Some(Call::Scopes),
        ["routes"] => Some(Call::Routes),
        ["upstreams"] => Some(Call::Upstreams),
        ["audit"] => Some(Call::Audit),
        ["usage", "export"] => Some(Call::UsageExport),
        ["apps"] => Some(Call::Apps),
        ["credentials"] => Some(Call::Credentials),
        ["credentials", name] if !name.is_empty() => Some(Call::Credential(name)),
        ["apps", id] if !id.is_empty() => Some(Call::App(id)),
        ["apps", id, "keys"] if !id.is_empty() => Some(Call::AppKeys(id)),
        ["apps", id, "usage"] if !id.is_empty() => Some(Call::AppUsage(id)),
        ["keys", id, "usage"] if !id.is_empty() => Some(Call::KeyUsage(id)),
        ["keys", id, "quota"] if !id.is_empty() => Some(Call::KeyQuota(id)),
        ["keys"] => Some(Call::Keys),
        ["keys", id] if !id.is_empty() => Some(Call::Key(id)),
        ["keys", id, "roll"] if !id.is_empty() => Some(Call::KeyRoll(id)),
        ["keys", id, "disable"] if !id.is_empty() => Some(Call::KeyDisable(id)),
        ["keys", id, "enable"] if !id.is_empty() => Some(Call::KeyEnable(id)),
        _ => None,
    }
}

impl Admin {
    /// Serves one admin request; errors become their JSON answer.
    ///
    /// A call that may write runs in a task of its own: hyper drops this future when the
    /// caller hangs up, and a write the store applied must still be carried through whole (its
    /// cache invalidation, its log line). The store keeps each write with its audit event.
    pub(crate) async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
    ) -> Response<AdminBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        // The console's static files hold no data: served before (and without) the token check.
        if console::is_console(&method, &path) {
            return console::serve(&method, &path);
        }
        let outcome = if method == Method::GET || method == Method::HEAD {
            self.run(request).await
        } else {
            let admin = Arc::clone(self);
            tokio::spawn(async move { admin.run(request).await })
                .await
                .unwrap_or_else(|e| Err(AdminError::Failed(e.to_string())))
        };
        match outcome {
            Ok(response) => response,
            Err(e) => {
                if let AdminError::Store(_) = e {
                    self.metrics.store_error(StoreOp::Admin);
                    if method != Method::GET {
                        // Applied whole (audit event included) or not at all: the audit log
                        // says which.
                        tracing::warn!(%method, %path, error = %e, "admin write not confirmed by the store");
                    }
                }
                tracing::debug!(%method, %path, error = %e, "admin call refused");
                e.into_response::<Full<Bytes>>().map(Either::Left)
            }
        }
    }

    fn identify(&self, request: &Request<Incoming>) -> Result<&AdminIdentity, AdminError> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(AdminError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Check every identity so timing does not say which one matched.
        let mut found = None;
        for identity in &self.identities {
            if bool::from(identity.token_digest.ct_eq(&digest)) {
                found = Some(identity);
            }
        }
        found.ok_or(AdminError::Unauthorized)
    }

    async fn run(&self, request: Request<Incoming>) -> Result<Response<AdminBody>, AdminError> {
        let identity = self.identify(&request)?;
        let by = identity.name.clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().map(str::to_owned);
        let query = query.as_deref();
        let search = query_param(query, "search");
        let call = parse_path(&path).ok_or(AdminError::NotFound)?;
        let method = request.method().clone();
        // After the path is known (an unknown path is 404 for every role), before anything runs.
        role::permit(identity.role, &method, &path)?;
        // Before any body is read: without a master key every credential call is 503.
        if matches!(call, Call::Credentials | Call::Credential(_)) {
            self.master_key()?;
        }
        match (call, method) {
            (Call::WhoAmI, Method::GET) => Ok(json(
                StatusCode::OK,
                &serde_json::json!({"name": identity.name, "role": identity.role.as_str()}),
            )),
            (Call::Scopes, Method::GET) => Ok(json(StatusCode::OK, &self.list_scopes())),
            (Call::Routes, Method::GET) => Ok(json(
                StatusCode::OK,
                &routes::views(&self.live.load().route_specs),
            )),
            (Call::Upstreams, Method::GET) => Ok(json(
                StatusCode::OK,
                &upstreams::statuses(&self.live.load()),
            )),
            (Call::UsageExport, Method::GET) => {
                let export = export::Export::parse(
                    query_param(query, "from").as_deref(),
                    query_param(query, "to").as_deref(),
                    query_param(query, "format").as_deref(),
                )?;
                Ok(export.respond(self.store.clone()))
            }
            (Call::Audit, Method::GET) => {
                let (cursor, limit) = paging::params(query)?;
                let filter = audit::AuditFilter {
                    since: query_param(query, "since"),
                    app: query_param(query, "app"),
                    key: query_param(query, "key"),
                };
                let page = self
                    .list_audit(&filter, paging::request(&cursor, limit))
                    .await?;
                Ok(paging::respond(&path, query, page))
            }
            (Call::Apps, Method::GET) => {
                let (cursor, limit) = paging::params(query)?;
                let page = self
                    .list_apps(search.as_deref(), paging::request(&cursor, limit))
                    .await?;
                Ok(paging::respond(&path, query, page))
            }
            (Call::Apps, Method::POST) => {
                let body = read_json(request).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &self.create_app(body, &by).await?,
                ))
            }
            (Call::Credentials, Method::GET) => {
                let (cursor, limit) = paging::params(query)?;
                let page = self
                    .list_credentials(search.as_deref(), paging::request(&cursor, limit))
                    .await?;
                Ok(paging::respond(&path, query, page))
            }
            (Call::Credentials, Method::POST) => {
                let body = credentials::parse_body(&read_body(request).await?)?;
                Ok(json(
                    StatusCode::CREATED,
                    &self.create_credential(body, &by).await?,
                ))
            }
            (Call::Credential(name), Method::GET) => {
                Ok(json(StatusCode::OK, &self.get_credential(name).await?))
            }
            (Call::Credential(name), Method::PUT) => {
                let body = credentials::parse_body(&read_body(request).await?)?;
                Ok(json(
                    StatusCode::OK,
                    &self.replace_credential(name, body, &by).await?,
                ))
            }
            (Call::Credential(name), Method::DELETE) => {
                self.delete_credential(name, &by).await?;
                Ok(no_content())
            }
            (Call::App(id), Method::GET) => Ok(app_response(self.get_app(id).await?)),
            (Call::App(id), Method::PATCH) => {
                let expected = paging::if_match(request.headers())?;
                let body = read_json(request).await?;
                Ok(app_response(
                    self.update_app(id, body, expected, &by).await?,
                ))
            }
            (Call::App(id), Method::DELETE) => {
                let expected = paging::if_match(request.headers())?;
                self.delete_app(id, &by, expected).await?;
                Ok(no_content())
            }
            (Call::AppKeys(id), Method::GET) => self.key_page(Some(id), &path, query).await,
            (Call::AppKeys(id), Method::POST) => {
                let body = read_json(request).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &self.create_key(id, body, &by).await?,
                ))
            }
            (Call::Keys, Method::GET) => {
                let app = query_param(query, "app");
                self.key_page(app.as_deref(), &path, query).await
            }
            (Call::Key(id), Method::GET) => Ok(json(StatusCode::OK, &self.get_key(id).await?)),
            (Call::Key(id), Method::DELETE) => {
                self.revoke_key(id, &by).await?;
                Ok(no_content())
            }
            (Call::KeyRoll(id), Method::POST) => {
                let body = read_json_or_empty(request).await?;
                Ok(json(
                    StatusCode::CREATED,
                    &self.roll_key(id, body, &by).await?,
                ))
            }
            (Call::KeyDisable(id), Method::POST) => Ok(json(
                StatusCode::OK,
                &self.set_disabled(id, true, &by).await?,
            )),
            (Call::KeyEnable(id), Method::POST) => Ok(json(
                StatusCode::OK,
                &self.set_disabled(id, false, &by).await?,
            )),
            (Call::AppUsage(id), Method::GET) => {
                let days = query_param(query, "days");
                Ok(json(
                    StatusCode::OK,
                    &self.usage(UsageSubject::App(id), days.as_deref()).await?,
                ))
            }
            (Call::KeyUsage(id), Method::GET) => {
                let days = query_param(query, "days");
                let mut response = json(
                    StatusCode::OK,
                    &self.usage(UsageSubject::Key(id), days.as_deref()).await?,
                );
                // The quota left, in the headers the proxy sets (the body is the contract's list).
                if let Ok(quota) = self.key_quota(id).await {
                    if let Some(w) = quota.tightest() {
                        let status = crate::budgets::quota::QuotaStatus {
                            limit: w.limit,
                            remaining: w.remaining,
                            reset: w.ends.saturating_sub(crate::model::now_unix()),
                        };
                        crate::budgets::headers::quota_headers(response.headers_mut(), status);
                    }
                }
                Ok(response)
            }
            (Call::KeyQuota(id), Method::GET) => {
                Ok(json(StatusCode::OK, &self.key_quota(id).await?))
            }
            _ => Err(AdminError::MethodNotAllowed),
        }
    }

    async fn key_page(
        &self,
        app: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Result<Response<AdminBody>, AdminError> {
        let (cursor, limit) = paging::params(query)?;
        let filter = keys::KeyFilter {
            search: query_param(query, "search"),
            status: query_param(query, "status"),
            expiring_within_days: query_param(query, "expiring_within_days"),
        };
        let page = self
            .list_keys(app, &filter, paging::request(&cursor, limit))
            .await?;
        Ok(paging::respond(path, query, page))
    }
}

/// An app with its version as the `ETag`, for a later `If-Match`.
fn app_response(app: App) -> Response<AdminBody> {
    let etag = paging::etag(app.version);
    let mut response = json(StatusCode::OK, &AppView::from(app));
    response.headers_mut().insert(header::ETAG, etag);
    response
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, AdminError> {
    parse_json(&read_body(request).await?)
}

/// The request body, at most [`MAX_ADMIN_BODY`] bytes.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, AdminError> {
    Limited::new(request.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| AdminError::BadJson(e.to_string()))
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| AdminError::BadJson(e.to_string()))?;
    serde_json::from_value(value).map_err(|e| AdminError::Invalid {
        field: "body",
        message: e.to_string(),
    })
}

/// A JSON body that may be left out entirely (`{}` then), as for a roll with the default grace.
async fn read_json_or_empty<T: DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, AdminError> {
    let bytes = read_body(request).await?;
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    parse_json(&bytes)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<AdminBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn no_content() -> Response<AdminBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
