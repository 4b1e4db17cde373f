//! Apps, keys and the audit log in Redis: the compare-and-set steps behind each admin write
//! (read the record, compute the change and its audit event, run the script that applies both
//! if the record is still as read), the bounded listing reads, and the [`Records`] and
//! [`Upkeep`] roles built on them.

use super::scripts::*;
use super::{
    absent, audit_args, contended, decode, decode_key, encode, encode_key, eval, id_of, keys_then,
    optional_time, unexpected_status, RedisStore, CAS_ATTEMPTS,
};
use crate::model::{
    listing_position, now_unix, App, AppChange, AuditEvent, KeyChange, KeyRecord, Page,
    PageRequest, UnixSeconds, UsageSubject,
};
use crate::store::{Audit, Indexed, Keep, Records, StoreError, Upkeep, PURGE_CHUNK};
use async_trait::async_trait;

impl RedisStore {
    /// Adds `EXISTS` of the deployment's marker (see [`Names::marker`]) to a lookup's
    /// pipeline: 0 means the answering node does not hold the deployment's data.
    ///
    /// [`Names::marker`]: super::names::Names::marker
    fn holds_data(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("EXISTS").arg(self.names().marker());
    }

    pub(super) async fn get_json(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.read(redis::cmd("GET").arg(key)).await
    }

    /// The app as stored now: its raw JSON (for compare-and-set) and decoded form.
    pub(super) async fn current_app(&self, id: &str) -> Result<Option<(String, App)>, StoreError> {
        match self.get_json(&self.names().app(id)).await? {
            Some(json) => decode::<App>(&json).map(|app| Some((json, app))),
            None => Ok(None),
        }
    }

    /// One compare-and-set attempt of `update_app`: the change applied to the app as read.
    pub(super) async fn try_update_app(
        &self,
        id: &str,
        change: &AppChange,
        expected_version: Option<u64>,
        audit: Option<&Audit<(App, App)>>,
    ) -> Result<(i64, Option<(App, App)>), StoreError> {
        let Some((old_json, old)) = self.current_app(id).await? else {
            return Ok((MISSING, None));
        };
        if expected_version.is_some_and(|v| v != old.version) {
            return Err(StoreError::VersionMismatch);
        }
        let app = change.applied_to(&old);
        let mut cmd = eval(
            UPDATE_APP,
            &[
                &self.names().app(id),
                &self.names().app_name(&old.name),
                &self.names().app_name(&app.name),
                &self.names().audit(),
            ],
        );
        cmd.arg(id)
            .arg(old_json)
            .arg(encode(&app)?)
            .arg(self.names().channel())
            .arg(format!("app:{id}"));
        let both = (old, app);
        audit_args(&mut cmd, audit, &both)?;
        Ok((self.query(&cmd).await?, Some(both)))
    }

    /// One compare-and-set attempt of `delete_app`.
    pub(super) async fn try_delete_app(
        &self,
        id: &str,
        by: &str,
        expected_version: Option<u64>,
        audit: Option<&Audit<App>>,
    ) -> Result<(i64, Option<App>), StoreError> {
        let Some((old_json, old)) = self.current_app(id).await? else {
            return Ok((MISSING, None));
        };
        if expected_version.is_some_and(|v| v != old.version) {
            return Err(StoreError::VersionMismatch);
        }
        let keys = [
            self.names().app(id),
            self.names().app_name(&old.name),
            self.names().app_index(),
            self.names().deleted_apps(),
            self.names().audit(),
        ];
        let now = now_unix();
        let usage = super::usage::usage_hashes(self.names().base(), UsageSubject::App(id), now);
        let mut cmd = eval(DELETE_APP, &keys_then(&keys, &usage));
        cmd.arg(id)
            .arg(old_json)
            .arg(self.names().channel())
            .arg(listing_position(old.created_at, id))
            .arg(by);
        audit_args(&mut cmd, audit, &old)?;
        Ok((self.query(&cmd).await?, Some(old)))
    }

    /// One compare-and-set attempt of `update_key`.
    pub(super) async fn try_update_key(
        &self,
        id: &str,
        change: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<(i64, Option<KeyRecord>), StoreError> {
        let Some((cmd, key)) = self.key_change(UPDATE_KEY, &[], id, change, audit).await? else {
            return Ok((MISSING, None));
        };
        Ok((self.query(&cmd).await?, Some(key)))
    }

    /// The script call that changes key `id` as read now (KEYS and ARGV of [`UPDATE_KEY`],
    /// then `more_keys`), and the key as changed; `None` if the key does not exist.
    pub(super) async fn key_change(
        &self,
        script: &str,
        more_keys: &[String],
        id: &str,
        change: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<Option<(redis::Cmd, KeyRecord)>, StoreError> {
        let Some(old_json) = self.get_json(&self.names().key(id)).await? else {
            return Ok(None);
        };
        let old = decode_key(&old_json, None)?;
        let key = change.applied_to(&old).ok_or(StoreError::Revoked)?;
        let fixed = [
            self.names().key(id),
            self.names().revoked(),
            self.names().expiring(),
            self.names().audit(),
        ];
        let mut cmd = eval(script, &keys_then(&fixed, more_keys));
        cmd.arg(old_json)
            .arg(encode_key(&key)?)
            .arg(self.names().channel())
            .arg(id)
            .arg(optional_time(key.revoked_at))
            .arg(optional_time(key.expires_at));
        audit_args(&mut cmd, audit, &key)?;
        Ok(Some((cmd, key)))
    }

    /// One compare-and-set attempt of `roll_key`.
    pub(super) async fn try_roll_key(
        &self,
        old_id: &str,
        new: &KeyRecord,
        end: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<(i64, Option<KeyRecord>), StoreError> {
        let more = [
            self.names().app(&new.app_id),
            self.names().key(&new.id),
            self.names().key_index(),
            self.names().app_keys(&new.app_id),
            self.names().last_used(),
        ];
        let Some((mut cmd, old)) = self.key_change(ROLL_KEY, &more, old_id, end, audit).await?
        else {
            return Ok((MISSING, None));
        };
        cmd.arg(&new.id)
            .arg(encode_key(new)?)
            .arg(optional_time(new.last_used_at))
            .arg(listing_position(new.created_at, &new.id))
            .arg(optional_time(new.expires_at));
        Ok((self.query(&cmd).await?, Some(old)))
    }

    /// Up to `n` members of a listing index after `after`: one bounded `ZRANGEBYLEX`.
    pub(super) async fn positions_after(
        &self,
        index: &str,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<String>, StoreError> {
        let min = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(index).arg(min).arg("+").arg("LIMIT").arg(0).arg(n);
        self.read(&cmd).await
    }

    pub(super) async fn apps_after(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<Indexed<App>>, StoreError> {
        let positions = self
            .positions_after(&self.names().app_index(), after, n)
            .await?;
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = positions
            .iter()
            .map(|p| self.names().app(id_of(p)))
            .collect();
        let jsons: Vec<Option<String>> = self.read(redis::cmd("MGET").arg(&keys)).await?;
        positions
            .into_iter()
            .zip(jsons)
            .map(|(position, json)| Ok((position, json.map(|j| decode(&j)).transpose()?)))
            .collect()
    }

    /// Up to `n` keys of an index after `after`, with their last-use times: one pipelined
    /// round trip of two bounded reads (not a transaction: a key removed in between is
    /// simply missing from the page).
    pub(super) async fn keys_after(
        &self,
        index: &str,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<Indexed<KeyRecord>>, StoreError> {
        let positions = self.positions_after(index, after, n).await?;
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = positions.iter().map(|p| id_of(p)).collect();
        let record_keys: Vec<String> = ids.iter().map(|id| self.names().key(id)).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("MGET")
            .arg(&record_keys)
            .cmd("HMGET")
            .arg(self.names().last_used())
            .arg(&ids);
        let (jsons, times): (Vec<Option<String>>, Vec<Option<u64>>) = self.read_pipe(&pipe).await?;
        positions
            .into_iter()
            .zip(jsons.into_iter().zip(times))
            .map(|(position, (json, at))| {
                Ok((position, json.map(|j| decode_key(&j, at)).transpose()?))
            })
            .collect()
    }
}

#[async_trait]
impl Records for RedisStore {
    async fn create_app_audited(
        &self,
        app: &App,
        audit: Option<&Audit<App>>,
    ) -> Result<(), StoreError> {
        self.linked().await?;
        let json = encode(app)?;
        let mut cmd = eval(
            CREATE_APP,
            &[
                &self.names().app(&app.id),
                &self.names().app_name(&app.name),
                &self.names().app_index(),
                &self.names().audit(),
            ],
        );
        cmd.arg(&app.id)
            .arg(json)
            .arg(listing_position(app.created_at, &app.id));
        audit_args(&mut cmd, audit, app)?;
        match self.query::<i64>(&cmd).await? {
            DONE => Ok(()),
            TAKEN => Err(StoreError::Conflict),
            other => Err(unexpected_status(other)),
        }
    }

    /// With [`RedisStore::holds_data`] in the same round trip: see [`Records::get_key`].
    async fn get_app(&self, id: &str) -> Result<Option<App>, StoreError> {
        self.linked().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.names().app(id));
        self.holds_data(&mut pipe);
        let (json, marked): (Option<String>, u64) = self.read_pipe(&pipe).await?;
        match json {
            Some(json) => decode(&json).map(Some),
            None => absent(marked),
        }
    }

    async fn list_apps(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, App>,
    ) -> Result<Page<App>, StoreError> {
        self.linked().await?;
        crate::store::scan_index(page, keep, |after, n| async move {
            self.apps_after(after.as_deref(), n).await
        })
        .await
    }

    async fn update_app_audited(
        &self,
        id: &str,
        change: &AppChange,
        expected_version: Option<u64>,
        audit: Option<&Audit<(App, App)>>,
    ) -> Result<(App, App), StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self
                .try_update_app(id, change, expected_version, audit)
                .await?
            {
                (DONE, Some(both)) => return Ok(both),
                (MISSING, _) => return Err(StoreError::NotFound),
                (TAKEN, _) => return Err(StoreError::Conflict),
                (STALE, _) => continue,
                (other, _) => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn delete_app_audited(
        &self,
        id: &str,
        by: &str,
        expected_version: Option<u64>,
        audit: Option<&Audit<App>>,
    ) -> Result<Option<App>, StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self.try_delete_app(id, by, expected_version, audit).await? {
                (DONE, old) => return Ok(old),
                (MISSING, _) => return Ok(None),
                (STALE, _) => continue,
                (other, _) => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn create_key_audited(
        &self,
        key: &KeyRecord,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<(), StoreError> {
        self.linked().await?;
        let keys = [
            self.names().app(&key.app_id),
            self.names().key(&key.id),
            self.names().key_index(),
            self.names().app_keys(&key.app_id),
            self.names().last_used(),
            self.names().expiring(),
            self.names().audit(),
        ];
        let mut cmd = eval(CREATE_KEY, &keys.each_ref().map(String::as_str));
        cmd.arg(&key.id)
            .arg(encode_key(key)?)
            .arg(optional_time(key.last_used_at))
            .arg(listing_position(key.created_at, &key.id))
            .arg(optional_time(key.expires_at));
        audit_args(&mut cmd, audit, key)?;
        match self.query::<i64>(&cmd).await? {
            DONE => Ok(()),
            MISSING => Err(StoreError::NotFound),
            TAKEN => Err(StoreError::Conflict),
            other => Err(unexpected_status(other)),
        }
    }

    /// "No such key" is believed only from a node that holds the deployment's data: the same
    /// round trip asks whether the deployment's marker exists there. A server that answers for
    /// the slot without the data (seen in a failover test: another `redis-server` had started
    /// on the dead master's freed port) would make a valid key 401 and an unknown id.
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.linked().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.names().key(id))
            .cmd("HGET")
            .arg(self.names().last_used())
            .arg(id);
        self.holds_data(&mut pipe);
        let (json, at, marked): (Option<String>, Option<u64>, u64) = self.read_pipe(&pipe).await?;
        match json {
            Some(json) => decode_key(&json, at).map(Some),
            None => absent(marked),
        }
    }

    async fn list_keys(
        &self,
        app_id: Option<&str>,
        page: PageRequest<'_>,
        keep: Keep<'_, KeyRecord>,
    ) -> Result<Page<KeyRecord>, StoreError> {
        self.linked().await?;
        let index = app_id.map_or_else(|| self.names().key_index(), |a| self.names().app_keys(a));
        let index = index.as_str();
        crate::store::scan_index(page, keep, |after, n| async move {
            self.keys_after(index, after.as_deref(), n).await
        })
        .await
    }

    async fn update_key_audited(
        &self,
        id: &str,
        change: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<KeyRecord, StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self.try_update_key(id, change, audit).await? {
                (DONE, Some(key)) => return Ok(key),
                (MISSING, _) => return Err(StoreError::NotFound),
                (STALE, _) => continue,
                (other, _) => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn roll_key(
        &self,
        old_id: &str,
        new: &KeyRecord,
        end: &KeyChange,
        audit: Option<&Audit<KeyRecord>>,
    ) -> Result<KeyRecord, StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self.try_roll_key(old_id, new, end, audit).await? {
                (DONE, Some(old)) => return Ok(old),
                (MISSING, _) => return Err(StoreError::NotFound),
                (TAKEN, _) => return Err(StoreError::Conflict),
                (STALE, _) => continue,
                (other, _) => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.linked().await?;
        self.append_audit_event(event).await
    }

    async fn list_audit(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, AuditEvent>,
    ) -> Result<Page<AuditEvent>, StoreError> {
        self.linked().await?;
        crate::store::scan_index(page, keep, |before, n| async move {
            self.audit_before(before.as_deref(), n).await
        })
        .await
    }
}

#[async_trait]
impl Upkeep for RedisStore {
    async fn revoke_keys_of_deleted_apps(&self, at: UnixSeconds) -> Result<usize, StoreError> {
        self.linked().await?;
        let picked: Vec<String> = self
            .read(
                redis::cmd("HRANDFIELD")
                    .arg(self.names().deleted_apps())
                    .arg(1)
                    .arg("WITHVALUES"),
            )
            .await?;
        let [app, by] = picked.as_slice() else {
            return Ok(0);
        };
        let index = self.names().app_keys(app);
        let positions = self.positions_after(&index, None, PURGE_CHUNK).await?;
        if positions.is_empty() {
            // No key can be added to a deleted app, so an empty index stays empty.
            self.query::<i64>(redis::cmd("HDEL").arg(self.names().deleted_apps()).arg(app))
                .await?;
            return Ok(1);
        }
        let fixed = [index, self.names().revoked(), self.names().expiring()];
        let records: Vec<String> = positions
            .iter()
            .map(|p| self.names().key(id_of(p)))
            .collect();
        let mut cmd = eval(REVOKE_APP_KEYS, &keys_then(&fixed, &records));
        cmd.arg(at).arg(by).arg(&positions);
        self.query::<i64>(&cmd).await?;
        Ok(positions.len())
    }

    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        self.linked().await?;
        // Key records never change app or creation time, so reading them first is race-free;
        // the script's DEL decides which of two concurrent deletes wins.
        let Some(json) = self.get_json(&self.names().key(id)).await? else {
            return Ok(false);
        };
        let record: KeyRecord = decode(&json)?;
        let keys = [
            self.names().key(id),
            self.names().key_index(),
            self.names().app_keys(&record.app_id),
            self.names().last_used(),
            self.names().revoked(),
            self.names().expiring(),
        ];
        let usage =
            super::usage::usage_hashes(self.names().base(), UsageSubject::Key(id), now_unix());
        let mut cmd = eval(DELETE_KEY, &keys_then(&keys, &usage));
        cmd.arg(id)
            .arg(self.names().channel())
            .arg(listing_position(record.created_at, id));
        Ok(self.query::<i64>(&cmd).await? == DONE)
    }

    async fn revoked_before(&self, before: UnixSeconds) -> Result<Vec<String>, StoreError> {
        self.linked().await?;
        let mut cmd = redis::cmd("ZRANGEBYSCORE");
        cmd.arg(self.names().revoked())
            .arg("-inf")
            .arg(format!("({before}"))
            .arg("LIMIT")
            .arg(0)
            .arg(PURGE_CHUNK);
        self.read(&cmd).await
    }

    async fn count_expiring(&self, from: UnixSeconds, to: UnixSeconds) -> Result<u64, StoreError> {
        self.linked().await?;
        self.read(
            redis::cmd("ZCOUNT")
                .arg(self.names().expiring())
                .arg(format!("({from}"))
                .arg(to),
        )
        .await
    }

    async fn upgrade(&self) -> Result<usize, StoreError> {
        self.linked().await?;
        self.upgrade_legacy_indexes().await
    }
}
