//! transactions-job-backup: every record of the topic to Parquet, columns
//! exactly the registered value schema (latest version, so records of older
//! writers take defaults and fields newer writers add are kept). Each object
//! carries its rows' source partition and offsets in its key-value metadata
//! (`lineage`), which the backfill reads.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::RecordBatch;
use serde::Serialize;

use crate::avro::{DecodeError, Decoder, Readers, schema_id, writer_ids};
use crate::avro_columns;
use crate::columnar::{ColumnarSchema, RowsBuilder, columnar_schema};
use crate::config::{KafkaArgs, Storage};
use crate::hot_swap::{HotSwap, SwapOptions, SwapRecord};
use crate::kafka::Consumed;
use crate::lineage::{ArchiveLineage, module_metadata};
use crate::registry::Registry;
use crate::runtime::{RawBatch, RawEntry, RawFilter, RawFilterGuest, RawFilterWorld, Runtime, Verdict};
use crate::sinks::parquet::ParquetSink;

use super::claims::Range;
use super::date_folders::{self, DateFolders};
use super::durable::{Object, Outputs, PartitionOutputs, Sinks};
use super::pipeline::{self, RunReport, Stages};
use super::rolling::Packed;
use super::{BACKUP_PASSWORD_VAR, BACKUP_USER, Consuming, Error, Result, Roll, RunOptions};

pub const JOB: &str = "transactions-job-backup";

/// What a run did, printed as JSON at the end.
#[derive(Debug, Default, Serialize)]
pub struct BackupReport {
    #[serde(flatten)]
    pub run: RunReport,
    pub archived: u64,
    pub dropped: u64,
}

pub struct BackupJob {
    pub kafka: KafkaArgs,
    pub registry: Registry,
    pub storage: Storage,
    pub module: PathBuf,
    pub options: RunOptions,
    pub runtime: crate::runtime::Settings,
    pub swap: SwapOptions,
    /// The timestamp field whose UTC date names each object's
    /// `event_date=` folder; `None` leaves the partition folders straight
    /// below the topic.
    pub date_folders_by: Option<String>,
}

/// The archive layout and the registered schema id it was built from.
pub(super) struct Layout {
    schema_id: u32,
    /// The registered schema's JSON: the reader schema of the archive rows.
    reader: String,
    columns: Arc<ColumnarSchema>,
    dates: Option<DateFolders>,
}

/// One run of the backup job: per roll, the guest's verdicts and the
/// archive rows of what it keeps.
struct Run {
    job: BackupJob,
    swap: HotSwap<RawFilterWorld>,
    guest: RawFilterGuest,
    decoder: Decoder,
    subject: String,
    layout: Layout,
    report: BackupReport,
}

impl BackupJob {
    pub async fn run(self) -> Result<BackupReport> {
        let sinks = Sinks {
            objects: ParquetSink::new(self.storage.clone(), &self.kafka.topic),
            checkpoints: None,
        };
        let consuming = Consuming::start(
            &self.kafka,
            self.options.clone(),
            JOB,
            BACKUP_USER,
            BACKUP_PASSWORD_VAR,
            sinks,
            None,
        )
        .await?;
        // The module compiles while the group joins (seconds on a fresh
        // group), rather than before.
        let runtime = Runtime::new(&self.runtime)?;
        let (swap, guest) = HotSwap::<RawFilterWorld>::start(runtime, &self.module, &self.swap).await?;
        let subject = crate::model::value_subject(&self.kafka.topic);
        let layout = self.latest_layout(&subject).await?;
        let mut run = Run {
            decoder: Decoder::new(&self.registry),
            job: self,
            swap,
            guest,
            subject,
            layout,
            report: BackupReport::default(),
        };
        let (common, _) = pipeline::run(consuming, &mut run).await?;
        Ok(BackupReport {
            run: common,
            ..run.report
        })
    }

    async fn latest_layout(&self, subject: &str) -> Result<Layout> {
        latest_layout(&self.registry, subject, self.date_folders_by.as_deref()).await
    }
}

/// The archive layout of the latest schema registered under `subject`.
pub(super) async fn latest_layout(registry: &Registry, subject: &str, date_folders_by: Option<&str>) -> Result<Layout> {
    let latest = registry.latest(subject).await?;
    let schema = apache_avro::Schema::parse_str(&latest.schema)
        .map_err(|e| Error::Other(format!("latest schema of {subject} does not parse: {e}")))?;
    let columns = columnar_schema(&schema).map_err(|e| Error::Other(format!("{subject}: {e}")))?;
    let dates = date_folders_by
        .map(|field| DateFolders::new(field, &schema))
        .transpose()
        .map_err(|e| Error::Other(format!("latest schema {} of {subject}: {e}", latest.id)))?;
    Ok(Layout {
        schema_id: latest.id,
        reader: latest.schema.clone(),
        columns,
        dates,
    })
}

impl Stages for Run {
    /// The backup job has no real-time output: it works per roll.
    async fn roll(&mut self, consuming: &mut Consuming, roll: Roll) -> Result<Outputs> {
        let records = roll.records;
        // A roll boundary: a staged module takes over here.
        self.swap.swap_staged(&mut self.guest);
        self.decoder.prepare(records.iter().flat_map(Packed::values)).await?;
        let mut uncovered = uncovered_writers(&self.decoder, records.iter().flat_map(Packed::values), &self.layout);
        if !uncovered.is_empty() {
            // A newer version was registered: the archive follows the latest.
            self.layout = self.job.latest_layout(&self.subject).await?;
            tracing::info!(
                schema_id = self.layout.schema_id,
                "archive layout follows the latest schema"
            );
            uncovered = uncovered_writers(&self.decoder, records.iter().flat_map(Packed::values), &self.layout);
        }
        let readers = self.decoder.readers();
        let topic = &self.job.kafka.topic;
        let partitions = consuming
            .partition_count()
            .ok_or_else(|| Error::Other(format!("the partition count of {topic} is unknown")))?;
        let mut outputs = Outputs {
            partitions: Vec::new(),
            module_sha256: self.swap.sha256().to_string(),
        };
        for packed in records {
            let partition = packed.partition();
            // The roll's buffer becomes the guest's input, and the values
            // are decoded from there: no copy besides the guest's own.
            let batch = packed
                .into_raw_batch()
                .map_err(|e| Error::Other(format!("partition {partition}: {e}")))?;
            self.swap.took_over(partition, batch.entries()[0].offset);
            let rows = ArchiveRows {
                decoder: &self.decoder,
                readers: &readers,
                uncovered: &uncovered,
                layout: &self.layout,
            };
            let source = Source {
                topic,
                partitions,
                module_sha256: self.swap.sha256(),
            };
            outputs.partitions.push(archive_partition(
                &mut self.guest,
                &rows,
                &source,
                batch,
                &mut self.report,
            )?);
        }
        Ok(outputs)
    }

    fn records(&self) -> u64 {
        self.report.run.records
    }

    fn module(&self) -> (String, Vec<SwapRecord>) {
        (self.swap.sha256().to_string(), self.swap.swaps())
    }
}

/// Where a partition's records came from, for its objects' lineage.
pub(super) struct Source<'a> {
    pub topic: &'a str,
    /// The topic's partition count.
    pub partitions: i32,
    pub module_sha256: &'a str,
}

/// One partition's records of a roll (in offset order, at least one) as the
/// durable path writes them: the filter's verdicts, the archive rows of
/// what it keeps and its objects with their lineage. The job and the engine
/// benchmark share it.
pub(super) fn archive_partition(
    filter: &mut impl RawFilter,
    rows: &ArchiveRows<'_>,
    source: &Source<'_>,
    batch: RawBatch,
    report: &mut BackupReport,
) -> Result<PartitionOutputs> {
    let partition = batch.partition();
    let verdicts = filter.process(&batch);
    crate::fault::point("after-guest");
    let entries = batch.entries();
    let mut kept = Vec::with_capacity(entries.len());
    let mut excluded = Vec::new();
    let mut dead_letters = Vec::new();
    for (record, verdict) in entries.iter().zip(verdicts) {
        report.run.records += 1;
        let reason = match verdict {
            Ok(Verdict::Keep) => {
                kept.push(record);
                continue;
            }
            Ok(Verdict::Drop) => {
                report.dropped += 1;
                excluded.push(record.offset);
                continue;
            }
            Ok(Verdict::Reject(reason)) => format!("rejected by guest: {reason}"),
            Err(failure) => failure.to_string(),
        };
        excluded.push(record.offset);
        dead_letters.push((consumed(&batch, record), reason));
    }
    let (columns, offsets) = rows.of(&batch, &kept, &mut excluded, &mut dead_letters);
    excluded.sort_unstable();
    dead_letters.sort_by_key(|(record, _)| record.offset);
    // An object is written even when no record survived: its lineage says
    // the range was consumed, so the backfill can tell a dead-lettered or
    // filtered range from a lost object.
    report.archived += columns.num_rows() as u64;
    let range = Range {
        partition,
        first: entries[0].offset,
        end: entries[entries.len() - 1].offset + 1,
    };
    let archived = Archived {
        topic: source.topic,
        partition,
        partitions: source.partitions,
        range: range.first..range.end,
        offsets: &offsets,
        excluded: &excluded,
        module_sha256: source.module_sha256,
    };
    let objects = archived.objects(columns, rows.layout.dates.as_ref())?;
    Ok(PartitionOutputs {
        range,
        dead_letters,
        objects,
        checkpoint_at_first: None,
        checkpoints: Vec::new(),
        retire_handoff: false,
    })
}

/// One partition's rows of a roll, with what its objects' lineage needs.
struct Archived<'a> {
    topic: &'a str,
    partition: i32,
    partitions: i32,
    range: std::ops::Range<i64>,
    /// The rows' offsets, in row order.
    offsets: &'a [i64],
    /// Offsets consumed and not archived, ascending.
    excluded: &'a [i64],
    module_sha256: &'a str,
}

impl Archived<'_> {
    /// The roll's objects: one per run of rows of one event date with date
    /// folders (one with no rows when none survived), else one.
    fn objects(&self, batch: RecordBatch, dates: Option<&DateFolders>) -> Result<Vec<Object>> {
        let Some(dates) = dates else {
            return Ok(vec![self.object(None, self.range.clone(), 0..batch.num_rows(), batch)]);
        };
        let mut runs = dates
            .runs(&batch)
            .map_err(|e| Error::Other(format!("dating the archive rows: {e}")))?;
        if runs.is_empty() {
            runs.push((date_folders::folder(None), 0..0));
        }
        let rows: Vec<std::ops::Range<usize>> = runs.iter().map(|(_, rows)| rows.clone()).collect();
        let consumed = date_folders::consumed_ranges(self.range.clone(), self.offsets, &rows);
        Ok(runs
            .into_iter()
            .zip(consumed)
            .map(|((folder, rows), consumed)| {
                let part = batch.slice(rows.start, rows.len());
                self.object(Some(folder), consumed, rows, part)
            })
            .collect())
    }

    /// The object of `rows` (of the roll's), which consumed `consumed`.
    fn object(
        &self,
        folder: Option<String>,
        consumed: std::ops::Range<i64>,
        rows: std::ops::Range<usize>,
        batch: RecordBatch,
    ) -> Object {
        let below = |end: i64| self.excluded.partition_point(|o| *o < end);
        let excluded = &self.excluded[below(consumed.start)..below(consumed.end)];
        let lineage = ArchiveLineage::new(
            self.topic,
            self.partition,
            self.partitions,
            consumed.clone(),
            &self.offsets[rows],
            excluded,
        );
        let mut metadata = lineage.to_metadata();
        metadata.push(module_metadata(self.module_sha256));
        Object {
            folder,
            first: consumed.start,
            batch,
            metadata,
        }
    }
}

/// Writer schemas of this batch whose fields the layout lacks. Coverage is a
/// property of (writer, layout), so it is decided once per batch, not per
/// record.
pub(super) fn uncovered_writers<'a>(
    decoder: &Decoder,
    values: impl IntoIterator<Item = Option<&'a [u8]>>,
    layout: &Layout,
) -> HashSet<u32> {
    let ids: HashSet<u32> = writer_ids(values).collect();
    ids.into_iter()
        .filter(|id| *id != layout.schema_id)
        .filter(|id| {
            decoder
                .known_schema(*id)
                .is_some_and(|writer| !layout.columns.covers(writer))
        })
        .collect()
}

/// What makes one partition's kept records archive rows.
pub(super) struct ArchiveRows<'a> {
    pub decoder: &'a Decoder,
    pub readers: &'a Readers<'a>,
    pub uncovered: &'a HashSet<u32>,
    pub layout: &'a Layout,
}

impl ArchiveRows<'_> {
    /// The archive rows of `kept`, with their offsets; a record that cannot
    /// be decoded joins `excluded` and `dead_letters` with the reason.
    fn of(
        &self,
        batch: &RawBatch,
        kept: &[&RawEntry],
        excluded: &mut Vec<i64>,
        dead_letters: &mut Vec<(Consumed, String)>,
    ) -> (RecordBatch, Vec<i64>) {
        if let Some(rows) = self.straight_to_columns(batch, kept) {
            return (rows, kept.iter().map(|r| r.offset).collect());
        }
        let mut rows = RowsBuilder::new(self.layout.columns.clone());
        let mut offsets = Vec::with_capacity(kept.len());
        for record in kept {
            match self.archive_row(&mut rows, batch.value(record)) {
                Ok(()) => offsets.push(record.offset),
                Err(reason) => {
                    excluded.push(record.offset);
                    dead_letters.push((consumed(batch, record), reason));
                }
            }
        }
        (rows.finish(), offsets)
    }

    /// Every kept value decoded straight into the columns (`avro_columns`),
    /// or `None` when one of them needs the record-by-record path: a
    /// writer the layout does not cover, or a value that does not decode.
    fn straight_to_columns(&self, batch: &RawBatch, kept: &[&RawEntry]) -> Option<RecordBatch> {
        let values: Vec<&[u8]> = kept.iter().map(|r| batch.value(r)).collect::<Option<_>>()?;
        if values
            .iter()
            .any(|v| schema_id(Some(v)).map_or(true, |id| self.uncovered.contains(&id)))
        {
            return None;
        }
        let writers = self.decoder.writers();
        match avro_columns::decode(&values, &writers, &self.layout.reader, self.layout.columns.arrow()) {
            Ok(batch) => Some(batch),
            Err(reason) => {
                tracing::debug!(%reason, "decoding these records one by one");
                None
            }
        }
    }

    /// Decodes a kept record into the archive rows, or says why it cannot be.
    fn archive_row(&self, rows: &mut RowsBuilder, value: Option<&[u8]>) -> std::result::Result<(), String> {
        let (id, value) = self.readers.decode(value).map_err(|e: DecodeError| e.to_string())?;
        if self.uncovered.contains(&id) {
            return Err(format!(
                "writer schema {id} has fields the latest registered schema lacks"
            ));
        }
        rows.append(&value)
    }
}

/// A record for the dead-letter topic: the one copy of a left-out record.
fn consumed(batch: &RawBatch, record: &RawEntry) -> Consumed {
    Consumed {
        key: batch.key(record).map(<[u8]>::to_vec),
        value: batch.value(record).map(<[u8]>::to_vec),
        headers: batch.header_pairs(record.offset),
        timestamp_millis: record.timestamp_millis,
        partition: batch.partition(),
        offset: record.offset,
    }
}
