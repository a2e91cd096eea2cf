//! Real-time reconciliation (L3): every block is inspected for spends from the custodian's managed
//! addresses (the hot wallet, custodian wallets, customer deposit addresses), and each spend is matched to a
//! transaction kinko signed itself (`withdrawal_txs`, stored before any broadcast). A spend kinko did not
//! sign — a Zaif- or Coincheck-style drain with a stolen key — is recorded with a critical ops event and an
//! alert notice (webhook, through the outbox) and freezes the wallet (or everything, with
//! `freeze_everything_on_unknown_spend`) in the database and the signer, in the scan that first reads the
//! block: within one block of its inclusion.
//!
//! Two checks, because one block read sees only top-level value transfers: (1) every value transfer whose
//! sender is managed is matched by hash; (2) the node's nonce of each hot wallet is compared with the
//! highest nonce kinko reserved for it, which catches spends without value (contract calls) too.
//!
//! Balance reconciliation: the on-chain holdings of every custodian address per asset against the
//! customers' liabilities in the ledger (available + held + pending − receivable); the difference is
//! reported as surplus (the custodian's own funds, in-flight fees) or shortfall, on a schedule and on demand.
//!
//! The spend reconciliation follows its own cursor (`reconciliation_cursors`), apart from deposit
//! detection, and does not follow re-orgs: a spend seen in a block later re-orged away was still attempted
//! with the key, and the freeze stands (fail closed).

use std::time::Duration;

use alloy_primitives::Address;
use kinko_chain::evm::address::{parse_address, to_lower_hex};
use kinko_chain::evm::rpc::{EvmRpc, NonceAt, RpcError};
use kinko_core::AssetCode;
use kinko_core::freeze::{Freeze, FreezeScope, SYSTEM_RECONCILIATION};
use kinko_core::ledger::AccountKind;
use kinko_signer::Signer;
use kinko_store::freeze::{REPORT_BALANCE, REPORT_UNKNOWN_SPEND, ReportRow};
use kinko_store::notices::NewNotice;
use kinko_store::ops_requests::NewOpsEvent;
use kinko_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::watcher::WatchedSet;

/// Bound on blocks one scan reads, so a reconciler far behind still yields.
pub const BLOCKS_PER_SCAN_MAX: u64 = 100;
/// Bound on addresses whose balance one balance reconciliation reads.
pub const BALANCE_ADDRESSES_MAX: usize = 100_000;
/// The ops event and notice kind of an unknown spend.
pub const UNKNOWN_SPEND_EVENT: &str = "unknown_spend";

/// `[reconciliation]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationConfig {
    /// Run the spend reconciliation and the scheduled balance reconciliation in `kinko serve` (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// An unknown spend freezes everything instead of the wallet it came from (default false).
    #[serde(default)]
    pub freeze_everything_on_unknown_spend: bool,
    /// How often the balance reconciliation runs, in milliseconds (default 10 minutes; 0 = on demand only).
    #[serde(default = "default_balance_interval_ms")]
    pub balance_interval_ms: u64,
    /// Who the alert webhook notice is addressed to (what the receiving relay routes on). Default `ops`.
    #[serde(default = "default_alert_recipient")]
    pub alert_recipient: String,
}

impl Default for ReconciliationConfig {
    fn default() -> Self {
        ReconciliationConfig {
            enabled: true,
            freeze_everything_on_unknown_spend: false,
            balance_interval_ms: default_balance_interval_ms(),
            alert_recipient: default_alert_recipient(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_balance_interval_ms() -> u64 {
    600_000
}
fn default_alert_recipient() -> String {
    "ops".into()
}

impl ReconciliationConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let r = &self.alert_recipient;
        if r.is_empty() || r.len() > 254 || r.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(crate::config::ConfigError::Invalid {
                field: "reconciliation.alert_recipient",
                reason: "must be 1 to 254 bytes without spaces or control characters".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("watched addresses: {0}")]
    Watched(String),
    #[error("stored address {0:?} is not an address")]
    BadAddress(String),
}

/// What one spend scan did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpendReport {
    pub blocks_scanned: u64,
    /// The last block read, if any.
    pub last_block: Option<u64>,
    /// Spends matched to kinko's own transactions.
    pub known_spends: Vec<String>,
    /// Report ids of unknown spends recorded in this scan.
    pub unknown_spends: Vec<String>,
    /// Freeze ids set in this scan.
    pub freezes: Vec<String>,
}

/// Follows blocks and matches spends from managed addresses (see the module docs).
pub struct SpendReconciler {
    pub chain: String,
    pub asset: AssetCode,
    /// First block when no cursor is stored; `None` = the node's tip at first start.
    pub start_block: Option<u64>,
    pub freeze_everything: bool,
    pub alert_recipient: String,
    deposit_addresses: WatchedSet,
}

impl SpendReconciler {
    pub fn new(chain: &str, asset: AssetCode, start_block: Option<u64>, cfg: &ReconciliationConfig) -> Self {
        SpendReconciler {
            chain: chain.into(),
            asset,
            start_block,
            freeze_everything: cfg.freeze_everything_on_unknown_spend,
            alert_recipient: cfg.alert_recipient.clone(),
            deposit_addresses: WatchedSet::default(),
        }
    }

    /// Reads the blocks from the cursor up to the node's tip (at most [`BLOCKS_PER_SCAN_MAX`]), records and
    /// freezes each unknown spend, then checks the hot wallets' nonces. The cursor moves past a block only
    /// after everything it showed is recorded, so a crash re-reads it (recording is idempotent).
    pub async fn scan(
        &mut self,
        store: &Store,
        rpc: &EvmRpc,
        signer: &dyn Signer,
        now_ms: i64,
    ) -> Result<SpendReport, ReconcileError> {
        self.deposit_addresses.refresh(store, &self.chain).await.map_err(|e| ReconcileError::Watched(e.to_string()))?;
        let wallets = store.custodian_wallets(&self.chain).await?;
        let mut managed: std::collections::HashSet<Address> = self.deposit_addresses.addresses().clone();
        for (address, _) in &wallets {
            managed.insert(parse_address(address).map_err(|_| ReconcileError::BadAddress(address.clone()))?);
        }
        let tip = rpc.block_number().await?;
        let mut next = match store.reconciliation_cursor(&self.chain).await? {
            Some(n) => n,
            None => self.start_block.unwrap_or(tip),
        };
        let mut report = SpendReport::default();
        while next <= tip && report.blocks_scanned < BLOCKS_PER_SCAN_MAX {
            let Some(block) = rpc.block(next).await? else { break };
            for t in block.transfers.iter().filter(|t| managed.contains(&t.from)) {
                let hash = format!("0x{}", hex::encode(t.tx_hash));
                if store.is_own_tx(&hash).await? {
                    report.known_spends.push(hash);
                    continue;
                }
                let from = to_lower_hex(&t.from);
                let detail = serde_json::json!({
                    "severity": "critical", "tx_hash": hash, "from": from, "to": to_lower_hex(&t.to),
                    "value_wei": t.value_wei.to_string(), "nonce": t.nonce, "block": next,
                });
                let (report_id, freeze) = self
                    .unknown_spend(
                        store,
                        signer,
                        &format!("spend:{hash}"),
                        &from,
                        &format!("unknown spend {hash} of {} wei from {from} in block {next}", t.value_wei),
                        t.value_wei,
                        Some(next),
                        Some(t.nonce),
                        detail,
                        now_ms,
                    )
                    .await?;
                report.unknown_spends.extend(report_id);
                report.freezes.extend(freeze);
            }
            report.blocks_scanned += 1;
            report.last_block = Some(next);
            next += 1;
            store.set_reconciliation_cursor(&self.chain, next, now_ms).await?;
        }
        // Spends without value (or in blocks not read yet) still consume a nonce.
        for (address, key_id) in wallets.iter().filter(|(_, k)| !k.starts_with("external:")) {
            let wallet = parse_address(address).map_err(|_| ReconcileError::BadAddress(address.clone()))?;
            let on_chain = rpc.nonce(wallet, NonceAt::Latest).await?;
            // Nonces kinko reserved, and nonces of spends already recorded as unknown, are explained.
            let reserved = store.highest_reserved_nonce(address).await?.map_or(0, |n| n + 1);
            let recorded = store.highest_unknown_spend_nonce(address).await?.map_or(0, |n| n + 1);
            let expected = reserved.max(recorded);
            if on_chain > expected {
                let detail = serde_json::json!({
                    "severity": "critical", "wallet": address, "key_id": key_id,
                    "nonce_on_chain": on_chain, "nonce_expected_at_most": expected,
                });
                let (report_id, freeze) = self
                    .unknown_spend(
                        store,
                        signer,
                        &format!("nonce:{address}:{on_chain}"),
                        address,
                        &format!("{address} has used nonce {} on chain, kinko signed up to {expected}", on_chain - 1),
                        0,
                        report.last_block,
                        Some(on_chain - 1),
                        detail,
                        now_ms,
                    )
                    .await?;
                report.unknown_spends.extend(report_id);
                report.freezes.extend(freeze);
            }
        }
        Ok(report)
    }

    /// Records one unknown spend (finding, freeze, critical event, alert) and tells the signer. Returns the
    /// report id and freeze id when new.
    #[allow(clippy::too_many_arguments)]
    async fn unknown_spend(
        &self,
        store: &Store,
        signer: &dyn Signer,
        report_id: &str,
        wallet: &str,
        what: &str,
        value_wei: u128,
        block: Option<u64>,
        nonce: Option<u64>,
        detail: serde_json::Value,
        now_ms: i64,
    ) -> Result<(Option<String>, Option<String>), ReconcileError> {
        let scope = if self.freeze_everything { FreezeScope::Everything } else { FreezeScope::Wallet(wallet.into()) };
        let freeze = Freeze {
            id: format!("f_{}", report_id.replace(':', "_")),
            scope,
            reason: what.into(),
            set_by: SYSTEM_RECONCILIATION.into(),
            set_at_ms: now_ms,
        };
        let row = ReportRow {
            id: report_id.into(),
            kind: REPORT_UNKNOWN_SPEND.into(),
            chain: self.chain.clone(),
            asset: self.asset.to_string(),
            at_ms: now_ms,
            block_number: block.and_then(|b| i64::try_from(b).ok()),
            on_chain: value_wei.to_string(),
            liabilities: "0".into(),
            surplus: "0".into(),
            shortfall: "0".into(),
            detail_json: detail.to_string(),
            wallet: Some(wallet.into()),
            nonce: nonce.and_then(|n| i64::try_from(n).ok()),
        };
        let event = NewOpsEvent {
            operator_id: SYSTEM_RECONCILIATION.into(),
            terminal: "server".into(),
            event: UNKNOWN_SPEND_EVENT.into(),
            request_id: None,
            detail_json:
                serde_json::json!({"freeze_id": freeze.id, "scope": freeze.scope.to_string(), "finding": detail})
                    .to_string(),
            at_ms: now_ms,
        };
        let alert = NewNotice::webhook(
            None,
            self.alert_recipient.clone(),
            UNKNOWN_SPEND_EVENT,
            report_id,
            format!("CRITICAL: unknown spend from {wallet}; frozen ({})", freeze.scope),
            format!("{what}. kinko did not sign it. Freeze {} ({}) is in force.", freeze.id, freeze.scope),
            now_ms,
        )
        .with_payload(serde_json::json!({"freeze_id": freeze.id, "finding": detail}));
        let new = store.record_unknown_spend(&row, &freeze, &event, Some(&alert)).await?;
        // The signer is told every time, not only when new: it may have been unreachable the first time.
        if let Err(e) = signer.freeze(&freeze).await {
            tracing::error!(freeze = %freeze.id, error = %e, "could not tell the signer about the freeze");
        }
        if !new {
            return Ok((None, None));
        }
        tracing::error!(report = %report_id, freeze = %freeze.id, scope = %freeze.scope, "CRITICAL: {what}; frozen");
        metrics::counter!("kinko_unknown_spends_total").increment(1);
        Ok((Some(report_id.into()), Some(freeze.id)))
    }
}

/// Customer liabilities of `asset` in the ledger: available + held + pending − receivable, over every
/// customer (signed: receivables can exceed the rest).
pub async fn customer_liabilities(store: &Store, asset: &AssetCode) -> Result<i128, StoreError> {
    let mut total: i128 = 0;
    for (account, balance) in store.all_balances().await? {
        if &account.asset != asset || account.holder == kinko_core::ledger::CUSTODIAN {
            continue;
        }
        let n = balance.normal(account.kind);
        total = match account.kind {
            AccountKind::Available | AccountKind::Held | AccountKind::Pending => total.saturating_add(n),
            AccountKind::Receivable => total.saturating_sub(n),
            _ => total,
        };
    }
    Ok(total)
}

/// One balance reconciliation of the chain's native asset: sums the node's balances of every custodian
/// wallet and deposit address, compares with the ledger's customer liabilities, stores and returns the
/// report.
pub async fn reconcile_balances(
    store: &Store,
    rpc: &EvmRpc,
    chain: &str,
    asset: &AssetCode,
    now_ms: i64,
) -> Result<ReportRow, ReconcileError> {
    let mut addresses: Vec<String> = store.custodian_wallets(chain).await?.into_iter().map(|(a, _)| a).collect();
    let mut deposits = WatchedSet::default();
    deposits.refresh(store, chain).await.map_err(|e| ReconcileError::Watched(e.to_string()))?;
    addresses.extend(deposits.addresses().iter().map(to_lower_hex));
    addresses.sort();
    addresses.dedup();
    if addresses.len() > BALANCE_ADDRESSES_MAX {
        return Err(ReconcileError::Watched(format!("more than {BALANCE_ADDRESSES_MAX} addresses to reconcile")));
    }
    let block = rpc.block_number().await?;
    let mut on_chain: u128 = 0;
    for a in &addresses {
        let address = parse_address(a).map_err(|_| ReconcileError::BadAddress(a.clone()))?;
        on_chain = on_chain.saturating_add(rpc.balance(address).await?);
    }
    let liabilities = customer_liabilities(store, asset).await?;
    let on_chain_i = i128::try_from(on_chain).unwrap_or(i128::MAX);
    let diff = on_chain_i.saturating_sub(liabilities);
    let (surplus, shortfall) = if diff >= 0 { (diff.unsigned_abs(), 0) } else { (0, diff.unsigned_abs()) };
    let row = ReportRow {
        id: format!("balance_{}", uuid::Uuid::now_v7().simple()),
        kind: REPORT_BALANCE.into(),
        chain: chain.into(),
        asset: asset.to_string(),
        at_ms: now_ms,
        block_number: i64::try_from(block).ok(),
        on_chain: on_chain.to_string(),
        liabilities: liabilities.to_string(),
        surplus: surplus.to_string(),
        shortfall: shortfall.to_string(),
        detail_json: serde_json::json!({ "addresses": addresses.len() }).to_string(),
        wallet: None,
        nonce: None,
    };
    store.insert_reconciliation_report(&row).await?;
    if shortfall > 0 {
        tracing::error!(chain, %asset, shortfall, "balance reconciliation: on-chain holdings fall short of liabilities");
    }
    Ok(row)
}

/// Runs the spend reconciliation every poll, the balance reconciliation every `balance_interval_ms`, and
/// keeps the signer's freezes in step with the database's, until `shutdown`.
pub async fn run(
    store: Store,
    rpc: EvmRpc,
    signer: std::sync::Arc<dyn Signer>,
    mut reconciler: SpendReconciler,
    poll: Duration,
    balance_interval_ms: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_balance_ms: Option<i64> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = crate::clock::now_ms();
        if let Err(e) = crate::emergency::sync_with_signer(&store, &*signer, now).await {
            tracing::warn!(error = %e, "freeze sync with the signer failed; retrying");
        }
        match reconciler.scan(&store, &rpc, &*signer, now).await {
            Ok(r) if r.blocks_scanned >= BLOCKS_PER_SCAN_MAX => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(chain = %reconciler.chain, error = %e, "spend reconciliation failed; retrying"),
        }
        if balance_interval_ms > 0 && last_balance_ms.is_none_or(|t| now - t >= balance_interval_ms as i64) {
            last_balance_ms = Some(now);
            if let Err(e) = reconcile_balances(&store, &rpc, &reconciler.chain, &reconciler.asset, now).await {
                tracing::warn!(error = %e, "balance reconciliation failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => {}
        }
    }
}
