//! The line `run` and `produce` log now and then (`--progress-interval-ms`),
//! so that a log shows a long-running command moving: the records so far,
//! the rate since the last line and, for a consumer, the lag its partitions
//! had when last measured (see `lag`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static RECORDS: AtomicU64 = AtomicU64::new(0);
/// Records the group has not committed on this member's partitions; -1
/// until measured.
static LAG: AtomicI64 = AtomicI64::new(-1);

/// `n` more records consumed (run) or delivered (produce).
pub fn add(n: u64) {
    RECORDS.fetch_add(n, Ordering::Relaxed);
}

/// The lag of this member's partitions, as last measured.
pub fn set_lag(records: i64) {
    LAG.store(records, Ordering::Relaxed);
}

/// Logs a progress line every `every` while the process runs.
pub fn spawn(command: &'static str, every: Duration) {
    tokio::spawn(async move {
        let mut last = (Instant::now(), RECORDS.load(Ordering::Relaxed));
        loop {
            tokio::time::sleep(every).await;
            let (now, records) = (Instant::now(), RECORDS.load(Ordering::Relaxed));
            let rate = records.saturating_sub(last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
            last = (now, records);
            match LAG.load(Ordering::Relaxed) {
                lag if lag >= 0 => tracing::info!(
                    command,
                    records,
                    records_per_s = rate.round(),
                    lag_records = lag,
                    "progress"
                ),
                _ => tracing::info!(command, records, records_per_s = rate.round(), "progress"),
            }
        }
    });
}

/// `--progress-interval-ms`, shared by the commands that log progress.
#[derive(Debug, Clone, clap::Args)]
pub struct ProgressArgs {
    /// How often a progress line is logged (records, rate, lag), in
    /// milliseconds; the backfill logs it only without a terminal, where it
    /// shows a progress bar instead.
    #[arg(long, env = "SLUICE_PROGRESS_INTERVAL_MS", default_value_t = 30_000)]
    pub progress_interval_ms: u64,
}

impl ProgressArgs {
    pub fn every(&self) -> Duration {
        Duration::from_millis(self.progress_interval_ms.max(1))
    }
}
