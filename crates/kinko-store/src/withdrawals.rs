//! Withdrawal rows (M13). The state machine lives in `kinko_core::withdrawal`; this module reads and
//! writes rows. The API creates withdrawals; the pipeline (kinko-server) advances them.

use kinko_core::withdrawal::WithdrawalStatus;
use kinko_core::{Amount, AssetCode};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError};

/// Every column a reader needs, decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WithdrawalRow {
    pub id: String,
    pub customer_id: String,
    pub asset: AssetCode,
    pub chain: String,
    pub amount: Amount,
    pub destination: String,
    pub source_wallet: String,
    pub status: WithdrawalStatus,
    pub intent_hash: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub nonce: Option<u64>,
    pub tx_hash: Option<String>,
    pub fee: Option<Amount>,
    pub included_block: Option<u64>,
    pub included_block_hash: Option<String>,
    pub confirmations: u64,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

pub const WITHDRAWAL_COLUMNS: &str = "id, customer_id, asset, chain, amount, destination, source_wallet, status, intent_hash, \
     idempotency_key, request_hash, nonce, tx_hash, fee, included_block, included_block_hash, confirmations, error, \
     created_at_ms, updated_at_ms";

fn corrupt(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("withdrawals.{column}: {e}"))
}

impl WithdrawalRow {
    pub fn from_row(r: &AnyRow) -> Result<WithdrawalRow> {
        let amount: String = r.try_get("amount")?;
        let fee: Option<String> = r.try_get("fee")?;
        Ok(WithdrawalRow {
            id: r.try_get("id")?,
            customer_id: r.try_get("customer_id")?,
            asset: r.try_get::<String, _>("asset")?.parse().map_err(|e| corrupt("asset", e))?,
            chain: r.try_get("chain")?,
            amount: amount.parse().map_err(|e| corrupt("amount", e))?,
            destination: r.try_get("destination")?,
            source_wallet: r.try_get("source_wallet")?,
            status: r.try_get::<String, _>("status")?.parse().map_err(|e| corrupt("status", e))?,
            intent_hash: r.try_get("intent_hash")?,
            idempotency_key: r.try_get("idempotency_key")?,
            request_hash: r.try_get("request_hash")?,
            nonce: r.try_get::<Option<i64>, _>("nonce")?.map(|n| n as u64),
            tx_hash: r.try_get("tx_hash")?,
            fee: fee.map(|f| f.parse().map_err(|e| corrupt("fee", e))).transpose()?,
            included_block: r.try_get::<Option<i64>, _>("included_block")?.map(|n| n as u64),
            included_block_hash: r.try_get("included_block_hash")?,
            confirmations: r.try_get::<i64, _>("confirmations")? as u64,
            error: r.try_get("error")?,
            created_at_ms: r.try_get("created_at_ms")?,
            updated_at_ms: r.try_get("updated_at_ms")?,
        })
    }
}

impl Store {
    pub async fn withdrawal(&self, id: &str) -> Result<Option<WithdrawalRow>> {
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1");
        let row = sqlx::query(crate::sql(q)).bind(id).fetch_optional(self.pool()).await?;
        row.as_ref().map(WithdrawalRow::from_row).transpose()
    }
}
