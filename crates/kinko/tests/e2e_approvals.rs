//! Operator approvals of customer withdrawals, full stack on a real anvil (K11, K12, O2): the server's
//! policy sends a large withdrawal to `pending_approval`, and the signer — with its own registry and its own
//! `[[signer.quorum]]` — is what actually stops a withdrawal that lacks its quorum, whatever the database
//! says.

mod support;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_server::app::{HOT_KEY_ID, Running};
use kinko_signer::Approval;
use kinko_signer::approvals::sign_approval;
use kinko_store::ops_requests::{OpsApprovalRow, insert_ops_approval_tx};
use support::operators::configure_quorums;
use support::{Customer, ETH, Harness, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Seeds of the operators' approval keys: administrators a1, a2; signing managers m1, m2.
const A1: u8 = 100;
const A2: u8 = 101;
const M1: u8 = 1;
const M2: u8 = 2;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Applies one registry change to the signer: requested and signed by `by`, approved by `approvers`.
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

/// Genesis administrator a1, a2 by bootstrap, then signing managers m1 and m2 (requested by a1, approved
/// by a2), all through the signer's own verified registry log.
async fn two_signing_managers(running: &Running) {
    registry_change(running, (A1, "a1"), &[], add("a1", A1, Role::Administrator)).await;
    registry_change(running, (A1, "a1"), &[], add("a2", A2, Role::Administrator)).await;
    registry_change(running, (A1, "a1"), &[(A2, "a2")], add("m1", M1, Role::SigningManager)).await;
    registry_change(running, (A1, "a1"), &[(A2, "a2")], add("m2", M2, Role::SigningManager)).await;
}

/// Records `operator`'s approval of the withdrawal as the ops API stores it.
async fn store_approval(h: &Harness, id: &str, intent_hash_hex: &str, seed: u8, operator: &str) -> Approval {
    let mut intent_hash = [0u8; 32];
    hex::decode_to_slice(intent_hash_hex, &mut intent_hash).unwrap();
    let subject = ApprovalSubject::new(Process::Signing, id, intent_hash).unwrap();
    let approval = sign_approval(&key(seed), operator, &subject, Decision::Approve).unwrap();
    let mut tx = h.ts.store.begin_write().await.unwrap();
    let row = OpsApprovalRow {
        request_id: id.into(),
        operator_id: operator.into(),
        decision: "approve".into(),
        signature_hex: approval.signature_hex.clone(),
        terminal: "test-terminal".into(),
        at_ms: kinko_server::clock::now_ms(),
    };
    insert_ops_approval_tx(&mut tx, &row).await.unwrap();
    tx.commit().await.unwrap();
    approval
}

/// O2, K11, K12: with one valid approval of the two the signer demands (M−1) and the withdrawal row edited
/// straight to `approved` in the database, the pipeline asks the signer and the signer refuses: nothing
/// reaches the chain (hot-wallet nonce unchanged), the withdrawal is never signed, the recorded error names
/// the quorum, and the key access log has no entry for it. With the second approval added the way the ops
/// API does (stored, then `on_quorum`), the same withdrawal is signed with both approvers logged and settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o2_signer_refuses_m_minus_one_even_when_db_row_edited_to_approved() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let mut h = Harness::new(ts, &[], 2, 30_000).await;
        configure_quorums(&mut h);
        let running = h.start_in_process().await;
        two_signing_managers(&running).await;

        let c = Customer::register(&h.api_base(), &format!("{backend}-approvals@example.com"), &h.mail_dir()).await;
        h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, 3 * ETH).await.unwrap();
        wait_for("deposit credit", TIMEOUT, Some(&h.anvil), || async {
            (c.available().await == 3 * ETH).then_some(())
        })
        .await;

        let dest = outside_address(&format!("{backend}-approved-dest"));
        let (status, body) = c.withdraw("big-1", 2 * ETH, &dest).await.unwrap();
        assert_eq!(status, 202, "{backend}: {body}");
        assert_eq!(body["status"], "pending_approval", "{backend}: above the server's per-tx limit: {body}");
        let id = body["id"].as_str().unwrap().to_string();
        let row = h.ts.store.withdrawal(&id).await.unwrap().unwrap();
        let nonce_before = h.nonce_of(&h.hot_wallet).await;

        // A pending withdrawal is not touched by the pipeline.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let w = c.get(&format!("/v1/withdrawals/{id}")).await.unwrap();
        assert_eq!(w["status"], "pending_approval", "{backend}: {w}");

        // M−1: one valid approval, then the row is edited as a compromised server (or its DBA) would.
        store_approval(&h, &id, &row.intent_hash, M1, "m1").await;
        kinko_store::sqlx::query(
            "UPDATE withdrawals SET status = 'approved', next_attempt_at_ms = 0, updated_at_ms = 0 WHERE id = $1",
        )
        .bind(&id)
        .execute(h.ts.store.pool())
        .await
        .unwrap();

        let error = wait_for("the signer's refusal", TIMEOUT, Some(&h.anvil), || async {
            let w = h.ts.store.withdrawal(&id).await.ok()??;
            w.error.filter(|e| e.contains("quorum"))
        })
        .await;
        assert!(error.contains("quorum not met"), "{backend}: the error names the quorum: {error}");
        assert!(error.contains("1 valid approvals of 2"), "{backend}: M-1 of M: {error}");
        // Give the pipeline a few more tries; none may get further.
        for _ in 0..5 {
            h.anvil.mine(1).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let w = h.ts.store.withdrawal(&id).await.unwrap().unwrap();
        assert!(!w.status.may_be_on_chain(), "{backend}: never signed: {}", w.status);
        // The signer is asked before a nonce is taken, so the refused withdrawal holds none and cannot
        // block the withdrawals behind it.
        assert_eq!(w.status, WithdrawalStatus::Approved, "{backend}: waits in approved");
        assert_eq!(w.nonce, None, "{backend}: no nonce reserved for a withdrawal the signer refuses");
        assert!(w.tx_hash.is_none(), "{backend}: no transaction recorded");
        assert!(h.ts.store.tx_versions(&id).await.unwrap().is_empty(), "{backend}: nothing signed");
        assert_eq!(h.nonce_of(&h.hot_wallet).await, nonce_before, "{backend}: no transaction reached the chain");
        assert_eq!(h.balance_of(&dest).await, 0, "{backend}: nothing paid");
        let log = h.ts.store.key_access_log(HOT_KEY_ID, 10_000).await.unwrap();
        assert!(
            log.iter().all(|e| !e.intent_hash.contains(&row.intent_hash)),
            "{backend}: the key access log has no entry for the refused withdrawal"
        );

        // The second approval, as the ops API records it; the quorum hook is idempotent with the edited row.
        let first = kinko_signer::Approval {
            operator_id: "m1".into(),
            signature_hex: h.ts.store.request_approvals(&id).await.unwrap()[0].signature_hex.clone(),
        };
        let second = store_approval(&h, &id, &row.intent_hash, M2, "m2").await;
        kinko_server::withdrawal_policy::on_quorum(
            &running.state,
            &id,
            &[first, second],
            kinko_server::clock::now_ms(),
        )
        .await
        .unwrap();

        let w = wait_for("settlement", TIMEOUT, Some(&h.anvil), || async {
            let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
            (w["status"] == "settled").then_some(w)
        })
        .await;
        assert_eq!(h.balance_of(&dest).await, 2 * ETH, "{backend}: paid exactly once: {w}");
        assert_eq!(h.nonce_of(&h.hot_wallet).await, nonce_before + 1, "{backend}: one transaction");
        let log = h.ts.store.key_access_log(HOT_KEY_ID, 10_000).await.unwrap();
        let entry = log
            .iter()
            .find(|e| e.intent_hash.contains(&row.intent_hash))
            .unwrap_or_else(|| panic!("{backend}: the signature is logged"));
        let approvers: Vec<String> = serde_json::from_str(&entry.approvers_json).unwrap();
        assert_eq!(approvers, ["m1", "m2"], "{backend}: K12 evidence: both approvers in the key access log");
        h.ts.store.verify_ledger(|_| {}).await.unwrap();
        running.stop().await;
    }
}
