//! `sluice rebuild-state`: the recovery for a features partition whose
//! checkpoint is missing or behind the group's committed offset. It restarts
//! that partition from the topic's start, provided the topic still holds it:
//! the group's offset goes back to 0 (refused by the broker while members of
//! the group run), and the partition's checkpoints and feature objects are
//! deleted, so the replay rewrites them with one boundary set. Redis needs
//! nothing: its writes are fenced by source offset, so the replay's older
//! counts are ignored until they pass the stored ones.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::{KafkaArgs, Storage};
use crate::state::{Checkpoints, PartitionState};

use super::features::{DATASET, checkpoint_name};
use super::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct RebuildState {
    pub kafka: KafkaArgs,
    pub storage: Storage,
    pub group: String,
    pub partition: i32,
}

#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub group: String,
    pub partition: i32,
    pub reset_to_offset: i64,
    pub checkpoints_deleted: usize,
    pub feature_objects_deleted: usize,
}

impl RebuildState {
    pub async fn run(self) -> Result<RebuildReport> {
        let topic = &self.kafka.topic;
        let credentials = self.kafka.admin_credentials()?;
        let consumer: BaseConsumer = self
            .kafka
            .client_config(credentials.as_ref())?
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create()?;
        let (low, _high) = consumer.fetch_watermarks(topic, self.partition, TIMEOUT)?;
        if low > 0 {
            return Err(Error::Other(format!(
                "partition {} of {topic} starts at offset {low}: retention deleted its first records, so its state \
                 cannot be rebuilt from the topic. Rebuild it from the Parquet archive instead.",
                self.partition
            )));
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, self.partition, Offset::Offset(0))?;
        consumer.commit(&list, CommitMode::Sync).map_err(|e| {
            Error::Other(format!(
                "resetting group {}'s offset of partition {} failed ({e}); stop every member of the group first",
                self.group, self.partition
            ))
        })?;

        let prefix = self.storage.path(&format!("{DATASET}/partition={}", self.partition));
        let feature_objects_deleted = self.storage.delete_under(&prefix).await?;
        let checkpoints = Checkpoints::new(self.storage.clone(), &checkpoint_name(&self.group, topic));
        let checkpoints_deleted = checkpoints.delete_partition(self.partition).await?;
        // The state the reset offset resumes with: empty, at offset 0.
        checkpoints.save(self.partition, &mut PartitionState::default()).await?;
        tracing::info!(group = %self.group, partition = self.partition, "state will be rebuilt from offset 0");
        Ok(RebuildReport {
            group: self.group,
            partition: self.partition,
            reset_to_offset: 0,
            checkpoints_deleted,
            feature_objects_deleted,
        })
    }
}
