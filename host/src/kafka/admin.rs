//! Topic administration for `sluice setup`: create when missing, report
//! what exists, never change an existing topic behind the operator's back.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka admin ({context}): {source}")]
    Kafka { context: String, source: KafkaError },
    #[error("creating topic {topic}: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A topic `setup` makes sure of.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub configs: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TopicOutcome {
    Created,
    /// The topic was there already, with this many partitions.
    Exists {
        partitions: usize,
    },
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Creates the topic unless it exists.
pub async fn ensure_topic(admin: &AdminClient<DefaultClientContext>, spec: &TopicSpec) -> Result<TopicOutcome> {
    let mut topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(1));
    for (key, value) in &spec.configs {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|source| Error::Kafka {
            context: format!("create topic {}", spec.name),
            source,
        })?;
    match results.into_iter().next() {
        None | Some(Ok(_)) => Ok(TopicOutcome::Created),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(TopicOutcome::Exists {
            partitions: partition_count(admin, &spec.name)?,
        }),
        Some(Err((topic, code))) => Err(Error::CreateTopic { topic, code }),
    }
}

/// Partitions of a topic, from cluster metadata.
pub fn partition_count(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<usize> {
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|source| Error::Kafka {
            context: format!("metadata of {topic}"),
            source,
        })?;
    Ok(metadata.topics().first().map_or(0, |t| t.partitions().len()))
}
