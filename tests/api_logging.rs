//! The API's named events, `hitl_resume_api` and `hitl_cancel_api`: emitted for every
//! accepted resume and remove, with ids and never a token or an operator's free text.
//!
//! Alone in its test binary on purpose: `tracing` caches per callsite whether anyone
//! listens, process-wide; another test emitting the same events while this one installs
//! its capturing subscriber could leave the cache saying "no one", and the capture
//! would miss events.

mod common;

use std::sync::{Arc, Mutex};

use common::api::{ADMIN, OPERATOR, TestApp, approval};
use serde_json::json;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const WAIT: (&str, &str) = ("Prefer", "wait=5");

/// Records the name and field values of every event the API emits.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(String, String)>>>);

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        // Only the API's own events: the workers log on their own terms.
        if event
            .metadata()
            .target()
            .starts_with("hitl_orchestrator::api")
        {
            self.0
                .lock()
                .unwrap()
                .push((event.metadata().name().to_owned(), fields.0));
        }
    }
}

#[tokio::test]
async fn resume_and_remove_emit_named_events_without_tokens_or_freeform_text() {
    let captured = Captured::default();
    // The test runtime has one thread, so the server's tasks log to this subscriber.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    // Callsite interest is cached process-wide; a test on another thread may have cached
    // "no one listens" before this subscriber existed.
    tracing::callsite::rebuild_interest_cache();
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let resume = app
        .post_with(
            "/api/hitl/resume",
            &approval(&run, &request, "op-9"),
            &[WAIT],
        )
        .await;
    assert_eq!(resume.status, 200, "{resume:?}");
    let (other, _) = app.parked_run().await;
    let remove = app
        .post_with(
            "/api/hitl/remove",
            &json!({ "runId": other, "reason": "Secret reason text", "operator": { "id": "op-9" } }),
            &[WAIT],
        )
        .await;
    assert_eq!(remove.status, 200, "{remove:?}");
    app.stop().await;

    let events = captured.0.lock().unwrap().clone();
    let named = |name: &str| {
        events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect::<Vec<_>>()
    };
    let resumes = named("hitl_resume_api");
    assert_eq!(resumes.len(), 1, "{events:?}");
    assert!(
        resumes[0].contains(&run) && resumes[0].contains("op-9"),
        "{resumes:?}"
    );
    let cancels = named("hitl_cancel_api");
    assert_eq!(cancels.len(), 1, "{events:?}");
    assert!(cancels[0].contains(&other), "{cancels:?}");
    for (_, fields) in &events {
        for secret in [
            OPERATOR,
            ADMIN,
            "Looks good",
            "Approved after review",
            "Secret reason",
        ] {
            assert!(!fields.contains(secret), "{fields}");
        }
    }
}
