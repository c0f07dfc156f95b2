//! Values that must not reach a log, an error, a report or a terminal.
//! `Secret` prints `[redacted]` through `Debug`, `Display` and `Serialize`
//! alike; only `expose` gives the value, where it is handed to a client.
//! Secrets come from the environment, from a file a variable names
//! (`<VAR>_FILE`, as container secrets are mounted) or from the
//! configuration file, never from a flag.

use std::fmt;

use serde::{Serialize, Serializer};

const REDACTED: &str = "[redacted]";

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: for the client that needs it, nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// Why a secret could not be read; names variables and files, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("both {var} and {var}_FILE are set: give the secret one way")]
    Both { var: String },
    #[error("{var}_FILE names {path}, which cannot be read: {reason}")]
    File { var: String, path: String, reason: String },
    #[error("{var}_FILE names {path}, which is empty")]
    EmptyFile { var: String, path: String },
}

/// The secrets of the configuration file (`--config`), by variable.
static FILE_SECRETS: std::sync::OnceLock<std::collections::BTreeMap<String, String>> = std::sync::OnceLock::new();

/// Remembers the secrets the configuration file holds (once, at start).
pub fn set_file_secrets(secrets: std::collections::BTreeMap<String, String>) {
    let _ = FILE_SECRETS.set(secrets);
}

/// The secret in variable `var`, or in the file that `<var>_FILE` names
/// (one trailing newline dropped), or else in the configuration file;
/// `None` when none has it. An empty variable counts as unset.
pub fn from_env(var: &str) -> Result<Option<Secret>, Error> {
    if let Some(secret) = from_lookup(var, |name| std::env::var(name).ok())? {
        return Ok(Some(secret));
    }
    let from_file = FILE_SECRETS.get().and_then(|secrets| secrets.get(var));
    Ok(from_file.filter(|v| !v.is_empty()).map(|v| Secret(v.clone())))
}

/// Where the secret in `var` comes from, if it is set: for `sluice config`.
pub fn provenance(var: &str) -> Option<String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty());
    if set(var) {
        Some(format!("variable {var}"))
    } else if set(&format!("{var}_FILE")) {
        Some(format!("the file {var}_FILE names"))
    } else if FILE_SECRETS
        .get()
        .is_some_and(|s| s.get(var).is_some_and(|v| !v.is_empty()))
    {
        Some("configuration file".into())
    } else {
        None
    }
}

/// `from_env` over any lookup of variables (the tests give a map).
fn from_lookup(var: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Secret>, Error> {
    let set = |name: &str| lookup(name).filter(|value| !value.is_empty());
    let file_var = format!("{var}_FILE");
    match (set(var), set(&file_var)) {
        (Some(_), Some(_)) => Err(Error::Both { var: var.to_string() }),
        (Some(value), None) => Ok(Some(Secret(value))),
        (None, Some(path)) => {
            let contents = std::fs::read_to_string(&path).map_err(|e| Error::File {
                var: var.to_string(),
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let value = contents.strip_suffix('\n').unwrap_or(&contents);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                return Err(Error::EmptyFile {
                    var: var.to_string(),
                    path,
                });
            }
            Ok(Some(Secret(value.to_string())))
        }
        (None, None) => Ok(None),
    }
}

/// A URL as it may be shown: its password, if it has one, replaced by
/// `[redacted]` (`redis://user:[redacted]@host:6379`). Text that is not a
/// URL is returned as it is.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) if url.password().is_some() => scrub(raw, raw),
        _ => raw.to_string(),
    }
}

/// `text` with the password of `url` replaced wherever it appears, raw or
/// percent-encoded: a client's error message may quote the whole URL.
pub fn scrub(text: &str, url: &str) -> String {
    let Some(encoded) = url::Url::parse(url).ok().and_then(|u| u.password().map(str::to_string)) else {
        return text.to_string();
    };
    let decoded = url::form_urlencoded::parse(format!("p={encoded}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let mut scrubbed = text.replace(&encoded, REDACTED);
    if !decoded.is_empty() {
        scrubbed = scrubbed.replace(&decoded, REDACTED);
    }
    scrubbed
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn debug_display_and_serialization_are_redacted() {
        let secret = Secret::new("hunter2");
        #[derive(Debug, Serialize)]
        struct Holder {
            password: Secret,
        }
        let holder = Holder {
            password: secret.clone(),
        };
        for shown in [
            format!("{secret}"),
            format!("{secret:?}"),
            format!("{holder:?}"),
            serde_json::to_string(&holder).expect("json"),
        ] {
            assert!(!shown.contains("hunter2") && shown.contains(REDACTED), "{shown}");
        }
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_the_file_its_file_variable_names() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("password");
        std::fs::write(&file, "from-a-file\n").expect("write");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let path = |p: &std::path::Path| p.display().to_string();
        let read = |vars: &[(&str, String)]| {
            let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            from_lookup("PW", |name| vars.get(name).cloned())
        };

        assert_eq!(read(&[]).expect("none"), None);
        assert_eq!(read(&[("PW", String::new())]).expect("empty"), None);
        let direct = read(&[("PW", "direct".into())]).expect("direct").expect("set");
        assert_eq!(direct.expose(), "direct");
        let filed = read(&[("PW_FILE", path(&file))]).expect("file").expect("set");
        assert_eq!(filed.expose(), "from-a-file", "the trailing newline is dropped");

        let both = read(&[("PW", "x".into()), ("PW_FILE", path(&file))]).expect_err("both");
        assert!(both.to_string().contains("PW and PW_FILE"), "{both}");
        let missing = read(&[("PW_FILE", path(&dir.path().join("nope")))]).expect_err("missing");
        assert!(missing.to_string().contains("PW_FILE names"), "{missing}");
        let blank = read(&[("PW_FILE", path(&empty))]).expect_err("empty file");
        assert!(blank.to_string().contains("is empty"), "{blank}");
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact_url("redis://app:s3cret@cache:6379/0"),
            "redis://app:[redacted]@cache:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:p%40ss@cache:6380"),
            "rediss://:[redacted]@cache:6380"
        );
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("not a url"), "not a url");
        let quoted = "error sending request for url (http://sr:p%40ss@registry:8081/subjects): p@ss refused";
        let scrubbed = scrub(quoted, "http://sr:p%40ss@registry:8081");
        assert!(!scrubbed.contains("p%40ss") && !scrubbed.contains("p@ss"), "{scrubbed}");
    }
}
