//! The pages a mailed link opens. `GET /decide/{token}` only shows what is asked and a form (mail scanners
//! follow links); the form's button `POST`s the decision, which spends the link. Pages, like the inbox, are
//! served with a strict Content-Security-Policy and are never cached or framed.

use crate::error::ApiError;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use paygent_engine::domain::{ApprovalStatus, DecisionKind};
use paygent_engine::notify::email::LinkPage;
use paygent_engine::{EngineError, Paygent};
use serde::Deserialize;

const CSP: &str = "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

pub fn router() -> Router<Paygent> {
    Router::new().route("/decide/{token}", get(confirm).post(decide))
}

#[derive(Deserialize)]
struct Asked {
    decision: Option<String>,
}

#[derive(Deserialize)]
struct Decided {
    decision: String,
    reason: Option<String>,
}

/// The confirmation page: what is asked, and the buttons. Nothing is decided here.
async fn confirm(
    State(paygent): State<Paygent>,
    Path(token): Path<String>,
    Query(asked): Query<Asked>,
) -> Response {
    match paygent.decision_link(&token).await {
        Ok(page) => html(
            StatusCode::OK,
            &confirmation(&page, &token, asked.decision.as_deref()),
        ),
        Err(e) => failed(e),
    }
}

/// The button: decides, once, and says what became of the request.
async fn decide(
    State(paygent): State<Paygent>,
    Path(token): Path<String>,
    form: Result<axum::Form<Decided>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(form)) = form else {
        return failed(EngineError::Invalid(
            "the form is not one of these pages'".into(),
        ));
    };
    let kind = match form.decision.as_str() {
        "approve" => DecisionKind::Approve,
        "reject" => DecisionKind::Reject,
        _ => return failed(EngineError::Invalid("decide approve or reject".into())),
    };
    match paygent.decide_by_link(&token, kind, form.reason).await {
        Ok(view) => {
            let word = status_word(view.status);
            let body =
                format!("<h1>{word}</h1><p>The request is {word}. This link is now used.</p>");
            html(StatusCode::OK, &page(word, &body))
        }
        Err(e) => failed(e),
    }
}

fn status_word(status: ApprovalStatus) -> &'static str {
    match status {
        ApprovalStatus::Pending => "still waiting (more approvals are needed)",
        ApprovalStatus::Approved => "approved",
        ApprovalStatus::Edited => "approved as edited",
        ApprovalStatus::Rejected => "rejected",
        ApprovalStatus::Expired => "expired",
        ApprovalStatus::Cancelled => "cancelled",
    }
}

/// The request as a person weighs it, and a form while it waits.
fn confirmation(p: &LinkPage, token: &str, asked: Option<&str>) -> String {
    let f = &p.facts;
    let headline = f.headline(
        escape,
        |t| format!("<strong>{t}</strong>"),
        |t| format!("<code>{t}</code>"),
    );
    let row = |k: &str, v: &str| format!("<dt>{k}</dt><dd>{}</dd>", escape(v));
    let facts = [
        row("The agent says", f.words.as_deref().unwrap_or("nothing")),
        row("Why you are asked", &f.reason),
        row("Budget", &f.budget),
        row("Decide by", &f.deadline.to_rfc2822()),
        row("Action", &p.request.digest),
    ]
    .concat();
    let form = if p.request.status == ApprovalStatus::Pending {
        let (approve, reject) = match asked {
            Some("reject") => ("", " autofocus"),
            _ => (" autofocus", ""),
        };
        format!(
            "<form method=\"post\" action=\"/decide/{}\"><label for=\"reason\">Reason, for a rejection</label>\
             <input id=\"reason\" name=\"reason\" maxlength=\"500\"><div class=\"actions\">\
             <button type=\"submit\" name=\"decision\" value=\"approve\" id=\"approve\"{approve}>Approve</button>\
             <button type=\"submit\" name=\"decision\" value=\"reject\" id=\"reject\" class=\"reject\"{reject}>\
             Reject</button></div></form>",
            escape(token)
        )
    } else {
        format!(
            "<p id=\"status\">It is {}.</p>",
            status_word(p.request.status)
        )
    };
    let body = format!(
        "<h1>{headline}</h1><dl>{facts}</dl><p class=\"hint\">You decide as <strong>{}</strong>. Opening this \
         page decided nothing; the button decides once, until {}, and only this action.</p>{form}",
        escape(&p.decider),
        p.expires_at.to_rfc2822()
    );
    page("Decide", &body)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Paygent</title>\
         <link rel=\"stylesheet\" href=\"/app.css\"></head><body><main class=\"card\">{body}</main></body></html>",
        escape(title)
    )
}

/// A refusal as a page, with the status and words the API would answer.
fn failed(e: EngineError) -> Response {
    let problem = ApiError::from(e).problem();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!(
        "<h1>{}</h1><p class=\"error\" id=\"problem\">{}</p>",
        escape(&problem.title),
        escape(&problem.detail)
    );
    html(status, &page(&problem.title, &body))
}

fn html(status: StatusCode, body: &str) -> Response {
    let headers = super::web::page_headers("text/html; charset=utf-8", "no-store", CSP);
    (status, headers, body.to_owned()).into_response()
}

/// Text made inert in HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
