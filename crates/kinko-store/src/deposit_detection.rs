//! Deposit detection's persistence (M6, C2): the window of processed blocks, the watched addresses,
//! and the atomic steps the watcher takes per block. Each step is one write transaction, and every
//! deposit id is derived from what identifies it on chain, so replaying a block after a crash (kill -9
//! between any two statements) finds the same ids and posts nothing twice.

use kinko_core::deposit::{DepositStatus, is_creditable};
use kinko_core::ledger::{AccountKind, AccountRef, postings};
use kinko_core::reorg::{BlockHeader, REORG_DEPTH_MAX};
use kinko_core::{Amount, AssetCode};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::deposits::{DEPOSIT_COLUMNS, DepositRow};
use crate::{Result, Store, StoreError, Tx, parse_hash};

/// Bound on rows one watched-address page returns.
pub const WATCHED_PAGE_MAX: u32 = 50_000;

/// A customer's deposit address on a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedAddress {
    /// Lower-case 0x-hex on EVM chains; the bech32 text (lower case) on Bitcoin.
    pub address: String,
    pub customer_id: String,
    pub asset: AssetCode,
    pub created_at_ms: i64,
}

/// A transfer to a watched address found in a block, before it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectedTransfer {
    /// The deposit address as stored in `deposit_addresses` (lower-case 0x-hex on EVM, bech32 on Bitcoin).
    pub address: String,
    pub tx_hash: [u8; 32],
    /// 0 for native-value transfers (they have no log); the log index for token transfers; the output
    /// index (vout) on Bitcoin.
    pub log_index: u64,
    pub amount: Amount,
    /// The token asset of an ERC-20 `Transfer` log (K22); `None` for the chain's native coin (the
    /// `asset` given to [`Store::record_block`]).
    pub asset: Option<AssetCode>,
}

/// What recording one block did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedBlock {
    /// Ids of deposits created by this block.
    pub detected: Vec<String>,
    /// Ids of deposits credited because this block gave them enough confirmations.
    pub credited: Vec<String>,
}

/// What rewinding one block did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewoundBlock {
    pub dropped: Vec<String>,
    pub reversed: Vec<String>,
    /// Customers whose reversal exceeded their available balance (flagged for operators).
    pub negative_positions: Vec<String>,
}

/// The deterministic id of a deposit: the same (chain, tx, log, block) always gives the same id.
pub fn deposit_id(chain: &str, tx_hash: &[u8; 32], log_index: u64, block_hash: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(chain.as_bytes());
    h.update(b"|");
    h.update(tx_hash);
    h.update(b"|");
    h.update(log_index.to_be_bytes());
    h.update(b"|");
    h.update(block_hash);
    format!("dep_{}", &hex::encode(h.finalize())[..16])
}

impl Store {
    /// The persisted window of processed blocks for a chain, oldest first (at most `REORG_DEPTH_MAX`).
    pub async fn chain_window(&self, chain: &str) -> Result<Vec<BlockHeader>> {
        let rows = sqlx::query(
            "SELECT number, hash, parent_hash FROM chain_blocks WHERE chain = $1 ORDER BY number DESC LIMIT $2",
        )
        .bind(chain)
        .bind(REORG_DEPTH_MAX as i64)
        .fetch_all(self.pool())
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(BlockHeader {
                    number: r.try_get::<i64, _>("number")? as u64,
                    hash: parse_hash("chain_blocks.hash", &r.try_get::<String, _>("hash")?)?,
                    parent_hash: parse_hash("chain_blocks.parent_hash", &r.try_get::<String, _>("parent_hash")?)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Deposit addresses of a chain created at or after `since_ms`, in (created_at_ms, address) order,
    /// starting after `after` (keyset paging). The watcher calls this each cycle with a little slack
    /// before the newest time it has seen, so rows committed late are not missed.
    pub async fn watched_addresses_page(
        &self,
        chain: &str,
        since_ms: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<WatchedAddress>> {
        let (after_ms, after_addr) = after.unwrap_or((i64::MIN, ""));
        let rows = sqlx::query(
            "SELECT address, customer_id, asset, created_at_ms FROM deposit_addresses \
             WHERE chain = $1 AND created_at_ms >= $2 AND (created_at_ms > $3 OR (created_at_ms = $3 AND address > $4)) \
             ORDER BY created_at_ms, address LIMIT $5",
        )
        .bind(chain)
        .bind(since_ms)
        .bind(after_ms)
        .bind(after_addr)
        .bind(i64::from(limit.min(WATCHED_PAGE_MAX)))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(watched_from_row).collect()
    }

    /// Who owns a deposit address (lower-case 0x-hex) on a chain.
    pub async fn watched_address(&self, chain: &str, address: &str) -> Result<Option<WatchedAddress>> {
        let row = sqlx::query(
            "SELECT address, customer_id, asset, created_at_ms FROM deposit_addresses WHERE chain = $1 AND address = $2",
        )
        .bind(chain)
        .bind(address)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(watched_from_row).transpose()
    }

    /// Records one processed block in one transaction: its window row, a pending deposit (and its
    /// `deposit_detected` posting) per transfer, then the confirmation count of every pending deposit,
    /// crediting those that reached `confirmations_min` (C2). Confirmations count from this block, the
    /// tip of the chain the watcher has verified, not the node's claimed tip. Recording a block that is
    /// already recorded with the same hash does nothing.
    pub async fn record_block(
        &self,
        chain: &str,
        asset: &AssetCode,
        header: &BlockHeader,
        transfers: &[DetectedTransfer],
        confirmations_min: u64,
        now_ms: i64,
    ) -> Result<RecordedBlock> {
        let mut tx = self.begin_write().await?;
        let out = self.record_block_in(&mut tx, chain, asset, header, transfers, confirmations_min, now_ms).await?;
        tx.commit().await?;
        Ok(out.unwrap_or_default())
    }

    /// [`Store::record_block`] inside the caller's transaction, so a chain adapter can commit its own
    /// per-block rows (Bitcoin's UTXOs) atomically with the block. `None`: the block was already recorded
    /// with this hash, and nothing was written.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_block_in(
        &self,
        tx: &mut Tx,
        chain: &str,
        asset: &AssetCode,
        header: &BlockHeader,
        transfers: &[DetectedTransfer],
        confirmations_min: u64,
        now_ms: i64,
    ) -> Result<Option<RecordedBlock>> {
        let block_hash = hex::encode(header.hash);
        let existing: Option<String> =
            sqlx::query_scalar("SELECT hash FROM chain_blocks WHERE chain = $1 AND number = $2")
                .bind(chain)
                .bind(header.number as i64)
                .fetch_optional(&mut **tx)
                .await?;
        match existing {
            Some(h) if h == block_hash => return Ok(None),
            Some(h) => {
                return Err(StoreError::Conflict(format!(
                    "chain {chain} block {} is recorded with hash {h}, not {block_hash}: rewind it first",
                    header.number
                )));
            }
            None => {}
        }
        sqlx::query("INSERT INTO chain_blocks (chain, number, hash, parent_hash) VALUES ($1, $2, $3, $4)")
            .bind(chain)
            .bind(header.number as i64)
            .bind(&block_hash)
            .bind(hex::encode(header.parent_hash))
            .execute(&mut **tx)
            .await?;
        // The window only needs REORG_DEPTH_MAX blocks; older rows are dead weight.
        sqlx::query("DELETE FROM chain_blocks WHERE chain = $1 AND number <= $2")
            .bind(chain)
            .bind(header.number as i64 - REORG_DEPTH_MAX as i64)
            .execute(&mut **tx)
            .await?;

        let mut out = RecordedBlock::default();
        for t in transfers {
            let owner = sqlx::query("SELECT customer_id FROM deposit_addresses WHERE chain = $1 AND address = $2")
                .bind(chain)
                .bind(&t.address)
                .fetch_optional(&mut **tx)
                .await?;
            let Some(owner) = owner else {
                tracing::warn!(chain, address = %t.address, "transfer to an address that is not a deposit address; ignored");
                continue;
            };
            let customer_id: String = owner.try_get("customer_id")?;
            // kinko's own gas top-up (hot wallet → a deposit address, ahead of a token sweep) is custodian
            // money, not a customer deposit. Only top-ups are skipped: a customer's withdrawal to another
            // customer's deposit address is a real deposit and is credited.
            if t.asset.is_none() {
                let top_up: Option<String> = sqlx::query_scalar(
                    "SELECT w.withdrawal_id FROM withdrawal_txs w JOIN deposit_sweeps s ON s.withdrawal_id = w.withdrawal_id \
                     WHERE w.tx_hash = $1 AND s.purpose = $2",
                )
                .bind(format!("0x{}", hex::encode(t.tx_hash)))
                .bind(crate::sweeps::PURPOSE_TOP_UP)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some(withdrawal_id) = top_up {
                    tracing::info!(chain, address = %t.address, withdrawal_id, "gas top-up by kinko; not a deposit");
                    continue;
                }
            }
            // A token deposit's id is derived under `chain:ASSET`, so it can never collide with a native
            // transfer's (log index 0) in the same transaction, whatever the chain's account model allows.
            let (asset, id) = match &t.asset {
                Some(token) => (token, deposit_id(&format!("{chain}:{token}"), &t.tx_hash, t.log_index, &header.hash)),
                None => (asset, deposit_id(chain, &t.tx_hash, t.log_index, &header.hash)),
            };
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM deposits WHERE id = $1")
                .bind(&id)
                .fetch_optional(&mut **tx)
                .await?;
            match status.as_deref() {
                None => {}
                Some("pending") | Some("credited") => continue,
                // The same tx in the same block hash, after that block was orphaned: the chain flipped
                // back. The schema keeps one row per (tx, block), so halt for an operator rather than
                // guess (the customer's funds are on chain and in the wallet; nothing is lost).
                Some(other) => {
                    return Err(StoreError::Conflict(format!(
                        "deposit {id} was {other} but its block {} is canonical again; operator review needed",
                        header.number
                    )));
                }
            }
            sqlx::query(
                "INSERT INTO deposits (id, chain, asset, customer_id, address, tx_hash, log_index, block_number, block_hash, \
                 amount, status, confirmations, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(&id)
            .bind(chain)
            .bind(asset.as_str())
            .bind(&customer_id)
            .bind(&t.address)
            .bind(hex::encode(t.tx_hash))
            .bind(t.log_index as i64)
            .bind(header.number as i64)
            .bind(&block_hash)
            .bind(t.amount.to_string())
            .bind(DepositStatus::Pending.as_str())
            .bind(1_i64)
            .bind(now_ms)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
            self.post_entry(tx, postings::deposit_detected(&id, &customer_id, &t.address, asset, t.amount), now_ms)
                .await?;
            out.detected.push(id);
        }

        let q = format!(
            "SELECT {DEPOSIT_COLUMNS} FROM deposits WHERE chain = $1 AND status = $2 AND block_number <= $3{}",
            self.for_update()
        );
        let pending = sqlx::query(crate::sql(q))
            .bind(chain)
            .bind(DepositStatus::Pending.as_str())
            .bind(header.number as i64)
            .fetch_all(&mut **tx)
            .await?;
        for row in &pending {
            let d = DepositRow::from_row(row)?;
            let confirmations = kinko_core::deposit::confirmations(header.number, d.block_number);
            let status = if is_creditable(header.number, d.block_number, confirmations_min) {
                self.post_entry(tx, postings::deposit_confirmed(&d.id, &d.customer_id, &d.asset, d.amount), now_ms)
                    .await?;
                out.credited.push(d.id.clone());
                DepositStatus::Credited
            } else {
                DepositStatus::Pending
            };
            sqlx::query("UPDATE deposits SET status = $1, confirmations = $2, updated_at_ms = $3 WHERE id = $4")
                .bind(status.as_str())
                .bind(confirmations as i64)
                .bind(now_ms)
                .bind(&d.id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(Some(out))
    }

    /// Undoes block `number` after a re-org orphaned it, in one transaction: removes its window row,
    /// drops its pending deposits and reverses its credited ones (C2). A reversal takes what it can
    /// from the customer's available balance; the rest becomes a receivable (a negative position that
    /// blocks withdrawals).
    pub async fn rewind_block(&self, chain: &str, number: u64, now_ms: i64) -> Result<RewoundBlock> {
        let mut tx = self.begin_write().await?;
        let out = self.rewind_block_in(&mut tx, chain, number, now_ms).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// [`Store::rewind_block`] inside the caller's transaction (see [`Store::record_block_in`]).
    pub async fn rewind_block_in(&self, tx: &mut Tx, chain: &str, number: u64, now_ms: i64) -> Result<RewoundBlock> {
        sqlx::query("DELETE FROM chain_blocks WHERE chain = $1 AND number = $2")
            .bind(chain)
            .bind(number as i64)
            .execute(&mut **tx)
            .await?;
        let q = format!(
            "SELECT {DEPOSIT_COLUMNS} FROM deposits WHERE chain = $1 AND block_number = $2 AND status IN ($3, $4) ORDER BY id{}",
            self.for_update()
        );
        let rows = sqlx::query(crate::sql(q))
            .bind(chain)
            .bind(number as i64)
            .bind(DepositStatus::Pending.as_str())
            .bind(DepositStatus::Credited.as_str())
            .fetch_all(&mut **tx)
            .await?;
        let mut out = RewoundBlock::default();
        for row in &rows {
            let d = DepositRow::from_row(row)?;
            let next = match d.status {
                DepositStatus::Pending => {
                    let draft = postings::deposit_dropped(&d.id, &d.customer_id, &d.address, &d.asset, d.amount);
                    self.post_entry(tx, draft, now_ms).await?;
                    out.dropped.push(d.id.clone());
                    DepositStatus::Dropped
                }
                DepositStatus::Credited => {
                    let available = AccountRef::customer(AccountKind::Available, &d.customer_id, &d.asset);
                    let available_now = self.load_balance(tx, &available).await?.normal_amount(AccountKind::Available);
                    let draft = postings::deposit_reversed(
                        &d.id,
                        &d.customer_id,
                        &d.address,
                        &d.asset,
                        d.amount,
                        available_now,
                    );
                    self.post_entry(tx, draft, now_ms).await?;
                    if d.amount > available_now {
                        // Flag for operators: the customer already spent the credit, the receivable is the
                        // custodian's exposure and blocks the customer's withdrawals until settled.
                        let shortfall =
                            d.amount.checked_sub(available_now).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        tracing::error!(
                            customer = %d.customer_id, deposit = %d.id, asset = %d.asset, shortfall = %shortfall,
                            "NEGATIVE POSITION: a re-org reversed a credit the customer had already spent; withdrawals blocked"
                        );
                        out.negative_positions.push(d.customer_id.clone());
                    }
                    out.reversed.push(d.id.clone());
                    DepositStatus::Reversed
                }
                DepositStatus::Dropped | DepositStatus::Reversed => continue,
            };
            tracing::warn!(deposit = %d.id, chain, block = number, status = %next, "deposit orphaned by a re-org");
            sqlx::query("UPDATE deposits SET status = $1, confirmations = 0, updated_at_ms = $2 WHERE id = $3")
                .bind(next.as_str())
                .bind(now_ms)
                .bind(&d.id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(out)
    }
}

fn watched_from_row(r: &sqlx::any::AnyRow) -> Result<WatchedAddress> {
    Ok(WatchedAddress {
        address: r.try_get("address")?,
        customer_id: r.try_get("customer_id")?,
        asset: r
            .try_get::<String, _>("asset")?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("deposit_addresses.asset: {e}")))?,
        created_at_ms: r.try_get("created_at_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m6_deposit_ids_are_deterministic_and_distinct() {
        let a = deposit_id("eth", &[1; 32], 0, &[2; 32]);
        assert_eq!(a, deposit_id("eth", &[1; 32], 0, &[2; 32]));
        assert_eq!(a.len(), 4 + 16);
        assert_ne!(a, deposit_id("eth", &[1; 32], 0, &[3; 32]));
        assert_ne!(a, deposit_id("eth", &[1; 32], 1, &[2; 32]));
        assert_ne!(a, deposit_id("base", &[1; 32], 0, &[2; 32]));
    }
}
