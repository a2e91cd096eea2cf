//! The server's copy of the operator registry (K8, O3, O4): replayed from `operator_registry_log` with
//! every signature verified (`kinko_signer::approvals::OperatorRegistry::replay`, the signer's own code),
//! and the personnel endpoints. A change takes effect in this order: the signer applies it (the
//! authority; it verifies everything again against its own copy), then the server appends it to its log.
//! A log that does not verify stops every ops request that needs roles (fail closed).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{Decision, Operator as CoreOperator, Process, Role, approval_message};
use kinko_signer::Approval;
use kinko_signer::approvals::{LoggedChange, OperatorRegistry};
use kinko_store::StoreError;
use kinko_store::operators::{RegistryLogRow, append_registry_log_tx, create_operator_account_tx};
use kinko_store::ops_requests::{
    NewOpsEvent, NewOpsRequest, OpsRequestRow, STATE_APPROVED, STATE_EXECUTED, STATE_FAILED, append_ops_event_tx,
    finish_ops_request_tx, insert_ops_request_tx,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ops_auth::{ENROLMENT_TTL_MS, Operator, OpsJson, random_token, sha256_hex};
use super::ops_requests::{RequestView, forbidden_rule, request_view, require_endpoint};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;

pub const KIND_REGISTRY_CHANGE: &str = "registry_change";

/// The replayed registry.
#[derive(Debug)]
pub struct ServerRegistry {
    pub registry: OperatorRegistry,
}

impl ServerRegistry {
    pub fn operator(&self, id: &str) -> Option<&CoreOperator> {
        self.registry.get(id).map(|r| &r.operator)
    }

    /// Every registered operator, for `Request::valid_approvals` and friends.
    pub fn operators(&self) -> Vec<CoreOperator> {
        self.registry.state().operators()
    }

    pub fn active_administrators(&self, now_ms: i64) -> usize {
        self.operators().iter().filter(|o| !o.revoked && o.active_roles(now_ms).contains(&Role::Administrator)).count()
    }
}

/// Replays and verifies the server's registry log. Any inconsistency (a row whose hash does not match its
/// change, a forged signature, a rule broken) is an internal error: nothing role-dependent proceeds.
pub async fn load_registry(state: &AppState, now_ms: i64) -> Result<Arc<ServerRegistry>, Problem> {
    let rows = state.store.registry_log().await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let change: RegistryChange = serde_json::from_str(&row.change_json)
            .map_err(|e| Problem::internal(format!("registry log seq {}: change: {e}", row.seq)))?;
        let approvals: Vec<Approval> = serde_json::from_str(&row.approvals_json)
            .map_err(|e| Problem::internal(format!("registry log seq {}: approvals: {e}", row.seq)))?;
        let hash = change.hash().map_err(|e| Problem::internal(format!("registry log seq {}: {e}", row.seq)))?;
        if hex::encode(hash) != row.hash || i64::try_from(change.seq).ok() != Some(row.seq) {
            return Err(Problem::internal(format!("registry log seq {}: stored hash or seq does not match", row.seq)));
        }
        entries.push(LoggedChange { change, approvals, applied_at_ms: row.applied_at_ms });
    }
    let registry = OperatorRegistry::replay(&entries, now_ms)
        .map_err(|e| Problem::internal(format!("operator registry log does not verify: {e}")))?;
    Ok(Arc::new(ServerRegistry { registry }))
}

/// Verifies `signature_hex` by `operator_id` over `approval_message(subject, decision)` with the key the
/// registry holds for them. 400 for a malformed or forged signature.
pub fn verify_signature(
    registry: &ServerRegistry,
    operator_id: &str,
    subject: &kinko_core::operators::ApprovalSubject,
    decision: Decision,
    signature_hex: &str,
) -> Result<(), Problem> {
    let forged = || {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "bad-signature",
            "signature does not verify",
            "signature_hex",
            "does not verify with the operator's registered approval key for this process, request and intent",
        )
    };
    let registered = registry.registry.get(operator_id).ok_or_else(forged)?;
    let bytes: [u8; 64] = hex::decode(signature_hex).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "bad-signature",
            "malformed signature",
            "signature_hex",
            "must be 64 bytes of hex",
        )
    })?;
    let message = approval_message(subject, decision).map_err(|e| Problem::internal(e.to_string()))?;
    registered.approval_key.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&bytes)).map_err(|_| forged())
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct OperatorView {
    pub operator_id: String,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    pub revoked: bool,
    pub approval_public_key_hex: String,
}

/// The registry as the server replayed it.
#[utoipa::path(
    get, path = "/v1/ops/operators", tag = "operators", security(("bearer" = [])),
    responses(
        (status = 200, body = [OperatorView]),
        (status = 401, description = "no valid ops session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_operators(op: Operator) -> Result<Json<Vec<OperatorView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/operators")?;
    let now = now_ms();
    Ok(Json(
        op.registry
            .registry
            .state()
            .entries()
            .map(|e| OperatorView {
                operator_id: e.operator.id.clone(),
                roles: e.operator.active_roles(now),
                revoked: e.operator.revoked,
                approval_public_key_hex: hex::encode(e.approval_public_key),
            })
            .collect(),
    ))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegistryHead {
    pub next_seq: u64,
    /// Hex of the last change's hash (all zeros before genesis).
    pub prev_hash: String,
}

/// Where the next registry change goes.
#[utoipa::path(
    get, path = "/v1/ops/registry/head", tag = "operators", security(("bearer" = [])),
    responses(
        (status = 200, body = RegistryHead),
        (status = 403, description = "not an administrator", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn registry_head(op: Operator) -> Result<Json<RegistryHead>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/registry/head")?;
    let (next_seq, prev_hash) = op.registry.registry.state().next_position();
    Ok(Json(RegistryHead { next_seq, prev_hash: hex::encode(prev_hash) }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryChangeBody {
    /// A `kinko_core::operator_registry::RegistryChange` as JSON.
    #[schema(value_type = Object)]
    pub change: RegistryChange,
    /// The requesting administrator's signature over `approval_message(change.subject(), approve)`.
    pub signature_hex: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RegistryChangeCreated {
    #[serde(flatten)]
    pub request: RequestView,
    /// For an AddOperator that took effect in this call: the new operator's one-time enrolment token.
    /// Shown once; kinko keeps only its hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolment_token: Option<String>,
}

/// Request a registry change (administrator). It takes effect once a second administrator approves it
/// (or at once while there is only one administrator and the change adds the second).
#[utoipa::path(
    post, path = "/v1/ops/registry-changes", tag = "operators", security(("bearer" = [])),
    request_body = RegistryChangeBody,
    responses(
        (status = 201, description = "change requested (request id registry-<seq>)", body = RegistryChangeCreated),
        (status = 400, description = "signature does not verify", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "not an administrator, or not the requester named in the change", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "seq/prev_hash is not the registry head, or a change for that seq is pending", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_registry_change(
    State(state): State<AppState>,
    op: Operator,
    OpsJson(body): OpsJson<RegistryChangeBody>,
) -> Result<(StatusCode, Json<RegistryChangeCreated>), Problem> {
    require_endpoint(&op, "post", "/v1/ops/registry-changes")?;
    let now = now_ms();
    let change = body.change;
    if change.requested_by != op.id {
        return Err(forbidden_rule("requester", "change.requested_by must be the logged-in administrator"));
    }
    let (next_seq, prev_hash) = op.registry.registry.state().next_position();
    if change.seq != next_seq || change.prev_hash != prev_hash {
        return Err(Problem::new(StatusCode::CONFLICT, "registry-head-moved", "the registry head has moved")
            .detail(format!("the next change is seq {next_seq}; fetch GET /v1/ops/registry/head and sign again")));
    }
    let subject = change.subject().map_err(|e| Problem::validation(vec![FieldError::new("change", e.to_string())]))?;
    verify_signature(&op.registry, &op.id, &subject, Decision::Approve, &body.signature_hex)?;
    // While one administrator is alone, they may add the second by themselves (the registry's bootstrap
    // rule); every other change waits for a second administrator.
    let bootstrap = op.registry.active_administrators(now) == 1
        && matches!(change.change, RegistryChangeKind::AddOperator { role: Role::Administrator, .. });
    let params = serde_json::json!({ "change": change, "requester_signature_hex": body.signature_hex });
    let new = NewOpsRequest {
        id: change.request_id(),
        process: Process::Personnel.as_str().into(),
        kind: KIND_REGISTRY_CHANGE.into(),
        params_json: params.to_string(),
        intent_hash: hex::encode(subject.intent_hash),
        requester: op.id.clone(),
        requester_terminal: op.terminal.clone(),
        required: if bootstrap { 0 } else { 1 },
        reasons_json: "[]".into(),
        now_ms: now,
    };
    let mut tx = state.store.begin_write().await?;
    match insert_ops_request_tx(&mut tx, &new).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "change-pending",
                "a change for this seq is already requested",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await.map_err(Problem::internal)?;
    let mut enrolment_token = None;
    if bootstrap {
        let row = state.store.ops_request(&new.id).await?.ok_or_else(Problem::not_found)?;
        enrolment_token = execute_registry_change(&state, &row, &[], now).await?;
    }
    let row = state.store.ops_request(&new.id).await?.ok_or_else(Problem::not_found)?;
    let view = request_view(&state, row).await?;
    Ok((StatusCode::CREATED, Json(RegistryChangeCreated { request: view, enrolment_token })))
}

/// Executes an approved registry change: the signer first (the authority; a refusal marks the request
/// failed with the signer's reason), then the server's log, the new operator's account and the request's
/// state, in one transaction. Returns the enrolment token for an AddOperator.
pub async fn execute_registry_change(
    state: &AppState,
    row: &OpsRequestRow,
    approvals: &[Approval],
    now_ms: i64,
) -> Result<Option<String>, Problem> {
    let params: serde_json::Value =
        serde_json::from_str(&row.params_json).map_err(|e| Problem::internal(format!("request params: {e}")))?;
    let change: RegistryChange = serde_json::from_value(params["change"].clone())
        .map_err(|e| Problem::internal(format!("request params.change: {e}")))?;
    let requester_signature = params["requester_signature_hex"].as_str().unwrap_or_default().to_string();
    let mut all = vec![Approval { operator_id: row.requester.clone(), signature_hex: requester_signature }];
    all.extend(approvals.iter().cloned());
    if let Err(e) = state.signer.apply_registry_change(&change, &all).await {
        let reason = format!("the signer refused the change: {e}");
        let mut tx = state.store.begin_write().await?;
        let result = serde_json::json!({ "error": reason }).to_string();
        finish_ops_request_tx(
            &mut tx,
            &row.id,
            STATE_APPROVED,
            STATE_FAILED,
            kinko_core::operators::SYSTEM_EXECUTOR,
            &result,
            now_ms,
        )
        .await?;
        append_ops_event_tx(&mut tx, &system_event(&row.id, "failed", serde_json::json!({ "reason": reason }), now_ms))
            .await?;
        tx.commit().await.map_err(Problem::internal)?;
        let mut reason = reason;
        // The signer may be ahead of this copy (a change it accepted whose server write failed): catch up
        // from its log, verified, so the next change can go through. A divergence is logged and copies
        // nothing (the signer keeps refusing: fail closed).
        if matches!(e, kinko_signer::SignerError::Refused(_))
            && let Ok(n @ 1..) =
                crate::registry_sync::reconcile_registry(&state.store, &*state.signer, crate::clock::now_ms()).await
        {
            reason.push_str(&format!(
                "; the server's registry copy caught up with {n} change(s) from the signer's log: fetch \
                 GET /v1/ops/registry/head and request the change again"
            ));
        }
        return Err(Problem::new(StatusCode::CONFLICT, "signer-refused", "the signer refused the registry change")
            .detail(reason));
    }
    let hash = change.hash().map_err(|e| Problem::internal(e.to_string()))?;
    let log_row = RegistryLogRow {
        seq: i64::try_from(change.seq).map_err(Problem::internal)?,
        hash: hex::encode(hash),
        change_json: serde_json::to_string(&change).map_err(Problem::internal)?,
        approvals_json: serde_json::to_string(&all).map_err(Problem::internal)?,
        applied_at_ms: now_ms,
    };
    let mut tx = state.store.begin_write().await?;
    append_registry_log_tx(&mut tx, &log_row).await?;
    let mut token = None;
    let mut result = serde_json::json!({ "applied_seq": change.seq });
    if let RegistryChangeKind::AddOperator { operator_id, .. } = &change.change {
        let t = random_token();
        create_operator_account_tx(
            &mut tx,
            operator_id,
            &sha256_hex(&t),
            now_ms.saturating_add(ENROLMENT_TTL_MS),
            now_ms,
        )
        .await?;
        result["enrolment_token_issued"] = serde_json::Value::Bool(true);
        token = Some(t);
    }
    finish_ops_request_tx(
        &mut tx,
        &row.id,
        STATE_APPROVED,
        STATE_EXECUTED,
        kinko_core::operators::SYSTEM_EXECUTOR,
        &result.to_string(),
        now_ms,
    )
    .await?;
    append_ops_event_tx(&mut tx, &system_event(&row.id, "executed", result, now_ms)).await?;
    tx.commit().await.map_err(Problem::internal)?;
    Ok(token)
}

/// An event of the system itself (automatic execution): operator `system`, terminal `server`.
pub fn system_event(request_id: &str, event: &str, detail: serde_json::Value, at_ms: i64) -> NewOpsEvent {
    NewOpsEvent {
        operator_id: kinko_core::operators::SYSTEM_EXECUTOR.into(),
        terminal: "server".into(),
        event: event.into(),
        request_id: Some(request_id.into()),
        detail_json: detail.to_string(),
        at_ms,
    }
}
