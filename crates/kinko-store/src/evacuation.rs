//! Evacuation transfers (K19, S5): the withdrawals rows an approved `evacuation` ops request wrote, one per
//! asset, and the link back to the request (`evacuation_transfers`, migration 0027).
//!
//! The rows are ordinary `custodian_transfer` withdrawals in status `approved`: the pipeline reserves, signs,
//! broadcasts and settles them wallet → wallet like any other. The link is what lets one through the
//! pipeline's freeze gate and what the pipeline presents to the signer (the request's params and
//! approvals), which verifies it itself; the link alone authorises nothing.

use kinko_core::withdrawal::WithdrawalKind;
use sqlx::Row;

use crate::withdrawals::{NewCustodianTransfer, WITHDRAWAL_COLUMNS, WithdrawalRow};
use crate::{Result, Store, StoreError};

/// Bound on the rows one evacuation writes or one read returns (one per asset).
pub const EVACUATION_ROWS_MAX: usize = kinko_core::evacuation::EVACUATION_ASSETS_MAX;

impl Store {
    /// Writes the evacuation's withdrawals rows (kind `custodian_transfer`, status `approved`) and their links
    /// to `request_id`, in one transaction. A row that already exists (executing the request again) must be
    /// this request's with the same intent hash and is returned untouched; anything else is a conflict, and
    /// nothing is written.
    pub async fn create_evacuation_transfers(
        &self,
        request_id: &str,
        rows: &[NewCustodianTransfer],
        now_ms: i64,
    ) -> Result<Vec<WithdrawalRow>> {
        if rows.len() > EVACUATION_ROWS_MAX {
            return Err(StoreError::Conflict(format!("an evacuation writes at most {EVACUATION_ROWS_MAX} rows")));
        }
        let mut tx = self.begin_write().await?;
        let mut out = Vec::with_capacity(rows.len());
        for new in rows {
            let select = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1");
            if let Some(r) = sqlx::query(crate::sql(select.clone())).bind(&new.id).fetch_optional(&mut *tx).await? {
                let row = WithdrawalRow::from_row(&r)?;
                let linked: Option<String> =
                    sqlx::query_scalar("SELECT request_id FROM evacuation_transfers WHERE withdrawal_id = $1")
                        .bind(&new.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if row.kind != WithdrawalKind::CustodianTransfer
                    || row.intent_hash != new.intent_hash
                    || linked.as_deref() != Some(request_id)
                {
                    return Err(StoreError::Conflict(format!(
                        "withdrawal {} exists and is not this evacuation's",
                        new.id
                    )));
                }
                out.push(row);
                continue;
            }
            crate::withdrawals::insert_custodian_transfer(&mut tx, new, now_ms).await?;
            sqlx::query(
                "INSERT INTO evacuation_transfers (withdrawal_id, request_id, asset, created_at_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(&new.id)
            .bind(request_id)
            .bind(new.asset.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            let r = sqlx::query(crate::sql(select)).bind(&new.id).fetch_one(&mut *tx).await?;
            out.push(WithdrawalRow::from_row(&r)?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The evacuation request a withdrawals row belongs to, if it is an evacuation transfer.
    pub async fn evacuation_request_of(&self, withdrawal_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT request_id FROM evacuation_transfers WHERE withdrawal_id = $1")
            .bind(withdrawal_id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The withdrawals rows an evacuation request wrote, by asset.
    pub async fn evacuation_transfers(&self, request_id: &str) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT withdrawal_id, asset FROM evacuation_transfers WHERE request_id = $1 ORDER BY asset LIMIT $2",
        )
        .bind(request_id)
        .bind(EVACUATION_ROWS_MAX as i64)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get("withdrawal_id")?, r.try_get("asset")?))).collect()
    }
}
