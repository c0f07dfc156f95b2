//! `sluice setup` is idempotent: the second run finds everything in place,
//! creates no topic and no schema version.

mod common;

use common::*;
use sluice::registry::Registry;

#[tokio::test(flavor = "multi_thread")]
async fn setup_twice_succeeds_and_changes_nothing() {
    let topic = unique("setup");
    let dlq = format!("{topic}-dlq");
    let first = sluice_ok(&["--topic", &topic, "--dlq-topic", &dlq, "setup", "--partitions", "4"]);
    assert!(
        first.contains(&format!(
            "topic {topic}: created with 4 partitions, retention.ms=86400000"
        )),
        "{first}"
    );
    assert!(
        first.contains("user transactions-backup-job-user: SCRAM credentials set"),
        "{first}"
    );
    assert!(
        first.contains("user transactions-ml-features-job-user: SCRAM credentials set"),
        "{first}"
    );
    assert!(first.contains("acls:"), "{first}");

    let registry = Registry::new(&env("SLUICE_REGISTRY_URL"), None).expect("registry");
    let subject = sluice::model::value_subject(&topic);
    let before = registry.latest(&subject).await.expect("registered");

    // Again, granting the features user a second group (a hand-off's).
    let second = sluice_ok(&[
        "--topic",
        &topic,
        "--dlq-topic",
        &dlq,
        "setup",
        "--partitions",
        "4",
        "--features-group",
        "transactions-ml-features-job",
        "--features-group",
        "features-v2",
    ]);
    assert!(
        second.contains("transactions-ml-features-job-user may use groups transactions-ml-features-job, features-v2"),
        "{second}"
    );
    assert!(second.contains("11 ACLs"), "{second}");
    assert!(
        second.contains(&format!("topic {topic}: exists (4 partitions)")),
        "{second}"
    );
    assert!(
        second.contains(&format!("topic {dlq}: exists (1 partitions)")),
        "{second}"
    );
    let after = registry.latest(&subject).await.expect("registered");
    assert_eq!(
        (before.id, before.version),
        (after.id, after.version),
        "no new schema version"
    );

    // The job users authenticate with the passwords setup gave them.
    let args = kafka_args(&topic);
    let credentials = args
        .credentials("transactions-backup-job-user", "SLUICE_BACKUP_JOB_PASSWORD")
        .expect("password in dev.env");
    let consumer: rdkafka::consumer::BaseConsumer = args
        .client_config(credentials.as_ref())
        .expect("client config")
        .create()
        .expect("client");
    let metadata =
        rdkafka::consumer::Consumer::fetch_metadata(&consumer, Some(&topic), std::time::Duration::from_secs(10))
            .expect("the backup user can read metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 4);
}
