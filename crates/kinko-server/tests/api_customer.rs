//! The customer HTTP API in process (tower `oneshot`), on SQLite and — when `KINKO_TEST_POSTGRES_URL` is
//! set — PostgreSQL. Requirement IDs: M1 (customer interface), M2 (authentication), M3 (user
//! information), A3 (no transfer beyond the available balance; bad input leaves the ledger unchanged),
//! M13 (withdrawal instructions), K5/K6 (deposit addresses by public derivation).

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use kinko_core::ledger::{AccountRef, Balance, postings};
use kinko_core::{Amount, AssetCode};
use kinko_server::{AppState, Config};
use kinko_store::testing::{TestStore, test_stores};
use serde_json::{Value, json};
use tower::ServiceExt;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const HOT_WALLET: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
/// anvil account 1, checksummed and lower-case.
const DEST: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const DEST_LOWER: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
const PASSWORD: &str = "correct horse battery staple";
const PROBLEM: &str = "application/problem+json";

struct Api {
    app: Router,
    ts: TestStore,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Reply {
    fn is_problem(&self) -> bool {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) == Some(PROBLEM)
    }
    fn fields(&self) -> Vec<String> {
        self.json["errors"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().map(|e| e["field"].as_str().unwrap_or_default().to_string()).collect())
    }
}

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

async fn api(ts: TestStore) -> Api {
    let dir = std::env::temp_dir();
    let config = Config::dev_default(dir, "127.0.0.1:0".parse().unwrap(), "http://127.0.0.1:8545".into());
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
    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, text, json }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        // As a customer client: withdrawals carry the transaction password, confirmations are answered.
        let r = support::customer::call(&self.app, &self.ts.store, method, path, token, key, body).await;
        Reply { status: r.status, headers: r.headers, text: r.text, json: r.json }
    }

    /// A customer who can withdraw (TOTP, a fresh step-up, the transaction password; U2, U4, U9) with
    /// `DEST` saved (U13): (customer id, token).
    async fn register_and_login(&self, email: &str) -> (String, String) {
        support::customer::ready(&self.app, email, &[DEST]).await
    }

    /// Gives the customer `amount` wei available, as the watcher would: detected, then confirmed.
    async fn fund(&self, customer: &str, deposit_id: &str, amount: u128) {
        let wallet = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
        let a = Amount::from_base_units(amount);
        self.ts.store.post(postings::deposit_detected(deposit_id, customer, wallet, &eth(), a), 1).await.unwrap();
        self.ts.store.post(postings::deposit_confirmed(deposit_id, customer, &eth(), a), 2).await.unwrap();
    }

    async fn ledger_snapshot(&self) -> (BTreeMap<AccountRef, Balance>, usize, i64) {
        let balances = self.ts.store.all_balances().await.unwrap();
        let journal = self.ts.store.journal_page(1, 100_000).await.unwrap().len();
        let withdrawals: i64 = kinko_store::sqlx::query_scalar("SELECT COUNT(*) FROM withdrawals")
            .fetch_one(self.ts.store.pool())
            .await
            .unwrap();
        (balances, journal, withdrawals)
    }

    async fn balance(&self, token: &str, kind: &str) -> String {
        let r = self.call(Method::GET, "/v1/balances", Some(token), None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json[0][kind].as_str().unwrap().to_string()
    }
}

async fn insert_deposit_row(store: &kinko_store::Store, id: &str, customer: &str, address: &str) {
    kinko_store::sqlx::query(
        "INSERT INTO deposits (id, chain, asset, customer_id, address, tx_hash, log_index, block_number, block_hash, amount, status, confirmations, created_at_ms, updated_at_ms) \
         VALUES ($1, 'eth', 'ETH', $2, $3, $4, 0, 7, $5, '1000', 'pending', 1, 10, 10)",
    )
    .bind(id)
    .bind(customer)
    .bind(address)
    .bind("ab".repeat(32))
    .bind("cd".repeat(32))
    .execute(store.pool())
    .await
    .unwrap();
}

/// M1, M2, M3, M13, K6: register, log in, a stable deposit address, balances, a withdrawal (202), read it
/// back and list it; the hold moved available → held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_happy_path_register_login_address_balances_withdraw() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token) = api.register_and_login("alice@example.com").await;
        assert!(cid.starts_with("c_"), "{name}: {cid}");

        let r =
            api.call(Method::POST, "/v1/deposit-addresses", Some(&token), None, Some(json!({"asset": "ETH"}))).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["asset"], "ETH");
        // Index 0 of the test mnemonic's deposit xpub: anvil's first account (public derivation, K6).
        assert_eq!(r.json["address"], "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "{name}");
        let again =
            api.call(Method::POST, "/v1/deposit-addresses", Some(&token), None, Some(json!({"asset": "ETH"}))).await;
        assert_eq!(again.json, r.json, "{name}: same customer and asset, same address");
        let (_, token_b) = api.register_and_login("bob@example.com").await;
        let other =
            api.call(Method::POST, "/v1/deposit-addresses", Some(&token_b), None, Some(json!({"asset": "ETH"}))).await;
        assert_eq!(other.json["address"], "0x70997970c51812dc3a010c7d01b50e0d17dc79c8", "{name}: next index");

        let r = api.call(Method::GET, "/v1/balances", Some(&token), None, None).await;
        assert_eq!(
            r.json,
            json!([{"asset": "ETH", "available": "0", "held": "0", "pending": "0", "receivable": "0"}]),
            "{name}"
        );

        api.fund(&cid, "d1", 1_000_000).await;
        insert_deposit_row(&api.ts.store, "d1", &cid, "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266").await;
        let r = api.call(Method::GET, "/v1/deposits", Some(&token), None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json[0]["id"], "d1");
        assert_eq!(r.json[0]["amount"], "1000");
        assert_eq!(r.json[0]["status"], "pending");
        assert_eq!(r.json[0]["tx_hash"], format!("0x{}", "ab".repeat(32)));
        let r = api.call(Method::GET, "/v1/deposits/d1", Some(&token), None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["confirmations"], 1);

        let r = api
            .call(
                Method::POST,
                "/v1/withdrawals",
                Some(&token),
                Some("w-1"),
                Some(json!({"asset": "ETH", "amount": "400000", "destination": DEST})),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: {}", r.text);
        assert_eq!(r.json["status"], "approved");
        let wid = r.json["id"].as_str().unwrap().to_string();
        assert!(wid.starts_with("w_"), "{name}: {wid}");

        let r = api.call(Method::GET, "/v1/balances", Some(&token), None, None).await;
        assert_eq!(r.json[0]["available"], "600000", "{name}");
        assert_eq!(r.json[0]["held"], "400000", "{name}");

        let r = api.call(Method::GET, &format!("/v1/withdrawals/{wid}"), Some(&token), None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["amount"], "400000");
        assert_eq!(r.json["destination"], DEST_LOWER);
        assert_eq!(r.json["status"], "approved");
        assert_eq!(r.json["tx_hash"], Value::Null);
        let row = api.ts.store.withdrawal(&wid).await.unwrap().unwrap();
        assert_eq!(row.source_wallet, HOT_WALLET);
        assert_eq!(row.intent_hash.len(), 64);

        let r2 = api
            .call(
                Method::POST,
                "/v1/withdrawals",
                Some(&token),
                Some("w-2"),
                Some(json!({"asset": "ETH", "amount": "1", "destination": DEST})),
            )
            .await;
        assert_eq!(r2.status, StatusCode::ACCEPTED, "{name}: {}", r2.text);
        let r = api.call(Method::GET, "/v1/withdrawals", Some(&token), None, None).await;
        let ids: Vec<&str> = r.json.as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [r2.json["id"].as_str().unwrap(), wid.as_str()], "{name}: newest first");
        let r = api.call(Method::GET, "/v1/withdrawals?limit=1", Some(&token), None, None).await;
        assert_eq!(r.json.as_array().unwrap().len(), 1, "{name}");

        api.ts.store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// A3: every kind of bad withdrawal input gets a 4xx problem+json naming the field, and the ledger (every
/// balance, the journal length) and the withdrawals table are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_bad_withdrawal_input_is_refused_and_ledger_unchanged() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token) = api.register_and_login("carol@example.com").await;
        api.fund(&cid, "d1", 1_000).await;
        // A withdrawal under key "used" exists, for the reused-key case.
        let r = api
            .call(
                Method::POST,
                "/v1/withdrawals",
                Some(&token),
                Some("used"),
                Some(json!({"asset": "ETH", "amount": "10", "destination": DEST})),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: {}", r.text);

        let body =
            |amount: Value, destination: &str| json!({"asset": "ETH", "amount": amount, "destination": destination});
        let cases: Vec<(&str, Option<&str>, Value, StatusCode, &str)> = vec![
            (
                "malformed address",
                Some("k1"),
                body(json!("5"), "0x1234"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "destination",
            ),
            (
                "wrong-checksum address",
                Some("k2"),
                body(json!("5"), "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "destination",
            ),
            ("amount 0", Some("k3"), body(json!("0"), DEST), StatusCode::UNPROCESSABLE_ENTITY, "amount"),
            ("amount -5", Some("k4"), body(json!("-5"), DEST), StatusCode::UNPROCESSABLE_ENTITY, "amount"),
            ("amount 1.5", Some("k5"), body(json!("1.5"), DEST), StatusCode::UNPROCESSABLE_ENTITY, "amount"),
            ("amount 1e18", Some("k6"), body(json!("1e18"), DEST), StatusCode::UNPROCESSABLE_ENTITY, "amount"),
            ("amount empty", Some("k7"), body(json!(""), DEST), StatusCode::UNPROCESSABLE_ENTITY, "amount"),
            ("amount as JSON number", Some("k8"), body(json!(5), DEST), StatusCode::UNPROCESSABLE_ENTITY, "amount"),
            ("above balance", Some("k9"), body(json!("991"), DEST), StatusCode::UNPROCESSABLE_ENTITY, "amount"),
            (
                "unknown asset",
                Some("k10"),
                json!({"asset": "BTC", "amount": "5", "destination": DEST}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "asset",
            ),
            (
                "missing field",
                Some("k11"),
                json!({"asset": "ETH", "amount": "5"}),
                StatusCode::UNPROCESSABLE_ENTITY,
                "destination",
            ),
            ("missing Idempotency-Key", None, body(json!("5"), DEST), StatusCode::BAD_REQUEST, "Idempotency-Key"),
            (
                "invalid Idempotency-Key",
                Some("no spaces"),
                body(json!("5"), DEST),
                StatusCode::BAD_REQUEST,
                "Idempotency-Key",
            ),
            (
                "reused key, other body",
                Some("used"),
                body(json!("11"), DEST),
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key",
            ),
        ];
        for (case, key, body, status, field) in cases {
            let before = api.ledger_snapshot().await;
            let r = api.call(Method::POST, "/v1/withdrawals", Some(&token), key, Some(body)).await;
            assert_eq!(r.status, status, "{name}: {case}: {}", r.text);
            assert!(r.is_problem(), "{name}: {case}: {:?}", r.headers);
            assert_eq!(r.json["status"], status.as_u16(), "{name}: {case}");
            assert!(r.fields().iter().any(|f| f == field), "{name}: {case}: expected field {field} in {}", r.text);
            assert_eq!(api.ledger_snapshot().await, before, "{name}: {case}: ledger changed");
        }

        // The wrong checksum is named as such.
        let r = api
            .call(
                Method::POST,
                "/v1/withdrawals",
                Some(&token),
                Some("k20"),
                Some(body(json!("5"), "0xF39Fd6e51aad88F6F4ce6aB8827279cffFb92266")),
            )
            .await;
        assert!(r.json["errors"][0]["reason"].as_str().unwrap().contains("checksum"), "{name}: {}", r.text);

        // Raw bodies: oversized, malformed JSON, wrong content type.
        let raw = |ct: &str, body: Vec<u8>| {
            Request::builder()
                .method(Method::POST)
                .uri("/v1/withdrawals")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header("Idempotency-Key", "raw")
                .header(header::CONTENT_TYPE, ct)
                .body(Body::from(body))
                .unwrap()
        };
        let mut big = br#"{"asset":"ETH","amount":"5","destination":""#.to_vec();
        big.extend(std::iter::repeat_n(b'a', 70 * 1024));
        big.extend(br#""}"#);
        for (case, req, status) in [
            ("oversized body", raw("application/json", big), StatusCode::PAYLOAD_TOO_LARGE),
            (
                "malformed JSON",
                raw("application/json", br#"{"asset": "ETH", "amount": "#.to_vec()),
                StatusCode::BAD_REQUEST,
            ),
            ("not JSON content type", raw("text/plain", b"{}".to_vec()), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ] {
            let before = api.ledger_snapshot().await;
            let r = api.send(req).await;
            assert_eq!(r.status, status, "{name}: {case}: {}", r.text);
            assert!(r.is_problem(), "{name}: {case}");
            assert_eq!(api.ledger_snapshot().await, before, "{name}: {case}: ledger changed");
        }

        // Unauthenticated.
        let before = api.ledger_snapshot().await;
        let r = api.call(Method::POST, "/v1/withdrawals", None, Some("k30"), Some(body(json!("5"), DEST))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(r.is_problem());
        assert_eq!(api.ledger_snapshot().await, before, "{name}: unauthenticated: ledger changed");
        assert_eq!(api.balance(&token, "available").await, "990", "{name}");
        assert_eq!(api.balance(&token, "held").await, "10", "{name}");
    }
}

/// A3, M13: the same key and body return the same withdrawal and hold once, also when sent
/// concurrently; a checksummed and a lower-case destination are the same request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_idempotent_replay_returns_same_withdrawal_and_holds_once() {
    for ts in test_stores().await {
        let api = Arc::new(api(ts).await);
        let name = api.ts.name;
        let (cid, token) = api.register_and_login("dave@example.com").await;
        api.fund(&cid, "d1", 1_000).await;
        let body = json!({"asset": "ETH", "amount": "100", "destination": DEST});
        let first = api.call(Method::POST, "/v1/withdrawals", Some(&token), Some("same"), Some(body.clone())).await;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{name}: {}", first.text);
        let journal = api.ledger_snapshot().await.1;
        let lower = json!({"asset": "ETH", "amount": "100", "destination": DEST_LOWER});
        let again = api.call(Method::POST, "/v1/withdrawals", Some(&token), Some("same"), Some(lower)).await;
        assert_eq!(again.status, StatusCode::ACCEPTED, "{name}: {}", again.text);
        assert_eq!(again.json["id"], first.json["id"], "{name}");
        assert_eq!(api.ledger_snapshot().await.1, journal, "{name}: replay posted");
        assert_eq!(api.balance(&token, "held").await, "100", "{name}");

        // Concurrent first requests with one key: one withdrawal, one hold.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (api, token, body) =
                (api.clone(), token.clone(), json!({"asset": "ETH", "amount": "7", "destination": DEST}));
            tasks.push(tokio::spawn(async move {
                let r = api.call(Method::POST, "/v1/withdrawals", Some(&token), Some("race"), Some(body)).await;
                (r.status, r.json["id"].as_str().map(str::to_string), r.text)
            }));
        }
        let mut ids = std::collections::BTreeSet::new();
        for t in tasks {
            let (status, id, text) = t.await.unwrap();
            assert_eq!(status, StatusCode::ACCEPTED, "{name}: {text}");
            ids.insert(id.unwrap());
        }
        assert_eq!(ids.len(), 1, "{name}: {ids:?}");
        assert_eq!(api.balance(&token, "held").await, "107", "{name}");
        assert_eq!(api.balance(&token, "available").await, "893", "{name}");
        api.ts.store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// M1: a customer cannot read another customer's withdrawals or deposits (404, as if absent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_customer_cannot_read_another_customers_records() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (a, token_a) = api.register_and_login("erin@example.com").await;
        let (_, token_b) = api.register_and_login("frank@example.com").await;
        api.fund(&a, "d1", 1_000).await;
        insert_deposit_row(&api.ts.store, "d1", &a, "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266").await;
        let r = api
            .call(
                Method::POST,
                "/v1/withdrawals",
                Some(&token_a),
                Some("x"),
                Some(json!({"asset": "ETH", "amount": "5", "destination": DEST})),
            )
            .await;
        let wid = r.json["id"].as_str().unwrap().to_string();
        for path in
            [format!("/v1/withdrawals/{wid}"), "/v1/deposits/d1".to_string(), "/v1/withdrawals/nope".to_string()]
        {
            let r = api.call(Method::GET, &path, Some(&token_b), None, None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{name}: {path}");
            assert!(r.is_problem(), "{name}: {path}");
        }
        let r = api.call(Method::GET, "/v1/withdrawals", Some(&token_b), None, None).await;
        assert_eq!(r.json, json!([]), "{name}");
        let r = api.call(Method::GET, "/v1/deposits", Some(&token_b), None, None).await;
        assert_eq!(r.json, json!([]), "{name}");
        // Same key under another customer is that customer's own key.
        api.fund(&api.ts.store.session_customer(&token_b).await, "d2", 50).await;
        let r = api
            .call(
                Method::POST,
                "/v1/withdrawals",
                Some(&token_b),
                Some("x"),
                Some(json!({"asset": "ETH", "amount": "6", "destination": DEST})),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{name}: {}", r.text);
        assert_ne!(r.json["id"].as_str().unwrap(), wid, "{name}");
    }
}

trait SessionCustomer {
    async fn session_customer(&self, token: &str) -> String;
}

impl SessionCustomer for kinko_store::Store {
    async fn session_customer(&self, token: &str) -> String {
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        self.session(&hash).await.unwrap().unwrap().customer_id
    }
}

/// C2, A3: after a re-org reversal left a receivable (negative position), withdrawals are refused with 409
/// even though the available balance would cover them, and nothing is posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_negative_position_blocks_withdrawals() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token) = api.register_and_login("grace@example.com").await;
        let wallet = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
        api.fund(&cid, "d1", 100).await;
        // The customer spent it (held for a withdrawal), then d1 was re-orged out after credit.
        api.ts
            .store
            .post(postings::withdrawal_hold("wx", &cid, &eth(), Amount::from_base_units(100)), 3)
            .await
            .unwrap();
        let rev = postings::deposit_reversed("d1", &cid, wallet, &eth(), Amount::from_base_units(100), Amount::ZERO);
        api.ts.store.post(rev, 4).await.unwrap();
        api.fund(&cid, "d2", 50).await;
        assert_eq!(api.balance(&token, "receivable").await, "100", "{name}");
        let before = api.ledger_snapshot().await;
        let r = api
            .call(
                Method::POST,
                "/v1/withdrawals",
                Some(&token),
                Some("n1"),
                Some(json!({"asset": "ETH", "amount": "10", "destination": DEST})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert!(r.is_problem());
        assert!(r.json["title"].as_str().unwrap().contains("negative position"), "{name}");
        assert_eq!(api.ledger_snapshot().await, before, "{name}");
    }
}

/// M2, M3: registration validation, duplicate e-mail, login failures indistinguishable, sessions
/// checked (missing, unknown, expired), passwords never echoed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m2_registration_login_and_sessions() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let secret = "short-secret";
        let r = api
            .call(Method::POST, "/v1/customers", None, None, Some(json!({"email": "nope", "password": "short"})))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert_eq!(r.fields(), ["email", "password"], "{name}: {}", r.text);
        let r = api
            .call(
                Method::POST,
                "/v1/customers",
                None,
                None,
                Some(json!({"email": "h@example.com", "password": 123456789012_u64})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert!(!r.text.contains("123456789012"), "{name}: password echoed: {}", r.text);

        let (cid, token) = api.register_and_login("Heidi@Example.com ").await;
        let r = api
            .call(
                Method::POST,
                "/v1/customers",
                None,
                None,
                Some(json!({"email": "heidi@example.com", "password": PASSWORD})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert!(r.is_problem());

        let wrong_pw = api
            .call(
                Method::POST,
                "/v1/sessions",
                None,
                None,
                Some(json!({"email": "heidi@example.com", "password": secret})),
            )
            .await;
        let no_user = api
            .call(
                Method::POST,
                "/v1/sessions",
                None,
                None,
                Some(json!({"email": "nobody@example.com", "password": secret})),
            )
            .await;
        assert_eq!(wrong_pw.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(wrong_pw.text, no_user.text, "{name}: wrong user and wrong password must look the same");
        assert_eq!(wrong_pw.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
        assert!(!wrong_pw.text.contains(secret), "{name}");

        let stored: String = kinko_store::sqlx::query_scalar("SELECT password_hash FROM customers WHERE id = $1")
            .bind(&cid)
            .fetch_one(api.ts.store.pool())
            .await
            .unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{name}: {stored}");
        assert!(!stored.contains(PASSWORD));

        for bad in [None, Some("0".repeat(64)), Some("not-hex".to_string())] {
            let r = api.call(Method::GET, "/v1/balances", bad.as_deref(), None, None).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {bad:?}");
            assert!(r.is_problem());
        }
        // Expired session.
        let expired = "e".repeat(64);
        let hash = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(expired.as_bytes()))
        };
        let session =
            kinko_store::customers::SessionRow { customer_id: cid, auth_level: 1, created_at_ms: 1, expires_at_ms: 2 };
        api.ts.store.insert_session(&hash, &session).await.unwrap();
        let r = api.call(Method::GET, "/v1/balances", Some(&expired), None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}");
        let r = api.call(Method::GET, "/v1/balances", Some(&token), None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}");

        let r =
            api.call(Method::POST, "/v1/deposit-addresses", Some(&token), None, Some(json!({"asset": "DOGE"}))).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert_eq!(r.fields(), ["asset"]);
    }
}

/// M1: health, readiness, metrics, problem+json for unknown routes and methods, and an OpenAPI 3.1
/// document listing every route with the bearer scheme and the problem schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_operations_endpoints_and_openapi_lists_every_route() {
    let ts = kinko_store::testing::sqlite_store().await;
    let api = api(ts).await;
    assert_eq!(api.call(Method::GET, "/healthz", None, None, None).await.status, StatusCode::OK);
    assert_eq!(api.call(Method::GET, "/readyz", None, None, None).await.status, StatusCode::OK);
    let r = api.call(Method::GET, "/no/such/route", None, None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.is_problem());
    let r = api.call(Method::DELETE, "/v1/balances", None, None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.is_problem(), "{:?} {}", r.headers, r.text);

    let r = api.call(Method::GET, "/openapi.json", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for (method, path) in kinko_server::api::ROUTES {
        assert!(doc["paths"][path][method].is_object(), "openapi.json lacks {method} {path}");
    }
    let paths: std::collections::BTreeSet<_> = kinko_server::api::ROUTES.iter().map(|(_, p)| *p).collect();
    assert_eq!(doc["paths"].as_object().unwrap().len(), paths.len(), "documented paths are exactly the routes");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["ProblemBody"].is_object());
    assert!(doc["paths"]["/v1/withdrawals"]["post"]["security"].is_array());

    let r = api.call(Method::GET, "/metrics", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("kinko_http_requests_total"), "{}", r.text);
    assert!(r.text.contains(r#"route="/openapi.json""#), "{}", r.text);
    assert!(r.text.contains(r#"status="405""#), "{}", r.text);
}
