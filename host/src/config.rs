//! Connection settings shared by every command: Kafka, registry, object
//! storage and Redis. Values come from flags or `SLUICE_*` variables (see
//! README "Configuration").

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
}

pub type Result<T> = std::result::Result<T, Error>;

/// How to reach and authenticate to Kafka.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers.
    #[arg(long, env = "SLUICE_BROKERS", default_value = "127.0.0.1:9092", global = true)]
    pub brokers: String,
    /// How clients reach the brokers: `sasl_plaintext` (SASL/SCRAM) or
    /// `plaintext` (no authentication).
    #[arg(long, env = "SLUICE_SECURITY_PROTOCOL", value_enum, ignore_case = true,
          default_value_t = SecurityProtocol::SaslPlaintext, global = true)]
    pub security_protocol: SecurityProtocol,
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
}

impl SecurityProtocol {
    fn librdkafka_name(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::SaslPlaintext => "sasl_plaintext",
        }
    }

    fn authenticates(self) -> bool {
        self == Self::SaslPlaintext
    }
}

/// The password of the user `--kafka-user` names.
pub const KAFKA_PASSWORD_VAR: &str = "SLUICE_KAFKA_PASSWORD";

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
    ADMIN_TOKEN_VAR,
    crate::logging::LEVEL_VARS[0],
    crate::logging::LEVEL_VARS[1],
    "SLUICE_PROGRESS_INTERVAL_MS",
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
        let user = std::env::var(ADMIN_USER_VAR).unwrap_or_else(|_| "sluice-admin".into());
        self.credentials(&user, ADMIN_PASSWORD_VAR)
    }

    /// A librdkafka configuration for these brokers and credentials.
    pub fn client_config(&self, credentials: Option<&Credentials>) -> ClientConfig {
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
        config
    }
}

/// Schema registry endpoint.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    #[arg(
        long,
        env = "SLUICE_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub registry_url: String,
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
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub s3_region: String,
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
                    .with_region(&self.s3_region)
                    .with_virtual_hosted_style_request(!self.s3_path_style);
                if let Some(endpoint) = &self.s3_endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
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
    #[arg(long, env = "SLUICE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
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
        crate::redis_conn::RedisConn::connect(&self.redis_url, self.patience()).await
    }
}

/// Limits of the guest sandbox (README "Guest limits").
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
}

impl GuestArgs {
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

/// How a running job's module is swapped (README "Hot swap").
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
