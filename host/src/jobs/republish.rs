//! `sluice republish`: writes every user's latest features from the features
//! job's checkpoints to Redis, on demand (a Redis restored empty, a new
//! serving cluster). The running job heals Redis by itself (`serving`); this
//! is the same publication for when no job runs, or for another Redis.
//! Writes are fenced by source offset, so running it beside a live job
//! never moves a value the job wrote backwards.

use std::time::Instant;

use serde::Serialize;

use crate::config::{RedisArgs, Storage};
use crate::sinks::redis::RedisSink;
use crate::state::Checkpoints;

use super::Result;
use super::features::checkpoint_name;
use super::serving::Serving;

pub struct Republish {
    pub storage: Storage,
    pub redis: RedisArgs,
    pub group: String,
    pub topic: String,
}

#[derive(Debug, Serialize)]
pub struct RepublishReport {
    pub group: String,
    /// Partition -> the checkpoint offset its values were published from.
    pub partitions: std::collections::BTreeMap<i32, i64>,
    pub users: u64,
    /// Users Redis did not already hold at that offset or a newer one.
    pub written: u64,
    pub seconds: f64,
}

impl Republish {
    pub async fn run(self) -> Result<RepublishReport> {
        let started = Instant::now();
        let name = checkpoint_name(&self.group, &self.topic);
        let checkpoints = Checkpoints::new(self.storage.clone(), &name);
        let sink = RedisSink::new(self.redis.connect().await?, &self.redis.redis_prefix);
        let mut serving = Serving::new(sink, &name, self.redis.check_interval());
        let mut report = RepublishReport {
            group: self.group.clone(),
            partitions: Default::default(),
            users: 0,
            written: 0,
            seconds: 0.0,
        };
        for partition in checkpoints.partitions().await? {
            let Some(state) = checkpoints.latest(partition).await? else {
                continue;
            };
            report.users += state.latest.len() as u64;
            report.written += serving.publish(partition, &state, "sluice republish").await? as u64;
            report.partitions.insert(partition, state.next_offset);
        }
        if report.partitions.is_empty() {
            return Err(super::Error::Other(format!(
                "no checkpoints of group {} for topic {} under {}: nothing to republish (check --group, --topic \
                 and --output-url)",
                self.group, self.topic, self.storage.url
            )));
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}
