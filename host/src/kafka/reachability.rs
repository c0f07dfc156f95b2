//! Whether the brokers answer, as librdkafka's error events tell it.
//!
//! librdkafka reports every failed connection attempt (hundreds a minute
//! while no broker answers). The first is logged with its reason, which
//! names the broker's address; after that, at most one line every
//! `LOG_EVERY` says how many more came. Readiness is false meanwhile, and
//! the first record or answered request after it says the brokers are back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;

/// While the brokers stay unreachable, the log says so at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Reachability {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Since when the brokers have not answered, while they do not.
    since: Option<Instant>,
    logged_at: Option<Instant>,
    /// Errors since the last line logged.
    unlogged: u64,
    /// The brokers refused the connection for good: how and why.
    refused: Option<Refusal>,
}

/// A refusal that retrying does not heal: the job stops and says which.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// A wrong user or password.
    Login(String),
    /// A broker certificate that the configured authorities did not sign,
    /// or that does not name the host.
    Certificate(String),
}

/// librdkafka's transport errors: the ones that mean no broker answers.
fn is_transport(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(Code::AllBrokersDown | Code::BrokerTransportFailure | Code::Resolve | Code::SSL)
    )
}

impl Reachability {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An error event of the client.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        if error.rdkafka_error_code() == Some(Code::PartitionEOF) {
            // Not an error: a fetch reached a partition's end, which the
            // consumer also hands to `recv` (`Source::read_to_the_end`).
            return;
        }
        let refusal = match error.rdkafka_error_code() {
            Some(Code::Authentication) => Some(Refusal::Login(reason.to_string())),
            // librdkafka reports a failed verification as an SSL error or,
            // when it reports the same failure again (and to whichever
            // client saw it first), as a transport failure: either says it.
            // Other TLS failures (a broker restarting mid-handshake) heal.
            Some(Code::SSL | Code::BrokerTransportFailure) if reason.contains("certificate verify failed") => {
                Some(Refusal::Certificate(reason.to_string()))
            }
            _ => None,
        };
        if let Some(refusal) = refusal {
            self.state().refused.get_or_insert(refusal);
            crate::ops::health::unreachable("kafka", reason.to_string());
            return;
        }
        if !is_transport(error) {
            tracing::warn!(%error, reason, "kafka client error");
            return;
        }
        let mut state = self.state();
        let now = Instant::now();
        match (state.since, state.logged_at) {
            (None, _) => {
                state.since = Some(now);
                state.logged_at = Some(now);
                state.unlogged = 0;
                tracing::warn!(%error, reason, "kafka unreachable; retrying (logged again at most every 30 s)");
            }
            (Some(since), Some(logged)) if logged.elapsed() >= LOG_EVERY => {
                let errors = state.unlogged + 1;
                state.logged_at = Some(now);
                state.unlogged = 0;
                tracing::warn!(
                    %error,
                    reason,
                    unreachable_s = since.elapsed().as_secs(),
                    errors_since_last_line = errors,
                    "kafka still unreachable"
                );
            }
            _ => state.unlogged += 1,
        }
        crate::ops::health::unreachable("kafka", reason.to_string());
    }

    /// Something came back from a broker: a record, an answered request.
    pub fn answered(&self) {
        let mut state = self.state();
        if let Some(since) = state.since.take() {
            tracing::info!(unreachable_s = since.elapsed().as_secs(), "kafka answers again");
            state.logged_at = None;
            state.unlogged = 0;
            crate::ops::health::reachable("kafka");
        }
    }

    /// Why the brokers refused this client for good, once they did.
    pub fn refused(&self) -> Option<Refusal> {
        self.state().refused.clone()
    }

    /// How long the brokers have not answered, if they do not now.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.state().since.map(|since| since.elapsed())
    }
}
