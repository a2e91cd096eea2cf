//! Emergency freezes and reconciliation over the ops API (K19, S5, L3): any operator may freeze (one person
//! can stop; nobody alone can restart — lifting is an `unfreeze` request), everyone may read the freezes and
//! the reconciliation reports, and a balance reconciliation can be run on demand.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kinko_core::freeze::{Freeze, check_reason};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ops_auth::{Operator, OpsJson};
use super::ops_requests::require_endpoint;
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFreezeBody {
    /// `all`, `chain:NAME` (`chain:ethereum` or `chain:eth`), `wallet:0x…` or `key:ID`.
    pub scope: String,
    /// Why (1 to 1024 bytes, no control characters).
    pub reason: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FreezeView {
    pub id: String,
    pub scope: String,
    pub reason: String,
    /// `operator:ID`, `cli:USER`, `system:reconciliation` or `system:signer-sync`.
    pub set_by: String,
    pub set_at_ms: i64,
    pub active: bool,
    pub lifted_at_ms: Option<i64>,
    /// The executed unfreeze request that lifted it.
    pub lifted_by_request: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FreezeSet {
    #[serde(flatten)]
    pub freeze: FreezeView,
    /// `frozen`, or why the signer could not be told (the database freeze stands and the server tells the
    /// signer again).
    pub signer: String,
}

fn view(f: Freeze, lifted_at_ms: Option<i64>, lifted_by_request: Option<String>) -> FreezeView {
    FreezeView {
        id: f.id,
        scope: f.scope.to_string(),
        reason: f.reason,
        set_by: f.set_by,
        set_at_ms: f.set_at_ms,
        active: lifted_at_ms.is_none(),
        lifted_at_ms,
        lifted_by_request,
    }
}

/// Emergency freeze: stops signing and withdrawals in the scope at once (any operator; no approval).
#[utoipa::path(
    post, path = "/v1/ops/freezes", tag = "operators", security(("bearer" = [])), request_body = NewFreezeBody,
    responses(
        (status = 201, description = "frozen", body = FreezeSet),
        (status = 422, description = "bad scope or reason", body = ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "the freeze could not be recorded (the signer was still told)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_freeze(
    State(state): State<AppState>,
    op: Operator,
    OpsJson(body): OpsJson<NewFreezeBody>,
) -> Result<(StatusCode, Json<FreezeSet>), Problem> {
    require_endpoint(&op, "post", "/v1/ops/freezes")?;
    let mut errors = Vec::new();
    let scope =
        crate::emergency::parse_scope(&body.scope).map_err(|e| errors.push(FieldError::new("scope", e.to_string())));
    if let Err(e) = check_reason(&body.reason) {
        errors.push(FieldError::new("reason", e.to_string()));
    }
    let (Ok(scope), true) = (scope, errors.is_empty()) else {
        return Err(Problem::validation(errors));
    };
    let now = now_ms();
    let freeze = Freeze {
        id: crate::emergency::new_freeze_id(),
        scope,
        reason: body.reason.trim().to_string(),
        set_by: format!("operator:{}", op.id),
        set_at_ms: now,
    };
    let outcome = crate::emergency::set_freeze(&state.store, &*state.signer, &freeze, &op.id, &op.terminal, now).await;
    outcome.stored.map_err(Problem::from)?;
    let signer = match outcome.signer {
        Ok(()) => "frozen".to_string(),
        Err(e) => format!("not reached: {e}"),
    };
    Ok((StatusCode::CREATED, Json(FreezeSet { freeze: view(freeze, None, None), signer })))
}

/// Freezes, newest first, active and lifted.
#[utoipa::path(
    get, path = "/v1/ops/freezes", tag = "operators", security(("bearer" = [])),
    responses((status = 200, body = [FreezeView]))
)]
pub async fn list_freezes(State(state): State<AppState>, op: Operator) -> Result<Json<Vec<FreezeView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/freezes")?;
    let rows = state.store.freezes(kinko_store::freeze::FREEZES_LIST_MAX).await?;
    Ok(Json(rows.into_iter().map(|r| view(r.freeze, r.lifted_at_ms, r.lifted_by_request)).collect()))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ReportView {
    pub id: String,
    /// `balance` or `unknown_spend`.
    pub kind: String,
    pub chain: String,
    pub asset: String,
    pub at_ms: i64,
    pub block_number: Option<i64>,
    /// Base units, decimal strings.
    pub on_chain: String,
    pub liabilities: String,
    pub surplus: String,
    pub shortfall: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ReconciliationView {
    /// The latest balance report, if any has run.
    pub balance: Option<ReportView>,
    /// Unknown spends, newest first (at most 100).
    pub unknown_spends: Vec<ReportView>,
}

fn report_view(r: kinko_store::freeze::ReportRow) -> Result<ReportView, Problem> {
    Ok(ReportView {
        detail: serde_json::from_str(&r.detail_json).map_err(Problem::internal)?,
        id: r.id,
        kind: r.kind,
        chain: r.chain,
        asset: r.asset,
        at_ms: r.at_ms,
        block_number: r.block_number,
        on_chain: r.on_chain,
        liabilities: r.liabilities,
        surplus: r.surplus,
        shortfall: r.shortfall,
    })
}

async fn reconciliation_view(state: &AppState) -> Result<ReconciliationView, Problem> {
    use kinko_store::freeze::{REPORT_BALANCE, REPORT_UNKNOWN_SPEND};
    let balance = state.store.reconciliation_reports(REPORT_BALANCE, 1).await?.into_iter().next();
    let spends = state.store.reconciliation_reports(REPORT_UNKNOWN_SPEND, 100).await?;
    Ok(ReconciliationView {
        balance: balance.map(report_view).transpose()?,
        unknown_spends: spends.into_iter().map(report_view).collect::<Result<_, _>>()?,
    })
}

/// The latest balance reconciliation and the unknown spends found (L3).
#[utoipa::path(
    get, path = "/v1/ops/reconciliation", tag = "operators", security(("bearer" = [])),
    responses((status = 200, body = ReconciliationView))
)]
pub async fn get_reconciliation(
    State(state): State<AppState>,
    op: Operator,
) -> Result<Json<ReconciliationView>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/reconciliation")?;
    Ok(Json(reconciliation_view(&state).await?))
}

/// Runs a balance reconciliation now: the node's balances of every custodian address against the ledger's
/// customer liabilities.
#[utoipa::path(
    post, path = "/v1/ops/reconciliation", tag = "operators", security(("bearer" = [])),
    responses(
        (status = 201, body = ReconciliationView),
        (status = 503, description = "the node could not be read", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn run_reconciliation(
    State(state): State<AppState>,
    op: Operator,
) -> Result<(StatusCode, Json<ReconciliationView>), Problem> {
    require_endpoint(&op, "post", "/v1/ops/reconciliation")?;
    let unavailable = |e: &dyn std::fmt::Display| {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "reconciliation-unavailable", "reconciliation could not run")
            .detail(e.to_string())
    };
    let rpc = kinko_chain::evm::rpc::EvmRpc::new(&state.config.ethereum.rpc_url).map_err(|e| unavailable(&e))?;
    let asset: kinko_core::AssetCode = "ETH".parse().map_err(Problem::internal)?;
    crate::reconciliation::reconcile_balances(&state.store, &rpc, crate::app::ETH_CHAIN, &asset, now_ms())
        .await
        .map_err(|e| unavailable(&e))?;
    Ok((StatusCode::CREATED, Json(reconciliation_view(&state).await?)))
}
