//! End to end on the real services: the producer guest makes 20,000
//! transactions, both jobs run until caught up, and the archive, the
//! features Parquet and Redis are checked against what the topic holds.

mod common;

use std::collections::{BTreeMap, HashSet};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, Int64Type};
use common::*;
use redis::AsyncCommands;

const RECORDS: u64 = 20_000;

/// A transaction as a comparable tuple (the amount by its bits).
type Row = (i32, i64, u32, String, i32);

fn produced_rows(topic: &str) -> Vec<Row> {
    let schema = apache_avro::Schema::parse_str(sluice::model::TRANSACTION_SCHEMA).expect("schema");
    let mut rows: Vec<Row> = read_topic(topic)
        .iter()
        .map(|r| {
            let value = r.value.as_deref().expect("value");
            assert_eq!(value[0], 0, "Confluent magic byte");
            let decoded = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
                .build()
                .expect("reader")
                .read_value(&mut &value[5..])
                .expect("avro");
            let tx = sluice::avro::transaction_from_value(&decoded).expect("transaction");
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

fn archive_rows(batches: &[(String, RecordBatch)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (_, b) in batches {
        let col = |name: &str| b.column_by_name(name).unwrap_or_else(|| panic!("column {name}"));
        let users = col("user_id").as_primitive::<Int32Type>();
        let times = col("transaction_timestamp_millis").as_primitive::<Int64Type>();
        let amounts = col("amount").as_primitive::<Float32Type>();
        let currencies = col("currency").as_string::<i32>();
        let counterparts = col("counterpart_id").as_primitive::<Int32Type>();
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

/// Produces, runs both jobs to the end of the topic and checks every output.
async fn pipeline_round_trip(output_url: &str, topic: &str) {
    let dlq = format!("{topic}-dlq");
    let prefix = format!("sluice:test:{topic}");
    let base = ["--topic", topic, "--dlq-topic", &dlq];
    sluice_ok(
        &[
            &base[..],
            &[
                "setup",
                "--partitions",
                "3",
                "--backup-group",
                &format!("{topic}-backup"),
            ],
        ]
        .concat(),
    );
    let produced = report(&sluice_ok(
        &[
            &base[..],
            &[
                "produce",
                "--module",
                &module("producer"),
                "--count",
                &RECORDS.to_string(),
            ],
        ]
        .concat(),
    ));
    assert_eq!(produced["produced"], RECORDS);

    let backup = report(&sluice_ok(
        &[
            &base[..],
            &[
                "run",
                "--job",
                "backup",
                "--module",
                &module("backup"),
                "--group",
                &format!("{topic}-backup"),
            ],
            &["--until-caught-up", "--output-url", output_url],
        ]
        .concat(),
    ));
    assert_eq!(backup["archived"], RECORDS, "backup report: {backup}");
    assert_eq!(backup["dead_lettered"], 0);
    let features = report(&sluice_ok(
        &[
            &base[..],
            &[
                "run",
                "--job",
                "features",
                "--module",
                &module("features"),
                "--group",
                &format!("{topic}-features"),
            ],
            &[
                "--until-caught-up",
                "--output-url",
                output_url,
                "--redis-prefix",
                &prefix,
            ],
        ]
        .concat(),
    ));
    assert_eq!(features["features"], RECORDS, "features report: {features}");

    // The archive holds exactly the produced records, field for field.
    let truth = produced_rows(topic);
    assert_eq!(truth.len() as u64, RECORDS);
    let storage = storage_args(output_url).open().expect("storage");
    let archive = read_dataset(&storage, topic).await;
    assert!(
        archive
            .iter()
            .all(|(path, _)| path.contains(&format!("{topic}/partition="))),
        "Hive-style folders"
    );
    let archived = archive_rows(&archive);
    assert_eq!(archived.len(), truth.len(), "no record lost or duplicated");
    assert_eq!(archived, truth, "archive = produced records");

    // Redis holds every user's true count.
    let mut counts: BTreeMap<i32, i64> = BTreeMap::new();
    for row in &truth {
        *counts.entry(row.0).or_default() += 1;
    }
    let mut redis = redis().await;
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
    let mut last: BTreeMap<i32, i32> = BTreeMap::new();
    let mut sources = HashSet::new();
    let mut total = 0;
    for (path, b) in &events {
        if !path.contains(&format!("{}/", sluice::jobs::features::DATASET)) {
            continue;
        }
        let users = b
            .column_by_name("user_id")
            .expect("user_id")
            .as_primitive::<Int32Type>();
        let totals = b
            .column_by_name("total_transactions_count")
            .expect("count")
            .as_primitive::<Int32Type>();
        let partitions = b
            .column_by_name("source_partition")
            .expect("partition")
            .as_primitive::<Int32Type>();
        let offsets = b
            .column_by_name("source_offset")
            .expect("offset")
            .as_primitive::<Int64Type>();
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
    assert_eq!(total, RECORDS as usize);
    for (user, count) in &counts {
        assert_eq!(
            last.get(user).map(|c| i64::from(*c)),
            Some(*count),
            "features Parquet count of user {user}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_end_to_end_on_local_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = unique("e2e-file");
    pipeline_round_trip(&format!("file://{}", dir.path().display()), &topic).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_end_to_end_on_s3_garage() {
    let topic = unique("e2e-s3");
    let bucket = env("SLUICE_S3_BUCKET");
    pipeline_round_trip(&format!("s3://{bucket}/{topic}"), &topic).await;
}
