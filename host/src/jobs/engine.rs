//! The engine benchmark's driver (`host/benches/engine.rs`, `make bench`): a
//! job's decode, logic and sinks over pre-encoded records read from a file
//! instead of a broker. It runs the jobs' own processing
//! (`backup::archive_partition`, `features::process`) with whatever logic it
//! is given, so a wasm guest and the same guest source compiled natively go
//! through the same host code. There is no group, claim, fence, commit or
//! checkpoint: every record is on partition 0 of a one-partition topic.

use std::path::Path;

use serde::Serialize;

use crate::avro::Decoder;
use crate::config::Storage;
use crate::kafka::Consumed;
use crate::lineage::module_metadata;
use crate::model::value_subject;
use crate::registry::Registry;
use crate::runtime::{FeatureLogic, RawBatch, RawFilter};
use crate::sinks::parquet::ParquetSink;
use crate::sinks::redis::RedisSink;
use crate::state::PartitionState;

use super::backup::{self, ArchiveRows, BackupReport, Source};
use super::counting::{OnMispartitioned, Placement};
use super::features::{self, Decoding};
use super::{Error, Result};

/// The values of a record file, read whole: each record a 4-byte
/// big-endian length and then the Kafka value (Confluent-framed Avro), the
/// format `../shared/bench/peer.py --input` reads.
pub struct Values {
    bytes: Vec<u8>,
    count: usize,
}

impl Values {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let (value, end) = next_value(&self.bytes, at).ok()??;
            at = end;
            Some(value)
        })
    }
}

/// The value at byte `at` and where the next record starts, `None` at the
/// end, or where a record is cut short.
fn next_value(bytes: &[u8], at: usize) -> std::result::Result<Option<(&[u8], usize)>, usize> {
    if at == bytes.len() {
        return Ok(None);
    }
    let length: [u8; 4] = bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).ok_or(at)?;
    let end = at + 4 + u32::from_be_bytes(length) as usize;
    let value = bytes.get(at + 4..end).ok_or(at)?;
    Ok(Some((value, end)))
}

/// The values of the record file at `path`.
pub fn read_input(path: &Path) -> Result<Values> {
    let bytes = std::fs::read(path).map_err(|e| Error::Other(format!("reading {}: {e}", path.display())))?;
    let (mut at, mut count) = (0, 0);
    loop {
        match next_value(&bytes, at) {
            Ok(Some((_, end))) => (at, count) = (end, count + 1),
            Ok(None) => return Ok(Values { bytes, count }),
            Err(at) => {
                return Err(Error::Other(format!(
                    "{}: a record at byte {at} is cut short",
                    path.display()
                )));
            }
        }
    }
}

/// Where the engine writes, and how it cuts the records.
pub struct Engine {
    pub registry: Registry,
    pub storage: Storage,
    /// The topic whose registered schema the records were written with.
    pub topic: String,
    /// Records per micro-batch (the features job's real-time path).
    pub batch: usize,
    /// Records per Parquet object.
    pub roll: usize,
    /// What the objects' metadata names as the module.
    pub module: String,
}

/// What one engine run did.
#[derive(Debug, Default, Serialize)]
pub struct EngineReport {
    pub records: u64,
    /// Archive rows (backup) or feature events (features).
    pub rows: u64,
    pub objects: u64,
    pub redis_updates: u64,
}

impl Engine {
    /// The backup job's roll over `values`, `roll` records at a time: the
    /// filter, the archive rows of what it keeps, their objects.
    pub async fn backup(&self, values: &Values, filter: &mut impl RawFilter) -> Result<EngineReport> {
        let layout = backup::latest_layout(&self.registry, &value_subject(&self.topic), None).await?;
        let mut decoder = Decoder::new(&self.registry);
        decoder.prepare(values.iter().map(Some)).await?;
        let uncovered = backup::uncovered_writers(&decoder, values.iter().map(Some), &layout);
        let readers = decoder.readers();
        let rows = ArchiveRows {
            decoder: &decoder,
            readers: &readers,
            uncovered: &uncovered,
            layout: &layout,
        };
        let source = Source {
            topic: &self.topic,
            partitions: 1,
            module_sha256: &self.module,
        };
        let sink = ParquetSink::new(self.storage.clone(), &self.topic);
        let mut report = BackupReport::default();
        let mut engine = EngineReport::default();
        // Each roll's values are copied into one buffer, as the job packs
        // the records it consumes.
        let mut offset = 0i64;
        let mut values = values.iter().peekable();
        loop {
            let mut batch = RawBatch::with_capacity(0, self.roll, self.roll * values.peek().map_or(0, |v| v.len()));
            for value in values.by_ref().take(self.roll) {
                batch
                    .push(offset, None, None, Some(value), [])
                    .map_err(|e| Error::Other(e.to_string()))?;
                offset += 1;
            }
            if batch.is_empty() {
                break;
            }
            let outputs = backup::archive_partition(filter, &rows, &source, batch, &mut report)?;
            for object in outputs.objects {
                sink.write(
                    object.folder.as_deref(),
                    0,
                    object.first,
                    &object.batch,
                    object.metadata,
                )
                .await?;
                engine.objects += 1;
            }
        }
        engine.records = report.run.records;
        engine.rows = report.archived;
        Ok(engine)
    }

    /// The features job's real-time path over `values`, `batch` records at
    /// a time (decode, the logic over the keyed state, the latest counts to
    /// Redis), and its objects of feature events, one per `roll` records.
    pub async fn features(
        &self,
        values: &Values,
        logic: &mut impl FeatureLogic,
        redis: &RedisSink,
    ) -> Result<EngineReport> {
        let mut decoder = Decoder::new(&self.registry);
        let mut state = PartitionState::default();
        let mut placement = Placement::new(1);
        let sink = ParquetSink::new(self.storage.clone(), features::DATASET);
        let mut engine = EngineReport::default();
        let (mut open, mut open_first) = (Vec::new(), 0i64);
        let mut values = values.iter();
        let mut offset = 0i64;
        loop {
            let micro = next_records(&mut values, self.batch, &mut offset);
            let last = micro.is_empty();
            if !last {
                decoder.prepare(micro.iter().map(|r| r.value.as_deref())).await?;
                let readers = decoder.readers();
                let records: Vec<&Consumed> = micro.iter().collect();
                let decoding = Decoding {
                    decoder: &decoder,
                    readers: &readers,
                };
                let processed = features::process(
                    &records,
                    0,
                    &mut state,
                    logic,
                    decoding,
                    &mut placement,
                    OnMispartitioned::Fail,
                )?;
                if !processed.left_out.is_empty() {
                    return Err(Error::Other(format!(
                        "{} records left out, the first: {}",
                        processed.left_out.len(),
                        processed.left_out[0].1
                    )));
                }
                engine.records += micro.len() as u64;
                engine.redis_updates += redis.write_latest(&processed.events).await? as u64;
                open.extend(processed.events);
            }
            if !open.is_empty() && (last || offset - open_first >= self.roll as i64) {
                let batch = features::feature_batch(&open);
                let metadata = vec![module_metadata(&self.module)];
                sink.write(None, 0, open_first, &batch, metadata).await?;
                engine.rows += open.len() as u64;
                engine.objects += 1;
                open.clear();
                open_first = offset;
            }
            if last {
                return Ok(engine);
            }
        }
    }
}

/// The next `n` values as records of partition 0, from `*offset` on.
fn next_records<'a>(values: &mut impl Iterator<Item = &'a [u8]>, n: usize, offset: &mut i64) -> Vec<Consumed> {
    values
        .take(n)
        .map(|value| {
            *offset += 1;
            Consumed {
                key: None,
                value: Some(value.to_vec()),
                headers: Vec::new(),
                timestamp_millis: None,
                partition: 0,
                offset: *offset - 1,
            }
        })
        .collect()
}
