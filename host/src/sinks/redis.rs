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

use redis::Script;
use redis::aio::MultiplexedConnection;

use crate::model::FeatureEvent;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis at {url}: {source}")]
    Redis { url: String, source: redis::RedisError },
}

pub type Result<T> = std::result::Result<T, Error>;

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
    connection: MultiplexedConnection,
    prefix: String,
    url: String,
    script: Script,
}

impl RedisSink {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Ok(Self {
            connection: connect(url).await?,
            prefix: prefix.to_string(),
            url: url.to_string(),
            script: Script::new(FENCED_WRITE),
        })
    }

    pub fn key(&self, user_id: i32) -> String {
        user_key(&self.prefix, user_id)
    }

    /// Writes the latest event per user of `events` (later events win), fenced
    /// by source offset. Returns how many users were updated.
    pub async fn write_latest(&mut self, events: &[FeatureEvent]) -> Result<usize> {
        let mut latest: std::collections::HashMap<i32, &FeatureEvent> = std::collections::HashMap::new();
        for event in events {
            latest.insert(event.user_id, event);
        }
        let latest: Vec<&FeatureEvent> = latest.into_values().collect();
        let mut written = 0;
        for chunk in latest.chunks(KEYS_PER_CALL) {
            let mut invocation = self.script.prepare_invoke();
            for event in chunk {
                invocation
                    .key(self.key(event.user_id))
                    .arg(event.total_transactions_count)
                    .arg(event.as_of_timestamp_millis)
                    .arg(event.source_partition)
                    .arg(event.source_offset);
            }
            let n: usize = invocation
                .invoke_async(&mut self.connection)
                .await
                .map_err(redis_error(&self.url))?;
            written += n;
        }
        Ok(written)
    }
}

/// A connection to the Redis at `url`, shared by every command on it.
pub async fn connect(url: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url).map_err(redis_error(url))?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(redis_error(url))
}

/// Wraps a Redis failure with the server it happened on.
pub fn redis_error(url: &str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
    move |source| Error::Redis {
        url: url.to_string(),
        source,
    }
}

pub fn user_key(prefix: &str, user_id: i32) -> String {
    format!("{prefix}:user:{user_id}")
}
