//! Account deletion by the customer (U5) and its restore by operators within a rollback window (U6).
//!
//! `DELETE /v1/account` re-authenticates (the login password in the body, always; plus a fresh step-up
//! when the customer has a second factor, U4) and refuses while any customer balance is non-zero (409
//! naming each: withdraw first; a held balance is a withdrawal in flight, a pending one a deposit being
//! confirmed, a receivable a debt). The deletion is soft (kinko-store `delete_customer`): sessions revoked,
//! login answered exactly like a wrong password, ledger accounts, deposit addresses and keys kept, so a
//! late deposit to the customer's address is still detected and credited.
//!
//! Restoring is never the customer's to do: it is the operator request `customer_restore` (process
//! `customer_restore`: a signing operator requests, an operations manager approves, Table-A-1 style),
//! executed automatically on quorum, only while the window lasts.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kinko_store::account_deletion::{DeleteCustomerError, RestoreCustomerError};
use kinko_store::notices::NewNotice;
use rand::RngCore;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Customer, hash_password, verify_password};
use super::extract::ApiJson;
use super::mfa::{Reauthentication, has_second_factor};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;

/// How long operators may restore a deleted account (U6).
// TODO(issue 5): make this `[customers] restore_window_days` in config.rs once that file is free; a
// constant for now because config.rs is being edited concurrently.
pub const ACCOUNT_RESTORE_WINDOW_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// The operator request kind (and process name) that restores a deleted customer.
pub const CUSTOMER_RESTORE_KIND: &str = "customer_restore";
pub const NOTICE_ACCOUNT_DELETED: &str = "account_deleted";
pub const NOTICE_ACCOUNT_RESTORED: &str = "account_restored";
/// Random bytes of the secret whose hash replaces a deleted customer's password hash; nobody ever sees it.
const LOCKED_SECRET_BYTES: usize = 32;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AccountDeleted {
    pub deleted_at_ms: i64,
    /// Until then operators can restore the account on request; after it, it stays deleted.
    pub restore_until_ms: i64,
}

fn reauthentication_refused() -> Problem {
    Problem::field(
        StatusCode::FORBIDDEN,
        "reauthentication-refused",
        "re-authentication refused",
        "password",
        "is wrong, or attempts are paused after repeated failures",
    )
}

/// The login password again, counted against the same failure throttle as second factors (a stolen
/// session must not become a password-guessing oracle).
async fn reauthenticate(state: &AppState, customer: &Customer, password: String) -> Result<(), Problem> {
    let password = SecretString::from(password);
    if has_second_factor(state, &customer.id).await? {
        customer.require_fresh_mfa()?;
    }
    let now = now_ms();
    if state.store.customer_mfa(&customer.id).await?.is_some_and(|m| m.locked_until_ms > now) {
        return Err(reauthentication_refused());
    }
    let (_, phc) = state
        .store
        .customer_login_by_id(&customer.id)
        .await?
        .ok_or_else(|| Problem::unauthorized("unknown or expired session"))?;
    if !verify_password(password, phc).await? {
        state.store.mfa_failed(&customer.id, now).await?;
        return Err(reauthentication_refused());
    }
    Ok(())
}

/// Delete your account (soft; operators can restore it for 30 days). Body: the login password. A customer
/// with a second factor must also have stepped up within the last few minutes.
#[utoipa::path(
    delete, path = "/v1/account", tag = "customers",
    request_body = Reauthentication,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "deleted; every session is revoked", body = AccountDeleted),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "wrong password, attempts paused, or a fresh step-up is needed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "non-zero balances (each named in `errors`): withdraw or settle first", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn delete_account(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<Reauthentication>,
) -> Result<Json<AccountDeleted>, Problem> {
    reauthenticate(&state, &customer, body.password).await?;
    let (email, _) = state
        .store
        .customer_login_by_id(&customer.id)
        .await?
        .ok_or_else(|| Problem::unauthorized("unknown or expired session"))?;
    let mut secret = zeroize::Zeroizing::new([0u8; LOCKED_SECRET_BYTES]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut());
    let locked_hash = hash_password(SecretString::from(hex::encode(&secret[..]))).await?;
    let now = now_ms();
    let restore_until_ms = now.saturating_add(ACCOUNT_RESTORE_WINDOW_MS);
    let notice = NewNotice::email(
        Some(customer.id.clone()),
        email,
        NOTICE_ACCOUNT_DELETED,
        format!("{}:{now}", customer.id),
        "Your kinko account was deleted",
        format!(
            "Your account was deleted and every session signed out. Until {restore_until_ms} (ms since epoch) \
             the custodian can restore it if you ask; after that it stays deleted.\n\
             If this was not you, contact the custodian now."
        ),
        now,
    )
    .with_payload(serde_json::json!({ "restore_until_ms": restore_until_ms }));
    match state.store.delete_customer(&customer.id, &locked_hash, restore_until_ms, &notice, now).await {
        Ok(()) => Ok(Json(AccountDeleted { deleted_at_ms: now, restore_until_ms })),
        Err(DeleteCustomerError::BalancesNotZero(balances)) => {
            let errors = balances
                .iter()
                .map(|b| {
                    FieldError::new(
                        format!("balances.{}.{}", b.asset, b.kind.as_str()),
                        format!("is {} (base units); it must be zero", b.amount),
                    )
                })
                .collect();
            Err(Problem::new(StatusCode::CONFLICT, "balances-not-zero", "account still holds or owes funds")
                .detail("withdraw every balance (and wait for withdrawals and deposits in flight to finish) first")
                .errors(errors))
        }
        // A concurrent deletion of the same account won; this session is gone with it.
        Err(DeleteCustomerError::NotActive) => Err(Problem::unauthorized("unknown or expired session")),
        Err(DeleteCustomerError::Store(e)) => Err(e.into()),
    }
}

/// Request-time checks of a `customer_restore` request: a reason, and a customer who is deleted and
/// still inside the restore window. (Checked again when it executes.)
pub async fn check_restore_params(state: &AppState, params: &serde_json::Value) -> Result<Vec<FieldError>, Problem> {
    let mut errors = Vec::new();
    let text = |f: &'static str| params.get(f).and_then(|v| v.as_str()).filter(|s| !s.trim().is_empty());
    if text("reason").is_none() {
        errors.push(FieldError::new("params.reason", "is required (a non-empty string)"));
    }
    match text("customer_id") {
        None => errors.push(FieldError::new("params.customer_id", "is required (a non-empty string)")),
        Some(id) => match state.store.customer_deletion_state(id).await? {
            Some(s) if s.deleted_at_ms != 0 && now_ms() <= s.restore_until_ms => {}
            Some(s) if s.deleted_at_ms != 0 => errors.push(FieldError::new(
                "params.customer_id",
                format!("its restore window ended at {} (ms since epoch); it stays deleted", s.restore_until_ms),
            )),
            _ => errors.push(FieldError::new("params.customer_id", "is not a deleted customer")),
        },
    }
    Ok(errors)
}

/// Executes an approved `customer_restore` request: the account is active again (same password, no
/// sessions) and the customer is told, in one transaction; refused after the window.
pub async fn execute_restore(
    state: &AppState,
    request_id: &str,
    params: &serde_json::Value,
    now: i64,
) -> Result<serde_json::Value, Problem> {
    let customer_id = params["customer_id"]
        .as_str()
        .ok_or_else(|| Problem::internal(format!("request {request_id}: params.customer_id is invalid")))?;
    let notice = |email: &str| {
        NewNotice::email(
            Some(customer_id.to_string()),
            email,
            NOTICE_ACCOUNT_RESTORED,
            request_id,
            "Your kinko account was restored",
            "At your request the custodian restored your account. Log in with your previous password.\n\
             If you did not ask for this, contact the custodian now.",
            now,
        )
    };
    match state.store.restore_customer(customer_id, request_id, notice, now).await {
        Ok(_) => Ok(serde_json::json!({ "customer_id": customer_id, "restored": true })),
        Err(e @ (RestoreCustomerError::NotDeleted(_) | RestoreCustomerError::WindowEnded { .. })) => {
            Err(Problem::new(StatusCode::CONFLICT, "restore-refused", "customer cannot be restored")
                .detail(e.to_string()))
        }
        Err(RestoreCustomerError::Store(e)) => Err(e.into()),
    }
}
