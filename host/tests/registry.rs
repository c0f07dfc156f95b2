//! The embedded schema registry, driven the way the pipeline drives it: with
//! `schema_registry_converter`'s async client, plus plain HTTP for what that
//! client does not cover (config, error bodies), and across a restart.

use std::path::{Path, PathBuf};

use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_all_versions, get_schema_by_id, get_schema_by_subject, is_compatible_schema,
    post_schema,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const V1: &str = r#"{"type":"record","name":"Transaction","namespace":"sluice","fields":[
    {"name":"user_id","type":"string"},
    {"name":"amount","type":"double"}]}"#;
const V2: &str = r#"{"type":"record","name":"Transaction","namespace":"sluice","fields":[
    {"name":"user_id","type":"string"},
    {"name":"amount","type":"double"},
    {"name":"currency","type":"string","default":"EUR"}]}"#;
/// Adds a field without a default: new readers cannot read old records.
const BREAKING: &str = r#"{"type":"record","name":"Transaction","namespace":"sluice","fields":[
    {"name":"user_id","type":"string"},
    {"name":"amount","type":"double"},
    {"name":"merchant","type":"string"}]}"#;

struct Server {
    url: String,
    task: JoinHandle<sluice::registry::embedded::Result<()>>,
}

impl Server {
    async fn start(data_file: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(sluice::registry::embedded::serve(listener, PathBuf::from(data_file)));
        Server { url, task }
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    fn settings(&self) -> SrSettings {
        SrSettings::new(self.url.clone())
    }
}

fn avro(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned())
}

/// Sends `body` (if any) with Confluent's content type and returns the
/// status and JSON body.
async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/vnd.schemaregistry.v1+json");
    (status, response.json().await.expect("json body"))
}

#[tokio::test]
async fn confluent_client_round_trip_and_ids_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_file = dir.path().join("registry").join("state.json");
    let server = Server::start(&data_file).await;
    let sr = server.settings();

    // Register, dedupe, fetch: what the producer and decoders do.
    let v1 = post_schema(&sr, "transactions-value".into(), avro(V1))
        .await
        .expect("register v1");
    let again = post_schema(&sr, "transactions-value".into(), avro(V1))
        .await
        .expect("register v1 again");
    assert_eq!(v1.id, again.id);
    let key = post_schema(&sr, "transactions-key".into(), avro(r#""string""#))
        .await
        .expect("register key");
    assert_ne!(key.id, v1.id);

    let by_id = get_schema_by_id(v1.id, &sr).await.expect("by id");
    assert_eq!(by_id.schema, V1);
    assert_eq!(by_id.schema_type, SchemaType::Avro);

    assert!(
        is_compatible_schema(&sr, "transactions-value".into(), avro(V2))
            .await
            .expect("compatible?")
    );
    assert!(
        !is_compatible_schema(&sr, "transactions-value".into(), avro(BREAKING))
            .await
            .expect("compatible?")
    );
    let v2 = post_schema(&sr, "transactions-value".into(), avro(V2))
        .await
        .expect("register v2");
    assert_ne!(v2.id, v1.id);

    let latest = get_schema_by_subject(
        &sr,
        &SubjectNameStrategy::TopicNameStrategy("transactions".into(), false),
    )
    .await
    .expect("latest");
    assert_eq!((latest.id, latest.version), (v2.id, Some(2)));
    assert_eq!(latest.schema, V2);
    assert_eq!(
        get_all_subjects(&sr).await.expect("subjects"),
        vec!["transactions-key", "transactions-value"]
    );
    assert_eq!(
        get_all_versions(&sr, "transactions-value".into())
            .await
            .expect("versions"),
        vec![1, 2]
    );

    // An incompatible schema is refused with Confluent's 409 and a reason.
    let url = &server.url;
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{url}/subjects/transactions-value/versions"),
        Some(json!({ "schema": BREAKING })),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error_code"], 409);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("version 2"), "{message}");
    assert!(message.contains("merchant"), "{message}");

    let (status, body) = call(
        reqwest::Method::POST,
        format!("{url}/subjects/transactions-value/versions"),
        Some(json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" })),
    )
    .await;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42201)));

    let (status, body) = call(
        reqwest::Method::POST,
        format!("{url}/compatibility/subjects/transactions-value/versions/latest?verbose=true"),
        Some(json!({ "schema": BREAKING })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["is_compatible"], false);
    assert!(!body["messages"].as_array().expect("messages").is_empty());

    // Config: global and per subject, with Confluent's two spellings.
    let (status, body) = call(reqwest::Method::GET, format!("{url}/config"), None).await;
    assert_eq!((status, body), (200, json!({ "compatibilityLevel": "BACKWARD" })));
    let (status, body) = call(reqwest::Method::GET, format!("{url}/config/transactions-value"), None).await;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40408)));
    let (status, body) = call(
        reqwest::Method::GET,
        format!("{url}/config/transactions-value?defaultToGlobal=true"),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({ "compatibilityLevel": "BACKWARD" })));
    let (status, body) = call(
        reqwest::Method::PUT,
        format!("{url}/config/transactions-value"),
        Some(json!({ "compatibility": "NONE" })),
    )
    .await;
    assert_eq!((status, body), (200, json!({ "compatibility": "NONE" })));
    let (status, body) = call(
        reqwest::Method::PUT,
        format!("{url}/config"),
        Some(json!({ "compatibility": "FULL_TRANSITIVE" })),
    )
    .await;
    assert_eq!((status, body), (200, json!({ "compatibility": "FULL_TRANSITIVE" })));

    // Lookups and misses.
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{url}/subjects/transactions-value"),
        Some(json!({ "schema": V1 })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!((body["id"].clone(), body["version"].clone()), (json!(v1.id), json!(1)));
    let (status, body) = call(reqwest::Method::GET, format!("{url}/schemas/ids/999"), None).await;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40403)));
    let (status, body) = call(reqwest::Method::GET, format!("{url}/subjects/nope/versions"), None).await;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40401)));
    let (status, body) = call(
        reqwest::Method::GET,
        format!("{url}/subjects/transactions-value/versions/7"),
        None,
    )
    .await;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40402)));

    // Restart on the same file: ids, versions and config are still there.
    server.stop().await;
    let server = Server::start(&data_file).await;
    let sr = server.settings();
    assert_eq!(get_schema_by_id(v1.id, &sr).await.expect("v1").schema, V1);
    assert_eq!(get_schema_by_id(v2.id, &sr).await.expect("v2").schema, V2);
    let again = post_schema(&sr, "transactions-value".into(), avro(V1))
        .await
        .expect("re-register v1");
    assert_eq!(again.id, v1.id);
    let (_, body) = call(
        reqwest::Method::GET,
        format!("{}/config/transactions-value", server.url),
        None,
    )
    .await;
    assert_eq!(body, json!({ "compatibilityLevel": "NONE" }));
    let fresh = post_schema(&sr, "other-value".into(), avro(r#""long""#))
        .await
        .expect("register new");
    assert!(fresh.id > v2.id.max(key.id), "ids are never reused");
    server.stop().await;
}
