//! transactions-producer: fake transactions from the generator guest,
//! encoded as Confluent-framed Avro and produced keyed by user_id.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use serde::Serialize;

use crate::config::KafkaArgs;
use crate::hot_swap::{HotSwap, SwapOptions, SwapRecord};
use crate::kafka::producer::{self, Deliveries};
use crate::model::{TRANSACTION_SCHEMA, Transaction, value_subject, write_transaction_key};
use crate::registry::Registry;
use crate::runtime::{GeneratorWorld, Runtime};

use super::{Error, Result, stop_signal};

pub struct Produce {
    pub kafka: KafkaArgs,
    pub registry: Registry,
    pub module: PathBuf,
    pub count: u64,
    /// Records per second; unlimited when `None`.
    pub rate: Option<f64>,
    pub seed: u64,
    pub first_index: u64,
    /// Event time of record 0 of the stream; now when `None`.
    pub start_millis: Option<i64>,
    /// Records generated per guest call.
    pub batch: u32,
    pub runtime: crate::runtime::Settings,
    pub swap: SwapOptions,
    /// How often the progress line is logged.
    pub progress_every: std::time::Duration,
}

#[derive(Debug, Serialize)]
pub struct ProduceReport {
    pub produced: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    /// Record indexes the generator failed on alone (see the failure
    /// policy), logged and not produced.
    pub skipped: u64,
    pub module_sha256: String,
    /// Modules swapped in while producing, with the index each took over at.
    pub swaps: Vec<SwapRecord>,
}

impl Produce {
    pub async fn run(self) -> Result<ProduceReport> {
        let runtime = Runtime::new(&self.runtime)?;
        let (mut swap, mut guest) = HotSwap::<GeneratorWorld>::start(runtime, &self.module, &self.swap).await?;
        let credentials = self.kafka.admin_credentials()?;
        let producer = producer::create_counting(self.kafka.client_config(credentials.as_ref())?)?;
        // Writes with the schema this binary was built with (registered under
        // the topic's subject, or found there), not whatever is latest.
        let subject = value_subject(&self.kafka.topic);
        let schema_id = self.registry.register(&subject, TRANSACTION_SCHEMA).await?.id;
        let start_millis = self.start_millis.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        });
        let stop = stop_signal();
        crate::ops::progress::spawn("produce", self.progress_every);
        let started = Instant::now();
        let mut produced = 0u64;
        let mut skipped = 0u64;
        // Records handed to librdkafka: what the broker must acknowledge.
        let mut enqueued = 0u64;
        let (mut key, mut value) = (String::new(), Vec::new());
        while produced < self.count && !*stop.borrow() {
            let n = (self.count - produced).min(u64::from(self.batch)) as u32;
            let first_index = self.first_index + produced;
            // A batch boundary: a staged module takes over here.
            swap.swap_staged(&mut guest);
            swap.took_over(0, first_index as i64);
            let generated = guest.generate(self.seed, first_index, n, start_millis);
            for (sent, (index, g)) in (first_index..).zip(generated).enumerate() {
                if *stop.borrow() {
                    break;
                }
                if let Some(rate) = self.rate {
                    pace(rate, produced + sent as u64, started).await;
                }
                let g = match g {
                    Ok(g) => g,
                    Err(failure) => {
                        tracing::warn!(index, %failure, "record not produced: the generator fails on it");
                        skipped += 1;
                        continue;
                    }
                };
                let tx = Transaction {
                    user_id: g.user_id,
                    transaction_timestamp_millis: g.transaction_timestamp_millis,
                    amount: g.amount,
                    currency: g.currency,
                    counterpart_id: g.counterpart_id,
                };
                value.clear();
                crate::avro_encode::transaction(schema_id, &tx, &mut value);
                write_transaction_key(tx.user_id, &mut key);
                let record = BaseRecord::to(&self.kafka.topic).key(&key).payload(&value);
                if !enqueue(&producer, record, &stop).await? {
                    break;
                }
                enqueued += 1;
            }
            if let Some(e) = producer.context().failure() {
                return Err(Error::Producer(e));
            }
            produced += u64::from(n);
        }
        // Everything enqueued is delivered or has failed once the queue is
        // empty; librdkafka gives up on a record after message.timeout.ms.
        crate::blocking::run(|| producer.flush(Timeout::Never)).map_err(Error::Producer)?;
        if let Some(e) = producer.context().failure() {
            return Err(Error::Producer(e));
        }
        let delivered = producer.context().delivered();
        if delivered != enqueued {
            return Err(Error::Other(format!(
                "the broker acknowledged {delivered} of {enqueued} records"
            )));
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(ProduceReport {
            produced: delivered,
            seconds,
            records_per_s: delivered as f64 / seconds.max(1e-9),
            skipped,
            module_sha256: swap.sha256().to_string(),
            swaps: swap.swaps(),
        })
    }
}

/// Hands one record to librdkafka, waiting while its queue is full (the
/// broker is slower than the generator): back pressure, not an error.
/// `false` when a stop came while it waited, the record not sent.
async fn enqueue(
    producer: &ThreadedProducer<Deliveries>,
    mut record: BaseRecord<'_, String, Vec<u8>>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<bool> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(true),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                if *stop.borrow() {
                    return Ok(false);
                }
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(Error::Producer(e)),
        }
    }
}

/// How early a record of a `--rate` run may go: records go out in groups of
/// this long's worth. Sent record by record, two producers at 900 records/s
/// beside the zombie tests' consumers each kept librdkafka's broker thread
/// polling on a core (one record always lingering while the broker was
/// slow), starving the broker; in groups they used about a third of that.
const PACE_TICK: Duration = Duration::from_millis(50);

/// Waits until record `n` of a run at `rate` records/s is due, so that
/// `--rate` loads the topic steadily rather than a guest call's records at
/// once. A record less than `PACE_TICK` early goes at once.
async fn pace(rate: f64, n: u64, started: Instant) {
    let due = Duration::from_secs_f64(n as f64 / rate);
    if let Some(wait) = due.checked_sub(started.elapsed())
        && wait >= PACE_TICK
    {
        tokio::time::sleep(wait).await;
    }
}
