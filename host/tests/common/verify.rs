//! The checks every end-to-end test makes: the archive holds exactly the
//! records of the topic, Redis every user's true count, and the features
//! Parquet one event per record with the right last count.

use std::collections::{BTreeMap, HashSet};

use arrow_array::cast::AsArray;
use arrow_array::types::ArrowPrimitiveType;
use arrow_array::types::{Float32Type, Int32Type, Int64Type};
use arrow_array::{PrimitiveArray, RecordBatch};
use redis::AsyncCommands;

use super::*;

/// A transaction as a comparable tuple (the amount by its bits).
type Row = (i32, i64, u32, String, i32);

/// A topic record's transaction, decoded with the v1 schema.
pub fn decode_transaction(schema: &apache_avro::Schema, record: &Record) -> sluice::model::Transaction {
    let value = record.value.as_deref().expect("value");
    assert_eq!(value[0], 0, "Confluent magic byte");
    let decoded = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .expect("reader")
        .read_value(&mut &value[5..])
        .expect("avro");
    sluice::avro::transaction_from_value(&decoded).expect("transaction")
}

fn produced_rows(topic: &str) -> Vec<Row> {
    let schema = apache_avro::Schema::parse_str(sluice::model::TRANSACTION_SCHEMA).expect("schema");
    let mut rows: Vec<Row> = read_topic(topic)
        .iter()
        .map(|r| {
            let tx = decode_transaction(&schema, r);
            assert_eq!(
                r.key.as_deref(),
                Some(tx.user_id.to_string().as_bytes()),
                "keyed by user_id"
            );
            (
                tx.user_id,
                tx.transaction_timestamp_millis,
                tx.amount.to_bits(),
                tx.currency,
                tx.counterpart_id,
            )
        })
        .collect();
    rows.sort();
    rows
}

/// A primitive column of a batch, by name.
fn column<'a, T: ArrowPrimitiveType>(batch: &'a RecordBatch, name: &str) -> &'a PrimitiveArray<T> {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"))
        .as_primitive::<T>()
}

fn archive_rows(batches: &[(String, RecordBatch)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (_, b) in batches {
        let users = column::<Int32Type>(b, "user_id");
        let times = column::<Int64Type>(b, "transaction_timestamp_millis");
        let amounts = column::<Float32Type>(b, "amount");
        let currencies = b
            .column_by_name("currency")
            .expect("column currency")
            .as_string::<i32>();
        let counterparts = column::<Int32Type>(b, "counterpart_id");
        for i in 0..b.num_rows() {
            rows.push((
                users.value(i),
                times.value(i),
                amounts.value(i).to_bits(),
                currencies.value(i).to_string(),
                counterparts.value(i),
            ));
        }
    }
    rows.sort();
    rows
}

/// The archive's Hive folders: `<topic>/event_date=<D>/partition=<P>/`,
/// where `D` is the UTC date of every row's event time.
fn assert_dated_folders(topic: &str, objects: &[(String, RecordBatch)]) {
    for (path, batch) in objects {
        let below = path
            .split_once(&format!("{topic}/event_date="))
            .unwrap_or_else(|| panic!("{path}: no event-date folder below {topic}"))
            .1;
        let (date, rest) = below.split_once('/').expect("a folder below the date");
        assert!(
            rest.starts_with("partition="),
            "{path}: the partition folder below the date"
        );
        for &millis in column::<Int64Type>(batch, "transaction_timestamp_millis").values() {
            let day = chrono::DateTime::from_timestamp_millis(millis)
                .expect("time")
                .format("%Y-%m-%d");
            assert_eq!(day.to_string(), date, "{path}: a row of another day");
        }
    }
}

/// The (partition, offset) uniqueness check of the archive: objects are
/// named `<dataset>+<partition>+<first offset>.parquet` and hold consecutive
/// offsets (these tests dead-letter and drop nothing), so within a partition
/// no object's range may reach into the next one.
fn assert_disjoint_offset_ranges(objects: &[(String, RecordBatch)]) {
    let mut ranges: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for (path, batch) in objects {
        let name = path
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".parquet"))
            .expect("object name");
        let mut parts = name.rsplitn(3, '+');
        let first: i64 = parts
            .next()
            .and_then(|o| o.parse().ok())
            .expect("first offset in the name");
        let partition: i32 = parts
            .next()
            .and_then(|p| p.parse().ok())
            .expect("partition in the name");
        *ranges.entry((partition, first)).or_default() += batch.num_rows();
    }
    let ranges: Vec<_> = ranges.into_iter().collect();
    for pair in ranges.windows(2) {
        let (((p, first), rows), ((next_p, next_first), _)) = (pair[0], pair[1]);
        if p == next_p {
            assert!(
                first + rows as i64 <= next_first,
                "partition {p}: object at {first} ({rows} rows) overlaps the one at {next_first}"
            );
        }
    }
}

/// Checks every output of both jobs against the topic's `records` records;
/// returns the true count per user.
pub async fn verify_outputs(topic: &str, output_url: &str, records: u64) -> BTreeMap<i32, i64> {
    verify_outputs_with_redis(topic, output_url, records, &env("SLUICE_REDIS_URL")).await
}

/// As `verify_outputs`, with the features in the Redis at `redis_url`.
pub async fn verify_outputs_with_redis(
    topic: &str,
    output_url: &str,
    records: u64,
    redis_url: &str,
) -> BTreeMap<i32, i64> {
    let prefix = format!("sluice:test:{topic}");
    // The archive holds exactly the produced records, field for field.
    let truth = produced_rows(topic);
    assert_eq!(truth.len() as u64, records);
    let storage = storage_args(output_url).open().expect("storage");
    let archive = read_dataset(&storage, topic).await;
    assert_dated_folders(topic, &archive);
    assert_disjoint_offset_ranges(&archive);
    let archived = archive_rows(&archive);
    assert_eq!(archived.len(), truth.len(), "no record lost or duplicated");
    assert_eq!(archived, truth, "archive = produced records");

    // Redis holds every user's true count.
    let mut counts: BTreeMap<i32, i64> = BTreeMap::new();
    for row in &truth {
        *counts.entry(row.0).or_default() += 1;
    }
    let mut redis = redis::Client::open(redis_url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for (user, count) in &counts {
        let stored: Option<i64> = redis
            .hget(format!("{prefix}:user:{user}"), "total_transactions_count")
            .await
            .expect("hget");
        assert_eq!(stored, Some(*count), "redis count of user {user}");
    }
    let keys: Vec<String> = redis.keys(format!("{prefix}:user:*")).await.expect("keys");
    assert_eq!(keys.len(), counts.len(), "one key per user, no others");

    // The features Parquet agrees: one event per record, the last per user
    // equal to the true count, no (partition, offset) twice.
    let events = read_dataset(&storage, sluice::jobs::features::DATASET).await;
    assert_disjoint_offset_ranges(&events);
    let mut last: BTreeMap<i32, i32> = BTreeMap::new();
    let mut sources = HashSet::new();
    let mut total = 0;
    for (path, b) in &events {
        if !path.contains(&format!("{}/", sluice::jobs::features::DATASET)) {
            continue;
        }
        let users = column::<Int32Type>(b, "user_id");
        let totals = column::<Int32Type>(b, "total_transactions_count");
        let partitions = column::<Int32Type>(b, "source_partition");
        let offsets = column::<Int64Type>(b, "source_offset");
        for i in 0..b.num_rows() {
            total += 1;
            assert!(
                sources.insert((partitions.value(i), offsets.value(i))),
                "duplicate source record"
            );
            let entry = last.entry(users.value(i)).or_default();
            *entry = (*entry).max(totals.value(i));
        }
    }
    assert_eq!(total, records as usize);
    for (user, count) in &counts {
        assert_eq!(
            last.get(user).map(|c| i64::from(*c)),
            Some(*count),
            "features Parquet count of user {user}"
        );
    }
    // The analysts' duplicate query over the archive comes back empty.
    let mut natural_keys = HashSet::new();
    for row in &archived {
        assert!(
            natural_keys.insert((row.0, row.1)),
            "duplicate (user_id, transaction_timestamp_millis) {row:?}"
        );
    }
    counts
}

/// A features row: user, count, as-of time, source partition, source offset.
pub type FeatureRow = (i32, i32, i64, i32, i64);

/// Every row of the features dataset under `url`, sorted.
pub async fn feature_rows(url: &str) -> Vec<FeatureRow> {
    let storage = storage_args(url).open().expect("storage");
    let mut rows = Vec::new();
    for (_, b) in read_dataset(&storage, sluice::jobs::features::DATASET).await {
        let users = column::<Int32Type>(&b, "user_id");
        let totals = column::<Int32Type>(&b, "total_transactions_count");
        let times = column::<Int64Type>(&b, "as_of_timestamp_millis");
        let partitions = column::<Int32Type>(&b, "source_partition");
        let offsets = column::<Int64Type>(&b, "source_offset");
        for i in 0..b.num_rows() {
            rows.push((
                users.value(i),
                totals.value(i),
                times.value(i),
                partitions.value(i),
                offsets.value(i),
            ));
        }
    }
    rows.sort_unstable();
    rows
}

/// The features rows the topic's records call for, computed here without
/// sluice: each record's running count of its user in offset order. Records
/// that are not Confluent-framed are dead letters: no row.
pub fn expected_feature_rows(topic: &str) -> Vec<FeatureRow> {
    expected_feature_rows_without(topic, |_, _| false)
}

/// As `expected_feature_rows`, leaving out (and not counting) the records
/// `left_out` picks: those a guest rejected or failed on.
pub fn expected_feature_rows_without(
    topic: &str,
    left_out: impl Fn(&Record, &sluice::model::Transaction) -> bool,
) -> Vec<FeatureRow> {
    let schema = apache_avro::Schema::parse_str(sluice::model::TRANSACTION_SCHEMA).expect("schema");
    let mut records = read_topic(topic);
    records.retain(|r| r.value.as_deref().is_some_and(|v| v.len() > 5 && v[0] == 0));
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut counts: BTreeMap<i32, i32> = BTreeMap::new();
    let mut rows: Vec<FeatureRow> = records
        .iter()
        .filter_map(|r| {
            let tx = decode_transaction(&schema, r);
            if left_out(r, &tx) {
                return None;
            }
            let count = counts.entry(tx.user_id).or_default();
            *count += 1;
            Some((
                tx.user_id,
                *count,
                tx.transaction_timestamp_millis,
                r.partition,
                r.offset,
            ))
        })
        .collect();
    rows.sort_unstable();
    rows
}

/// Checks that Redis holds each user's last count among `rows`.
pub async fn assert_redis_holds_the_last_counts(topic: &str, rows: &[FeatureRow]) {
    let mut last: BTreeMap<i32, i32> = BTreeMap::new();
    for (user, count, ..) in rows {
        let entry = last.entry(*user).or_default();
        *entry = (*entry).max(*count);
    }
    let mut redis = redis().await;
    for (user, count) in last {
        let stored: Option<i32> = redis
            .hget(format!("sluice:test:{topic}:user:{user}"), "total_transactions_count")
            .await
            .expect("hget");
        assert_eq!(stored, Some(count), "user {user}");
    }
}

/// How many records of each user the archive at `url` holds: what the
/// features job must count, for a topic the tests cannot read directly.
pub async fn archived_counts(url: &str, topic: &str) -> BTreeMap<i32, i64> {
    let storage = storage_args(url).open().expect("storage");
    let mut counts = BTreeMap::new();
    for (_, batch) in read_dataset(&storage, topic).await {
        for user in column::<Int32Type>(&batch, "user_id").values() {
            *counts.entry(*user).or_default() += 1;
        }
    }
    counts
}
