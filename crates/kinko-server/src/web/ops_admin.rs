//! The operator console's KYC queue and maintenance windows (issue #8; U1, S4).
//!
//! - `/ops/kyc`: the API's `GET /v1/ops/kyc` (`onboarding::ops_list`, with its optional state filter) as a
//!   table; a signing operator takes a submitted case for review (`onboarding::ops_review`), an operations
//!   manager decides a case under review, verified or rejected with a reason (`onboarding::ops_decide`: never
//!   the reviewer, the API and the core check it). The forms are shown to the roles `OPS_AUTHZ` allows (asked
//!   through the API's own `require_endpoint`); everyone else sees the API's refusal instead of the form, and a
//!   form posted anyway is the API's refusal on the page, with its status.
//! - `/ops/maintenance`: the API's `maintenance::list_windows`, the form that announces a window
//!   (`maintenance::create_window`: start "now", minutes from now or UTC `YYYY-MM-DD HH:MM`; end as minutes
//!   after the start or UTC `YYYY-MM-DD HH:MM`; the notice customers see) and a cancel button per open window
//!   (`maintenance::cancel_window`). While a window is in force the portal's pages answer the maintenance page
//!   (`web::pages::maintenance_page`); `/ops/...` keeps working so the window can be cancelled from here.
//!
//! Every POST checks the synchronizer CSRF token (after the origin check every console form gets) before
//! calling the API.

use axum::Form;
use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::ops::{OpsSession, form, ops_layout, ops_problem_page};
use super::pages::{csrf_field, problem_summary, respond, utc};
use crate::AppState;
use crate::api::Problem;
use crate::api::onboarding::{self, DecisionBody, KycQuery, OpsSubmissionView};
use crate::api::ops_auth::OpsJson;
use crate::api::ops_requests::require_endpoint;
use crate::api::problem::FieldError;
use crate::clock::now_ms;
use crate::maintenance::{self, NewWindow, WindowView};

pub const OPS_KYC_PATH: &str = "/ops/kyc";
pub const OPS_MAINTENANCE_PATH: &str = "/ops/maintenance";
/// The states the queue may be filtered by (`GET /v1/ops/kyc?state=`).
const KYC_STATES: &[&str] = &["submitted", "under_review", "verified", "rejected"];

/// The reason for `field` the problem names, if any.
fn field_error<'a>(problem: Option<&'a Problem>, field: &str) -> Option<&'a str> {
    problem?.body.errors.iter().find(|e| e.field == field).map(|e| e.reason.as_str())
}

// ---------------------------------------------------------------------------------------------------
// The KYC queue.

/// What a refused form posted for one case keeps: the case, and the decision and reason typed.
#[derive(Default)]
struct Typed {
    case: String,
    decision: String,
    reason: String,
}

fn kyc_page(
    session: &OpsSession,
    filter: &str,
    cases: &[OpsSubmissionView],
    problem: Option<&Problem>,
    typed: &Typed,
) -> Markup {
    // The API's own role rule decides which forms the operator gets; its refusal is shown otherwise.
    let may_review = require_endpoint(&session.op, "post", "/v1/ops/kyc/{id}/review");
    let may_decide = require_endpoint(&session.op, "post", "/v1/ops/kyc/{id}/decision");
    let submitted: Vec<&OpsSubmissionView> = cases.iter().filter(|c| c.state == "submitted").collect();
    let under_review: Vec<&OpsSubmissionView> = cases.iter().filter(|c| c.state == "under_review").collect();
    let body = html! {
        h1 { "Identity verification (KYC)" }
        @if let Some(p) = problem { (problem_summary(p)) }
        p { "Customers' identity submissions, oldest first. A signing operator takes a submitted case for review (examining the documents in the document system); an operations manager — never the reviewer — decides it, with a reason the customer never sees (U1)." }
        form method="get" action=(OPS_KYC_PATH) {
            div class="field" {
                label for="state" { "Show cases in state" }
                select id="state" name="state" {
                    option value="" selected[filter.is_empty()] { "all" }
                    @for s in KYC_STATES { option value=(s) selected[*s == filter] { (s) } }
                }
            }
            button type="submit" { "Show" }
        }
        table id="kyc-cases" {
            caption { "KYC cases" }
            thead { tr { th scope="col" { "Case" } th scope="col" { "Customer" } th scope="col" { "State" }
                th scope="col" { "Documents" } th scope="col" { "Submitted" } th scope="col" { "Reviewer" }
                th scope="col" { "Decided by" } th scope="col" { "Reason" } } }
            tbody {
                @for c in cases {
                    tr data-case-id=(c.id) {
                        td class="agent" { (c.id) } td class="agent" { (c.customer_id) }
                        td class="kyc-state" { (c.state) }
                        td { @for d in &c.documents { (d.kind) ": " code class="address" { (d.reference) } br; } }
                        td { (utc(c.submitted_at_ms)) }
                        td class="agent" { (c.reviewer_id.as_deref().unwrap_or("—")) }
                        td class="agent" { (c.decided_by.as_deref().unwrap_or("—")) }
                        td { (c.reason.as_deref().unwrap_or("—")) }
                    }
                }
            }
        }
        @if cases.is_empty() { p { "No cases." } }

        h2 { "Take a case for review" }
        @match &may_review {
            Ok(()) => {
                @if submitted.is_empty() { p { "No submitted case waits for review." } }
                @for c in &submitted {
                    form method="post" action=(format!("/ops/kyc/{}/review", c.id)) class="kyc-review" {
                        (csrf_field(&session.csrf()))
                        p { "Case " code class="address" { (c.id) } " of customer " code class="address" { (c.customer_id) } }
                        button type="submit" { "Take this case for review" }
                    }
                }
            }
            Err(refusal) => p id="may-not-review" class="hint" { (refusal_text(refusal)) }
        }

        h2 { "Decide a case under review" }
        @match &may_decide {
            Ok(()) => {
                @if under_review.is_empty() { p { "No case is under review." } }
                @for c in &under_review {
                    @let mine = typed.case == c.id;
                    @let decision_id = format!("decision-{}", c.id);
                    @let reason_id = format!("reason-{}", c.id);
                    @let reason_error = if mine { field_error(problem, "reason") } else { None };
                    form method="post" action=(format!("/ops/kyc/{}/decision", c.id)) class="kyc-decision" {
                        (csrf_field(&session.csrf()))
                        p { "Case " code class="address" { (c.id) } ", reviewed by " code class="address" { (c.reviewer_id.as_deref().unwrap_or("—")) } }
                        div class="field" {
                            label for=(decision_id) { "Decision" }
                            select id=(decision_id) name="decision" {
                                option value="verified" selected[mine && typed.decision == "verified"] { "verified" }
                                option value="rejected" selected[mine && typed.decision == "rejected"] { "rejected" }
                            }
                        }
                        div class="field" {
                            label for=(reason_id) { "Reason (kept for operators and auditors; never shown to the customer)" }
                            input id=(reason_id) name="reason" type="text" required
                                value=(if mine { typed.reason.as_str() } else { "" })
                                aria-invalid=[reason_error.map(|_| "true")];
                            @if let Some(r) = reason_error { p class="hint" id=(format!("{reason_id}-error")) { strong { "Reason: " } (r) } }
                        }
                        button type="submit" { "Record the decision" }
                    }
                }
            }
            Err(refusal) => p id="may-not-decide" class="hint" { (refusal_text(refusal)) }
        }
    };
    ops_layout("KYC cases", Some(session), body)
}

fn refusal_text(p: &Problem) -> String {
    p.body.detail.clone().unwrap_or_else(|| p.body.title.clone())
}

async fn kyc_list(state: &AppState, session: &OpsSession, filter: &str) -> Result<Vec<OpsSubmissionView>, Problem> {
    let q = KycQuery { state: (!filter.is_empty()).then(|| filter.to_string()), limit: None };
    onboarding::ops_list(State(state.clone()), session.op.clone(), Query(q)).await.map(|Json(v)| v)
}

/// The page after a refused form: the queue again with the problem and its status, or a problem page when
/// the queue itself cannot be read (the role may not list it).
async fn kyc_refused(state: &AppState, session: &OpsSession, p: &Problem, typed: &Typed) -> Response {
    match kyc_list(state, session, "").await {
        Ok(cases) => respond(p.status, kyc_page(session, "", &cases, Some(p), typed), &[]),
        Err(_) => ops_problem_page(p, Some((OPS_KYC_PATH, "Back to the KYC cases"))),
    }
}

#[derive(Deserialize)]
pub struct KycFilter {
    #[serde(default)]
    state: String,
}

/// `/ops/kyc`: the API's `GET /v1/ops/kyc` (signing operators, operations managers, log inspectors).
pub async fn kyc(State(state): State<AppState>, session: OpsSession, Query(q): Query<KycFilter>) -> Response {
    let filter = q.state.trim().to_string();
    match kyc_list(&state, &session, &filter).await {
        Ok(cases) => respond(StatusCode::OK, kyc_page(&session, &filter, &cases, None, &Typed::default()), &[]),
        Err(p) => ops_problem_page(&p, None),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /ops/kyc/{id}/review`: the API's own `ops_review` (signing operators).
pub async fn kyc_review(
    State(state): State<AppState>,
    session: OpsSession,
    Path(id): Path<String>,
    parsed: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let outcome = match form(parsed).and_then(|f| session.check_csrf(&f.csrf)) {
        Ok(()) => onboarding::ops_review(State(state.clone()), session.op.clone(), Path(id.clone())).await.map(|_| ()),
        Err(p) => Err(p),
    };
    match outcome {
        Ok(()) => Redirect::to(OPS_KYC_PATH).into_response(),
        Err(p) => kyc_refused(&state, &session, &p, &Typed { case: id, ..Typed::default() }).await,
    }
}

#[derive(Deserialize)]
pub struct KycDecisionForm {
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
}

/// `POST /ops/kyc/{id}/decision`: the API's own `ops_decide` (operations managers; never the reviewer).
pub async fn kyc_decision(
    State(state): State<AppState>,
    session: OpsSession,
    Path(id): Path<String>,
    parsed: Result<Form<KycDecisionForm>, FormRejection>,
) -> Response {
    let mut typed = Typed { case: id.clone(), ..Typed::default() };
    let outcome = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => {
            typed.decision = f.decision.clone();
            typed.reason = f.reason.clone();
            let body = DecisionBody { decision: f.decision, reason: f.reason };
            onboarding::ops_decide(State(state.clone()), session.op.clone(), Path(id.clone()), OpsJson(body))
                .await
                .map(|_| ())
        }
        Err(p) => Err(p),
    };
    match outcome {
        Ok(()) => Redirect::to(OPS_KYC_PATH).into_response(),
        Err(p) => kyc_refused(&state, &session, &p, &typed).await,
    }
}

// ---------------------------------------------------------------------------------------------------
// Maintenance windows.

/// What the announcement form keeps after a refusal.
#[derive(Default)]
struct WindowTyped {
    starts: String,
    ends: String,
    message: String,
}

fn window_state(w: &WindowView, now: i64) -> &'static str {
    if w.cancelled_at_ms.is_some() {
        "cancelled"
    } else if now >= w.ends_at_ms {
        "over"
    } else if now >= w.starts_at_ms {
        "in force"
    } else {
        "announced"
    }
}

/// A form field's error: the form's own name (`starts`, `ends`, `message`) or the API's
/// (`starts_at_ms`, `ends_at_ms`).
fn window_field_error<'a>(problem: Option<&'a Problem>, form_field: &str, api_field: &str) -> Option<&'a str> {
    field_error(problem, form_field).or_else(|| field_error(problem, api_field))
}

fn maintenance_page(
    session: &OpsSession,
    windows: &[WindowView],
    problem: Option<&Problem>,
    typed: &WindowTyped,
) -> Markup {
    let now = now_ms();
    let may_announce = require_endpoint(&session.op, "post", "/v1/ops/maintenance-windows");
    let may_cancel = require_endpoint(&session.op, "post", "/v1/ops/maintenance-windows/{id}/cancel").is_ok();
    let starts_error = window_field_error(problem, "starts", "starts_at_ms");
    let ends_error = window_field_error(problem, "ends", "ends_at_ms");
    let message_error = field_error(problem, "message");
    let described = |hint: &str, error: Option<&str>, error_id: &str| match error {
        Some(_) => format!("{hint} {error_id}"),
        None => hint.to_string(),
    };
    let body = html! {
        h1 { "Maintenance windows" }
        @if let Some(p) = problem { (problem_summary(p)) }
        p { "While a window is in force every customer page and the customer API answer 503 with the notice; the operator console keeps working, so a window can be cancelled here (S4). Announced windows appear at " a href="/v1/status" { "the public status" } " at once." }
        table id="windows" {
            caption { "Windows, newest first" }
            thead { tr { th scope="col" { "Window" } th scope="col" { "Starts" } th scope="col" { "Ends" }
                th scope="col" { "Notice" } th scope="col" { "Announced by" } th scope="col" { "State" } th scope="col" { "Action" } } }
            tbody {
                @for w in windows {
                    @let st = window_state(w, now);
                    tr data-window-id=(w.id) {
                        td class="agent" { (w.id) } td { (utc(w.starts_at_ms)) } td { (utc(w.ends_at_ms)) }
                        td { (w.message) }
                        td class="agent" { (w.created_by.as_deref().unwrap_or("—")) }
                        td class="window-state" { (st)
                            @if let Some(by) = &w.cancelled_by { " by " (by) } }
                        td {
                            @if may_cancel && matches!(st, "announced" | "in force") {
                                form method="post" action=(format!("/ops/maintenance/{}/cancel", w.id)) class="inline" {
                                    (csrf_field(&session.csrf()))
                                    button type="submit" { "Cancel this window" }
                                }
                            } @else { "—" }
                        }
                    }
                }
            }
        }
        @if windows.is_empty() { p { "No maintenance window has been announced." } }

        h2 { "Announce a window" }
        @match &may_announce {
            Ok(()) => {
                form method="post" action=(OPS_MAINTENANCE_PATH) id="announce" {
                    (csrf_field(&session.csrf()))
                    div class="field" {
                        label for="starts" { "Starts" }
                        input id="starts" name="starts" type="text" required autocomplete="off" value=(typed.starts)
                            aria-invalid=[starts_error.map(|_| "true")]
                            aria-describedby=(described("starts-hint", starts_error, "starts-error"));
                        p class="hint" id="starts-hint" { code { "now" } ", minutes from now (" code { "30" } "), or a UTC time " code { "YYYY-MM-DD HH:MM" } "." }
                        @if let Some(r) = starts_error { p class="hint" id="starts-error" { strong { "Starts: " } (r) } }
                    }
                    div class="field" {
                        label for="ends" { "Ends" }
                        input id="ends" name="ends" type="text" required autocomplete="off" value=(typed.ends)
                            aria-invalid=[ends_error.map(|_| "true")]
                            aria-describedby=(described("ends-hint", ends_error, "ends-error"));
                        p class="hint" id="ends-hint" { "Minutes after the start (" code { "60" } "), or a UTC time " code { "YYYY-MM-DD HH:MM" } ". At most 7 days." }
                        @if let Some(r) = ends_error { p class="hint" id="ends-error" { strong { "Ends: " } (r) } }
                    }
                    div class="field" {
                        label for="message" { "Notice customers see" }
                        textarea id="message" name="message" rows="3" required maxlength=(maintenance::MESSAGE_LEN_MAX)
                            aria-invalid=[message_error.map(|_| "true")]
                            aria-describedby=[message_error.map(|_| "message-error")] { (typed.message) }
                        @if let Some(r) = message_error { p class="hint" id="message-error" { strong { "Notice: " } (r) } }
                    }
                    button type="submit" { "Announce the window" }
                }
            }
            Err(refusal) => p id="may-not-announce" class="hint" { (refusal_text(refusal)) }
        }
    };
    ops_layout("Maintenance windows", Some(session), body)
}

async fn windows_list(state: &AppState, session: &OpsSession) -> Result<Vec<WindowView>, Problem> {
    maintenance::list_windows(State(state.clone()), session.op.clone()).await.map(|Json(v)| v)
}

async fn maintenance_refused(state: &AppState, session: &OpsSession, p: &Problem, typed: &WindowTyped) -> Response {
    match windows_list(state, session).await {
        Ok(windows) => respond(p.status, maintenance_page(session, &windows, Some(p), typed), &[]),
        Err(_) => ops_problem_page(p, Some((OPS_MAINTENANCE_PATH, "Back to the maintenance windows"))),
    }
}

/// `/ops/maintenance`: the API's `GET /v1/ops/maintenance-windows`, the announcement form and the cancel
/// buttons.
pub async fn maintenance(State(state): State<AppState>, session: OpsSession) -> Response {
    match windows_list(&state, &session).await {
        Ok(windows) => {
            respond(StatusCode::OK, maintenance_page(&session, &windows, None, &WindowTyped::default()), &[])
        }
        Err(p) => ops_problem_page(&p, None),
    }
}

/// `YYYY-MM-DD HH:MM` (or with a `T`) in UTC, as milliseconds since the epoch.
fn parse_utc(text: &str) -> Option<i64> {
    let (date, clock) = text.split_once([' ', 'T'])?;
    let mut d = date.trim().splitn(3, '-');
    let (y, m, day) = (d.next()?.parse::<i32>().ok()?, d.next()?.parse::<u8>().ok()?, d.next()?.parse::<u8>().ok()?);
    let (h, min) = clock.trim().split_once(':')?;
    let (h, min) = (h.parse::<u8>().ok()?, min.parse::<u8>().ok()?);
    let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, day).ok()?;
    let t = time::Time::from_hms(h, min, 0).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp() * 1000)
}

/// Whole minutes (0 to 7 days' worth) as milliseconds.
fn parse_minutes(text: &str) -> Option<i64> {
    text.parse::<i64>()
        .ok()
        .filter(|m| (0..=maintenance::ANNOUNCE_AHEAD_MAX_MS / 60_000).contains(m))
        .map(|m| m * 60_000)
}

/// The form's start and end as the API's times: start `now`, minutes from now or UTC; end minutes after the
/// start or UTC. A field that cannot be read is named.
fn window_times(starts: &str, ends: &str, now: i64) -> Result<(i64, i64), Problem> {
    let (starts, ends) = (starts.trim(), ends.trim());
    let mut errors = Vec::new();
    let start = if starts.eq_ignore_ascii_case("now") {
        Some(now)
    } else {
        parse_minutes(starts).map(|m| now + m).or_else(|| parse_utc(starts))
    };
    if start.is_none() {
        errors.push(FieldError::new("starts", "must be now, a number of minutes from now, or YYYY-MM-DD HH:MM (UTC)"));
    }
    let end = match start {
        Some(s) => parse_minutes(ends).map(|m| s + m).or_else(|| parse_utc(ends)),
        None => parse_utc(ends).or(parse_minutes(ends).map(|_| 0)),
    };
    if end.is_none() {
        errors.push(FieldError::new("ends", "must be a number of minutes after the start, or YYYY-MM-DD HH:MM (UTC)"));
    }
    match (start, end) {
        (Some(s), Some(e)) if errors.is_empty() => Ok((s, e)),
        _ => Err(Problem::validation(errors)),
    }
}

#[derive(Deserialize)]
pub struct WindowForm {
    csrf: String,
    #[serde(default)]
    starts: String,
    #[serde(default)]
    ends: String,
    #[serde(default)]
    message: String,
}

/// `POST /ops/maintenance`: the API's own `create_window` (operations managers and administrators; its
/// checks of the times and the notice).
pub async fn announce(
    State(state): State<AppState>,
    session: OpsSession,
    parsed: Result<Form<WindowForm>, FormRejection>,
) -> Response {
    let mut typed = WindowTyped::default();
    let outcome = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => {
            typed = WindowTyped { starts: f.starts.clone(), ends: f.ends.clone(), message: f.message.clone() };
            match window_times(&f.starts, &f.ends, now_ms()) {
                Ok((starts_at_ms, ends_at_ms)) => {
                    let body = NewWindow { starts_at_ms, ends_at_ms, message: f.message };
                    maintenance::create_window(State(state.clone()), session.op.clone(), OpsJson(body))
                        .await
                        .map(|_| ())
                }
                Err(p) => Err(p),
            }
        }
        Err(p) => Err(p),
    };
    match outcome {
        Ok(()) => Redirect::to(OPS_MAINTENANCE_PATH).into_response(),
        Err(p) => maintenance_refused(&state, &session, &p, &typed).await,
    }
}

/// `POST /ops/maintenance/{id}/cancel`: the API's own `cancel_window` (a window in force ends at once).
pub async fn cancel(
    State(state): State<AppState>,
    session: OpsSession,
    Path(id): Path<String>,
    parsed: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let outcome = match form(parsed).and_then(|f| session.check_csrf(&f.csrf)) {
        Ok(()) => maintenance::cancel_window(State(state.clone()), session.op.clone(), Path(id)).await.map(|_| ()),
        Err(p) => Err(p),
    };
    match outcome {
        Ok(()) => Redirect::to(OPS_MAINTENANCE_PATH).into_response(),
        Err(p) => maintenance_refused(&state, &session, &p, &WindowTyped::default()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s4_window_times_from_the_form() {
        let now = 1_800_000_000_000;
        assert_eq!(window_times("now", "30", now).unwrap(), (now, now + 30 * 60_000));
        assert_eq!(window_times(" 15 ", "60", now).unwrap(), (now + 15 * 60_000, now + 75 * 60_000));
        let start = parse_utc("2027-01-15 03:00").unwrap();
        assert_eq!(window_times("2027-01-15 03:00", "2027-01-15 04:30", now).unwrap(), (start, start + 90 * 60_000));
        assert_eq!(parse_utc("1970-01-01 00:01"), Some(60_000));
        let e = window_times("soon", "later", now).unwrap_err();
        let fields: Vec<&str> = e.body.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["starts", "ends"]);
        assert!(parse_utc("2027-02-30 03:00").is_none());
    }
}
