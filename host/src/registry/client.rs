//! The schema registry as the pipeline uses it, through the
//! schema_registry_converter client: register with a compatibility level,
//! latest version of a subject. Works against Confluent Schema Registry and
//! the embedded registry alike.

use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_schema_by_subject, post_schema};
use schema_registry_converter::error::SRCError;

use crate::secret::{redact_url, scrub};
use schema_registry_converter::schema_registry_common::{
    RegisteredSchema, SchemaType, SubjectNameStrategy, SuppliedSchema,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("schema registry at {url}: {message}")]
    Registry { url: String, message: String },
    #[error("schema registry at {url} refused subject {subject}: {message}")]
    Refused {
        url: String,
        subject: String,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A registry endpoint.
#[derive(Debug, Clone)]
pub struct Registry {
    url: String,
    /// The URL as messages show it: without its password.
    shown: String,
    settings: SrSettings,
    http: reqwest::Client,
}

impl Registry {
    /// A registry at `url`; an https registry's certificate is checked
    /// against the certificate authorities in `ca_file`, or the system's.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self> {
        let url = url.trim_end_matches('/').to_string();
        let failed = |message: String| Error::Registry {
            url: redact_url(&url),
            message,
        };
        let mut roots = Vec::new();
        if let Some(path) = ca_file {
            let unreadable = |e: String| failed(format!("--registry-ca-file {}: {e}", path.display()));
            let pem = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
            roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| unreadable(e.to_string()))?;
        }
        // Two clients, the converter's and ours, with the same roots.
        let http = || {
            roots.iter().fold(reqwest::Client::builder(), |builder, root| {
                builder.add_root_certificate(root.clone())
            })
        };
        let settings = SrSettings::new_builder(url.clone())
            .set_timeout(std::time::Duration::from_secs(10))
            .build_with(http())
            .map_err(|e| failed(scrub(&describe(&e), &url)))?;
        Ok(Self {
            shown: redact_url(&url),
            settings,
            http: http().build().map_err(|e| failed(e.to_string()))?,
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn settings(&self) -> &SrSettings {
        &self.settings
    }

    /// Sets a subject's compatibility level (`PUT /config/{subject}`).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<()> {
        let response = self
            .http
            .put(format!("{}/config/{subject}", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(serde_json::json!({ "compatibility": level }).to_string())
            .send()
            .await
            .map_err(|e| self.error(e.to_string()))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(self.error(format!("PUT /config/{subject}: {status} {body}")));
        }
        Ok(())
    }

    /// Registers an Avro schema under a subject; an identical schema already
    /// there returns its id and adds no version.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<RegisteredSchema> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        post_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map_err(|e| Error::Refused {
                url: self.shown.clone(),
                subject: subject.to_string(),
                message: scrub(&describe(&e), &self.url),
            })
    }

    /// The latest schema of a subject.
    pub async fn latest(&self, subject: &str) -> Result<RegisteredSchema> {
        // The client names subjects through a strategy: TopicNameStrategy
        // appends "-value"; RecordNameStrategy uses the name as it is.
        let strategy = match subject.strip_suffix("-value") {
            Some(topic) => SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false),
            None => SubjectNameStrategy::RecordNameStrategy(subject.to_string()),
        };
        get_schema_by_subject(&self.settings, &strategy)
            .await
            .map_err(|e| Error::Refused {
                url: self.shown.clone(),
                subject: subject.to_string(),
                message: scrub(&describe(&e), &self.url),
            })
    }

    fn error(&self, message: String) -> Error {
        Error::Registry {
            url: self.shown.clone(),
            message: scrub(&message, &self.url),
        }
    }
}

/// An SRCError with its cause, which carries the registry's own message
/// (for example why a schema is incompatible).
pub fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}
