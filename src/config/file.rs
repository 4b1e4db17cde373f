//! The config file as written: serde structs that mirror the YAML, before any validation.
//!
//! Everything is strings or plain numbers here; [`super::validate`] turns it into [`super::Config`].
//! Unknown keys are refused everywhere (they are usually typos).

use crate::model::{Quota, TokenQuota};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "config")]
pub(super) struct RawConfig {
    pub listen: String,
    pub tls: Option<RawTls>,
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetrics>,
    pub store: Option<RawStore>,
    pub cache: Option<RawCache>,
    pub keys: Option<RawKeys>,
    pub rate_limit: Option<RawRateLimit>,
    pub quota: Option<Quota>,
    pub token_quota: Option<TokenQuota>,
    pub scopes: Option<Entries<String>>,
    pub upstreams: Entries<RawUpstream>,
    pub routes: Vec<RawRoute>,
    pub limits: Option<RawLimits>,
    pub shutdown_grace: Option<String>,
    /// Proxy workers: one single-threaded runtime and `SO_REUSEPORT` listener each.
    pub workers: Option<u64>,
    pub log: Option<RawLog>,
    /// DNS servers (`ip:port`) for hostname targets; the system's resolver when absent.
    pub resolver: Option<Vec<String>>,
    pub credentials: Option<RawCredentials>,
}

/// `credentials:`: where the master key that seals upstream credential values comes from.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "credentials")]
pub(super) struct RawCredentials {
    pub master_key_env: Option<String>,
    pub master_key_file: Option<String>,
}

/// `rate_limit:` as written: the app-overridable budget plus the deployment-wide `shared`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "rate_limit")]
pub(super) struct RawRateLimit {
    pub per_second: u32,
    pub burst: u32,
    pub shared: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "log")]
pub(super) struct RawLog {
    pub format: Option<super::LogFormat>,
    pub access: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "tls")]
pub(super) struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "admin")]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
    /// Operator name -> environment variable holding that operator's token, or `{env, role}`.
    pub tokens: Option<Entries<RawToken>>,
}

/// One `admin.tokens` entry: `VAR` (role `admin`) or `{env: VAR, role: R}`.
#[derive(Debug)]
pub(super) struct RawToken {
    pub env: String,
    /// Checked by validation, so an unknown role is reported with its position.
    pub role: Option<String>,
    /// Written as a mapping, so problems with the variable point at its `env` key.
    pub mapping: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "token")]
struct RawTokenMapping {
    env: String,
    role: Option<String>,
}

impl<'de> Deserialize<'de> for RawToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawTokenVisitor)
    }
}

struct RawTokenVisitor;

impl<'de> Visitor<'de> for RawTokenVisitor {
    type Value = RawToken;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an environment variable name, or {env: VAR, role: admin | operator | read}")
    }

    fn visit_str<E: serde::de::Error>(self, env: &str) -> Result<RawToken, E> {
        Ok(RawToken {
            env: env.to_owned(),
            role: None,
            mapping: false,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawToken, A::Error> {
        let raw = RawTokenMapping::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(RawToken {
            env: raw.env,
            role: raw.role,
            mapping: true,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "metrics")]
pub(super) struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "store")]
pub(super) struct RawStore {
    pub redis: Option<String>,
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "keys")]
pub(super) struct RawKeys {
    pub default_expires_in_days: Option<u32>,
    pub max_expires_in_days: Option<u32>,
    pub retain_revoked: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "cache")]
pub(super) struct RawCache {
    pub ttl: Option<String>,
    pub max_entries: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "upstream")]
pub(super) struct RawUpstream {
    /// One target; exclusive with `targets`.
    pub url: Option<String>,
    pub targets: Option<Vec<RawTarget>>,
    pub balance: Option<String>,
    /// A duration, or `none`.
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    pub retry: Option<RawRetry>,
    /// A PEM file of CA certificates trusted for this (https) upstream, besides the webpki roots.
    pub ca: Option<String>,
    /// A stored credential to put in every forwarded request: `NAME` or `{name, header, format}`.
    pub credential: Option<RawCredentialUse>,
}

/// An upstream's `credential:`: `NAME`, or `{name: NAME, header: H, format: F}`.
#[derive(Debug)]
pub(super) struct RawCredentialUse {
    pub name: String,
    pub header: Option<String>,
    pub format: Option<String>,
    /// Written as a mapping, so a problem with the name points at its `name` key.
    pub mapping: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "credential")]
struct RawCredentialMapping {
    name: String,
    header: Option<String>,
    format: Option<String>,
}

impl<'de> Deserialize<'de> for RawCredentialUse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawCredentialVisitor)
    }
}

struct RawCredentialVisitor;

impl<'de> Visitor<'de> for RawCredentialVisitor {
    type Value = RawCredentialUse;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a credential name, or {name: NAME, header: H, format: \"Bearer {value}\"}")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<RawCredentialUse, E> {
        Ok(RawCredentialUse {
            name: name.to_owned(),
            header: None,
            format: None,
            mapping: false,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawCredentialUse, A::Error> {
        let raw =
            RawCredentialMapping::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(RawCredentialUse {
            name: raw.name,
            header: raw.header,
            format: raw.format,
            mapping: true,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "target")]
pub(super) struct RawTarget {
    pub url: String,
    pub weight: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "health")]
pub(super) struct RawHealth {
    pub path: String,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub unhealthy_after: Option<u64>,
    pub healthy_after: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "passive")]
pub(super) struct RawPassive {
    /// `0` turns passive ejection off.
    pub failures: Option<u64>,
    pub eject_for: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "retry")]
pub(super) struct RawRetry {
    pub attempts: Option<u64>,
    /// A percentage such as `20%`.
    pub budget: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "route")]
pub(super) struct RawRoute {
    /// One method, a list of methods, or `*`; checked by validation.
    pub method: serde_yaml::Value,
    pub path: String,
    pub scope: String,
    pub upstream: String,
    /// A size such as `512KiB` or a number of bytes.
    pub max_body: Option<serde_yaml::Value>,
    /// Let paths carrying `;` parameters through (refused with 400 otherwise).
    pub allow_semicolons: Option<bool>,
    /// `openai` or `anthropic`: count the tokens of each response; checked by validation.
    pub meter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename = "limits")]
pub(super) struct RawLimits {
    pub max_connections: Option<u64>,
    pub max_uri_bytes: Option<u64>,
    pub max_header_bytes: Option<u64>,
    pub max_body: Option<serde_yaml::Value>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
}

/// A mapping read in file order. A repeated key keeps its first value and is listed in `repeated`
/// (validation reports it at the second occurrence, which serde_yaml cannot position).
#[derive(Debug)]
pub(super) struct Entries<V> {
    pub entries: Vec<(String, V)>,
    pub repeated: Vec<String>,
}

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries {
            entries: Vec::new(),
            repeated: Vec::new(),
        }
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

struct EntriesVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
    type Value = Entries<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of names")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
        let mut out = Entries::default();
        while let Some(key) = map.next_key::<String>()? {
            let value: V = map.next_value()?;
            if out.entries.iter().any(|(k, _)| *k == key) {
                out.repeated.push(key);
            } else {
                out.entries.push((key, value));
            }
        }
        Ok(out)
    }
}
