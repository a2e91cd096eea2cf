//! Internal transfers between customers (M7) over the real router, on SQLite and — when
//! `KINKO_TEST_POSTGRES_URL` is set — PostgreSQL: exactly-once under retries with one Idempotency-Key, the
//! ledger verifying after every scenario (A2, A3), refusals that move nothing, notices to both sides in
//! the same transaction (L5), and no customer enumeration through unknown or deleted recipients.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use kinko_core::ledger::{AccountKind, postings};
use kinko_core::{Amount, AssetCode};
use kinko_server::{AppState, Config};
use kinko_store::testing::{TestStore, test_stores};
use serde_json::{Value, json};
use tower::ServiceExt;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const PASSWORD: &str = "correct horse battery staple";
const HOT_WALLET: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const PEER: &str = "192.0.2.9:40000";

struct Api {
    app: Router,
    ts: TestStore,
}

struct Reply {
    status: StatusCode,
    text: String,
    json: Value,
}

impl Reply {
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
    let config =
        Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), "http://127.0.0.1:8545".into());
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
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        // As a customer client: transfers carry the transaction password (U9).
        let body = if support::customer::moves_money(&method, path) {
            body.map(support::customer::with_transaction_password)
        } else {
            body
        };
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(k) = key {
            b = b.header("Idempotency-Key", k);
        }
        let mut req = match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())).unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        req.extensions_mut().insert(ConnectInfo(PEER.parse::<SocketAddr>().unwrap()));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        Reply {
            status,
            text: String::from_utf8_lossy(&bytes).to_string(),
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// A customer who can move money (TOTP, a fresh step-up, the transaction password; U2, U4, U9):
    /// (customer id, token).
    async fn customer(&self, email: &str) -> (String, String) {
        support::customer::ready(&self.app, email, &[]).await
    }

    /// `amount` wei available, as the watcher books a deposit: detected, then confirmed.
    async fn fund(&self, customer: &str, deposit_id: &str, amount: u128) {
        let wallet = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
        let a = Amount::from_base_units(amount);
        self.ts.store.post(postings::deposit_detected(deposit_id, customer, wallet, &eth(), a), 1).await.unwrap();
        self.ts.store.post(postings::deposit_confirmed(deposit_id, customer, &eth(), a), 2).await.unwrap();
    }

    async fn available(&self, customer: &str) -> String {
        let b = self.ts.store.customer_balances(customer).await.unwrap();
        b.get(&(eth(), AccountKind::Available)).map_or("0".into(), |a| a.to_string())
    }

    async fn transfer(&self, token: &str, key: &str, body: Value) -> Reply {
        self.call(Method::POST, "/v1/internal-transfers", Some(token), Some(key), Some(body)).await
    }

    async fn verify(&self) {
        self.ts.store.verify_ledger(|_| {}).await.unwrap_or_else(|e| panic!("{}: ledger: {e}", self.ts.name));
    }

    async fn notices(&self, kind: &str, customer: &str) -> usize {
        let all = self.ts.store.notices_for_customer(customer, 100).await.unwrap();
        all.iter().filter(|n| n.kind == kind).count()
    }
}

#[tokio::test]
async fn m7_transfer_moves_balance_exactly_once_under_retries_with_one_key() {
    for ts in test_stores().await {
        let name = ts.name;
        let a = api(ts).await;
        let (alice, alice_token) = a.customer("alice@example.com").await;
        let (bob, bob_token) = a.customer("bob@example.com").await;
        a.fund(&alice, "d-a1", 1_000).await;
        let body = json!({"to_email": "Bob@Example.com", "asset": "ETH", "amount": "300"});
        let first = a.transfer(&alice_token, "t-1", body.clone()).await;
        assert_eq!(first.status, StatusCode::CREATED, "{name}: {}", first.text);
        assert_eq!(first.json["direction"], "sent");
        assert_eq!(first.json["counterparty_id"], bob.as_str());
        // Retries with the same key, the recipient written differently: the same transfer, no new money.
        for _ in 0..3 {
            let again = a
                .transfer(&alice_token, "t-1", json!({"to_email": "bob@example.com", "asset": "ETH", "amount": "300"}))
                .await;
            assert_eq!(again.status, StatusCode::CREATED, "{name}: {}", again.text);
            assert_eq!(again.json["id"], first.json["id"], "{name}");
        }
        // Concurrent retries too (PostgreSQL: the unique key decides; SQLite: serialised).
        let (r1, r2) =
            tokio::join!(a.transfer(&alice_token, "t-2", body.clone()), a.transfer(&alice_token, "t-2", body.clone()));
        assert_eq!(
            (r1.status, r2.status),
            (StatusCode::CREATED, StatusCode::CREATED),
            "{name}: {} / {}",
            r1.text,
            r2.text
        );
        assert_eq!(r1.json["id"], r2.json["id"], "{name}");
        assert_eq!(a.available(&alice).await, "400", "{name}: two transfers of 300, not more");
        assert_eq!(a.available(&bob).await, "600", "{name}");
        // The same key with another request: 422 naming the header, nothing moves.
        let reused = a
            .transfer(&alice_token, "t-1", json!({"to_email": "bob@example.com", "asset": "ETH", "amount": "1"}))
            .await;
        assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", reused.text);
        assert_eq!(reused.fields(), ["Idempotency-Key"], "{name}");
        assert_eq!(a.available(&alice).await, "400", "{name}");
        // Notices: one per side per transfer, enqueued with the money.
        assert_eq!(a.notices("internal_transfer_sent", &alice).await, 2, "{name}");
        assert_eq!(a.notices("internal_transfer_received", &bob).await, 2, "{name}");
        // Both sides list it, from their own point of view.
        let list = a.call(Method::GET, "/v1/internal-transfers", Some(&bob_token), None, None).await;
        assert_eq!(list.status, StatusCode::OK, "{name}: {}", list.text);
        let rows = list.json.as_array().unwrap();
        assert_eq!(rows.len(), 2, "{name}");
        assert!(rows.iter().all(|r| r["direction"] == "received" && r["counterparty_id"] == alice.as_str()), "{name}");
        let list = a.call(Method::GET, "/v1/internal-transfers", Some(&alice_token), None, None).await;
        assert!(list.json.as_array().unwrap().iter().all(|r| r["direction"] == "sent"), "{name}");
        // By customer id works the same.
        let by_id =
            a.transfer(&bob_token, "back-1", json!({"to_customer_id": alice, "asset": "ETH", "amount": "600"})).await;
        assert_eq!(by_id.status, StatusCode::CREATED, "{name}: {}", by_id.text);
        assert_eq!(a.available(&alice).await, "1000", "{name}");
        assert_eq!(a.available(&bob).await, "0", "{name}");
        a.verify().await;
    }
}

#[tokio::test]
async fn m7_over_balance_zero_and_self_transfers_refused_and_nothing_moves() {
    for ts in test_stores().await {
        let name = ts.name;
        let a = api(ts).await;
        let (alice, alice_token) = a.customer("alice@example.com").await;
        let (bob, _) = a.customer("bob@example.com").await;
        a.fund(&alice, "d-a1", 100).await;
        let over = a
            .transfer(&alice_token, "o-1", json!({"to_email": "bob@example.com", "asset": "ETH", "amount": "101"}))
            .await;
        assert_eq!(over.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", over.text);
        assert_eq!(over.fields(), ["amount"], "{name}");
        for amount in ["0", "-5", "1.5", ""] {
            let bad = a
                .transfer(&alice_token, "z-1", json!({"to_email": "bob@example.com", "asset": "ETH", "amount": amount}))
                .await;
            assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{name} {amount:?}: {}", bad.text);
            assert_eq!(bad.fields(), ["amount"], "{name} {amount:?}");
        }
        let number =
            a.transfer(&alice_token, "z-2", json!({"to_email": "bob@example.com", "asset": "ETH", "amount": 5})).await;
        assert_eq!(number.fields(), ["amount"], "{name}: {}", number.text);
        let me = a
            .transfer(&alice_token, "s-1", json!({"to_email": "ALICE@example.com", "asset": "ETH", "amount": "1"}))
            .await;
        assert_eq!(me.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", me.text);
        assert_eq!(me.fields(), ["to_email"], "{name}");
        let me = a.transfer(&alice_token, "s-2", json!({"to_customer_id": alice, "asset": "ETH", "amount": "1"})).await;
        assert_eq!(me.fields(), ["to_customer_id"], "{name}: {}", me.text);
        let unsupported = a
            .transfer(&alice_token, "u-1", json!({"to_email": "bob@example.com", "asset": "BTC", "amount": "1"}))
            .await;
        assert_eq!(unsupported.fields(), ["asset"], "{name}: {}", unsupported.text);
        let no_key = a
            .call(
                Method::POST,
                "/v1/internal-transfers",
                Some(&alice_token),
                None,
                Some(json!({"to_email": "bob@example.com", "asset": "ETH", "amount": "1"})),
            )
            .await;
        assert_eq!(no_key.status, StatusCode::BAD_REQUEST, "{name}: {}", no_key.text);
        let anonymous = a.call(Method::POST, "/v1/internal-transfers", None, Some("k"), Some(json!({}))).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(a.available(&alice).await, "100", "{name}: nothing moved");
        assert_eq!(a.available(&bob).await, "0", "{name}");
        assert_eq!(a.notices("internal_transfer_sent", &alice).await, 0, "{name}");
        a.verify().await;
        // A refused request stored nothing: the same key may carry a valid request afterwards.
        let ok = a
            .transfer(&alice_token, "o-1", json!({"to_email": "bob@example.com", "asset": "ETH", "amount": "100"}))
            .await;
        assert_eq!(ok.status, StatusCode::CREATED, "{name}: {}", ok.text);
        assert_eq!(a.available(&alice).await, "0", "{name}");
        a.verify().await;
    }
}

#[tokio::test]
async fn m7_unknown_and_deleted_recipients_get_one_answer() {
    for ts in test_stores().await {
        let name = ts.name;
        let a = api(ts).await;
        let (alice, alice_token) = a.customer("alice@example.com").await;
        let (_, carol_token) = a.customer("carol@example.com").await;
        a.fund(&alice, "d-a1", 100).await;
        let deleted =
            a.call(Method::DELETE, "/v1/account", Some(&carol_token), None, Some(json!({"password": PASSWORD}))).await;
        assert_eq!(deleted.status, StatusCode::OK, "{name}: {}", deleted.text);
        let unknown = a
            .transfer(&alice_token, "x-1", json!({"to_email": "nobody@example.com", "asset": "ETH", "amount": "1"}))
            .await;
        let gone = a
            .transfer(&alice_token, "x-2", json!({"to_email": "carol@example.com", "asset": "ETH", "amount": "1"}))
            .await;
        assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", unknown.text);
        assert_eq!(unknown.status, gone.status, "{name}");
        assert_eq!(unknown.json, gone.json, "{name}: unknown and deleted answer alike");
        assert_eq!(unknown.fields(), ["to_email"], "{name}");
        let custodian = a
            .transfer(
                &alice_token,
                "x-3",
                json!({"to_customer_id": kinko_core::withdrawal::CUSTODIAN_CUSTOMER_ID, "asset": "ETH", "amount": "1"}),
            )
            .await;
        assert_eq!(custodian.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", custodian.text);
        assert_eq!(custodian.fields(), ["to_customer_id"], "{name}");
        // A probe needs funds: with too little balance the answer is about the amount, not the recipient.
        let probe = a
            .transfer(&alice_token, "x-4", json!({"to_email": "nobody@example.com", "asset": "ETH", "amount": "1000"}))
            .await;
        assert_eq!(probe.fields(), ["amount"], "{name}: {}", probe.text);
        assert_eq!(a.available(&alice).await, "100", "{name}");
        a.verify().await;
    }
}

#[tokio::test]
async fn m7_negative_position_blocks_transfers_like_withdrawals() {
    for ts in test_stores().await {
        let name = ts.name;
        let a = api(ts).await;
        let (alice, alice_token) = a.customer("alice@example.com").await;
        a.customer("bob@example.com").await;
        a.fund(&alice, "d-a1", 100).await;
        a.fund(&alice, "d-a2", 50).await;
        // A deep re-org reverses d-a2 after alice spent it: 100 spent first, so 50 becomes a receivable.
        let spend = a
            .transfer(&alice_token, "t-1", json!({"to_email": "bob@example.com", "asset": "ETH", "amount": "120"}))
            .await;
        assert_eq!(spend.status, StatusCode::CREATED, "{name}: {}", spend.text);
        let wallet = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
        a.ts.store
            .post(
                postings::deposit_reversed(
                    "d-a2",
                    &alice,
                    wallet,
                    &eth(),
                    Amount::from_base_units(50),
                    Amount::from_base_units(30),
                ),
                3,
            )
            .await
            .unwrap();
        a.fund(&alice, "d-a3", 10).await;
        let blocked = a
            .transfer(&alice_token, "t-2", json!({"to_email": "bob@example.com", "asset": "ETH", "amount": "1"}))
            .await;
        assert_eq!(blocked.status, StatusCode::CONFLICT, "{name}: {}", blocked.text);
        assert_eq!(
            blocked.json["type"].as_str(),
            Some("urn:kinko:problem:negative-position"),
            "{name}: {}",
            blocked.text
        );
        assert_eq!(a.available(&alice).await, "10", "{name}");
        a.verify().await;
    }
}
