//! Storage steps of the withdrawal pipeline (M13). Each step is a compare-and-set on the status
//! (`… WHERE id = $1 AND status = $2`), so two instances, or a restarted one, can race on a withdrawal
//! and at most one of them moves it. Nonce reservation happens in the same transaction as its
//! compare-and-set, holding the wallet row, so a lost race never burns a nonce.

use kinko_core::ledger::postings;
use kinko_core::withdrawal::{WithdrawalKind, WithdrawalStatus};
use kinko_core::{Amount, AssetCode};
use sqlx::Row;

use crate::ledger::Posted;
use crate::withdrawals::{WITHDRAWAL_COLUMNS, WithdrawalRow};
use crate::{Result, Store, StoreError, Tx, sql};

/// Statuses the pipeline works on.
pub const ACTIVE_STATUSES: [WithdrawalStatus; 5] = [
    WithdrawalStatus::Approved,
    WithdrawalStatus::Signing,
    WithdrawalStatus::Signed,
    WithdrawalStatus::Broadcast,
    WithdrawalStatus::Confirmed,
];

/// The fee and gas plan persisted before signing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeePlan {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
    pub gas_limit: u64,
}

/// One signed version of a withdrawal's transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxVersion {
    pub tx_hash: String,
    pub nonce: u64,
    pub fees: FeePlan,
    pub raw: Vec<u8>,
    pub created_at_ms: i64,
    pub broadcast_at_ms: Option<i64>,
}

/// Where a withdrawal's transaction landed, and what the chain charged for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inclusion<'a> {
    pub tx_hash: &'a str,
    pub block: u64,
    pub block_hash: &'a str,
    pub fee_wei: Amount,
    pub confirmations: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wallet<'a> {
    pub address: &'a str,
    pub chain: &'a str,
    pub tier: &'a str,
    pub key_id: &'a str,
}

impl Store {
    /// Registers a custodian wallet once; later calls change nothing.
    pub async fn ensure_wallet(&self, w: Wallet<'_>, now_ms: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query_scalar::<_, String>("SELECT address FROM wallets WHERE address = $1")
            .bind(w.address)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            sqlx::query("INSERT INTO wallets (address, chain, tier, key_id, next_nonce, created_at_ms) VALUES ($1, $2, $3, $4, 0, $5)")
                .bind(w.address)
                .bind(w.chain)
                .bind(w.tier)
                .bind(w.key_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Leases up to `limit` withdrawals that need work to `instance` until `now + lease_ms`. A lease held
    /// by the same instance name is taken again at once, so a restarted instance resumes without waiting.
    pub async fn claim_withdrawals(
        &self,
        instance: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<WithdrawalRow>> {
        let statuses = ACTIVE_STATUSES.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ");
        let mut tx = self.begin_write().await?;
        let q = format!(
            "SELECT id FROM withdrawals WHERE status IN ({statuses}) AND next_attempt_at_ms <= $1 \
             AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until_ms < $1) ORDER BY created_at_ms, id LIMIT $3{}",
            self.for_update_skip_locked()
        );
        let ids: Vec<String> =
            sqlx::query_scalar(sql(q)).bind(now_ms).bind(instance).bind(i64::from(limit)).fetch_all(&mut *tx).await?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in &ids {
            sqlx::query("UPDATE withdrawals SET lease_owner = $1, lease_until_ms = $2 WHERE id = $3")
                .bind(instance)
                .bind(now_ms + lease_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1");
            rows.push(WithdrawalRow::from_row(&sqlx::query(sql(q)).bind(id).fetch_one(&mut *tx).await?)?);
        }
        tx.commit().await?;
        Ok(rows)
    }

    /// The persisted fee plan of a withdrawal (set when its nonce was reserved or its fee was bumped).
    pub async fn fee_plan(&self, withdrawal_id: &str) -> Result<Option<FeePlan>> {
        let r = sqlx::query(
            "SELECT planned_max_fee_per_gas, planned_max_priority_fee_per_gas, gas_limit FROM withdrawals WHERE id = $1",
        )
        .bind(withdrawal_id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound)?;
        let max_fee: Option<String> = r.try_get("planned_max_fee_per_gas")?;
        let prio: Option<String> = r.try_get("planned_max_priority_fee_per_gas")?;
        let gas: Option<i64> = r.try_get("gas_limit")?;
        match (max_fee, prio, gas) {
            (Some(f), Some(p), Some(g)) => Ok(Some(FeePlan {
                max_fee_per_gas: crate::parse_u128("withdrawals.planned_max_fee_per_gas", &f)?,
                max_priority_fee_per_gas: crate::parse_u128("withdrawals.planned_max_priority_fee_per_gas", &p)?,
                gas_limit: g as u64,
            })),
            _ => Ok(None),
        }
    }

    /// approved → signing: reserves the wallet's next nonce (never below `chain_nonce`, the nonce the
    /// node reports as next, in case the key was used outside kinko) and persists the fee plan. Returns
    /// the nonce, or `None` when another worker moved the withdrawal first.
    pub async fn reserve_nonce(
        &self,
        withdrawal_id: &str,
        wallet: &str,
        chain_nonce: u64,
        plan: FeePlan,
        now_ms: i64,
    ) -> Result<Option<u64>> {
        self.reserve_nonce_into(WithdrawalStatus::Signing, withdrawal_id, wallet, chain_nonce, plan, now_ms).await
    }

    /// approved → `to` with the wallet's next nonce and the fee plan: [`Store::reserve_nonce`] (online signer)
    /// and `reserve_nonce_offline` (a cold row waiting for its imported signature) differ only in `to`.
    pub(crate) async fn reserve_nonce_into(
        &self,
        to: WithdrawalStatus,
        withdrawal_id: &str,
        wallet: &str,
        chain_nonce: u64,
        plan: FeePlan,
        now_ms: i64,
    ) -> Result<Option<u64>> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT next_nonce FROM wallets WHERE address = $1{}", self.for_update());
        let next: i64 =
            sqlx::query_scalar(sql(q)).bind(wallet).fetch_optional(&mut *tx).await?.ok_or(StoreError::NotFound)?;
        let nonce = (next as u64).max(chain_nonce);
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, nonce = $2, planned_max_fee_per_gas = $3, planned_max_priority_fee_per_gas = $4, \
             gas_limit = $5, updated_at_ms = $6, error = NULL WHERE id = $7 AND status = $8 AND source_wallet = $9",
        )
        .bind(to.as_str())
        .bind(nonce as i64)
        .bind(plan.max_fee_per_gas.to_string())
        .bind(plan.max_priority_fee_per_gas.to_string())
        .bind(plan.gas_limit as i64)
        .bind(now_ms)
        .bind(withdrawal_id)
        .bind(WithdrawalStatus::Approved.as_str())
        .bind(wallet)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(None); // dropping tx rolls back
        }
        sqlx::query("UPDATE wallets SET next_nonce = $1 WHERE address = $2")
            .bind(nonce as i64 + 1)
            .bind(wallet)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(nonce))
    }

    /// Stores a signed version and moves `from` (signing, or broadcast for a fee bump) → signed, in one
    /// transaction, before anything is broadcast. With a fee bump the new plan is persisted too.
    pub async fn record_signed(
        &self,
        withdrawal_id: &str,
        from: WithdrawalStatus,
        version: &TxVersion,
        now_ms: i64,
    ) -> Result<bool> {
        from.transition(WithdrawalStatus::Signed).map_err(|e| StoreError::Conflict(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, tx_hash = $2, planned_max_fee_per_gas = $3, planned_max_priority_fee_per_gas = $4, \
             gas_limit = $5, updated_at_ms = $6, error = NULL WHERE id = $7 AND status = $8 AND nonce = $9",
        )
        .bind(WithdrawalStatus::Signed.as_str())
        .bind(&version.tx_hash)
        .bind(version.fees.max_fee_per_gas.to_string())
        .bind(version.fees.max_priority_fee_per_gas.to_string())
        .bind(version.fees.gas_limit as i64)
        .bind(now_ms)
        .bind(withdrawal_id)
        .bind(from.as_str())
        .bind(version.nonce as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        let known = sqlx::query_scalar::<_, String>("SELECT tx_hash FROM withdrawal_txs WHERE tx_hash = $1")
            .bind(&version.tx_hash)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !known {
            insert_tx_version(&mut tx, withdrawal_id, version, now_ms).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Every signed version of a withdrawal's transaction, oldest first.
    pub async fn tx_versions(&self, withdrawal_id: &str) -> Result<Vec<TxVersion>> {
        let rows = sqlx::query(
            "SELECT tx_hash, nonce, max_fee_per_gas, max_priority_fee_per_gas, gas_limit, raw, created_at_ms, broadcast_at_ms \
             FROM withdrawal_txs WHERE withdrawal_id = $1 ORDER BY created_at_ms, tx_hash",
        )
        .bind(withdrawal_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let raw_hex: String = r.try_get("raw")?;
                Ok(TxVersion {
                    tx_hash: r.try_get("tx_hash")?,
                    nonce: r.try_get::<i64, _>("nonce")? as u64,
                    fees: FeePlan {
                        max_fee_per_gas: crate::parse_u128(
                            "withdrawal_txs.max_fee_per_gas",
                            &r.try_get::<String, _>("max_fee_per_gas")?,
                        )?,
                        max_priority_fee_per_gas: crate::parse_u128(
                            "withdrawal_txs.max_priority_fee_per_gas",
                            &r.try_get::<String, _>("max_priority_fee_per_gas")?,
                        )?,
                        gas_limit: r.try_get::<i64, _>("gas_limit")? as u64,
                    },
                    raw: hex::decode(&raw_hex)
                        .map_err(|_| StoreError::Corrupt("withdrawal_txs.raw is not hex".into()))?,
                    created_at_ms: r.try_get("created_at_ms")?,
                    broadcast_at_ms: r.try_get("broadcast_at_ms")?,
                })
            })
            .collect()
    }

    /// signed → broadcast (or a re-send of an already broadcast version, which only stamps the time).
    pub async fn mark_broadcast(&self, withdrawal_id: &str, tx_hash: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE withdrawal_txs SET broadcast_at_ms = $1 WHERE tx_hash = $2 AND broadcast_at_ms IS NULL")
            .bind(now_ms)
            .bind(tx_hash)
            .execute(&mut *tx)
            .await?;
        let moved = cas(&mut tx, withdrawal_id, WithdrawalStatus::Signed, WithdrawalStatus::Broadcast, now_ms).await?;
        tx.commit().await?;
        Ok(moved)
    }

    /// broadcast → confirmed: one version was included in a block.
    pub async fn mark_included(&self, withdrawal_id: &str, inclusion: &Inclusion<'_>, now_ms: i64) -> Result<bool> {
        let Inclusion { tx_hash, block, block_hash, fee_wei, confirmations } = *inclusion;
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, tx_hash = $2, included_block = $3, included_block_hash = $4, fee = $5, \
             confirmations = $6, updated_at_ms = $7, error = NULL WHERE id = $8 AND status = $9",
        )
        .bind(WithdrawalStatus::Confirmed.as_str())
        .bind(tx_hash)
        .bind(block as i64)
        .bind(block_hash)
        .bind(fee_wei.to_string())
        .bind(confirmations as i64)
        .bind(now_ms)
        .bind(withdrawal_id)
        .bind(WithdrawalStatus::Broadcast.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    /// confirmed → broadcast: a re-org removed the including block; the transaction is waited for again.
    pub async fn mark_uncluded(&self, withdrawal_id: &str, now_ms: i64) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, included_block = NULL, included_block_hash = NULL, fee = NULL, confirmations = 0, \
             updated_at_ms = $2 WHERE id = $3 AND status = $4",
        )
        .bind(WithdrawalStatus::Broadcast.as_str())
        .bind(now_ms)
        .bind(withdrawal_id)
        .bind(WithdrawalStatus::Confirmed.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    pub async fn set_confirmations(&self, withdrawal_id: &str, confirmations: u64, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE withdrawals SET confirmations = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(confirmations as i64)
            .bind(now_ms)
            .bind(withdrawal_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// confirmed → settled, and the ledger posting (held → out of the wallet, fee expensed; for a custodian
    /// transfer, source wallet → destination wallet, fee expensed), atomically.
    pub async fn settle_withdrawal(&self, w: &WithdrawalRow, confirmations: u64, now_ms: i64) -> Result<bool> {
        self.settle_withdrawal_fee_in(w, &w.asset, confirmations, now_ms).await
    }

    /// [`Self::settle_withdrawal`] with the network fee posted in `fee_asset`, the chain's native coin (for a
    /// token withdrawal the amount is in the token and the fee in ETH, K22).
    pub async fn settle_withdrawal_fee_in(
        &self,
        w: &WithdrawalRow,
        fee_asset: &AssetCode,
        confirmations: u64,
        now_ms: i64,
    ) -> Result<bool> {
        let fee = w.fee.ok_or_else(|| StoreError::Conflict(format!("withdrawal {} has no fee recorded", w.id)))?;
        let mut tx = self.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, confirmations = $2, updated_at_ms = $3 WHERE id = $4 AND status = $5",
        )
        .bind(WithdrawalStatus::Settled.as_str())
        .bind(confirmations as i64)
        .bind(now_ms)
        .bind(&w.id)
        .bind(WithdrawalStatus::Confirmed.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(false);
        }
        // The kind decides whose money moved: a customer's held amount, or the custodian's own coins moving
        // between two of its wallets (M10), which leaves every customer account as it was.
        let draft = match w.kind {
            WithdrawalKind::CustomerWithdrawal => postings::withdrawal_settled_fee_in(
                &w.id,
                &w.customer_id,
                &w.source_wallet,
                &w.asset,
                w.amount,
                fee_asset,
                fee,
            ),
            WithdrawalKind::CustodianTransfer => postings::custodian_transfer_settled_fee_in(
                &w.id,
                &w.source_wallet,
                &w.destination,
                &w.asset,
                w.amount,
                fee_asset,
                fee,
            ),
        };
        let posted = self.post_entry(&mut tx, draft, now_ms).await?;
        debug_assert!(matches!(posted, Posted::New(_)), "a withdrawal settles once");
        tx.commit().await?;
        Ok(true)
    }

    /// Keeps the withdrawal where it is and schedules the next attempt, recording why (no secrets).
    pub async fn defer_withdrawal(
        &self,
        withdrawal_id: &str,
        error: Option<&str>,
        next_attempt_at_ms: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE withdrawals SET error = $1, next_attempt_at_ms = $2 WHERE id = $3")
            .bind(error.map(|e| e.chars().take(500).collect::<String>()))
            .bind(next_attempt_at_ms)
            .bind(withdrawal_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Withdrawals not in a terminal state (for tests, metrics and the crash harness).
    pub async fn count_withdrawals_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM withdrawals GROUP BY status ORDER BY status")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("status")?, r.try_get("n")?))).collect()
    }
}

async fn cas(tx: &mut Tx, id: &str, from: WithdrawalStatus, to: WithdrawalStatus, now_ms: i64) -> Result<bool> {
    from.transition(to).map_err(|e| StoreError::Conflict(e.to_string()))?;
    let moved = sqlx::query("UPDATE withdrawals SET status = $1, updated_at_ms = $2 WHERE id = $3 AND status = $4")
        .bind(to.as_str())
        .bind(now_ms)
        .bind(id)
        .bind(from.as_str())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    Ok(moved == 1)
}

/// Stores one signed version of a withdrawal's transaction (before it is ever broadcast), for the online
/// signer's path and the offline import alike.
pub(crate) async fn insert_tx_version(
    tx: &mut crate::Tx,
    withdrawal_id: &str,
    version: &TxVersion,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO withdrawal_txs (tx_hash, withdrawal_id, nonce, max_fee_per_gas, max_priority_fee_per_gas, gas_limit, raw, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&version.tx_hash)
    .bind(withdrawal_id)
    .bind(version.nonce as i64)
    .bind(version.fees.max_fee_per_gas.to_string())
    .bind(version.fees.max_priority_fee_per_gas.to_string())
    .bind(version.fees.gas_limit as i64)
    .bind(hex::encode(&version.raw))
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
