//! Deposit rows (M6). Deposit detection (kinko-server's watcher) writes them; the API reads them.

use kinko_core::deposit::DepositStatus;
use kinko_core::{Amount, AssetCode};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DepositRow {
    pub id: String,
    pub chain: String,
    pub asset: AssetCode,
    pub customer_id: String,
    pub address: String,
    pub tx_hash: String,
    pub log_index: u64,
    pub block_number: u64,
    pub block_hash: String,
    pub amount: Amount,
    pub status: DepositStatus,
    pub confirmations: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

pub const DEPOSIT_COLUMNS: &str = "id, chain, asset, customer_id, address, tx_hash, log_index, block_number, block_hash, \
     amount, status, confirmations, created_at_ms, updated_at_ms";

fn corrupt(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("deposits.{column}: {e}"))
}

impl DepositRow {
    pub fn from_row(r: &AnyRow) -> Result<DepositRow> {
        Ok(DepositRow {
            id: r.try_get("id")?,
            chain: r.try_get("chain")?,
            asset: r.try_get::<String, _>("asset")?.parse().map_err(|e| corrupt("asset", e))?,
            customer_id: r.try_get("customer_id")?,
            address: r.try_get("address")?,
            tx_hash: r.try_get("tx_hash")?,
            log_index: r.try_get::<i64, _>("log_index")? as u64,
            block_number: r.try_get::<i64, _>("block_number")? as u64,
            block_hash: r.try_get("block_hash")?,
            amount: r.try_get::<String, _>("amount")?.parse().map_err(|e| corrupt("amount", e))?,
            status: r.try_get::<String, _>("status")?.parse().map_err(|e| corrupt("status", e))?,
            confirmations: r.try_get::<i64, _>("confirmations")? as u64,
            created_at_ms: r.try_get("created_at_ms")?,
            updated_at_ms: r.try_get("updated_at_ms")?,
        })
    }
}

/// Bound on rows one listing returns.
pub const DEPOSITS_PAGE_MAX: u32 = 200;

impl Store {
    pub async fn deposit(&self, id: &str) -> Result<Option<DepositRow>> {
        let q = format!("SELECT {DEPOSIT_COLUMNS} FROM deposits WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(DepositRow::from_row).transpose()
    }

    /// A customer's deposits, newest first.
    pub async fn deposits_for_customer(&self, customer_id: &str, limit: u32) -> Result<Vec<DepositRow>> {
        let q = format!(
            "SELECT {DEPOSIT_COLUMNS} FROM deposits WHERE customer_id = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        );
        let rows = sqlx::query(crate::sql(q))
            .bind(customer_id)
            .bind(i64::from(limit.min(DEPOSITS_PAGE_MAX)))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(DepositRow::from_row).collect()
    }
}
