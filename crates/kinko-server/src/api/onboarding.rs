//! Onboarding (U1, M3): e-mail verification at registration, the customer's KYC submission, the operators'
//! review and decision, and the gate that keeps money in an account until the identity is verified.
//!
//! - **Registration** (`POST /v1/customers`, [`register`]) writes the customer, the onboarding row, a
//!   verification token (sha256 only) and the `email_verification` notice carrying the token in one
//!   transaction: a registration that committed always mailed its token.
//! - **Verification** (`POST /v1/email-verifications`) is anonymous: whoever holds the token proved the
//!   mailbox. Single use, expiring; unknown, used and expired tokens get one 422 naming `token`.
//! - **KYC** (`POST /v1/kyc`) needs a verified e-mail; documents are opaque references.
//! - **Operators** work the queue: a signing operator takes a case for review (examines the documents in
//!   the custodian's document system), an operations manager decides it with a reason. The two roles are
//!   exclusive (O3), so the reviewer never decides their own review, and the core checks it again. Every
//!   action writes an ops event; the decision notifies the customer, in the same transaction.
//! - **Gate** ([`require_kyc_verified`]): withdrawals and internal transfers need `verified`; deposit
//!   addresses and crediting never look at it.
//!
//! The customer never sees the operators' reason: a rejection for suspected money laundering must not
//! tip the customer off, so the notice and `GET /v1/kyc` only say rejected and that they may resubmit.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kinko_core::onboarding::{self as core, KycDocument, KycError, KycState};
use kinko_core::operators::Role;
use kinko_store::StoreError;
use kinko_store::customers::CustomerRow;
use kinko_store::notices::NewNotice;
use kinko_store::onboarding::{AutoVerify, KycDecision, KycSubmission, NewEmailToken, TokenIssue};
use kinko_store::ops_requests::NewOpsEvent;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Customer, token_hash};
use super::extract::{ApiJson, JsonBody};
use super::ops_auth::{Operator, OpsJson};
use super::ops_requests::{forbidden_rule, require_endpoint};
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::clock::now_ms;

/// Notice kinds.
pub const NOTICE_EMAIL_VERIFICATION: &str = "email_verification";
pub const NOTICE_KYC_DECISION: &str = "kyc_decision";
/// The line of the verification mail that carries the token, before the token.
pub const TOKEN_LINE_PREFIX: &str = "Verification token: ";
/// The actor recorded for dev-mode automatic verification (never an operator id: those are registered).
pub const DEV_AUTO_ACTOR: &str = "dev-auto";
pub const EMAIL_TOKEN_BYTES: usize = 32;
/// Bounds on `[onboarding] email_token_ttl_secs`.
pub const EMAIL_TOKEN_TTL_SECS_MIN: u64 = 1;
pub const EMAIL_TOKEN_TTL_SECS_MAX: u64 = 7 * 24 * 3_600;
/// Default page of the operators' KYC queue.
pub const KYC_PAGE_DEFAULT: u32 = 100;

/// `[onboarding]`: e-mail verification and KYC (U1, M3).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OnboardingConfig {
    /// DEV ONLY: registration marks the e-mail and the identity verified at once (recorded as decided by
    /// `dev-auto`), so the quick start and the end-to-end harness can withdraw without an operator. Off
    /// by default; `kinko dev` turns it on; a loud warning at start whenever it is on.
    #[serde(default)]
    pub dev_auto_verify: bool,
    /// How long a verification token works. Default 86 400 (24 hours); 1 to 604 800.
    #[serde(default = "default_email_token_ttl_secs")]
    pub email_token_ttl_secs: u64,
}

impl Default for OnboardingConfig {
    fn default() -> Self {
        OnboardingConfig { dev_auto_verify: false, email_token_ttl_secs: default_email_token_ttl_secs() }
    }
}

fn default_email_token_ttl_secs() -> u64 {
    u64::try_from(core::EMAIL_TOKEN_TTL_MS / 1000).unwrap_or(86_400)
}

impl OnboardingConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if !(EMAIL_TOKEN_TTL_SECS_MIN..=EMAIL_TOKEN_TTL_SECS_MAX).contains(&self.email_token_ttl_secs) {
            return Err(crate::config::ConfigError::Invalid {
                field: "onboarding.email_token_ttl_secs",
                reason: "must be between 1 and 604800 (7 days)".into(),
            });
        }
        Ok(())
    }

    fn token_ttl_ms(&self) -> i64 {
        i64::try_from(self.email_token_ttl_secs.clamp(EMAIL_TOKEN_TTL_SECS_MIN, EMAIL_TOKEN_TTL_SECS_MAX))
            .map_or(core::EMAIL_TOKEN_TTL_MS, |s| s * 1000)
    }
}

/// The start-up warning when `[onboarding] dev_auto_verify` is on, on stderr like the dev-signer warning and
/// in the log (called when the router is built, so `kinko serve` and `kinko dev` both show it).
pub fn warn_if_dev_auto_verify(config: &crate::Config) {
    if let Some(banner) = dev_auto_verify_banner(config) {
        eprintln!("\n{banner}");
        tracing::warn!(
            "DEV MODE: [onboarding] dev_auto_verify is on: every new customer is marked e-mail- and KYC-verified \
             without any check (U1). Never with real customers."
        );
    }
}

/// The stderr banner of [`warn_if_dev_auto_verify`], or `None` when the setting is off.
pub fn dev_auto_verify_banner(config: &crate::Config) -> Option<&'static str> {
    config.onboarding.dev_auto_verify.then_some(
        "!!! WARNING: DEV MODE. [onboarding] dev_auto_verify is on: every new customer is verified (e-mail and\n\
         !!! KYC) automatically, without any identity check. Never with real customers.\n",
    )
}

fn new_token() -> String {
    let mut raw = [0u8; EMAIL_TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

fn verification_notice(customer_id: &str, email: &str, token: &str, hash: &str, ttl_ms: i64, now: i64) -> NewNotice {
    let hours = ttl_ms / 3_600_000;
    let validity = if hours >= 1 { format!("{hours} hours") } else { format!("{} seconds", ttl_ms / 1000) };
    let body = format!(
        "Please confirm this e-mail address for your kinko account.\n\n\
         Send this one-time token to kinko (POST /v1/email-verifications); it works once, for {validity}:\n\n\
         {TOKEN_LINE_PREFIX}{token}\n\n\
         If you did not register, ignore this mail: nothing happens without the token.\n"
    );
    NewNotice::email(
        Some(customer_id.to_string()),
        email,
        NOTICE_EMAIL_VERIFICATION,
        hash,
        "Confirm your e-mail address",
        body,
        now,
    )
}

/// Registration's store write (called by `POST /v1/customers`): the customer plus, in the same
/// transaction, either the verification token and its mail or — `[onboarding] dev_auto_verify` — the
/// dev-mode verification. A taken e-mail is `StoreError::Conflict`, as from `insert_customer`.
pub async fn register(state: &AppState, customer: &CustomerRow) -> Result<(), StoreError> {
    let now = customer.created_at_ms;
    if state.config.onboarding.dev_auto_verify {
        let auto = AutoVerify { actor: DEV_AUTO_ACTOR.into(), reason: "[onboarding] dev_auto_verify".into() };
        return state.store.register_customer(customer, None, None, Some(&auto)).await;
    }
    let ttl_ms = state.config.onboarding.token_ttl_ms();
    let token = new_token();
    let hash = token_hash(&token);
    let notice = verification_notice(&customer.id, &customer.email, &token, &hash, ttl_ms, now);
    let row = NewEmailToken { token_hash: hash, created_at_ms: now, expires_at_ms: now.saturating_add(ttl_ms) };
    state.store.register_customer(customer, Some(&row), Some(&notice), None).await
}

/// The withdrawal and internal-transfer gate (U1): 403 unless the customer's KYC state is `verified`.
pub async fn require_kyc_verified(state: &AppState, customer_id: &str) -> Result<(), Problem> {
    let kyc = state.store.customer_kyc_state(customer_id).await?;
    if kyc.may_move_funds() {
        return Ok(());
    }
    Err(Problem::new(StatusCode::FORBIDDEN, "kyc-required", "identity verification required").detail(format!(
        "KYC state is {kyc}: withdrawals and internal transfers need a verified identity (U1); verify the \
         e-mail address, then submit documents with POST /v1/kyc. Deposits stay open."
    )))
}

#[derive(Deserialize, ToSchema)]
pub struct TokenBody {
    /// The token from the verification mail (64 hex characters).
    pub token: String,
}

impl JsonBody for TokenBody {
    const FIELDS: &'static [&'static str] = &["token"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EmailVerified {
    pub email_verified: bool,
}

fn bad_token() -> Problem {
    Problem::validation(vec![FieldError::new("token", "is unknown, expired or already used")])
}

/// Verify the e-mail address with the token from the registration mail (M3, U1). Anonymous; single use.
#[utoipa::path(
    post, path = "/v1/email-verifications", tag = "onboarding",
    request_body = TokenBody,
    responses(
        (status = 200, description = "e-mail verified", body = EmailVerified),
        (status = 422, description = "token unknown, expired or already used (one answer for all)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn verify_email(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Json<EmailVerified>, Problem> {
    let token = body.token.trim().to_ascii_lowercase();
    if token.len() != EMAIL_TOKEN_BYTES * 2 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_token());
    }
    // Looked up by hash, like sessions: timing reveals at most a prefix of a sha256.
    match state.store.use_email_token(&token_hash(&token), now_ms()).await? {
        Ok(_) => Ok(Json(EmailVerified { email_verified: true })),
        Err(_) => Err(bad_token()),
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ResendAccepted {
    /// When the new token stops working. Older tokens no longer work.
    pub expires_at_ms: i64,
}

/// Send a new verification mail (M3). Rate-limited: one a minute, six a day (429 with Retry-After).
#[utoipa::path(
    post, path = "/v1/email-verifications/resend", tag = "onboarding", security(("bearer" = [])),
    responses(
        (status = 202, description = "a new token was mailed", body = ResendAccepted),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "the e-mail address is already verified", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "too many mails; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn resend_verification(State(state): State<AppState>, customer: Customer) -> Result<Response, Problem> {
    let now = now_ms();
    let email = state
        .store
        .customer_email(&customer.id)
        .await?
        .ok_or_else(|| Problem::unauthorized("unknown or expired session"))?;
    let ttl_ms = state.config.onboarding.token_ttl_ms();
    let token = new_token();
    let hash = token_hash(&token);
    let notice = verification_notice(&customer.id, &email, &token, &hash, ttl_ms, now);
    let expires_at_ms = now.saturating_add(ttl_ms);
    let row = NewEmailToken { token_hash: hash, created_at_ms: now, expires_at_ms };
    match state.store.issue_email_token(&customer.id, &row, &notice).await? {
        TokenIssue::Issued => Ok((StatusCode::ACCEPTED, Json(ResendAccepted { expires_at_ms })).into_response()),
        TokenIssue::AlreadyVerified => {
            Err(Problem::new(StatusCode::CONFLICT, "already-verified", "e-mail address already verified"))
        }
        TokenIssue::RateLimited { next_at_ms } => {
            let secs = ((next_at_ms - now + 999) / 1000).max(1).to_string();
            let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", "too many requests")
                .detail("a verification mail was sent recently; try again later");
            Ok(([(header::RETRY_AFTER, secs)], problem).into_response())
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct DocumentRef {
    /// `[a-z0-9_]`, e.g. `passport`, `residence_card`, `proof_of_address`.
    #[schema(example = "passport")]
    pub kind: String,
    /// Your reference to the document in the custodian's document system (kinko never stores documents).
    #[schema(example = "dms://2026/000123")]
    pub reference: String,
}

/// The request body of `POST /v1/kyc`.
#[derive(Deserialize, ToSchema)]
pub struct KycSubmissionRequest {
    /// 1 to 10 documents.
    pub documents: Vec<DocumentRef>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CustomerSubmissionView {
    pub id: String,
    /// `submitted`, `under_review`, `verified` or `rejected`.
    pub state: String,
    pub documents: Vec<DocumentRef>,
    pub submitted_at_ms: i64,
    /// When the operators decided; null before.
    pub decided_at_ms: Option<i64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct KycStatusView {
    pub email_verified: bool,
    pub email_verified_at_ms: Option<i64>,
    /// `not_submitted`, `submitted`, `under_review`, `verified` or `rejected`. Withdrawals and internal
    /// transfers need `verified`; after `rejected` you may submit again.
    pub state: String,
    /// The current (latest) submission.
    pub submission: Option<CustomerSubmissionView>,
}

fn documents_view(docs: &[KycDocument]) -> Vec<DocumentRef> {
    docs.iter().map(|d| DocumentRef { kind: d.kind.clone(), reference: d.reference.clone() }).collect()
}

fn customer_submission_view(s: &KycSubmission) -> CustomerSubmissionView {
    CustomerSubmissionView {
        id: s.id.clone(),
        state: s.state.as_str().to_string(),
        documents: documents_view(&s.documents),
        submitted_at_ms: s.submitted_at_ms,
        decided_at_ms: (s.decided_at_ms != 0).then_some(s.decided_at_ms),
    }
}

/// Parses the submission body, naming each fault by its JSON path (`documents[1].reference`).
fn parse_documents(body: &Value) -> Result<Vec<KycDocument>, Problem> {
    let one = |field: String, reason: &str| Problem::validation(vec![FieldError::new(field, reason)]);
    let Some(object) = body.as_object() else {
        return Err(one("body".into(), "must be a JSON object"));
    };
    if let Some(key) = object.keys().find(|k| k.as_str() != "documents") {
        return Err(one(key.chars().take(64).collect(), "is not a known field"));
    }
    let list = match object.get("documents") {
        None | Some(Value::Null) => return Err(one("documents".into(), "is required")),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(one("documents".into(), "must be a JSON array")),
    };
    if list.len() > core::DOCUMENTS_MAX {
        return Err(one("documents".into(), "must list at most 10 documents"));
    }
    let mut docs = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let Some(entry) = entry.as_object() else {
            return Err(one(format!("documents[{i}]"), "must be a JSON object"));
        };
        if let Some(key) = entry.keys().find(|k| !matches!(k.as_str(), "kind" | "reference")) {
            let key: String = key.chars().take(64).collect();
            return Err(one(format!("documents[{i}].{key}"), "is not a known field"));
        }
        let field = |name: &str| match entry.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(one(format!("documents[{i}].{name}"), "is required")),
            Some(_) => Err(one(format!("documents[{i}].{name}"), "must be a JSON string")),
        };
        docs.push(KycDocument { kind: field("kind")?, reference: field("reference")? });
    }
    core::validate_documents(&docs).map_err(|e| one(e.field_path(), e.reason))?;
    Ok(docs)
}

/// Submit identity documents for KYC (U1): needs a verified e-mail; allowed first and after a rejection.
#[utoipa::path(
    post, path = "/v1/kyc", tag = "onboarding", security(("bearer" = [])),
    request_body = KycSubmissionRequest,
    responses(
        (status = 201, description = "submitted for review", body = CustomerSubmissionView),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "the e-mail address is not verified yet", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "a submission is open or the identity is already verified", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid documents (the field names the entry)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn submit_kyc(
    State(state): State<AppState>,
    customer: Customer,
    OpsJson(body): OpsJson<Value>,
) -> Result<(StatusCode, Json<CustomerSubmissionView>), Problem> {
    let documents = parse_documents(&body)?;
    let id = format!("kyc_{}", uuid::Uuid::now_v7().simple());
    match state.store.submit_kyc(&customer.id, &id, &documents, now_ms()).await? {
        Ok(s) => Ok((StatusCode::CREATED, Json(customer_submission_view(&s)))),
        Err(KycError::EmailUnverified) => {
            Err(Problem::new(StatusCode::FORBIDDEN, "email-unverified", "e-mail address not verified")
                .detail("verify the e-mail address first (POST /v1/email-verifications with the mailed token)"))
        }
        Err(e) => {
            Err(Problem::new(StatusCode::CONFLICT, "kyc-state", "KYC state does not allow this").detail(e.to_string()))
        }
    }
}

/// Your e-mail verification and KYC state (U1, M3).
#[utoipa::path(
    get, path = "/v1/kyc", tag = "onboarding", security(("bearer" = [])),
    responses(
        (status = 200, body = KycStatusView),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn kyc_status(State(state): State<AppState>, customer: Customer) -> Result<Json<KycStatusView>, Problem> {
    let status = state.store.onboarding_status(&customer.id).await?;
    Ok(Json(KycStatusView {
        email_verified: status.email_verified(),
        email_verified_at_ms: status.email_verified().then_some(status.email_verified_at_ms),
        state: status.kyc_state().as_str().to_string(),
        submission: status.submission.as_ref().map(customer_submission_view),
    }))
}

// ---- operators ----

#[derive(Serialize, Deserialize, ToSchema)]
pub struct OpsSubmissionView {
    pub id: String,
    pub customer_id: String,
    pub state: String,
    pub documents: Vec<DocumentRef>,
    pub submitted_at_ms: i64,
    pub reviewer_id: Option<String>,
    pub review_started_at_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    /// The decider's reason (operators only; never shown to the customer).
    pub reason: Option<String>,
}

fn ops_view(s: &KycSubmission) -> OpsSubmissionView {
    let text = |v: &str| (!v.is_empty()).then(|| v.to_string());
    let time = |t: i64| (t != 0).then_some(t);
    OpsSubmissionView {
        id: s.id.clone(),
        customer_id: s.customer_id.clone(),
        state: s.state.as_str().to_string(),
        documents: documents_view(&s.documents),
        submitted_at_ms: s.submitted_at_ms,
        reviewer_id: text(&s.reviewer_id),
        review_started_at_ms: time(s.review_started_at_ms),
        decided_by: text(&s.decided_by),
        decided_at_ms: time(s.decided_at_ms),
        reason: text(&s.reason),
    }
}

#[derive(Deserialize, IntoParams)]
pub struct KycQuery {
    /// `submitted`, `under_review`, `verified` or `rejected`; all when absent.
    pub state: Option<String>,
    /// 1 to 500, default 100.
    pub limit: Option<u32>,
}

/// The KYC queue, oldest first (signing operators review, operations managers decide, log inspectors audit).
#[utoipa::path(
    get, path = "/v1/ops/kyc", tag = "operators", security(("bearer" = [])), params(KycQuery),
    responses(
        (status = 200, body = [OpsSubmissionView]),
        (status = 401, description = "no valid operator session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "role not allowed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "bad state or limit", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn ops_list(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<KycQuery>,
) -> Result<Json<Vec<OpsSubmissionView>>, Problem> {
    require_endpoint(&op, "get", "/v1/ops/kyc")?;
    let mut errors = Vec::new();
    let filter = match q.state.as_deref() {
        None => None,
        Some(s) => match KycState::parse(s).filter(|k| *k != KycState::NotSubmitted) {
            Some(k) => Some(k),
            None => {
                errors.push(FieldError::new("state", "must be submitted, under_review, verified or rejected"));
                None
            }
        },
    };
    let limit = q.limit.unwrap_or(KYC_PAGE_DEFAULT);
    if !(1..=kinko_store::onboarding::SUBMISSIONS_PAGE_MAX).contains(&limit) {
        errors.push(FieldError::new("limit", "must be an integer from 1 to 500"));
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let rows = state.store.kyc_submissions(filter, limit).await?;
    Ok(Json(rows.iter().map(ops_view).collect()))
}

fn event(op: &Operator, name: &str, s_id: &str, customer_id: &str, reason: Option<&str>, at_ms: i64) -> NewOpsEvent {
    NewOpsEvent {
        operator_id: op.id.clone(),
        terminal: op.terminal.clone(),
        event: name.into(),
        request_id: None,
        detail_json: serde_json::json!({"kyc_submission_id": s_id, "customer_id": customer_id, "reason": reason})
            .to_string(),
        at_ms,
    }
}

fn kyc_state_problem(e: KycError) -> Problem {
    match e {
        KycError::ReviewerDecides => forbidden_rule("four-eyes (U1)", &e.to_string()),
        other => {
            Problem::new(StatusCode::CONFLICT, "kyc-state", "KYC state does not allow this").detail(other.to_string())
        }
    }
}

/// Take a submitted case for review (signing operators). Writes `kyc_review_started`.
#[utoipa::path(
    post, path = "/v1/ops/kyc/{id}/review", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "now under review by the caller", body = OpsSubmissionView),
        (status = 403, description = "role not allowed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no such submission", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "not in state submitted", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn ops_review(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<OpsSubmissionView>, Problem> {
    require_endpoint(&op, "post", "/v1/ops/kyc/{id}/review")?;
    let current = state.store.kyc_submission(&id).await?.ok_or_else(Problem::not_found)?;
    let now = now_ms();
    let ev = event(&op, "kyc_review_started", &id, &current.customer_id, None, now);
    match state.store.take_kyc_for_review(&id, &op.id, now, &ev).await {
        Ok(Ok(s)) => Ok(Json(ops_view(&s))),
        Ok(Err(e)) => Err(kyc_state_problem(e)),
        Err(StoreError::NotFound) => Err(Problem::not_found()),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// `verified` or `rejected`.
    #[schema(example = "verified")]
    pub decision: String,
    /// Why (required; kept for operators and auditors, never shown to the customer).
    pub reason: String,
}

fn decision_notice(s: &KycSubmission, email: &str) -> NewNotice {
    let (subject, body) = if s.state == KycState::Verified {
        (
            "Your identity is verified",
            "Your identity verification is complete. Withdrawals and internal transfers are now available \
             (with your second factor and transaction password as usual).\n",
        )
    } else {
        (
            "Your identity verification could not be completed",
            "We could not verify your identity with the documents submitted. You may submit documents again \
             (POST /v1/kyc); until your identity is verified, withdrawals and internal transfers stay \
             unavailable. Deposits are not affected.\n",
        )
    };
    NewNotice::email(
        Some(s.customer_id.clone()),
        email,
        NOTICE_KYC_DECISION,
        s.id.as_str(),
        subject,
        body,
        s.decided_at_ms,
    )
    .with_payload(serde_json::json!({"kyc_submission_id": s.id, "state": s.state.as_str()}))
}

/// Decide a case under review (operations managers; never the reviewer). Writes `kyc_verified` or
/// `kyc_rejected` and notifies the customer, in one transaction.
#[utoipa::path(
    post, path = "/v1/ops/kyc/{id}/decision", tag = "operators", security(("bearer" = [])),
    params(("id" = String, Path)),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "decided", body = OpsSubmissionView),
        (status = 403, description = "role not allowed, or the caller reviewed this case", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "no such submission", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "not under review", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "bad decision or reason", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn ops_decide(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    OpsJson(body): OpsJson<DecisionBody>,
) -> Result<Json<OpsSubmissionView>, Problem> {
    require_endpoint(&op, "post", "/v1/ops/kyc/{id}/decision")?;
    let mut errors = Vec::new();
    let verified = match body.decision.as_str() {
        "verified" => Some(true),
        "rejected" => Some(false),
        _ => {
            errors.push(FieldError::new("decision", "must be verified or rejected"));
            None
        }
    };
    if let Err(reason) = core::validate_reason(&body.reason) {
        errors.push(FieldError::new("reason", reason));
    }
    let Some(verified) = verified.filter(|_| errors.is_empty()) else {
        return Err(Problem::validation(errors));
    };
    // Defence in depth: OPS_AUTHZ lists operations managers only, and one person holds one role (O3).
    if !op.roles.contains(&Role::OperationsManager) {
        return Err(forbidden_rule("role", "KYC decisions are for operations managers"));
    }
    let current = state.store.kyc_submission(&id).await?.ok_or_else(Problem::not_found)?;
    let now = now_ms();
    let name = if verified { "kyc_verified" } else { "kyc_rejected" };
    let ev = event(&op, name, &id, &current.customer_id, Some(&body.reason), now);
    let decision = KycDecision { decider_id: &op.id, verified, reason: &body.reason, at_ms: now };
    match state.store.decide_kyc(&id, &decision, &ev, decision_notice).await {
        Ok(Ok(s)) => Ok(Json(ops_view(&s))),
        Ok(Err(e)) => Err(kyc_state_problem(e)),
        Err(StoreError::NotFound) => Err(Problem::not_found()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u1_documents_body_names_each_fault() {
        let field = |v: Value| parse_documents(&v).unwrap_err().body.errors[0].field.clone();
        assert_eq!(field(serde_json::json!({})), "documents");
        assert_eq!(field(serde_json::json!({"documents": "x"})), "documents");
        assert_eq!(field(serde_json::json!({"documents": [], "x": 1})), "x");
        assert_eq!(field(serde_json::json!({"documents": [1]})), "documents[0]");
        assert_eq!(field(serde_json::json!({"documents": [{"kind": "passport"}]})), "documents[0].reference");
        assert_eq!(field(serde_json::json!({"documents": [{"kind": 1, "reference": "r"}]})), "documents[0].kind");
        assert_eq!(
            field(serde_json::json!({"documents": [{"kind": "passport", "reference": "r", "image": "…"}]})),
            "documents[0].image"
        );
        assert_eq!(field(serde_json::json!({"documents": []})), "documents");
        let ok = parse_documents(&serde_json::json!({"documents": [{"kind": "passport", "reference": "r1"}]}));
        assert_eq!(ok.unwrap().len(), 1);
    }

    #[test]
    fn m3_verification_mail_carries_the_token_on_its_own_line() {
        let n = verification_notice("c_1", "a@example.com", "ab12", "hash", core::EMAIL_TOKEN_TTL_MS, 5);
        assert!(n.body.lines().any(|l| l == "Verification token: ab12"), "{}", n.body);
        assert!(n.body.contains("24 hours"));
        assert!(n.validate().is_ok());
    }

    #[test]
    fn u1_onboarding_config_defaults_off_and_bounds_the_ttl() {
        let c = OnboardingConfig::default();
        assert!(!c.dev_auto_verify);
        assert_eq!(c.token_ttl_ms(), core::EMAIL_TOKEN_TTL_MS);
        assert!(c.validate().is_ok());
        assert!(OnboardingConfig { email_token_ttl_secs: 0, ..c.clone() }.validate().is_err());
        assert!(OnboardingConfig { email_token_ttl_secs: EMAIL_TOKEN_TTL_SECS_MAX + 1, ..c }.validate().is_err());
    }
}
