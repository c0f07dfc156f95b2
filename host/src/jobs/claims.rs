//! Claims: the range of each batch, agreed once per (partition, first
//! offset) before any output of it is written, so that every member that
//! ever writes an output named by that first offset writes the same records
//! (see README "Delivery guarantees").
//!
//! A claim is created only if none exists (Redis `HSETNX`, one script call
//! per batch): the first member to claim a start offset fixes the end; a
//! later one (the next owner after a crash, or a member that stalled and
//! woke up) adopts it. The batch's first offsets are then committed to the
//! group, which the broker refuses to a member that lost its partitions, so
//! a claim is never acted on by a member that no longer owns the partition.
//! Claims below a partition's committed offset are deleted: nobody resumes
//! there again. (Kafka offset-commit metadata would be the natural home, but
//! nisshi stores it without returning it.)
//!
//! Keys: `<prefix>:claims:<group>:<topic>:<partition>`, a hash from first
//! offset to end. Production Redis needs persistence (AOF) for claims to
//! survive a Redis restart. A Redis that stops answering for a while is
//! waited out (`redis_conn`): every command here is idempotent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::Script;

use crate::redis_conn::{Error, RedisConn};

/// KEYS: one hash per partition. ARGV: (first offset, end) per key, then the
/// hash's time to live in seconds. Returns the agreed end of each.
const CLAIM: &str = r"
local agreed = {}
local ttl = ARGV[2 * #KEYS + 1]
for i, key in ipairs(KEYS) do
  local first, end_ = ARGV[2 * i - 1], ARGV[2 * i]
  redis.call('HSETNX', key, first, end_)
  redis.call('EXPIRE', key, ttl)
  agreed[i] = tonumber(redis.call('HGET', key, first))
end
return agreed
";

/// A partition's claims expire when it has been idle this long: claims left
/// by crashed members and zombies do not pile up. Far longer than any stall
/// a member survives (its session would have expired) and than the topic's
/// retention, after which nobody resumes from those offsets.
const CLAIM_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// One partition's range in a batch: `[first, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub partition: i32,
    pub first: i64,
    pub end: i64,
}

/// A handle on a group's claims; clones share what this process claimed
/// (the consumer claims, the durable path deletes what commits passed).
#[derive(Clone)]
pub struct Claims {
    connection: RedisConn,
    key_prefix: String,
    script: Script,
    /// First offsets this process claimed, per partition.
    made: Arc<Mutex<HashMap<i32, Vec<i64>>>>,
}

impl Claims {
    /// Claims of `group` on `topic`, under `<prefix>:claims:`.
    pub fn new(connection: RedisConn, prefix: &str, group: &str, topic: &str) -> Self {
        Self {
            connection,
            key_prefix: format!("{prefix}:claims:{group}:{topic}"),
            script: Script::new(CLAIM),
            made: Arc::default(),
        }
    }

    fn made(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Vec<i64>>> {
        self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(&self, partition: i32) -> String {
        format!("{}:{partition}", self.key_prefix)
    }

    /// Claims `ranges`; returns the agreed end of each (its own, or the one
    /// an earlier claim of the same first offset fixed).
    pub async fn claim(&self, ranges: &[Range]) -> Result<Vec<i64>, Error> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.script.prepare_invoke();
        for range in ranges {
            invocation
                .key(self.key(range.partition))
                .arg(range.first)
                .arg(range.end);
        }
        invocation.arg(CLAIM_TTL_SECONDS);
        let agreed: Vec<i64> = self.connection.invoke("claiming a batch's range", &invocation).await?;
        let mut made = self.made();
        for range in ranges {
            made.entry(range.partition).or_default().push(range.first);
        }
        Ok(agreed)
    }

    /// Deletes the claims this process made below `committed`.
    pub async fn forget_below(&self, partition: i32, committed: i64) -> Result<(), Error> {
        let stale: Vec<i64> = {
            let mut made = self.made();
            let Some(made) = made.get_mut(&partition) else {
                return Ok(());
            };
            let stale = made.iter().copied().filter(|o| *o < committed).collect();
            made.retain(|o| *o >= committed);
            stale
        };
        if stale.is_empty() {
            return Ok(());
        }
        let key = self.key(partition);
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(&key).arg(&stale);
        self.connection.query::<i64>("deleting stale claims", &cmd).await?;
        Ok(())
    }
}
