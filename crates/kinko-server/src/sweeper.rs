//! Deposit sweeping (K13, C1, M10): consolidates customer deposit addresses into the hot wallet.
//!
//! Each cycle, for every asset of `[sweep] min`, the sweeper pages through deposit addresses whose ledger
//! holds a balance of it (`wallet:<address>:<asset>`), takes out what is still pending (never swept: only
//! credited deposits move), and for each address whose credited balance reaches the minimum writes one
//! `custodian_transfer` withdrawals row deposit address → hot wallet ([`kinko_store::sweeps`]). The withdrawal
//! pipeline does the rest with its usual persisted steps: nonce reservation per source wallet, signing (by the
//! deposit address's key, derived in the signer; [`kinko_signer::sweep`]), broadcast, confirmation depth and
//! settlement, which posts the wallet → wallet movement and the fee as the custodian's expense. Customer
//! balances never move.
//!
//! - Native coin: the amount is `credited − gas_limit × fee_ceiling`, where `fee_ceiling` is
//!   `min([sweep] max_fee_per_gas_wei, [ethereum] max_fee_per_gas_cap_wei)`, stored with the row; the pipeline
//!   never plans or bumps a sweep's fee above it, so no version of the transaction can need more than the
//!   address holds. What the chain charges below the ceiling stays on the address (posted as such) and goes
//!   with its next sweep.
//! - ERC-20 (configured tokens): the token sweep pays its gas in ETH from the deposit address. When the
//!   address's credited ETH does not cover `token gas_limit × fee_ceiling`, a gas top-up hot → deposit address
//!   goes first (`max(top_up_wei, shortfall)`, its own row); once it settled, the token sweep follows in a later
//!   cycle.
//! - At most one sweep or top-up per deposit address is in flight (unique index), at most `batch_max` rows are
//!   written per cycle, and nothing is swept from a frozen deposit address or key, or into a frozen hot wallet.

use std::collections::BTreeMap;
use std::time::Duration;

use kinko_chain::evm::address::parse_address;
use kinko_chain::evm::rpc::{EvmRpc, NonceAt};
use kinko_core::intent::Intent;
use kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID;
use kinko_core::{Amount, AssetCode, ChainId};
use kinko_signer::sweep::{DEPOSIT_SWEEP_REASON, deposit_key_id, gas_top_up_reason};
use kinko_store::Store;
use kinko_store::sweeps::{NewDepositSweep, PURPOSE_SWEEP, PURPOSE_TOP_UP, SweepCandidate};
use serde::{Deserialize, Serialize};

use crate::erc20::TokenSet;

/// Deposit addresses read per page.
pub const CANDIDATE_PAGE: u32 = 256;
/// Bound on the pages one cycle reads per asset (so a large set of below-minimum addresses cannot make a cycle
/// unbounded; the next cycle starts from the beginning again).
pub const CANDIDATE_PAGES_MAX: usize = 16;

/// `[sweep]`: deposit sweeping. Off by default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Sweep deposit addresses into the hot wallet. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// How often the sweeper runs. Default 30000.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Most sweep and top-up rows written per cycle. Default 16.
    #[serde(default = "default_batch_max")]
    pub batch_max: u32,
    /// Asset code → the least credited balance (base units, decimal string) worth a sweep. Only the assets
    /// listed are swept. Default: `ETH = "10000000000000000"` (0.01 ETH).
    #[serde(default = "default_min")]
    pub min: BTreeMap<String, Amount>,
    /// Least gas top-up for a token sweep (wei); must not exceed the signer's `deposit_top_up_cap_wei`.
    /// Default 5000000000000000 (0.005 ETH).
    #[serde(default = "default_top_up_wei")]
    pub top_up_wei: u128,
    /// Fee ceiling per gas of sweeps and top-ups (wei); a sweep's amount keeps `gas_limit × this` back for its
    /// fee. Default 50000000000 (50 gwei).
    #[serde(default = "default_max_fee_per_gas_wei")]
    pub max_fee_per_gas_wei: u128,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            enabled: false,
            interval_ms: default_interval_ms(),
            batch_max: default_batch_max(),
            min: default_min(),
            top_up_wei: default_top_up_wei(),
            max_fee_per_gas_wei: default_max_fee_per_gas_wei(),
        }
    }
}

fn default_interval_ms() -> u64 {
    30_000
}
fn default_batch_max() -> u32 {
    16
}
fn default_min() -> BTreeMap<String, Amount> {
    BTreeMap::from([("ETH".to_string(), Amount::from_base_units(10_000_000_000_000_000))])
}
fn default_top_up_wei() -> u128 {
    5_000_000_000_000_000
}
fn default_max_fee_per_gas_wei() -> u128 {
    50_000_000_000
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("store: {0}")]
    Store(#[from] kinko_store::StoreError),
    #[error("node: {0}")]
    Rpc(#[from] kinko_chain::evm::rpc::RpcError),
    #[error("sweep.{field}: {reason}")]
    Config { field: &'static str, reason: String },
}

/// What the sweeper needs to know about the chain and the hot wallet.
#[derive(Clone, Debug)]
pub struct SweeperSettings {
    pub chain: String,
    pub chain_id: u64,
    pub hot_wallet: String,
    pub hot_key_id: String,
    /// `[ethereum] max_fee_per_gas_cap_wei`: the sweep's fee ceiling is never above it.
    pub max_fee_per_gas_cap_wei: u128,
}

/// What one cycle did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Sweeps whose withdrawal reached a terminal status since the last cycle.
    pub closed: u64,
    /// Sweep rows written (withdrawal ids).
    pub sweeps: Vec<String>,
    /// Gas top-up rows written (withdrawal ids).
    pub top_ups: Vec<String>,
    /// Addresses left alone because a freeze covers them (or the hot wallet).
    pub frozen: usize,
}

/// How one asset moves (native, or a token with its transfer gas limit).
#[derive(Clone, Debug)]
enum Moves {
    Native,
    Token { gas_limit: u64 },
}

#[derive(Clone)]
pub struct Sweeper {
    store: Store,
    read: EvmRpc,
    settings: SweeperSettings,
    config: SweepConfig,
    tokens: TokenSet,
}

impl Sweeper {
    pub fn new(store: Store, read: EvmRpc, settings: SweeperSettings, config: SweepConfig, tokens: TokenSet) -> Self {
        Sweeper { store, read, settings, config, tokens }
    }

    /// The fee ceiling per gas of sweep and top-up rows.
    pub fn fee_ceiling_wei(&self) -> u128 {
        self.config.max_fee_per_gas_wei.min(self.settings.max_fee_per_gas_cap_wei)
    }

    fn moves(&self, asset: &AssetCode) -> Result<Moves, SweepError> {
        if *asset == self.tokens.native {
            return Ok(Moves::Native);
        }
        match self.tokens.by_asset(asset) {
            Some(t) => Ok(Moves::Token { gas_limit: t.gas_limit }),
            None => Err(SweepError::Config {
                field: "min",
                reason: format!("{asset} is neither the native coin nor a configured token ([[ethereum.tokens]])"),
            }),
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config.interval_ms);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.run_once(crate::clock::now_ms()).await {
                Ok(r) if !r.sweeps.is_empty() || !r.top_ups.is_empty() => {
                    metrics::counter!("kinko_deposit_sweeps_total").increment(r.sweeps.len() as u64);
                    metrics::counter!("kinko_deposit_gas_top_ups_total").increment(r.top_ups.len() as u64);
                    tracing::info!(sweeps = r.sweeps.len(), top_ups = r.top_ups.len(), "deposit sweeps written")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "deposit sweep cycle failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One cycle: close finished sweeps, then write at most `batch_max` new sweep or top-up rows.
    pub async fn run_once(&self, now_ms: i64) -> Result<SweepReport, SweepError> {
        let s = &self.settings;
        let mut report = SweepReport { closed: self.store.close_finished_sweeps().await?, ..Default::default() };
        // Never pour deposits into a hot wallet under a freeze (its key may be the compromised one, K19).
        if crate::emergency::pipeline_frozen(&self.store, &s.chain, &s.hot_wallet, &s.hot_key_id).await?.is_some() {
            report.frozen += 1;
            return Ok(report);
        }
        let ceiling = self.fee_ceiling_wei();
        let eth = self.tokens.native.clone();
        for (code, min) in &self.config.min {
            let asset: AssetCode =
                code.parse().map_err(|e| SweepError::Config { field: "min", reason: format!("{code:?}: {e}") })?;
            let moves = self.moves(&asset)?;
            let mut after = String::new();
            for _ in 0..CANDIDATE_PAGES_MAX {
                let page = self.store.sweep_candidates(&s.chain, &asset, &after, CANDIDATE_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.address.clone();
                let full = page.len() as u32 == CANDIDATE_PAGE;
                for c in page {
                    if self.written(&report) >= self.config.batch_max as usize {
                        return Ok(report);
                    }
                    let credited = c.wallet_balance.checked_sub(c.pending).unwrap_or(Amount::ZERO);
                    if credited < *min || credited.is_zero() {
                        continue;
                    }
                    let key_id = deposit_key_id(c.derivation_index);
                    if crate::emergency::pipeline_frozen(&self.store, &s.chain, &c.address, &key_id).await?.is_some() {
                        report.frozen += 1;
                        continue;
                    }
                    match &moves {
                        Moves::Native => {
                            let reserve = u128::from(kinko_chain::evm::NATIVE_TRANSFER_GAS).saturating_mul(ceiling);
                            let Some(amount) = credited.base_units().checked_sub(reserve).filter(|a| *a > 0) else {
                                continue;
                            };
                            let amount = Amount::from_base_units(amount);
                            if let Some(id) = self.write_sweep(&c, &asset, amount, now_ms).await? {
                                report.sweeps.push(id);
                            }
                        }
                        Moves::Token { gas_limit } => {
                            let needed = u128::from(*gas_limit).saturating_mul(ceiling);
                            let gas_on_address = self.credited_on(&c.address, &eth).await?;
                            if gas_on_address.base_units() >= needed {
                                if let Some(id) = self.write_sweep(&c, &asset, credited, now_ms).await? {
                                    report.sweeps.push(id);
                                }
                            } else {
                                let shortfall = needed - gas_on_address.base_units();
                                let amount = Amount::from_base_units(shortfall.max(self.config.top_up_wei));
                                if let Some(id) = self.write_top_up(&c, &asset, amount, now_ms).await? {
                                    report.top_ups.push(id);
                                }
                            }
                        }
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(report)
    }

    fn written(&self, r: &SweepReport) -> usize {
        r.sweeps.len() + r.top_ups.len()
    }

    /// The credited (not pending) ledger balance of `asset` on `address`.
    async fn credited_on(&self, address: &str, asset: &AssetCode) -> Result<Amount, SweepError> {
        Ok(self.store.credited_on_deposit_address(&self.settings.chain, address, asset).await?)
    }

    async fn deposit_nonce(&self, address: &str) -> Result<u64, SweepError> {
        let parsed = parse_address(address)
            .map_err(|e| SweepError::Config { field: "deposit address", reason: format!("{address:?} {e}") })?;
        Ok(self.read.nonce(parsed, NonceAt::Latest).await?)
    }

    /// A sweep deposit address → hot wallet.
    async fn write_sweep(
        &self,
        c: &SweepCandidate,
        asset: &AssetCode,
        amount: Amount,
        now_ms: i64,
    ) -> Result<Option<String>, SweepError> {
        let s = &self.settings;
        let id = format!("sweep_{}", uuid::Uuid::now_v7().simple());
        let intent = self.intent(&id, asset, amount, &s.hot_wallet, &c.address, DEPOSIT_SWEEP_REASON);
        let new = NewDepositSweep {
            id: id.clone(),
            purpose: PURPOSE_SWEEP,
            chain: s.chain.clone(),
            asset: asset.clone(),
            amount,
            source_wallet: c.address.clone(),
            destination: s.hot_wallet.clone(),
            deposit_address: c.address.clone(),
            derivation_index: c.derivation_index,
            deposit_key_id: deposit_key_id(c.derivation_index),
            deposit_next_nonce: self.deposit_nonce(&c.address).await?,
            intent_reason: intent.reason.clone(),
            intent_hash: hex::encode(intent.hash()),
            max_fee_per_gas: self.fee_ceiling_wei(),
        };
        Ok(self.store.create_deposit_sweep(&new, now_ms).await?.map(|_| id))
    }

    /// A gas top-up hot wallet → deposit address, ahead of a token sweep of `token`.
    async fn write_top_up(
        &self,
        c: &SweepCandidate,
        token: &AssetCode,
        amount: Amount,
        now_ms: i64,
    ) -> Result<Option<String>, SweepError> {
        let s = &self.settings;
        let id = format!("topup_{}", uuid::Uuid::now_v7().simple());
        let reason = gas_top_up_reason(c.derivation_index);
        let eth = self.tokens.native.clone();
        let intent = self.intent(&id, &eth, amount, &c.address, &s.hot_wallet, &reason);
        tracing::info!(deposit = %c.address, %token, %amount, "gas top-up ahead of a token sweep");
        let new = NewDepositSweep {
            id: id.clone(),
            purpose: PURPOSE_TOP_UP,
            chain: s.chain.clone(),
            asset: eth,
            amount,
            source_wallet: s.hot_wallet.clone(),
            destination: c.address.clone(),
            deposit_address: c.address.clone(),
            derivation_index: c.derivation_index,
            deposit_key_id: deposit_key_id(c.derivation_index),
            deposit_next_nonce: self.deposit_nonce(&c.address).await?,
            intent_reason: reason,
            intent_hash: hex::encode(intent.hash()),
            max_fee_per_gas: self.fee_ceiling_wei(),
        };
        Ok(self.store.create_deposit_sweep(&new, now_ms).await?.map(|_| id))
    }

    fn intent(
        &self,
        id: &str,
        asset: &AssetCode,
        amount: Amount,
        destination: &str,
        source: &str,
        reason: &str,
    ) -> Intent {
        Intent {
            id: id.to_string(),
            asset: asset.clone(),
            chain_id: ChainId(self.settings.chain_id),
            amount,
            destination: destination.to_string(),
            source_wallet: source.to_string(),
            customer_id: CUSTODIAN_CUSTOMER_ID.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Bounds on `[sweep]` values.
pub const SWEEP_INTERVAL_MS_MIN: u64 = 100;
pub const SWEEP_BATCH_MAX: u32 = 1_000;

impl SweepConfig {
    /// Checks `[sweep]`; errors name the field.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let invalid = |field: &'static str, reason: String| crate::config::ConfigError::Invalid { field, reason };
        if self.interval_ms < SWEEP_INTERVAL_MS_MIN {
            return Err(invalid("sweep.interval_ms", format!("must be at least {SWEEP_INTERVAL_MS_MIN}")));
        }
        if !(1..=SWEEP_BATCH_MAX).contains(&self.batch_max) {
            return Err(invalid("sweep.batch_max", format!("must be 1 to {SWEEP_BATCH_MAX}")));
        }
        if self.max_fee_per_gas_wei == 0 {
            return Err(invalid("sweep.max_fee_per_gas_wei", "must be above zero".into()));
        }
        for (code, min) in &self.min {
            code.parse::<AssetCode>().map_err(|e| invalid("sweep.min", format!("{code:?}: {e}")))?;
            if min.is_zero() {
                return Err(invalid("sweep.min", format!("{code}: a minimum of zero would sweep every wei")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k13_sweep_config_parses_from_toml_and_names_bad_fields() {
        let c: SweepConfig = toml::from_str(
            "enabled = true\nbatch_max = 4\nmax_fee_per_gas_wei = 30000000000\n[min]\nETH = \"5\"\nUSDC = \"1000000\"\n",
        )
        .unwrap();
        assert!(c.enabled);
        assert_eq!(c.min.get("USDC"), Some(&Amount::from_base_units(1_000_000)));
        assert_eq!(c.top_up_wei, default_top_up_wei());
        c.validate().unwrap();
        let c = SweepConfig { min: [("ETH".to_string(), Amount::from_base_units(5))].into(), ..c };
        c.validate().unwrap();
        assert!(!SweepConfig::default().enabled, "off by default");
        let bad = |c: SweepConfig| c.validate().unwrap_err().to_string();
        assert!(bad(SweepConfig { batch_max: 0, ..c.clone() }).starts_with("sweep.batch_max"));
        assert!(bad(SweepConfig { interval_ms: 1, ..c.clone() }).starts_with("sweep.interval_ms"));
        let zero = SweepConfig { min: [("ETH".to_string(), Amount::ZERO)].into(), ..c.clone() };
        assert!(bad(zero).starts_with("sweep.min"));
        assert!(toml::from_str::<SweepConfig>("enable = true").is_err(), "unknown keys are refused");
    }
}
