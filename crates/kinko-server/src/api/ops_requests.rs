//! Operator requests over HTTP (K8, K11, K12, O2, O3, M10): request → approve (Ed25519-signed) → execute
//! → inspect, with Table A-1's roles and kinko's own processes, every step an `ops_events` row with the
//! operator, terminal and time, written in the same transaction as the step (fail closed).
//!
//! Authorization has two layers: [`OPS_AUTHZ`] says which principals may call an endpoint at all (a test
//! walks every ops route × every principal against it), and the separation-of-duties rules of
//! `kinko_core::operators` decide the rest per request (self-approval, the role of the process, revoked
//! or expired grants), answered with 403 naming the rule.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use kinko_core::ledger::postings;
use kinko_core::operators::{
    ApprovalSubject, Decision, OperatorError, Process, Request, RequestState, Role, SYSTEM_EXECUTOR,
    request_intent_hash,
};
use kinko_core::{Amount, AssetCode};
use kinko_signer::Approval;
use kinko_store::StoreError;
use kinko_store::ops_requests::{
    NewOpsEvent, NewOpsRequest, OpsApprovalRow, OpsRequestRow, STATE_APPROVED, STATE_EXECUTED, STATE_FAILED,
    STATE_REJECTED, STATE_REQUESTED, append_ops_event_tx, finish_ops_request_tx, insert_ops_approval_tx,
    insert_ops_request_tx, inspect_ops_request_tx, set_ops_request_state_tx,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ops_auth::{Operator, OpsJson};
use super::ops_registry::{KIND_REGISTRY_CHANGE, execute_registry_change, system_event, verify_signature};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;

/// Who may call an ops endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials (enrolment and login only).
    Anonymous,
    Role(Role),
}

const ALL_ROLES: &[Principal] = &[
    Principal::Role(Role::OperationsManager),
    Principal::Role(Role::SigningManager),
    Principal::Role(Role::KeyOperator),
    Principal::Role(Role::SigningOperator),
    Principal::Role(Role::LogInspector),
    Principal::Role(Role::Administrator),
];

/// Every ops endpoint and the principals that may call it. Per-request rules (the role of the request's
/// process, self-approval, involvement) come on top.
pub const OPS_AUTHZ: &[(&str, &str, &[Principal])] = &[
    ("post", "/v1/ops/enrolments", &[Principal::Anonymous]),
    ("post", "/v1/ops/sessions", &[Principal::Anonymous]),
    ("get", "/v1/ops/me", ALL_ROLES),
    ("get", "/v1/ops/operators", ALL_ROLES),
    ("get", "/v1/ops/registry/head", &[Principal::Role(Role::Administrator)]),
    ("post", "/v1/ops/registry-changes", &[Principal::Role(Role::Administrator)]),
    // The requesting roles of Table A-1 (executors ask for what they will carry out) and kinko's own.
    (
        "post",
        "/v1/ops/requests",
        &[
            Principal::Role(Role::KeyOperator),
            Principal::Role(Role::SigningOperator),
            Principal::Role(Role::OperationsManager),
        ],
    ),
    ("get", "/v1/ops/requests", ALL_ROLES),
    ("get", "/v1/ops/requests/{id}", ALL_ROLES),
    (
        "post",
        "/v1/ops/requests/{id}/approvals",
        &[
            Principal::Role(Role::OperationsManager),
            Principal::Role(Role::SigningManager),
            Principal::Role(Role::Administrator),
        ],
    ),
    (
        "post",
        "/v1/ops/requests/{id}/execute",
        &[Principal::Role(Role::KeyOperator), Principal::Role(Role::SigningOperator)],
    ),
    ("post", "/v1/ops/requests/{id}/inspect", &[Principal::Role(Role::LogInspector)]),
    ("get", "/v1/ops/events", &[Principal::Role(Role::LogInspector), Principal::Role(Role::Administrator)]),
    // K2, K7, K8: every operator reads the custody keys' lifecycle states (what a key_transition request
    // would move); nothing secret is listed.
    ("get", "/v1/ops/keys", ALL_ROLES),
    // U14: compliance review reads cases; the inspector audits, the operations manager acts on them.
    ("get", "/v1/ops/aml-cases", &[Principal::Role(Role::LogInspector), Principal::Role(Role::OperationsManager)]),
    // K19, S5, L3: one person of any role may stop everything; lifting is an unfreeze request. Everyone reads
    // the freezes and the reconciliation, and may run a balance reconciliation.
    ("post", "/v1/ops/freezes", ALL_ROLES),
    ("get", "/v1/ops/freezes", ALL_ROLES),
    ("get", "/v1/ops/reconciliation", ALL_ROLES),
    ("post", "/v1/ops/reconciliation", ALL_ROLES),
    // S4: operations managers and administrators announce and cancel maintenance windows; everyone reads them.
    (
        "post",
        "/v1/ops/maintenance-windows",
        &[Principal::Role(Role::OperationsManager), Principal::Role(Role::Administrator)],
    ),
    ("get", "/v1/ops/maintenance-windows", ALL_ROLES),
    (
        "post",
        "/v1/ops/maintenance-windows/{id}/cancel",
        &[Principal::Role(Role::OperationsManager), Principal::Role(Role::Administrator)],
    ),
    // The audit trail and the key access log (L2, L4–L6): the log inspector's, and administrators'.
    ("get", "/v1/ops/audit", &[Principal::Role(Role::LogInspector), Principal::Role(Role::Administrator)]),
    ("get", "/v1/ops/audit/inspection", &[Principal::Role(Role::LogInspector), Principal::Role(Role::Administrator)]),
    ("get", "/v1/ops/key-access-log", &[Principal::Role(Role::LogInspector), Principal::Role(Role::Administrator)]),
    // U1: signing operators take KYC cases for review, operations managers decide them (one role each, O3,
    // so the reviewer never decides), log inspectors audit the queue.
    (
        "get",
        "/v1/ops/kyc",
        &[
            Principal::Role(Role::SigningOperator),
            Principal::Role(Role::OperationsManager),
            Principal::Role(Role::LogInspector),
        ],
    ),
    ("post", "/v1/ops/kyc/{id}/review", &[Principal::Role(Role::SigningOperator)]),
    ("post", "/v1/ops/kyc/{id}/decision", &[Principal::Role(Role::OperationsManager)]),
];

/// 403 naming the rule that refused.
pub fn forbidden_rule(rule: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "not allowed").detail(format!("{rule}: {detail}"))
}

/// The endpoint-level check: the operator holds one of the roles [`OPS_AUTHZ`] lists for the endpoint.
/// An endpoint missing from the table is refused (fail closed).
pub fn require_endpoint(op: &Operator, method: &str, path: &str) -> Result<(), Problem> {
    let allowed = OPS_AUTHZ.iter().find(|(m, p, _)| *m == method && *p == path).map(|(_, _, a)| *a).unwrap_or(&[]);
    if op.roles.iter().any(|r| allowed.contains(&Principal::Role(*r))) {
        Ok(())
    } else {
        Err(forbidden_rule("role", &format!("{} {path} is for {}", method.to_ascii_uppercase(), describe(allowed))))
    }
}

fn describe(allowed: &[Principal]) -> String {
    let names: Vec<&str> = allowed
        .iter()
        .map(|p| match p {
            Principal::Anonymous => "anyone",
            Principal::Role(r) => r.as_str(),
        })
        .collect();
    if names.is_empty() { "nobody".into() } else { names.join(", ") }
}

/// Maps a separation-of-duties refusal to its answer: 403 naming the rule, 409 for a state conflict.
fn rule_problem(e: OperatorError) -> Problem {
    let rule = match &e {
        OperatorError::SelfApproval { .. } => "self-approval (O2)",
        OperatorError::ExecutorApproved { .. } => "executor-approved (K8)",
        OperatorError::InspectorInvolved { .. } => "inspector-involved (K8, K12)",
        OperatorError::RolesExclusive { .. } => "one-role (K8, O3)",
        OperatorError::GrantExpired { .. } => "grant-expired",
        OperatorError::Revoked { .. } => "revoked",
        OperatorError::UnknownOperator { .. } => "unregistered",
        OperatorError::RoleNotAllowed { .. } | OperatorError::NobodyMay { .. } => "role (Table A-1)",
        OperatorError::DuplicateApproval { .. } => {
            return Problem::new(StatusCode::CONFLICT, "duplicate-approval", "already decided").detail(e.to_string());
        }
        OperatorError::BadTransition { .. } => {
            return Problem::new(StatusCode::CONFLICT, "bad-state", "request is not in a state that allows this")
                .detail(e.to_string());
        }
        OperatorError::QuorumNotMet { .. } => {
            return Problem::new(StatusCode::CONFLICT, "quorum-not-met", "not enough valid approvals")
                .detail(e.to_string());
        }
        _ => return Problem::validation(vec![FieldError::new("request", e.to_string())]),
    };
    forbidden_rule(rule, &e.to_string())
}

/// How many approvals each process needs: one person other than the requester (the four-eyes rule; the
/// requester never counts, O2). Table A-1 names who approves, not how many; a custodian wanting more
/// raises it here.
pub fn required_approvals(process: Process) -> u8 {
    let _ = process;
    OPS_QUORUM
}

/// Whether a fiat deposit is at or under `[operators] fiat_deposit_auto_max` (0, the default, never is).
fn fiat_deposit_is_automatic(state: &AppState, params: &serde_json::Value) -> bool {
    let max = state.config.operators.fiat_deposit_auto_max.base_units();
    let amount = params.get("amount").and_then(|a| a.as_str()).and_then(|a| a.parse::<u128>().ok());
    max > 0 && amount.is_some_and(|a| a > 0 && a <= max)
}

/// Approvals per operator request.
pub const OPS_QUORUM: u8 = 1;

/// The kind a request of `process` has, or `None` when it is not requested through this endpoint.
fn kind_for(process: Process) -> Option<&'static str> {
    match process {
        Process::KeyGeneration => Some("key_generation"),
        Process::KeyStorage => Some("key_storage"),
        Process::Activation | Process::Destruction => Some("key_transition"),
        Process::Signing => Some("custodian_transfer"),
        Process::PolicyChange => Some("policy_change"),
        Process::FiatDeposit => Some("fiat_deposit"),
        Process::CustomerRestore => Some(super::account::CUSTOMER_RESTORE_KIND),
        Process::Unfreeze => Some(kinko_core::freeze::UNFREEZE_KIND),
        Process::Evacuation => Some(kinko_core::evacuation::EVACUATION_KIND),
        Process::Personnel => None,
    }
}

/// Fiat assets a fiat deposit may credit (bank accounts the custodian holds).
pub const FIAT_ASSETS: &[&str] = &["JPY", "USD", "EUR"];
/// Bound on the params object of a request (serialised).
pub const PARAMS_LEN_MAX: usize = 16 * 1024;

#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct ApprovalView {
    pub operator_id: String,
    pub decision: String,
    pub at_ms: i64,
}

#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct RequestView {
    pub id: String,
    pub process: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub intent_hash: String,
    pub requester: String,
    pub required: i64,
    pub state: String,
    pub approvals: Vec<ApprovalView>,
    pub executor: Option<String>,
    pub inspector: Option<String>,
    pub finding: Option<String>,
    #[schema(value_type = Vec<String>)]
    pub reasons: serde_json::Value,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

pub async fn request_view(state: &AppState, row: OpsRequestRow) -> Result<RequestView, Problem> {
    let approvals = state.store.ops_approvals(&row.id).await?;
    Ok(RequestView {
        params: serde_json::from_str(&row.params_json).map_err(Problem::internal)?,
        reasons: serde_json::from_str(&row.reasons_json).map_err(Problem::internal)?,
        result: row.result_json.as_deref().map(serde_json::from_str).transpose().map_err(Problem::internal)?,
        approvals: approvals
            .into_iter()
            .map(|a| ApprovalView { operator_id: a.operator_id, decision: a.decision, at_ms: a.at_ms })
            .collect(),
        id: row.id,
        process: row.process,
        kind: row.kind,
        intent_hash: row.intent_hash,
        requester: row.requester,
        required: row.required,
        state: row.state,
        executor: row.executor,
        inspector: row.inspector,
        finding: row.finding,
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRequestBody {
    /// `kinko_core::operators::Process` (snake_case), e.g. `activation`, `fiat_deposit`.
    pub process: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

fn param_str<'a>(params: &'a serde_json::Value, field: &'static str) -> Result<&'a str, FieldError> {
    params
        .get(field)
        .and_then(|v| v.as_str())
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| FieldError::new(format!("params.{field}"), "is required (a non-empty string)"))
}

/// Checks a request's params by kind; the errors name each field.
async fn check_params(state: &AppState, kind: &str, params: &serde_json::Value) -> Result<(), Problem> {
    let mut errors = Vec::new();
    if !params.is_object() {
        return Err(Problem::validation(vec![FieldError::new("params", "must be a JSON object")]));
    }
    if params.to_string().len() > PARAMS_LEN_MAX {
        return Err(Problem::validation(vec![FieldError::new("params", "is too large")]));
    }
    let mut need = |fields: &[&'static str]| {
        for f in fields {
            if let Err(e) = param_str(params, f) {
                errors.push(e);
            }
        }
    };
    match kind {
        "key_transition" => need(&["key_id", "to_state", "reason"]),
        "fiat_deposit" => {
            need(&["customer_id", "asset", "amount", "bank_reference"]);
            if let Ok(asset) = param_str(params, "asset")
                && !FIAT_ASSETS.contains(&asset)
            {
                errors.push(FieldError::new("params.asset", "is not a fiat asset this custodian books"));
            }
            if let Ok(amount) = param_str(params, "amount") {
                match amount.parse::<u128>() {
                    Ok(0) | Err(_) => {
                        errors.push(FieldError::new("params.amount", "must be a positive decimal integer string"))
                    }
                    Ok(_) => {}
                }
            }
            if let Ok(customer) = param_str(params, "customer_id")
                && !state.store.customer_exists(customer).await?
            {
                errors.push(FieldError::new("params.customer_id", "is not a customer"));
            }
        }
        // Each field named, including a destination that is not one of the custodian's own wallets (M10).
        "custodian_transfer" => {
            crate::withdrawal_policy::check_custodian_transfer(state, params).await?;
        }
        super::account::CUSTOMER_RESTORE_KIND => {
            errors.extend(super::account::check_restore_params(state, params).await?)
        }
        kinko_core::freeze::UNFREEZE_KIND => {
            errors.extend(crate::emergency::check_unfreeze_params(state, params).await?)
        }
        kinko_core::evacuation::EVACUATION_KIND => {
            errors.extend(crate::evacuation::check_evacuation_params(state, params).await?)
        }
        "policy_change" if params.get("policy").is_none_or(|p| !p.is_object()) => {
            errors.push(FieldError::new("params.policy", "is required (a PolicyConfig object)"));
        }
        // Key generation and storage describe a ceremony in free form; execution records its evidence.
        _ => {}
    }
    if errors.is_empty() { Ok(()) } else { Err(Problem::validation(errors)) }
}

/// Open a request (the process's requesting role).
#[utoipa::path(
    post, path = "/v1/ops/requests", tag = "operators", security(("bearer" = [])),
    request_body = NewRequestBody,
    responses(
        (status = 201, description = "request opened", body = RequestView),
        (status = 403, description = "not the process's requesting role", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid process, kind or params", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_request(
    State(state): State<AppState>,
    op: Operator,
    OpsJson(body): OpsJson<NewRequestBody>,
) -> Result<(StatusCode, Json<RequestView>), Problem> {
    require_endpoint(&op, "post", "/v1/ops/requests")?;
    let process = Process::parse(&body.process)
        .ok_or_else(|| Problem::validation(vec![FieldError::new("process", "is not a known process")]))?;
    let Some(kind) = kind_for(process) else {
        return Err(Problem::validation(vec![FieldError::new(
            "process",
            "personnel changes go to /v1/ops/registry-changes",
        )]));
    };
    if body.kind != kind {
        return Err(Problem::validation(vec![FieldError::new("kind", format!("must be {kind} for {process}"))]));
    }
    let role = process.requester_role();
    if !op.roles.contains(&role) {
        return Err(forbidden_rule("requester-role", &format!("{process} is requested by {role}")));
    }
    check_params(&state, kind, &body.params).await?;
    let now = now_ms();
    let id = format!("r_{}", uuid::Uuid::now_v7().simple());
    // A custodian transfer (M10) is approved over its withdrawal Intent, the hash the signer verifies the
    // approvals against; its params gain what an approver's terminal needs to recompute it, and its quorum
    // comes from the hot wallet's policy.
    let (params, intent, required) = if kind == crate::withdrawal_policy::CUSTODIAN_TRANSFER_KIND {
        crate::withdrawal_policy::custodian_transfer_request(&state, &id, &body.params, &op.terminal, now).await?
    } else if kind == kinko_core::freeze::UNFREEZE_KIND {
        // K19: approvers sign over the freeze's id and scope, the params the signer checks (M = [emergency]).
        crate::emergency::unfreeze_request(&state, &id, &body.params).await?
    } else if kind == kinko_core::evacuation::EVACUATION_KIND {
        // K19, S5: approvers sign over the canonical params the signer checks (M = [emergency]).
        crate::evacuation::evacuation_request(&state, &id, &body.params).await?
    } else {
        (body.params.clone(), request_intent_hash(process, &id, kind, &body.params), required_approvals(process))
    };
    let new = NewOpsRequest {
        id: id.clone(),
        process: process.as_str().into(),
        kind: kind.into(),
        params_json: params.to_string(),
        intent_hash: hex::encode(intent),
        requester: op.id.clone(),
        requester_terminal: op.terminal.clone(),
        required: i64::from(required),
        reasons_json: "[]".into(),
        now_ms: now,
    };
    let auto = kind == "fiat_deposit" && fiat_deposit_is_automatic(&state, &body.params);
    let new = if auto {
        let reasons = serde_json::json!([{ "rule": "fiat_deposit_auto_max", "decision": "auto" }]);
        NewOpsRequest { required: 0, reasons_json: reasons.to_string(), ..new }
    } else {
        new
    };
    let mut tx = state.store.begin_write().await?;
    insert_ops_request_tx(&mut tx, &new).await?;
    tx.commit().await.map_err(Problem::internal)?;
    if auto {
        // Under the configured threshold (M10): no approval; it is booked now, and inspected like any other.
        on_quorum(&state, &op, &id, now).await?;
    }
    let row = state.store.ops_request(&id).await?.ok_or_else(Problem::not_found)?;
    Ok((StatusCode::CREATED, Json(request_view(&state, row).await?)))
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// requested, approved, executed, inspected, rejected or failed.
    pub state: Option<String>,
}

/// Requests, newest first.
#[utoipa::path(
    get, path = "/v1/ops/requests", tag = "operators", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = [RequestView]))
)]
pub async fn list_requests(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<RequestView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/requests")?;
    const STATES: [&str; 6] =
        [STATE_REQUESTED, STATE_APPROVED, STATE_EXECUTED, "inspected", STATE_REJECTED, STATE_FAILED];
    if let Some(s) = &q.state
        && !STATES.contains(&s.as_str())
    {
        return Err(Problem::validation(vec![FieldError::new("state", "is not a request state")]));
    }
    let rows = state.store.ops_requests(q.state.as_deref(), kinko_store::ops_requests::OPS_REQUESTS_LIST_MAX).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(request_view(&state, row).await?);
    }
    Ok(Json(out))
}

/// One request.
#[utoipa::path(
    get, path = "/v1/ops/requests/{id}", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = RequestView), (status = 404, body = ProblemBody, content_type = "application/problem+json"))
)]
pub async fn get_request(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/requests/{id}")?;
    let row = state.store.ops_request(&id).await?.ok_or_else(Problem::not_found)?;
    Ok(Json(request_view(&state, row).await?))
}

fn parse_process(row: &OpsRequestRow) -> Result<Process, Problem> {
    Process::parse(&row.process).ok_or_else(|| Problem::internal(format!("request {}: unknown process", row.id)))
}

fn subject_of(row: &OpsRequestRow, process: Process) -> Result<ApprovalSubject, Problem> {
    let hash = kinko_store::parse_hash("ops_requests.intent_hash", &row.intent_hash)?;
    ApprovalSubject::new(process, &row.id, hash).map_err(|e| Problem::internal(e.to_string()))
}

/// The process a `key_transition` to `to_state` belongs to: destruction for `destroyed`, activation
/// (activation/deactivation, Table A-1) for every other state. Shared with `kinko key transition|destroy`.
pub fn key_transition_process(to_state: &str) -> Process {
    if to_state == "destroyed" { Process::Destruction } else { Process::Activation }
}

/// The core state machine's view of a stored request, to run its rules (also `kinko key transition`).
pub fn core_request(row: &OpsRequestRow, approvals: &[OpsApprovalRow]) -> Result<Request, Problem> {
    let process = parse_process(row)?;
    let state = match row.state.as_str() {
        STATE_REQUESTED => RequestState::Requested,
        STATE_APPROVED => RequestState::Approved,
        STATE_EXECUTED => RequestState::Executed,
        "inspected" => RequestState::Inspected,
        // Failed is terminal like rejected.
        _ => RequestState::Rejected,
    };
    Ok(Request {
        subject: subject_of(row, process)?,
        requester: row.requester.clone(),
        required: u8::try_from(row.required).map_err(Problem::internal)?,
        state,
        approvals: approvals.iter().filter(|a| a.decision == "approve").map(|a| a.operator_id.clone()).collect(),
        rejected_by: approvals.iter().find(|a| a.decision == "reject").map(|a| a.operator_id.clone()),
        executor: row.executor.clone(),
        inspector: row.inspector.clone(),
    })
}

fn state_str(s: RequestState) -> &'static str {
    match s {
        RequestState::Requested => STATE_REQUESTED,
        RequestState::Approved => STATE_APPROVED,
        RequestState::Executed => STATE_EXECUTED,
        RequestState::Inspected => "inspected",
        RequestState::Rejected => STATE_REJECTED,
    }
}

fn registry_operator(op: &Operator) -> Result<kinko_core::operators::Operator, Problem> {
    op.registry
        .operator(&op.id)
        .cloned()
        .ok_or_else(|| forbidden_rule("unregistered", "the operator is not in the registry"))
}

fn op_event(op: &Operator, event: &str, request_id: &str, detail: serde_json::Value, at_ms: i64) -> NewOpsEvent {
    NewOpsEvent {
        operator_id: op.id.clone(),
        terminal: op.terminal.clone(),
        event: event.into(),
        request_id: Some(request_id.into()),
        detail_json: detail.to_string(),
        at_ms,
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// `approve` or `reject`.
    pub decision: String,
    /// Ed25519 signature by the operator's approval key over `approval_message(subject, decision)`.
    pub signature_hex: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DecisionRecorded {
    #[serde(flatten)]
    pub request: RequestView,
    /// When this approval made a personnel change adding an operator take effect: their one-time
    /// enrolment token, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolment_token: Option<String>,
}

/// Approve or reject a request with a signed decision (the process's approving role, never the requester).
#[utoipa::path(
    post, path = "/v1/ops/requests/{id}/approvals", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = DecisionBody,
    responses(
        (status = 200, description = "decision recorded (and, at quorum, kinko's own processes executed)", body = DecisionRecorded),
        (status = 400, description = "signature malformed or forged", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "a separation-of-duties rule refused (named in detail)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "already decided, or the request is closed", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn decide(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    OpsJson(body): OpsJson<DecisionBody>,
) -> Result<Json<DecisionRecorded>, Problem> {
    require_endpoint(&op, "post", "/v1/ops/requests/{id}/approvals")?;
    let decision = match body.decision.as_str() {
        "approve" => Decision::Approve,
        "reject" => Decision::Reject,
        _ => return Err(Problem::validation(vec![FieldError::new("decision", "must be approve or reject")])),
    };
    let now = now_ms();
    let row = state.store.ops_request(&id).await?.ok_or_else(Problem::not_found)?;
    let approvals = state.store.ops_approvals(&id).await?;
    let mut request = core_request(&row, &approvals)?;
    let me = registry_operator(&op)?;
    // The rules first (cheap, and they name the refusal), then the signature.
    if approvals.iter().any(|a| a.operator_id == op.id) {
        return Err(rule_problem(OperatorError::DuplicateApproval { operator: op.id.clone() }));
    }
    let before = request.state;
    let after = match decision {
        Decision::Approve => request.approve(&me, now),
        Decision::Reject => request.reject(&me, now),
    }
    .map_err(rule_problem)?;
    verify_signature(&op.registry, &op.id, &request.subject, decision, &body.signature_hex)?;
    let mut tx = state.store.begin_write().await?;
    let approval = OpsApprovalRow {
        request_id: id.clone(),
        operator_id: op.id.clone(),
        decision: body.decision.clone(),
        signature_hex: body.signature_hex.to_ascii_lowercase(),
        terminal: op.terminal.clone(),
        at_ms: now,
    };
    match insert_ops_approval_tx(&mut tx, &approval).await {
        Err(StoreError::Conflict(_)) => {
            return Err(rule_problem(OperatorError::DuplicateApproval { operator: op.id.clone() }));
        }
        other => other?,
    }
    if after != before {
        set_ops_request_state_tx(&mut tx, &id, state_str(before), state_str(after), now).await.map_err(conflict)?;
    }
    let event = if decision == Decision::Approve { "approved" } else { "rejected" };
    append_ops_event_tx(&mut tx, &op_event(&op, event, &id, serde_json::json!({ "state": state_str(after) }), now))
        .await?;
    tx.commit().await.map_err(Problem::internal)?;
    let mut enrolment_token = None;
    if before == RequestState::Requested && after == RequestState::Approved {
        enrolment_token = on_quorum(&state, &op, &id, now).await?;
    }
    if after == RequestState::Rejected && row.kind == crate::withdrawal_policy::CUSTOMER_WITHDRAWAL_KIND {
        // A rejected withdrawal must not keep the customer's money held: fail it and release the hold.
        crate::withdrawal_policy::on_rejected(&state, &id, now).await?;
    }
    let row = state.store.ops_request(&id).await?.ok_or_else(Problem::not_found)?;
    Ok(Json(DecisionRecorded { request: request_view(&state, row).await?, enrolment_token }))
}

fn conflict(e: StoreError) -> Problem {
    match e {
        StoreError::Conflict(detail) => {
            Problem::new(StatusCode::CONFLICT, "bad-state", "the request changed concurrently").detail(detail)
        }
        other => other.into(),
    }
}

/// The approvals that carry a request to the signer (approve decisions with their signatures).
async fn signed_approvals(state: &AppState, id: &str) -> Result<Vec<Approval>, Problem> {
    Ok(state
        .store
        .ops_approvals(id)
        .await?
        .into_iter()
        .filter(|a| a.decision == "approve")
        .map(|a| Approval { operator_id: a.operator_id, signature_hex: a.signature_hex })
        .collect())
}

/// What happens when a request reaches its quorum: kinko's own processes take effect now (re-counting
/// approvals against the registry), a customer withdrawal moves on; Table A-1's wait for their executor.
async fn on_quorum(state: &AppState, op: &Operator, id: &str, now: i64) -> Result<Option<String>, Problem> {
    let row = state.store.ops_request(id).await?.ok_or_else(Problem::not_found)?;
    let process = parse_process(&row)?;
    let approvals = signed_approvals(state, id).await?;
    if row.kind == crate::withdrawal_policy::CUSTOMER_WITHDRAWAL_KIND {
        crate::withdrawal_policy::on_quorum(state, id, &approvals, now).await?;
        // The pipeline signs it from here (the automated signing operator of K11); recording the request
        // as executed puts it in the log inspector's queue, with the approvers the signer will re-verify.
        let approvers: Vec<&str> = approvals.iter().map(|a| a.operator_id.as_str()).collect();
        let result = serde_json::json!({ "withdrawal": "approved", "executed_by": "pipeline", "approvers": approvers });
        finish_automatic(state, id, &result, now).await?;
        return Ok(None);
    }
    if process.in_table_a1() {
        return Ok(None);
    }
    let stored = state.store.ops_approvals(id).await?;
    let mut request = core_request(&row, &stored)?;
    request.execute_automatically(&op.registry.operators(), now).map_err(rule_problem)?;
    match row.kind.as_str() {
        KIND_REGISTRY_CHANGE => execute_registry_change(state, &row, &approvals, now).await,
        "policy_change"
        | "fiat_deposit"
        | super::account::CUSTOMER_RESTORE_KIND
        | kinko_core::freeze::UNFREEZE_KIND
        | kinko_core::evacuation::EVACUATION_KIND => {
            let params: serde_json::Value = serde_json::from_str(&row.params_json).map_err(Problem::internal)?;
            let outcome = if row.kind == "policy_change" {
                crate::withdrawal_policy::apply_policy_change(state, id, &params, now).await
            } else if row.kind == super::account::CUSTOMER_RESTORE_KIND {
                super::account::execute_restore(state, id, &params, now).await
            } else if row.kind == kinko_core::freeze::UNFREEZE_KIND {
                crate::emergency::execute_unfreeze(state, &row, &approvals, now).await
            } else if row.kind == kinko_core::evacuation::EVACUATION_KIND {
                crate::evacuation::execute_evacuation(state, &row, &approvals, now).await
            } else {
                post_fiat_deposit(state, id, &params, now).await
            };
            match outcome {
                Ok(result) => finish_automatic(state, id, &result, now).await?,
                // Nothing retries an approved request by itself: record the failure with its reason so the
                // request ends visibly instead of sitting approved forever.
                Err(problem) => {
                    let reason = problem.body.detail.clone().unwrap_or_else(|| problem.body.title.clone());
                    let result = serde_json::json!({ "error": reason });
                    let mut tx = state.store.begin_write().await?;
                    finish_ops_request_tx(
                        &mut tx,
                        id,
                        STATE_APPROVED,
                        STATE_FAILED,
                        SYSTEM_EXECUTOR,
                        &result.to_string(),
                        now,
                    )
                    .await
                    .map_err(conflict)?;
                    append_ops_event_tx(&mut tx, &system_event(id, "failed", result, now)).await?;
                    tx.commit().await.map_err(Problem::internal)?;
                    return Err(problem);
                }
            }
            Ok(None)
        }
        other => Err(Problem::internal(format!("request {id}: no automatic execution for kind {other}"))),
    }
}

async fn finish_automatic(state: &AppState, id: &str, result: &serde_json::Value, now: i64) -> Result<(), Problem> {
    let mut tx = state.store.begin_write().await?;
    finish_ops_request_tx(&mut tx, id, STATE_APPROVED, STATE_EXECUTED, SYSTEM_EXECUTOR, &result.to_string(), now)
        .await
        .map_err(conflict)?;
    append_ops_event_tx(&mut tx, &system_event(id, "executed", result.clone(), now)).await?;
    tx.commit().await.map_err(Problem::internal)?;
    Ok(())
}

/// Credits the customer's available balance from the custodian's bank account; idempotent per request
/// (the ledger entry's reference is the request id).
async fn post_fiat_deposit(
    state: &AppState,
    id: &str,
    params: &serde_json::Value,
    now: i64,
) -> Result<serde_json::Value, Problem> {
    let bad = |f: &str| Problem::internal(format!("request {id}: params.{f} is invalid"));
    let customer = params["customer_id"].as_str().ok_or_else(|| bad("customer_id"))?;
    let asset: AssetCode = params["asset"].as_str().and_then(|a| a.parse().ok()).ok_or_else(|| bad("asset"))?;
    let amount = params["amount"].as_str().and_then(|a| a.parse::<u128>().ok()).ok_or_else(|| bad("amount"))?;
    let draft = postings::fiat_deposit_recorded(id, customer, &asset, Amount::from_base_units(amount));
    let posted = state.store.post(draft, now).await?;
    let seq = match posted {
        kinko_store::ledger::Posted::New(entry) => entry.seq,
        kinko_store::ledger::Posted::AlreadyPosted { seq } => seq,
    };
    Ok(serde_json::json!({ "ledger_seq": seq }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// For key generation and storage: what was done (ceremony record, media ids, fingerprints).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub evidence: Option<serde_json::Value>,
}

/// Execute an approved Table A-1 request (the executing role, not an approver).
#[utoipa::path(
    post, path = "/v1/ops/requests/{id}/execute", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = ExecuteBody,
    responses(
        (status = 200, description = "executed", body = RequestView),
        (status = 403, description = "a separation-of-duties rule refused", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "not approved, or the quorum no longer holds", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn execute(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    OpsJson(body): OpsJson<ExecuteBody>,
) -> Result<Json<RequestView>, Problem> {
    require_endpoint(&op, "post", "/v1/ops/requests/{id}/execute")?;
    let now = now_ms();
    let row = state.store.ops_request(&id).await?.ok_or_else(Problem::not_found)?;
    let process = parse_process(&row)?;
    if !process.in_table_a1() || row.kind == "customer_withdrawal" {
        return Err(Problem::new(StatusCode::CONFLICT, "automatic", "this request executes automatically")
            .detail(format!("{process} takes effect automatically once approved")));
    }
    let stored = state.store.ops_approvals(&id).await?;
    let mut request = core_request(&row, &stored)?;
    let me = registry_operator(&op)?;
    // Revoked or expired approvers stop counting here (re-counted against the registry now).
    request.execute(&me, &op.registry.operators(), now).map_err(rule_problem)?;
    let params: serde_json::Value = serde_json::from_str(&row.params_json).map_err(Problem::internal)?;
    let result = match row.kind.as_str() {
        "key_transition" => {
            // Destruction must first ask the node whether any address the key guards still holds funds
            // (K7); the API has no node client, so it is executed with the command line, which does.
            let to_state = param_str(&params, "to_state").unwrap_or_default();
            if process == Process::Destruction || key_transition_process(to_state) == Process::Destruction {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "execute-with-cli",
                    "key destruction is executed with the command line",
                )
                .detail(format!(
                    "run `kinko key destroy --request {id} --confirm KEY_ID --key YOUR_KEY_FILE` on the custody \
                     host: it checks the key's addresses on chain before destroying it (K7)"
                )));
            }
            key_transition(&state, &op, process, &params, now).await?
        }
        "key_generation" | "key_storage" => match body.evidence {
            Some(e) if e.is_object() && e.to_string().len() <= PARAMS_LEN_MAX => serde_json::json!({ "evidence": e }),
            _ => {
                return Err(Problem::validation(vec![FieldError::new(
                    "evidence",
                    "is required: an object describing what was done",
                )]));
            }
        },
        "custodian_transfer" => {
            let approvals = signed_approvals(&state, &id).await?;
            crate::withdrawal_policy::execute_custodian_transfer(
                &state,
                &id,
                &params,
                &approvals,
                &op.id,
                &op.terminal,
                now,
            )
            .await?
        }
        // K14: a cold → hot refill becomes a row the pipeline parks for its offline signature.
        kinko_store::cold::COLD_REFILL_KIND => crate::tiers::execute_cold_refill(&state, &id, &params, now).await?,
        other => return Err(Problem::internal(format!("request {id}: cannot execute kind {other}"))),
    };
    let mut tx = state.store.begin_write().await?;
    finish_ops_request_tx(&mut tx, &id, STATE_APPROVED, STATE_EXECUTED, &op.id, &result.to_string(), now)
        .await
        .map_err(conflict)?;
    append_ops_event_tx(&mut tx, &op_event(&op, "executed", &id, result, now)).await?;
    tx.commit().await.map_err(Problem::internal)?;
    let row = state.store.ops_request(&id).await?.ok_or_else(Problem::not_found)?;
    Ok(Json(request_view(&state, row).await?))
}

/// Bound on the keys listed at once (deposit keys can be many).
pub const KEYS_LIST_MAX: usize = 1_000;

/// A custody key as operators see it: its lifecycle state and the states the lifecycle table lets it move
/// to next (never the wrapped key).
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug)]
pub struct KeyView {
    pub id: String,
    pub purpose: String,
    pub chain: String,
    pub address: String,
    pub state: String,
    pub created_at_ms: i64,
    /// The moves `kinko_core::key_lifecycle` allows from `state` (Fig 5-2; Fig 5-4 for the master seed).
    pub next_states: Vec<String>,
}

/// The states a key of `purpose` may move to from `from`, asked of the store's own lifecycle check.
pub fn next_key_states(purpose: &str, from: &str) -> Vec<String> {
    use kinko_core::key_lifecycle::{KeyState, Lifecycle, SeedState};
    let candidates: Vec<&str> = if purpose == kinko_store::key_lifecycle::MASTER_SEED_PURPOSE {
        SeedState::ALL.iter().map(|s| s.as_str()).collect()
    } else {
        KeyState::ALL.iter().map(|s| s.as_str()).collect()
    };
    let Ok(why) = kinko_core::key_lifecycle::Attribution::new("listing", "listing") else { return Vec::new() };
    candidates
        .into_iter()
        .filter(|to| kinko_store::key_lifecycle::check_key_transition(purpose, from, to, &why).is_ok())
        .map(str::to_string)
        .collect()
}

/// The custody keys with their lifecycle states (every operator role).
#[utoipa::path(
    get, path = "/v1/ops/keys", tag = "operators", security(("bearer" = [])),
    responses((status = 200, body = [KeyView]))
)]
pub async fn list_keys(State(state): State<AppState>, op: Operator) -> Result<Json<Vec<KeyView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/keys")?;
    let keys = state.store.list_keys(KEYS_LIST_MAX).await?;
    let out = keys
        .into_iter()
        .map(|k| KeyView {
            next_states: next_key_states(&k.purpose, &k.state),
            id: k.id,
            purpose: k.purpose,
            chain: k.chain,
            address: k.address,
            state: k.state,
            created_at_ms: k.created_at_ms,
        })
        .collect();
    Ok(Json(out))
}

/// Key retention period before destruction (K7): the ledger must show no movement this recent.
pub const DESTRUCTION_RETENTION_MS: i64 = 365 * 24 * 60 * 60 * 1000;

async fn key_transition(
    state: &AppState,
    op: &Operator,
    process: Process,
    params: &serde_json::Value,
    now: i64,
) -> Result<serde_json::Value, Problem> {
    let field = |f: &'static str| param_str(params, f).map_err(|e| Problem::validation(vec![e]));
    let key_id = field("key_id")?;
    let to = field("to_state")?;
    let reason = field("reason")?;
    let why = kinko_core::key_lifecycle::Attribution::new(op.id.clone(), reason)
        .map_err(|e| Problem::validation(vec![FieldError::new("params.reason", e.to_string())]))?;
    let destroy = to == "destroyed";
    if destroy != (process == Process::Destruction) {
        return Err(Problem::validation(vec![FieldError::new(
            "params.to_state",
            "destroyed belongs to the destruction process, every other state to activation",
        )]));
    }
    let record = if destroy {
        state.store.destroy_key(key_id, now.saturating_sub(DESTRUCTION_RETENTION_MS), &why, now).await
    } else {
        state.store.transition_key(key_id, None, to, &why, now).await
    };
    match record {
        Ok(r) => Ok(serde_json::json!({ "key_id": r.key_id, "from": r.from, "to": r.to })),
        Err(StoreError::NotFound) => Err(Problem::validation(vec![FieldError::new("params.key_id", "is not a key")])),
        Err(StoreError::Conflict(detail)) => {
            Err(Problem::new(StatusCode::CONFLICT, "key-transition-refused", "the key lifecycle refused")
                .detail(detail))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectBody {
    /// `ok` or `anomaly`.
    pub finding: String,
    #[serde(default)]
    pub note: String,
}

/// Bound on an inspection note.
pub const NOTE_LEN_MAX: usize = 4096;

/// Record the log inspection of an executed request (a log inspector not involved in it).
#[utoipa::path(
    post, path = "/v1/ops/requests/{id}/inspect", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = InspectBody,
    responses(
        (status = 200, description = "inspected", body = RequestView),
        (status = 403, description = "involved in the request, or not a log inspector", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "not executed yet, or already inspected", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn inspect(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    OpsJson(body): OpsJson<InspectBody>,
) -> Result<Json<RequestView>, Problem> {
    require_endpoint(&op, "post", "/v1/ops/requests/{id}/inspect")?;
    if !matches!(body.finding.as_str(), "ok" | "anomaly") {
        return Err(Problem::validation(vec![FieldError::new("finding", "must be ok or anomaly")]));
    }
    if body.note.len() > NOTE_LEN_MAX {
        return Err(Problem::validation(vec![FieldError::new("note", "is too long")]));
    }
    let now = now_ms();
    let row = state.store.ops_request(&id).await?.ok_or_else(Problem::not_found)?;
    let stored = state.store.ops_approvals(&id).await?;
    let mut request = core_request(&row, &stored)?;
    let me = registry_operator(&op)?;
    request.inspect(&me, now).map_err(rule_problem)?;
    let mut tx = state.store.begin_write().await?;
    inspect_ops_request_tx(&mut tx, &id, &op.id, &body.finding, now).await.map_err(conflict)?;
    let detail = serde_json::json!({ "finding": body.finding, "note": body.note });
    append_ops_event_tx(&mut tx, &op_event(&op, "inspected", &id, detail, now)).await?;
    tx.commit().await.map_err(Problem::internal)?;
    let row = state.store.ops_request(&id).await?.ok_or_else(Problem::not_found)?;
    Ok(Json(request_view(&state, row).await?))
}

#[derive(Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Return events after this event id (exclusive).
    pub after: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub at_ms: i64,
    pub operator_id: String,
    pub terminal: String,
    pub event: String,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// The operators' audit trail (log inspectors and administrators).
#[utoipa::path(
    get, path = "/v1/ops/events", tag = "operators", security(("bearer" = [])), params(EventsQuery),
    responses((status = 200, body = [EventView]))
)]
pub async fn events(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<EventView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/events")?;
    let rows = state.store.ops_events(q.after.as_deref(), kinko_store::ops_requests::OPS_EVENTS_PAGE_MAX).await?;
    rows.into_iter()
        .map(|r| {
            Ok(EventView {
                detail: serde_json::from_str(&r.detail_json).map_err(Problem::internal)?,
                id: r.id,
                at_ms: r.at_ms,
                operator_id: r.operator_id,
                terminal: r.terminal,
                event: r.event,
                request_id: r.request_id,
            })
        })
        .collect::<Result<Vec<_>, Problem>>()
        .map(Json)
}
