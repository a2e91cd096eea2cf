//! Address book and wallet binding through the HTTP API in process, on SQLite and — when
//! `KINKO_TEST_POSTGRES_URL` is set — PostgreSQL. Requirement IDs: U13 (saved destinations with
//! cooling-off; a self-hosted wallet bound by an EIP-191 signature over a server challenge, re-bound after a
//! migration), U4 (changes need a fresh step-up), U10 (the customer is told of changes).
//!
//! Wallets sign with kinko-signer's `SoftwareKey` (k256, RFC 6979) over alloy's EIP-191 message hash, as a
//! real wallet's `personal_sign` does; the server recovers with alloy.

use std::sync::Arc;

use alloy_primitives::eip191_hash_message;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use kinko_server::api::address_book::{DestinationCheck, check_destination};
use kinko_server::{AppState, Config};
use kinko_signer::{SecpKey, SoftwareKey};
use kinko_store::testing::{TestStore, test_stores};
use serde_json::{Value, json};
use tower::ServiceExt;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const HOT_WALLET: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const PASSWORD: &str = "correct horse battery staple";
/// EIP-55 spelling of anvil's account 1.
const DEST_CHECKSUMMED: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const DEST: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
const COOLING_OFF_MS: u64 = 3_600_000;

struct Api {
    app: Router,
    state: AppState,
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
    fn slug(&self) -> String {
        self.json["type"].as_str().unwrap_or_default().rsplit(':').next().unwrap_or_default().to_string()
    }
}

async fn api(ts: TestStore) -> Api {
    let mut config =
        Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), "http://127.0.0.1:8545".into());
    config.address_book.cooling_off_ms = COOLING_OFF_MS;
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
    Api { app: kinko_server::api::router(state.clone()), state, ts }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

/// A wallet's `personal_sign`: EIP-191 hash of the text, signed by a real secp256k1 key, v as 27/28.
fn personal_sign(key: &SoftwareKey, message: &str) -> String {
    let mut sig = key.sign_prehash(&eip191_hash_message(message.as_bytes()).0).unwrap();
    sig[64] += 27;
    format!("0x{}", hex::encode(sig))
}

fn wallet(seed: u8) -> SoftwareKey {
    SoftwareKey::from_secret(&[seed; 32]).unwrap()
}

impl Api {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())).unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, text, json }
    }

    async fn login(&self, email: &str) -> String {
        let r =
            self.call(Method::POST, "/v1/sessions", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", self.ts.name, r.text);
        r.json["token"].as_str().unwrap().to_string()
    }

    /// Registers, logs in and enrols TOTP; returns (customer id, token, recovery codes for step-ups).
    async fn customer(&self, email: &str) -> (String, String, Vec<String>) {
        let name = self.ts.name;
        let r =
            self.call(Method::POST, "/v1/customers", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        let token = self.login(email).await;
        let r = self.call(Method::POST, "/v1/mfa/totp", Some(&token), Some(json!({"password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let totp = totp_rs::Totp::from_url(r.json["otpauth_uri"].as_str().unwrap()).unwrap();
        let enrolment_id = r.json["enrolment_id"].as_str().unwrap().to_string();
        let code = totp.generate(now_secs()).to_string();
        let body = json!({"enrolment_id": enrolment_id, "code": code});
        let r = self.call(Method::POST, "/v1/mfa/totp/confirm", Some(&token), Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let codes = r.json["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string());
        (id, token, codes.collect())
    }

    async fn step_up(&self, token: &str, codes: &mut Vec<String>) {
        let code = codes.pop().expect("a recovery code left");
        let body = json!({"method": "recovery_code", "code": code});
        let r = self.call(Method::POST, "/v1/sessions/step-up", Some(token), Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", self.ts.name, r.text);
    }

    async fn add(&self, token: &str, label: &str, address: &str) -> Reply {
        let body = json!({"label": label, "asset": "ETH", "address": address});
        self.call(Method::POST, "/v1/address-book", Some(token), Some(body)).await
    }

    async fn check(&self, customer_id: &str, address: &str, at_ms: i64) -> DestinationCheck {
        check_destination(&self.state, customer_id, &"ETH".parse().unwrap(), address, at_ms).await.unwrap()
    }

    async fn notice_kinds(&self, customer_id: &str) -> Vec<String> {
        let notices = self.ts.store.notices_for_customer(customer_id, 100).await.unwrap();
        notices.into_iter().map(|n| n.kind).collect()
    }

    async fn challenge(&self, token: &str, address: &str) -> (String, String) {
        let r =
            self.call(Method::POST, "/v1/wallet-bindings/challenge", Some(token), Some(json!({"address": address})));
        let r = r.await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", self.ts.name, r.text);
        (r.json["challenge_id"].as_str().unwrap().to_string(), r.json["message"].as_str().unwrap().to_string())
    }

    async fn bind(&self, token: &str, body: Value) -> Reply {
        self.call(Method::POST, "/v1/wallet-bindings", Some(token), Some(body)).await
    }
}

/// U13, U4, U10: adding a destination needs a fresh step-up (a stolen session alone gets 403 and saves
/// nothing); the entry is usable after the cooling-off; a notice is written with it; EIP-55 checksum
/// errors are named; removal needs a step-up too and notifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u13_address_book_add_needs_step_up_notifies_and_cools_off() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token, mut codes) = api.customer("alice@example.com").await;

        let r = api.add(&token, "cold", DEST_CHECKSUMMED).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: a session without step-up: {}", r.text);
        assert_eq!(r.slug(), "step-up-required", "{name}");
        assert!(
            api.call(Method::GET, "/v1/address-book", Some(&token), None).await.json.as_array().unwrap().is_empty()
        );
        assert!(!api.notice_kinds(&cid).await.contains(&"address_book_added".to_string()), "{name}");
        assert!(api.add("", "cold", DEST).await.status == StatusCode::UNAUTHORIZED, "{name}");

        api.step_up(&token, &mut codes).await;
        // Mixed case with a wrong checksum is refused, naming the field and EIP-55.
        let r = api.add(&token, "typo", "0x70997970C51812dc3A010C7d01b50e0d17dc79c8").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert_eq!(r.fields(), ["address"], "{name}");
        assert!(r.text.contains("EIP-55"), "{name}: {}", r.text);
        let r = api.add(&token, "", "0x1234").await;
        assert_eq!(r.fields(), ["label", "address"], "{name}: {}", r.text);

        let before = now_ms();
        let r = api.add(&token, "cold", DEST_CHECKSUMMED).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let entry_id = r.json["id"].as_str().unwrap().to_string();
        assert_eq!(r.json["address"], DEST, "{name}: stored normalised");
        assert_eq!(r.json["usable"], false, "{name}");
        let created = r.json["created_at_ms"].as_i64().unwrap();
        assert!(created >= before, "{name}");
        assert_eq!(r.json["usable_at_ms"].as_i64().unwrap(), created + COOLING_OFF_MS as i64, "{name}");
        // The same destination (any spelling) twice is a conflict.
        let r = api.add(&token, "again", DEST).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert_eq!(r.slug(), "address-book-duplicate", "{name}");

        // The notice went into the outbox with the entry, addressed to the customer.
        let notices = api.ts.store.notices_for_customer(&cid, 100).await.unwrap();
        let added: Vec<_> = notices.iter().filter(|n| n.kind == "address_book_added").collect();
        assert_eq!(added.len(), 1, "{name}");
        assert_eq!(added[0].recipient, "alice@example.com", "{name}");
        assert_eq!(added[0].dedupe_key, entry_id, "{name}");
        assert!(added[0].body.contains(DEST_CHECKSUMMED), "{name}: {}", added[0].body);

        let list = api.call(Method::GET, "/v1/address-book", Some(&token), None).await;
        assert_eq!(list.json.as_array().unwrap().len(), 1, "{name}: {}", list.text);
        assert_eq!(list.json[0]["label"], "cold", "{name}");

        // Removal: a new session (not stepped up) cannot; a stepped-up one can, and it is notified.
        let other = api.login("alice@example.com").await;
        let r = api.call(Method::DELETE, &format!("/v1/address-book/{entry_id}"), Some(&other), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        let r = api.call(Method::DELETE, "/v1/address-book/ab_nope", Some(&token), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{name}");
        let r = api.call(Method::DELETE, &format!("/v1/address-book/{entry_id}"), Some(&token), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{name}: {}", r.text);
        let r = api.call(Method::DELETE, &format!("/v1/address-book/{entry_id}"), Some(&token), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{name}: removed once");
        assert!(api.notice_kinds(&cid).await.contains(&"address_book_removed".to_string()), "{name}");
        assert_eq!(api.check(&cid, DEST, now_ms() + 10 * COOLING_OFF_MS as i64).await, DestinationCheck::NotSaved);
        // Another customer's entry is 404 to them.
        let (_, bob, mut bob_codes) = api.customer("bob@example.com").await;
        api.step_up(&bob, &mut bob_codes).await;
        let r = api.add(&token, "cold", DEST).await;
        let alice_entry = r.json["id"].as_str().unwrap().to_string();
        let r = api.call(Method::DELETE, &format!("/v1/address-book/{alice_entry}"), Some(&bob), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{name}");
    }
}

/// U13: `check_destination` reports cooling-off until exactly `usable_at_ms`, usable from then on, and
/// not-saved for another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u13_cooling_off_boundary_in_check_destination() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token, mut codes) = api.customer("carol@example.com").await;
        api.step_up(&token, &mut codes).await;
        let r = api.add(&token, "exchange", DEST).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        let usable_at = r.json["usable_at_ms"].as_i64().unwrap();
        let cooling = DestinationCheck::CoolingOff { entry_id: id.clone(), usable_at_ms: usable_at };
        assert_eq!(api.check(&cid, DEST_CHECKSUMMED, usable_at - 1).await, cooling, "{name}");
        assert!(!cooling.is_usable());
        let usable = api.check(&cid, DEST, usable_at).await;
        assert_eq!(usable, DestinationCheck::Usable { entry_id: id }, "{name}");
        assert!(usable.is_usable());
        let unknown = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
        assert_eq!(api.check(&cid, unknown, usable_at).await, DestinationCheck::NotSaved, "{name}");
        let bad = check_destination(
            &api.state,
            &cid,
            &"ETH".parse().unwrap(),
            "0x70997970C51812dc3A010C7d01b50e0d17dc79c8",
            0,
        )
        .await
        .unwrap_err();
        assert_eq!(bad.body.errors[0].field, "destination", "{name}");
    }
}

/// U13: a wallet is bound by its EIP-191 signature over the server's challenge plus a step-up; a wrong
/// signer is refused and uses the challenge up; a used or expired challenge is refused; another customer's
/// challenge is unknown; the bound wallet is a destination without cooling-off, and the customer is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u13_wallet_binding_real_signature_wrong_signer_expired_and_reused_challenge() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token, mut codes) = api.customer("dave@example.com").await;
        let key = wallet(0x11);
        let address = key.address();
        let (challenge_id, message) = api.challenge(&token, &address).await;
        assert!(message.contains(&cid) && message.contains(&challenge_id), "{name}: {message}");
        assert!(message.contains("localhost"), "{name}: names the site: {message}");

        // Without step-up (and without a migration signature): 403, challenge untouched.
        let good =
            json!({"address": address, "challenge_id": challenge_id, "signature": personal_sign(&key, &message)});
        let r = api.bind(&token, good.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert_eq!(r.slug(), "step-up-required", "{name}");
        api.step_up(&token, &mut codes).await;

        // A signature by another key: refused naming the field, and the challenge is used up.
        let thief = wallet(0x22);
        let wrong =
            json!({"address": address, "challenge_id": challenge_id, "signature": personal_sign(&thief, &message)});
        let r = api.bind(&token, wrong).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert_eq!((r.slug().as_str(), r.fields()), ("wallet-signature-invalid", vec!["signature".to_string()]));
        let r = api.bind(&token, good).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: single use: {}", r.text);
        assert_eq!(r.slug(), "challenge-used", "{name}");

        // The right key over other text (not the challenge) is refused too.
        let (challenge_id, message) = api.challenge(&token, &address).await;
        let other_text =
            json!({"address": address, "challenge_id": challenge_id, "signature": personal_sign(&key, "hello")});
        assert_eq!(api.bind(&token, other_text).await.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        let _ = message;

        // Malformed signature and an address other than the challenge's: named, challenge kept.
        let (challenge_id, message) = api.challenge(&token, &address).await;
        let r = api.bind(&token, json!({"address": address, "challenge_id": challenge_id, "signature": "0x12"})).await;
        assert_eq!(r.fields(), ["signature"], "{name}: {}", r.text);
        let sig = personal_sign(&key, &message);
        let r = api.bind(&token, json!({"address": DEST, "challenge_id": challenge_id, "signature": sig})).await;
        assert_eq!(r.fields(), ["address"], "{name}: {}", r.text);

        // Expired.
        kinko_store::sqlx::query("UPDATE wallet_binding_challenges SET expires_at_ms = $1 WHERE id = $2")
            .bind(now_ms() - 1)
            .bind(&challenge_id)
            .execute(api.ts.store.pool())
            .await
            .unwrap();
        let r = api.bind(&token, json!({"address": address, "challenge_id": challenge_id, "signature": sig})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert_eq!((r.slug().as_str(), r.fields()), ("challenge-expired", vec!["challenge_id".to_string()]));

        // Another customer cannot use this customer's challenge.
        let (_, eve, mut eve_codes) = api.customer("eve@example.com").await;
        api.step_up(&eve, &mut eve_codes).await;
        let (challenge_id, message) = api.challenge(&token, &address).await;
        let sig = personal_sign(&key, &message);
        let body = json!({"address": address, "challenge_id": challenge_id, "signature": sig});
        let r = api.bind(&eve, body.clone()).await;
        assert_eq!(r.slug(), "unknown-challenge", "{name}: {}", r.text);

        // The real thing.
        let r = api.bind(&token, body.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!(r.json["address"], address, "{name}");
        assert_eq!(r.json["proof"], "step_up", "{name}");
        let binding_id = r.json["id"].as_str().unwrap().to_string();
        let r = api.bind(&token, body).await;
        assert_eq!(r.slug(), "challenge-used", "{name}: replay of a successful binding");
        // A bound wallet is usable at once: no cooling-off.
        assert_eq!(api.check(&cid, &address, now_ms()).await, DestinationCheck::BoundWallet { binding_id });
        assert!(api.notice_kinds(&cid).await.contains(&"wallet_bound".to_string()), "{name}");
        let list = api.call(Method::GET, "/v1/wallet-bindings", Some(&token), None).await;
        assert_eq!(list.json[0]["address"], address, "{name}: {}", list.text);

        // Open challenges per customer are bounded (each one is a stored row).
        let mut refused = None;
        for _ in 0..=kinko_store::address_book::OPEN_CHALLENGES_MAX {
            let r = api.call(
                Method::POST,
                "/v1/wallet-bindings/challenge",
                Some(&token),
                Some(json!({"address": address})),
            );
            let r = r.await;
            if r.status != StatusCode::CREATED {
                refused = Some(r);
                break;
            }
        }
        let r = refused.expect("the bound is reached");
        assert_eq!((r.status, r.slug().as_str()), (StatusCode::TOO_MANY_REQUESTS, "too-many-challenges"), "{name}");
    }
}

/// U13: after a wallet migration the new wallet is bound without a step-up when the old bound wallet signs
/// the same challenge; a migration signature from any other key is refused; the old wallet is unbound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u13_wallet_rebinding_after_migration_signed_by_the_old_wallet() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token, mut codes) = api.customer("frank@example.com").await;
        let old = wallet(0x31);
        let new = wallet(0x32);
        api.step_up(&token, &mut codes).await;
        let (id, message) = api.challenge(&token, &old.address()).await;
        let r = api
            .bind(
                &token,
                json!({"address": old.address(), "challenge_id": id, "signature": personal_sign(&old, &message)}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let old_binding = r.json["id"].as_str().unwrap().to_string();

        // A fresh session, no step-up: the migration proof must come from the old wallet.
        let session = api.login("frank@example.com").await;
        let (id, message) = api.challenge(&session, &new.address()).await;
        let forged = json!({
            "address": new.address(), "challenge_id": id,
            "signature": personal_sign(&new, &message),
            "previous_signature": personal_sign(&wallet(0x33), &message),
        });
        let r = api.bind(&session, forged).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert_eq!(r.fields(), ["previous_signature"], "{name}");
        assert!(matches!(api.check(&cid, &old.address(), now_ms()).await, DestinationCheck::BoundWallet { .. }));

        let (id, message) = api.challenge(&session, &new.address()).await;
        let body = json!({
            "address": new.address(), "challenge_id": id,
            "signature": personal_sign(&new, &message),
            "previous_signature": personal_sign(&old, &message),
        });
        let r = api.bind(&session, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!(r.json["proof"], "migration", "{name}");
        let binding = api.ts.store.live_wallet_binding(&cid).await.unwrap().unwrap();
        assert_eq!(binding.previous_binding_id.as_deref(), Some(old_binding.as_str()), "{name}");
        assert_eq!(api.check(&cid, &old.address(), now_ms()).await, DestinationCheck::NotSaved, "{name}: unbound");
        assert!(matches!(api.check(&cid, &new.address(), now_ms()).await, DestinationCheck::BoundWallet { .. }));

        // A migration signature with nothing bound (another customer) is refused, naming the field.
        let (_, other, _) = api.customer("grace@example.com").await;
        let (id, message) = api.challenge(&other, &new.address()).await;
        let body = json!({
            "address": new.address(), "challenge_id": id,
            "signature": personal_sign(&new, &message), "previous_signature": personal_sign(&old, &message),
        });
        let r = api.bind(&other, body).await;
        assert_eq!(r.fields(), ["previous_signature"], "{name}: {}", r.text);
    }
}
