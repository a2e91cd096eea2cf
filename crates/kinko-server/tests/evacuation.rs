//! Evacuation of a compromised wallet (K19, S5) on a real anvil, real databases (SQLite and, when
//! `KINKO_TEST_POSTGRES_URL` is set, PostgreSQL), the real operator API in process, the real `LocalSigner`
//! holding the hot key and the real withdrawal pipeline.
//!
//! The hot wallet is drained by a transaction kinko never signed; the reconciliation freezes it. New keys are
//! generated offline (`kinko_offline::keystore::generate`, what `kinko-offline keygen` runs), their address is
//! registered as a cold custodian wallet, and an evacuation request approved by two signing managers moves
//! everything the frozen wallet still holds there — while the freeze stays in place for everything else.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use kinko_chain::anvil::Anvil;
use kinko_chain::evm::FeeEstimate;
use kinko_chain::evm::address::parse_address;
use kinko_chain::evm::build;
use kinko_chain::evm::rpc::{EvmRpc, NonceAt};
use kinko_core::intent::Intent;
use kinko_core::ledger::{AccountKind, AccountRef, postings};
use kinko_core::operators::{Decision, Role};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_core::{Amount, AssetCode, ChainId};
use kinko_server::pipeline::{Pipeline, PipelineSettings};
use kinko_server::reconciliation::{ReconciliationConfig, SpendReconciler};
use kinko_signer::{EvmSignRequest, Signer, SignerError};
use kinko_store::testing::test_stores;
use serde_json::json;

mod support;
use support::ops::*;

/// anvil's third default account: the harness's hot wallet, unlocked in anvil (so it can be impersonated).
const HOT: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const HOT_SECRET: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const COLD: &str = "0x00000000000000000000000000000000000c01d1";
const THIEF: &str = "0x000000000000000000000000000000000000dead";
const ETH: u128 = 1_000_000_000_000_000_000;
const CHAIN_ID: u64 = 31337;
const FEE_CAP_WEI: u128 = 500_000_000_000;
/// Bound on pipeline cycles waiting for the evacuation to settle.
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

/// Staff with a second signing manager (evacuations need two), the hot key in the signer with the same
/// `evacuation_approvals`, the hot wallet's on-chain funds in the ledger, and a registered cold wallet.
async fn world(ts: kinko_store::testing::TestStore) -> World {
    let anvil = Anvil::spawn(&[]).await.expect("start anvil");
    let url = anvil.url().to_string();
    let mut config =
        kinko_server::Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), url.clone());
    config.emergency.evacuation_approvals = 2;
    config.ethereum.max_fee_per_gas_cap_wei = FEE_CAP_WEI;
    let cfg = config.clone();
    let o = ops_with(ts, move |c| *c = cfg).await;
    let mut o = Ops::staff(o).await;
    o.add("sm2", Role::SigningManager, 9, None).await;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(HOT_SECRET, &mut secret).unwrap();
    assert_eq!(o.signer.add_secp256k1_key("eth-hot-1", zeroize::Zeroizing::new(secret)).unwrap(), HOT);
    o.signer.set_quorum(kinko_signer::testing::auto_quorum("eth-hot-1", &["ETH"])).unwrap();
    o.signer.set_evacuation_approvals(2).unwrap();

    let store = o.ts.store.clone();
    store
        .ensure_wallet(
            kinko_store::pipeline::Wallet { address: HOT, chain: "eth", tier: "hot", key_id: "eth-hot-1" },
            now_ms(),
        )
        .await
        .unwrap();
    store.register_custodian_wallet(COLD, "eth", "cold", "external:cold-1", now_ms()).await.unwrap();
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
        max_fee_per_gas_cap_wei: FEE_CAP_WEI,
        instance_id: "ev-test".into(),
        lease_ms: 15_000,
        batch_max: 16,
        poll_interval_ms: 100,
    };
    let audit = kinko_server::audit::AuditSink::from_config(store.clone(), &config);
    let signer: Arc<dyn Signer> = o.signer.clone();
    let pipeline = Pipeline::new(store.clone(), rpc.clone(), rpc.clone(), signer, settings).with_audit(audit);
    let targets = kinko_server::node_monitor::MonitorTargets {
        chain: "eth".into(),
        asset: eth(),
        chain_id: CHAIN_ID,
        confirmations: 1,
        instance_id: "ev-test".into(),
        hot_wallet: HOT.into(),
        signer_socket: None,
    };
    let monitor = kinko_server::node_monitor::NodeMonitor::new(store, &config.ethereum, targets, None).unwrap();
    World { o, anvil, rpc, pipeline, monitor }
}

impl World {
    async fn cycle(&mut self) {
        self.monitor.poll_once().await.unwrap();
        self.pipeline.run_once(now_ms()).await.unwrap();
    }

    async fn balance(&self, address: &str) -> u128 {
        self.rpc.balance(parse_address(address).unwrap()).await.unwrap()
    }

    /// A custodian transfer hot → cold, requested by so1, approved by sm1 and executed: `approved`, unsigned.
    async fn approved_transfer(&self, amount: u128) -> String {
        let o = &self.o;
        let params = json!({"asset": "ETH", "amount": amount.to_string(), "destination": COLD});
        let r = o.request("so1", "signing", "custodian_transfer", params).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        assert_eq!(o.decide("sm1", &id, Decision::Approve).await.json["state"], "approved");
        let path = format!("/v1/ops/requests/{id}/execute");
        let r = o.call(Method::POST, &path, Some(&o.token("so1")), Some(json!({}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        id
    }

    /// A spend from the hot wallet made outside kinko (anvil impersonation, as a thief with the key would).
    async fn external_spend(&self, value_wei: u128) -> String {
        self.anvil.rpc("anvil_impersonateAccount", json!([HOT])).await.unwrap();
        let hash = self.anvil.send_eth(HOT, THIEF, value_wei).await.unwrap();
        self.anvil.rpc("anvil_stopImpersonatingAccount", json!([HOT])).await.unwrap();
        self.anvil.mined_block(&hash).await.unwrap();
        hash.to_ascii_lowercase()
    }

    /// A plain signing request from the hot key (what a server skipping its own gate would send).
    async fn direct_request(&self, id: &str) -> EvmSignRequest {
        let nonce = self.rpc.nonce(parse_address(HOT).unwrap(), NonceAt::Latest).await.unwrap();
        let fees = FeeEstimate { max_fee_per_gas: 2_000_000_000, max_priority_fee_per_gas: 1_000_000_000 };
        let unsigned = build::native_transfer(CHAIN_ID, nonce, parse_address(COLD).unwrap(), ETH, fees, 21_000);
        EvmSignRequest {
            key_id: "eth-hot-1".into(),
            chain_id: CHAIN_ID,
            nonce,
            payload: unsigned.payload,
            intent: Intent {
                id: id.into(),
                asset: eth(),
                chain_id: ChainId(CHAIN_ID),
                amount: Amount::from_base_units(ETH),
                destination: COLD.into(),
                source_wallet: HOT.into(),
                customer_id: "custodian".into(),
                reason: "direct".into(),
            },
            approvals: vec![],
            actor: "compromised-server".into(),
            terminal: "test".into(),
            evacuation: None,
        }
    }
}

/// The intent the pipeline rebuilds from a custodian transfer row.
fn intent_of(t: &kinko_store::withdrawals::NewCustodianTransfer) -> Intent {
    Intent {
        id: t.id.clone(),
        asset: t.asset.clone(),
        chain_id: ChainId(CHAIN_ID),
        amount: t.amount,
        destination: t.destination.clone(),
        source_wallet: t.source_wallet.clone(),
        customer_id: "custodian".into(),
        reason: "custodian transfer".into(),
    }
}

fn frozen(r: &Result<[u8; 65], SignerError>) -> bool {
    matches!(r, Err(SignerError::Refused(m)) if m.starts_with("frozen"))
}

/// New keys generated offline with kinko-offline's keygen (the cold key's address), pinned to the signer's
/// own operator registry.
async fn offline_address(o: &Ops) -> String {
    let registry_log = o.signer.registry_log_since(0).await.unwrap();
    let generated = kinko_offline::keystore::generate(kinko_offline::keystore::KeygenParams {
        key_id: "evac-cold-1".into(),
        custodians: vec!["alice".into(), "bob".into(), "carol".into()],
        threshold: 2,
        chain_id: CHAIN_ID,
        assets: vec![kinko_core::asset::AssetSpec {
            code: eth(),
            kind: kinko_core::asset::AssetKind::EvmNative { chain_id: ChainId(CHAIN_ID) },
            decimals: 18,
        }],
        fee_wei_max: kinko_signer::evm::FEE_WEI_MAX_DEFAULT,
        quorum: 2,
        registry_log,
        now_ms: now_ms(),
    })
    .expect("offline keygen");
    generated.keystore.address
}

/// K19, S5: the hot wallet is frozen by the reconciliation after an unknown spend; a normal transfer then
/// waits and the signer refuses a direct call. Keys generated offline become a registered cold wallet; an
/// evacuation request (operations manager) with the frozen wallet, that destination and ETH is approved by
/// two signing managers (one is not enough, the requester cannot approve) and executes: one approved
/// custodian_transfer row for the wallet's balance less the fee reserve. The pipeline signs and broadcasts
/// it despite the freeze: the new address holds the funds, the frozen wallet keeps only what the reserve did
/// not spend, the ledger moves wallet → wallet, the reconciliation knows the spend, and the freeze stays in
/// place — the normal transfer still waits and the signer still refuses everything else.
#[tokio::test]
async fn k19_s5_evacuation_moves_all_funds_of_a_frozen_wallet_to_new_offline_keys() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut w = world(ts).await;
        let store = w.o.ts.store.clone();
        let signer: Arc<dyn Signer> = w.o.signer.clone();
        let start = w.anvil.block_number().await.unwrap();
        let mut reconciler = SpendReconciler::new("eth", eth(), Some(start), &ReconciliationConfig::default());

        // An evacuation of a wallet that is not frozen is refused, naming the field.
        let new = offline_address(&w.o).await;
        store.register_custodian_wallet(&new, "eth", "cold", "external:evac-cold-1", now_ms()).await.unwrap();
        let params = json!({"wallet": HOT, "destination": new, "assets": ["ETH"], "reason": "hot key leaked"});
        let r = w.o.request("om1", "evacuation", "evacuation", params.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert!(r.text.contains("params.wallet") && r.text.contains("not frozen"), "{name}: {}", r.text);

        // The thief strikes; the reconciliation freezes the hot wallet.
        let queued = w.approved_transfer(ETH).await;
        let spend = w.external_spend(1_000 * ETH).await;
        let r = reconciler.scan(&store, &w.rpc, &*signer, now_ms()).await.unwrap();
        assert_eq!(r.unknown_spends, vec![format!("spend:{spend}")], "{name}: {r:?}");
        let freeze = store.active_freezes().await.unwrap().remove(0);
        assert_eq!(freeze.scope.to_string(), format!("wallet:{HOT}"), "{name}");

        // A normal transfer is refused: the pipeline waits, the signer refuses a direct call.
        w.cycle().await;
        let row = store.withdrawal(&queued).await.unwrap().unwrap();
        assert_eq!(row.status, WithdrawalStatus::Approved, "{name}");
        assert!(row.error.as_deref().is_some_and(|e| e.contains("frozen")), "{name}: {:?}", row.error);
        assert!(frozen(&signer.sign_evm(&w.direct_request("direct-1").await).await), "{name}");

        // Bad params are named; an unregistered destination is refused.
        let r =
            w.o.request(
                "om1",
                "evacuation",
                "evacuation",
                json!({"wallet": HOT, "destination": HOT, "assets": ["ETH", "ETH"], "reason": ""}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        for f in ["params.destination", "params.assets[1]", "params.reason"] {
            assert!(r.text.contains(f), "{name}: {f}: {}", r.text);
        }
        let r =
            w.o.request(
                "om1",
                "evacuation",
                "evacuation",
                json!({"wallet": HOT, "destination": THIEF, "assets": ["ETH"], "reason": "x"}),
            )
            .await;
        assert!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY && r.text.contains("not a registered"),
            "{name}: {}",
            r.text
        );
        // Only an operations manager asks.
        let r = w.o.request("so1", "evacuation", "evacuation", params.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);

        // The evacuation: requested by om1, approved by sm1 and sm2.
        let r = w.o.request("om1", "evacuation", "evacuation", params.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!(r.json["required"], 2, "{name}");
        assert_eq!(r.json["params"]["destination"], new.as_str(), "{name}");
        let request_id = r.json["id"].as_str().unwrap().to_string();
        assert_eq!(w.o.decide("om1", &request_id, Decision::Approve).await.status, StatusCode::FORBIDDEN, "{name}");
        let r = w.o.decide("sm1", &request_id, Decision::Approve).await;
        assert_eq!(r.json["state"], "requested", "{name}: one approval is not enough: {}", r.text);
        let before = w.balance(HOT).await;
        let r = w.o.decide("sm2", &request_id, Decision::Approve).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "executed", "{name}: {}", r.text);
        let transfer = r.json["result"]["transfers"][0]["withdrawal"].as_str().unwrap().to_string();
        let amount: u128 = r.json["result"]["transfers"][0]["amount"].as_str().unwrap().parse().unwrap();
        let reserve = 21_000 * FEE_CAP_WEI;
        assert_eq!(amount, before - reserve, "{name}: the whole balance less the fee reserve");
        let row = store.withdrawal(&transfer).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.source_wallet.as_str(), row.destination.as_str()),
            (WithdrawalStatus::Approved, HOT, new.as_str())
        );
        assert_eq!(store.evacuation_request_of(&transfer).await.unwrap().as_deref(), Some(request_id.as_str()));

        // A second row for the same (request, asset) is refused by the store.
        let mut second = kinko_store::withdrawals::NewCustodianTransfer {
            id: "second-eth".into(),
            asset: eth(),
            chain: "eth".into(),
            amount: Amount::from_base_units(ETH),
            destination: new.clone(),
            source_wallet: HOT.into(),
            intent_hash: String::new(),
        };
        second.intent_hash = hex::encode(intent_of(&second).hash());
        assert!(store.create_evacuation_transfers(&request_id, &[second], now_ms()).await.is_err(), "{name}");

        // A compromised server edits the evacuation's row to pay itself (with a matching intent hash): the
        // pipeline presents the real order, and the signer refuses; nothing is signed, no nonce is held.
        let original = store.withdrawal(&transfer).await.unwrap().unwrap();
        let forged = kinko_store::withdrawals::NewCustodianTransfer {
            id: transfer.clone(),
            asset: eth(),
            chain: "eth".into(),
            amount: original.amount,
            destination: THIEF.into(),
            source_wallet: HOT.into(),
            intent_hash: String::new(),
        };
        let forged_hash = hex::encode(intent_of(&forged).hash());
        let edit = |destination: &str, hash: &str| {
            kinko_store::sqlx::query("UPDATE withdrawals SET destination = $1, intent_hash = $2 WHERE id = $3")
                .bind(destination.to_string())
                .bind(hash.to_string())
                .bind(transfer.clone())
        };
        edit(THIEF, &forged_hash).execute(store.pool()).await.unwrap();
        w.cycle().await;
        let row = store.withdrawal(&transfer).await.unwrap().unwrap();
        assert_eq!(row.status, WithdrawalStatus::Approved, "{name}");
        assert!(row.nonce.is_none(), "{name}");
        assert!(
            row.error.as_deref().is_some_and(|e| e.contains("frozen") && e.contains("approved destination")),
            "{name}: {:?}",
            row.error
        );
        edit(&new, &original.intent_hash).execute(store.pool()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(kinko_server::pipeline::RETRY_BACKOFF_MS as u64 + 200))
            .await;

        // The pipeline signs and broadcasts it despite the freeze, and settles it.
        for _ in 0..CYCLES_MAX {
            w.cycle().await;
            if store.withdrawal(&transfer).await.unwrap().unwrap().status == WithdrawalStatus::Settled {
                break;
            }
            w.anvil.mine(1).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
        let row = store.withdrawal(&transfer).await.unwrap().unwrap();
        assert_eq!(row.status, WithdrawalStatus::Settled, "{name}: {:?}", row.error);
        let fee = row.fee.unwrap().base_units();
        assert_eq!(w.balance(&new).await, amount, "{name}: the new keys hold the funds");
        let left = w.balance(HOT).await;
        assert_eq!(left, reserve - fee, "{name}: the frozen wallet keeps only the unspent fee reserve");
        assert!(left < reserve, "{name}");
        let on_new = store.balance(&AccountRef::wallet(&new, &eth())).await.unwrap();
        assert_eq!(
            on_new.normal_amount(AccountKind::Wallet).base_units(),
            amount,
            "{name}: wallet → wallet in the ledger"
        );
        // The key access log names the evacuation's approvers.
        let approvers: Vec<String> =
            kinko_store::sqlx::query_scalar("SELECT approvers_json FROM key_access_log ORDER BY at_ms DESC LIMIT 1")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert!(approvers[0].contains("sm1") && approvers[0].contains("sm2"), "{name}: {approvers:?}");

        assert_eq!(w.balance(THIEF).await, 1_000 * ETH, "{name}: the thief got nothing more");

        // The reconciliation knows the evacuation's spend: nothing new is unknown.
        let r = reconciler.scan(&store, &w.rpc, &*signer, now_ms()).await.unwrap();
        assert!(r.unknown_spends.is_empty(), "{name}: {r:?}");

        // The freeze stays: the normal transfer still waits, the signer still refuses anything else.
        assert_eq!(store.active_freezes().await.unwrap(), vec![freeze.clone()], "{name}");
        assert_eq!(signer.active_freezes().await.unwrap(), vec![freeze.clone()], "{name}");
        tokio::time::sleep(std::time::Duration::from_millis(kinko_server::pipeline::RETRY_BACKOFF_MS as u64 + 200))
            .await;
        w.cycle().await;
        let row = store.withdrawal(&queued).await.unwrap().unwrap();
        assert_eq!(row.status, WithdrawalStatus::Approved, "{name}");
        assert!(row.nonce.is_none(), "{name}");
        assert!(frozen(&signer.sign_evm(&w.direct_request("direct-2").await).await), "{name}");
    }
}
