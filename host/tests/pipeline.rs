//! End to end on the real services: the producer guest makes 20,000
//! transactions, both jobs run until caught up, and the archive, the
//! features Parquet and Redis are checked against what the topic holds.

mod common;

use common::verify::verify_outputs;
use common::*;

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
