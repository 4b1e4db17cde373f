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
}
