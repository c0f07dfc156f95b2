//! transactions-job-backup: every record of the topic to Parquet, columns
//! exactly the registered value schema (latest version, so records of older
//! writers take defaults and fields newer writers add are kept). Each object
//! carries its rows' source partition and offsets in its key-value metadata
//! (`lineage`), which the backfill reads.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::avro::{DecodeError, Decoder, Readers, schema_id};
use crate::columnar::{ColumnarSchema, RowsBuilder, columnar_schema};
use crate::config::{KafkaArgs, Storage};
use crate::hot_swap::{HotSwap, SwapOptions, SwapRecord};
use crate::kafka::Consumed;
use crate::lineage::{ArchiveLineage, module_metadata};
use crate::registry::Registry;
use crate::runtime::{Limits, RawFilterWorld, RawRecord, Runtime, Verdict};
use crate::sinks::parquet::ParquetSink;

use super::{BACKUP_PASSWORD_VAR, BACKUP_USER, Consuming, Error, Result, RunOptions, Step, by_partition};

pub const JOB: &str = "transactions-job-backup";

/// What a run did, printed as JSON at the end.
#[derive(Debug, Default, Serialize)]
pub struct BackupReport {
    pub records: u64,
    #[serde(flatten)]
    pub throughput: super::Throughput,
    pub archived: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    pub files: u64,
    /// The module in use at the end (each object's key-value metadata names
    /// the module that wrote it).
    pub module_sha256: String,
    /// Modules swapped in while the job ran, with where each took over.
    pub swaps: Vec<SwapRecord>,
}

pub struct BackupJob {
    pub kafka: KafkaArgs,
    pub registry: Registry,
    pub storage: Storage,
    pub module: PathBuf,
    pub options: RunOptions,
    pub limits: Limits,
    pub swap: SwapOptions,
}

/// The archive layout and the registered schema id it was built from.
struct Layout {
    schema_id: u32,
    columns: Arc<ColumnarSchema>,
}

impl BackupJob {
    pub async fn run(self) -> Result<BackupReport> {
        let runtime = Runtime::new(self.limits)?;
        let (mut swap, mut guest) = HotSwap::<RawFilterWorld>::start(runtime, &self.module, &self.swap).await?;
        let mut consuming =
            Consuming::start(&self.kafka, self.options.clone(), JOB, BACKUP_USER, BACKUP_PASSWORD_VAR).await?;
        let mut decoder = Decoder::new(&self.registry);
        let subject = crate::model::value_subject(&self.kafka.topic);
        let mut layout = self.latest_layout(&subject).await?;
        let sink = ParquetSink::new(self.storage.clone(), &self.kafka.topic);
        let mut report = BackupReport::default();
        while let Some(step) = consuming.next().await? {
            // The backup job has no real-time output: it works per roll.
            let Step::Roll(batch) = step else {
                continue;
            };
            // A batch boundary: a staged module takes over here.
            swap.swap_staged(&mut guest);
            if !consuming.fence(&batch).await? {
                continue;
            }
            decoder.prepare(batch.iter().map(|r| r.value.as_deref())).await?;
            let mut uncovered = uncovered_writers(&decoder, &batch, &layout);
            if !uncovered.is_empty() {
                // A newer version was registered: the archive follows the latest.
                layout = self.latest_layout(&subject).await?;
                tracing::info!(schema_id = layout.schema_id, "archive layout follows the latest schema");
                uncovered = uncovered_writers(&decoder, &batch, &layout);
            }
            let readers = decoder.readers();
            let partitions = consuming
                .partition_count()
                .ok_or_else(|| Error::Other(format!("the partition count of {} is unknown", self.kafka.topic)))?;
            for (partition, records) in by_partition(&batch) {
                swap.took_over(partition, records[0].offset);
                let raw: Vec<RawRecord> = records.iter().map(|r| raw_record(r)).collect();
                let verdicts = guest.process(&raw);
                crate::fault::point("after-guest");
                drop(raw);
                let mut rows = RowsBuilder::new(layout.columns.clone());
                let mut offsets = Vec::with_capacity(records.len());
                let mut excluded = Vec::new();
                for (record, verdict) in records.iter().zip(verdicts) {
                    report.records += 1;
                    let reason = match verdict {
                        Ok(Verdict::Keep) => match archive_row(&readers, &uncovered, &mut rows, record) {
                            Ok(()) => {
                                offsets.push(record.offset);
                                continue;
                            }
                            Err(reason) => reason,
                        },
                        Ok(Verdict::Drop) => {
                            report.dropped += 1;
                            excluded.push(record.offset);
                            continue;
                        }
                        Ok(Verdict::Reject(reason)) => format!("rejected by guest: {reason}"),
                        Err(failure) => failure.to_string(),
                    };
                    excluded.push(record.offset);
                    consuming.dead_letters.send(record, &reason).await?;
                    report.dead_lettered += 1;
                }
                // An object is written even when no record survived: its
                // lineage says the range was consumed, so the backfill can
                // tell a dead-lettered or filtered range from a lost object.
                report.archived += rows.len() as u64;
                let first_offset = records[0].offset;
                let consumed = first_offset..records[records.len() - 1].offset + 1;
                let lineage =
                    ArchiveLineage::new(&self.kafka.topic, partition, partitions, consumed, &offsets, &excluded);
                let mut metadata = lineage.to_metadata();
                metadata.push(module_metadata(swap.sha256()));
                let path = sink.write(partition, first_offset, &rows.finish(), metadata).await?;
                crate::fault::point("after-upload");
                report.files += 1;
                tracing::debug!(%path, "archived");
            }
            consuming.done(&batch).await?;
        }
        report.throughput = consuming.throughput(report.records);
        report.module_sha256 = swap.sha256().to_string();
        report.swaps = swap.swaps();
        Ok(report)
    }

    async fn latest_layout(&self, subject: &str) -> Result<Layout> {
        let latest = self.registry.latest(subject).await?;
        let schema = apache_avro::Schema::parse_str(&latest.schema)
            .map_err(|e| Error::Other(format!("latest schema of {subject} does not parse: {e}")))?;
        let columns = columnar_schema(&schema).map_err(|e| Error::Other(format!("{subject}: {e}")))?;
        Ok(Layout {
            schema_id: latest.id,
            columns,
        })
    }
}

/// Writer schemas of this batch whose fields the layout lacks. Coverage is a
/// property of (writer, layout), so it is decided once per batch, not per
/// record.
fn uncovered_writers(decoder: &Decoder, batch: &[Consumed], layout: &Layout) -> HashSet<u32> {
    let ids: HashSet<u32> = batch
        .iter()
        .filter_map(|r| schema_id(r.value.as_deref()).ok())
        .collect();
    ids.into_iter()
        .filter(|id| *id != layout.schema_id)
        .filter(|id| {
            decoder
                .known_schema(*id)
                .is_some_and(|writer| !layout.columns.covers(writer))
        })
        .collect()
}

/// Decodes a kept record into the archive rows, or says why it cannot be.
fn archive_row(
    readers: &Readers<'_>,
    uncovered: &HashSet<u32>,
    rows: &mut RowsBuilder,
    record: &Consumed,
) -> std::result::Result<(), String> {
    let (id, value) = readers
        .decode(record.value.as_deref())
        .map_err(|e: DecodeError| e.to_string())?;
    if uncovered.contains(&id) {
        return Err(format!(
            "writer schema {id} has fields the latest registered schema lacks"
        ));
    }
    rows.append(&value)
}

fn raw_record(record: &Consumed) -> RawRecord {
    RawRecord {
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record.headers.clone(),
        timestamp_millis: record.timestamp_millis,
        partition: record.partition,
        offset: record.offset,
    }
}
