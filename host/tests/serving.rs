//! Redis is a serving copy of the features job's keyed state: when it loses
//! keys the job republishes them from its state, `sluice republish` does the
//! same on demand, and a Redis that stops answering for a while stops
//! neither job.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::verify::{expected_feature_rows, verify_outputs_with_redis};
use common::*;
use redis::AsyncCommands;

/// Each user's last count among the rows the topic calls for.
fn last_counts(topic: &str) -> BTreeMap<i32, i32> {
    let mut last: BTreeMap<i32, i32> = BTreeMap::new();
    for (user, count, ..) in expected_feature_rows(topic) {
        let entry = last.entry(user).or_default();
        *entry = (*entry).max(count);
    }
    last
}

/// The users whose count in Redis differs from `expected` (missing included).
async fn wrong_users(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    expected: &BTreeMap<i32, i32>,
) -> Vec<i32> {
    let mut wrong = Vec::new();
    for (user, count) in expected {
        let stored: Option<i32> = redis
            .hget(format!("{prefix}:user:{user}"), "total_transactions_count")
            .await
            .expect("hget");
        if stored != Some(*count) {
            wrong.push(*user);
        }
    }
    wrong
}

/// Deletes every user key under `prefix`; returns how many there were.
async fn delete_user_keys(redis: &mut redis::aio::MultiplexedConnection, prefix: &str) -> usize {
    let keys: Vec<String> = redis.keys(format!("{prefix}:user:*")).await.expect("keys");
    if !keys.is_empty() {
        let _: () = redis.del(&keys).await.expect("del");
    }
    keys.len()
}

/// Every feature key is deleted while the producer runs (the partitions'
/// sentinels stay, as after an eviction): the job notices from its sampled
/// keys and republishes from its state, so once it has caught up Redis is
/// exact for every user within seconds, including users who did not
/// transact again after the deletion.
#[tokio::test(flavor = "multi_thread")]
async fn feature_keys_deleted_mid_run_are_republished_from_state() {
    let topic = unique("serving-heal");
    setup_topic_with(&topic, 3);
    let (_lake, url) = local_lake();
    let prefix = format!("sluice:test:{topic}");
    let group = format!("{topic}-features");
    let mut args = job_args("features", &topic, &group, &url);
    args.extend(["--redis-check-interval-ms".into(), "500".into()]);
    let mut job = spawn_sluice(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let producer = spawn_producer(&topic, 6_000, 1_500);
    let mut redis = redis().await;
    // Deleted once the job has written a good share of the users.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys: Vec<String> = redis.keys(format!("{prefix}:user:*")).await.expect("keys");
        if keys.len() >= 1_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the job wrote no features:\n{}", job.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deleted = delete_user_keys(&mut redis, &prefix).await;
    assert!(deleted >= 1_000);
    assert!(producer.child.wait_with_output().expect("producer").status.success());
    wait_group_caught_up(&topic, &group, Duration::from_secs(120));

    let expected = last_counts(&topic);
    let caught_up = Instant::now();
    loop {
        let wrong = wrong_users(&mut redis, &prefix, &expected).await;
        if wrong.is_empty() {
            break;
        }
        assert!(
            caught_up.elapsed() < Duration::from_secs(15),
            "{} of {} users still wrong in Redis 15 s after catching up, e.g. {:?}:\n{}",
            wrong.len(),
            expected.len(),
            &wrong[..wrong.len().min(5)],
            job.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "redis exact for all {} users {} ms after catching up",
        expected.len(),
        caught_up.elapsed().as_millis()
    );
    let log = job.log();
    assert!(
        log.contains("published the partition's features to redis") && log.contains("sampled users' keys are gone"),
        "{log}"
    );
    let (status, stdout) = job.terminate();
    assert!(status.success(), "{log}");
    assert!(
        report(&stdout)["republished"].as_u64().expect("republished") > 0,
        "{stdout}"
    );
}

/// `sluice republish` fills a flushed Redis from the features checkpoints,
/// with no job running and no Kafka read.
#[tokio::test(flavor = "multi_thread")]
async fn sluice_republish_restores_a_flushed_redis() {
    let server = RedisServer::start(false);
    let topic = unique("republish");
    setup_topic_with(&topic, 3);
    produce(&topic, 4_000, 0);
    let (_lake, url) = local_lake();
    run_job("features", &topic, &url, &["--redis-url", &server.url()]);
    let prefix = format!("sluice:test:{topic}");
    let expected = last_counts(&topic);
    let mut redis = server.connection().await;
    assert!(wrong_users(&mut redis, &prefix, &expected).await.is_empty());

    server.command(&["FLUSHALL"]);
    assert_eq!(wrong_users(&mut redis, &prefix, &expected).await.len(), expected.len());
    let republish = || {
        report(&sluice_ok(&[
            "--topic",
            &topic,
            "republish",
            "--group",
            &format!("{topic}-features"),
            "--output-url",
            &url,
            "--redis-url",
            &server.url(),
            "--redis-prefix",
            &prefix,
        ]))
    };
    let summary = republish();
    assert_eq!(summary["users"], expected.len() as u64, "{summary}");
    assert_eq!(summary["written"], expected.len() as u64, "{summary}");
    assert_eq!(summary["partitions"].as_object().expect("partitions").len(), 3);
    assert!(wrong_users(&mut redis, &prefix, &expected).await.is_empty());

    // A second run finds every value in place: fenced, it writes them again
    // at the same offsets and moves none.
    let again = republish();
    assert_eq!(again["users"], expected.len() as u64, "{again}");
    assert!(wrong_users(&mut redis, &prefix, &expected).await.is_empty());
}

/// Redis stops answering for 15 s (`CLIENT PAUSE`, as a failover or a long
/// snapshot fork does) while both jobs run under load: neither stops, the
/// features job says in the log what it waits for, the backup job does not
/// wait at all, and every output is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_paused_for_15s_stops_neither_job() {
    let server = RedisServer::start(false);
    let topic = unique("redis-pause");
    setup_topic_with(&topic, 3);
    let (_lake, url) = local_lake();
    let records = 40_000u64;
    let producer = spawn_producer(&topic, records, 1_500);
    let mut jobs = Vec::new();
    for job in ["backup", "features"] {
        let mut args = job_args(job, &topic, &format!("{topic}-{job}"), &url);
        args.extend(["--redis-url".into(), server.url()]);
        let mut running = spawn_sluice(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert!(
            running.wait_for("module takes over", Duration::from_secs(60)),
            "{job} never processed a batch:\n{}",
            running.log()
        );
        jobs.push(running);
    }
    server.command(&["CLIENT", "PAUSE", "15000", "ALL"]);
    assert!(producer.child.wait_with_output().expect("producer").status.success());
    for job in ["backup", "features"] {
        wait_group_caught_up(&topic, &format!("{topic}-{job}"), Duration::from_secs(180));
    }
    for (job, mut running) in ["backup", "features"].into_iter().zip(jobs) {
        let log = running.log();
        let waited = log.contains("waiting for redis to answer") && log.contains("redis answers again");
        // The backup job's claims live next to its archive (file://): it
        // has nothing to wait for.
        assert_eq!(waited, job == "features", "{job}:\n{log}");
        let (status, stdout) = running.terminate();
        assert!(status.success(), "the job stopped: {status} {stdout}\n{log}");
    }
    verify_outputs_with_redis(&topic, &url, records, &server.url()).await;
}

/// With claims next to the archive (a file:// lake creates an object only
/// once), the backup job needs no Redis at all: pointed at a port where
/// nothing listens, it archives every record and exits.
#[tokio::test(flavor = "multi_thread")]
async fn the_backup_job_needs_no_redis_when_claims_live_with_the_archive() {
    let topic = unique("backup-no-redis");
    setup_topic_with(&topic, 3);
    produce(&topic, 3_000, 0);
    let (_lake, url) = local_lake();
    let nowhere = format!("redis://{}", free_loopback_addr());
    let report = run_job(
        "backup",
        &topic,
        &url,
        &["--redis-url", &nowhere, "--claims-in", "storage"],
    );
    assert_eq!(report["archived"], 3_000, "{report}");
    assert_eq!(archived_rows(&url, &topic).await, 3_000);
}
