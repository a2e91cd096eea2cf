//! Second-channel confirmation of withdrawals (U4, U8, U9): storage.
//!
//! A withdrawal that needs the customer's confirmation is written by [`Store::create_policed_withdrawal_with`]
//! in `awaiting_confirmation`, with its hold, a `withdrawal_confirmations` row and the notices that carry
//! the one-time token — one transaction, so a token is never mailed for a withdrawal that does not exist
//! and a withdrawal never waits for a token nobody was sent. The row keeps only the token's sha256, the
//! decision the policy took at creation (`then_status`, and the operator request to file for
//! `pending_approval`) and the reasons.
//!
//! Leaving `awaiting_confirmation`, always under the withdrawal's row lock and in one transaction with the
//! confirmation row's state change:
//! - [`Store::confirm_withdrawal`]: a known, unused, unexpired token → the decided status (and the
//!   operator request), the pipeline may take it from there.
//! - [`Store::expire_withdrawal_confirmations`] (the pipeline's sweep) and an expired token presented to
//!   `confirm_withdrawal`: `cancelled` with the error [`EXPIRED_ERROR`], hold released.
//! - [`Store::cancel_awaiting_withdrawal`]: the customer cancels; `cancelled`, hold released.

use kinko_core::ledger::postings;
use kinko_core::risk::{LoginSource, RecentWithdrawal};
use kinko_core::withdrawal::WithdrawalStatus;
use sqlx::Row;

use crate::notices::NewNotice;
use crate::policies::{Gate, PendingApproval};
use crate::withdrawals::{WITHDRAWAL_COLUMNS, WithdrawalRow};
use crate::{Result, Store, StoreError, Tx, sql};

/// The `error` of a withdrawal cancelled because its confirmation expired.
pub const EXPIRED_ERROR: &str = "confirmation expired";
/// The `error` of a withdrawal the customer cancelled while it awaited confirmation.
pub const CANCELLED_ERROR: &str = "cancelled by the customer";
/// Bound on notices written with one confirmation (e-mail and webhook).
pub const NOTICES_MAX: usize = 4;
/// Bound on confirmations one sweep expires (the sweep runs every pipeline cycle).
pub const EXPIRE_BATCH_MAX: u32 = 1_000;

pub const STATE_AWAITING: &str = "awaiting";
pub const STATE_CONFIRMED: &str = "confirmed";
pub const STATE_EXPIRED: &str = "expired";
pub const STATE_CANCELLED: &str = "cancelled";

/// What a confirmation is created with. The token itself is not here: only its hash, and the notices
/// that carry it (whose `Debug` leaves bodies out).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfirmationDraft {
    /// sha256 of the token, lower-case hex.
    pub token_sha256: String,
    pub expires_at_ms: i64,
    /// Why confirmation is needed (JSON array).
    pub reasons_json: String,
    pub risk_score: u32,
    /// Written in the same transaction (at most [`NOTICES_MAX`]).
    pub notices: Vec<NewNotice>,
}

/// A stored confirmation (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfirmationRow {
    pub withdrawal_id: String,
    pub customer_id: String,
    pub state: String,
    pub then_status: WithdrawalStatus,
    pub reasons_json: String,
    pub risk_score: i64,
    pub expires_at_ms: i64,
    pub created_at_ms: i64,
    pub closed_at_ms: Option<i64>,
}

/// Why a presented token does nothing. The API answers all three the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmRefusal {
    /// No confirmation has this token.
    Unknown,
    /// Already confirmed, cancelled or expired earlier.
    Used,
    /// Presented at or after its expiry; the withdrawal was cancelled and its hold released just now.
    Expired,
}

/// The outcome of [`Store::confirm_withdrawal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfirmOutcome {
    /// Moved to `status` (`approved` or `pending_approval`).
    Confirmed {
        withdrawal_id: String,
        status: WithdrawalStatus,
    },
    Refused(ConfirmRefusal),
}

/// The outcome of [`Store::cancel_awaiting_withdrawal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelAwaiting {
    /// No such withdrawal for this customer.
    NotFound,
    /// Not awaiting confirmation (any more): nothing changed here.
    NotAwaiting(WithdrawalStatus),
    /// Cancelled now, hold released (boxed: a row is large next to the other variants).
    Cancelled(Box<WithdrawalRow>),
}

fn approval_to_json(p: &PendingApproval) -> String {
    serde_json::json!({
        "process": p.process,
        "kind": p.kind,
        "params_json": p.params_json,
        "requester": p.requester,
        "requester_terminal": p.requester_terminal,
        "required": p.required,
        "reasons_json": p.reasons_json,
    })
    .to_string()
}

fn approval_from_json(text: &str) -> Result<PendingApproval> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("withdrawal_confirmations.approval_json: {what}"));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt("not JSON"))?;
    let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| corrupt(k));
    Ok(PendingApproval {
        process: s("process")?,
        kind: s("kind")?,
        params_json: s("params_json")?,
        requester: s("requester")?,
        requester_terminal: s("requester_terminal")?,
        required: v["required"].as_u64().and_then(|r| u8::try_from(r).ok()).ok_or_else(|| corrupt("required"))?,
        reasons_json: s("reasons_json")?,
    })
}

/// Writes the confirmation row and its notices inside the creating transaction. `gate` is what the
/// policy decided; it is kept and applied on confirmation.
pub(crate) async fn insert_confirmation_tx(
    store: &Store,
    tx: &mut Tx,
    withdrawal_id: &str,
    customer_id: &str,
    draft: &ConfirmationDraft,
    gate: &Gate,
    now_ms: i64,
) -> Result<()> {
    let (then, approval) = match gate {
        Gate::Auto => (WithdrawalStatus::Approved, None),
        Gate::Pending(p) => (WithdrawalStatus::PendingApproval, Some(approval_to_json(p))),
        Gate::Deny => return Err(StoreError::Conflict("a denied withdrawal has nothing to confirm".into())),
    };
    if draft.notices.is_empty() || draft.notices.len() > NOTICES_MAX {
        // Fail closed: a confirmation nobody is told about would only ever expire.
        return Err(StoreError::Conflict(format!("a confirmation needs 1 to {NOTICES_MAX} notices")));
    }
    let token_ok =
        draft.token_sha256.len() == 64 && draft.token_sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !token_ok {
        return Err(StoreError::Conflict("token_sha256 must be 64 lower-case hex digits".into()));
    }
    sqlx::query(
        "INSERT INTO withdrawal_confirmations (withdrawal_id, customer_id, token_sha256, state, then_status, \
         approval_json, reasons_json, risk_score, expires_at_ms, created_at_ms, closed_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL)",
    )
    .bind(withdrawal_id)
    .bind(customer_id)
    .bind(&draft.token_sha256)
    .bind(STATE_AWAITING)
    .bind(then.as_str())
    .bind(approval)
    .bind(&draft.reasons_json)
    .bind(i64::from(draft.risk_score))
    .bind(draft.expires_at_ms)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    for notice in &draft.notices {
        store.enqueue_notice_tx(tx, notice).await?;
    }
    Ok(())
}

fn confirmation_from_row(r: &sqlx::any::AnyRow) -> Result<ConfirmationRow> {
    let then: String = r.try_get("then_status")?;
    Ok(ConfirmationRow {
        withdrawal_id: r.try_get("withdrawal_id")?,
        customer_id: r.try_get("customer_id")?,
        state: r.try_get("state")?,
        then_status: then
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("withdrawal_confirmations.then_status: {e}")))?,
        reasons_json: r.try_get("reasons_json")?,
        risk_score: r.try_get("risk_score")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        created_at_ms: r.try_get("created_at_ms")?,
        closed_at_ms: r.try_get("closed_at_ms")?,
    })
}

const CONFIRMATION_COLUMNS: &str = "withdrawal_id, customer_id, state, then_status, approval_json, reasons_json, \
     risk_score, expires_at_ms, created_at_ms, closed_at_ms";

impl Store {
    /// The confirmation of a withdrawal, if it has one.
    pub async fn withdrawal_confirmation(&self, withdrawal_id: &str) -> Result<Option<ConfirmationRow>> {
        let q = format!("SELECT {CONFIRMATION_COLUMNS} FROM withdrawal_confirmations WHERE withdrawal_id = $1");
        let r = sqlx::query(sql(q)).bind(withdrawal_id).fetch_optional(self.pool()).await?;
        r.as_ref().map(confirmation_from_row).transpose()
    }

    /// The confirmation whose token hashes to `token_sha256`, read without changing anything (the
    /// confirmation page shows what the token would confirm before the customer confirms it).
    pub async fn confirmation_by_token(&self, token_sha256: &str) -> Result<Option<ConfirmationRow>> {
        let q = format!("SELECT {CONFIRMATION_COLUMNS} FROM withdrawal_confirmations WHERE token_sha256 = $1");
        let r = sqlx::query(sql(q)).bind(token_sha256).fetch_optional(self.pool()).await?;
        r.as_ref().map(confirmation_from_row).transpose()
    }

    /// Confirms the withdrawal whose token hashes to `token_sha256`: if it is unused and `now_ms` is before
    /// its expiry, the withdrawal moves `awaiting_confirmation →` the status decided at creation (with its
    /// operator request when that is `pending_approval`) and becomes due for the pipeline at once. An
    /// expired token cancels the withdrawal and releases the hold in the same transaction. Single use: a
    /// second call with the same token is [`ConfirmRefusal::Used`].
    pub async fn confirm_withdrawal(&self, token_sha256: &str, now_ms: i64) -> Result<ConfirmOutcome> {
        let mut tx = self.begin_write().await?;
        let q = format!(
            "SELECT {CONFIRMATION_COLUMNS} FROM withdrawal_confirmations WHERE token_sha256 = $1{}",
            self.for_update()
        );
        let Some(r) = sqlx::query(sql(q)).bind(token_sha256).fetch_optional(&mut *tx).await? else {
            return Ok(ConfirmOutcome::Refused(ConfirmRefusal::Unknown));
        };
        let c = confirmation_from_row(&r)?;
        let approval_json: Option<String> = r.try_get("approval_json")?;
        if c.state != STATE_AWAITING {
            return Ok(ConfirmOutcome::Refused(ConfirmRefusal::Used));
        }
        let w = self.lock_withdrawal_tx(&mut tx, &c.withdrawal_id).await?;
        if w.status != WithdrawalStatus::AwaitingConfirmation {
            // Closed by another path without the row noticing: never revive it.
            set_state_tx(&mut tx, &c.withdrawal_id, STATE_CANCELLED, now_ms).await?;
            tx.commit().await?;
            return Ok(ConfirmOutcome::Refused(ConfirmRefusal::Used));
        }
        if now_ms >= c.expires_at_ms {
            self.close_awaiting_tx(&mut tx, &w, STATE_EXPIRED, EXPIRED_ERROR, now_ms).await?;
            tx.commit().await?;
            return Ok(ConfirmOutcome::Refused(ConfirmRefusal::Expired));
        }
        let then = WithdrawalStatus::AwaitingConfirmation
            .transition(c.then_status)
            .map_err(|e| StoreError::Corrupt(format!("withdrawal_confirmations.then_status: {e}")))?;
        set_state_tx(&mut tx, &c.withdrawal_id, STATE_CONFIRMED, now_ms).await?;
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, updated_at_ms = $2, next_attempt_at_ms = $2, error = NULL \
             WHERE id = $3 AND status = $4",
        )
        .bind(then.as_str())
        .bind(now_ms)
        .bind(&w.id)
        .bind(WithdrawalStatus::AwaitingConfirmation.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(StoreError::Conflict(format!("withdrawal {} moved while confirming", w.id)));
        }
        if then == WithdrawalStatus::PendingApproval {
            let json = approval_json.ok_or_else(|| {
                StoreError::Corrupt(format!("withdrawal_confirmations.approval_json missing for {}", w.id))
            })?;
            let p = approval_from_json(&json)?;
            crate::policies::insert_approval_request(&mut tx, &w.id, &w.intent_hash, &p, now_ms).await?;
        }
        tx.commit().await?;
        Ok(ConfirmOutcome::Confirmed { withdrawal_id: w.id, status: then })
    }

    /// The customer cancels a withdrawal that awaits confirmation: `cancelled`, hold released, the token
    /// dead. `customer_id` restricts it to that customer's withdrawal.
    pub async fn cancel_awaiting_withdrawal(&self, id: &str, customer_id: &str, now_ms: i64) -> Result<CancelAwaiting> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1{}", self.for_update());
        let Some(r) = sqlx::query(sql(q)).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(CancelAwaiting::NotFound);
        };
        let w = WithdrawalRow::from_row(&r)?;
        if w.customer_id != customer_id {
            return Ok(CancelAwaiting::NotFound);
        }
        if w.status != WithdrawalStatus::AwaitingConfirmation {
            return Ok(CancelAwaiting::NotAwaiting(w.status));
        }
        self.close_awaiting_tx(&mut tx, &w, STATE_CANCELLED, CANCELLED_ERROR, now_ms).await?;
        let row = self.lock_withdrawal_tx(&mut tx, id).await?;
        tx.commit().await?;
        Ok(CancelAwaiting::Cancelled(Box::new(row)))
    }

    /// The expiry sweep: every confirmation still awaiting at `now_ms` or past its expiry (at most `limit`,
    /// capped at [`EXPIRE_BATCH_MAX`]) is expired and its withdrawal cancelled with the hold released.
    /// Returns the withdrawal ids it closed. Several instances may sweep at once: rows another holds are
    /// skipped (PostgreSQL), and every close is a compare-and-set on the status.
    pub async fn expire_withdrawal_confirmations(&self, now_ms: i64, limit: u32) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let q = format!(
            "SELECT withdrawal_id FROM withdrawal_confirmations WHERE state = $1 AND expires_at_ms <= $2 \
             ORDER BY expires_at_ms, withdrawal_id LIMIT $3{}",
            self.for_update_skip_locked()
        );
        let ids: Vec<String> = sqlx::query_scalar(sql(q))
            .bind(STATE_AWAITING)
            .bind(now_ms)
            .bind(i64::from(limit.min(EXPIRE_BATCH_MAX)))
            .fetch_all(&mut *tx)
            .await?;
        let mut closed = Vec::with_capacity(ids.len());
        for id in ids {
            let w = self.lock_withdrawal_tx(&mut tx, &id).await?;
            if w.status == WithdrawalStatus::AwaitingConfirmation {
                self.close_awaiting_tx(&mut tx, &w, STATE_EXPIRED, EXPIRED_ERROR, now_ms).await?;
                closed.push(id);
            } else {
                set_state_tx(&mut tx, &id, STATE_EXPIRED, now_ms).await?;
            }
        }
        tx.commit().await?;
        Ok(closed)
    }

    /// Whether one of the customer's settled withdrawals went to `destination` (lower-case 0x-hex).
    pub async fn settled_destination_known(&self, customer_id: &str, destination: &str) -> Result<bool> {
        let hit: Option<String> = sqlx::query_scalar(
            "SELECT id FROM withdrawals WHERE customer_id = $1 AND destination = $2 AND status = $3 LIMIT 1",
        )
        .bind(customer_id)
        .bind(destination)
        .bind(WithdrawalStatus::Settled.as_str())
        .fetch_optional(self.pool())
        .await?;
        Ok(hit.is_some())
    }

    /// The customer's withdrawals of `asset` created after `since_ms` that moved or may still move funds
    /// (failed and cancelled left out), newest first, at most `limit`.
    pub async fn customer_recent_withdrawals(
        &self,
        customer_id: &str,
        asset: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<RecentWithdrawal>> {
        let rows = sqlx::query(
            "SELECT amount, created_at_ms FROM withdrawals WHERE customer_id = $1 AND asset = $2 AND created_at_ms > $3 \
             AND status <> $4 AND status <> $5 ORDER BY created_at_ms DESC, id DESC LIMIT $6",
        )
        .bind(customer_id)
        .bind(asset)
        .bind(since_ms)
        .bind(WithdrawalStatus::Failed.as_str())
        .bind(WithdrawalStatus::Cancelled.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let amount: String = r.try_get("amount")?;
                Ok(RecentWithdrawal {
                    at_ms: r.try_get("created_at_ms")?,
                    amount: amount.parse().map_err(|e| StoreError::Corrupt(format!("withdrawals.amount: {e}")))?,
                })
            })
            .collect()
    }

    /// Where the customer logged in from successfully before `before_ms`, newest first, at most `limit`.
    pub async fn login_sources_before(
        &self,
        customer_id: &str,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<LoginSource>> {
        let rows = sqlx::query(
            "SELECT ip, user_agent FROM login_attempts WHERE customer_id = $1 AND outcome = 'success' AND at_ms < $2 \
             ORDER BY at_ms DESC, id DESC LIMIT $3",
        )
        .bind(customer_id)
        .bind(before_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok(LoginSource { ip: r.try_get("ip")?, user_agent: r.try_get("user_agent")? })).collect()
    }

    async fn lock_withdrawal_tx(&self, tx: &mut Tx, id: &str) -> Result<WithdrawalRow> {
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1{}", self.for_update());
        let r = sqlx::query(sql(q)).bind(id).fetch_optional(&mut **tx).await?.ok_or(StoreError::NotFound)?;
        WithdrawalRow::from_row(&r)
    }

    /// `awaiting_confirmation → cancelled`, hold released, confirmation row to `state`. The caller holds the
    /// withdrawal's row lock and has checked its status.
    async fn close_awaiting_tx(
        &self,
        tx: &mut Tx,
        w: &WithdrawalRow,
        state: &str,
        error: &str,
        now_ms: i64,
    ) -> Result<()> {
        let to = WithdrawalStatus::AwaitingConfirmation
            .transition(WithdrawalStatus::Cancelled)
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, error = $2, updated_at_ms = $3 WHERE id = $4 AND status = $5",
        )
        .bind(to.as_str())
        .bind(error)
        .bind(now_ms)
        .bind(&w.id)
        .bind(WithdrawalStatus::AwaitingConfirmation.as_str())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(StoreError::Conflict(format!("withdrawal {} is no longer awaiting confirmation", w.id)));
        }
        let release = postings::withdrawal_release(&w.id, &w.customer_id, &w.asset, w.amount);
        self.post_entry(tx, release, now_ms).await?;
        set_state_tx(tx, &w.id, state, now_ms).await
    }
}

async fn set_state_tx(tx: &mut Tx, withdrawal_id: &str, state: &str, now_ms: i64) -> Result<()> {
    sqlx::query(
        "UPDATE withdrawal_confirmations SET state = $1, closed_at_ms = $2 WHERE withdrawal_id = $3 AND state = $4",
    )
    .bind(state)
    .bind(now_ms)
    .bind(withdrawal_id)
    .bind(STATE_AWAITING)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u4_pending_approval_round_trips_through_json() {
        let p = PendingApproval {
            process: "signing".into(),
            kind: "customer_withdrawal".into(),
            params_json: r#"{"a":"b"}"#.into(),
            requester: "customer:c_1".into(),
            requester_terminal: "api:i".into(),
            required: 2,
            reasons_json: "[]".into(),
        };
        assert_eq!(approval_from_json(&approval_to_json(&p)).unwrap(), p);
        assert!(approval_from_json("{}").is_err());
    }
}
