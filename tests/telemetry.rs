//! OpenTelemetry end to end: a real OTLP/HTTP receiver (decoding the protobuf payloads)
//! on port 0 receives the spans and metrics of a `serve` process; the API span of a
//! resume sent with a `traceparent` and the worker span that applied it share its trace;
//! `/metrics` follows outstanding requests; canaries never leak; the dashboard queries
//! only exported metrics.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::api::{ADMIN, TestApp, approval, review_plan};
use hitl_orchestrator::telemetry::metrics::METRICS;
use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

/// A minimal OTLP/HTTP (protobuf) receiver.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let got = Arc::new(Mutex::new(Received::default()));
    async fn traces(State(got): State<Arc<Mutex<Received>>>, body: Bytes) -> &'static str {
        got.lock()
            .unwrap()
            .traces
            .push(ExportTraceServiceRequest::decode(body).expect("OTLP trace protobuf"));
        ""
    }
    async fn metrics(State(got): State<Arc<Mutex<Received>>>, body: Bytes) -> &'static str {
        got.lock()
            .unwrap()
            .metrics
            .push(ExportMetricsServiceRequest::decode(body).expect("OTLP metrics protobuf"));
        ""
    }
    let app = axum::Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

struct SpanSeen {
    name: String,
    trace_id: String,
    attributes: Vec<(String, String)>,
}

fn spans(got: &Received) -> Vec<SpanSeen> {
    let mut out = Vec::new();
    for request in &got.traces {
        for rs in &request.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    let attributes = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(AnyValue::StringValue(s)) => s.clone(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    out.push(SpanSeen {
                        name: s.name.clone(),
                        trace_id: s.trace_id.iter().map(|b| format!("{b:02x}")).collect(),
                        attributes,
                    });
                }
            }
        }
    }
    out
}

fn metric_names(got: &Received) -> Vec<String> {
    got.metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.name.clone())
        .collect()
}

const CANARY_TOKEN: &str = "canary-token-5f0c9a7e3b1d";
const CANARY_TEXT: &str = "CANARY-FREEFORM-ANSWER-7731";

#[tokio::test]
async fn a_resume_traced_from_the_api_to_the_worker_and_metrics_arrive_over_otlp() {
    let db = common::fresh_db().await;
    let (otlp, got) = receiver().await;
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("API_KEY", CANARY_TOKEN),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_SERVICE_NAME", "hitl-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("RUST_LOG", "debug,hyper=info,h2=info,reqwest=info"),
    ];
    let mut service = common::ServiceProcess::start(&["serve"], &env, logs.path());
    let client = crate::common::http_client();
    let base = service.base_url.clone();
    let created: Value = client
        .post(format!("{base}/api/runs"))
        .bearer_auth(CANARY_TOKEN)
        .json(&json!({ "brief": { "title": "traced" }, "plan": review_plan() }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = created["runId"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let request = loop {
        let r: Value = client
            .get(format!("{base}/api/runs/{run}"))
            .bearer_auth(CANARY_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = r["pendingRequestId"].as_str() {
            break id.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the run paused"
        );
        common::poll_pause().await;
    };

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut body = approval(&run, &request, "op");
    body["responses"][0]["freeformText"] = json!(CANARY_TEXT);
    let reply = client
        .post(format!("{base}/api/hitl/resume"))
        .bearer_auth(CANARY_TOKEN)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("Prefer", "wait=10")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    // The audit event the resume wrote (in the worker, continuing the request's trace)
    // names that trace.
    let snapshot: Value = client
        .get(format!("{base}/api/runs/{run}"))
        .bearer_auth(CANARY_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resume = common::api::audit_event(&snapshot, "resume");
    assert_eq!(resume["traceId"], trace_id, "{resume}");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (api, worker, names) = {
            let g = got.lock().unwrap();
            let all = spans(&g);
            let api = all
                .iter()
                .any(|s| s.trace_id == trace_id && s.name == "http_request");
            let worker = all.iter().any(|s| {
                s.trace_id == trace_id
                    && s.name == "job"
                    && s.attributes
                        .iter()
                        .any(|(k, v)| k == "job.queue" && v == "hitl_resume")
                    && s.attributes.iter().any(|(k, _)| k == "command.id")
            });
            (api, worker, metric_names(&g))
        };
        let metrics = names.iter().any(|n| n == "hitl_outstanding_requests")
            && names.iter().any(|n| n == "hitl_commands_total");
        if api && worker && metrics {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "api span {api}, worker span {worker}, metrics {metrics}: {names:?}"
        );
        common::poll_pause().await;
    }
    // The run's next advancement continued the same trace too (inline, in the resume's
    // job: the plan's remaining nodes are local).
    assert!(spans(&got.lock().unwrap()).iter().any(|s| {
        s.trace_id == trace_id
            && s.name == "advance"
            && s.attributes
                .iter()
                .any(|(k, v)| k == "run.id" && v == run.as_str())
    }));

    assert!(service.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)));
    let log = service.log();
    assert!(
        log.contains("hitl_resume_api"),
        "the named API event is logged"
    );
    let exported = format!("{:?}", got.lock().unwrap().traces);
    for canary in [CANARY_TOKEN, CANARY_TEXT] {
        assert!(!log.contains(canary), "{canary} leaked into the logs");
        assert!(!exported.contains(canary), "{canary} leaked into the spans");
    }
    assert!(
        exported.contains("hitl_resume_api"),
        "the named API event is exported with its span"
    );
}

fn outstanding(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix("hitl_outstanding_requests "))
        .and_then(|v| v.trim().parse().ok())
        .expect("hitl_outstanding_requests is exposed")
}

#[tokio::test]
async fn metrics_shows_outstanding_requests_go_from_one_to_zero_across_a_resume() {
    let app = TestApp::spawn().await;
    let (run, request) = app.parked_run().await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(outstanding(&text), 1.0, "{text}");
    assert!(text.contains("# TYPE hitl_command_latency_seconds histogram"));

    let reply = app
        .post_with(
            "/api/hitl/resume",
            &approval(&run, &request, "op"),
            &[
                ("Authorization", &format!("Bearer {ADMIN}")),
                ("Prefer", "wait=10"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(outstanding(&text), 0.0, "{text}");
    assert!(
        text.contains("hitl_commands_total{kind=\"resume\",outcome=\"succeeded\"}"),
        "{text}"
    );
    assert!(
        text.contains("hitl_command_latency_seconds_count{kind=\"resume\"}"),
        "{text}"
    );
    app.stop().await;
}

#[test]
fn the_dashboard_parses_and_queries_only_exported_metrics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/dashboards/hitl-orchestrator.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            let mut rest = expr;
            while let Some(i) = rest.find("hitl_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                queried.push(name);
            }
        }
    }
    assert!(
        queried.len() >= 8,
        "the dashboard covers the service: {queried:?}"
    );
    let exported: Vec<&str> = METRICS.iter().map(|(n, _, _)| *n).collect();
    for name in &queried {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            exported.contains(&base),
            "the dashboard queries {name}, which is not exported"
        );
    }
}
