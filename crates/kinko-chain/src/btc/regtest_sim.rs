//! In-process regtest **simulator** (a test fixture, not a node): no bitcoind can be installed on this project's
//! machines, so the Bitcoin tests run the production [`super::rpc::BtcRpc`] client against this.
//!
//! What it is: a chain of real, consensus-valid regtest blocks built with rust-bitcoin, starting from the
//! regtest genesis block (coinbase with the BIP34 height, merkle root, BIP141 witness commitment when a block
//! carries witness data, proof of work solved at regtest bits `0x207fffff`, which takes a couple of hashes),
//! a UTXO set, a mempool, and a local HTTP JSON-RPC endpoint answering a subset of Bitcoin Core's RPC
//! (`getblockcount`, `getblockhash`, `getblock`, `getblockheader`, `sendrawtransaction`, `estimatesmartfee`,
//! `getmempoolentry`, `getrawmempool`) with Core's field names and error codes.
//!
//! Rules enforced on every transaction it accepts: inputs exist and are unspent, no duplicate inputs, coinbase
//! maturity (100 blocks), value in ≥ value out, absolute lock time, minimum relay fee (1 sat/vB), every input's
//! script verified by libbitcoinconsensus (Bitcoin Core's own interpreter), and mempool conflicts only as BIP125
//! replacements (the replaced transaction signals, the replacement pays a higher fee rate, at least the
//! replaced fees, plus the incremental relay fee for its own size). Blocks it builds are checked again on
//! connection (PoW, merkle root, witness commitment, BIP34 height, coinbase value, every input re-verified).
//!
//! What it is not: no P2P, no relative lock times (BIP68), no sigop or standardness policy beyond the above,
//! no package relay, no full-RBF, and `estimatesmartfee` is a simple policy (median fee rate of recent blocks,
//! floored at the minimum relay fee), not Core's estimator. Test controls are Rust methods, not RPC:
//! [`RegtestSimulator::mine`], [`RegtestSimulator::mine_competing`] (a longer branch, re-organised to as Core
//! does: transactions of the dropped blocks return to the mempool while still valid).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::consensus::encode;
use bitcoin::hashes::Hash as _;
use bitcoin::script::{Builder, Instruction};
use bitcoin::transaction::Version as TxVersion;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, Network, OutPoint, Script, ScriptBuf, Sequence, Target, Transaction, TxIn,
    TxMerkleNode, TxOut, Txid, Witness,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::rpc::codes;

/// Longest active chain the simulator keeps (genesis included): tests need a few hundred blocks.
pub const MAX_CHAIN_LENGTH: usize = 10_000;
/// Most blocks stored, stale branches included: a re-organised-away block stays readable by hash, as in Core.
pub const MAX_STORED_BLOCKS: usize = 2 * MAX_CHAIN_LENGTH;
/// Most transactions in the mempool (Core bounds by memory; a count is enough for tests).
pub const MAX_MEMPOOL_TXS: usize = 5_000;
/// Largest JSON-RPC request body: a standard transaction (400,000 WU, at most 400 kB raw) is 800 kB of hex.
pub const MAX_REQUEST_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Blocks before a coinbase output may be spent (consensus rule).
pub const COINBASE_MATURITY_BLOCKS: u32 = 100;
/// Regtest's proof-of-work limit: about every second header hash meets it.
pub const REGTEST_BITS: u32 = 0x207f_ffff;
/// Regtest halves the subsidy every 150 blocks (mainnet: 210,000).
pub const SUBSIDY_HALVING_INTERVAL_BLOCKS: u32 = 150;
/// Consensus block weight limit (BIP141).
pub const MAX_BLOCK_WEIGHT_WU: u64 = 4_000_000;
/// Weight reserved for the coinbase when filling a block from the mempool (Core reserves 4,000).
pub const COINBASE_RESERVED_WEIGHT_WU: u64 = 4_000;
/// Core's policy limit on one transaction's weight.
pub const MAX_STANDARD_TX_WEIGHT_WU: u64 = 400_000;
/// Core's default `-minrelaytxfee` (1 sat/vB).
pub const MIN_RELAY_FEE_SAT_PER_KVB: u64 = 1_000;
/// Core's default `-incrementalrelayfee`: what a BIP125 replacement must add per vbyte of its own size.
pub const INCREMENTAL_RELAY_FEE_SAT_PER_KVB: u64 = 1_000;
/// BIP125 rule 5: most transactions one replacement may evict.
pub const MAX_REPLACEMENT_EVICTIONS: usize = 100;
/// Blocks whose transactions' fee rates `estimatesmartfee` looks at.
pub const FEE_ESTIMATE_WINDOW_BLOCKS: usize = 6;
/// Core's `estimatesmartfee` accepts confirmation targets 1 to 1008.
pub const MAX_CONF_TARGET_BLOCKS: u64 = 1_008;
/// Blocks the median time past looks back over (BIP113).
const MEDIAN_TIME_SPAN_BLOCKS: usize = 11;
/// The BIP141 witness commitment output's prefix: OP_RETURN, push 36, magic 0xaa21a9ed.
const WITNESS_COMMITMENT_PREFIX: [u8; 6] = [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
/// Block version with BIP9 top bits, as Core's miner sets it.
const BLOCK_VERSION: i32 = 0x2000_0000;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("regtest simulator could not bind its RPC port: {0}")]
    Bind(String),
    #[error("regtest simulator chain would exceed {MAX_CHAIN_LENGTH} blocks or {MAX_STORED_BLOCKS} stored blocks")]
    ChainFull,
    #[error("regtest simulator: competing branch refused: {0}")]
    BadFork(String),
    #[error("regtest simulator built a block it then refused: {0}")]
    BadBlock(String),
}

/// A rejection with Core's RPC error code and message text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reject {
    code: i64,
    message: String,
}

fn reject(code: i64, message: impl Into<String>) -> Reject {
    Reject { code, message: message.into() }
}

fn rejected(message: impl Into<String>) -> Reject {
    reject(codes::RPC_VERIFY_REJECTED, message)
}

#[derive(Clone, Debug)]
struct Coin {
    txout: TxOut,
    height: u32,
    is_coinbase: bool,
}

struct StoredBlock {
    block: Block,
    height: u32,
    /// Fee rate of each non-coinbase transaction, for `estimatesmartfee`.
    fee_rates_sat_per_kvb: Vec<u64>,
    /// Per transaction (aligned with `txdata`), the coins it spent: what disconnecting the block restores.
    undo: Vec<Vec<(OutPoint, Coin)>>,
}

#[derive(Clone, Debug)]
struct MempoolTx {
    tx: Transaction,
    txid: Txid,
    fee: Amount,
    vsize_vb: u64,
    /// Entry time (Unix seconds) and the tip height then, as `getmempoolentry` reports them.
    time: u64,
    height: u32,
}

struct SimState {
    blocks: HashMap<BlockHash, StoredBlock>,
    /// Active chain: index = height.
    active: Vec<BlockHash>,
    utxos: HashMap<OutPoint, Coin>,
    /// In arrival order, which is also a valid topological order (a child is accepted only after its parent).
    mempool: Vec<MempoolTx>,
    /// Core's "extra nonce": makes every coinbase, hence every block, unique even on competing branches.
    extra_nonce: i64,
    /// `Authorization` header value required on every request, if any.
    auth_header: Option<String>,
}

/// The in-process regtest simulator. Dropping it stops its RPC endpoint.
pub struct RegtestSimulator {
    state: Arc<Mutex<SimState>>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RegtestSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegtestSimulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for RegtestSimulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.abort();
    }
}

fn lock(state: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    // A panic elsewhere while holding the lock leaves consistent-enough test state; keep serving.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RegtestSimulator {
    /// Starts the simulator at the regtest genesis block, serving JSON-RPC on `127.0.0.1:<free port>`.
    pub async fn start() -> Result<Self, SimError> {
        Self::start_inner(None).await
    }

    /// As [`Self::start`], but every request must carry HTTP basic auth with these credentials (as Core's
    /// `rpcuser`/`rpcpassword`); others get HTTP 401 with no body, as from Core.
    pub async fn start_with_auth(user: &str, password: &str) -> Result<Self, SimError> {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self::start_inner(Some(format!("Basic {token}"))).await
    }

    async fn start_inner(auth_header: Option<String>) -> Result<Self, SimError> {
        let genesis = genesis_block(Network::Regtest);
        let genesis_hash = genesis.block_hash();
        let mut blocks = HashMap::new();
        // The genesis coinbase is not spendable (Core never adds it to the UTXO set): no undo, no coins.
        blocks.insert(
            genesis_hash,
            StoredBlock { block: genesis, height: 0, fee_rates_sat_per_kvb: vec![], undo: vec![vec![]] },
        );
        let state = Arc::new(Mutex::new(SimState {
            blocks,
            active: vec![genesis_hash],
            utxos: HashMap::new(),
            mempool: Vec::new(),
            extra_nonce: 0,
            auth_header,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| SimError::Bind(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| SimError::Bind(e.to_string()))?;
        let app = Router::new()
            .route("/", post(handle_rpc))
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
            .with_state(state.clone());
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = shutdown_rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "regtest simulator RPC server stopped");
            }
        });
        Ok(Self { state, addr, shutdown: Some(shutdown), server })
    }

    /// The JSON-RPC endpoint, for [`super::rpc::BtcRpc::new`].
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Height of the active tip.
    pub fn tip_height(&self) -> u32 {
        lock(&self.state).tip_height()
    }

    /// Mines `n` blocks on the active tip paying the subsidy and fees to `to_script`; each block takes the
    /// mempool's transactions in arrival order up to the weight limit. Returns the new blocks' hashes.
    pub fn mine(&self, n: usize, to_script: &Script) -> Result<Vec<BlockHash>, SimError> {
        let mut st = lock(&self.state);
        let mut hashes = Vec::with_capacity(n.min(MAX_CHAIN_LENGTH));
        for _ in 0..n {
            if st.active.len() >= MAX_CHAIN_LENGTH || st.blocks.len() >= MAX_STORED_BLOCKS {
                return Err(SimError::ChainFull);
            }
            let mut weight_wu = COINBASE_RESERVED_WEIGHT_WU;
            let mut txs = Vec::new();
            let mut fees = Amount::ZERO;
            for entry in &st.mempool {
                let w = entry.tx.weight().to_wu();
                // Stop at the first that does not fit: skipping it could leave a child without its parent.
                if weight_wu + w > MAX_BLOCK_WEIGHT_WU {
                    break;
                }
                weight_wu += w;
                fees = fees.checked_add(entry.fee).ok_or_else(|| SimError::BadBlock("fee overflow".into()))?;
                txs.push(entry.tx.clone());
            }
            let tip = st.tip_hash();
            let block = st.build_block(tip, txs, to_script, fees)?;
            let hash = block.block_hash();
            st.insert_and_connect(block)?;
            // Drop what was mined, then re-validate the rest against the new chain state.
            let mempool = std::mem::take(&mut st.mempool);
            let mined: HashSet<Txid> = st.blocks[&hash].block.txdata.iter().map(Transaction::compute_txid).collect();
            for entry in mempool.into_iter().filter(|e| !mined.contains(&e.txid)) {
                let _ = st.accept(entry.tx, Some((entry.time, entry.height)));
            }
            hashes.push(hash);
        }
        Ok(hashes)
    }

    /// Builds `n` coinbase-only blocks on the active chain's block at `from_height - 1`, so that the first new
    /// block competes with the current block at `from_height`, and re-organises to that branch; it must end
    /// higher than the current tip (same difficulty, so more work). As in Core, the transactions of the
    /// disconnected blocks return to the mempool if still valid, then the previous mempool is re-validated.
    pub fn mine_competing(&self, from_height: u32, n: usize, to_script: &Script) -> Result<Vec<BlockHash>, SimError> {
        let mut st = lock(&self.state);
        let tip = st.tip_height();
        if from_height == 0 || from_height > tip {
            return Err(SimError::BadFork(format!("from_height {from_height} must be in 1..={tip}")));
        }
        if n == 0 {
            return Err(SimError::BadFork("a competing branch needs at least one block".into()));
        }
        let new_tip = u64::from(from_height) + n as u64 - 1;
        if new_tip <= u64::from(tip) {
            return Err(SimError::BadFork(format!("{n} blocks from {from_height} do not outgrow tip {tip}")));
        }
        if new_tip >= MAX_CHAIN_LENGTH as u64 || st.blocks.len() + n > MAX_STORED_BLOCKS {
            return Err(SimError::ChainFull);
        }
        // Disconnect the tip down to from_height, keeping the dropped transactions in block order.
        let mut dropped_blocks = Vec::new();
        while st.tip_height() >= from_height {
            dropped_blocks.push(st.disconnect_tip());
        }
        let dropped: Vec<Transaction> = dropped_blocks.into_iter().rev().flatten().collect();
        let old_mempool = std::mem::take(&mut st.mempool);
        let mut hashes = Vec::with_capacity(n);
        for _ in 0..n {
            let tip = st.tip_hash();
            let block = st.build_block(tip, vec![], to_script, Amount::ZERO)?;
            hashes.push(block.block_hash());
            st.insert_and_connect(block)?;
        }
        for tx in dropped {
            let _ = st.accept(tx, None);
        }
        for entry in old_mempool {
            let _ = st.accept(entry.tx, Some((entry.time, entry.height)));
        }
        Ok(hashes)
    }
}

/// The BIP34 height in a coinbase's scriptSig, read as Core writes it: `CScript() << height`, which is
/// `OP_1`..`OP_16` for heights 1 to 16 and a minimal script-number push above. (rust-bitcoin's
/// `Block::bip34_block_height` reads only the push form.)
pub fn coinbase_height(coinbase: &Transaction) -> Option<u64> {
    let input = coinbase.input.first()?;
    match input.script_sig.instructions_minimal().next()?.ok()? {
        Instruction::Op(op) => {
            let n = op.to_u8();
            let first = bitcoin::opcodes::all::OP_PUSHNUM_1.to_u8();
            let last = bitcoin::opcodes::all::OP_PUSHNUM_16.to_u8();
            (first..=last).contains(&n).then(|| u64::from(n - first + 1))
        }
        Instruction::PushBytes(bytes) => {
            bitcoin::script::read_scriptint(bytes.as_bytes()).ok().and_then(|h| u64::try_from(h).ok())
        }
    }
}

/// The regtest block subsidy at `height`.
fn subsidy(height: u32) -> Amount {
    let halvings = height / SUBSIDY_HALVING_INTERVAL_BLOCKS;
    if halvings >= 64 { Amount::ZERO } else { Amount::from_sat((50 * 100_000_000) >> halvings) }
}

fn now_unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn fee_rate_sat_per_kvb(fee: Amount, vsize_vb: u64) -> u64 {
    fee.to_sat().saturating_mul(1000) / vsize_vb.max(1)
}

/// Verifies every input's script with libbitcoinconsensus (Bitcoin Core's script interpreter).
fn verify_scripts(tx: &Transaction, prevouts: &[TxOut]) -> Result<(), String> {
    super::consensus::verify_spend(tx, prevouts).map_err(|e| e.to_string())
}

impl SimState {
    fn tip_height(&self) -> u32 {
        // The active chain is never empty (genesis) and bounded by MAX_CHAIN_LENGTH, far below u32::MAX.
        (self.active.len() - 1) as u32
    }

    fn tip_hash(&self) -> BlockHash {
        self.active[self.active.len() - 1]
    }

    fn header_at(&self, height: usize) -> &Header {
        &self.blocks[&self.active[height]].block.header
    }

    /// BIP113 median time past of the active chain's block at `height`.
    fn median_time_past(&self, height: usize) -> u32 {
        let from = (height + 1).saturating_sub(MEDIAN_TIME_SPAN_BLOCKS);
        let mut times: Vec<u32> = (from..=height).map(|h| self.header_at(h).time).collect();
        times.sort_unstable();
        times[times.len() / 2]
    }

    fn is_active(&self, hash: &BlockHash) -> bool {
        self.blocks.get(hash).is_some_and(|b| self.active.get(b.height as usize) == Some(hash))
    }

    fn build_block(
        &mut self,
        prev: BlockHash,
        txs: Vec<Transaction>,
        to_script: &Script,
        fees: Amount,
    ) -> Result<Block, SimError> {
        let prev_block = &self.blocks[&prev];
        let height = prev_block.height + 1;
        let time = prev_block.block.header.time + 1;
        self.extra_nonce += 1;
        let has_witness = txs.iter().any(|t| t.input.iter().any(|i| !i.witness.is_empty()));
        let value = subsidy(height).checked_add(fees).ok_or_else(|| SimError::BadBlock("coinbase overflow".into()))?;
        let coinbase = Transaction {
            version: TxVersion::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                // BIP34: the height first, as Core writes it; then the extra nonce.
                script_sig: Builder::new().push_int(i64::from(height)).push_int(self.extra_nonce).into_script(),
                sequence: Sequence::MAX,
                // BIP141: the witness reserved value, only needed when a commitment is made.
                witness: if has_witness { Witness::from_slice(&[[0u8; 32]]) } else { Witness::new() },
            }],
            output: vec![TxOut { value, script_pubkey: to_script.to_owned() }],
        };
        let mut txdata = Vec::with_capacity(txs.len() + 1);
        txdata.push(coinbase);
        txdata.extend(txs);
        let header = Header {
            version: BlockVersion::from_consensus(BLOCK_VERSION),
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: CompactTarget::from_consensus(REGTEST_BITS),
            nonce: 0,
        };
        let mut block = Block { header, txdata };
        if has_witness {
            let root = block.witness_root().ok_or_else(|| SimError::BadBlock("no witness root".into()))?;
            let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
            let mut script = WITNESS_COMMITMENT_PREFIX.to_vec();
            script.extend_from_slice(commitment.as_byte_array());
            block.txdata[0].output.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::from_bytes(script) });
        }
        block.header.merkle_root =
            block.compute_merkle_root().ok_or_else(|| SimError::BadBlock("no merkle root".into()))?;
        let target = Target::from_compact(block.header.bits);
        // Each nonce meets the regtest target with probability about 1/2: the loop ends after a few hashes.
        for nonce in 0..=u32::MAX {
            block.header.nonce = nonce;
            if target.is_met_by(block.header.block_hash()) {
                return Ok(block);
            }
        }
        Err(SimError::BadBlock("no nonce meets the regtest target".into()))
    }

    /// Stores `block` and connects it on top of the active tip, validating it as a node would.
    fn insert_and_connect(&mut self, block: Block) -> Result<(), SimError> {
        let hash = block.block_hash();
        let height = self.tip_height() + 1;
        if block.header.prev_blockhash != self.tip_hash() {
            return Err(SimError::BadBlock("does not extend the tip".into()));
        }
        block
            .header
            .validate_pow(Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS)))
            .map_err(|e| SimError::BadBlock(format!("proof of work: {e}")))?;
        if !block.check_merkle_root() || !block.check_witness_commitment() {
            return Err(SimError::BadBlock("bad merkle root or witness commitment".into()));
        }
        if block.weight().to_wu() > MAX_BLOCK_WEIGHT_WU {
            return Err(SimError::BadBlock("bad-blk-weight".into()));
        }
        let Some(coinbase) = block.txdata.first().filter(|t| t.is_coinbase()) else {
            return Err(SimError::BadBlock("bad-cb-missing".into()));
        };
        if coinbase_height(coinbase) != Some(u64::from(height)) {
            return Err(SimError::BadBlock("bad-cb-height".into()));
        }
        let mut undo: Vec<Vec<(OutPoint, Coin)>> = Vec::with_capacity(block.txdata.len());
        let mut fee_rates = Vec::with_capacity(block.txdata.len());
        let mut fees = Amount::ZERO;
        let mut failure = None;
        for tx in &block.txdata[1..] {
            let mut spent = Vec::with_capacity(tx.input.len());
            match self.spend_in_block(tx, height, &mut spent) {
                Ok(fee) => {
                    fees = fees.checked_add(fee).unwrap_or(Amount::MAX);
                    fee_rates.push(fee_rate_sat_per_kvb(fee, tx.vsize() as u64));
                    undo.push(spent);
                }
                Err(reason) => {
                    undo.push(spent);
                    failure = Some(reason);
                    break;
                }
            }
        }
        let cb_value: Option<Amount> = coinbase.output.iter().try_fold(Amount::ZERO, |a, o| a.checked_add(o.value));
        let allowed = subsidy(height).checked_add(fees);
        if failure.is_none() && (cb_value.is_none() || allowed.is_none() || cb_value > allowed) {
            failure = Some("bad-cb-amount".to_owned());
        }
        if let Some(reason) = failure {
            // Undo the transactions applied so far, newest first.
            for (tx, spent) in block.txdata[1..].iter().zip(undo).rev() {
                self.undo_tx(tx, spent);
            }
            return Err(SimError::BadBlock(reason));
        }
        add_outputs(&mut self.utxos, coinbase, height, true);
        undo.insert(0, vec![]);
        self.blocks.insert(hash, StoredBlock { block, height, fee_rates_sat_per_kvb: fee_rates, undo });
        self.active.push(hash);
        Ok(())
    }

    /// Spends `tx`'s inputs from the UTXO set and adds its outputs (block context); records spent coins.
    fn spend_in_block(
        &mut self,
        tx: &Transaction,
        height: u32,
        spent: &mut Vec<(OutPoint, Coin)>,
    ) -> Result<Amount, String> {
        if tx.is_coinbase() {
            return Err("bad-cb-multiple".into());
        }
        check_tx_sanity(tx).map_err(|r| r.message)?;
        let mut prevouts = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            let coin = self.utxos.get(&input.previous_output).ok_or("bad-txns-inputs-missingorspent")?;
            if coin.is_coinbase && height - coin.height < COINBASE_MATURITY_BLOCKS {
                return Err("bad-txns-premature-spend-of-coinbase".into());
            }
            prevouts.push(coin.txout.clone());
        }
        let fee = fee_of(tx, &prevouts)?;
        verify_scripts(tx, &prevouts).map_err(|e| format!("mandatory-script-verify-flag-failed ({e})"))?;
        for input in &tx.input {
            if let Some(coin) = self.utxos.remove(&input.previous_output) {
                spent.push((input.previous_output, coin));
            }
        }
        add_outputs(&mut self.utxos, tx, height, false);
        Ok(fee)
    }

    fn undo_tx(&mut self, tx: &Transaction, spent: Vec<(OutPoint, Coin)>) {
        let txid = tx.compute_txid();
        for vout in 0..tx.output.len() as u32 {
            self.utxos.remove(&OutPoint { txid, vout });
        }
        for (outpoint, coin) in spent {
            self.utxos.insert(outpoint, coin);
        }
    }

    /// Disconnects the active tip; returns its non-coinbase transactions in block order.
    fn disconnect_tip(&mut self) -> Vec<Transaction> {
        let hash = self.tip_hash();
        let Some(stored) = self.blocks.get_mut(&hash) else { return vec![] };
        let undo = std::mem::take(&mut stored.undo);
        let txdata = stored.block.txdata.clone();
        for (tx, spent) in txdata.iter().zip(undo).rev() {
            self.undo_tx(tx, spent);
        }
        self.active.pop();
        txdata.into_iter().skip(1).collect()
    }

    fn mempool_index(&self, txid: &Txid) -> Option<usize> {
        self.mempool.iter().position(|e| e.txid == *txid)
    }

    fn mempool_spender(&self, outpoint: &OutPoint) -> Option<usize> {
        self.mempool.iter().position(|e| e.tx.input.iter().any(|i| i.previous_output == *outpoint))
    }

    fn mempool_output(&self, outpoint: &OutPoint) -> Option<TxOut> {
        let entry = &self.mempool[self.mempool_index(&outpoint.txid)?];
        entry.tx.output.get(outpoint.vout as usize).cloned()
    }

    /// In-mempool descendants of the given transactions (not including them).
    fn descendants(&self, roots: &BTreeSet<Txid>) -> BTreeSet<Txid> {
        let mut found = BTreeSet::new();
        let mut frontier: Vec<Txid> = roots.iter().copied().collect();
        // Each txid enters `found` at most once, so this ends after at most MAX_MEMPOOL_TXS rounds.
        while let Some(parent) = frontier.pop() {
            for e in &self.mempool {
                if e.tx.input.iter().any(|i| i.previous_output.txid == parent)
                    && !roots.contains(&e.txid)
                    && found.insert(e.txid)
                {
                    frontier.push(e.txid);
                }
            }
        }
        found
    }

    /// In-mempool ancestors of `txid` (not including it).
    fn ancestors(&self, txid: &Txid) -> BTreeSet<Txid> {
        let mut found = BTreeSet::new();
        let mut frontier = vec![*txid];
        while let Some(child) = frontier.pop() {
            let Some(i) = self.mempool_index(&child) else { continue };
            for input in &self.mempool[i].tx.input {
                let parent = input.previous_output.txid;
                if self.mempool_index(&parent).is_some() && found.insert(parent) {
                    frontier.push(parent);
                }
            }
        }
        found
    }

    /// BIP125: replaceable if it or an unconfirmed ancestor signals (an input's sequence below 0xfffffffe).
    fn bip125_replaceable(&self, txid: &Txid) -> bool {
        let signals = |t: &Txid| {
            self.mempool_index(t).is_some_and(|i| self.mempool[i].tx.input.iter().any(|inp| inp.sequence.is_rbf()))
        };
        signals(txid) || self.ancestors(txid).iter().any(signals)
    }

    /// Mempool acceptance, in Core's order of checks and with its reject reasons. `entered` keeps the original
    /// entry time and height of a transaction being re-validated.
    fn accept(&mut self, tx: Transaction, entered: Option<(u64, u32)>) -> Result<Txid, Reject> {
        let txid = tx.compute_txid();
        if self.mempool_index(&txid).is_some() {
            // Core's sendrawtransaction answers with the txid for a transaction it already has.
            return Ok(txid);
        }
        check_tx_sanity(&tx)?;
        if tx.is_coinbase() {
            return Err(rejected("coinbase"));
        }
        if tx.weight().to_wu() > MAX_STANDARD_TX_WEIGHT_WU {
            return Err(rejected("tx-size"));
        }
        let next_height = self.tip_height() + 1;
        let mtp = self.median_time_past(self.tip_height() as usize);
        let lock_height =
            bitcoin::absolute::Height::from_consensus(next_height).map_err(|e| rejected(e.to_string()))?;
        let lock_time = bitcoin::absolute::Time::from_consensus(mtp).map_err(|e| rejected(e.to_string()))?;
        if !tx.is_absolute_timelock_satisfied(lock_height, lock_time) {
            return Err(rejected("non-final"));
        }
        for vout in 0..tx.output.len() as u32 {
            if self.utxos.contains_key(&OutPoint { txid, vout }) {
                return Err(reject(codes::RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set"));
            }
        }
        let mut prevouts = Vec::with_capacity(tx.input.len());
        let mut conflicts = BTreeSet::new();
        for input in &tx.input {
            let prev = &input.previous_output;
            if let Some(coin) = self.utxos.get(prev) {
                if coin.is_coinbase && next_height - coin.height < COINBASE_MATURITY_BLOCKS {
                    return Err(rejected(format!(
                        "bad-txns-premature-spend-of-coinbase, tried to spend coinbase at depth {}",
                        next_height - coin.height
                    )));
                }
                prevouts.push(coin.txout.clone());
            } else if let Some(out) = self.mempool_output(prev) {
                prevouts.push(out);
            } else {
                return Err(reject(codes::RPC_VERIFY_ERROR, "bad-txns-inputs-missingorspent"));
            }
            if let Some(j) = self.mempool_spender(prev) {
                conflicts.insert(self.mempool[j].txid);
            }
        }
        let fee = fee_of(&tx, &prevouts).map_err(rejected)?;
        let vsize_vb = tx.vsize() as u64;
        let min_fee_sat = vsize_vb * MIN_RELAY_FEE_SAT_PER_KVB / 1000;
        if fee.to_sat() < min_fee_sat {
            return Err(rejected(format!("min relay fee not met, {} < {min_fee_sat}", fee.to_sat())));
        }
        verify_scripts(&tx, &prevouts).map_err(|e| rejected(format!("mandatory-script-verify-flag-failed ({e})")))?;
        if !conflicts.is_empty() {
            self.check_replacement(&tx, txid, fee, vsize_vb, &conflicts)?;
        }
        if self.mempool.len() >= MAX_MEMPOOL_TXS {
            return Err(rejected("mempool full"));
        }
        let (time, height) = entered.unwrap_or_else(|| (now_unix_secs(), self.tip_height()));
        self.mempool.push(MempoolTx { tx, txid, fee, vsize_vb, time, height });
        Ok(txid)
    }

    /// BIP125 rules 1 and 3 to 6 (Core's policy/rbf.cpp); on success evicts the replaced transactions.
    fn check_replacement(
        &mut self,
        tx: &Transaction,
        txid: Txid,
        fee: Amount,
        vsize_vb: u64,
        conflicts: &BTreeSet<Txid>,
    ) -> Result<(), Reject> {
        for c in conflicts {
            if !self.bip125_replaceable(c) {
                return Err(rejected("txn-mempool-conflict"));
            }
        }
        let mut evicted = conflicts.clone();
        evicted.extend(self.descendants(conflicts));
        if evicted.len() > MAX_REPLACEMENT_EVICTIONS {
            return Err(rejected(format!("too many potential replacements, rejecting replacement {txid}")));
        }
        if tx.input.iter().any(|i| evicted.contains(&i.previous_output.txid)) {
            return Err(rejected(format!("bad-txns-spends-conflicting-tx, {txid} spends a transaction it replaces")));
        }
        let new_rate = fee_rate_sat_per_kvb(fee, vsize_vb);
        let mut evicted_fees = Amount::ZERO;
        for e in self.mempool.iter().filter(|e| evicted.contains(&e.txid)) {
            let old_rate = fee_rate_sat_per_kvb(e.fee, e.vsize_vb);
            if conflicts.contains(&e.txid) && new_rate <= old_rate {
                return Err(rejected(format!(
                    "insufficient fee, rejecting replacement {txid}; new feerate {new_rate} <= old feerate {old_rate} \
                     sat/kvB"
                )));
            }
            evicted_fees = evicted_fees.checked_add(e.fee).unwrap_or(Amount::MAX);
        }
        if fee < evicted_fees {
            return Err(rejected(format!(
                "insufficient fee, rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
                fee.to_sat(),
                evicted_fees.to_sat()
            )));
        }
        let additional_sat = fee.to_sat() - evicted_fees.to_sat();
        let required_sat = vsize_vb * INCREMENTAL_RELAY_FEE_SAT_PER_KVB / 1000;
        if additional_sat < required_sat {
            return Err(rejected(format!(
                "insufficient fee, rejecting replacement {txid}, not enough additional fees to relay; {additional_sat} \
                 < {required_sat}"
            )));
        }
        self.mempool.retain(|e| !evicted.contains(&e.txid));
        Ok(())
    }
}

fn add_outputs(utxos: &mut HashMap<OutPoint, Coin>, tx: &Transaction, height: u32, is_coinbase: bool) {
    let txid = tx.compute_txid();
    for (vout, txout) in tx.output.iter().enumerate() {
        // Core never adds provably unspendable outputs (OP_RETURN) to the UTXO set.
        if !txout.script_pubkey.is_op_return() {
            utxos.insert(OutPoint { txid, vout: vout as u32 }, Coin { txout: txout.clone(), height, is_coinbase });
        }
    }
}

/// Context-free checks (Core's CheckTransaction).
fn check_tx_sanity(tx: &Transaction) -> Result<(), Reject> {
    if tx.input.is_empty() {
        return Err(rejected("bad-txns-vin-empty"));
    }
    if tx.output.is_empty() {
        return Err(rejected("bad-txns-vout-empty"));
    }
    let mut total = Amount::ZERO;
    for out in &tx.output {
        total = total
            .checked_add(out.value)
            .filter(|t| *t <= Amount::MAX_MONEY)
            .ok_or_else(|| rejected("bad-txns-txouttotal-toolarge"))?;
    }
    let mut seen = HashSet::with_capacity(tx.input.len());
    if !tx.input.iter().all(|i| seen.insert(i.previous_output)) {
        return Err(rejected("bad-txns-inputs-duplicate"));
    }
    if !tx.is_coinbase() && tx.input.iter().any(|i| i.previous_output.is_null()) {
        return Err(rejected("bad-txns-prevout-null"));
    }
    Ok(())
}

/// Value in minus value out, refusing `in < out`.
fn fee_of(tx: &Transaction, prevouts: &[TxOut]) -> Result<Amount, String> {
    let value_in = prevouts
        .iter()
        .try_fold(Amount::ZERO, |a, o| a.checked_add(o.value))
        .ok_or("bad-txns-inputvalues-outofrange")?;
    let value_out =
        tx.output.iter().try_fold(Amount::ZERO, |a, o| a.checked_add(o.value)).ok_or("bad-txns-txouttotal-toolarge")?;
    value_in.checked_sub(value_out).ok_or_else(|| {
        format!("bad-txns-in-belowout, value in ({}) < value out ({})", format_btc(value_in), format_btc(value_out))
    })
}

// ---------------------------------------------------------------------------------------------------------------
// JSON-RPC endpoint
// ---------------------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RpcRequest {
    #[serde(default)]
    id: Value,
    method: String,
    #[serde(default)]
    params: Vec<Value>,
}

/// Amounts as Core prints them: fixed 8 decimals, as a JSON number (e.g. `0.00001000`), from integers only.
fn format_btc(amount: Amount) -> String {
    let sat = amount.to_sat();
    format!("{}.{:08}", sat / 100_000_000, sat % 100_000_000)
}

fn btc_json(amount: Amount) -> Result<Box<RawValue>, Reject> {
    RawValue::from_string(format_btc(amount)).map_err(|e| reject(codes::RPC_MISC_ERROR, e.to_string()))
}

fn to_raw<T: Serialize>(value: &T) -> Result<Box<RawValue>, Reject> {
    serde_json::to_string(value)
        .and_then(RawValue::from_string)
        .map_err(|e| reject(codes::RPC_MISC_ERROR, e.to_string()))
}

fn error_response(code: i64, message: &str, id: &Value) -> Response {
    // Core's HTTP status for JSON-RPC 1.0 errors: 404 unknown method, 400 bad request, 500 otherwise.
    let status = match code {
        codes::RPC_METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        codes::RPC_INVALID_REQUEST => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({ "result": null, "error": { "code": code, "message": message }, "id": id });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn handle_rpc(State(state): State<Arc<Mutex<SimState>>>, headers: HeaderMap, body: Bytes) -> Response {
    let required_auth = lock(&state).auth_header.clone();
    if let Some(expected) = required_auth {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")]).into_response();
        }
    }
    let request: RpcRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => return error_response(codes::RPC_PARSE_ERROR, "Parse error", &Value::Null),
    };
    let result = dispatch(&mut lock(&state), &request.method, &request.params);
    match result {
        Ok(raw) => {
            let id = serde_json::to_string(&request.id).unwrap_or_else(|_| "null".into());
            let body = format!("{{\"result\":{},\"error\":null,\"id\":{id}}}", raw.get());
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(r) => error_response(r.code, &r.message, &request.id),
    }
}

fn param<'a>(params: &'a [Value], i: usize, name: &str) -> Result<&'a Value, Reject> {
    params.get(i).ok_or_else(|| reject(codes::RPC_INVALID_PARAMETER, format!("missing required parameter {name}")))
}

fn param_u64(params: &[Value], i: usize, name: &str) -> Result<u64, Reject> {
    param(params, i, name)?
        .as_u64()
        .ok_or_else(|| reject(codes::RPC_INVALID_PARAMETER, format!("{name} must be a non-negative integer")))
}

fn param_block_hash(params: &[Value], i: usize) -> Result<BlockHash, Reject> {
    let s = param(params, i, "blockhash")?
        .as_str()
        .ok_or_else(|| reject(codes::RPC_INVALID_PARAMETER, "blockhash must be a string"))?;
    BlockHash::from_str(s)
        .map_err(|_| reject(codes::RPC_INVALID_PARAMETER, format!("blockhash must be hex of length 64, not '{s}'")))
}

fn dispatch(st: &mut SimState, method: &str, params: &[Value]) -> Result<Box<RawValue>, Reject> {
    match method {
        "getblockcount" => to_raw(&st.tip_height()),
        "getblockhash" => {
            let height = param_u64(params, 0, "height")?;
            let hash = usize::try_from(height)
                .ok()
                .and_then(|h| st.active.get(h))
                .ok_or_else(|| reject(codes::RPC_INVALID_PARAMETER, "Block height out of range"))?;
            to_raw(&hash.to_string())
        }
        "getblock" => {
            let hash = param_block_hash(params, 0)?;
            // Verbosity: 0 raw hex, 1 txids, 2 decoded transactions; `true`/`false` are the legacy 1/0.
            let verbosity = match params.get(1) {
                None | Some(Value::Null) => 1,
                Some(Value::Bool(b)) => u64::from(*b),
                Some(v) => v
                    .as_u64()
                    .filter(|v| *v <= 3)
                    .ok_or_else(|| reject(codes::RPC_INVALID_PARAMETER, "verbosity must be 0, 1 or 2"))?,
            };
            let stored =
                st.blocks.get(&hash).ok_or_else(|| reject(codes::RPC_INVALID_ADDRESS_OR_KEY, "Block not found"))?;
            if verbosity == 0 {
                return to_raw(&encode::serialize_hex(&stored.block));
            }
            let txs = stored
                .block
                .txdata
                .iter()
                .map(|tx| if verbosity == 1 { to_raw(&tx.compute_txid().to_string()) } else { tx_json(tx) })
                .collect::<Result<Vec<_>, _>>()?;
            let block = &stored.block;
            to_raw(&BlockJson {
                header: header_json(st, &hash)?,
                strippedsize: Header::SIZE
                    + encode::VarInt::from(block.txdata.len()).size()
                    + block.txdata.iter().map(Transaction::base_size).sum::<usize>(),
                size: block.total_size(),
                weight: block.weight().to_wu(),
                tx: txs,
            })
        }
        "getblockheader" => {
            let hash = param_block_hash(params, 0)?;
            let verbose = params.get(1).and_then(Value::as_bool).unwrap_or(true);
            let stored =
                st.blocks.get(&hash).ok_or_else(|| reject(codes::RPC_INVALID_ADDRESS_OR_KEY, "Block not found"))?;
            if !verbose {
                return to_raw(&encode::serialize_hex(&stored.block.header));
            }
            to_raw(&header_json(st, &hash)?)
        }
        "sendrawtransaction" => {
            let hex = param(params, 0, "hexstring")?
                .as_str()
                .ok_or_else(|| reject(codes::RPC_INVALID_PARAMETER, "hexstring must be a string"))?;
            let tx: Transaction = encode::deserialize_hex(hex).map_err(|_| {
                reject(codes::RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input.")
            })?;
            let txid = st.accept(tx, None)?;
            to_raw(&txid.to_string())
        }
        "estimatesmartfee" => {
            let target = param_u64(params, 0, "conf_target")?;
            if !(1..=MAX_CONF_TARGET_BLOCKS).contains(&target) {
                return Err(reject(codes::RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008"));
            }
            let mut rates: Vec<u64> = st.active[st.active.len().saturating_sub(FEE_ESTIMATE_WINDOW_BLOCKS)..]
                .iter()
                .flat_map(|h| st.blocks[h].fee_rates_sat_per_kvb.iter().copied())
                .collect();
            rates.sort_unstable();
            let median = rates.get(rates.len() / 2).copied().unwrap_or(0);
            let rate_sat_per_kvb = median.max(MIN_RELAY_FEE_SAT_PER_KVB);
            #[derive(Serialize)]
            struct Estimate {
                feerate: Box<RawValue>,
                blocks: u64,
            }
            // Core never answers for a target below 2 blocks.
            to_raw(&Estimate { feerate: btc_json(Amount::from_sat(rate_sat_per_kvb))?, blocks: target.max(2) })
        }
        "getmempoolentry" => {
            let s = param(params, 0, "txid")?
                .as_str()
                .ok_or_else(|| reject(codes::RPC_INVALID_PARAMETER, "txid must be a string"))?;
            let txid =
                Txid::from_str(s).map_err(|_| reject(codes::RPC_INVALID_PARAMETER, "txid must be hex of length 64"))?;
            mempool_entry_json(st, &txid)
        }
        "getrawmempool" => {
            if params.first().and_then(Value::as_bool) == Some(true) {
                return Err(reject(codes::RPC_INVALID_PARAMETER, "the simulator answers verbose=false only"));
            }
            to_raw(&st.mempool.iter().map(|e| e.txid.to_string()).collect::<Vec<_>>())
        }
        _ => Err(reject(codes::RPC_METHOD_NOT_FOUND, "Method not found")),
    }
}

#[derive(Serialize)]
struct HeaderJson {
    hash: String,
    confirmations: i64,
    height: u32,
    version: i32,
    #[serde(rename = "versionHex")]
    version_hex: String,
    merkleroot: String,
    time: u32,
    mediantime: u32,
    nonce: u32,
    bits: String,
    #[serde(rename = "nTx")]
    n_tx: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    previousblockhash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nextblockhash: Option<String>,
}

#[derive(Serialize)]
struct BlockJson {
    #[serde(flatten)]
    header: HeaderJson,
    strippedsize: usize,
    size: usize,
    weight: u64,
    tx: Vec<Box<RawValue>>,
}

fn header_json(st: &SimState, hash: &BlockHash) -> Result<HeaderJson, Reject> {
    let stored = st.blocks.get(hash).ok_or_else(|| reject(codes::RPC_INVALID_ADDRESS_OR_KEY, "Block not found"))?;
    let h = &stored.block.header;
    let active = st.is_active(hash);
    let height = stored.height;
    Ok(HeaderJson {
        hash: hash.to_string(),
        // Core: -1 for a block not on the active chain.
        confirmations: if active { i64::from(st.tip_height() - height) + 1 } else { -1 },
        height,
        version: h.version.to_consensus(),
        version_hex: format!("{:08x}", h.version.to_consensus()),
        merkleroot: h.merkle_root.to_string(),
        time: h.time,
        mediantime: if active { st.median_time_past(height as usize) } else { h.time },
        nonce: h.nonce,
        bits: format!("{:08x}", h.bits.to_consensus()),
        n_tx: stored.block.txdata.len(),
        previousblockhash: (height > 0).then(|| h.prev_blockhash.to_string()),
        nextblockhash: if active { st.active.get(height as usize + 1).map(BlockHash::to_string) } else { None },
    })
}

#[derive(Serialize)]
struct ScriptJson {
    hex: String,
}

#[derive(Serialize)]
struct VinJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    coinbase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    txid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vout: Option<u32>,
    #[serde(rename = "scriptSig", skip_serializing_if = "Option::is_none")]
    script_sig: Option<ScriptJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    txinwitness: Vec<String>,
    sequence: u32,
}

#[derive(Serialize)]
struct VoutJson {
    value: Box<RawValue>,
    n: u32,
    #[serde(rename = "scriptPubKey")]
    script_pub_key: ScriptJson,
}

#[derive(Serialize)]
struct TxJson {
    txid: String,
    hash: String,
    version: i32,
    size: usize,
    vsize: usize,
    weight: u64,
    locktime: u32,
    vin: Vec<VinJson>,
    vout: Vec<VoutJson>,
    hex: String,
}

fn tx_json(tx: &Transaction) -> Result<Box<RawValue>, Reject> {
    let coinbase = tx.is_coinbase();
    let vin = tx
        .input
        .iter()
        .map(|i| VinJson {
            coinbase: coinbase.then(|| hex::encode(i.script_sig.as_bytes())),
            txid: (!coinbase).then(|| i.previous_output.txid.to_string()),
            vout: (!coinbase).then_some(i.previous_output.vout),
            script_sig: (!coinbase).then(|| ScriptJson { hex: hex::encode(i.script_sig.as_bytes()) }),
            txinwitness: i.witness.iter().map(hex::encode).collect(),
            sequence: i.sequence.to_consensus_u32(),
        })
        .collect();
    let vout = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| {
            Ok(VoutJson {
                value: btc_json(o.value)?,
                n: n as u32,
                script_pub_key: ScriptJson { hex: hex::encode(o.script_pubkey.as_bytes()) },
            })
        })
        .collect::<Result<Vec<_>, Reject>>()?;
    to_raw(&TxJson {
        txid: tx.compute_txid().to_string(),
        hash: tx.compute_wtxid().to_string(),
        version: tx.version.0,
        size: tx.total_size(),
        vsize: tx.vsize(),
        weight: tx.weight().to_wu(),
        locktime: tx.lock_time.to_consensus_u32(),
        vin,
        vout,
        hex: encode::serialize_hex(tx),
    })
}

fn mempool_entry_json(st: &SimState, txid: &Txid) -> Result<Box<RawValue>, Reject> {
    let i = st
        .mempool_index(txid)
        .ok_or_else(|| reject(codes::RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool"))?;
    let e = &st.mempool[i];
    let one = BTreeSet::from([*txid]);
    let ancestors = st.ancestors(txid);
    let descendants = st.descendants(&one);
    let sum = |set: &BTreeSet<Txid>| -> (Amount, u64) {
        st.mempool
            .iter()
            .filter(|m| set.contains(&m.txid))
            .fold((e.fee, e.vsize_vb), |(f, s), m| (f.checked_add(m.fee).unwrap_or(Amount::MAX), s + m.vsize_vb))
    };
    let (ancestor_fee, ancestor_size) = sum(&ancestors);
    let (descendant_fee, descendant_size) = sum(&descendants);
    let depends: Vec<String> =
        e.tx.input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|t| st.mempool_index(t).is_some())
            .collect::<BTreeSet<_>>()
            .iter()
            .map(Txid::to_string)
            .collect();
    let spentby: Vec<String> = st
        .mempool
        .iter()
        .filter(|m| m.tx.input.iter().any(|i| i.previous_output.txid == *txid))
        .map(|m| m.txid.to_string())
        .collect();
    #[derive(Serialize)]
    struct Fees {
        base: Box<RawValue>,
        modified: Box<RawValue>,
        ancestor: Box<RawValue>,
        descendant: Box<RawValue>,
    }
    #[derive(Serialize)]
    struct Entry {
        vsize: u64,
        weight: u64,
        time: u64,
        height: u32,
        descendantcount: usize,
        descendantsize: u64,
        ancestorcount: usize,
        ancestorsize: u64,
        wtxid: String,
        fees: Fees,
        depends: Vec<String>,
        spentby: Vec<String>,
        #[serde(rename = "bip125-replaceable")]
        bip125_replaceable: bool,
        unbroadcast: bool,
    }
    to_raw(&Entry {
        vsize: e.vsize_vb,
        weight: e.tx.weight().to_wu(),
        time: e.time,
        height: e.height,
        descendantcount: descendants.len() + 1,
        descendantsize: descendant_size,
        ancestorcount: ancestors.len() + 1,
        ancestorsize: ancestor_size,
        wtxid: e.tx.compute_wtxid().to_string(),
        fees: Fees {
            base: btc_json(e.fee)?,
            modified: btc_json(e.fee)?,
            ancestor: btc_json(ancestor_fee)?,
            descendant: btc_json(descendant_fee)?,
        },
        depends,
        spentby,
        bip125_replaceable: st.bip125_replaceable(txid),
        unbroadcast: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m5_btc_simulator_formats_amounts_like_core() {
        assert_eq!(format_btc(Amount::from_sat(1000)), "0.00001000");
        assert_eq!(format_btc(Amount::from_sat(5_000_000_000)), "50.00000000");
        assert_eq!(subsidy(149), Amount::from_sat(5_000_000_000));
        assert_eq!(subsidy(150), Amount::from_sat(2_500_000_000));
    }
}
