//! Claims: the range of each roll, agreed once per (partition, first
//! offset) before any output of it is written, so that every member that
//! ever writes an output named by that first offset writes the same records
//! (see docs/delivery.md, "Delivery guarantees").
//!
//! A claim is created only if none exists: the first member to claim a
//! start offset fixes the end; a later one (the next owner after a crash,
//! or a member that stalled and woke up) adopts it. The roll's first
//! offsets are then committed to the group, which the broker refuses to a
//! member that lost its partitions, so a claim is never acted on by a
//! member that no longer owns the partition. Claims below a partition's
//! committed offset are deleted: nobody resumes there again. (Kafka
//! offset-commit metadata would be the natural home, but nisshi stores it
//! without returning it.)
//!
//! Where claims live (`--claims-in`):
//! - **storage**, next to the outputs: one object per claim,
//!   `_claims/<group>/<topic>/partition=<P>/<first>`, holding the end, put
//!   create-only (`file://` links it into place; S3 sends
//!   `If-None-Match: *`, which AWS S3, MinIO and R2 honour). A job then
//!   needs Redis for nothing but the features it serves.
//! - **redis**: a hash per partition, `<prefix>:claims:<group>:<topic>:<P>`,
//!   from first offset to end (`HSETNX`, one script call per roll). Claims
//!   then survive a Redis restart only with persistence (AOF). A Redis that
//!   stops answering for a while is waited out (`redis_conn`): every
//!   command here is idempotent.
//!
//! `auto` (the default) takes storage when a probe at start shows that it
//! refuses a second create of the same object, and Redis otherwise (Garage
//! ignores the condition and overwrites).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use redis::Script;

use crate::config::Storage;
use crate::redis_conn::RedisConn;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Redis(#[from] crate::redis_conn::Error),
    #[error("claim {path}: {source}")]
    Storage { path: String, source: object_store::Error },
    #[error("claim {path} holds {content:?}, not an offset")]
    Unreadable { path: String, content: String },
    #[error(
        "--claims-in storage: {url} does not refuse a second create of the same object (a create-only put \
         overwrote it), so claims cannot live there; use --claims-in redis"
    )]
    NotCreateOnly { url: String },
}

/// Where a job keeps its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClaimsIn {
    /// Storage if it creates objects only once (probed at start), else Redis.
    Auto,
    /// Next to the outputs, in the object store; refused if it cannot.
    Storage,
    /// In Redis (production Redis then needs persistence).
    Redis,
}

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

/// A partition's Redis claims expire when it has been idle this long:
/// claims left by crashed members and zombies do not pile up. Far longer
/// than any stall a member survives (its session would have expired) and
/// than the topic's retention, after which nobody resumes from those
/// offsets. (Claims in storage are deleted below the committed offset,
/// whoever made them.)
const CLAIM_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// One partition's range in a roll: `[first, end)`.
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
    place: Place,
    /// First offsets this process claimed, per partition.
    made: Arc<Mutex<HashMap<i32, Vec<i64>>>>,
}

#[derive(Clone)]
enum Place {
    Storage {
        storage: Storage,
        /// `_claims/<group>/<topic>`, under the storage's root.
        folder: String,
    },
    Redis {
        connection: RedisConn,
        key_prefix: String,
        script: Script,
    },
}

impl Claims {
    /// Claims of `group` on `topic` in storage, after a probe that it
    /// creates objects only once.
    pub async fn in_storage(storage: Storage, group: &str, topic: &str) -> Result<Self, Error> {
        let folder = format!("_claims/{group}/{topic}");
        if !creates_only_once(&storage, &folder).await? {
            return Err(Error::NotCreateOnly { url: storage.url });
        }
        Ok(Self::new(Place::Storage { storage, folder }))
    }

    /// Claims of `group` on `topic` in Redis, under `<prefix>:claims:`.
    pub fn in_redis(connection: RedisConn, prefix: &str, group: &str, topic: &str) -> Self {
        Self::new(Place::Redis {
            connection,
            key_prefix: format!("{prefix}:claims:{group}:{topic}"),
            script: Script::new(CLAIM),
        })
    }

    fn new(place: Place) -> Self {
        Self {
            place,
            made: Arc::default(),
        }
    }

    /// Where the claims live, for the log.
    pub fn place(&self) -> &'static str {
        match self.place {
            Place::Storage { .. } => "storage",
            Place::Redis { .. } => "redis",
        }
    }

    /// Where a partition's claims live, for messages.
    pub fn describe(&self, partition: i32) -> String {
        match &self.place {
            Place::Storage { storage, folder } => format!("{}/{folder}/partition={partition}/", storage.url),
            Place::Redis { key_prefix, .. } => format!("the Redis hash {key_prefix}:{partition}"),
        }
    }

    fn made(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Vec<i64>>> {
        self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims `ranges`; returns the agreed end of each (its own, or the one
    /// an earlier claim of the same first offset fixed).
    pub async fn claim(&self, ranges: &[Range]) -> Result<Vec<i64>, Error> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let agreed = match &self.place {
            Place::Storage { storage, folder } => {
                let claims = ranges.iter().map(|range| claim_object(storage, folder, *range));
                futures::future::try_join_all(claims).await?
            }
            Place::Redis {
                connection,
                key_prefix,
                script,
            } => {
                let mut invocation = script.prepare_invoke();
                for range in ranges {
                    invocation
                        .key(format!("{key_prefix}:{}", range.partition))
                        .arg(range.first)
                        .arg(range.end);
                }
                invocation.arg(CLAIM_TTL_SECONDS);
                connection.invoke("claiming a roll's range", &invocation).await?
            }
        };
        let mut made = self.made();
        for range in ranges {
            made.entry(range.partition).or_default().push(range.first);
        }
        Ok(agreed)
    }

    /// Deletes the claims below `committed`: in storage every one (crashed
    /// members' too), in Redis those this process made (the rest expire).
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
        match &self.place {
            Place::Storage { storage, folder } => forget_objects_below(storage, folder, partition, committed).await,
            Place::Redis {
                connection, key_prefix, ..
            } => {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(format!("{key_prefix}:{partition}")).arg(&stale);
                connection.query::<i64>("deleting stale claims", &cmd).await?;
                Ok(())
            }
        }
    }
}

fn partition_folder(storage: &Storage, folder: &str, partition: i32) -> ObjectPath {
    storage.path(&format!("{folder}/partition={partition}"))
}

/// Offsets are 20 digits, so names sort as offsets do.
fn claim_path(storage: &Storage, folder: &str, partition: i32, first: i64) -> ObjectPath {
    storage.path(&format!("{folder}/partition={partition}/{first:020}"))
}

fn storage_error(path: &ObjectPath) -> impl FnOnce(object_store::Error) -> Error + '_ {
    move |source| Error::Storage {
        path: path.to_string(),
        source,
    }
}

/// Creates the claim of `range` unless one exists; the agreed end.
async fn claim_object(storage: &Storage, folder: &str, range: Range) -> Result<i64, Error> {
    let path = claim_path(storage, folder, range.partition, range.first);
    let payload = PutPayload::from(Bytes::from(range.end.to_string()));
    match storage.store.put_opts(&path, payload, PutMode::Create.into()).await {
        Ok(_) => Ok(range.end),
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
            let held = storage.store.get(&path).await.map_err(storage_error(&path))?;
            let held = held.bytes().await.map_err(storage_error(&path))?;
            let content = String::from_utf8_lossy(&held);
            content.trim().parse().map_err(|_| Error::Unreadable {
                path: path.to_string(),
                content: content.into_owned(),
            })
        }
        Err(e) => Err(storage_error(&path)(e)),
    }
}

async fn forget_objects_below(storage: &Storage, folder: &str, partition: i32, committed: i64) -> Result<(), Error> {
    let prefix = partition_folder(storage, folder, partition);
    let listed: Vec<_> = storage
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(storage_error(&prefix))?;
    for object in listed {
        let below = object
            .location
            .filename()
            .and_then(|name| name.parse::<i64>().ok())
            .is_some_and(|first| first < committed);
        if below {
            match storage.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_error(&object.location)(e)),
            }
        }
    }
    Ok(())
}

/// Whether the store refuses a second create-only put of one object: a
/// probe object of this process's own, deleted after.
async fn creates_only_once(storage: &Storage, folder: &str) -> Result<bool, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = storage.path(&format!("{folder}/probe-{}-{nanos}", std::process::id()));
    let put = || {
        storage
            .store
            .put_opts(&path, PutPayload::from_static(b"probe"), PutMode::Create.into())
    };
    put().await.map_err(storage_error(&path))?;
    let refused = match put().await {
        Ok(_) => false,
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => true,
        Err(object_store::Error::NotImplemented { .. }) => false,
        Err(e) => return Err(storage_error(&path)(e)),
    };
    match storage.store.delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(refused),
        Err(e) => Err(storage_error(&path)(e)),
    }
}

/// The claims of a job: where `claims_in` says, or for `auto` in storage
/// when it creates only once, else in Redis (connected by `redis`, which
/// is called only then).
pub async fn open(
    claims_in: ClaimsIn,
    storage: &Storage,
    group: &str,
    topic: &str,
    redis: impl AsyncFnOnce() -> Result<(RedisConn, String), Error>,
) -> Result<Claims, Error> {
    if claims_in != ClaimsIn::Redis {
        match Claims::in_storage(storage.clone(), group, topic).await {
            Err(Error::NotCreateOnly { url }) if claims_in == ClaimsIn::Auto => {
                tracing::info!(%url, "the output store overwrites on a create-only put: claims live in Redis");
            }
            in_storage => return in_storage,
        }
    }
    let (connection, prefix) = redis().await?;
    Ok(Claims::in_redis(connection, &prefix, group, topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &std::path::Path) -> Storage {
        Storage {
            store: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).expect("store")),
            root: ObjectPath::default(),
            url: format!("file://{}", dir.display()),
        }
    }

    #[tokio::test]
    async fn the_first_claim_of_a_first_offset_fixes_its_end_for_every_member() {
        let dir = tempfile::tempdir().expect("tempdir");
        let owner = Claims::in_storage(storage(dir.path()), "g", "t")
            .await
            .expect("file:// creates once");
        let zombie = Claims::in_storage(storage(dir.path()), "g", "t").await.expect("claims");
        let first = |end| Range {
            partition: 3,
            first: 100,
            end,
        };
        assert_eq!(owner.claim(&[first(250)]).await.expect("claim"), vec![250]);
        assert_eq!(
            zombie
                .claim(&[
                    first(180),
                    Range {
                        partition: 4,
                        first: 0,
                        end: 7
                    }
                ])
                .await
                .expect("claim"),
            vec![250, 7],
            "a later claim of the same first offset adopts the end"
        );
        // Past a commit at 250, the claims below go, whoever made them (the
        // zombie's at 40 too).
        let zombies_own = Range {
            partition: 3,
            first: 40,
            end: 100,
        };
        zombie.claim(&[zombies_own]).await.expect("claim");
        owner
            .claim(&[
                first(250),
                Range {
                    partition: 3,
                    first: 250,
                    end: 300,
                },
            ])
            .await
            .expect("claim");
        owner.forget_below(3, 250).await.expect("forget");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("_claims/g/t/partition=3"))
            .expect("folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![format!("{:020}", 250)]);
        assert_eq!(
            zombie.claim(&[first(120)]).await.expect("claim"),
            vec![120],
            "a fresh claim below"
        );
    }
}
