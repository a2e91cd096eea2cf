//! The withdrawal policy at the customer API and the server's approval hooks (K11, K20, O1, O2), in process
//! (tower `oneshot`) on SQLite and — when `KINKO_TEST_POSTGRES_URL` is set — PostgreSQL.
//!
//! A policy decides at creation: automatic withdrawals start `approved`; those needing approval start
//! `pending_approval` with their hold taken and an operator request (id = withdrawal id) written in the same
//! transaction; denied ones are refused with a 422 naming the rules and leave nothing behind.

mod support;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode};
use kinko_core::ledger::postings;
use kinko_core::policy::{Action, PolicyClass, PolicyConfig, QuorumBand};
use kinko_core::{Amount, AssetCode};
use kinko_server::config::dev_hot_policy;
use kinko_server::{AppState, Config, withdrawal_policy};
use kinko_signer::Approval;
use kinko_store::testing::{TestStore, test_stores};
use serde_json::{Value, json};

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const HOT_WALLET: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const DEST: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
const ETH: u128 = 1_000_000_000_000_000_000;

struct Api {
    app: Router,
    state: AppState,
    ts: TestStore,
}

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

/// The dev policy, with the per-transaction limit at 1 ETH and what a breach yields; class hot_large
/// (2 of 3 approvals).
fn strict_policy(on_breach: Action) -> PolicyConfig {
    let mut p = dev_hot_policy();
    p.class = PolicyClass::HotLarge;
    p.quorum_bands = vec![QuorumBand { from: Amount::from_base_units(0), approvals: 2, approvers: 3 }];
    p.per_tx_limit.max = Amount::from_base_units(ETH);
    p.per_tx_limit.on_breach = on_breach;
    p
}

async fn api(ts: TestStore, policies: Vec<PolicyConfig>) -> Api {
    let mut config = Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), "http://x:1".into());
    config.policies = policies;
    let seed = bip39::Mnemonic::parse(TEST_MNEMONIC).unwrap().to_seed("");
    let master = kinko_keys::hd::master_from_seed(&seed).unwrap();
    let xpub = kinko_keys::hd::evm_deposit_xpub(&master).unwrap();
    let state = AppState {
        store: ts.store.clone(),
        config: Arc::new(config),
        deposit_xpub: Arc::new(xpub),
        hot_wallet: HOT_WALLET.into(),
        signer: Arc::new(kinko_signer::LocalSigner::new(Arc::new(kinko_signer::StoreJournal(ts.store.clone())))),
    };
    Api { app: kinko_server::api::router(state.clone()), state, ts }
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        // As a customer client: withdrawals carry the transaction password, confirmations are answered.
        let r = support::customer::call(&self.app, &self.ts.store, method, path, token, key, body).await;
        (r.status, r.json)
    }

    /// A customer who can withdraw (TOTP, a fresh step-up, the transaction password, `DEST` saved; U2, U4,
    /// U9, U13) with `amount` wei available: (customer id, token).
    async fn customer(&self, email: &str, amount: u128) -> (String, String) {
        let (id, token) = support::customer::ready(&self.app, email, &[DEST]).await;
        let wallet = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
        let a = Amount::from_base_units(amount);
        let dep = format!("dep-{email}");
        self.ts.store.post(postings::deposit_detected(&dep, &id, wallet, &eth(), a), 1).await.unwrap();
        self.ts.store.post(postings::deposit_confirmed(&dep, &id, &eth(), a), 2).await.unwrap();
        (id, token)
    }

    async fn withdraw(&self, token: &str, key: &str, amount: u128) -> (StatusCode, Value) {
        let body = json!({"asset": "ETH", "amount": amount.to_string(), "destination": DEST});
        self.call(Method::POST, "/v1/withdrawals", Some(token), Some(key), Some(body)).await
    }

    async fn balance(&self, token: &str, kind: &str) -> u128 {
        let (_, r) = self.call(Method::GET, "/v1/balances", Some(token), None, None).await;
        r[0][kind].as_str().unwrap().parse().unwrap()
    }

    async fn count(&self, table: &str) -> i64 {
        kinko_store::sqlx::query_scalar(kinko_store::sql(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.ts.store.pool())
            .await
            .unwrap()
    }

    async fn status_of(&self, id: &str) -> String {
        self.ts.store.withdrawal(id).await.unwrap().unwrap().status.as_str().to_string()
    }
}

/// K20: under the dev policy an ordinary withdrawal is automatic, exactly as before policies existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k20_withdrawal_within_the_policy_is_approved_automatically() {
    for ts in test_stores().await {
        let api = api(ts, vec![dev_hot_policy()]).await;
        let (_, token) = api.customer("auto@example.com", 3 * ETH).await;
        let (s, r) = api.withdraw(&token, "k1", ETH).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{}: {r}", api.ts.name);
        assert_eq!(r["status"], "approved", "{}", api.ts.name);
        assert!(r.get("reasons").is_none(), "{}: no reasons for an automatic withdrawal: {r}", api.ts.name);
        assert_eq!(api.count("ops_requests").await, 0, "{}: no approval request", api.ts.name);
    }
}

/// K11, O2: above the per-transaction limit with `needs_approval`, the withdrawal is pending, the hold is
/// taken, and the operator request (id = withdrawal id, signing, customer_withdrawal, intent hash = the
/// withdrawal's, required = the quorum) exists; a replay with the same key returns the same pending
/// withdrawal and reasons and holds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k11_withdrawal_needing_approval_is_pending_with_hold_and_ops_request() {
    for ts in test_stores().await {
        let api = api(ts, vec![strict_policy(Action::NeedsApproval)]).await;
        let name = api.ts.name;
        let (customer, token) = api.customer("pending@example.com", 3 * ETH).await;
        let (s, r) = api.withdraw(&token, "big", 2 * ETH).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: {r}");
        assert_eq!(r["status"], "pending_approval", "{name}: {r}");
        assert_eq!(r["reasons"][0]["rule"], "per_tx_limit", "{name}: {r}");
        let id = r["id"].as_str().unwrap().to_string();
        assert_eq!(api.balance(&token, "held").await, 2 * ETH, "{name}: the hold is taken while pending");
        assert_eq!(api.balance(&token, "available").await, ETH, "{name}");

        let req = api.ts.store.ops_request(&id).await.unwrap().expect("ops request with the withdrawal's id");
        let w = api.ts.store.withdrawal(&id).await.unwrap().unwrap();
        assert_eq!((req.process.as_str(), req.kind.as_str()), ("signing", "customer_withdrawal"), "{name}");
        assert_eq!(req.intent_hash, w.intent_hash, "{name}: approvals sign the withdrawal's intent hash");
        assert_eq!(req.required, 2, "{name}: hot_large band quorum");
        assert_eq!(req.requester, format!("customer:{customer}"), "{name}");
        let params: Value = serde_json::from_str(&req.params_json).unwrap();
        assert_eq!(params["amount"], (2 * ETH).to_string(), "{name}");
        assert_eq!(params["destination"], DEST, "{name}");

        let (s, again) = api.withdraw(&token, "big", 2 * ETH).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: {again}");
        assert_eq!((again["id"].as_str(), &again["status"]), (Some(id.as_str()), &r["status"]), "{name}");
        assert_eq!(again["reasons"], r["reasons"], "{name}: the replay reports the same reasons");
        assert_eq!(api.balance(&token, "held").await, 2 * ETH, "{name}: held once");
        assert_eq!(api.count("ops_requests").await, 1, "{name}: one approval request");
    }
}

/// K20: a denied withdrawal is a 422 naming the rule; nothing is held and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k20_denied_withdrawal_names_the_rule_and_leaves_nothing() {
    for ts in test_stores().await {
        let api = api(ts, vec![strict_policy(Action::Deny)]).await;
        let name = api.ts.name;
        let (_, token) = api.customer("deny@example.com", 3 * ETH).await;
        let (s, r) = api.withdraw(&token, "too-big", 2 * ETH).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {r}");
        assert_eq!(r["type"], "urn:kinko:problem:policy-denied", "{name}: {r}");
        assert!(r["detail"].as_str().unwrap().contains("per_tx_limit"), "{name}: the rule is named: {r}");
        assert_eq!(r["errors"][0]["field"], "amount", "{name}: {r}");
        assert_eq!(api.balance(&token, "available").await, 3 * ETH, "{name}: nothing held");
        assert_eq!(api.count("withdrawals").await, 0, "{name}: nothing stored");
        assert_eq!(api.count("ops_requests").await, 0, "{name}");
        // Within the limit the same policy is automatic.
        let (s, r) = api.withdraw(&token, "ok", ETH).await;
        assert_eq!((s, &r["status"]), (StatusCode::ACCEPTED, &json!("approved")), "{name}: {r}");
    }
}

/// K20: no policy for (hot wallet, asset) refuses the withdrawal (fail closed), naming wallet and asset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k20_withdrawal_without_a_policy_is_refused_naming_wallet_and_asset() {
    for ts in test_stores().await {
        let api = api(ts, Vec::new()).await;
        let name = api.ts.name;
        let (_, token) = api.customer("nopolicy@example.com", 3 * ETH).await;
        let (s, r) = api.withdraw(&token, "k", ETH).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {r}");
        assert_eq!(r["type"], "urn:kinko:problem:no-policy", "{name}: {r}");
        let reason = r["errors"][0]["reason"].as_str().unwrap();
        assert!(reason.contains("eth-hot-1") && reason.contains("ETH"), "{name}: {reason}");
        assert_eq!(api.balance(&token, "available").await, 3 * ETH, "{name}: nothing held");
        assert_eq!(api.count("withdrawals").await, 0, "{name}");
    }
}

/// K11, K20: the rolling limit reads the wallet's earlier withdrawals from the store (all customers, failed
/// and cancelled excluded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k11_rolling_limit_counts_the_wallets_earlier_withdrawals() {
    for ts in test_stores().await {
        let mut p = dev_hot_policy();
        p.rolling_limit.max = Amount::from_base_units(ETH);
        let api = api(ts, vec![p]).await;
        let name = api.ts.name;
        let (_, alice) = api.customer("alice@example.com", 3 * ETH).await;
        let (_, bob) = api.customer("bob@example.com", 3 * ETH).await;
        let (_, r) = api.withdraw(&alice, "a1", 6 * ETH / 10).await;
        assert_eq!(r["status"], "approved", "{name}: {r}");
        let first = r["id"].as_str().unwrap().to_string();
        let (_, r) = api.withdraw(&bob, "b1", 6 * ETH / 10).await;
        assert_eq!(r["status"], "pending_approval", "{name}: 0.6 + 0.6 > 1 in the window: {r}");
        assert_eq!(r["reasons"][0]["rule"], "rolling_limit", "{name}: {r}");
        assert_eq!(r["reasons"][0]["spent"], (6 * ETH / 10).to_string(), "{name}: {r}");
        // A failed withdrawal moved nothing and no longer counts.
        kinko_store::sqlx::query("UPDATE withdrawals SET status = 'failed' WHERE id = $1")
            .bind(&first)
            .execute(api.ts.store.pool())
            .await
            .unwrap();
        let (_, r) = api.withdraw(&alice, "a2", ETH / 2).await;
        assert_eq!(r["status"], "pending_approval", "{name}: bob's pending 0.6 still counts, 0.6 + 0.5 > 1: {r}");
        assert_eq!(r["reasons"][0]["spent"], (6 * ETH / 10).to_string(), "{name}: only bob's: {r}");
    }
}

fn approval(operator: &str) -> Approval {
    Approval { operator_id: operator.into(), signature_hex: "00".repeat(64) }
}

/// K11, O2: a quorum moves the withdrawal pending_approval → approved, idempotently; fewer distinct
/// approvers than required are refused; a cancelled withdrawal is never revived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k11_on_quorum_approves_once_and_refuses_short_or_closed() {
    for ts in test_stores().await {
        let api = api(ts, vec![strict_policy(Action::NeedsApproval)]).await;
        let name = api.ts.name;
        let (_, token) = api.customer("quorum@example.com", 5 * ETH).await;
        let (_, r) = api.withdraw(&token, "q1", 2 * ETH).await;
        let id = r["id"].as_str().unwrap().to_string();

        let short = withdrawal_policy::on_quorum(&api.state, &id, &[approval("m1"), approval("m1")], 10).await;
        assert_eq!(short.unwrap_err().status, StatusCode::CONFLICT, "{name}: one operator twice is one approval");
        assert_eq!(api.status_of(&id).await, "pending_approval", "{name}");

        withdrawal_policy::on_quorum(&api.state, &id, &[approval("m1"), approval("m2")], 11).await.unwrap();
        assert_eq!(api.status_of(&id).await, "approved", "{name}");
        withdrawal_policy::on_quorum(&api.state, &id, &[approval("m1"), approval("m2")], 12).await.unwrap();
        assert_eq!(api.status_of(&id).await, "approved", "{name}: idempotent");

        let (_, r) = api.withdraw(&token, "q2", 2 * ETH).await;
        let closed = r["id"].as_str().unwrap().to_string();
        kinko_store::sqlx::query("UPDATE withdrawals SET status = 'cancelled' WHERE id = $1")
            .bind(&closed)
            .execute(api.ts.store.pool())
            .await
            .unwrap();
        let err = withdrawal_policy::on_quorum(&api.state, &closed, &[approval("m1"), approval("m2")], 13).await;
        assert_eq!(err.unwrap_err().status, StatusCode::CONFLICT, "{name}");
        assert_eq!(api.status_of(&closed).await, "cancelled", "{name}: never revived");
        let missing = withdrawal_policy::on_quorum(&api.state, "w_nope", &[approval("m1")], 14).await;
        assert_eq!(missing.unwrap_err().status, StatusCode::NOT_FOUND, "{name}");
    }
}

/// K11, K20: an approved policy change is validated (errors name the field), stored as the next version
/// (idempotent per request) and overrides the configuration file's policy at the next withdrawal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k20_policy_change_is_validated_versioned_and_overrides_the_config() {
    for ts in test_stores().await {
        let api = api(ts, vec![dev_hot_policy()]).await;
        let name = api.ts.name;
        let (_, token) = api.customer("change@example.com", 5 * ETH).await;

        let mut zero = serde_json::to_value(dev_hot_policy()).unwrap();
        zero["quorum_bands"][0]["approvals"] = json!(0);
        let err = withdrawal_policy::apply_policy_change(&api.state, "p-bad", &json!({"policy": zero}), 1).await;
        let err = err.unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert!(err.body.errors[0].reason.contains("quorum_bands[0].approvals"), "{name}: {:?}", err.body);
        let mut other = serde_json::to_value(dev_hot_policy()).unwrap();
        other["wallet"] = json!("cold-1");
        let err = withdrawal_policy::apply_policy_change(&api.state, "p-w", &json!({"policy": other}), 1).await;
        assert_eq!(err.unwrap_err().body.errors[0].field, "policy.wallet", "{name}");
        let err = withdrawal_policy::apply_policy_change(&api.state, "p-none", &json!({}), 1).await;
        assert_eq!(err.unwrap_err().body.errors[0].field, "policy", "{name}");
        assert!(api.ts.store.latest_policy_version("eth-hot-1", "ETH").await.unwrap().is_none(), "{name}");

        let strict = json!({"policy": strict_policy(Action::Deny)});
        let v = withdrawal_policy::apply_policy_change(&api.state, "p-1", &strict, 2).await.unwrap();
        assert_eq!(v["version"], 1, "{name}: {v}");
        let again = withdrawal_policy::apply_policy_change(&api.state, "p-1", &strict, 3).await.unwrap();
        assert_eq!(again, v, "{name}: replaying the request stores nothing new");

        let (s, r) = api.withdraw(&token, "after-change", 2 * ETH).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: the stored version wins over the file: {r}");
        let v2 = withdrawal_policy::apply_policy_change(&api.state, "p-2", &json!({"policy": dev_hot_policy()}), 4)
            .await
            .unwrap();
        assert_eq!(v2["version"], 2, "{name}");
        let (s, r) = api.withdraw(&token, "after-change-2", 2 * ETH).await;
        assert_eq!((s, &r["status"]), (StatusCode::ACCEPTED, &json!("approved")), "{name}: latest version: {r}");
    }
}

/// O2: the pipeline hands the signer only the approve decisions stored for the withdrawal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o2_request_approvals_are_the_stored_approve_decisions() {
    for ts in test_stores().await {
        let api = api(ts, vec![strict_policy(Action::NeedsApproval)]).await;
        let name = api.ts.name;
        let (_, token) = api.customer("approvals@example.com", 5 * ETH).await;
        let (_, r) = api.withdraw(&token, "a", 2 * ETH).await;
        let id = r["id"].as_str().unwrap().to_string();
        for (op, decision, at) in [("m2", "approve", 2), ("m1", "approve", 1), ("m3", "reject", 3)] {
            kinko_store::sqlx::query(
                "INSERT INTO ops_approvals (request_id, operator_id, decision, signature_hex, terminal, at_ms) \
                 VALUES ($1, $2, $3, $4, 't', $5)",
            )
            .bind(&id)
            .bind(op)
            .bind(decision)
            .bind(format!("{op}-sig"))
            .bind(at as i64)
            .execute(api.ts.store.pool())
            .await
            .unwrap();
        }
        let got = api.ts.store.request_approvals(&id).await.unwrap();
        let ops: Vec<&str> = got.iter().map(|a| a.operator_id.as_str()).collect();
        assert_eq!(ops, ["m1", "m2"], "{name}: approvals only, oldest first");
        assert_eq!(got[0].signature_hex, "m1-sig", "{name}");
    }
}

/// K20: the configuration refuses an invalid `[[policies]]` entry at load, naming it and the field.
#[test]
fn k20_invalid_policy_in_config_is_refused_naming_the_field() {
    let mut c = Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x:1".into());
    c.validate().unwrap();
    c.policies[0].quorum_bands[0].approvals = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.starts_with("policies: policies[0] (wallet eth-hot-1, asset ETH): quorum_bands[0].approvals"), "{err}");
    let text =
        toml::to_string(&Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x".into()))
            .unwrap();
    assert!(text.contains("[[policies]]"), "the dev config documents its policy:\n{text}");
}

/// M10: a custodian transfer may only go to one of the custodian's own registered wallets: never a
/// customer's deposit address, nor an unregistered address, nor the hot wallet itself (each naming
/// params.destination). Valid params without an approved ops request behind them execute nothing (the full
/// path is `tests/custodian_transfer.rs` and `crates/kinko/tests/e2e_custodian_transfer.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m10_custodian_transfer_only_to_the_custodians_own_wallets() {
    for ts in test_stores().await {
        let api = api(ts, vec![dev_hot_policy()]).await;
        let name = api.ts.name;
        let (_, token) = api.customer("m10@example.com", ETH).await;
        let (_, r) =
            api.call(Method::POST, "/v1/deposit-addresses", Some(&token), None, Some(json!({"asset": "ETH"}))).await;
        let deposit = r["address"].as_str().unwrap().to_lowercase();
        let cold = "0x00000000000000000000000000000000000000c0";
        let wallet = kinko_store::pipeline::Wallet { address: cold, chain: "eth", tier: "cold", key_id: "eth-cold-1" };
        api.ts.store.ensure_wallet(wallet, 1).await.unwrap();
        let transfer =
            |destination: &str| json!({"asset": "ETH", "amount": ETH.to_string(), "destination": destination});
        let run = |params: Value| {
            let state = api.state.clone();
            async move {
                withdrawal_policy::execute_custodian_transfer(&state, "ct-1", &params, &[], "so", "192.0.2.7", 5).await
            }
        };
        for (dest, why) in [
            (deposit.as_str(), "customer deposit address"),
            (DEST, "not a registered custodian wallet"),
            (HOT_WALLET, "hot wallet itself"),
        ] {
            let err = run(transfer(dest)).await.unwrap_err();
            assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {why}");
            assert_eq!(err.body.errors[0].field, "params.destination", "{name}: {why}");
            assert!(err.body.errors[0].reason.contains(why), "{name}: {:?}", err.body.errors);
        }
        let err = run(json!({"asset": "ETH", "amount": "0", "destination": cold})).await.unwrap_err();
        assert_eq!(err.body.errors[0].field, "params.amount", "{name}");
        let err = run(transfer(cold)).await.unwrap_err();
        assert_eq!(err.status, StatusCode::NOT_FOUND, "{name}: valid, but no such request");
        assert_eq!(api.count("withdrawals").await, 0, "{name}: nothing half-executed");
    }
}

/// A3, K20: a replay returns the accepted withdrawal even after its policy was tightened to deny it; a
/// denied request stored nothing, so retrying it is decided afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_replay_keeps_its_outcome_after_a_policy_change() {
    for ts in test_stores().await {
        let api = api(ts, vec![dev_hot_policy()]).await;
        let name = api.ts.name;
        let (_, token) = api.customer("replay@example.com", 5 * ETH).await;
        let (_, first) = api.withdraw(&token, "r1", 2 * ETH).await;
        assert_eq!(first["status"], "approved", "{name}: {first}");
        let strict = json!({"policy": strict_policy(Action::Deny)});
        withdrawal_policy::apply_policy_change(&api.state, "p-strict", &strict, 1).await.unwrap();
        let (s, again) = api.withdraw(&token, "r1", 2 * ETH).await;
        assert_eq!((s, &again["id"]), (StatusCode::ACCEPTED, &first["id"]), "{name}: {again}");
        let (s, denied) = api.withdraw(&token, "r2", 2 * ETH).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {denied}");
        let relaxed = json!({"policy": dev_hot_policy()});
        withdrawal_policy::apply_policy_change(&api.state, "p-relaxed", &relaxed, 2).await.unwrap();
        let (s, retried) = api.withdraw(&token, "r2", 2 * ETH).await;
        assert_eq!((s, &retried["status"]), (StatusCode::ACCEPTED, &json!("approved")), "{name}: {retried}");
        assert_eq!(api.balance(&token, "held").await, 4 * ETH, "{name}: two holds, none for the denial");
    }
}

/// K11, A3: a customer may cancel a withdrawal still pending approval (hold released, approval request
/// closed with an audit event, later approvals refused); not an approved one, and not another customer's.
/// The route is mounted here as the API will mount it (`POST /v1/withdrawals/{id}/cancel`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k11_customer_cancels_a_pending_withdrawal_and_its_request_closes() {
    for ts in test_stores().await {
        let api = api(ts, vec![strict_policy(Action::NeedsApproval)]).await;
        let name = api.ts.name;
        let (_, token) = api.customer("cancel@example.com", 5 * ETH).await;
        let (_, mallory) = api.customer("mallory@example.com", ETH).await;
        let (_, r) = api.withdraw(&token, "c1", 2 * ETH).await;
        let id = r["id"].as_str().unwrap().to_string();
        let path = format!("/v1/withdrawals/{id}/cancel");

        let (s, _) = api.call(Method::POST, &path, Some(&mallory), None, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{name}: not another customer's");
        let (s, w) = api.call(Method::POST, &path, Some(&token), None, None).await;
        assert_eq!((s, &w["status"]), (StatusCode::OK, &json!("cancelled")), "{name}: {w}");
        assert_eq!(api.balance(&token, "held").await, 0, "{name}: hold released");
        assert_eq!(api.balance(&token, "available").await, 5 * ETH, "{name}");
        assert_eq!(api.ts.store.ops_request(&id).await.unwrap().unwrap().state, "rejected", "{name}");
        let events = api.ts.store.ops_events_for_request(&id).await.unwrap();
        assert!(
            events.iter().any(|e| e.event == "request_cancelled" && e.operator_id.starts_with("customer:")),
            "{name}"
        );
        let (s, _) = api.call(Method::POST, &path, Some(&token), None, None).await;
        assert_eq!(s, StatusCode::OK, "{name}: cancelling twice is fine");
        assert_eq!(api.balance(&token, "available").await, 5 * ETH, "{name}: released once");
        let late = withdrawal_policy::on_quorum(&api.state, &id, &[approval("m1"), approval("m2")], 20).await;
        assert_eq!(late.unwrap_err().status, StatusCode::CONFLICT, "{name}: a cancelled withdrawal stays cancelled");

        let (_, r) = api.withdraw(&token, "c2", 2 * ETH).await;
        let approved = r["id"].as_str().unwrap().to_string();
        withdrawal_policy::on_quorum(&api.state, &approved, &[approval("m1"), approval("m2")], 21).await.unwrap();
        let (s, p) =
            api.call(Method::POST, &format!("/v1/withdrawals/{approved}/cancel"), Some(&token), None, None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{name}: approved withdrawals are not cancelled here: {p}");
        assert_eq!(api.status_of(&approved).await, "approved", "{name}");
    }
}

/// K11: an operator's rejection fails the pending withdrawal and releases its hold, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k11_rejected_withdrawal_fails_and_releases_its_hold() {
    for ts in test_stores().await {
        let api = api(ts, vec![strict_policy(Action::NeedsApproval)]).await;
        let name = api.ts.name;
        let (_, token) = api.customer("rejected@example.com", 5 * ETH).await;
        let (_, r) = api.withdraw(&token, "r1", 2 * ETH).await;
        let id = r["id"].as_str().unwrap().to_string();
        withdrawal_policy::on_rejected(&api.state, &id, 30).await.unwrap();
        assert_eq!(api.status_of(&id).await, "failed", "{name}");
        assert_eq!(api.balance(&token, "available").await, 5 * ETH, "{name}: hold released");
        withdrawal_policy::on_rejected(&api.state, &id, 31).await.unwrap();
        assert_eq!(api.balance(&token, "available").await, 5 * ETH, "{name}: released once");

        let (_, r) = api.withdraw(&token, "r2", 2 * ETH).await;
        let approved = r["id"].as_str().unwrap().to_string();
        withdrawal_policy::on_quorum(&api.state, &approved, &[approval("m1"), approval("m2")], 32).await.unwrap();
        let late = withdrawal_policy::on_rejected(&api.state, &approved, 33).await;
        assert_eq!(late.unwrap_err().status, StatusCode::CONFLICT, "{name}: an approved withdrawal is not failed");
        assert_eq!(api.status_of(&approved).await, "approved", "{name}");
        api.ts.store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// K11, O2: the dev server policy is at least as strict as the dev signer quorum: whatever the signer would
/// refuse without approvals, the server sends to approval instead of approving it on its own.
#[test]
fn k11_dev_policy_is_at_least_as_strict_as_the_dev_signer_quorum() {
    let c = Config::dev_default("/tmp/x".into(), "127.0.0.1:1".parse().unwrap(), "http://x:1".into());
    let signer = c.signer.quorum.iter().find(|q| q.key_id == "eth-hot-1" && q.asset == "ETH").expect("signer entry");
    let auto_max = signer.auto_max.expect("dev hot key has an auto_max").base_units();
    let set = c.policy_set().unwrap();
    let policy = set.get("eth-hot-1", &eth()).expect("dev policy for the hot key and ETH");
    let decide = |amount: u128| {
        policy.decide(&kinko_core::policy::Request {
            wallet: "eth-hot-1",
            asset: &eth(),
            amount: Amount::from_base_units(amount),
            destination: DEST,
            now_ms: 1_700_000_000_000,
            requester_ip: None,
            history: &[],
        })
    };
    assert_eq!(decide(auto_max), kinko_core::policy::Decision::Auto);
    assert!(matches!(decide(auto_max + 1), kinko_core::policy::Decision::NeedsApproval { .. }));
}
