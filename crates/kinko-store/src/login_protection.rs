//! Login protection records (U10, U11, U12, M2): the login history, per-account lockout with back-off and
//! per-IP blocks.
//!
//! The server (`kinko_server::api::login_protection`) decides; this module keeps the state and does each
//! decision's writes in one transaction, so a failure, the lock it starts, the customer's notice about it
//! and the operators' alert commit together or not at all (fail closed: a failed write fails the login).
//!
//! Counting rules:
//! - Only failures count; successful logins never move a limit (many customers behind one address log in
//!   freely).
//! - An account (keyed by the sha256 of the e-mail tried, so unknown e-mails behave exactly like real
//!   ones) has `consecutive_failures`: it counts wrong passwords since the last success or the last lock
//!   start. At [`LoginLimits::account_failures_max`] the account locks for `account_lock_base_ms`,
//!   doubling with each lock since the last success up to `account_lock_max_ms`. Attempts while locked are
//!   recorded (history, IP counts) but do not extend the lock, so an attacker cannot keep a customer
//!   locked out for longer than the cap by hammering.
//! - An IP's failures (any account, known or not) in the sliding window `ip_window_ms` reaching
//!   `ip_failures_max`, or failures on `ip_accounts_max` distinct accounts in that window, block the IP
//!   for `ip_block_ms`; the second is credential stuffing and also writes an ops event (operator
//!   `system`, terminal = the IP) for the operators.

use sqlx::Row;

use crate::notices::NewNotice;
use crate::ops_requests::{NewOpsEvent, append_ops_event_tx};
use crate::{Result, Store, StoreError, Tx};

/// Bound on a stored user agent, in characters (longer ones are cut by the caller).
pub const USER_AGENT_LEN_MAX: usize = 256;
/// Bound on a stored IP text (an IPv6 address with zone fits).
pub const IP_LEN_MAX: usize = 64;
/// Bound on history rows returned at once.
pub const HISTORY_LIMIT_MAX: u32 = 100;
/// The ops event written when an IP tries many accounts.
pub const LOGIN_ATTACK_EVENT: &str = "login_attack";
/// The operator id of events kinko writes by itself.
pub const SYSTEM_OPERATOR: &str = "system";
/// The lock doubles at most this many times (any sane cap is reached long before).
const LOCK_DOUBLINGS_MAX: u32 = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    Success,
    WrongPassword,
    /// Refused because the account was locked; the password was not checked.
    Locked,
}

impl LoginOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginOutcome::Success => "success",
            LoginOutcome::WrongPassword => "wrong_password",
            LoginOutcome::Locked => "locked",
        }
    }

    pub fn parse(s: &str) -> Option<LoginOutcome> {
        [LoginOutcome::Success, LoginOutcome::WrongPassword, LoginOutcome::Locked].into_iter().find(|o| o.as_str() == s)
    }
}

/// The thresholds (from `[login_protection]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginLimits {
    pub account_failures_max: u32,
    pub account_lock_base_ms: i64,
    pub account_lock_max_ms: i64,
    pub ip_failures_max: u32,
    pub ip_accounts_max: u32,
    pub ip_window_ms: i64,
    pub ip_block_ms: i64,
}

impl LoginLimits {
    /// The length of lock number `lock_count + 1` since the last success: base · 2^lock_count, capped.
    pub fn lock_ms(&self, lock_count: i64) -> i64 {
        let doublings = u32::try_from(lock_count.max(0)).unwrap_or(u32::MAX).min(LOCK_DOUBLINGS_MAX);
        self.account_lock_base_ms.max(0).saturating_mul(1_i64 << doublings).min(self.account_lock_max_ms.max(0))
    }
}

/// One login attempt as recorded. `id` (a uuid) also names the event in notices (their dedupe key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginAttempt {
    pub id: String,
    /// The account, when the e-mail belongs to one.
    pub customer_id: Option<String>,
    /// sha256 hex of the normalised e-mail tried.
    pub account_key: String,
    pub ip: String,
    /// Already bounded to [`USER_AGENT_LEN_MAX`] and free of control characters.
    pub user_agent: String,
    pub at_ms: i64,
}

/// A login history entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRecord {
    pub at_ms: i64,
    pub ip: String,
    pub user_agent: String,
    pub outcome: LoginOutcome,
}

/// Why an IP was blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpBlockReason {
    /// Too many failures in the window.
    Failures,
    /// Failures on too many distinct accounts in the window (credential stuffing).
    Accounts,
}

impl IpBlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IpBlockReason::Failures => "failures",
            IpBlockReason::Accounts => "accounts",
        }
    }
}

/// What recording a failure started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailureEffects {
    /// The account's lock began with this failure and lasts until then.
    pub account_locked_until_ms: Option<i64>,
    /// The IP's block began with this failure, for this reason, until then.
    pub ip_blocked: Option<(IpBlockReason, i64)>,
    /// Failures from this IP in the window (this one included).
    pub ip_failures: i64,
    /// Distinct accounts tried (and failed) from this IP in the window.
    pub ip_accounts: i64,
}

fn record_from_row(r: &sqlx::any::AnyRow) -> Result<LoginRecord> {
    let outcome: String = r.try_get("outcome")?;
    Ok(LoginRecord {
        at_ms: r.try_get("at_ms")?,
        ip: r.try_get("ip")?,
        user_agent: r.try_get("user_agent")?,
        outcome: LoginOutcome::parse(&outcome)
            .ok_or_else(|| StoreError::Corrupt(format!("login_attempts.outcome: {outcome:?}")))?,
    })
}

async fn insert_attempt(tx: &mut Tx, attempt: &LoginAttempt, outcome: LoginOutcome) -> Result<()> {
    sqlx::query(
        "INSERT INTO login_attempts (id, customer_id, account_key, ip, user_agent, outcome, at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&attempt.id)
    .bind(attempt.customer_id.as_deref())
    .bind(&attempt.account_key)
    .bind(&attempt.ip)
    .bind(&attempt.user_agent)
    .bind(outcome.as_str())
    .bind(attempt.at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Until when `ip` is blocked by the per-IP rules, if it is at `now_ms`.
    pub async fn login_ip_blocked_until(&self, ip: &str, now_ms: i64) -> Result<Option<i64>> {
        let until: Option<i64> =
            sqlx::query_scalar("SELECT blocked_until_ms FROM login_ip_blocks WHERE ip = $1 AND blocked_until_ms > $2")
                .bind(ip)
                .bind(now_ms)
                .fetch_optional(self.pool())
                .await?;
        Ok(until)
    }

    /// Until when the account (named by its `account_key`, known or not) is locked, if it is at `now_ms`.
    pub async fn login_account_locked_until(&self, account_key: &str, now_ms: i64) -> Result<Option<i64>> {
        let until: Option<i64> = sqlx::query_scalar(
            "SELECT locked_until_ms FROM login_account_locks WHERE account_key = $1 AND locked_until_ms > $2",
        )
        .bind(account_key)
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        Ok(until)
    }

    /// Records a failed attempt (`outcome` wrong password or locked) and applies the limits, in one
    /// transaction. When this failure starts an account lock, `lock_notice(locked_until_ms)` is enqueued
    /// in the same transaction (the customer hears of the lock exactly when it starts); when it makes the
    /// IP credential stuffing, an ops event is written with it.
    pub async fn record_login_failure(
        &self,
        attempt: &LoginAttempt,
        outcome: LoginOutcome,
        limits: &LoginLimits,
        lock_notice: impl FnOnce(i64) -> Option<NewNotice>,
    ) -> Result<FailureEffects> {
        if outcome == LoginOutcome::Success {
            return Err(StoreError::Conflict("record_login_failure: outcome must be a failure".into()));
        }
        let now = attempt.at_ms;
        let mut effects = FailureEffects::default();
        let mut tx = self.begin_write().await?;
        insert_attempt(&mut tx, attempt, outcome).await?;

        // Unknown e-mails are counted and locked like real accounts: the same statements run either way.
        if outcome == LoginOutcome::WrongPassword {
            let key = &attempt.account_key;
            sqlx::query(
                "INSERT INTO login_account_locks (account_key, customer_id, consecutive_failures, lock_count, locked_until_ms, updated_at_ms) \
                 VALUES ($1, $2, 1, 0, 0, $3) ON CONFLICT (account_key) DO UPDATE SET \
                 consecutive_failures = login_account_locks.consecutive_failures + 1, updated_at_ms = $3",
            )
            .bind(key)
            .bind(attempt.customer_id.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(
                "SELECT consecutive_failures, lock_count, locked_until_ms FROM login_account_locks WHERE account_key = $1",
            )
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            let failures: i64 = row.try_get("consecutive_failures")?;
            let lock_count: i64 = row.try_get("lock_count")?;
            let locked_until: i64 = row.try_get("locked_until_ms")?;
            // A concurrent failure may have started the lock after the caller looked: leave it be.
            if failures >= i64::from(limits.account_failures_max) && locked_until <= now {
                let until = now.saturating_add(limits.lock_ms(lock_count));
                sqlx::query(
                    "UPDATE login_account_locks SET consecutive_failures = 0, lock_count = lock_count + 1, \
                     locked_until_ms = $1, updated_at_ms = $2 WHERE account_key = $3",
                )
                .bind(until)
                .bind(now)
                .bind(key)
                .execute(&mut *tx)
                .await?;
                if let Some(notice) = lock_notice(until) {
                    self.enqueue_notice_tx(&mut tx, &notice).await?;
                }
                effects.account_locked_until_ms = Some(until);
            }
        }

        let since = now.saturating_sub(limits.ip_window_ms);
        let row = sqlx::query(
            "SELECT COUNT(*) AS failures, COUNT(DISTINCT account_key) AS accounts FROM login_attempts \
             WHERE ip = $1 AND at_ms > $2 AND outcome <> $3",
        )
        .bind(&attempt.ip)
        .bind(since)
        .bind(LoginOutcome::Success.as_str())
        .fetch_one(&mut *tx)
        .await?;
        effects.ip_failures = row.try_get("failures")?;
        effects.ip_accounts = row.try_get("accounts")?;
        let reason = if effects.ip_accounts >= i64::from(limits.ip_accounts_max) {
            Some(IpBlockReason::Accounts)
        } else if effects.ip_failures >= i64::from(limits.ip_failures_max) {
            Some(IpBlockReason::Failures)
        } else {
            None
        };
        if let Some(reason) = reason {
            let until = now.saturating_add(limits.ip_block_ms);
            sqlx::query(
                "INSERT INTO login_ip_blocks (ip, blocked_until_ms, reason, created_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (ip) DO UPDATE SET blocked_until_ms = excluded.blocked_until_ms, \
                 reason = excluded.reason, created_at_ms = excluded.created_at_ms",
            )
            .bind(&attempt.ip)
            .bind(until)
            .bind(reason.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if reason == IpBlockReason::Accounts {
                let detail = serde_json::json!({
                    "reason": "many accounts tried from one IP",
                    "accounts": effects.ip_accounts,
                    "failures": effects.ip_failures,
                    "window_ms": limits.ip_window_ms,
                    "blocked_until_ms": until,
                });
                let event = NewOpsEvent {
                    operator_id: SYSTEM_OPERATOR.into(),
                    terminal: attempt.ip.clone(),
                    event: LOGIN_ATTACK_EVENT.into(),
                    request_id: None,
                    detail_json: detail.to_string(),
                    at_ms: now,
                };
                append_ops_event_tx(&mut tx, &event).await?;
            }
            effects.ip_blocked = Some((reason, until));
        }
        tx.commit().await?;
        Ok(effects)
    }

    /// Records a successful login: the session row, the attempt, the reset of the account's counters and
    /// the customer's login notice, in one transaction. Returns the previous successful login. Refuses with
    /// [`StoreError::Conflict`] (nothing written) when the account locked or the IP was blocked since the
    /// caller looked.
    pub async fn record_login_success(
        &self,
        attempt: &LoginAttempt,
        token_hash: &str,
        session: &crate::customers::SessionRow,
        notice: &NewNotice,
    ) -> Result<Option<LoginRecord>> {
        let customer_id = attempt
            .customer_id
            .as_deref()
            .ok_or_else(|| StoreError::Conflict("record_login_success: no customer".into()))?;
        let now = attempt.at_ms;
        let mut tx = self.begin_write().await?;
        let locked: Option<i64> = sqlx::query_scalar(
            "SELECT locked_until_ms FROM login_account_locks WHERE account_key = $1 AND locked_until_ms > $2",
        )
        .bind(&attempt.account_key)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let blocked: Option<i64> =
            sqlx::query_scalar("SELECT blocked_until_ms FROM login_ip_blocks WHERE ip = $1 AND blocked_until_ms > $2")
                .bind(&attempt.ip)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
        if locked.is_some() || blocked.is_some() {
            return Err(StoreError::Conflict("login refused: locked or blocked meanwhile".into()));
        }
        let previous = sqlx::query(
            "SELECT at_ms, ip, user_agent, outcome FROM login_attempts WHERE customer_id = $1 AND outcome = $2 \
             ORDER BY at_ms DESC, id DESC LIMIT 1",
        )
        .bind(customer_id)
        .bind(LoginOutcome::Success.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(record_from_row)
        .transpose()?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, customer_id, auth_level, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(&session.customer_id)
        .bind(session.auth_level)
        .bind(session.created_at_ms)
        .bind(session.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        insert_attempt(&mut tx, attempt, LoginOutcome::Success).await?;
        sqlx::query(
            "UPDATE login_account_locks SET consecutive_failures = 0, lock_count = 0, updated_at_ms = $1 \
             WHERE account_key = $2",
        )
        .bind(now)
        .bind(&attempt.account_key)
        .execute(&mut *tx)
        .await?;
        self.enqueue_notice_tx(&mut tx, notice).await?;
        tx.commit().await?;
        Ok(previous)
    }

    /// The customer's last `limit` login attempts (capped at [`HISTORY_LIMIT_MAX`]), newest first.
    pub async fn login_history(&self, customer_id: &str, limit: u32) -> Result<Vec<LoginRecord>> {
        let limit = i64::from(limit.clamp(1, HISTORY_LIMIT_MAX));
        let rows = sqlx::query(
            "SELECT at_ms, ip, user_agent, outcome FROM login_attempts WHERE customer_id = $1 \
             ORDER BY at_ms DESC, id DESC LIMIT $2",
        )
        .bind(customer_id)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(record_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u12_lock_doubles_up_to_the_cap() {
        let limits = LoginLimits {
            account_failures_max: 5,
            account_lock_base_ms: 60_000,
            account_lock_max_ms: 3_600_000,
            ip_failures_max: 20,
            ip_accounts_max: 10,
            ip_window_ms: 600_000,
            ip_block_ms: 3_600_000,
        };
        let locks: Vec<i64> = (0..9).map(|n| limits.lock_ms(n)).collect();
        assert_eq!(locks, [60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000, 3_600_000, 3_600_000]);
        assert_eq!(limits.lock_ms(i64::MAX), 3_600_000);
        assert_eq!(limits.lock_ms(-1), 60_000);
    }
}
