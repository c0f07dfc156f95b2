//! compose.yaml as a user runs it, checked as far as a machine without
//! Docker allows: every variable it gives sluice is one sluice reads, every
//! image is pinned, every service has a health check (one-shots say they
//! have none), and the producer is not restarted into duplicates.

use std::collections::BTreeSet;

use clap::CommandFactory;
use yaml_rust2::{Yaml, YamlLoader};

/// Every variable sluice reads: each flag's (from the parser itself) and
/// those no flag names, with `<VAR>_FILE` for each secret.
fn variables_sluice_reads() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut commands = vec![sluice::cli::Cli::command()];
    while let Some(command) = commands.pop() {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                names.insert(env.to_string_lossy().into_owned());
            }
        }
        commands.extend(command.get_subcommands().cloned());
    }
    for name in sluice::config::UNFLAGGED_VARIABLES {
        names.insert(name.to_string());
        names.insert(format!("{name}_FILE"));
    }
    names
}

/// A service's key, looked up in the service and then in what it merges
/// (`<<: *sluice`).
fn key<'a>(service: &'a Yaml, name: &str) -> &'a Yaml {
    let own = &service[name];
    if own.is_badvalue() { &service["<<"][name] } else { own }
}

#[test]
fn compose_gives_sluice_only_variables_it_reads_and_pins_and_checks_every_service() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml");
    let text = std::fs::read_to_string(path).expect("compose.yaml");
    let compose = &YamlLoader::load_from_str(&text).expect("compose.yaml is YAML")[0];
    let reads = variables_sluice_reads();
    let services = compose["services"].as_hash().expect("services");
    assert!(services.len() >= 8, "{services:?}");
    let mut sluice_services = 0;
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        let image = key(service, "image")
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no image"));
        let tag = image.rsplit_once(':').map(|(_, tag)| tag);
        assert!(
            tag.is_some_and(|tag| tag != "latest"),
            "{name}: image {image} is not pinned to a version"
        );
        if image.starts_with("sluice:") {
            sluice_services += 1;
            let environment = key(service, "environment").as_hash().expect("environment");
            for variable in environment.keys() {
                let variable = variable.as_str().expect("name");
                assert!(
                    reads.contains(variable),
                    "{name}: sluice reads no variable {variable} (it reads {reads:?})"
                );
            }
        }
        let healthcheck = key(service, "healthcheck");
        let one_shot = key(service, "restart").as_str() == Some("no");
        let disabled = healthcheck["disable"].as_bool() == Some(true);
        assert!(
            !healthcheck["test"].is_badvalue() || (disabled && one_shot),
            "{name}: no health check, and not a one-shot that says so"
        );
    }
    assert_eq!(sluice_services, 4, "setup, producer, backup, features");
    let producer = &compose["services"]["producer"];
    assert_eq!(
        key(producer, "restart").as_str(),
        Some("no"),
        "a restarted producer sends its seeded records again"
    );
    for job in ["backup", "features", "producer"] {
        let depends = key(&compose["services"][job], "depends_on");
        assert_eq!(
            depends["setup"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{job} must wait for setup"
        );
    }
}
