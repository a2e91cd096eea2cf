//! Internal transfers between customers (M7): off chain, one ledger entry moving one customer's available
//! balance to another's, written with its row and both customers' notices in one transaction. Retries
//! are safe: (sender, idempotency key) is unique, and the ledger entry's reference is the transfer id.

use kinko_core::ledger::{AccountKind, LedgerError, postings};
use kinko_core::{Amount, AssetCode};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::customers::is_unique_violation;
use crate::ledger::Posted;
use crate::notices::NewNotice;
use crate::{Result, Store, StoreError, Tx, parse_u128};

/// Bound on a page of transfers.
pub const INTERNAL_TRANSFERS_PAGE_MAX: u32 = 200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalTransferRow {
    pub id: String,
    pub sender_id: String,
    pub recipient_id: String,
    pub asset: AssetCode,
    pub amount: Amount,
    pub idempotency_key: String,
    pub request_hash: String,
    pub ledger_seq: i64,
    pub created_at_ms: i64,
}

const COLUMNS: &str =
    "id, sender_id, recipient_id, asset, amount, idempotency_key, request_hash, ledger_seq, created_at_ms";

impl InternalTransferRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        let asset: String = r.try_get("asset")?;
        Ok(InternalTransferRow {
            id: r.try_get("id")?,
            sender_id: r.try_get("sender_id")?,
            recipient_id: r.try_get("recipient_id")?,
            asset: asset.parse().map_err(|_| StoreError::Corrupt(format!("internal_transfers.asset: {asset:?}")))?,
            amount: Amount::from_base_units(parse_u128(
                "internal_transfers.amount",
                &r.try_get::<String, _>("amount")?,
            )?),
            idempotency_key: r.try_get("idempotency_key")?,
            request_hash: r.try_get("request_hash")?,
            ledger_seq: r.try_get("ledger_seq")?,
            created_at_ms: r.try_get("created_at_ms")?,
        })
    }
}

/// What the caller asks for. The recipient is already resolved to an active customer id (the API decides
/// how a recipient is named and what an unknown one answers).
#[derive(Clone, Debug)]
pub struct NewInternalTransfer {
    pub id: String,
    pub sender_id: String,
    pub recipient_id: String,
    pub asset: AssetCode,
    pub amount: Amount,
    pub idempotency_key: String,
    pub request_hash: String,
    /// Enqueued in the same transaction: a notice exists exactly when the money moved (L5, U10).
    pub sender_notice: NewNotice,
    pub recipient_notice: NewNotice,
}

#[derive(Debug)]
pub enum TransferOutcome {
    Created(InternalTransferRow),
    /// A transfer with this (sender, idempotency key) already exists; nothing moved now.
    Existing(InternalTransferRow),
}

#[derive(Debug, thiserror::Error)]
pub enum InternalTransferError {
    #[error("insufficient available balance")]
    InsufficientAvailable,
    /// The sender owes the custodian (a reversed deposit they had already spent): funds may not leave.
    #[error("negative position: transfers blocked")]
    NegativePosition,
    /// The recipient is not an active customer (unknown, deleted, or the reserved custodian row), or is
    /// the sender. Checked again inside the transaction, so a deletion racing the transfer cannot win.
    #[error("recipient cannot receive transfers")]
    RecipientUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Moves the amount and records the transfer, or returns the existing transfer for the same
    /// (sender, idempotency key). Nothing is written unless the row, the ledger entry and both notices are.
    pub async fn create_internal_transfer(
        &self,
        new: &NewInternalTransfer,
        now_ms: i64,
    ) -> std::result::Result<TransferOutcome, InternalTransferError> {
        match self.try_create_internal_transfer(new, now_ms).await {
            Err(InternalTransferError::Store(StoreError::Db(e))) if is_unique_violation(&e) => {
                // A concurrent request with the same key committed first (PostgreSQL; SQLite serialises).
                let existing = self
                    .internal_transfer_by_idempotency_key(&new.sender_id, &new.idempotency_key)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("internal transfer id collision".into()))?;
                Ok(TransferOutcome::Existing(existing))
            }
            other => other,
        }
    }

    async fn try_create_internal_transfer(
        &self,
        new: &NewInternalTransfer,
        now_ms: i64,
    ) -> std::result::Result<TransferOutcome, InternalTransferError> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {COLUMNS} FROM internal_transfers WHERE sender_id = $1 AND idempotency_key = $2");
        let existing = sqlx::query(crate::sql(q))
            .bind(&new.sender_id)
            .bind(&new.idempotency_key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(r) = existing {
            return Ok(TransferOutcome::Existing(InternalTransferRow::from_row(&r)?));
        }
        if new.sender_id == new.recipient_id
            || !self.customer_active_tx(&mut tx, &new.recipient_id).await?
            || !self.customer_active_tx(&mut tx, &new.sender_id).await?
        {
            return Err(InternalTransferError::RecipientUnavailable);
        }
        if self.has_receivable_tx(&mut tx, &new.sender_id).await? {
            return Err(InternalTransferError::NegativePosition);
        }
        let draft = postings::internal_transfer(&new.id, &new.sender_id, &new.recipient_id, &new.asset, new.amount);
        let seq = match self.post_entry(&mut tx, draft, now_ms).await {
            Ok(Posted::New(entry)) => entry.seq,
            // The id is fresh per request, so an existing entry means an id collision: refuse.
            Ok(Posted::AlreadyPosted { .. }) => {
                return Err(StoreError::Conflict("internal transfer id collision".into()).into());
            }
            // Dropping `tx` rolls everything back.
            Err(StoreError::Ledger(LedgerError::WouldGoNegative { .. })) => {
                return Err(InternalTransferError::InsufficientAvailable);
            }
            Err(e) => return Err(e.into()),
        };
        sqlx::query(
            "INSERT INTO internal_transfers (id, sender_id, recipient_id, asset, amount, idempotency_key, request_hash, \
             ledger_seq, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&new.id)
        .bind(&new.sender_id)
        .bind(&new.recipient_id)
        .bind(new.asset.as_str())
        .bind(new.amount.to_string())
        .bind(&new.idempotency_key)
        .bind(&new.request_hash)
        .bind(seq as i64)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        self.enqueue_notice_tx(&mut tx, &new.sender_notice).await?;
        self.enqueue_notice_tx(&mut tx, &new.recipient_notice).await?;
        let q = format!("SELECT {COLUMNS} FROM internal_transfers WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(&new.id).fetch_one(&mut *tx).await.map_err(StoreError::from)?;
        let created = InternalTransferRow::from_row(&row)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(TransferOutcome::Created(created))
    }

    pub async fn internal_transfer_by_idempotency_key(
        &self,
        sender_id: &str,
        key: &str,
    ) -> Result<Option<InternalTransferRow>> {
        let q = format!("SELECT {COLUMNS} FROM internal_transfers WHERE sender_id = $1 AND idempotency_key = $2");
        let row = sqlx::query(crate::sql(q)).bind(sender_id).bind(key).fetch_optional(self.pool()).await?;
        row.as_ref().map(InternalTransferRow::from_row).transpose()
    }

    /// Transfers the customer sent or received, newest first, at most `limit` (capped).
    pub async fn internal_transfers_for_customer(
        &self,
        customer_id: &str,
        limit: u32,
    ) -> Result<Vec<InternalTransferRow>> {
        let limit = limit.clamp(1, INTERNAL_TRANSFERS_PAGE_MAX);
        let q = format!(
            "SELECT {COLUMNS} FROM internal_transfers WHERE sender_id = $1 OR recipient_id = $1 \
             ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        );
        let rows = sqlx::query(crate::sql(q)).bind(customer_id).bind(i64::from(limit)).fetch_all(self.pool()).await?;
        rows.iter().map(InternalTransferRow::from_row).collect()
    }

    /// The id of the active (not deleted) customer with this e-mail, if any. The reserved custodian row is
    /// never an active customer.
    pub async fn active_customer_id_by_email(&self, email: &str) -> Result<Option<String>> {
        let id = sqlx::query_scalar::<_, String>("SELECT id FROM customers WHERE email = $1 AND deleted_at_ms = 0")
            .bind(email)
            .fetch_optional(self.pool())
            .await?;
        Ok(id.filter(|id| id != kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID))
    }

    /// Whether `customer_id` is an active (not deleted) customer.
    pub async fn customer_active(&self, customer_id: &str) -> Result<bool> {
        if customer_id == kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID {
            return Ok(false);
        }
        let found = sqlx::query_scalar::<_, String>("SELECT id FROM customers WHERE id = $1 AND deleted_at_ms = 0")
            .bind(customer_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(found.is_some())
    }

    pub(crate) async fn customer_active_tx(&self, tx: &mut Tx, customer_id: &str) -> Result<bool> {
        if customer_id == kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID {
            return Ok(false);
        }
        let q = format!("SELECT id FROM customers WHERE id = $1 AND deleted_at_ms = 0{}", self.for_update());
        let found = sqlx::query_scalar::<_, String>(crate::sql(q)).bind(customer_id).fetch_optional(&mut **tx).await?;
        Ok(found.is_some())
    }

    /// Whether any of the customer's receivable accounts (any asset) is non-zero: the same fail-closed rule
    /// as withdrawals (a negative position in one asset blocks moving any asset out).
    pub(crate) async fn has_receivable_tx(&self, tx: &mut Tx, customer_id: &str) -> Result<bool> {
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
}
