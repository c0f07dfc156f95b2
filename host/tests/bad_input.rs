//! Bad input gets a clear error and loses nothing else: malformed records
//! go to the dead-letter topic with the reason, good ones are processed;
//! a missing module or a file that is not a component is refused plainly.

mod common;

use std::collections::BTreeMap;

use common::*;
use redis::AsyncCommands;
use sluice::registry::Registry;

#[tokio::test(flavor = "multi_thread")]
async fn malformed_records_go_to_the_dead_letter_topic_and_the_rest_flows() {
    let topic = unique("bad-input");
    setup_topic(&topic);
    let registry = Registry::new(&env("SLUICE_REGISTRY_URL"), None).expect("registry");
    let subject = sluice::model::value_subject(&topic);
    let id = registry.latest(&subject).await.expect("v1 registered").id;
    let schema = apache_avro::Schema::parse_str(sluice::model::TRANSACTION_SCHEMA).expect("schema");

    let mut records = Vec::new();
    let mut good: BTreeMap<i32, i64> = BTreeMap::new();
    for i in 0..200 {
        let user = 1 + i % 4;
        let value = sluice::model::Transaction {
            user_id: user,
            transaction_timestamp_millis: 1_700_000_000_000 + i64::from(i),
            amount: 10.0,
            currency: "EUR".into(),
            counterpart_id: 5,
        };
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .expect("writer")
            .write_ser_to_vec(&value)
            .expect("avro");
        records.push((user.to_string(), framed(id, body)));
        *good.entry(user).or_default() += 1;
        match i % 50 {
            10 => records.push((user.to_string(), b"{\"user_id\": 1}".to_vec())), // JSON, not Avro
            20 => records.push((user.to_string(), framed(999_999, vec![2, 4, 6]))), // unknown schema id
            30 => records.push((user.to_string(), framed(id, vec![0xff]))),       // truncated Avro body
            _ => {}
        }
    }
    let bad = records.len() - 200;
    produce_raw(&topic, &records).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let backup = run_job("backup", &topic, &url, &[]);
    assert_eq!(backup["archived"], 200, "{backup}");
    assert_eq!(backup["dead_lettered"], bad as u64);
    let features = run_job("features", &topic, &url, &[]);
    assert_eq!(features["features"], 200, "{features}");
    assert_eq!(features["dead_lettered"], bad as u64);

    let mut redis = redis().await;
    for (user, count) in good {
        let stored: Option<i64> = redis
            .hget(format!("sluice:test:{topic}:user:{user}"), "total_transactions_count")
            .await
            .expect("hget");
        assert_eq!(stored, Some(count));
    }

    // Each job dead-lettered every bad record once, with its reason and origin.
    let letters = read_topic(&format!("{topic}-dlq"));
    assert_eq!(letters.len(), 2 * bad);
    for job in [sluice::jobs::backup::JOB, sluice::jobs::features::JOB] {
        let mine: Vec<_> = letters
            .iter()
            .filter(|r| r.headers.get("sluice.job").map(String::as_str) == Some(job))
            .collect();
        assert_eq!(mine.len(), bad, "{job}");
        for letter in mine {
            assert_eq!(letter.headers.get("sluice.source.topic"), Some(&topic));
            assert!(letter.headers.contains_key("sluice.source.partition"));
            assert!(letter.headers.contains_key("sluice.source.offset"));
            let reason = &letter.headers["sluice.reason"];
            assert!(
                reason.contains("not Confluent-framed")
                    || reason.contains("unknown schema id 999999")
                    || reason.contains("does not match writer schema"),
                "reason: {reason}"
            );
        }
    }
}

/// A module problem stops the job before it reads anything, with a message
/// that names the file and what is wrong.
#[test]
fn bad_modules_are_refused_with_a_clear_error() {
    let topic = unique("bad-module");
    let dir = tempfile::tempdir().expect("tempdir");
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, b"this is not WebAssembly").expect("write");
    let core_module = dir.path().join("core.wasm");
    // The smallest core module: a module, not a component.
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").expect("write");
    let missing = dir.path().join("missing.wasm");
    let producer = module("producer");
    // A module that fails the probe call cannot start a job either.
    let always_fails = test_module("always_fails.wasm");
    let cases = [
        (missing.display().to_string(), "file not found"),
        (not_wasm.display().to_string(), "does not compile"),
        (core_module.display().to_string(), "is not a WebAssembly component"),
        (producer, "does not implement world `features-columns`"),
        (always_fails, "refuses every batch"),
    ];
    let url = format!("file://{}", dir.path().display());
    for (path, expected) in cases {
        let output = sluice(&[
            "--topic",
            &topic,
            "run",
            "--job",
            "features",
            "--module",
            &path,
            "--output-url",
            &url,
            "--until-caught-up",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{path} accepted");
        assert!(stderr.contains(expected) && stderr.contains(&path), "{path}: {stderr}");
    }
}
