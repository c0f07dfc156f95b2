//! `sluice setup`: the topic, the registry subjects and the Kafka users and
//! ACLs the jobs need. Idempotent: a second run finds everything in place
//! and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use crate::config::KafkaArgs;
use crate::kafka::admin::{TopicOutcome, TopicSpec, ensure_topic};
use crate::kafka::security::{
    AclOperation, AclOutcome, AclResourceType, AclSpec, ScramMechanism, ScramUser, create_acls, upsert_scram_users,
};
use crate::model::{FEATURES_SCHEMA, FEATURES_SUBJECT, TRANSACTION_SCHEMA, value_subject};
use crate::registry::Registry;

use super::{BACKUP_PASSWORD_VAR, BACKUP_USER, Error, FEATURES_PASSWORD_VAR, FEATURES_USER, Result};

/// One day: the topic is a buffer, the Parquet archive the system of record.
pub const RETENTION_MS: i64 = 86_400_000;
/// Dead letters are kept a week, long enough to inspect and replay them.
pub const DLQ_RETENTION_MS: i64 = 7 * RETENTION_MS;
pub const COMPATIBILITY: &str = "BACKWARD";

pub struct Setup {
    pub kafka: KafkaArgs,
    pub registry: Registry,
    pub partitions: i32,
    /// The groups each job's user may use.
    pub backup_groups: Vec<String>,
    pub features_groups: Vec<String>,
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Setup {
    /// Runs every step and returns what each did, one line per step.
    pub async fn run(self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        let credentials = self.kafka.admin_credentials()?;
        let admin: Arc<AdminClient<DefaultClientContext>> =
            Arc::new(self.kafka.client_config(credentials.as_ref())?.create()?);

        let topics = [
            TopicSpec {
                name: self.kafka.topic.clone(),
                partitions: self.partitions,
                configs: vec![
                    ("retention.ms", RETENTION_MS.to_string()),
                    ("cleanup.policy", "delete".into()),
                ],
            },
            TopicSpec {
                name: self.kafka.dlq_topic.clone(),
                partitions: 1,
                configs: vec![
                    ("retention.ms", DLQ_RETENTION_MS.to_string()),
                    ("cleanup.policy", "delete".into()),
                ],
            },
        ];
        for spec in &topics {
            let line = match ensure_topic(&admin, spec).await? {
                TopicOutcome::Created => format!(
                    "topic {}: created with {} partitions, retention.ms={}",
                    spec.name, spec.partitions, spec.configs[0].1
                ),
                TopicOutcome::Exists { partitions } if partitions as i32 != spec.partitions => format!(
                    "topic {}: exists with {partitions} partitions (asked for {}); left as it is",
                    spec.name, spec.partitions
                ),
                TopicOutcome::Exists { partitions } => format!("topic {}: exists ({partitions} partitions)", spec.name),
            };
            lines.push(line);
        }

        for (subject, schema) in [
            (value_subject(&self.kafka.topic), TRANSACTION_SCHEMA),
            (FEATURES_SUBJECT.to_string(), FEATURES_SCHEMA),
        ] {
            self.registry.set_compatibility(&subject, COMPATIBILITY).await?;
            let registered = self.registry.register(&subject, schema).await?;
            lines.push(format!(
                "subject {subject}: compatibility {COMPATIBILITY}, schema id {} (registered or already present)",
                registered.id
            ));
        }

        lines.extend(self.users(&admin).await?);
        lines.extend(self.acls(&admin).await?);
        Ok(lines)
    }

    /// SCRAM-SHA-512 credentials of the two job users (an upsert: a rerun
    /// sets the same passwords again).
    async fn users(&self, admin: &Arc<AdminClient<DefaultClientContext>>) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        let mut users = Vec::new();
        for (name, var) in [
            (BACKUP_USER, BACKUP_PASSWORD_VAR),
            (FEATURES_USER, FEATURES_PASSWORD_VAR),
        ] {
            match crate::secret::from_env(var).map_err(crate::config::Error::from)? {
                Some(password) => users.push(ScramUser {
                    name: name.to_string(),
                    password,
                }),
                None => lines.push(format!("user {name}: skipped, {var} is not set")),
            }
        }
        let mechanism = match self.kafka.sasl_mechanism.as_str() {
            "SCRAM-SHA-256" => ScramMechanism::Sha256,
            _ => ScramMechanism::Sha512,
        };
        let admin = admin.clone();
        let results = tokio::task::spawn_blocking(move || upsert_scram_users(&admin, &users, mechanism, ADMIN_TIMEOUT))
            .await
            .map_err(|e| Error::Other(e.to_string()))??;
        for (name, result) in results {
            match result {
                Ok(()) => lines.push(format!("user {name}: SCRAM credentials set")),
                Err(e) => return Err(Error::Other(format!("user {name}: {e}"))),
            }
        }
        Ok(lines)
    }

    /// Each job user may read the topic and its own groups' offsets, and
    /// write dead letters: nothing else (docs/operations.md, "Users and ACLs").
    async fn acls(&self, admin: &Arc<AdminClient<DefaultClientContext>>) -> Result<Vec<String>> {
        let (topic, dlq) = (self.kafka.topic.as_str(), self.kafka.dlq_topic.as_str());
        let mut acls = Vec::new();
        for (user, groups) in [
            (BACKUP_USER, &self.backup_groups),
            (FEATURES_USER, &self.features_groups),
        ] {
            let mut grants = vec![
                (AclResourceType::Topic, topic, AclOperation::Read),
                (AclResourceType::Topic, topic, AclOperation::Describe),
                (AclResourceType::Topic, dlq, AclOperation::Write),
                (
                    AclResourceType::Cluster,
                    AclSpec::CLUSTER_NAME,
                    AclOperation::IdempotentWrite,
                ),
            ];
            grants.extend(
                groups
                    .iter()
                    .map(|group| (AclResourceType::Group, group.as_str(), AclOperation::Read)),
            );
            acls.extend(
                grants
                    .into_iter()
                    .map(|(kind, name, operation)| AclSpec::allow_user(kind, name, user, operation)),
            );
        }
        let count = acls.len();
        let admin = admin.clone();
        let outcomes = tokio::task::spawn_blocking(move || create_acls(&admin, &acls, ADMIN_TIMEOUT))
            .await
            .map_err(|e| Error::Other(e.to_string()))??;
        let disabled = outcomes.iter().find_map(|o| match o {
            AclOutcome::SecurityDisabled(message) => Some(message.clone()),
            _ => None,
        });
        let failed: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| match o {
                AclOutcome::Failed(m) => Some(m.as_str()),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            return Err(Error::Other(format!("creating ACLs: {}", failed.join("; "))));
        }
        let granted = format!(
            "{BACKUP_USER} may use groups {}; {FEATURES_USER} may use groups {}",
            self.backup_groups.join(", "),
            self.features_groups.join(", ")
        );
        Ok(vec![match disabled {
            Some(message) => format!(
                "acls: the broker has no authorizer (SECURITY_DISABLED: {message}); {count} ACLs not enforced, \
                 continuing ({granted})"
            ),
            None => format!("acls: {count} ACLs in place ({granted})"),
        }])
    }
}
