//! Avro compatibility rules, as Confluent's registry applies them.
//!
//! apache-avro decides whether one schema can read data written with another;
//! this module decides which pairs to check for a compatibility level and turns
//! failures into messages a person can act on (which version, which direction,
//! what apache-avro found).

use std::error::Error as StdError;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

/// Longest reason kept in a message: apache-avro prints whole schemas when
/// their types differ, which would bury the useful part.
const MAX_REASON_CHARS: usize = 400;

/// A Confluent compatibility level. BACKWARD is Confluent's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Level {
    /// The level's Confluent name, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Parses a Confluent level name, ignoring case.
    pub fn parse(name: &str) -> Option<Level> {
        [
            Level::None,
            Level::Backward,
            Level::BackwardTransitive,
            Level::Forward,
            Level::ForwardTransitive,
            Level::Full,
            Level::FullTransitive,
        ]
        .into_iter()
        .find(|level| level.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// The new schema must read data written with the old ones.
    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    /// The old schemas must read data written with the new one.
    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    /// Checked against every version rather than only the latest.
    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks `candidate` against a subject's versions (oldest first, as
/// `(version, schema)`) as `level` requires: the latest only, or all of them
/// for the transitive levels. Returns one message per failure; empty means
/// compatible.
pub fn check(level: Level, candidate: &Schema, existing: &[(u32, &Schema)]) -> Vec<String> {
    let against = if level.transitive() {
        existing
    } else {
        existing.last().map_or(&[][..], std::slice::from_ref)
    };
    against
        .iter()
        .flat_map(|(version, schema)| check_version(level, candidate, *version, schema))
        .collect()
}

/// Checks `candidate` against one version in the directions `level` names
/// (what Confluent does when a request names the version).
pub fn check_version(level: Level, candidate: &Schema, version: u32, existing: &Schema) -> Vec<String> {
    let mut messages = Vec::new();
    if level.backward()
        && let Err(reason) = can_read(existing, candidate)
    {
        messages.push(format!(
            "{level}: the new schema cannot read data written with version {version}: {reason}"
        ));
    }
    if level.forward()
        && let Err(reason) = can_read(candidate, existing)
    {
        messages.push(format!(
            "{level}: version {version} cannot read data written with the new schema: {reason}"
        ));
    }
    messages
}

/// Whether `reader` can read everything `writer` writes. A partial match
/// (a writer union branch or enum symbol the reader lacks) fails some records
/// at read time, so, like Confluent, it counts as incompatible.
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err("only part of the written data can be read: a union \
             branch or enum symbol of the writer has no match in the reader"
            .to_owned()),
        Err(error) => Err(describe(&error)),
    }
}

/// The error and its causes on one line, cut to a readable length.
fn describe(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Schema {
        Schema::parse_str(text).expect("valid schema")
    }

    fn v1() -> Schema {
        parse(
            r#"{"type":"record","name":"Transaction","fields":[
                {"name":"user_id","type":"string"}]}"#,
        )
    }

    fn with_optional() -> Schema {
        parse(
            r#"{"type":"record","name":"Transaction","fields":[
                {"name":"user_id","type":"string"},
                {"name":"note","type":["null","string"],"default":null}]}"#,
        )
    }

    fn with_required() -> Schema {
        parse(
            r#"{"type":"record","name":"Transaction","fields":[
                {"name":"user_id","type":"string"},
                {"name":"amount","type":"double"}]}"#,
        )
    }

    #[test]
    fn backward_accepts_added_field_with_default() {
        let old = v1();
        assert!(check(Level::Backward, &with_optional(), &[(1, &old)]).is_empty());
    }

    #[test]
    fn backward_refuses_added_field_without_default() {
        let old = v1();
        let messages = check(Level::Backward, &with_required(), &[(1, &old)]);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("version 1"), "{}", messages[0]);
        assert!(messages[0].contains("amount"), "{}", messages[0]);
    }

    #[test]
    fn forward_accepts_added_required_field() {
        let old = v1();
        assert!(check(Level::Forward, &with_required(), &[(1, &old)]).is_empty());
        assert_eq!(check(Level::Full, &with_required(), &[(1, &old)]).len(), 1);
    }

    #[test]
    fn transitive_checks_every_version_plain_only_latest() {
        let (first, second) = (with_required(), v1());
        let existing = [(1, &first), (2, &second)];
        // Removing `amount` breaks forward reads by version 1 only.
        assert!(check(Level::Forward, &v1(), &existing).is_empty());
        let messages = check(Level::ForwardTransitive, &v1(), &existing);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("version 1"), "{}", messages[0]);
    }

    #[test]
    fn none_accepts_anything_and_levels_parse() {
        let old = parse(r#""string""#);
        assert!(check(Level::None, &parse(r#""int""#), &[(1, &old)]).is_empty());
        assert_eq!(Level::parse("full_transitive"), Some(Level::FullTransitive));
        assert_eq!(Level::parse("SIDEWAYS"), None);
    }

    #[test]
    fn partial_enum_match_is_incompatible() {
        let old = parse(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#);
        let new = parse(r#"{"type":"enum","name":"E","symbols":["A"]}"#);
        assert_eq!(check(Level::Backward, &new, &[(1, &old)]).len(), 1);
    }
}
