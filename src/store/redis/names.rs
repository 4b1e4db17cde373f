//! Every Redis key and channel scopegate uses, under the configured `store.prefix` (default
//! `sg:`), so deployments can share one Redis without seeing each other's data.

/// The default `store.prefix`.
pub const DEFAULT_PREFIX: &str = "sg:";

#[derive(Clone, Debug)]
pub(super) struct Names {
    prefix: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn under(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(super) fn channel(&self) -> String {
        self.under("invalidate")
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

    pub(super) fn key_prefix(&self) -> String {
        self.under("key:")
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

    pub(super) fn audit(&self) -> String {
        self.under("audit")
    }

    /// String: the theoretical arrival time (GCRA, microseconds on the Redis clock) of a key's
    /// shared rate budget. Every per-key limit name carries the key id as its Cluster hash tag
    /// (`{id}`), so one key's rate and quota names share a slot and a script may touch them all.
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

    /// A name of the layout before the listing indexes (read once, then deleted).
    pub(super) fn legacy(&self, name: &str) -> String {
        self.under(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_starts_with_the_prefix_and_name_claims_ignore_case() {
        let names = Names::new("tenant-a:");
        assert_eq!(names.app("x"), "tenant-a:app:x");
        assert_eq!(names.channel(), "tenant-a:invalidate");
        assert_eq!(names.app_name("Billing ÄPI"), names.app_name("billing äpi"));
    }

    /// Redis Cluster hashes only what the first `{...}` holds: a key's limit names must agree on it.
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
    }
}
