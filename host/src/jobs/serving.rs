//! The serving store's upkeep: Redis is a copy of the features job's keyed
//! state, and when it loses keys (a flush, a restart without persistence,
//! an empty replica after a failover, eviction) the job republishes them
//! from the state it holds, without a replay from Kafka.
//!
//! Each partition's publication is marked by a sentinel key
//! (`<prefix>:published:<group>/<topic>:<partition>`). A partition's serving
//! view is published when its state is loaded and the sentinel is missing
//! (a backfill's hand-off, a Redis that came back empty); every
//! `--redis-check-interval-ms` the job checks the sentinels of the
//! partitions it holds and a sample of their users' keys, and republishes a
//! partition when either is gone. Every write is fenced by source offset, so
//! a republication never moves a value backwards.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::FeatureEvent;
use crate::sinks::redis::{RedisSink, Result};
use crate::state::PartitionState;

/// Users whose keys are checked per partition and check.
const SAMPLE: usize = 16;

pub struct Serving {
    sink: RedisSink,
    /// Names the sentinels: the group and topic whose state is published.
    name: String,
    interval: Duration,
    checked_at: Instant,
    /// Check rounds so far: moves the sample through each partition's users.
    rounds: usize,
    /// Users written by republications, for the report.
    pub republished: u64,
}

impl Serving {
    pub fn new(sink: RedisSink, name: &str, interval: Duration) -> Self {
        Self {
            sink,
            name: name.to_string(),
            interval,
            checked_at: Instant::now(),
            rounds: 0,
            republished: 0,
        }
    }

    /// The latest feature per user of `events`, fenced (see `RedisSink`).
    pub async fn write_latest<'a>(&self, events: impl IntoIterator<Item = &'a FeatureEvent>) -> Result<usize> {
        self.sink.write_latest(events).await
    }

    /// Call once a partition's state is loaded: publishes its serving view
    /// when Redis has no sentinel for it.
    pub async fn loaded(&mut self, partition: i32, state: &PartitionState) -> Result<()> {
        if !self.sink.is_published(&self.name, partition).await? {
            self.publish(partition, state, "Redis has no sentinel for the partition")
                .await?;
        }
        Ok(())
    }

    /// Every interval: republishes each held partition whose sentinel or
    /// sampled keys Redis lost.
    pub async fn check(&mut self, states: &HashMap<i32, PartitionState>) -> Result<()> {
        if self.checked_at.elapsed() < self.interval {
            return Ok(());
        }
        self.rounds += 1;
        let mut partitions: Vec<&i32> = states.keys().collect();
        partitions.sort_unstable();
        for partition in partitions {
            let state = &states[partition];
            let reason = if !self.sink.is_published(&self.name, *partition).await? {
                "its sentinel is gone from Redis"
            } else if self.sink.missing(&sample(state, self.rounds)).await? > 0 {
                "sampled users' keys are gone from Redis"
            } else {
                continue;
            };
            self.publish(*partition, state, reason).await?;
        }
        self.checked_at = Instant::now();
        Ok(())
    }

    /// Publishes every user's latest value of one partition, then its
    /// sentinel.
    pub async fn publish(&mut self, partition: i32, state: &PartitionState, reason: &str) -> Result<usize> {
        let started = Instant::now();
        let written = self.sink.publish(partition, &state.latest).await?;
        self.sink
            .mark_published(&self.name, partition, state.latest.len())
            .await?;
        self.republished += written as u64;
        tracing::info!(
            partition,
            users = state.latest.len(),
            written,
            ms = started.elapsed().as_millis() as u64,
            reason,
            "published the partition's features to redis"
        );
        Ok(written)
    }
}

/// Up to `SAMPLE` users of a partition, a different stretch each round.
fn sample(state: &PartitionState, round: usize) -> Vec<i32> {
    let users = state.latest.len();
    if users == 0 {
        return Vec::new();
    }
    // A stride prime to most sizes walks the whole map over the rounds.
    let start = round.wrapping_mul(7_919) % users;
    state
        .latest
        .keys()
        .cycle()
        .skip(start)
        .take(SAMPLE.min(users))
        .copied()
        .collect()
}
