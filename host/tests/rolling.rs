//! Objects sized for scans: under a steady producer each partition's
//! Parquet object rolls by rows or by age, as configured, and not once per
//! micro-batch; every output stays exact.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::verify::verify_outputs;
use common::*;

/// Rows of each object per partition, in offset order, under `dataset`.
async fn rows_per_object(url: &str, dataset: &str) -> BTreeMap<i32, Vec<usize>> {
    let storage = storage_args(url).open().expect("storage");
    // An object reads as one record batch per 1,024 rows: sum them per path.
    let mut objects: BTreeMap<i32, BTreeMap<String, usize>> = BTreeMap::new();
    for (path, batch) in read_dataset(&storage, dataset).await {
        let partition = sluice::config::partition_in_path(&object_store::path::Path::from(path.as_str()))
            .expect("partition folder");
        *objects.entry(partition).or_default().entry(path).or_default() += batch.num_rows();
    }
    // Names are zero-padded first offsets: in path order, in offset order.
    objects
        .into_iter()
        .map(|(partition, objects)| (partition, objects.into_values().collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_roll_by_rows_or_by_age_under_a_steady_producer() {
    let topic = unique("rolling");
    setup_topic_with(&topic, 3);
    let (_lake, url) = local_lake();
    // 12 s at 1,500 records/s: about 500 a second per partition.
    let records = 18_000u64;
    let producer = spawn_producer(&topic, records, 1_500);
    // The archive rolls by rows (1,000, about every 2 s here; its last,
    // partial objects 5 s after their first record); the features by age
    // (3 s, about 1,500 rows).
    let mut jobs = Vec::new();
    for (job, roll) in [
        ("backup", ["--roll-rows", "1000", "--roll-interval-ms", "5000"]),
        ("features", ["--roll-rows", "1000000", "--roll-interval-ms", "3000"]),
    ] {
        let mut args = job_args(job, &topic, &format!("{topic}-{job}"), &url);
        args.extend(roll.iter().map(|s| s.to_string()));
        jobs.push(spawn_sluice(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
    }
    assert!(producer.child.wait_with_output().expect("producer").status.success());
    for job in ["backup", "features"] {
        wait_group_caught_up(&topic, &format!("{topic}-{job}"), Duration::from_secs(60));
    }
    for mut job in jobs {
        let log = job.log();
        let (status, stdout) = job.terminate();
        assert!(status.success(), "{stdout}\n{log}");
    }

    let archive = rows_per_object(&url, &topic).await;
    println!("archive rows per object: {archive:?}");
    for (partition, objects) in &archive {
        // The first object may roll by age while the producer ramps up, the
        // last at the end of the records; every other one by rows.
        assert!(objects.len() >= 4, "partition {partition}: {objects:?}");
        for rows in &objects[1..objects.len() - 1] {
            // At least the configured rows; past them by at most the
            // micro-batch that crossed them (a fetch's records).
            assert!((1_000..1_500).contains(rows), "partition {partition}: {objects:?}");
        }
    }
    let features = rows_per_object(&url, sluice::jobs::features::DATASET).await;
    println!("features rows per object: {features:?}");
    for (partition, objects) in &features {
        // 12 s of records in objects of 3 s: a handful, not one per micro-batch.
        assert!((2..=6).contains(&objects.len()), "partition {partition}: {objects:?}");
        for rows in &objects[1..objects.len() - 1] {
            // About 1,500 rows in 3 s at this rate.
            assert!(*rows >= 800, "partition {partition}: {objects:?}");
        }
    }
    verify_outputs(&topic, &url, records).await;
}
