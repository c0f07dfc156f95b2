//! The latest feature per user in Redis, for real-time inference.
//!
//! Key scheme: `<prefix>:user:<user_id>` (default prefix `sluice:features`),
//! a hash with fields `total_transactions_count`, `as_of_timestamp_millis`,
//! `source_partition`, `source_offset`. Read it with
//! `redis-cli HGET sluice:features:user:42 total_transactions_count`.
//!
//! Values are absolute counts, never INCR, and a write only lands when its
//! source offset is not older than the one stored for the same partition, so
//! a replay can neither double count nor move a value backwards; it rewrites
//! the values of its own offsets, as it rewrites the Parquet objects (with
//! the same module, the same values).
//!
//! Redis is a serving copy of the keyed state, not its source of truth: when
//! it loses keys, the job republishes them from its state (see `publish` and
//! the sentinel keys).

use std::collections::HashMap;

use redis::Script;

use crate::model::FeatureEvent;
use crate::redis_conn::RedisConn;
pub use crate::redis_conn::{Error, Result};
use crate::state::Latest;

/// KEYS: one hash per user. ARGV: 4 values per key (count, as-of, partition,
/// offset). Returns how many hashes were written.
const FENCED_WRITE: &str = r"
local written = 0
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 4
  local partition = ARGV[base + 3]
  local offset = tonumber(ARGV[base + 4])
  local stored = redis.call('HMGET', key, 'source_partition', 'source_offset')
  if stored[1] ~= partition or stored[2] == false or tonumber(stored[2]) <= offset then
    redis.call('HSET', key,
      'total_transactions_count', ARGV[base + 1],
      'as_of_timestamp_millis', ARGV[base + 2],
      'source_partition', partition,
      'source_offset', ARGV[base + 4])
    written = written + 1
  end
end
return written
";

/// Keys per script call: bounds the time Redis spends in one script.
const KEYS_PER_CALL: usize = 1_000;

pub struct RedisSink {
    connection: RedisConn,
    prefix: String,
    script: Script,
}

impl RedisSink {
    pub fn new(connection: RedisConn, prefix: &str) -> Self {
        Self {
            connection,
            prefix: prefix.to_string(),
            script: Script::new(FENCED_WRITE),
        }
    }

    pub fn key(&self, user_id: i32) -> String {
        user_key(&self.prefix, user_id)
    }

    /// Writes the latest event per user of `events` (later events win), fenced
    /// by source offset. Returns how many users were updated.
    pub async fn write_latest<'a>(&self, events: impl IntoIterator<Item = &'a FeatureEvent>) -> Result<usize> {
        let mut latest: HashMap<i32, &FeatureEvent> = HashMap::new();
        for event in events {
            latest.insert(event.user_id, event);
        }
        let latest: Vec<&FeatureEvent> = latest.into_values().collect();
        let mut written = 0;
        for chunk in latest.chunks(KEYS_PER_CALL) {
            let rows = chunk.iter().map(|e| {
                (
                    e.user_id,
                    Latest {
                        total_transactions_count: e.total_transactions_count,
                        as_of_timestamp_millis: e.as_of_timestamp_millis,
                        source_offset: e.source_offset,
                    },
                    e.source_partition,
                )
            });
            written += self.fenced_write(rows).await?;
        }
        Ok(written)
    }

    /// Writes every user's latest value of one partition's serving view,
    /// fenced as any write: a value Redis holds from a newer offset stays.
    /// Returns how many users were written.
    pub async fn publish(&self, partition: i32, latest: &HashMap<i32, Latest>) -> Result<usize> {
        let users: Vec<(&i32, &Latest)> = latest.iter().collect();
        let mut written = 0;
        for chunk in users.chunks(KEYS_PER_CALL) {
            written += self
                .fenced_write(chunk.iter().map(|(user, value)| (**user, **value, partition)))
                .await?;
        }
        Ok(written)
    }

    async fn fenced_write(&self, rows: impl Iterator<Item = (i32, Latest, i32)>) -> Result<usize> {
        let mut invocation = self.script.prepare_invoke();
        let mut sent = 0usize;
        for (user_id, value, partition) in rows {
            sent += 1;
            invocation
                .key(self.key(user_id))
                .arg(value.total_transactions_count)
                .arg(value.as_of_timestamp_millis)
                .arg(partition)
                .arg(value.source_offset);
        }
        let written: usize = self.connection.invoke("a fenced feature write", &invocation).await?;
        metrics::counter!(crate::ops::metrics::REDIS_WRITES).increment(written as u64);
        metrics::counter!(crate::ops::metrics::REDIS_FENCED).increment(sent.saturating_sub(written) as u64);
        Ok(written)
    }

    /// The key that says a partition's serving view was published to this
    /// Redis (`<prefix>:published:<group>:<topic>:<partition>`). A Redis that
    /// lost its data (a flush, a restart without persistence, an empty
    /// replica after a failover) lost it too.
    fn sentinel(&self, name: &str, partition: i32) -> String {
        format!("{}:published:{name}:{partition}", self.prefix)
    }

    /// Marks a partition as published (a hash, as every key sluice writes,
    /// holding how many users were published).
    pub async fn mark_published(&self, name: &str, partition: i32, users: usize) -> Result<()> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.sentinel(name, partition)).arg("users").arg(users);
        self.connection.query::<()>("marking a partition published", &cmd).await
    }

    /// Whether a partition's sentinel is still there.
    pub async fn is_published(&self, name: &str, partition: i32) -> Result<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.sentinel(name, partition));
        let n: i64 = self.connection.query("checking a partition's sentinel", &cmd).await?;
        Ok(n == 1)
    }

    /// How many of `users` have no value in Redis (keys evicted or deleted
    /// while the sentinel stayed).
    pub async fn missing(&self, users: &[i32]) -> Result<usize> {
        if users.is_empty() {
            return Ok(0);
        }
        // EXISTS of many keys counts those that exist, in one round trip.
        let mut cmd = redis::cmd("EXISTS");
        for user in users {
            cmd.arg(self.key(*user));
        }
        let present: usize = self.connection.query("sampling feature keys", &cmd).await?;
        Ok(users.len().saturating_sub(present))
    }
}

pub fn user_key(prefix: &str, user_id: i32) -> String {
    format!("{prefix}:user:{user_id}")
}
