//! Operator authentication (M2, K8, K12): one-time enrolment, password + TOTP login, bearer sessions, and
//! the [`Operator`] extractor whose roles come from the server's replayed, signature-verified registry.
//!
//! - Passwords: argon2id with the customer API's parameters ([`super::auth::hash_password`]).
//! - Second factor: RFC 6238 TOTP (SHA-1, 6 digits, 30 s steps, one step of skew) via `totp-rs`. The
//!   secret is stored base32 because the server must recompute codes; each code is single-use
//!   (`operators.totp_last_step` only moves forward, compare-and-set).
//! - Throttling: lockout with exponential back-off after repeated failures (`kinko_store::operators`).
//! - Every failure answers the same 401 body (unknown operator, wrong password, wrong code, locked), and
//!   an unknown operator still costs one argon2 verification, so neither the answer nor its timing tells
//!   which part was wrong.
//! - Bearer tokens are 32 random bytes; only their sha256 is stored.
//!
//! The terminal of every action is the client's IP address as the TCP peer (axum `ConnectInfo`); a
//! request without it is refused (fail closed), since an event without its terminal is no audit trail.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use kinko_core::operators::Role;
use kinko_store::StoreError;
use kinko_store::operators::OperatorSessionRow;
use kinko_store::ops_requests::NewOpsEvent;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::auth::{check_password, dummy_hash, hash_password, verify_password};
use super::extract::BODY_LIMIT_BYTES;
use super::ops_registry::{ServerRegistry, load_registry};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;

pub const OPS_SESSION_TTL_MS: i64 = 8 * 60 * 60 * 1000;
pub const OPS_TOKEN_BYTES: usize = 32;
/// How long the one-time enrolment token of a newly added operator stays valid.
pub const ENROLMENT_TTL_MS: i64 = 72 * 60 * 60 * 1000;
pub const TOTP_DIGITS: u8 = 6;
pub const TOTP_STEP_SECS: u64 = 30;
pub const TOTP_SKEW_STEPS: u16 = 1;
/// 160-bit secrets, as RFC 4226 recommends.
pub const TOTP_SECRET_BYTES: usize = 20;
pub const TOTP_ISSUER: &str = "kinko";
/// Bound on the operator id echoed into a failed-login event (the id is attacker-chosen).
pub const OPERATOR_ID_LEN_MAX: usize = kinko_core::operators::REQUEST_ID_LEN_MAX;

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A fresh random token (enrolment or session), hex.
pub fn random_token() -> String {
    let mut raw = [0u8; OPS_TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

/// The client's terminal: its IP address as the TCP peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminal(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Terminal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Terminal, Problem> {
        match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(addr)) => Ok(Terminal(addr.ip().to_string())),
            None => Err(Problem::internal("ops API served without ConnectInfo: the terminal is unknown")),
        }
    }
}

/// JSON bodies of the ops API, which carry nested objects (params, registry changes). The content type,
/// size and syntax are checked as in [`super::extract::ApiJson`]; the structure by serde with unknown
/// members refused. The error never quotes the submitted values (serde's messages can).
pub struct OpsJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OpsJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let essence = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        if essence.as_deref() != Some("application/json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "unsupported media type",
            )
            .detail("send the body as application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "request body too large")
                    .detail(format!("request bodies are limited to {BODY_LIMIT_BYTES} bytes"))
            } else {
                Problem::new(StatusCode::BAD_REQUEST, "unreadable-body", "request body could not be read")
            }
        })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "malformed JSON").detail(format!(
                "JSON syntax error at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        if !value.is_object() {
            return Err(Problem::validation(vec![FieldError::new("body", "must be a JSON object")]));
        }
        serde_json::from_value(value).map(OpsJson).map_err(|_| {
            Problem::validation(vec![FieldError::new("body", "does not match the documented request schema")])
        })
    }
}

fn totp(secret: Vec<u8>, operator_id: &str) -> Result<totp_rs::Totp, Problem> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(TOTP_DIGITS)
        .with_skew(TOTP_SKEW_STEPS)
        .with_step_duration(TOTP_STEP_SECS)
        .with_secret(secret)
        .with_issuer(Some(TOTP_ISSUER))
        .with_account_name(operator_id.replace(':', "_"))
        .build()
        .map_err(|_| Problem::internal("TOTP parameters refused"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentBody {
    pub operator_id: String,
    /// The one-time token issued when the operator was added.
    #[schema(format = Password)]
    pub enrolment_token: String,
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Enrolled {
    /// `otpauth://totp/...` for the operator's authenticator app. Shown once.
    pub totp_uri: String,
}

fn enrolment_refused() -> Problem {
    Problem::unauthorized("operator id or enrolment token is wrong, used or expired")
}

/// Enrol with the one-time token: set the password and receive the TOTP secret (anonymous).
#[utoipa::path(
    post, path = "/v1/ops/enrolments", tag = "operators",
    request_body = EnrolmentBody,
    responses(
        (status = 200, description = "enrolled; the TOTP URI is shown once", body = Enrolled),
        (status = 401, description = "wrong, used or expired token (one answer for all)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid password", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn enrol(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
    OpsJson(body): OpsJson<EnrolmentBody>,
) -> Result<Json<Enrolled>, Problem> {
    let password = SecretString::from(body.password);
    if let Err(e) = check_password(password.expose_secret()) {
        return Err(Problem::validation(vec![e]));
    }
    let now = now_ms();
    if body.operator_id.is_empty() || body.operator_id.len() > OPERATOR_ID_LEN_MAX {
        return Err(enrolment_refused());
    }
    let token_hash = sha256_hex(body.enrolment_token.trim());
    let mut secret = [0u8; TOTP_SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let totp = totp(secret.to_vec(), &body.operator_id)?;
    let secret_b32 = totp_rs::Secret::from(secret).to_base32();
    let uri = totp.to_url().map_err(|_| Problem::internal("TOTP URI"))?;
    let password_hash = hash_password(password).await?;
    let event = NewOpsEvent {
        operator_id: body.operator_id.clone(),
        terminal,
        event: "enrolled".into(),
        request_id: None,
        detail_json: "{}".into(),
        at_ms: now,
    };
    match state.store.enrol_operator(&body.operator_id, &token_hash, &password_hash, &secret_b32, &event, now).await {
        Ok(()) => Ok(Json(Enrolled { totp_uri: uri })),
        Err(StoreError::NotFound) => Err(enrolment_refused()),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsLogin {
    pub operator_id: String,
    #[schema(format = Password)]
    pub password: String,
    /// The current 6-digit code; each code is accepted once.
    pub totp_code: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct OpsSessionCreated {
    /// Bearer token for the ops API. Shown once; kinko keeps only its hash.
    pub token: String,
    pub expires_at_ms: i64,
    /// The login before this one, so the operator notices one that was not theirs.
    pub previous_login: Option<PreviousLoginView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PreviousLoginView {
    pub at_ms: i64,
    pub terminal: String,
}

fn login_failed() -> Problem {
    Problem::unauthorized("operator id, password or code is wrong, or the account is locked")
}

/// Log in with password and TOTP code (anonymous).
#[utoipa::path(
    post, path = "/v1/ops/sessions", tag = "operators",
    request_body = OpsLogin,
    responses(
        (status = 201, description = "session created", body = OpsSessionCreated),
        (status = 401, description = "wrong id, password or code, or locked (one answer for all)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_session(
    State(state): State<AppState>,
    Terminal(terminal): Terminal,
    OpsJson(body): OpsJson<OpsLogin>,
) -> Result<(StatusCode, Json<OpsSessionCreated>), Problem> {
    let password = SecretString::from(body.password);
    let now = now_ms();
    let id_ok = !body.operator_id.is_empty() && body.operator_id.len() <= OPERATOR_ID_LEN_MAX;
    let account = if id_ok { state.store.operator_account(&body.operator_id).await? } else { None };
    // Only an enrolled, unlocked account can succeed; everything else still pays a full verification.
    let usable = account.filter(|a| a.locked_until_ms <= now);
    let (phc, secret) = match usable.as_ref().and_then(|a| Some((a.password_hash.clone()?, a.totp_secret.clone()?))) {
        Some((phc, secret)) => (phc, Some(secret)),
        None => (dummy_hash().to_string(), None),
    };
    let password_ok = verify_password(password, phc).await?;
    let step = match (secret, usable.as_ref()) {
        (Some(secret), Some(account)) => {
            let bytes = totp_rs::Secret::try_from_base32(&secret)
                .map_err(|_| Problem::internal("stored TOTP secret is not base32"))?
                .as_bytes()
                .to_vec();
            let time_secs = u64::try_from(now / 1000).unwrap_or(0);
            totp(bytes, &body.operator_id)?
                .check(body.totp_code.trim(), time_secs)
                .and_then(|s| i64::try_from(s).ok())
                .filter(|s| *s > account.totp_last_step)
        }
        _ => None,
    };
    let event = |name: &str, detail: serde_json::Value| NewOpsEvent {
        operator_id: body.operator_id.chars().take(OPERATOR_ID_LEN_MAX).collect(),
        terminal: terminal.clone(),
        event: name.into(),
        request_id: None,
        detail_json: detail.to_string(),
        at_ms: now,
    };
    let Some(step) = step.filter(|_| password_ok) else {
        state
            .store
            .operator_login_failed(&body.operator_id, &event("login_failed", serde_json::json!({})), now)
            .await?;
        return Err(login_failed());
    };
    let token = random_token();
    let session = OperatorSessionRow {
        operator_id: body.operator_id.clone(),
        terminal: terminal.clone(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(OPS_SESSION_TTL_MS),
    };
    let ok = event("login", serde_json::json!({}));
    match state.store.operator_login_succeeded(&body.operator_id, step, &sha256_hex(&token), &session, &ok).await {
        Ok(previous) => Ok((
            StatusCode::CREATED,
            Json(OpsSessionCreated {
                token,
                expires_at_ms: session.expires_at_ms,
                previous_login: previous.map(|p| PreviousLoginView { at_ms: p.at_ms, terminal: p.terminal }),
            }),
        )),
        // A concurrent login consumed the same code first: this one is a replay.
        Err(StoreError::Conflict(_)) => {
            let failed = event("login_failed", serde_json::json!({"reason": "code replayed"}));
            state.store.operator_login_failed(&body.operator_id, &failed, now).await?;
            Err(login_failed())
        }
        Err(e) => Err(e.into()),
    }
}

/// The authenticated operator: a valid, unexpired ops session, with the roles the replayed registry gives
/// them now and the terminal of this request.
#[derive(Clone, Debug)]
pub struct Operator {
    pub id: String,
    /// Active roles from the registry; empty for an operator the registry does not (or no longer) list.
    pub roles: Vec<Role>,
    pub terminal: String,
    /// The registry the roles came from, for the handler's own rule checks (no second replay).
    pub registry: std::sync::Arc<ServerRegistry>,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Operator, Problem> {
        let Terminal(terminal) = Terminal::from_request_parts(parts, state).await?;
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer token"))?;
        let value = value.to_str().map_err(|_| Problem::unauthorized("malformed Authorization header"))?;
        let (scheme, token) =
            value.split_once(' ').ok_or_else(|| Problem::unauthorized("malformed Authorization header"))?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer")
            || token.len() != OPS_TOKEN_BYTES * 2
            || !token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Problem::unauthorized("malformed bearer token"));
        }
        // Customer sessions live in another table, so a customer token is simply unknown here.
        let session = state
            .store
            .operator_session(&sha256_hex(&token.to_ascii_lowercase()))
            .await?
            .ok_or_else(|| Problem::unauthorized("unknown or expired session"))?;
        let now = now_ms();
        if session.expires_at_ms <= now {
            return Err(Problem::unauthorized("unknown or expired session"));
        }
        let registry = load_registry(state, now).await?;
        let roles = registry
            .operator(&session.operator_id)
            .filter(|o| !o.revoked)
            .map(|o| o.active_roles(now))
            .unwrap_or_default();
        Ok(Operator { id: session.operator_id, roles, terminal, registry })
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub operator_id: String,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    pub terminal: String,
}

/// Who am I: id, roles from the registry, terminal.
#[utoipa::path(
    get, path = "/v1/ops/me", tag = "operators", security(("bearer" = [])),
    responses(
        (status = 200, body = Me),
        (status = 401, description = "no valid ops session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn me(op: Operator) -> Result<Json<Me>, Problem> {
    super::ops_requests::require_endpoint(&op, "get", "/v1/ops/me")?;
    Ok(Json(Me { operator_id: op.id, roles: op.roles, terminal: op.terminal }))
}
