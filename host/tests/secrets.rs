//! Kafka passwords come from a variable or from a file that `<VAR>_FILE`
//! names, never from a flag; a missing one is an error that names the user
//! and the variable; none is ever printed.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The development passwords of dev.env, which no output may show.
fn dev_passwords() -> Vec<String> {
    [
        "SLUICE_ADMIN_PASSWORD",
        "SLUICE_BACKUP_JOB_PASSWORD",
        "SLUICE_FEATURES_JOB_PASSWORD",
    ]
    .iter()
    .map(|var| env(var))
    .collect()
}

#[test]
fn passwords_come_from_a_variable_or_a_file_and_are_never_printed() {
    let topic = unique("secrets");
    let dlq = format!("{topic}-dlq");
    let passwords = dev_passwords();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("admin-password");
    std::fs::write(&file, format!("{}\n", passwords[0])).expect("write");
    let file = file.display().to_string();
    let setup = ["--topic", &topic, "--dlq-topic", &dlq, "setup", "--partitions", "2"];

    // The admin's password from a file, as a container secret is mounted.
    let from_file = sluice_env(
        &setup,
        &[("SLUICE_ADMIN_PASSWORD_FILE", &file)],
        &["SLUICE_ADMIN_PASSWORD"],
    );
    let shown = printed(&from_file);
    assert!(from_file.status.success(), "setup with the password in a file: {shown}");
    assert!(shown.contains(&format!("topic {topic}: created")), "{shown}");

    // Given both ways, it is refused rather than one silently chosen.
    let both = sluice_env(&setup, &[("SLUICE_ADMIN_PASSWORD_FILE", &file)], &[]);
    let both_shown = printed(&both);
    assert!(!both.status.success(), "{both_shown}");
    assert!(
        both_shown.contains("SLUICE_ADMIN_PASSWORD and SLUICE_ADMIN_PASSWORD_FILE"),
        "{both_shown}"
    );

    // A job without its password fails at once, naming its user and the
    // variable, instead of connecting without authentication.
    let (_lake, url) = local_lake();
    let backup = module("backup");
    let started = Instant::now();
    let missing = sluice_env(
        &[
            "--topic",
            &topic,
            "--dlq-topic",
            &dlq,
            "run",
            "--job",
            "backup",
            "--module",
            &backup,
            "--until-caught-up",
            "--output-url",
            &url,
        ],
        &[],
        &["SLUICE_BACKUP_JOB_PASSWORD"],
    );
    let missing_shown = printed(&missing);
    assert!(!missing.status.success(), "{missing_shown}");
    assert!(
        missing_shown.contains("transactions-backup-job-user") && missing_shown.contains("SLUICE_BACKUP_JOB_PASSWORD"),
        "{missing_shown}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    // No flag takes a password's value.
    let flag = sluice_env(&["--kafka-password", "guess", "setup"], &[], &[]);
    assert!(!flag.status.success());
    assert!(
        printed(&flag).contains("unexpected argument '--kafka-password'"),
        "{}",
        printed(&flag)
    );

    for shown in [&shown, &both_shown, &missing_shown] {
        for password in &passwords {
            assert!(!shown.contains(password.as_str()), "a password was printed: {shown}");
        }
    }
}

/// A password inside a Redis or registry URL never reaches a message: the
/// URL is shown with `[redacted]` in its place.
#[test]
fn passwords_inside_service_urls_are_never_printed() {
    let (_lake, url) = local_lake();
    let redis_password = "redis-password-never-printed";
    let redis_url = format!("redis://sluice:{redis_password}@127.0.0.1:6379");
    // The machine's Redis has no such user, so the connection is refused.
    let republish = sluice_env(
        &[
            "republish",
            "--group",
            &unique("secrets-redis"),
            "--output-url",
            &url,
            "--redis-url",
            &redis_url,
            "--redis-patience-ms",
            "1000",
        ],
        &[],
        &[],
    );
    let shown = printed(&republish);
    assert!(!republish.status.success(), "{shown}");
    assert!(shown.contains("redis://sluice:[redacted]@127.0.0.1:6379"), "{shown}");
    assert!(!shown.contains(redis_password), "{shown}");

    let registry_password = "registry-password-never-printed";
    let topic = unique("secrets-registry");
    // Nothing listens on port 9 of loopback.
    let registry_url = format!("http://schemas:{registry_password}@127.0.0.1:9");
    let setup = sluice_env(
        &[
            "--topic",
            &topic,
            "--dlq-topic",
            &format!("{topic}-dlq"),
            "--registry-url",
            &registry_url,
            "setup",
            "--partitions",
            "1",
        ],
        &[],
        &[],
    );
    let shown = printed(&setup);
    assert!(!setup.status.success(), "{shown}");
    assert!(shown.contains("http://schemas:[redacted]@127.0.0.1:9"), "{shown}");
    assert!(!shown.contains(registry_password), "{shown}");
}

/// A wrong password fails the job within seconds, naming the user and the
/// brokers and never the password; brokers that do not answer are reported
/// once and then rarely, and `--until-caught-up` gives up after
/// `--kafka-patience-ms` instead of waiting forever.
#[test]
fn a_wrong_password_or_absent_brokers_fail_the_job_soon_and_say_why() {
    let topic = unique("wrong-password");
    setup_topic_with(&topic, 1);
    let (_lake, url) = local_lake();
    let args = job_run_args("backup", &topic, &url, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let wrong = "wrong-password-never-printed";
    let started = Instant::now();
    let refused = sluice_env(&args, &[("SLUICE_BACKUP_JOB_PASSWORD", wrong)], &[]);
    let shown = printed(&refused);
    assert!(!refused.status.success(), "{shown}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}: {shown}",
        started.elapsed()
    );
    assert!(
        shown.contains("refused the login of user transactions-backup-job-user")
            && shown.contains(&env("SLUICE_BROKERS")),
        "{shown}"
    );
    assert!(!shown.contains(wrong), "{shown}");

    // Nothing listens on port 1 of loopback.
    let started = Instant::now();
    let absent = sluice_env(
        &[
            &["--brokers", "127.0.0.1:1"][..],
            &args[..],
            &["--kafka-patience-ms", "3000"][..],
        ]
        .concat(),
        &[],
        &[],
    );
    let shown = printed(&absent);
    assert!(!absent.status.success(), "{shown}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}: {shown}",
        started.elapsed()
    );
    assert!(shown.contains("no broker of 127.0.0.1:1 answered"), "{shown}");
    assert!(shown.contains("127.0.0.1:1"), "{shown}");
    let reports = shown.matches("kafka unreachable").count() + shown.matches("kafka still unreachable").count();
    assert!((1..=3).contains(&reports), "{reports} reports: {shown}");
}

/// A whole run, at the debug level: setup, produce, both jobs, `sluice
/// config` and `sluice status` print none of the passwords, in their logs
/// or their reports.
#[test]
fn a_full_run_prints_no_password() {
    let topic = unique("secrets-run");
    let dlq = format!("{topic}-dlq");
    let (_lake, url) = local_lake();
    let (producer, backup, features) = (module("producer"), module("backup"), module("features"));
    let prefix = format!("sluice:test:{topic}");
    let debug = [("SLUICE_LOG", "debug")];
    let common = ["--topic", topic.as_str(), "--dlq-topic", dlq.as_str()];
    let (backup_group, features_group) = (format!("{topic}-backup"), format!("{topic}-features"));
    let groups = [
        "--backup-group",
        backup_group.as_str(),
        "--features-group",
        features_group.as_str(),
    ];
    let commands: Vec<Vec<&str>> = vec![
        vec!["setup", "--partitions", "2"],
        vec!["produce", "--module", &producer, "--count", "500"],
        vec![
            "run",
            "--job",
            "backup",
            "--module",
            &backup,
            "--group",
            &backup_group,
            "--until-caught-up",
            "--output-url",
            &url,
        ],
        vec![
            "run",
            "--job",
            "features",
            "--module",
            &features,
            "--group",
            &features_group,
            "--until-caught-up",
            "--output-url",
            &url,
            "--redis-prefix",
            &prefix,
        ],
        vec!["config"],
        [
            &["status", "--output-url", &url, "--redis-prefix", &prefix][..],
            &groups,
        ]
        .concat(),
        [
            &["status", "--json", "--output-url", &url, "--redis-prefix", &prefix][..],
            &groups,
        ]
        .concat(),
    ];
    let passwords = dev_passwords();
    for command in commands {
        let args = [&common[..], &command[..]].concat();
        let output = sluice_env(&args, &debug, &[]);
        let shown = printed(&output);
        assert!(output.status.success(), "{command:?}: {shown}");
        assert!(!shown.trim().is_empty(), "{command:?} printed nothing");
        for password in &passwords {
            assert!(
                !shown.contains(password.as_str()),
                "{command:?} printed a password: {shown}"
            );
        }
    }
}
