//! Withdrawal rows (M13). The state machine lives in `kinko_core::withdrawal`; this module reads and
//! writes rows. The API creates withdrawals; the pipeline (kinko-server) advances them.

use kinko_core::ledger::{AccountKind, AccountRef};
use kinko_core::policy::PastWithdrawal;
use kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID;
use kinko_core::withdrawal::{WithdrawalKind, WithdrawalStatus};
use kinko_core::{Amount, AssetCode};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, Tx};

/// Every column a reader needs, decoded and validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WithdrawalRow {
    pub id: String,
    /// Whose money moves (migration 0011); decides the settlement postings.
    pub kind: WithdrawalKind,
    /// The customer; for a custodian transfer the reserved `CUSTODIAN_CUSTOMER_ID` row.
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

pub const WITHDRAWAL_COLUMNS: &str = "id, kind, customer_id, asset, chain, amount, destination, source_wallet, status, intent_hash, \
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
            kind: r.try_get::<String, _>("kind")?.parse().map_err(|e| corrupt("kind", e))?,
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

/// Wallet tiers a custodian transfer may pay into: any but the hot wallet's own.
pub const HOT_TIER: &str = "hot";
/// Bound on the unsettled withdrawals read to know what the hot wallet still owes; more refuses the transfer
/// (fail closed) rather than deciding on a partial sum.
pub const IN_FLIGHT_READ_MAX: i64 = 10_000;

/// A custodian transfer (M10) to write as a withdrawals row of kind `custodian_transfer`, id = its ops
/// request's id (so the approvals collected on the request are the ones the pipeline hands the signer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCustodianTransfer {
    pub id: String,
    pub asset: AssetCode,
    pub chain: String,
    pub amount: Amount,
    pub destination: String,
    pub source_wallet: String,
    /// Hex sha256 of the transfer's `Intent` — equal to the ops request's `intent_hash`.
    pub intent_hash: String,
}

/// What [`Store::create_custodian_transfer`] did. `D` is the caller's decision value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustodianTransferOutcome<D> {
    /// Written now, status `approved`: the pipeline takes it from here.
    Created(WithdrawalRow),
    /// A row with this id already exists (an execution retried after a crash): nothing decided or written.
    Existing(WithdrawalRow),
    /// `decide` refused; nothing written.
    Refused(D),
    /// The source wallet's ledger balance, less what unsettled withdrawals from it will still pay, does not
    /// cover the amount plus the fee reserve: paying it would leave those withdrawals unable to settle.
    Insufficient { uncommitted: Amount, needed: Amount },
}

/// Why [`Store::register_custodian_wallet`] refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterWalletError {
    #[error("tier: the hot wallet is registered by `kinko init`, not here")]
    HotTier,
    #[error("address: is a customer deposit address")]
    DepositAddress,
    #[error("address: already registered as another wallet ({tier}, {key_id})")]
    Different { tier: String, key_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Registers an address the custodian controls outside the hot key (e.g. a cold wallet whose key is held
    /// offline, `key_id` like `external:cold-1`) as a `wallets` row, so custodian transfers (M10) may pay
    /// into it. Watch-only: kinko holds no key for it and never signs from it. Idempotent for the same
    /// (address, chain, tier, key_id); refuses the hot tier, a customer deposit address, or an address
    /// registered differently. `address` must be lower-case 0x-hex (the caller parses it).
    ///
    /// Interim: issue #6 (cold storage) creates cold wallets itself and replaces this.
    pub async fn register_custodian_wallet(
        &self,
        address: &str,
        chain: &str,
        tier: &str,
        key_id: &str,
        now_ms: i64,
    ) -> std::result::Result<(), RegisterWalletError> {
        if tier == HOT_TIER {
            return Err(RegisterWalletError::HotTier);
        }
        let mut tx = self.begin_write().await?;
        let deposit: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deposit_addresses WHERE address = $1")
            .bind(address)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if deposit > 0 {
            return Err(RegisterWalletError::DepositAddress);
        }
        let existing = sqlx::query("SELECT chain, tier, key_id FROM wallets WHERE address = $1")
            .bind(address)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if let Some(r) = existing {
            let (c, t, k): (String, String, String) = (
                r.try_get("chain").map_err(StoreError::from)?,
                r.try_get("tier").map_err(StoreError::from)?,
                r.try_get("key_id").map_err(StoreError::from)?,
            );
            if (c.as_str(), t.as_str(), k.as_str()) == (chain, tier, key_id) {
                return Ok(());
            }
            return Err(RegisterWalletError::Different { tier: t, key_id: k });
        }
        sqlx::query(
            "INSERT INTO wallets (address, chain, tier, key_id, next_nonce, created_at_ms) VALUES ($1, $2, $3, $4, 0, $5)",
        )
        .bind(address)
        .bind(chain)
        .bind(tier)
        .bind(key_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Writes an approved custodian transfer (M10) as a withdrawals row of kind `custodian_transfer`, status
    /// `approved`, in one transaction: an existing row with the id is returned untouched (executing twice
    /// makes one transfer); otherwise the source wallet's history is read, `decide` asked (`Ok` proceeds,
    /// `Err` refuses), and the wallet's uncommitted ledger balance checked against `amount + fee_reserve`.
    /// No customer account is touched now or at settlement.
    pub async fn create_custodian_transfer<D>(
        &self,
        new: &NewCustodianTransfer,
        fee_reserve: Amount,
        history_len_max: usize,
        decide: impl FnOnce(&[PastWithdrawal]) -> std::result::Result<(), D>,
        now_ms: i64,
    ) -> Result<CustodianTransferOutcome<D>> {
        let mut tx = self.begin_write().await?;
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1");
        if let Some(r) = sqlx::query(crate::sql(q)).bind(&new.id).fetch_optional(&mut *tx).await? {
            let row = WithdrawalRow::from_row(&r)?;
            if row.kind != WithdrawalKind::CustodianTransfer || row.intent_hash != new.intent_hash {
                return Err(StoreError::Conflict(format!("withdrawal {} exists with another intent", new.id)));
            }
            return Ok(CustodianTransferOutcome::Existing(row));
        }
        // PostgreSQL: serialise with customer withdrawals' decisions and nonce reservation on this wallet.
        let lock = format!("SELECT address FROM wallets WHERE address = $1{}", self.for_update());
        sqlx::query(crate::sql(lock)).bind(&new.source_wallet).fetch_optional(&mut *tx).await?;
        let history =
            crate::policies::wallet_history_tx(&mut tx, &new.source_wallet, new.asset.as_str(), history_len_max)
                .await?;
        if let Err(d) = decide(&history) {
            return Ok(CustodianTransferOutcome::Refused(d));
        }
        let uncommitted = uncommitted_tx(&mut tx, &new.source_wallet, &new.asset).await?;
        let needed = new
            .amount
            .checked_add(fee_reserve)
            .map_err(|e| StoreError::Conflict(format!("amount plus fee reserve: {e}")))?;
        if uncommitted < needed {
            return Ok(CustodianTransferOutcome::Insufficient { uncommitted, needed });
        }
        insert_custodian_transfer(&mut tx, new, now_ms).await?;
        let q = format!("SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE id = $1");
        let row = WithdrawalRow::from_row(&sqlx::query(crate::sql(q)).bind(&new.id).fetch_one(&mut *tx).await?)?;
        tx.commit().await?;
        Ok(CustodianTransferOutcome::Created(row))
    }
}

/// The wallet's ledger balance in `asset` less the amounts of its withdrawals that have not settled yet
/// (they still leave the wallet), floored at zero.
/// Writes a custodian transfer row (`approved`, the reserved customer `custodian`) inside `tx`; shared by
/// operator transfers, tier sweeps, deposit sweeps and evacuations so every such row has the same shape.
/// (customer, idempotency key) is unique: the row id doubles as the key, one row per id.
pub(crate) async fn insert_custodian_transfer(tx: &mut Tx, new: &NewCustodianTransfer, now_ms: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO withdrawals (id, kind, customer_id, asset, chain, amount, destination, source_wallet, status, \
         intent_hash, idempotency_key, request_hash, confirmations, lease_until_ms, next_attempt_at_ms, created_at_ms, \
         updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, 0, $13, $14, $15)",
    )
    .bind(&new.id)
    .bind(WithdrawalKind::CustodianTransfer.as_str())
    .bind(CUSTODIAN_CUSTOMER_ID)
    .bind(new.asset.as_str())
    .bind(&new.chain)
    .bind(new.amount.to_string())
    .bind(&new.destination)
    .bind(&new.source_wallet)
    .bind(WithdrawalStatus::Approved.as_str())
    .bind(&new.intent_hash)
    .bind(&new.id)
    .bind(&new.intent_hash)
    .bind(now_ms)
    .bind(now_ms)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn uncommitted_tx(tx: &mut Tx, wallet: &str, asset: &AssetCode) -> Result<Amount> {
    let account = AccountRef::wallet(wallet, asset);
    let balance = match sqlx::query("SELECT debits, credits FROM ledger_accounts WHERE account = $1")
        .bind(account.to_string())
        .fetch_optional(&mut **tx)
        .await?
    {
        Some(r) => {
            let debits = crate::parse_u128("ledger_accounts.debits", &r.try_get::<String, _>("debits")?)?;
            let credits = crate::parse_u128("ledger_accounts.credits", &r.try_get::<String, _>("credits")?)?;
            debits.saturating_sub(credits)
        }
        None => 0,
    };
    debug_assert_eq!(AccountKind::Wallet, account.kind);
    let amounts: Vec<String> = sqlx::query_scalar(
        "SELECT amount FROM withdrawals WHERE source_wallet = $1 AND asset = $2 AND status NOT IN ($3, $4, $5) LIMIT $6",
    )
    .bind(wallet)
    .bind(asset.as_str())
    .bind(WithdrawalStatus::Settled.as_str())
    .bind(WithdrawalStatus::Failed.as_str())
    .bind(WithdrawalStatus::Cancelled.as_str())
    .bind(IN_FLIGHT_READ_MAX + 1)
    .fetch_all(&mut **tx)
    .await?;
    if amounts.len() as i64 > IN_FLIGHT_READ_MAX {
        return Err(StoreError::Conflict(format!(
            "more than {IN_FLIGHT_READ_MAX} unsettled withdrawals from {wallet}: cannot tell what it still owes"
        )));
    }
    let mut owed: u128 = 0;
    for a in amounts {
        owed = owed.saturating_add(crate::parse_u128("withdrawals.amount", &a)?);
    }
    Ok(Amount::from_base_units(balance.saturating_sub(owed)))
}
