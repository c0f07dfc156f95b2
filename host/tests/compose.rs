//! compose.yaml as a user runs it, checked as far as a machine without
//! Docker allows: every variable it gives sluice is one sluice reads, every
//! image is pinned, every service has a health check (one-shots say they
//! have none), the producer is not restarted into duplicates, nothing needs
//! a Compose newer than Debian's (no inline `configs`), every file it mounts
//! exists, and Prometheus scrapes every sluice service with an admin
//! listener into a dashboard that names only metrics sluice serves.

use std::collections::BTreeSet;

use yaml_rust2::{Yaml, YamlLoader};

/// Every variable sluice reads: each flag's (from the parser itself) and
/// those no flag names, with `<VAR>_FILE` for each secret.
fn variables_sluice_reads() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut commands = vec![sluice::settings::command()];
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
    assert!(
        compose["configs"].is_badvalue(),
        "inline configs need Compose 2; mount files instead"
    );
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

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn compose() -> Yaml {
    let text = std::fs::read_to_string(format!("{ROOT}/compose.yaml")).expect("compose.yaml");
    YamlLoader::load_from_str(&text)
        .expect("compose.yaml is YAML")
        .remove(0)
}

#[test]
fn every_mounted_file_exists_and_prometheus_scrapes_what_the_dashboard_shows() {
    let compose = compose();
    let services = compose["services"].as_hash().expect("services");
    let mut listeners = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("name");
        for mount in key(service, "volumes").as_vec().into_iter().flatten() {
            let mount = mount.as_str().expect("a short volume syntax");
            if let Some(source) = mount.strip_prefix("./") {
                let source = source.split(':').next().expect("source");
                let path = format!("{ROOT}/{source}");
                assert!(
                    std::path::Path::new(&path).exists(),
                    "{name} mounts {source}, which is missing"
                );
            }
        }
        let environment = &key(service, "environment");
        if let Some(listen) = environment["SLUICE_ADMIN_LISTEN"].as_str()
            && key(service, "command")[0].as_str() != Some("setup")
        {
            let port = listen.rsplit_once(':').expect("host:port").1;
            listeners.insert(format!("{name}:{port}"));
        }
    }
    let prometheus_yml =
        std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/prometheus.yml")).expect("prometheus.yml");
    let prometheus = &YamlLoader::load_from_str(&prometheus_yml).expect("YAML")[0];
    let scrape = &prometheus["scrape_configs"][0];
    let targets: BTreeSet<String> = scrape["static_configs"][0]["targets"]
        .as_vec()
        .expect("targets")
        .iter()
        .map(|t| t.as_str().expect("target").to_string())
        .collect();
    assert_eq!(
        targets, listeners,
        "Prometheus scrapes every admin listener, and only those"
    );
    assert_eq!(
        scrape["authorization"]["credentials_file"].as_str(),
        Some("/run/secrets/sluice-admin-token"),
        "/metrics beyond loopback needs the token"
    );

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/grafana/dashboards/sluice.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut shown = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("sluice_") {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(name);
                    assert!(
                        sluice::ops::metrics::NAMES.contains(&base),
                        "the dashboard's {name} is no metric sluice serves"
                    );
                    shown.insert(base.to_string());
                }
            }
        }
    }
    let missing: Vec<_> = sluice::ops::metrics::NAMES
        .iter()
        .filter(|n| !shown.contains(**n))
        .collect();
    assert!(missing.is_empty(), "metrics no panel shows: {missing:?}");
}
