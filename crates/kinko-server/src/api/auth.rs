//! User authentication (M2) and user information (M3): registration, password login, bearer sessions.
//!
//! Passwords are stored as argon2id PHC strings (OWASP minimum parameters or stronger). A session token
//! is 32 random bytes; only its sha256 is stored, so a database leak yields no usable token. Sessions
//! carry an `auth_level` so that MFA and step-up (the customer-protection issue) raise the level of an
//! existing session instead of changing what a session is: handlers state the level they need through
//! [`Customer::require`].

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::extract::{ApiJson, JsonBody};
use super::login_protection::{self, ClientInfo};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;
use kinko_store::StoreError;
use kinko_store::customers::{CustomerRow, SessionRow};
use kinko_store::login_protection::{IpBlockReason, LoginAttempt, LoginOutcome};

/// argon2id memory cost in KiB (OWASP minimum: 19 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
/// argon2id iterations (OWASP minimum with 19 MiB: 2).
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_PARALLELISM: u32 = 1;
pub const PASSWORD_CHARS_MIN: usize = 12;
pub const PASSWORD_CHARS_MAX: usize = 128;
/// RFC 5321's path limit.
pub const EMAIL_LEN_MAX: usize = 254;
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
pub const SESSION_TOKEN_BYTES: usize = 32;

/// How strongly a session's holder authenticated. Ordered: a higher level satisfies a lower one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthLevel {
    /// Password only.
    Password = 1,
    /// Password plus a second factor (TOTP/WebAuthn; the customer-protection issue).
    Mfa = 2,
    /// A second factor proven within the last [`super::mfa::STEP_UP_TTL_MS`] (U4): never stored as a
    /// session's `auth_level`, but derived per request from `sessions.stepped_up_until_ms`, so it decays
    /// back to the stored level by itself.
    StepUp = 3,
}

impl AuthLevel {
    fn from_stored(level: i64) -> Option<AuthLevel> {
        match level {
            1 => Some(AuthLevel::Password),
            2 => Some(AuthLevel::Mfa),
            _ => None,
        }
    }
}

/// The session level moving money out of an account needs (U4): a second factor proven on this session
/// within the last [`super::mfa::STEP_UP_TTL_MS`]. Withdrawals and internal transfers both ask through
/// [`super::internal_transfers::require_transfer_auth`], which adds an enrolled factor and the
/// transaction password (U2, U9).
pub const WITHDRAWAL_AUTH_LEVEL_MIN: AuthLevel = AuthLevel::StepUp;

fn argon2() -> Result<Argon2<'static>, Problem> {
    let params =
        Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_PARALLELISM, None).map_err(Problem::internal)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes on a blocking thread: argon2id is deliberately slow and must not stall the async workers.
pub async fn hash_password(password: SecretString) -> Result<String, Problem> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2()?
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(Problem::internal)
    })
    .await
    .map_err(Problem::internal)?
}

/// Verifies in constant time (argon2's verifier compares the digests with `subtle`).
pub async fn verify_password(password: SecretString, phc: String) -> Result<bool, Problem> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&phc).map_err(Problem::internal)?;
        Ok(argon2()?.verify_password(password.expose_secret().as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(Problem::internal)?
}

/// A hash of a random password with the same parameters, verified when the e-mail is unknown so that
/// "no such customer" costs as much time as "wrong password" (no user enumeration by timing).
static DUMMY_HASH: OnceLock<String> = OnceLock::new();

pub fn dummy_hash() -> &'static str {
    DUMMY_HASH.get_or_init(|| {
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon2()
            .ok()
            .and_then(|a| a.hash_password(&random, &salt).ok().map(|h| h.to_string()))
            // Unreachable with constant parameters; an unparsable dummy would only make verification fail.
            .unwrap_or_default()
    })
}

/// Trimmed, lower-cased, bounded, exactly one '@' with non-empty parts, no whitespace or controls.
/// Lower-casing the whole address keeps one account per mailbox in practice.
pub fn normalize_email(raw: &str) -> Result<String, FieldError> {
    let email = raw.trim().to_lowercase();
    let bad = |reason: &str| Err(FieldError::new("email", reason));
    if email.is_empty() {
        return bad("is required");
    }
    if email.len() > EMAIL_LEN_MAX {
        return bad("must be at most 254 bytes");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    match email.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !domain.contains('@') => Ok(email),
        _ => bad("must be an e-mail address (one @ with text on both sides)"),
    }
}

pub fn check_password(password: &str) -> Result<(), FieldError> {
    let chars = password.chars().count();
    if (PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&chars) {
        Ok(())
    } else {
        Err(FieldError::new("password", "must be 12 to 128 characters"))
    }
}

pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Deserialize, ToSchema)]
pub struct Credentials {
    #[schema(example = "alice@example.com")]
    pub email: String,
    /// 12 to 128 characters.
    #[schema(format = Password)]
    pub password: String,
}

impl JsonBody for Credentials {
    const FIELDS: &'static [&'static str] = &["email", "password"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CustomerCreated {
    #[schema(example = "c_01930f3a6b7c7d8e9fa0b1c2d3e4f5a6")]
    pub id: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionCreated {
    /// Bearer token for `Authorization: Bearer …`. Shown once; kinko keeps only its hash.
    pub token: String,
    pub expires_at_ms: i64,
    /// The customer's previous successful login (U10, U11), so a login that was not theirs stands out;
    /// null on the first login. The full record is at `GET /v1/login-history`.
    #[serde(default)]
    pub previous_login: Option<super::login_protection::LoginView>,
}

/// Register a customer (M3).
#[utoipa::path(
    post, path = "/v1/customers", tag = "customers",
    request_body = Credentials,
    responses(
        (status = 201, description = "customer created", body = CustomerCreated),
        (status = 409, description = "e-mail already registered", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_customer(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<CustomerCreated>), Problem> {
    let password = SecretString::from(body.password);
    let mut errors = Vec::new();
    let email = normalize_email(&body.email).map_err(|e| errors.push(e)).ok();
    if let Err(e) = check_password(password.expose_secret()) {
        errors.push(e);
    }
    let Some(email) = email.filter(|_| errors.is_empty()) else {
        return Err(Problem::validation(errors));
    };
    let password_hash = hash_password(password).await?;
    let customer = CustomerRow {
        id: format!("c_{}", uuid::Uuid::now_v7().simple()),
        email,
        password_hash,
        created_at_ms: now_ms(),
    };
    match super::onboarding::register(&state, &customer).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(CustomerCreated { id: customer.id }))),
        Err(StoreError::Conflict(_)) => Err(Problem::field(
            StatusCode::CONFLICT,
            "email-taken",
            "e-mail already registered",
            "email",
            "is already registered",
        )),
        Err(e) => Err(e.into()),
    }
}

fn login_failed() -> Problem {
    Problem::unauthorized("e-mail or password is wrong")
}

/// Log in with e-mail and password; returns a bearer token (M2) and the previous login (U10, U11).
/// Login protection (U10, U12; [`super::login_protection`]): a blocked or block-listed client IP gets 429
/// with `Retry-After` before anything else; a locked account gets the same 401 as a wrong password; every
/// attempt on an existing account is recorded; a success notifies the customer.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "customers",
    request_body = Credentials,
    responses(
        (status = 200, description = "session created", body = SessionCreated),
        (status = 401, description = "wrong e-mail or password, or logins to the account paused (one answer for all)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "logins from this IP address are blocked (same answer for every account); see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn create_session(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, Problem> {
    match login(&state, &client, body).await? {
        LoginResult::Created(created) => Ok(Json(created).into_response()),
        LoginResult::IpBlocked { retry_after_secs } => Ok(login_protection::ip_blocked(retry_after_secs)),
    }
}

/// What a password login came to when it did not fail with a problem.
pub enum LoginResult {
    Created(SessionCreated),
    /// The client's address is blocked (429 with `Retry-After` in the API).
    IpBlocked {
        retry_after_secs: i64,
    },
}

/// The customer login behind `POST /v1/sessions` and the web console's log-in form: one path, one set of
/// protections.
pub async fn login(state: &AppState, client: &ClientInfo, body: Credentials) -> Result<LoginResult, Problem> {
    let password = SecretString::from(body.password);
    let now = now_ms();
    // Before any lookup or hashing: the answer depends on the address only, and costs no argon2 time.
    if let Some(retry_after_secs) = login_protection::ip_refusal(state, client, now).await? {
        return Ok(LoginResult::IpBlocked { retry_after_secs });
    }
    // Malformed e-mails and out-of-range passwords cannot match any account: same answer as a wrong
    // password, still after a full verification, so the answer says nothing about which part was wrong.
    let normalized = normalize_email(&body.email);
    let account_key = login_protection::account_key(normalized.as_deref().unwrap_or(body.email.as_str()));
    let customer = match &normalized {
        Ok(email) => state.store.customer_by_email(email).await?,
        Err(_) => None,
    };
    // Unknown e-mails are locked like real accounts (same queries, same answers: no enumeration).
    let locked = state.store.login_account_locked_until(&account_key, now).await?.is_some();
    // A locked account's password is not checked (the lock is no guessing oracle), but the dummy
    // verification keeps the time the same as for any other failure.
    let phc = match &customer {
        Some(c) if !locked => c.password_hash.clone(),
        _ => dummy_hash().to_string(),
    };
    let verified = verify_password(password, phc).await?;
    let attempt = LoginAttempt {
        id: uuid::Uuid::now_v7().to_string(),
        customer_id: customer.as_ref().map(|c| c.id.clone()),
        account_key,
        ip: client.ip_text(),
        user_agent: client.user_agent.clone(),
        at_ms: now,
    };
    let customer = match customer {
        Some(c) if verified && !locked => c,
        customer => {
            let outcome = if locked { LoginOutcome::Locked } else { LoginOutcome::WrongPassword };
            let limits = state.config.login_protection.limits();
            let lock_notice = |until_ms| {
                customer
                    .as_ref()
                    .map(|c| login_protection::lock_notice(&c.id, &c.email, &attempt.id, client, now, until_ms))
            };
            let effects = state.store.record_login_failure(&attempt, outcome, &limits, lock_notice).await?;
            if let Some(until_ms) = effects.account_locked_until_ms {
                tracing::warn!(customer_id = ?attempt.customer_id, ip = %attempt.ip, until_ms, "customer logins paused after repeated wrong passwords");
            }
            match effects.ip_blocked {
                Some((IpBlockReason::Accounts, until_ms)) => tracing::error!(
                    ip = %attempt.ip, accounts = effects.ip_accounts, failures = effects.ip_failures, until_ms,
                    "LOGIN ATTACK: many accounts tried from one IP; the IP is blocked (ops event login_attack)"
                ),
                Some((IpBlockReason::Failures, until_ms)) => tracing::warn!(
                    ip = %attempt.ip, failures = effects.ip_failures, until_ms,
                    "too many failed logins from one IP; the IP is blocked"
                ),
                None => {}
            }
            return Err(login_failed());
        }
    };
    let mut raw = [0u8; SESSION_TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = hex::encode(raw);
    let session = SessionRow {
        customer_id: customer.id.clone(),
        auth_level: AuthLevel::Password as i64,
        created_at_ms: now,
        expires_at_ms: now.saturating_add(SESSION_TTL_MS),
    };
    let notice = login_protection::login_notice(&customer.id, &customer.email, &attempt.id, client, now);
    let previous = match state.store.record_login_success(&attempt, &token_hash(&token), &session, &notice).await {
        Ok(previous) => previous,
        // Locked or blocked between the check and now: the same answers as if it had been seen first.
        Err(StoreError::Conflict(_)) => return Err(login_failed()),
        Err(e) => return Err(e.into()),
    };
    let created = SessionCreated {
        token,
        expires_at_ms: session.expires_at_ms,
        previous_login: previous.map(login_protection::LoginView::from),
    };
    Ok(LoginResult::Created(created))
}

/// The authenticated customer behind a valid, unexpired bearer token.
#[derive(Clone, Debug)]
pub struct Customer {
    pub id: String,
    /// The effective level of this request: [`AuthLevel::StepUp`] while the step-up window is open,
    /// otherwise the session's stored level.
    pub auth_level: AuthLevel,
    pub session_expires_at_ms: i64,
    /// End of the step-up window (0 = never stepped up); meaningful only while in the future.
    pub stepped_up_until_ms: i64,
    /// Names the session row so that step-up can raise this very session.
    pub(crate) session: SessionKey,
}

/// The sha256 of the bearer token, which keys the session row. Not usable as a token, but still kept
/// out of Debug output and logs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SessionKey(pub(crate) String);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl Customer {
    /// 403 when the session is weaker than `level` (step-up needed).
    pub fn require(&self, level: AuthLevel) -> Result<(), Problem> {
        if self.auth_level >= level {
            Ok(())
        } else {
            Err(Problem::new(StatusCode::FORBIDDEN, "step-up-required", "stronger authentication required")
                .detail("prove a second factor first: POST /v1/sessions/step-up or /v1/mfa/webauthn/authenticate"))
        }
    }

    /// 403 unless a second factor was proven on this session within the last
    /// [`super::mfa::STEP_UP_TTL_MS`] (U4: changes need a fresh step-up). Handlers of changes call this.
    pub fn require_fresh_mfa(&self) -> Result<(), Problem> {
        self.require(AuthLevel::StepUp)
    }
}

impl FromRequestParts<AppState> for Customer {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Customer, Problem> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer token"))?;
        let value = value.to_str().map_err(|_| Problem::unauthorized("malformed Authorization header"))?;
        let (scheme, token) =
            value.split_once(' ').ok_or_else(|| Problem::unauthorized("malformed Authorization header"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Problem::unauthorized("malformed bearer token"));
        }
        Customer::from_token(state, token.trim()).await
    }
}

impl Customer {
    /// The customer behind a session token, however it was carried: the API's bearer header or the web
    /// console's session cookie ([`crate::web`]) — one lookup, one expiry and step-up rule for both.
    pub async fn from_token(state: &AppState, token: &str) -> Result<Customer, Problem> {
        if token.len() != SESSION_TOKEN_BYTES * 2 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Problem::unauthorized("malformed bearer token"));
        }
        // The lookup compares hashes, not the token: timing can reveal at most a prefix of a sha256,
        // which is no help in forging a token.
        let key = token_hash(&token.to_ascii_lowercase());
        let row = state
            .store
            .session_with_step_up(&key)
            .await?
            .ok_or_else(|| Problem::unauthorized("unknown or expired session"))?;
        let session = row.session;
        let now = now_ms();
        if session.expires_at_ms <= now {
            return Err(Problem::unauthorized("unknown or expired session"));
        }
        let stored = AuthLevel::from_stored(session.auth_level)
            .ok_or_else(|| Problem::internal(format!("session with unknown auth_level {}", session.auth_level)))?;
        let auth_level = if row.stepped_up_until_ms > now { AuthLevel::StepUp } else { stored };
        Ok(Customer {
            id: session.customer_id,
            auth_level,
            session_expires_at_ms: session.expires_at_ms,
            stepped_up_until_ms: row.stepped_up_until_ms,
            session: SessionKey(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m3_email_validation() {
        assert_eq!(normalize_email("  Alice@Example.COM ").unwrap(), "alice@example.com");
        for bad in ["", "   ", "no-at", "@x", "x@", "a@b@c", "a b@c", "a@b\u{7}"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_email(&format!("{}@x.io", "a".repeat(250))).is_err());
    }

    #[test]
    fn m3_password_length_bounds() {
        assert!(check_password(&"x".repeat(11)).is_err());
        assert!(check_password(&"x".repeat(12)).is_ok());
        assert!(check_password(&"é".repeat(128)).is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn m3_passwords_hash_with_argon2id_owasp_params() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let phc = rt.block_on(hash_password(SecretString::from("correct horse battery"))).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(rt.block_on(verify_password(SecretString::from("correct horse battery"), phc.clone())).unwrap());
        assert!(!rt.block_on(verify_password(SecretString::from("correct horse batterx"), phc)).unwrap());
    }
}
