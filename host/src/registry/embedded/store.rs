//! The registry's state and its persistence.
//!
//! Subjects hold versions; a version points at a global schema id; identical
//! schemas share one id across subjects. The whole state is one JSON file,
//! replaced atomically after every change, because a schema id is written into
//! every Kafka record: losing or renumbering ids would make the topic and the
//! Parquet archive undecodable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::compat::{self, Level};
use super::{Error, Result};

/// A named reference from one schema to a version of another subject
/// (Confluent's schema references; for Avro, `name` is the referenced type's
/// full name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: u32,
}

/// A schema as registered: its text as first submitted, and its references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSchema {
    pub schema: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

/// One version of a subject, with the schema it resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: StoredSchema,
}

/// The outcome of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub id: u32,
    pub version: u32,
    /// False when the subject already had this schema and nothing changed.
    pub created: bool,
}

/// A version as a request names it: a number, or the latest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    /// Parses Confluent's version syntax: `latest`, `-1` (latest) or 1, 2, ...
    pub fn parse(text: &str) -> Result<VersionSpec> {
        match text {
            "latest" | "-1" => Ok(VersionSpec::Latest),
            _ => match text.parse::<u32>() {
                Ok(number) if number > 0 => Ok(VersionSpec::Number(number)),
                _ => Err(Error::InvalidVersion(text.to_owned())),
            },
        }
    }
}

/// What is persisted. Everything else is derived from it at load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    compatibility: Level,
    #[serde(default)]
    subject_compatibility: BTreeMap<String, Level>,
    #[serde(default)]
    schemas: BTreeMap<u32, StoredSchema>,
    #[serde(default)]
    subjects: BTreeMap<String, Vec<VersionEntry>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct VersionEntry {
    version: u32,
    id: u32,
}

/// Parsed schemas and the identity index, rebuilt from [`State`] at load so
/// the file never holds anything that could disagree with it.
#[derive(Default)]
struct Derived {
    parsed: HashMap<u32, Schema>,
    by_identity: HashMap<String, u32>,
}

struct Inner {
    state: State,
    derived: Derived,
}

/// A schema parsed from a request, with the key that decides identity.
struct Candidate {
    schema: Schema,
    identity: String,
}

/// The registry state, shared by the HTTP handlers. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    path: Option<Arc<PathBuf>>,
}

impl Store {
    /// Loads the state from `path`, or starts empty if the file does not
    /// exist yet. A file that exists but cannot be read is an error: starting
    /// empty would hand out ids that already mean something else.
    pub fn open(path: impl Into<PathBuf>) -> Result<Store> {
        let path = path.into();
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::DataFile {
                path: path.clone(),
                source,
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(Error::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        Ok(Store::with_state(state, Some(path)))
    }

    /// A store that keeps nothing on disk (tests, throwaway registries).
    pub fn in_memory() -> Store {
        Store::with_state(State::default(), None)
    }

    fn with_state(state: State, path: Option<PathBuf>) -> Store {
        let derived = derive(&state);
        Store {
            inner: Arc::new(Mutex::new(Inner { state, derived })),
            path: path.map(Arc::new),
        }
    }

    /// State is only replaced after it has been persisted, so a panic while
    /// the lock is held cannot leave it half-changed: a poisoned lock is safe
    /// to keep using.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `next` to disk (if this store has a file) and makes it current.
    fn commit(&self, inner: &mut Inner, next: State) -> Result<()> {
        if let Some(path) = &self.path {
            persist(path, &next)?;
        }
        inner.state = next;
        Ok(())
    }

    /// Registers `schema` under `subject`. An identical schema already in the
    /// subject returns its id and version unchanged; one known under another
    /// subject reuses its id. Otherwise the subject's compatibility level must
    /// accept it.
    pub fn register(&self, subject: &str, schema: &str, references: Vec<Reference>) -> Result<Registered> {
        let mut inner = self.lock();
        let candidate = inner.candidate(schema, &references)?;
        if let Some((version, id)) = inner.find_in_subject(subject, &candidate.identity) {
            return Ok(Registered {
                id,
                version,
                created: false,
            });
        }
        let level = inner.level_for(subject);
        let messages = compat::check(level, &candidate.schema, &inner.versions_of(subject));
        if !messages.is_empty() {
            return Err(Error::Incompatible {
                subject: subject.to_owned(),
                level,
                messages,
            });
        }

        let mut next = inner.state.clone();
        let known = inner.derived.by_identity.get(&candidate.identity).copied();
        let id = match known {
            Some(id) => id,
            None => {
                let id = next.schemas.keys().next_back().map_or(1, |last| last + 1);
                next.schemas.insert(
                    id,
                    StoredSchema {
                        schema: schema.to_owned(),
                        references,
                    },
                );
                id
            }
        };
        let versions = next.subjects.entry(subject.to_owned()).or_default();
        let version = versions.last().map_or(1, |last| last.version + 1);
        versions.push(VersionEntry { version, id });
        self.commit(&mut inner, next)?;

        inner.derived.parsed.entry(id).or_insert(candidate.schema);
        inner.derived.by_identity.entry(candidate.identity).or_insert(id);
        tracing::info!(subject, id, version, "registered schema");
        Ok(Registered {
            id,
            version,
            created: true,
        })
    }

    /// Finds the version of `subject` that holds `schema`.
    pub fn lookup(&self, subject: &str, schema: &str, references: &[Reference]) -> Result<SubjectVersion> {
        let inner = self.lock();
        if !inner.state.subjects.contains_key(subject) {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        let candidate = inner.candidate(schema, references)?;
        let (version, _) = inner
            .find_in_subject(subject, &candidate.identity)
            .ok_or_else(|| Error::SchemaNotFound("Schema not found".to_owned()))?;
        inner.version(subject, VersionSpec::Number(version))
    }

    /// Checks `schema` against one version of `subject`, or against the
    /// versions its level names when `version` is `None`. Returns the
    /// reasons it is incompatible; empty means compatible.
    pub fn check_compatibility(
        &self,
        subject: &str,
        version: Option<VersionSpec>,
        schema: &str,
        references: &[Reference],
    ) -> Result<Vec<String>> {
        let inner = self.lock();
        let level = inner.level_for(subject);
        let existing = match version {
            Some(spec) => Some(inner.version(subject, spec)?),
            None => None,
        };
        let candidate = inner.candidate(schema, references)?;
        Ok(match existing {
            Some(found) => match inner.derived.parsed.get(&found.id) {
                Some(parsed) => compat::check_version(level, &candidate.schema, found.version, parsed),
                None => vec![unparsable(found.version)],
            },
            None => compat::check(level, &candidate.schema, &inner.versions_of(subject)),
        })
    }

    /// The schema with global id `id`.
    pub fn schema_by_id(&self, id: u32) -> Result<StoredSchema> {
        self.lock()
            .state
            .schemas
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::SchemaNotFound(format!("Schema {id} not found")))
    }

    /// Every (subject, version) that uses schema id `id`.
    pub fn subject_versions_of_id(&self, id: u32) -> Result<Vec<(String, u32)>> {
        let inner = self.lock();
        if !inner.state.schemas.contains_key(&id) {
            return Err(Error::SchemaNotFound(format!("Schema {id} not found")));
        }
        Ok(inner
            .state
            .subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .iter()
                    .filter(|entry| entry.id == id)
                    .map(|entry| (subject.clone(), entry.version))
            })
            .collect())
    }

    /// All subjects, sorted.
    pub fn subjects(&self) -> Vec<String> {
        self.lock().state.subjects.keys().cloned().collect()
    }

    /// The version numbers of `subject`, oldest first.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>> {
        let inner = self.lock();
        let versions = inner
            .state
            .subjects
            .get(subject)
            .ok_or_else(|| Error::SubjectNotFound(subject.to_owned()))?;
        Ok(versions.iter().map(|entry| entry.version).collect())
    }

    /// One version of `subject`.
    pub fn version(&self, subject: &str, spec: VersionSpec) -> Result<SubjectVersion> {
        self.lock().version(subject, spec)
    }

    /// The level that applies when nothing more specific is set.
    pub fn global_level(&self) -> Level {
        self.lock().state.compatibility
    }

    /// The level set on `subject` itself, if any.
    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.lock().state.subject_compatibility.get(subject).copied()
    }

    /// Sets the global level, or `subject`'s own level when given.
    pub fn set_level(&self, subject: Option<&str>, level: Level) -> Result<()> {
        let mut inner = self.lock();
        let mut next = inner.state.clone();
        match subject {
            Some(subject) => {
                next.subject_compatibility.insert(subject.to_owned(), level);
            }
            None => next.compatibility = level,
        }
        self.commit(&mut inner, next)?;
        tracing::info!(subject = subject.unwrap_or("(global)"), %level, "compatibility set");
        Ok(())
    }
}

impl Inner {
    /// Parses a submitted schema with its references resolved.
    fn candidate(&self, schema: &str, references: &[Reference]) -> Result<Candidate> {
        let referenced = resolve_references(&self.state, references)?;
        let schema = parse(schema, &referenced).map_err(Error::InvalidSchema)?;
        let identity = identity(&schema, references).map_err(Error::InvalidSchema)?;
        Ok(Candidate { schema, identity })
    }

    /// The (version, id) of `subject` whose schema has this identity.
    fn find_in_subject(&self, subject: &str, identity: &str) -> Option<(u32, u32)> {
        let id = *self.derived.by_identity.get(identity)?;
        self.state
            .subjects
            .get(subject)?
            .iter()
            .find(|entry| entry.id == id)
            .map(|entry| (entry.version, id))
    }

    fn level_for(&self, subject: &str) -> Level {
        self.state
            .subject_compatibility
            .get(subject)
            .copied()
            .unwrap_or(self.state.compatibility)
    }

    /// The parsed schemas of `subject`, oldest first.
    fn versions_of(&self, subject: &str) -> Vec<(u32, &Schema)> {
        self.state
            .subjects
            .get(subject)
            .map(|versions| {
                versions
                    .iter()
                    .filter_map(|entry| {
                        let parsed = self.derived.parsed.get(&entry.id);
                        if parsed.is_none() {
                            tracing::warn!(subject, version = entry.version, "{}", unparsable(entry.version));
                        }
                        parsed.map(|schema| (entry.version, schema))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn version(&self, subject: &str, spec: VersionSpec) -> Result<SubjectVersion> {
        let versions = self
            .state
            .subjects
            .get(subject)
            .ok_or_else(|| Error::SubjectNotFound(subject.to_owned()))?;
        let entry = match spec {
            VersionSpec::Latest => versions.last(),
            VersionSpec::Number(number) => versions.iter().find(|entry| entry.version == number),
        }
        .ok_or_else(|| Error::VersionNotFound {
            subject: subject.to_owned(),
            version: match spec {
                VersionSpec::Latest => "latest".to_owned(),
                VersionSpec::Number(number) => number.to_string(),
            },
        })?;
        let schema = self
            .state
            .schemas
            .get(&entry.id)
            .cloned()
            .ok_or_else(|| Error::SchemaNotFound(format!("Schema {} not found", entry.id)))?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version: entry.version,
            id: entry.id,
            schema,
        })
    }
}

fn unparsable(version: u32) -> String {
    format!("version {version} could not be parsed from the data file, so it was not checked")
}

/// Parses every stored schema and indexes it by identity.
fn derive(state: &State) -> Derived {
    let mut derived = Derived::default();
    for (id, stored) in &state.schemas {
        let parsed = resolve_references(state, &stored.references)
            .map_err(|error| error.to_string())
            .and_then(|referenced| parse(&stored.schema, &referenced))
            .and_then(|schema| identity(&schema, &stored.references).map(|identity| (schema, identity)));
        match parsed {
            Ok((schema, identity)) => {
                derived.by_identity.entry(identity).or_insert(*id);
                derived.parsed.insert(*id, schema);
            }
            Err(error) => tracing::warn!(id, %error, "stored schema does not parse"),
        }
    }
    derived
}

/// The texts of the schemas `references` name, and of the ones they
/// reference in turn, each once.
fn resolve_references(state: &State, references: &[Reference]) -> Result<Vec<String>> {
    fn visit(
        state: &State,
        references: &[Reference],
        seen: &mut HashSet<(String, u32)>,
        texts: &mut Vec<String>,
    ) -> Result<()> {
        for reference in references {
            if !seen.insert((reference.subject.clone(), reference.version)) {
                continue;
            }
            let stored = state
                .subjects
                .get(&reference.subject)
                .and_then(|versions| versions.iter().find(|e| e.version == reference.version))
                .and_then(|entry| state.schemas.get(&entry.id))
                .ok_or_else(|| {
                    Error::InvalidSchema(format!(
                        "reference {} points at subject '{}' version {}, which does not exist",
                        reference.name, reference.subject, reference.version
                    ))
                })?;
            visit(state, &stored.references, seen, texts)?;
            texts.push(stored.schema.clone());
        }
        Ok(())
    }
    let mut texts = Vec::new();
    visit(state, references, &mut HashSet::new(), &mut texts)?;
    Ok(texts)
}

/// Parses an Avro schema, inlining referenced named types so compatibility
/// checks compare the types themselves rather than their names.
fn parse(schema: &str, referenced: &[String]) -> std::result::Result<Schema, String> {
    if referenced.is_empty() {
        return Schema::parse_str(schema).map_err(|error| error.to_string());
    }
    let (mut parsed, named) = Schema::parse_str_with_list(schema, referenced).map_err(|error| error.to_string())?;
    parsed.denormalize(&named).map_err(|error| error.to_string())?;
    Ok(parsed)
}

/// What makes two schemas "the same schema" (one id). apache-avro's full
/// serialisation of the parsed schema: insensitive to whitespace and key
/// order, but, unlike the Parsing Canonical Form, it keeps defaults and docs,
/// which change how a reader resolves data (Confluent compares them too).
fn identity(schema: &Schema, references: &[Reference]) -> std::result::Result<String, String> {
    let form = serde_json::to_string(schema).map_err(|error| error.to_string())?;
    if references.is_empty() {
        return Ok(form);
    }
    let references = serde_json::to_string(references).map_err(|error| error.to_string())?;
    Ok(format!("{form} {references}"))
}

/// Replaces the file at `path` with `state` atomically: a crash leaves
/// either the old file or the new one, never a torn one.
fn persist(path: &Path, state: &State) -> Result<()> {
    let io = |action: &'static str, at: &Path| {
        let at = at.to_path_buf();
        move |source: std::io::Error| Error::Io {
            action,
            path: at,
            source,
        }
    };
    let bytes = serde_json::to_vec_pretty(state).map_err(|source| Error::DataFile {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);

    let mut file = File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    // The rename itself is only durable once the directory is synced.
    #[cfg(unix)]
    File::open(&dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io("sync", &dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"Transaction","fields":[
        {"name":"user_id","type":"string"}]}"#;
    /// V1 with other whitespace and key order.
    const V1_RESHAPED: &str = r#"{"fields":[{"type":"string","name":"user_id"}],"name":"Transaction","type":"record"}"#;
    const V2: &str = r#"{"type":"record","name":"Transaction","fields":[
        {"name":"user_id","type":"string"},
        {"name":"amount","type":["null","double"],"default":null}]}"#;
    const V2_REQUIRED: &str = r#"{"type":"record","name":"Transaction","fields":[
        {"name":"user_id","type":"string"},
        {"name":"amount","type":"double"}]}"#;

    #[test]
    fn identical_schemas_share_an_id_and_reregistering_changes_nothing() {
        let store = Store::in_memory();
        let first = store.register("a-value", V1, vec![]).expect("register");
        assert_eq!((first.id, first.version, first.created), (1, 1, true));

        let again = store.register("a-value", V1_RESHAPED, vec![]).expect("again");
        assert_eq!((again.id, again.version, again.created), (1, 1, false));
        assert_eq!(store.versions("a-value").expect("versions"), vec![1]);

        let other = store.register("b-value", V1_RESHAPED, vec![]).expect("other");
        assert_eq!((other.id, other.version), (1, 1));

        let second = store.register("a-value", V2, vec![]).expect("v2");
        assert_eq!((second.id, second.version), (2, 2));
        assert_eq!(
            store.subject_versions_of_id(1).expect("ids"),
            vec![("a-value".to_owned(), 1), ("b-value".to_owned(), 1)]
        );
        let found = store.lookup("a-value", V1_RESHAPED, &[]).expect("lookup");
        assert_eq!((found.id, found.version), (1, 1));
    }

    #[test]
    fn incompatible_schema_is_refused_unless_level_allows() {
        let store = Store::in_memory();
        store.register("t-value", V1, vec![]).expect("v1");
        match store.register("t-value", V2_REQUIRED, vec![]) {
            Err(Error::Incompatible { messages, .. }) => {
                assert!(messages[0].contains("version 1"), "{messages:?}")
            }
            other => panic!("expected incompatible, got {other:?}"),
        }
        store.set_level(Some("t-value"), Level::None).expect("set level");
        assert_eq!(store.global_level(), Level::Backward);
        let registered = store.register("t-value", V2_REQUIRED, vec![]).expect("v2");
        assert_eq!(registered.version, 2);
    }

    #[test]
    fn ids_survive_reload_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("registry.json");
        {
            let store = Store::open(&path).expect("open");
            store.register("a-value", V1, vec![]).expect("v1");
            store.register("a-value", V2, vec![]).expect("v2");
            store.register("b-key", r#""string""#, vec![]).expect("key");
            store.set_level(None, Level::Full).expect("level");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.version("a-value", VersionSpec::Latest).expect("latest").id, 2);
        assert_eq!(store.schema_by_id(3).expect("id 3").schema, r#""string""#);
        assert_eq!(store.global_level(), Level::Full);
        let again = store.register("a-value", V1_RESHAPED, vec![]).expect("again");
        assert_eq!((again.id, again.version, again.created), (1, 1, false));
        let next = store.register("c-value", r#""long""#, vec![]).expect("next");
        assert_eq!(next.id, 4);
        assert!(!path.with_file_name("registry.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.json");
        fs::write(&path, b"{not json").expect("write");
        assert!(matches!(Store::open(&path), Err(Error::DataFile { .. })));
    }

    #[test]
    fn references_resolve_to_registered_versions() {
        let store = Store::in_memory();
        let money = r#"{"type":"record","name":"Money","namespace":"m","fields":[
            {"name":"cents","type":"long"}]}"#;
        store.register("money", money, vec![]).expect("money");
        let reference = Reference {
            name: "m.Money".to_owned(),
            subject: "money".to_owned(),
            version: 1,
        };
        let payment = r#"{"type":"record","name":"Payment","fields":[
            {"name":"amount","type":"m.Money"}]}"#;
        let registered = store
            .register("payment", payment, vec![reference.clone()])
            .expect("payment");
        assert_eq!(registered.id, 2);
        let missing = Reference {
            version: 9,
            ..reference
        };
        assert!(matches!(
            store.register("payment", payment, vec![missing]),
            Err(Error::InvalidSchema(_))
        ));
    }
}
