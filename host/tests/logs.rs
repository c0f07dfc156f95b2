//! The log as people and log shippers read it: no escape codes when stderr
//! is not a terminal, one JSON object a line with `--log-format json`, and
//! the level from `SLUICE_LOG`, else `RUST_LOG`.

mod common;

use common::*;

/// `sluice produce` of a few records to `topic` with `level_vars` set (and
/// the other level variables unset); its stderr.
fn produce_log(topic: &str, extra: &[&str], level_vars: &[(&str, &str)]) -> String {
    let module = module("producer");
    let mut args = vec!["--topic", topic];
    args.extend(extra);
    args.extend(["produce", "--module", &module, "--count", "10"]);
    let output = sluice_env(&args, level_vars, &["SLUICE_LOG", "RUST_LOG"]);
    let stderr = String::from_utf8(output.stderr).expect("utf-8 log");
    assert!(output.status.success(), "produce failed: {stderr}");
    stderr
}

const LOADED: &str = "module loaded";

#[test]
fn logs_are_plain_text_or_json_at_the_level_a_variable_sets() {
    let topic = unique("logs");
    setup_topic(&topic);

    let text = produce_log(&topic, &[], &[]);
    assert!(text.contains(LOADED), "info lines by default: {text}");
    assert!(!text.contains('\x1b'), "escape codes in a redirected log: {text:?}");

    let json = produce_log(&topic, &["--log-format", "json"], &[]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let loaded = lines
        .iter()
        .find(|l| l["fields"]["message"] == LOADED)
        .unwrap_or_else(|| panic!("no {LOADED:?} object: {json}"));
    assert_eq!(loaded["level"], "INFO", "{loaded}");
    assert!(loaded["fields"]["sha256"].is_string(), "fields stay fields: {loaded}");

    let quiet = produce_log(&topic, &[], &[("SLUICE_LOG", "warn")]);
    assert!(!quiet.contains(LOADED), "SLUICE_LOG=warn drops info: {quiet}");
    let quiet = produce_log(&topic, &[], &[("RUST_LOG", "warn")]);
    assert!(!quiet.contains(LOADED), "RUST_LOG=warn drops info: {quiet}");
    let first = produce_log(&topic, &[], &[("SLUICE_LOG", "info"), ("RUST_LOG", "warn")]);
    assert!(first.contains(LOADED), "SLUICE_LOG wins over RUST_LOG: {first}");
    let bad = produce_log(&topic, &[], &[("SLUICE_LOG", "sluice=loud")]);
    assert!(
        bad.contains("SLUICE_LOG") && bad.contains(LOADED),
        "a filter that does not parse is named, and info used: {bad}"
    );
}

/// `produce` and `run` log a progress line every `--progress-interval-ms`:
/// the records so far, the rate since the last line and, for a consumer,
/// the lag of its partitions, which reaches zero once it has caught up.
#[test]
fn produce_and_run_log_progress_lines() {
    let topic = unique("progress");
    setup_topic(&topic);
    let producer = module("producer");
    let output = sluice(&[
        "--topic",
        &topic,
        "--log-format",
        "json",
        "produce",
        "--module",
        &producer,
        "--count",
        "3000",
        "--rate",
        "1000",
        "--progress-interval-ms",
        "300",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let progress: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "progress")
        .collect();
    assert!(progress.len() >= 3, "{stderr}");
    let records: Vec<u64> = progress
        .iter()
        .map(|l| l["fields"]["records"].as_u64().expect("records"))
        .collect();
    assert!(
        records.windows(2).all(|w| w[0] <= w[1]) && records[records.len() - 1] <= 3000,
        "{records:?}"
    );
    assert!(
        progress
            .iter()
            .any(|l| l["fields"]["records_per_s"].as_f64().is_some_and(|r| r > 0.0)),
        "{stderr}"
    );

    let (_lake, url) = local_lake();
    let args = features_args(&topic, &url, &module("features"), &["--progress-interval-ms", "300"]);
    let mut job = spawn_sluice(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(
        job.wait_for("lag_records=0", std::time::Duration::from_secs(90)),
        "{}",
        job.log()
    );
    let log = job.log();
    let caught_up = log
        .lines()
        .find(|l| l.contains("progress") && l.contains("lag_records=0"))
        .expect("the line");
    assert!(caught_up.contains("records=3000"), "{caught_up}");
    job.stop();
}
