//! One configuration from three sources, in rising precedence: a TOML file
//! (`--config`, or `SLUICE_CONFIG`), `SLUICE_*` variables, then flags.
//!
//! One scheme names a setting everywhere: the flag `--redis-url` is the
//! variable `SLUICE_REDIS_URL` and the file key `redis_url`. A file key at
//! the top applies to every command that has the flag; a key in a table
//! named after a command (`[run]`) applies to that command only, and wins
//! over the top (global flags, such as `brokers`, belong at the top). The file may also hold the secrets (`admin_password`, ...),
//! which no flag takes. A key that names no flag, secret or command is an
//! error that names it.
//!
//! figment reads and layers the file and the variables and says where each
//! value came from; clap parses the flags, taking what figment found as each
//! flag's default, so a flag still wins.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgMatches, Command, CommandFactory, FromArgMatches, parser::ValueSource};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Value;

use crate::cli::Cli;

/// The variable that names the configuration file (as `--config` does).
pub const CONFIG_VAR: &str = "SLUICE_CONFIG";
const PREFIX: &str = "SLUICE_";

/// What no flag takes: the secrets, and the admin user read beside them.
/// Each comes from its variable, the file `<VAR>_FILE` names, or the
/// configuration file's key (the variable's name without `SLUICE_`,
/// lower-cased), in that order.
pub const SECRETS: &[(&str, &str)] = &[
    (
        crate::config::ADMIN_USER_VAR,
        "Kafka user of setup, produce, status and rebuild-state (not a secret; default sluice-admin)",
    ),
    (crate::config::ADMIN_PASSWORD_VAR, "its password"),
    (
        crate::jobs::BACKUP_PASSWORD_VAR,
        "password of transactions-backup-job-user (run --job backup)",
    ),
    (
        crate::jobs::FEATURES_PASSWORD_VAR,
        "password of transactions-ml-features-job-user (run --job features)",
    ),
    (
        crate::config::KAFKA_PASSWORD_VAR,
        "password of the user --kafka-user names, when given",
    ),
    (
        crate::config::KAFKA_KEY_PASSWORD_VAR,
        "passphrase of an encrypted --kafka-key-file",
    ),
    (
        crate::config::ADMIN_TOKEN_VAR,
        "bearer token of the admin listener (--admin-listen)",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("configuration file {path}: unknown key {key:?}{hint}")]
    UnknownKey { path: String, key: String, hint: String },
}

/// The file key of a flag (`redis-url` -> `redis_url`).
pub fn key_of(long: &str) -> String {
    long.replace('-', "_")
}

/// The variable of a flag (`redis-url` -> `SLUICE_REDIS_URL`).
pub fn variable_of(long: &str) -> String {
    format!("{PREFIX}{}", key_of(long).to_uppercase())
}

/// The file key of a secret's variable (`SLUICE_ADMIN_PASSWORD` ->
/// `admin_password`).
fn secret_key(var: &str) -> String {
    var.trim_start_matches(PREFIX).to_lowercase()
}

/// The settings of a command line: the command tree as parsed (every flag
/// with its variable, defaults from the file and variables) and what came
/// from where, for `sluice config`.
pub struct Layers {
    pub command: Command,
    pub matches: ArgMatches,
    pub file: Option<PathBuf>,
    figment: Figment,
}

/// Parses the process's command line over the file and the variables;
/// exits as clap does on a bad command line.
pub fn parse() -> Result<(Cli, Layers), Error> {
    parse_from(std::env::args_os().collect())
}

pub fn parse_from(args: Vec<OsString>) -> Result<(Cli, Layers), Error> {
    let file = config_path(&args);
    let file_figment = match &file {
        Some(path) => {
            if !path.is_file() {
                return Err(Error::File {
                    path: path.display().to_string(),
                    reason: "no such file".into(),
                });
            }
            Figment::from(Toml::file_exact(path))
        }
        None => Figment::new(),
    };
    let command = command();
    let file_values = file_values(&file_figment, file.as_deref())?;
    check_keys(&command, &file_values, file.as_deref())?;
    crate::secret::set_file_secrets(
        SECRETS
            .iter()
            .filter_map(|(var, _)| Some((var.to_string(), as_text(file_values.get(&secret_key(var))?)?)))
            .collect(),
    );
    let figment = file_figment.merge(Env::prefixed(PREFIX));
    let command = with_defaults(command, &figment);
    let matches = command.clone().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok((
        cli,
        Layers {
            command,
            matches,
            file,
            figment,
        },
    ))
}

/// `--config PATH` or `--config=PATH` anywhere on the line, else the
/// variable.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The file's values as a dictionary (empty without a file).
fn file_values(figment: &Figment, path: Option<&Path>) -> Result<BTreeMap<String, Value>, Error> {
    let Some(path) = path else {
        return Ok(BTreeMap::new());
    };
    figment.extract().map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The long name of a flag that is a setting: not `--help`, `--version`,
/// nor `--config` (which names the file the settings come from).
fn setting_name(arg: &Arg) -> Option<&str> {
    arg.get_long().filter(|l| !matches!(*l, "help" | "version" | "config"))
}

/// The settings a command defines itself; the root's are the global ones.
fn own_flags(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|a| setting_name(a).is_some())
}

/// Every command of the tree: the root, then each subcommand.
fn commands(root: &Command) -> impl Iterator<Item = &Command> {
    std::iter::once(root).chain(root.get_subcommands())
}

/// Refuses a file key that no command knows.
fn check_keys(root: &Command, values: &BTreeMap<String, Value>, path: Option<&Path>) -> Result<(), Error> {
    let Some(path) = path else { return Ok(()) };
    let keys_of = |flags: &mut dyn Iterator<Item = &Arg>| -> BTreeSet<String> {
        flags.filter_map(setting_name).map(key_of).collect()
    };
    let every_key = keys_of(&mut commands(root).flat_map(own_flags));
    let secrets: BTreeSet<String> = SECRETS.iter().map(|(var, _)| secret_key(var)).collect();
    let unknown = |key: String, hint: String| Error::UnknownKey {
        path: path.display().to_string(),
        key,
        hint,
    };
    for (key, value) in values {
        if let Some(command) = root.get_subcommands().find(|c| c.get_name() == key) {
            let Value::Dict(_, table) = value else {
                return Err(unknown(key.clone(), format!(" ([{key}] must be a table)")));
            };
            let known = keys_of(&mut own_flags(command));
            if let Some(key) = table.keys().find(|k| !known.contains(*k)) {
                return Err(unknown(
                    format!("{}.{key}", command.get_name()),
                    format!(" (not a flag of `sluice {}`)", command.get_name()),
                ));
            }
        } else if !every_key.contains(key) && !secrets.contains(key) {
            return Err(unknown(
                key.clone(),
                " (not a flag of any command: see docs/configuration.md)".into(),
            ));
        }
    }
    Ok(())
}

/// The command tree as sluice parses it: every flag with its variable.
pub fn command() -> Command {
    with_variables(Cli::command())
}

/// Gives every flag the variable of the scheme (`--config` has its own).
fn with_variables(root: Command) -> Command {
    fn with_variable(arg: Arg) -> Arg {
        match setting_name(&arg).map(variable_of) {
            Some(variable) => arg.env(variable),
            None => arg,
        }
    }
    root.mut_args(with_variable)
        .mut_subcommands(|command| command.mut_args(with_variable))
}

/// The value of a flag's key in the file and variables for `command`
/// (`None` for the root): the command's table over the top, the variables
/// over both.
fn layered(figment: &Figment, command: Option<&str>, key: &str) -> Option<(Value, String)> {
    let from_env = figment.find_value(key).ok().filter(|v| {
        figment
            .get_metadata(v.tag())
            .is_some_and(|m| m.name.contains("environment"))
    });
    let found = from_env
        .or_else(|| command.and_then(|c| figment.find_value(&format!("{c}.{key}")).ok()))
        .or_else(|| figment.find_value(key).ok())?;
    if matches!(found, Value::Dict(..)) {
        return None;
    }
    let source = match figment.get_metadata(found.tag()) {
        Some(m) if m.name.contains("environment") => format!("variable {}", variable_of(key)),
        Some(m) => match m.source.as_ref().and_then(|s| s.file_path()) {
            Some(path) => format!("file {}", path.display()),
            None => m.name.to_string(),
        },
        None => "file".into(),
    };
    Some((found, source))
}

/// The text of a scalar value as a flag would take it; arrays give one per
/// element.
fn as_texts(value: &Value) -> Vec<String> {
    match value {
        Value::Array(_, items) => items.iter().filter_map(as_text).collect(),
        other => as_text(other).into_iter().collect(),
    }
}

fn as_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::String(_, s) => s.clone(),
        Value::Char(_, c) => c.to_string(),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(..) => match (value.to_i128(), value.to_u128()) {
            (Some(i), _) => i.to_string(),
            (None, Some(u)) => u.to_string(),
            (None, None) => value.to_f64()?.to_string(),
        },
        _ => return None,
    })
}

/// Sets each flag's default to what the file and variables give.
fn with_defaults(root: Command, figment: &Figment) -> Command {
    let set = |arg: Arg, command: Option<&str>| -> Arg {
        let Some(long) = setting_name(&arg) else {
            return arg;
        };
        match layered(figment, command, &key_of(long)) {
            Some((value, _)) => {
                let texts = as_texts(&value);
                if texts.is_empty() {
                    arg
                } else {
                    arg.default_values(texts)
                }
            }
            None => arg,
        }
    };
    let root = root.mut_args(|arg| set(arg, None));
    root.mut_subcommands(|command| {
        let name = command.get_name().to_string();
        command.mut_args(|arg| set(arg, Some(&name)))
    })
}

/// One setting as `sluice config` shows it.
pub struct Shown {
    pub key: String,
    pub value: Option<Vec<String>>,
    pub source: String,
}

impl Layers {
    /// Every setting of `command` (`None`: the global ones), its value and
    /// where it came from. URLs are shown without their password.
    pub fn settings(&self, command: Option<&str>) -> Vec<Shown> {
        let root = &self.command;
        let target = match command {
            Some(name) => root.find_subcommand(name).expect("a command of the tree"),
            None => root,
        };
        own_flags(target)
            .map(|arg| {
                let long = arg.get_long().expect("long");
                let key = key_of(long);
                let on_line = command.is_none()
                    && self.matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine);
                let (value, source) = if on_line {
                    let value = self
                        .matches
                        .get_raw(arg.get_id().as_str())
                        .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect());
                    (value, "flag".to_string())
                } else if let Some((value, source)) = layered(&self.figment, command, &key) {
                    (Some(as_texts(&value)), source)
                } else if !arg.get_default_values().is_empty() {
                    let defaults = arg
                        .get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect();
                    (Some(defaults), "default".to_string())
                } else {
                    (None, "unset".to_string())
                };
                let value =
                    value.map(|values: Vec<String>| values.iter().map(|v| crate::secret::redact_url(v)).collect());
                Shown { key, value, source }
            })
            .collect()
    }

    /// The names of the commands that have settings of their own.
    pub fn command_names(&self) -> Vec<String> {
        self.command
            .get_subcommands()
            .filter(|c| own_flags(c).next().is_some())
            .map(|c| c.get_name().to_string())
            .collect()
    }
}

impl Layers {
    /// `sluice config`: every command's settings as TOML, each with where
    /// its value came from; the secrets only say whether they are set.
    pub fn effective(&self) -> String {
        let file = self
            .file
            .as_ref()
            .map_or("the configuration file (none given)".to_string(), |p| {
                format!("the file {}", p.display())
            });
        let mut out = format!(
            "# The effective configuration: flags, then SLUICE_* variables, then {file},\n\
             # then the defaults. Secrets and the passwords of URLs are redacted.\n\n"
        );
        let mut section = |title: Option<&str>, settings: Vec<Shown>| {
            if let Some(title) = title {
                out.push_str(&format!("\n[{title}]\n"));
            }
            for shown in settings {
                match shown.value {
                    Some(values) => out.push_str(&format!(
                        "{} = {}  # {}\n",
                        shown.key,
                        toml_value(&values),
                        shown.source
                    )),
                    None => out.push_str(&format!("# {} is unset\n", shown.key)),
                }
            }
        };
        section(None, self.settings(None));
        for name in self.command_names() {
            section(Some(&name), self.settings(Some(&name)));
        }
        out.push_str("\n[secrets]\n");
        for (var, _) in SECRETS {
            let key = secret_key(var);
            match crate::secret::provenance(var) {
                Some(source) => out.push_str(&format!("{key} = \"[redacted]\"  # {source}\n")),
                None => out.push_str(&format!("# {key} is unset\n")),
            }
        }
        out
    }
}

/// Values as TOML: numbers and booleans bare, text quoted, several as an
/// array.
fn toml_value(values: &[String]) -> String {
    let one = |v: &String| {
        if v == "true" || v == "false" || v.parse::<i128>().is_ok() || v.parse::<f64>().is_ok_and(f64::is_finite) {
            v.clone()
        } else {
            serde_json::to_string(v).expect("a string")
        }
    };
    match values {
        [single] => one(single),
        many => format!("[{}]", many.iter().map(one).collect::<Vec<_>>().join(", ")),
    }
}

/// The configuration reference (docs/configuration.md), from the command
/// tree itself, so that it cannot drift from the flags.
pub fn reference(root: &Command) -> String {
    let mut out = String::from(
        "<!-- Generated by `sluice config --reference`; a test checks that this file matches it. -->\n\
         # Configuration reference\n\n\
         Every flag has a variable and a key in the configuration file\n\
         (`--config` or `SLUICE_CONFIG`, TOML). Flags win over variables, variables over\n\
         the file, the file over the defaults. A key at the top of the file applies to\n\
         every command with that flag; a key in a table named after a command (`[run]`)\n\
         to that command only, over the top. A key that is none of these is an error.\n\
         `sluice config` prints the configuration in effect and where each value came from.\n",
    );
    let mut table = |title: String, flags: Vec<&Arg>| {
        out.push_str(&format!(
            "\n## {title}\n\n| Flag | Variable | File key | Default | What it sets |\n|---|---|---|---|---|\n"
        ));
        for arg in flags {
            let long = arg.get_long().expect("long");
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            let mut help = arg
                .get_help()
                .map(|h| h.to_string())
                .unwrap_or_default()
                .replace('\n', " ");
            if !help.is_empty() && !help.ends_with('.') {
                help.push('.');
            }
            let choices: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .filter(|name| name != "true" && name != "false")
                .map(|name| format!("`{name}`"))
                .collect();
            if !choices.is_empty() {
                help.push_str(&format!(" One of {}.", choices.join(", ")));
            }
            let default = if default.is_empty() {
                "–".to_string()
            } else {
                format!("`{default}`")
            };
            out.push_str(&format!(
                "| `--{long}` | `{}` | `{}` | {default} | {} |\n",
                variable_of(long),
                key_of(long),
                help.replace('|', "\\|").trim()
            ));
        }
    };
    table("Every command".into(), own_flags(root).collect());
    for command in root.get_subcommands() {
        let flags: Vec<&Arg> = own_flags(command).collect();
        if !flags.is_empty() {
            table(format!("`sluice {}`", command.get_name()), flags);
        }
    }
    out.push_str(
        "\n## Secrets\n\nNo flag takes these. Each comes from its variable, else from the file that\n\
         `<VARIABLE>_FILE` names (as container secrets are mounted), else from the\n\
         configuration file's key.\n\n| Variable | File key | What it is |\n|---|---|---|\n",
    );
    for (var, what) in SECRETS {
        out.push_str(&format!("| `{var}` | `{}` | {what} |\n", secret_key(var)));
    }
    out.push_str(
        "\n## From the environment only\n\n| Variable | What it is |\n|---|---|\n\
         | `SLUICE_LOG`, else `RUST_LOG` | the log level, a tracing filter such as `debug` or `sluice=debug,info` \
         (default `info`); one that does not parse is named on stderr and `info` used |\n\
         | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | S3 credentials, read by the S3 client \
         as AWS tools read them |\n\
         | `AWS_REGION` | the S3 region when `--s3-region` is not given |\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(file: &str, args: &[&str]) -> Result<(Cli, Layers), Error> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, file).expect("write");
        let mut line: Vec<OsString> = vec!["sluice".into(), "--config".into(), path.clone().into()];
        line.extend(args.iter().map(OsString::from));
        parse_from(line)
    }

    #[test]
    fn every_flag_has_the_variable_and_key_of_the_scheme() {
        let root = with_variables(Cli::command());
        for command in commands(&root) {
            for arg in own_flags(command) {
                let long = arg.get_long().expect("long");
                assert_eq!(
                    arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                    Some(variable_of(long)),
                    "--{long} of {}",
                    command.get_name()
                );
            }
        }
    }

    #[test]
    fn a_command_table_wins_over_the_top_and_a_flag_over_both() {
        let file = "topic = \"from-file\"\n[status]\nbackup_group = \"file-group\"\n";
        let (cli, _) = parse_with(file, &["status"]).expect("parse");
        assert_eq!(cli.kafka.topic, "from-file");
        let crate::cli::Command::Status { backup_group, .. } = cli.command else {
            panic!("status")
        };
        assert_eq!(backup_group, "file-group");
        let (cli, layers) = parse_with(file, &["--topic", "from-flag", "status"]).expect("parse");
        assert_eq!(cli.kafka.topic, "from-flag");
        let global = layers.settings(None);
        let topic = global.iter().find(|s| s.key == "topic").expect("topic");
        assert_eq!(topic.source, "flag");
    }

    #[test]
    fn unknown_keys_are_named() {
        let Err(e) = parse_with("brokerz = \"x\"\n", &["status"]) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("unknown key \"brokerz\""), "{e}");
        let Err(e) = parse_with("[run]\npartitions = 3\n", &["status"]) else {
            panic!("accepted")
        };
        assert!(e.to_string().contains("\"run.partitions\""), "{e}");
        assert!(parse_with("admin_password = \"p\"\n[setup]\npartitions = 3\n", &["status"]).is_ok());
    }
}
