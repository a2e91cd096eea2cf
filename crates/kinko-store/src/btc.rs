//! Bitcoin's persistence (issue #9; M5, M6, C2, C5): customers' BIP84 receive addresses, the custodian's
//! change addresses, and the custodian's UTXO set.
//!
//! Bitcoin deposits travel the chain-generic deposit path of [`crate::deposit_detection`] with chain
//! `btc:<network>`, asset `BTC`, tx hash = the txid and log index = the output index (vout): one ledger path for
//! every chain. What Bitcoin adds is the UTXO set, and it is written **in the same transaction** as the block
//! that created or spent each output ([`Store::btc_record_block`], [`Store::btc_rewind_block`]), so the
//! window, the deposits and the UTXOs can never disagree, and replaying a block after a crash writes nothing
//! twice (the block is already in the window, so nothing at all is written).
//!
//! This module knows no Bitcoin types (the store does not depend on rust-bitcoin): scripts are bytes, hashes
//! are 32 bytes in display order (as Core's RPC and block explorers print them); the caller derives
//! addresses (`kinko_server::btc_watcher`).

use std::collections::{BTreeSet, HashSet};

use kinko_core::reorg::BlockHeader;
use kinko_core::{Amount, AssetCode};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::customers::is_unique_violation;
use crate::deposit_detection::{DetectedTransfer, RecordedBlock, RewoundBlock};
use crate::{Result, Store, StoreError, Tx, parse_hash};

/// The asset code of bitcoin in the ledger; amounts are in satoshi.
pub const BTC_ASSET: &str = "BTC";
/// BIP44 keychain of customers' receive addresses.
pub const KEYCHAIN_RECEIVE: u32 = 0;
/// BIP44 keychain of the custodian's change addresses.
pub const KEYCHAIN_CHANGE: u32 = 1;
/// Largest non-hardened BIP32 child index: addresses past it cannot be derived from an xpub.
pub const DERIVATION_INDEX_MAX: u32 = (1 << 31) - 1;
/// Bound on rows one page of watched Bitcoin addresses returns.
pub const BTC_ADDRESS_PAGE_MAX: u32 = 50_000;
/// Bound on UTXOs one spendable query returns (coin selection never needs more candidates than this).
pub const SPENDABLE_UTXOS_MAX: u32 = 10_000;
/// Confirmations before a coinbase output may be spent (consensus rule: 100 blocks).
pub const COINBASE_MATURITY_BLOCKS: u64 = 100;
/// Txids per lookup of a block's spends: well under SQLite's 32,766 and PostgreSQL's 65,535 bind parameters.
pub const SPEND_LOOKUP_BATCH: usize = 500;
/// Bound on retries when concurrent first requests for a deposit address collide (PostgreSQL).
pub const ADDRESS_ATTEMPTS_MAX: u32 = 3;

/// The store's chain name of a Bitcoin network (`btc:bitcoin`, `btc:testnet`, `btc:signet`, `btc:regtest`).
pub fn btc_chain(network: &str) -> String {
    format!("btc:{network}")
}

/// The ledger asset of bitcoin.
pub fn btc_asset() -> AssetCode {
    BTC_ASSET.parse().expect("BTC is a valid asset code")
}

/// An address derived by the caller for an index: its text and its output script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcDerived {
    pub address: String,
    pub script_pubkey: Vec<u8>,
}

/// An address of the custodian's Bitcoin account that kinko watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcAddressRow {
    pub chain: String,
    pub script_pubkey: Vec<u8>,
    pub address: String,
    pub keychain: u32,
    pub derivation_index: u32,
    /// The customer of a receive address; `None` for change.
    pub customer_id: Option<String>,
    pub created_at_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UtxoStatus {
    Unspent,
    Spent,
    /// Its block was orphaned by a re-org.
    RolledBack,
}

impl UtxoStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UtxoStatus::Unspent => "unspent",
            UtxoStatus::Spent => "spent",
            UtxoStatus::RolledBack => "rolled_back",
        }
    }

    fn parse(s: &str) -> Result<UtxoStatus> {
        match s {
            "unspent" => Ok(UtxoStatus::Unspent),
            "spent" => Ok(UtxoStatus::Spent),
            "rolled_back" => Ok(UtxoStatus::RolledBack),
            other => Err(StoreError::Corrupt(format!("btc_utxos.status: {other:?}"))),
        }
    }
}

/// One output of the custodian's UTXO set (C5: the creating transaction by txid and wtxid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcUtxo {
    pub chain: String,
    /// Display order.
    pub txid: [u8; 32],
    pub vout: u32,
    pub wtxid: [u8; 32],
    pub value_sat: u64,
    pub script_pubkey: Vec<u8>,
    pub keychain: u32,
    pub derivation_index: u32,
    pub coinbase: bool,
    pub block_height: u64,
    pub block_hash: [u8; 32],
    pub status: UtxoStatus,
    pub spent_by_txid: Option<[u8; 32]>,
    pub spent_by_wtxid: Option<[u8; 32]>,
    pub spent_height: Option<u64>,
}

/// An output of a block transaction paying a watched script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcOutput {
    pub vout: u32,
    pub value_sat: u64,
    pub script_pubkey: Vec<u8>,
}

/// What one block transaction means to the custodian's wallet: the outpoints it spends (every input; the
/// store marks those it tracks) and its outputs to watched scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtcBlockTx {
    pub txid: [u8; 32],
    pub wtxid: [u8; 32],
    pub coinbase: bool,
    /// (txid, vout) of each input; empty for a coinbase.
    pub spends: Vec<([u8; 32], u32)>,
    pub outputs: Vec<BtcOutput>,
}

/// What recording one Bitcoin block did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BtcRecordedBlock {
    /// False: the block was already recorded with this hash (a replay) and nothing was written.
    pub recorded: bool,
    pub deposits: RecordedBlock,
    /// Outpoints (txid, vout) added to (or revived in) the UTXO set.
    pub utxos_added: Vec<([u8; 32], u32)>,
    /// Tracked outpoints this block spent.
    pub utxos_spent: Vec<([u8; 32], u32)>,
}

/// What rewinding one Bitcoin block did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BtcRewoundBlock {
    pub deposits: RewoundBlock,
    /// Outputs created by the block, now rolled back.
    pub utxos_rolled_back: u64,
    /// Outputs the block had spent, unspent again.
    pub spends_undone: u64,
}

const ADDRESS_COLUMNS: &str = "chain, script_pubkey, address, keychain, derivation_index, customer_id, created_at_ms";
const UTXO_COLUMNS: &str = "chain, txid, vout, wtxid, value_sat, script_pubkey, keychain, derivation_index, coinbase, \
     block_height, block_hash, status, spent_by_txid, spent_by_wtxid, spent_height";

impl Store {
    /// The customer's Bitcoin deposit address on `chain`, derived on first use at the next unused BIP84 receive
    /// index (`0/<index>`); asking again returns the same address. The index comes from the counter
    /// `<chain>:receive` in the same transaction as the two inserts — `btc_addresses` (UTXO tracking) and
    /// `deposit_addresses` (the watched address the generic deposit path credits) — so no index is handed out
    /// twice and a failed insert burns none. `derive` maps an index to the address (public derivation from the
    /// account xpub, K6).
    ///
    /// One BTC deposit address per customer: `deposit_addresses` is unique per (customer, asset), so a fresh
    /// address per request would need that constraint changed first.
    pub async fn btc_deposit_address<E: From<StoreError>>(
        &self,
        customer_id: &str,
        chain: &str,
        derive: impl Fn(u32) -> std::result::Result<BtcDerived, E>,
        now_ms: i64,
    ) -> std::result::Result<BtcAddressRow, E> {
        for _ in 0..ADDRESS_ATTEMPTS_MAX {
            if let Some(existing) = self.btc_customer_address(customer_id, chain).await? {
                return Ok(existing);
            }
            if let Some(other) = self.deposit_address(customer_id, BTC_ASSET).await?
                && other.chain != chain
            {
                return Err(StoreError::Conflict(format!(
                    "customer {customer_id} already has a BTC deposit address on {}, not {chain}",
                    other.chain
                ))
                .into());
            }
            match self.btc_try_create_receive(customer_id, chain, &derive, now_ms).await {
                Ok(row) => return Ok(row),
                // A concurrent first request won a unique constraint (PostgreSQL): the counter's on its very
                // first use, the index's, or the customer's; this attempt rolled back whole. Read again.
                Err(TryCreate::Lost) => continue,
                Err(TryCreate::Other(e)) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "BTC deposit address of {customer_id}: still contended after {ADDRESS_ATTEMPTS_MAX} attempts"
        ))
        .into())
    }

    async fn btc_try_create_receive<E: From<StoreError>>(
        &self,
        customer_id: &str,
        chain: &str,
        derive: &impl Fn(u32) -> std::result::Result<BtcDerived, E>,
        now_ms: i64,
    ) -> std::result::Result<BtcAddressRow, TryCreate<E>> {
        let mut tx = self.begin_write().await.map_err(lost_or)?;
        let index = self.btc_next_index(&mut tx, chain, KEYCHAIN_RECEIVE).await.map_err(lost_or)?;
        let derived = derive(index).map_err(TryCreate::Other)?;
        let row = BtcAddressRow {
            chain: chain.to_string(),
            script_pubkey: derived.script_pubkey,
            address: derived.address,
            keychain: KEYCHAIN_RECEIVE,
            derivation_index: index,
            customer_id: Some(customer_id.to_string()),
            created_at_ms: now_ms,
        };
        self.btc_insert_address(&mut tx, &row).await.map_err(lost_or)?;
        sqlx::query(
            "INSERT INTO deposit_addresses (address, chain, asset, customer_id, derivation_index, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.address)
        .bind(chain)
        .bind(BTC_ASSET)
        .bind(customer_id)
        .bind(i64::from(index))
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| lost_or(e.into()))?;
        tx.commit().await.map_err(|e| lost_or(e.into()))?;
        Ok(row)
    }

    /// A new change address of the custodian on `chain`, at the next unused index of keychain 1. Change
    /// addresses are watched like receive addresses, so change outputs join the UTXO set; they are not deposits.
    pub async fn btc_new_change_address<E: From<StoreError>>(
        &self,
        chain: &str,
        derive: impl Fn(u32) -> std::result::Result<BtcDerived, E>,
        now_ms: i64,
    ) -> std::result::Result<BtcAddressRow, E> {
        let mut tx = self.begin_write().await?;
        let index = self.btc_next_index(&mut tx, chain, KEYCHAIN_CHANGE).await?;
        let derived = derive(index)?;
        let row = BtcAddressRow {
            chain: chain.to_string(),
            script_pubkey: derived.script_pubkey,
            address: derived.address,
            keychain: KEYCHAIN_CHANGE,
            derivation_index: index,
            customer_id: None,
            created_at_ms: now_ms,
        };
        self.btc_insert_address(&mut tx, &row).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(row)
    }

    async fn btc_next_index(&self, tx: &mut Tx, chain: &str, keychain: u32) -> Result<u32> {
        let name = match keychain {
            KEYCHAIN_RECEIVE => format!("{chain}:receive"),
            _ => format!("{chain}:change"),
        };
        let index = self.next_counter(tx, &name).await?;
        u32::try_from(index).ok().filter(|i| *i <= DERIVATION_INDEX_MAX).ok_or_else(|| {
            StoreError::Conflict(format!("counter {name}: index {index} is past the last non-hardened index"))
        })
    }

    async fn btc_insert_address(&self, tx: &mut Tx, row: &BtcAddressRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO btc_addresses (chain, script_pubkey, address, keychain, derivation_index, customer_id, \
             created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.chain)
        .bind(hex::encode(&row.script_pubkey))
        .bind(&row.address)
        .bind(i64::from(row.keychain))
        .bind(i64::from(row.derivation_index))
        .bind(row.customer_id.as_deref())
        .bind(row.created_at_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The customer's receive address on `chain`, if one was allocated.
    pub async fn btc_customer_address(&self, customer_id: &str, chain: &str) -> Result<Option<BtcAddressRow>> {
        let q = format!(
            "SELECT {ADDRESS_COLUMNS} FROM btc_addresses WHERE chain = $1 AND customer_id = $2 AND keychain = $3 \
             ORDER BY derivation_index LIMIT 1"
        );
        let row = sqlx::query(crate::sql(q))
            .bind(chain)
            .bind(customer_id)
            .bind(i64::from(KEYCHAIN_RECEIVE))
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(address_from_row).transpose()
    }

    /// Watched Bitcoin addresses of a chain created at or after `since_ms`, in (created_at_ms, script) order,
    /// after `after` (keyset paging; the script as lower-case hex). See `WatchedSet` in the ETH watcher for
    /// why the caller re-reads with a little slack.
    pub async fn btc_addresses_page(
        &self,
        chain: &str,
        since_ms: i64,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<BtcAddressRow>> {
        let (after_ms, after_script) = after.unwrap_or((i64::MIN, ""));
        let q = format!(
            "SELECT {ADDRESS_COLUMNS} FROM btc_addresses WHERE chain = $1 AND created_at_ms >= $2 \
             AND (created_at_ms > $3 OR (created_at_ms = $3 AND script_pubkey > $4)) \
             ORDER BY created_at_ms, script_pubkey LIMIT $5"
        );
        let rows = sqlx::query(crate::sql(q))
            .bind(chain)
            .bind(since_ms)
            .bind(after_ms)
            .bind(after_script)
            .bind(i64::from(limit.min(BTC_ADDRESS_PAGE_MAX)))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(address_from_row).collect()
    }

    /// Records one Bitcoin block in one transaction (M6, C2, C5): the generic deposit step
    /// ([`Store::record_block_in`]: window row, a pending deposit per output to a customer's receive address,
    /// confirmations and credits), then, transaction by transaction in block order, the tracked outputs its
    /// inputs spend (marked spent by this txid/wtxid) and its outputs to watched scripts (added to the UTXO
    /// set, or revived if a re-org had rolled them back). A block already recorded with this hash writes
    /// nothing (crash replay).
    pub async fn btc_record_block(
        &self,
        chain: &str,
        header: &BlockHeader,
        txs: &[BtcBlockTx],
        confirmations_min: u64,
        now_ms: i64,
    ) -> Result<BtcRecordedBlock> {
        let mut tx = self.begin_write().await?;
        // Resolve every watched output's address row first: the deposits need the receive addresses, the
        // UTXOs need keychain and index. The store's rows are authoritative, not the caller's set.
        let mut resolved: Vec<Vec<Option<BtcAddressRow>>> = Vec::with_capacity(txs.len());
        let mut transfers = Vec::new();
        for t in txs {
            let mut rows = Vec::with_capacity(t.outputs.len());
            for o in &t.outputs {
                let q = format!("SELECT {ADDRESS_COLUMNS} FROM btc_addresses WHERE chain = $1 AND script_pubkey = $2");
                let row = sqlx::query(crate::sql(q))
                    .bind(chain)
                    .bind(hex::encode(&o.script_pubkey))
                    .fetch_optional(&mut *tx)
                    .await?;
                let row = row.as_ref().map(address_from_row).transpose()?;
                if let Some(a) = &row
                    && a.keychain == KEYCHAIN_RECEIVE
                    && a.customer_id.is_some()
                {
                    transfers.push(DetectedTransfer {
                        address: a.address.clone(),
                        tx_hash: t.txid,
                        log_index: u64::from(o.vout),
                        amount: Amount::from_base_units(u128::from(o.value_sat)),
                        asset: None,
                    });
                }
                rows.push(row);
            }
            resolved.push(rows);
        }
        let asset = btc_asset();
        let Some(deposits) =
            self.record_block_in(&mut tx, chain, &asset, header, &transfers, confirmations_min, now_ms).await?
        else {
            return Ok(BtcRecordedBlock::default());
        };
        let mut out = BtcRecordedBlock { recorded: true, deposits, ..BtcRecordedBlock::default() };
        let block_hash = hex::encode(header.hash);
        let height = header.number as i64;
        // Which of the block's inputs spend a tracked output: looked up in batches (a block has thousands of
        // inputs, nearly all of them someone else's), plus the outputs this block itself adds (a transaction
        // may spend an output of an earlier one in the same block).
        let mut tracked = self.btc_tracked_unspent(&mut tx, chain, txs).await?;
        for (t, rows) in txs.iter().zip(&resolved) {
            let txid = hex::encode(t.txid);
            let wtxid = hex::encode(t.wtxid);
            for (prev_txid, prev_vout) in &t.spends {
                if !tracked.remove(&(*prev_txid, *prev_vout)) {
                    continue;
                }
                let done = sqlx::query(
                    "UPDATE btc_utxos SET status = $1, spent_by_txid = $2, spent_by_wtxid = $3, spent_height = $4, \
                     spent_block_hash = $5, updated_at_ms = $6 WHERE chain = $7 AND txid = $8 AND vout = $9 AND status = $10",
                )
                .bind(UtxoStatus::Spent.as_str())
                .bind(&txid)
                .bind(&wtxid)
                .bind(height)
                .bind(&block_hash)
                .bind(now_ms)
                .bind(chain)
                .bind(hex::encode(prev_txid))
                .bind(i64::from(*prev_vout))
                .bind(UtxoStatus::Unspent.as_str())
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() > 0 {
                    out.utxos_spent.push((*prev_txid, *prev_vout));
                }
            }
            for (o, row) in t.outputs.iter().zip(rows) {
                let Some(a) = row else {
                    // The caller's set is refreshed with slack and may know a script the store does not (another
                    // chain's row, a bug): only the store's own addresses are the custodian's.
                    tracing::warn!(
                        chain,
                        txid,
                        vout = o.vout,
                        "output to a script that is not a wallet address; ignored"
                    );
                    continue;
                };
                let existing: Option<(String, String)> = sqlx::query_as(
                    "SELECT status, block_hash FROM btc_utxos WHERE chain = $1 AND txid = $2 AND vout = $3",
                )
                .bind(chain)
                .bind(&txid)
                .bind(i64::from(o.vout))
                .fetch_optional(&mut *tx)
                .await?;
                match existing {
                    None => {
                        sqlx::query(
                            "INSERT INTO btc_utxos (chain, txid, vout, wtxid, value_sat, script_pubkey, keychain, \
                             derivation_index, coinbase, block_height, block_hash, status, created_at_ms, updated_at_ms) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                        )
                        .bind(chain)
                        .bind(&txid)
                        .bind(i64::from(o.vout))
                        .bind(&wtxid)
                        .bind(sat_to_i64(o.value_sat)?)
                        .bind(hex::encode(&o.script_pubkey))
                        .bind(i64::from(a.keychain))
                        .bind(i64::from(a.derivation_index))
                        .bind(i64::from(t.coinbase))
                        .bind(height)
                        .bind(&block_hash)
                        .bind(UtxoStatus::Unspent.as_str())
                        .bind(now_ms)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    }
                    // The transaction was in a block a re-org orphaned and is confirmed again: revive the row. The
                    // wtxid is rewritten: a malleated witness gives the same txid with a different wtxid (C5).
                    Some((status, _)) if status == UtxoStatus::RolledBack.as_str() => {
                        sqlx::query(
                            "UPDATE btc_utxos SET wtxid = $1, coinbase = $2, block_height = $3, block_hash = $4, \
                             status = $5, spent_by_txid = NULL, spent_by_wtxid = NULL, spent_height = NULL, \
                             spent_block_hash = NULL, updated_at_ms = $6 WHERE chain = $7 AND txid = $8 AND vout = $9",
                        )
                        .bind(&wtxid)
                        .bind(i64::from(t.coinbase))
                        .bind(height)
                        .bind(&block_hash)
                        .bind(UtxoStatus::Unspent.as_str())
                        .bind(now_ms)
                        .bind(chain)
                        .bind(&txid)
                        .bind(i64::from(o.vout))
                        .execute(&mut *tx)
                        .await?;
                    }
                    // Live in another block: impossible on one chain (BIP30/BIP34), so the window and the set
                    // disagree. Halt for an operator rather than guess.
                    Some((status, other_block)) => {
                        return Err(StoreError::Conflict(format!(
                            "UTXO {txid}:{} is {status} in block {other_block}, not rolled back, yet block {block_hash} \
                             at {height} creates it again",
                            o.vout
                        )));
                    }
                }
                tracked.insert((t.txid, o.vout));
                out.utxos_added.push((t.txid, o.vout));
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The outpoints among `txs`' inputs that are unspent in the UTXO set, read in batches of
    /// [`SPEND_LOOKUP_BATCH`] txids.
    async fn btc_tracked_unspent(
        &self,
        tx: &mut Tx,
        chain: &str,
        txs: &[BtcBlockTx],
    ) -> Result<HashSet<([u8; 32], u32)>> {
        let spent: HashSet<([u8; 32], u32)> = txs.iter().flat_map(|t| t.spends.iter().copied()).collect();
        let txids: BTreeSet<[u8; 32]> = spent.iter().map(|(txid, _)| *txid).collect();
        let txids: Vec<String> = txids.iter().map(hex::encode).collect();
        let mut out = HashSet::new();
        for batch in txids.chunks(SPEND_LOOKUP_BATCH) {
            let placeholders = (0..batch.len()).map(|i| format!("${}", i + 3)).collect::<Vec<_>>().join(", ");
            let q = format!(
                "SELECT txid, vout FROM btc_utxos WHERE chain = $1 AND status = $2 AND txid IN ({placeholders})"
            );
            let mut query = sqlx::query(crate::sql(q)).bind(chain).bind(UtxoStatus::Unspent.as_str());
            for txid in batch {
                query = query.bind(txid);
            }
            for row in query.fetch_all(&mut **tx).await? {
                let txid = parse_hash("btc_utxos.txid", &row.try_get::<String, _>("txid")?)?;
                let vout = u32_col("btc_utxos.vout", row.try_get("vout")?)?;
                if spent.contains(&(txid, vout)) {
                    out.insert((txid, vout));
                }
            }
        }
        Ok(out)
    }

    /// Undoes Bitcoin block `number` after a re-org orphaned it, in one transaction (C2): the generic deposit
    /// rewind ([`Store::rewind_block_in`]: pending deposits dropped, credited ones reversed), the spends the
    /// block made undone (those outputs are unspent again), and the outputs it created rolled back. Blocks are
    /// rewound from the tip down, so a spend in a later block is always undone before its output is rolled back.
    pub async fn btc_rewind_block(&self, chain: &str, number: u64, now_ms: i64) -> Result<BtcRewoundBlock> {
        let mut tx = self.begin_write().await?;
        let deposits = self.rewind_block_in(&mut tx, chain, number, now_ms).await?;
        let undone = sqlx::query(
            "UPDATE btc_utxos SET status = $1, spent_by_txid = NULL, spent_by_wtxid = NULL, spent_height = NULL, \
             spent_block_hash = NULL, updated_at_ms = $2 WHERE chain = $3 AND spent_height = $4 AND status = $5",
        )
        .bind(UtxoStatus::Unspent.as_str())
        .bind(now_ms)
        .bind(chain)
        .bind(number as i64)
        .bind(UtxoStatus::Spent.as_str())
        .execute(&mut *tx)
        .await?;
        let rolled_back = sqlx::query(
            "UPDATE btc_utxos SET status = $1, spent_by_txid = NULL, spent_by_wtxid = NULL, spent_height = NULL, \
             spent_block_hash = NULL, updated_at_ms = $2 WHERE chain = $3 AND block_height = $4 AND status IN ($5, $6)",
        )
        .bind(UtxoStatus::RolledBack.as_str())
        .bind(now_ms)
        .bind(chain)
        .bind(number as i64)
        .bind(UtxoStatus::Unspent.as_str())
        .bind(UtxoStatus::Spent.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if rolled_back.rows_affected() > 0 || undone.rows_affected() > 0 {
            tracing::warn!(
                chain,
                block = number,
                rolled_back = rolled_back.rows_affected(),
                spends_undone = undone.rows_affected(),
                "UTXOs of an orphaned block rolled back"
            );
        }
        Ok(BtcRewoundBlock {
            deposits,
            utxos_rolled_back: rolled_back.rows_affected(),
            spends_undone: undone.rows_affected(),
        })
    }

    /// One tracked output, whatever its status.
    pub async fn btc_utxo(&self, chain: &str, txid: &[u8; 32], vout: u32) -> Result<Option<BtcUtxo>> {
        let q = format!("SELECT {UTXO_COLUMNS} FROM btc_utxos WHERE chain = $1 AND txid = $2 AND vout = $3");
        let row = sqlx::query(crate::sql(q))
            .bind(chain)
            .bind(hex::encode(txid))
            .bind(i64::from(vout))
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(utxo_from_row).transpose()
    }

    /// Unspent outputs with at least `confirmations_min` confirmations at `tip_height` (the watcher's verified
    /// tip), coinbase outputs only once mature, largest first: the candidates of coin selection. At most
    /// `limit` (capped at [`SPENDABLE_UTXOS_MAX`]).
    pub async fn btc_spendable_utxos(
        &self,
        chain: &str,
        tip_height: u64,
        confirmations_min: u64,
        limit: u32,
    ) -> Result<Vec<BtcUtxo>> {
        // An output in block h has tip - h + 1 confirmations; at least one, since it is in a block.
        let confirmed_max = tip_height as i64 - confirmations_min.max(1) as i64 + 1;
        let mature_max = tip_height as i64 - COINBASE_MATURITY_BLOCKS as i64 + 1;
        let q = format!(
            "SELECT {UTXO_COLUMNS} FROM btc_utxos WHERE chain = $1 AND status = $2 AND block_height <= $3 \
             AND (coinbase = 0 OR block_height <= $4) ORDER BY value_sat DESC, txid, vout LIMIT $5"
        );
        let rows = sqlx::query(crate::sql(q))
            .bind(chain)
            .bind(UtxoStatus::Unspent.as_str())
            .bind(confirmed_max)
            .bind(mature_max)
            .bind(i64::from(limit.min(SPENDABLE_UTXOS_MAX)))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(utxo_from_row).collect()
    }
}

enum TryCreate<E> {
    /// A concurrent transaction won a unique constraint; read again.
    Lost,
    Other(E),
}

fn lost_or<E: From<StoreError>>(e: StoreError) -> TryCreate<E> {
    match &e {
        StoreError::Db(db) if is_unique_violation(db) => TryCreate::Lost,
        _ => TryCreate::Other(E::from(e)),
    }
}

fn sat_to_i64(value_sat: u64) -> Result<i64> {
    i64::try_from(value_sat).map_err(|_| StoreError::Conflict(format!("output value {value_sat} sat exceeds i64")))
}

fn u32_col(column: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column}: {v} is not a u32")))
}

fn address_from_row(r: &AnyRow) -> Result<BtcAddressRow> {
    let script: String = r.try_get("script_pubkey")?;
    Ok(BtcAddressRow {
        chain: r.try_get("chain")?,
        script_pubkey: hex::decode(&script)
            .map_err(|_| StoreError::Corrupt(format!("btc_addresses.script_pubkey: {script:?} is not hex")))?,
        address: r.try_get("address")?,
        keychain: u32_col("btc_addresses.keychain", r.try_get("keychain")?)?,
        derivation_index: u32_col("btc_addresses.derivation_index", r.try_get("derivation_index")?)?,
        customer_id: r.try_get("customer_id")?,
        created_at_ms: r.try_get("created_at_ms")?,
    })
}

fn utxo_from_row(r: &AnyRow) -> Result<BtcUtxo> {
    let script: String = r.try_get("script_pubkey")?;
    let opt_hash = |column: &str| -> Result<Option<[u8; 32]>> {
        r.try_get::<Option<String>, _>(column)?.map(|s| parse_hash(&format!("btc_utxos.{column}"), &s)).transpose()
    };
    let value: i64 = r.try_get("value_sat")?;
    let height: i64 = r.try_get("block_height")?;
    let spent_height: Option<i64> = r.try_get("spent_height")?;
    let non_negative = |column: &str, v: i64| {
        u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("btc_utxos.{column}: {v} is negative")))
    };
    Ok(BtcUtxo {
        chain: r.try_get("chain")?,
        txid: parse_hash("btc_utxos.txid", &r.try_get::<String, _>("txid")?)?,
        vout: u32_col("btc_utxos.vout", r.try_get("vout")?)?,
        wtxid: parse_hash("btc_utxos.wtxid", &r.try_get::<String, _>("wtxid")?)?,
        value_sat: non_negative("value_sat", value)?,
        script_pubkey: hex::decode(&script)
            .map_err(|_| StoreError::Corrupt(format!("btc_utxos.script_pubkey: {script:?} is not hex")))?,
        keychain: u32_col("btc_utxos.keychain", r.try_get("keychain")?)?,
        derivation_index: u32_col("btc_utxos.derivation_index", r.try_get("derivation_index")?)?,
        coinbase: r.try_get::<i64, _>("coinbase")? != 0,
        block_height: non_negative("block_height", height)?,
        block_hash: parse_hash("btc_utxos.block_hash", &r.try_get::<String, _>("block_hash")?)?,
        status: UtxoStatus::parse(&r.try_get::<String, _>("status")?)?,
        spent_by_txid: opt_hash("spent_by_txid")?,
        spent_by_wtxid: opt_hash("spent_by_wtxid")?,
        spent_height: spent_height.map(|h| non_negative("spent_height", h)).transpose()?,
    })
}
