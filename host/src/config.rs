//! Connection settings shared by every command: Kafka, registry, object
//! storage and Redis. Values come from flags, `SLUICE_*` variables or the
//! configuration file (`settings`, docs/configuration.md).

use std::sync::Arc;

use clap::{Args, ValueEnum};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use rdkafka::ClientConfig;
use url::Url;

use crate::secret::{self, Secret};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid output URL {url:?}: {reason}")]
    OutputUrl { url: String, reason: String },
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error(
        "no password for Kafka user {user}: set {var} (or {var}_FILE, a file holding it), \
         or --security-protocol plaintext for a broker without authentication"
    )]
    MissingPassword { user: String, var: String },
    #[error(transparent)]
    Secret(#[from] crate::secret::Error),
    #[error("{flag} applies only to TLS connections, but --security-protocol is {protocol}: use ssl or sasl_ssl")]
    TlsWithoutTls { flag: &'static str, protocol: &'static str },
    #[error("{flag} {path}: {reason}")]
    CaFile {
        flag: &'static str,
        path: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to reach and authenticate to Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers.
    #[arg(long, env = "SLUICE_BROKERS", default_value = "127.0.0.1:9092", global = true)]
    pub brokers: String,
    /// How clients reach the brokers: SASL/SCRAM over TLS (`sasl_ssl`, as
    /// managed Kafka offers it) or not (`sasl_plaintext`), TLS alone (`ssl`),
    /// or neither (`plaintext`).
    #[arg(long, env = "SLUICE_SECURITY_PROTOCOL", value_enum, ignore_case = true,
          default_value_t = SecurityProtocol::SaslPlaintext, global = true)]
    pub security_protocol: SecurityProtocol,
    /// PEM file of the certificate authorities that sign the brokers'
    /// certificates (`ssl`, `sasl_ssl`); the system's when unset.
    #[arg(long, env = "SLUICE_KAFKA_CA_FILE", global = true)]
    pub kafka_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for brokers that ask for one (mutual TLS);
    /// needs --kafka-key-file. The key's passphrase, if any, comes from
    /// `SLUICE_KAFKA_KEY_PASSWORD` (or `_FILE`).
    #[arg(long, env = "SLUICE_KAFKA_CERT_FILE", requires = "kafka_key_file", global = true)]
    pub kafka_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --kafka-cert-file.
    #[arg(long, env = "SLUICE_KAFKA_KEY_FILE", requires = "kafka_cert_file", global = true)]
    pub kafka_key_file: Option<std::path::PathBuf>,
    /// Check that a broker's certificate names the host connected to.
    #[arg(long, env = "SLUICE_KAFKA_VERIFY_HOSTNAME", default_value_t = true,
          action = clap::ArgAction::Set, global = true)]
    pub kafka_verify_hostname: bool,
    /// SASL user; defaults to the job's own user for `run`, the admin user
    /// otherwise. Its password comes from `SLUICE_KAFKA_PASSWORD` (or
    /// `SLUICE_KAFKA_PASSWORD_FILE`), never from a flag.
    #[arg(long, env = "SLUICE_KAFKA_USER", global = true)]
    pub kafka_user: Option<String>,
    /// SASL mechanism (SCRAM-SHA-512 or SCRAM-SHA-256).
    #[arg(long, env = "SLUICE_SASL_MECHANISM", default_value = "SCRAM-SHA-512", global = true)]
    pub sasl_mechanism: String,
    /// The source topic.
    #[arg(long, env = "SLUICE_TOPIC", default_value = "transactions", global = true)]
    pub topic: String,
    /// Where records that cannot be decoded or that a guest rejects go.
    #[arg(long, env = "SLUICE_DLQ_TOPIC", default_value = "transactions-dlq", global = true)]
    pub dlq_topic: String,
}

/// Kafka's `security.protocol`, as far as sluice supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    /// No authentication, no encryption.
    #[value(name = "plaintext")]
    Plaintext,
    /// SASL (SCRAM) authentication, no encryption.
    #[value(name = "sasl_plaintext")]
    SaslPlaintext,
    /// TLS, no SASL (a client certificate may authenticate).
    #[value(name = "ssl")]
    Ssl,
    /// SASL (SCRAM) authentication over TLS.
    #[value(name = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka_name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::Ssl => "ssl",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn authenticates(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn encrypts(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// The password of the user `--kafka-user` names.
pub const KAFKA_PASSWORD_VAR: &str = "SLUICE_KAFKA_PASSWORD";

/// The passphrase of `--kafka-key-file`, if it is encrypted.
pub const KAFKA_KEY_PASSWORD_VAR: &str = "SLUICE_KAFKA_KEY_PASSWORD";

/// The identity of `setup`, `produce` and `status`.
pub const ADMIN_USER_VAR: &str = "SLUICE_ADMIN_USER";
pub const ADMIN_PASSWORD_VAR: &str = "SLUICE_ADMIN_PASSWORD";

/// The variables sluice reads that no flag names (each flag's own variable
/// is in `--help`): secrets, which never have a flag, the log level, and
/// what the S3 client reads itself. Each secret may also be given as
/// `<VAR>_FILE`.
pub const UNFLAGGED_VARIABLES: &[&str] = &[
    ADMIN_USER_VAR,
    ADMIN_PASSWORD_VAR,
    crate::jobs::BACKUP_PASSWORD_VAR,
    crate::jobs::FEATURES_PASSWORD_VAR,
    KAFKA_PASSWORD_VAR,
    KAFKA_KEY_PASSWORD_VAR,
    ADMIN_TOKEN_VAR,
    crate::logging::LEVEL_VARS[0],
    crate::logging::LEVEL_VARS[1],
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Resolved credentials of one Kafka client.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
}

impl KafkaArgs {
    /// Credentials for a client acting as `default_user`, whose password is
    /// in `password_var` (or the file `<password_var>_FILE` names); with
    /// `--kafka-user`, that user's, in `SLUICE_KAFKA_PASSWORD`. `None` when
    /// the protocol does not authenticate; a missing password is an error.
    pub fn credentials(&self, default_user: &str, password_var: &str) -> Result<Option<Credentials>> {
        if !self.security_protocol.authenticates() {
            return Ok(None);
        }
        let (user, var) = match &self.kafka_user {
            Some(user) => (user.clone(), KAFKA_PASSWORD_VAR),
            None => (default_user.to_string(), password_var),
        };
        let password = secret::from_env(var)?.ok_or_else(|| Error::MissingPassword {
            user: user.clone(),
            var: var.to_string(),
        })?;
        Ok(Some(Credentials { user, password }))
    }

    /// The admin identity used by `setup` and `produce`.
    pub fn admin_credentials(&self) -> Result<Option<Credentials>> {
        let user = secret::from_env(ADMIN_USER_VAR)?.map_or_else(|| "sluice-admin".into(), |u| u.expose().to_string());
        self.credentials(&user, ADMIN_PASSWORD_VAR)
    }

    /// A librdkafka configuration for these brokers and credentials. TLS
    /// files with a protocol that does not encrypt are refused rather than
    /// ignored, so that a deployment cannot believe it encrypts when it
    /// does not.
    pub fn client_config(&self, credentials: Option<&Credentials>) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.security_protocol.librdkafka_name());
        if let Some(c) = credentials {
            config
                .set("sasl.mechanism", &self.sasl_mechanism)
                .set("sasl.username", &c.user)
                .set("sasl.password", c.password.expose());
        }
        let tls_files = [
            ("--kafka-ca-file", "ssl.ca.location", &self.kafka_ca_file),
            ("--kafka-cert-file", "ssl.certificate.location", &self.kafka_cert_file),
            ("--kafka-key-file", "ssl.key.location", &self.kafka_key_file),
        ];
        if !self.security_protocol.encrypts() {
            if let Some((flag, _, _)) = tls_files.iter().find(|(_, _, file)| file.is_some()) {
                return Err(Error::TlsWithoutTls {
                    flag,
                    protocol: self.security_protocol.librdkafka_name(),
                });
            }
            return Ok(config);
        }
        for (_, key, file) in tls_files {
            if let Some(file) = file {
                config.set(key, file.display().to_string());
            }
        }
        if let Some(passphrase) = secret::from_env(KAFKA_KEY_PASSWORD_VAR)? {
            config.set("ssl.key.password", passphrase.expose());
        }
        let identification = if self.kafka_verify_hostname { "https" } else { "none" };
        config.set("ssl.endpoint.identification.algorithm", identification);
        Ok(config)
    }
}

/// Schema registry endpoint.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// The schema registry (Confluent REST API), http or https.
    #[arg(
        long,
        env = "SLUICE_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub registry_url: String,
    /// PEM file of the certificate authorities that sign an https registry's
    /// certificate; the system's when unset.
    #[arg(long, env = "SLUICE_REGISTRY_CA_FILE", global = true)]
    pub registry_ca_file: Option<std::path::PathBuf>,
}

/// Object storage for Parquet output: `file://` or `s3://bucket/prefix`.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Root of the Parquet lake; jobs write under `<root>/<dataset>/`.
    #[arg(long, env = "SLUICE_OUTPUT_URL", default_value = "file://./data/lake")]
    pub output_url: String,
    /// S3 endpoint for S3-compatible stores (Garage, MinIO); AWS when unset.
    #[arg(long, env = "SLUICE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), as Garage and MinIO expect.
    #[arg(long, env = "SLUICE_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,
    /// The S3 region; else `AWS_REGION` as AWS tools read it, else us-east-1.
    #[arg(long, env = "SLUICE_S3_REGION")]
    pub s3_region: Option<String>,
    /// PEM file of the certificate authorities that sign an https S3
    /// endpoint's certificate; the system's when unset.
    #[arg(long, env = "SLUICE_S3_CA_FILE")]
    pub s3_ca_file: Option<std::path::PathBuf>,
}

/// An object store and the prefix inside it that a URL names.
#[derive(Debug, Clone)]
pub struct Storage {
    pub store: Arc<dyn ObjectStore>,
    pub root: ObjectPath,
    /// The URL as given, for messages.
    pub url: String,
}

/// The `P` of an object path with a `partition=P` folder (the Hive-style
/// layout of the datasets and checkpoints).
pub fn partition_in_path(path: &ObjectPath) -> Option<i32> {
    path.parts()
        .filter_map(|p| p.as_ref().strip_prefix("partition=")?.parse().ok())
        .next_back()
}

impl Storage {
    /// Deletes every object under `prefix`; returns how many there were.
    pub async fn delete_under(&self, prefix: &ObjectPath) -> Result<usize> {
        use futures::TryStreamExt;
        use object_store::ObjectStoreExt;
        let objects: Vec<_> = self.store.list(Some(prefix)).try_collect().await?;
        for object in &objects {
            self.store.delete(&object.location).await?;
        }
        Ok(objects.len())
    }

    /// The object at `relative` (a `/`-separated path) under the root.
    pub fn path(&self, relative: &str) -> ObjectPath {
        let root = self.root.as_ref();
        if root.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{root}/{relative}"))
        }
    }
}

impl StorageArgs {
    pub fn open(&self) -> Result<Storage> {
        let url_error = |reason: String| Error::OutputUrl {
            url: self.output_url.clone(),
            reason,
        };
        let url = parse_storage_url(&self.output_url).map_err(url_error)?;
        match url.scheme() {
            "file" => {
                let dir = std::path::PathBuf::from(url.path());
                std::fs::create_dir_all(&dir)
                    .map_err(|e| url_error(format!("cannot create {}: {e}", dir.display())))?;
                // Files and their directories are fsynced before a put
                // returns, so offsets are committed only over durable files.
                let store = LocalFileSystem::new_with_prefix(&dir)?.with_fsync(true);
                Ok(Storage {
                    store: Arc::new(store),
                    root: ObjectPath::default(),
                    url: self.output_url.clone(),
                })
            }
            "s3" => {
                let bucket = url
                    .host_str()
                    .ok_or_else(|| url_error("an s3:// URL needs a bucket".into()))?;
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(!self.s3_path_style);
                if let Some(region) = &self.s3_region {
                    builder = builder.with_region(region);
                }
                if let Some(endpoint) = &self.s3_endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(path) = &self.s3_ca_file {
                    let pem = std::fs::read(path).map_err(|e| Error::CaFile {
                        flag: "--s3-ca-file",
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                    let mut options = object_store::ClientOptions::new();
                    for certificate in object_store::Certificate::from_pem_bundle(&pem)? {
                        options = options.with_root_certificate(certificate);
                    }
                    builder = builder.with_client_options(options);
                }
                Ok(Storage {
                    store: Arc::new(builder.build()?),
                    root: ObjectPath::from(url.path().trim_matches('/')),
                    url: self.output_url.clone(),
                })
            }
            other => Err(url_error(format!(
                "unsupported scheme {other:?} (use file:// or s3://)"
            ))),
        }
    }
}

/// Parses a storage URL; `file://` paths may be relative to the working
/// directory (`file://./data`), which `Url` alone would misread as a host.
fn parse_storage_url(raw: &str) -> std::result::Result<Url, String> {
    if let Some(path) = raw.strip_prefix("file://") {
        let path = std::path::Path::new(path);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| e.to_string())?.join(path)
        };
        return Url::from_file_path(&absolute).map_err(|()| format!("bad path {}", absolute.display()));
    }
    Url::parse(raw).map_err(|e| e.to_string())
}

/// Redis endpoint for the features job.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// `redis://` or, over TLS, `rediss://`; a password may be in the URL
    /// (`redis://:password@host:port`), which sluice never prints.
    #[arg(long, env = "SLUICE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PEM file of the certificate authorities that sign Redis's certificate
    /// (`rediss://` only); the system's when unset.
    #[arg(long, env = "SLUICE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Prefix of the per-user feature keys: `<prefix>:user:<user_id>`.
    #[arg(long, env = "SLUICE_REDIS_PREFIX", default_value = "sluice:features")]
    pub redis_prefix: String,
    /// How long a job waits for a Redis that does not answer (a failover, a
    /// snapshot fork, a restart) before it stops, in milliseconds.
    #[arg(long, env = "SLUICE_REDIS_PATIENCE_MS", default_value_t = 120_000)]
    pub redis_patience_ms: u64,
    /// features: how often the job checks that Redis still holds its
    /// partitions' values (and republishes them when not), in milliseconds.
    #[arg(long, env = "SLUICE_REDIS_CHECK_INTERVAL_MS", default_value_t = 2_000)]
    pub redis_check_interval_ms: u64,
}

impl RedisArgs {
    pub fn patience(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.redis_patience_ms)
    }

    pub fn check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.redis_check_interval_ms.max(1))
    }

    /// A connection that waits out outages up to `--redis-patience-ms`.
    pub async fn connect(&self) -> crate::redis_conn::Result<crate::redis_conn::RedisConn> {
        crate::redis_conn::RedisConn::connect(&self.redis_url, self.redis_ca_file.as_deref(), self.patience()).await
    }
}

/// Limits of the guest sandbox (docs/guests.md, "Limits").
#[derive(Debug, Clone, Args)]
pub struct GuestArgs {
    /// Wall-clock budget of one guest call (one batch), in milliseconds.
    #[arg(long, env = "SLUICE_GUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub guest_timeout_ms: u64,
    /// Memory of all of a guest's linear memories together, in MiB.
    #[arg(long, env = "SLUICE_GUEST_MEMORY_MB", default_value_t = 512)]
    pub guest_memory_mb: usize,
    /// Elements of all of a guest's tables together.
    #[arg(long, env = "SLUICE_GUEST_TABLE_ELEMENTS", default_value_t = 100_000)]
    pub guest_table_elements: usize,
    /// Fuel per guest call (about one unit per instruction); unlimited when unset.
    #[arg(long, env = "SLUICE_GUEST_FUEL")]
    pub guest_fuel: Option<u64>,
    /// Keyed-state entries one guest call may create.
    #[arg(long, env = "SLUICE_GUEST_NEW_KEYS_PER_CALL", default_value_t = 1_000_000)]
    pub guest_new_keys_per_call: usize,
    /// Keyed-state entries one partition's state may hold in all (about 40
    /// bytes of host memory each).
    #[arg(long, env = "SLUICE_STATE_MAX_KEYS_PER_PARTITION", default_value_t = 2_000_000)]
    pub state_max_keys_per_partition: usize,
    /// Time the failure policy may spend isolating the records a guest fails
    /// on in one batch, in milliseconds; then failing parts go to the
    /// dead-letter topic whole.
    #[arg(long, env = "SLUICE_GUEST_ISOLATION_BUDGET_MS", default_value_t = 120_000)]
    pub guest_isolation_budget_ms: u64,
    /// Where compiled modules are kept, so that a module compiled once
    /// starts without compiling again (a folder of this user's alone)
    /// [default: $XDG_CACHE_HOME/sluice/modules, else ~/.cache/sluice/modules].
    #[arg(long, env = "SLUICE_MODULE_CACHE_DIR")]
    pub module_cache_dir: Option<std::path::PathBuf>,
    /// Compile every module anew and keep nothing compiled on disk.
    #[arg(long, env = "SLUICE_NO_MODULE_CACHE")]
    pub no_module_cache: bool,
}

impl GuestArgs {
    /// The runtime's settings: the limits, and the module cache.
    pub fn runtime(&self) -> crate::runtime::Settings {
        crate::runtime::Settings {
            limits: self.limits(),
            module_cache: if self.no_module_cache {
                None
            } else {
                self.module_cache_dir
                    .clone()
                    .or_else(crate::runtime::default_module_cache_dir)
            },
        }
    }

    pub fn limits(&self) -> crate::runtime::Limits {
        crate::runtime::Limits {
            call_timeout: std::time::Duration::from_millis(self.guest_timeout_ms.max(1)),
            memory_bytes: self.guest_memory_mb.saturating_mul(1 << 20),
            table_elements: self.guest_table_elements,
            fuel: self.guest_fuel,
            new_keys_per_call: self.guest_new_keys_per_call,
            keys_per_partition: self.state_max_keys_per_partition,
            isolation_budget: std::time::Duration::from_millis(self.guest_isolation_budget_ms),
        }
    }
}

/// How a running job's module is swapped (docs/guests.md, "Hot swap").
#[derive(Debug, Clone, Args)]
pub struct SwapArgs {
    /// Serve the admin endpoint (GET and POST /module) here: loopback only,
    /// unless SLUICE_ADMIN_TOKEN (or SLUICE_ADMIN_TOKEN_FILE) sets the
    /// bearer token every request must then carry.
    #[arg(long, env = "SLUICE_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// The folder `POST /module` may load modules from, subfolders included
    /// [default: the folder of --module].
    #[arg(long, env = "SLUICE_MODULES_DIR")]
    pub modules_dir: Option<std::path::PathBuf>,
    /// `POST /module` takes WebAssembly text modules too, not only binary
    /// components (the text parser's errors quote the file).
    #[arg(long, env = "SLUICE_ADMIN_ACCEPT_TEXT")]
    pub admin_accept_text: bool,
    /// Do not swap when the module file changes (SIGHUP and the admin endpoint still do).
    #[arg(long)]
    pub no_watch: bool,
}

/// The variable that holds the admin endpoint's bearer token (or, with
/// `_FILE`, names a file that does).
pub const ADMIN_TOKEN_VAR: &str = "SLUICE_ADMIN_TOKEN";

impl SwapArgs {
    pub fn options(&self) -> std::result::Result<crate::hot_swap::SwapOptions, crate::secret::Error> {
        Ok(crate::hot_swap::SwapOptions {
            watch: !self.no_watch,
            admin_listen: self.admin_listen,
            admin_token: crate::secret::from_env(ADMIN_TOKEN_VAR)?,
            modules_dir: self.modules_dir.clone(),
            accept_text: self.admin_accept_text,
        })
    }
}
