//! The console's pages: one askama template (`templates/console/*.html`) and one struct
//! per page, rendered into a response with its status; and what a refused or failed
//! operation shows. Askama escapes every `{{ … }}` of an `.html` template for HTML, so a
//! prompt, an argument or a title an agent wrote is text on the page, never markup (no
//! template uses the `safe` filter; a test checks).

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::views::{InboxRow, RequestDetail};
use super::{Signed, outcome::OutcomeView};
use crate::service::ServiceError;

/// Who is signed in, for the page header and its sign-out form.
pub struct Who {
    /// The acting operator's id (the live script tells their own changes from others').
    pub operator_id: String,
    pub name: String,
    pub principal: String,
    pub csrf: String,
}

/// What every page's frame shows.
#[derive(Default)]
pub struct Chrome {
    pub who: Option<Who>,
}

impl Chrome {
    pub fn of(signed: &Signed) -> Self {
        Self {
            who: Some(Who {
                operator_id: signed.operator.id.clone(),
                name: super::views::person(&signed.operator),
                principal: signed.principal.name.to_string(),
                csrf: signed.csrf(),
            }),
        }
    }
}

#[derive(Template)]
#[template(path = "console/message.html")]
pub struct MessagePage {
    pub chrome: Chrome,
    pub title: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignInPage {
    pub chrome: Chrome,
    /// Why the operator is here again (fixed texts only).
    pub notice: Option<&'static str>,
    pub error: Option<String>,
    pub operator_id: String,
    pub operator_name: String,
}

/// The inbox's filters, as the operator typed them.
#[derive(Default)]
pub struct Filters {
    pub q: String,
    pub assigned_to_me: bool,
    /// The "expiring within" window as given (`15m`, `4h`, …).
    pub expiring: String,
    pub thread: String,
    pub brief: String,
    pub node: String,
}

#[derive(Template)]
#[template(path = "console/inbox.html")]
pub struct InboxPage {
    pub chrome: Chrome,
    pub filters: Filters,
    pub filtered: bool,
    pub error: Option<String>,
    pub rows: Vec<InboxRow>,
    /// The next page's address, when there is one.
    pub next: Option<String>,
    /// The first page's address, when this is a later one.
    pub first: Option<String>,
}

#[derive(Template)]
#[template(path = "console/request.html")]
pub struct RequestPage {
    pub chrome: Chrome,
    pub r: RequestDetail,
    pub error: Option<String>,
    pub csrf: String,
    /// The answer form's idempotency key: sending it twice is one command.
    pub key: String,
}

#[derive(Template)]
#[template(path = "console/run.html")]
pub struct RunPage {
    pub chrome: Chrome,
    pub r: super::runs::RunDetail,
    pub error: Option<String>,
    pub csrf: String,
    /// The retry form's idempotency key.
    pub key: String,
}

#[derive(Template)]
#[template(path = "console/outcome.html")]
pub struct OutcomePage {
    pub chrome: Chrome,
    pub o: OutcomeView,
}

/// `page` as HTML with `status`; a page that cannot be rendered is logged once and
/// answered with an opaque 500.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A page saying why something was refused.
pub fn refused(status: StatusCode, title: &str, message: &str) -> Response {
    message_page(status, Chrome::default(), title, message)
}

fn message_page(status: StatusCode, chrome: Chrome, title: &str, message: &str) -> Response {
    render(
        status,
        &MessagePage {
            chrome,
            title: title.to_owned(),
            message: message.to_owned(),
        },
    )
}

/// What a failed service call shows: the service's own message for what the operator
/// can act on, nothing internal for our faults (logged once, here).
pub fn service_error(e: ServiceError, signed: Option<&Signed>) -> Response {
    let chrome = signed.map(Chrome::of).unwrap_or_default();
    let (status, title) = match &e {
        ServiceError::Invalid { .. } | ServiceError::InvalidPlan(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "Not accepted")
        }
        ServiceError::NotFound { .. } => (StatusCode::NOT_FOUND, "Not found"),
        ServiceError::Refused(_)
        | ServiceError::Conflict(_)
        | ServiceError::ThreadTaken(_)
        | ServiceError::IdempotencyKeyReused => (StatusCode::CONFLICT, "Not done"),
        ServiceError::NotAssignee { .. }
        | ServiceError::ForceNeedsSupervise
        | ServiceError::OperatorMismatch { .. } => (StatusCode::FORBIDDEN, "Not allowed"),
        ServiceError::HitlDisabled | ServiceError::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "Unavailable")
        }
        ServiceError::Internal(cause) => {
            tracing::error!(error = %cause, "console request failed");
            return message_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                chrome,
                "Something went wrong",
                "The service could not do this. The cause is in its log.",
            );
        }
    };
    message_page(status, chrome, title, &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_page_shows_is_escaped() {
        let page = MessagePage {
            chrome: Chrome::default(),
            title: "<img src=x onerror=alert(1)>".into(),
            message: "\"><script>alert('x')</script>".into(),
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<script>alert") && !html.contains("<img src=x"));
        assert!(
            html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
            "{html}"
        );
    }

    /// Whether `html` has an event-handler attribute (` onclick=`, ` onload=`, …).
    fn has_event_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        })
    }

    #[test]
    fn no_template_turns_escaping_off_or_inlines_script_or_style() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/console");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            // The one script there is: the console's own file, by address, no code inline.
            let own_script = r#"<script src="/console/static/console.js" defer></script>"#;
            let compact = text.replace(own_script, "").replace(' ', "");
            for forbidden in ["|safe", "escape=", "<script", "<style", "style="] {
                assert!(
                    !compact.contains(forbidden),
                    "{} has {forbidden}",
                    entry.path().display()
                );
            }
            assert!(!has_event_handler(&text), "{}", entry.path().display());
            seen += 1;
        }
        assert!(seen >= 6, "the templates were found");
        assert!(has_event_handler("<a onclick=\"x\">") && !has_event_handler("<p>on=</p>"));
    }
}
