//! Usage counts in Redis: where they live, the script that adds a batch exactly once, and the
//! read. Used by [`super`] (the Redis store); kept apart because none of it touches app or key records.
//!
//! Layout (all under `{prefix}usage:`, the prefix `sg:` by default):
//! - `key:{id}:{YYYY-MM}` and `app:{id}:{YYYY-MM}`: one hash per key (or app) per UTC month,
//!   date (`YYYY-MM-DD`) -> request count. Each expires (`EXPIREAT`) [`USAGE_RETENTION_DAYS`]
//!   after its month ends, so nothing grows for ever and a read of up to 366 days touches at
//!   most 13 hashes (one pipelined round trip).
//! - `batch:{batch id}:{chunk}`: set, in the same script as the increments, when a chunk of a
//!   batch is applied; a chunk whose marker exists is skipped. Expires after
//!   [`USAGE_BATCH_MEMORY_SECS`].
//! - `key:{id}` and `app:{id}` (no month): the one hash per subject of earlier versions. Never
//!   written now; still read (added to the monthly counts) and deleted with its subject.

use crate::model::{
    usage_field_date, utc_date, utc_day_number, UnixSeconds, UsageBatch, UsageSubject,
};
use crate::store::{
    usage_cutoff, usage_increments, Increment, StoreError, USAGE_BATCH_MEMORY_SECS, USAGE_CHUNK,
    USAGE_RETENTION_DAYS,
};
use std::collections::BTreeMap;

/// Under the store's prefix (`store.prefix`, default `sg:`).
const KEY_USAGE: &str = "usage:key:";
const APP_USAGE: &str = "usage:app:";
const BATCH: &str = "usage:batch:";
const DAY: UnixSeconds = 86_400;

/// KEYS: the chunk's marker, then one usage hash per increment (repeats allowed).
/// ARGV: marker lifetime in seconds, then per increment: date, count, hash expiry (unix seconds).
/// Returns 1 if applied, 0 if the marker showed the chunk was applied before.
///
/// One script, so the marker and the increments land together or not at all (a link lost
/// mid-way cannot leave one without the other); counts never fail on their own since each fits
/// a signed 64-bit counter (checked before sending).
const ADD_USAGE: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #KEYS do
  local at = 3 * i - 4
  redis.call('HINCRBY', KEYS[i], ARGV[at], ARGV[at + 1])
  redis.call('EXPIREAT', KEYS[i], ARGV[at + 2])
end
return 1";

/// The pipeline that adds `batches` at `now`: one script call per chunk of at most
/// [`USAGE_CHUNK`] increments, each idempotent under `{batch id}:{chunk number}`. `None` when
/// there is nothing to write. Every batch is checked before anything is queued, so a bad batch
/// writes nothing.
pub(super) fn add_pipeline(
    prefix: &str,
    batches: &[UsageBatch],
    now: UnixSeconds,
) -> Result<Option<redis::Pipeline>, StoreError> {
    let cutoff = usage_cutoff(now);
    let mut pipe = redis::pipe();
    let mut queued = false;
    for batch in batches {
        // Chunks are cut before old days are dropped, so a retry made after the cutoff moved
        // on still puts each increment in the chunk (and under the marker) it had before.
        for (n, chunk) in usage_increments(&batch.counts)?
            .chunks(USAGE_CHUNK)
            .enumerate()
        {
            let kept: Vec<&Increment<'_>> = chunk
                .iter()
                .filter(|(_, date, _)| *date >= cutoff.as_str())
                .collect();
            if let Some(cmd) = chunk_command(prefix, &batch.id, n, &kept) {
                pipe.add_command(cmd).ignore();
                queued = true;
            }
        }
    }
    Ok(queued.then_some(pipe))
}

fn chunk_command(
    prefix: &str,
    batch_id: &str,
    n: usize,
    increments: &[&Increment<'_>],
) -> Option<redis::Cmd> {
    if increments.is_empty() {
        return None;
    }
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(ADD_USAGE)
        .arg(increments.len() + 1)
        .arg(format!("{prefix}{BATCH}{batch_id}:{n}"));
    for (subject, date, _) in increments {
        cmd.arg(usage_hash(prefix, *subject, month_of(date)));
    }
    cmd.arg(USAGE_BATCH_MEMORY_SECS);
    for (_, date, count) in increments {
        cmd.arg(*date).arg(*count).arg(expires_at(date));
    }
    Some(cmd)
}

/// Every hash that may hold usage of `subject` at `now`: one per month whose counts are still
/// within retention (plus next month, for an instance whose clock runs ahead), and the
/// single hash of earlier versions. For deleting a key's or app's usage.
pub(super) fn usage_hashes(
    prefix: &str,
    subject: UsageSubject<'_>,
    now: UnixSeconds,
) -> Vec<String> {
    usage_suffixes(now)
        .iter()
        .map(|suffix| format!("{}{suffix}", subject_prefix(prefix, subject)))
        .collect()
}

/// What [`usage_hashes`] appends to a subject's prefix (`sg:usage:key:{id}`): `""` for the
/// hash of earlier versions, then `:{YYYY-MM}` per month. For scripts that derive the hashes
/// of many subjects themselves.
pub(super) fn usage_suffixes(now: UnixSeconds) -> Vec<String> {
    let first = month_number(month_of(&utc_date(
        now.saturating_sub(USAGE_RETENTION_DAYS * DAY),
    )));
    let last = month_number(month_of(&utc_date(now))) + 1;
    std::iter::once(String::new())
        .chain((first..=last).map(|m| format!(":{}", month_name(m))))
        .collect()
}

/// A read of some dates of one subject: which hash to ask for which dates, each hash once.
pub(super) struct UsageRead {
    /// Hash name and, for each field asked of it, the position of that date in the request.
    hashes: Vec<(String, Vec<usize>)>,
    len: usize,
}

impl UsageRead {
    /// Groups `fields` ([`crate::model::usage_field`]s) by month; the hash of earlier versions
    /// is asked for every field. Strings that are not fields read as 0 without asking.
    pub(super) fn new(prefix: &str, subject: UsageSubject<'_>, dates: &[String]) -> UsageRead {
        let mut by_month: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut valid = Vec::new();
        for (i, date) in dates.iter().enumerate() {
            if usage_field_date(date).and_then(utc_day_number).is_some() {
                by_month.entry(month_of(date)).or_default().push(i);
                valid.push(i);
            }
        }
        let mut hashes: Vec<(String, Vec<usize>)> = by_month
            .into_iter()
            .map(|(month, at)| (usage_hash(prefix, subject, month), at))
            .collect();
        if !valid.is_empty() {
            hashes.push((subject_prefix(prefix, subject), valid));
        }
        UsageRead {
            hashes,
            len: dates.len(),
        }
    }

    /// One `HMGET` per hash; `None` when there is nothing to ask.
    pub(super) fn pipeline(&self, dates: &[String]) -> Option<redis::Pipeline> {
        if self.hashes.is_empty() {
            return None;
        }
        let mut pipe = redis::pipe();
        for (hash, at) in &self.hashes {
            pipe.cmd("HMGET").arg(hash);
            for &i in at {
                pipe.arg(&dates[i]);
            }
        }
        Some(pipe)
    }

    /// The count of each requested date, in order, from the pipeline's answers (zeros where
    /// nothing was asked or nothing was recorded).
    pub(super) fn counts(&self, answers: Vec<Vec<Option<u64>>>) -> Result<Vec<u64>, StoreError> {
        let mut counts = vec![0u64; self.len];
        if answers.len() != self.hashes.len() {
            return Err(mismatch(answers.len(), self.hashes.len()));
        }
        for ((_, at), found) in self.hashes.iter().zip(answers) {
            if found.len() != at.len() {
                return Err(mismatch(found.len(), at.len()));
            }
            for (&i, n) in at.iter().zip(found) {
                counts[i] = counts[i].saturating_add(n.unwrap_or_default());
            }
        }
        Ok(counts)
    }
}

fn mismatch(got: usize, asked: usize) -> StoreError {
    StoreError::Corrupt(format!("usage read answered {got} values for {asked}"))
}

fn subject_prefix(prefix: &str, subject: UsageSubject<'_>) -> String {
    match subject {
        UsageSubject::Key(id) => format!("{prefix}{KEY_USAGE}{id}"),
        UsageSubject::App(id) => format!("{prefix}{APP_USAGE}{id}"),
    }
}

fn usage_hash(prefix: &str, subject: UsageSubject<'_>, month: &str) -> String {
    format!("{}:{month}", subject_prefix(prefix, subject))
}

/// `YYYY-MM` of a checked `YYYY-MM-DD` date.
fn month_of(date: &str) -> &str {
    date.get(..7).unwrap_or(date)
}

/// Months since year 0 (`year * 12 + month - 1`) of a `YYYY-MM` string written by
/// [`utc_date`], which makes month steps plain additions.
fn month_number(month: &str) -> u64 {
    let year: u64 = month.get(..4).and_then(|y| y.parse().ok()).unwrap_or(0);
    let month: u64 = month.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    year * 12 + month.saturating_sub(1)
}

fn month_name(number: u64) -> String {
    format!("{:04}-{:02}", number / 12, number % 12 + 1)
}

/// When the hash holding `date` expires: [`USAGE_RETENTION_DAYS`] after its month ends, so
/// the month's last day is kept that long and its first day a month longer.
fn expires_at(date: &str) -> UnixSeconds {
    let next_month = month_name(month_number(month_of(date)) + 1);
    let month_end = utc_day_number(&format!("{next_month}-01")).unwrap_or_default();
    (month_end + USAGE_RETENTION_DAYS) * DAY
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(date: &str) -> UnixSeconds {
        utc_day_number(date).expect("date") * DAY
    }

    #[test]
    fn a_month_hash_expires_retention_days_after_the_month_ends() {
        assert_eq!(
            expires_at("2024-02-01"),
            at("2024-03-01") + USAGE_RETENTION_DAYS * DAY
        );
        assert_eq!(expires_at("2024-02-29"), expires_at("2024-02-01"));
        assert_eq!(
            expires_at("2024-12-31"),
            at("2025-01-01") + USAGE_RETENTION_DAYS * DAY
        );
    }

    #[test]
    fn usage_hashes_cover_every_month_still_within_retention() {
        let now = at("2026-12-01") + 3_600;
        let hashes = usage_hashes("sg:", UsageSubject::Key("k1"), now);
        // 400 days before 2026-12-01 is 2025-10-27: October 2025 through next month.
        let mut expected = vec!["sg:usage:key:k1".to_owned()];
        for month in ["2025-10", "2025-11", "2025-12"] {
            expected.push(format!("sg:usage:key:k1:{month}"));
        }
        for m in 1..=12 {
            expected.push(format!("sg:usage:key:k1:2026-{m:02}"));
        }
        expected.push("sg:usage:key:k1:2027-01".to_owned());
        assert_eq!(hashes, expected);
        // Every month whose hash has not expired yet is listed.
        let oldest_alive = month_number("2025-10");
        assert!(at(&format!("{}-01", month_name(oldest_alive))) < now);
        assert!(expires_at("2025-10-01") > now);
        assert!(expires_at("2025-09-30") <= now);
    }

    #[test]
    fn a_year_of_dates_reads_at_most_thirteen_monthly_hashes_and_the_old_one() {
        let today = utc_day_number("2025-01-30").expect("date");
        let dates: Vec<String> = (0..366)
            .map(|back| utc_date((today - back) * DAY))
            .collect();
        let read = UsageRead::new("sg:", UsageSubject::App("a1"), &dates);
        assert_eq!(read.hashes.len(), 14);
        assert_eq!(read.hashes[0].0, "sg:usage:app:a1:2024-01");
        assert_eq!(read.hashes[13].0, "sg:usage:app:a1");
        assert_eq!(read.hashes[13].1.len(), 366);
    }

    #[test]
    fn reads_sum_the_monthly_and_the_old_hash_in_request_order() {
        let dates: Vec<String> = ["2024-03-01", "nonsense", "2024-02-29", "2024-03-01"]
            .iter()
            .map(|d| (*d).to_owned())
            .collect();
        let read = UsageRead::new("sg:", UsageSubject::Key("k"), &dates);
        // Months in order (February, March), then the old hash with every valid date.
        let answers = vec![
            vec![Some(2)],
            vec![Some(5), None],
            vec![Some(100), Some(1), None],
        ];
        assert_eq!(read.counts(answers).expect("counts"), [105, 0, 3, 0]);
        assert!(read.counts(vec![vec![Some(1)]]).is_err());
    }
}
