//! Real-time reconciliation and emergency freezes (L3, K19, S5) on a real anvil, real databases (SQLite and,
//! when `KINKO_TEST_POSTGRES_URL` is set, PostgreSQL), the real operator API in process, the real
//! `LocalSigner` holding the hot key (anvil's third account, so a spend made outside kinko can use anvil's
//! impersonation) and the real withdrawal pipeline.
//!
//! The incident replay (Zaif 2018, Coincheck 2018): the hot wallet is drained by a transaction kinko never
//! signed. The reconciliation must see it in the scan that first reads its block and freeze the wallet in the
//! database and in the signer; withdrawals are then refused, the pipeline signs nothing, a compromised server
//! cannot talk the signer out of the freeze, and only an unfreeze approved by M signing managers (never the
//! requester) lifts it.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use kinko_chain::anvil::Anvil;
use kinko_chain::evm::FeeEstimate;
use kinko_chain::evm::address::parse_address;
use kinko_chain::evm::build;
use kinko_chain::evm::rpc::{EvmRpc, NonceAt};
use kinko_core::intent::Intent;
use kinko_core::ledger::postings;
use kinko_core::operators::{Decision, Role};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_core::{Amount, AssetCode, ChainId};
use kinko_server::pipeline::{Pipeline, PipelineSettings};
use kinko_server::reconciliation::{ReconciliationConfig, SpendReconciler, reconcile_balances};
use kinko_signer::{EvmSignRequest, Signer, SignerError};
use kinko_store::testing::test_stores;
use serde_json::{Value, json};

mod support;
use support::ops::*;

/// anvil's third default account: the harness's hot wallet, unlocked in anvil (so it can be impersonated).
const HOT: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const HOT_SECRET: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const COLD: &str = "0x00000000000000000000000000000000000c01d1";
const THIEF: &str = "0x000000000000000000000000000000000000dead";
const ETH: u128 = 1_000_000_000_000_000_000;
const CHAIN_ID: u64 = 31337;

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

struct World {
    o: Ops,
    anvil: Anvil,
    rpc: EvmRpc,
    pipeline: Pipeline,
    monitor: kinko_server::node_monitor::NodeMonitor,
    customer_token: String,
}

/// Staff (with a second signing manager; unfreezes need two), the hot key in the signer, the hot wallet's
/// funds in the ledger as the custodian's own, and 100 ETH of customer liabilities.
async fn world(ts: kinko_store::testing::TestStore, freeze_everything: bool) -> World {
    let anvil = Anvil::spawn(&[]).await.expect("start anvil");
    let url = anvil.url().to_string();
    let mut config =
        kinko_server::Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), url.clone());
    config.emergency.unfreeze_approvals = 2;
    config.reconciliation.freeze_everything_on_unknown_spend = freeze_everything;
    let cfg = config.clone();
    let o = ops_with(ts, move |c| *c = cfg).await;
    let mut o = Ops::staff(o).await;
    o.add("sm2", Role::SigningManager, 9, None).await;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(HOT_SECRET, &mut secret).unwrap();
    assert_eq!(o.signer.add_secp256k1_key("eth-hot-1", zeroize::Zeroizing::new(secret)).unwrap(), HOT);
    o.signer.set_quorum(kinko_signer::testing::auto_quorum("eth-hot-1", &["ETH"])).unwrap();
    o.signer.set_unfreeze_approvals(2).unwrap();

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
    let (customer, customer_token) = o.customer(&format!("{}-rc@example.com", o.ts.name)).await;
    // The customer's 100 ETH, as if deposited and swept into the hot wallet.
    let hundred = Amount::from_base_units(100 * ETH);
    store.post(postings::deposit_detected("d_rc", &customer, HOT, &eth(), hundred), now_ms()).await.unwrap();
    store.post(postings::deposit_confirmed("d_rc", &customer, &eth(), hundred), now_ms()).await.unwrap();

    let settings = PipelineSettings {
        chain: "eth".into(),
        chain_id: CHAIN_ID,
        hot_wallet: HOT.into(),
        hot_key_id: "eth-hot-1".into(),
        confirmations: 1,
        stuck_after_ms: 60_000,
        max_fee_per_gas_cap_wei: 500_000_000_000,
        instance_id: "rc-test".into(),
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
        instance_id: "rc-test".into(),
        hot_wallet: HOT.into(),
        signer_socket: None,
    };
    let monitor = kinko_server::node_monitor::NodeMonitor::new(store, &config.ethereum, targets, None).unwrap();
    World { o, anvil, rpc, pipeline, monitor, customer_token }
}

impl World {
    /// One pipeline cycle after a fresh node-monitor verdict (the pipeline's own gate, C6).
    async fn cycle(&mut self) {
        self.monitor.poll_once().await.unwrap();
        self.pipeline.run_once(now_ms()).await.unwrap();
    }

    /// A custodian transfer hot → cold of `amount`, requested by so1, approved by sm1 and executed: an
    /// `approved` withdrawal the pipeline has not signed yet.
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

    async fn status(&self, id: &str) -> WithdrawalStatus {
        self.o.ts.store.withdrawal(id).await.unwrap().unwrap().status
    }

    async fn hot_nonce(&self) -> u64 {
        self.rpc.nonce(parse_address(HOT).unwrap(), NonceAt::Latest).await.unwrap()
    }

    async fn signatures(&self) -> i64 {
        kinko_store::sqlx::query_scalar("SELECT COUNT(*) FROM key_access_log")
            .fetch_one(self.o.ts.store.pool())
            .await
            .unwrap()
    }

    /// A customer withdrawal attempt: the answer while frozen is 423 naming the freeze; otherwise it gets
    /// past the freeze gate (to whatever the next check says).
    async fn withdraw(&self) -> Reply {
        let o = &self.o;
        let body = json!({"asset": "ETH", "amount": "1000", "destination": THIEF});
        let mut req = axum::http::Request::builder()
            .method(Method::POST)
            .uri("/v1/withdrawals")
            .header("authorization", format!("Bearer {}", self.customer_token))
            .header("content-type", "application/json")
            .header("idempotency-key", uuid::Uuid::now_v7().to_string())
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(PEER.parse::<std::net::SocketAddr>().unwrap()));
        let resp = tower::ServiceExt::oneshot(o.app.clone(), req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        Reply {
            status,
            text: String::from_utf8_lossy(&bytes).to_string(),
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// A spend from the hot wallet made outside kinko: anvil impersonates the account (as a thief with the
    /// stolen key would sign it). Returns the tx hash and its block.
    async fn external_spend(&self, value_wei: u128) -> (String, u64) {
        self.anvil.rpc("anvil_impersonateAccount", json!([HOT])).await.unwrap();
        let hash = self.anvil.send_eth(HOT, THIEF, value_wei).await.unwrap();
        self.anvil.rpc("anvil_stopImpersonatingAccount", json!([HOT])).await.unwrap();
        let block = self.anvil.mined_block(&hash).await.unwrap();
        (hash.to_ascii_lowercase(), block)
    }

    /// A signing request for the hot key built exactly as the pipeline builds one, at the chain's next nonce.
    async fn direct_request(&self, id: &str) -> EvmSignRequest {
        let nonce = self.hot_nonce().await;
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

fn frozen(r: &Result<[u8; 65], SignerError>) -> bool {
    matches!(r, Err(SignerError::Refused(m)) if m.starts_with("frozen"))
}

/// L3, K19, S5 — incident replay (Zaif, Coincheck): kinko's own transfer is matched and passes; a drain of the
/// hot wallet made outside kinko is detected in the scan that first reads its block, before any further block,
/// and freezes the wallet in the database and the signer with a critical event and an alert notice. Then new
/// withdrawals get 423, the pipeline signs nothing (no signature, nonce unchanged), the signer refuses a
/// direct call, a lift with too few approvals or a lift done in the database alone changes nothing, and the
/// balance reconciliation reports the shortfall. An unfreeze needs two signing managers (the requester, an
/// operations manager, cannot approve; one approval is not enough); after it the transfer is signed and
/// withdrawals pass the freeze gate again.
#[tokio::test]
async fn l3_k19_s5_incident_replay_unknown_spend_frozen_within_one_block_and_unfreeze_needs_approvals() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut w = world(ts, false).await;
        let store = w.o.ts.store.clone();
        let signer: Arc<dyn Signer> = w.o.signer.clone();
        let start = w.anvil.block_number().await.unwrap();
        let mut reconciler = SpendReconciler::new("eth", eth(), Some(start), &ReconciliationConfig::default());

        // kinko's own spend: signed by the pipeline, matched by hash, nothing frozen.
        let own = w.approved_transfer(2 * ETH).await;
        w.cycle().await;
        let own_status = w.status(&own).await;
        assert!(
            matches!(own_status, WithdrawalStatus::Broadcast | WithdrawalStatus::Confirmed | WithdrawalStatus::Settled),
            "{name}: {own_status:?}"
        );
        // Broadcast is not yet mined: anvil may answer the send before its block is visible, and the scan reads
        // only blocks that exist. Wait for the receipt, as for the external spend below.
        let sent = store.tx_versions(&own).await.unwrap().pop().expect("the pipeline broadcast a transaction");
        w.anvil.mined_block(&sent.tx_hash).await.unwrap();
        let r = reconciler.scan(&store, &w.rpc, &*signer, now_ms()).await.unwrap();
        assert_eq!(r.known_spends.len(), 1, "{name}: {r:?}");
        assert!(r.unknown_spends.is_empty() && r.freezes.is_empty(), "{name}: {r:?}");
        assert!(store.active_freezes().await.unwrap().is_empty(), "{name}");

        // An approved transfer waits for the pipeline while the thief strikes.
        let queued = w.approved_transfer(ETH).await;
        let (spend, block) = w.external_spend(9_950 * ETH).await;
        let r = reconciler.scan(&store, &w.rpc, &*signer, now_ms()).await.unwrap();
        assert_eq!(r.last_block, Some(block), "{name}: the scan read the spend's block");
        assert_eq!(w.anvil.block_number().await.unwrap(), block, "{name}: within one block of its inclusion");
        assert_eq!(r.unknown_spends, vec![format!("spend:{spend}")], "{name}: {r:?}");
        let active = store.active_freezes().await.unwrap();
        assert_eq!(active.len(), 1, "{name}");
        let freeze = active[0].clone();
        assert_eq!(freeze.scope.to_string(), format!("wallet:{HOT}"), "{name}");
        assert_eq!(freeze.set_by, "system:reconciliation", "{name}");
        assert!(freeze.reason.contains(&spend), "{name}: {}", freeze.reason);
        assert_eq!(signer.active_freezes().await.unwrap(), vec![freeze.clone()], "{name}: the signer holds it");
        let events = store.ops_events(None, 1000).await.unwrap();
        let critical = events.iter().find(|e| e.event == "unknown_spend").expect("critical event");
        assert!(critical.detail_json.contains("critical") && critical.detail_json.contains(&spend), "{name}");
        let alert = store.notice_by_dedupe_key("unknown_spend", &format!("spend:{spend}")).await.unwrap();
        assert!(alert.is_some_and(|n| n.subject.starts_with("CRITICAL")), "{name}: an alert through the outbox");
        // Scanning again records nothing twice.
        let again = reconciler.scan(&store, &w.rpc, &*signer, now_ms()).await.unwrap();
        assert!(again.unknown_spends.is_empty(), "{name}: {again:?}");

        // Withdrawals refused, naming the freeze.
        let r = w.withdraw().await;
        assert_eq!(r.status, StatusCode::LOCKED, "{name}: {}", r.text);
        assert!(r.text.contains(&freeze.id), "{name}: {}", r.text);

        // The pipeline signs nothing from the frozen wallet.
        let (nonce, sigs) = (w.hot_nonce().await, w.signatures().await);
        w.cycle().await;
        w.cycle().await;
        let row = store.withdrawal(&queued).await.unwrap().unwrap();
        assert_eq!(row.status, WithdrawalStatus::Approved, "{name}");
        assert!(row.nonce.is_none(), "{name}: no nonce reserved");
        assert!(row.error.as_deref().is_some_and(|e| e.contains("frozen")), "{name}: {:?}", row.error);
        assert_eq!((w.hot_nonce().await, w.signatures().await), (nonce, sigs), "{name}: no new signature");

        // The signer refuses when called directly (a server that skips its own gate).
        let direct = w.direct_request("direct-1").await;
        assert!(frozen(&signer.sign_evm(&direct).await), "{name}");

        // Balance reconciliation: 100 ETH owed to customers, the hot wallet drained below that.
        let report = reconcile_balances(&store, &w.rpc, "eth", &eth(), now_ms()).await.unwrap();
        assert_eq!(report.liabilities, (100 * ETH).to_string(), "{name}");
        let shortfall: u128 = report.shortfall.parse().unwrap();
        assert!(shortfall > 0 && report.surplus == "0", "{name}: {report:?}");
        let r = w.o.call(Method::GET, "/v1/ops/reconciliation", Some(&w.o.token("li1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["balance"]["shortfall"], report.shortfall, "{name}: {}", r.text);
        assert_eq!(r.json["unknown_spends"][0]["detail"]["tx_hash"], spend.as_str(), "{name}: {}", r.text);

        // Unfreeze: requested by an operations manager, approved by two signing managers.
        let r = w
            .o
            .request("om1", "unfreeze", "unfreeze", json!({"freeze_id": freeze.id, "note": "key rotated, funds moved"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!(r.json["params"]["scope"], format!("wallet:{HOT}"), "{name}: approvers see the scope");
        assert_eq!(r.json["required"], 2, "{name}");
        let request_id = r.json["id"].as_str().unwrap().to_string();
        let r = w.o.decide("om1", &request_id, Decision::Approve).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: the requester cannot approve: {}", r.text);
        let r = w.o.decide("sm1", &request_id, Decision::Approve).await;
        assert_eq!(r.json["state"], "requested", "{name}: one approval is not enough: {}", r.text);
        assert_eq!(store.active_freezes().await.unwrap().len(), 1, "{name}");

        // A compromised server: presents the one approval it has to the signer, or lifts the freeze in its own
        // database. The signer stays frozen either way.
        let row = store.ops_request(&request_id).await.unwrap().unwrap();
        let one: Vec<kinko_signer::Approval> = store
            .ops_approvals(&request_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.decision == "approve")
            .map(|a| kinko_signer::Approval { operator_id: a.operator_id, signature_hex: a.signature_hex })
            .collect();
        let order = kinko_signer::freeze::LiftOrder {
            freeze_id: freeze.id.clone(),
            request_id: request_id.clone(),
            requester: "om1".into(),
            params: serde_json::from_str(&row.params_json).unwrap(),
            approvals: one,
        };
        let got = signer.lift_freeze(&order).await;
        assert!(
            matches!(&got, Err(SignerError::Refused(m)) if m.contains("1 valid approvals of 2")),
            "{name}: {got:?}"
        );
        kinko_store::sqlx::query("UPDATE freezes SET lifted_at_ms = 1 WHERE id = $1")
            .bind(&freeze.id)
            .execute(store.pool())
            .await
            .unwrap();
        assert!(frozen(&signer.sign_evm(&direct).await), "{name}: the database alone does not unfreeze the signer");
        w.cycle().await;
        assert_eq!(w.hot_nonce().await, nonce, "{name}: the signer still refuses the pipeline");
        kinko_store::sqlx::query("UPDATE freezes SET lifted_at_ms = NULL WHERE id = $1")
            .bind(&freeze.id)
            .execute(store.pool())
            .await
            .unwrap();

        let r = w.o.decide("sm2", &request_id, Decision::Approve).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "executed", "{name}: {}", r.text);
        assert!(store.active_freezes().await.unwrap().is_empty(), "{name}");
        assert!(signer.active_freezes().await.unwrap().is_empty(), "{name}");
        let lifted = store.freeze_row(&freeze.id).await.unwrap().unwrap();
        assert_eq!(lifted.lifted_by_request.as_deref(), Some(request_id.as_str()), "{name}");

        // Withdrawals resume: the queued transfer is signed once its retry is due, and the customer gets past
        // the freeze gate.
        tokio::time::sleep(std::time::Duration::from_millis(kinko_server::pipeline::RETRY_BACKOFF_MS as u64 + 200))
            .await;
        w.cycle().await;
        assert_ne!(w.status(&queued).await, WithdrawalStatus::Approved, "{name}");
        assert!(w.hot_nonce().await > nonce, "{name}");
        let r = w.withdraw().await;
        assert_ne!(r.status, StatusCode::LOCKED, "{name}: {}", r.text);
    }
}

/// K19, S5: `POST /v1/ops/freezes` by any one operator (here a key operator) with scope `all` stops a
/// transfer that was approved but not signed yet, at once and without approval; the signer refuses a direct
/// call; freezes are listed for everyone; bad scopes and reasons are named. With
/// `freeze_everything_on_unknown_spend`, an unknown spend freezes everything.
#[tokio::test]
async fn k19_s5_emergency_freeze_all_stops_an_approved_unsigned_withdrawal_and_the_signer() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut w = world(ts, true).await;
        let store = w.o.ts.store.clone();
        let signer: Arc<dyn Signer> = w.o.signer.clone();

        let r =
            w.o.call(
                Method::POST,
                "/v1/ops/freezes",
                Some(&w.o.token("ko1")),
                Some(json!({"scope": "planet:x", "reason": ""})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert!(r.text.contains("\"scope\"") && r.text.contains("\"reason\""), "{name}: {}", r.text);

        let queued = w.approved_transfer(ETH).await;
        let (nonce, sigs) = (w.hot_nonce().await, w.signatures().await);
        let r =
            w.o.call(
                Method::POST,
                "/v1/ops/freezes",
                Some(&w.o.token("ko1")),
                Some(json!({"scope": "all", "reason": "suspected compromise"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!((r.json["scope"].as_str(), r.json["signer"].as_str()), (Some("all"), Some("frozen")), "{name}");
        assert_eq!(r.json["set_by"], "operator:ko1", "{name}");
        let id = r.json["id"].as_str().unwrap().to_string();

        w.cycle().await;
        assert_eq!(w.status(&queued).await, WithdrawalStatus::Approved, "{name}");
        assert_eq!((w.hot_nonce().await, w.signatures().await), (nonce, sigs), "{name}: nothing signed");
        assert!(frozen(&signer.sign_evm(&w.direct_request("direct-2").await).await), "{name}");
        assert_eq!(w.withdraw().await.status, StatusCode::LOCKED, "{name}");

        let r = w.o.call(Method::GET, "/v1/ops/freezes", Some(&w.o.token("li1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json[0]["id"], id.as_str(), "{name}");
        assert_eq!(r.json[0]["active"], true, "{name}");

        // An unknown spend with freeze_everything_on_unknown_spend: a second freeze, of everything.
        let start = w.anvil.block_number().await.unwrap();
        let mut reconciler = SpendReconciler::new(
            "eth",
            eth(),
            Some(start + 1),
            &ReconciliationConfig { freeze_everything_on_unknown_spend: true, ..Default::default() },
        );
        w.external_spend(ETH).await;
        let r = reconciler.scan(&store, &w.rpc, &*signer, now_ms()).await.unwrap();
        assert_eq!(r.freezes.len(), 1, "{name}: {r:?}");
        let f = store.freeze_row(&r.freezes[0]).await.unwrap().unwrap();
        assert_eq!(f.freeze.scope.to_string(), "all", "{name}");
    }
}
