//! Login protection (U10, U11, U12, M2): login history with the previous login shown at login, a notice
//! for every login, per-account lockout with back-off, per-IP limits with a static block list, and an
//! alert when one IP tries many accounts.
//!
//! What the customer login ([`super::auth::create_session`]) does with it, in order:
//! 1. The client's IP (the TCP peer, axum `ConnectInfo`) in `[login_protection] blocked_cidrs`, or blocked
//!    by the per-IP rules → 429 problem+json with `Retry-After`, before any account lookup or password
//!    check: the answer depends on the IP only, never on the account (no enumeration), and a blocked IP
//!    cannot make kinko spend argon2 time. A correct password from a blocked IP is refused too.
//! 2. A locked account → the same 401 body as a wrong password, after a verification against the dummy
//!    hash (the real password is not checked: a lock is not a guessing oracle), so the time matches too.
//! 3. Otherwise the password is verified (the dummy hash for unknown e-mails). Failures are recorded and
//!    counted ([`kinko_store::login_protection`]); successes are recorded with the session, and the
//!    customer's login notice is enqueued in the same transaction.
//!
//! Only failures count toward any limit, so many customers behind one address are never limited by
//! each other's successful logins.
//!
//! A router served without `ConnectInfo` (in-process tests) sees every client as [`UNKNOWN_IP`]: all such
//! clients share one bucket, which is stricter, never looser, than per-address limits. `kinko serve`
//! always serves with `ConnectInfo`. Behind a reverse proxy every client would share the proxy's address;
//! kinko does not trust forwarded-for headers (they are client-controlled), so put the limits at the
//! proxy or serve kinko directly.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use kinko_core::policy::Cidr;
use kinko_store::login_protection::{HISTORY_LIMIT_MAX, LoginLimits, LoginRecord, USER_AGENT_LEN_MAX};
use kinko_store::notices::NewNotice;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::auth::Customer;
use super::problem::{FieldError, Problem, ProblemBody};
use crate::AppState;
use crate::config::ConfigError;

/// The client address recorded when the router is served without `ConnectInfo` (in-process tests).
pub const UNKNOWN_IP: &str = "unknown";
/// History entries returned when the request does not say.
pub const HISTORY_LIMIT_DEFAULT: u32 = 20;
/// Bound on `blocked_cidrs` entries.
pub const BLOCKED_CIDRS_MAX: usize = 10_000;
/// Notice kinds.
pub const LOGIN_NOTICE_KIND: &str = "login";
pub const LOCK_NOTICE_KIND: &str = "login_locked";
/// `Retry-After` for an address on the static block list (it does not expire by itself).
pub const STATIC_BLOCK_RETRY_AFTER_SECS: i64 = 24 * 3_600;

/// Bounds on the `[login_protection]` numbers.
const COUNT_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000_000;
const DURATION_MS_RANGE: std::ops::RangeInclusive<i64> = 1..=30 * 24 * 3_600_000;

/// `[login_protection]`: customer login limits (U10, U12). Defaults: 5 wrong passwords lock an account
/// for 1 minute, doubling per further lock up to 1 hour; 20 failures from one IP within 10 minutes, or
/// failures on 10 distinct accounts within 10 minutes (which also alerts operators), block the IP for 1
/// hour; no static block list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LoginProtectionConfig {
    /// Consecutive wrong passwords that lock an account.
    #[serde(default = "default_account_failures_max")]
    pub account_failures_max: u32,
    /// The first lock's length; each further lock since the last success doubles it.
    #[serde(default = "default_account_lock_base_ms")]
    pub account_lock_base_ms: i64,
    /// Cap on a lock's length.
    #[serde(default = "default_hour_ms")]
    pub account_lock_max_ms: i64,
    /// Failed logins from one IP within `ip_window_ms` that block it.
    #[serde(default = "default_ip_failures_max")]
    pub ip_failures_max: u32,
    /// Distinct accounts failed from one IP within `ip_window_ms` that block it at once and alert.
    #[serde(default = "default_ip_accounts_max")]
    pub ip_accounts_max: u32,
    /// The sliding window of the per-IP counts.
    #[serde(default = "default_ip_window_ms")]
    pub ip_window_ms: i64,
    /// How long a per-IP block lasts.
    #[serde(default = "default_hour_ms")]
    pub ip_block_ms: i64,
    /// Addresses refused outright, as CIDR ("203.0.113.0/24", "2001:db8::/32") or bare addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_cidrs: Vec<String>,
}

impl Default for LoginProtectionConfig {
    fn default() -> Self {
        LoginProtectionConfig {
            account_failures_max: default_account_failures_max(),
            account_lock_base_ms: default_account_lock_base_ms(),
            account_lock_max_ms: default_hour_ms(),
            ip_failures_max: default_ip_failures_max(),
            ip_accounts_max: default_ip_accounts_max(),
            ip_window_ms: default_ip_window_ms(),
            ip_block_ms: default_hour_ms(),
            blocked_cidrs: Vec::new(),
        }
    }
}

fn default_account_failures_max() -> u32 {
    5
}
fn default_account_lock_base_ms() -> i64 {
    60_000
}
fn default_hour_ms() -> i64 {
    3_600_000
}
fn default_ip_failures_max() -> u32 {
    20
}
fn default_ip_accounts_max() -> u32 {
    10
}
fn default_ip_window_ms() -> i64 {
    600_000
}

impl LoginProtectionConfig {
    /// Checks the section; errors name the field (`login_protection.blocked_cidrs[2]`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        for (field, value) in [
            ("login_protection.account_failures_max", self.account_failures_max),
            ("login_protection.ip_failures_max", self.ip_failures_max),
            ("login_protection.ip_accounts_max", self.ip_accounts_max),
        ] {
            if !COUNT_RANGE.contains(&value) {
                return invalid(field, "must be between 1 and 1000000".into());
            }
        }
        for (field, value) in [
            ("login_protection.account_lock_base_ms", self.account_lock_base_ms),
            ("login_protection.account_lock_max_ms", self.account_lock_max_ms),
            ("login_protection.ip_window_ms", self.ip_window_ms),
            ("login_protection.ip_block_ms", self.ip_block_ms),
        ] {
            if !DURATION_MS_RANGE.contains(&value) {
                return invalid(field, "must be between 1 and 2592000000 (30 days)".into());
            }
        }
        if self.account_lock_max_ms < self.account_lock_base_ms {
            return invalid("login_protection.account_lock_max_ms", "must be at least account_lock_base_ms".into());
        }
        self.blocked_networks()?;
        Ok(())
    }

    /// The parsed static block list.
    pub fn blocked_networks(&self) -> Result<Vec<Cidr>, ConfigError> {
        if self.blocked_cidrs.len() > BLOCKED_CIDRS_MAX {
            return Err(ConfigError::Invalid {
                field: "login_protection.blocked_cidrs",
                reason: format!("at most {BLOCKED_CIDRS_MAX} entries"),
            });
        }
        self.blocked_cidrs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.trim().parse::<Cidr>().map_err(|e| ConfigError::Invalid {
                    field: "login_protection.blocked_cidrs",
                    reason: format!("entry {i} ({text:?}) {e}"),
                })
            })
            .collect()
    }

    pub fn limits(&self) -> LoginLimits {
        LoginLimits {
            account_failures_max: self.account_failures_max,
            account_lock_base_ms: self.account_lock_base_ms,
            account_lock_max_ms: self.account_lock_max_ms,
            ip_failures_max: self.ip_failures_max,
            ip_accounts_max: self.ip_accounts_max,
            ip_window_ms: self.ip_window_ms,
            ip_block_ms: self.ip_block_ms,
        }
    }
}

/// Who is logging in from where: the TCP peer's address and the (bounded) user agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// `None` when the router is served without `ConnectInfo`.
    pub ip: Option<IpAddr>,
    /// Up to [`USER_AGENT_LEN_MAX`] characters, control characters removed; empty when absent.
    pub user_agent: String,
}

impl ClientInfo {
    /// The address as stored (IPv4-mapped IPv6 shown as IPv4), or [`UNKNOWN_IP`].
    pub fn ip_text(&self) -> String {
        self.ip.map_or_else(|| UNKNOWN_IP.to_string(), |ip| ip.to_canonical().to_string())
    }
}

/// Bounds a user agent: at most [`USER_AGENT_LEN_MAX`] characters, no control characters (it goes into
/// notice bodies and the history).
pub fn bounded_user_agent(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_control()).take(USER_AGENT_LEN_MAX).collect::<String>().trim().to_string()
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<ClientInfo, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .map(|v| bounded_user_agent(&String::from_utf8_lossy(v.as_bytes())))
            .unwrap_or_default();
        Ok(ClientInfo { ip, user_agent })
    }
}

/// The key an attempted e-mail is counted under: sha256 of its normalised form (of the trimmed,
/// lower-cased raw text when it is not a valid address), so unknown addresses are not kept in clear.
pub fn account_key(normalized_or_raw: &str) -> String {
    hex::encode(Sha256::digest(normalized_or_raw.trim().to_lowercase().as_bytes()))
}

/// The 429 of a blocked IP: the same for every account.
pub fn ip_blocked(retry_after_secs: i64) -> Response {
    let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "too-many-requests", "too many requests")
        .detail("logins from this address are blocked for now; try again later");
    let secs = retry_after_secs.max(1).to_string();
    ([(header::RETRY_AFTER, secs)], problem).into_response()
}

/// Whether `ip` is refused now, and for how many seconds: the static list first, then the store.
pub async fn ip_refusal(state: &AppState, client: &ClientInfo, now_ms: i64) -> Result<Option<i64>, Problem> {
    if let Some(ip) = client.ip {
        // Parsed at config load; a list that fails here was never accepted, so refuse (fail closed).
        let blocked = state.config.login_protection.blocked_networks().map_err(Problem::internal)?;
        if blocked.iter().any(|net| net.contains(ip)) {
            return Ok(Some(STATIC_BLOCK_RETRY_AFTER_SECS));
        }
    }
    let until = state.store.login_ip_blocked_until(&client.ip_text(), now_ms).await?;
    Ok(until.map(|until| (until.saturating_sub(now_ms) + 999) / 1000))
}

/// UTC time as RFC 3339 for notice bodies.
pub fn utc_text(at_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{at_ms} ms since 1970"))
}

fn user_agent_text(ua: &str) -> &str {
    if ua.is_empty() { "(none sent)" } else { ua }
}

/// The notice of a successful login (U10, U11), deduplicated on the attempt's id.
pub fn login_notice(customer_id: &str, email: &str, attempt_id: &str, client: &ClientInfo, at_ms: i64) -> NewNotice {
    let body = format!(
        "A new login to your kinko account.\n\nTime (UTC): {}\nIP address: {}\nUser agent: {}\n\n\
         If this was not you, change your password now and contact support.\n",
        utc_text(at_ms),
        client.ip_text(),
        user_agent_text(&client.user_agent),
    );
    NewNotice::email(
        Some(customer_id.to_string()),
        email,
        LOGIN_NOTICE_KIND,
        attempt_id,
        "New login to your kinko account",
        body,
        at_ms,
    )
    .with_payload(serde_json::json!({"at_ms": at_ms, "ip": client.ip_text(), "user_agent": client.user_agent}))
}

/// The notice that the account's logins are locked after repeated wrong passwords (U10, U12).
pub fn lock_notice(
    customer_id: &str,
    email: &str,
    attempt_id: &str,
    client: &ClientInfo,
    at_ms: i64,
    locked_until_ms: i64,
) -> NewNotice {
    let body = format!(
        "Logins to your kinko account are paused after repeated wrong passwords.\n\n\
         Last attempt (UTC): {}\nFrom IP address: {}\nUser agent: {}\nLogins are possible again after (UTC): {}\n\n\
         If this was not you, someone may be guessing your password: choose a strong, unique one after the \
         pause, and contact support.\n",
        utc_text(at_ms),
        client.ip_text(),
        user_agent_text(&client.user_agent),
        utc_text(locked_until_ms),
    );
    NewNotice::email(
        Some(customer_id.to_string()),
        email,
        LOCK_NOTICE_KIND,
        attempt_id,
        "Logins to your kinko account are paused",
        body,
        at_ms,
    )
    .with_payload(serde_json::json!({
        "at_ms": at_ms, "ip": client.ip_text(), "user_agent": client.user_agent, "locked_until_ms": locked_until_ms,
    }))
}

/// A login as shown to the customer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LoginView {
    pub at_ms: i64,
    /// The client's IP address as kinko saw it (`unknown` when it could not tell).
    pub ip: String,
    /// The client's `User-Agent` (at most 256 characters; empty when none was sent).
    pub user_agent: String,
}

impl From<LoginRecord> for LoginView {
    fn from(r: LoginRecord) -> Self {
        LoginView { at_ms: r.at_ms, ip: r.ip, user_agent: r.user_agent }
    }
}

/// A login attempt in the history.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct LoginHistoryEntry {
    pub at_ms: i64,
    pub ip: String,
    pub user_agent: String,
    /// `success`, `wrong_password`, or `locked` (refused while logins were paused).
    #[schema(example = "success")]
    pub outcome: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LoginHistory {
    /// Newest first.
    pub logins: Vec<LoginHistoryEntry>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// How many entries (1 to 100, default 20).
    pub limit: Option<String>,
}

/// The customer's recent login attempts, successful and failed (U11).
#[utoipa::path(
    get, path = "/v1/login-history", tag = "customers", security(("bearer" = [])),
    params(HistoryQuery),
    responses(
        (status = 200, body = LoginHistory),
        (status = 401, description = "no valid session", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "invalid limit", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn login_history(
    State(state): State<AppState>,
    customer: Customer,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<LoginHistory>, Problem> {
    let limit = match query.limit.as_deref() {
        None => HISTORY_LIMIT_DEFAULT,
        Some(text) => text.parse::<u32>().ok().filter(|n| (1..=HISTORY_LIMIT_MAX).contains(n)).ok_or_else(|| {
            Problem::validation(vec![FieldError::new("limit", "must be a whole number from 1 to 100")])
        })?,
    };
    let rows = state.store.login_history(&customer.id, limit).await?;
    Ok(Json(LoginHistory {
        logins: rows
            .into_iter()
            .map(|r| LoginHistoryEntry {
                at_ms: r.at_ms,
                outcome: r.outcome.as_str().to_string(),
                ip: r.ip,
                user_agent: r.user_agent,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u12_config_defaults_validate_and_bad_values_name_the_field() {
        let c = LoginProtectionConfig::default();
        c.validate().unwrap();
        assert_eq!(c.limits().account_failures_max, 5);
        let bad = LoginProtectionConfig { blocked_cidrs: vec!["10.0.0.1/8".into()], ..Default::default() };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.starts_with("login_protection.blocked_cidrs: entry 0"), "{e}");
        let bad = LoginProtectionConfig { ip_failures_max: 0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().starts_with("login_protection.ip_failures_max"));
        let bad = LoginProtectionConfig { account_lock_max_ms: 10, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().starts_with("login_protection.account_lock_max_ms"));
        let ok = LoginProtectionConfig { blocked_cidrs: vec!["203.0.113.0/24".into(), "2001:db8::1".into()], ..c };
        assert_eq!(ok.blocked_networks().unwrap().len(), 2);
    }

    #[test]
    fn u11_user_agent_bounded_and_without_controls() {
        assert_eq!(bounded_user_agent("curl/8.0\r\nX-Evil: 1"), "curl/8.0X-Evil: 1");
        assert_eq!(bounded_user_agent(&"a".repeat(1000)).chars().count(), USER_AGENT_LEN_MAX);
    }
}
