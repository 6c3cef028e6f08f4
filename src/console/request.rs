//! One request: `GET /console/requests/{requestId}` shows it in full (prompt, contract,
//! execution context, items with their tools and arguments, the run's audit timeline) with
//! its answer and remove forms; the `POST`s under it answer it, remove its run, claim it or
//! release a claim, each through the service exactly as the JSON API does. An answer or a
//! removal then goes to its outcome page; a refusal met at once is shown at once.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::outcome::OutcomeView;
use super::pages::{self, Chrome, OutcomePage, RequestPage};
use super::views::RequestDetail;
use super::{Console, Signed, form, session};
use crate::domain::{CommandKind, RequestId};
use crate::service::claims::DEFAULT_LEASE;
use crate::service::input::{self, IdempotencyKey, MAX_LONG_TEXT};
use crate::service::{ClaimOrder, CommandInput, RunTarget, ServiceError, SubmitCommand, Submitted};

/// A request id from the path, or the not-found page.
fn request_id(raw: &str) -> Result<RequestId, Response> {
    RequestId::parse(raw).map_err(|_| {
        pages::refused(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such request.",
        )
    })
}

/// The detail page of `id`, with `error` above it when a form was refused.
async fn detail(
    console: &Console,
    signed: &Signed,
    id: &RequestId,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let loaded = async {
        let view = console.service.request(id).await?;
        let run = console.service.run(&view.run_id).await?;
        let brief = console.service.brief(&view.brief_id).await?;
        Ok::<_, ServiceError>((view, run, brief))
    };
    let (view, run, brief) = match loaded.await {
        Ok(parts) => parts,
        Err(e) => return pages::service_error(e, Some(signed)),
    };
    let me = (&*signed.principal.name, &signed.operator);
    let r = RequestDetail::new(view, &run, &brief, me, chrono::Utc::now());
    pages::render(
        status,
        &RequestPage {
            chrome: Chrome::of(signed),
            r,
            error,
            csrf: signed.csrf(),
            key: format!("console-{}", session::random_hex(16)),
        },
    )
}

/// `GET /console/requests/{requestId}`.
pub async fn show(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    let signed = match console.signed(&headers).await {
        Ok(s) => s,
        Err(to_sign_in) => return to_sign_in,
    };
    match request_id(&raw) {
        Ok(id) => detail(&console, &signed, &id, StatusCode::OK, None).await,
        Err(not_found) => not_found,
    }
}

/// A signed-in operator's form for the request in the path: the session, the body, its
/// CSRF token, the id.
async fn signed_form(
    console: &Console,
    headers: &HeaderMap,
    body: Body,
    raw: &str,
) -> Result<(Signed, form::Fields, RequestId), Response> {
    let signed = console.signed(headers).await?;
    let fields = form::read(headers, body, console.max_body, console.body_timeout).await?;
    signed.check_csrf(&fields)?;
    let id = request_id(raw)?;
    Ok((signed, fields, id))
}

/// `POST /console/requests/{requestId}/answer`: one answer per item (`decision-N`,
/// `text-N`, `arguments-N`), a `note`, the form's idempotency `key`.
pub async fn answer(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> Response {
    let (signed, fields, id) = match signed_form(&console, &headers, body, &raw).await {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    let view = match console.service.request(&id).await {
        Ok(v) => v,
        Err(e) => return pages::service_error(e, Some(&signed)),
    };
    let responses =
        match form::responses(&view.request.items, &fields, id.as_str(), &signed.operator) {
            Ok(r) => r,
            Err(problem) => {
                let status = StatusCode::UNPROCESSABLE_ENTITY;
                return detail(&console, &signed, &id, status, Some(problem)).await;
            }
        };
    let input = CommandInput::Resume {
        request_id: id.clone(),
        responses,
        force: false,
    };
    submit(
        &console,
        signed,
        &fields,
        RunTarget::run(view.run_id),
        input,
        &id,
    )
    .await
}

/// `POST /console/requests/{requestId}/remove`: a `reason` (required here), a `note`.
pub async fn remove(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> Response {
    let (signed, fields, id) = match signed_form(&console, &headers, body, &raw).await {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    let Some(reason) = fields.text("reason") else {
        let error = Some("Give a reason for removing the run.".to_owned());
        return detail(
            &console,
            &signed,
            &id,
            StatusCode::UNPROCESSABLE_ENTITY,
            error,
        )
        .await;
    };
    let view = match console.service.request(&id).await {
        Ok(v) => v,
        Err(e) => return pages::service_error(e, Some(&signed)),
    };
    let input = CommandInput::Remove {
        request_id: Some(id.clone()),
        reason: Some(reason),
        force: false,
    };
    submit(
        &console,
        signed,
        &fields,
        RunTarget::run(view.run_id),
        input,
        &id,
    )
    .await
}

/// Submits a resume or remove through the service, then shows its outcome page; a field
/// the service refuses is shown on the request's page, a refusal at once on the outcome
/// page.
async fn submit(
    console: &Console,
    signed: Signed,
    fields: &form::Fields,
    target: RunTarget,
    input: CommandInput,
    id: &RequestId,
) -> Response {
    match send(console, signed, fields, target, input, Some(id)).await {
        Ok(response) => response,
        Err((signed, problem)) => {
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            detail(console, &signed, id, status, Some(problem)).await
        }
    }
}

/// Submits a retry of the run through the service (see [`send`]).
pub(super) async fn submit_for_run(
    console: &Console,
    signed: Signed,
    fields: &form::Fields,
    target: RunTarget,
    input: CommandInput,
) -> Result<Response, (Signed, String)> {
    send(console, signed, fields, target, input, None).await
}

/// Submits a command and answers with the way to its outcome page, or the outcome page
/// of a refusal met at once; a field the service refuses comes back (with the session)
/// for the caller's page to show.
async fn send(
    console: &Console,
    signed: Signed,
    fields: &form::Fields,
    target: RunTarget,
    input: CommandInput,
    id: Option<&RequestId>,
) -> Result<Response, (Signed, String)> {
    let submitted = match submission(&signed, fields, target, input) {
        Ok(submission) => console.service.submit(submission).await,
        Err(e) => Err(e),
    };
    match submitted {
        Ok(Submitted { command, replayed }) => {
            let kind = match command.kind {
                CommandKind::Resume => "resume",
                CommandKind::Remove => "remove",
                CommandKind::Retry => "retry",
            };
            tracing::info!(
                run_id = %command.run_id,
                request_id = id.map(tracing::field::display),
                command_id = %command.command_id,
                operator_id = %command.operator.id,
                token_name = %signed.principal.name,
                created = !replayed,
                kind,
                "console command accepted"
            );
            Ok(Redirect::to(&format!("/console/commands/{}", command.command_id)).into_response())
        }
        Err(ServiceError::Refused(refusal)) => Ok(pages::render(
            StatusCode::CONFLICT,
            &OutcomePage {
                chrome: Chrome::of(&signed),
                o: OutcomeView::refused(&refusal, id),
            },
        )),
        Err(e @ ServiceError::Invalid { .. }) => Err((signed, e.to_string())),
        Err(e) => Ok(pages::service_error(e, Some(&signed))),
    }
}

/// The command a form asks for: its note and (for a removal) reason within their
/// lengths, its idempotency key, who acts.
fn submission(
    signed: &Signed,
    fields: &form::Fields,
    target: RunTarget,
    input: CommandInput,
) -> Result<SubmitCommand, ServiceError> {
    let note = fields.text("note");
    input::text("note", note.as_deref(), MAX_LONG_TEXT)?;
    if let CommandInput::Remove { reason, .. } = &input {
        input::text("reason", reason.as_deref(), MAX_LONG_TEXT)?;
    }
    let key = fields
        .text("key")
        .map(|k| IdempotencyKey::parse(&k))
        .transpose()?;
    Ok(SubmitCommand {
        target,
        input,
        operator: signed.operator.clone(),
        note,
        idempotency_key: key,
        principal: Some(signed.principal.clone()),
    })
}

/// `POST /console/requests/{requestId}/claim`: claims it for the default lease (or renews
/// the operator's own claim).
pub async fn claim(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> Response {
    claim_or_release(console, headers, raw, body, true).await
}

/// `POST /console/requests/{requestId}/unclaim`: releases the operator's claim.
pub async fn unclaim(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> Response {
    claim_or_release(console, headers, raw, body, false).await
}

async fn claim_or_release(
    console: Console,
    headers: HeaderMap,
    raw: String,
    body: Body,
    claim: bool,
) -> Response {
    let (signed, fields, id) = match signed_form(&console, &headers, body, &raw).await {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    let order = ClaimOrder {
        request_id: id.clone(),
        principal: signed.principal.clone(),
        operator: signed.operator.clone(),
        force: false,
    };
    let done = match claim {
        true => console.service.claim(order, DEFAULT_LEASE).await,
        false => console.service.unclaim(order).await,
    };
    if let Err(e) = done {
        return pages::service_error(e, Some(&signed));
    }
    // Back where the button was: the run's page sends `back=run` (a fixed word, so no
    // address from a form is followed), the request's page nothing.
    if fields.get("back") == Some("run")
        && let Ok(view) = console.service.request(&id).await
    {
        return Redirect::to(&format!("/console/runs/{}", view.run_id)).into_response();
    }
    Redirect::to(&format!("/console/requests/{id}")).into_response()
}
