//! The withdrawal pipeline (M9a create, M9b send, M10, M13): advances each withdrawal — a customer's, or an
//! operator-instructed transfer between the custodian's own wallets (`WithdrawalKind`) — through
//! `approved → signing → signed → broadcast → confirmed → settled`, one persisted step at a time.
//! A withdrawal waiting for operators (`pending_approval`) is not claimed; once approved, its collected
//! approvals travel with every signing request (the first and any fee bump).
//!
//! Safety rules, and where each is enforced:
//! - The nonce and fee plan are persisted before signing (`Store::reserve_nonce`), so re-signing after
//!   a crash yields the identical payload, which the signer accepts again.
//! - The raw transaction is persisted before broadcast (`Store::record_signed`); re-sending the same raw
//!   transaction is harmless.
//! - A stuck transaction is replaced with the same nonce and higher fees (C4); every version is kept
//!   and watched, so whichever lands is found, and only one can land (C5: tracked by nonce and hash).
//! - Nothing that may be on chain is ever released or failed (`kinko_core::withdrawal`).
//! - Settlement posts the fee the chain actually charged, after the confirmation depth (C2).

use std::sync::Arc;
use std::time::Duration;

use kinko_chain::evm::FeeEstimate;
use kinko_chain::evm::address::parse_address;
use kinko_chain::evm::build::{self, SignedEvmTx};
use kinko_chain::evm::rpc::{EvmRpc, SendOutcome};
use kinko_core::deposit::confirmations;
use kinko_core::intent::Intent;
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_core::{Amount, ChainId};
use kinko_signer::{Approval, EvmSignRequest, Signer};
use kinko_store::Store;
use kinko_store::pipeline::{FeePlan, Inclusion, TxVersion};
use kinko_store::withdrawals::WithdrawalRow;

use crate::clock::now_ms;

/// What the pipeline needs to know about the chain and the hot wallet.
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    pub chain: String,
    pub chain_id: u64,
    pub hot_wallet: String,
    pub hot_key_id: String,
    pub confirmations: u64,
    pub stuck_after_ms: u64,
    pub max_fee_per_gas_cap_wei: u128,
    pub instance_id: String,
    pub lease_ms: u64,
    pub batch_max: u32,
    pub poll_interval_ms: u64,
}

/// How long to wait before retrying a step that failed for an outside reason (node down, refusal).
pub const RETRY_BACKOFF_MS: i64 = 2_000;
/// Re-send a broadcast transaction this often while it waits, in case a node dropped it.
pub const REBROADCAST_AFTER_MS: i64 = 10_000;
/// Bound on steps one withdrawal takes in one cycle.
pub const STEPS_PER_CYCLE_MAX: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("store: {0}")]
    Store(#[from] kinko_store::StoreError),
    #[error("node: {0}")]
    Rpc(#[from] kinko_chain::evm::rpc::RpcError),
    #[error("signer refused: {0}")]
    Signer(#[from] kinko_signer::SignerError),
    #[error("build: {0}")]
    Build(#[from] kinko_chain::evm::build::BuildError),
    #[error("inconsistent withdrawal {id}: {reason}")]
    Inconsistent { id: String, reason: String },
    /// The audit entry of a step could not be written, so the step was not taken (fail closed, L6).
    #[error("{0}; the step was not taken and will be retried")]
    Audit(#[from] crate::audit::AuditUnavailable),
}

/// What one step did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Moved to a new status; keep going.
    Moved,
    /// Nothing to do until later.
    Wait,
}

#[derive(Clone)]
pub struct Pipeline {
    store: Store,
    read: EvmRpc,
    send: EvmRpc,
    signer: Arc<dyn Signer>,
    settings: PipelineSettings,
    /// Where signing, broadcast and settlement are recorded before they happen (L2, L6). Without one the
    /// pipeline does not sign (fail closed): set it with [`Pipeline::with_audit`].
    audit: Option<crate::audit::AuditSink>,
    /// Configured ERC-20 tokens (K22); `None` = the chain's native coin only.
    tokens: Option<crate::erc20::TokenSet>,
    /// Wallet tiers (K13): checked every cycle before claiming work; empty = no sweeps or refills.
    tiers: Vec<crate::tiers::Tier>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CycleReport {
    pub claimed: usize,
    pub steps: usize,
    pub errors: usize,
}

impl Pipeline {
    pub fn new(store: Store, read: EvmRpc, send: EvmRpc, signer: Arc<dyn Signer>, settings: PipelineSettings) -> Self {
        Pipeline { store, read, send, signer, settings, audit: None, tokens: None, tiers: Vec::new() }
    }

    /// The configured ERC-20 tokens (K22): a withdrawal of one is a `transfer` call to its contract.
    pub fn with_tokens(mut self, tokens: crate::erc20::TokenSet) -> Self {
        self.tokens = Some(tokens);
        self
    }

    fn token_set(&self) -> crate::erc20::TokenSet {
        self.tokens.clone().unwrap_or_else(|| crate::erc20::TokenSet::native_only(self.settings.chain_id))
    }

    /// How `w`'s asset moves: `None` for the native coin, the token for a configured ERC-20; any other
    /// asset is refused (nothing is reserved or signed for an asset this pipeline cannot build).
    fn token_of(&self, w: &WithdrawalRow) -> Result<Option<crate::erc20::Token>, PipelineError> {
        let tokens = self.token_set();
        if w.asset == tokens.native {
            return Ok(None);
        }
        tokens.by_asset(&w.asset).cloned().map(Some).ok_or_else(|| {
            self.inconsistent(w, format!("asset {} is neither the native coin nor a configured token", w.asset))
        })
    }

    /// The wallet tiers (`[[wallet_tiers]]`, K13): over a cap the same cycle sweeps to cold.
    pub fn with_tiers(mut self, tiers: Vec<crate::tiers::Tier>) -> Self {
        self.tiers = tiers;
        self
    }

    /// The audit sink every signing, broadcast and settlement is recorded in first.
    pub fn with_audit(mut self, sink: crate::audit::AuditSink) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Records a step of withdrawal `w` before it is taken; an error stops the step (L6).
    async fn audit(&self, action: &str, w: &WithdrawalRow, digest: [u8; 32]) -> Result<(), PipelineError> {
        let sink = self.audit.as_ref().ok_or_else(|| {
            crate::audit::AuditUnavailable("the pipeline has no audit sink (Pipeline::with_audit)".into())
        })?;
        let object = format!("withdrawal:{} intent:{}", w.id, w.intent_hash);
        sink.system("pipeline", action, &object, digest, "attempt").await?;
        Ok(())
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.settings.poll_interval_ms);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.run_once(now_ms()).await {
                Ok(report) if report.errors > 0 => tracing::warn!(?report, "withdrawal pipeline cycle had errors"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "withdrawal pipeline cycle failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One cycle: claim a bounded batch and advance each withdrawal as far as it can go now.
    pub async fn run_once(&self, now_ms: i64) -> Result<CycleReport, PipelineError> {
        let s = &self.settings;
        // U4: expired second-channel confirmations cancel their withdrawals (hold released). Those are
        // never claimed below; a failed sweep must not hold up withdrawals already under way, so it is
        // logged and retried next cycle.
        match self.store.expire_withdrawal_confirmations(now_ms, s.batch_max).await {
            Ok(closed) if !closed.is_empty() => tracing::info!(count = closed.len(), "unconfirmed withdrawals expired"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "expiring withdrawal confirmations failed; will retry"),
        }
        // C6, C7, C10: nothing is signed, sent or settled without a fresh healthy verdict from the node
        // monitor on this chain's nodes; what is queued waits (claimed work would only be deferred).
        if crate::node_monitor::withdrawals_halted(&self.store, &s.chain, now_ms).await? {
            return Ok(CycleReport::default());
        }
        // K13: a hot wallet over its cap gets an `approved` sweep row now, which the claim below takes, so it
        // is signed and broadcast in this very cycle. A failed check must not hold up other withdrawals.
        if !self.tiers.is_empty()
            && let Err(e) =
                crate::tiers::check(&self.store, &self.read, s, &self.tiers, self.audit.as_ref(), now_ms).await
        {
            tracing::warn!(error = %e, "wallet tier check failed; will retry");
        }
        let claimed = self.store.claim_withdrawals(&s.instance_id, now_ms, s.lease_ms as i64, s.batch_max).await?;
        let mut report = CycleReport { claimed: claimed.len(), ..Default::default() };
        for w in claimed {
            let id = w.id.clone();
            match self.advance(w).await {
                Ok(steps) => {
                    report.steps += steps;
                    metrics::counter!("kinko_withdrawal_steps_total").increment(steps as u64);
                }
                Err(e) => {
                    report.errors += 1;
                    metrics::counter!("kinko_withdrawal_step_errors_total").increment(1);
                    tracing::warn!(withdrawal = %id, error = %e, "withdrawal step failed; will retry");
                    let message = e.to_string();
                    self.store.defer_withdrawal(&id, Some(&message), crate::clock::now_ms() + RETRY_BACKOFF_MS).await?;
                }
            }
        }
        Ok(report)
    }

    /// Advances one withdrawal until it has to wait. Re-reads the row after every step: another
    /// instance may have moved it.
    async fn advance(&self, mut w: WithdrawalRow) -> Result<usize, PipelineError> {
        for steps in 0..STEPS_PER_CYCLE_MAX {
            // K19, S5: nothing is reserved, signed or broadcast in a frozen scope (the signer refuses too).
            if matches!(w.status, WithdrawalStatus::Approved | WithdrawalStatus::Signing | WithdrawalStatus::Signed)
                && let Some(why) = crate::emergency::pipeline_frozen(
                    &self.store,
                    &self.settings.chain,
                    &w.source_wallet,
                    &self.key_id_of(&w.source_wallet).await?,
                )
                .await?
                // An evacuation's rows go on: the signer verifies their order itself (K19, S5).
                && self.store.evacuation_request_of(&w.id).await?.is_none()
            {
                self.store.defer_withdrawal(&w.id, Some(&why), now_ms() + RETRY_BACKOFF_MS).await?;
                return Ok(steps);
            }
            let step = match w.status {
                WithdrawalStatus::Approved => self.reserve(&w).await?,
                WithdrawalStatus::Signing => self.sign(&w).await?,
                WithdrawalStatus::Signed => self.broadcast(&w).await?,
                WithdrawalStatus::Broadcast => self.watch_inclusion(&w).await?,
                WithdrawalStatus::Confirmed => self.watch_depth(&w).await?,
                _ => Step::Wait,
            };
            if step == Step::Wait {
                return Ok(steps);
            }
            match self.store.withdrawal(&w.id).await? {
                Some(next) => w = next,
                None => return Err(PipelineError::Inconsistent { id: w.id, reason: "row vanished".into() }),
            }
        }
        Ok(STEPS_PER_CYCLE_MAX)
    }

    /// approved → signing: reserve the nonce and fix the fee plan.
    async fn reserve(&self, w: &WithdrawalRow) -> Result<Step, PipelineError> {
        // K14: a cold wallet's row is never signed here: its nonce and fees are reserved and it waits for the
        // offline signature (`awaiting_offline_signature`).
        if let Some(moved) = crate::tiers::reserve_offline(&self.store, &self.read, &self.settings, w, now_ms()).await?
        {
            return Ok(if moved { Step::Moved } else { Step::Wait });
        }
        // Ask the signer about the approvals before a nonce is taken: a withdrawal it would refuse (a row
        // edited to "approved", a quorum the server under-counted) then waits in `approved` with the
        // signer's reason, instead of holding a nonce every later withdrawal would queue behind.
        let intent = self.intent(w).await?;
        if hex::encode(intent.hash()) != w.intent_hash {
            return Err(self.inconsistent(w, "intent hash does not match the withdrawal's fields".into()));
        }
        let check = self.sign_request(intent, 0, Vec::new(), self.approvals(&w.id).await?).await?;
        self.signer.check_approvals(&check).await?;
        let wallet = parse_address(&w.source_wallet).map_err(|e| self.inconsistent(w, format!("source wallet {e}")))?;
        let chain_nonce = self.read.nonce(wallet, kinko_chain::evm::rpc::NonceAt::Latest).await?;
        let fees = self.read.fee_estimate().await?;
        let fees = cap(fees, self.fee_cap_wei(w).await?);
        // A token transfer runs contract code: its configured gas limit, fixed here with the fee plan.
        let gas_limit = self.token_of(w)?.map_or(kinko_chain::evm::NATIVE_TRANSFER_GAS, |t| t.gas_limit);
        let plan = FeePlan {
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            gas_limit,
        };
        let reserved = self.store.reserve_nonce(&w.id, &w.source_wallet, chain_nonce, plan, now_ms()).await?;
        Ok(if reserved.is_some() { Step::Moved } else { Step::Wait })
    }

    /// signing → signed: build from the persisted plan, have the signer check and sign, store the raw tx.
    async fn sign(&self, w: &WithdrawalRow) -> Result<Step, PipelineError> {
        let plan = self.store.fee_plan(&w.id).await?.ok_or_else(|| self.inconsistent(w, "no fee plan".into()))?;
        let signed = self.sign_version(w, plan).await?;
        let moved = self.store.record_signed(&w.id, WithdrawalStatus::Signing, &signed, now_ms()).await?;
        Ok(if moved { Step::Moved } else { Step::Wait })
    }

    async fn sign_version(&self, w: &WithdrawalRow, plan: FeePlan) -> Result<TxVersion, PipelineError> {
        let nonce = w.nonce.ok_or_else(|| self.inconsistent(w, "no nonce".into()))?;
        let to = parse_address(&w.destination).map_err(|e| self.inconsistent(w, format!("destination {e}")))?;
        let fees = FeeEstimate {
            max_fee_per_gas: plan.max_fee_per_gas,
            max_priority_fee_per_gas: plan.max_priority_fee_per_gas,
        };
        let unsigned = match self.token_of(w)? {
            None => {
                build::native_transfer(self.settings.chain_id, nonce, to, w.amount.base_units(), fees, plan.gas_limit)
            }
            // K22: `transfer(destination, amount)` to the token contract, no native value.
            Some(token) => kinko_chain::evm::erc20::token_transfer(
                self.settings.chain_id,
                nonce,
                token.contract,
                to,
                w.amount.base_units(),
                fees,
                plan.gas_limit,
            ),
        };
        let intent = self.intent(w).await?;
        if hex::encode(intent.hash()) != w.intent_hash {
            // The row was edited after the intent was fixed: refuse rather than sign something else.
            return Err(self.inconsistent(w, "intent hash does not match the withdrawal's fields".into()));
        }
        let request = self.sign_request(intent, nonce, unsigned.payload.clone(), self.approvals(&w.id).await?).await?;
        // The digest is the payload's sha256, the same the key access log records for the signature (L2).
        self.audit("system.sign", w, kinko_core::audit::Record::digest(&unsigned.payload)).await?;
        let signature = self.signer.sign_evm(&request).await?;
        let SignedEvmTx { raw, tx_hash } = build::assemble_signed(&unsigned.payload, &signature)?;
        Ok(TxVersion {
            tx_hash: hex0x(&tx_hash),
            nonce,
            fees: plan,
            raw,
            created_at_ms: now_ms(),
            broadcast_at_ms: None,
        })
    }

    /// signed → broadcast: send the newest version (idempotent).
    async fn broadcast(&self, w: &WithdrawalRow) -> Result<Step, PipelineError> {
        let versions = self.store.tx_versions(&w.id).await?;
        let current = w.tx_hash.as_deref().ok_or_else(|| self.inconsistent(w, "signed without tx hash".into()))?;
        let version = versions
            .iter()
            .find(|v| v.tx_hash == current)
            .ok_or_else(|| self.inconsistent(w, "signed tx not stored".into()))?;
        self.audit("system.broadcast", w, kinko_core::audit::Record::digest(&version.raw)).await?;
        match self.send.send_raw(&version.raw).await? {
            SendOutcome::Accepted | SendOutcome::AlreadyKnown => {}
            // The nonce is used: by one of our versions (found by the inclusion check) or by a spend
            // kinko did not make, which the inclusion check reports and never settles.
            SendOutcome::NonceConsumed => tracing::warn!(withdrawal = %w.id, "nonce already consumed on chain"),
        }
        let moved = self.store.mark_broadcast(&w.id, current, now_ms()).await?;
        Ok(if moved { Step::Moved } else { Step::Wait })
    }

    /// broadcast → confirmed when any version has a receipt; otherwise re-send, or bump a stuck one.
    async fn watch_inclusion(&self, w: &WithdrawalRow) -> Result<Step, PipelineError> {
        let versions = self.store.tx_versions(&w.id).await?;
        for v in &versions {
            let Some(receipt) = self.read.receipt(parse_hash(&v.tx_hash).map_err(|r| self.inconsistent(w, r))?).await?
            else {
                continue;
            };
            if !receipt.success {
                // A plain ETH transfer to an address cannot revert unless the destination is a contract
                // that rejects it; a token transfer reverts when the token refuses it (paused, blocklist,
                // short hot balance). The fee is paid and the value is not: this needs an operator.
                return Err(self.inconsistent(w, format!("transaction {} reverted on chain", v.tx_hash)));
            }
            let fee = Amount::from_base_units(u128::from(receipt.gas_used) * receipt.effective_gas_price);
            let tip = self.read.block_number().await?;
            let depth = confirmations(tip, receipt.block_number);
            let block_hash = hex0x(&receipt.block_hash);
            let inclusion = Inclusion {
                tx_hash: &v.tx_hash,
                block: receipt.block_number,
                block_hash: &block_hash,
                fee_wei: fee,
                confirmations: depth,
            };
            let moved = self.store.mark_included(&w.id, &inclusion, now_ms()).await?;
            return Ok(if moved { Step::Moved } else { Step::Wait });
        }
        let now = now_ms();
        let newest = versions.last().ok_or_else(|| self.inconsistent(w, "broadcast without versions".into()))?;
        let sent_at = newest.broadcast_at_ms.unwrap_or(newest.created_at_ms);
        if now - sent_at >= self.settings.stuck_after_ms as i64 {
            return self.bump(w, newest).await;
        }
        if now - sent_at >= REBROADCAST_AFTER_MS
            && let Err(e) = self.send.send_raw(&newest.raw).await
        {
            tracing::warn!(withdrawal = %w.id, error = %e, "re-send failed");
        }
        self.store.defer_withdrawal(&w.id, None, now + self.settings.poll_interval_ms as i64).await?;
        Ok(Step::Wait)
    }

    /// A stuck transaction: sign a replacement with the same nonce and higher fees (C4).
    async fn bump(&self, w: &WithdrawalRow, newest: &TxVersion) -> Result<Step, PipelineError> {
        // K14: only the offline signer can replace a cold wallet's transaction; it is re-sent, never re-signed.
        if crate::tiers::is_cold_wallet(&self.store, &self.settings.hot_wallet, &w.source_wallet).await? {
            let why = "stuck: a cold wallet's transaction needs a new offline signature to bump its fee";
            self.store.defer_withdrawal(&w.id, Some(why), now_ms() + RETRY_BACKOFF_MS).await?;
            return Ok(Step::Wait);
        }
        let current = self.read.fee_estimate().await?;
        let previous = FeeEstimate {
            max_fee_per_gas: newest.fees.max_fee_per_gas,
            max_priority_fee_per_gas: newest.fees.max_priority_fee_per_gas,
        };
        let Some(next) = build::bump_fees(previous, current, self.fee_cap_wei(w).await?) else {
            tracing::warn!(withdrawal = %w.id, "stuck, and a fee bump would exceed the configured cap; waiting");
            self.store.defer_withdrawal(&w.id, Some("stuck: fee cap reached"), now_ms() + RETRY_BACKOFF_MS).await?;
            return Ok(Step::Wait);
        };
        let plan = FeePlan {
            max_fee_per_gas: next.max_fee_per_gas,
            max_priority_fee_per_gas: next.max_priority_fee_per_gas,
            gas_limit: newest.fees.gas_limit,
        };
        let version = self.sign_version(w, plan).await?;
        tracing::info!(withdrawal = %w.id, old = %newest.tx_hash, new = %version.tx_hash, "replacing stuck transaction");
        let moved = self.store.record_signed(&w.id, WithdrawalStatus::Broadcast, &version, now_ms()).await?;
        Ok(if moved { Step::Moved } else { Step::Wait })
    }

    /// confirmed → settled after the confirmation depth, unless a re-org removed the block.
    async fn watch_depth(&self, w: &WithdrawalRow) -> Result<Step, PipelineError> {
        let block = w.included_block.ok_or_else(|| self.inconsistent(w, "confirmed without block".into()))?;
        let expected = w
            .included_block_hash
            .as_deref()
            .ok_or_else(|| self.inconsistent(w, "confirmed without block hash".into()))?;
        let on_chain = self.read.block_hash(block).await?.map(|h| hex0x(&h));
        if on_chain.as_deref() != Some(expected) {
            tracing::warn!(withdrawal = %w.id, block, "including block was re-orged away; waiting for re-inclusion");
            let moved = self.store.mark_uncluded(&w.id, now_ms()).await?;
            return Ok(if moved { Step::Moved } else { Step::Wait });
        }
        let tip = self.read.block_number().await?;
        let depth = confirmations(tip, block);
        if depth >= self.settings.confirmations {
            self.audit("system.settle", w, kinko_core::audit::Record::digest(expected.as_bytes())).await?;
            // The fee was paid in the chain's native coin, whatever asset moved (K22).
            let native = self.token_set().native;
            let moved = self.store.settle_withdrawal_fee_in(w, &native, depth, now_ms()).await?;
            return Ok(if moved { Step::Moved } else { Step::Wait });
        }
        if depth != w.confirmations {
            self.store.set_confirmations(&w.id, depth, now_ms()).await?;
        }
        self.store.defer_withdrawal(&w.id, None, now_ms() + self.settings.poll_interval_ms as i64).await?;
        Ok(Step::Wait)
    }

    /// The operators' approvals collected for this withdrawal (none for an automatic one). The signer
    /// verifies each against its own registry and quorum (O2): the status column is not proof of approval.
    async fn approvals(&self, id: &str) -> Result<Vec<Approval>, PipelineError> {
        Ok(self
            .store
            .request_approvals(id)
            .await?
            .into_iter()
            .map(|a| Approval { operator_id: a.operator_id, signature_hex: a.signature_hex })
            .collect())
    }

    /// The signing key of a custodian wallet (`wallets.key_id`): the hot key, or a deposit address's key for a
    /// deposit sweep (K13, [`crate::sweeper`]). A wallet without a row signs with the hot key, as before.
    async fn key_id_of(&self, wallet: &str) -> Result<String, PipelineError> {
        Ok(self.store.wallet_key_id(wallet).await?.unwrap_or_else(|| self.settings.hot_key_id.clone()))
    }

    /// The most this row may bid per gas: the configured cap, and for a deposit sweep the lower ceiling its
    /// amount was computed with (balance − gas × that ceiling), so no version of it, bumps included, can cost
    /// more than the deposit address holds beyond the amount (K13).
    async fn fee_cap_wei(&self, w: &WithdrawalRow) -> Result<u128, PipelineError> {
        let cap = self.settings.max_fee_per_gas_cap_wei;
        Ok(self.store.sweep_intent(&w.id).await?.map_or(cap, |s| s.max_fee_per_gas.min(cap)))
    }

    async fn sign_request(
        &self,
        intent: Intent,
        nonce: u64,
        payload: Vec<u8>,
        approvals: Vec<Approval>,
    ) -> Result<EvmSignRequest, PipelineError> {
        // K19, S5: an evacuation's rows carry its approved order; the signer ignores it unless frozen.
        let evacuation = crate::evacuation::order_for_withdrawal(&self.store, &intent.id).await?;
        Ok(EvmSignRequest {
            key_id: self.key_id_of(&intent.source_wallet).await?,
            chain_id: self.settings.chain_id,
            nonce,
            payload,
            intent,
            approvals,
            actor: format!("pipeline:{}", self.settings.instance_id),
            terminal: self.settings.instance_id.clone(),
            evacuation,
        })
    }

    async fn intent(&self, w: &WithdrawalRow) -> Result<Intent, PipelineError> {
        // A deposit sweep or gas top-up carries its own reason (K13): the one its intent hash was made with.
        let reason = match self.store.sweep_intent(&w.id).await? {
            Some(sweep) => sweep.intent_reason,
            None => w.kind.intent_reason().into(),
        };
        Ok(Intent {
            id: w.id.clone(),
            asset: w.asset.clone(),
            chain_id: ChainId(self.settings.chain_id),
            amount: w.amount,
            destination: w.destination.clone(),
            source_wallet: w.source_wallet.clone(),
            customer_id: w.customer_id.clone(),
            // Fixed per kind: a custodian transfer's intent is the one its ops request's approvers signed.
            reason,
        })
    }

    fn inconsistent(&self, w: &WithdrawalRow, reason: String) -> PipelineError {
        PipelineError::Inconsistent { id: w.id.clone(), reason }
    }
}

/// The reason recorded in a customer withdrawal's intent (the API uses the same text).
pub const CUSTOMER_WITHDRAWAL_REASON: &str = kinko_core::withdrawal::CUSTOMER_WITHDRAWAL_REASON;

fn cap(mut fees: FeeEstimate, cap_wei: u128) -> FeeEstimate {
    fees.max_fee_per_gas = fees.max_fee_per_gas.min(cap_wei);
    fees.max_priority_fee_per_gas = fees.max_priority_fee_per_gas.min(fees.max_fee_per_gas);
    fees
}

pub fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim_start_matches("0x"), &mut out).map_err(|_| format!("bad tx hash {s:?}"))?;
    Ok(out)
}
