//! Internal transfers between customers (M7): off chain, the sender's available balance pays the
//! recipient's in one ledger entry, with a notice to each in the same transaction (kinko-store
//! `create_internal_transfer`). Same `Idempotency-Key` semantics as withdrawals: the same key and request
//! return the first transfer and move money once; the same key with another request is 422.
//!
//! Recipients and enumeration: every reason a recipient cannot receive (no such e-mail or id, a deleted
//! account, the reserved custodian row) gets one answer, 422 naming the recipient field, after the same
//! work. The checks that need only the sender's own data (fields, self-transfer, negative position,
//! balance) run first, so probing addresses costs a session *and* funds of at least the probed amount,
//! and every probe that hits an existing customer pays them: a sender necessarily learns that whoever they
//! paid exists.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use kinko_core::ledger::{AccountKind, AccountRef};
use kinko_core::{Amount, AssetCode};
use kinko_store::internal_transfers::{
    InternalTransferError, InternalTransferRow, NewInternalTransfer, TransferOutcome,
};
use kinko_store::notices::NewNotice;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::accounts::page_limit;
use super::assets::lookup_asset;
use super::auth::{Customer, WITHDRAWAL_AUTH_LEVEL_MIN, normalize_email};
use super::extract::BODY_LIMIT_BYTES;
use super::mfa::{has_second_factor, verify_transaction_password};
use super::ops_requests::FIAT_ASSETS;
use super::problem::{FieldError, Problem, ProblemBody};
use super::withdrawals::{IDEMPOTENCY_KEY_HEADER, idempotency_key};
use crate::AppState;
use crate::clock::now_ms;

/// Bound on a customer id in a request (`c_` + 32 hex today; generous for future formats).
pub const CUSTOMER_ID_LEN_MAX: usize = 64;
/// Notice kinds.
pub const NOTICE_TRANSFER_SENT: &str = "internal_transfer_sent";
pub const NOTICE_TRANSFER_RECEIVED: &str = "internal_transfer_received";

/// The body field carrying the transaction password, in withdrawal and transfer requests alike.
pub const TRANSACTION_PASSWORD_FIELD: &str = "transaction_password";

/// What moving money out of a customer's account requires, checked in this order, each refusal a 403
/// problem+json naming what is missing and nothing written but the failure count:
///
/// 1. an enrolled possession factor, TOTP or a passkey (U2, U3): `mfa-required`;
/// 2. a fresh step-up on this session, [`WITHDRAWAL_AUTH_LEVEL_MIN`] (U4): `step-up-required`;
/// 3. the transaction password, separate from the login password, in the request body (U9): missing is
///    `transaction-password-required`; wrong, unset or locked are [`verify_transaction_password`]'s
///    answers (failures counted, locking with back-off).
///
/// The factor is checked although a step-up proves one: a factor removed after stepping up must not leave
/// a session that still moves money. Deliberately one function for withdrawals and transfers: money
/// leaving by transfer must never be easier than by withdrawal; the test
/// `m7_transfer_requires_exactly_what_withdrawals_require` pins the two together. So a stolen password
/// alone (no factor), a stolen session (no fresh factor) and a stolen stepped-up session (no transaction
/// password) each move nothing.
pub async fn require_transfer_auth(
    state: &AppState,
    customer: &Customer,
    transaction_password: Option<SecretString>,
) -> Result<(), Problem> {
    if !has_second_factor(state, &customer.id).await? {
        return Err(Problem::new(StatusCode::FORBIDDEN, "mfa-required", "second factor required").detail(
            "moving money needs an enrolled second factor: an authenticator app (POST /v1/mfa/totp) or a passkey \
             (POST /v1/mfa/webauthn/register/start)",
        ));
    }
    customer.require(WITHDRAWAL_AUTH_LEVEL_MIN)?;
    let Some(password) = transaction_password else {
        return Err(Problem::field(
            StatusCode::FORBIDDEN,
            "transaction-password-required",
            "transaction password required",
            TRANSACTION_PASSWORD_FIELD,
            "is required: the transaction password set with PUT /v1/transaction-password",
        ));
    };
    verify_transaction_password(state, &customer.id, password).await
}

/// The transaction password from a raw transfer body, read before the body is validated so that the
/// authentication answers come first (as for withdrawals, whose body is parsed by the extractor). Absent
/// when the body is not a JSON object or the field is not a string ([`validate`] names those).
fn transaction_password_of(body: &[u8]) -> Option<SecretString> {
    if body.len() > BODY_LIMIT_BYTES {
        return None;
    }
    let mut value: Value = serde_json::from_slice(body).ok()?;
    match value.get_mut(TRANSACTION_PASSWORD_FIELD)?.take() {
        Value::String(s) => Some(SecretString::from(s)),
        _ => None,
    }
}

/// The request body (documentation; the handler validates the raw JSON so that exactly one of the two
/// recipient fields can be given and each failure is named).
#[derive(Deserialize, ToSchema)]
pub struct InternalTransferRequest {
    /// The recipient's login e-mail. Give this or `to_customer_id`, not both.
    #[schema(example = "bob@example.com")]
    pub to_email: Option<String>,
    /// The recipient's customer id. Give this or `to_email`, not both.
    pub to_customer_id: Option<String>,
    #[schema(example = "ETH")]
    pub asset: String,
    /// Base units as a decimal string; a JSON number is refused.
    #[schema(example = "1000000000000000")]
    pub amount: String,
    /// The transaction password (U9), separate from the login password; required (with an enrolled
    /// second factor and a fresh step-up). Never stored or echoed.
    #[schema(format = Password)]
    pub transaction_password: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct InternalTransferView {
    pub id: String,
    /// `sent` or `received`, from the caller's point of view.
    pub direction: String,
    /// The other customer's id (never their e-mail: a customer id given out to be paid says nothing else).
    pub counterparty_id: String,
    pub asset: String,
    #[schema(value_type = String)]
    pub amount: Amount,
    pub ledger_seq: i64,
    pub created_at_ms: i64,
}

impl InternalTransferView {
    fn for_customer(row: InternalTransferRow, customer_id: &str) -> Self {
        let sent = row.sender_id == customer_id;
        InternalTransferView {
            id: row.id,
            direction: if sent { "sent" } else { "received" }.into(),
            counterparty_id: if sent { row.recipient_id } else { row.sender_id },
            asset: row.asset.to_string(),
            amount: row.amount,
            ledger_seq: row.ledger_seq,
            created_at_ms: row.created_at_ms,
        }
    }
}

/// How the recipient was named, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    Email(String),
    CustomerId(String),
}

impl Recipient {
    fn field(&self) -> &'static str {
        match self {
            Recipient::Email(_) => "to_email",
            Recipient::CustomerId(_) => "to_customer_id",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidTransfer {
    pub recipient: Recipient,
    pub asset: AssetCode,
    pub amount: Amount,
}

const FIELDS: [&str; 5] = ["to_email", "to_customer_id", "asset", "amount", TRANSACTION_PASSWORD_FIELD];

fn check_content_type(headers: &HeaderMap) -> Result<(), Problem> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "unsupported media type")
            .detail("send the body as application/json"))
    }
}

/// Checks every field of the raw body and reports all failures together.
pub fn validate(config: &crate::Config, body: &[u8]) -> Result<ValidTransfer, Problem> {
    if body.len() > BODY_LIMIT_BYTES {
        return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "request body too large"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "malformed JSON").detail(format!(
            "JSON syntax error at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    let Some(object) = value.as_object() else {
        return Err(Problem::validation(vec![FieldError::new("body", "must be a JSON object")]));
    };
    let mut errors = Vec::new();
    for key in object.keys() {
        if !FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(key.chars().take(64).collect::<String>(), "is not a known field"));
        }
    }
    let string = |field: &str, errors: &mut Vec<FieldError>| -> Option<String> {
        match object.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.push(FieldError::new(field, "must be a JSON string"));
                None
            }
        }
    };
    // A field given with the wrong JSON type is named once, as that, not also as missing.
    let absent = |field: &str| matches!(object.get(field), None | Some(Value::Null));
    let to_email = string("to_email", &mut errors);
    let to_customer_id = string("to_customer_id", &mut errors);
    let asset_raw = string("asset", &mut errors);
    // BTC is held but not yet movable between customers either (issue 9): its own answer, not "unsupported".
    if let Some(refused) = asset_raw.as_deref().and_then(|raw| super::assets::not_withdrawable(config, "asset", raw)) {
        return Err(refused);
    }
    let amount_raw = string("amount", &mut errors);
    // Checked for type only here (wiped after); its value is `require_transfer_auth`'s business.
    let _ = string(TRANSACTION_PASSWORD_FIELD, &mut errors).map(zeroize::Zeroizing::new);
    let recipient = match (to_email, to_customer_id) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new("to_customer_id", "give to_email or to_customer_id, not both"));
            None
        }
        (Some(email), None) => normalize_email(&email)
            .map_err(|e| errors.push(FieldError::new("to_email", e.reason)))
            .ok()
            .map(Recipient::Email),
        (None, Some(id)) => {
            let ok = !id.is_empty()
                && id.len() <= CUSTOMER_ID_LEN_MAX
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if ok {
                Some(Recipient::CustomerId(id))
            } else {
                errors.push(FieldError::new("to_customer_id", "must be a customer id (1 to 64 of A-Z a-z 0-9 _ -)"));
                None
            }
        }
        (None, None) => {
            if absent("to_email") && absent("to_customer_id") {
                errors.push(FieldError::new("to_email", "is required (or to_customer_id)"));
            }
            None
        }
    };
    let asset = match asset_raw {
        None => {
            if absent("asset") {
                errors.push(FieldError::new("asset", "is required"));
            }
            None
        }
        // Chain assets the custodian supports, and the fiat currencies fiat deposits credit (M10).
        Some(raw) if FIAT_ASSETS.contains(&raw.as_str()) => raw.parse::<AssetCode>().ok(),
        Some(raw) => lookup_asset(config, "asset", &raw).map_err(|e| errors.push(e)).ok().map(|a| a.code),
    };
    let amount = match amount_raw {
        None => {
            if absent("amount") {
                errors.push(FieldError::new("amount", "is required"));
            }
            None
        }
        Some(raw) => {
            Amount::parse_positive(&raw).map_err(|e| errors.push(FieldError::new("amount", e.to_string()))).ok()
        }
    };
    match (recipient, asset, amount) {
        (Some(recipient), Some(asset), Some(amount)) if errors.is_empty() => {
            Ok(ValidTransfer { recipient, asset, amount })
        }
        _ => Err(Problem::validation(errors)),
    }
}

/// sha256 over a canonical encoding of the normalised request (domain tag, then recipient kind and value,
/// asset, canonical amount, each length-prefixed): equal requests written differently hash equal.
pub fn request_hash(req: &ValidTransfer) -> String {
    let (kind, who) = match &req.recipient {
        Recipient::Email(e) => ("email", e.as_str()),
        Recipient::CustomerId(id) => ("customer_id", id.as_str()),
    };
    let mut h = Sha256::new();
    h.update(b"kinko-internal-transfer-request-v1");
    for field in [kind, who, req.asset.as_str(), &req.amount.to_string()] {
        h.update((field.len() as u32).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

fn key_reused() -> Problem {
    Problem::field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "Idempotency-Key reused with a different request",
        IDEMPOTENCY_KEY_HEADER,
        "was already used for a different internal transfer request",
    )
}

fn recipient_unavailable(field: &str) -> Problem {
    Problem::field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "recipient-unavailable",
        "recipient cannot receive transfers",
        field,
        "does not name a customer who can receive transfers",
    )
}

fn insufficient() -> Problem {
    Problem::field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient-balance",
        "insufficient available balance",
        "amount",
        "exceeds the available balance",
    )
}

fn negative_position() -> Problem {
    Problem::new(StatusCode::CONFLICT, "negative-position", "negative position, transfers blocked")
        .detail("a reversed deposit left this account owing funds; contact the custodian")
}

/// Send part of your available balance to another customer, off chain. Requires an `Idempotency-Key`.
#[utoipa::path(
    post, path = "/v1/internal-transfers", tag = "internal-transfers",
    request_body = InternalTransferRequest,
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1 to 64 characters of A-Z a-z 0-9 _ -; the same key and request return the same transfer")),
    responses(
        (status = 201, description = "transferred (or the earlier transfer for this key)", body = InternalTransferView),
        (status = 400, description = "missing or malformed Idempotency-Key, malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "exactly what withdrawals need is missing: an enrolled second factor (`mfa-required`), a fresh step-up (`step-up-required`), or the right transaction password (`transaction-password-required`, `-wrong`, `-not-set`, `-locked`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "negative position: transfers blocked", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "not application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields, an asset not movable yet (`asset-not-withdrawable`: BTC), self-transfer, a recipient who cannot receive (one answer for unknown and deleted), insufficient balance, key reused with another request", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_internal_transfer(
    State(state): State<AppState>,
    customer: Customer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<InternalTransferView>), Problem> {
    check_content_type(&headers)?;
    require_transfer_auth(&state, &customer, transaction_password_of(&body)).await?;
    super::onboarding::require_kyc_verified(&state, &customer.id).await?;
    let key = idempotency_key(&headers)?;
    let req = validate(&state.config, &body)?;
    let request_hash = request_hash(&req);
    // A replay returns what the first request got, before anything else is consulted.
    if let Some(row) = state.store.internal_transfer_by_idempotency_key(&customer.id, &key).await? {
        if row.request_hash != request_hash {
            return Err(key_reused());
        }
        return Ok((StatusCode::CREATED, Json(InternalTransferView::for_customer(row, &customer.id))));
    }
    let field = req.recipient.field();
    // The sender's own checks first (see the module doc): self-transfer by id is answered before any
    // lookup; by e-mail after resolving, since the sender's own address is theirs to know.
    if req.recipient == Recipient::CustomerId(customer.id.clone()) {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "self-transfer",
            "cannot transfer to yourself",
            field,
            "names your own account",
        ));
    }
    let available =
        state.store.balance(&AccountRef::customer(AccountKind::Available, &customer.id, &req.asset)).await?;
    if available.normal_amount(AccountKind::Available) < req.amount {
        return Err(insufficient());
    }
    let recipient_id = match &req.recipient {
        Recipient::Email(email) => state.store.active_customer_id_by_email(email).await?,
        Recipient::CustomerId(id) => state.store.customer_active(id).await?.then(|| id.clone()),
    };
    let Some(recipient_id) = recipient_id else { return Err(recipient_unavailable(field)) };
    if recipient_id == customer.id {
        return Err(Problem::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "self-transfer",
            "cannot transfer to yourself",
            field,
            "names your own account",
        ));
    }
    let (Some((sender_email, _)), Some((recipient_email, _))) =
        (state.store.customer_login_by_id(&customer.id).await?, state.store.customer_login_by_id(&recipient_id).await?)
    else {
        return Err(recipient_unavailable(field));
    };
    let now = now_ms();
    let id = format!("it_{}", uuid::Uuid::now_v7().simple());
    let payload = serde_json::json!({
        "transfer_id": id, "asset": req.asset.as_str(), "amount": req.amount.to_string(),
    });
    let sender_notice = NewNotice::email(
        Some(customer.id.clone()),
        sender_email,
        NOTICE_TRANSFER_SENT,
        id.clone(),
        "You sent an internal transfer",
        format!(
            "You sent {} {} (base units) to customer {recipient_id}. Transfer {id}.\n\
             If this was not you, contact the custodian now.",
            req.amount, req.asset
        ),
        now,
    )
    .with_payload(payload.clone());
    let recipient_notice = NewNotice::email(
        Some(recipient_id.clone()),
        recipient_email,
        NOTICE_TRANSFER_RECEIVED,
        id.clone(),
        "You received an internal transfer",
        format!("You received {} {} (base units) from customer {}. Transfer {id}.", req.amount, req.asset, customer.id),
        now,
    )
    .with_payload(payload);
    let new = NewInternalTransfer {
        id,
        sender_id: customer.id.clone(),
        recipient_id,
        asset: req.asset.clone(),
        amount: req.amount,
        idempotency_key: key,
        request_hash: request_hash.clone(),
        sender_notice,
        recipient_notice,
    };
    match state.store.create_internal_transfer(&new, now).await {
        Ok(TransferOutcome::Created(row)) => {
            Ok((StatusCode::CREATED, Json(InternalTransferView::for_customer(row, &customer.id))))
        }
        Ok(TransferOutcome::Existing(row)) if row.request_hash == request_hash => {
            Ok((StatusCode::CREATED, Json(InternalTransferView::for_customer(row, &customer.id))))
        }
        Ok(TransferOutcome::Existing(_)) => Err(key_reused()),
        Err(InternalTransferError::InsufficientAvailable) => Err(insufficient()),
        Err(InternalTransferError::NegativePosition) => Err(negative_position()),
        Err(InternalTransferError::RecipientUnavailable) => Err(recipient_unavailable(field)),
        Err(InternalTransferError::Store(e)) => Err(e.into()),
    }
}

/// The customer's internal transfers, sent and received, newest first.
#[utoipa::path(
    get, path = "/v1/internal-transfers", tag = "internal-transfers",
    security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, description = "1 to 200, default 50")),
    responses(
        (status = 200, description = "transfers", body = Vec<InternalTransferView>),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn list_internal_transfers(
    State(state): State<AppState>,
    customer: Customer,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<InternalTransferView>>, Problem> {
    let limit = page_limit(query.as_deref())?;
    let rows = state.store.internal_transfers_for_customer(&customer.id, limit).await?;
    Ok(Json(rows.into_iter().map(|r| InternalTransferView::for_customer(r, &customer.id)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> crate::Config {
        crate::Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x".into())
    }

    #[test]
    fn m7_validation_names_each_field_and_needs_exactly_one_recipient() {
        let c = config();
        let ok = validate(&c, br#"{"to_email":" Bob@Example.com ","asset":"ETH","amount":"5"}"#).unwrap();
        assert_eq!(ok.recipient, Recipient::Email("bob@example.com".into()));
        let fields = |body: &[u8]| -> Vec<String> {
            validate(&c, body).unwrap_err().body.errors.into_iter().map(|e| e.field).collect()
        };
        assert_eq!(fields(br#"{"asset":"ETH","amount":"5"}"#), ["to_email"]);
        assert_eq!(
            fields(br#"{"to_email":"a@b","to_customer_id":"c_1","asset":"ETH","amount":"5"}"#),
            ["to_customer_id"]
        );
        assert_eq!(
            fields(br#"{"to_customer_id":"c 1","asset":"BTC","amount":"0","x":"y"}"#),
            ["x", "to_customer_id", "asset", "amount"]
        );
        assert_eq!(fields(br#"{"to_email":"a@b","asset":"ETH","amount":5}"#), ["amount"]);
        assert_eq!(fields(br#"{"to_email":"a@b","asset":"ETH","amount":"-1"}"#), ["amount"]);
        assert!(validate(&c, br#"{"to_email":"a@b","asset":"JPY","amount":"1"}"#).is_ok());
    }

    #[test]
    fn m7_request_hash_normalises_and_distinguishes() {
        let c = config();
        let a = validate(&c, br#"{"to_email":"BOB@example.com","asset":"ETH","amount":"5"}"#).unwrap();
        let b = validate(&c, br#"{"to_email":"bob@example.com","asset":"ETH","amount":"5"}"#).unwrap();
        let d = validate(&c, br#"{"to_email":"bob@example.com","asset":"ETH","amount":"6"}"#).unwrap();
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&d));
    }

    /// U4: the session part of [`require_transfer_auth`] is the fresh step-up; password and MFA sessions
    /// are refused. (The whole ladder, through both endpoints, is
    /// `api_enforcement::m7_transfer_requires_exactly_what_withdrawals_require`.)
    #[test]
    fn u4_moving_money_needs_a_fresh_step_up() {
        use super::super::auth::AuthLevel;
        assert_eq!(WITHDRAWAL_AUTH_LEVEL_MIN, AuthLevel::StepUp);
        for (level, ok) in [(AuthLevel::Password, false), (AuthLevel::Mfa, false), (AuthLevel::StepUp, true)] {
            let c = Customer {
                id: "c_1".into(),
                auth_level: level,
                session_expires_at_ms: i64::MAX,
                stepped_up_until_ms: 0,
                session: super::super::auth::SessionKey("k".into()),
            };
            assert_eq!(c.require(WITHDRAWAL_AUTH_LEVEL_MIN).is_ok(), ok, "{level:?}");
        }
    }

    #[test]
    fn u9_transaction_password_read_from_the_raw_body() {
        use secrecy::ExposeSecret;
        let p = transaction_password_of(br#"{"asset":"ETH","transaction_password":"tx pass word!"}"#).unwrap();
        assert_eq!(p.expose_secret(), "tx pass word!");
        assert!(transaction_password_of(br#"{"transaction_password":5}"#).is_none());
        assert!(transaction_password_of(br#"{"asset":"ETH"}"#).is_none());
        assert!(transaction_password_of(b"[1]").is_none());
        let c = config();
        let fields = validate(&c, br#"{"to_email":"a@b","asset":"ETH","amount":"5","transaction_password":1}"#)
            .unwrap_err()
            .body
            .errors;
        assert_eq!(fields[0].field, TRANSACTION_PASSWORD_FIELD);
    }
}
