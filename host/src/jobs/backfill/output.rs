//! The backfill's claim on its output, per partition: the settings its
//! progress belongs to (`settings.json` beside the progress checkpoints), the
//! refusal to add rows next to features someone else wrote, and the hand-off
//! of the final state to a live group, after which the partition's output
//! belongs to the live job (`handed-off.json`).

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Storage;
use crate::jobs::features::{DATASET, checkpoint_name};
use crate::state::{Checkpoints, Handoff, PartitionState};

use super::{Error, Result, progress_name};

/// The settings a partition's backfill progress belongs to; resuming under
/// other settings would mix two backfills in one output.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Settings {
    pub archive: String,
    pub topic: String,
    pub module_sha256: String,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub rows_per_object: usize,
    pub mispartitioned_records: String,
}

/// Left in a partition's progress folder once its state was handed off.
#[derive(Debug, Serialize, Deserialize)]
struct HandedOff {
    group: String,
    offset: i64,
}

/// One backfill's view of its output.
pub(super) struct Output {
    pub storage: Storage,
    pub topic: String,
}

impl Output {
    fn file(&self, partition: i32, name: &str) -> ObjectPath {
        self.storage.path(&format!(
            "_checkpoints/{}/partition={partition}/{name}",
            progress_name(&self.topic)
        ))
    }

    async fn read<T: DeserializeOwned>(&self, path: &ObjectPath) -> Result<Option<T>> {
        match self.storage.store.get(path).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(|e| Error::Other(format!("{path}: {e}")))?;
                let value = serde_json::from_slice(&bytes).map_err(|e| Error::Other(format!("{path}: {e}")))?;
                Ok(Some(value))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::Other(format!("{path}: {e}"))),
        }
    }

    async fn write<T: Serialize>(&self, path: &ObjectPath, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Other(e.to_string()))?;
        self.storage
            .store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| Error::Other(format!("{path}: {e}")))?;
        Ok(())
    }

    /// Claims a partition of the output for a backfill with `settings`:
    /// refused when it was handed off to a live job, or holds progress made
    /// under other settings, or (a first backfill) features objects someone
    /// else wrote. `restart` first deletes the partition's progress and
    /// features.
    pub async fn claim(&self, partition: i32, settings: &Settings, restart: bool) -> Result<()> {
        if let Some(handed) = self.read::<HandedOff>(&self.file(partition, "handed-off.json")).await? {
            return Err(Error::Other(format!(
                "partition {partition} of {} was handed off to group {} at offset {}: its features there are the \
                 live job's now, and a backfill would duplicate or delete them. Backfill into another --output-url.",
                self.storage.url, handed.group, handed.offset
            )));
        }
        let settings_path = self.file(partition, "settings.json");
        if restart {
            let progress = self.storage.path(&format!(
                "_checkpoints/{}/partition={partition}",
                progress_name(&self.topic)
            ));
            self.storage.delete_under(&progress).await?;
            let features = self.storage.path(&format!("{DATASET}/partition={partition}"));
            self.storage.delete_under(&features).await?;
        } else if let Some(earlier) = self.read::<Settings>(&settings_path).await? {
            if &earlier != settings {
                return Err(Error::Other(format!(
                    "partition {partition} of {} holds a backfill with other settings ({earlier:?}); this run's \
                     are {settings:?}. Use another --output-url, or --restart to replace it.",
                    self.storage.url
                )));
            }
        } else {
            self.refuse_foreign_features(partition).await?;
        }
        self.write(&settings_path, settings).await
    }

    /// A first backfill into an output whose features dataset already holds
    /// objects of the partition (a live job's) would add a second row for
    /// the same records under other names: refused.
    async fn refuse_foreign_features(&self, partition: i32) -> Result<()> {
        use futures::StreamExt;
        let folder = self.storage.path(&format!("{DATASET}/partition={partition}"));
        let mut listing = self.storage.store.list(Some(&folder));
        if let Some(object) = listing.next().await {
            let object = object.map_err(|e| Error::Other(format!("listing {folder}: {e}")))?;
            return Err(Error::Other(format!(
                "{} already holds features of partition {partition} that no backfill of these settings wrote \
                 ({}); the backfill's rows would duplicate them. Use another --output-url, or --restart to replace \
                 them.",
                self.storage.url, object.location
            )));
        }
        Ok(())
    }

    /// Writes a partition's final state as `group`'s hand-off checkpoint,
    /// then marks the partition handed off.
    pub async fn hand_off(
        &self,
        group: &str,
        partition: i32,
        state: &PartitionState,
        archive: &str,
        module_sha256: &str,
    ) -> Result<()> {
        let checkpoints =
            Checkpoints::new(self.storage.clone(), &checkpoint_name(group, &self.topic)).with_module(module_sha256);
        let handoff = Handoff {
            offset: state.next_offset,
            archive: archive.to_string(),
            module_sha256: module_sha256.to_string(),
        };
        checkpoints.save_handoff(partition, state, &handoff).await?;
        let handed = HandedOff {
            group: group.to_string(),
            offset: state.next_offset,
        };
        self.write(&self.file(partition, "handed-off.json"), &handed).await
    }
}
