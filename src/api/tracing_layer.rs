//! One span per HTTP request, continuing the caller's trace when it sends a W3C
//! `traceparent`. Only the method and the route pattern are recorded (never headers,
//! tokens or bodies).

use std::collections::HashMap;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Wraps the request in an `http_request` span.
pub async fn trace_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("http_request", http.method = %request.method(), http.route = %route,
        http.status_code = tracing::field::Empty);
    let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|h| {
            let v = request.headers().get(h)?.to_str().ok()?;
            Some((h.to_owned(), v.to_owned()))
        })
        .collect();
    if !carrier.is_empty() {
        crate::telemetry::continue_trace(&span, &carrier);
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.status_code", response.status().as_u16());
    response
}
