//! From a presented key to a [`Principal`]: check its shape and checksum (no lookup for a key we
//! never issued), look the key id up (cache, then store), verify the secret in constant time,
//! then load the app and its scopes.

use super::key;
use crate::cache::{CachedApp, KeyCache};
use crate::config::cidr_contains;
use crate::model::now_unix;
use crate::routing::Access;
use crate::store::StoreError;
use http::HeaderValue;
use std::net::IpAddr;
use std::sync::Arc;

/// The caller, once its key checks out.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Arc<str>,
    /// `key_id` as a header value, from the cache.
    pub key_header: Option<HeaderValue>,
    pub app: Arc<CachedApp>,
    /// The key's allowlist, if it has one (checked against the client address by the pipeline).
    pub allowed_ips: Option<Arc<[(IpAddr, u8)]>>,
}

/// Why a caller may not proceed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("an API key is required")]
    Missing,
    /// Unknown id, wrong secret, malformed key, or a key whose app is gone: one answer for all.
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key is disabled")]
    Disabled,
    #[error("the API key may not be used from this address")]
    IpNotAllowed,
    #[error("the API key lacks the scope {0}")]
    ScopeDenied(Arc<str>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resolves keys to principals.
#[derive(Clone)]
pub struct Authenticator {
    cache: KeyCache,
}

/// Compared against when the key id is unknown, so that case costs what a wrong secret costs.
const NO_DIGEST: [u8; 32] = [0u8; 32];

impl Authenticator {
    pub fn new(cache: KeyCache) -> Authenticator {
        Authenticator { cache }
    }

    /// Checks a presented key.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        // A bad shape or checksum is refused here, before the cache or the store is asked.
        let parsed = key::parse(presented).ok_or(AuthError::Invalid)?;
        let entry = self.cache.key(parsed.id).await?;
        let offered = key::digest(parsed.secret);
        let stored = entry.as_ref().and_then(|k| k.digest).unwrap_or(NO_DIGEST);
        let matches = key::digests_match(&offered, &stored);
        // A revoked key is as good as unknown: the same answer, whatever its secret.
        let Some(found) = entry.filter(|k| matches && k.digest.is_some() && !k.revoked) else {
            return Err(AuthError::Invalid);
        };
        let app = self
            .cache
            .app(&found.app_id)
            .await?
            .ok_or(AuthError::Invalid)?;
        if found.disabled {
            return Err(AuthError::Disabled);
        }
        if found.expires_at.is_some_and(|at| now_unix() >= at) {
            return Err(AuthError::Expired);
        }
        Ok(Principal {
            key_id: found.id.clone(),
            key_header: found.id_header.clone(),
            app,
            allowed_ips: found.allowed_ips.clone(),
        })
    }
}

impl Principal {
    /// Whether the key may be used from `client` (the address as seen through the trusted
    /// proxies).
    pub fn check_address(&self, client: IpAddr) -> Result<(), AuthError> {
        match &self.allowed_ips {
            Some(nets) if !nets.iter().any(|net| cidr_contains(*net, client)) => {
                Err(AuthError::IpNotAllowed)
            }
            _ => Ok(()),
        }
    }

    /// Whether this caller may use a route with the given access rule.
    pub fn authorize(&self, access: &Access) -> Result<(), AuthError> {
        match access {
            Access::Public => Ok(()),
            Access::Scope(scope) if self.app.scopes.iter().any(|s| s == scope) => Ok(()),
            Access::Scope(scope) => Err(AuthError::ScopeDenied(scope.clone())),
        }
    }
}
