//! The operator console's key pages (issue #8; K2, K7, K8, L2): the custody keys with their lifecycle
//! states, the form that *requests* a key lifecycle action, the execution of an approved Table A-1 request,
//! and the signer's key access log.
//!
//! As everywhere in the console, each page calls the JSON API's own handler with the operator resolved by
//! the API's extractor ([`OpsSession`]): `ops_requests::list_keys` (`GET /v1/ops/keys`),
//! `ops_requests::create_request` (a `key_transition` request: its process, requesting role and
//! separation of duties are the API's), `ops_requests::execute` (the executing role, never an approver;
//! destruction refused there with the command to run on the custody host) and `audit::key_access_log`.
//! A refusal is the API's problem, shown on the page with its status.

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use kinko_core::operators::{Action, Process, role_for};
use maud::{Markup, html};
use serde::Deserialize;

use super::ops::{OpsSession, form, ops_layout, ops_problem_page, page, request_page};
use super::pages::{csrf_field, problem_summary, respond, utc};
use crate::AppState;
use crate::api::Problem;
use crate::api::ops_auth::OpsJson;
use crate::api::ops_requests::{self, ExecuteBody, KeyView, NewRequestBody, RequestView, key_transition_process};
use crate::api::problem::FieldError;

pub const OPS_KEYS_PATH: &str = "/ops/keys";
pub const OPS_KEY_ACCESS_LOG_PATH: &str = "/ops/key-access-log";
/// The request kind every key lifecycle action is (`ops_requests::kind_for`).
const KEY_TRANSITION_KIND: &str = "key_transition";
/// The problem type of a Table A-1 execution the API leaves to the command line (destruction, K7).
const EXECUTE_WITH_CLI: &str = "urn:kinko:problem:execute-with-cli";

fn role_name(process: Process, action: Action) -> &'static str {
    role_for(process, action).map_or("nobody", |r| r.as_str())
}

/// Who requests, approves and executes each key lifecycle process (Table A-1, as `kinko_core` holds it).
fn roles_note() -> Markup {
    let row = |what: &str, p: Process| {
        html! {
            tr {
                th scope="row" { (what) }
                td { (p.requester_role().as_str()) }
                td { (role_name(p, Action::Approve)) }
                td { (role_name(p, Action::Execute)) }
            }
        }
    };
    html! {
        table id="key-roles" {
            caption { "Who may do what (Table A-1)" }
            thead { tr { th scope="col" { "Action" } th scope="col" { "Requested by" } th scope="col" { "Approved by" }
                th scope="col" { "Executed by" } } }
            tbody {
                (row("Activation, deactivation, suspension, storage (every move but destruction)", Process::Activation))
                (row("Destruction", Process::Destruction))
            }
        }
    }
}

fn keys_page(session: &OpsSession, keys: &[KeyView], problem: Option<&Problem>, reason: &str) -> Markup {
    let may_request =
        [Process::Activation, Process::Destruction].iter().any(|p| session.op.roles.contains(&p.requester_role()));
    // The target states the lifecycle tables offer for the listed keys, each once, in first-seen order.
    let mut targets: Vec<&str> = Vec::new();
    for k in keys {
        for t in &k.next_states {
            if !targets.contains(&t.as_str()) {
                targets.push(t);
            }
        }
    }
    let body = html! {
        h1 { "Custody keys" }
        @if let Some(p) = problem { (problem_summary(p)) }
        p { "Each key's lifecycle state (seed 000 Fig 5-2; Fig 5-4 for the master seed) and the moves the lifecycle allows next. A move is a request: approved by another operator, then executed by the requesting role." }
        table id="keys" {
            caption { "Keys" }
            thead { tr { th scope="col" { "Key" } th scope="col" { "Purpose" } th scope="col" { "Chain" }
                th scope="col" { "Address" } th scope="col" { "State" } th scope="col" { "May move to" } th scope="col" { "Created" } } }
            tbody {
                @for k in keys {
                    tr data-key-id=(k.id) {
                        td class="agent" { (k.id) } td { (k.purpose) } td { (k.chain) }
                        td { code class="address" { (if k.address.is_empty() { "—" } else { k.address.as_str() }) } }
                        td class="key-state" { (k.state) }
                        td { (if k.next_states.is_empty() { "nothing (terminal)".to_string() } else { k.next_states.join(", ") }) }
                        td { (utc(k.created_at_ms)) }
                    }
                }
            }
        }
        @if keys.is_empty() { p { "No keys." } }
        h2 { "Request a key lifecycle action" }
        (roles_note())
        @if may_request && !keys.is_empty() {
            form method="post" action=(OPS_KEYS_PATH) {
                (csrf_field(&session.csrf()))
                div class="field" {
                    label for="key_id" { "Key" }
                    select id="key_id" name="key_id" {
                        @for k in keys { option value=(k.id) { (k.id) " (" (k.purpose) ", " (k.state) ")" } }
                    }
                }
                div class="field" {
                    label for="to_state" { "Move to" }
                    select id="to_state" name="to_state" {
                        @for t in &targets { option value=(t) { (t) } }
                    }
                    p class="hint" { "destroyed is the destruction process; every other state is activation/deactivation." }
                }
                div class="field" {
                    label for="reason" { "Reason" }
                    input id="reason" name="reason" type="text" required value=(reason);
                }
                button type="submit" { "Request this action" }
            }
        } @else {
            p id="may-not-request" { "Your role (" (roles_text(session)) ") does not request key lifecycle actions; the table above names who does." }
        }
    };
    ops_layout("Custody keys", Some(session), body)
}

fn roles_text(session: &OpsSession) -> String {
    let roles: Vec<&str> = session.op.roles.iter().map(|r| r.as_str()).collect();
    if roles.is_empty() { "no active role".into() } else { roles.join(", ") }
}

async fn keys_list(state: &AppState, session: &OpsSession) -> Result<Vec<KeyView>, Problem> {
    ops_requests::list_keys(State(state.clone()), session.op.clone()).await.map(|Json(v)| v)
}

/// `/ops/keys`: the API's `GET /v1/ops/keys` as a table, and the request form.
pub async fn keys(State(state): State<AppState>, session: OpsSession) -> Response {
    match keys_list(&state, &session).await {
        Ok(keys) => respond(StatusCode::OK, keys_page(&session, &keys, None, ""), &[]),
        Err(p) => ops_problem_page(&p, None),
    }
}

#[derive(Deserialize)]
pub struct KeyActionForm {
    csrf: String,
    key_id: String,
    to_state: String,
    #[serde(default)]
    reason: String,
}

/// `POST /ops/keys`: a `key_transition` request through the API's own `create_request` (its requesting
/// role, params checks and intent hash). Then the request's page, where it waits for approval.
pub async fn request_key_action(
    State(state): State<AppState>,
    session: OpsSession,
    parsed: Result<Form<KeyActionForm>, FormRejection>,
) -> Response {
    let mut reason = String::new();
    let outcome = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => {
            reason = f.reason.clone();
            let body = NewRequestBody {
                process: key_transition_process(&f.to_state).as_str().to_string(),
                kind: KEY_TRANSITION_KIND.to_string(),
                params: serde_json::json!({ "key_id": f.key_id, "to_state": f.to_state, "reason": f.reason }),
            };
            ops_requests::create_request(State(state.clone()), session.op.clone(), OpsJson(body))
                .await
                .map(|(_, Json(r))| r.id)
        }
        Err(p) => Err(p),
    };
    match outcome {
        Ok(id) => Redirect::to(&format!("/ops/requests/{id}")).into_response(),
        Err(p) => match keys_list(&state, &session).await {
            Ok(keys) => respond(p.status, keys_page(&session, &keys, Some(&p), &reason), &[]),
            Err(_) => ops_problem_page(&p, Some((OPS_KEYS_PATH, "Back to the keys"))),
        },
    }
}

// ---------------------------------------------------------------------------------------------------
// Executing an approved Table A-1 request.

/// The "Execute" section of a request's page: for an approved Table A-1 request (a customer withdrawal
/// executes through the pipeline), naming the executing role; an evidence field for the ceremonies that
/// record one. When the API refused because the command line executes it, the command is shown.
pub fn execute_section(session: &OpsSession, req: &RequestView, problem: Option<&Problem>) -> Markup {
    let Some(process) = Process::parse(&req.process) else { return html! {} };
    let cli = problem.is_some_and(|p| p.body.kind == EXECUTE_WITH_CLI);
    let key_id = req.params.get("key_id").and_then(|v| v.as_str()).unwrap_or("KEY_ID");
    let executable = req.state == "approved"
        && process.in_table_a1()
        && req.kind != crate::withdrawal_policy::CUSTOMER_WITHDRAWAL_KIND;
    let evidence_required = matches!(req.kind.as_str(), "key_generation" | "key_storage");
    html! {
        @if cli {
            div class="problem" id="execute-with-cli" {
                h2 { "Execute this on the custody host" }
                p { "The console does not execute it: destruction first asks the node whether any address the key guards still holds funds (K7). On the custody host, with your approval key, run:" }
                p { code class="address" id="cli-command" { "kinko key destroy --request " (req.id) " --confirm " (key_id) " --key YOUR_KEY_FILE" } }
            }
        }
        @if executable {
            h2 { "Execute" }
            p { "Approved. " (role_name(process, Action::Execute)) " executes it — not an approver (K8)." }
            @if req.kind == KEY_TRANSITION_KIND && req.params.get("to_state").and_then(|v| v.as_str()) == Some("destroyed") {
                p class="hint" { "Destruction is executed with " code { "kinko key destroy" } " on the custody host; the button below asks the API, which names the command." }
            }
            form method="post" action=(format!("/ops/requests/{}/execute", req.id)) {
                (csrf_field(&session.csrf()))
                div class="field" {
                    label for="evidence" { @if evidence_required { "Evidence (JSON object, required)" } @else { "Evidence (JSON object, optional)" } }
                    textarea id="evidence" name="evidence" rows="3" spellcheck="false" {}
                    p class="hint" { "What was done: ceremony record, media ids, fingerprints." }
                }
                button type="submit" { "Execute" }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ExecuteForm {
    csrf: String,
    #[serde(default)]
    evidence: String,
}

/// `POST /ops/requests/{id}/execute`: the API's own `execute`. A refusal is the request page naming it.
pub async fn execute(
    State(state): State<AppState>,
    session: OpsSession,
    Path(id): Path<String>,
    parsed: Result<Form<ExecuteForm>, FormRejection>,
) -> Response {
    let outcome = match form(parsed).and_then(|f| session.check_csrf(&f.csrf).map(|()| f)) {
        Ok(f) => match evidence(&f.evidence) {
            Ok(evidence) => ops_requests::execute(
                State(state.clone()),
                session.op.clone(),
                Path(id.clone()),
                OpsJson(ExecuteBody { evidence }),
            )
            .await
            .map(|_| ()),
            Err(p) => Err(p),
        },
        Err(p) => Err(p),
    };
    match outcome {
        Ok(()) => Redirect::to(&format!("/ops/requests/{id}")).into_response(),
        Err(p) => request_page(&state, &session, &id, Some(&p)).await,
    }
}

fn evidence(text: &str) -> Result<Option<serde_json::Value>, Problem> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| Problem::validation(vec![FieldError::new("evidence", format!("is not JSON: {e}"))]))
}

// ---------------------------------------------------------------------------------------------------
// The key access log.

#[derive(Deserialize)]
pub struct AccessLogQuery {
    #[serde(default)]
    key_id: String,
}

/// `/ops/key-access-log`: the API's `audit::key_access_log` (log inspectors and administrators, as
/// `OPS_AUTHZ` says), each signature marked with whether an approved intent stands behind it (L2).
pub async fn key_access_log(
    State(state): State<AppState>,
    session: OpsSession,
    Query(q): Query<AccessLogQuery>,
) -> Response {
    let key_id = q.key_id.trim().to_string();
    let query = crate::audit::KeyAccessQuery { key_id: (!key_id.is_empty()).then(|| key_id.clone()), after: None };
    let rows = match crate::audit::key_access_log(State(state.clone()), session.op.clone(), Query(query)).await {
        Ok(Json(rows)) => rows,
        Err(p) => return ops_problem_page(&p, Some((OPS_KEYS_PATH, "Back to the keys"))),
    };
    page(
        &session,
        "Key access log",
        html! {
            h1 { "Key access log" }
            p { "Every use of a custody key by the signer, oldest first (up to " (crate::audit::INSPECTION_ROWS_MAX) "). A signature without an approved intent behind it is an alert." }
            form method="get" action=(OPS_KEY_ACCESS_LOG_PATH) {
                div class="field" {
                    label for="key_id" { "Only key" }
                    input id="key_id" name="key_id" type="text" value=(key_id);
                }
                button type="submit" { "Filter" }
            }
            @let unapproved = rows.iter().filter(|r| r.approved_intent == Some(false)).count();
            @if unapproved > 0 {
                div class="problem" role="alert" id="unapproved" {
                    p { (unapproved) " signatures have no approved intent behind them." }
                }
            }
            table id="key-access" {
                caption { "Key accesses" }
                thead { tr { th scope="col" { "At" } th scope="col" { "Key" } th scope="col" { "Operation" }
                    th scope="col" { "Actor" } th scope="col" { "Terminal" } th scope="col" { "Intent hash" }
                    th scope="col" { "Approved intent" } th scope="col" { "Approvers" } } }
                tbody {
                    @for r in &rows {
                        tr data-access-id=(r.id) {
                            td { (utc(r.at_ms)) } td class="agent" { (r.key_id) } td { (r.operation) }
                            td class="agent" { (r.actor) } td class="agent" { (r.terminal) }
                            td { code class="address" { (r.intent_hash) } }
                            td { (match r.approved_intent { Some(true) => "yes", Some(false) => "NO", None => "—" }) }
                            td class="agent" { (approvers_text(&r.approvers)) }
                        }
                    }
                }
            }
            @if rows.is_empty() { p { "No key access recorded." } }
        },
    )
}

fn approvers_text(v: &serde_json::Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| match x.get("operator_id").and_then(|o| o.as_str()) {
                Some(id) => id.to_string(),
                None => x.as_str().map_or_else(|| x.to_string(), str::to_string),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "—".into(),
    }
}
