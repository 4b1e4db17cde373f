//! Token-quota counts in Redis: one string per key per window (`tokens:{id}:{kind}:{window}`),
//! expiring after its window ends, and the script that adds a batch exactly once and answers
//! the totals. Used by [`super`] (the Redis store).

use super::names::Names;
use crate::model::UnixSeconds;
use crate::store::{StoreError, TokenBatch, TokenTotals, TOKEN_CHUNK, USAGE_BATCH_MEMORY_SECS};
use std::sync::Arc;

/// KEYS: the chunk's marker, then per key its minute, day and month counts.
/// ARGV: marker lifetime (seconds), then the three windows' expiry (unix seconds), then per
/// key the tokens to add (0: read only).
/// Returns the three totals per key, in order. The marker makes a repeated chunk add nothing.
const ADD_TOKENS: &str = r"
local apply = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
local out = {}
for i = 0, (#KEYS - 1) / 3 - 1 do
  local n = tonumber(ARGV[5 + i])
  for w = 1, 3 do
    local k = KEYS[2 + 3 * i + w - 1]
    if apply and n > 0 then
      out[#out + 1] = redis.call('INCRBY', k, n)
      redis.call('EXPIREAT', k, ARGV[1 + w])
    else
      out[#out + 1] = tonumber(redis.call('GET', k) or '0')
    end
  end
end
return out";

/// A window's count is kept a while past its end, for a clock running behind.
const KEEP_AFTER_END: UnixSeconds = 120;

/// One script call per chunk of at most [`TOKEN_CHUNK`] keys: the batch's keys, then `read`'s.
pub(super) fn add_pipeline(
    names: &Names,
    batch: &TokenBatch,
    read: &[Arc<str>],
) -> redis::Pipeline {
    let entries: Vec<(&str, u64)> = batch
        .spent
        .iter()
        .map(|(k, n)| (&**k, *n))
        .chain(read.iter().map(|k| (&**k, 0)))
        .collect();
    let mut pipe = redis::pipe();
    for (n, chunk) in entries.chunks(TOKEN_CHUNK).enumerate() {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ADD_TOKENS)
            .arg(1 + 3 * chunk.len())
            .arg(names.tokens_batch(&batch.id, n));
        for (key, _) in chunk {
            for (kind, window) in batch.windows.ids.iter().enumerate() {
                cmd.arg(names.tokens(key, kind, *window));
            }
        }
        cmd.arg(USAGE_BATCH_MEMORY_SECS);
        for end in batch.windows.ends {
            cmd.arg(end + KEEP_AFTER_END);
        }
        for (_, tokens) in chunk {
            cmd.arg(*tokens);
        }
        pipe.add_command(cmd);
    }
    pipe
}

/// The pipeline's answers as totals per key, checked for shape.
pub(super) fn totals(answers: Vec<Vec<u64>>, keys: usize) -> Result<Vec<TokenTotals>, StoreError> {
    let flat: Vec<u64> = answers.into_iter().flatten().collect();
    if flat.len() != keys * 3 {
        return Err(StoreError::Corrupt(format!(
            "{} token counts for {keys} keys",
            flat.len()
        )));
    }
    Ok(flat.chunks(3).map(|c| [c[0], c[1], c[2]]).collect())
}
