//! Upgrading a Redis written by versions before the listing indexes: their sets of app ids
//! (`apps`), key ids (`keys`) and each app's key ids (`appkeys:{app}`) are read in chunks
//! (`SSCAN`), each record's listing position is added to the sorted-set indexes, and the old
//! sets are deleted once read. Every command is bounded; running it twice, or on two instances
//! at once, adds nothing twice. Standalone only in practice: those versions could not run on a
//! Redis Cluster, so there the (tagged) old names are simply found empty.

use super::{decode, decode_key, RedisStore};
use crate::model::{listing_position, App};
use crate::store::StoreError;
use std::collections::BTreeSet;

/// What an old set holds the ids of.
#[derive(Clone, Copy)]
enum Records {
    Apps,
    Keys,
}

/// Ids read per `SSCAN` (a hint to Redis) and records per `MGET`.
const CHUNK: usize = 500;

impl RedisStore {
    /// Moves the old index sets into the sorted-set indexes; how many records it indexed.
    pub(super) async fn upgrade_legacy_indexes(&self) -> Result<usize, StoreError> {
        let apps = self.names().legacy("apps");
        let keys = self.names().legacy("keys");
        let mut indexed = 0;
        indexed += self.scan_set(&apps, Records::Apps).await?;
        indexed += self.scan_set(&keys, Records::Keys).await?;
        Ok(indexed)
    }

    async fn scan_set(&self, set: &str, records: Records) -> Result<usize, StoreError> {
        let mut cursor = 0u64;
        let mut indexed = 0;
        loop {
            let mut cmd = redis::cmd("SSCAN");
            cmd.arg(set).arg(cursor).arg("COUNT").arg(CHUNK);
            let (next, ids): (u64, Vec<String>) = self.read(&cmd).await?;
            if !ids.is_empty() {
                indexed += match records {
                    Records::Apps => self.index_apps(ids).await?,
                    Records::Keys => self.index_keys(ids).await?,
                };
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.query::<i64>(redis::cmd("DEL").arg(set)).await?;
        Ok(indexed)
    }

    async fn index_apps(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        let names: Vec<String> = ids.iter().map(|id| self.names().app(id)).collect();
        let jsons: Vec<Option<String>> = self.read(redis::cmd("MGET").arg(&names)).await?;
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.names().app_index());
        let mut n = 0;
        for json in jsons.into_iter().flatten() {
            let app: App = decode(&json)?;
            cmd.arg(0).arg(listing_position(app.created_at, &app.id));
            n += 1;
        }
        if n > 0 {
            self.query::<i64>(&cmd).await?;
        }
        Ok(n)
    }

    async fn index_keys(&self, ids: Vec<String>) -> Result<usize, StoreError> {
        let names: Vec<String> = ids.iter().map(|id| self.names().key(id)).collect();
        let jsons: Vec<Option<String>> = self.read(redis::cmd("MGET").arg(&names)).await?;
        let mut pipe = redis::pipe();
        let mut n = 0;
        let mut apps = BTreeSet::new();
        for json in jsons.into_iter().flatten() {
            let key = decode_key(&json, None)?;
            let position = listing_position(key.created_at, &key.id);
            pipe.cmd("ZADD")
                .arg(self.names().key_index())
                .arg(0)
                .arg(&position)
                .ignore();
            pipe.cmd("ZADD")
                .arg(self.names().app_keys(&key.app_id))
                .arg(0)
                .arg(&position)
                .ignore();
            if let (Some(at), None) = (key.expires_at, key.revoked_at) {
                pipe.cmd("ZADD")
                    .arg(self.names().expiring())
                    .arg(at)
                    .arg(&key.id)
                    .ignore();
            }
            apps.insert(key.app_id);
            n += 1;
        }
        // The per-app sets of the old layout are read through the keys themselves: each app's
        // goes once, with the chunk of its keys.
        for app in apps {
            pipe.cmd("DEL")
                .arg(self.names().legacy(&format!("appkeys:{app}")))
                .ignore();
        }
        if n > 0 {
            self.query_pipe::<()>(&pipe).await?;
        }
        Ok(n)
    }
}
