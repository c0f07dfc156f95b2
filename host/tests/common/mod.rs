//! Shared plumbing of the integration tests: they run the real `sluice`
//! binary against the real services `make services` starts (dev.env), and
//! read results back straight from Kafka, object storage and Redis.
#![allow(dead_code)]

pub mod redis_server;
pub mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice::config::{KafkaArgs, Storage, StorageArgs};

/// Fails loudly when the services' environment is missing: these tests are
/// meant to run through `make test`, never to pass vacuously.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test` (it loads dev.env)"))
}

pub fn modules_dir() -> PathBuf {
    PathBuf::from(env("SLUICE_TEST_MODULES"))
}

pub fn module(name: &str) -> String {
    let path = modules_dir().join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} missing: `make guests` builds it", path.display());
    path.display().to_string()
}

/// A name no other test run uses, for topics, groups and prefixes.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// Objects roll after a second in the tests (`--roll-interval-ms`, through
/// its variable, so a test's own flag still wins): every test's jobs commit
/// soon after records arrive, as the delivery tests need.
pub const ROLL_INTERVAL_MS: &str = "1000";

/// The sluice binary, with the tests' roll interval.
fn sluice_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env("SLUICE_ROLL_INTERVAL_MS", ROLL_INTERVAL_MS);
    command
}

/// Runs the sluice binary with the services' environment.
pub fn sluice(args: &[&str]) -> Output {
    let output = sluice_command().args(args).output().expect("run sluice");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A guest's panic is reported in the log (after "the guest wrote:"); the
    // host's own must never happen.
    let host_panicked = stderr
        .lines()
        .any(|l| l.contains("panicked") && !l.contains("the guest wrote:"));
    assert!(!host_panicked, "sluice panicked: {stderr}");
    output
}

/// Runs sluice with `set` added to and `unset` removed from the services'
/// environment, whatever its outcome.
pub fn sluice_env(args: &[&str], set: &[(&str, &str)], unset: &[&str]) -> Output {
    let mut command = sluice_command();
    for var in unset {
        command.env_remove(var);
    }
    command.envs(set.iter().copied()).args(args);
    command.output().expect("run sluice")
}

/// Runs sluice and insists it succeeded; returns stdout.
pub fn sluice_ok(args: &[&str]) -> String {
    let output = sluice(args);
    assert!(
        output.status.success(),
        "sluice {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The last stdout line of a job, parsed as its JSON report.
pub fn report(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("a report line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("report {line:?}: {e}"))
}

pub fn kafka_args(topic: &str) -> KafkaArgs {
    KafkaArgs {
        brokers: env("SLUICE_BROKERS"),
        security_protocol: sluice::config::SecurityProtocol::SaslPlaintext,
        kafka_ca_file: None,
        kafka_cert_file: None,
        kafka_key_file: None,
        kafka_verify_hostname: true,
        kafka_user: None,
        sasl_mechanism: "SCRAM-SHA-512".into(),
        topic: topic.into(),
        dlq_topic: format!("{topic}-dlq"),
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
    /// The record's timestamp (the producer's clock when it sent it).
    pub timestamp_millis: Option<i64>,
}

/// Every record of a topic, read as the admin user from each partition's
/// start to its high watermark.
pub fn read_topic(topic: &str) -> Vec<Record> {
    let args = kafka_args(topic);
    let credentials = args.admin_credentials().expect("admin credentials");
    let mut config = args.client_config(credentials.as_ref()).expect("client config");
    config
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().expect("consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut ends = HashMap::new();
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).expect("watermarks");
        if high > low {
            ends.insert(p, high);
            list.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("offset");
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&list).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out; left: {ends:?}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("message");
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_millis: message.timestamp().to_millis(),
        });
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
    }
    records
}

/// Storage settings for a `file://` or `s3://` URL, S3 from the environment.
pub fn storage_args(url: &str) -> StorageArgs {
    StorageArgs {
        output_url: url.into(),
        s3_endpoint: std::env::var("SLUICE_S3_ENDPOINT").ok(),
        s3_path_style: true,
        s3_region: None,
        s3_ca_file: None,
    }
}

/// Every object under `relative` (a folder under the storage root), with
/// its bytes.
pub async fn read_objects(storage: &Storage, relative: &str) -> Vec<(String, bytes::Bytes)> {
    let prefix = storage.path(relative);
    let objects: Vec<_> = storage.store.list(Some(&prefix)).try_collect().await.expect("list");
    let mut read = Vec::new();
    for object in objects {
        let bytes = storage
            .store
            .get(&object.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        read.push((object.location.to_string(), bytes));
    }
    read
}

/// Every Parquet object of a dataset, with its path, read back.
pub async fn read_dataset(storage: &Storage, dataset: &str) -> Vec<(String, RecordBatch)> {
    let mut batches = Vec::new();
    for (location, bytes) in read_objects(storage, dataset).await {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader");
        for batch in reader {
            batches.push((location.clone(), batch.expect("batch")));
        }
    }
    batches
}

/// How many rows the archive of `topic` under `url` holds.
pub async fn archived_rows(url: &str, topic: &str) -> usize {
    let storage = storage_args(url).open().expect("storage");
    read_dataset(&storage, topic)
        .await
        .iter()
        .map(|(_, b)| b.num_rows())
        .sum()
}

/// The event dates of the archive of `topic` under `url`: its
/// `event_date=` folders.
pub async fn archive_dates(url: &str, topic: &str) -> std::collections::BTreeSet<String> {
    let storage = storage_args(url).open().expect("storage");
    read_objects(&storage, topic)
        .await
        .iter()
        .filter_map(|(path, _)| Some(path.split("/event_date=").nth(1)?.split('/').next()?.to_string()))
        .collect()
}

pub async fn redis() -> redis::aio::MultiplexedConnection {
    // The machine's Redis is shared by every test at once: a `KEYS` may wait
    // behind others' writes longer than the client's default timeout.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(env("SLUICE_REDIS_URL"))
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis")
}

/// Produces raw (key, value) records as the admin user, partitioned with
/// murmur2 as sluice's producer does, and waits for them.
pub async fn produce_raw(topic: &str, records: &[(String, Vec<u8>)]) {
    produce_raw_with(topic, records, "murmur2_random").await;
}

/// Produces raw (key, value) records with a given librdkafka `partitioner`,
/// all queued at once, then waits until the broker has every one.
pub async fn produce_raw_with(topic: &str, records: &[(String, Vec<u8>)], partitioner: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let args = kafka_args(topic);
    let credentials = args.admin_credentials().expect("admin credentials");
    let producer: FutureProducer = args
        .client_config(credentials.as_ref())
        .expect("client config")
        .set("partitioner", partitioner)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let deliveries: Vec<_> = records
        .iter()
        .map(|(key, value)| {
            producer
                .send_result(FutureRecord::to(topic).key(key).payload(value))
                .map_err(|(e, _)| e)
                .expect("queued")
        })
        .collect();
    for delivery in futures::future::join_all(deliveries).await {
        delivery.expect("delivery").map_err(|(e, _)| e).expect("delivered");
    }
}

/// A transaction as the registered schema `id` frames it on the topic.
pub fn transaction_value(id: u32, transaction: &sluice::model::Transaction) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(sluice::model::TRANSACTION_SCHEMA).expect("schema");
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer")
        .write_ser_to_vec(transaction)
        .expect("avro");
    framed(id, body)
}

/// Confluent framing: magic byte, 4-byte big-endian schema id, Avro body.
pub fn framed(schema_id: u32, body: Vec<u8>) -> Vec<u8> {
    let mut value = vec![0u8];
    value.extend_from_slice(&schema_id.to_be_bytes());
    value.extend(body);
    value
}

/// The arguments that run a consumer job to the end of the topic in group
/// `<topic>-<job>`.
pub fn job_run_args(job: &str, topic: &str, output_url: &str, extra: &[&str]) -> Vec<String> {
    let mut args = run_args(job, &module(job), topic, output_url, &["--until-caught-up"]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The arguments of a consumer job with `module`, in group `<topic>-<job>`,
/// with its own dead-letter topic and (features) Redis prefix.
fn run_args(job: &str, module: &str, topic: &str, output_url: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--topic",
        topic,
        "--dlq-topic",
        &format!("{topic}-dlq"),
        "run",
        "--job",
        job,
        "--module",
        module,
        "--group",
        &format!("{topic}-{job}"),
        "--output-url",
        output_url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if job == "features" {
        args.extend(["--redis-prefix".into(), format!("sluice:test:{topic}")]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs a consumer job to the end of the topic in group `<topic>-<job>`,
/// whatever its outcome.
pub fn run_job_output(job: &str, topic: &str, output_url: &str, extra: &[&str]) -> Output {
    let args = job_run_args(job, topic, output_url, extra);
    sluice(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Runs a consumer job to the end of the topic, insists it succeeded and
/// returns its report.
pub fn run_job(job: &str, topic: &str, output_url: &str, extra: &[&str]) -> serde_json::Value {
    let output = run_job_output(job, topic, output_url, extra);
    assert!(
        output.status.success(),
        "{job} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    report(&String::from_utf8_lossy(&output.stdout))
}

/// `sluice setup` for a test topic with its own dead-letter topic.
pub fn setup_topic(topic: &str) {
    setup_topic_with(topic, 2);
}

/// `sluice setup` for a test topic of `partitions` partitions with its own
/// dead-letter topic `<topic>-dlq`.
pub fn setup_topic_with(topic: &str, partitions: u32) {
    let dlq = format!("{topic}-dlq");
    let partitions = partitions.to_string();
    sluice_ok(&[
        "--topic",
        topic,
        "--dlq-topic",
        &dlq,
        "setup",
        "--partitions",
        &partitions,
    ]);
}

/// A fresh `file://` lake: the directory (deleted when dropped) and its URL.
pub fn local_lake() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    (dir, url)
}

/// The id of the latest value schema registered for `topic`.
pub async fn registered_id(topic: &str) -> u32 {
    let registry = sluice::registry::Registry::new(&env("SLUICE_REGISTRY_URL"), None).expect("registry");
    registry
        .latest(&sluice::model::value_subject(topic))
        .await
        .expect("registered")
        .id
}

/// A sluice process running in the background, its stderr read line by line.
pub struct Running {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

/// Starts sluice in the background with extra environment variables.
pub fn spawn_sluice(args: &[&str], envs: &[(&str, &str)]) -> Running {
    use std::io::BufRead;
    let mut child = sluice_command()
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        stderr: Vec::new(),
    }
}

impl Running {
    /// Waits until stderr shows `needle`; false if the process ended or
    /// `timeout` passed first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// SIGKILL: no flush, no commit, no goodbye to the group.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, then the exit status and stdout.
    pub fn terminate(self) -> (std::process::ExitStatus, String) {
        signal(self.child.id(), "TERM");
        let output = self.child.wait_with_output().expect("wait");
        (output.status, String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// SIGTERM, and the exit must be clean: its stdout, or a panic naming
    /// the exit status and everything the process logged.
    pub fn stop(mut self) -> String {
        signal(self.child.id(), "TERM");
        let output = self.child.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            // The reader thread ends with the process; take every line it read.
            self.stderr.extend(self.lines.iter());
            panic!("{} after SIGTERM\n{}\n{stdout}", output.status, self.stderr.join("\n"));
        }
        stdout
    }

    /// Waits for the process to end by itself: its exit status and stdout.
    pub fn finish(self) -> (std::process::ExitStatus, String) {
        let output = self.child.wait_with_output().expect("wait");
        (output.status, String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The stderr read so far, for failure messages.
    pub fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.stderr.push(line);
        }
        self.stderr.join("\n")
    }
}

/// The producer guest making records `first_index..first_index + count` of
/// the default seed, as fast as the broker takes them; asserts they all went.
pub fn produce(topic: &str, count: u64, first_index: u64) {
    produce_with(topic, count, first_index, &[]);
}

/// `produce` with more flags (`--start-millis`, say).
pub fn produce_with(topic: &str, count: u64, first_index: u64, extra: &[&str]) {
    let (module, n, first) = (module("producer"), count.to_string(), first_index.to_string());
    let mut args = vec![
        "--topic",
        topic,
        "produce",
        "--module",
        &module,
        "--count",
        &n,
        "--first-index",
        &first,
    ];
    args.extend_from_slice(extra);
    let stdout = sluice_ok(&args);
    assert_eq!(report(&stdout)["produced"], count);
}

/// The producer guest making `count` records at `rate` per second, in the
/// background.
pub fn spawn_producer(topic: &str, count: u64, rate: u32) -> Running {
    let (module, count, rate) = (module("producer"), count.to_string(), rate.to_string());
    spawn_sluice(
        &[
            "--topic", topic, "produce", "--module", &module, "--count", &count, "--rate", &rate,
        ],
        &[],
    )
}

/// Arguments of a long-running consumer job (no --until-caught-up).
pub fn job_args(job: &str, topic: &str, group: &str, output_url: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--topic",
        topic,
        "--dlq-topic",
        &format!("{topic}-dlq"),
        "run",
        "--job",
        job,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--module".into(),
        module(job),
        "--group".into(),
        group.into(),
        "--output-url".into(),
        output_url.into(),
    ]);
    args.extend([
        "--max-wait-ms".into(),
        "500".into(),
        "--session-timeout-ms".into(),
        "6000".into(),
    ]);
    if job == "features" {
        args.extend(["--redis-prefix".into(), format!("sluice:test:{topic}")]);
    }
    args
}

/// The partitions of `topic` that `group` has not committed up to their
/// high watermark, as (partition, committed, high watermark).
pub fn group_lag(topic: &str, group: &str) -> Vec<(i32, i64, i64)> {
    let args = kafka_args(topic);
    let credentials = args.admin_credentials().expect("admin credentials");
    let mut config = args.client_config(credentials.as_ref()).expect("client config");
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed");
    partitions
        .iter()
        .filter_map(|&p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            (at < high).then_some((p, at, high))
        })
        .collect()
}

/// Waits until `group` has committed every partition of `topic` up to its
/// high watermark.
pub fn wait_group_caught_up(topic: &str, group: &str, timeout: Duration) {
    if let Err(behind) = group_caught_up_within(topic, group, timeout) {
        panic!("group {group} still behind: {behind:?}");
    }
}

/// As `wait_group_caught_up`, but says how far behind the group still is
/// when `timeout` passed, for a test that has logs to show with it.
pub fn group_caught_up_within(topic: &str, group: &str, timeout: Duration) -> Result<(), Vec<(i32, i64, i64)>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let behind = group_lag(topic, group);
        if behind.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(behind);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Sends a signal (`STOP`, `CONT`, `TERM`…) to a process.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Deletes a partition's records below `offset`, as retention would.
pub async fn delete_records_below(topic: &str, partition: i32, offset: i64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let args = kafka_args(topic);
    let credentials = args.admin_credentials().expect("admin credentials");
    let admin: AdminClient<DefaultClientContext> = args
        .client_config(credentials.as_ref())
        .expect("client config")
        .create()
        .expect("admin");
    let mut cut = TopicPartitionList::new();
    cut.add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("offset");
    admin
        .delete_records(&cut, &AdminOptions::new())
        .await
        .expect("delete records");
}

/// A test-only guest built by `make test-guests` (host/tests/guests).
pub fn test_module(file: &str) -> String {
    let path = modules_dir().join("test").join(file);
    assert!(
        path.is_file(),
        "{} missing: `make test-guests` builds it",
        path.display()
    );
    path.display().to_string()
}

/// Produces transactions keyed by user id (murmur2), framed with the
/// topic's registered schema, and waits for them.
pub async fn produce_transactions(topic: &str, transactions: &[sluice::model::Transaction]) {
    let id = registered_id(topic).await;
    let records: Vec<(String, Vec<u8>)> = transactions
        .iter()
        .map(|tx| (tx.user_id.to_string(), transaction_value(id, tx)))
        .collect();
    produce_raw(topic, &records).await;
}

/// A transaction of `user_id` with its index as time and counterpart.
pub fn transaction(user_id: i32, index: i64, amount: f32) -> sluice::model::Transaction {
    sluice::model::Transaction {
        user_id,
        transaction_timestamp_millis: 1_700_000_000_000 + index,
        amount,
        currency: "EUR".into(),
        counterpart_id: index as i32,
    }
}

/// The arguments of a features job with its own module, in group
/// `<topic>-features`.
pub fn features_args(topic: &str, output_url: &str, module: &str, extra: &[&str]) -> Vec<String> {
    run_args("features", module, topic, output_url, extra)
}

/// A features job with `module` and an admin endpoint, running in the
/// background once the endpoint listens: the process and the address.
pub fn spawn_features_with_admin(topic: &str, output_url: &str, module: &str, extra: &[&str]) -> (Running, String) {
    let admin = free_loopback_addr();
    let mut flags = vec!["--admin-listen", &admin];
    flags.extend_from_slice(extra);
    let args = features_args(topic, output_url, module, &flags);
    let mut job = spawn_sluice(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(
        job.wait_for("admin endpoint listening", Duration::from_secs(60)),
        "{}",
        job.log()
    );
    (job, admin)
}

/// A loopback address nobody listens on right now.
pub fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// `GET /module` of a job's admin endpoint, once it answers.
pub async fn admin_status(addr: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match reqwest::get(format!("http://{addr}/module")).await {
            Ok(response) => return response.json().await.expect("status JSON"),
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "admin endpoint {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `POST /module` with `{"path": module}`: the HTTP status and the answer.
pub async fn admin_swap(addr: &str, module: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/module"))
        .json(&serde_json::json!({ "path": module }))
        .send()
        .await
        .expect("POST /module");
    let status = response.status().as_u16();
    (status, response.json().await.expect("answer JSON"))
}

/// Waits until the job's active module is `sha256` and it has processed
/// records (it took over on some partition).
pub async fn wait_active(addr: &str, sha256: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = admin_status(addr).await;
        let took_over = status["swaps"]
            .as_array()
            .and_then(|s| s.last())
            .is_some_and(|s| s["took_over"].as_object().is_some_and(|t| !t.is_empty()));
        if status["active"]["sha256"] == sha256 && took_over {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sha256} never took over: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sha256 of a file, hex.
pub fn file_sha256(path: &str) -> String {
    // coreutils', not sluice's: the check must not share the code it checks.
    let output = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

/// Each features object's (partition, first offset, module sha256), from
/// its name and key-value metadata.
pub async fn feature_object_modules(url: &str) -> Vec<(i32, i64, String)> {
    let storage = storage_args(url).open().expect("storage");
    let mut objects = Vec::new();
    for (path, bytes) in read_objects(&storage, sluice::jobs::features::DATASET).await {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet");
        let sha = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| e.key == "sluice.module_sha256"))
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("{path} names no module"));
        let name = path
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".parquet"))
            .expect("name");
        let mut parts = name.rsplitn(3, '+');
        let first: i64 = parts.next().and_then(|o| o.parse().ok()).expect("first offset");
        let partition: i32 = parts.next().and_then(|p| p.parse().ok()).expect("partition");
        objects.push((partition, first, sha));
    }
    objects.sort();
    objects
}
