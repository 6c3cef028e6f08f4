//! docker-compose.yml cannot run here (no Docker engine), so this checks what can be
//! checked: it parses, has the services the docs promise, and every file it builds from
//! or mounts exists in the repository.

use std::path::Path;

use serde_yaml_ng::Value;

fn compose() -> Value {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .expect("docker-compose.yml exists");
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml is valid YAML")
}

#[test]
fn compose_runs_postgres_the_api_and_workers_as_separate_services() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    for name in ["postgres", "api", "worker"] {
        assert!(services.contains_key(name), "service {name} is defined");
    }
    assert_eq!(doc["services"]["api"]["command"][0].as_str(), Some("api"));
    assert_eq!(
        doc["services"]["worker"]["command"][0].as_str(),
        Some("worker")
    );
}

#[test]
fn every_file_compose_builds_from_or_mounts_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = compose();
    let named_volumes = doc["volumes"].as_mapping().cloned().unwrap_or_default();
    for (name, service) in doc["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if let Some(build) = service.get("build") {
            let context = build
                .as_str()
                .or_else(|| build["context"].as_str())
                .unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            let path = root.join(context).join(dockerfile);
            assert!(path.is_file(), "{name}: {} exists", path.display());
        }
        for volume in service["volumes"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
        {
            let source = volume
                .as_str()
                .map(|v| v.split(':').next().unwrap().to_owned())
                .or_else(|| volume["source"].as_str().map(str::to_owned))
                .unwrap();
            if named_volumes.contains_key(source.as_str()) {
                continue;
            }
            let path = root.join(&source);
            assert!(path.exists(), "{name}: mounted {} exists", path.display());
        }
    }
}
