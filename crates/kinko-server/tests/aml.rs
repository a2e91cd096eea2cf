//! Anti-money-laundering checks on withdrawals through the HTTP API in process, on SQLite and — when
//! `KINKO_TEST_POSTGRES_URL` is set — PostgreSQL. Requirement ID: U14 (screen destinations against a
//! reloadable deny list, fail closed; deposit-then-withdrawal, structuring and fan-out rules open cases
//! for review without refusing; purpose and beneficiary above a threshold).

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode};
use kinko_core::ledger::postings;
use kinko_core::{Amount, AssetCode};
use kinko_server::{AppState, Config};
use kinko_store::testing::{TestStore, test_stores};
use serde_json::{Value, json};

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const HOT_WALLET: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const DEST: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
const OTHER: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
const ETH: u128 = 1_000_000_000_000_000_000;

struct Api {
    app: Router,
    ts: TestStore,
}

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

/// A deny list file of this test's own (the loaded lists are cached per path).
fn deny_list_path(test: &str, store: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kinko-aml-{}-{test}-{store}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("deny.txt")
}

async fn api(ts: TestStore, configure: impl FnOnce(&mut Config)) -> Api {
    let mut config = Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), "http://x:1".into());
    configure(&mut config);
    config.validate().unwrap();
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
    Api { app: kinko_server::api::router(state), ts }
}

impl Api {
    /// POST as a customer client: withdrawals carry the transaction password, confirmations are answered.
    async fn call(&self, path: &str, token: &str, key: &str, body: Value) -> (StatusCode, Value) {
        let r =
            support::customer::call(&self.app, &self.ts.store, Method::POST, path, Some(token), Some(key), Some(body))
                .await;
        (r.status, r.json)
    }

    /// A customer who can withdraw (TOTP, a fresh step-up, the transaction password, `DEST` saved; U2, U4,
    /// U9, U13) with `amount` wei available: (customer id, token).
    async fn customer(&self, email: &str, amount: u128) -> (String, String) {
        let (id, token) = support::customer::ready(&self.app, email, &[DEST]).await;
        let a = Amount::from_base_units(amount);
        let dep = format!("dep-{email}");
        self.ts.store.post(postings::deposit_detected(&dep, &id, OTHER, &eth(), a), 1).await.unwrap();
        self.ts.store.post(postings::deposit_confirmed(&dep, &id, &eth(), a), 2).await.unwrap();
        (id, token)
    }

    /// Saves `destination` (U13: withdrawals go only to saved destinations), then withdraws to it.
    async fn withdraw(&self, token: &str, key: &str, amount: u128, destination: &str) -> (StatusCode, Value) {
        support::customer::save_destination(&self.app, token, "ETH", destination).await;
        let body = json!({"asset": "ETH", "amount": amount.to_string(), "destination": destination});
        self.call("/v1/withdrawals", token, key, body).await
    }

    async fn available(&self, customer_id: &str) -> u128 {
        let balances = self.ts.store.customer_balances(customer_id).await.unwrap();
        balances[&(eth(), kinko_core::ledger::AccountKind::Available)].base_units()
    }

    async fn cases(&self, customer_id: &str, rule: &str) -> Vec<kinko_store::aml::AmlCase> {
        let all = self.ts.store.aml_cases_for_customer(customer_id, 500).await.unwrap();
        all.into_iter().filter(|c| c.rule == rule).collect()
    }

    async fn withdrawals(&self, customer_id: &str) -> usize {
        self.ts.store.withdrawals_for_customer(customer_id, 200).await.unwrap().len()
    }

    /// A deposit row credited at `credited_at_ms` (what the watcher writes when it credits).
    async fn credited_deposit(&self, customer_id: &str, id: &str, amount: u128, credited_at_ms: i64) {
        kinko_store::sqlx::query(
            "INSERT INTO deposits (id, chain, asset, customer_id, address, tx_hash, log_index, block_number, \
             block_hash, amount, status, confirmations, created_at_ms, updated_at_ms) \
             VALUES ($1, 'eth', 'ETH', $2, $3, $4, 0, 1, $5, $6, 'credited', 3, $7, $7)",
        )
        .bind(id)
        .bind(customer_id)
        .bind(OTHER)
        .bind(format!("{:0>64}", hex::encode(id)))
        .bind("ab".repeat(32))
        .bind(amount.to_string())
        .bind(credited_at_ms)
        .execute(self.ts.store.pool())
        .await
        .unwrap();
    }
}

fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

/// U14: a deny-listed destination (any spelling) is refused with `destination-denied` naming the field,
/// nothing is held or written, and a case is opened with its ops event; a retry of the same request opens
/// no second case; other destinations pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u14_deny_listed_destination_refused_and_case_opened() {
    for ts in test_stores().await {
        let path = deny_list_path("denied", ts.name);
        std::fs::write(&path, "# test list\n0x70997970C51812dc3A010C7d01b50e0d17dc79C8 # sanctioned\n").unwrap();
        let api = api(ts, |c| c.aml.deny_list_path = Some(path.clone())).await;
        let name = api.ts.name;
        let (cid, token) = api.customer("mallory@example.com", 5 * ETH).await;
        let (s, r) = api.withdraw(&token, "d1", ETH, DEST).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {r}");
        assert_eq!(r["type"], "urn:kinko:problem:destination-denied", "{name}: {r}");
        assert_eq!(r["errors"][0]["field"], "destination", "{name}: {r}");
        assert_eq!(api.available(&cid).await, 5 * ETH, "{name}: nothing held");
        assert_eq!(api.withdrawals(&cid).await, 0, "{name}: nothing written");
        let cases = api.cases(&cid, "deny_list").await;
        assert_eq!(cases.len(), 1, "{name}");
        assert_eq!(cases[0].state, "open", "{name}");
        let detail: Value = serde_json::from_str(&cases[0].detail_json).unwrap();
        assert_eq!(detail["destination"], DEST, "{name}");
        let events = api.ts.store.ops_events(None, 500).await.unwrap();
        let opened: Vec<_> = events.iter().filter(|e| e.event == "aml_case_opened").collect();
        assert!(opened.iter().any(|e| e.detail_json.contains(&cases[0].id)), "{name}: the case has its ops event");
        // The same request again: refused again, still one case. Another request: another case.
        let (s, _) = api.withdraw(&token, "d1", ETH, "0x70997970C51812dc3A010C7d01b50e0d17dc79C8").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert_eq!(api.cases(&cid, "deny_list").await.len(), 1, "{name}: one case per request");
        let (s, _) = api.withdraw(&token, "d2", ETH, DEST).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert_eq!(api.cases(&cid, "deny_list").await.len(), 2, "{name}");
        let (s, r) = api.withdraw(&token, "d3", ETH, OTHER).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: a clean destination passes: {r}");
    }
}

/// U14: the deny list is re-read when the file changes: an address added later is refused, one removed
/// later passes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u14_deny_list_reloaded_after_the_file_changes() {
    for ts in test_stores().await {
        let path = deny_list_path("reload", ts.name);
        std::fs::write(&path, format!("{OTHER}\n")).unwrap();
        let api = api(ts, |c| {
            c.aml.deny_list_path = Some(path.clone());
            c.aml.deny_list_check_interval_ms = 0;
        })
        .await;
        let name = api.ts.name;
        let (_, token) = api.customer("ivan@example.com", 5 * ETH).await;
        let (s, r) = api.withdraw(&token, "r1", ETH, DEST).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: not listed yet: {r}");
        // Longer content, so the change shows even where the file system's clock is coarse.
        std::fs::write(&path, format!("{OTHER}\n# added after an alert\n{DEST}\n")).unwrap();
        let (s, r) = api.withdraw(&token, "r2", ETH, DEST).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: listed now: {r}");
        assert_eq!(r["type"], "urn:kinko:problem:destination-denied", "{name}");
        std::fs::write(&path, "# emptied\n").unwrap();
        let (s, r) = api.withdraw(&token, "r3", ETH, DEST).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: removed again: {r}");
    }
}

/// U14: a deny list that cannot be loaded (malformed line, missing file) refuses every withdrawal with
/// `aml-screening-unavailable` and holds nothing (fail closed); fixing the file restores withdrawals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u14_broken_deny_list_refuses_withdrawals() {
    for ts in test_stores().await {
        let path = deny_list_path("broken", ts.name);
        std::fs::write(&path, format!("{OTHER}\n0x1234 # truncated entry\n")).unwrap();
        let api = api(ts, |c| {
            c.aml.deny_list_path = Some(path.clone());
            c.aml.deny_list_check_interval_ms = 0;
        })
        .await;
        let name = api.ts.name;
        let (cid, token) = api.customer("judy@example.com", 5 * ETH).await;
        let (s, r) = api.withdraw(&token, "b1", ETH, DEST).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{name}: {r}");
        assert_eq!(r["type"], "urn:kinko:problem:aml-screening-unavailable", "{name}: {r}");
        assert!(!r.to_string().contains(path.to_str().unwrap()), "{name}: the path is not shown to customers");
        std::fs::remove_file(&path).unwrap();
        let (s, _) = api.withdraw(&token, "b2", ETH, DEST).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{name}: a missing file also refuses");
        assert_eq!(api.available(&cid).await, 5 * ETH, "{name}: nothing held");
        assert_eq!(api.withdrawals(&cid).await, 0, "{name}");
        std::fs::write(&path, format!("{OTHER}\n")).unwrap();
        let (s, r) = api.withdraw(&token, "b3", ETH, DEST).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: fixed: {r}");
    }
}

/// U14: a withdrawal soon after a credited deposit opens a case at `quick_withdrawal_percent` of the
/// deposit and not one wei below it, nor for a deposit credited before the window; the withdrawal is not
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u14_deposit_then_immediate_withdrawal_opens_a_case_at_the_threshold() {
    for ts in test_stores().await {
        let api = api(ts, |c| {
            c.aml.quick_withdrawal_ms = 600_000;
            c.aml.quick_withdrawal_percent = 90;
        })
        .await;
        let name = api.ts.name;
        let (cid, token) = api.customer("kim@example.com", 30 * ETH).await;
        // Credited 10 minutes + 1 s ago: outside the window.
        api.credited_deposit(&cid, "dep-old", 10 * ETH, now_ms() - 601_000).await;
        let (s, r) = api.withdraw(&token, "q0", 9 * ETH, DEST).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: {r}");
        assert!(api.cases(&cid, "deposit_then_withdrawal").await.is_empty(), "{name}: outside the window");
        api.credited_deposit(&cid, "dep-new", 10 * ETH, now_ms() - 1_000).await;
        let (s, r) = api.withdraw(&token, "q1", 9 * ETH - 1, DEST).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: {r}");
        assert!(api.cases(&cid, "deposit_then_withdrawal").await.is_empty(), "{name}: one wei below 90%");
        let (s, r) = api.withdraw(&token, "q2", 9 * ETH, DEST).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: reported, not refused: {r}");
        let cases = api.cases(&cid, "deposit_then_withdrawal").await;
        assert_eq!(cases.len(), 1, "{name}");
        let detail: Value = serde_json::from_str(&cases[0].detail_json).unwrap();
        assert_eq!((detail["deposit_id"].as_str(), detail["withdrawal_id"] == r["id"]), (Some("dep-new"), true));
    }
}

/// U14: structuring — the `structuring_count`-th withdrawal within the window just under the
/// per-transaction limit (10 ETH under the dev policy; band 10%: 9 ETH up to 10 ETH − 1 wei) opens a case;
/// one fewer, or one just below the band, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u14_structuring_opens_a_case_at_the_count_and_not_below() {
    for ts in test_stores().await {
        let api = api(ts, |c| c.aml.structuring_count = 3).await;
        let name = api.ts.name;
        let (cid, token) = api.customer("leo@example.com", 50 * ETH).await;
        for (key, amount) in [("s1", 10 * ETH - 1), ("s2", 9 * ETH), ("s3", 9 * ETH - 1)] {
            let (s, r) = api.withdraw(&token, key, amount, DEST).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{name}: {r}");
        }
        assert!(api.cases(&cid, "structuring").await.is_empty(), "{name}: two in the band, one just below it");
        let (s, r) = api.withdraw(&token, "s4", 9 * ETH + 1, DEST).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: reported, not refused: {r}");
        let cases = api.cases(&cid, "structuring").await;
        assert_eq!(cases.len(), 1, "{name}: the third in the band");
        let detail: Value = serde_json::from_str(&cases[0].detail_json).unwrap();
        assert_eq!(detail["count"], 3, "{name}: {detail}");
        assert_eq!(detail["per_tx_limit"], (10 * ETH).to_string(), "{name}");
    }
}

/// U14: fan-out — the withdrawal that reaches `fan_out_destinations` distinct destinations within the
/// window opens a case; fewer, or a repeat to a known destination, do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u14_fan_out_opens_a_case_at_the_destination_count() {
    for ts in test_stores().await {
        let api = api(ts, |c| c.aml.fan_out_destinations = 3).await;
        let name = api.ts.name;
        let (cid, token) = api.customer("mia@example.com", 10 * ETH).await;
        let third = "0x90f79bf6eb2c4f870365e785982e1f101e93b906";
        for (key, dest) in [("f1", DEST), ("f2", OTHER), ("f3", DEST)] {
            let (s, r) = api.withdraw(&token, key, ETH, dest).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{name}: {r}");
        }
        assert!(api.cases(&cid, "fan_out").await.is_empty(), "{name}: two distinct destinations");
        let (s, r) = api.withdraw(&token, "f4", ETH, third).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: reported, not refused: {r}");
        assert_eq!(api.cases(&cid, "fan_out").await.len(), 1, "{name}: the third distinct destination");
        let (s, _) = api.withdraw(&token, "f5", ETH, OTHER).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}");
        assert_eq!(api.cases(&cid, "fan_out").await.len(), 1, "{name}: a known destination adds none");
    }
}

/// U14: above `purpose_required_above` a withdrawal must carry `purpose` and `beneficiary` (each named
/// when missing, bounded); at the threshold they are optional; given ones are stored with the withdrawal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u14_purpose_and_beneficiary_required_above_the_threshold() {
    for ts in test_stores().await {
        let api = api(ts, |c| c.aml.purpose_required_above = Amount::from_base_units(ETH)).await;
        let name = api.ts.name;
        let (cid, token) = api.customer("nina@example.com", 10 * ETH).await;
        let (s, r) = api.withdraw(&token, "p0", ETH, DEST).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: at the threshold: {r}");
        let body = |extra: Value| {
            let mut b = json!({"asset": "ETH", "amount": (ETH + 1).to_string(), "destination": DEST});
            b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            b
        };
        let fields = |r: &Value| -> Vec<String> {
            r["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_string()).collect()
        };
        let (s, r) = api.call("/v1/withdrawals", &token, "p1", body(json!({}))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {r}");
        assert_eq!(fields(&r), ["purpose", "beneficiary"], "{name}");
        let (s, r) = api.call("/v1/withdrawals", &token, "p1", body(json!({"purpose": "rent"}))).await;
        assert_eq!((s, fields(&r)), (StatusCode::UNPROCESSABLE_ENTITY, vec!["beneficiary".to_string()]), "{name}");
        let (_, r) = api.call("/v1/withdrawals", &token, "p1", body(json!({"purpose": 5, "beneficiary": "x"}))).await;
        assert_eq!(fields(&r), ["purpose"], "{name}: must be a string: {r}");
        let long = "x".repeat(201);
        let (_, r) =
            api.call("/v1/withdrawals", &token, "p1", body(json!({"purpose": long, "beneficiary": "x"}))).await;
        assert_eq!(fields(&r), ["purpose"], "{name}: bounded: {r}");
        let (_, r) = api.call("/v1/withdrawals", &token, "p1", body(json!({"purpse": "typo"}))).await;
        assert!(fields(&r).contains(&"purpse".to_string()), "{name}: unknown members still refused: {r}");
        assert_eq!(api.withdrawals(&cid).await, 1, "{name}: nothing written by the refusals");
        let ok = body(json!({"purpose": "rent for March", "beneficiary": "Nina Example, own wallet"}));
        let (s, r) = api.call("/v1/withdrawals", &token, "p1", ok.clone()).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{name}: {r}");
        let id = r["id"].as_str().unwrap().to_string();
        let details = api.ts.store.withdrawal_aml_details(&id).await.unwrap();
        assert_eq!(
            details,
            Some((Some("rent for March".to_string()), Some("Nina Example, own wallet".to_string()))),
            "{name}"
        );
        // Replay with the same details: the same withdrawal; with other details: the key was reused.
        let (s, r2) = api.call("/v1/withdrawals", &token, "p1", ok).await;
        assert_eq!((s, r2["id"].as_str()), (StatusCode::ACCEPTED, Some(id.as_str())), "{name}");
        let other = body(json!({"purpose": "something else", "beneficiary": "Nina Example, own wallet"}));
        let (s, r) = api.call("/v1/withdrawals", &token, "p1", other).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {r}");
        assert_eq!(r["type"], "urn:kinko:problem:idempotency-key-reused", "{name}");
    }
}
