//! Creating customer withdrawals (M13) with an idempotency key, and listing them. The row and the ledger
//! hold (available → held, A3) are written in one transaction: a withdrawal without its hold, or a hold
//! without its withdrawal, never exists.

use kinko_core::ledger::{AccountKind, LedgerError, postings};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_core::{Amount, AssetCode};
use sqlx::Row;

use crate::customers::is_unique_violation;
use crate::withdrawals::{WITHDRAWAL_COLUMNS, WithdrawalRow};
use crate::{Result, Store, StoreError, Tx, parse_u128};

/// Bound on rows one listing returns.
pub const WITHDRAWALS_PAGE_MAX: u32 = 200;

/// Everything a new withdrawal row needs; the caller has validated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWithdrawal {
    pub id: String,
    pub customer_id: String,
    pub asset: AssetCode,
    pub chain: String,
    pub amount: Amount,
    /// Lower-case 0x-hex (EVM).
    pub destination: String,
    pub source_wallet: String,
    /// The status it starts in (today `approved`; policy and approvals come later).
    pub status: WithdrawalStatus,
    pub intent_hash: String,
    pub idempotency_key: String,
    pub request_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created(WithdrawalRow),
    /// A withdrawal with this customer's idempotency key already exists; nothing was written. The
    /// caller compares `request_hash` to tell a replay from a reused key.
    Existing(WithdrawalRow),
}

#[derive(Debug, thiserror::Error)]
pub enum CreateWithdrawalError {
    #[error("insufficient available balance")]
    InsufficientAvailable,
    /// The customer owes the custodian (a reversed deposit they had already spent): no withdrawals.
    #[error("negative position: withdrawals blocked")]
    NegativePosition,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Creates the withdrawal and posts its hold, or returns the existing withdrawal for the same
    /// (customer, idempotency key). Nothing is written unless both the row and the hold are.
    pub async fn create_withdrawal(
        &self,
        new: &NewWithdrawal,
        now_ms: i64,
    ) -> std::result::Result<CreateOutcome, CreateWithdrawalError> {
        match self.try_create_withdrawal(new, now_ms).await {
            Err(CreateWithdrawalError::Store(StoreError::Db(e))) if is_unique_violation(&e) => {
                // A concurrent request with the same key committed first (PostgreSQL; SQLite serialises).
                let existing = self
                    .withdrawal_by_idempotency_key(&new.customer_id, &new.idempotency_key)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("withdrawal id collision".into()))?;
                Ok(CreateOutcome::Existing(existing))
            }
            other => other,
        }
    }

    async fn try_create_withdrawal(
        &self,
        new: &NewWithdrawal,
        now_ms: i64,
    ) -> std::result::Result<CreateOutcome, CreateWithdrawalError> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE customer_id = $1 AND idempotency_key = $2");
        let existing = sqlx::query(crate::sql(q))
            .bind(&new.customer_id)
            .bind(&new.idempotency_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(r) = existing {
            return Ok(CreateOutcome::Existing(WithdrawalRow::from_row(&r)?));
        }
        if self.has_receivable(&mut tx, &new.customer_id).await? {
            return Err(CreateWithdrawalError::NegativePosition);
        }
        sqlx::query(
            "INSERT INTO withdrawals (id, customer_id, asset, chain, amount, destination, source_wallet, status, intent_hash, \
             idempotency_key, request_hash, confirmations, lease_until_ms, next_attempt_at_ms, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, $12, $13, $14)",
        )
        .bind(&new.id)
        .bind(&new.customer_id)
        .bind(new.asset.as_str())
        .bind(&new.chain)
        .bind(new.amount.to_string())
        .bind(&new.destination)
        .bind(&new.source_wallet)
        .bind(new.status.as_str())
        .bind(&new.intent_hash)
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let hold = postings::withdrawal_hold(&new.id, &new.customer_id, &new.asset, new.amount);
        match self.post_entry(&mut tx, hold, now_ms).await {
            Ok(_) => {}
            // Dropping `tx` rolls the row back with the failed hold.
            Err(StoreError::Ledger(LedgerError::WouldGoNegative { .. })) => {
                return Err(CreateWithdrawalError::InsufficientAvailable);
            }
            Err(e) => return Err(e.into()),
        }
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(&new.id).fetch_one(&mut *tx).await.map_err(StoreError::from)?;
        let created = WithdrawalRow::from_row(&row)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(CreateOutcome::Created(created))
    }

    /// Whether any of the customer's receivable accounts (any asset) is non-zero. Fails closed: a
    /// negative position in one asset blocks withdrawals of every asset until operators settle it.
    async fn has_receivable(&self, tx: &mut Tx, customer_id: &str) -> Result<bool> {
        let rows = sqlx::query("SELECT debits, credits FROM ledger_accounts WHERE holder = $1 AND kind = $2")
            .bind(customer_id)
            .bind(AccountKind::Receivable.as_str())
            .fetch_all(&mut **tx)
            .await?;
        for r in rows {
            let debits = parse_u128("ledger_accounts.debits", &r.try_get::<String, _>("debits")?)?;
            let credits = parse_u128("ledger_accounts.credits", &r.try_get::<String, _>("credits")?)?;
            if debits != credits {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub async fn withdrawal_by_idempotency_key(&self, customer_id: &str, key: &str) -> Result<Option<WithdrawalRow>> {
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE customer_id = $1 AND idempotency_key = $2");
        let row = sqlx::query(crate::sql(q)).bind(customer_id).bind(key).fetch_optional(self.pool()).await?;
        row.as_ref().map(WithdrawalRow::from_row).transpose()
    }

    /// A customer's withdrawals, newest first, at most `limit` (capped at [`WITHDRAWALS_PAGE_MAX`]).
    pub async fn withdrawals_for_customer(&self, customer_id: &str, limit: u32) -> Result<Vec<WithdrawalRow>> {
        let q = format!(
            "SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE customer_id = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        );
        let rows = sqlx::query(crate::sql(q))
            .bind(customer_id)
            .bind(i64::from(limit.min(WITHDRAWALS_PAGE_MAX)))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(WithdrawalRow::from_row).collect()
    }
}
