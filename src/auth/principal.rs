//! From a presented key to a [`Principal`]: check its shape and checksum (no lookup for a key we
//! never issued), look the key id up (cache, then store), verify the secret in constant time,
//! then load the app and its scopes.

use super::key;
use crate::cache::{CachedApp, CachedKey, KeyCache};
use crate::config::cidr_contains;
use crate::model::now_unix;
use crate::routing::Access;
use crate::store::StoreError;
use std::net::IpAddr;
use std::sync::Arc;

/// The caller, once its key checks out: its key and app as cached.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key: Arc<CachedKey>,
    pub app: Arc<CachedApp>,
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

opaque_debug!(Authenticator);

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
        let tag = key::verified_tag(parsed.secret);
        let remembered = entry
            .as_ref()
            .and_then(|k| k.verified.get())
            .is_some_and(|known| key::tags_match(known, &tag));
        let found = if remembered {
            entry.filter(|k| !k.revoked)
        } else {
            verify(entry, parsed.secret, tag)
        };
        let found = found.ok_or(AuthError::Invalid)?;
        let app = self.cache.app_of(&found).await?.ok_or(AuthError::Invalid)?;
        if found.disabled {
            return Err(AuthError::Disabled);
        }
        if found.expires_at.is_some_and(|at| now_unix() >= at) {
            return Err(AuthError::Expired);
        }
        Ok(Principal { key: found, app })
    }
}

/// The full check against the stored SHA-256 digest, costing the same for an unknown id, a
/// wrong secret and a revoked key. A secret that verifies is remembered by its `tag`.
fn verify(entry: Option<Arc<CachedKey>>, secret: &str, tag: [u8; 16]) -> Option<Arc<CachedKey>> {
    let offered = key::digest(secret);
    let stored = entry.as_ref().and_then(|k| k.digest).unwrap_or(NO_DIGEST);
    let matches = key::digests_match(&offered, &stored);
    // A revoked key is as good as unknown: the same answer, whatever its secret.
    let found = entry.filter(|k| matches && k.digest.is_some() && !k.revoked)?;
    let _ = found.verified.set(tag);
    Some(found)
}

impl Principal {
    /// Whether the key may be used from `client` (the address as seen through the trusted
    /// proxies).
    pub fn check_address(&self, client: IpAddr) -> Result<(), AuthError> {
        match &self.key.allowed_ips {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::model::App;
    use crate::store::{EmbeddedStore, UnauditedWrites};
    use std::time::Duration;

    const ID: &str = "abcdefghijkl";
    const RIGHT: &str = "RightSecretRightSecretRightSecre";
    const WRONG: &str = "WrongSecretWrongSecretWrongSecre";

    #[tokio::test]
    async fn a_remembered_secret_never_lets_another_secret_through() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let app = App {
            id: "app1".into(),
            name: "app".into(),
            scopes: vec![],
            rate_limit: None,
            quota: None,
            token_quota: None,
            created_at: 0,
            created_by: "test".into(),
            version: 0,
            credentials: Default::default(),
        };
        store.create_app(&app).await.expect("app");
        let mut record = key::generate().record("app1", "k", "test", None);
        record.id = ID.into();
        record.secret_hash = hex::encode(key::digest(RIGHT));
        store.create_key(&record).await.expect("key");
        let cache = KeyCache::new(store, Duration::from_secs(30), 100, Metrics::new());
        let auth = Authenticator::new(cache);
        let right = format!("sg_{ID}_{RIGHT}");
        let wrong = format!("sg_{ID}_{WRONG}");
        for _ in 0..2 {
            assert!(auth.authenticate(&right).await.is_ok());
            // The key is cached and its secret remembered: a wrong one is still refused.
            assert!(matches!(
                auth.authenticate(&wrong).await,
                Err(AuthError::Invalid)
            ));
        }
    }
}
