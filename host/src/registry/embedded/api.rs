//! The HTTP surface: the Confluent REST subset, with Confluent's status codes,
//! `error_code`s and response shapes, so Confluent clients
//! (`schema_registry_converter`, curl scripts, the Java serdes) work
//! unchanged against it.
//!
//! Bodies are read as bytes and parsed here, because clients send either
//! `application/vnd.schemaregistry.v1+json` or `application/json` and axum's
//! `Json` extractor would refuse the former.

use std::error::Error as StdError;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::compat::Level;
use super::store::{Reference, Store, SubjectVersion, VersionSpec};
use super::{Error, Result};

/// The content type Confluent's registry answers with.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub(super) fn router(store: Store) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_of_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route("/subjects/{subject}/versions/{version}/schema", get(version_schema))
        .route("/compatibility/subjects/{subject}/versions", post(check_against_level))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_against_version),
        )
        .route("/config", get(global_level).put(set_global_level))
        .route("/config/{subject}", get(subject_level).put(set_subject_level))
        .fallback(no_such_endpoint)
        .with_state(store)
}

/// The body of register, lookup and compatibility requests. Other fields
/// Confluent knows (`metadata`, `ruleSet`, `normalize`) are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: Option<String>,
    schema_type: Option<String>,
    references: Option<Vec<Reference>>,
}

/// Returns the schema text and references of an Avro schema request.
fn schema_request(body: &[u8]) -> Result<(String, Vec<Reference>)> {
    let request: SchemaRequest = serde_json::from_slice(body).map_err(|error| Error::BadRequest(error.to_string()))?;
    if let Some(kind) = request.schema_type
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(Error::UnsupportedSchemaType(kind));
    }
    let schema = request
        .schema
        .filter(|schema| !schema.trim().is_empty())
        .ok_or_else(|| Error::InvalidSchema("Empty schema".to_owned()))?;
    Ok((schema, request.references.unwrap_or_default()))
}

#[derive(Deserialize)]
struct LevelRequest {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

fn level_request(body: &[u8]) -> Result<Level> {
    let request: LevelRequest = serde_json::from_slice(body).map_err(|error| Error::BadRequest(error.to_string()))?;
    let name = request
        .compatibility
        .or(request.compatibility_level)
        .unwrap_or_default();
    Level::parse(&name).ok_or(Error::InvalidLevel(name))
}

/// Whether `?name=true` is in the query string.
fn flag(query: Option<&str>, name: &str) -> bool {
    query.unwrap_or_default().split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        key == name && value.eq_ignore_ascii_case("true")
    })
}

fn schema_id(text: &str) -> Result<u32> {
    text.parse()
        .map_err(|_| Error::SchemaNotFound(format!("Schema {text} not found")))
}

/// Runs a store change off the async workers: it writes and fsyncs a file.
async fn blocking<T: Send + 'static>(change: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(change).await?
}

fn reply(status: StatusCode, body: &Value) -> Response {
    raw_reply(status, body.to_string())
}

fn raw_reply(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

fn ok(body: Value) -> Result<Response> {
    Ok(reply(StatusCode::OK, &body))
}

/// Confluent's shape for one subject version; `references` only when set.
fn subject_version_body(found: SubjectVersion) -> Value {
    let mut body = json!({
        "subject": found.subject,
        "id": found.id,
        "version": found.version,
        "schema": found.schema.schema,
    });
    add_references(&mut body, &found.schema.references);
    body
}

fn add_references(body: &mut Value, references: &[Reference]) {
    if !references.is_empty()
        && let Some(object) = body.as_object_mut()
    {
        object.insert("references".to_owned(), json!(references));
    }
}

impl Error {
    /// Confluent's HTTP status and `error_code` for this error.
    fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            Error::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            Error::VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
            Error::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            Error::SubjectLevelNotConfigured(_) => (StatusCode::NOT_FOUND, 40408),
            Error::NoSuchEndpoint => (StatusCode::NOT_FOUND, 404),
            Error::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            Error::InvalidSchema(_) | Error::UnsupportedSchemaType(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            Error::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            Error::InvalidLevel(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, 400),
            Error::Io { .. } | Error::DataFile { .. } | Error::Serve(_) | Error::Task(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, 50001)
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut message = self.to_string();
        if status.is_server_error() {
            let mut source = self.source();
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            tracing::error!(%message, "schema registry request failed");
        } else {
            tracing::debug!(%message, code, "schema registry request refused");
        }
        reply(status, &json!({ "error_code": code, "message": message }))
    }
}

async fn root() -> Result<Response> {
    ok(json!({}))
}

async fn schema_types() -> Result<Response> {
    ok(json!(["AVRO"]))
}

/// `GET /schemas/ids/{id}`; query parameters such as `?deleted=true` are
/// accepted and ignored (nothing is ever deleted here).
async fn schema_by_id(State(store): State<Store>, Path(id): Path<String>) -> Result<Response> {
    let stored = store.schema_by_id(schema_id(&id)?)?;
    // Confluent adds `schemaType` only for non-Avro schemas; all are Avro here.
    let mut body = json!({ "schema": stored.schema });
    add_references(&mut body, &stored.references);
    ok(body)
}

async fn versions_of_id(State(store): State<Store>, Path(id): Path<String>) -> Result<Response> {
    let pairs = store.subject_versions_of_id(schema_id(&id)?)?;
    let body: Vec<Value> = pairs
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    ok(json!(body))
}

async fn subjects_of_id(State(store): State<Store>, Path(id): Path<String>) -> Result<Response> {
    let mut subjects: Vec<String> = store
        .subject_versions_of_id(schema_id(&id)?)?
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn subjects(State(store): State<Store>) -> Result<Response> {
    ok(json!(store.subjects()))
}

async fn versions(State(store): State<Store>, Path(subject): Path<String>) -> Result<Response> {
    ok(json!(store.versions(&subject)?))
}

async fn register(State(store): State<Store>, Path(subject): Path<String>, body: Bytes) -> Result<Response> {
    let (schema, references) = schema_request(&body)?;
    let registered = blocking(move || store.register(&subject, &schema, references)).await?;
    ok(json!({ "id": registered.id }))
}

/// `POST /subjects/{subject}`: which version of the subject holds a schema.
async fn lookup(State(store): State<Store>, Path(subject): Path<String>, body: Bytes) -> Result<Response> {
    let (schema, references) = schema_request(&body)?;
    ok(subject_version_body(store.lookup(&subject, &schema, &references)?))
}

async fn version(State(store): State<Store>, Path((subject, version)): Path<(String, String)>) -> Result<Response> {
    let found = store.version(&subject, VersionSpec::parse(&version)?)?;
    ok(subject_version_body(found))
}

/// The schema text alone, as Confluent serves it.
async fn version_schema(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response> {
    let found = store.version(&subject, VersionSpec::parse(&version)?)?;
    Ok(raw_reply(StatusCode::OK, found.schema.schema))
}

/// `POST /compatibility/subjects/{subject}/versions`: against the versions
/// the subject's level names (what `is_compatible_schema` calls). A subject
/// without versions accepts anything.
async fn check_against_level(
    State(store): State<Store>,
    Path(subject): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let (schema, references) = schema_request(&body)?;
    let messages = store.check_compatibility(&subject, None, &schema, &references)?;
    compatibility_reply(messages, flag(query.as_deref(), "verbose"))
}

async fn check_against_version(
    State(store): State<Store>,
    Path((subject, version)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let spec = VersionSpec::parse(&version)?;
    let (schema, references) = schema_request(&body)?;
    let messages = store.check_compatibility(&subject, Some(spec), &schema, &references)?;
    compatibility_reply(messages, flag(query.as_deref(), "verbose"))
}

fn compatibility_reply(messages: Vec<String>, verbose: bool) -> Result<Response> {
    let mut body = json!({ "is_compatible": messages.is_empty() });
    if verbose && let Some(object) = body.as_object_mut() {
        object.insert("messages".to_owned(), json!(messages));
    }
    ok(body)
}

/// Confluent answers GET with `compatibilityLevel` and PUT with
/// `compatibility`; clients depend on both spellings.
async fn global_level(State(store): State<Store>) -> Result<Response> {
    ok(json!({ "compatibilityLevel": store.global_level().as_str() }))
}

async fn set_global_level(State(store): State<Store>, body: Bytes) -> Result<Response> {
    let level = level_request(&body)?;
    blocking(move || store.set_level(None, level)).await?;
    ok(json!({ "compatibility": level.as_str() }))
}

/// A subject without its own level is a 404 unless `?defaultToGlobal=true`.
async fn subject_level(
    State(store): State<Store>,
    Path(subject): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let level = match store.subject_level(&subject) {
        Some(level) => level,
        None if flag(query.as_deref(), "defaultToGlobal") => store.global_level(),
        None => return Err(Error::SubjectLevelNotConfigured(subject)),
    };
    ok(json!({ "compatibilityLevel": level.as_str() }))
}

async fn set_subject_level(State(store): State<Store>, Path(subject): Path<String>, body: Bytes) -> Result<Response> {
    let level = level_request(&body)?;
    blocking(move || store.set_level(Some(&subject), level)).await?;
    ok(json!({ "compatibility": level.as_str() }))
}

async fn no_such_endpoint() -> Error {
    Error::NoSuchEndpoint
}
