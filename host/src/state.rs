//! Keyed state owned by the host (the guest's `keyed-state` import), one map
//! per source partition, checkpointed to object storage with the offset it
//! reflects.
//!
//! A checkpoint is named by that offset, under
//! `_checkpoints/<group>/<topic>/partition=<P>/`: `<offset>.json` holds the
//! whole state, `<offset>.delta-<previous>.json` only the entries set since
//! the checkpoint at `<previous>` (offsets are 20 digits). So a checkpoint
//! costs what changed since the last one, not every key (as Flink's
//! incremental checkpoints upload only new files). A state is written whole
//! (compacted) when it has none yet, after `MAX_DELTAS` deltas in a row, or
//! once its deltas since the last whole one hold as many entries as the
//! state: a resume reads a whole checkpoint and the deltas after it, at most
//! about twice the state's size.
//!
//! A checkpoint is written after a roll's outputs, before its offsets are
//! committed. A partition resumes from the checkpoint named by the group's
//! committed offset, exactly: a missing one, or only older ones, is refused
//! rather than guessed. Whoever writes a given name writes the same content
//! (a deterministic guest over the same records from the same state; the
//! base is part of the name), so a member that lost its partitions and wakes
//! up cannot move state backwards.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::config::{Storage, partition_in_path};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    /// No checkpoint matches the group's committed offset.
    #[error("{0}")]
    Mismatch(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Deltas in a row at most before a state is checkpointed whole again.
const MAX_DELTAS: usize = 32;

/// The state of one partition and the next source offset it has not seen.
#[derive(Debug, Default, Clone)]
pub struct PartitionState {
    pub next_offset: i64,
    /// The guest's keyed state.
    pub values: HashMap<i64, i64>,
    /// The latest feature of each user the partition emitted: what Redis
    /// serves, kept so a Redis that lost its keys is republished from here
    /// rather than by a replay from Kafka.
    pub latest: HashMap<i32, Latest>,
    /// What changed since the state's last checkpoint.
    pub changes: Changes,
}

/// The entries set since a state's last checkpoint, and that checkpoint's
/// place in its chain of deltas.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// The offset of that checkpoint; `None` before the first.
    pub base: Option<i64>,
    /// Keys of `values` set since (the runtime adds those the guest sets).
    pub keys: HashSet<i64>,
    /// Users of `latest` set since.
    pub users: HashSet<i32>,
    /// Deltas since the last whole checkpoint, up to that one, and the
    /// entries they hold.
    pub deltas: usize,
    pub delta_entries: usize,
    /// The next checkpoint is sure to be whole, so `keys` and `users` are
    /// no longer kept (see `PartitionState::settle_changes`).
    whole_next: bool,
}

/// A user's latest feature and the source offset it came from. Packed to
/// 4-byte alignment, so a `latest` entry takes 24 bytes rather than 32: a
/// million users' state is about 13 MB smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C, packed(4))]
pub struct Latest {
    pub total_transactions_count: i32,
    pub as_of_timestamp_millis: i64,
    pub source_offset: i64,
}

/// A checkpoint to write: the whole state as of `next_offset`, or the
/// entries set since the checkpoint at `base`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub next_offset: i64,
    pub base: Option<i64>,
    pub values: Vec<(i64, i64)>,
    pub latest: Vec<(i32, Latest)>,
}

impl PartitionState {
    /// Sets a user's latest feature.
    pub fn set_latest(&mut self, user_id: i32, latest: Latest) {
        self.latest.insert(user_id, latest);
        if !self.changes.whole_next {
            self.changes.users.insert(user_id);
        }
    }

    /// Forgets which entries changed once the next checkpoint is sure to be
    /// whole: there is no checkpoint yet, `MAX_DELTAS` deltas are reached,
    /// or the deltas would add up to the state. State only grows, so the
    /// last stays true until the next checkpoint, and the choice is the one
    /// `snapshot` would make. A state filling up with new users then does
    /// not also fill two sets of them.
    pub fn settle_changes(&mut self) {
        if self.whole_is_due() {
            self.changes.whole_next = true;
            self.changes.keys = HashSet::new();
            self.changes.users = HashSet::new();
        }
    }

    /// The next checkpoint must be whole, whatever else arrives before it:
    /// no checkpoint yet, `MAX_DELTAS` deltas, or deltas that would add up to
    /// the state. Each stays true as state grows.
    fn whole_is_due(&self) -> bool {
        let changes = &self.changes;
        let changed = changes.keys.len() + changes.users.len();
        changes.whole_next
            || changes.base.is_none()
            || changes.deltas >= MAX_DELTAS
            || changes.delta_entries + changed >= self.values.len() + self.latest.len()
    }

    /// The checkpoint of this state as of `next_offset`: what changed since
    /// its last checkpoint, or the whole state (see the module comment).
    /// Either becomes the base of the next one. A function of the state and
    /// its chain, so members that reach the same state through the same
    /// checkpoints write the same one.
    pub fn snapshot(&mut self) -> Snapshot {
        let changed = self.changes.keys.len() + self.changes.users.len();
        let Changes {
            base,
            deltas,
            delta_entries,
            ..
        } = self.changes;
        match base {
            // A checkpoint under its base's own offset is written whole too.
            Some(base) if !self.whole_is_due() && base < self.next_offset => {
                let changes = std::mem::take(&mut self.changes);
                self.changes = Changes {
                    base: Some(self.next_offset),
                    deltas: deltas + 1,
                    delta_entries: delta_entries + changed,
                    ..Changes::default()
                };
                Snapshot {
                    next_offset: self.next_offset,
                    base: Some(base),
                    values: changes.keys.iter().map(|k| (*k, self.values[k])).collect(),
                    latest: changes.users.iter().map(|u| (*u, self.latest[u])).collect(),
                }
            }
            _ => self.whole_snapshot(),
        }
    }

    /// Applies the checkpoint that follows this state's last one, a delta
    /// as of `next_offset`: its entries are set, and it is the base of the
    /// next.
    fn apply_delta(
        &mut self,
        next_offset: i64,
        values: impl ExactSizeIterator<Item = (i64, i64)>,
        latest: impl ExactSizeIterator<Item = (i32, Latest)>,
    ) {
        self.changes.deltas += 1;
        self.changes.delta_entries += values.len() + latest.len();
        self.changes.base = Some(next_offset);
        self.next_offset = next_offset;
        self.values.extend(values);
        self.latest.extend(latest);
    }

    /// The whole state as of `next_offset`, the base of the next snapshots.
    pub fn whole_snapshot(&mut self) -> Snapshot {
        self.changes = Changes {
            base: Some(self.next_offset),
            ..Changes::default()
        };
        self.whole()
    }

    /// The whole state as of `next_offset`.
    pub fn whole(&self) -> Snapshot {
        Snapshot {
            next_offset: self.next_offset,
            base: None,
            values: self.values.iter().map(|(k, v)| (*k, *v)).collect(),
            latest: self.latest.iter().map(|(u, l)| (*u, *l)).collect(),
        }
    }
}

/// The stored form: entries in key order, so equal state gives equal bytes.
#[derive(Serialize, Deserialize)]
struct Stored {
    next_offset: i64,
    /// The checkpoint a delta applies to; absent in a whole one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<i64>,
    values: Vec<(i64, i64)>,
    latest: Vec<StoredLatest>,
    /// The module whose outputs the state reflects last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    module_sha256: Option<String>,
}

/// The stored form before deltas (whole states only), still read.
#[derive(Deserialize)]
struct StoredMaps {
    next_offset: i64,
    values: BTreeMap<i64, i64>,
    #[serde(default)]
    latest: BTreeMap<i32, Latest>,
}

/// What the backfill leaves in a live group's checkpoints
/// (`partition=<P>/handoff.json`): the partition's state as of `offset` is
/// the checkpoint of that name, and a live job in the group that has no
/// committed offset for the partition starts there instead of at the
/// topic's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub offset: i64,
    /// The archive the state was computed from.
    pub archive: String,
    /// The features module that computed it.
    pub module_sha256: String,
}

const HANDOFF_FILE: &str = "handoff.json";

/// One stored checkpoint, as its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Named {
    offset: i64,
    /// `None` for a whole state.
    base: Option<i64>,
}

impl Named {
    fn parse(file: &str) -> Option<Self> {
        let stem = file.strip_suffix(".json")?;
        match stem.split_once(".delta-") {
            Some((offset, base)) => Some(Self {
                offset: offset.parse().ok()?,
                base: Some(base.parse().ok()?),
            }),
            None => Some(Self {
                offset: stem.parse().ok()?,
                base: None,
            }),
        }
    }

    fn file(&self) -> String {
        match self.base {
            None => format!("{:020}.json", self.offset),
            Some(base) => format!("{:020}.delta-{base:020}.json", self.offset),
        }
    }
}

/// The checkpoints to read for the state at `offset`, newest first, ending
/// with a whole one; `None` when no such chain is stored. A delta's base is
/// always older than the delta, so the walk ends.
fn chain_to(stored: &[Named], offset: i64) -> Option<Vec<Named>> {
    let at = |o: i64| stored.iter().filter(move |n| n.offset == o);
    if let Some(whole) = at(offset).find(|n| n.base.is_none()) {
        return Some(vec![*whole]);
    }
    at(offset)
        .filter(|n| n.base.is_some_and(|b| b < offset))
        .find_map(|delta| {
            let mut chain = chain_to(stored, delta.base?)?;
            chain.insert(0, *delta);
            Some(chain)
        })
}

/// Checkpoints of one job's state under `<root>/_checkpoints/<name>/`.
pub struct Checkpoints {
    storage: Storage,
    name: String,
    /// Recorded in every checkpoint saved.
    module_sha256: Option<String>,
}

impl Checkpoints {
    /// `name` identifies the job instance (consumer group and topic), so two
    /// pipelines sharing a bucket never read each other's state.
    pub fn new(storage: Storage, name: &str) -> Self {
        Self {
            storage,
            name: name.to_string(),
            module_sha256: None,
        }
    }

    /// Records `module_sha256` in every checkpoint saved from now on.
    pub fn with_module(mut self, module_sha256: &str) -> Self {
        self.module_sha256 = Some(module_sha256.to_string());
        self
    }

    /// Records another module from now on (after a hot swap).
    pub fn set_module(&mut self, module_sha256: &str) {
        self.module_sha256 = Some(module_sha256.to_string());
    }

    fn folder(&self, partition: i32) -> ObjectPath {
        self.storage
            .path(&format!("_checkpoints/{}/partition={partition}", self.name))
    }

    fn path(&self, partition: i32, named: Named) -> ObjectPath {
        self.folder(partition).join(named.file())
    }

    /// The newest checkpoint of a partition under this name, if any.
    pub async fn latest(&self, partition: i32) -> Result<Option<PartitionState>> {
        let offsets = self.offsets(partition).await?;
        let Some(offset) = offsets.last().copied() else {
            return Ok(None);
        };
        Ok(Some(self.load(partition, offset).await?))
    }

    /// Saves `state` whole as a partition's checkpoint and marks it as the
    /// hand-off point for a live job (see `Handoff`).
    pub async fn save_handoff(&self, partition: i32, state: &PartitionState, handoff: &Handoff) -> Result<()> {
        self.write(partition, state.whole()).await?;
        let path = self.folder(partition).join(HANDOFF_FILE);
        let bytes = serde_json::to_vec(handoff).map_err(|e| Self::error(&path, e))?;
        self.storage
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| Self::error(&path, e))?;
        Ok(())
    }

    /// Deletes a partition's hand-off mark once the group has committed past
    /// it: from then on the commit says where the partition resumes.
    pub async fn retire_handoff(&self, partition: i32) -> Result<()> {
        let path = self.folder(partition).join(HANDOFF_FILE);
        match self.storage.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::error(&path, e)),
        }
    }

    /// The hand-off offset of every partition the backfill left one for.
    pub async fn handoffs(&self) -> Result<BTreeMap<i32, i64>> {
        let root = self.storage.path(&format!("_checkpoints/{}", self.name));
        let objects = self.list(&root).await?;
        let mut handoffs = BTreeMap::new();
        for object in objects.iter().filter(|o| o.location.filename() == Some(HANDOFF_FILE)) {
            let Some(partition) = partition_in_path(&object.location) else {
                continue;
            };
            let bytes = self.get(&object.location).await?;
            let handoff: Handoff = serde_json::from_slice(&bytes).map_err(|e| Self::error(&object.location, e))?;
            handoffs.insert(partition, handoff.offset);
        }
        Ok(handoffs)
    }

    /// The partitions that have checkpoints under this name, ascending.
    pub async fn partitions(&self) -> Result<Vec<i32>> {
        let root = self.storage.path(&format!("_checkpoints/{}", self.name));
        let mut partitions: Vec<i32> = self
            .list(&root)
            .await?
            .iter()
            .filter_map(|o| partition_in_path(&o.location))
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        Ok(partitions)
    }

    /// Where a partition's checkpoints live, for messages.
    pub fn describe(&self, partition: i32) -> String {
        format!("{}/{}", self.storage.url.trim_end_matches('/'), self.folder(partition))
    }

    fn error(path: &ObjectPath, reason: impl ToString) -> Error {
        Error::Checkpoint {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn list(&self, prefix: &ObjectPath) -> Result<Vec<object_store::ObjectMeta>> {
        self.storage
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| Self::error(prefix, e))
    }

    async fn get(&self, path: &ObjectPath) -> Result<bytes::Bytes> {
        self.storage
            .store
            .get(path)
            .await
            .map_err(|e| Self::error(path, e))?
            .bytes()
            .await
            .map_err(|e| Self::error(path, e))
    }

    /// The stored checkpoints of a partition.
    async fn stored(&self, partition: i32) -> Result<Vec<Named>> {
        let objects = self.list(&self.folder(partition)).await?;
        Ok(objects
            .iter()
            .filter_map(|o| Named::parse(o.location.filename()?))
            .collect())
    }

    /// Offsets of a partition's stored checkpoints, ascending.
    pub async fn offsets(&self, partition: i32) -> Result<Vec<i64>> {
        let mut offsets: Vec<i64> = self.stored(partition).await?.iter().map(|n| n.offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        Ok(offsets)
    }

    /// The state a partition resumes with. `committed` is the group's
    /// committed offset (`None` for a group that never committed): the
    /// checkpoint named by it must exist; a group that never committed starts
    /// empty at `first_offset`, provided no checkpoint claims otherwise.
    pub async fn resume(&self, partition: i32, committed: Option<i64>, first_offset: i64) -> Result<PartitionState> {
        let Some(offset) = committed else {
            let stored = self.offsets(partition).await?;
            // Empty checkpoints are what a first roll saves before its fence;
            // a refused fence or a crash leaves them without a commit.
            let mut meaningful = Vec::new();
            for offset in stored {
                if !self.load(partition, offset).await?.values.is_empty() {
                    meaningful.push(offset);
                }
            }
            if let Some(latest) = meaningful.last() {
                return Err(Error::Mismatch(format!(
                    "partition {partition}: the group has no committed offset (its offsets were deleted, or the \
                     topic was recreated), but a checkpoint at offset {latest} exists ({}). Starting empty would \
                     count from scratch. Commit the checkpoint's offset for the group, or delete that partition's \
                     checkpoints to rebuild it from the topic.",
                    self.describe(partition)
                )));
            }
            return Ok(PartitionState {
                next_offset: first_offset,
                ..PartitionState::default()
            });
        };
        let stored = self.stored(partition).await?;
        if stored.iter().any(|n| n.offset == offset) {
            return self.load(partition, offset).await;
        }
        let behind = stored.iter().map(|n| n.offset).filter(|o| *o < offset).max();
        let found = match behind {
            Some(o) => format!("the newest checkpoint at or below it is at offset {o}, behind it"),
            None => "no checkpoint at or below it exists".to_string(),
        };
        Err(Error::Mismatch(format!(
            "partition {partition}: the group's committed offset is {offset} but {found} ({}). The state would not \
             match the offsets, so the job refuses to count. Recover with `sluice rebuild-state --partition \
             {partition}` (same --group/--topic/--output-url), which restarts that partition from the topic's \
             start when the topic still holds it.",
            self.describe(partition)
        )))
    }

    /// The checkpoint of a partition stored under `offset`: a whole state,
    /// or a delta whose chain back to a whole state is stored.
    pub async fn load(&self, partition: i32, offset: i64) -> Result<PartitionState> {
        let stored = self.stored(partition).await?;
        let chain = chain_to(&stored, offset).ok_or_else(|| {
            Error::Mismatch(format!(
                "partition {partition}: no whole checkpoint at offset {offset}, and no delta there whose chain back \
                 to a whole one is stored ({})",
                self.describe(partition)
            ))
        })?;
        // Oldest first: the whole state, then each delta over it.
        let mut links = chain.into_iter().rev();
        let whole = links.next().expect("a chain starts whole");
        let mut state = self.read(&self.path(partition, whole)).await?.into_state();
        for named in links {
            let delta = self.read(&self.path(partition, named)).await?;
            state.apply_delta(
                delta.next_offset,
                delta.values.into_iter(),
                delta.latest.into_iter().map(from_stored),
            );
        }
        Ok(state)
    }

    /// The state a snapshot stands for (a delta's chain is read from
    /// storage).
    pub async fn state_of(&self, partition: i32, snapshot: &Snapshot) -> Result<PartitionState> {
        let values = snapshot.values.iter().copied();
        let latest = snapshot.latest.iter().copied();
        match snapshot.base {
            Some(base) => {
                let mut state = self.load(partition, base).await?;
                state.apply_delta(snapshot.next_offset, values, latest);
                Ok(state)
            }
            None => Ok(PartitionState {
                next_offset: snapshot.next_offset,
                values: values.collect(),
                latest: latest.collect(),
                changes: Changes {
                    base: Some(snapshot.next_offset),
                    ..Changes::default()
                },
            }),
        }
    }

    async fn read(&self, path: &ObjectPath) -> Result<Stored> {
        let bytes = self.get(path).await?;
        let path = path.clone();
        tokio::task::spawn_blocking(move || decode(&path, &bytes))
            .await
            .map_err(|e| Error::Checkpoint {
                path: String::new(),
                reason: e.to_string(),
            })?
    }

    /// Saves a partition's checkpoint as of `state.next_offset` (whole or a
    /// delta, as `PartitionState::snapshot` decides).
    pub async fn save(&self, partition: i32, state: &mut PartitionState) -> Result<()> {
        self.write(partition, state.snapshot()).await.map(drop)
    }

    /// Stores a snapshot under its offset (and base); returns its size in
    /// bytes. Encoding runs off the async workers: a whole state of a
    /// million users is tens of MB.
    pub async fn write(&self, partition: i32, snapshot: Snapshot) -> Result<usize> {
        let named = Named {
            offset: snapshot.next_offset,
            base: snapshot.base,
        };
        let path = self.path(partition, named);
        let module_sha256 = self.module_sha256.clone();
        let encode_path = path.clone();
        let bytes = tokio::task::spawn_blocking(move || encode(&encode_path, snapshot, module_sha256))
            .await
            .map_err(|e| Self::error(&path, e))??;
        let size = bytes.len();
        self.storage
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| Self::error(&path, e))?;
        Ok(size)
    }

    /// Deletes a partition's checkpoints below `committed`, except those the
    /// deltas at or above it are built on: the group can no longer resume
    /// from them.
    pub async fn forget_below(&self, partition: i32, committed: i64) -> Result<()> {
        let stored = self.stored(partition).await?;
        // Offsets whose checkpoints are needed: at or above `committed`, and
        // every base a needed delta names, transitively.
        let mut needed: HashSet<i64> = stored.iter().map(|n| n.offset).filter(|o| *o >= committed).collect();
        loop {
            let bases: Vec<i64> = stored
                .iter()
                .filter(|n| needed.contains(&n.offset))
                .filter_map(|n| n.base)
                .filter(|b| !needed.contains(b))
                .collect();
            if bases.is_empty() {
                break;
            }
            needed.extend(bases);
        }
        for named in stored {
            if needed.contains(&named.offset) {
                continue;
            }
            let path = self.path(partition, named);
            match self.storage.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Self::error(&path, e)),
            }
        }
        Ok(())
    }

    /// Deletes every checkpoint of a partition (`sluice rebuild-state`).
    pub async fn delete_partition(&self, partition: i32) -> Result<usize> {
        let folder = self.folder(partition);
        self.storage
            .delete_under(&folder)
            .await
            .map_err(|e| Self::error(&folder, e))
    }
}

impl Stored {
    /// A whole checkpoint's state, the base of the next ones.
    fn into_state(self) -> PartitionState {
        PartitionState {
            next_offset: self.next_offset,
            values: self.values.into_iter().collect(),
            latest: self.latest.into_iter().map(from_stored).collect(),
            changes: Changes {
                base: Some(self.next_offset),
                ..Changes::default()
            },
        }
    }
}

/// A user's latest feature as stored: (user, count, as-of, source offset).
type StoredLatest = (i32, i32, i64, i64);

fn from_stored((user, count, as_of, source_offset): StoredLatest) -> (i32, Latest) {
    let latest = Latest {
        total_transactions_count: count,
        as_of_timestamp_millis: as_of,
        source_offset,
    };
    (user, latest)
}

fn to_stored((user, latest): (i32, Latest)) -> StoredLatest {
    (
        user,
        latest.total_transactions_count,
        latest.as_of_timestamp_millis,
        latest.source_offset,
    )
}

fn encode(path: &ObjectPath, mut snapshot: Snapshot, module_sha256: Option<String>) -> Result<Vec<u8>> {
    snapshot.values.sort_unstable_by_key(|(k, _)| *k);
    snapshot.latest.sort_unstable_by_key(|(u, _)| *u);
    let stored = Stored {
        next_offset: snapshot.next_offset,
        base: snapshot.base,
        values: snapshot.values,
        latest: snapshot.latest.into_iter().map(to_stored).collect(),
        module_sha256,
    };
    serde_json::to_vec(&stored).map_err(|e| Checkpoints::error(path, e))
}

fn decode(path: &ObjectPath, bytes: &[u8]) -> Result<Stored> {
    match serde_json::from_slice::<Stored>(bytes) {
        Ok(stored) => Ok(stored),
        Err(e) => {
            // A checkpoint written before deltas: maps instead of lists.
            let Ok(old) = serde_json::from_slice::<StoredMaps>(bytes) else {
                return Err(Checkpoints::error(path, e));
            };
            Ok(Stored {
                next_offset: old.next_offset,
                base: None,
                values: old.values.into_iter().collect(),
                latest: old.latest.into_iter().map(to_stored).collect(),
                module_sha256: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageArgs;

    fn checkpoints(dir: &std::path::Path) -> Checkpoints {
        let storage = StorageArgs {
            output_url: format!("file://{}", dir.display()),
            s3_endpoint: None,
            s3_path_style: true,
            s3_region: None,
            s3_ca_file: None,
        }
        .open()
        .expect("storage");
        Checkpoints::new(storage, "group/topic")
    }

    fn state(next_offset: i64, values: &[(i64, i64)]) -> PartitionState {
        PartitionState {
            next_offset,
            values: values.iter().copied().collect(),
            ..PartitionState::default()
        }
    }

    #[tokio::test]
    async fn resumes_exactly_at_the_committed_offset_or_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = checkpoints(dir.path());
        checkpoints.save(0, &mut state(10, &[(7, 3)])).await.expect("save");
        let resumed = checkpoints.resume(0, Some(10), 0).await.expect("resume");
        assert_eq!(resumed.values.get(&7), Some(&3));
        let behind = checkpoints.resume(0, Some(25), 0).await.expect_err("behind");
        assert!(behind.to_string().contains("is at offset 10, behind it"), "{behind}");
        let missing = checkpoints.resume(1, Some(25), 0).await.expect_err("missing");
        assert!(
            missing.to_string().contains("no checkpoint at or below it"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn a_handoff_names_its_checkpoint_per_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = checkpoints(dir.path());
        let handoff = |offset| Handoff {
            offset,
            archive: "file:///archive".into(),
            module_sha256: "ab".into(),
        };
        checkpoints
            .save_handoff(0, &state(120, &[(4, 9)]), &handoff(120))
            .await
            .expect("handoff 0");
        checkpoints
            .save_handoff(3, &state(7, &[(5, 1)]), &handoff(7))
            .await
            .expect("handoff 3");
        let found = checkpoints.handoffs().await.expect("handoffs");
        assert_eq!(found, BTreeMap::from([(0, 120), (3, 7)]));
        // The live job loads it as the checkpoint of the hand-off offset.
        let resumed = checkpoints.resume(0, Some(120), 0).await.expect("resume");
        assert_eq!(resumed.values.get(&4), Some(&9));
        // The hand-off file is no checkpoint offset.
        assert_eq!(checkpoints.offsets(3).await.expect("offsets"), vec![7]);
    }

    #[tokio::test]
    async fn a_group_without_commits_ignores_empty_checkpoints_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = checkpoints(dir.path());
        // What a first batch saves before a fence that was then refused.
        checkpoints.save(0, &mut state(40, &[])).await.expect("save");
        let resumed = checkpoints.resume(0, None, 40).await.expect("empty start");
        assert_eq!((resumed.next_offset, resumed.values.len()), (40, 0));
        checkpoints.save(0, &mut state(90, &[(1, 5)])).await.expect("save");
        let refused = checkpoints.resume(0, None, 40).await.expect_err("counts exist");
        assert!(refused.to_string().contains("no committed offset"), "{refused}");
    }

    fn latest(user: i32, count: i32, offset: i64) -> Latest {
        Latest {
            total_transactions_count: count,
            as_of_timestamp_millis: i64::from(user) * 1_000 + offset,
            source_offset: offset,
        }
    }

    /// A state of 100 users, checkpointed whole at offset 100.
    fn hundred_users() -> PartitionState {
        let mut state = state(100, &[]);
        for user in 0..100 {
            state.values.insert(i64::from(user), 1);
            state.set_latest(user, latest(user, 1, i64::from(user)));
        }
        state
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let folder = dir.join("_checkpoints/group/topic/partition=0");
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .expect("folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn checkpoints_cost_what_changed_until_the_deltas_add_up_to_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = checkpoints(dir.path());
        let mut live = hundred_users();
        checkpoints.save(0, &mut live).await.expect("whole");
        // 5 of 100 users change: a delta of their 10 entries alone.
        for user in 0..5 {
            live.values.insert(i64::from(user), 2);
            live.changes.keys.insert(i64::from(user));
            live.set_latest(user, latest(user, 2, 100 + i64::from(user)));
        }
        live.next_offset = 105;
        live.settle_changes();
        assert_eq!(live.changes.keys.len(), 5, "a delta is due: the changes are kept");
        let snapshot = live.snapshot();
        assert_eq!(
            (snapshot.base, snapshot.values.len(), snapshot.latest.len()),
            (Some(100), 5, 5)
        );
        checkpoints.write(0, snapshot).await.expect("delta");
        // One more user: a delta over the delta.
        live.set_latest(7, latest(7, 2, 107));
        live.next_offset = 110;
        checkpoints.save(0, &mut live).await.expect("second delta");
        let resumed = checkpoints.resume(0, Some(110), 0).await.expect("resume the chain");
        assert_eq!(resumed.values, live.values);
        assert_eq!(resumed.latest, live.latest);
        assert_eq!(
            (
                resumed.changes.base,
                resumed.changes.deltas,
                resumed.changes.delta_entries
            ),
            (Some(110), 2, 11),
            "the chain's place, as the writer has it"
        );
        assert_eq!((live.changes.deltas, live.changes.delta_entries), (2, 11));
        // The clean-up after a fence at 110 keeps the chain it needs.
        checkpoints.forget_below(0, 110).await.expect("forget");
        let chain = vec![
            format!("{:020}.json", 100),
            format!("{:020}.delta-{:020}.json", 105, 100),
            format!("{:020}.delta-{:020}.json", 110, 105),
        ];
        assert_eq!(names(dir.path()), chain);
        // Every user changes: the deltas would add up to more than the state,
        // so it is written whole, and nothing older is needed any more.
        for user in 0..100 {
            live.set_latest(user, latest(user, 3, 200 + i64::from(user)));
            live.values.insert(i64::from(user), 3);
            live.changes.keys.insert(i64::from(user));
        }
        live.next_offset = 150;
        live.settle_changes();
        assert!(
            live.changes.keys.is_empty() && live.changes.users.is_empty(),
            "a whole checkpoint is due: which entries changed no longer matters"
        );
        checkpoints.save(0, &mut live).await.expect("whole again");
        assert_eq!((live.changes.base, live.changes.deltas), (Some(150), 0));
        checkpoints.forget_below(0, 150).await.expect("forget");
        assert_eq!(names(dir.path()), vec![format!("{:020}.json", 150)]);
    }

    #[tokio::test]
    async fn a_delta_whose_chain_is_broken_is_refused_never_guessed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoints = checkpoints(dir.path());
        let mut live = hundred_users();
        checkpoints.save(0, &mut live).await.expect("whole");
        for offset in [101, 102] {
            live.next_offset = offset;
            live.set_latest(1, latest(1, 5, offset));
            checkpoints.save(0, &mut live).await.expect("delta");
        }
        let resumed = checkpoints.resume(0, Some(102), 0).await.expect("resume");
        assert_eq!(resumed.latest[&1], latest(1, 5, 102));
        std::fs::remove_file(dir.path().join(format!(
            "_checkpoints/group/topic/partition=0/{:020}.delta-{:020}.json",
            101, 100
        )))
        .expect("remove a link");
        let refused = checkpoints.resume(0, Some(102), 0).await.expect_err("broken chain");
        assert!(refused.to_string().contains("no delta there whose chain"), "{refused}");
    }

    #[tokio::test]
    async fn checkpoints_written_before_deltas_still_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("_checkpoints/group/topic/partition=0");
        std::fs::create_dir_all(&folder).expect("folder");
        let old = r#"{"next_offset":7,"values":{"3":2},"latest":{"3":{"total_transactions_count":2,"as_of_timestamp_millis":9,"source_offset":6}}}"#;
        std::fs::write(folder.join(format!("{:020}.json", 7)), old).expect("write");
        let resumed = checkpoints(dir.path()).resume(0, Some(7), 0).await.expect("resume");
        assert_eq!(resumed.values.get(&3), Some(&2));
        let offset = { resumed.latest[&3].source_offset };
        assert_eq!(offset, 6);
    }
}
