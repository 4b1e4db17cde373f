//! The key format on the wire: issued keys carry a checksum that secret scanners can match, a
//! key whose checksum fails is refused without a store read, and keys issued before the
//! checksum keep working.

mod common;

use common::gateway::TestGateway;
use common::http::get;
use common::instances::{command_calls, gateway_on_url, reset_stats, wait_subscribers};
use common::redis::RedisServer;
use common::upstream::Upstream;
use scopegate::auth::key::{self, NewKey};
use scopegate::store::prelude::*;

const ROUTE: &str = "/api/v1/jobs/1";

/// The README's expression for keys issued with a checksum, written out by hand.
fn matches_readme_pattern(text: &str) -> bool {
    let alnum = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_alphanumeric());
    let Some(rest) = text.strip_prefix("sg_") else {
        return false;
    };
    matches!(rest.split_once('_'), Some((id, secret)) if alnum(id, 12) && alnum(secret, 38))
}

/// A key in the format issued before the checksum (`sg_` + 12 + `_` + 32 alphanumerics), as
/// the store held it: the SHA-256 of the 32-character secret.
fn old_format_key(id: &str, secret: &str) -> NewKey {
    assert_eq!((id.len(), secret.len()), (12, 32));
    let full = format!("sg_{id}_{secret}");
    NewKey {
        id: id.to_owned(),
        digest_hex: hex::encode(key::digest(secret)),
        masked: key::mask(&full),
        full,
    }
}

/// The same key with its `i`-th character from the end replaced by another alphanumeric.
fn with_char_changed(full: &str, from_end: usize) -> String {
    let mut bytes = full.as_bytes().to_vec();
    let i = bytes.len() - 1 - from_end;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

async fn on_redis() -> (RedisServer, Upstream, TestGateway) {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = gateway_on_url(&redis.url(), &upstream, |yaml| yaml).await;
    wait_subscribers(&redis.url(), 1).await;
    (redis, upstream, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_keys_match_the_documented_format() {
    let (_redis, _upstream, gw) = on_redis().await;
    let full = gw.key_with(&["view_job_status"]).await;
    assert!(matches_readme_pattern(&full), "{full}");
    assert_eq!(
        get(&gw.url(ROUTE), &[("x-api-key", &full)]).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_bad_checksum_is_refused_without_a_store_read() {
    let (redis, _upstream, gw) = on_redis().await;
    let real = gw.key_with(&["view_job_status"]).await;
    let url = gw.url(ROUTE);

    // A typo in the checksum, in the random part and in the id: each a key id never seen,
    // so only the checksum can have kept them from the store.
    reset_stats(&redis.url()).await;
    for mistyped in [
        with_char_changed(&real, 0),
        with_char_changed(&real, 20),
        with_char_changed(&real, 45),
    ] {
        let answer = get(&url, &[("x-api-key", &mistyped)]).await;
        assert_eq!(answer.status, 401, "{mistyped}");
        assert_eq!(answer.error_code(), "invalid_key");
    }
    let made_up = format!("sg_{}_{}", "Z".repeat(12), "Q".repeat(38));
    let answer = get(&url, &[("authorization", &format!("Bearer {made_up}"))]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (401, "invalid_key")
    );
    assert_eq!(command_calls(&redis.url(), "get").await, 0, "no store read");

    // The control: a made-up key of the old format can only be refused by a lookup, and that
    // lookup is seen by the counter above.
    let old_made_up = format!("sg_{}_{}", "Y".repeat(12), "Q".repeat(32));
    let answer = get(&url, &[("x-api-key", &old_made_up)]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (401, "invalid_key")
    );
    assert_eq!(command_calls(&redis.url(), "get").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_issued_before_the_checksum_keep_working() {
    let (_redis, _upstream, gw) = on_redis().await;
    let app = gw.create_app("old-keys", &["view_job_status"]).await;
    let old = old_format_key("OldKey000001", "0123456789abcdefghijKLMNOPqrstuv");
    let store = &gw.inner.as_ref().expect("running").store;
    store
        .create_key(&old.record(&app, "from before", "admin", None))
        .await
        .expect("seed the old key");

    assert!(!matches_readme_pattern(&old.full));
    let url = gw.url(ROUTE);
    assert_eq!(get(&url, &[("x-api-key", &old.full)]).await.status, 200);
    // Its secret is still checked.
    let wrong = with_char_changed(&old.full, 3);
    let answer = get(&url, &[("x-api-key", &wrong)]).await;
    assert_eq!(
        (answer.status.as_u16(), answer.error_code().as_str()),
        (401, "invalid_key")
    );
}
