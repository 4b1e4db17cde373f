//! Every Redis key and channel scopegate uses, under the configured `store.prefix` (default
//! `sg:`), so deployments can share one Redis without seeing each other's data.
//!
//! On Redis Cluster every key also carries one hash tag, `{prefix}{tag}` (`sg:{sg:}app:x`), so
//! all of a deployment's keys live in one slot: every script, `MGET` and pipeline touches one
//! slot, and writes that span apps (name claims, the global indexes) stay atomic. The price is
//! one hot slot (one master serves the deployment; replicas give failover, not capacity); see
//! README's store section. A standalone Redis keeps the untagged names of earlier versions, so
//! data they wrote needs no migration. Channels are never tagged: classic pub/sub is broadcast
//! to the whole cluster whatever the name.

use super::link::Mode;
use crate::store::StoreError;

/// The default `store.prefix`.
pub const DEFAULT_PREFIX: &str = "sg:";

/// The hash tag used when the prefix holds no brace that could carry one.
const FALLBACK_TAG: &str = "scopegate";

#[derive(Clone, Debug)]
pub(super) struct Names {
    prefix: String,
    /// What every key starts with: the prefix, plus the hash tag on a Cluster.
    base: String,
}

impl Names {
    /// The untagged layout of a standalone Redis.
    pub(super) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
            base: prefix.to_owned(),
        }
    }

    /// The layout for `mode`; on a Cluster, fails for a prefix whose braces would stop Redis
    /// from reading a hash tag in any name built on it.
    pub(super) fn for_mode(prefix: &str, mode: Mode) -> Result<Names, StoreError> {
        match mode {
            Mode::Standalone => Ok(Names::new(prefix)),
            Mode::Cluster => Ok(Names {
                prefix: prefix.to_owned(),
                base: cluster_base(prefix)?,
            }),
        }
    }

    /// What every key name starts with (usage names are built from it elsewhere).
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    fn under(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    /// Not a key, so never tagged: the same channel in both modes.
    pub(super) fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    pub(super) fn app(&self, id: &str) -> String {
        self.under(&format!("app:{id}"))
    }

    /// Names are unique case-insensitively, so the claim is keyed by the lowercased name.
    pub(super) fn app_name(&self, name: &str) -> String {
        self.under(&format!("appname:{}", name.to_lowercase()))
    }

    pub(super) fn app_index(&self) -> String {
        self.under("appidx")
    }

    pub(super) fn key(&self, id: &str) -> String {
        self.under(&format!("key:{id}"))
    }

    pub(super) fn key_index(&self) -> String {
        self.under("keyidx")
    }

    pub(super) fn app_keys(&self, app_id: &str) -> String {
        self.under(&format!("appkeyidx:{app_id}"))
    }

    /// Hash: deleted app id -> who deleted it, while its keys are still to be revoked.
    pub(super) fn deleted_apps(&self) -> String {
        self.under("deleted_apps")
    }

    /// Sorted set: revoked key id, scored by when; for purging after `keys.retain_revoked`.
    pub(super) fn revoked(&self) -> String {
        self.under("revoked")
    }

    /// Sorted set: key id of a key that is not revoked and has an expiry, scored by it.
    pub(super) fn expiring(&self) -> String {
        self.under("keyexp")
    }

    pub(super) fn last_used(&self) -> String {
        self.under("last_used")
    }

    /// String: when the deployment's data was first linked to. Set once (`NX`) by each link and
    /// never removed, so a node serving the slot without it does not hold the data.
    pub(super) fn marker(&self) -> String {
        self.under("deployment")
    }

    pub(super) fn audit(&self) -> String {
        self.under("audit")
    }

    /// String: an upstream credential's JSON (its value only sealed).
    pub(super) fn credential(&self, name: &str) -> String {
        self.under(&format!("cred:{name}"))
    }

    /// Sorted set (all scores 0): `{created_at:011}.{name}` of every credential.
    pub(super) fn credential_index(&self) -> String {
        self.under("credidx")
    }

    /// Hash: credential name -> last use, unix seconds.
    pub(super) fn credential_last_used(&self) -> String {
        self.under("cred_last_used")
    }

    /// String: the theoretical arrival time (GCRA, microseconds on the Redis clock) of a key's
    /// shared rate budget. Per-key limit names brace the key id (`rate:{id}`): on a standalone
    /// Redis that is the only tag, so one key's rate and quota names share a slot by
    /// themselves; on a Cluster the deployment's tag comes first and Redis hashes by the first,
    /// so they sit in the deployment's slot with everything else. Either way every script
    /// over one key's limits touches one slot.
    pub(super) fn rate(&self, key_id: &str) -> String {
        self.under(&format!("rate:{{{key_id}}}"))
    }

    /// String: a key's quota count for one UTC day (`YYYY-MM-DD`); hash-tagged like [`Self::rate`].
    pub(super) fn quota_day(&self, key_id: &str, day: &str) -> String {
        self.under(&format!("quota:{{{key_id}}}:d:{day}"))
    }

    /// String: a key's quota count for one UTC month (`YYYY-MM`); hash-tagged like [`Self::rate`].
    pub(super) fn quota_month(&self, key_id: &str, month: &str) -> String {
        self.under(&format!("quota:{{{key_id}}}:m:{month}"))
    }

    /// String: a key's tokens in one token-quota window (`kind`: 0 minute, 1 day, 2 month;
    /// `window`: its number, see [`crate::model::TokenWindows`]); hash-tagged like [`Self::rate`].
    pub(super) fn tokens(&self, key_id: &str, kind: usize, window: u64) -> String {
        self.under(&format!("tokens:{{{key_id}}}:{kind}:{window}"))
    }

    /// String: set when one chunk of a token batch was added, so it is added once.
    pub(super) fn tokens_batch(&self, batch_id: &str, chunk: usize) -> String {
        self.under(&format!("tokens:batch:{batch_id}:{chunk}"))
    }

    /// Sorted set: which instances hold leased requests of a key's quota for one UTC day
    /// (member: the holder, score: until when, milliseconds on the Redis clock); hash-tagged
    /// like [`Self::rate`].
    pub(super) fn quota_holders(&self, key_id: &str, day: &str) -> String {
        self.under(&format!("quota:{{{key_id}}}:h:{day}"))
    }

    /// Hash: per holder of a key's quota for one UTC day, what the store granted it, took back
    /// from it and added for it (`{holder}:g`, `:r`, `:o`); hash-tagged like [`Self::rate`].
    pub(super) fn quota_tallies(&self, key_id: &str, day: &str) -> String {
        self.under(&format!("quota:{{{key_id}}}:t:{day}"))
    }

    /// A name of the layout before the listing indexes (read once, then deleted).
    pub(super) fn legacy(&self, name: &str) -> String {
        self.under(name)
    }
}

/// `prefix` followed by a hash tag, so that Redis hashes every name built on it alike.
/// Redis reads the tag between the first `{` and the first `}` after it, and hashes the whole
/// name when that is empty or unclosed; a prefix that already holds a non-empty tag is kept as
/// is (the operator chose the slot).
fn cluster_base(prefix: &str) -> Result<String, StoreError> {
    match hash_tag(prefix) {
        Some("") => Err(StoreError::Unavailable(format!(
            "store.prefix {prefix:?} cannot be used on Redis Cluster: its `{{}}` makes Redis \
             ignore every hash tag after it, so the gateway's keys would spread over slots"
        ))),
        Some(_) => Ok(prefix.to_owned()),
        None => {
            let tag: String = prefix.chars().filter(|c| !matches!(c, '{' | '}')).collect();
            let tag = if tag.is_empty() { FALLBACK_TAG } else { &tag };
            Ok(format!("{prefix}{{{tag}}}"))
        }
    }
}

/// The hash tag Redis Cluster reads in `name`, if the name has a closed one (maybe empty).
fn hash_tag(name: &str) -> Option<&str> {
    let open = name.find('{')?;
    let rest = &name[open + 1..];
    rest.find('}').map(|close| &rest[..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(prefix: &str) -> Names {
        Names::for_mode(prefix, Mode::Cluster).expect("usable prefix")
    }

    #[test]
    fn standalone_names_are_the_untagged_ones_of_earlier_versions() {
        let names = Names::for_mode("sg:", Mode::Standalone).expect("names");
        assert_eq!(names.app("x"), "sg:app:x");
        assert_eq!(names.key_index(), "sg:keyidx");
    }

    #[test]
    fn cluster_names_share_one_hash_tag_and_keep_the_prefix_first() {
        for prefix in ["sg:", "tenant-a:", "}odd", "half{open", "{", "a}{b"] {
            let names = cluster(prefix);
            let all = [
                names.app("x"),
                names.app_name("Billing"),
                names.app_index(),
                names.key("k"),
                names.key_index(),
                names.app_keys("x"),
                names.deleted_apps(),
                names.revoked(),
                names.expiring(),
                names.last_used(),
                names.audit(),
                names.credential("MY_API"),
                names.credential_index(),
                names.credential_last_used(),
                format!("{}usage:key:k:2026-01", names.base()),
                names.rate("k"),
                names.quota_day("k", "2026-01-31"),
                names.quota_month("k", "2026-01"),
                names.quota_holders("k", "2026-01-31"),
                names.quota_tallies("k", "2026-01-31"),
            ];
            let tag = hash_tag(&all[0]).expect("tagged");
            assert!(!tag.is_empty(), "{prefix:?}");
            for name in &all {
                assert!(name.starts_with(prefix), "{name}");
                assert_eq!(hash_tag(name), Some(tag), "{name}");
            }
            assert_eq!(names.channel(), format!("{prefix}invalidate"));
        }
        assert_eq!(cluster("sg:").app("x"), "sg:{sg:}app:x");
        assert_eq!(cluster("t{eam}:").app("x"), "t{eam}:app:x");
    }

    #[test]
    fn a_prefix_with_an_empty_tag_is_refused_on_a_cluster() {
        assert!(Names::for_mode("a{}b", Mode::Cluster).is_err());
        assert!(Names::for_mode("a{}b", Mode::Standalone).is_ok());
    }

    #[test]
    fn every_name_starts_with_the_prefix_and_name_claims_ignore_case() {
        let names = Names::new("tenant-a:");
        assert_eq!(names.app("x"), "tenant-a:app:x");
        assert_eq!(names.channel(), "tenant-a:invalidate");
        assert_eq!(names.app_name("Billing ÄPI"), names.app_name("billing äpi"));
    }

    /// Redis Cluster hashes only what the first `{...}` holds: a key's limit names must agree on
    /// it (on a Cluster, the deployment's tag: see the test above).
    #[test]
    fn limit_names_of_one_key_share_a_hash_tag() {
        let names = Names::new("sg:");
        let tag = |name: &str| {
            let open = name.find('{').expect("tag opens");
            let close = name[open..].find('}').expect("tag closes") + open;
            name[open + 1..close].to_owned()
        };
        let names = [
            names.rate("k1"),
            names.quota_day("k1", "2026-12-01"),
            names.quota_month("k1", "2026-12"),
        ];
        assert!(names.iter().all(|n| tag(n) == "k1"), "{names:?}");
        assert_eq!(names[1], "sg:quota:{k1}:d:2026-12-01");
        let on_cluster = Names::for_mode("sg:", Mode::Cluster).expect("names");
        assert_eq!(on_cluster.rate("k1"), "sg:{sg:}rate:{k1}");
    }
}
