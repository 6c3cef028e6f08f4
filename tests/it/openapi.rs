//! `GET /openapi.json`: a valid OpenAPI 3.1 document (checked by the `oas3` validator)
//! that documents exactly the routes the router serves.

use std::collections::BTreeSet;

use crate::common::api::{ADMIN, TestApp};
use hitl_orchestrator::api::ROUTES;
use serde_json::Value;

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

    // Every /api operation requires the bearer token.
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
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
