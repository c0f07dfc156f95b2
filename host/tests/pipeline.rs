//! End to end on the real services: the producer guest makes 20,000
//! transactions, both jobs run until caught up, and the archive, the
//! features Parquet and Redis are checked against what the topic holds.

mod common;

use common::verify::verify_outputs;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const RECORDS: u64 = 20_000;

/// Produces, runs both jobs to the end of the topic and checks every output.
async fn pipeline_round_trip(output_url: &str, topic: &str) {
    setup_topic(topic);
    produce(topic, RECORDS, 0);

    let backup = run_job("backup", topic, output_url, &[]);
    assert_eq!(backup["archived"], RECORDS, "backup report: {backup}");
    assert_eq!(backup["dead_lettered"], 0);
    let features = run_job("features", topic, output_url, &[]);
    assert_eq!(features["features"], RECORDS, "features report: {features}");

    verify_outputs(topic, output_url, RECORDS).await;

    // Every output names the module that produced it.
    let storage = storage_args(output_url).open().expect("storage");
    for (job, dataset, report) in [
        ("backup", topic, &backup),
        ("features", sluice::jobs::features::DATASET, &features),
    ] {
        let sha = file_sha256(&module(job));
        assert_eq!(report["module_sha256"], sha, "{job} report");
        let objects = read_objects(&storage, dataset).await;
        assert!(!objects.is_empty());
        for (location, bytes) in objects {
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
            let written_by = reader
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|e| e.key == "sluice.module_sha256"))
                .and_then(|e| e.value.clone());
            assert_eq!(written_by.as_deref(), Some(sha.as_str()), "{location}");
        }
    }
    let checkpoints = read_objects(&storage, "_checkpoints").await;
    assert!(!checkpoints.is_empty());
    for (location, bytes) in checkpoints {
        let stored: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(stored["module_sha256"], file_sha256(&module("features")), "{location}");
    }
    check_status(topic, output_url, &backup, &features);
}

/// `sluice status` sees what the jobs did: every partition committed to its
/// end by both groups, the objects, checkpoints and modules, one Redis key
/// per user; its text names the same, and neither output shows a password.
fn check_status(topic: &str, output_url: &str, backup: &serde_json::Value, features: &serde_json::Value) {
    let prefix = format!("sluice:test:{topic}");
    let (backup_group, features_group) = (format!("{topic}-backup"), format!("{topic}-features"));
    let args = [
        "--topic",
        topic,
        "status",
        "--backup-group",
        &backup_group,
        "--features-group",
        &features_group,
        "--output-url",
        output_url,
        "--redis-prefix",
        &prefix,
    ];
    let text = sluice_ok(&args);
    let json = sluice_ok(&[&args[..], &["--json"]].concat());
    let status: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    let partitions = status["partitions"].as_array().expect("partitions");
    let high: i64 = partitions.iter().map(|p| p["high"].as_i64().expect("high")).sum();
    assert_eq!(high as u64, RECORDS, "{status}");
    for group in status["groups"].as_array().expect("groups") {
        assert_eq!(group["total_lag"], 0, "{group}");
        for (partition, ends) in group["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .zip(partitions)
        {
            assert_eq!(partition["committed"], ends["high"], "{group}");
        }
    }
    assert_eq!(status["archive"]["objects"], backup["files"], "{status}");
    assert_eq!(status["features"]["objects"], features["files"], "{status}");
    for (dataset, job) in [("archive", "backup"), ("features", "features")] {
        assert_eq!(
            status[dataset]["modules"],
            serde_json::json!([file_sha256(&module(job))]),
            "{status}"
        );
        assert_eq!(
            status[dataset]["newest"].as_object().expect("newest").len(),
            partitions.len(),
            "{status}"
        );
    }
    assert_eq!(
        status["checkpoints"].as_object().expect("checkpoints").len(),
        partitions.len(),
        "{status}"
    );
    let users = common::verify::expected_feature_rows(topic)
        .iter()
        .map(|row| row.0)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(status["redis"]["feature_keys"], users as u64, "{status}");
    assert!(
        text.contains(&format!("topic {topic}")) && text.contains("lag 0"),
        "{text}"
    );
    for var in [
        "SLUICE_ADMIN_PASSWORD",
        "SLUICE_BACKUP_JOB_PASSWORD",
        "SLUICE_FEATURES_JOB_PASSWORD",
    ] {
        let password = env(var);
        assert!(!text.contains(&password) && !json.contains(&password), "{var} printed");
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

/// `--rate` paces in small groups: at 1,500 records/s no 100 ms of the
/// producer's clock holds more than twice its share, where a guest call's
/// 1,000 records sent at once would put them all in one.
#[test]
fn the_producer_paces_its_rate_in_small_groups() {
    let topic = unique("paced");
    setup_topic_with(&topic, 2);
    produce_with(&topic, 3_000, 0, &["--rate", "1500"]);
    let mut sent: Vec<i64> = read_topic(&topic)
        .iter()
        .map(|r| r.timestamp_millis.expect("a producer timestamp"))
        .collect();
    assert_eq!(sent.len(), 3_000);
    sent.sort_unstable();
    let busiest = (0..sent.len())
        .map(|i| sent[i..].partition_point(|t| *t < sent[i] + 100))
        .max()
        .unwrap_or(0);
    assert!(busiest <= 300, "{busiest} records in 100 ms at 1,500/s");
    let span = sent[sent.len() - 1] - sent[0];
    assert!(span >= 1_800, "3,000 records at 1,500/s went out in {span} ms");
}

/// An object from `MULTIPART_FROM` on goes up to Garage in parts and reads
/// back byte for byte, with no staged upload left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_object_goes_up_to_garage_in_parts() {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use sluice::sinks::parquet::{MULTIPART_FROM, put};

    let prefix = unique("multipart");
    let storage = storage_args(&format!("s3://{}/{prefix}", env("SLUICE_S3_BUCKET")))
        .open()
        .expect("storage");
    let path = storage.path("one.parquet");
    let len = 2 * MULTIPART_FROM + 999;
    let bytes: Vec<u8> = (0..len).map(|i| (i / 7 % 251) as u8).collect();
    put(storage.store.as_ref(), &path, bytes.clone()).await.expect("put");
    let back = storage
        .store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(back.len(), len);
    assert!(back == bytes, "the object came back different");
    let listed: Vec<_> = storage
        .store
        .list(Some(&storage.root))
        .try_collect()
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// Garage ignores `If-None-Match: *` and overwrites, so claims cannot live
/// there: `--claims-in storage` is refused at start with the reason, and
/// `auto` keeps them in Redis (docs/delivery.md, "Delivery guarantees").
#[tokio::test(flavor = "multi_thread")]
async fn claims_stay_out_of_a_store_that_overwrites_a_create_only_put() {
    let topic = unique("claims-garage");
    setup_topic_with(&topic, 2);
    produce(&topic, 500, 0);
    let url = format!("s3://{}/{topic}", env("SLUICE_S3_BUCKET"));
    let refused = run_job_output("backup", &topic, &url, &["--claims-in", "storage"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not refuse a second create of the same object"),
        "{stderr}"
    );
    let auto = run_job_output("backup", &topic, &url, &[]);
    let stderr = String::from_utf8_lossy(&auto.stderr);
    assert!(auto.status.success(), "{stderr}");
    assert!(stderr.contains("claims live in Redis"), "{stderr}");
    assert_eq!(archived_rows(&url, &topic).await, 500);
}

/// `--date-folders-by none` puts the archive's partition folders straight
/// below the topic; a field that cannot date the folders is refused at
/// start, by name.
#[tokio::test(flavor = "multi_thread")]
async fn the_archive_without_date_folders_or_with_a_field_that_cannot_date_them() {
    let topic = unique("no-date-folders");
    setup_topic_with(&topic, 2);
    produce(&topic, 1_000, 0);
    let (lake, url) = local_lake();
    let report = run_job("backup", &topic, &url, &["--date-folders-by", "none"]);
    assert_eq!(report["archived"], 1_000, "{report}");
    let folders: std::collections::BTreeSet<String> = std::fs::read_dir(lake.path().join(&topic))
        .expect("archive")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected: std::collections::BTreeSet<String> = ["partition=0", "partition=1"].map(String::from).into();
    assert_eq!(folders, expected);
    assert_eq!(archived_rows(&url, &topic).await, 1_000);

    let (_other, other_url) = local_lake();
    let refused = run_job_output("backup", &topic, &other_url, &["--date-folders-by", "amount"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("field amount is"), "{stderr}");
}
