//! A Redis connection that waits out outages instead of failing the job.
//!
//! Redis is both the serving store (features) and where claims live (both
//! jobs). A failover, a snapshot fork or a `CLIENT PAUSE` makes it stop
//! answering for seconds; a restart drops every connection. Every command
//! sluice sends is idempotent (fenced absolute writes, `HSETNX` claims,
//! `HDEL` of stale claims, reads), so a command that timed out or lost its
//! connection is sent again, with exponential backoff, until Redis answers
//! or `patience` has passed; only then does the job stop, with the reason.
//! The connection itself is a `ConnectionManager`, which reconnects after a
//! restart.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, RedisError, RetryMethod, ScriptInvocation};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis at {url}: {source}")]
    Redis { url: String, source: RedisError },
    #[error("--redis-ca-file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("--redis-ca-file applies only to rediss:// URLs, not to {url}")]
    CaWithoutTls { url: String },
    #[error(
        "redis at {url} did not answer for {waited_s:.0} s ({what}; last error: {source}); giving up after \
         --redis-patience-ms"
    )]
    Unavailable {
        url: String,
        what: &'static str,
        waited_s: f64,
        source: RedisError,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A command that got no answer for this long counts as failed and is sent
/// again (a fenced write of 1,000 keys takes a few milliseconds).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between attempts: from the first to the last, doubling.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// While waiting, the log says so at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct RedisConn {
    manager: ConnectionManager,
    url: String,
    patience: Duration,
}

impl RedisConn {
    /// Connects to `url`, waiting up to `patience` for a Redis that is not
    /// answering yet. A `rediss://` URL is checked against the certificate
    /// authorities in `ca_file`, or the system's.
    pub async fn connect(url: &str, ca_file: Option<&std::path::Path>, patience: Duration) -> Result<Self> {
        // What messages show: the URL without its password.
        let shown = crate::secret::redact_url(url);
        let client = match ca_file {
            None => redis::Client::open(url),
            Some(_) if !url.starts_with("rediss://") => return Err(Error::CaWithoutTls { url: shown }),
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|source| Error::CaFile {
                    path: path.display().to_string(),
                    source,
                })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(url, certificates)
            }
        }
        .map_err(|source| Error::Redis {
            url: shown.clone(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(MAX_BACKOFF);
        let started = Instant::now();
        let mut waiting = Waiting::new(&shown, "connecting", patience);
        loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(manager) => {
                    waiting.recovered(started);
                    return Ok(Self {
                        manager,
                        url: shown.clone(),
                        patience,
                    });
                }
                Err(e) => waiting.failed(e).await?,
            }
        }
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `cmd` until Redis answers (see the module documentation).
    pub async fn query<T: FromRedisValue>(&self, what: &'static str, cmd: &Cmd) -> Result<T> {
        self.patiently(
            what,
            |mut connection| async move { cmd.query_async(&mut connection).await },
        )
        .await
    }

    /// Runs a script invocation until Redis answers.
    pub async fn invoke<T: FromRedisValue>(&self, what: &'static str, invocation: &ScriptInvocation<'_>) -> Result<T> {
        self.patiently(what, |mut connection| async move {
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    /// Makes `attempt` (on a handle of the shared connection) until it
    /// succeeds, fails for good, or patience runs out.
    async fn patiently<T, F, Fut>(&self, what: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let mut waiting = Waiting::new(&self.url, what, self.patience);
        loop {
            match attempt(self.manager.clone()).await {
                Ok(value) => {
                    waiting.recovered(started);
                    return Ok(value);
                }
                Err(e) => waiting.failed(e).await?,
            }
        }
    }
}

/// The retry loop's bookkeeping: backoff, the time limit and the log.
struct Waiting<'a> {
    url: &'a str,
    what: &'static str,
    patience: Duration,
    started: Instant,
    backoff: Duration,
    attempts: u32,
    logged_at: Option<Instant>,
}

impl<'a> Waiting<'a> {
    fn new(url: &'a str, what: &'static str, patience: Duration) -> Self {
        Self {
            url,
            what,
            patience,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
            attempts: 0,
            logged_at: None,
        }
    }

    /// After a failed attempt: an error when it is not worth retrying or
    /// patience ran out, else a pause before the next attempt.
    async fn failed(&mut self, error: RedisError) -> Result<()> {
        if !retryable(&error) {
            return Err(Error::Redis {
                url: self.url.to_string(),
                source: error,
            });
        }
        let waited = self.started.elapsed();
        if waited >= self.patience {
            return Err(Error::Unavailable {
                url: self.url.to_string(),
                what: self.what,
                waited_s: waited.as_secs_f64(),
                source: error,
            });
        }
        self.attempts += 1;
        crate::ops::health::unreachable("redis", format!("{} ({error})", self.url));
        if self.logged_at.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            self.logged_at = Some(Instant::now());
            tracing::warn!(
                redis = %self.url,
                waiting_for = self.what,
                waited_ms = waited.as_millis() as u64,
                patience_ms = self.patience.as_millis() as u64,
                error = %error,
                "waiting for redis to answer"
            );
        }
        tokio::time::sleep(self.backoff.min(self.patience.saturating_sub(waited))).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }

    fn recovered(&self, started: Instant) {
        if self.attempts > 0 {
            crate::ops::health::reachable("redis");
            tracing::info!(
                redis = %self.url,
                waited_for = self.what,
                waited_ms = started.elapsed().as_millis() as u64,
                attempts = self.attempts + 1,
                "redis answers again"
            );
        }
    }
}

/// Timeouts, lost connections, refused connections and the server's own
/// "not now" answers (LOADING, BUSY, TRYAGAIN, READONLY after a failover)
/// pass; a wrong command, a script error, a refused login or a certificate
/// the configured authorities did not sign (rustls's words) do not.
fn retryable(error: &RedisError) -> bool {
    if error.to_string().contains("invalid peer certificate") {
        return false;
    }
    if error.is_timeout() || error.is_connection_dropped() || error.is_connection_refusal() || error.is_io_error() {
        return true;
    }
    if matches!(error.kind(), redis::ErrorKind::AuthenticationFailed) {
        return false;
    }
    !matches!(error.retry_method(), RetryMethod::NoRetry)
}
