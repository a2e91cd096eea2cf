//! The deposit watcher (M5, M6, C2): reads blocks from the node in order, checks each one's parent
//! against the persisted window of blocks already processed, records transfers to watched deposit
//! addresses as pending deposits, credits them after enough confirmations, and on a re-org rewinds
//! block by block — dropping pending deposits and reversing credited ones — until it is back on the
//! node's chain. A re-org deeper than the window halts the watcher (fails closed).
//!
//! ERC-20 deposits (K22) are the `Transfer` logs of configured token contracts to watched addresses, read
//! per recorded block by its hash; they go through the same pending → credited → dropped/reversed path.
//!
//! Only addresses in `deposit_addresses` are watched: transfers to or from the custodian's own hot
//! wallet are not customer deposits and are never matched.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use alloy_primitives::Address;
use kinko_chain::evm::address::to_lower_hex;
use kinko_chain::evm::erc20::TokenTransfer;
use kinko_chain::evm::rpc::{EvmBlock, EvmRpc, NativeTransfer, RpcError};
use kinko_core::reorg::{Accept, BlockWindow, ReorgTooDeep};
use kinko_core::{Amount, AssetCode};
use kinko_store::deposit_detection::{DetectedTransfer, WATCHED_PAGE_MAX};
use kinko_store::{Store, StoreError};

/// Bound on blocks one scan processes, so a watcher far behind still yields and reports progress.
pub const BLOCKS_PER_SCAN_MAX: u64 = 100;
/// Watched addresses are re-read from this long before the newest one seen, so a row whose
/// transaction committed a little after a later-stamped one (another instance, clock skew) is still
/// picked up. Re-reading a few rows is cheap; the set dedups.
pub const ADDRESS_RELOAD_SLACK_MS: i64 = 120_000;
/// Bound on pages of addresses read per refresh (with `WATCHED_PAGE_MAX` rows each).
pub const ADDRESS_PAGES_PER_REFRESH_MAX: u32 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("chain {chain}: {source}")]
    ReorgTooDeep { chain: String, source: ReorgTooDeep },
    #[error("chain {chain}: node returned block {got} when block {expected} was next")]
    OutOfOrder { chain: String, expected: u64, got: u64 },
    #[error("chain {chain}: stored deposit address {address:?} is not a valid address")]
    BadStoredAddress { chain: String, address: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// The node's tip when the scan began.
    pub node_tip: u64,
    /// The highest block recorded after the scan (the watcher's verified tip).
    pub processed_tip: Option<u64>,
    pub blocks_scanned: u64,
    pub blocks_rewound: u64,
    pub deposits_detected: Vec<String>,
    pub deposits_credited: Vec<String>,
    /// Customers left with a negative position by a reversal (flagged for operators, C2).
    pub negative_positions: Vec<String>,
    pub deposits_dropped: Vec<String>,
    pub deposits_reversed: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// The chain's name in the store (e.g. "eth").
    pub chain: String,
    /// The chain's native asset (e.g. ETH).
    pub asset: AssetCode,
    pub confirmations: u64,
    /// First block to scan when nothing is stored yet; `None` = the node's tip at first start.
    pub start_block: Option<u64>,
    pub poll_interval: Duration,
    /// ERC-20 tokens whose `Transfer` logs to watched addresses are deposits too (K22).
    pub tokens: crate::erc20::TokenSet,
}

/// The native-value transfers in a block that pay a watched address.
pub fn match_transfers<'a>(block: &'a EvmBlock, watched: &HashSet<Address>) -> Vec<&'a NativeTransfer> {
    block.transfers.iter().filter(|t| watched.contains(&t.to)).collect()
}

/// The in-memory set of watched addresses, refreshed incrementally: after the first full load each
/// refresh reads only rows created since (minus a slack), so a million addresses cost one load.
#[derive(Debug, Default)]
pub struct WatchedSet {
    addresses: HashSet<Address>,
    newest_ms: Option<i64>,
}

impl WatchedSet {
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    pub fn addresses(&self) -> &HashSet<Address> {
        &self.addresses
    }

    pub async fn refresh(&mut self, store: &Store, chain: &str) -> Result<(), WatcherError> {
        let since_ms = self.newest_ms.map_or(i64::MIN, |n| n.saturating_sub(ADDRESS_RELOAD_SLACK_MS));
        let mut after: Option<(i64, String)> = None;
        for _ in 0..ADDRESS_PAGES_PER_REFRESH_MAX {
            let page = store
                .watched_addresses_page(
                    chain,
                    since_ms,
                    after.as_ref().map(|(t, a)| (*t, a.as_str())),
                    WATCHED_PAGE_MAX,
                )
                .await?;
            for w in &page {
                let address: Address = w.address.parse().map_err(|_| WatcherError::BadStoredAddress {
                    chain: chain.to_string(),
                    address: w.address.clone(),
                })?;
                self.addresses.insert(address);
                self.newest_ms = Some(self.newest_ms.map_or(w.created_at_ms, |n| n.max(w.created_at_ms)));
            }
            match page.last() {
                Some(last) if page.len() as u32 >= WATCHED_PAGE_MAX => {
                    after = Some((last.created_at_ms, last.address.clone()))
                }
                _ => return Ok(()),
            }
        }
        // More than the bound in one refresh: the rest is read next cycle (newest_ms has advanced).
        tracing::warn!(chain, "watched-address refresh hit its page bound; continuing next cycle");
        Ok(())
    }
}

/// One scan with a freshly loaded address set. Convenient for tests and one-off runs; the long-running
/// watcher keeps its set between scans ([`DepositWatcher`]).
pub async fn scan_once(
    store: &Store,
    rpc: &EvmRpc,
    chain: &str,
    asset: &AssetCode,
    confirmations: u64,
    start_block: Option<u64>,
    now_ms: i64,
) -> Result<ScanReport, WatcherError> {
    let mut watched = WatchedSet::default();
    watched.refresh(store, chain).await?;
    scan_with(store, rpc, chain, asset, confirmations, start_block, &watched, now_ms).await
}

/// A scan against a given address set: advances at most [`BLOCKS_PER_SCAN_MAX`] blocks.
#[allow(clippy::too_many_arguments)]
pub async fn scan_with(
    store: &Store,
    rpc: &EvmRpc,
    chain: &str,
    asset: &AssetCode,
    confirmations: u64,
    start_block: Option<u64>,
    watched: &WatchedSet,
    now_ms: i64,
) -> Result<ScanReport, WatcherError> {
    scan_with_tokens(store, rpc, chain, asset, confirmations, start_block, watched, &[], now_ms).await
}

/// [`scan_once`] that also detects ERC-20 deposits of `tokens` (K22).
#[allow(clippy::too_many_arguments)]
pub async fn scan_once_with_tokens(
    store: &Store,
    rpc: &EvmRpc,
    chain: &str,
    asset: &AssetCode,
    confirmations: u64,
    start_block: Option<u64>,
    tokens: &crate::erc20::TokenSet,
    now_ms: i64,
) -> Result<ScanReport, WatcherError> {
    let mut watched = WatchedSet::default();
    watched.refresh(store, chain).await?;
    let tokens = tokens.tokens().iter().map(|t| (t.contract, t.code.clone())).collect::<Vec<_>>();
    scan_with_tokens(store, rpc, chain, asset, confirmations, start_block, &watched, &tokens, now_ms).await
}

/// The ERC-20 `Transfer` logs in a block that pay a watched address, as deposits of the token's asset
/// (K22). Zero-value transfers are skipped: they move nothing, and "address poisoning" spam sends them
/// to make a look-alike address appear in a customer's history. A value above u128 cannot be an amount
/// kinko books; it is logged loudly and not credited.
pub fn match_token_transfers(
    logs: &[TokenTransfer],
    tokens: &[(Address, AssetCode)],
    watched: &HashSet<Address>,
) -> Vec<DetectedTransfer> {
    let mut out = Vec::new();
    for log in logs {
        let Some((_, code)) = tokens.iter().find(|(c, _)| *c == log.contract) else { continue };
        if !watched.contains(&log.to) || log.value.is_zero() {
            continue;
        }
        let Ok(value) = u128::try_from(log.value) else {
            tracing::error!(tx = %hex::encode(log.tx_hash), asset = %code, value = %log.value,
                "token transfer value exceeds u128; not credited, operator review needed");
            continue;
        };
        out.push(DetectedTransfer {
            address: to_lower_hex(&log.to),
            tx_hash: log.tx_hash,
            log_index: log.log_index,
            amount: Amount::from_base_units(value),
            asset: Some(code.clone()),
        });
    }
    out
}

/// [`scan_with`] that also reads the `Transfer` logs of `tokens` (contract, asset) in every block it
/// records, by the block's hash, so the logs are those of exactly the block checked against the window.
#[allow(clippy::too_many_arguments)]
pub async fn scan_with_tokens(
    store: &Store,
    rpc: &EvmRpc,
    chain: &str,
    asset: &AssetCode,
    confirmations: u64,
    start_block: Option<u64>,
    watched: &WatchedSet,
    tokens: &[(Address, AssetCode)],
    now_ms: i64,
) -> Result<ScanReport, WatcherError> {
    let contracts: BTreeSet<Address> = tokens.iter().map(|(c, _)| *c).collect();
    let mut report = ScanReport { node_tip: rpc.block_number().await?, ..ScanReport::default() };
    let stored = store.chain_window(chain).await?;
    let mut window = BlockWindow::from_hashes(stored.iter().map(|h| (h.number, h.hash)));

    // The node may have re-orged (or rolled back) without producing a block past ours yet: compare our
    // tip with the node's block at that height first. A node that merely has no block there (lagging
    // replica) is not evidence of a re-org: wait for it instead of dropping deposits.
    if let Some((tip, _)) = window.tip()
        && rpc.block_hash(tip).await?.is_some()
    {
        rewind_to_node(store, rpc, chain, &mut window, &mut report, now_ms).await?;
    }

    let mut next = match window.tip() {
        Some((tip, _)) => tip + 1,
        None => start_block.unwrap_or(report.node_tip),
    };
    // Each pass either records a block or rewinds at least one, and rewinds are bounded by the window.
    let passes_max = BLOCKS_PER_SCAN_MAX + kinko_core::reorg::REORG_DEPTH_MAX + 1;
    for _ in 0..passes_max {
        if report.blocks_scanned >= BLOCKS_PER_SCAN_MAX || next > report.node_tip {
            break;
        }
        let Some(block) = rpc.block(next).await? else { break };
        match window.accept(&block.header) {
            Accept::Extended => {
                let mut detected: Vec<DetectedTransfer> = match_transfers(&block, watched.addresses())
                    .into_iter()
                    .map(|t| DetectedTransfer {
                        address: to_lower_hex(&t.to),
                        tx_hash: t.tx_hash,
                        log_index: 0,
                        amount: Amount::from_base_units(t.value_wei),
                        asset: None,
                    })
                    .collect();
                if !contracts.is_empty() {
                    // A malformed log is an error for the whole block: nothing of it is recorded, the scan
                    // is retried next cycle, and the error is logged (K22: never a panic, never a guess).
                    let logs = rpc.token_transfers(block.header.hash, &contracts).await?;
                    detected.extend(match_token_transfers(&logs, tokens, watched.addresses()));
                }
                let recorded =
                    store.record_block(chain, asset, &block.header, &detected, confirmations, now_ms).await?;
                if !recorded.detected.is_empty() {
                    tracing::info!(chain, block = next, deposits = ?recorded.detected, "deposits detected");
                }
                if !recorded.credited.is_empty() {
                    tracing::info!(chain, block = next, deposits = ?recorded.credited, "deposits credited");
                }
                report.deposits_detected.extend(recorded.detected);
                report.deposits_credited.extend(recorded.credited);
                report.blocks_scanned += 1;
                next += 1;
            }
            Accept::ParentMismatch => {
                tracing::warn!(chain, block = next, "parent hash mismatch: re-org, rewinding");
                let rewound_before = report.blocks_rewound;
                rewind_to_node(store, rpc, chain, &mut window, &mut report, now_ms).await?;
                if report.blocks_rewound == rewound_before {
                    // The node changed its mind between the two calls; try again next scan.
                    break;
                }
                next = window.tip().map_or(next, |(tip, _)| tip + 1);
            }
            Accept::NotNext { expected } => {
                return Err(WatcherError::OutOfOrder { chain: chain.to_string(), expected, got: block.header.number });
            }
        }
    }
    report.processed_tip = window.tip().map(|(n, _)| n);
    Ok(report)
}

/// Rewinds our tip while the node has a different block at that height. Stops when they agree or
/// when the node has no block at our tip (it is behind, not re-orged). Fails closed past the window.
async fn rewind_to_node(
    store: &Store,
    rpc: &EvmRpc,
    chain: &str,
    window: &mut BlockWindow,
    report: &mut ScanReport,
    now_ms: i64,
) -> Result<(), WatcherError> {
    for _ in 0..=kinko_core::reorg::REORG_DEPTH_MAX {
        let Some((tip, ours)) = window.tip() else { return Ok(()) };
        match rpc.block_hash(tip).await? {
            Some(theirs) if theirs == ours => return Ok(()),
            None if report.blocks_rewound == 0 => return Ok(()),
            _ => {}
        }
        let dropped =
            window.rewind_one().map_err(|source| WatcherError::ReorgTooDeep { chain: chain.to_string(), source })?;
        let rewound = store.rewind_block(chain, dropped, now_ms).await?;
        report.blocks_rewound += 1;
        report.deposits_dropped.extend(rewound.dropped);
        report.deposits_reversed.extend(rewound.reversed);
        report.negative_positions.extend(rewound.negative_positions);
    }
    Err(WatcherError::ReorgTooDeep { chain: chain.to_string(), source: ReorgTooDeep })
}

/// A long-running watcher: keeps its address set between scans.
#[derive(Debug)]
pub struct DepositWatcher {
    pub cfg: WatcherConfig,
    watched: WatchedSet,
}

impl DepositWatcher {
    pub fn new(cfg: WatcherConfig) -> Self {
        DepositWatcher { cfg, watched: WatchedSet::default() }
    }

    pub fn watched(&self) -> &WatchedSet {
        &self.watched
    }

    pub async fn scan(&mut self, store: &Store, rpc: &EvmRpc, now_ms: i64) -> Result<ScanReport, WatcherError> {
        self.watched.refresh(store, &self.cfg.chain).await?;
        let c = &self.cfg;
        let tokens = c.tokens.tokens().iter().map(|t| (t.contract, t.code.clone())).collect::<Vec<_>>();
        scan_with_tokens(store, rpc, &c.chain, &c.asset, c.confirmations, c.start_block, &self.watched, &tokens, now_ms)
            .await
    }
}

/// One scan of a deposit watcher, as the shared poll loop ([`poll_deposits`]) sees it: what it credited and
/// reversed (to be recorded in the audit trail), whether it stopped at its batch bound (go again without
/// sleeping), or why it failed.
pub(crate) struct ScanOutcome {
    pub(crate) credited: Vec<String>,
    pub(crate) reversed: Vec<String>,
    pub(crate) full_batch: bool,
}

pub(crate) enum ScanFailure {
    /// A re-org deeper than the window: nothing more is credited until an operator intervenes.
    Halted(String),
    /// Anything else (node or store unavailable): retried next poll from the stored window.
    Retry(String),
}

/// A deposit watcher the shared poll loop drives (ETH and tokens, Bitcoin).
pub(crate) trait PollingWatcher {
    fn chain(&self) -> &str;
    fn scan_once(&mut self, now_ms: i64) -> impl std::future::Future<Output = Result<ScanOutcome, ScanFailure>> + Send;
}

/// Polls until `shutdown` turns true. Errors are logged and retried next cycle; a re-org deeper than
/// the window keeps failing (and logging) until an operator intervenes, so nothing is credited on a
/// chain kinko cannot verify.
///
/// Each credit and reversal is recorded in the audit trail (L2, L6) after the scan that committed it; while
/// any is not recorded (the trail is unavailable) the watcher scans nothing more, so no further deposit is
/// credited without its record.
pub(crate) async fn poll_deposits(
    watcher: &mut impl PollingWatcher,
    poll: Duration,
    audit: crate::audit::AuditSink,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut unrecorded: Vec<(&'static str, String)> = Vec::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !crate::audit::record_deposits(&audit, &mut unrecorded).await {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        match watcher.scan_once(crate::clock::now_ms()).await {
            Ok(r) => {
                unrecorded.extend(r.credited.into_iter().map(|id| ("system.credit", id)));
                unrecorded.extend(r.reversed.into_iter().map(|id| ("system.credit_reversed", id)));
                // A full batch means we are behind: go again without sleeping.
                if r.full_batch {
                    continue;
                }
            }
            Err(ScanFailure::Halted(e)) => {
                tracing::error!(chain = %watcher.chain(), error = %e, "deposit watcher halted: operator action needed");
            }
            Err(ScanFailure::Retry(e)) => {
                tracing::warn!(chain = %watcher.chain(), error = %e, "deposit scan failed; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => {}
        }
    }
}

struct EthPolling {
    watcher: DepositWatcher,
    store: Store,
    rpc: EvmRpc,
}

impl PollingWatcher for EthPolling {
    fn chain(&self) -> &str {
        &self.watcher.cfg.chain
    }

    async fn scan_once(&mut self, now_ms: i64) -> Result<ScanOutcome, ScanFailure> {
        match self.watcher.scan(&self.store, &self.rpc, now_ms).await {
            Ok(r) => Ok(ScanOutcome {
                full_batch: r.blocks_scanned >= BLOCKS_PER_SCAN_MAX,
                credited: r.deposits_credited,
                reversed: r.deposits_reversed,
            }),
            Err(e @ WatcherError::ReorgTooDeep { .. }) => Err(ScanFailure::Halted(e.to_string())),
            Err(e) => Err(ScanFailure::Retry(e.to_string())),
        }
    }
}

/// The ETH (and token) deposit watcher's task: [`poll_deposits`] over [`DepositWatcher::scan`].
pub async fn run_deposit_watcher(
    store: Store,
    rpc: EvmRpc,
    cfg: WatcherConfig,
    audit: crate::audit::AuditSink,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let poll = cfg.poll_interval;
    let mut polling = EthPolling { watcher: DepositWatcher::new(cfg), store, rpc };
    poll_deposits(&mut polling, poll, audit, shutdown).await;
}

#[cfg(test)]
mod tests {
    use kinko_core::reorg::{BlockHeader, REORG_DEPTH_MAX};

    use super::*;

    fn hash(n: u64, fork: u8) -> [u8; 32] {
        let mut x = [0u8; 32];
        x[..8].copy_from_slice(&n.to_be_bytes());
        x[31] = fork;
        x
    }

    /// C2: a re-org that reaches past the whole window cannot be followed; the watcher must stop.
    #[test]
    fn c2_reorg_deeper_than_window_fails_closed() {
        let mut w = BlockWindow::default();
        for n in 0..REORG_DEPTH_MAX + 5 {
            let parent = if n == 0 { [0; 32] } else { hash(n - 1, 0) };
            assert_eq!(w.accept(&BlockHeader { number: n, hash: hash(n, 0), parent_hash: parent }), Accept::Extended);
        }
        // Every block differs on the node: rewinding exhausts the window and errs.
        let mut rewound = 0;
        let err = loop {
            match w.rewind_one() {
                Ok(_) => rewound += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, ReorgTooDeep);
        assert_eq!(rewound, REORG_DEPTH_MAX - 1);
    }

    #[test]
    fn m6_match_transfers_only_watched() {
        let a: Address = "0x1111111111111111111111111111111111111111".parse().unwrap();
        let b: Address = "0x2222222222222222222222222222222222222222".parse().unwrap();
        let t = |to| NativeTransfer { tx_hash: [1; 32], from: b, to, value_wei: 5, nonce: 0 };
        let block = EvmBlock {
            header: BlockHeader { number: 1, hash: [1; 32], parent_hash: [0; 32] },
            transfers: vec![t(a), t(b)],
        };
        let watched: HashSet<Address> = [a].into();
        let m = match_transfers(&block, &watched);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].to, a);
    }
}
