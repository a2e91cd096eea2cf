//! Risk score and second-channel confirmation of withdrawals (U2, U4, U8, U9).
//!
//! At `POST /v1/withdrawals`, [`decide_confirmation`] scores the request (`kinko_core::risk`: new IP or
//! user agent against the customer's logins before this session, configured network lists, unusual UTC
//! hours, velocity) and applies the rule: the amount reaches the asset's threshold, or the destination
//! never received one of the customer's settled withdrawals, or the score reaches the risk threshold →
//! the withdrawal waits in `awaiting_confirmation` with its amount held. A one-time token (256 random
//! bits; only its sha256 is stored; single use; expires after `ttl_ms`) goes out as a notice over the
//! second channel — e-mail through the outbox, and a webhook when one is configured — written in the same
//! transaction as the withdrawal. It is never in an API response, a log line or the session: a stolen
//! session alone cannot confirm.
//!
//! `POST /v1/withdrawal-confirmations` `{"token": "…"}` is anonymous (the link may be opened on another
//! device, where the customer has no session): the token is the credential. Unknown, used, expired and
//! malformed tokens get one and the same 422 naming `token`. Confirmation applies the policy decision
//! taken at creation (`approved`, or `pending_approval` with the operator request filed only now). The
//! pipeline's sweep and the endpoint both cancel an expired confirmation's withdrawal and release the hold.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kinko_core::Amount;
use kinko_core::risk::{self, ConfirmationInput, ConfirmationReason, RiskConfig, RiskInput};
use kinko_store::notices::NewNotice;
use kinko_store::withdrawal_confirmations::{CancelAwaiting, ConfirmOutcome, ConfirmationDraft};
use kinko_store::withdrawals::WithdrawalRow;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use super::auth::Customer;
use super::extract::{ApiJson, JsonBody};
use super::login_protection::{self, ClientInfo};
use super::problem::{Problem, ProblemBody};
use super::withdrawals::ValidRequest;
use crate::AppState;
use crate::clock::now_ms;
use crate::config::ConfigError;

/// Random bytes in a token (256 bits: guessing is hopeless, so no per-token attempt counter is needed).
pub const TOKEN_BYTES: usize = 32;
/// A token as sent: lower-case hex of [`TOKEN_BYTES`].
pub const TOKEN_TEXT_LEN: usize = 2 * TOKEN_BYTES;
/// The one line of the mail that carries the token (test harnesses and mail filters parse it).
pub const TOKEN_LINE_PREFIX: &str = "Confirmation token: ";
/// The notice kind (both channels); the e-mail's dedupe key is the withdrawal id, the webhook's
/// `<withdrawal id>:webhook`.
pub const NOTICE_KIND: &str = "withdrawal_confirmation";
/// The customer site's page that posts the token, under `public_base_url`.
pub const CONFIRM_PAGE_PATH: &str = "/confirm-withdrawal";
pub const TTL_MS_DEFAULT: i64 = 15 * 60 * 1000;
pub const TTL_MS_MIN: i64 = 60 * 1000;
pub const TTL_MS_MAX: i64 = 24 * 60 * 60 * 1000;
pub const RISK_THRESHOLD_DEFAULT: u32 = 50;
/// 1 ETH in wei: the default amount threshold for ETH.
pub const ETH_THRESHOLD_DEFAULT_WEI: u128 = 1_000_000_000_000_000_000;
/// Bound on earlier login sources read for the risk score.
pub const LOGIN_SOURCES_READ_MAX: usize = 200;
/// Bound on recent withdrawals read for the velocity signal.
pub const VELOCITY_READ_MAX: usize = 200;
pub const PUBLIC_BASE_URL_LEN_MAX: usize = 200;

/// `[withdrawal_confirmation]`: when a withdrawal needs the customer's confirmation over a second
/// channel (U4, U9). The new-destination rule has no switch: it always applies.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WithdrawalConfirmationConfig {
    /// How long a confirmation token is valid (default 15 minutes; 1 minute to 24 hours).
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: i64,
    /// A risk score at or above this demands confirmation (default 50).
    #[serde(default = "default_risk_threshold")]
    pub risk_threshold: u32,
    /// Per asset code, base units: an amount at or above demands confirmation. Default: ETH 1 ETH.
    #[serde(default = "default_amount_thresholds")]
    pub amount_thresholds: BTreeMap<String, Amount>,
    /// The customer site's base URL; with it the mail also carries `<base>/confirm-withdrawal?token=…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_base_url: Option<String>,
    /// `[withdrawal_confirmation.risk]`: the weights of the risk signals (`kinko_core::risk::RiskConfig`).
    #[serde(default)]
    pub risk: RiskConfig,
}

impl Default for WithdrawalConfirmationConfig {
    fn default() -> Self {
        WithdrawalConfirmationConfig {
            ttl_ms: default_ttl_ms(),
            risk_threshold: default_risk_threshold(),
            amount_thresholds: default_amount_thresholds(),
            public_base_url: None,
            risk: RiskConfig::default(),
        }
    }
}

fn default_ttl_ms() -> i64 {
    TTL_MS_DEFAULT
}
fn default_risk_threshold() -> u32 {
    RISK_THRESHOLD_DEFAULT
}
fn default_amount_thresholds() -> BTreeMap<String, Amount> {
    BTreeMap::from([("ETH".to_string(), Amount::from_base_units(ETH_THRESHOLD_DEFAULT_WEI))])
}

impl WithdrawalConfirmationConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| Err(ConfigError::Invalid { field, reason });
        if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&self.ttl_ms) {
            return invalid(
                "withdrawal_confirmation.ttl_ms",
                "must be from 60000 (1 minute) to 86400000 (24 hours)".into(),
            );
        }
        for (asset, threshold) in &self.amount_thresholds {
            if asset.parse::<kinko_core::AssetCode>().is_err() {
                return invalid("withdrawal_confirmation.amount_thresholds", format!("{asset:?} is not an asset code"));
            }
            if threshold.is_zero() {
                return invalid("withdrawal_confirmation.amount_thresholds", format!("{asset}: must be above zero"));
            }
        }
        if let Some(url) = &self.public_base_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= PUBLIC_BASE_URL_LEN_MAX
                && !url.chars().any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#');
            if !ok {
                return invalid(
                    "withdrawal_confirmation.public_base_url",
                    "must be an http(s) URL of at most 200 characters without spaces, query or fragment".into(),
                );
            }
        }
        self.risk.validate().map_err(|e| ConfigError::Invalid {
            field: "withdrawal_confirmation.risk",
            reason: format!("{}: {}", e.field, e.reason),
        })
    }

    /// The link the mail carries, when a base URL is configured.
    pub fn confirm_link(&self, token: &str) -> Option<String> {
        self.public_base_url
            .as_deref()
            .map(|base| format!("{}{CONFIRM_PAGE_PATH}?token={token}", base.trim_end_matches('/')))
    }
}

/// sha256 of the token text, lower-case hex: what the store keys confirmations by.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh token: [`TOKEN_BYTES`] from the OS-seeded CSPRNG, lower-case hex.
fn new_token() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(hex::encode(&bytes[..]))
}

/// The shape a token must have; anything else is answered like an unknown token.
fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_TEXT_LEN && token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether this withdrawal needs second-channel confirmation, and if so the confirmation to store with it
/// (token hash, expiry, reasons and the notices carrying the token). `None`: it proceeds as the policy
/// decides. Any failed lookup stops the withdrawal (fail closed).
pub async fn decide_confirmation(
    state: &AppState,
    customer: &Customer,
    client: &ClientInfo,
    req: &ValidRequest,
    withdrawal_id: &str,
    now_ms: i64,
) -> Result<Option<ConfirmationDraft>, Problem> {
    let cfg = &state.config.withdrawal_confirmation;
    let store = &state.store;
    let destination_known = store.settled_destination_known(&customer.id, &req.destination).await?;
    // "New device": not seen among the logins before this session's own, so that neither a stolen session
    // (used from elsewhere) nor a stolen password (its own login is the session's) looks familiar.
    let session_start_ms = store
        .session(&customer.session.0)
        .await?
        .map(|s| s.created_at_ms)
        .ok_or_else(|| Problem::unauthorized("session expired or revoked"))?;
    let known = store.login_sources_before(&customer.id, session_start_ms, LOGIN_SOURCES_READ_MAX).await?;
    let since_ms = now_ms.saturating_sub(cfg.risk.velocity.window_ms);
    let recent =
        store.customer_recent_withdrawals(&customer.id, req.asset.as_str(), since_ms, VELOCITY_READ_MAX).await?;
    let assessment = risk::assess(
        &cfg.risk,
        &RiskInput {
            now_ms,
            ip: client.ip,
            user_agent: &client.user_agent,
            known_sources: &known,
            asset: req.asset.as_str(),
            amount: req.amount,
            recent: &recent,
        },
    );
    let reasons = risk::confirmation_reasons(&ConfirmationInput {
        amount: req.amount,
        amount_threshold: cfg.amount_thresholds.get(req.asset.as_str()).copied(),
        destination_known,
        risk: &assessment,
        risk_threshold: cfg.risk_threshold,
    });
    if reasons.is_empty() {
        return Ok(None);
    }
    let email = store.customer_email(&customer.id).await?.ok_or_else(|| Problem::internal("customer has no e-mail"))?;
    let token = new_token();
    let expires_at_ms = now_ms.saturating_add(cfg.ttl_ms);
    let body = Zeroizing::new(mail_body(cfg, withdrawal_id, req, &reasons, client, &token, expires_at_ms));
    let subject = "Confirm your kinko withdrawal";
    let mut notices = vec![NewNotice::email(
        Some(customer.id.clone()),
        email,
        NOTICE_KIND,
        withdrawal_id,
        subject,
        body.as_str(),
        now_ms,
    )];
    if state.config.notices.webhook_url.is_some() {
        let payload = serde_json::json!({
            "withdrawal_id": withdrawal_id,
            "asset": req.asset.as_str(),
            "amount": req.amount.to_string(),
            "destination": req.destination,
            "token": token.as_str(),
            "confirm_url": cfg.confirm_link(&token),
            "expires_at_ms": expires_at_ms,
            "reasons": reasons,
        });
        notices.push(
            NewNotice::webhook(
                Some(customer.id.clone()),
                customer.id.clone(),
                NOTICE_KIND,
                format!("{withdrawal_id}:webhook"),
                subject,
                body.as_str(),
                now_ms,
            )
            .with_payload(payload),
        );
    }
    tracing::info!(
        withdrawal = %withdrawal_id,
        risk_score = assessment.score,
        rules = reasons.len(),
        "withdrawal awaits second-channel confirmation"
    );
    metrics::counter!("kinko_withdrawal_confirmations_requested_total").increment(1);
    Ok(Some(ConfirmationDraft {
        token_sha256: token_sha256(&token),
        expires_at_ms,
        reasons_json: serde_json::to_string(&reasons).map_err(Problem::internal)?,
        risk_score: assessment.score,
        notices,
    }))
}

fn reason_text(r: &ConfirmationReason) -> String {
    match r {
        ConfirmationReason::Amount { threshold, .. } => format!("the amount is at or above {threshold} base units"),
        ConfirmationReason::NewDestination => "the destination has not received a withdrawal of yours before".into(),
        ConfirmationReason::Risk { signals, .. } => {
            let names: Vec<&str> = signals
                .iter()
                .map(|s| match s {
                    risk::RiskReason::NewIp => "a new IP address",
                    risk::RiskReason::NewUserAgent => "a new browser or app",
                    risk::RiskReason::NetworkList { .. } => "a listed network",
                    risk::RiskReason::UnusualHours { .. } => "an unusual hour",
                    risk::RiskReason::Velocity { .. } => "many withdrawals in a short time",
                })
                .collect();
            format!("the request looks unusual ({})", names.join(", "))
        }
    }
}

/// The mail. Exactly one line starts with [`TOKEN_LINE_PREFIX`].
fn mail_body(
    cfg: &WithdrawalConfirmationConfig,
    withdrawal_id: &str,
    req: &ValidRequest,
    reasons: &[ConfirmationReason],
    client: &ClientInfo,
    token: &str,
    expires_at_ms: i64,
) -> String {
    let why: Vec<String> = reasons.iter().map(|r| format!("- {}", reason_text(r))).collect();
    let link = cfg
        .confirm_link(token)
        .map(|l| format!("Confirm it by opening this link:\n{l}\n\nor by sending the token below to POST /v1/withdrawal-confirmations.\n"))
        .unwrap_or_else(|| "Confirm it by sending the token below to POST /v1/withdrawal-confirmations.\n".into());
    let ua = if client.user_agent.is_empty() { "(none sent)" } else { client.user_agent.as_str() };
    format!(
        "A withdrawal from your kinko account waits for your confirmation.\n\n\
         Withdrawal: {withdrawal_id}\nAsset: {}\nAmount (base units): {}\nDestination: {}\n\
         Requested from IP address: {}\nUser agent: {ua}\nValid until (UTC): {}\n\n\
         Confirmation is needed because:\n{}\n\n{link}\n{TOKEN_LINE_PREFIX}{token}\n\n\
         If you did not request this withdrawal, do not confirm it: cancel it and change your password now. \
         Unconfirmed, it is cancelled when the token expires and the amount returns to your available balance.\n",
        req.asset,
        req.amount,
        req.destination,
        client.ip_text(),
        login_protection::utc_text(expires_at_ms),
        why.join("\n"),
    )
}

/// The customer cancels a withdrawal awaiting confirmation. `Some(row)` when it was cancelled here;
/// `None` when it was not awaiting confirmation (the caller's regular cancel path answers).
pub async fn cancel_awaiting(state: &AppState, id: &str, customer_id: &str) -> Result<Option<WithdrawalRow>, Problem> {
    match state.store.cancel_awaiting_withdrawal(id, customer_id, now_ms()).await? {
        CancelAwaiting::Cancelled(row) => Ok(Some(*row)),
        CancelAwaiting::NotFound | CancelAwaiting::NotAwaiting(_) => Ok(None),
    }
}

#[derive(Deserialize, ToSchema)]
pub struct ConfirmationRequest {
    /// The token from the confirmation notice (64 lower-case hex characters).
    pub token: String,
}

impl JsonBody for ConfirmationRequest {
    const FIELDS: &'static [&'static str] = &["token"];
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ConfirmationResult {
    pub withdrawal_id: String,
    /// `approved` (the pipeline takes it now) or `pending_approval` (operators approve next).
    #[schema(example = "approved")]
    pub status: String,
}

fn token_refused() -> Problem {
    Problem::field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "confirmation-token-invalid",
        "confirmation token not valid",
        "token",
        "is unknown, already used or expired",
    )
}

/// Confirm a withdrawal with the one-time token sent over the second channel (U4). No session: the
/// token is the credential.
#[utoipa::path(
    post, path = "/v1/withdrawal-confirmations", tag = "withdrawals",
    request_body = ConfirmationRequest,
    responses(
        (status = 200, description = "confirmed: the withdrawal proceeds as the policy decided", body = ConfirmationResult),
        (status = 400, description = "malformed JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "not application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "`token` unknown, already used or expired (one answer for all; an expired one cancels its withdrawal and releases the hold)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "requests from this address are blocked for now", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_withdrawal(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(body): ApiJson<ConfirmationRequest>,
) -> Result<Response, Problem> {
    let token = Zeroizing::new(body.token);
    let now = now_ms();
    // Addresses blocked for login abuse are refused here too, before any lookup.
    if let Some(retry_after_secs) = login_protection::ip_refusal(&state, &client, now).await? {
        return Ok(login_protection::ip_blocked(retry_after_secs));
    }
    if !well_formed(&token) {
        metrics::counter!("kinko_withdrawal_confirmations_total", "outcome" => "refused").increment(1);
        return Err(token_refused());
    }
    match state.store.confirm_withdrawal(&token_sha256(&token), now).await? {
        ConfirmOutcome::Confirmed { withdrawal_id, status } => {
            metrics::counter!("kinko_withdrawal_confirmations_total", "outcome" => "confirmed").increment(1);
            tracing::info!(withdrawal = %withdrawal_id, %status, "withdrawal confirmed over the second channel");
            Ok(Json(ConfirmationResult { withdrawal_id, status: status.as_str().to_string() }).into_response())
        }
        ConfirmOutcome::Refused(why) => {
            metrics::counter!("kinko_withdrawal_confirmations_total", "outcome" => "refused").increment(1);
            tracing::info!(reason = ?why, "withdrawal confirmation refused");
            Err(token_refused())
        }
    }
}

/// What an unused, unexpired token would confirm: shown on the confirmation page before the customer
/// confirms (U4: the customer confirms a withdrawal they can see, not a bare token).
#[derive(Clone, Debug)]
pub struct PendingConfirmation {
    pub withdrawal_id: String,
    pub asset: kinko_core::AssetCode,
    pub amount: Amount,
    pub destination: String,
    pub requested_at_ms: i64,
    pub expires_at_ms: i64,
}

/// Looks a token up without using it. `None` for every token that would be refused (malformed, unknown,
/// used, expired, or its withdrawal no longer awaiting confirmation), so the page tells them apart no more
/// than [`confirm_withdrawal`] does. Addresses blocked for login abuse learn nothing either.
pub async fn pending_confirmation(
    state: &AppState,
    client: &ClientInfo,
    token: &str,
) -> Result<Option<PendingConfirmation>, Problem> {
    let now = now_ms();
    if !well_formed(token) || login_protection::ip_refusal(state, client, now).await?.is_some() {
        return Ok(None);
    }
    let Some(c) = state.store.confirmation_by_token(&token_sha256(token)).await? else { return Ok(None) };
    if c.state != kinko_store::withdrawal_confirmations::STATE_AWAITING || now >= c.expires_at_ms {
        return Ok(None);
    }
    let Some(w) = state.store.withdrawal(&c.withdrawal_id).await? else { return Ok(None) };
    if w.status != kinko_core::withdrawal::WithdrawalStatus::AwaitingConfirmation {
        return Ok(None);
    }
    Ok(Some(PendingConfirmation {
        withdrawal_id: w.id,
        asset: w.asset,
        amount: w.amount,
        destination: w.destination,
        requested_at_ms: w.created_at_ms,
        expires_at_ms: c.expires_at_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u4_tokens_are_256_bit_hex_and_distinct() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), TOKEN_TEXT_LEN);
        assert!(well_formed(&a) && well_formed(&b));
        assert_ne!(*a, *b);
        assert_eq!(token_sha256(&a).len(), 64);
        assert_ne!(token_sha256(&a), *a);
        for bad in ["", "g".repeat(64).as_str(), &"A".repeat(64), &"a".repeat(63), &"a".repeat(65)] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn u4_mail_has_exactly_one_token_line_and_the_link() {
        let c = crate::Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x".into());
        let req = ValidRequest {
            asset: "ETH".parse().unwrap(),
            chain: "eth",
            chain_id: kinko_core::ChainId(1),
            amount: Amount::from_base_units(5),
            destination: "0xabc".into(),
        };
        let client = ClientInfo { ip: Some("192.0.2.1".parse().unwrap()), user_agent: "ua".into() };
        let mut cfg = c.withdrawal_confirmation.clone();
        cfg.public_base_url = Some("https://bank.example/".into());
        let token = "ab".repeat(32);
        let body = mail_body(&cfg, "w_1", &req, &[ConfirmationReason::NewDestination], &client, &token, 0);
        let lines: Vec<&str> = body.lines().filter(|l| l.starts_with(TOKEN_LINE_PREFIX)).collect();
        assert_eq!(lines, [format!("{TOKEN_LINE_PREFIX}{token}")]);
        assert!(body.contains(&format!("https://bank.example/confirm-withdrawal?token={token}")), "{body}");
        assert!(body.contains("Withdrawal: w_1"));
        cfg.public_base_url = None;
        let body = mail_body(&cfg, "w_1", &req, &[ConfirmationReason::NewDestination], &client, &token, 0);
        assert!(!body.contains("confirm-withdrawal?"));
        assert_eq!(body.matches(&token).count(), 1);
    }

    #[test]
    fn u4_config_defaults_and_validation() {
        let d = WithdrawalConfirmationConfig::default();
        d.validate().unwrap();
        assert_eq!(d.ttl_ms, 15 * 60 * 1000);
        assert_eq!(d.amount_thresholds["ETH"], Amount::from_base_units(ETH_THRESHOLD_DEFAULT_WEI));
        let field = |c: WithdrawalConfirmationConfig| match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(WithdrawalConfirmationConfig { ttl_ms: 0, ..d.clone() }), "withdrawal_confirmation.ttl_ms");
        assert_eq!(
            field(WithdrawalConfirmationConfig { public_base_url: Some("ftp://x".into()), ..d.clone() }),
            "withdrawal_confirmation.public_base_url"
        );
        let mut zero = d.clone();
        zero.amount_thresholds.insert("ETH".into(), Amount::ZERO);
        assert_eq!(field(zero), "withdrawal_confirmation.amount_thresholds");
        let mut r = d.clone();
        r.risk.velocity.count_max = 0;
        assert_eq!(field(r), "withdrawal_confirmation.risk");
        let parsed: Result<WithdrawalConfirmationConfig, _> = toml::from_str("ttl_ms = 60000\nrisk_treshold = 1\n");
        assert!(parsed.is_err(), "unknown keys are refused");
        let parsed: WithdrawalConfirmationConfig = toml::from_str(
            "ttl_ms = 60000\n[amount_thresholds]\nETH = \"5\"\n[risk]\nnew_ip_weight = 10\n\
             [[risk.network_lists]]\nname = \"tor-exits\"\nweight = 80\ncidrs = [\"203.0.113.0/24\"]\n",
        )
        .unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.amount_thresholds["ETH"], Amount::from_base_units(5));
    }
}
