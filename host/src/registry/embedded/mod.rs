//! An embedded, Confluent-compatible schema registry for development.
//!
//! No Confluent registry can be installed on the development machines, so the
//! host carries the subset of its REST API the pipeline and
//! `schema_registry_converter` use: register, look up, fetch by id or by
//! subject/version, compatibility checks (Avro only) and compatibility config.
//! Ids are persisted in one JSON file so they survive restarts, as they must:
//! every Kafka record carries one. Production uses Confluent's registry.

mod api;
mod compat;
mod store;

use std::path::PathBuf;

pub use compat::Level;
pub use store::{Reference, Store};

/// Errors of the embedded registry. The request-level ones map to
/// Confluent's HTTP status and `error_code` (see `api`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry data file {path} is not valid JSON state")]
    DataFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("serving the schema registry failed")]
    Serve(#[source] std::io::Error),
    #[error("registry task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {version} not found for subject '{subject}'.")]
    VersionNotFound { subject: String, version: String },
    #[error("{0}")]
    SchemaNotFound(String),
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error("unsupported schema type {0}: the embedded registry only accepts AVRO")]
    UnsupportedSchemaType(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level '{0}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
    )]
    InvalidLevel(String),
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" \
         (compatibility {level}): {}",
        messages.join("; ")
    )]
    Incompatible {
        subject: String,
        level: Level,
        messages: Vec<String>,
    },
    #[error("Invalid request body: {0}")]
    BadRequest(String),
    #[error("HTTP 404 Not Found")]
    NoSuchEndpoint,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Serves the registry on `listener` with its state in `data_file` (created
/// on the first change, with its directory). Runs until the task is dropped
/// or aborted; every change is on disk before it is acknowledged.
pub async fn serve(listener: tokio::net::TcpListener, data_file: PathBuf) -> Result<()> {
    let store = tokio::task::spawn_blocking(move || Store::open(data_file)).await??;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "embedded schema registry listening");
    }
    axum::serve(listener, router(store)).await.map_err(Error::Serve)
}

/// The registry's HTTP routes over `store`, for embedding in another server
/// or serving with a custom listener.
pub fn router(store: Store) -> axum::Router {
    api::router(store)
}
