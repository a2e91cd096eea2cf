//! Wallet tiers (K13, C1, M10) on a real anvil, real databases (SQLite and, when `KINKO_TEST_POSTGRES_URL` is
//! set, PostgreSQL), the real `LocalSigner` holding the hot key (anvil's third account) and the real withdrawal
//! pipeline, driven one cycle at a time.
//!
//! - A hot wallet over its cap sweeps to cold within ONE pipeline cycle: the cycle writes the sweep, the signer
//!   signs it without approvals only because the cold address is in its own `cold_wallets` list, and the
//!   pipeline broadcasts it; it settles wallet → wallet in the ledger.
//! - Incident replay (Coincheck 2018): a thief holding the hot key drains the hot wallet directly on chain
//!   (a raw transaction signed with k256 in this test, never through kinko); the loss is at most the hot cap
//!   and the cold wallet and a 2-of-3 Safe (K15) are untouched.

use std::sync::Arc;

use kinko_chain::anvil::Anvil;
use kinko_chain::evm::FeeEstimate;
use kinko_chain::evm::address::parse_address;
use kinko_chain::evm::build;
use kinko_chain::evm::rpc::{EvmRpc, NonceAt};
use kinko_core::ledger::{AccountKind, AccountRef, postings};
use kinko_core::policy::PolicyClass;
use kinko_core::withdrawal::{WithdrawalKind, WithdrawalStatus};
use kinko_core::{Amount, AssetCode};
use kinko_server::pipeline::{Pipeline, PipelineSettings};
use kinko_server::tiers::WalletTierConfig;
use kinko_signer::Signer;
use kinko_signer::approvals::{QuorumBand, SigningQuorumConfig};
use kinko_store::testing::test_stores;
use serde_json::json;

mod support;
use support::ops::*;

/// anvil's third default account (index 2 of the test mnemonic): the hot wallet.
const HOT: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
/// Its key, as a thief who copied the server's key material (or derived it from the dev seed) holds it.
const HOT_SECRET: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
/// The cold wallet: its key lives offline (nobody here holds it).
const COLD: &str = "0x00000000000000000000000000000000000c01d1";
const THIEF: &str = "0x000000000000000000000000000000000000dead";
const ETH: u128 = 1_000_000_000_000_000_000;
const CHAIN_ID: u64 = 31337;
const HOT_CAP: u128 = 100 * ETH;
const HOT_FLOOR: u128 = 10 * ETH;
const HOT_TARGET: u128 = 50 * ETH;
/// Bound on pipeline cycles waited for a settlement.
const CYCLES_MAX: usize = 60;

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

struct World {
    o: Ops,
    anvil: Anvil,
    rpc: EvmRpc,
    pipeline: Pipeline,
    monitor: kinko_server::node_monitor::NodeMonitor,
}

fn tier_config() -> WalletTierConfig {
    WalletTierConfig {
        asset: "ETH".into(),
        hot_cap: Amount::from_base_units(HOT_CAP),
        hot_floor: Amount::from_base_units(HOT_FLOOR),
        hot_target: Amount::from_base_units(HOT_TARGET),
        cold_address: COLD.into(),
        cold_key_id: "cold-1".into(),
        refill_approvals: PolicyClass::Cold.quorum_min(),
    }
}

/// The hot key in the signer, which demands a signing manager above 1 ETH and lists COLD as the custodian's
/// cold wallet; the hot wallet's on-chain 10,000 ETH in the ledger as the custodian's own; one tier.
async fn world(ts: kinko_store::testing::TestStore) -> World {
    world_with(ts, tier_config(), false).await
}

/// With `staff`, the standard operator staff plus two more signing managers (a refill needs three).
async fn world_with(ts: kinko_store::testing::TestStore, tier: WalletTierConfig, staff: bool) -> World {
    let anvil = Anvil::spawn(&[]).await.expect("start anvil");
    let url = anvil.url().to_string();
    let mut config =
        kinko_server::Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), url.clone());
    config.wallet_tiers = vec![tier];
    config.signer.cold_wallets = vec![COLD.into()];
    config.validate().unwrap();
    let cfg = config.clone();
    let mut o = ops_with(ts, move |c| *c = cfg).await;
    if staff {
        o = Ops::staff(o).await;
        o.add("sm2", kinko_core::operators::Role::SigningManager, 9, None).await;
        o.add("sm3", kinko_core::operators::Role::SigningManager, 10, None).await;
    }
    let mut secret = [0u8; 32];
    hex::decode_to_slice(HOT_SECRET, &mut secret).unwrap();
    assert_eq!(o.signer.add_secp256k1_key("eth-hot-1", zeroize::Zeroizing::new(secret)).unwrap(), HOT);
    o.signer
        .set_quorum(
            kinko_signer::approvals::SigningQuorum::from_configs(&[SigningQuorumConfig {
                key_id: "eth-hot-1".into(),
                asset: "ETH".into(),
                class: PolicyClass::HotSmall,
                auto_max: Some(Amount::from_base_units(ETH)),
                bands: vec![QuorumBand { from: Amount::from_base_units(0), approvals: 1 }],
            }])
            .unwrap(),
        )
        .unwrap();
    o.signer.set_cold_wallets(&config.signer.cold_wallets).unwrap();

    let store = o.ts.store.clone();
    store
        .ensure_wallet(
            kinko_store::pipeline::Wallet { address: HOT, chain: "eth", tier: "hot", key_id: "eth-hot-1" },
            now_ms(),
        )
        .await
        .unwrap();
    let rpc = EvmRpc::new(&url).unwrap();
    let on_chain = rpc.balance(parse_address(HOT).unwrap()).await.unwrap();
    store
        .post(postings::custodian_funding("fund:hot".into(), HOT, &eth(), Amount::from_base_units(on_chain)), now_ms())
        .await
        .unwrap();

    let settings = PipelineSettings {
        chain: "eth".into(),
        chain_id: CHAIN_ID,
        hot_wallet: HOT.into(),
        hot_key_id: "eth-hot-1".into(),
        confirmations: 1,
        stuck_after_ms: 60_000,
        max_fee_per_gas_cap_wei: config.ethereum.max_fee_per_gas_cap_wei,
        instance_id: "tiers-test".into(),
        lease_ms: 15_000,
        batch_max: 16,
        poll_interval_ms: 100,
    };
    let audit = kinko_server::audit::AuditSink::from_config(store.clone(), &config);
    let signer: Arc<dyn Signer> = o.signer.clone();
    let tiers = kinko_server::tiers::tiers_from_config(&config.wallet_tiers).unwrap();
    let pipeline =
        Pipeline::new(store.clone(), rpc.clone(), rpc.clone(), signer, settings).with_audit(audit).with_tiers(tiers);
    let targets = kinko_server::node_monitor::MonitorTargets {
        chain: "eth".into(),
        asset: eth(),
        chain_id: CHAIN_ID,
        confirmations: 1,
        instance_id: "tiers-test".into(),
        hot_wallet: HOT.into(),
        signer_socket: None,
    };
    let monitor = kinko_server::node_monitor::NodeMonitor::new(store, &config.ethereum, targets, None).unwrap();
    World { o, anvil, rpc, pipeline, monitor }
}

impl World {
    /// One pipeline cycle after a fresh node-monitor verdict (the pipeline's own gate, C6).
    async fn cycle(&mut self) {
        self.monitor.poll_once().await.unwrap();
        self.pipeline.run_once(now_ms()).await.unwrap();
    }

    async fn balance(&self, address: &str) -> u128 {
        self.rpc.balance(parse_address(address).unwrap()).await.unwrap()
    }

    async fn ledger_wallet(&self, address: &str) -> i128 {
        let b = self.o.ts.store.balance(&AccountRef::wallet(address, &eth())).await.unwrap();
        b.normal(AccountKind::Wallet)
    }

    async fn sweeps(&self) -> Vec<kinko_store::withdrawals::WithdrawalRow> {
        let ids: Vec<String> =
            kinko_store::sqlx::query_scalar("SELECT id FROM withdrawals WHERE id LIKE 'tsw_%' ORDER BY created_at_ms")
                .fetch_all(self.o.ts.store.pool())
                .await
                .unwrap();
        let mut rows = Vec::new();
        for id in ids {
            rows.push(self.o.ts.store.withdrawal(&id).await.unwrap().unwrap());
        }
        rows
    }

    /// Mines and cycles until `id` settles.
    async fn settle(&mut self, id: &str) -> kinko_store::withdrawals::WithdrawalRow {
        for _ in 0..CYCLES_MAX {
            self.anvil.mine(1).await.unwrap();
            self.cycle().await;
            let w = self.o.ts.store.withdrawal(id).await.unwrap().unwrap();
            if w.status == WithdrawalStatus::Settled {
                return w;
            }
        }
        panic!("{id} did not settle");
    }
}

/// K13, C1, M10: a hot wallet over its cap sweeps to cold within ONE pipeline cycle. The cycle writes one
/// `custodian_transfer` row hot → cold of (balance − target), the signer signs it with no operator approval
/// although it is far above the signer's 1 ETH auto_max (the destination is in the signer's own cold list),
/// and the pipeline broadcasts it in the same cycle; after mining, the cold wallet holds it on chain. Further
/// cycles while it is in flight write no second sweep; it settles wallet → wallet in the ledger (both wallet
/// accounts match the chain, the fee expensed), and then the hot wallet is within its limits: nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k13_hot_over_cap_sweeps_to_cold_within_one_pipeline_cycle() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut w = world(ts).await;
        let hot_before = w.balance(HOT).await;
        assert!(hot_before > HOT_CAP, "{name}: the hot wallet starts over its cap");
        assert_eq!(w.balance(COLD).await, 0, "{name}");

        w.cycle().await; // ONE cycle.
        let sweeps = w.sweeps().await;
        assert_eq!(sweeps.len(), 1, "{name}: one sweep");
        let sweep = &sweeps[0];
        assert_eq!(sweep.kind, WithdrawalKind::CustodianTransfer, "{name}");
        assert_eq!((sweep.source_wallet.as_str(), sweep.destination.as_str()), (HOT, COLD), "{name}");
        assert_eq!(sweep.amount.base_units(), hot_before - HOT_TARGET, "{name}: down to the target");
        assert!(
            sweep.status.may_be_on_chain() && sweep.status != WithdrawalStatus::Signed,
            "{name}: signed and broadcast in the same cycle (anvil mines at once), got {}",
            sweep.status
        );
        w.anvil.mine(1).await.unwrap();
        assert_eq!(w.balance(COLD).await, hot_before - HOT_TARGET, "{name}: cold holds it on chain after one cycle");

        // K12: the signature is logged, with no approvers.
        let log = w.o.ts.store.key_access_log("eth-hot-1", 100).await.unwrap();
        assert_eq!(log.len(), 1, "{name}");
        assert_eq!(log[0].approvers_json, "[]", "{name}: no operator approved it");

        let settled = w.settle(&sweep.id).await;
        assert_eq!(w.sweeps().await.len(), 1, "{name}: no second sweep while the first was in flight");
        let fee = settled.fee.unwrap().base_units();
        assert_eq!(w.balance(HOT).await, HOT_TARGET - fee, "{name}");
        assert_eq!(w.ledger_wallet(COLD).await, (hot_before - HOT_TARGET) as i128, "{name}: cold wallet account");
        assert_eq!(w.ledger_wallet(HOT).await, w.balance(HOT).await as i128, "{name}: hot account matches the chain");
        let fees = AccountRef { kind: AccountKind::NetworkFees, holder: "custodian".into(), asset: eth() };
        let fees = w.o.ts.store.balance(&fees).await.unwrap().normal(AccountKind::NetworkFees);
        assert_eq!(fees, fee as i128, "{name}: fee expensed");
        let tier = w.o.ts.store.wallet_tier_and_key(COLD).await.unwrap();
        assert_eq!(tier, Some(("cold".to_string(), "cold-1".to_string())), "{name}: the cold wallet's row");

        // Within its limits now: further cycles move nothing.
        for _ in 0..3 {
            w.cycle().await;
        }
        assert_eq!(w.sweeps().await.len(), 1, "{name}");
        w.o.ts.store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// A raw EIP-1559 transfer signed with `secret` by k256 in this process: what a thief with the key sends.
fn thief_tx(secret: &str, nonce: u64, to: &str, value: u128, fees: FeeEstimate) -> Vec<u8> {
    let unsigned = build::native_transfer(
        CHAIN_ID,
        nonce,
        parse_address(to).unwrap(),
        value,
        fees,
        kinko_chain::evm::NATIVE_TRANSFER_GAS,
    );
    let mut key_bytes = [0u8; 32];
    hex::decode_to_slice(secret, &mut key_bytes).unwrap();
    let key = k256::ecdsa::SigningKey::from_slice(&key_bytes).unwrap();
    let digest = alloy_primitives::keccak256(&unsigned.payload);
    let (sig, recid) = key.sign_prehash_recoverable(&digest.0).unwrap();
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&sig.to_bytes());
    out[64] = recid.to_byte();
    build::assemble_signed(&unsigned.payload, &out).unwrap().raw
}

/// K13, C1 (incident replay, Coincheck 2018): the hot wallet is funded far above its cap and swept to cold by
/// the pipeline; then a thief holding the hot key drains it directly on chain with a transaction kinko never
/// saw. The loss is at most the hot cap; the cold wallet's balance and a 2-of-3 Safe's are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k13_incident_replay_coincheck() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut w = world(ts).await;
        let total = w.balance(HOT).await;
        w.cycle().await;
        let sweep = w.sweeps().await.remove(0);
        w.settle(&sweep.id).await;
        let cold = w.balance(COLD).await;
        assert_eq!(cold, total - HOT_TARGET, "{name}");
        // And a 2-of-3 Safe (K15) holding more of the custodian's coins; the hot key is none of its owners.
        let owners: Vec<alloy_primitives::Address> =
            [0xa1u8, 0xa2, 0xa3].into_iter().map(|b| alloy_primitives::Address::from([b; 20])).collect();
        let funder = parse_address(kinko_chain::anvil::ACCOUNT0).unwrap();
        let safe = kinko_chain::anvil_safe::deploy_safe(w.anvil.url(), funder, &owners, 2).await.unwrap();
        let safe = format!("{safe:#x}");
        w.anvil.send_eth(kinko_chain::anvil::ACCOUNT0, &safe, 500 * ETH).await.unwrap();
        let in_safe = w.balance(&safe).await;
        assert_eq!(in_safe, 500 * ETH, "{name}");

        // The thief: the hot key, the node, nothing else.
        let hot = parse_address(HOT).unwrap();
        let stolen_from = w.rpc.balance(hot).await.unwrap();
        let nonce = w.rpc.nonce(hot, NonceAt::Pending).await.unwrap();
        let fees = FeeEstimate { max_fee_per_gas: 2_000_000_000, max_priority_fee_per_gas: 1_000_000_000 };
        let gas = u128::from(kinko_chain::evm::NATIVE_TRANSFER_GAS) * fees.max_fee_per_gas;
        let raw = thief_tx(HOT_SECRET, nonce, THIEF, stolen_from - gas, fees);
        let hash = w.anvil.rpc("eth_sendRawTransaction", json!([format!("0x{}", hex::encode(raw))])).await.unwrap();
        assert!(hash.as_str().is_some(), "{name}: the node took the thief's transaction: {hash}");
        w.anvil.mine(1).await.unwrap();

        let stolen = w.balance(THIEF).await;
        assert!(stolen > 0, "{name}: the drain happened");
        assert!(stolen <= HOT_CAP, "{name}: the loss {stolen} is at most the hot cap {HOT_CAP}");
        assert_eq!(w.balance(COLD).await, cold, "{name}: the cold wallet is untouched");
        assert_eq!(w.balance(&safe).await, in_safe, "{name}: the Safe is untouched");
        assert!(cold >= total - HOT_CAP, "{name}: everything above the cap was in cold");
    }
}

/// K13, C1: `[[wallet_tiers]]` is validated at load, naming the entry and field.
#[tokio::test]
async fn c1_wallet_tiers_validated_at_load() {
    let mut c =
        kinko_server::Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), "http://x".into());
    assert!(c.wallet_tiers.is_empty(), "off by default: the dev hot wallet is not swept");
    let mut bad = tier_config();
    bad.hot_floor = bad.hot_target;
    c.wallet_tiers = vec![bad];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("wallet_tiers[0].hot_floor"), "{e}");
    let mut few = tier_config();
    few.refill_approvals = 1;
    c.wallet_tiers = vec![few];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("wallet_tiers[0].refill_approvals"), "{e}");
    c.wallet_tiers = vec![tier_config()];
    c.signer.cold_wallets = vec!["0x12".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("signer.cold_wallets[0]"), "{e}");
    c.signer.cold_wallets = vec![COLD.into()];
    c.validate().unwrap();
}

/// K14, O2, M10: below its floor the hot wallet gets a `cold_refill` request from the tier check (requested by
/// kinko itself, subject = the refill's Intent, three approvals: the cold class's minimum), never a second
/// one while it is open. Over the operator API three signing managers approve and a signing operator executes
/// it into one cold → hot `custodian_transfer` row, which the next cycle parks in `awaiting_offline_signature`
/// with the cold wallet's nonce and fee plan reserved; the pipeline never signs it (no key access), and it
/// stays there cycle after cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k14_below_floor_requests_a_refill_executed_over_the_api_and_parked_for_offline_signing() {
    use axum::http::{Method, StatusCode};
    use kinko_core::operators::Decision;
    for ts in test_stores().await {
        let name = ts.name;
        // The hot wallet's 10,000 ETH is below this floor.
        let tier = WalletTierConfig {
            hot_cap: Amount::from_base_units(30_000 * ETH),
            hot_floor: Amount::from_base_units(20_000 * ETH),
            hot_target: Amount::from_base_units(20_050 * ETH),
            ..tier_config()
        };
        let mut w = world_with(ts, tier, true).await;
        let store = w.o.ts.store.clone();
        store
            .post(
                postings::custodian_funding("fund:cold".into(), COLD, &eth(), Amount::from_base_units(20_000 * ETH)),
                now_ms(),
            )
            .await
            .unwrap();

        w.cycle().await;
        w.cycle().await;
        let open: Vec<_> =
            store.ops_requests(None, 100).await.unwrap().into_iter().filter(|r| r.kind == "cold_refill").collect();
        assert_eq!(open.len(), 1, "{name}: one request, none while it is open");
        let req = &open[0];
        assert_eq!((req.requester.as_str(), req.required, req.state.as_str()), ("system", 3, "requested"), "{name}");
        let params: serde_json::Value = serde_json::from_str(&req.params_json).unwrap();
        let hot_balance = w.balance(HOT).await;
        assert_eq!(params["amount"], (20_050 * ETH - hot_balance).to_string(), "{name}: up to the target");
        let intent = kinko_core::intent::Intent {
            id: req.id.clone(),
            asset: eth(),
            chain_id: kinko_core::ChainId(CHAIN_ID),
            amount: params["amount"].as_str().unwrap().parse().unwrap(),
            destination: HOT.into(),
            source_wallet: COLD.into(),
            customer_id: kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID.into(),
            reason: kinko_core::withdrawal::CUSTODIAN_TRANSFER_REASON.into(),
        };
        assert_eq!(req.intent_hash, hex::encode(intent.hash()), "{name}: approvals are over the refill's Intent");

        let path = format!("/v1/ops/requests/{}/execute", req.id);
        for (i, sm) in ["sm1", "sm2", "sm3"].into_iter().enumerate() {
            let early = w.o.call(Method::POST, &path, Some(&w.o.token("so1")), Some(json!({}))).await;
            assert_eq!(early.status, StatusCode::CONFLICT, "{name}: {i} approvals: {}", early.text);
            let r = w.o.decide(sm, &req.id, Decision::Approve).await;
            assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        }
        let r = w.o.call(Method::POST, &path, Some(&w.o.token("so1")), Some(json!({}))).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["result"]["withdrawal"], req.id.as_str(), "{name}: {}", r.text);
        let row = store.withdrawal(&req.id).await.unwrap().unwrap();
        assert_eq!(row.status, WithdrawalStatus::Approved, "{name}");
        assert_eq!((row.source_wallet.as_str(), row.destination.as_str()), (COLD, HOT), "{name}");

        let signatures_before = store.key_access_log("eth-hot-1", 100).await.unwrap().len();
        for _ in 0..3 {
            w.cycle().await;
        }
        let row = store.withdrawal(&req.id).await.unwrap().unwrap();
        assert_eq!(row.status, WithdrawalStatus::AwaitingOfflineSignature, "{name}: {:?}", row.error);
        assert_eq!(row.nonce, Some(0), "{name}: the cold wallet's nonce is reserved");
        assert!(store.fee_plan(&req.id).await.unwrap().is_some(), "{name}: and its fee plan");
        assert_eq!(
            store.key_access_log("eth-hot-1", 100).await.unwrap().len(),
            signatures_before,
            "{name}: never signed online"
        );
        assert!(store.tx_versions(&req.id).await.unwrap().is_empty(), "{name}");
        let open: Vec<_> =
            store.ops_requests(None, 100).await.unwrap().into_iter().filter(|r| r.kind == "cold_refill").collect();
        assert_eq!(open.len(), 1, "{name}: no second request while the refill is in flight");

        // An operator can abandon it before an import: the nonce is handed back.
        store.abandon_offline(&req.id, WithdrawalStatus::Cancelled, now_ms()).await.unwrap();
        assert_eq!(store.withdrawal(&req.id).await.unwrap().unwrap().status, WithdrawalStatus::Cancelled, "{name}");
    }
}

/// K13, O2: the sweep signs without approvals ONLY because the signer's own list names the destination. With
/// the server's tier configured but the address missing from the signer's `cold_wallets` (what a compromised
/// server writing "sweeps" to its own address gets), the signer demands its quorum: the row stays `approved`
/// with the signer's reason, and nothing leaves the hot wallet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k13_sweep_to_an_address_not_in_the_signers_cold_list_is_refused() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut w = world(ts).await;
        w.o.signer.set_cold_wallets(&[]).unwrap();
        let hot_before = w.balance(HOT).await;
        w.cycle().await;
        w.cycle().await;
        let sweeps = w.sweeps().await;
        assert_eq!(sweeps.len(), 1, "{name}: written once, never a second while it waits");
        assert_eq!(sweeps[0].status, WithdrawalStatus::Approved, "{name}");
        let error = sweeps[0].error.clone().unwrap_or_default();
        assert!(error.contains("approvals"), "{name}: the signer's reason: {error}");
        w.anvil.mine(1).await.unwrap();
        assert_eq!(w.balance(COLD).await, 0, "{name}: nothing swept");
        assert_eq!(w.balance(HOT).await, hot_before, "{name}");
        assert!(w.o.ts.store.key_access_log("eth-hot-1", 100).await.unwrap().is_empty(), "{name}: nothing signed");
    }
}

/// K14, O2: a refill the signing managers reject is not asked for again at once (the tier check waits
/// `REFILL_RETRY_AFTER_MS`), so a rejection is not answered by a stream of new requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k14_rejected_refill_is_not_requested_again_at_once() {
    use axum::http::StatusCode;
    use kinko_core::operators::Decision;
    for ts in test_stores().await {
        let name = ts.name;
        let tier = WalletTierConfig {
            hot_cap: Amount::from_base_units(30_000 * ETH),
            hot_floor: Amount::from_base_units(20_000 * ETH),
            hot_target: Amount::from_base_units(20_050 * ETH),
            ..tier_config()
        };
        let mut w = world_with(ts, tier, true).await;
        w.cycle().await;
        let refills = |rows: Vec<kinko_store::ops_requests::OpsRequestRow>| {
            rows.into_iter().filter(|r| r.kind == "cold_refill").collect::<Vec<_>>()
        };
        let open = refills(w.o.ts.store.ops_requests(None, 100).await.unwrap());
        assert_eq!(open.len(), 1, "{name}");
        let r = w.o.decide("sm1", &open[0].id, Decision::Reject).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        for _ in 0..3 {
            w.cycle().await;
        }
        let all = refills(w.o.ts.store.ops_requests(None, 100).await.unwrap());
        assert_eq!(all.len(), 1, "{name}: no new request right after a rejection");
        assert_eq!(all[0].state, "rejected", "{name}");
    }
}
