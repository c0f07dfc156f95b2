//! The backfill replays the archive the live pipeline wrote through the same
//! features module: its rows equal the live job's, it touches neither Redis
//! nor Kafka, a rerun or a resumed run after SIGKILL gives the same bytes,
//! and its state hands off to a live job that continues with exact counts.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::verify::{assert_redis_holds_the_last_counts, expected_feature_rows, feature_rows};
use common::*;
use redis::AsyncCommands;

/// Listeners standing in for Kafka and Redis: the backfill is pointed at
/// them, and a test then checks that nothing ever connected.
struct Tripwires {
    kafka: TcpListener,
    redis: TcpListener,
}

impl Tripwires {
    fn new() -> Self {
        let listen = || {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            listener
        };
        Self {
            kafka: listen(),
            redis: listen(),
        }
    }

    fn envs(&self) -> [(&'static str, String); 2] {
        let address = |l: &TcpListener| l.local_addr().expect("address").to_string();
        [
            ("SLUICE_BROKERS", address(&self.kafka)),
            ("SLUICE_REDIS_URL", format!("redis://{}", address(&self.redis))),
        ]
    }

    fn assert_untouched(&self) {
        for (name, listener) in [("Kafka", &self.kafka), ("Redis", &self.redis)] {
            match listener.accept() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                other => panic!("the backfill connected to {name}: {other:?}"),
            }
        }
    }
}

fn backfill_args(topic: &str, archive: &str, output: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--topic",
        topic,
        "backfill",
        "--module",
        &module("features"),
        "--from",
        archive,
        "--output-url",
        output,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs a backfill pointed at tripwires instead of Kafka and Redis.
fn run_backfill(topic: &str, archive: &str, output: &str, extra: &[&str]) -> Output {
    let tripwires = Tripwires::new();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(backfill_args(topic, archive, output, extra))
        .envs(tripwires.envs())
        .output()
        .expect("run sluice backfill");
    tripwires.assert_untouched();
    output
}

fn backfill_ok(topic: &str, archive: &str, output: &str, extra: &[&str]) -> serde_json::Value {
    let output = run_backfill(topic, archive, output, extra);
    assert!(
        output.status.success(),
        "backfill failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    report(&String::from_utf8_lossy(&output.stdout))
}

/// Every object under a `file://` root, by relative path, with its bytes.
/// A put killed mid-write leaves object_store's staging file
/// (`<name>#<n>`), which no listing or reader sees: skipped here too.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if !is_staging_file(&path) {
                let relative = path.strip_prefix(dir).expect("under dir").display().to_string();
                found.insert(relative, std::fs::read(&path).expect("read"));
            }
        }
    }
    found
}

fn is_staging_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// Every Redis hash under `pattern`, field by field.
async fn redis_snapshot(pattern: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut redis = redis().await;
    let keys: Vec<String> = redis.keys(pattern).await.expect("keys");
    let mut snapshot = BTreeMap::new();
    for key in keys {
        let fields: BTreeMap<String, String> = redis.hgetall(&key).await.expect("hgetall");
        snapshot.insert(key, fields);
    }
    snapshot
}

/// The live pipeline over `topic`: the archive and the live features in
/// `live_url` (its archive in three event-date folders); then the backfill of that archive into `backfill_url` must
/// give the same rows, leaving Redis as it was.
async fn backfill_equals_live(topic: &str, live_url: &str, backfill_url: &str) {
    setup_topic_with(topic, 3);
    produce(topic, 6_000, 0);
    // A malformed record: both live jobs dead-letter it, the archive says so.
    produce_raw(topic, &[("7".into(), b"not avro".to_vec())]).await;
    // Then records of an earlier day that cross its midnight: each
    // partition's roll is cut into objects of three event dates.
    let midnight: i64 = 1_764_460_800_000; // 2025-11-30T00:00Z
    let start = (midnight - 6_000 - 3_000).to_string();
    produce_with(topic, 6_000, 6_000, &["--start-millis", &start]);
    run_job("backup", topic, live_url, &[]);
    let dates = archive_dates(live_url, topic).await;
    assert!(
        dates.contains("2025-11-29") && dates.contains("2025-11-30") && dates.len() == 3,
        "{dates:?}"
    );
    let live = run_job("features", topic, live_url, &[]);
    assert_eq!(
        (live["features"].as_u64(), live["dead_lettered"].as_u64()),
        (Some(12_000), Some(1)),
        "{live}"
    );
    let live_rows = feature_rows(live_url).await;
    assert_eq!(live_rows, expected_feature_rows(topic), "the live job's rows are right");

    let redis_pattern = format!("sluice:*{topic}*");
    let redis_before = redis_snapshot(&redis_pattern).await;
    assert!(!redis_before.is_empty(), "the live job wrote Redis");

    let summary = backfill_ok(topic, live_url, backfill_url, &["--rows-per-object", "2500"]);
    assert_eq!(summary["records"], 12_000, "{summary}");
    assert_eq!(summary["not_archived"], 1, "{summary}");
    assert_eq!(summary["services"], serde_json::json!(["object storage"]), "{summary}");
    let users: std::collections::HashSet<i32> = live_rows.iter().map(|r| r.0).collect();
    assert_eq!(summary["users"], users.len(), "{summary}");
    assert!(summary["objects"].as_u64().expect("objects") >= 3, "{summary}");
    assert_eq!(feature_rows(backfill_url).await, live_rows, "backfill rows = live rows");

    assert_eq!(redis_snapshot(&redis_pattern).await, redis_before, "Redis untouched");

    // Into the live job's own output, the rows would be there twice.
    let refused = run_backfill(topic, live_url, live_url, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("would duplicate them"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_of_a_local_archive_equals_the_live_rows() {
    let topic = unique("backfill-file");
    let (_live, live_url) = local_lake();
    let (_out, out_url) = local_lake();
    backfill_equals_live(&topic, &live_url, &out_url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_of_an_s3_archive_equals_the_live_rows() {
    let topic = unique("backfill-s3");
    let bucket = env("SLUICE_S3_BUCKET");
    let live_url = format!("s3://{bucket}/{topic}/live");
    let out_url = format!("s3://{bucket}/{topic}/backfill");
    backfill_equals_live(&topic, &live_url, &out_url).await;
}

/// A rerun changes nothing; `--restart` rewrites the same bytes; a run
/// killed with SIGKILL resumes to the same bytes as an uninterrupted one; a
/// record archived twice is counted once.
#[tokio::test(flavor = "multi_thread")]
async fn backfill_is_idempotent_resumable_and_counts_a_record_once() {
    let topic = unique("backfill-resume");
    setup_topic_with(&topic, 3);
    produce(&topic, 9_000, 0);
    let (archive_dir, archive) = local_lake();
    run_job(
        "backup",
        &topic,
        &archive,
        &["--batch-size", "500", "--roll-rows", "500"],
    );
    let expected = expected_feature_rows(&topic);

    // One archive object stored twice, under a second name.
    // Partition 1's objects, in every event-date folder, in offset order.
    let mut objects: Vec<_> = std::fs::read_dir(archive_dir.path().join(&topic))
        .expect("the archive")
        .flat_map(|date| std::fs::read_dir(date.expect("entry").path().join("partition=1")).expect("partition 1"))
        .map(|e| e.expect("entry").path())
        .collect();
    objects.sort_by_key(|p| p.file_name().map(ToOwned::to_owned));
    let original = &objects[objects.len() / 2];
    let folder = original.parent().expect("folder");
    let name = original.file_name().expect("name").to_string_lossy().into_owned();
    let (stem, first) = name.trim_end_matches(".parquet").rsplit_once('+').expect("offset");
    let copy = folder.join(format!(
        "{stem}+{:020}.parquet",
        first.parse::<i64>().expect("offset") + 1
    ));
    std::fs::copy(original, &copy).expect("copy");
    let copied_rows = archived_rows_of(&copy);
    assert!(copied_rows > 0);

    let options = ["--rows-per-object", "1000", "--parallelism", "2"];
    let (whole_dir, whole) = local_lake();
    let first_run = backfill_ok(&topic, &archive, &whole, &options);
    assert_eq!(first_run["records"], 9_000, "{first_run}");
    assert_eq!(first_run["duplicates"], copied_rows, "{first_run}");
    assert_eq!(feature_rows(&whole).await, expected, "each record counted once");
    let reference = files(whole_dir.path());

    let rerun = backfill_ok(&topic, &archive, &whole, &options);
    assert_eq!(rerun["records"], 0, "nothing left to do: {rerun}");
    assert_eq!(rerun["already_done"], 9_000 + copied_rows, "{rerun}");
    assert_eq!(files(whole_dir.path()), reference, "a rerun changes nothing");

    let restart = backfill_ok(&topic, &archive, &whole, &[&options[..], &["--restart"]].concat());
    assert_eq!(restart["records"], 9_000, "{restart}");
    assert_eq!(files(whole_dir.path()), reference, "a restart rewrites the same bytes");

    // Two shards, one after the other into one output: the same objects as
    // one run over every partition.
    let (sharded_dir, sharded) = local_lake();
    let first = backfill_ok(
        &topic,
        &archive,
        &sharded,
        &[&options[..], &["--shard", "0/2"]].concat(),
    );
    let second = backfill_ok(
        &topic,
        &archive,
        &sharded,
        &[&options[..], &["--shard", "1/2"]].concat(),
    );
    assert_eq!(
        (first["partitions"].clone(), second["partitions"].clone()),
        (serde_json::json!([0, 2]), serde_json::json!([1])),
        "{first} {second}"
    );
    assert!(files(sharded_dir.path()) == reference, "shards = one run");

    // Killed after its fourth object, then started again.
    let (resumed_dir, resumed) = local_lake();
    let args = backfill_args(&topic, &archive, &resumed, &options);
    let tripwires = Tripwires::new();
    let envs = tripwires.envs();
    let mut envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envs.push(("SLUICE_CRASH_AT", "backfill-after-object:4"));
    let mut killed = spawn_sluice(&args.iter().map(String::as_str).collect::<Vec<_>>(), &envs);
    assert!(
        killed.wait_for("crash point backfill-after-object reached", Duration::from_secs(60)),
        "{}",
        killed.log()
    );
    killed.kill();
    let partial = files(resumed_dir.path());
    assert!(
        partial.len() < reference.len() && partial.keys().any(|k| k.ends_with(".parquet")),
        "killed mid-run: {:?}",
        partial.keys().collect::<Vec<_>>()
    );
    let finished = backfill_ok(&topic, &archive, &resumed, &options);
    assert!(
        finished["already_done"].as_u64().expect("already_done") > 0,
        "resumed, not restarted: {finished}"
    );
    let resumed_files = files(resumed_dir.path());
    assert_eq!(
        resumed_files.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    assert!(resumed_files == reference, "the same bytes as the uninterrupted run");

    // Event-time bounds: counts start at zero at --since, per record.
    let mut times: Vec<i64> = expected.iter().map(|r| r.2).collect();
    times.sort_unstable();
    let (since, until) = (times[times.len() / 4], times[times.len() * 3 / 4]);
    let (_bounded_dir, bounded) = local_lake();
    let window = backfill_ok(
        &topic,
        &archive,
        &bounded,
        &["--since", &since.to_string(), "--until", &until.to_string()],
    );
    let mut in_order = expected.clone();
    in_order.sort_by_key(|r| (r.3, r.4));
    let mut counts: BTreeMap<i32, i32> = BTreeMap::new();
    let mut windowed: Vec<_> = in_order
        .iter()
        .filter(|r| (since..until).contains(&r.2))
        .map(|r| {
            let count = counts.entry(r.0).or_default();
            *count += 1;
            (r.0, *count, r.2, r.3, r.4)
        })
        .collect();
    windowed.sort_unstable();
    assert_eq!(feature_rows(&bounded).await, windowed, "{window}");
    assert_eq!(window["outside_time_range"], 9_000 - windowed.len(), "{window}");

    // A lost archive object is a gap: refused, or counted past knowingly.
    assert!(objects.len() >= 4, "{objects:?}");
    std::fs::remove_file(&objects[1]).expect("remove");
    let (_gap_dir, gap_out) = local_lake();
    let refused = run_backfill(&topic, &archive, &gap_out, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("misses offsets") && stderr.contains("partition 1"),
        "{stderr}"
    );
    let allowed = backfill_ok(&topic, &archive, &gap_out, &["--allow-gaps"]);
    assert!(allowed["records"].as_u64().expect("records") < 9_000, "{allowed}");
}

fn archived_rows_of(path: &Path) -> u64 {
    let bytes = bytes::Bytes::from(std::fs::read(path).expect("read"));
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
    builder.metadata().file_metadata().num_rows() as u64
}

/// A new deployment bootstraps from history: the backfill of an archive of
/// the first half hands its state to a live group, which reads only the
/// second half and ends with every count exact. A hand-off the topic no
/// longer reaches is refused, naming the gap.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_job_continues_exactly_from_the_backfill_handoff() {
    let topic = unique("handoff");
    setup_topic_with(&topic, 3);
    produce(&topic, 6_000, 0);
    let (_archive_dir, archive) = local_lake();
    run_job("backup", &topic, &archive, &[]);

    let (deployment_dir, deployment) = local_lake();
    let group = format!("{topic}-features");
    let summary = backfill_ok(
        &topic,
        &archive,
        &deployment,
        &["--handoff-group", &group, "--rows-per-object", "1500"],
    );
    let offsets = &summary["handoff"]["offsets"];
    let handed_off: i64 = offsets
        .as_object()
        .expect("offsets")
        .values()
        .map(|v| v.as_i64().expect("offset"))
        .sum();
    assert_eq!(handed_off, 6_000, "{summary}");

    // Before it serves a batch, the live job publishes the handed-off
    // state: Redis holds every user's count from history alone.
    let history = expected_feature_rows(&topic);
    let mut live = spawn_sluice(
        &job_args("features", &topic, &group, &deployment)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    );
    let prefix = format!("sluice:test:{topic}");
    for _ in 0..3 {
        assert!(
            live.wait_for("published the partition's features to redis", Duration::from_secs(60)),
            "{}",
            live.log()
        );
    }
    assert_redis_holds_the_last_counts(&topic, &history).await;
    let published: Vec<String> = redis().await.keys(format!("{prefix}:user:*")).await.expect("keys");
    let users: std::collections::HashSet<i32> = history.iter().map(|r| r.0).collect();
    assert_eq!(published.len(), users.len(), "one key per user of history, no others");

    produce(&topic, 6_000, 6_000);
    wait_group_caught_up(&topic, &group, Duration::from_secs(120));
    let log = live.log();
    let (status, stdout) = live.terminate();
    assert!(status.success(), "{log}");
    let live = report(&stdout);
    assert_eq!(
        live["records"], 6_000,
        "the live job reads only the second half: {live}"
    );
    let marks = deployment_dir.path().join("_checkpoints").join(&group).join(&topic);
    assert!(
        !marks.join("partition=0/handoff.json").exists() && marks.join("partition=0").exists(),
        "the first commit retires the hand-off"
    );
    // The output is the live job's now: a backfill into it is refused.
    let refused = run_backfill(&topic, &archive, &deployment, &["--restart"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("was handed off to group"),
        "{stderr}"
    );

    let expected = expected_feature_rows(&topic);
    assert_eq!(feature_rows(&deployment).await, expected, "history + live = every row");
    let mut totals: BTreeMap<i32, i32> = BTreeMap::new();
    for row in &expected {
        let total = totals.entry(row.0).or_default();
        *total = (*total).max(row.1);
    }
    // Every user, those known only from history included.
    let history_only = totals.len()
        - expected
            .iter()
            .filter(|r| r.4 >= offsets[r.3.to_string()].as_i64().expect("offset"))
            .map(|r| r.0)
            .collect::<std::collections::HashSet<i32>>()
            .len();
    println!("{history_only} of {} users are known only from history", totals.len());
    assert_redis_holds_the_last_counts(&topic, &expected).await;
}

/// A live job that takes over a hand-off with no record after it is caught
/// up at once: it commits the hand-off offsets as the group's, so
/// `--until-caught-up` ends instead of waiting for a record that may never
/// come.
#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_with_nothing_after_it_is_caught_up_at_once() {
    let topic = unique("handoff-idle");
    setup_topic_with(&topic, 2);
    produce(&topic, 2_000, 0);
    let (_archive_dir, archive) = local_lake();
    run_job("backup", &topic, &archive, &[]);
    let (_deployment_dir, deployment) = local_lake();
    let group = format!("{topic}-features");
    backfill_ok(&topic, &archive, &deployment, &["--handoff-group", &group]);
    assert!(!group_lag(&topic, &group).is_empty(), "the group has no commits yet");
    let live = run_job("features", &topic, &deployment, &[]);
    assert_eq!(live["records"], 0, "{live}");
    assert!(
        group_lag(&topic, &group).is_empty(),
        "the hand-off offsets are the group's commits now"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_the_topic_no_longer_reaches_is_refused() {
    let topic = unique("handoff-gap");
    setup_topic_with(&topic, 1);
    produce(&topic, 300, 0);
    let (_archive_dir, archive) = local_lake();
    run_job("backup", &topic, &archive, &[]);
    let (_deployment_dir, deployment) = local_lake();
    let group = format!("{topic}-features");
    backfill_ok(&topic, &archive, &deployment, &["--handoff-group", &group]);

    // Retention passes the hand-off offset before the live job starts.
    produce(&topic, 300, 300);
    delete_records_below(&topic, 0, 350).await;

    let refused = run_job_output("features", &topic, &deployment, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("offsets 300..350 (50 records) are in neither the archive nor the topic"),
        "{stderr}"
    );
}

/// On a terminal a progress bar; without one, progress log lines.
#[tokio::test(flavor = "multi_thread")]
async fn people_watch_a_backfill_on_a_terminal_or_in_the_log() {
    let topic = unique("backfill-watch");
    setup_topic_with(&topic, 2);
    produce(&topic, 4_000, 0);
    let (_archive_dir, archive) = local_lake();
    run_job(
        "backup",
        &topic,
        &archive,
        &["--batch-size", "500", "--roll-rows", "500"],
    );

    // No terminal: a log line every interval.
    let (_logged_dir, logged) = local_lake();
    let tripwires = Tripwires::new();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(backfill_args(&topic, &archive, &logged, &["--rows-per-object", "500"]))
        .envs(tripwires.envs())
        .env("SLUICE_PROGRESS_INTERVAL_MS", "1")
        .output()
        .expect("backfill");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("backfill progress") && stderr.contains("eta_s"),
        "{stderr}"
    );
    assert!(!stderr.contains("ETA"), "no bar without a terminal: {stderr}");

    // A terminal (a pseudo-terminal from util-linux's script): the bar.
    let (_bar_dir, bar) = local_lake();
    let command = backfill_args(&topic, &archive, &bar, &[])
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let output = std::process::Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("'{}' {command}", env!("CARGO_BIN_EXE_sluice")))
        .arg("/dev/null")
        .envs(tripwires.envs())
        .output()
        .expect("script (util-linux) runs sluice on a pseudo-terminal");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains("4,000/4,000 records") && shown.contains("ETA"),
        "{shown}"
    );
    tripwires.assert_untouched();
}
