//! Customer second factors (U2, U3), step-up (U4) and the transaction password (U9).
//!
//! - Factors are possession factors only: TOTP (RFC 6238, the operator parameters of
//!   [`super::ops_auth`]) and WebAuthn passkeys (webauthn-rs). No e-mail or SMS code counts as a factor.
//! - Adding or replacing a factor re-authenticates with the login password (a stolen session alone
//!   cannot enrol the thief's authenticator) and, once any factor is active, also needs a fresh step-up.
//! - Recovery codes: 10 per TOTP enrolment, 80 random bits each, stored as sha256 (with that much entropy
//!   a slow, salted hash adds nothing: nobody can search 2^80 preimages; argon2id would only cost CPU per
//!   attempt). Compared in constant time, consumed once by compare-and-set.
//! - TOTP codes are single-use: the accepted time step only moves forward (compare-and-set).
//! - Step-up raises the current session for [`STEP_UP_TTL_MS`]; the level decays by itself. Handlers
//!   of changes call [`Customer::require_fresh_mfa`].
//! - Second-factor guessing is throttled per customer with back-off (`kinko_store::customer_mfa`), and
//!   wrong, replayed, used and locked answers look the same.
//! - The transaction password is argon2id like the login password, must differ from it, and locks after
//!   repeated failures; withdrawals will call [`verify_transaction_password`].
//! - WebAuthn ceremony state lives in the database between start and finish (webauthn-rs feature
//!   `danger-allow-state-serialisation`). That is safe here because the rows never leave the server, are
//!   bound to the session that started the ceremony, are deleted by the finish request that reads them
//!   (single-use) and are refused after [`WEBAUTHN_STATE_TTL_MS`].

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid,
    Webauthn, WebauthnBuilder,
};
use zeroize::Zeroizing;

use super::auth::{Customer, check_password, hash_password, verify_password};
use super::extract::{ApiJson, JsonBody};
use super::ops_auth::{OpsJson, TOTP_DIGITS, TOTP_ISSUER, TOTP_SECRET_BYTES, TOTP_SKEW_STEPS, TOTP_STEP_SECS};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;
use kinko_store::StoreError;
use kinko_store::customer_mfa::{PasskeyRow, TotpEnrolmentRow};

/// How long a step-up stays fresh (U4).
pub const STEP_UP_TTL_MS: i64 = 5 * 60 * 1000;
/// How long a TOTP enrolment waits for its confirming code.
pub const TOTP_ENROLMENT_TTL_MS: i64 = 10 * 60 * 1000;
/// How long a WebAuthn ceremony may take between start and finish.
pub const WEBAUTHN_STATE_TTL_MS: i64 = 5 * 60 * 1000;
pub const RECOVERY_CODE_COUNT: usize = 10;
/// 80 bits per recovery code.
pub const RECOVERY_CODE_BYTES: usize = 10;
/// Bound on submitted codes (TOTP or recovery) before any parsing.
pub const CODE_LEN_MAX: usize = 64;
/// Bound on the identifiers echoed from requests.
pub const ENROLMENT_ID_LEN_MAX: usize = 64;
const CEREMONY_REGISTER: &str = "register";
const CEREMONY_AUTHENTICATE: &str = "authenticate";

fn totp(secret: Vec<u8>, account: &str) -> Result<totp_rs::Totp, Problem> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(TOTP_DIGITS)
        .with_skew(TOTP_SKEW_STEPS)
        .with_step_duration(TOTP_STEP_SECS)
        .with_secret(secret)
        .with_issuer(Some(TOTP_ISSUER))
        .with_account_name(account.replace(':', "_"))
        .build()
        .map_err(|_| Problem::internal("TOTP parameters refused"))
}

/// The time step of `code` under the base32 `secret` at `now_ms`, if the code is valid now.
fn totp_step(secret_b32: &str, code: &str, now_ms: i64) -> Result<Option<i64>, Problem> {
    let bytes = Zeroizing::new(
        totp_rs::Secret::try_from_base32(secret_b32)
            .map_err(|_| Problem::internal("stored TOTP secret is not base32"))?
            .as_bytes()
            .to_vec(),
    );
    let time_secs = u64::try_from(now_ms / 1000).unwrap_or(0);
    Ok(totp(bytes.to_vec(), "customer")?.check(code.trim(), time_secs).and_then(|s| i64::try_from(s).ok()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Recovery codes as typed: dashes and spaces ignored, case-insensitive hex.
fn normalize_recovery_code(code: &str) -> Option<String> {
    let hex: String = code.chars().filter(|c| *c != '-' && !c.is_whitespace()).collect::<String>().to_lowercase();
    (hex.len() == RECOVERY_CODE_BYTES * 2 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// One answer for a wrong, replayed, used or expired code and for a locked customer, so that the
/// answer does not tell a guesser which it was.
fn factor_refused(field: &str) -> Problem {
    Problem::field(
        StatusCode::FORBIDDEN,
        "second-factor-refused",
        "second factor refused",
        field,
        "is wrong, already used or expired, or attempts are paused after repeated failures",
    )
}

fn check_code_len(field: &str, code: &str) -> Result<(), Problem> {
    if code.is_empty() || code.len() > CODE_LEN_MAX {
        return Err(Problem::validation(vec![FieldError::new(field, "must be 1 to 64 characters")]));
    }
    Ok(())
}

/// Whether the customer has any active second factor (TOTP or passkey).
pub async fn has_second_factor(state: &AppState, customer_id: &str) -> Result<bool, Problem> {
    let totp = state.store.customer_mfa(customer_id).await?.is_some_and(|m| m.totp_secret.is_some());
    Ok(totp || !state.store.passkeys(customer_id).await?.is_empty())
}

/// Fails while second-factor attempts are locked for this customer.
async fn ensure_not_locked(state: &AppState, customer_id: &str, field: &str, now: i64) -> Result<(), Problem> {
    match state.store.customer_mfa(customer_id).await? {
        Some(m) if m.locked_until_ms > now => Err(factor_refused(field)),
        _ => Ok(()),
    }
}

/// Counts a failure (which may lock further attempts) and answers the uniform refusal.
async fn fail(state: &AppState, customer_id: &str, field: &str, now: i64) -> Problem {
    match state.store.mfa_failed(customer_id, now).await {
        Ok(_) => factor_refused(field),
        // Fail closed: an uncounted failure would make guessing free.
        Err(e) => e.into(),
    }
}

/// Re-authentication before adding a factor: the login password, and a fresh step-up once a factor
/// exists. A wrong password counts as a second-factor failure (it throttles a session thief's guessing).
async fn reauthenticate_for_enrolment(state: &AppState, customer: &Customer, password: String) -> Result<(), Problem> {
    let password = SecretString::from(password);
    if has_second_factor(state, &customer.id).await? {
        customer.require_fresh_mfa()?;
    }
    let now = now_ms();
    ensure_not_locked(state, &customer.id, "password", now).await?;
    let (_, phc) = state
        .store
        .customer_login_by_id(&customer.id)
        .await?
        .ok_or_else(|| Problem::unauthorized("unknown customer"))?;
    if !verify_password(password, phc).await? {
        return Err(fail(state, &customer.id, "password", now).await);
    }
    Ok(())
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct MfaStatus {
    /// An authenticator app (TOTP) is active.
    pub totp: bool,
    /// Registered passkeys.
    pub passkeys: u32,
    pub recovery_codes_remaining: u32,
    /// A transaction password is set.
    pub transaction_password: bool,
    /// This session's step-up is fresh until then; absent when not stepped up.
    pub stepped_up_until_ms: Option<i64>,
    /// Second-factor attempts are paused until then after repeated failures; absent when not.
    pub locked_until_ms: Option<i64>,
}

/// Which second factors are active (U2).
#[utoipa::path(
    get, path = "/v1/mfa", tag = "mfa", security(("bearer" = [])),
    responses(
        (status = 200, body = MfaStatus),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn status(State(state): State<AppState>, customer: Customer) -> Result<Json<MfaStatus>, Problem> {
    let now = now_ms();
    let mfa = state.store.customer_mfa(&customer.id).await?;
    let passkeys = state.store.passkeys(&customer.id).await?.len();
    let codes = if mfa.as_ref().is_some_and(|m| m.totp_secret.is_some()) {
        state.store.unused_recovery_code_hashes(&customer.id).await?.len()
    } else {
        0
    };
    Ok(Json(MfaStatus {
        totp: mfa.as_ref().is_some_and(|m| m.totp_secret.is_some()),
        passkeys: u32::try_from(passkeys).unwrap_or(u32::MAX),
        recovery_codes_remaining: u32::try_from(codes).unwrap_or(u32::MAX),
        transaction_password: state.store.transaction_password(&customer.id).await?.is_some(),
        stepped_up_until_ms: (customer.stepped_up_until_ms > now).then_some(customer.stepped_up_until_ms),
        locked_until_ms: mfa.map(|m| m.locked_until_ms).filter(|t| *t > now),
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct Reauthentication {
    /// The login password, again.
    #[schema(format = Password)]
    pub password: String,
}

impl JsonBody for Reauthentication {
    const FIELDS: &'static [&'static str] = &["password"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct TotpEnrolment {
    pub enrolment_id: String,
    /// `otpauth://totp/...` for the authenticator app. Shown once; not active until confirmed.
    pub otpauth_uri: String,
    pub expires_at_ms: i64,
}

/// Start a TOTP enrolment (U2, U3): the secret is shown once and becomes active on confirmation.
#[utoipa::path(
    post, path = "/v1/mfa/totp", tag = "mfa", security(("bearer" = [])),
    request_body = Reauthentication,
    responses(
        (status = 201, description = "enrolment started", body = TotpEnrolment),
        (status = 403, description = "wrong password, locked, or step-up needed (a factor is already active)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn start_totp(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<Reauthentication>,
) -> Result<(StatusCode, Json<TotpEnrolment>), Problem> {
    reauthenticate_for_enrolment(&state, &customer, body.password).await?;
    let (email, _) = state
        .store
        .customer_login_by_id(&customer.id)
        .await?
        .ok_or_else(|| Problem::unauthorized("unknown customer"))?;
    let mut secret = Zeroizing::new([0u8; TOTP_SECRET_BYTES]);
    rand::rngs::OsRng.fill_bytes(secret.as_mut());
    let totp = totp(secret.to_vec(), &email)?;
    let uri = totp.to_url().map_err(|_| Problem::internal("TOTP URI"))?;
    let now = now_ms();
    let enrolment = TotpEnrolmentRow {
        id: format!("totpenr_{}", Uuid::now_v7().simple()),
        customer_id: customer.id.clone(),
        totp_secret: totp_rs::Secret::from(*secret).to_base32(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(TOTP_ENROLMENT_TTL_MS),
    };
    state.store.insert_totp_enrolment(&enrolment).await?;
    Ok((
        StatusCode::CREATED,
        Json(TotpEnrolment { enrolment_id: enrolment.id, otpauth_uri: uri, expires_at_ms: enrolment.expires_at_ms }),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct TotpConfirmation {
    pub enrolment_id: String,
    /// The current 6-digit code from the authenticator app.
    pub code: String,
}

impl JsonBody for TotpConfirmation {
    const FIELDS: &'static [&'static str] = &["enrolment_id", "code"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RecoveryCodes {
    /// Single-use recovery codes, shown once; kinko keeps only their hashes. Each replaces a TOTP code
    /// once at step-up.
    pub recovery_codes: Vec<String>,
}

/// Confirm a TOTP enrolment with a first code: the factor becomes active and 10 recovery codes are
/// issued (replacing earlier ones).
#[utoipa::path(
    post, path = "/v1/mfa/totp/confirm", tag = "mfa", security(("bearer" = [])),
    request_body = TotpConfirmation,
    responses(
        (status = 200, description = "TOTP active", body = RecoveryCodes),
        (status = 403, description = "wrong or expired code or enrolment, locked, or step-up needed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_totp(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<TotpConfirmation>,
) -> Result<Json<RecoveryCodes>, Problem> {
    check_code_len("code", &body.code)?;
    if body.enrolment_id.is_empty() || body.enrolment_id.len() > ENROLMENT_ID_LEN_MAX {
        return Err(Problem::validation(vec![FieldError::new("enrolment_id", "must be 1 to 64 characters")]));
    }
    // Replacing an active factor is a change: it needs the step-up that starting it needed.
    if has_second_factor(&state, &customer.id).await? {
        customer.require_fresh_mfa()?;
    }
    let now = now_ms();
    ensure_not_locked(&state, &customer.id, "code", now).await?;
    let Some(enrolment) = state.store.totp_enrolment(&customer.id, &body.enrolment_id, now).await? else {
        return Err(Problem::field(
            StatusCode::FORBIDDEN,
            "enrolment-unknown",
            "unknown or expired enrolment",
            "enrolment_id",
            "is unknown, used or expired: start again",
        ));
    };
    let Some(step) = totp_step(&enrolment.totp_secret, &body.code, now)? else {
        return Err(fail(&state, &customer.id, "code", now).await);
    };
    let mut codes = Vec::with_capacity(RECOVERY_CODE_COUNT);
    let mut hashes = Vec::with_capacity(RECOVERY_CODE_COUNT);
    for _ in 0..RECOVERY_CODE_COUNT {
        let mut raw = Zeroizing::new([0u8; RECOVERY_CODE_BYTES]);
        rand::rngs::OsRng.fill_bytes(raw.as_mut());
        let hex = Zeroizing::new(hex::encode(*raw));
        hashes.push(sha256_hex(hex.as_bytes()));
        // Grouped for reading aloud and typing; the dashes are ignored on input.
        let grouped: Vec<&str> = (0..hex.len()).step_by(5).map(|i| &hex[i..(i + 5).min(hex.len())]).collect();
        codes.push(grouped.join("-"));
    }
    match state.store.confirm_totp_enrolment(&customer.id, &enrolment.id, step, &hashes, now).await {
        Ok(()) => Ok(Json(RecoveryCodes { recovery_codes: codes })),
        // A concurrent confirm took the enrolment first.
        Err(StoreError::NotFound) => Err(factor_refused("enrolment_id")),
        Err(e) => Err(e.into()),
    }
}

/// Remove the TOTP factor and its recovery codes; needs a fresh step-up (U4).
#[utoipa::path(
    delete, path = "/v1/mfa/totp", tag = "mfa", security(("bearer" = [])),
    responses(
        (status = 204, description = "TOTP removed"),
        (status = 403, description = "step-up needed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no TOTP factor", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn delete_totp(State(state): State<AppState>, customer: Customer) -> Result<StatusCode, Problem> {
    customer.require_fresh_mfa()?;
    if state.store.customer_mfa(&customer.id).await?.is_none_or(|m| m.totp_secret.is_none()) {
        return Err(Problem::not_found().detail("no TOTP factor is active"));
    }
    state.store.delete_totp(&customer.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub struct StepUpBody {
    /// `totp` or `recovery_code`.
    #[schema(example = "totp")]
    pub method: String,
    /// The 6-digit TOTP code, or one recovery code.
    pub code: String,
}

impl JsonBody for StepUpBody {
    const FIELDS: &'static [&'static str] = &["method", "code"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SteppedUp {
    /// Always `step_up`.
    pub auth_level: String,
    /// Changes are allowed on this session until then.
    pub stepped_up_until_ms: i64,
}

async fn raise_session(state: &AppState, customer: &Customer, now: i64) -> Result<Json<SteppedUp>, Problem> {
    state.store.mfa_succeeded(&customer.id).await?;
    let until = now.saturating_add(STEP_UP_TTL_MS).min(customer.session_expires_at_ms);
    match state.store.set_session_stepped_up_until(&customer.session.0, until, now).await {
        Ok(()) => Ok(Json(SteppedUp { auth_level: "step_up".into(), stepped_up_until_ms: until })),
        Err(StoreError::NotFound) => Err(Problem::unauthorized("unknown or expired session")),
        Err(e) => Err(e.into()),
    }
}

/// Step up the current session with a TOTP code or a recovery code (U4): changes need a fresh second
/// factor for [`STEP_UP_TTL_MS`]. E-mail and SMS codes are not accepted (U3).
#[utoipa::path(
    post, path = "/v1/sessions/step-up", tag = "mfa", security(("bearer" = [])),
    request_body = StepUpBody,
    responses(
        (status = 200, description = "session stepped up", body = SteppedUp),
        (status = 403, description = "wrong, used or expired code, or locked (one answer for all)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn step_up(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<StepUpBody>,
) -> Result<Json<SteppedUp>, Problem> {
    let code = Zeroizing::new(body.code);
    let recovery = match body.method.as_str() {
        "totp" => false,
        "recovery_code" => true,
        _ => return Err(Problem::validation(vec![FieldError::new("method", "must be totp or recovery_code")])),
    };
    check_code_len("code", &code)?;
    let now = now_ms();
    ensure_not_locked(&state, &customer.id, "code", now).await?;
    let Some(mfa) = state.store.customer_mfa(&customer.id).await? else {
        return Err(fail(&state, &customer.id, "code", now).await);
    };
    let Some(secret) = mfa.totp_secret.as_deref() else {
        return Err(fail(&state, &customer.id, "code", now).await);
    };
    let accepted = if recovery {
        match normalize_recovery_code(&code) {
            Some(normalized) => {
                let submitted = sha256_hex(normalized.as_bytes());
                // Every stored hash is compared, without an early exit, in constant time.
                let mut matched: Option<String> = None;
                for stored in state.store.unused_recovery_code_hashes(&customer.id).await? {
                    if bool::from(stored.as_bytes().ct_eq(submitted.as_bytes())) {
                        matched = Some(stored);
                    }
                }
                match matched {
                    Some(hash) => match state.store.consume_recovery_code(&customer.id, &hash, now).await {
                        Ok(()) => true,
                        Err(StoreError::Conflict(_)) => false,
                        Err(e) => return Err(e.into()),
                    },
                    None => false,
                }
            }
            None => false,
        }
    } else {
        match totp_step(secret, &code, now)?.filter(|s| *s > mfa.totp_last_step) {
            // The compare-and-set refuses a step a concurrent request consumed first.
            Some(step) => match state.store.consume_totp_step(&customer.id, step).await {
                Ok(()) => true,
                Err(StoreError::Conflict(_)) => false,
                Err(e) => return Err(e.into()),
            },
            None => false,
        }
    };
    if !accepted {
        return Err(fail(&state, &customer.id, "code", now).await);
    }
    raise_session(&state, &customer, now).await
}

#[derive(Deserialize, ToSchema)]
pub struct TransactionPasswordBody {
    /// 12 to 128 characters; must differ from the login password.
    #[schema(format = Password)]
    pub password: String,
}

impl JsonBody for TransactionPasswordBody {
    const FIELDS: &'static [&'static str] = &["password"];
}

/// Set or replace the transaction password (U9); needs a fresh step-up (U4).
#[utoipa::path(
    put, path = "/v1/transaction-password", tag = "mfa", security(("bearer" = [])),
    request_body = TransactionPasswordBody,
    responses(
        (status = 204, description = "transaction password set"),
        (status = 403, description = "step-up needed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid password, or the same as the login password", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn set_transaction_password(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<TransactionPasswordBody>,
) -> Result<StatusCode, Problem> {
    customer.require_fresh_mfa()?;
    let password = SecretString::from(body.password);
    check_password(password.expose_secret()).map_err(|e| Problem::validation(vec![e]))?;
    let (_, login_phc) = state
        .store
        .customer_login_by_id(&customer.id)
        .await?
        .ok_or_else(|| Problem::unauthorized("unknown customer"))?;
    if verify_password(password.clone(), login_phc).await? {
        return Err(Problem::validation(vec![FieldError::new("password", "must differ from the login password")]));
    }
    let phc = hash_password(password).await?;
    state.store.set_transaction_password(&customer.id, &phc, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a customer's transaction password (U9), for the withdrawal handler to call. Failures are
/// counted; after `TRANSACTION_PASSWORD_FAILURES_FREE` consecutive ones it locks with back-off, and a
/// locked password is refused even when right. Errors name the field `transaction_password`.
pub async fn verify_transaction_password(
    state: &AppState,
    customer_id: &str,
    password: SecretString,
) -> Result<(), Problem> {
    const FIELD: &str = "transaction_password";
    let now = now_ms();
    let Some(row) = state.store.transaction_password(customer_id).await? else {
        return Err(Problem::field(
            StatusCode::FORBIDDEN,
            "transaction-password-not-set",
            "no transaction password set",
            FIELD,
            "is not set: PUT /v1/transaction-password first",
        ));
    };
    let locked = |until: i64| {
        Problem::field(
            StatusCode::FORBIDDEN,
            "transaction-password-locked",
            "transaction password locked",
            FIELD,
            "is locked after repeated wrong entries",
        )
        .detail(format!("locked until {until} (ms since the epoch)"))
    };
    if row.locked_until_ms > now {
        return Err(locked(row.locked_until_ms));
    }
    if verify_password(password, row.password_hash).await? {
        state.store.transaction_password_succeeded(customer_id).await?;
        return Ok(());
    }
    let until = state.store.transaction_password_failed(customer_id, now).await?;
    if until > now {
        return Err(locked(until));
    }
    Err(Problem::field(
        StatusCode::FORBIDDEN,
        "transaction-password-wrong",
        "wrong transaction password",
        FIELD,
        "is wrong",
    ))
}

// ---- WebAuthn passkeys ----

/// The relying party from `[customer_auth]`. Built per request: cheap, and config stays the one source.
fn webauthn(state: &AppState) -> Result<Webauthn, Problem> {
    let cfg = &state.config.customer_auth;
    let origin = Url::parse(&cfg.rp_origin).map_err(|_| Problem::internal("customer_auth.rp_origin is not a URL"))?;
    WebauthnBuilder::new(&cfg.rp_id, &origin)
        .and_then(|b| b.rp_name("kinko").build())
        .map_err(|e| Problem::internal(format!("customer_auth.rp_id/rp_origin refused by webauthn-rs: {e}")))
}

/// webauthn-rs identifies a user by a UUID; kinko's customer ids are `c_` + a UUID.
fn user_uuid(customer_id: &str) -> Result<Uuid, Problem> {
    customer_id
        .strip_prefix("c_")
        .and_then(|u| Uuid::try_parse(u).ok())
        .ok_or_else(|| Problem::internal("customer id does not embed a UUID"))
}

fn stored_passkeys(rows: &[PasskeyRow]) -> Result<Vec<Passkey>, Problem> {
    rows.iter()
        .map(|r| {
            serde_json::from_str::<Passkey>(&r.passkey_json).map_err(|_| Problem::internal("stored passkey is corrupt"))
        })
        .collect()
}

fn ceremony_expired() -> Problem {
    Problem::field(
        StatusCode::FORBIDDEN,
        "ceremony-unknown",
        "no WebAuthn ceremony in progress",
        "body",
        "matches no started, unexpired ceremony of this session: start again",
    )
}

/// Start registering a passkey (U2). Same re-authentication as a TOTP enrolment. Answers the
/// `CreationChallengeResponse` for `navigator.credentials.create()`.
#[utoipa::path(
    post, path = "/v1/mfa/webauthn/register/start", tag = "mfa", security(("bearer" = [])),
    request_body = Reauthentication,
    responses(
        (status = 200, description = "CreationChallengeResponse (WebAuthn)", body = Object),
        (status = 403, description = "wrong password, locked, or step-up needed", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn webauthn_register_start(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<Reauthentication>,
) -> Result<Json<serde_json::Value>, Problem> {
    reauthenticate_for_enrolment(&state, &customer, body.password).await?;
    let rows = state.store.passkeys(&customer.id).await?;
    if rows.len() >= usize::try_from(kinko_store::customer_mfa::PASSKEYS_MAX).unwrap_or(usize::MAX) {
        return Err(Problem::new(StatusCode::CONFLICT, "too-many-passkeys", "too many passkeys")
            .detail(format!("at most {} passkeys per customer", kinko_store::customer_mfa::PASSKEYS_MAX)));
    }
    let exclude = stored_passkeys(&rows)?.iter().map(|p| p.cred_id().clone()).collect::<Vec<_>>();
    let (email, _) = state
        .store
        .customer_login_by_id(&customer.id)
        .await?
        .ok_or_else(|| Problem::unauthorized("unknown customer"))?;
    let (challenge, reg): (_, PasskeyRegistration) = webauthn(&state)?
        .start_passkey_registration(user_uuid(&customer.id)?, &email, &email, Some(exclude))
        .map_err(Problem::internal)?;
    let state_json = serde_json::to_string(&reg).map_err(Problem::internal)?;
    let now = now_ms();
    state
        .store
        .put_webauthn_state(
            &customer.session.0,
            CEREMONY_REGISTER,
            &customer.id,
            &state_json,
            now.saturating_add(WEBAUTHN_STATE_TTL_MS),
        )
        .await?;
    Ok(Json(serde_json::to_value(challenge).map_err(Problem::internal)?))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PasskeyRegistered {
    /// The credential id, lower-case hex.
    pub credential_id: String,
}

/// Finish registering a passkey with the authenticator's `RegisterPublicKeyCredential`.
#[utoipa::path(
    post, path = "/v1/mfa/webauthn/register/finish", tag = "mfa", security(("bearer" = [])),
    request_body(content = Object, description = "RegisterPublicKeyCredential (WebAuthn)"),
    responses(
        (status = 201, description = "passkey registered", body = PasskeyRegistered),
        (status = 403, description = "no ceremony in progress, or the credential was refused", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn webauthn_register_finish(
    State(state): State<AppState>,
    customer: Customer,
    OpsJson(credential): OpsJson<RegisterPublicKeyCredential>,
) -> Result<(StatusCode, Json<PasskeyRegistered>), Problem> {
    let now = now_ms();
    let Some(state_json) =
        state.store.take_webauthn_state(&customer.session.0, CEREMONY_REGISTER, &customer.id, now).await?
    else {
        return Err(ceremony_expired());
    };
    let reg: PasskeyRegistration =
        serde_json::from_str(&state_json).map_err(|_| Problem::internal("stored WebAuthn state is corrupt"))?;
    let passkey = webauthn(&state)?.finish_passkey_registration(&credential, &reg).map_err(|_| {
        Problem::field(
            StatusCode::FORBIDDEN,
            "passkey-refused",
            "passkey refused",
            "body",
            "was not accepted as a passkey",
        )
    })?;
    let row = PasskeyRow {
        credential_id: hex::encode::<&[u8]>(passkey.cred_id().as_ref()),
        customer_id: customer.id.clone(),
        passkey_json: serde_json::to_string(&passkey).map_err(Problem::internal)?,
        created_at_ms: now,
        last_used_at_ms: 0,
    };
    match state.store.insert_passkey(&row).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(PasskeyRegistered { credential_id: row.credential_id }))),
        Err(StoreError::Conflict(_)) => Err(Problem::field(
            StatusCode::CONFLICT,
            "passkey-exists",
            "passkey already registered",
            "body",
            "names a credential that is already registered",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Start a passkey step-up: answers the `RequestChallengeResponse` for `navigator.credentials.get()`.
#[utoipa::path(
    post, path = "/v1/mfa/webauthn/authenticate/start", tag = "mfa", security(("bearer" = [])),
    responses(
        (status = 200, description = "RequestChallengeResponse (WebAuthn)", body = Object),
        (status = 403, description = "locked", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no passkey registered", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn webauthn_authenticate_start(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<serde_json::Value>, Problem> {
    let now = now_ms();
    ensure_not_locked(&state, &customer.id, "body", now).await?;
    let passkeys = stored_passkeys(&state.store.passkeys(&customer.id).await?)?;
    if passkeys.is_empty() {
        return Err(Problem::not_found().detail("no passkey is registered"));
    }
    let (challenge, auth): (_, PasskeyAuthentication) =
        webauthn(&state)?.start_passkey_authentication(&passkeys).map_err(Problem::internal)?;
    let state_json = serde_json::to_string(&auth).map_err(Problem::internal)?;
    state
        .store
        .put_webauthn_state(
            &customer.session.0,
            CEREMONY_AUTHENTICATE,
            &customer.id,
            &state_json,
            now.saturating_add(WEBAUTHN_STATE_TTL_MS),
        )
        .await?;
    Ok(Json(serde_json::to_value(challenge).map_err(Problem::internal)?))
}

/// Finish a passkey step-up with the authenticator's `PublicKeyCredential`: raises the session like
/// `POST /v1/sessions/step-up` (U4).
#[utoipa::path(
    post, path = "/v1/mfa/webauthn/authenticate/finish", tag = "mfa", security(("bearer" = [])),
    request_body(content = Object, description = "PublicKeyCredential (WebAuthn)"),
    responses(
        (status = 200, description = "session stepped up", body = SteppedUp),
        (status = 403, description = "no ceremony in progress, assertion refused, or locked", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn webauthn_authenticate_finish(
    State(state): State<AppState>,
    customer: Customer,
    OpsJson(credential): OpsJson<PublicKeyCredential>,
) -> Result<Json<SteppedUp>, Problem> {
    let now = now_ms();
    ensure_not_locked(&state, &customer.id, "body", now).await?;
    let Some(state_json) =
        state.store.take_webauthn_state(&customer.session.0, CEREMONY_AUTHENTICATE, &customer.id, now).await?
    else {
        return Err(ceremony_expired());
    };
    let auth: PasskeyAuthentication =
        serde_json::from_str(&state_json).map_err(|_| Problem::internal("stored WebAuthn state is corrupt"))?;
    let Ok(result) = webauthn(&state)?.finish_passkey_authentication(&credential, &auth) else {
        return Err(fail(&state, &customer.id, "body", now).await);
    };
    // Keep the signature counter and backup flags current (a cloned authenticator shows as a counter
    // that goes backwards, which webauthn-rs then refuses).
    let rows = state.store.passkeys(&customer.id).await?;
    let credential_id = hex::encode::<&[u8]>(result.cred_id().as_ref());
    if let Some(row) = rows.iter().find(|r| r.credential_id == credential_id) {
        let mut passkey: Passkey =
            serde_json::from_str(&row.passkey_json).map_err(|_| Problem::internal("stored passkey is corrupt"))?;
        passkey.update_credential(&result);
        let json = serde_json::to_string(&passkey).map_err(Problem::internal)?;
        state.store.update_passkey_used(&customer.id, &credential_id, &json, now).await?;
    }
    raise_session(&state, &customer, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u2_recovery_codes_normalize() {
        assert_eq!(normalize_recovery_code("ABCDE-01234-abcde-56789").as_deref(), Some("abcde01234abcde56789"));
        assert_eq!(normalize_recovery_code(" abcde 01234 abcde 56789 ").as_deref(), Some("abcde01234abcde56789"));
        assert!(normalize_recovery_code("abcde-01234-abcde-5678").is_none());
        assert!(normalize_recovery_code("abcde-01234-abcde-5678g").is_none());
    }
}
