//! Deposit sweeps (K13, C1, M10; migration 0026): which deposit addresses hold credited funds worth sweeping,
//! and the sweep (or gas top-up) rows written into the withdrawal pipeline as `custodian_transfer` withdrawals.
//! The decisions (what is worth sweeping, how much) are the server's sweeper's; this module reads and writes.

use kinko_core::deposit::DepositStatus;
use kinko_core::ledger::{AccountKind, AccountRef};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_core::{Amount, AssetCode};
use sqlx::Row;

use crate::withdrawals::{WITHDRAWAL_COLUMNS, WithdrawalRow};
use crate::{Result, Store, StoreError, sql};

/// `wallets.tier` of a customer deposit address registered for sweeping.
pub const DEPOSIT_TIER: &str = "deposit";
/// `keys.purpose` of a deposit-address key: the row carries its lifecycle state (K2) for the signer's key
/// gate and nothing secret (`wrapped` is empty; the signer derives the key from the master seed).
pub const DEPOSIT_KEY_PURPOSE: &str = "deposit";
/// `deposit_sweeps.purpose` of a sweep into the hot wallet.
pub const PURPOSE_SWEEP: &str = "sweep";
/// `deposit_sweeps.purpose` of a gas top-up from the hot wallet to a deposit address.
pub const PURPOSE_TOP_UP: &str = "top_up";
/// Bound on the pending deposits read per address; more refuses the candidate (fail closed) rather than
/// deciding on a partial sum.
pub const PENDING_READ_MAX: i64 = 1_000;

/// A deposit address with a non-zero ledger balance of an asset and no sweep in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepCandidate {
    pub address: String,
    pub derivation_index: u32,
    /// The `wallet:<address>:<asset>` ledger balance: every detected deposit not dropped or reversed, less
    /// what earlier sweeps and their fees took, plus gas top-ups.
    pub wallet_balance: Amount,
    /// The part of it that is still pending (not credited): never swept.
    pub pending: Amount,
}

/// What the pipeline needs to rebuild a sweep row's intent and fee plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepIntent {
    pub purpose: String,
    pub intent_reason: String,
    /// The fee ceiling the row's amount was computed with: the pipeline never plans or bumps above it.
    pub max_fee_per_gas: u128,
}

/// A sweep or top-up to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDepositSweep {
    pub id: String,
    pub purpose: &'static str,
    pub chain: String,
    /// The asset the row moves (ETH for a top-up).
    pub asset: AssetCode,
    pub amount: Amount,
    pub source_wallet: String,
    pub destination: String,
    pub deposit_address: String,
    pub derivation_index: u32,
    /// The deposit key id (`eth-deposit-<index>`), for the `wallets` and `keys` rows.
    pub deposit_key_id: String,
    /// The node's next nonce for the deposit address, for a new `wallets` row.
    pub deposit_next_nonce: u64,
    pub intent_reason: String,
    pub intent_hash: String,
    pub max_fee_per_gas: u128,
}

impl Store {
    /// The signing key id of a custodian wallet (`wallets.key_id`), if it is one.
    pub async fn wallet_key_id(&self, address: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT key_id FROM wallets WHERE address = $1")
            .bind(address)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The sweep facts of a withdrawals row, or `None` for any row that is no deposit sweep or top-up.
    pub async fn sweep_intent(&self, withdrawal_id: &str) -> Result<Option<SweepIntent>> {
        let row =
            sqlx::query("SELECT purpose, intent_reason, max_fee_per_gas FROM deposit_sweeps WHERE withdrawal_id = $1")
                .bind(withdrawal_id)
                .fetch_optional(self.pool())
                .await?;
        row.map(|r| {
            Ok(SweepIntent {
                purpose: r.try_get("purpose")?,
                intent_reason: r.try_get("intent_reason")?,
                max_fee_per_gas: crate::parse_u128(
                    "deposit_sweeps.max_fee_per_gas",
                    &r.try_get::<String, _>("max_fee_per_gas")?,
                )?,
            })
        })
        .transpose()
    }

    /// Marks sweeps whose withdrawal reached a terminal status as no longer in flight; returns how many.
    pub async fn close_finished_sweeps(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE deposit_sweeps SET in_flight = NULL WHERE in_flight = 1 AND withdrawal_id IN \
             (SELECT id FROM withdrawals WHERE status IN ($1, $2, $3))",
        )
        .bind(WithdrawalStatus::Settled.as_str())
        .bind(WithdrawalStatus::Failed.as_str())
        .bind(WithdrawalStatus::Cancelled.as_str())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Deposit addresses on `chain` with a non-zero `asset` wallet balance in the ledger and no sweep or
    /// top-up in flight, in address order from after `after` (paging), at most `limit`.
    pub async fn sweep_candidates(
        &self,
        chain: &str,
        asset: &AssetCode,
        after: &str,
        limit: u32,
    ) -> Result<Vec<SweepCandidate>> {
        let rows = sqlx::query(
            "SELECT d.address, d.derivation_index, l.debits, l.credits FROM deposit_addresses d \
             JOIN ledger_accounts l ON l.account = $1 || d.address || $2 \
             WHERE d.chain = $3 AND d.address > $4 AND l.debits <> l.credits \
             AND NOT EXISTS (SELECT 1 FROM deposit_sweeps s WHERE s.deposit_address = d.address AND s.in_flight = 1) \
             ORDER BY d.address LIMIT $5",
        )
        .bind(format!("{}:", AccountKind::Wallet.as_str()))
        .bind(format!(":{asset}"))
        .bind(chain)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let address: String = r.try_get("address")?;
            let debits = crate::parse_u128("ledger_accounts.debits", &r.try_get::<String, _>("debits")?)?;
            let credits = crate::parse_u128("ledger_accounts.credits", &r.try_get::<String, _>("credits")?)?;
            let index: i64 = r.try_get("derivation_index")?;
            let derivation_index = u32::try_from(index)
                .map_err(|_| StoreError::Corrupt(format!("deposit_addresses.derivation_index {index}")))?;
            let pending_sum = self.pending_deposits(chain, &address, asset).await?;
            out.push(SweepCandidate {
                address,
                derivation_index,
                wallet_balance: Amount::from_base_units(debits.saturating_sub(credits)),
                pending: pending_sum,
            });
        }
        Ok(out)
    }

    /// The sum of `asset` deposits to `address` that are still pending (seen, not credited).
    pub async fn pending_deposits(&self, chain: &str, address: &str, asset: &AssetCode) -> Result<Amount> {
        let pending: Vec<String> = sqlx::query_scalar(
            "SELECT amount FROM deposits WHERE chain = $1 AND address = $2 AND asset = $3 AND status = $4 LIMIT $5",
        )
        .bind(chain)
        .bind(address)
        .bind(asset.as_str())
        .bind(DepositStatus::Pending.as_str())
        .bind(PENDING_READ_MAX + 1)
        .fetch_all(self.pool())
        .await?;
        if pending.len() as i64 > PENDING_READ_MAX {
            return Err(StoreError::Conflict(format!(
                "more than {PENDING_READ_MAX} pending deposits to {address}: cannot tell what is credited"
            )));
        }
        let mut sum: u128 = 0;
        for a in pending {
            sum = sum.saturating_add(crate::parse_u128("deposits.amount", &a)?);
        }
        Ok(Amount::from_base_units(sum))
    }

    /// The credited part of a deposit address's `asset` holdings: its ledger wallet balance less pending
    /// deposits, floored at zero.
    pub async fn credited_on_deposit_address(&self, chain: &str, address: &str, asset: &AssetCode) -> Result<Amount> {
        let balance = self.balance(&AccountRef::wallet(address, asset)).await?.normal_amount(AccountKind::Wallet);
        let pending = self.pending_deposits(chain, address, asset).await?;
        Ok(balance.checked_sub(pending).unwrap_or(Amount::ZERO))
    }

    /// Writes a sweep or top-up in one transaction: the deposit address's `wallets` row (tier `deposit`) and
    /// its key's lifecycle row when missing, the withdrawals row (kind `custodian_transfer`, the reserved
    /// custodian customer, status `approved`) and its `deposit_sweeps` row. `None` when a sweep or top-up of the
    /// address is already in flight (nothing written).
    pub async fn create_deposit_sweep(&self, new: &NewDepositSweep, now_ms: i64) -> Result<Option<WithdrawalRow>> {
        let mut tx = self.begin_write().await?;
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deposit_sweeps WHERE deposit_address = $1 AND in_flight = 1")
                .bind(&new.deposit_address)
                .fetch_one(&mut *tx)
                .await?;
        if open > 0 {
            return Ok(None);
        }
        let wallet = sqlx::query("SELECT tier, key_id FROM wallets WHERE address = $1")
            .bind(&new.deposit_address)
            .fetch_optional(&mut *tx)
            .await?;
        match wallet {
            Some(r) => {
                let (tier, key_id): (String, String) = (r.try_get("tier")?, r.try_get("key_id")?);
                if tier != DEPOSIT_TIER || key_id != new.deposit_key_id {
                    return Err(StoreError::Conflict(format!(
                        "deposit address {} is registered as another wallet ({tier}, {key_id})",
                        new.deposit_address
                    )));
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO wallets (address, chain, tier, key_id, next_nonce, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&new.deposit_address)
                .bind(&new.chain)
                .bind(DEPOSIT_TIER)
                .bind(&new.deposit_key_id)
                .bind(new.deposit_next_nonce as i64)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        let key = sqlx::query_scalar::<_, String>("SELECT purpose FROM keys WHERE id = $1")
            .bind(&new.deposit_key_id)
            .fetch_optional(&mut *tx)
            .await?;
        match key {
            Some(purpose) if purpose == DEPOSIT_KEY_PURPOSE => {}
            Some(purpose) => {
                return Err(StoreError::Conflict(format!("key id {} is taken by a {purpose} key", new.deposit_key_id)));
            }
            None => {
                sqlx::query(
                    "INSERT INTO keys (id, purpose, chain, address, wrapped, state, created_at_ms) VALUES ($1, $2, $3, $4, '', 'active', $5)",
                )
                .bind(&new.deposit_key_id)
                .bind(DEPOSIT_KEY_PURPOSE)
                .bind(&new.chain)
                .bind(&new.deposit_address)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        let row = crate::withdrawals::NewCustodianTransfer {
            id: new.id.clone(),
            asset: new.asset.clone(),
            chain: new.chain.clone(),
            amount: new.amount,
            destination: new.destination.clone(),
            source_wallet: new.source_wallet.clone(),
            intent_hash: new.intent_hash.clone(),
        };
        crate::withdrawals::insert_custodian_transfer(&mut tx, &row, now_ms).await?;
        let inserted = sqlx::query(
            "INSERT INTO deposit_sweeps (withdrawal_id, purpose, deposit_address, derivation_index, asset, intent_reason, \
             max_fee_per_gas, in_flight, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8)",
        )
        .bind(&new.id)
        .bind(new.purpose)
        .bind(&new.deposit_address)
        .bind(i64::from(new.derivation_index))
        .bind(new.asset.as_str())
        .bind(&new.intent_reason)
        .bind(new.max_fee_per_gas.to_string())
        .bind(now_ms)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            // Another instance wrote a sweep of this address between the check above and here.
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1");
        let row = WithdrawalRow::from_row(&sqlx::query(sql(q)).bind(&new.id).fetch_one(&mut *tx).await?)?;
        tx.commit().await?;
        Ok(Some(row))
    }

    /// The sweeps and top-ups of a deposit address, oldest first: (withdrawal id, purpose, in flight).
    pub async fn deposit_sweeps_of(&self, deposit_address: &str) -> Result<Vec<(String, String, bool)>> {
        let rows = sqlx::query(
            "SELECT withdrawal_id, purpose, in_flight FROM deposit_sweeps WHERE deposit_address = $1 \
             ORDER BY created_at_ms, withdrawal_id LIMIT 1000",
        )
        .bind(deposit_address)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("withdrawal_id")?,
                    r.try_get("purpose")?,
                    r.try_get::<Option<i64>, _>("in_flight")?.is_some(),
                ))
            })
            .collect()
    }
}
