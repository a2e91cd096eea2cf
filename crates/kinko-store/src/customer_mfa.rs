//! Customer second factors (U2, U3), step-up (U4) and the transaction password (U9).
//!
//! - TOTP: a pending enrolment holds a fresh secret until the customer proves possession with a first
//!   code; confirming moves it to `customer_mfa` and replaces the recovery codes. `totp_last_step` only
//!   moves forward (compare-and-set), so a code is accepted once, also under concurrent requests.
//! - Recovery codes: sha256 hashes; a code is consumed by compare-and-set on `used_at_ms = 0`.
//! - Throttling: consecutive second-factor failures lock further attempts with back-off
//!   ([`mfa_lockout_ms`]); the transaction password has its own count ([`transaction_password_lockout_ms`]).
//! - Step-up: `sessions.stepped_up_until_ms`; the level decays by itself when the time passes.
//! - WebAuthn ceremony state is kept server-side per (session, ceremony), single-use and expiring.
//!
//! Time is passed in (`now_ms`); nothing here reads a clock.

use sqlx::Row;

use crate::customers::{SessionRow, is_unique_violation};
use crate::{Result, Store, StoreError};

/// Consecutive second-factor failures tolerated before further attempts lock.
pub const MFA_FAILURES_FREE: i64 = 5;
/// First second-factor lockout; doubles per further failure.
pub const MFA_LOCKOUT_BASE_MS: i64 = 60_000;
/// Longest second-factor lockout.
pub const MFA_LOCKOUT_MAX_MS: i64 = 3_600_000;
/// Consecutive wrong transaction passwords tolerated before it locks.
pub const TRANSACTION_PASSWORD_FAILURES_FREE: i64 = 5;
/// First transaction-password lockout; doubles per further failure.
pub const TRANSACTION_PASSWORD_LOCKOUT_BASE_MS: i64 = 15 * 60_000;
/// Longest transaction-password lockout.
pub const TRANSACTION_PASSWORD_LOCKOUT_MAX_MS: i64 = 24 * 3_600_000;
/// Bound on recovery codes read per customer (ten are issued at a time).
pub const RECOVERY_CODES_MAX: i64 = 32;
/// Bound on passkeys per customer.
pub const PASSKEYS_MAX: i64 = 16;

/// Exponential back-off: 0 while `failed <= free`, then `base * 2^(failed - free - 1)` capped at `max`.
fn backoff_ms(failed: i64, free: i64, base_ms: i64, max_ms: i64) -> i64 {
    let over = failed - free;
    if over <= 0 {
        return 0;
    }
    // Clamp the exponent first: shifting past the cap's magnitude would overflow.
    let exponent = (over - 1).min(30) as u32;
    base_ms.saturating_mul(1_i64 << exponent).min(max_ms)
}

/// How long second factors lock after the `failed`-th consecutive failure (0 = not locked).
pub fn mfa_lockout_ms(failed: i64) -> i64 {
    backoff_ms(failed, MFA_FAILURES_FREE, MFA_LOCKOUT_BASE_MS, MFA_LOCKOUT_MAX_MS)
}

/// How long the transaction password locks after the `failed`-th consecutive failure (0 = not locked).
pub fn transaction_password_lockout_ms(failed: i64) -> i64 {
    backoff_ms(
        failed,
        TRANSACTION_PASSWORD_FAILURES_FREE,
        TRANSACTION_PASSWORD_LOCKOUT_BASE_MS,
        TRANSACTION_PASSWORD_LOCKOUT_MAX_MS,
    )
}

/// A customer's second-factor record.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerMfaRow {
    pub customer_id: String,
    /// Base32 TOTP secret of the active factor; a secret, never logged (see the Debug impl).
    pub totp_secret: Option<String>,
    pub totp_last_step: i64,
    pub totp_activated_at_ms: i64,
    pub failed_attempts: i64,
    pub locked_until_ms: i64,
}

impl std::fmt::Debug for CustomerMfaRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerMfaRow")
            .field("customer_id", &self.customer_id)
            .field("totp_secret", &self.totp_secret.as_ref().map(|_| "<redacted>"))
            .field("totp_last_step", &self.totp_last_step)
            .field("totp_activated_at_ms", &self.totp_activated_at_ms)
            .field("failed_attempts", &self.failed_attempts)
            .field("locked_until_ms", &self.locked_until_ms)
            .finish()
    }
}

/// A pending TOTP enrolment.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpEnrolmentRow {
    pub id: String,
    pub customer_id: String,
    /// Base32; a secret.
    pub totp_secret: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for TotpEnrolmentRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrolmentRow")
            .field("id", &self.id)
            .field("customer_id", &self.customer_id)
            .field("totp_secret", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// A session as stored, with its step-up window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionWithStepUp {
    pub session: SessionRow,
    /// The session counts as stepped up while this is in the future; 0 = never stepped up.
    pub stepped_up_until_ms: i64,
}

#[derive(Clone, PartialEq, Eq)]
pub struct TransactionPasswordRow {
    pub customer_id: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub failed_attempts: i64,
    pub locked_until_ms: i64,
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for TransactionPasswordRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionPasswordRow")
            .field("customer_id", &self.customer_id)
            .field("password_hash", &"<redacted>")
            .field("failed_attempts", &self.failed_attempts)
            .field("locked_until_ms", &self.locked_until_ms)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyRow {
    /// The credential id, lower-case hex.
    pub credential_id: String,
    pub customer_id: String,
    pub passkey_json: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: i64,
}

impl Store {
    /// The customer's (id, e-mail, login password hash), for re-authentication and for checking that the
    /// transaction password differs from the login password.
    pub async fn customer_login_by_id(&self, customer_id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT email, password_hash FROM customers WHERE id = $1")
            .bind(customer_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok((r.try_get("email")?, r.try_get("password_hash")?))).transpose()
    }

    /// The session behind `token_hash` with its step-up window, expired or not; the caller checks expiry.
    pub async fn session_with_step_up(&self, token_hash: &str) -> Result<Option<SessionWithStepUp>> {
        let row = sqlx::query(
            "SELECT customer_id, auth_level, created_at_ms, expires_at_ms, stepped_up_until_ms \
             FROM sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(SessionWithStepUp {
                session: SessionRow {
                    customer_id: r.try_get("customer_id")?,
                    auth_level: r.try_get("auth_level")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    expires_at_ms: r.try_get("expires_at_ms")?,
                },
                stepped_up_until_ms: r.try_get("stepped_up_until_ms")?,
            })
        })
        .transpose()
    }

    /// Sets the session's step-up window (also used to end it early). `NotFound` when the session is
    /// unknown or expired at `now_ms`. The window never outlives the session.
    pub async fn set_session_stepped_up_until(&self, token_hash: &str, until_ms: i64, now_ms: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE sessions SET stepped_up_until_ms = CASE WHEN $1 < expires_at_ms THEN $1 ELSE expires_at_ms END \
             WHERE token_hash = $2 AND expires_at_ms > $3",
        )
        .bind(until_ms)
        .bind(token_hash)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::NotFound) }
    }

    pub async fn customer_mfa(&self, customer_id: &str) -> Result<Option<CustomerMfaRow>> {
        let row = sqlx::query(
            "SELECT customer_id, totp_secret, totp_last_step, totp_activated_at_ms, failed_attempts, locked_until_ms \
             FROM customer_mfa WHERE customer_id = $1",
        )
        .bind(customer_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(CustomerMfaRow {
                customer_id: r.try_get("customer_id")?,
                totp_secret: r.try_get("totp_secret")?,
                totp_last_step: r.try_get("totp_last_step")?,
                totp_activated_at_ms: r.try_get("totp_activated_at_ms")?,
                failed_attempts: r.try_get("failed_attempts")?,
                locked_until_ms: r.try_get("locked_until_ms")?,
            })
        })
        .transpose()
    }

    /// Counts a failed second-factor attempt and locks with back-off. Returns the lock end (0 = none).
    pub async fn mfa_failed(&self, customer_id: &str, now_ms: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT failed_attempts FROM customer_mfa WHERE customer_id = $1{}", self.for_update());
        let failed: Option<i64> = sqlx::query_scalar(crate::sql(q)).bind(customer_id).fetch_optional(&mut *tx).await?;
        let failed = failed.unwrap_or(0).saturating_add(1);
        let lock = mfa_lockout_ms(failed);
        let locked_until_ms = if lock > 0 { now_ms.saturating_add(lock) } else { 0 };
        sqlx::query(
            "INSERT INTO customer_mfa (customer_id, totp_secret, totp_last_step, totp_activated_at_ms, failed_attempts, locked_until_ms) \
             VALUES ($1, NULL, 0, 0, $2, $3) \
             ON CONFLICT (customer_id) DO UPDATE SET failed_attempts = $2, locked_until_ms = $3",
        )
        .bind(customer_id)
        .bind(failed)
        .bind(locked_until_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(locked_until_ms)
    }

    /// Resets the second-factor failure count after a success.
    pub async fn mfa_succeeded(&self, customer_id: &str) -> Result<()> {
        sqlx::query("UPDATE customer_mfa SET failed_attempts = 0, locked_until_ms = 0 WHERE customer_id = $1")
            .bind(customer_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Consumes TOTP step `step` of the active factor: succeeds only when it is later than every step
    /// accepted before (compare-and-set). `Conflict` = replayed or raced code, or no active factor.
    pub async fn consume_totp_step(&self, customer_id: &str, step: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE customer_mfa SET totp_last_step = $1 \
             WHERE customer_id = $2 AND totp_secret IS NOT NULL AND totp_last_step < $1",
        )
        .bind(step)
        .bind(customer_id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::Conflict("totp step already used".into())) }
    }

    /// Stores a pending enrolment, replacing the customer's earlier pending ones.
    pub async fn insert_totp_enrolment(&self, enrolment: &TotpEnrolmentRow) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM customer_totp_enrolments WHERE customer_id = $1")
            .bind(&enrolment.customer_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO customer_totp_enrolments (id, customer_id, totp_secret, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&enrolment.id)
        .bind(&enrolment.customer_id)
        .bind(&enrolment.totp_secret)
        .bind(enrolment.created_at_ms)
        .bind(enrolment.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The customer's pending enrolment `id`, if unexpired at `now_ms`.
    pub async fn totp_enrolment(&self, customer_id: &str, id: &str, now_ms: i64) -> Result<Option<TotpEnrolmentRow>> {
        let row = sqlx::query(
            "SELECT id, customer_id, totp_secret, created_at_ms, expires_at_ms FROM customer_totp_enrolments \
             WHERE id = $1 AND customer_id = $2 AND expires_at_ms > $3",
        )
        .bind(id)
        .bind(customer_id)
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(TotpEnrolmentRow {
                id: r.try_get("id")?,
                customer_id: r.try_get("customer_id")?,
                totp_secret: r.try_get("totp_secret")?,
                created_at_ms: r.try_get("created_at_ms")?,
                expires_at_ms: r.try_get("expires_at_ms")?,
            })
        })
        .transpose()
    }

    /// Activates a pending enrolment in one transaction: the enrolment is taken (a second confirm finds
    /// nothing: `NotFound`), its secret becomes the active factor with `step` as the last used step, and
    /// the recovery codes are replaced by `recovery_code_hashes`.
    pub async fn confirm_totp_enrolment(
        &self,
        customer_id: &str,
        enrolment_id: &str,
        step: i64,
        recovery_code_hashes: &[String],
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let secret: Option<String> = sqlx::query_scalar(
            "DELETE FROM customer_totp_enrolments WHERE id = $1 AND customer_id = $2 AND expires_at_ms > $3 \
             RETURNING totp_secret",
        )
        .bind(enrolment_id)
        .bind(customer_id)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let secret = secret.ok_or(StoreError::NotFound)?;
        sqlx::query(
            "INSERT INTO customer_mfa (customer_id, totp_secret, totp_last_step, totp_activated_at_ms, failed_attempts, locked_until_ms) \
             VALUES ($1, $2, $3, $4, 0, 0) \
             ON CONFLICT (customer_id) DO UPDATE SET totp_secret = $2, totp_last_step = $3, totp_activated_at_ms = $4, \
             failed_attempts = 0, locked_until_ms = 0",
        )
        .bind(customer_id)
        .bind(&secret)
        .bind(step)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM customer_recovery_codes WHERE customer_id = $1")
            .bind(customer_id)
            .execute(&mut *tx)
            .await?;
        for hash in recovery_code_hashes {
            sqlx::query(
                "INSERT INTO customer_recovery_codes (customer_id, code_hash, created_at_ms, used_at_ms) VALUES ($1, $2, $3, 0)",
            )
            .bind(customer_id)
            .bind(hash)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes the TOTP factor and its recovery codes (the failure count stays).
    pub async fn delete_totp(&self, customer_id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE customer_mfa SET totp_secret = NULL, totp_activated_at_ms = 0 WHERE customer_id = $1")
            .bind(customer_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM customer_recovery_codes WHERE customer_id = $1")
            .bind(customer_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The hashes of the customer's unused recovery codes (bounded).
    pub async fn unused_recovery_code_hashes(&self, customer_id: &str) -> Result<Vec<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT code_hash FROM customer_recovery_codes WHERE customer_id = $1 AND used_at_ms = 0 \
             ORDER BY code_hash LIMIT $2",
        )
        .bind(customer_id)
        .bind(RECOVERY_CODES_MAX)
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Marks a recovery code used (compare-and-set). `Conflict` when it was used already (a race).
    pub async fn consume_recovery_code(&self, customer_id: &str, code_hash: &str, now_ms: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE customer_recovery_codes SET used_at_ms = $1 WHERE customer_id = $2 AND code_hash = $3 AND used_at_ms = 0",
        )
        .bind(now_ms.max(1))
        .bind(customer_id)
        .bind(code_hash)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 1 { Ok(()) } else { Err(StoreError::Conflict("recovery code already used".into())) }
    }

    pub async fn insert_passkey(&self, passkey: &PasskeyRow) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO customer_passkeys (credential_id, customer_id, passkey_json, created_at_ms, last_used_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&passkey.credential_id)
        .bind(&passkey.customer_id)
        .bind(&passkey.passkey_json)
        .bind(passkey.created_at_ms)
        .bind(passkey.last_used_at_ms)
        .execute(self.pool())
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("credential_id".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// The customer's passkeys (bounded by [`PASSKEYS_MAX`]).
    pub async fn passkeys(&self, customer_id: &str) -> Result<Vec<PasskeyRow>> {
        let rows = sqlx::query(
            "SELECT credential_id, customer_id, passkey_json, created_at_ms, last_used_at_ms FROM customer_passkeys \
             WHERE customer_id = $1 ORDER BY created_at_ms, credential_id LIMIT $2",
        )
        .bind(customer_id)
        .bind(PASSKEYS_MAX)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PasskeyRow {
                    credential_id: r.try_get("credential_id")?,
                    customer_id: r.try_get("customer_id")?,
                    passkey_json: r.try_get("passkey_json")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    last_used_at_ms: r.try_get("last_used_at_ms")?,
                })
            })
            .collect()
    }

    /// Records a passkey's use and its updated state (signature counter, backup flags).
    pub async fn update_passkey_used(
        &self,
        customer_id: &str,
        credential_id: &str,
        passkey_json: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE customer_passkeys SET passkey_json = $1, last_used_at_ms = $2 WHERE customer_id = $3 AND credential_id = $4",
        )
        .bind(passkey_json)
        .bind(now_ms)
        .bind(customer_id)
        .bind(credential_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Stores WebAuthn ceremony state for (session, ceremony), replacing an earlier unfinished one.
    pub async fn put_webauthn_state(
        &self,
        session_token_hash: &str,
        ceremony: &str,
        customer_id: &str,
        state_json: &str,
        expires_at_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM customer_webauthn_states WHERE session_token_hash = $1 AND ceremony = $2")
            .bind(session_token_hash)
            .bind(ceremony)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO customer_webauthn_states (session_token_hash, ceremony, customer_id, state_json, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(session_token_hash)
        .bind(ceremony)
        .bind(customer_id)
        .bind(state_json)
        .bind(expires_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes (deletes and returns) the ceremony state, if present, owned by `customer_id` and unexpired.
    /// An expired row is deleted too and yields `None`: state is single-use either way.
    pub async fn take_webauthn_state(
        &self,
        session_token_hash: &str,
        ceremony: &str,
        customer_id: &str,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "DELETE FROM customer_webauthn_states WHERE session_token_hash = $1 AND ceremony = $2 \
             RETURNING customer_id, state_json, expires_at_ms",
        )
        .bind(session_token_hash)
        .bind(ceremony)
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let owner: String = r.try_get("customer_id")?;
        let expires_at_ms: i64 = r.try_get("expires_at_ms")?;
        if owner != customer_id || expires_at_ms <= now_ms {
            return Ok(None);
        }
        Ok(Some(r.try_get("state_json")?))
    }

    pub async fn transaction_password(&self, customer_id: &str) -> Result<Option<TransactionPasswordRow>> {
        let row = sqlx::query(
            "SELECT customer_id, password_hash, failed_attempts, locked_until_ms, updated_at_ms \
             FROM customer_transaction_passwords WHERE customer_id = $1",
        )
        .bind(customer_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(TransactionPasswordRow {
                customer_id: r.try_get("customer_id")?,
                password_hash: r.try_get("password_hash")?,
                failed_attempts: r.try_get("failed_attempts")?,
                locked_until_ms: r.try_get("locked_until_ms")?,
                updated_at_ms: r.try_get("updated_at_ms")?,
            })
        })
        .transpose()
    }

    /// Sets (or replaces) the transaction password; clears its failure count and lock.
    pub async fn set_transaction_password(&self, customer_id: &str, password_hash: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO customer_transaction_passwords (customer_id, password_hash, failed_attempts, locked_until_ms, updated_at_ms) \
             VALUES ($1, $2, 0, 0, $3) \
             ON CONFLICT (customer_id) DO UPDATE SET password_hash = $2, failed_attempts = 0, locked_until_ms = 0, updated_at_ms = $3",
        )
        .bind(customer_id)
        .bind(password_hash)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Counts a wrong transaction password and locks with back-off. Returns the lock end (0 = none).
    pub async fn transaction_password_failed(&self, customer_id: &str, now_ms: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let q = format!(
            "SELECT failed_attempts FROM customer_transaction_passwords WHERE customer_id = $1{}",
            self.for_update()
        );
        let failed: Option<i64> = sqlx::query_scalar(crate::sql(q)).bind(customer_id).fetch_optional(&mut *tx).await?;
        let failed = failed.ok_or(StoreError::NotFound)?.saturating_add(1);
        let lock = transaction_password_lockout_ms(failed);
        let locked_until_ms = if lock > 0 { now_ms.saturating_add(lock) } else { 0 };
        sqlx::query(
            "UPDATE customer_transaction_passwords SET failed_attempts = $1, locked_until_ms = $2 WHERE customer_id = $3",
        )
        .bind(failed)
        .bind(locked_until_ms)
        .bind(customer_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(locked_until_ms)
    }

    /// Resets the transaction password's failure count after a success.
    pub async fn transaction_password_succeeded(&self, customer_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE customer_transaction_passwords SET failed_attempts = 0, locked_until_ms = 0 WHERE customer_id = $1",
        )
        .bind(customer_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u2_backoff_doubles_and_caps() {
        assert_eq!(mfa_lockout_ms(MFA_FAILURES_FREE), 0);
        assert_eq!(mfa_lockout_ms(MFA_FAILURES_FREE + 1), MFA_LOCKOUT_BASE_MS);
        assert_eq!(mfa_lockout_ms(MFA_FAILURES_FREE + 2), 2 * MFA_LOCKOUT_BASE_MS);
        assert_eq!(mfa_lockout_ms(i64::MAX), MFA_LOCKOUT_MAX_MS);
        assert_eq!(transaction_password_lockout_ms(TRANSACTION_PASSWORD_FAILURES_FREE), 0);
        assert_eq!(
            transaction_password_lockout_ms(TRANSACTION_PASSWORD_FAILURES_FREE + 1),
            TRANSACTION_PASSWORD_LOCKOUT_BASE_MS
        );
    }
}
