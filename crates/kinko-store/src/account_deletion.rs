//! Customer account deletion (U5) and its operator-approved restore within a rollback window (U6).
//!
//! Deletion is soft: the customer row, its ledger accounts, deposit addresses and keys stay (a deposit to
//! a deleted customer's address is still detected and credited; ledger data is never hard-deleted). What
//! goes is access: every session is revoked, and the login password hash is parked in
//! `customer_deletions` while `customers.password_hash` holds a hash of a random secret, so every password
//! check fails exactly as a wrong password does (same answer, same argon2 cost: no enumeration), without
//! the login handler having to know about deletion.

use kinko_core::ledger::AccountKind;
use kinko_core::{Amount, AssetCode};
use sqlx::Row;

use crate::notices::NewNotice;
use crate::{Result, Store, StoreError, parse_u128};

/// One non-zero customer balance that blocks deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockingBalance {
    pub asset: AssetCode,
    pub kind: AccountKind,
    pub amount: Amount,
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteCustomerError {
    /// The customer still holds (or owes) something: available, held (a withdrawal in flight), pending
    /// (a deposit being confirmed) or receivable. They must withdraw or settle first.
    #[error("customer has non-zero balances")]
    BalancesNotZero(Vec<BlockingBalance>),
    /// Unknown, or already deleted.
    #[error("no active customer")]
    NotActive,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreCustomerError {
    #[error("customer {0} is not deleted")]
    NotDeleted(String),
    #[error("the restore window of customer {customer_id} ended at {restore_until_ms}")]
    WindowEnded { customer_id: String, restore_until_ms: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A customer's deletion state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletionState {
    /// 0 while active.
    pub deleted_at_ms: i64,
    pub restore_until_ms: i64,
}

impl Store {
    /// Soft-deletes an active customer whose customer balances are all zero: marks the row, parks the
    /// password hash (replacing it with `locked_password_hash`), revokes every session and enqueues
    /// `notice`, all in one transaction. `restore_until_ms` ends the rollback window.
    pub async fn delete_customer(
        &self,
        customer_id: &str,
        locked_password_hash: &str,
        restore_until_ms: i64,
        notice: &NewNotice,
        now_ms: i64,
    ) -> std::result::Result<(), DeleteCustomerError> {
        let mut tx = self.begin_write().await?;
        // Lock the row first so a concurrent transfer to this customer (which locks it too) is ordered
        // against the deletion, and the balances read below cannot change before commit on PostgreSQL.
        let q = format!("SELECT password_hash FROM customers WHERE id = $1 AND deleted_at_ms = 0{}", self.for_update());
        let Some(row) =
            sqlx::query(crate::sql(q)).bind(customer_id).fetch_optional(&mut *tx).await.map_err(StoreError::from)?
        else {
            return Err(DeleteCustomerError::NotActive);
        };
        let password_hash: String = row.try_get("password_hash").map_err(StoreError::from)?;
        let q = format!(
            "SELECT account, kind, asset, debits, credits FROM ledger_accounts WHERE holder = $1 ORDER BY account{}",
            self.for_update()
        );
        let rows = sqlx::query(crate::sql(q)).bind(customer_id).fetch_all(&mut *tx).await.map_err(StoreError::from)?;
        let mut blocking = Vec::new();
        for r in rows {
            let kind: AccountKind =
                r.try_get::<String, _>("kind").map_err(StoreError::from)?.parse().map_err(StoreError::from)?;
            if !kind.is_customer() {
                continue;
            }
            let debits =
                parse_u128("ledger_accounts.debits", &r.try_get::<String, _>("debits").map_err(StoreError::from)?)?;
            let credits =
                parse_u128("ledger_accounts.credits", &r.try_get::<String, _>("credits").map_err(StoreError::from)?)?;
            if debits != credits {
                let asset: String = r.try_get("asset").map_err(StoreError::from)?;
                blocking.push(BlockingBalance {
                    asset: asset
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("ledger_accounts.asset: {asset:?}")))?,
                    kind,
                    amount: Amount::from_base_units(debits.abs_diff(credits)),
                });
            }
        }
        if !blocking.is_empty() {
            return Err(DeleteCustomerError::BalancesNotZero(blocking));
        }
        sqlx::query(
            "INSERT INTO customer_deletions (id, customer_id, deleted_at_ms, restore_until_ms, parked_password_hash, \
             restored_at_ms, restored_by_request) VALUES ($1, $2, $3, $4, $5, 0, NULL)",
        )
        .bind(format!("del_{}", uuid::Uuid::now_v7().simple()))
        .bind(customer_id)
        .bind(now_ms)
        .bind(restore_until_ms)
        .bind(&password_hash)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        sqlx::query(
            "UPDATE customers SET deleted_at_ms = $1, restore_until_ms = $2, password_hash = $3 WHERE id = $4 AND deleted_at_ms = 0",
        )
        .bind(now_ms)
        .bind(restore_until_ms)
        .bind(locked_password_hash)
        .bind(customer_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        sqlx::query("DELETE FROM sessions WHERE customer_id = $1")
            .bind(customer_id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        self.enqueue_notice_tx(&mut tx, notice).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Restores a deleted customer while `now_ms <= restore_until_ms`: puts the parked password hash back,
    /// clears the deletion marks and enqueues `notice`, in one transaction. After the window it refuses and
    /// changes nothing (the account stays soft-deleted). Returns the customer's e-mail.
    pub async fn restore_customer(
        &self,
        customer_id: &str,
        request_id: &str,
        notice: impl FnOnce(&str) -> NewNotice,
        now_ms: i64,
    ) -> std::result::Result<String, RestoreCustomerError> {
        let mut tx = self.begin_write().await?;
        let q =
            format!("SELECT email, deleted_at_ms, restore_until_ms FROM customers WHERE id = $1{}", self.for_update());
        let row =
            sqlx::query(crate::sql(q)).bind(customer_id).fetch_optional(&mut *tx).await.map_err(StoreError::from)?;
        let Some(row) = row else { return Err(RestoreCustomerError::NotDeleted(customer_id.into())) };
        let email: String = row.try_get("email").map_err(StoreError::from)?;
        let deleted_at_ms: i64 = row.try_get("deleted_at_ms").map_err(StoreError::from)?;
        let restore_until_ms: i64 = row.try_get("restore_until_ms").map_err(StoreError::from)?;
        if deleted_at_ms == 0 {
            return Err(RestoreCustomerError::NotDeleted(customer_id.into()));
        }
        if now_ms > restore_until_ms {
            return Err(RestoreCustomerError::WindowEnded { customer_id: customer_id.into(), restore_until_ms });
        }
        let parked = sqlx::query(
            "SELECT id, parked_password_hash FROM customer_deletions WHERE customer_id = $1 AND deleted_at_ms = $2 AND restored_at_ms = 0",
        )
        .bind(customer_id)
        .bind(deleted_at_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| StoreError::Corrupt(format!("customer {customer_id} is deleted without a deletion record")))?;
        let deletion_id: String = parked.try_get("id").map_err(StoreError::from)?;
        let password_hash: String = parked.try_get("parked_password_hash").map_err(StoreError::from)?;
        sqlx::query(
            "UPDATE customers SET deleted_at_ms = 0, restore_until_ms = 0, password_hash = $1 WHERE id = $2 AND deleted_at_ms = $3",
        )
        .bind(&password_hash)
        .bind(customer_id)
        .bind(deleted_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        sqlx::query(
            "UPDATE customer_deletions SET restored_at_ms = $1, restored_by_request = $2, parked_password_hash = '' WHERE id = $3",
        )
        .bind(now_ms)
        .bind(request_id)
        .bind(&deletion_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        self.enqueue_notice_tx(&mut tx, &notice(&email)).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(email)
    }

    /// The customer's deletion state, or `None` for an unknown customer.
    pub async fn customer_deletion_state(&self, customer_id: &str) -> Result<Option<DeletionState>> {
        let row = sqlx::query("SELECT deleted_at_ms, restore_until_ms FROM customers WHERE id = $1")
            .bind(customer_id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(DeletionState {
                deleted_at_ms: r.try_get("deleted_at_ms")?,
                restore_until_ms: r.try_get("restore_until_ms")?,
            })
        })
        .transpose()
    }
}
