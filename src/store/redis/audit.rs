//! The audit log in Redis: a stream, `{prefix}audit`, one entry per admin write with the event as
//! JSON in field `e`, capped at about [`AUDIT_MAX_EVENTS`] entries by `XADD ... MAXLEN ~`
//! (trimming whole nodes, which costs Redis almost nothing). Read newest first with
//! `XREVRANGE`, a bounded `COUNT` per command; a page's cursor is the last entry id read.

use super::{decode, encode, RedisStore};
use crate::model::AuditEvent;
use crate::store::{Indexed, StoreError, AUDIT_MAX_EVENTS};

const FIELD: &str = "e";

impl RedisStore {
    pub(super) async fn append_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.names().audit())
            .arg("MAXLEN")
            .arg("~")
            .arg(AUDIT_MAX_EVENTS)
            .arg("*")
            .arg(FIELD)
            .arg(encode(event)?);
        self.query::<String>(&cmd).await.map(drop)
    }

    /// Up to `n` events older than the entry `before` (newest first).
    pub(super) async fn audit_before(
        &self,
        before: Option<&str>,
        n: usize,
    ) -> Result<Vec<Indexed<AuditEvent>>, StoreError> {
        let max = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(self.names().audit())
            .arg(max)
            .arg("-")
            .arg("COUNT")
            .arg(n);
        let entries: Vec<(String, Vec<(String, String)>)> = self.read(&cmd).await?;
        entries
            .into_iter()
            .map(|(id, fields)| {
                let json = fields.into_iter().find(|(k, _)| k == FIELD).map(|(_, v)| v);
                let event = json.map(|j| decode::<AuditEvent>(&j)).transpose()?;
                Ok((id, event))
            })
            .collect()
    }
}
