//! Operator-instructed transfers between the custodian's own wallets (M10, O2, K11), full stack on a real
//! anvil with the real signer: request (params checked, policy quorum, subject = the transfer's Intent) →
//! a signing manager's Ed25519 approval → a signing operator's execution → the pipeline signs with those
//! approvals (verified by the signer against its own registry and `[[signer.quorum]]`), broadcasts and
//! settles wallet → wallet. The ops API's handlers call exactly these functions (`check_params`,
//! `create_request`, `execute`); the HTTP layer and its authorization are covered by `api_ops`.

mod support;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use kinko_core::Amount;
use kinko_core::ledger::{AccountKind, AccountRef};
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_core::policy::PolicyClass;
use kinko_core::withdrawal::{CUSTODIAN_CUSTOMER_ID, WithdrawalKind, WithdrawalStatus};
use kinko_server::app::{ETH_CHAIN, HOT_KEY_ID, Running};
use kinko_server::withdrawal_policy::{custodian_transfer_request, execute_custodian_transfer};
use kinko_signer::Approval;
use kinko_signer::approvals::{QuorumBand as SignerBand, SigningQuorumConfig, sign_approval};
use kinko_store::ops_requests::{
    NewOpsRequest, OpsApprovalRow, STATE_APPROVED, STATE_REQUESTED, insert_ops_approval_tx, insert_ops_request_tx,
    set_ops_request_state_tx,
};
use serde_json::{Value, json};
use support::{Customer, ETH, Harness, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const A1: u8 = 100;
const A2: u8 = 101;
const M1: u8 = 1;
/// The executing signing operator's terminal (the terminal allowlist rule reads it).
const TERMINAL: &str = "127.0.0.1";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn eth() -> kinko_core::AssetCode {
    "ETH".parse().unwrap()
}

async fn registry_change(running: &Running, by: (u8, &str), approvers: &[(u8, &str)], kind: RegistryChangeKind) {
    let signer = &running.state.signer;
    let (seq, prev_hash) = signer.registry_head().await.unwrap().map(|(s, h)| (s + 1, h)).unwrap_or((0, [0; 32]));
    let change = RegistryChange {
        seq,
        prev_hash,
        requested_by: by.1.into(),
        requested_at_ms: kinko_server::clock::now_ms(),
        change: kind,
    };
    let subject = change.subject().unwrap();
    let approvals: Vec<Approval> = std::iter::once(&by)
        .chain(approvers)
        .map(|(seed, id)| sign_approval(&key(*seed), id, &subject, Decision::Approve).unwrap())
        .collect();
    signer.apply_registry_change(&change, &approvals).await.unwrap_or_else(|e| panic!("registry change {seq}: {e}"));
}

fn add(id: &str, seed: u8, role: Role) -> RegistryChangeKind {
    RegistryChangeKind::AddOperator {
        operator_id: id.into(),
        approval_public_key_hex: hex::encode(key(seed).verifying_key().as_bytes()),
        role,
        expires_at_ms: None,
    }
}

/// Opens a `custodian_transfer` request the way `POST /v1/ops/requests` does (requester s1); returns its
/// id and the stored params.
async fn open_request(
    running: &Running,
    params: &Value,
) -> Result<(String, Value, String), kinko_server::api::Problem> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("r_ct_{}_{n}", kinko_server::clock::now_ms());
    let now = kinko_server::clock::now_ms();
    let (stored, intent, required) = custodian_transfer_request(&running.state, &id, params, TERMINAL, now).await?;
    let new = NewOpsRequest {
        id: id.clone(),
        process: Process::Signing.as_str().into(),
        kind: "custodian_transfer".into(),
        params_json: stored.to_string(),
        intent_hash: hex::encode(intent),
        requester: "s1".into(),
        requester_terminal: TERMINAL.into(),
        required: i64::from(required),
        reasons_json: "[]".into(),
        now_ms: now,
    };
    let mut tx = running.state.store.begin_write().await.unwrap();
    insert_ops_request_tx(&mut tx, &new).await.unwrap();
    tx.commit().await.unwrap();
    Ok((id, stored, hex::encode(intent)))
}

/// m1 approves as `POST /v1/ops/requests/{id}/approvals` records it: an Ed25519 signature over
/// (signing, request id, the request's intent hash), which reaches quorum (1).
async fn approve(running: &Running, id: &str, intent_hash_hex: &str) -> Approval {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(intent_hash_hex, &mut hash).unwrap();
    let subject = ApprovalSubject::new(Process::Signing, id, hash).unwrap();
    let approval = sign_approval(&key(M1), "m1", &subject, Decision::Approve).unwrap();
    let now = kinko_server::clock::now_ms();
    let mut tx = running.state.store.begin_write().await.unwrap();
    let row = OpsApprovalRow {
        request_id: id.into(),
        operator_id: "m1".into(),
        decision: "approve".into(),
        signature_hex: approval.signature_hex.clone(),
        terminal: TERMINAL.into(),
        at_ms: now,
    };
    insert_ops_approval_tx(&mut tx, &row).await.unwrap();
    set_ops_request_state_tx(&mut tx, id, STATE_REQUESTED, STATE_APPROVED, now).await.unwrap();
    tx.commit().await.unwrap();
    approval
}

async fn ledger(h: &Harness, kind: AccountKind, holder: &str) -> i128 {
    let account = AccountRef { kind, holder: holder.into(), asset: eth() };
    h.ts.store.balance(&account).await.unwrap().normal(kind)
}

fn destination_refused(backend: &str, what: &str, result: Result<(String, Value, String), kinko_server::api::Problem>) {
    let problem = result.err().unwrap_or_else(|| panic!("{backend}: a transfer to {what} was opened"));
    assert_eq!(problem.status, 422, "{backend}: {what}");
    assert!(
        problem.body.errors.iter().any(|e| e.field == "params.destination"),
        "{backend}: {what}: the error names params.destination: {:?}",
        problem.body.errors
    );
}

/// M10, O2, K11: a hot → cold transfer instructed by operators is paid on chain exactly once, signed with the
/// signing manager's approval over the transfer's Intent (the signer demands one above 1 ETH and logs the
/// approver), settled wallet → wallet with the fee expensed; the ledger's wallet accounts match the chain and
/// no customer balance moves. Destinations that are a customer deposit address, unknown or the hot wallet are
/// refused when the request is opened, naming params.destination; executing twice makes one transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m10_custodian_transfer_hot_to_cold_end_to_end() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let mut h = Harness::new(ts, &[], 2, 30_000).await;
        // The signer itself demands one signing manager above 1 ETH for the hot key.
        h.config.signer.quorum = vec![SigningQuorumConfig {
            key_id: HOT_KEY_ID.into(),
            asset: "ETH".into(),
            class: PolicyClass::HotSmall,
            auto_max: Some(Amount::from_base_units(ETH)),
            bands: vec![SignerBand { from: Amount::from_base_units(0), approvals: 1 }],
        }];
        let running = h.start_in_process().await;
        registry_change(&running, (A1, "a1"), &[], add("a1", A1, Role::Administrator)).await;
        registry_change(&running, (A1, "a1"), &[], add("a2", A2, Role::Administrator)).await;
        registry_change(&running, (A1, "a1"), &[(A2, "a2")], add("m1", M1, Role::SigningManager)).await;

        let cold = outside_address(&format!("{backend}-cold-1"));
        let now = kinko_server::clock::now_ms();
        h.ts.store.register_custodian_wallet(&cold, ETH_CHAIN, "cold", "external:cold-1", now).await.unwrap();
        // Idempotent for the same registration.
        h.ts.store.register_custodian_wallet(&cold, ETH_CHAIN, "cold", "external:cold-1", now).await.unwrap();

        // A customer with a confirmed deposit, whose balances must not move.
        let c = Customer::register(&h.api_base(), &format!("{backend}-custodian-transfer@example.com"), &h.mail_dir())
            .await;
        h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, 3 * ETH).await.unwrap();
        wait_for("deposit credit", TIMEOUT, Some(&h.anvil), || async {
            (c.available().await == 3 * ETH).then_some(())
        })
        .await;
        assert!(
            h.ts.store
                .register_custodian_wallet(&c.deposit_address, ETH_CHAIN, "cold", "external:x", now)
                .await
                .is_err(),
            "{backend}: a customer deposit address is never registered as a custodian wallet"
        );

        // Refused at request time, naming params.destination.
        let params = |dest: &str| json!({"asset": "ETH", "amount": (2 * ETH).to_string(), "destination": dest});
        destination_refused(
            backend,
            "a customer deposit address",
            open_request(&running, &params(&c.deposit_address)).await,
        );
        let unknown = outside_address(&format!("{backend}-unknown"));
        destination_refused(backend, "an unknown address", open_request(&running, &params(&unknown)).await);
        destination_refused(backend, "the hot wallet", open_request(&running, &params(&h.hot_wallet)).await);

        // Request (checksummed destination accepted and normalised), approval, execution.
        let checksummed = cold.to_uppercase().replacen("0X", "0x", 1);
        let (id, stored, intent_hash) = open_request(&running, &params(&checksummed)).await.unwrap();
        assert_eq!(stored["destination"], cold.as_str(), "{backend}: destination normalised: {stored}");
        assert_eq!(stored["source_wallet"], h.hot_wallet.as_str(), "{backend}: {stored}");
        assert_eq!(stored["customer"], CUSTODIAN_CUSTOMER_ID, "{backend}: {stored}");
        // What an approver's terminal recomputes from the params shown (`kinko ops approve`, which reads
        // them as for a customer withdrawal) is the request's intent hash.
        let recomputed = kinko_core::intent::Intent {
            id: id.clone(),
            asset: stored["asset"].as_str().unwrap().parse().unwrap(),
            chain_id: kinko_core::ChainId(stored["chain_id"].as_u64().unwrap()),
            amount: stored["amount"].as_str().unwrap().parse().unwrap(),
            destination: stored["destination"].as_str().unwrap().into(),
            source_wallet: stored["source_wallet"].as_str().unwrap().into(),
            customer_id: stored["customer"].as_str().unwrap().into(),
            reason: stored["reason"].as_str().unwrap().into(),
        };
        assert_eq!(hex::encode(recomputed.hash()), intent_hash, "{backend}: the subject is the transfer's Intent");

        let hot_chain_before = h.balance_of(&h.hot_wallet).await;
        let nonce_before = h.nonce_of(&h.hot_wallet).await;
        let customer_available = ledger(&h, AccountKind::Available, &c_id(&h, &c).await).await;
        let approval = approve(&running, &id, &intent_hash).await;
        let now = kinko_server::clock::now_ms();
        let result = execute_custodian_transfer(
            &running.state,
            &id,
            &stored,
            std::slice::from_ref(&approval),
            "s1",
            TERMINAL,
            now,
        )
        .await
        .unwrap_or_else(|p| panic!("{backend}: execute: {:?} {:?}", p.body.detail, p.body.errors));
        assert_eq!(result["withdrawal"], id.as_str(), "{backend}: {result}");
        // Executing again (a retry after a crash before the request was marked executed) adds nothing.
        execute_custodian_transfer(&running.state, &id, &stored, &[approval], "s1", TERMINAL, now).await.unwrap();
        let row = h.ts.store.withdrawal(&id).await.unwrap().unwrap();
        assert_eq!(row.kind, WithdrawalKind::CustodianTransfer, "{backend}");
        assert_eq!(row.intent_hash, intent_hash, "{backend}: the row's intent is the one approved");

        let w = wait_for("settlement", TIMEOUT, Some(&h.anvil), || async {
            let w = h.ts.store.withdrawal(&id).await.ok()??;
            (w.status == WithdrawalStatus::Settled).then_some(w)
        })
        .await;
        let fee = w.fee.unwrap().base_units();
        assert_eq!(h.balance_of(&cold).await, 2 * ETH, "{backend}: the cold wallet received it once");
        assert_eq!(h.nonce_of(&h.hot_wallet).await, nonce_before + 1, "{backend}: one transaction");
        assert_eq!(h.balance_of(&h.hot_wallet).await, hot_chain_before - 2 * ETH - fee, "{backend}: hot paid it");

        // The ledger: wallet accounts match the chain, the fee is expensed, customers untouched.
        assert_eq!(ledger(&h, AccountKind::Wallet, &cold).await, (2 * ETH) as i128, "{backend}: cold account");
        assert_eq!(
            ledger(&h, AccountKind::Wallet, &h.hot_wallet).await,
            h.balance_of(&h.hot_wallet).await as i128,
            "{backend}: hot wallet account matches the chain"
        );
        assert_eq!(ledger(&h, AccountKind::NetworkFees, "custodian").await, fee as i128, "{backend}: fee expensed");
        assert_eq!(c.available().await, 3 * ETH, "{backend}: the customer's balance did not move");
        assert_eq!(ledger(&h, AccountKind::Available, &c_id(&h, &c).await).await, customer_available, "{backend}");
        assert_eq!(ledger(&h, AccountKind::Held, CUSTODIAN_CUSTOMER_ID).await, 0, "{backend}: nothing held");
        // The watcher watches customer deposit addresses only: nobody is credited for the cold wallet's coins.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ledger(&h, AccountKind::Pending, CUSTODIAN_CUSTOMER_ID).await, 0, "{backend}");
        assert_eq!(ledger(&h, AccountKind::Available, CUSTODIAN_CUSTOMER_ID).await, 0, "{backend}");

        // K12 evidence: the signature is logged with the approver, over the approved intent.
        let log = h.ts.store.key_access_log(HOT_KEY_ID, 10_000).await.unwrap();
        let entry = log
            .iter()
            .find(|e| e.intent_hash.contains(&intent_hash))
            .unwrap_or_else(|| panic!("{backend}: the transfer's signature is logged"));
        let approvers: Vec<String> = serde_json::from_str(&entry.approvers_json).unwrap();
        assert_eq!(approvers, ["m1"], "{backend}");
        h.ts.store.verify_ledger(|_| {}).await.unwrap();
        running.stop().await;
    }
}

/// The customer id behind a test customer's session (its deposit address row names it).
async fn c_id(h: &Harness, c: &Customer) -> String {
    kinko_store::sqlx::query_scalar("SELECT customer_id FROM deposit_addresses WHERE address = $1")
        .bind(&c.deposit_address)
        .fetch_one(h.ts.store.pool())
        .await
        .unwrap()
}
