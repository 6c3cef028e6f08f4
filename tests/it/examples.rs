//! The example files the docs point to stay valid: every `docs/examples/*-run.json` is a
//! create-run body whose plan the service accepts.

use std::sync::Arc;
use std::time::Duration;

use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::engine::capability::CapabilityRegistry;
use hitl_orchestrator::engine::webhook::{AgentWebhook, WebhookSettings};

#[test]
fn every_example_run_body_has_a_plan_the_service_accepts() {
    let mut registry = CapabilityRegistry::with_builtins();
    registry.register(
        "agent.webhook",
        Arc::new(
            AgentWebhook::new(WebhookSettings {
                allowed_urls: vec!["http://127.0.0.1:9000/".into()],
                timeout: Duration::from_secs(1),
                max_response: 1024,
                ca_file: None,
                signing_secret: None,
            })
            .unwrap(),
        ),
    );
    let engine = Engine::new(registry, true);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with("-run.json") {
            continue;
        }
        let body: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(body["brief"]["title"].is_string(), "{}", path.display());
        engine
            .validate_plan(&body["plan"])
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert_eq!(checked, 2);
}
