//! Keyed state owned by the host (the guest's `keyed-state` import), one map
//! per source partition, checkpointed to object storage with the offset it
//! reflects.
//!
//! A checkpoint is named by that offset
//! (`_checkpoints/<group>/<topic>/partition=<P>/<offset, 20 digits>.json`)
//! and written after a batch's outputs, before its offsets are committed. A
//! partition resumes from the checkpoint named by the group's committed
//! offset, exactly: a missing one, or only older ones, is refused rather
//! than guessed. Whoever writes a given name writes the same content (a
//! deterministic guest over the same records from the same state), so a
//! member that lost its partitions and wakes up cannot move state backwards.

use std::collections::{BTreeMap, HashMap};

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
}

/// A user's latest feature and the source offset it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    pub total_transactions_count: i32,
    pub as_of_timestamp_millis: i64,
    pub source_offset: i64,
}

/// The stored form: keys in order, so equal state gives equal bytes.
#[derive(Serialize, Deserialize)]
struct Stored {
    next_offset: i64,
    values: BTreeMap<i64, i64>,
    /// Absent in checkpoints written before the serving view was kept.
    #[serde(default)]
    latest: BTreeMap<i32, Latest>,
    /// The module whose outputs the state reflects last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    module_sha256: Option<String>,
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

/// Checkpoints of one job's state under `<root>/_checkpoints/<name>/`.
pub struct Checkpoints {
    storage: Storage,
    name: String,
    /// Offsets of checkpoints this process wrote, per partition, oldest
    /// first: deleted once a commit moves past them.
    written: HashMap<i32, Vec<i64>>,
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
            written: HashMap::new(),
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

    fn path(&self, partition: i32, offset: i64) -> ObjectPath {
        self.storage.path(&format!(
            "_checkpoints/{}/partition={partition}/{offset:020}.json",
            self.name
        ))
    }

    /// The newest checkpoint of a partition under this name, if any. Every
    /// stored one counts as written by this process, so `forget_below`
    /// deletes them once superseded (a crash may have left older ones).
    pub async fn latest(&mut self, partition: i32) -> Result<Option<PartitionState>> {
        let offsets = self.offsets(partition).await?;
        let Some(offset) = offsets.last().copied() else {
            return Ok(None);
        };
        let state = self.load(partition, offset).await?;
        self.written.entry(partition).or_default().extend(offsets);
        Ok(Some(state))
    }

    /// Saves `state` as a partition's checkpoint and marks it as the hand-off
    /// point for a live job (see `Handoff`).
    pub async fn save_handoff(&mut self, partition: i32, state: &PartitionState, handoff: &Handoff) -> Result<()> {
        self.save(partition, state).await?;
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
            let path = &object.location;
            let bytes = self
                .storage
                .store
                .get(path)
                .await
                .map_err(|e| Self::error(path, e))?
                .bytes()
                .await
                .map_err(|e| Self::error(path, e))?;
            let handoff: Handoff = serde_json::from_slice(&bytes).map_err(|e| Self::error(path, e))?;
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

    /// Offsets of a partition's stored checkpoints, ascending.
    pub async fn offsets(&self, partition: i32) -> Result<Vec<i64>> {
        let objects = self.list(&self.folder(partition)).await?;
        let mut offsets: Vec<i64> = objects
            .iter()
            .filter_map(|o| o.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        offsets.sort_unstable();
        Ok(offsets)
    }

    /// The state a partition resumes with. `committed` is the group's
    /// committed offset (`None` for a group that never committed): the
    /// checkpoint named by it must exist; a group that never committed starts
    /// empty at `first_offset`, provided no checkpoint claims otherwise.
    pub async fn resume(
        &mut self,
        partition: i32,
        committed: Option<i64>,
        first_offset: i64,
    ) -> Result<PartitionState> {
        let Some(offset) = committed else {
            let stored = self.offsets(partition).await?;
            // Empty checkpoints are what a first batch saves before its fence;
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
        let path = self.path(partition, offset);
        match self.storage.store.get(&path).await {
            Ok(object) => Self::decode(&path, object).await,
            Err(object_store::Error::NotFound { .. }) => {
                let stored = self.offsets(partition).await?;
                let behind = stored.iter().rev().find(|o| **o < offset);
                let found = match behind {
                    Some(o) => format!("the newest checkpoint at or below it is at offset {o}, behind it"),
                    None => "no checkpoint at or below it exists".to_string(),
                };
                Err(Error::Mismatch(format!(
                    "partition {partition}: the group's committed offset is {offset} but {found} ({}). The state \
                     would not match the offsets, so the job refuses to count. Recover with `sluice rebuild-state \
                     --partition {partition}` (same --group/--topic/--output-url), which restarts that partition \
                     from the topic's start when the topic still holds it.",
                    self.describe(partition)
                )))
            }
            Err(e) => Err(Self::error(&path, e)),
        }
    }

    async fn decode(path: &ObjectPath, object: object_store::GetResult) -> Result<PartitionState> {
        let bytes = object.bytes().await.map_err(|e| Self::error(path, e))?;
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| Self::error(path, e))?;
        Ok(PartitionState {
            next_offset: stored.next_offset,
            values: stored.values.into_iter().collect(),
            latest: stored.latest.into_iter().collect(),
        })
    }

    /// The checkpoint of a partition stored under `offset`.
    async fn load(&self, partition: i32, offset: i64) -> Result<PartitionState> {
        let path = self.path(partition, offset);
        let object = self.storage.store.get(&path).await.map_err(|e| Self::error(&path, e))?;
        Self::decode(&path, object).await
    }

    /// Stores a partition's checkpoint under its offset.
    pub async fn save(&mut self, partition: i32, state: &PartitionState) -> Result<()> {
        let path = self.path(partition, state.next_offset);
        let stored = Stored {
            next_offset: state.next_offset,
            values: state.values.iter().map(|(k, v)| (*k, *v)).collect(),
            latest: state.latest.iter().map(|(k, v)| (*k, *v)).collect(),
            module_sha256: self.module_sha256.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| Self::error(&path, e))?;
        self.storage
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| Self::error(&path, e))?;
        self.written.entry(partition).or_default().push(state.next_offset);
        Ok(())
    }

    /// Deletes the checkpoints this process wrote below `committed`: the
    /// group can no longer resume from them.
    pub async fn forget_below(&mut self, partition: i32, committed: i64) -> Result<()> {
        let Some(written) = self.written.get_mut(&partition) else {
            return Ok(());
        };
        let stale: Vec<i64> = written.iter().copied().filter(|o| *o < committed).collect();
        written.retain(|o| *o >= committed);
        for offset in stale {
            let path = self.path(partition, offset);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageArgs;

    fn checkpoints(dir: &std::path::Path) -> Checkpoints {
        let storage = StorageArgs {
            output_url: format!("file://{}", dir.display()),
            s3_endpoint: None,
            s3_path_style: true,
            s3_region: "us-east-1".into(),
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
        let mut checkpoints = checkpoints(dir.path());
        checkpoints.save(0, &state(10, &[(7, 3)])).await.expect("save");
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
        let mut checkpoints = checkpoints(dir.path());
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
        let mut checkpoints = checkpoints(dir.path());
        // What a first batch saves before a fence that was then refused.
        checkpoints.save(0, &state(40, &[])).await.expect("save");
        let resumed = checkpoints.resume(0, None, 40).await.expect("empty start");
        assert_eq!((resumed.next_offset, resumed.values.len()), (40, 0));
        checkpoints.save(0, &state(90, &[(1, 5)])).await.expect("save");
        let refused = checkpoints.resume(0, None, 40).await.expect_err("counts exist");
        assert!(refused.to_string().contains("no committed offset"), "{refused}");
    }
}
