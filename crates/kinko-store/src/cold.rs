//! Storage of wallet tiers and cold storage (K13, K14, migration 0024): what is moving between a hot and a
//! cold wallet, the reservation of a cold row's nonce without signing it, the exported unsigned bundles, and
//! the import of an offline signature (`awaiting_offline_signature → signed`) in one transaction.

use kinko_core::withdrawal::{WithdrawalKind, WithdrawalStatus};
use sqlx::Row;

use crate::pipeline::{FeePlan, TxVersion};
use crate::{Result, Store, StoreError, sql};

/// The ops request kind of a cold → hot refill (K14).
pub const COLD_REFILL_KIND: &str = "cold_refill";

/// Movements between a hot and a cold wallet that have not finished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// hot → cold custodian transfers not yet settled (or closed).
    pub sweeps: usize,
    /// cold → hot refills: open `cold_refill` requests plus unfinished cold → hot rows.
    pub refills: usize,
}

/// One exported bundle (`offline_bundles`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineBundleRow {
    pub withdrawal_id: String,
    pub unsigned_json: String,
    pub unsigned_sha256: String,
    pub exported_at_ms: i64,
    pub imported_at_ms: Option<i64>,
    pub tx_hash: Option<String>,
}

/// What [`Store::import_offline_signature`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Stored and moved to `signed`: the pipeline broadcasts it.
    Imported,
    /// The same signed transaction was imported before: nothing changed.
    AlreadyImported,
}

/// Bound on the unsettled withdrawals one read sums (far above what one wallet has in flight).
const UNSETTLED_READ_MAX: i64 = 10_000;

const TERMINAL: [WithdrawalStatus; 3] =
    [WithdrawalStatus::Settled, WithdrawalStatus::Failed, WithdrawalStatus::Cancelled];

impl Store {
    /// Unfinished movements of `asset` between `hot` and `cold` (lower-case 0x-hex). A `cold_refill` request
    /// rejected or failed at or after `closed_since_ms` still counts as a refill in flight, so operators who
    /// turned one down are not asked again at once.
    pub async fn tier_movements_in_flight(
        &self,
        hot: &str,
        cold: &str,
        asset: &str,
        closed_since_ms: i64,
    ) -> Result<InFlight> {
        let q = "SELECT COUNT(*) FROM withdrawals WHERE kind = $1 AND source_wallet = $2 AND destination = $3 \
                 AND asset = $4 AND status NOT IN ($5, $6, $7)";
        let mut n = [0i64; 2];
        for (i, (src, dst)) in [(hot, cold), (cold, hot)].into_iter().enumerate() {
            n[i] = sqlx::query_scalar(q)
                .bind(WithdrawalKind::CustodianTransfer.as_str())
                .bind(src)
                .bind(dst)
                .bind(asset)
                .bind(TERMINAL[0].as_str())
                .bind(TERMINAL[1].as_str())
                .bind(TERMINAL[2].as_str())
                .fetch_one(self.pool())
                .await?;
        }
        // A refill request approved and executed has its withdrawals row, counted above; one still waiting
        // for approvals or execution is counted here. Requests name their wallets in the params.
        let open: Vec<String> = sqlx::query_scalar(
            "SELECT params_json FROM ops_requests WHERE kind = $1 AND (state IN ($2, $3) \
             OR (state IN ($4, $5) AND updated_at_ms >= $6))",
        )
        .bind(COLD_REFILL_KIND)
        .bind(crate::ops_requests::STATE_REQUESTED)
        .bind(crate::ops_requests::STATE_APPROVED)
        .bind(crate::ops_requests::STATE_REJECTED)
        .bind(crate::ops_requests::STATE_FAILED)
        .bind(closed_since_ms)
        .fetch_all(self.pool())
        .await?;
        let open = open
            .iter()
            .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .filter(|p| p["source_wallet"] == cold && p["destination"] == hot && p["asset"] == asset)
            .count();
        Ok(InFlight { sweeps: n[0] as usize, refills: n[1] as usize + open })
    }

    /// The sum of `asset` amounts of `wallet`'s withdrawals that have not settled or closed: they still leave
    /// the wallet, so they are not part of what it can move elsewhere. Bounded read.
    pub async fn unsettled_outflows(&self, wallet: &str, asset: &str) -> Result<kinko_core::Amount> {
        let amounts: Vec<String> = sqlx::query_scalar(
            "SELECT amount FROM withdrawals WHERE source_wallet = $1 AND asset = $2 AND status NOT IN ($3, $4, $5) LIMIT $6",
        )
        .bind(wallet)
        .bind(asset)
        .bind(TERMINAL[0].as_str())
        .bind(TERMINAL[1].as_str())
        .bind(TERMINAL[2].as_str())
        .bind(UNSETTLED_READ_MAX)
        .fetch_all(self.pool())
        .await?;
        let mut total = 0u128;
        for a in &amounts {
            total = total.saturating_add(crate::parse_u128("withdrawals.amount", a)?);
        }
        Ok(kinko_core::Amount::from_base_units(total))
    }

    /// approved → awaiting_offline_signature for a cold row (K14): reserves the cold wallet's next nonce
    /// (never below `chain_nonce`) and persists the fee plan, exactly like [`Store::reserve_nonce`], but the
    /// row waits for an imported signature instead of the online signer. `None` when another worker moved
    /// it first.
    pub async fn reserve_nonce_offline(
        &self,
        withdrawal_id: &str,
        wallet: &str,
        chain_nonce: u64,
        plan: FeePlan,
        now_ms: i64,
    ) -> Result<Option<u64>> {
        WithdrawalStatus::Approved
            .transition(WithdrawalStatus::AwaitingOfflineSignature)
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        self.reserve_nonce_into(
            WithdrawalStatus::AwaitingOfflineSignature,
            withdrawal_id,
            wallet,
            chain_nonce,
            plan,
            now_ms,
        )
        .await
    }

    /// The tier (`hot`, `cold`, …) and key id of one of the custodian's wallets.
    pub async fn wallet_tier_and_key(&self, address: &str) -> Result<Option<(String, String)>> {
        let r = sqlx::query("SELECT tier, key_id FROM wallets WHERE address = $1")
            .bind(address)
            .fetch_optional(self.pool())
            .await?;
        r.map(|r| Ok((r.try_get("tier")?, r.try_get("key_id")?))).transpose()
    }

    /// Stores the exported bundle of a row waiting for its offline signature, once: a second export returns
    /// the bundle stored first (the operator gets the same file again), never a new one.
    pub async fn record_offline_bundle(
        &self,
        withdrawal_id: &str,
        unsigned_json: &str,
        unsigned_sha256: &str,
        now_ms: i64,
    ) -> Result<OfflineBundleRow> {
        let mut tx = self.begin_write().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM withdrawals WHERE id = $1")
            .bind(withdrawal_id)
            .fetch_optional(&mut *tx)
            .await?;
        let status = status.ok_or(StoreError::NotFound)?;
        let existing = offline_bundle_tx(&mut tx, withdrawal_id).await?;
        if let Some(row) = existing {
            return Ok(row);
        }
        if status != WithdrawalStatus::AwaitingOfflineSignature.as_str() {
            return Err(StoreError::Conflict(format!(
                "withdrawal {withdrawal_id} is {status}, not awaiting_offline_signature"
            )));
        }
        sqlx::query(
            "INSERT INTO offline_bundles (withdrawal_id, unsigned_json, unsigned_sha256, exported_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(withdrawal_id)
        .bind(unsigned_json)
        .bind(unsigned_sha256)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let row = offline_bundle_tx(&mut tx, withdrawal_id).await?.ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn offline_bundle(&self, withdrawal_id: &str) -> Result<Option<OfflineBundleRow>> {
        let mut tx = self.pool().begin().await?;
        let row = offline_bundle_tx(&mut tx, withdrawal_id).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The exported bundle whose sha256 is `unsigned_sha256` (what a signed file names).
    pub async fn offline_bundle_by_sha256(&self, unsigned_sha256: &str) -> Result<Option<OfflineBundleRow>> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT withdrawal_id FROM offline_bundles WHERE unsigned_sha256 = $1 LIMIT 1")
                .bind(unsigned_sha256.to_ascii_lowercase())
                .fetch_optional(self.pool())
                .await?;
        match id {
            Some(id) => self.offline_bundle(&id).await,
            None => Ok(None),
        }
    }

    /// Imports a verified offline signature (K14): in one transaction, checks the stored bundle is still the
    /// one verified against (`unsigned_sha256`), stores the raw transaction and moves the row
    /// awaiting_offline_signature → signed; the pipeline broadcasts it from there. Importing the same
    /// transaction again is a no-op; a different one for the same row is a conflict.
    pub async fn import_offline_signature(
        &self,
        withdrawal_id: &str,
        unsigned_sha256: &str,
        version: &TxVersion,
        now_ms: i64,
    ) -> Result<ImportOutcome> {
        WithdrawalStatus::AwaitingOfflineSignature
            .transition(WithdrawalStatus::Signed)
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let bundle = offline_bundle_tx(&mut tx, withdrawal_id)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("withdrawal {withdrawal_id} has no exported bundle")))?;
        if bundle.unsigned_sha256 != unsigned_sha256 {
            return Err(StoreError::Conflict(
                "the stored bundle is not the one the signature was verified against".into(),
            ));
        }
        if let Some(done) = &bundle.tx_hash {
            return if *done == version.tx_hash {
                Ok(ImportOutcome::AlreadyImported)
            } else {
                Err(StoreError::Conflict(format!(
                    "withdrawal {withdrawal_id} already has the imported transaction {done}; another is refused"
                )))
            };
        }
        let moved = sqlx::query(
            "UPDATE withdrawals SET status = $1, tx_hash = $2, updated_at_ms = $3, error = NULL, next_attempt_at_ms = $3 \
             WHERE id = $4 AND status = $5 AND nonce = $6 AND planned_max_fee_per_gas = $7 \
             AND planned_max_priority_fee_per_gas = $8 AND gas_limit = $9",
        )
        .bind(WithdrawalStatus::Signed.as_str())
        .bind(&version.tx_hash)
        .bind(now_ms)
        .bind(withdrawal_id)
        .bind(WithdrawalStatus::AwaitingOfflineSignature.as_str())
        .bind(version.nonce as i64)
        .bind(version.fees.max_fee_per_gas.to_string())
        .bind(version.fees.max_priority_fee_per_gas.to_string())
        .bind(version.fees.gas_limit as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Err(StoreError::Conflict(format!(
                "withdrawal {withdrawal_id} is not awaiting an offline signature with this nonce and fee plan"
            )));
        }
        crate::pipeline::insert_tx_version(&mut tx, withdrawal_id, version, now_ms).await?;
        sqlx::query("UPDATE offline_bundles SET imported_at_ms = $1, tx_hash = $2 WHERE withdrawal_id = $3")
            .bind(now_ms)
            .bind(&version.tx_hash)
            .bind(withdrawal_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ImportOutcome::Imported)
    }

    /// An operator abandons a cold row before its signature was imported (K14): awaiting_offline_signature →
    /// `to` (failed or cancelled). Its nonce is handed back when it is the cold wallet's latest reservation;
    /// otherwise later rows hold nonces above it and abandoning it would leave a gap, so it is refused.
    pub async fn abandon_offline(&self, withdrawal_id: &str, to: WithdrawalStatus, now_ms: i64) -> Result<()> {
        WithdrawalStatus::AwaitingOfflineSignature.transition(to).map_err(|e| StoreError::Conflict(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("SELECT source_wallet, nonce, status FROM withdrawals WHERE id = $1")
            .bind(withdrawal_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let (wallet, nonce, status): (String, Option<i64>, String) =
            (r.try_get("source_wallet")?, r.try_get("nonce")?, r.try_get("status")?);
        if status != WithdrawalStatus::AwaitingOfflineSignature.as_str() {
            return Err(StoreError::Conflict(format!("withdrawal {withdrawal_id} is {status}")));
        }
        let nonce = nonce.ok_or_else(|| StoreError::Corrupt(format!("withdrawal {withdrawal_id} has no nonce")))?;
        let q = format!("SELECT next_nonce FROM wallets WHERE address = $1{}", self.for_update());
        let next: i64 = sqlx::query_scalar(sql(q)).bind(&wallet).fetch_one(&mut *tx).await?;
        if next != nonce + 1 {
            return Err(StoreError::Conflict(format!(
                "withdrawal {withdrawal_id} holds nonce {nonce} of {wallet}, and later rows hold nonces after it"
            )));
        }
        sqlx::query("UPDATE wallets SET next_nonce = $1 WHERE address = $2")
            .bind(nonce)
            .bind(&wallet)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE withdrawals SET status = $1, nonce = NULL, updated_at_ms = $2 WHERE id = $3 AND status = $4",
        )
        .bind(to.as_str())
        .bind(now_ms)
        .bind(withdrawal_id)
        .bind(WithdrawalStatus::AwaitingOfflineSignature.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn offline_bundle_tx(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    withdrawal_id: &str,
) -> Result<Option<OfflineBundleRow>> {
    let r = sqlx::query(
        "SELECT withdrawal_id, unsigned_json, unsigned_sha256, exported_at_ms, imported_at_ms, tx_hash \
         FROM offline_bundles WHERE withdrawal_id = $1",
    )
    .bind(withdrawal_id)
    .fetch_optional(&mut **tx)
    .await?;
    r.map(|r| {
        Ok(OfflineBundleRow {
            withdrawal_id: r.try_get("withdrawal_id")?,
            unsigned_json: r.try_get("unsigned_json")?,
            unsigned_sha256: r.try_get("unsigned_sha256")?,
            exported_at_ms: r.try_get("exported_at_ms")?,
            imported_at_ms: r.try_get("imported_at_ms")?,
            tx_hash: r.try_get("tx_hash")?,
        })
    })
    .transpose()
}
