//! Hot swap: a running features job takes new modules at batch boundaries,
//! from the admin endpoint, a change of its module file and SIGHUP, keeps
//! every count exact, and names where each module took over; modules that
//! cannot run are refused and the running one stays.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::verify::{
    assert_redis_holds_the_last_counts, decode_transaction, expected_feature_rows, expected_feature_rows_without,
    feature_rows,
};
use common::*;

/// Replaces `target` by a copy of `source` the way a deploy does: write a
/// temporary file beside it, then rename it over.
fn replace_file(source: &str, target: &std::path::Path) {
    let temporary = target.with_extension("tmp");
    std::fs::copy(source, &temporary).expect("copy");
    std::fs::rename(&temporary, target).expect("rename");
}

/// The swaps of a report or status, as (to sha256, took over per partition).
fn swaps(value: &serde_json::Value) -> Vec<(String, BTreeMap<i32, i64>)> {
    value["swaps"]
        .as_array()
        .expect("swaps")
        .iter()
        .map(|s| {
            let took_over = s["took_over"]
                .as_object()
                .map(|t| {
                    t.iter()
                        .map(|(p, o)| (p.parse().expect("partition"), o.as_i64().expect("offset")))
                        .collect()
                })
                .unwrap_or_default();
            (s["to_sha256"].as_str().expect("sha").to_string(), took_over)
        })
        .collect()
}

/// Checks that every features object names the module that was active at
/// its first offset, as the swaps' hand-over offsets say.
async fn assert_lineage(url: &str, first_sha: &str, swaps: &[(String, BTreeMap<i32, i64>)]) {
    let objects = feature_object_modules(url).await;
    assert!(!objects.is_empty());
    for (partition, first, sha) in objects {
        let mut expected = first_sha;
        for (to, took_over) in swaps {
            if took_over.get(&partition).is_some_and(|at| *at <= first) {
                expected = to;
            }
        }
        assert_eq!(sha, expected, "partition {partition} object at {first}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_swap_under_load_and_every_count_stays_exact() {
    let topic = unique("swap-load");
    setup_topic(&topic);
    let (_lake, url) = local_lake();
    let folder = tempfile::tempdir().expect("tempdir");
    let watched = folder.path().join("features.wasm");
    let (v1, rebuilt) = (module("features"), test_module("features_rebuilt.wasm"));
    std::fs::copy(&v1, &watched).expect("copy");
    // The admin endpoint loads from the watched module's folder only.
    let rebuilt_here = folder.path().join("features_rebuilt.wasm");
    std::fs::copy(&rebuilt, &rebuilt_here).expect("copy");
    let (sha_v1, sha_rebuilt) = (file_sha256(&v1), file_sha256(&rebuilt));
    assert_ne!(sha_v1, sha_rebuilt, "the rebuilt module must differ in bytes");

    // 20 s of load: every swap below takes over while records still arrive.
    let producer = spawn_producer(&topic, 60_000, 3_000);
    let (mut job, admin) =
        spawn_features_with_admin(&topic, &url, &watched.display().to_string(), &["--max-wait-ms", "300"]);

    // Four swaps from the admin endpoint, then two from file changes, each
    // waited for until the new module has processed records.
    let watched_path = watched.display().to_string();
    let rebuilt_path = rebuilt_here.display().to_string();
    for (i, (path, sha)) in [(&rebuilt_path, &sha_rebuilt), (&watched_path, &sha_v1)]
        .iter()
        .cycle()
        .take(4)
        .enumerate()
    {
        let (status, answer) = admin_swap(&admin, path).await;
        assert_eq!(status, 202, "swap {i}: {answer}");
        assert_eq!(answer["module"]["sha256"], **sha);
        wait_active(&admin, sha).await;
    }
    replace_file(&rebuilt, &watched);
    wait_active(&admin, &sha_rebuilt).await;
    replace_file(&v1, &watched);
    let status = wait_active(&admin, &sha_v1).await;
    assert_eq!(swaps(&status).len(), 6, "{status}");
    assert!(
        status["swaps"]
            .as_array()
            .expect("swaps")
            .iter()
            .all(|s| s["pause_ms"].as_f64().is_some())
    );

    let (produced, _) = producer.finish();
    assert!(produced.success());
    wait_group_caught_up(&topic, &format!("{topic}-features"), Duration::from_secs(120));
    let log = job.log();
    let (status, stdout) = job.terminate();
    assert!(status.success(), "{log}");
    let report = report(&stdout);
    let swaps = swaps(&report);
    assert_eq!(swaps.len(), 6, "{report}");
    let triggers: Vec<&str> = report["swaps"]
        .as_array()
        .expect("swaps")
        .iter()
        .map(|s| s["trigger"].as_str().expect("trigger"))
        .collect();
    assert_eq!(
        triggers,
        ["admin", "admin", "admin", "admin", "file change", "file change"]
    );
    assert!(log.contains("module takes over"), "{log}");

    // Exactly once across every swap: each record counted once, in order.
    let expected = expected_feature_rows(&topic);
    assert_eq!(expected.len(), 60_000);
    assert_eq!(feature_rows(&url).await, expected);
    assert_redis_holds_the_last_counts(&topic, &expected).await;
    assert_lineage(&url, &sha_v1, &swaps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v2_module_changes_behaviour_from_its_hand_over_offset_on() {
    let topic = unique("swap-v2");
    setup_topic(&topic);
    let (_lake, url) = local_lake();
    let folder = tempfile::tempdir().expect("tempdir");
    let watched = folder.path().join("features.wasm");
    let (v1, v2) = (module("features"), test_module("features_v2.wasm"));
    std::fs::copy(&v1, &watched).expect("copy");
    // Every fifth transaction has a zero amount: v1 counts it, v2 rejects it.
    let batch = |from: i64| -> Vec<_> {
        (from..from + 200)
            .map(|i| transaction(1 + (i % 7) as i32, i, if i % 5 == 0 { 0.0 } else { 12.5 }))
            .collect()
    };
    produce_transactions(&topic, &batch(0)).await;

    // --no-watch: the file changes below, but only SIGHUP swaps.
    let (mut job, admin) = spawn_features_with_admin(&topic, &url, &watched.display().to_string(), &["--no-watch"]);
    wait_group_caught_up(&topic, &format!("{topic}-features"), Duration::from_secs(60));

    replace_file(&v2, &watched);
    signal(job.child.id(), "HUP");
    let sha_v2 = file_sha256(&v2);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while admin_status(&admin).await["staged"]["sha256"] != sha_v2.as_str() {
        assert!(std::time::Instant::now() < deadline, "v2 never staged: {}", job.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    produce_transactions(&topic, &batch(200)).await;
    wait_active(&admin, &sha_v2).await;
    wait_group_caught_up(&topic, &format!("{topic}-features"), Duration::from_secs(60));
    let (status, stdout) = job.terminate();
    assert!(status.success());
    let report = report(&stdout);
    let swaps = swaps(&report);
    assert_eq!(swaps.len(), 1, "{report}");
    assert_eq!(report["swaps"][0]["trigger"], "SIGHUP");
    let took_over = swaps[0].1.clone();

    // v2 took over where the second batch begins on each partition: below
    // that, zero amounts were counted by v1; from it on, v2 rejected them.
    let records = read_topic(&topic);
    let schema = apache_avro::Schema::parse_str(sluice::model::TRANSACTION_SCHEMA).expect("schema");
    let mut first_of_second_batch: BTreeMap<i32, i64> = BTreeMap::new();
    for record in &records {
        if decode_transaction(&schema, record).transaction_timestamp_millis >= 1_700_000_000_200 {
            let first = first_of_second_batch.entry(record.partition).or_insert(record.offset);
            *first = (*first).min(record.offset);
        }
    }
    assert_eq!(took_over, first_of_second_batch);
    let rejected_by_v2 = |r: &Record, tx: &sluice::model::Transaction| {
        tx.amount == 0.0 && took_over.get(&r.partition).is_some_and(|at| r.offset >= *at)
    };
    let expected = expected_feature_rows_without(&topic, rejected_by_v2);
    assert_eq!(feature_rows(&url).await, expected);
    assert_redis_holds_the_last_counts(&topic, &expected).await;
    let counted_zeros = expected
        .iter()
        .filter(|(.., p, o)| {
            records
                .iter()
                .any(|r| r.partition == *p && r.offset == *o && decode_transaction(&schema, r).amount == 0.0)
        })
        .count();
    assert_eq!(counted_zeros, 40, "v1 counted the first batch's zero amounts");

    let letters: BTreeSet<(i32, i64)> = read_topic(&format!("{topic}-dlq"))
        .iter()
        .map(|l| {
            assert_eq!(l.headers["sluice.reason"], "rejected by guest: zero amount");
            (
                l.headers["sluice.source.partition"].parse().expect("partition"),
                l.headers["sluice.source.offset"].parse().expect("offset"),
            )
        })
        .collect();
    let expected_letters: BTreeSet<(i32, i64)> = records
        .iter()
        .filter(|r| rejected_by_v2(r, &decode_transaction(&schema, r)))
        .map(|r| (r.partition, r.offset))
        .collect();
    assert_eq!(expected_letters.len(), 40);
    assert_eq!(letters, expected_letters);
    assert_lineage(&url, &file_sha256(&v1), &swaps).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_that_cannot_run_are_refused_and_the_running_one_stays() {
    let topic = unique("swap-refused");
    setup_topic(&topic);
    let (_lake, url) = local_lake();
    let folder = tempfile::tempdir().expect("tempdir");
    let not_wasm = folder.path().join("not-wasm.wasm");
    std::fs::write(&not_wasm, b"this is not WebAssembly").expect("write");
    // The smallest valid core module: magic and version 1, no sections.
    let core_module = folder.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").expect("write");
    let v1 = module("features");
    let sha_v1 = file_sha256(&v1);
    // The candidates are in a modules directory of their own.
    let backup = folder.path().join("backup.wasm");
    std::fs::copy(module("backup"), &backup).expect("copy");
    let always_fails = folder.path().join("always_fails.wasm");
    std::fs::copy(test_module("always_fails.wasm"), &always_fails).expect("copy");
    let modules_dir = folder.path().display().to_string();

    let (mut job, admin) = spawn_features_with_admin(&topic, &url, &v1, &["--modules-dir", &modules_dir]);

    let candidates = [
        (not_wasm.display().to_string(), "not a binary WebAssembly component"),
        (core_module.display().to_string(), "is not a WebAssembly component"),
        (
            backup.display().to_string(),
            "does not implement world `features-columns`",
        ),
        (always_fails.display().to_string(), "refuses every batch"),
        ("missing.wasm".to_string(), "no such module"),
    ];
    for (path, reason) in &candidates {
        let (status, answer) = admin_swap(&admin, path).await;
        assert_eq!(status, 422, "{path}: {answer}");
        assert_eq!(answer["status"], "refused");
        assert!(
            answer["reason"].as_str().expect("reason").contains(reason),
            "{path}: {answer}"
        );
        let now = admin_status(&admin).await;
        assert_eq!(now["active"]["sha256"], sha_v1.as_str(), "{now}");
        assert!(now["staged"].is_null(), "{now}");
    }
    let status = admin_status(&admin).await;
    assert_eq!(status["refusals"].as_array().expect("refusals").len(), candidates.len());

    // The running module still counts.
    let transactions: Vec<_> = (0..100).map(|i| transaction(1 + (i % 5) as i32, i, 3.0)).collect();
    produce_transactions(&topic, &transactions).await;
    wait_group_caught_up(&topic, &format!("{topic}-features"), Duration::from_secs(60));
    let log = job.log();
    let (status, stdout) = job.terminate();
    assert!(status.success(), "{log}");
    for (_, reason) in &candidates {
        assert!(
            log.contains("module refused; the running module stays") && log.contains(reason),
            "{reason}: {log}"
        );
    }
    let report = report(&stdout);
    assert_eq!(report["swaps"].as_array().expect("swaps").len(), 0);
    assert_eq!(report["module_sha256"], sha_v1.as_str());
    assert_eq!(feature_rows(&url).await, expected_feature_rows(&topic));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_producer_swaps_its_generator_at_a_batch_boundary() {
    let topic = unique("swap-producer");
    setup_topic(&topic);
    let admin = free_loopback_addr();
    let (producer, xts) = (module("producer"), test_module("generator_xts.wasm"));
    let mut running = spawn_sluice(
        &[
            "--topic",
            &topic,
            "produce",
            "--module",
            &producer,
            "--count",
            "12000",
            "--rate",
            "1500",
            "--batch",
            "100",
            "--admin-listen",
            &admin,
        ],
        &[],
    );
    assert!(
        running.wait_for("admin endpoint listening", Duration::from_secs(60)),
        "{}",
        running.log()
    );
    let (status, answer) = admin_swap(&admin, &xts).await;
    assert_eq!(status, 202, "{answer}");
    let (exit, stdout) = running.finish();
    assert!(exit.success());
    let report = report(&stdout);
    assert_eq!(report["produced"], 12000, "{report}");
    assert_eq!(report["module_sha256"], file_sha256(&xts).as_str());
    // The producer's stream is partition 0 of `took_over`, its index the offset.
    let took_over = report["swaps"][0]["took_over"]["0"]
        .as_u64()
        .expect("took over at an index");
    assert!(
        took_over > 0 && took_over < 12000 && took_over.is_multiple_of(100),
        "{report}"
    );

    // Every record before the hand-over index came from the first module,
    // every one from it on from the second.
    let schema = apache_avro::Schema::parse_str(sluice::model::TRANSACTION_SCHEMA).expect("schema");
    let marked = read_topic(&topic)
        .iter()
        .filter(|r| decode_transaction(&schema, r).currency == "XTS")
        .count() as u64;
    assert_eq!(marked, 12000 - took_over);
}
