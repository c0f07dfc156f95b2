//! Hostile and failing guests never stop a job: each test guest (built by
//! `make test-guests` from host/tests/guests) misbehaves on the records of
//! one user, and the features job runs to the end of the topic with exactly
//! that user's records in the dead-letter topic, the reason in the log and
//! in each dead letter, and every other count exact.

mod common;

use std::collections::BTreeSet;

use common::verify::{assert_redis_holds_the_last_counts, expected_feature_rows_without, feature_rows};
use common::*;

/// The user the hostile guests pick on.
const MARKED_USER: i32 = 13;

#[derive(Clone, Copy, PartialEq)]
enum Failing {
    MarkedUser,
    /// Calls fail, but every record succeeds in a smaller call.
    None,
}

/// How a hostile guest's run must end.
struct Expect<'a> {
    /// A module file under modules/test (`../` names one of the jobs' own).
    guest: &'a str,
    /// Text every dead letter's reason and the log must hold.
    reason: &'a str,
    /// Which records the guest fails on alone.
    failing: Failing,
    extra: &'a [&'a str],
}

/// 120 transactions of users 1..=6 and 3 of the marked user, interleaved.
fn transactions() -> Vec<sluice::model::Transaction> {
    (0..123i64)
        .map(|i| {
            let user = if i % 41 == 20 { MARKED_USER } else { 1 + (i % 6) as i32 };
            transaction(user, i, 10.0)
        })
        .collect()
}

async fn run_hostile(expect: Expect<'_>) {
    let name = std::path::Path::new(expect.guest).file_stem().expect("a file name");
    let topic = unique(&format!("hostile-{}", name.to_string_lossy().replace('_', "-")));
    setup_topic(&topic);
    produce_transactions(&topic, &transactions()).await;
    let (_dir, url) = local_lake();
    let module = test_module(expect.guest);
    let mut extra = vec!["--until-caught-up"];
    extra.extend_from_slice(expect.extra);
    let args = features_args(&topic, &url, &module, &extra);
    let output = sluice(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the job stopped:\n{log}");
    let report = report(&String::from_utf8_lossy(&output.stdout));
    assert!(
        log.contains(expect.reason),
        "the log does not say {:?}:\n{log}",
        expect.reason
    );

    let schema = apache_avro::Schema::parse_str(sluice::model::TRANSACTION_SCHEMA).expect("schema");
    let failing = |tx: &sluice::model::Transaction| match expect.failing {
        Failing::MarkedUser => tx.user_id == MARKED_USER,
        Failing::None => false,
    };
    let expected_letters: BTreeSet<(i32, i64)> = read_topic(&topic)
        .iter()
        .filter(|r| failing(&common::verify::decode_transaction(&schema, r)))
        .map(|r| (r.partition, r.offset))
        .collect();
    let letters = read_topic(&format!("{topic}-dlq"));
    let mut lettered = BTreeSet::new();
    for letter in &letters {
        let reason = &letter.headers["sluice.reason"];
        assert!(reason.contains(expect.reason), "dead letter reason {reason:?}");
        let at = (
            letter.headers["sluice.source.partition"].parse().expect("partition"),
            letter.headers["sluice.source.offset"].parse().expect("offset"),
        );
        assert!(lettered.insert(at), "{at:?} dead-lettered twice");
    }
    assert_eq!(lettered, expected_letters, "dead letters");
    assert_eq!(report["dead_lettered"], expected_letters.len() as u64, "{report}");

    // Every other record counted once, in order.
    let expected = expected_feature_rows_without(&topic, |_, tx| failing(tx));
    assert_eq!(feature_rows(&url).await, expected);
    assert_redis_holds_the_last_counts(&topic, &expected).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_loops_forever_is_stopped_by_its_deadline() {
    run_hostile(Expect {
        guest: "loop_forever.wasm",
        reason: "passed its deadline of 300 ms",
        failing: Failing::MarkedUser,
        extra: &["--guest-timeout-ms", "300"],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_loops_forever_runs_out_of_fuel_when_fuel_is_set() {
    run_hostile(Expect {
        guest: "loop_forever.wasm",
        reason: "ran out of fuel (--guest-fuel)",
        failing: Failing::MarkedUser,
        extra: &["--guest-fuel", "50000000", "--guest-timeout-ms", "60000"],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_grows_memory_without_bound_hits_the_store_cap() {
    run_hostile(Expect {
        guest: "grow_memory.wasm",
        reason: "guest memory limit",
        failing: Failing::MarkedUser,
        extra: &["--guest-memory-mb", "48"],
    })
    .await;
}

/// The table-growth guest (WebAssembly text: Rust cannot grow a table)
/// grows a table on every call, so it fails the probe a candidate module
/// must pass: offered to a running job, it is refused at the store's table
/// cap, and the running module goes on counting.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_grows_a_table_without_bound_hits_the_store_cap() {
    let topic = unique("hostile-grow-table");
    setup_topic(&topic);
    let (_dir, url) = local_lake();
    // The guest is WebAssembly text, which the endpoint takes only when asked to.
    let (mut job, admin) = spawn_features_with_admin(&topic, &url, &module("features"), &["--admin-accept-text"]);
    let (status, answer) = admin_swap(&admin, &test_module("grow_table.wat")).await;
    assert_eq!(status, 422, "{answer}");
    let reason = answer["reason"].as_str().expect("reason");
    assert!(
        reason.contains("guest table limit") && reason.contains("100000 elements"),
        "{reason}"
    );

    produce_transactions(&topic, &transactions()).await;
    wait_group_caught_up(&topic, &format!("{topic}-features"), std::time::Duration::from_secs(60));
    let log = job.log();
    let (exit, stdout) = job.terminate();
    assert!(exit.success(), "{log}");
    assert!(log.contains("guest table limit"), "{log}");
    assert_eq!(
        report(&stdout)["module_sha256"],
        file_sha256(&module("features")).as_str()
    );
    assert_eq!(feature_rows(&url).await, common::verify::expected_feature_rows(&topic));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_record_reaches_the_dead_letter_topic_alone() {
    run_hostile(Expect {
        guest: "trap_on_user.wasm",
        reason: "poison user 13",
        failing: Failing::MarkedUser,
        extra: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_returns_the_wrong_number_of_outcomes_is_isolated() {
    run_hostile(Expect {
        guest: "wrong_count.wasm",
        reason: "returned 0 outcomes for 1 records",
        failing: Failing::MarkedUser,
        extra: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_gets_no_wall_clock() {
    run_hostile(Expect {
        guest: "read_clock.wasm",
        reason: "wasi:clocks/wall-clock.now, which the sandbox denies",
        failing: Failing::MarkedUser,
        extra: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_cannot_sleep_in_a_host_call() {
    run_hostile(Expect {
        guest: "sleep.wasm",
        reason: "wasi:clocks/monotonic-clock",
        failing: Failing::MarkedUser,
        extra: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_gets_no_random_numbers() {
    run_hostile(Expect {
        guest: "read_random.wasm",
        reason: "wasi:random/random.get-random",
        failing: Failing::MarkedUser,
        extra: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_gets_no_files() {
    run_hostile(Expect {
        guest: "open_file.wasm",
        reason: "wasi:filesystem/preopens.get-directories, which the sandbox denies",
        failing: Failing::MarkedUser,
        extra: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_gets_no_sockets() {
    run_hostile(Expect {
        guest: "open_socket.wasm",
        reason: "which the sandbox denies: guests get no network",
        failing: Failing::MarkedUser,
        extra: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_gets_an_empty_environment() {
    run_hostile(Expect {
        guest: "read_env.wasm",
        reason: "the sandbox gives guests none, so it got an empty answer",
        failing: Failing::None,
        extra: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_creates_too_many_keys_in_one_call_is_split_until_it_fits() {
    // The features guest creates one key per new user: a cap of 2 new keys
    // per call fails the batches, bisection runs them in parts that fit,
    // and nothing is lost.
    run_hostile(Expect {
        guest: "features_rebuilt.wasm",
        reason: "keyed-state limit",
        failing: Failing::None,
        extra: &["--guest-new-keys-per-call", "2"],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_set_a_batch_at_a_time_are_held_to_the_same_limit() {
    // guests/features reads and writes its keys through get-many and
    // set-many, once per call: the cap on new keys holds for those too.
    run_hostile(Expect {
        guest: "../features.wasm",
        reason: "keyed-state limit",
        failing: Failing::None,
        extra: &["--guest-new-keys-per-call", "2"],
    })
    .await;
}

/// Peak resident memory of a process so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("kB");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_creates_a_million_keys_per_call_stays_within_the_state_budget() {
    // Every call of this guest creates a million entries of its own. Per
    // call that is allowed here (2,000,000 new keys), so only the total
    // budget of the partition (100,000 keys) stops it: each call fails at
    // the budget, like any other limit, and its records go to the
    // dead-letter topic alone. Forty-one batches of three records:
    // unbounded, the state would reach 41 million entries (gigabytes).
    let topic = unique("hostile-hoard-keys");
    setup_topic_with(&topic, 1);
    let transactions = transactions();
    produce_transactions(&topic, &transactions).await;
    let (_dir, url) = local_lake();
    let module = test_module("hoard_keys.wasm");
    let args = features_args(
        &topic,
        &url,
        &module,
        &[
            "--batch-size",
            "3",
            "--guest-new-keys-per-call",
            "2000000",
            "--state-max-keys-per-partition",
            "100000",
        ],
    );
    let mut job = spawn_sluice(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    wait_group_caught_up(
        &topic,
        &format!("{topic}-features"),
        std::time::Duration::from_secs(300),
    );
    let peak = peak_rss(job.child.id());
    let log = job.log();
    let (status, stdout) = job.terminate();
    assert!(status.success(), "the job stopped:\n{log}");
    let reason = "the partition's state would hold more than 100000 keys";
    assert!(log.contains(reason), "{log}");

    let letters = read_topic(&format!("{topic}-dlq"));
    assert_eq!(letters.len(), transactions.len(), "every call fails at the budget");
    for letter in &letters {
        assert!(letter.headers["sluice.reason"].contains(reason), "{:?}", letter.headers);
    }
    let rows = feature_rows(&url).await;
    assert_eq!(
        rows.len() + letters.len(),
        transactions.len(),
        "every record counted or dead-lettered"
    );
    assert_eq!(report(&stdout)["dead_lettered"], letters.len() as u64, "{stdout}");
    println!("peak resident memory {} MiB", peak >> 20);
    assert!(peak < 300 << 20, "peak resident memory {} MiB", peak >> 20);
}

/// A runtime of a job's settings, keeping compiled modules in `cache`.
fn runtime_with_cache(cache: &std::path::Path) -> std::sync::Arc<sluice::runtime::Runtime> {
    sluice::runtime::Runtime::new(&sluice::runtime::Settings {
        limits: sluice::runtime::Limits::default(),
        module_cache: Some(cache.to_path_buf()),
    })
    .expect("runtime")
}

#[test]
fn a_module_compiled_once_is_taken_from_the_cache_by_the_next_process() {
    use sluice::runtime::{Compiled, FeaturesWorld};
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("modules");
    let module = std::path::PathBuf::from(module("features"));

    let first = runtime_with_cache(&cache);
    Compiled::<FeaturesWorld>::probe(&Compiled::compile(&first, &module).expect("compile")).expect("probe");
    assert_eq!(first.module_cache_hits(), 0, "a new cache holds nothing");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache).expect("made").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the cache is the user's alone");

    // A runtime of its own, as another process has: the module comes
    // compiled from the folder, and works.
    let second = runtime_with_cache(&cache);
    Compiled::<FeaturesWorld>::probe(&Compiled::compile(&second, &module).expect("compile")).expect("probe");
    assert_eq!(second.module_cache_hits(), 1);
}

#[test]
fn a_cache_others_may_write_to_is_not_used() {
    use sluice::runtime::{Compiled, FeaturesWorld};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("shared");
    let module = std::path::PathBuf::from(module("features"));
    Compiled::<FeaturesWorld>::compile(&runtime_with_cache(&cache), &module).expect("compile");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");

    // Compiled anew, and still works: the cache is a speed-up, never a
    // reason a job does not start.
    let runtime = runtime_with_cache(&cache);
    Compiled::<FeaturesWorld>::probe(&Compiled::compile(&runtime, &module).expect("compile")).expect("probe");
    assert_eq!(
        runtime.module_cache_hits(),
        0,
        "machine code from a shared folder was run"
    );
}
