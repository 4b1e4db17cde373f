//! What the upstream-credential tests share: the secret values they store, a config with a
//! master key beside it, an admin call whose answer is checked for the secrets, and the leak
//! check itself (every form a value could leak in, and every value Redis holds).

use super::gateway::{config_yaml, Upstreams, ADMIN_TOKEN};
use super::http::{send, Answer};
use super::instances::redis_conn;
use base64::Engine;
use http::Method;
use scopegate::credentials::MasterKey;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

/// The plaintext every scenario stores: long, with a middle no mask shows.
pub(crate) const VALUE: &str = "sk-live-7Hq2ZpXw9Lm4Rt8Vb1Nc6Yd3Kf5Gj0Ue";
pub(crate) const NEW_VALUE: &str = "sk-next-Qa9Wz2Sx7Ed3Rf5Tg1Yh8Uj4Ik6Ol0Pm";
/// A tenant's own value (an app naming its credential for an upstream).
pub(crate) const TENANT_VALUE: &str = "sk-tenant-Mn3Bv6Cx9Za2Sd5Fg8Hj1Kl4Qw7";
const SECRETS: [&str; 3] = [VALUE, NEW_VALUE, TENANT_VALUE];

/// The part of a value no mask shows.
pub(crate) fn middle(value: &str) -> &str {
    &value[3..value.len() - 3]
}

/// The admin API's create body.
pub(crate) fn create(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value, "description": format!("{name} for tests")})
}

/// Writes a fresh master key to `dir/master.key` and names it in a `credentials:` block.
pub(crate) fn with_master_key(mut yaml: String, dir: &Path) -> String {
    let key = MasterKey::generate();
    std::fs::write(dir.join("master.key"), key.to_base64().as_str()).expect("key file");
    yaml.push_str("credentials:\n  master_key_file: master.key\n");
    yaml
}

/// The test config for the real binary in `dir`, on `redis` (or the embedded store), with a
/// master key; its upstreams point nowhere.
pub(crate) fn process_yaml(dir: &Path, redis: Option<&str>) -> String {
    let upstreams = Upstreams {
        tools: "http://127.0.0.1:9".into(),
    };
    with_master_key(config_yaml(&upstreams, redis, &dir.join("data")), dir)
}

/// An admin call as `admin` on `at`; its answer, head and body, must hold no secret.
pub(crate) async fn admin_call(
    at: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let answer = send(
        method.clone(),
        &format!("http://{at}{path}"),
        &[
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    let what = format!("the answer to {method} {path}");
    assert_clean(&what, format!("{:?}", answer.headers).as_bytes());
    assert_clean(&what, &answer.body);
    answer
}

/// Every form of the secrets a leak could take: the plaintext's hidden middle, and the inner
/// part of its base64 at each of the three alignments it could have inside a longer base64.
fn needles() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for value in SECRETS {
        out.push(middle(value).as_bytes().to_vec());
        for pad in 0..3 {
            let mut bytes = vec![b'x'; pad];
            bytes.extend_from_slice(value.as_bytes());
            for engine in [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
            ] {
                let encoded = engine.encode(&bytes);
                // Skip the characters that mix in the padding before and the end after.
                out.push(encoded.as_bytes()[4..encoded.len() - 4].to_vec());
            }
        }
    }
    out
}

pub(crate) fn assert_clean(what: &str, haystack: &[u8]) {
    for needle in needles() {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "{what} holds {:?}",
            String::from_utf8_lossy(&needle)
        );
    }
}

/// Every key's value, whatever its type, plus its DUMP.
pub(crate) async fn redis_contents(url: &str) -> Vec<(String, Vec<u8>)> {
    let mut conn = redis_conn(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("type");
        let mut read = match kind.as_str() {
            "string" => redis::cmd("GET"),
            "hash" => redis::cmd("HGETALL"),
            "zset" => redis::cmd("ZRANGE"),
            "set" => redis::cmd("SMEMBERS"),
            "list" => redis::cmd("LRANGE"),
            "stream" => redis::cmd("XRANGE"),
            other => panic!("{key} is a {other}"),
        };
        read.arg(&key);
        match kind.as_str() {
            "zset" | "list" => {
                read.arg(0).arg(-1);
            }
            "stream" => {
                read.arg("-").arg("+");
            }
            _ => {}
        }
        let value: redis::Value = read.query_async(&mut conn).await.expect("read");
        out.push((key.clone(), format!("{value:?}").into_bytes()));
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("dump");
        out.push((format!("DUMP {key}"), dump));
    }
    out
}
