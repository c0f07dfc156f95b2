//! Where a newly assigned partition starts reading, decided explicitly from
//! the group's committed offset, the segment the last owner claimed, and the
//! partition's retained range; never by a silent `auto.offset.reset`.

use clap::ValueEnum;

/// What to do when the group's committed offset is no longer in the topic
/// (retention deleted records the group never read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OnDataLoss {
    /// Stop, naming the partitions and how many records are gone.
    #[default]
    Fail,
    /// Skip to the earliest retained offset, log and count what was skipped.
    Continue,
}

/// Where a partition starts and what it must reproduce first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The first offset to read.
    pub offset: i64,
    /// The group's committed offset, if any (a checkpoint must match it).
    pub committed: Option<i64>,
    /// Records skipped because retention deleted them (`--on-data-loss=continue`).
    pub skipped: i64,
}

/// Decides where `partition` starts. `handoff` is the offset a backfill
/// left a checkpoint at for the group (used only when the group never
/// committed). `Err` is a refusal, worded for the operator.
pub fn decide(
    topic: &str,
    partition: i32,
    committed: Option<i64>,
    handoff: Option<i64>,
    (low, high): (i64, i64),
    policy: OnDataLoss,
) -> Result<Start, String> {
    if let (None, Some(offset)) = (committed, handoff) {
        return from_handoff(topic, partition, offset, (low, high), policy);
    }
    let Some(offset) = committed else {
        if low > 0 {
            tracing::warn!(
                partition,
                earliest = low,
                "no committed offset: starting at the earliest retained offset; offsets below it were deleted \
                 before this group first ran"
            );
        }
        return Ok(Start {
            offset: low,
            committed: None,
            skipped: 0,
        });
    };
    if offset > high {
        return Err(format!(
            "partition {partition} of {topic}: the group's committed offset {offset} is beyond the partition's end \
             {high}: the topic was recreated (offsets restarted) or the group belongs to another cluster. Refusing \
             to skip records; delete the group's offsets to start over."
        ));
    }
    if offset < low {
        let gone = low - offset;
        return match policy {
            OnDataLoss::Fail => Err(format!(
                "partition {partition} of {topic}: the group's committed offset is {offset} but the topic now \
                 starts at {low}: {gone} records were deleted (retention) before this group read them. Refusing to \
                 skip them. Recover them from the archive, or run with --on-data-loss=continue to skip them \
                 knowingly."
            )),
            OnDataLoss::Continue => {
                tracing::warn!(
                    partition,
                    committed = offset,
                    earliest = low,
                    skipped = gone,
                    "data loss: records deleted before this group read them are skipped (--on-data-loss=continue)"
                );
                Ok(Start {
                    offset: low,
                    committed: Some(offset),
                    skipped: gone,
                })
            }
        };
    }
    Ok(Start {
        offset,
        committed: Some(offset),
        skipped: 0,
    })
}

/// A group without commits starts where the backfill's state ends, provided
/// the topic still holds that offset: records between the archive's end and
/// the topic's start would be in neither.
fn from_handoff(
    topic: &str,
    partition: i32,
    offset: i64,
    (low, high): (i64, i64),
    policy: OnDataLoss,
) -> Result<Start, String> {
    if offset > high {
        return Err(format!(
            "partition {partition} of {topic}: the backfill handed off at offset {offset}, beyond the partition's end \
             {high}: the archive is not of this topic (or the topic was recreated). Refusing to start; backfill from \
             this topic's archive, or delete the group's hand-off checkpoints to start from the topic."
        ));
    }
    if offset < low {
        let gone = low - offset;
        if policy == OnDataLoss::Fail {
            return Err(format!(
                "partition {partition} of {topic}: the backfill's state ends at offset {offset} but the topic now \
                 starts at {low}: offsets {offset}..{low} ({gone} records) are in neither the archive nor the topic \
                 (retention deleted them before the archive held them). Refusing to skip them. Backfill again from \
                 an archive that reaches offset {low}, or run with --on-data-loss=continue to skip them knowingly."
            ));
        }
        tracing::warn!(
            partition,
            handoff = offset,
            earliest = low,
            skipped = gone,
            "data loss: records between the backfill's hand-off and the topic's start are skipped \
             (--on-data-loss=continue)"
        );
        return Ok(Start {
            offset: low,
            committed: Some(offset),
            skipped: gone,
        });
    }
    tracing::info!(partition, offset, "starting from the backfill's hand-off checkpoint");
    Ok(Start {
        offset,
        committed: Some(offset),
        skipped: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_offset_in_range_is_where_reading_resumes() {
        let start = decide("t", 0, Some(10), None, (0, 40), OnDataLoss::Fail).expect("start");
        assert_eq!(
            start,
            Start {
                offset: 10,
                committed: Some(10),
                skipped: 0
            }
        );
    }

    #[test]
    fn a_fresh_group_starts_at_the_earliest_retained_offset() {
        let start = decide("t", 0, None, None, (7, 40), OnDataLoss::Fail).expect("start");
        assert_eq!((start.offset, start.committed), (7, None));
    }

    #[test]
    fn deleted_records_are_refused_by_default_and_counted_when_skipped() {
        let refusal = decide("t", 3, Some(5), None, (20, 40), OnDataLoss::Fail).expect_err("refused");
        assert!(
            refusal.contains("partition 3") && refusal.contains("15 records"),
            "{refusal}"
        );
        let start = decide("t", 3, Some(5), None, (20, 40), OnDataLoss::Continue).expect("start");
        assert_eq!((start.offset, start.skipped), (20, 15));
    }

    #[test]
    fn a_commit_beyond_the_end_is_refused() {
        let refusal = decide("t", 1, Some(50), None, (0, 10), OnDataLoss::Continue).expect_err("refused");
        assert!(refusal.contains("recreated"), "{refusal}");
    }

    #[test]
    fn a_group_without_commits_starts_at_the_handoff_or_names_the_gap() {
        let start = decide("t", 2, None, Some(30), (0, 40), OnDataLoss::Fail).expect("start");
        assert_eq!((start.offset, start.committed), (30, Some(30)));
        // A commit wins over the hand-off.
        let start = decide("t", 2, Some(35), Some(30), (0, 40), OnDataLoss::Fail).expect("start");
        assert_eq!(start.offset, 35);
        let gap = decide("t", 2, None, Some(30), (32, 40), OnDataLoss::Fail).expect_err("gap");
        assert!(gap.contains("offsets 30..32 (2 records)"), "{gap}");
        let beyond = decide("t", 2, None, Some(50), (0, 40), OnDataLoss::Fail).expect_err("beyond");
        assert!(beyond.contains("beyond the partition's end"), "{beyond}");
    }
}
