//! Schema evolution: a v2 transaction schema that adds an optional field
//! registers, an incompatible one is refused with a clear message, and both
//! jobs keep running on a mix of v1 and v2 records; the archive keeps the
//! new field.

mod common;

use std::collections::BTreeMap;

use apache_avro::types::Value;
use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use common::*;
use redis::AsyncCommands;
use sluice::registry::Registry;

const V2: &str = include_str!("../../schemas/examples/transaction_v2.avsc");
const INCOMPATIBLE: &str = include_str!("../../schemas/examples/transaction_incompatible.avsc");

fn v2_value(user: i32, i: i64) -> Value {
    Value::Record(vec![
        ("user_id".into(), Value::Int(user)),
        (
            "transaction_timestamp_millis".into(),
            Value::Long(1_800_000_000_000 + i),
        ),
        ("amount".into(), Value::Float(-(i as f32))),
        ("currency".into(), Value::String("EUR".into())),
        ("counterpart_id".into(), Value::Int(1_000_001)),
        (
            "merchant_category".into(),
            Value::Union(1, Box::new(Value::String(format!("mcc-{}", i % 7)))),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_and_v2_records_flow_through_both_jobs() {
    let topic = unique("evolution");
    setup_topic(&topic);
    let registry = Registry::new(&env("SLUICE_REGISTRY_URL"), None).expect("registry");
    let subject = sluice::model::value_subject(&topic);

    let refused = registry
        .register(&subject, INCOMPATIBLE)
        .await
        .expect_err("incompatible schema refused");
    let message = refused.to_string();
    assert!(
        message.contains("channel") || message.to_lowercase().contains("incompatible"),
        "clear refusal: {message}"
    );

    produce(&topic, 500, 0);
    let v2 = registry.register(&subject, V2).await.expect("v2 registers");
    let schema = apache_avro::Schema::parse_str(V2).expect("v2");
    let records: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            let user = 1 + (i % 5) as i32;
            let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                .build()
                .expect("writer")
                .write_value_to_vec(v2_value(user, i))
                .expect("encode");
            (user.to_string(), framed(v2.id, body))
        })
        .collect();
    produce_raw(&topic, &records).await;
    // The producer writes v1 again after v2 exists, as an old client would.
    produce(&topic, 500, 500);

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    let backup = run_job("backup", &topic, &url, &[]);
    assert_eq!(backup["archived"], 1300, "{backup}");
    let features = run_job("features", &topic, &url, &[]);
    assert_eq!(features["features"], 1300, "{features}");

    let storage = storage_args(&url).open().expect("storage");
    let archive = read_dataset(&storage, &topic).await;
    let (mut with_category, mut without) = (0, 0);
    for (_, batch) in &archive {
        let category = batch
            .column_by_name("merchant_category")
            .expect("archive keeps the v2 field")
            .as_string::<i32>();
        for i in 0..batch.num_rows() {
            if category.is_null(i) {
                without += 1;
            } else {
                assert!(category.value(i).starts_with("mcc-"));
                with_category += 1;
            }
        }
    }
    assert_eq!((with_category, without), (300, 1000));

    // Counts cover v1 and v2 records alike.
    let mut counts: BTreeMap<i32, i64> = BTreeMap::new();
    for (_, batch) in &archive {
        for user in batch
            .column_by_name("user_id")
            .expect("user_id")
            .as_primitive::<Int32Type>()
            .values()
        {
            *counts.entry(*user).or_default() += 1;
        }
    }
    let mut redis = redis().await;
    for (user, count) in counts {
        let stored: Option<i64> = redis
            .hget(format!("sluice:test:{topic}:user:{user}"), "total_transactions_count")
            .await
            .expect("hget");
        assert_eq!(stored, Some(count), "user {user}");
    }
}
