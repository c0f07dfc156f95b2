//! `sluice status`: where the pipeline stands, read from the services
//! themselves (nothing asks a running job): the topic's partitions and
//! their high watermarks; each job group's state, members, committed
//! offsets and lag; the newest checkpoint and object per partition; the
//! modules that wrote the newest objects; the feature keys in Redis; the
//! archive's and the features' object counts and sizes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::TryStreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::{KafkaArgs, RedisArgs, Storage, partition_in_path};
use crate::lineage::MODULE_SHA256;
use crate::sinks::parquet::read_footer;
use crate::state::Checkpoints;

use super::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Status {
    pub kafka: KafkaArgs,
    pub storage: Storage,
    pub redis: RedisArgs,
    pub backup_group: String,
    pub features_group: String,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub topic: String,
    pub partitions: Vec<PartitionEnds>,
    pub groups: Vec<GroupStatus>,
    pub archive: Dataset,
    pub features: Dataset,
    /// Newest features checkpoint per partition: its offset.
    pub checkpoints: BTreeMap<i32, i64>,
    pub redis: RedisStatus,
}

#[derive(Debug, Serialize)]
pub struct PartitionEnds {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

#[derive(Debug, Serialize)]
pub struct GroupStatus {
    pub job: &'static str,
    pub group: String,
    pub state: String,
    /// Members as `client_id@host`.
    pub members: Vec<String>,
    pub partitions: Vec<GroupPartition>,
    pub total_lag: i64,
}

#[derive(Debug, Serialize)]
pub struct GroupPartition {
    pub partition: i32,
    /// `None` when the group never committed the partition.
    pub committed: Option<i64>,
    /// Records past the committed offset (from the low watermark if none).
    pub lag: i64,
}

/// A dataset's objects under the output root.
#[derive(Debug, Default, Serialize)]
pub struct Dataset {
    pub objects: u64,
    pub bytes: u64,
    /// The newest object of each partition (the highest first offset).
    pub newest: BTreeMap<i32, String>,
    /// The modules that wrote the newest objects.
    pub modules: BTreeSet<String>,
}

#[derive(Debug, Serialize)]
pub struct RedisStatus {
    pub prefix: String,
    /// Feature keys (`<prefix>:user:*`).
    pub feature_keys: u64,
}

impl Status {
    pub async fn run(self) -> Result<StatusReport> {
        let topic = self.kafka.topic.clone();
        let groups = [
            ("backup", self.backup_group.clone()),
            ("features", self.features_group.clone()),
        ];
        let kafka = self.kafka.clone();
        let (partitions, groups) = tokio::task::spawn_blocking(move || kafka_status(&kafka, &groups))
            .await
            .map_err(|e| Error::Other(format!("reading the group offsets: {e}")))??;
        let archive = dataset(&self.storage, &topic).await?;
        let features = dataset(&self.storage, super::features::DATASET).await?;
        let checkpoints = Checkpoints::new(
            self.storage.clone(),
            &super::features::checkpoint_name(&self.features_group, &topic),
        );
        let mut newest_checkpoints = BTreeMap::new();
        for partition in partitions.iter().map(|p| p.partition) {
            if let Some(offset) = checkpoints.offsets(partition).await?.last() {
                newest_checkpoints.insert(partition, *offset);
            }
        }
        let redis = RedisStatus {
            prefix: self.redis.redis_prefix.clone(),
            feature_keys: feature_keys(&self.redis).await?,
        };
        Ok(StatusReport {
            topic,
            partitions,
            groups,
            archive,
            features,
            checkpoints: newest_checkpoints,
            redis,
        })
    }
}

fn kafka_error(what: &str) -> impl Fn(rdkafka::error::KafkaError) -> Error + '_ {
    move |e| Error::Other(format!("{what}: {e}"))
}

/// The topic's partitions and each group's view of them.
fn kafka_status(
    kafka: &KafkaArgs,
    groups: &[(&'static str, String)],
) -> Result<(Vec<PartitionEnds>, Vec<GroupStatus>)> {
    let credentials = kafka.admin_credentials()?;
    let config = kafka.client_config(credentials.as_ref())?;
    let consumer: BaseConsumer = config.create().map_err(kafka_error("creating a client"))?;
    let metadata = consumer
        .fetch_metadata(Some(&kafka.topic), TIMEOUT)
        .map_err(kafka_error("reading the topic's metadata"))?;
    let mut partitions = Vec::new();
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&kafka.topic, partition.id(), TIMEOUT)
                .map_err(kafka_error("reading watermarks"))?;
            partitions.push(PartitionEnds {
                partition: partition.id(),
                low,
                high,
            });
        }
    }
    partitions.sort_by_key(|p| p.partition);
    let mut statuses = Vec::new();
    for (job, group) in groups {
        let mut group_config = config.clone();
        group_config.set("group.id", group).set("enable.auto.commit", "false");
        let member: BaseConsumer = group_config.create().map_err(kafka_error("creating a client"))?;
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition(&kafka.topic, p.partition);
        }
        let committed = member
            .committed_offsets(list, TIMEOUT)
            .map_err(kafka_error("reading committed offsets"))?;
        let described = consumer
            .fetch_group_list(Some(group), TIMEOUT)
            .map_err(kafka_error("describing the group"))?;
        let (state, members) = described
            .groups()
            .first()
            .map(|g| {
                let members = g
                    .members()
                    .iter()
                    .map(|m| format!("{}@{}", m.client_id(), m.client_host()))
                    .collect();
                (g.state().to_string(), members)
            })
            .unwrap_or_else(|| ("Unknown".to_string(), Vec::new()));
        let partitions: Vec<GroupPartition> = partitions
            .iter()
            .map(|p| {
                let committed = committed
                    .find_partition(&kafka.topic, p.partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                GroupPartition {
                    partition: p.partition,
                    committed,
                    lag: (p.high - committed.unwrap_or(p.low).max(p.low)).max(0),
                }
            })
            .collect();
        statuses.push(GroupStatus {
            job,
            group: group.clone(),
            state,
            members,
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            partitions,
        });
    }
    Ok((partitions, statuses))
}

/// Counts a dataset's objects and bytes, and reads the newest object of
/// each partition for the module that wrote it.
async fn dataset(storage: &Storage, name: &str) -> Result<Dataset> {
    let prefix = storage.path(name);
    let listed: Vec<_> = storage
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| Error::Other(format!("listing {}/{name}: {e}", storage.url)))?;
    let mut dataset = Dataset::default();
    let mut newest: BTreeMap<i32, object_store::ObjectMeta> = BTreeMap::new();
    for object in listed {
        if !object.location.as_ref().ends_with(".parquet") {
            continue;
        }
        dataset.objects += 1;
        dataset.bytes += object.size;
        let Some(partition) = partition_in_path(&object.location) else {
            continue;
        };
        // Names end in the zero-padded first offset: the greatest is newest.
        let file_name = |o: &object_store::ObjectMeta| o.location.filename().map(str::to_string);
        if newest.get(&partition).is_none_or(|n| file_name(n) < file_name(&object)) {
            newest.insert(partition, object);
        }
    }
    for (partition, object) in newest {
        let metadata = read_footer(storage, &object.location, object.size)
            .await
            .map_err(|reason| Error::Other(format!("reading the footer of {}: {reason}", object.location)))?;
        let module = metadata
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == MODULE_SHA256))
            .and_then(|kv| kv.value.clone());
        dataset.modules.extend(module);
        dataset.newest.insert(partition, object.location.to_string());
    }
    Ok(dataset)
}

/// Counts the feature keys under the prefix with SCAN (never KEYS, which
/// would block a production Redis).
async fn feature_keys(redis: &RedisArgs) -> Result<u64> {
    let connection = redis.connect().await?;
    let pattern = format!("{}:user:*", redis.redis_prefix);
    let mut cursor: u64 = 0;
    let mut keys = 0u64;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(10_000);
        let (next, found): (u64, Vec<String>) = connection.query("counting feature keys", &scan).await?;
        keys += found.len() as u64;
        cursor = next;
        if cursor == 0 {
            return Ok(keys);
        }
    }
}

impl StatusReport {
    /// The report for a person at a terminal.
    pub fn human(&self) -> String {
        let mut out = format!("topic {}\n", self.topic);
        for p in &self.partitions {
            out += &format!("  partition {}: offsets {}..{}\n", p.partition, p.low, p.high);
        }
        for g in &self.groups {
            out += &format!(
                "\n{} job, group {}: {} ({} member{}), lag {}\n",
                g.job,
                g.group,
                g.state,
                g.members.len(),
                if g.members.len() == 1 { "" } else { "s" },
                g.total_lag
            );
            for m in &g.members {
                out += &format!("  member {m}\n");
            }
            for p in &g.partitions {
                let committed = p.committed.map_or("none".to_string(), |c| c.to_string());
                out += &format!("  partition {}: committed {committed}, lag {}\n", p.partition, p.lag);
            }
        }
        for (name, d) in [("archive", &self.archive), ("features", &self.features)] {
            out += &format!(
                "\n{name}: {} objects, {:.1} MiB; modules {}\n",
                d.objects,
                d.bytes as f64 / (1 << 20) as f64,
                if d.modules.is_empty() {
                    "none".to_string()
                } else {
                    d.modules.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            );
            for (partition, path) in &d.newest {
                out += &format!("  partition {partition}: newest {path}\n");
            }
        }
        out += "\nfeatures checkpoints:\n";
        for (partition, offset) in &self.checkpoints {
            out += &format!("  partition {partition}: newest at offset {offset}\n");
        }
        out += &format!(
            "\nredis: {} feature keys under {}:user:\n",
            self.redis.feature_keys, self.redis.prefix
        );
        out
    }
}
