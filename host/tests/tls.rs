//! TLS to Kafka and Redis. The pipeline runs end to end against the TLS
//! broker of scripts/services.sh (SASL_SSL, SCRAM over TLS) and a Redis
//! that speaks only TLS, both with certificates that a certificate
//! authority of this checkout signed (.sluice/tls/ca.pem, made by
//! `services.sh up`); a broker certificate that another authority signed is
//! refused, and the job says so.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use redis::AsyncCommands;

/// The certificates `services.sh up` made (`ca.pem`, `server.pem`,
/// `server.key`).
fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.sluice/tls")
}

/// Flags that reach the TLS broker with SASL_SSL, trusting `ca_file`.
fn tls_kafka(ca_file: &str) -> Vec<String> {
    [
        "--brokers",
        &env("SLUICE_TEST_TLS_BROKERS"),
        "--security-protocol",
        "sasl_ssl",
        "--kafka-ca-file",
        ca_file,
    ]
    .map(String::from)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_over_tls_to_kafka_and_redis() {
    const RECORDS: u64 = 400;
    let ca = tls_dir().join("ca.pem").display().to_string();
    let kafka = tls_kafka(&ca);
    let topic = unique("tls");
    let dlq = format!("{topic}-dlq");
    let setup = [
        &[
            "--topic",
            topic.as_str(),
            "--dlq-topic",
            &dlq,
            "setup",
            "--partitions",
            "2",
        ][..],
        &strs(&kafka),
    ]
    .concat();
    let output = sluice_ok(&setup);
    assert!(output.contains(&topic), "{output}");
    produce_with(&topic, RECORDS, 0, &strs(&kafka));

    let (_lake, url) = local_lake();
    let backup = run_job("backup", &topic, &url, &strs(&kafka));
    assert_eq!(backup["archived"], RECORDS, "{backup}");
    assert_eq!(archived_rows(&url, &topic).await as u64, RECORDS);

    let redis = RedisServer::start_tls(&tls_dir());
    let redis_url = redis.url();
    assert!(redis_url.starts_with("rediss://"), "{redis_url}");
    let mut features_flags = kafka.clone();
    features_flags.extend(["--redis-url", &redis_url, "--redis-ca-file", &ca].map(String::from));
    let features = run_job("features", &topic, &url, &strs(&features_flags));
    assert_eq!(features["features"], RECORDS, "{features}");

    // Redis, read over TLS, holds every user's count of the archive.
    let expected = common::verify::archived_counts(&url, &topic).await;
    let mut connection = redis.connection().await;
    for (user, count) in &expected {
        let stored: Option<i64> = connection
            .hget(format!("sluice:test:{topic}:user:{user}"), "total_transactions_count")
            .await
            .expect("hget");
        assert_eq!(stored, Some(*count), "user {user}");
    }
    let keys: Vec<String> = connection
        .keys(format!("sluice:test:{topic}:user:*"))
        .await
        .expect("keys");
    assert_eq!(keys.len(), expected.len());
}

/// A broker certificate that the authority given did not sign: the job
/// stops at once and says it is the certificate, and a Redis whose
/// certificate is not trusted is not written to either.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_another_authority_signed_is_refused() {
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = other.path().join("ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=another CA",
        ])
        .arg("-keyout")
        .arg(other.path().join("ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let other_ca = other_ca.display().to_string();

    let (_lake, url) = local_lake();
    let topic = unique("tls-refused");
    // The topic's schema is in the registry; the broker is never reached.
    setup_topic(&topic);
    let started = std::time::Instant::now();
    let output = run_job_output("backup", &topic, &url, &strs(&tls_kafka(&other_ca)));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("TLS certificate was not accepted") && stderr.contains("certificate verify failed"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}:\n{stderr}",
        started.elapsed()
    );

    let redis = RedisServer::start_tls(&tls_dir());
    let output = sluice(&[
        "republish",
        "--output-url",
        &url,
        "--redis-url",
        &redis.url(),
        "--redis-ca-file",
        &other_ca,
        "--redis-patience-ms",
        "1000",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&redis.url()) && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
}
