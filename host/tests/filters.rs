//! The backup job's filters: a module of either backup world
//! (`raw-batch-filter`, or the earlier `raw-filter`) sees each record's key,
//! value and headers as they were produced, and its verdicts decide what is
//! archived, what is dropped and what goes to the dead-letter topic.

mod common;

use std::collections::BTreeMap;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// What the test filters' rule (host/tests/guests/examples/filter_rule)
/// makes of one produced record.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Keep,
    Drop,
    Reject(String),
}

/// One record to produce: key, value and an optional header.
struct Produced {
    key: String,
    value: Vec<u8>,
    header: Option<(&'static str, &'static str)>,
}

async fn produce_with_headers(topic: &str, records: &[Produced]) {
    let args = kafka_args(topic);
    let credentials = args.admin_credentials().expect("admin credentials");
    let producer: FutureProducer = args
        .client_config(credentials.as_ref())
        .expect("client config")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer");
    for record in records {
        let mut message = FutureRecord::to(topic).key(&record.key).payload(&record.value);
        if let Some((name, value)) = record.header {
            message = message.headers(OwnedHeaders::new().insert(Header {
                key: name,
                value: Some(value),
            }));
        }
        producer
            .send(message, std::time::Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_of_both_backup_worlds_see_each_record_and_their_verdicts_decide_the_archive() {
    let topic = unique("filters");
    setup_topic(&topic);
    let id = registered_id(&topic).await;

    // Users 0..40, one transaction each, with currencies of different
    // lengths so values differ in size; every fifth record carries the
    // header that makes the filters reject it, every seventh another one.
    let mut records = Vec::new();
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    for user in 0..40 {
        let mut tx = transaction(user, i64::from(user), 1.5);
        tx.currency = "X".repeat(1 + user as usize % 9);
        let value = transaction_value(id, &tx);
        let key = user.to_string();
        let header = if user % 5 == 2 {
            Some(("sluice-test-reject", "told to"))
        } else if user % 7 == 3 {
            Some(("another-header", "kept as it is"))
        } else {
            None
        };
        let outcome = if header.is_some_and(|(name, _)| name == "sluice-test-reject") {
            Expected::Reject(format!("told to: key {key}, a value of {} bytes", value.len()))
        } else if user % 2 == 1 {
            Expected::Drop
        } else {
            Expected::Keep
        };
        expected.insert(key.clone(), outcome);
        records.push(Produced { key, value, header });
    }
    produce_with_headers(&topic, &records).await;
    let count = |wanted: fn(&Expected) -> bool| expected.values().filter(|e| wanted(e)).count();
    let kept = count(|e| *e == Expected::Keep);
    let dropped = count(|e| *e == Expected::Drop);
    let rejected = count(|e| matches!(e, Expected::Reject(_)));
    assert!(kept > 0 && dropped > 0 && rejected > 0);

    let modules = ["filter_batch.wasm", "filter_records.wasm"];
    for module in modules {
        let (_lake, url) = local_lake();
        let group = unique("filters-group");
        let module = test_module(module);
        let dlq = format!("{topic}-dlq");
        let stdout = sluice_ok(&[
            "--topic",
            &topic,
            "--dlq-topic",
            &dlq,
            "run",
            "--job",
            "backup",
            "--module",
            &module,
            "--group",
            &group,
            "--output-url",
            &url,
            "--until-caught-up",
        ]);
        let report = report(&stdout);
        assert_eq!(report["archived"], kept as u64, "{module}: {report}");
        assert_eq!(report["dropped"], dropped as u64, "{module}: {report}");
        assert_eq!(report["dead_lettered"], rejected as u64, "{module}: {report}");

        // The archive holds exactly the kept users.
        let storage = storage_args(&url).open().expect("storage");
        let mut archived_users = Vec::new();
        for (_, batch) in read_dataset(&storage, &topic).await {
            let users = batch
                .column_by_name("user_id")
                .expect("user_id column")
                .as_any()
                .downcast_ref::<arrow_array::Int32Array>()
                .expect("int column")
                .clone();
            archived_users.extend(users.iter().flatten().map(|u| u.to_string()));
        }
        archived_users.sort();
        let mut kept_users: Vec<String> = expected
            .iter()
            .filter(|(_, e)| **e == Expected::Keep)
            .map(|(k, _)| k.clone())
            .collect();
        kept_users.sort();
        assert_eq!(archived_users, kept_users, "{module}");
    }

    // Each module dead-lettered every rejected record once, with the reason
    // it gave: the header's value, the key and the value's length.
    let letters = read_topic(&format!("{topic}-dlq"));
    assert_eq!(letters.len(), modules.len() * rejected);
    for letter in &letters {
        let key = String::from_utf8(letter.key.clone().expect("key")).expect("text key");
        let Some(Expected::Reject(reason)) = expected.get(&key) else {
            panic!("record of key {key} was dead-lettered: {:?}", letter.headers);
        };
        assert_eq!(
            letter.headers.get("sluice.reason"),
            Some(&format!("rejected by guest: {reason}"))
        );
    }
}
