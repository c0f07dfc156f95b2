//! What a person watching a backfill sees: on a terminal, a progress bar
//! (records, records/s, ETA); otherwise a log line every few seconds.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

/// Counts archive rows done across partition workers and shows them.
#[derive(Clone)]
pub struct Progress {
    done: Arc<AtomicU64>,
    bar: Option<ProgressBar>,
}

/// Stops the log-line task when dropped.
pub struct Reporter {
    _stop: watch::Sender<()>,
}

impl Progress {
    /// Shows progress through `total` archive rows, `already` of which an
    /// earlier run finished; without a terminal, a line every `every`.
    pub fn start(total: u64, already: u64, every: Duration) -> (Self, Reporter) {
        let done = Arc::new(AtomicU64::new(already));
        let (stop, mut stopped) = watch::channel(());
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} records, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_position(already);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            let done = done.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::select! {
                        _ = stopped.changed() => break,
                        () = tokio::time::sleep(every) => {}
                    }
                    let now = done.load(Ordering::Relaxed);
                    let rate = now.saturating_sub(already) as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    let eta_s = (total.saturating_sub(now) as f64 / rate.max(1e-9)).round();
                    tracing::info!(
                        records = now,
                        total,
                        records_per_s = rate.round(),
                        eta_s,
                        "backfill progress"
                    );
                }
            });
        }
        (Self { done, bar }, Reporter { _stop: stop })
    }

    pub fn add(&self, rows: u64) {
        self.done.fetch_add(rows, Ordering::Relaxed);
        metrics::counter!(crate::ops::metrics::RECORDS_IN).increment(rows);
        if let Some(bar) = &self.bar {
            bar.inc(rows);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
