//! Operator accounts (M2, K8, K12): credentials and sessions of the people who approve, execute and
//! inspect, and the server's copy of the signed operator registry log. Roles are not stored here: they
//! come from replaying `operator_registry_log`, whose every change is verified at replay.
//!
//! Login throttling: after [`LOGIN_FAILURES_FREE`] consecutive failures the account locks for
//! [`LOCKOUT_BASE_MS`], doubling with every further failure up to [`LOCKOUT_MAX_MS`]; a success resets it.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::customers::is_unique_violation;
use crate::ops_requests::{NewOpsEvent, append_ops_event_tx};
use crate::{Result, Store, StoreError, Tx};

/// Consecutive failures tolerated before the account locks.
pub const LOGIN_FAILURES_FREE: i64 = 3;
/// First lockout; doubles per further failure.
pub const LOCKOUT_BASE_MS: i64 = 30_000;
/// Longest lockout (back-off cap).
pub const LOCKOUT_MAX_MS: i64 = 3_600_000;
/// Bound on registry log entries read at once (replay); a registry is people, not transactions.
pub const REGISTRY_LOG_MAX: i64 = 100_000;

/// How long an account is locked after its `failed_logins`-th consecutive failure (0 = not locked).
pub fn lockout_ms(failed_logins: i64) -> i64 {
    let over = failed_logins - LOGIN_FAILURES_FREE;
    if over < 0 {
        return 0;
    }
    // 2^over, capped: shifting past the cap's magnitude would overflow, so clamp the exponent first.
    let exponent = over.min(20) as u32;
    LOCKOUT_BASE_MS.saturating_mul(1_i64 << exponent).min(LOCKOUT_MAX_MS)
}

#[derive(Clone, PartialEq, Eq)]
pub struct OperatorAccountRow {
    pub id: String,
    pub password_hash: Option<String>,
    /// Base32 TOTP secret; a secret, never logged (see the Debug impl).
    pub totp_secret: Option<String>,
    pub totp_last_step: i64,
    pub enrolment_token_hash: Option<String>,
    pub enrolment_expires_at_ms: i64,
    pub failed_logins: i64,
    pub locked_until_ms: i64,
    pub last_login_at_ms: Option<i64>,
    pub last_login_terminal: Option<String>,
    pub created_at_ms: i64,
}

impl std::fmt::Debug for OperatorAccountRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorAccountRow")
            .field("id", &self.id)
            .field("password_hash", &self.password_hash.as_ref().map(|_| "<redacted>"))
            .field("totp_secret", &self.totp_secret.as_ref().map(|_| "<redacted>"))
            .field("totp_last_step", &self.totp_last_step)
            .field("enrolment_token_hash", &self.enrolment_token_hash.as_ref().map(|_| "<redacted>"))
            .field("enrolment_expires_at_ms", &self.enrolment_expires_at_ms)
            .field("failed_logins", &self.failed_logins)
            .field("locked_until_ms", &self.locked_until_ms)
            .field("last_login_at_ms", &self.last_login_at_ms)
            .field("last_login_terminal", &self.last_login_terminal)
            .field("created_at_ms", &self.created_at_ms)
            .finish()
    }
}

const ACCOUNT_COLUMNS: &str = "id, password_hash, totp_secret, totp_last_step, enrolment_token_hash, \
     enrolment_expires_at_ms, failed_logins, locked_until_ms, last_login_at_ms, last_login_terminal, created_at_ms";

fn account_from_row(r: &AnyRow) -> Result<OperatorAccountRow> {
    Ok(OperatorAccountRow {
        id: r.try_get("id")?,
        password_hash: r.try_get("password_hash")?,
        totp_secret: r.try_get("totp_secret")?,
        totp_last_step: r.try_get("totp_last_step")?,
        enrolment_token_hash: r.try_get("enrolment_token_hash")?,
        enrolment_expires_at_ms: r.try_get("enrolment_expires_at_ms")?,
        failed_logins: r.try_get("failed_logins")?,
        locked_until_ms: r.try_get("locked_until_ms")?,
        last_login_at_ms: r.try_get("last_login_at_ms")?,
        last_login_terminal: r.try_get("last_login_terminal")?,
        created_at_ms: r.try_get("created_at_ms")?,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorSessionRow {
    pub operator_id: String,
    pub terminal: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// One applied registry change as the server stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryLogRow {
    pub seq: i64,
    /// Lower-case hex of `RegistryChange::hash`.
    pub hash: String,
    pub change_json: String,
    /// JSON array of `{operator_id, signature_hex}`.
    pub approvals_json: String,
    pub applied_at_ms: i64,
}

/// The previous successful login, shown to the operator at the next one (so they notice a stranger's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PreviousLogin {
    pub at_ms: i64,
    pub terminal: String,
}

/// Creates the account of a newly registered operator with a one-time enrolment token (only its hash)
/// inside the caller's transaction. An existing account is `Conflict("operator")`.
pub async fn create_operator_account_tx(
    tx: &mut Tx,
    id: &str,
    enrolment_token_hash: &str,
    enrolment_expires_at_ms: i64,
    now_ms: i64,
) -> Result<()> {
    let res = sqlx::query(
        "INSERT INTO operators (id, password_hash, totp_secret, totp_last_step, enrolment_token_hash, \
         enrolment_expires_at_ms, failed_logins, locked_until_ms, created_at_ms) \
         VALUES ($1, NULL, NULL, 0, $2, $3, 0, 0, $4)",
    )
    .bind(id)
    .bind(enrolment_token_hash)
    .bind(enrolment_expires_at_ms)
    .bind(now_ms)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("operator".into())),
        Err(e) => Err(e.into()),
    }
}

/// Appends one applied change to the server's registry log inside the caller's transaction. The log
/// is append-only: a seq that is already there is `Conflict`, never an overwrite.
pub async fn append_registry_log_tx(tx: &mut Tx, row: &RegistryLogRow) -> Result<()> {
    let res = sqlx::query(
        "INSERT INTO operator_registry_log (seq, hash, change_json, approvals_json, applied_at_ms) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(row.seq)
    .bind(&row.hash)
    .bind(&row.change_json)
    .bind(&row.approvals_json)
    .bind(row.applied_at_ms)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => {
            Err(StoreError::Conflict(format!("registry log seq {} is already taken", row.seq)))
        }
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// Creates an operator account with an enrolment token in its own transaction.
    pub async fn create_operator_account(
        &self,
        id: &str,
        enrolment_token_hash: &str,
        enrolment_expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        create_operator_account_tx(&mut tx, id, enrolment_token_hash, enrolment_expires_at_ms, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn operator_account(&self, id: &str) -> Result<Option<OperatorAccountRow>> {
        let q = format!("SELECT {ACCOUNT_COLUMNS} FROM operators WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(account_from_row).transpose()
    }

    /// Sets the password hash and TOTP secret of an operator whose enrolment token hashes to
    /// `token_hash` and has not expired, and kills the token, with `event` in the same transaction.
    /// `NotFound` when no such live token exists (wrong operator, wrong or used token, expired).
    pub async fn enrol_operator(
        &self,
        id: &str,
        token_hash: &str,
        password_hash: &str,
        totp_secret: &str,
        event: &NewOpsEvent,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE operators SET password_hash = $1, totp_secret = $2, enrolment_token_hash = NULL, \
             totp_last_step = 0, failed_logins = 0, locked_until_ms = 0 \
             WHERE id = $3 AND enrolment_token_hash = $4 AND enrolment_expires_at_ms > $5",
        )
        .bind(password_hash)
        .bind(totp_secret)
        .bind(id)
        .bind(token_hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done != 1 {
            return Err(StoreError::NotFound);
        }
        // A re-enrolment (a new token issued) ends every session the old credentials opened.
        sqlx::query("DELETE FROM operator_sessions WHERE operator_id = $1").bind(id).execute(&mut *tx).await?;
        append_ops_event_tx(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Counts a failed login against an existing account and locks it with back-off ([`lockout_ms`]);
    /// writes `event` (also for unknown ids, where no account changes). Returns the new lock end.
    pub async fn operator_login_failed(&self, id: &str, event: &NewOpsEvent, now_ms: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT failed_logins FROM operators WHERE id = $1{}", self.for_update());
        let failed: Option<i64> = sqlx::query_scalar(crate::sql(q)).bind(id).fetch_optional(&mut *tx).await?;
        let mut locked_until_ms = 0;
        if let Some(failed) = failed {
            let failed = failed.saturating_add(1);
            let lock = lockout_ms(failed);
            locked_until_ms = if lock > 0 { now_ms.saturating_add(lock) } else { 0 };
            sqlx::query("UPDATE operators SET failed_logins = $1, locked_until_ms = $2 WHERE id = $3")
                .bind(failed)
                .bind(locked_until_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        append_ops_event_tx(&mut tx, event).await?;
        tx.commit().await?;
        Ok(locked_until_ms)
    }

    /// Records a successful login: consumes TOTP step `totp_step` (compare-and-set: a step at or below
    /// the last accepted one is `Conflict`, so a code works once), resets the failure count, stores the
    /// session and `event`, all in one transaction. Returns the login before this one.
    pub async fn operator_login_succeeded(
        &self,
        id: &str,
        totp_step: i64,
        token_hash: &str,
        session: &OperatorSessionRow,
        event: &NewOpsEvent,
    ) -> Result<Option<PreviousLogin>> {
        let mut tx = self.begin_write().await?;
        let q =
            format!("SELECT last_login_at_ms, last_login_terminal FROM operators WHERE id = $1{}", self.for_update());
        let Some(prev) = sqlx::query(crate::sql(q)).bind(id).fetch_optional(&mut *tx).await? else {
            return Err(StoreError::NotFound);
        };
        let prev_at: Option<i64> = prev.try_get("last_login_at_ms")?;
        let prev_terminal: Option<String> = prev.try_get("last_login_terminal")?;
        let done = sqlx::query(
            "UPDATE operators SET totp_last_step = $1, failed_logins = 0, locked_until_ms = 0, \
             last_login_at_ms = $2, last_login_terminal = $3 WHERE id = $4 AND totp_last_step < $5",
        )
        .bind(totp_step)
        .bind(session.created_at_ms)
        .bind(&session.terminal)
        .bind(id)
        .bind(totp_step)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if done != 1 {
            return Err(StoreError::Conflict("totp code already used".into()));
        }
        sqlx::query(
            "INSERT INTO operator_sessions (token_hash, operator_id, terminal, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(&session.operator_id)
        .bind(&session.terminal)
        .bind(session.created_at_ms)
        .bind(session.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        append_ops_event_tx(&mut tx, event).await?;
        tx.commit().await?;
        Ok(match (prev_at, prev_terminal) {
            (Some(at_ms), Some(terminal)) => Some(PreviousLogin { at_ms, terminal }),
            _ => None,
        })
    }

    /// The session whose token hashes to `token_hash`, expired or not; the caller checks expiry.
    pub async fn operator_session(&self, token_hash: &str) -> Result<Option<OperatorSessionRow>> {
        let row = sqlx::query(
            "SELECT operator_id, terminal, created_at_ms, expires_at_ms FROM operator_sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(OperatorSessionRow {
                operator_id: r.try_get("operator_id")?,
                terminal: r.try_get("terminal")?,
                created_at_ms: r.try_get("created_at_ms")?,
                expires_at_ms: r.try_get("expires_at_ms")?,
            })
        })
        .transpose()
    }

    /// Deletes sessions that expired at or before `now_ms`; returns how many.
    pub async fn expire_operator_sessions(&self, now_ms: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM operator_sessions WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    /// Appends one applied change to the registry log in its own transaction.
    pub async fn append_registry_log(&self, row: &RegistryLogRow) -> Result<()> {
        let mut tx = self.begin_write().await?;
        append_registry_log_tx(&mut tx, row).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The whole registry log in seq order (for replay).
    pub async fn registry_log(&self) -> Result<Vec<RegistryLogRow>> {
        let rows = sqlx::query(
            "SELECT seq, hash, change_json, approvals_json, applied_at_ms FROM operator_registry_log ORDER BY seq LIMIT $1",
        )
        .bind(REGISTRY_LOG_MAX)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RegistryLogRow {
                    seq: r.try_get("seq")?,
                    hash: r.try_get("hash")?,
                    change_json: r.try_get("change_json")?,
                    approvals_json: r.try_get("approvals_json")?,
                    applied_at_ms: r.try_get("applied_at_ms")?,
                })
            })
            .collect()
    }
}
