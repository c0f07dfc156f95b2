//! Keyed state owned by the host (the guest's `keyed-state` import), one map
//! per source partition, checkpointed to object storage with the offset it
//! reflects. A checkpoint is written after the outputs of a batch and before
//! the offset commit, so on restart the checkpoint is never behind the
//! committed offset: records below the checkpoint's offset are already in
//! the state and are skipped, records above it are applied.

use std::collections::HashMap;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::config::Storage;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The state of one partition and the next source offset it has not seen.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PartitionState {
    pub next_offset: i64,
    pub values: HashMap<i64, i64>,
}

/// Checkpoints of one job's state under `<root>/_checkpoints/<name>/`.
pub struct Checkpoints {
    storage: Storage,
    name: String,
}

impl Checkpoints {
    /// `name` identifies the job instance (consumer group and topic), so two
    /// pipelines sharing a bucket never read each other's state.
    pub fn new(storage: Storage, name: &str) -> Self {
        Self {
            storage,
            name: name.to_string(),
        }
    }

    fn path(&self, partition: i32) -> ObjectPath {
        self.storage
            .path(&format!("_checkpoints/{}/partition={partition}.json", self.name))
    }

    /// Where a partition's checkpoint lives, for messages.
    pub fn describe(&self, partition: i32) -> String {
        format!("{}/{}", self.storage.url.trim_end_matches('/'), self.path(partition))
    }

    /// The last checkpoint of a partition, or empty state from offset 0.
    pub async fn load(&self, partition: i32) -> Result<PartitionState> {
        let path = self.path(partition);
        let error = |reason: String| Error::Checkpoint {
            path: path.to_string(),
            reason,
        };
        match self.storage.store.get(&path).await {
            Ok(object) => {
                let bytes = object.bytes().await.map_err(|e| error(e.to_string()))?;
                serde_json::from_slice(&bytes).map_err(|e| error(e.to_string()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(PartitionState::default()),
            Err(e) => Err(error(e.to_string())),
        }
    }

    /// Replaces a partition's checkpoint atomically.
    pub async fn save(&self, partition: i32, state: &PartitionState) -> Result<()> {
        let path = self.path(partition);
        let error = |reason: String| Error::Checkpoint {
            path: path.to_string(),
            reason,
        };
        let bytes = serde_json::to_vec(state).map_err(|e| error(e.to_string()))?;
        self.storage
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(())
    }
}
