//! Shared by the criterion benches: an app with the bench route's scope and one key for it.

use scopegate::auth::key::{self, NewKey};
use scopegate::model::{now_unix, App};
use scopegate::store::{KeyStore, UnauditedWrites};

/// Writes an app with `deploy_tool` and one key for it into `store`.
pub(crate) async fn seed_key(store: &dyn KeyStore) -> (App, NewKey) {
    let app = App {
        id: key::random_id(),
        name: "bench".into(),
        scopes: vec!["deploy_tool".into()],
        rate_limit: None,
        quota: None,
        token_quota: None,
        created_at: now_unix(),
        created_by: "bench".into(),
        version: 0,
        credentials: Default::default(),
    };
    let new = key::generate();
    store.create_app(&app).await.expect("app");
    store
        .create_key(&new.record(&app.id, "bench", "bench", None))
        .await
        .expect("key");
    (app, new)
}
