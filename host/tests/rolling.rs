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

/// State whose checkpoints cost what changed: after the first whole
/// checkpoint, rolls that change few users write deltas; a restart loads
/// the state back from a delta and its base, and every count stays exact.
#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_after_the_first_are_deltas_and_a_restart_restores_them() {
    let topic = unique("delta-checkpoints");
    setup_topic_with(&topic, 2);
    let (lake, url) = local_lake();
    // About 7,000 distinct users, in rolls of 500 records (micro-batches of
    // 500, so that each roll is one): each touches a few hundred of them.
    let small_rolls = ["--roll-rows", "500", "--batch-size", "500"];
    produce(&topic, 20_000, 0);
    let report = run_job("features", &topic, &url, &small_rolls);
    let checkpoints = &report["checkpoints"];
    let written = checkpoints["written"].as_u64().expect("written");
    let whole = checkpoints["whole"].as_u64().expect("whole");
    let delta_bytes =
        checkpoints["bytes"].as_u64().expect("bytes") - checkpoints["whole_bytes"].as_u64().expect("whole");
    assert!(whole >= 2, "a partition's first checkpoint is whole: {report}");
    assert!(written >= 3 * whole, "mostly deltas: {report}");
    let mean_delta = delta_bytes / (written - whole);
    // What stays after the clean-up: per partition, the newest checkpoint
    // and the chain it is built on: one whole state, then deltas.
    let folder = lake.path().join(format!("_checkpoints/{topic}-features/{topic}"));
    for partition in 0..2 {
        let folder = folder.join(format!("partition={partition}"));
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .expect("checkpoints")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let (whole, deltas): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| !n.contains(".delta-"));
        // The last roll may have written the state whole; the chain before
        // it goes at the next roll's clean-up.
        let last_whole = whole.len() == 2 && names.last() == Some(whole[1]);
        assert!(
            whole.len() == 1 || last_whole,
            "partition {partition}: one chain, and at most a newer whole state: {names:?}"
        );
        assert!(
            names[0] == *whole[0] && !deltas.is_empty(),
            "partition {partition}: the whole state first, then its deltas: {names:?}"
        );
        let whole_size = std::fs::metadata(folder.join(whole[0])).expect("whole").len();
        assert!(
            mean_delta * 2 < whole_size,
            "partition {partition}: a delta ({mean_delta} bytes on average) costs far less than the whole state \
             ({whole_size} bytes)"
        );
        println!(
            "partition {partition}: whole {whole_size} bytes, {} deltas after it",
            deltas.len()
        );
    }

    produce(&topic, 2_000, 20_000);
    let restarted = run_job("features", &topic, &url, &small_rolls);
    assert!(
        restarted["restored_users"].as_u64().expect("restored") > 1_000,
        "{restarted}"
    );
    run_job("backup", &topic, &url, &[]);
    verify_outputs(&topic, &url, 22_000).await;
}
