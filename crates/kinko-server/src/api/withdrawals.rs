//! Customer withdrawal instructions (M13, A3). A request is validated, then the withdrawal row and its
//! ledger hold are written in one transaction (kinko-store `create_withdrawal`); the pipeline takes it
//! from there. The `Idempotency-Key` header makes retries safe: the same key with the same request
//! returns the same withdrawal and holds once; the same key with another request is refused.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use kinko_chain::evm::address::{parse_address, to_lower_hex};
use kinko_core::intent::Intent;
use kinko_core::operators::Process;
use kinko_core::policy::{self, Decision, HISTORY_LEN_MAX, PastWithdrawal};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_core::{Amount, AssetCode};
use kinko_store::policies::{CloseOutcome, Gate, PendingApproval, Policed, RequestCloser};
use kinko_store::withdrawal_requests::{CreateWithdrawalError, NewWithdrawal};
use kinko_store::withdrawals::WithdrawalRow;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::accounts::{hex_0x, page_limit};
use super::assets::lookup_asset;
use super::auth::Customer;
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::app::HOT_KEY_ID;
use crate::clock::now_ms;
use crate::withdrawal_policy;

pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 64;
pub const WITHDRAWAL_REASON: &str = "customer withdrawal";

#[derive(Deserialize, ToSchema)]
pub struct WithdrawalRequest {
    #[schema(example = "ETH")]
    pub asset: String,
    /// Base units as a decimal string (wei for ETH); a JSON number is refused.
    #[schema(example = "1000000000000000")]
    pub amount: String,
    /// 0x-address; mixed case must carry a valid EIP-55 checksum.
    #[schema(example = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8")]
    pub destination: String,
    /// What the withdrawal is for (U14), 1 to 200 characters; required above `[aml] purpose_required_above`.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Who ultimately receives the funds (U14), 1 to 200 characters; required above
    /// `[aml] purpose_required_above`.
    #[serde(default)]
    pub beneficiary: Option<String>,
    /// The transaction password (U9), separate from the login password; required (with an enrolled second
    /// factor and a fresh step-up), refused with 403 when missing. Never stored or echoed.
    #[serde(default)]
    #[schema(format = Password)]
    pub transaction_password: Option<String>,
}

impl crate::aml::JsonBodyOptional for WithdrawalRequest {
    const REQUIRED: &'static [&'static str] = &["asset", "amount", "destination"];
    // The transaction password is optional here only so that its absence gets the authentication answer
    // (403 `transaction-password-required`) rather than a validation error.
    const OPTIONAL: &'static [&'static str] = &["purpose", "beneficiary", "transaction_password"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct WithdrawalAccepted {
    pub id: String,
    /// `approved` (automatic), `pending_approval` (operators must approve first, see `reasons`) or
    /// `awaiting_confirmation` (U4: confirm with the token sent by e-mail/webhook first; then the policy's
    /// decision applies).
    #[schema(example = "approved")]
    pub status: String,
    /// Why operator approval is needed (absent when automatic): the policy rules that asked, each an object
    /// with its `rule` and the numbers it compared (e.g. `{"rule":"per_tx_limit","amount":"…","max":"…"}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub reasons: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct WithdrawalView {
    pub id: String,
    pub asset: String,
    #[schema(value_type = String)]
    pub amount: Amount,
    pub destination: String,
    /// requested, awaiting_confirmation, pending_approval, approved, signing, signed, broadcast, confirmed,
    /// settled, failed, cancelled.
    pub status: String,
    pub tx_hash: Option<String>,
    /// Network fee paid by the custodian, base units; set when settled.
    #[schema(value_type = Option<String>)]
    pub fee: Option<Amount>,
    pub nonce: Option<u64>,
    pub confirmations: u64,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl From<WithdrawalRow> for WithdrawalView {
    fn from(w: WithdrawalRow) -> Self {
        WithdrawalView {
            id: w.id,
            asset: w.asset.to_string(),
            amount: w.amount,
            destination: w.destination,
            status: w.status.as_str().to_string(),
            tx_hash: w.tx_hash.as_deref().map(hex_0x),
            fee: w.fee,
            nonce: w.nonce,
            confirmations: w.confirmations,
            error: w.error,
            created_at_ms: w.created_at_ms,
            updated_at_ms: w.updated_at_ms,
        }
    }
}

/// 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let bad = |reason: &str| {
        Problem::field(
            StatusCode::BAD_REQUEST,
            "idempotency-key",
            "invalid Idempotency-Key header",
            IDEMPOTENCY_KEY_HEADER,
            reason,
        )
    };
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let value = values.next().ok_or_else(|| bad("is required"))?;
    if values.next().is_some() {
        return Err(bad("must be sent once"));
    }
    let key = value.to_str().map_err(|_| bad("must be 1 to 64 characters of A-Z a-z 0-9 _ -"))?;
    let ok = (1..=IDEMPOTENCY_KEY_LEN_MAX).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(key.to_string()) } else { Err(bad("must be 1 to 64 characters of A-Z a-z 0-9 _ -")) }
}

/// The validated request: what the idempotency check and the intent are computed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRequest {
    pub asset: AssetCode,
    pub chain: &'static str,
    pub chain_id: kinko_core::ChainId,
    pub amount: Amount,
    /// Lower-case 0x-hex.
    pub destination: String,
}

/// Checks every field and reports all failures together.
pub fn validate(config: &crate::Config, body: &WithdrawalRequest) -> Result<ValidRequest, Problem> {
    // An asset customers hold that the pipeline cannot send (BTC) gets its own answer, not "unsupported".
    if let Some(refused) = super::assets::not_withdrawable(config, "asset", &body.asset) {
        return Err(refused);
    }
    let mut errors = Vec::new();
    let asset = lookup_asset(config, "asset", &body.asset).map_err(|e| errors.push(e)).ok();
    let amount =
        Amount::parse_positive(&body.amount).map_err(|e| errors.push(FieldError::new("amount", e.to_string()))).ok();
    let destination = parse_address(&body.destination)
        .map_err(|e| errors.push(FieldError::new("destination", e.to_string())))
        .ok()
        .map(|a| to_lower_hex(&a));
    match (asset, amount, destination) {
        (Some(asset), Some(amount), Some(destination)) if errors.is_empty() => {
            Ok(ValidRequest { asset: asset.code, chain: asset.chain, chain_id: asset.chain_id, amount, destination })
        }
        _ => Err(Problem::validation(errors)),
    }
}

/// sha256 over a canonical encoding of the normalised request: a domain tag, then asset, amount
/// (canonical decimal) and destination (lower-case), each length-prefixed. Equal requests written
/// differently (checksummed vs lower-case destination) hash equal.
pub fn request_hash(req: &ValidRequest) -> String {
    let mut h = Sha256::new();
    h.update(b"kinko-withdrawal-request-v1");
    for field in [req.asset.as_str(), &req.amount.to_string(), &req.destination] {
        h.update((field.len() as u32).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Request a withdrawal. Requires an `Idempotency-Key`.
#[utoipa::path(
    post, path = "/v1/withdrawals", tag = "withdrawals",
    request_body = WithdrawalRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1 to 64 characters of A-Z a-z 0-9 _ -; the same key and request return the same withdrawal")),
    responses(
        (status = 202, description = "accepted (or the earlier withdrawal for this key)", body = WithdrawalAccepted),
        (status = 400, description = "missing or malformed Idempotency-Key, malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "no enrolled second factor (`mfa-required`), no fresh step-up (`step-up-required`), or the transaction password missing, wrong, unset or locked (`transaction-password-required`, `-wrong`, `-not-set`, `-locked`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "negative position: withdrawals blocked", body = ProblemBody, content_type = "application/problem+json"),
        (status = 423, description = "an emergency freeze covers the hot wallet (`frozen`, naming the freeze; K19, S5)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "not application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields, an asset not withdrawable yet (`asset-not-withdrawable`: BTC), (`purpose`/`beneficiary` missing above the AML threshold), insufficient balance, key reused with another request, no policy, refused by policy (`policy-denied`, naming the rules), or a deny-listed destination (`destination-denied`), a destination not saved in the address book (`destination-not-saved`) or still cooling off (`destination-cooling-off`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "the AML deny list cannot be loaded: withdrawals refused (`aml-screening-unavailable`)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_withdrawal(
    State(state): State<AppState>,
    customer: Customer,
    headers: HeaderMap,
    client: super::login_protection::ClientInfo,
    crate::aml::ApiJsonOpt(mut body): crate::aml::ApiJsonOpt<WithdrawalRequest>,
) -> Result<(StatusCode, Json<WithdrawalAccepted>), Problem> {
    // K19, S5: first, so that nothing (not even a transaction-password attempt) counts while frozen.
    crate::emergency::refuse_withdrawal_if_frozen(&state).await?;
    let transaction_password = body.transaction_password.take().map(secrecy::SecretString::from);
    super::internal_transfers::require_transfer_auth(&state, &customer, transaction_password).await?;
    super::onboarding::require_kyc_verified(&state, &customer.id).await?;
    let key = idempotency_key(&headers)?;
    let req = validate(&state.config, &body)?;
    // U14: purpose and beneficiary, bounded when given, required above the threshold.
    let (purpose, beneficiary) =
        crate::aml::check_purpose(&state.config.aml, req.amount, body.purpose.as_deref(), body.beneficiary.as_deref())?;
    let request_hash = crate::aml::extend_request_hash(request_hash(&req), purpose.as_deref(), beneficiary.as_deref());
    let id = format!("w_{}", uuid::Uuid::now_v7().simple());
    let intent = Intent {
        id: id.clone(),
        asset: req.asset.clone(),
        chain_id: req.chain_id,
        amount: req.amount,
        destination: req.destination.clone(),
        source_wallet: state.hot_wallet.clone(),
        customer_id: customer.id.clone(),
        reason: WITHDRAWAL_REASON.to_string(),
    };
    // K11, K20, O1: the hot wallet's policy decides, over the wallet's history read inside the same
    // transaction that writes the row, the hold and (when approval is needed) the approval request.
    // A replay returns what the first request got before any policy is consulted, so a policy changed or
    // removed since cannot turn a retry of an accepted withdrawal into an error. (The store checks again
    // inside its transaction for a concurrent first request.) A denied request stored nothing and is decided
    // afresh.
    if let Some(row) = state.store.withdrawal_by_idempotency_key(&customer.id, &key).await? {
        if row.request_hash != request_hash {
            return Err(key_reused());
        }
        let reasons = stored_reasons(&state, &row).await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(WithdrawalAccepted { id: row.id, status: row.status.as_str().to_string(), reasons }),
        ));
    }
    // U13: only to a saved destination past its cooling-off, or the bound wallet. After the replay check, so
    // that removing an entry later cannot turn a retry of an accepted withdrawal into an error.
    super::address_book::require_usable_destination(&state, &customer.id, &req.asset, &req.destination, now_ms())
        .await?;
    let policy = withdrawal_policy::policy_for(&state, HOT_KEY_ID, &req.asset).await?;
    let intent_hash = hex::encode(intent.hash());
    let params_json = serde_json::to_string(&serde_json::json!({
        "asset": req.asset.as_str(),
        "amount": req.amount.to_string(),
        "destination": req.destination,
        "customer": customer.id,
        // With these the approving operator's terminal recomputes the intent hash it signs.
        "chain_id": req.chain_id.0,
        "source_wallet": state.hot_wallet,
        "reason": WITHDRAWAL_REASON,
    }))
    .map_err(Problem::internal)?;
    let now = now_ms();
    // U14, before anything is written so that a failed screening or case write stops the withdrawal (fail
    // closed): screen the destination (a deny-listed one is refused and a case opened), record purpose and
    // beneficiary under the id the withdrawal will get, and open a case for each history rule that matches
    // (reported, not refused).
    let screening_key = format!("{}/{key}/{request_hash}", customer.id);
    let screening_detail = serde_json::json!({
        "asset": req.asset.as_str(), "amount": req.amount.to_string(), "destination": req.destination,
    });
    crate::aml::screen_destination(&state, &customer.id, &req.destination, &screening_key, screening_detail, now)
        .await?;
    if purpose.is_some() || beneficiary.is_some() {
        state
            .store
            .insert_withdrawal_aml_details(&id, &customer.id, purpose.as_deref(), beneficiary.as_deref(), now)
            .await?;
    }
    let prospective = kinko_store::aml::PastWithdrawal {
        id: id.clone(),
        asset: req.asset.to_string(),
        amount: req.amount,
        destination: req.destination.clone(),
        created_at_ms: now,
    };
    crate::aml::review_withdrawal(&state, &customer.id, &prospective, policy.config().per_tx_limit.max, now).await?;
    let decide = |history: &[PastWithdrawal]| {
        let decision = policy.decide(&policy::Request {
            wallet: HOT_KEY_ID,
            asset: &req.asset,
            amount: req.amount,
            destination: &req.destination,
            now_ms: now,
            // The terminal allowlist is for operators; customers come from anywhere.
            requester_ip: None,
            history,
        });
        let gate = match &decision {
            Decision::Auto => Gate::Auto,
            Decision::Deny { .. } => Gate::Deny,
            Decision::NeedsApproval { quorum, reasons } => Gate::Pending(PendingApproval {
                process: Process::Signing.as_str().to_string(),
                kind: withdrawal_policy::CUSTOMER_WITHDRAWAL_KIND.to_string(),
                params_json: params_json.clone(),
                requester: format!("customer:{}", customer.id),
                requester_terminal: format!("api:{}", state.config.instance_id),
                required: *quorum,
                reasons_json: serde_json::to_string(reasons).unwrap_or_else(|_| "[]".into()),
            }),
        };
        (gate, decision)
    };
    // The status is set from the gate; `approved` here only satisfies the struct.
    let status = WithdrawalStatus::Requested.transition(WithdrawalStatus::Approved).map_err(Problem::internal)?;
    // U4, U9: above a threshold, to a new destination or when risky, the customer confirms over a second
    // channel first; the withdrawal then waits in `awaiting_confirmation`, held and never signed.
    let confirmation =
        super::withdrawal_confirmation::decide_confirmation(&state, &customer, &client, &req, &id, now).await?;
    let new = NewWithdrawal {
        id,
        customer_id: customer.id.clone(),
        asset: req.asset.clone(),
        chain: req.chain.to_string(),
        amount: req.amount,
        destination: req.destination.clone(),
        source_wallet: state.hot_wallet.clone(),
        status,
        intent_hash,
        idempotency_key: key,
        request_hash: request_hash.clone(),
    };
    let created = state.store.create_policed_withdrawal_with(&new, HISTORY_LEN_MAX, decide, confirmation.as_ref(), now);
    let (row, reasons) = match created.await {
        Ok(Policed::Created { row, decided }) => {
            let reasons = match decided {
                Decision::NeedsApproval { reasons, .. } => {
                    reasons.iter().filter_map(|r| serde_json::to_value(r).ok()).collect()
                }
                _ => Vec::new(),
            };
            (row, reasons)
        }
        Ok(Policed::Denied(decision)) => return Err(withdrawal_policy::denied(&decision)),
        Ok(Policed::Existing(row)) if row.request_hash == request_hash => {
            let reasons = stored_reasons(&state, &row).await?;
            (row, reasons)
        }
        Ok(Policed::Existing(_)) => return Err(key_reused()),
        Err(CreateWithdrawalError::InsufficientAvailable) => {
            return Err(Problem::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "insufficient-balance",
                "insufficient available balance",
                "amount",
                "exceeds the available balance",
            ));
        }
        Err(CreateWithdrawalError::NegativePosition) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "negative-position",
                "negative position, withdrawals blocked",
            )
            .detail("a reversed deposit left this account owing funds; contact the custodian"));
        }
        Err(CreateWithdrawalError::Store(e)) => return Err(e.into()),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(WithdrawalAccepted { id: row.id, status: row.status.as_str().to_string(), reasons }),
    ))
}

fn key_reused() -> Problem {
    Problem::field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Idempotency-Key reused with a different request",
        IDEMPOTENCY_KEY_HEADER,
        "was already used for a different withdrawal request",
    )
}

/// The approval reasons of a replayed pending withdrawal, as the first response gave them.
async fn stored_reasons(state: &AppState, row: &WithdrawalRow) -> Result<Vec<serde_json::Value>, Problem> {
    if row.status != WithdrawalStatus::PendingApproval {
        return Ok(Vec::new());
    }
    let Some(json) = state.store.request_reasons_json(&row.id).await? else { return Ok(Vec::new()) };
    serde_json::from_str(&json).map_err(Problem::internal)
}

/// One withdrawal. Another customer's withdrawal is 404, as if it did not exist.
#[utoipa::path(
    get, path = "/v1/withdrawals/{id}", tag = "withdrawals",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "withdrawal id")),
    responses(
        (status = 200, description = "the withdrawal", body = WithdrawalView),
        (status = 404, description = "no such withdrawal for this customer", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn get_withdrawal(
    State(state): State<AppState>,
    customer: Customer,
    Path(id): Path<String>,
) -> Result<Json<WithdrawalView>, Problem> {
    match state.store.withdrawal(&id).await? {
        Some(w) if w.customer_id == customer.id => Ok(Json(w.into())),
        _ => Err(Problem::not_found()),
    }
}

/// Cancel a withdrawal that is still waiting for operator approval: it becomes `cancelled`, the hold is
/// released, and its approval request is closed so no later approval counts. Once approved (or in any other
/// state) it cannot be cancelled here: 409.
#[utoipa::path(
    post, path = "/v1/withdrawals/{id}/cancel", tag = "withdrawals",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "withdrawal id")),
    responses(
        (status = 200, description = "cancelled (or already cancelled)", body = WithdrawalView),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no such withdrawal for this customer", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "not pending approval any more", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_withdrawal(
    State(state): State<AppState>,
    customer: Customer,
    Path(id): Path<String>,
) -> Result<Json<WithdrawalView>, Problem> {
    // A session is enough: cancelling moves no money out, and a customer who sees a withdrawal they did
    // not make must be able to stop it at once, even without their authenticator at hand.
    // U4: one awaiting confirmation is cancelled here (hold released, its token dead).
    if let Some(row) = super::withdrawal_confirmation::cancel_awaiting(&state, &id, &customer.id).await? {
        return Ok(Json(row.into()));
    }
    let actor = format!("customer:{}", customer.id);
    let terminal = format!("api:{}", state.config.instance_id);
    let closer = RequestCloser { actor: &actor, terminal: &terminal };
    let outcome = state
        .store
        .close_pending_withdrawal(
            &id,
            Some(&customer.id),
            WithdrawalStatus::Cancelled,
            "cancelled by the customer",
            Some(closer),
            now_ms(),
        )
        .await;
    let not_pending = |status: WithdrawalStatus| {
        Problem::new(StatusCode::CONFLICT, "withdrawal-not-pending", "withdrawal cannot be cancelled")
            .detail(format!("the withdrawal is {status}; only a withdrawal pending approval can be cancelled"))
    };
    match outcome {
        Ok(None) => return Err(Problem::not_found()),
        Ok(Some(CloseOutcome::Closed | CloseOutcome::NotPending(WithdrawalStatus::Cancelled))) => {}
        Ok(Some(CloseOutcome::NotPending(status))) => return Err(not_pending(status)),
        // The approval request moved on (its quorum is being recorded): the withdrawal is no longer the
        // customer's to cancel.
        Err(kinko_store::StoreError::Conflict(_)) => return Err(not_pending(WithdrawalStatus::Approved)),
        Err(e) => return Err(e.into()),
    }
    let row = state.store.withdrawal(&id).await?.ok_or_else(Problem::not_found)?;
    Ok(Json(row.into()))
}

/// The customer's withdrawals, newest first.
#[utoipa::path(
    get, path = "/v1/withdrawals", tag = "withdrawals",
    security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, description = "1 to 200, default 50")),
    responses(
        (status = 200, description = "withdrawals", body = Vec<WithdrawalView>),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_withdrawals(
    State(state): State<AppState>,
    customer: Customer,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<WithdrawalView>>, Problem> {
    let limit = page_limit(query.as_deref())?;
    let rows = state.store.withdrawals_for_customer(&customer.id, limit).await?;
    Ok(Json(rows.into_iter().map(WithdrawalView::from).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a3_idempotency_key_rules() {
        let mut h = HeaderMap::new();
        assert!(idempotency_key(&h).is_err());
        h.insert(IDEMPOTENCY_KEY_HEADER, "abc_DEF-123".parse().unwrap());
        assert_eq!(idempotency_key(&h).unwrap(), "abc_DEF-123");
        for bad in ["", "a b", "a/b", &"k".repeat(65)] {
            h.insert(IDEMPOTENCY_KEY_HEADER, bad.parse().unwrap());
            let p = idempotency_key(&h).unwrap_err();
            assert_eq!(p.body.errors[0].field, IDEMPOTENCY_KEY_HEADER, "{bad:?}");
        }
    }

    #[test]
    fn a3_request_hash_normalises_the_destination() {
        let c = crate::Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x".into());
        let body = |dest: &str, amount: &str| WithdrawalRequest {
            asset: "ETH".into(),
            amount: amount.into(),
            destination: dest.into(),
            purpose: None,
            beneficiary: None,
            transaction_password: None,
        };
        let a = validate(&c, &body("0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "5")).unwrap();
        let b = validate(&c, &body("0x70997970c51812dc3a010c7d01b50e0d17dc79c8", "5")).unwrap();
        let d = validate(&c, &body("0x70997970c51812dc3a010c7d01b50e0d17dc79c8", "6")).unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&d));
    }
}
