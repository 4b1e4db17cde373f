//! Upstream credentials in Redis: `cred:{name}` holds the record's JSON (the value only sealed),
//! `credidx` lists them (`{created_at:011}.{name}`, read one bounded `ZRANGEBYLEX` at a time),
//! `cred_last_used` holds last-use times. Every write is one script that also adds its audit
//! event and publishes `cred:{name}` on the invalidation channel, so a change, its event and its
//! announcement are never separated. Updates and deletes are compare-and-set on the JSON read.

use super::scripts::{DONE, MISSING, STALE, TAKEN};
use super::{
    absent, audit_args, contended, decode, encode, eval, unexpected_status, RedisStore,
    CAS_ATTEMPTS,
};
use crate::model::{
    listing_position, CredentialChange, CredentialRecord, Page, PageRequest, UnixSeconds,
};
use crate::store::{Audit, CredentialRecords, Indexed, Keep, StoreError};
use async_trait::async_trait;

/// KEYS: record, index, audit stream. ARGV: json, listing position, channel, message, audit.
const CREATE_CREDENTIAL: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
if ARGV[6] ~= '' then redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[6]) end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1";

/// KEYS: record, audit stream. ARGV: json read by the caller, new json, channel (empty: not
/// announced), message, audit.
const UPDATE_CREDENTIAL: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[1] then return -2 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[6] ~= '' then redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[6]) end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1";

/// KEYS: record, index, last-used hash, audit stream. ARGV: json read by the caller, listing
/// position, name, channel, message, audit.
const DELETE_CREDENTIAL: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if cur ~= ARGV[1] then return -2 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[3])
if ARGV[7] ~= '' then redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'e', ARGV[7]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1";

/// KEYS: last-used hash, then one record per use. ARGV: name, time, name, time, ...
const TOUCH_CREDENTIALS: &str = r"
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local name = ARGV[2 * i - 3]
    local at = tonumber(ARGV[2 * i - 2])
    local cur = tonumber(redis.call('HGET', KEYS[1], name))
    if not cur or cur < at then redis.call('HSET', KEYS[1], name, ARGV[2 * i - 2]) end
  end
end
return 1";

/// Uses per script call: keeps each script short.
const TOUCH_CHUNK: usize = 500;

/// The record without its last-use time, which lives in the last-used hash.
fn encode_record(record: &CredentialRecord) -> Result<String, StoreError> {
    encode(&CredentialRecord {
        last_used_at: None,
        ..record.clone()
    })
}

fn message(name: &str) -> String {
    format!("cred:{name}")
}

/// The name at the end of a listing position (`{created_at}.{name}`; names hold no `.`).
fn name_of(position: &str) -> &str {
    position.split_once('.').map_or(position, |(_, name)| name)
}

impl RedisStore {
    async fn current_credential(
        &self,
        name: &str,
    ) -> Result<Option<(String, CredentialRecord)>, StoreError> {
        match self.get_json(&self.names().credential(name)).await? {
            Some(json) => decode::<CredentialRecord>(&json).map(|c| Some((json, c))),
            None => Ok(None),
        }
    }

    async fn try_update_credential(
        &self,
        name: &str,
        change: &CredentialChange,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<(i64, Option<CredentialRecord>), StoreError> {
        let Some((old_json, old)) = self.current_credential(name).await? else {
            return Ok((MISSING, None));
        };
        let record = change.applied_to(&old).ok_or(StoreError::VersionMismatch)?;
        let mut cmd = eval(
            UPDATE_CREDENTIAL,
            &[&self.names().credential(name), &self.names().audit()],
        );
        let channel = if change.announce {
            self.names().channel()
        } else {
            String::new()
        };
        cmd.arg(old_json)
            .arg(encode_record(&record)?)
            .arg(channel)
            .arg(message(name));
        audit_args(&mut cmd, audit, &record)?;
        Ok((self.query(&cmd).await?, Some(record)))
    }

    async fn try_delete_credential(
        &self,
        name: &str,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<(i64, Option<CredentialRecord>), StoreError> {
        let Some((old_json, old)) = self.current_credential(name).await? else {
            return Ok((MISSING, None));
        };
        let mut cmd = eval(
            DELETE_CREDENTIAL,
            &[
                &self.names().credential(name),
                &self.names().credential_index(),
                &self.names().credential_last_used(),
                &self.names().audit(),
            ],
        );
        cmd.arg(old_json)
            .arg(listing_position(old.created_at, name))
            .arg(name)
            .arg(self.names().channel())
            .arg(message(name));
        audit_args(&mut cmd, audit, &old)?;
        Ok((self.query(&cmd).await?, Some(old)))
    }

    /// Up to `n` credentials after `after`, with last-use times: one bounded index read, then
    /// one pipelined `MGET` + `HMGET`.
    async fn credentials_after(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<Indexed<CredentialRecord>>, StoreError> {
        let positions = self
            .positions_after(&self.names().credential_index(), after, n)
            .await?;
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = positions.iter().map(|p| name_of(p)).collect();
        let records: Vec<String> = names.iter().map(|n| self.names().credential(n)).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("MGET")
            .arg(&records)
            .cmd("HMGET")
            .arg(self.names().credential_last_used())
            .arg(&names);
        let (jsons, times): (Vec<Option<String>>, Vec<Option<u64>>) = self.read_pipe(&pipe).await?;
        positions
            .into_iter()
            .zip(jsons.into_iter().zip(times))
            .map(|(position, (json, at))| {
                let record = json
                    .map(|j| decode::<CredentialRecord>(&j))
                    .transpose()?
                    .map(|mut c| {
                        c.last_used_at = at;
                        c
                    });
                Ok((position, record))
            })
            .collect()
    }
}

#[async_trait]
impl CredentialRecords for RedisStore {
    async fn create_credential_audited(
        &self,
        credential: &CredentialRecord,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<(), StoreError> {
        self.linked().await?;
        let name = &credential.name;
        let mut cmd = eval(
            CREATE_CREDENTIAL,
            &[
                &self.names().credential(name),
                &self.names().credential_index(),
                &self.names().audit(),
            ],
        );
        cmd.arg(encode_record(credential)?)
            .arg(listing_position(credential.created_at, name))
            .arg(self.names().channel())
            .arg(message(name));
        audit_args(&mut cmd, audit, credential)?;
        match self.query::<i64>(&cmd).await? {
            DONE => Ok(()),
            TAKEN => Err(StoreError::Conflict),
            other => Err(unexpected_status(other)),
        }
    }

    async fn get_credential(&self, name: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.linked().await?;
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.names().credential(name))
            .cmd("HGET")
            .arg(self.names().credential_last_used())
            .arg(name)
            .cmd("EXISTS")
            .arg(self.names().marker());
        let (json, at, marked): (Option<String>, Option<u64>, u64) = self.read_pipe(&pipe).await?;
        match json {
            Some(json) => {
                let mut record: CredentialRecord = decode(&json)?;
                record.last_used_at = at;
                Ok(Some(record))
            }
            None => absent(marked),
        }
    }

    async fn list_credentials(
        &self,
        page: PageRequest<'_>,
        keep: Keep<'_, CredentialRecord>,
    ) -> Result<Page<CredentialRecord>, StoreError> {
        self.linked().await?;
        crate::store::scan_index(page, keep, |after, n| async move {
            self.credentials_after(after.as_deref(), n).await
        })
        .await
    }

    async fn update_credential_audited(
        &self,
        name: &str,
        change: &CredentialChange,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<CredentialRecord, StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self.try_update_credential(name, change, audit).await? {
                (DONE, Some(record)) => return Ok(record),
                (MISSING, _) => return Err(StoreError::NotFound),
                (STALE, _) => continue,
                (other, _) => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn delete_credential_audited(
        &self,
        name: &str,
        audit: Option<&Audit<CredentialRecord>>,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        self.linked().await?;
        for _ in 0..CAS_ATTEMPTS {
            match self.try_delete_credential(name, audit).await? {
                (DONE, old) => return Ok(old),
                (MISSING, _) => return Ok(None),
                (STALE, _) => continue,
                (other, _) => return Err(unexpected_status(other)),
            }
        }
        Err(contended())
    }

    async fn touch_credentials(&self, uses: &[(String, UnixSeconds)]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        self.linked().await?;
        let mut pipe = redis::pipe();
        for chunk in uses.chunks(TOUCH_CHUNK) {
            let mut keys = vec![self.names().credential_last_used()];
            keys.extend(chunk.iter().map(|(name, _)| self.names().credential(name)));
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut cmd = eval(TOUCH_CREDENTIALS, &keys);
            for (name, at) in chunk {
                cmd.arg(name).arg(at);
            }
            pipe.add_command(cmd).ignore();
        }
        self.query_pipe::<()>(&pipe).await
    }
}
