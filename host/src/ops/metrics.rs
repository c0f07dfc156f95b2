//! Prometheus metrics: one recorder per process (the `metrics` facade with
//! its Prometheus exporter), rendered by `GET /metrics` on the admin
//! listener. Every name is here, with its help text; docs/operations.md
//! lists them. They are a stable interface: rename none, only add.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const RECORDS_IN: &str = "sluice_records_in_total";
pub const BYTES_IN: &str = "sluice_bytes_in_total";
pub const RECORDS_OUT: &str = "sluice_records_out_total";
pub const DEAD_LETTERS: &str = "sluice_dead_letters_total";
pub const LAG_RECORDS: &str = "sluice_lag_records";
pub const LAG_SECONDS: &str = "sluice_lag_seconds";
pub const BATCH_SECONDS: &str = "sluice_batch_duration_seconds";
pub const GUEST_CALL_SECONDS: &str = "sluice_guest_call_duration_seconds";
pub const OBJECTS: &str = "sluice_objects_written_total";
pub const OBJECT_BYTES: &str = "sluice_object_size_bytes";
pub const CHECKPOINTS: &str = "sluice_checkpoints_written_total";
pub const CHECKPOINT_BYTES: &str = "sluice_checkpoint_bytes_total";
pub const REDIS_WRITES: &str = "sluice_redis_writes_total";
pub const REDIS_FENCED: &str = "sluice_redis_fenced_writes_total";
pub const SWAPS: &str = "sluice_module_swaps_total";
pub const SWAP_REFUSALS: &str = "sluice_module_refusals_total";
pub const REBALANCES: &str = "sluice_rebalances_total";
pub const ASSIGNED_PARTITIONS: &str = "sluice_assigned_partitions";
pub const COMMITS: &str = "sluice_commits_total";

/// Every metric's name (the dashboard in deploy/ uses no other).
pub const NAMES: &[&str] = &[
    RECORDS_IN,
    BYTES_IN,
    RECORDS_OUT,
    DEAD_LETTERS,
    LAG_RECORDS,
    LAG_SECONDS,
    BATCH_SECONDS,
    GUEST_CALL_SECONDS,
    OBJECTS,
    OBJECT_BYTES,
    CHECKPOINTS,
    CHECKPOINT_BYTES,
    REDIS_WRITES,
    REDIS_FENCED,
    SWAPS,
    SWAP_REFUSALS,
    REBALANCES,
    ASSIGNED_PARTITIONS,
    COMMITS,
];

/// Histogram buckets, in seconds: from a fast micro-batch to a slow roll.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Object sizes, in bytes: 64 KiB to 1 GiB, by fours.
const BYTES_BUCKETS: &[f64] = &[
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder, every series labelled `command`
/// (`features`, `backup`, `produce`); the first call wins.
pub fn install(command: &str) -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .add_global_label("command", command)
            .set_buckets(SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(OBJECT_BYTES.into()),
                    BYTES_BUCKETS,
                )
            })
            .expect("fixed, non-empty buckets");
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (only in tests of the library):
            // render this one's, which then stays empty.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        describe();
        handle
    })
}

/// The exposition text of every metric, or nothing before `install`.
pub fn render() -> String {
    HANDLE.get().map_or_else(String::new, |handle| {
        handle.run_upkeep();
        handle.render()
    })
}

fn describe() {
    describe_counter!(RECORDS_IN, Unit::Count, "Records consumed from the topic.");
    describe_counter!(
        BYTES_IN,
        Unit::Bytes,
        "Bytes of keys and values consumed from the topic."
    );
    describe_counter!(
        RECORDS_OUT,
        Unit::Count,
        "Records written, by sink: parquet (rows in objects), kafka (records produced)."
    );
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Records sent to the dead-letter topic, by reason."
    );
    describe_gauge!(
        LAG_RECORDS,
        Unit::Count,
        "Per assigned partition: high watermark minus the group's committed offset."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Per assigned partition: age of the oldest record past the group's committed offset (0 when none)."
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time to process one micro-batch, by path."
    );
    describe_histogram!(GUEST_CALL_SECONDS, Unit::Seconds, "Time of one guest call.");
    describe_counter!(OBJECTS, Unit::Count, "Parquet objects written.");
    describe_histogram!(OBJECT_BYTES, Unit::Bytes, "Size of each Parquet object written.");
    describe_counter!(
        CHECKPOINTS,
        Unit::Count,
        "State checkpoints written, by kind: whole or delta."
    );
    describe_counter!(CHECKPOINT_BYTES, Unit::Bytes, "Bytes of state checkpoints written.");
    describe_counter!(REDIS_WRITES, Unit::Count, "Feature values written to Redis.");
    describe_counter!(
        REDIS_FENCED,
        Unit::Count,
        "Feature writes Redis skipped: it held a value from the same or a newer offset."
    );
    describe_counter!(SWAPS, Unit::Count, "Modules swapped in while running.");
    describe_counter!(SWAP_REFUSALS, Unit::Count, "Candidate modules refused.");
    describe_counter!(
        REBALANCES,
        Unit::Count,
        "Consumer group rebalances this member took part in."
    );
    describe_gauge!(ASSIGNED_PARTITIONS, Unit::Count, "Partitions assigned to this member.");
    describe_counter!(
        COMMITS,
        Unit::Count,
        "Offset commits, by result: done, stale (a rebalance came first) or fenced (the group refused)."
    );
}
