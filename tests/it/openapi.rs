//! `GET /openapi.json`: a valid OpenAPI 3.1 document (checked by the `oas3` validator)
//! that documents exactly the routes the router serves, states a format for every string
//! a request can carry, and whose stated limits are the enforced ones: at each limit
//! the service accepts, one past it refuses (the numbers are read from the document).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::api::{ADMIN, AppOptions, OPERATOR, SUBMITTER, TestApp};
use hitl_orchestrator::api::ROUTES;
use hitl_orchestrator::engine::Engine;
use hitl_orchestrator::engine::capability::CapabilityRegistry;
use hitl_orchestrator::engine::webhook::{AgentWebhook, WebhookSettings};
use serde_json::{Value, json};

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                }
                refs(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_matches_the_router_both_ways() {
    let app = TestApp::spawn().await;
    let reply = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let text = reply.text().await.unwrap();
    let spec =
        oas3::from_json(&text).unwrap_or_else(|e| panic!("not a valid OpenAPI 3.1 document: {e}"));
    assert!(spec.openapi.starts_with("3.1"), "{}", spec.openapi);
    let doc: Value = serde_json::from_str(&text).unwrap();
    // The validator is not a rubber stamp: a document without `info` is refused.
    let mut broken = doc.clone();
    broken.as_object_mut().unwrap().remove("info");
    assert!(
        oas3::from_json(broken.to_string()).is_err(),
        "oas3 refuses a document missing info"
    );

    // Every $ref names a schema the document defines.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected ref {r}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling {r}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // Operation ids are unique, every operation states its 500 and its 422 (an unknown
    // query parameter), and the headers the answers carry are declared.
    let mut ids = BTreeSet::new();
    for ops in doc["paths"].as_object().unwrap().values() {
        for op in ops.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} used twice");
            for status in ["422", "500"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{id} documents {status}"
                );
            }
            if let Some(r) = op["responses"].get("401") {
                assert!(r["headers"].get("WWW-Authenticate").is_some(), "{id}");
            }
        }
    }
    for header in ["Location", "Preference-Applied", "Idempotent-Replayed"] {
        assert!(
            doc["paths"]["/api/hitl/resume"]["post"]["responses"]["202"]["headers"]
                .get(header)
                .is_some(),
            "{header}"
        );
    }
    assert!(
        doc["paths"]["/api/runs"]["post"]["responses"]["202"]["headers"]
            .get("Location")
            .is_some()
    );

    // The document's routes are exactly the router's.
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    // The operator console is HTML for people, not the API: `/` and `/console/…` are
    // served (tests/it/console.rs) but neither listed nor documented.
    assert!(
        served
            .iter()
            .all(|(_, p)| p != "/" && !p.starts_with("/console")),
        "{served:?}"
    );

    // Every /api operation requires the bearer token, but the public keys of the audit
    // trail (public, so that anyone can check a signature).
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        if path == "/api/audit/keys" {
            assert!(
                op.get("security").is_none(),
                "{method} {path} needs no token"
            );
            continue;
        }
        if path.starts_with("/api/") {
            assert!(
                op["security"][0].get("bearer").is_some(),
                "{method} {path} documents its auth"
            );
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} documents 401"
            );
        }
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}"
        );
    }

    // Each listed route is served (not the router's 404/405), and on those paths no
    // other method is.
    let fill = |p: &str| {
        p.replace("{commandId}", "cmd_00000000000000000000000000000000")
            .replace("{runId}", "run_00000000000000000000000000000000")
            .replace("{requestId}", "hitl_req_00000000000000000000000000000000")
    };
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let listed = ROUTES.contains(&(method, path));
            let mut url = app.url(&fill(path));
            if path == "/api/runs" && method == "GET" {
                url.push_str("?threadId=nobody");
            }
            let request = app
                .client
                .request(method.parse().unwrap(), url)
                .bearer_auth(ADMIN)
                .header("content-type", "application/json")
                .body("{}");
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = if path == "/api/events" && status == 200 {
                Value::Null // a stream: its headers are enough
            } else {
                response.json().await.unwrap_or(Value::Null)
            };
            let fallback = status == 405 || (status == 404 && body["error"]["code"] == "not_found");
            assert_eq!(!fallback, listed, "{method} {path}: {status} {body}");
        }
    }
    app.stop().await;
}

/// The document as the app serves it.
async fn served_document(app: &TestApp) -> Value {
    app.client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The number the document states at `pointer`.
fn stated(doc: &Value, pointer: &str) -> usize {
    doc.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("the document states no number at {pointer}")) as usize
}

/// The schema of parameter `name` of `method path`.
fn parameter<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

/// Every string schema under `schema` a request can carry (through properties, items,
/// additional properties and the nullable wrappers), with its place.
fn strings<'a>(doc: &'a Value, schema: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        if !out
            .iter()
            .any(|(place, _)| place.ends_with(&format!("<{name}>")))
        {
            out.push((format!("{at}<{name}>"), &Value::Null));
            strings(doc, &doc["components"]["schemas"][name], at, out);
        }
        return;
    }
    let is_string = match &schema["type"] {
        Value::String(t) => t == "string",
        Value::Array(ts) => ts.iter().any(|t| t == "string"),
        _ => false,
    };
    if is_string {
        out.push((at.clone(), schema));
    }
    for wrapper in ["oneOf", "anyOf"] {
        if !at.is_empty() {
            for s in schema[wrapper].as_array().into_iter().flatten() {
                strings(doc, s, at.clone(), out);
            }
        }
    }
    for (key, s) in schema["properties"].as_object().into_iter().flatten() {
        strings(doc, s, format!("{at}.{key}"), out);
    }
    if schema["items"].is_object() {
        strings(doc, &schema["items"], format!("{at}[]"), out);
    }
    if schema["additionalProperties"].is_object() {
        strings(doc, &schema["additionalProperties"], format!("{at}.*"), out);
    }
}

#[tokio::test]
async fn every_string_a_request_can_carry_states_its_format() {
    let app = TestApp::spawn().await;
    let doc = served_document(&app).await;
    let mut unstated = Vec::new();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                checked += 1;
                if p["schema"].get("pattern").is_none() && p["schema"]["type"] == "string" {
                    unstated.push(format!("{method} {path} {}", p["name"]));
                }
            }
            let body = &op["requestBody"]["content"]["application/json"]["schema"];
            let mut found = Vec::new();
            strings(&doc, body, String::new(), &mut found);
            for (place, schema) in found {
                checked += 1;
                let stated = ["pattern", "enum", "const"]
                    .iter()
                    .any(|k| schema.get(k).is_some());
                if !schema.is_null() && !stated {
                    unstated.push(format!("{method} {path} body{place}"));
                }
            }
        }
    }
    assert_eq!(
        unstated,
        Vec::<String>::new(),
        "strings without a stated format"
    );
    // The walk reached the bodies' fields, not just the top of each.
    assert!(
        checked > 60,
        "only {checked} strings and parameters looked at"
    );
    app.stop().await;
}

const UNKNOWN_RUN: &str = "run_00000000000000000000000000000000";

fn retry_body(operator_id: &str, note: &str) -> Value {
    json!({ "operator": { "id": operator_id }, "note": note })
}

fn run_body(title: &str, plan: Value) -> Value {
    json!({ "brief": { "title": title }, "plan": plan })
}

fn one_task() -> Value {
    json!({ "nodes": [ { "id": "a", "type": "task", "capability": "set" } ] })
}

#[tokio::test]
async fn stated_lengths_and_ranges_hold_at_their_boundaries() {
    let app = TestApp::spawn().await;
    let doc = served_document(&app).await;
    let retry = format!("/api/runs/{UNKNOWN_RUN}/retry");

    // Body fields of a submission are parsed before the run is looked up: a value at the
    // limit reaches the lookup (404), one past it is 422 naming the field.
    let operator_max = stated(
        &doc,
        "/components/schemas/OperatorIn/properties/id/maxLength",
    );
    let note_max = stated(
        &doc,
        "/components/schemas/RetryIn/properties/note/maxLength",
    );
    let cases = [
        (retry_body(&"o".repeat(operator_max), ""), 404, ""),
        (
            retry_body(&"o".repeat(operator_max + 1), ""),
            422,
            "operator.id",
        ),
        (retry_body(" \u{3000}", ""), 422, "operator.id"),
        (retry_body("o", &"n".repeat(note_max)), 404, ""),
        (retry_body("o", &"n".repeat(note_max + 1)), 422, "note"),
    ];
    for (body, status, field) in cases {
        let reply = app.post(&retry, ADMIN, &body).await;
        assert_eq!((reply.status, reply.field()), (status, field), "{reply:?}");
    }

    let wait_max = doc["paths"]["/api/hitl/resume"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Prefer")
        .unwrap()["description"]
        .as_str()
        .unwrap()
        .contains("0 to 30");
    assert!(wait_max, "the Prefer description states 0 to 30");
    for (prefer, status) in [("wait=30", 404), ("respond-async, wait=031", 422)] {
        let reply = app
            .post_with(&retry, &retry_body("o", ""), &[("Prefer", prefer)])
            .await;
        assert_eq!(reply.status, status, "{prefer}: {reply:?}");
    }

    let title_max = stated(
        &doc,
        "/components/schemas/BriefIn/properties/title/maxLength",
    );
    let reply = app
        .post(
            "/api/runs",
            SUBMITTER,
            &run_body(&"t".repeat(title_max), one_task()),
        )
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let reply = app
        .post(
            "/api/runs",
            SUBMITTER,
            &run_body(&"t".repeat(title_max + 1), one_task()),
        )
        .await;
    assert_eq!((reply.status, reply.field()), (422, "brief.title"));

    // Integers anywhere in a stored document: the 64-bit range, stated as JsonValue's.
    let json_value = &doc["components"]["schemas"]["JsonValue"];
    let (min, max) = (json_value["minimum"].clone(), json_value["maximum"].clone());
    // Sent as text: a serde_json `Value` would turn the out-of-range ones into floats.
    for (n, status) in [
        (min.to_string(), 202),
        (max.to_string(), 202),
        ("-9223372036854775809".to_owned(), 422),
        ("18446744073709551616".to_owned(), 422),
    ] {
        let body = format!(
            r#"{{"brief": {{"title": "t"}}, "executionContext": {{"n": {n}}}, "plan": {}}}"#,
            one_task()
        );
        let request = app
            .client
            .post(app.url("/api/runs"))
            .bearer_auth(SUBMITTER)
            .header("content-type", "application/json")
            .body(body);
        let reply = app.send(request).await;
        assert_eq!(reply.status, status, "{n}: {reply:?}");
    }

    let thread = parameter(&doc, "/api/runs", "get", "threadId");
    let thread_max = stated(thread, "/maxLength");
    let at_limit = app
        .get(
            &format!("/api/runs?threadId={}", "t".repeat(thread_max)),
            OPERATOR,
        )
        .await;
    assert_eq!(at_limit.status, 200, "{at_limit:?}");
    let past = app
        .get(
            &format!("/api/runs?threadId={}", "t".repeat(thread_max + 1)),
            OPERATOR,
        )
        .await;
    assert_eq!((past.status, past.field()), (422, "threadId"));

    let limit = parameter(&doc, "/api/hitl/pending", "get", "limit");
    let (low, high) = (stated(limit, "/minimum"), stated(limit, "/maximum"));
    for (n, status) in [(low, 200), (high, 200), (low - 1, 422), (high + 1, 422)] {
        let reply = app
            .get(&format!("/api/hitl/pending?limit={n}"), OPERATOR)
            .await;
        assert_eq!(reply.status, status, "limit={n}: {reply:?}");
    }

    // A cursor's time: 18 digits of microseconds are stated and accepted; 19 are refused
    // (a time PostgreSQL cannot hold once answered 500).
    let request = "hitl_req_0193a4c0e2b77d3c8f1a2b3c4d5e6f70";
    let hex = |micros: &str| -> String {
        format!("{micros}:{request}")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let cursor = parameter(&doc, "/api/hitl/pending", "get", "cursor");
    assert!(cursor["pattern"].as_str().unwrap().contains("{1,18}"));
    for (micros, status) in [("999999999999999999", 200), ("6481865676638101880", 422)] {
        let reply = app
            .get(
                &format!("/api/hitl/pending?cursor={}", hex(micros)),
                OPERATOR,
            )
            .await;
        assert_eq!(reply.status, status, "{micros}: {reply:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn stated_plan_rules_hold_at_their_boundaries() {
    // The capabilities the service registers: the built-ins and agent.webhook.
    let mut registry = CapabilityRegistry::with_builtins();
    let allowed = "http://127.0.0.1:9/agent/";
    registry.register(
        "agent.webhook",
        Arc::new(
            AgentWebhook::new(WebhookSettings {
                allowed_urls: vec![allowed.to_owned()],
                timeout: Duration::from_millis(200),
                max_response: 1 << 20,
                ca_file: None,
                signing_secret: None,
            })
            .unwrap(),
        ),
    );
    let registered: Vec<String> = registry.names().map(str::to_owned).collect();
    let app = TestApp::spawn_with(AppOptions {
        engine: Engine::new(registry, true),
        ..AppOptions::default()
    })
    .await;
    let doc = served_document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let create = |plan: Value| {
        let app = &app;
        async move { app.post("/api/runs", SUBMITTER, &run_body("t", plan)).await }
    };

    let stated_capabilities: Vec<String> = schemas["TaskNode"]["properties"]["capability"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stated_capabilities, registered);
    for capability in &stated_capabilities {
        let node = json!({ "id": "a", "type": "task", "capability": capability,
                           "config": { "url": format!("{allowed}x") } });
        let reply = create(json!({ "nodes": [node] })).await;
        assert_eq!(reply.status, 202, "{capability}: {reply:?}");
    }
    let reply =
        create(json!({ "nodes": [ { "id": "a", "type": "task", "capability": "nope" } ] })).await;
    assert_eq!((reply.status, reply.code()), (422, "invalid_plan"));

    let max_nodes = stated(&doc, "/components/schemas/Plan/properties/nodes/maxItems");
    let nodes = |n: usize| -> Value {
        let nodes: Vec<Value> = (0..n)
            .map(|i| json!({ "id": format!("n{i}"), "type": "task", "capability": "set" }))
            .collect();
        json!({ "nodes": nodes })
    };
    assert_eq!(create(nodes(max_nodes)).await.status, 202);
    let reply = create(nodes(max_nodes + 1)).await;
    assert_eq!((reply.status, reply.field()), (422, "plan.nodes"));

    let id_pattern = schemas["NodeId"]["pattern"].as_str().unwrap();
    let id_max: usize = id_pattern
        .rsplit_once(',')
        .and_then(|(_, rest)| rest.split('}').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no length in {id_pattern}"));
    for (id, status) in [("a".repeat(id_max), 202), ("a".repeat(id_max + 1), 422)] {
        let reply =
            create(json!({ "nodes": [ { "id": id, "type": "task", "capability": "set" } ] })).await;
        assert_eq!(reply.status, status, "{reply:?}");
    }

    let timeout_max = stated(
        &doc,
        "/components/schemas/HitlNode/properties/timeoutSeconds/maximum",
    );
    let hitl = |timeout: Value| {
        json!({ "nodes": [ { "id": "h", "type": "hitl", "prompt": "ok?",
                             "responseTypes": ["approval"], "timeoutSeconds": timeout } ] })
    };
    for (timeout, status) in [
        (json!(timeout_max), 202),
        (json!(timeout_max + 1), 422),
        (json!(0), 422),
        // JSON Schema reads 2283.0 as the whole number 2283; so does the service.
        (json!(2283.0), 202),
        (json!(2283.5), 422),
    ] {
        let reply = create(hitl(timeout.clone())).await;
        assert_eq!(reply.status, status, "timeoutSeconds {timeout}: {reply:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn one_of_two_fields_is_required_where_the_document_says_so() {
    let app = TestApp::spawn().await;
    let doc = served_document(&app).await;
    let schemas = &doc["components"]["schemas"];
    let required_in = |component: &str, combinator: &str| -> Vec<String> {
        schemas[component][combinator]
            .as_array()
            .unwrap()
            .iter()
            .map(|branch| branch["required"][0].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(required_in("CreateRunIn", "oneOf"), ["brief", "briefId"]);
    assert_eq!(required_in("ResumeIn", "anyOf"), ["runId", "threadId"]);
    assert_eq!(required_in("RemoveIn", "anyOf"), ["runId", "threadId"]);

    let unknown_brief = "brief_00000000000000000000000000000000";
    for (body, status, field) in [
        (json!({ "plan": one_task() }), 422, "brief"),
        (
            json!({ "brief": { "title": "t" }, "briefId": unknown_brief, "plan": one_task() }),
            422,
            "briefId",
        ),
        (
            json!({ "briefId": unknown_brief, "plan": one_task() }),
            404,
            "",
        ),
        (
            json!({ "brief": null, "briefId": unknown_brief, "plan": one_task() }),
            404,
            "",
        ),
        (
            json!({ "brief": { "title": "t" }, "plan": one_task() }),
            202,
            "",
        ),
    ] {
        let reply = app.post("/api/runs", SUBMITTER, &body).await;
        assert_eq!(
            (reply.status, reply.field()),
            (status, field),
            "{body}: {reply:?}"
        );
    }

    let remove = |target: Value| {
        let mut body = json!({ "operator": { "id": "op" }, "reason": "done" });
        body.as_object_mut()
            .unwrap()
            .extend(target.as_object().unwrap().clone());
        let app = &app;
        async move { app.post("/api/hitl/remove", OPERATOR, &body).await }
    };
    for (target, status) in [
        (json!({}), 422),
        (json!({ "runId": null, "threadId": null }), 422),
        (json!({ "runId": UNKNOWN_RUN }), 404),
        (json!({ "threadId": "nobody's" }), 404),
    ] {
        let reply = remove(target.clone()).await;
        assert_eq!(reply.status, status, "{target}: {reply:?}");
    }
    app.stop().await;
}
