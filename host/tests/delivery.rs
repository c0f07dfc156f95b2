//! Exactly-once against what production brings beyond crashes: members that
//! stall past their session and wake up mid-batch (zombies), producers that
//! partition users differently, members that die while another catches up,
//! state that does not match the committed offsets, and batches full of
//! dead letters.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use common::redis_server::RedisServer;
use common::verify::{verify_outputs, verify_outputs_with_redis};
use common::*;
use redis::AsyncCommands;
use sluice::kafka::partitioner::partition_of;

/// A crash or stall point must be reached within this long. On nisshi
/// under the suite's load, fetches from PostgreSQL miss their deadlines and
/// a woken zombie can lose its session again at each rejoin (three times in
/// a row in one run, each rejoin taking up to 30 s) before it processes
/// a record.
const REACH: Duration = Duration::from_secs(180);
/// `job_args` gives members a 6 s session; a stall lasts longer than that.
const STALL: Duration = Duration::from_secs(9);

#[tokio::test(flavor = "multi_thread")]
async fn zombies_that_wake_up_mid_batch_cannot_corrupt_outputs() {
    zombie_scenario("zombies", None).await;
}

/// The zombie scenario again, with claims in Redis (`--claims-in redis`;
/// the file:// lake would hold them otherwise) on a Redis of its own
/// (append-only, an fsync per write, as claims there need), SIGKILLed and
/// restarted while each zombie is stalled for the second time: the claims
/// survive the restart, the jobs reconnect, and every output stays exact.
#[tokio::test(flavor = "multi_thread")]
async fn zombies_cannot_corrupt_outputs_across_a_redis_restart() {
    let server = Arc::new(Mutex::new(RedisServer::start(true)));
    zombie_scenario("zombies-redis-restart", Some(server)).await;
}

/// Two members per job; one of each stalls three times, each time past its
/// session, right after claiming a batch or while writing it. With `redis`,
/// the jobs use that server, which is restarted during each second stall.
async fn zombie_scenario(name: &str, redis: Option<Arc<Mutex<RedisServer>>>) {
    let topic = unique(name);
    setup_topic_with(&topic, 4);
    let (_lake, url) = local_lake();
    // Records flow until every zombie has stalled three times: each stall
    // needs records that arrive after the zombie's last wake-up and rejoin,
    // and on a loaded machine one join took 43 s, so no fixed amount of
    // records is long enough (100 s of them once ran out). The producer
    // stops once the stalls are over; its count (three stalls' `REACH`)
    // bounds the test.
    let producer = spawn_producer(&topic, 3 * REACH.as_secs() * 900, 900);
    let redis_url = match &redis {
        Some(server) => server.lock().expect("server").url(),
        None => env("SLUICE_REDIS_URL"),
    };

    let mut members = Vec::new();
    let mut stallers = Vec::new();
    let mut restarts = Vec::new();
    for job in ["backup", "features"] {
        let group = format!("{topic}-{job}");
        let mut args = job_args(job, &topic, &group, &url);
        args.extend(["--redis-url".to_string(), redis_url.clone()]);
        if redis.is_some() {
            // What the restart puts to the test: claims in Redis.
            args.extend(["--claims-in".to_string(), "redis".to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        members.push((format!("{job} member"), spawn_sluice(&args, &[])));
        let mut zombie = spawn_sluice(
            &args,
            &[("SLUICE_STALL_AT", "after-guest:2,after-upload:5,after-guest:9")],
        );
        let redis = redis.clone();
        let (restarted, restart_seen) = std::sync::mpsc::channel();
        restarts.push(restart_seen);
        stallers.push(std::thread::spawn(move || {
            for stall in 1..=3 {
                assert!(
                    zombie.wait_for("stall point", REACH),
                    "stall {stall} never reached:\n{}",
                    zombie.log()
                );
                let pid = zombie.child.id();
                signal(pid, "STOP");
                // The stall itself (a GC pause, a frozen VM), past the session.
                let stalled_at = std::time::Instant::now();
                if let (2, Some(server)) = (stall, &redis) {
                    server.lock().expect("server").restart();
                    let _ = restarted.send(());
                }
                std::thread::sleep(STALL.saturating_sub(stalled_at.elapsed()));
                signal(pid, "CONT");
            }
            (format!("{job} zombie"), zombie)
        }));
    }
    let zombies: Vec<(String, Running)> = stallers.into_iter().map(|s| s.join().expect("staller")).collect();
    if redis.is_some() {
        for seen in restarts {
            seen.recv().expect("redis restarted during a stall");
        }
    }
    let (status, stdout) = producer.terminate();
    assert!(status.success(), "the producer stops cleanly on SIGTERM: {status}");
    let records = report(&stdout)["produced"].as_u64().expect("records produced");
    let mut members: Vec<(String, Running)> = members.into_iter().chain(zombies).collect();
    for job in ["backup", "features"] {
        let group = format!("{topic}-{job}");
        if let Err(behind) = group_caught_up_within(&topic, &group, Duration::from_secs(180)) {
            let logs = members.iter_mut().map(|(role, member)| (role.clone(), member.log()));
            panic!("group {group} still behind: {behind:?}\n{}", labelled_logs(logs));
        }
    }
    let (mut fenced, mut adopted) = (0, 0);
    let mut stops = Vec::new();
    for (role, mut member) in members {
        let log = member.log();
        fenced += log.matches("lost its partitions").count();
        adopted += log.matches("adopting the range an earlier claim fixed").count();
        let (status, stdout) = member.terminate();
        stops.push((format!("{role}, {status}, stdout {stdout:?}"), log, status.success()));
    }
    // Every member's log, not only the failing one's: what one member finds
    // (a commit without its checkpoint, say) another member may have caused.
    if stops.iter().any(|(.., clean)| !clean) {
        let logs = stops.into_iter().map(|(stop, log, _)| (stop, log));
        panic!("a member did not stop cleanly:\n{}", labelled_logs(logs));
    }
    println!("zombies: {fenced} losses of partitions seen, {adopted} ranges adopted from earlier claims");
    assert!(
        fenced > 0,
        "no zombie ever lost its partitions: the scenario did not happen"
    );
    verify_outputs_with_redis(&topic, &url, records, &redis_url).await;
}

/// Members' logs, each under its label, for a failure message.
fn labelled_logs(logs: impl Iterator<Item = (String, String)>) -> String {
    logs.map(|(label, log)| format!("{label}:\n{log}"))
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

/// Half of each user's records come from a producer with librdkafka's
/// default partitioner (CRC32), half from one with murmur2 (Java's default
/// and sluice's). By default the features job refuses, naming the user and
/// both partitions; with `--on-mispartitioned=dead-letter` the misplaced
/// records go to the dead-letter topic and every count is exact over the
/// rest.
#[tokio::test(flavor = "multi_thread")]
async fn mispartitioned_records_are_refused_or_dead_lettered_never_miscounted() {
    let topic = unique("mixed-partitioners");
    setup_topic_with(&topic, 4);
    let id = registered_id(&topic).await;
    let (mut java, mut crc) = (Vec::new(), Vec::new());
    for i in 0..4000i64 {
        let user = (i % 200) as i32;
        let value = transaction_value(
            id,
            &sluice::model::Transaction {
                user_id: user,
                transaction_timestamp_millis: 1_700_000_000_000 + i,
                amount: 1.0,
                currency: "EUR".into(),
                counterpart_id: 7,
            },
        );
        let half = if i % 2 == 0 { &mut java } else { &mut crc };
        half.push((user.to_string(), value));
    }
    produce_raw_with(&topic, &java, "murmur2_random").await;
    produce_raw_with(&topic, &crc, "consistent_random").await;

    let (_lake, url) = local_lake();
    let prefix = format!("sluice:test:{topic}");
    let refused = run_job_output("features", &topic, &url, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "must refuse: {stderr}");
    assert!(
        stderr.contains("user ") && stderr.contains("is on partition") && stderr.contains("puts it on partition"),
        "the refusal names the user and both partitions: {stderr}"
    );

    // The same group, now sending misplaced records to the dead letters.
    let report = run_job("features", &topic, &url, &["--on-mispartitioned", "dead-letter"]);
    let topic_records = read_topic(&topic);
    let mut expected: BTreeMap<i32, i64> = BTreeMap::new();
    let mut misplaced = 0;
    for record in &topic_records {
        let key = record.key.as_deref().expect("key");
        if partition_of(key, 4) == record.partition {
            let user: i32 = std::str::from_utf8(key).expect("utf8").parse().expect("user id");
            *expected.entry(user).or_default() += 1;
        } else {
            misplaced += 1;
        }
    }
    assert!(misplaced > 0, "the CRC32 half must misplace some users");
    assert!(
        report["mispartitioned"].as_u64().expect("count") >= misplaced,
        "{report}"
    );
    let letters = read_topic(&format!("{topic}-dlq"));
    let reasons: Vec<&String> = letters
        .iter()
        .filter_map(|l| l.headers.get("sluice.reason"))
        .filter(|r| r.contains("murmur2"))
        .collect();
    assert_eq!(
        reasons.len() as u64,
        misplaced,
        "each misplaced record dead-lettered once"
    );
    let mut redis = redis().await;
    for (user, count) in &expected {
        let stored: Option<i64> = redis
            .hget(format!("{prefix}:user:{user}"), "total_transactions_count")
            .await
            .expect("hget");
        assert_eq!(
            stored,
            Some(*count),
            "count of user {user} over its well-placed records"
        );
    }
}

/// A member holding partitions dies; a `--until-caught-up` run started
/// within the dead member's session must not stop after its own half: it
/// waits until the group has read every partition.
#[tokio::test(flavor = "multi_thread")]
async fn until_caught_up_waits_for_the_partitions_of_dead_members() {
    let topic = unique("caught-up");
    setup_topic_with(&topic, 4);
    produce(&topic, 4000, 0);
    let (_lake, url) = local_lake();
    let group = format!("{topic}-backup");
    let args = job_args("backup", &topic, &group, &url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut doomed = spawn_sluice(&args, &[("SLUICE_CRASH_AT", "after-upload:1")]);
    assert!(doomed.wait_for("crash point", REACH), "{}", doomed.log());
    doomed.kill();

    let report = run_job("backup", &topic, &url, &["--session-timeout-ms", "6000"]);
    let lag = group_lag(&topic, &group);
    assert!(
        lag.is_empty(),
        "the run exited with partitions unread: {lag:?} ({report})"
    );
    let rows = archived_rows(&url, &topic).await;
    assert_eq!(rows, 4000, "every record archived once");
}

/// The features state must match the group's offsets exactly: a missing
/// checkpoint, or one behind the committed offset, stops the job with the
/// partition, both offsets and the recovery command; `sluice rebuild-state`
/// recovers, and every count is exact afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_stale_checkpoint_is_refused_and_rebuild_state_recovers() {
    let topic = unique("checkpoints");
    setup_topic(&topic);
    let (dir, url) = local_lake();
    let group = format!("{topic}-features");
    produce(&topic, 2000, 0);
    run_job("features", &topic, &url, &[]);
    produce(&topic, 2000, 2000);
    let folder = |p: i32| dir.path().join(format!("_checkpoints/{group}/{topic}/partition={p}"));
    let checkpoint_files = |p: i32| -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(folder(p))
            .map(|d| d.map(|e| e.expect("entry").path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    };

    // Missing: partition 0's checkpoints are gone.
    std::fs::remove_dir_all(folder(0)).expect("remove");
    let run = || run_job_output("features", &topic, &url, &[]);
    let output = run();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("partition 0")
            && stderr.contains("no checkpoint at or below it")
            && stderr.contains("sluice rebuild-state"),
        "{stderr}"
    );
    let rebuild = |p: &str| {
        sluice_ok(&[
            "--topic",
            &topic,
            "rebuild-state",
            "--partition",
            p,
            "--group",
            &group,
            "--output-url",
            &url,
        ])
    };
    rebuild("0");

    // Behind: partition 1's only checkpoint now claims an older offset.
    let newest = checkpoint_files(1).pop().expect("a checkpoint of partition 1");
    std::fs::rename(&newest, folder(1).join(format!("{:020}.json", 1))).expect("rename");
    let output = run();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("partition 1") && stderr.contains("is at offset 1, behind it"),
        "{stderr}"
    );
    rebuild("1");

    let output = run();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    run_job("backup", &topic, &url, &[]);
    verify_outputs(&topic, &url, 4000).await;
}

/// Dead letters are produced in bulk and flushed once per batch: 10,000
/// malformed records among good ones all reach the dead-letter topic and the
/// good ones the archive. (`make bench` compares the time with a clean run.)
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_malformed_records_are_dead_lettered_in_bulk() {
    let topic = unique("bulk-dlq");
    setup_topic(&topic);
    let id = registered_id(&topic).await;
    let mut records = Vec::new();
    for i in 0..12_000i64 {
        let user = (i % 100) as i32;
        let value = if i % 6 == 0 {
            transaction_value(
                id,
                &sluice::model::Transaction {
                    user_id: user,
                    transaction_timestamp_millis: 1_700_000_000_000 + i,
                    amount: 3.5,
                    currency: "EUR".into(),
                    counterpart_id: 1,
                },
            )
        } else {
            framed(id, vec![0xff]) // a truncated Avro body
        };
        records.push((user.to_string(), value));
    }
    produce_raw(&topic, &records).await;
    let (_lake, url) = local_lake();
    let report = run_job("backup", &topic, &url, &[]);
    assert_eq!(report["archived"], 2000, "{report}");
    assert_eq!(report["dead_lettered"], 10_000, "{report}");
    let letters = read_topic(&format!("{topic}-dlq"));
    assert_eq!(letters.len(), 10_000);
}

/// Retention deletes records a stopped group never read: the job fails by
/// default, naming the partition and how many records are gone; with
/// `--on-data-loss=continue` it skips exactly those and reports how many.
#[tokio::test(flavor = "multi_thread")]
async fn records_deleted_before_the_group_read_them_are_refused_or_counted() {
    let topic = unique("data-loss");
    setup_topic(&topic);
    let (_lake, url) = local_lake();
    let group = format!("{topic}-backup");
    produce(&topic, 1000, 0);
    run_job("backup", &topic, &url, &[]);
    produce(&topic, 1000, 1000);

    // Retention passes the group's offset of partition 0 by 100 records.
    let lag = group_lag(&topic, &group);
    let &(partition, committed, high) = lag
        .iter()
        .find(|(p, _, _)| *p == 0)
        .expect("partition 0 has new records");
    assert!(high - committed > 100, "{lag:?}");
    delete_records_below(&topic, partition, committed + 100).await;

    let run = |extra: &[&str]| run_job_output("backup", &topic, &url, extra);
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("partition 0") && stderr.contains("100 records were deleted"),
        "{stderr}"
    );

    let output = run(&["--on-data-loss", "continue"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = report(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(summary["skipped_by_data_loss"], 100, "{summary}");
    let rows = archived_rows(&url, &topic).await;
    assert_eq!(rows, 1900, "everything but the 100 deleted records");
}

/// `file://` outputs are durable before offsets are committed: every
/// Parquet object and checkpoint is fsynced, and so is the directory that
/// names it. Seen from the system calls, with strace.
#[tokio::test(flavor = "multi_thread")]
async fn file_outputs_and_their_directories_are_fsynced() {
    let topic = unique("fsync");
    setup_topic(&topic);
    produce(&topic, 500, 0);
    let (_lake, url) = local_lake();
    let traces = tempfile::tempdir().expect("tempdir");
    let args = job_run_args("features", &topic, &url, &[]);
    // One trace file per thread (-ff): partitions' objects are written
    // side by side, and one file of all threads splits a call that another
    // thread interrupts into an unfinished and a resumed line.
    let output = std::process::Command::new("strace")
        .args(["-ff", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(traces.path().join("trace"))
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(&args)
        .output()
        .expect("strace (the machine's strace package) runs sluice");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let calls: String = std::fs::read_dir(traces.path())
        .expect("traces")
        .map(|file| std::fs::read_to_string(file.expect("trace").path()).expect("trace"))
        .collect();
    // Lines read `fsync(7</path/of/the/file>) = 0`; a staged file's name
    // may carry a suffix until it is renamed into place.
    let synced_paths: Vec<&str> = calls
        .lines()
        .filter(|l| l.contains("sync(") && l.ends_with(" = 0"))
        .filter_map(|l| l.split_once('<')?.1.split_once('>').map(|(path, _)| path))
        .collect();
    let synced = |wanted: &dyn Fn(&str) -> bool| synced_paths.iter().any(|p| wanted(p));
    assert!(
        synced(&|p| p.contains(".parquet")),
        "no Parquet object fsynced:\n{calls}"
    );
    assert!(synced(&|p| p.contains(".json")), "no checkpoint fsynced:\n{calls}");
    assert!(
        synced(
            &|p| p.ends_with("transactions_features/partition=0") || p.ends_with("transactions_features/partition=1")
        ),
        "the objects' directory was not fsynced:\n{calls}"
    );
}

/// A range an earlier member claimed, found at the first roll: each job
/// adopts the claimed end, so its first objects hold exactly the claimed
/// records (the features job recounts its state as of that end from the
/// topic, since its real-time path counted on), and every output is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_range_an_earlier_member_claimed_cuts_the_first_roll_exactly() {
    let topic = unique("adopted-claim");
    setup_topic_with(&topic, 2);
    produce(&topic, 4_000, 0);
    let (lake, url) = local_lake();
    let claimed_end = [100_i64, 37];
    for job in ["backup", "features"] {
        for (partition, end) in claimed_end.iter().enumerate() {
            let folder = lake
                .path()
                .join(format!("_claims/{topic}-{job}/{topic}/partition={partition}"));
            std::fs::create_dir_all(&folder).expect("claims folder");
            std::fs::write(folder.join(format!("{:020}", 0)), end.to_string()).expect("claim");
        }
    }
    run_job("backup", &topic, &url, &["--claims-in", "storage"]);
    run_job("features", &topic, &url, &["--claims-in", "storage"]);
    for (partition, end) in claimed_end.iter().enumerate() {
        let next = |dataset: &str, folder: &str| {
            lake.path().join(format!(
                "{dataset}/{folder}partition={partition}/{dataset}+{partition}+{end:020}.parquet"
            ))
        };
        assert!(
            next(sluice::jobs::features::DATASET, "").exists(),
            "partition {partition}: a features object starts at the claimed end {end}"
        );
        let archived: Vec<_> = std::fs::read_dir(lake.path().join(&topic))
            .expect("archive")
            .filter_map(|date| {
                let date = date.expect("entry").file_name().to_string_lossy().into_owned();
                next(&topic, &format!("{date}/")).exists().then_some(date)
            })
            .collect();
        assert_eq!(
            archived.len(),
            1,
            "partition {partition}: an archive object starts at the claimed end {end}"
        );
    }
    verify_outputs(&topic, &url, 4_000).await;
}
