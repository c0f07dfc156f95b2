//! One configuration: a TOML file, `SLUICE_*` variables and flags, in
//! rising precedence, checked by what `sluice setup` does with them; unknown
//! keys refused; `sluice config` shows where each value came from and no
//! secret; the configuration reference matches the code.

mod common;

use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn partitions_of(topic: &str) -> usize {
    let args = kafka_args(topic);
    let credentials = args.admin_credentials().expect("admin credentials");
    let consumer: BaseConsumer = args
        .client_config(credentials.as_ref())
        .expect("client config")
        .create()
        .expect("client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions().len()
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn succeeded(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The file sets the topic and (in `[setup]`) the partitions; a variable
/// wins over the file, a flag over both. The admin password comes from the
/// file alone.
#[test]
fn file_then_variables_then_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (from_file, from_env, from_flag) = (unique("cfg-file"), unique("cfg-env"), unique("cfg-flag"));
    let config = write_config(
        &dir,
        &format!(
            "topic = \"{from_file}\"\ndlq_topic = \"{from_file}-dlq\"\nadmin_password = \"{}\"\n\n[setup]\npartitions = 3\n",
            env("SLUICE_ADMIN_PASSWORD")
        ),
    );
    let no_password = ["SLUICE_ADMIN_PASSWORD"];
    succeeded(&sluice_env(&["--config", &config, "setup"], &[], &no_password));
    assert_eq!(partitions_of(&from_file), 3);

    let variables = [("SLUICE_TOPIC", from_env.as_str()), ("SLUICE_PARTITIONS", "4")];
    succeeded(&sluice_env(&["--config", &config, "setup"], &variables, &no_password));
    assert_eq!(partitions_of(&from_env), 4);

    succeeded(&sluice_env(
        &["--config", &config, "--topic", &from_flag, "setup", "--partitions", "5"],
        &variables,
        &no_password,
    ));
    assert_eq!(partitions_of(&from_flag), 5);

    // `sluice config` says where each came from.
    let shown = succeeded(&sluice_env(
        &["config", "--config", &config, "--topic", &from_flag],
        &variables,
        &no_password,
    ));
    assert!(shown.contains(&format!("topic = \"{from_flag}\"  # flag")), "{shown}");
    assert!(
        shown.contains("partitions = 4  # variable SLUICE_PARTITIONS"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("dlq_topic = \"{from_file}-dlq\"  # file {config}")),
        "{shown}"
    );
    assert!(shown.contains("batch_size = 10000  # default"), "{shown}");
    assert!(
        shown.contains("admin_password = \"[redacted]\"  # configuration file"),
        "{shown}"
    );
    assert!(!shown.contains(&env("SLUICE_ADMIN_PASSWORD")), "{shown}");
}

/// A key no command knows is refused, and the message names it and the
/// file; so is a command's key in another command's table.
#[test]
fn an_unknown_key_is_refused_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, named) in [
        ("redis_ulr = \"redis://127.0.0.1:6379\"\n", "unknown key \"redis_ulr\""),
        ("[run]\npartitions = 3\n", "unknown key \"run.partitions\""),
    ] {
        let config = write_config(&dir, text);
        let output = sluice_env(&["--config", &config, "config"], &[], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text} accepted");
        assert!(stderr.contains(named) && stderr.contains(&config), "{stderr}");
    }
    let output = sluice_env(&["config"], &[("SLUICE_CONFIG", "/nonexistent/sluice.toml")], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("/nonexistent/sluice.toml"),
        "{stderr}"
    );
}

/// `sluice config` shows no password, whether it comes from a variable, a
/// `_FILE` or a URL, and says where each secret comes from.
#[test]
fn sluice_config_redacts_every_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    let token = "token-8d1e0c7f3b";
    std::fs::write(&token_file, token).expect("write token");
    let redis_password = "redis-pass-5a9c2e";
    let redis_url = format!("redis://:{redis_password}@127.0.0.1:6379");
    let token_file = token_file.display().to_string();
    let shown = succeeded(&sluice_env(
        &["config"],
        &[
            ("SLUICE_ADMIN_TOKEN_FILE", token_file.as_str()),
            ("SLUICE_REDIS_URL", redis_url.as_str()),
        ],
        &[],
    ));
    for secret in [
        token,
        redis_password,
        &env("SLUICE_ADMIN_PASSWORD"),
        &env("SLUICE_BACKUP_JOB_PASSWORD"),
        &env("SLUICE_FEATURES_JOB_PASSWORD"),
    ] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    assert!(
        shown.contains("admin_token = \"[redacted]\"  # the file SLUICE_ADMIN_TOKEN_FILE names"),
        "{shown}"
    );
    assert!(
        shown.contains("backup_job_password = \"[redacted]\"  # variable SLUICE_BACKUP_JOB_PASSWORD"),
        "{shown}"
    );
    assert!(
        shown.contains("redis_url = \"redis://:[redacted]@127.0.0.1:6379\""),
        "{shown}"
    );
}

/// docs/configuration.md is what `sluice config --reference` prints.
#[test]
fn the_configuration_reference_matches_the_code() {
    let generated = sluice_ok(&["config", "--reference"]);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date: run `sluice config --reference > docs/configuration.md`",
        path.display()
    );
}
