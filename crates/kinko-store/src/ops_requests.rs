//! Operator requests (K8, K11, K12, O2, O3): one row per process instance (a Table A-1 key or signing
//! process, kinko's own personnel / policy-change / fiat-deposit processes, and the approval request of a
//! customer withdrawal), the approvals collected for it, and the operators' audit trail (`ops_events`).
//!
//! State changes are compare-and-set on the old state, so two operators acting at once cannot both move
//! a request from the same state; the event recording a change is written in the same transaction as
//! the change, so a failed event write fails the change (fail closed).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::customers::is_unique_violation;
use crate::{Result, Store, StoreError, Tx};

pub const STATE_REQUESTED: &str = "requested";
pub const STATE_APPROVED: &str = "approved";
pub const STATE_EXECUTED: &str = "executed";
pub const STATE_INSPECTED: &str = "inspected";
pub const STATE_REJECTED: &str = "rejected";
/// Execution was attempted and refused (e.g. the signer refused a registry change); the reason is in
/// `result_json`. Terminal, like rejected.
pub const STATE_FAILED: &str = "failed";

/// Bound on the requests returned by one list call.
pub const OPS_REQUESTS_LIST_MAX: i64 = 1_000;
/// Bound on the events returned by one page.
pub const OPS_EVENTS_PAGE_MAX: i64 = 1_000;

/// A request to insert. `required == 0` (signing under limits) starts out approved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOpsRequest {
    pub id: String,
    /// `kinko_core::operators::Process::as_str`.
    pub process: String,
    /// e.g. `customer_withdrawal`, `key_transition`, `registry_change`, `fiat_deposit`.
    pub kind: String,
    pub params_json: String,
    /// Lower-case hex of the 32-byte intent hash the approvals sign.
    pub intent_hash: String,
    /// Operator id, or the customer id for `customer_withdrawal`.
    pub requester: String,
    pub requester_terminal: String,
    pub required: i64,
    /// JSON array of why approval is needed (policy rule names), `[]` when none.
    pub reasons_json: String,
    pub now_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsRequestRow {
    pub id: String,
    pub process: String,
    pub kind: String,
    pub params_json: String,
    pub intent_hash: String,
    pub requester: String,
    pub requester_terminal: String,
    pub required: i64,
    pub state: String,
    pub reasons_json: String,
    pub executor: Option<String>,
    pub executed_at_ms: Option<i64>,
    pub result_json: Option<String>,
    pub inspector: Option<String>,
    pub inspected_at_ms: Option<i64>,
    pub finding: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

const REQUEST_COLUMNS: &str = "id, process, kind, params_json, intent_hash, requester, requester_terminal, required, \
     state, reasons_json, executor, executed_at_ms, result_json, inspector, inspected_at_ms, finding, created_at_ms, \
     updated_at_ms";

fn request_from_row(r: &AnyRow) -> Result<OpsRequestRow> {
    Ok(OpsRequestRow {
        id: r.try_get("id")?,
        process: r.try_get("process")?,
        kind: r.try_get("kind")?,
        params_json: r.try_get("params_json")?,
        intent_hash: r.try_get("intent_hash")?,
        requester: r.try_get("requester")?,
        requester_terminal: r.try_get("requester_terminal")?,
        required: r.try_get("required")?,
        state: r.try_get("state")?,
        reasons_json: r.try_get("reasons_json")?,
        executor: r.try_get("executor")?,
        executed_at_ms: r.try_get("executed_at_ms")?,
        result_json: r.try_get("result_json")?,
        inspector: r.try_get("inspector")?,
        inspected_at_ms: r.try_get("inspected_at_ms")?,
        finding: r.try_get("finding")?,
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

/// One operator's decision on a request, with the Ed25519 signature that carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpsApprovalRow {
    pub request_id: String,
    pub operator_id: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub signature_hex: String,
    pub terminal: String,
    pub at_ms: i64,
}

/// An audit event to append. `detail_json` must be a JSON object (never secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOpsEvent {
    pub operator_id: String,
    pub terminal: String,
    /// e.g. `request_created`, `approved`, `rejected`, `executed`, `inspected`, `login`, `login_failed`.
    pub event: String,
    pub request_id: Option<String>,
    pub detail_json: String,
    pub at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OpsEventRow {
    pub id: String,
    pub at_ms: i64,
    pub operator_id: String,
    pub terminal: String,
    pub event: String,
    pub request_id: Option<String>,
    pub detail_json: String,
}

/// Inserts a request and its `request_created` event inside the caller's transaction, so the request
/// exists exactly when what it is about does (the withdrawal that needs approval, for instance).
/// A taken id is `StoreError::Conflict("ops request id")`.
pub async fn insert_ops_request_tx(tx: &mut Tx, r: &NewOpsRequest) -> Result<()> {
    let state = if r.required == 0 { STATE_APPROVED } else { STATE_REQUESTED };
    let res = sqlx::query(
        "INSERT INTO ops_requests (id, process, kind, params_json, intent_hash, requester, requester_terminal, \
         required, state, reasons_json, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&r.id)
    .bind(&r.process)
    .bind(&r.kind)
    .bind(&r.params_json)
    .bind(&r.intent_hash)
    .bind(&r.requester)
    .bind(&r.requester_terminal)
    .bind(r.required)
    .bind(state)
    .bind(&r.reasons_json)
    .bind(r.now_ms)
    .bind(r.now_ms)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict("ops request id".into())),
        Err(e) => return Err(e.into()),
    }
    let detail = serde_json::json!({ "process": r.process, "kind": r.kind, "required": r.required });
    append_ops_event_tx(
        tx,
        &NewOpsEvent {
            operator_id: r.requester.clone(),
            terminal: r.requester_terminal.clone(),
            event: "request_created".into(),
            request_id: Some(r.id.clone()),
            detail_json: detail.to_string(),
            at_ms: r.now_ms,
        },
    )
    .await
}

/// Appends an audit event in the caller's transaction; its failure fails the transaction.
pub async fn append_ops_event_tx(tx: &mut Tx, e: &NewOpsEvent) -> Result<()> {
    sqlx::query(
        "INSERT INTO ops_events (id, at_ms, operator_id, terminal, event, request_id, detail_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(e.at_ms)
    .bind(&e.operator_id)
    .bind(&e.terminal)
    .bind(&e.event)
    .bind(&e.request_id)
    .bind(&e.detail_json)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The request `id` inside the caller's transaction.
pub async fn ops_request_tx(tx: &mut Tx, id: &str) -> Result<Option<OpsRequestRow>> {
    let q = format!("SELECT {REQUEST_COLUMNS} FROM ops_requests WHERE id = $1");
    let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(&mut **tx).await?;
    row.as_ref().map(request_from_row).transpose()
}

/// Records one operator's decision inside the caller's transaction. A second decision by the same
/// operator on the same request is `StoreError::Conflict("approval")`.
pub async fn insert_ops_approval_tx(tx: &mut Tx, a: &OpsApprovalRow) -> Result<()> {
    let res = sqlx::query(
        "INSERT INTO ops_approvals (request_id, operator_id, decision, signature_hex, terminal, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&a.request_id)
    .bind(&a.operator_id)
    .bind(&a.decision)
    .bind(&a.signature_hex)
    .bind(&a.terminal)
    .bind(a.at_ms)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("approval".into())),
        Err(e) => Err(e.into()),
    }
}

/// Compare-and-set of a request's state: `Conflict` when the request is no longer in `from` (someone
/// else moved it first), `NotFound` when there is no such request.
pub async fn set_ops_request_state_tx(tx: &mut Tx, id: &str, from: &str, to: &str, now_ms: i64) -> Result<()> {
    let done = sqlx::query("UPDATE ops_requests SET state = $1, updated_at_ms = $2 WHERE id = $3 AND state = $4")
        .bind(to)
        .bind(now_ms)
        .bind(id)
        .bind(from)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    cas_outcome(tx, id, from, done).await
}

async fn cas_outcome(tx: &mut Tx, id: &str, from: &str, rows_affected: u64) -> Result<()> {
    if rows_affected == 1 {
        return Ok(());
    }
    match ops_request_tx(tx, id).await? {
        None => Err(StoreError::NotFound),
        Some(r) => Err(StoreError::Conflict(format!("request {id} is {}, not {from}", r.state))),
    }
}

/// Compare-and-set `from` → `to` (executed or failed), recording who executed it and the outcome.
pub async fn finish_ops_request_tx(
    tx: &mut Tx,
    id: &str,
    from: &str,
    to: &str,
    executor: &str,
    result_json: &str,
    now_ms: i64,
) -> Result<()> {
    let done = sqlx::query(
        "UPDATE ops_requests SET state = $1, executor = $2, executed_at_ms = $3, result_json = $4, updated_at_ms = $5 \
         WHERE id = $6 AND state = $7",
    )
    .bind(to)
    .bind(executor)
    .bind(now_ms)
    .bind(result_json)
    .bind(now_ms)
    .bind(id)
    .bind(from)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    cas_outcome(tx, id, from, done).await
}

/// Compare-and-set executed → inspected with the inspector's finding.
pub async fn inspect_ops_request_tx(tx: &mut Tx, id: &str, inspector: &str, finding: &str, now_ms: i64) -> Result<()> {
    let done = sqlx::query(
        "UPDATE ops_requests SET state = $1, inspector = $2, inspected_at_ms = $3, finding = $4, updated_at_ms = $5 \
         WHERE id = $6 AND state = $7",
    )
    .bind(STATE_INSPECTED)
    .bind(inspector)
    .bind(now_ms)
    .bind(finding)
    .bind(now_ms)
    .bind(id)
    .bind(STATE_EXECUTED)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    cas_outcome(tx, id, STATE_EXECUTED, done).await
}

/// The decisions recorded for a request inside the caller's transaction, oldest first.
pub async fn ops_approvals_tx(tx: &mut Tx, request_id: &str) -> Result<Vec<OpsApprovalRow>> {
    let rows = sqlx::query(
        "SELECT request_id, operator_id, decision, signature_hex, terminal, at_ms FROM ops_approvals \
         WHERE request_id = $1 ORDER BY at_ms, operator_id",
    )
    .bind(request_id)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(approval_from_row).collect()
}

fn approval_from_row(r: &AnyRow) -> Result<OpsApprovalRow> {
    Ok(OpsApprovalRow {
        request_id: r.try_get("request_id")?,
        operator_id: r.try_get("operator_id")?,
        decision: r.try_get("decision")?,
        signature_hex: r.try_get("signature_hex")?,
        terminal: r.try_get("terminal")?,
        at_ms: r.try_get("at_ms")?,
    })
}

fn event_from_row(r: &AnyRow) -> Result<OpsEventRow> {
    Ok(OpsEventRow {
        id: r.try_get("id")?,
        at_ms: r.try_get("at_ms")?,
        operator_id: r.try_get("operator_id")?,
        terminal: r.try_get("terminal")?,
        event: r.try_get("event")?,
        request_id: r.try_get("request_id")?,
        detail_json: r.try_get("detail_json")?,
    })
}

impl Store {
    /// Inserts a request (and its `request_created` event) in its own transaction.
    pub async fn insert_ops_request(&self, r: &NewOpsRequest) -> Result<()> {
        let mut tx = self.begin_write().await?;
        insert_ops_request_tx(&mut tx, r).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn ops_request(&self, id: &str) -> Result<Option<OpsRequestRow>> {
        let q = format!("SELECT {REQUEST_COLUMNS} FROM ops_requests WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(request_from_row).transpose()
    }

    /// Requests, newest first, optionally only those in `state`; at most `limit` (capped at
    /// [`OPS_REQUESTS_LIST_MAX`]).
    pub async fn ops_requests(&self, state: Option<&str>, limit: i64) -> Result<Vec<OpsRequestRow>> {
        let limit = limit.clamp(1, OPS_REQUESTS_LIST_MAX);
        let rows = match state {
            Some(state) => {
                let q = format!(
                    "SELECT {REQUEST_COLUMNS} FROM ops_requests WHERE state = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
                );
                sqlx::query(crate::sql(q)).bind(state).bind(limit).fetch_all(self.pool()).await?
            }
            None => {
                let q =
                    format!("SELECT {REQUEST_COLUMNS} FROM ops_requests ORDER BY created_at_ms DESC, id DESC LIMIT $1");
                sqlx::query(crate::sql(q)).bind(limit).fetch_all(self.pool()).await?
            }
        };
        rows.iter().map(request_from_row).collect()
    }

    pub async fn ops_approvals(&self, request_id: &str) -> Result<Vec<OpsApprovalRow>> {
        let rows = sqlx::query(
            "SELECT request_id, operator_id, decision, signature_hex, terminal, at_ms FROM ops_approvals \
             WHERE request_id = $1 ORDER BY at_ms, operator_id",
        )
        .bind(request_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(approval_from_row).collect()
    }

    /// Appends one event in its own transaction (for events that record no other change, e.g. a failed
    /// login).
    pub async fn append_ops_event(&self, e: &NewOpsEvent) -> Result<()> {
        let mut tx = self.begin_write().await?;
        append_ops_event_tx(&mut tx, e).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Events after the event id `after` (exclusive; uuid v7 ids sort by time), oldest first, at most
    /// `limit` (capped at [`OPS_EVENTS_PAGE_MAX`]).
    pub async fn ops_events(&self, after: Option<&str>, limit: i64) -> Result<Vec<OpsEventRow>> {
        let limit = limit.clamp(1, OPS_EVENTS_PAGE_MAX);
        let rows = sqlx::query(
            "SELECT id, at_ms, operator_id, terminal, event, request_id, detail_json FROM ops_events \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Every event about one request, oldest first.
    pub async fn ops_events_for_request(&self, request_id: &str) -> Result<Vec<OpsEventRow>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, operator_id, terminal, event, request_id, detail_json FROM ops_events \
             WHERE request_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(request_id)
        .bind(OPS_EVENTS_PAGE_MAX)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event_from_row).collect()
    }
}

impl Store {
    /// Whether a customer with this id exists (a fiat deposit must name one).
    pub async fn customer_exists(&self, customer_id: &str) -> Result<bool> {
        // The reserved row that custodian transfers name is not a customer anything may be booked to.
        if customer_id == kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID {
            return Ok(false);
        }
        Ok(sqlx::query_scalar::<_, String>("SELECT id FROM customers WHERE id = $1")
            .bind(customer_id)
            .fetch_optional(self.pool())
            .await?
            .is_some())
    }
}
