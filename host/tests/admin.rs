//! The admin surfaces a deployment exposes: the job's admin listener (its
//! metrics and health, its bearer token, its modules directory) and the
//! embedded registry's listen address.

mod common;

use std::time::Duration;

use common::*;

/// `POST /module` to `path`, with `token` as the bearer token if given.
async fn post_module(addr: &str, token: Option<&str>, path: &str) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/module"))
        .json(&serde_json::json!({ "path": path }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /module");
    let status = response.status().as_u16();
    (status, response.json().await.expect("answer JSON"))
}

/// With a token, the admin endpoint may listen beyond loopback and answers
/// only requests that carry it; it loads modules only from its modules
/// directory (no path elsewhere, no `..`, no link out of it), and no
/// refusal quotes a file or tells whether one out there exists.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_endpoint_needs_its_token_and_stays_in_its_modules_directory() {
    let topic = unique("admin-guarded");
    setup_topic(&topic);
    let (_lake, url) = local_lake();
    let folder = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let rebuilt = test_module("features_rebuilt.wasm");
    std::fs::copy(&rebuilt, folder.path().join("rebuilt.wasm")).expect("copy");
    std::fs::copy(&rebuilt, outside.path().join("rebuilt.wasm")).expect("copy");
    std::os::unix::fs::symlink(outside.path().join("rebuilt.wasm"), folder.path().join("out.wasm")).expect("link");
    let modules_dir = folder.path().display().to_string();
    let port = free_loopback_addr().rsplit_once(':').expect("port").1.to_string();
    let wide = format!("0.0.0.0:{port}");
    let flags = ["--admin-listen", wide.as_str(), "--modules-dir", modules_dir.as_str()];
    let args = features_args(&topic, &url, &module("features"), &flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Without a token, beyond loopback is refused at start.
    let mut unguarded = spawn_sluice(&args, &[]);
    assert!(
        unguarded.wait_for("SLUICE_ADMIN_TOKEN", Duration::from_secs(60)),
        "{}",
        unguarded.log()
    );
    assert!(!unguarded.finish().0.success());

    let token = "token-of-the-admin-endpoint";
    let mut job = spawn_sluice(&args, &[("SLUICE_ADMIN_TOKEN", token)]);
    assert!(
        job.wait_for("admin endpoint listening", Duration::from_secs(60)),
        "{}",
        job.log()
    );
    let addr = format!("127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let get = |bearer: Option<&str>| {
        let mut request = client.get(format!("http://{addr}/module"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    assert_eq!(get(None).await.expect("GET").status().as_u16(), 401);
    assert_eq!(get(Some("wrong")).await.expect("GET").status().as_u16(), 401);
    assert_eq!(get(Some(token)).await.expect("GET").status().as_u16(), 200);
    assert_eq!(post_module(&addr, None, "rebuilt.wasm").await.0, 401);

    let missing_out_there = outside.path().join("missing.wasm").display().to_string();
    let existing_out_there = outside.path().join("rebuilt.wasm").display().to_string();
    let mut answers = Vec::new();
    for path in [
        "/etc/passwd",
        "../../../../etc/passwd",
        "out.wasm",
        missing_out_there.as_str(),
        existing_out_there.as_str(),
    ] {
        let (status, answer) = post_module(&addr, Some(token), path).await;
        assert_eq!(status, 422, "{path}: {answer}");
        let reason = answer["reason"].as_str().expect("reason").to_string();
        assert!(
            reason.contains("not a module inside the modules directory"),
            "{path}: {reason}"
        );
        assert!(!reason.contains("root:"), "{path}: {reason}");
        answers.push(reason.replace(path, "<path>"));
    }
    // A file out there that exists and one that does not get the same words.
    assert_eq!(answers[3], answers[4]);

    let (status, answer) = post_module(&addr, Some(token), "rebuilt.wasm").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["module"]["sha256"], file_sha256(&rebuilt).as_str());
    job.stop();
}

/// The embedded registry has no authentication: beyond loopback only when
/// asked for.
#[test]
fn the_embedded_registry_listens_beyond_loopback_only_when_allowed() {
    let data = tempfile::tempdir().expect("tempdir");
    let data_file = data.path().join("registry.json").display().to_string();
    let output = sluice_env(
        &["registry", "--listen", "0.0.0.0:0", "--data-file", &data_file],
        &[],
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loopback only") && stderr.contains("--registry-allow-remote"),
        "{stderr}"
    );
}

/// Readiness follows the assignment. Of two members of one group on a
/// one-partition topic, the one without the partition is not ready and says
/// why (nor is one still starting up); when the owner stops, the other takes
/// the partition over and is ready.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_assignment() {
    let topic = unique("ready");
    setup_topic_with(&topic, 1);
    let (_lake, url) = local_lake();
    let (first, first_admin) = spawn_features_with_admin(&topic, &url, &module("features"), &[]);
    let (second, second_admin) = spawn_features_with_admin(&topic, &url, &module("features"), &[]);

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (owner, idle, idle_admin) = loop {
        let (a, a_answer) = readiness(&first_admin).await;
        let (b, b_answer) = readiness(&second_admin).await;
        // Ready means holding the partition, from the first answer on (a
        // member still starting up is not ready either).
        for (status, answer) in [(a, &a_answer), (b, &b_answer)] {
            assert!(status != 200 || answer["assigned_partitions"] == 1, "{answer}");
        }
        match (a, b) {
            (200, 503) => break (first, second, (second_admin, b_answer)),
            (503, 200) => break (second, first, (first_admin, a_answer)),
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never one ready and one not: {a} {a_answer} / {b} {b_answer}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (idle_admin, idle_answer) = idle_admin;
    assert!(
        idle_answer["reasons"].to_string().contains("no partitions assigned"),
        "{idle_answer}"
    );
    assert_eq!(idle_answer["assigned_partitions"], 0, "{idle_answer}");

    owner.stop();
    loop {
        let (status, answer) = readiness(&idle_admin).await;
        if status == 200 {
            assert_eq!(answer["assigned_partitions"], 1, "{answer}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the remaining member never took the partition over: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    idle.stop();
}

async fn readiness(addr: &str) -> (u16, serde_json::Value) {
    let answer = reqwest::get(format!("http://{addr}/health/ready"))
        .await
        .expect("GET /health/ready");
    let status = answer.status().as_u16();
    (status, answer.json().await.expect("readiness JSON"))
}

/// A backfill serves metrics and health on its admin listener while it
/// works (here on a guest that never finishes a call, so that it stays busy).
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_serves_metrics_and_health() {
    let topic = unique("backfill-metrics");
    setup_topic(&topic);
    produce(&topic, 200, 0);
    let (_archive_dir, archive) = local_lake();
    run_job("backup", &topic, &archive, &[]);
    let (_output_dir, output) = local_lake();
    let admin = free_loopback_addr();
    let module = test_module("loop_forever.wasm");
    let mut backfill = spawn_sluice(
        &[
            "--topic",
            &topic,
            "backfill",
            "--module",
            &module,
            "--from",
            &archive,
            "--output-url",
            &output,
            "--guest-timeout-ms",
            "200",
            "--admin-listen",
            &admin,
        ],
        &[],
    );
    assert!(
        backfill.wait_for("admin endpoint listening", Duration::from_secs(60)),
        "{}",
        backfill.log()
    );
    let (status, _) = readiness(&admin).await;
    assert_eq!(status, 200, "a backfill has no partitions to wait for");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(&admin).await;
        if metric(
            &text,
            "sluice_guest_call_duration_seconds_count",
            &[r#"command="backfill""#],
        )
        .is_some_and(|n| n > 0.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no guest calls measured: {text}\n{}",
            backfill.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    backfill.kill();
}

/// The sum of a metric's samples in Prometheus text whose labels contain
/// every one of `labels` (`partition="0"`).
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
        if series_name != name || !labels.iter().all(|l| series_labels.contains(l)) {
            continue;
        }
        let value: f64 = value.parse().expect("a sample value");
        found = Some(found.unwrap_or(0.0) + value);
    }
    found
}

async fn scrape(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// A features job serves Prometheus metrics and liveness on its admin
/// listener: the counters move as records arrive, and the lag of every
/// partition reaches zero once it has caught up.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_and_lag_reaches_zero() {
    let topic = unique("metrics");
    setup_topic_with(&topic, 3);
    let (_lake, url) = local_lake();
    let first: Vec<_> = (0..300).map(|i| transaction(1 + (i % 11) as i32, i, 5.0)).collect();
    produce_transactions(&topic, &first).await;

    let (mut job, admin) = spawn_features_with_admin(&topic, &url, &module("features"), &["--roll-interval-ms", "500"]);
    let live = reqwest::get(format!("http://{admin}/health/live")).await.expect("live");
    assert_eq!(live.status().as_u16(), 200);

    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let caught_up = |text: &str, records: f64| {
        metric(text, "sluice_records_in_total", &[]).is_some_and(|n| n >= records)
            && (0..3).all(|p| metric(text, "sluice_lag_records", &[&format!("partition=\"{p}\"")]) == Some(0.0))
    };
    let mut text = scrape(&admin).await;
    while !caught_up(&text, 300.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "never caught up: {text}\n{}",
            job.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        text = scrape(&admin).await;
    }
    let ready = reqwest::get(format!("http://{admin}/health/ready"))
        .await
        .expect("ready");
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(metric(&text, "sluice_assigned_partitions", &[]), Some(3.0), "{text}");
    for (name, labels) in [
        ("sluice_bytes_in_total", vec![]),
        ("sluice_objects_written_total", vec![]),
        ("sluice_records_out_total", vec![r#"sink="parquet""#]),
        ("sluice_redis_writes_total", vec![]),
        ("sluice_checkpoints_written_total", vec![]),
        ("sluice_commits_total", vec![r#"result="done""#]),
        ("sluice_rebalances_total", vec![]),
        ("sluice_guest_call_duration_seconds_count", vec![]),
        ("sluice_batch_duration_seconds_count", vec![r#"path="realtime""#]),
    ] {
        assert!(metric(&text, name, &labels).is_some_and(|v| v > 0.0), "{name}: {text}");
    }
    assert!(text.contains(r#"command="features""#), "{text}");
    assert_eq!(metric(&text, "sluice_lag_seconds", &[]), Some(0.0), "{text}");

    // More records: the counters move on, and the lag returns to zero.
    let second: Vec<_> = (300..500).map(|i| transaction(1 + (i % 11) as i32, i, 5.0)).collect();
    produce_transactions(&topic, &second).await;
    while !caught_up(&text, 500.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "never caught up again: {text}\n{}",
            job.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        text = scrape(&admin).await;
    }
    job.stop();
}
