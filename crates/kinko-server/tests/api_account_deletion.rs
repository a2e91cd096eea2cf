//! Account deletion (U5) and its restore by operators within the rollback window (U6), over the real
//! router with a real in-process signer, on SQLite and — when `KINKO_TEST_POSTGRES_URL` is set —
//! PostgreSQL. Deletion: re-authentication, refusal while funds remain, sessions dead, login refused
//! exactly like a wrong password, balances and deposit addresses kept and still credited. Restore: only by
//! an operator request (signing operator requests, operations manager approves), only within the window;
//! the customer can never restore themselves.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use ed25519_dalek::SigningKey;
use kinko_core::ledger::{AccountKind, postings};
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_core::{Amount, AssetCode};
use kinko_server::api;
use kinko_server::{AppState, Config};
use kinko_signer::approvals::sign_approval;
use kinko_signer::{LocalSigner, Signer, StoreJournal};
use kinko_store::account_deletion::RestoreCustomerError;
use kinko_store::notices::NewNotice;
use kinko_store::operators::RegistryLogRow;
use kinko_store::testing::{TestStore, test_stores};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const PASSWORD: &str = "correct horse battery staple";
const PEER: &str = "192.0.2.7:40000";
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

struct Ops {
    app: Router,
    signer: Arc<LocalSigner>,
    ts: TestStore,
    /// operator id → (approval key, bearer token, TOTP)
    people: std::collections::BTreeMap<String, Person>,
}

#[derive(Clone)]
struct Person {
    key: SigningKey,
    token: String,
}

struct Reply {
    status: StatusCode,
    text: String,
    json: Value,
}

fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

async fn ops(ts: TestStore) -> Ops {
    ops_with(ts, |_| {}).await
}

async fn ops_with(ts: TestStore, tweak: impl FnOnce(&mut Config)) -> Ops {
    let mut config =
        Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), "http://127.0.0.1:8545".into());
    tweak(&mut config);
    let seed = bip39::Mnemonic::parse(TEST_MNEMONIC).unwrap().to_seed("");
    let master = kinko_keys::hd::master_from_seed(&seed).unwrap();
    let xpub = kinko_keys::hd::evm_deposit_xpub(&master).unwrap();
    let signer = Arc::new(LocalSigner::new(Arc::new(StoreJournal(ts.store.clone()))));
    let state = AppState {
        store: ts.store.clone(),
        config: Arc::new(config),
        deposit_xpub: Arc::new(xpub),
        hot_wallet: "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".into(),
        signer: signer.clone(),
    };
    Ops { app: api::router(state), signer, ts, people: Default::default() }
}

impl Ops {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
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

    fn token(&self, id: &str) -> String {
        self.people[id].token.clone()
    }

    /// Change 0 as `kinko init --first-admin` writes it: on the signer and in the server's log, plus the
    /// first administrator's account with a known enrolment token.
    async fn genesis(&mut self, admin: &str, seed: u8) {
        let k = key(seed);
        let change = RegistryChange {
            seq: 0,
            prev_hash: [0; 32],
            requested_by: admin.into(),
            requested_at_ms: now_ms() - 1000,
            change: RegistryChangeKind::AddOperator {
                operator_id: admin.into(),
                approval_public_key_hex: hex::encode(k.verifying_key().to_bytes()),
                role: Role::Administrator,
                expires_at_ms: None,
            },
        };
        let approval = sign_approval(&k, admin, &change.subject().unwrap(), Decision::Approve).unwrap();
        self.signer.apply_registry_change(&change, std::slice::from_ref(&approval)).await.unwrap();
        self.ts
            .store
            .append_registry_log(&RegistryLogRow {
                seq: 0,
                hash: hex::encode(change.hash().unwrap()),
                change_json: serde_json::to_string(&change).unwrap(),
                approvals_json: serde_json::to_string(&[approval]).unwrap(),
                applied_at_ms: now_ms() - 500,
            })
            .await
            .unwrap();
        let token = "genesis-enrolment-token";
        self.ts.store.create_operator_account(admin, &sha256_hex(token), now_ms() + 60_000, now_ms()).await.unwrap();
        self.enrol_and_login(admin, token, k).await;
    }

    async fn enrol(&self, id: &str, enrolment_token: &str) -> totp_rs::Totp {
        let r = self
            .call(
                Method::POST,
                "/v1/ops/enrolments",
                None,
                Some(json!({"operator_id": id, "enrolment_token": enrolment_token, "password": PASSWORD})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", self.ts.name, r.text);
        totp_rs::Totp::from_url(r.json["totp_uri"].as_str().unwrap()).unwrap()
    }

    async fn login(&self, id: &str, totp: &totp_rs::Totp, offset_secs: u64) -> Reply {
        let code = totp.generate(now_secs() + offset_secs).to_string();
        self.call(
            Method::POST,
            "/v1/ops/sessions",
            None,
            Some(json!({"operator_id": id, "password": PASSWORD, "totp_code": code})),
        )
        .await
    }

    async fn enrol_and_login(&mut self, id: &str, enrolment_token: &str, k: SigningKey) {
        let totp = self.enrol(id, enrolment_token).await;
        let r = self.login(id, &totp, 0).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", self.ts.name, r.text);
        let token = r.json["token"].as_str().unwrap().to_string();
        self.people.insert(id.into(), Person { key: k, token });
    }

    /// `requester` asks for a registry change; `approver` (if any) approves it. Returns the last reply.
    async fn registry_change(&self, requester: &str, approver: Option<&str>, kind: RegistryChangeKind) -> Reply {
        let head = self.call(Method::GET, "/v1/ops/registry/head", Some(&self.token(requester)), None).await;
        assert_eq!(head.status, StatusCode::OK, "{}", head.text);
        let mut prev = [0u8; 32];
        hex::decode_to_slice(head.json["prev_hash"].as_str().unwrap(), &mut prev).unwrap();
        let change = RegistryChange {
            seq: head.json["next_seq"].as_u64().unwrap(),
            prev_hash: prev,
            requested_by: requester.into(),
            requested_at_ms: now_ms(),
            change: kind,
        };
        let subject = change.subject().unwrap();
        let sig = sign_approval(&self.people[requester].key, requester, &subject, Decision::Approve).unwrap();
        let r = self
            .call(
                Method::POST,
                "/v1/ops/registry-changes",
                Some(&self.token(requester)),
                Some(json!({"change": change, "signature_hex": sig.signature_hex})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", self.ts.name, r.text);
        match approver {
            None => r,
            Some(a) => self.decide(a, &change.request_id(), Decision::Approve).await,
        }
    }

    /// Adds an operator through the API (admin1 requests, admin2 approves once there are two) and logs
    /// them in.
    async fn add(&mut self, id: &str, role: Role, seed: u8, expires_at_ms: Option<i64>) {
        let k = key(seed);
        let kind = RegistryChangeKind::AddOperator {
            operator_id: id.into(),
            approval_public_key_hex: hex::encode(k.verifying_key().to_bytes()),
            role,
            expires_at_ms,
        };
        let approver = self.people.contains_key("admin2").then_some("admin2");
        let r = self.registry_change("admin1", approver, kind).await;
        assert_eq!(r.status.as_u16() / 100, 2, "{}: {}", self.ts.name, r.text);
        assert_eq!(r.json["state"], "executed", "{}", r.text);
        let token = r.json["enrolment_token"].as_str().expect("enrolment token shown once").to_string();
        self.enrol_and_login(id, &token, k).await;
    }

    /// The standard staff: two administrators and one person per Table A-1 role (plus a second OM).
    async fn staffed(ts: TestStore) -> Ops {
        Ops::staff(ops(ts).await).await
    }

    async fn staff(mut o: Ops) -> Ops {
        o.genesis("admin1", 1).await;
        o.add("admin2", Role::Administrator, 2, None).await;
        o.add("om1", Role::OperationsManager, 3, None).await;
        o.add("om2", Role::OperationsManager, 4, None).await;
        o.add("sm1", Role::SigningManager, 5, None).await;
        o.add("ko1", Role::KeyOperator, 6, None).await;
        o.add("so1", Role::SigningOperator, 7, None).await;
        o.add("li1", Role::LogInspector, 8, None).await;
        o
    }

    async fn request(&self, who: &str, process: &str, kind: &str, params: Value) -> Reply {
        self.call(
            Method::POST,
            "/v1/ops/requests",
            Some(&self.token(who)),
            Some(json!({"process": process, "kind": kind, "params": params})),
        )
        .await
    }

    /// Signs `decision` on request `id` as `who` over the subject recomputed from the request (as the CLI
    /// does) and posts it.
    async fn decide(&self, who: &str, id: &str, decision: Decision) -> Reply {
        // Read as admin1: `who` may no longer hold a role (that is what some tests check).
        let r = self.call(Method::GET, &format!("/v1/ops/requests/{id}"), Some(&self.token("admin1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let process = Process::parse(r.json["process"].as_str().unwrap()).unwrap();
        let mut hash = [0u8; 32];
        hex::decode_to_slice(r.json["intent_hash"].as_str().unwrap(), &mut hash).unwrap();
        let subject = ApprovalSubject::new(process, id, hash).unwrap();
        let sig = sign_approval(&self.people[who].key, who, &subject, decision).unwrap();
        let d = if decision == Decision::Approve { "approve" } else { "reject" };
        self.call(
            Method::POST,
            &format!("/v1/ops/requests/{id}/approvals"),
            Some(&self.token(who)),
            Some(json!({"decision": d, "signature_hex": sig.signature_hex})),
        )
        .await
    }

    async fn customer(&self, email: &str) -> (String, String) {
        let r =
            self.call(Method::POST, "/v1/customers", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        let r =
            self.call(Method::POST, "/v1/sessions", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        (id, r.json["token"].as_str().unwrap().to_string())
    }
}

fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap()
}

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

const WALLET: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";

impl Ops {
    async fn call_with_key(&self, method: Method, path: &str, token: &str, key: &str, body: Value) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("Idempotency-Key", key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
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

    /// A deposit booked as the watcher books it: detected, then confirmed.
    async fn deposit(&self, customer: &str, deposit_id: &str, amount: u128) {
        let a = Amount::from_base_units(amount);
        self.ts
            .store
            .post(postings::deposit_detected(deposit_id, customer, WALLET, &eth(), a), now_ms())
            .await
            .unwrap();
        self.ts.store.post(postings::deposit_confirmed(deposit_id, customer, &eth(), a), now_ms()).await.unwrap();
    }

    async fn available(&self, customer: &str) -> String {
        let b = self.ts.store.customer_balances(customer).await.unwrap();
        b.get(&(eth(), AccountKind::Available)).map_or("0".into(), |a| a.to_string())
    }

    async fn delete_account(&self, token: &str, password: &str) -> Reply {
        self.call(Method::DELETE, "/v1/account", Some(token), Some(json!({ "password": password }))).await
    }

    async fn customer_login(&self, email: &str, password: &str) -> Reply {
        self.call(Method::POST, "/v1/sessions", None, Some(json!({"email": email, "password": password}))).await
    }

    async fn notice_kinds(&self, customer: &str) -> Vec<String> {
        self.ts.store.notices_for_customer(customer, 100).await.unwrap().into_iter().map(|n| n.kind).collect()
    }

    async fn verify(&self) {
        self.ts.store.verify_ledger(|_| {}).await.unwrap_or_else(|e| panic!("{}: ledger: {e}", self.ts.name));
    }

    /// A deletion as the API writes it, but at `deleted_at_ms` with its window ending at
    /// `restore_until_ms`: how the tests put a deletion in the past (domain code takes time as input).
    async fn delete_at(&self, customer: &str, email: &str, deleted_at_ms: i64, restore_until_ms: i64) {
        let locked = kinko_server::api::auth::hash_password(secrecy::SecretString::from("x".repeat(64))).await.unwrap();
        let notice = NewNotice::email(
            Some(customer.into()),
            email,
            "account_deleted",
            format!("{customer}:{deleted_at_ms}"),
            "deleted",
            "deleted",
            deleted_at_ms,
        );
        self.ts.store.delete_customer(customer, &locked, restore_until_ms, &notice, deleted_at_ms).await.unwrap();
    }

    async fn restore_request(&self, customer: &str) -> Reply {
        self.request(
            "so1",
            "customer_restore",
            "customer_restore",
            json!({"customer_id": customer, "reason": "customer called, ID checked"}),
        )
        .await
    }
}

fn problem_type(r: &Reply) -> &str {
    r.json["type"].as_str().unwrap_or_default()
}

fn fields(r: &Reply) -> Vec<String> {
    r.json["errors"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|e| e["field"].as_str().unwrap_or_default().to_string()).collect())
}

#[tokio::test]
async fn u5_deletion_needs_zero_balances_then_login_refused_like_wrong_password_sessions_dead_balances_kept() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = ops(ts).await;
        let (dave, dave_token) = o.customer("dave@example.com").await;
        let (erin, _) = o.customer("erin@example.com").await;
        let address =
            o.call(Method::POST, "/v1/deposit-addresses", Some(&dave_token), Some(json!({"asset": "ETH"}))).await;
        assert_eq!(address.status.as_u16() / 100, 2, "{name}: {}", address.text);
        o.deposit(&dave, "d-1", 100).await;

        // Re-authentication: the login password, named when wrong.
        let wrong = o.delete_account(&dave_token, "not the password!").await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{name}: {}", wrong.text);
        assert_eq!(fields(&wrong), ["password"], "{name}");
        // Funds remain: 409 naming each balance, nothing changes.
        let funded = o.delete_account(&dave_token, PASSWORD).await;
        assert_eq!(funded.status, StatusCode::CONFLICT, "{name}: {}", funded.text);
        assert_eq!(fields(&funded), ["balances.ETH.available"], "{name}");
        assert_eq!(problem_type(&funded), "urn:kinko:problem:balances-not-zero", "{name}");
        let still = o.call(Method::GET, "/v1/balances", Some(&dave_token), None).await;
        assert_eq!(still.status, StatusCode::OK, "{name}: the session survives a refused deletion");

        // Emptied (here by an internal transfer), the deletion goes through and revokes every session.
        let out = o
            .call_with_key(
                Method::POST,
                "/v1/internal-transfers",
                &dave_token,
                "empty-1",
                json!({"to_customer_id": erin, "asset": "ETH", "amount": "100"}),
            )
            .await;
        assert_eq!(out.status, StatusCode::CREATED, "{name}: {}", out.text);
        let second_session = o.customer_login("dave@example.com", PASSWORD).await;
        let second_token = second_session.json["token"].as_str().unwrap().to_string();
        let deleted = o.delete_account(&dave_token, PASSWORD).await;
        assert_eq!(deleted.status, StatusCode::OK, "{name}: {}", deleted.text);
        let until = deleted.json["restore_until_ms"].as_i64().unwrap();
        let at = deleted.json["deleted_at_ms"].as_i64().unwrap();
        assert_eq!(until - at, 30 * DAY_MS, "{name}: the rollback window is 30 days");
        for token in [&dave_token, &second_token] {
            let dead = o.call(Method::GET, "/v1/balances", Some(token), None).await;
            assert_eq!(dead.status, StatusCode::UNAUTHORIZED, "{name}: {}", dead.text);
        }
        assert_eq!(o.delete_account(&dave_token, PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");

        // Login: the right password of the deleted account answers exactly like a wrong password of a
        // live one (and like an unknown address).
        let deleted_login = o.customer_login("dave@example.com", PASSWORD).await;
        let wrong_login = o.customer_login("erin@example.com", "not the password!").await;
        let unknown_login = o.customer_login("nobody@example.com", PASSWORD).await;
        assert_eq!(deleted_login.status, StatusCode::UNAUTHORIZED, "{name}: {}", deleted_login.text);
        assert_eq!(deleted_login.json, wrong_login.json, "{name}");
        assert_eq!(deleted_login.json, unknown_login.json, "{name}");

        // Kept: the deposit address, and a late deposit to it is credited to the deleted customer.
        let kept = o.ts.store.deposit_address(&dave, "ETH").await.unwrap().expect("deposit address kept");
        assert_eq!(Some(kept.address.as_str()), address.json["address"].as_str(), "{name}");
        o.deposit(&dave, "d-late", 7).await;
        assert_eq!(o.available(&dave).await, "7", "{name}: late deposit credited");
        assert!(o.notice_kinds(&dave).await.contains(&"account_deleted".to_string()), "{name}");
        o.verify().await;
    }
}

#[tokio::test]
async fn u6_operators_restore_within_the_window_and_the_customer_cannot_restore_themselves() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (frank, frank_token) = o.customer("frank@example.com").await;
        let (_, gina_token) = o.customer("gina@example.com").await;
        assert_eq!(o.delete_account(&frank_token, PASSWORD).await.status, StatusCode::OK, "{name}");
        o.deposit(&frank, "d-f", 5).await;

        // No customer credential reaches the operator API, neither the deleted customer's nor another's.
        let params = json!({"process": "customer_restore", "kind": "customer_restore", "params": {"customer_id": frank, "reason": "me"}});
        for token in [&frank_token, &gina_token] {
            let r = o.call(Method::POST, "/v1/ops/requests", Some(token), Some(params.clone())).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text);
        }
        // Only the requesting role may ask, with a reason.
        let om = o
            .request("om1", "customer_restore", "customer_restore", json!({"customer_id": frank, "reason": "x"}))
            .await;
        assert_eq!(om.status, StatusCode::FORBIDDEN, "{name}: {}", om.text);
        let no_reason = o.request("so1", "customer_restore", "customer_restore", json!({"customer_id": frank})).await;
        assert_eq!(fields(&no_reason), ["params.reason"], "{name}: {}", no_reason.text);

        let req = o.restore_request(&frank).await;
        assert_eq!(req.status, StatusCode::CREATED, "{name}: {}", req.text);
        assert_eq!(req.json["state"], "requested", "{name}: never without an approval");
        assert_eq!(req.json["required"], 1, "{name}");
        let id = req.json["id"].as_str().unwrap().to_string();
        assert_eq!(o.customer_login("frank@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");
        // The signing manager is not the approving role; the operations manager is.
        let sm = o.decide("sm1", &id, Decision::Approve).await;
        assert_eq!(sm.status, StatusCode::FORBIDDEN, "{name}: {}", sm.text);
        let approved = o.decide("om1", &id, Decision::Approve).await;
        assert_eq!(approved.status, StatusCode::OK, "{name}: {}", approved.text);
        assert_eq!(approved.json["state"], "executed", "{name}: {}", approved.text);
        assert_eq!(approved.json["result"]["restored"], true, "{name}");

        // Back: the old password works, old sessions stay dead, balances (the late deposit) are there.
        let login = o.customer_login("frank@example.com", PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{name}: {}", login.text);
        assert_eq!(
            o.call(Method::GET, "/v1/balances", Some(&frank_token), None).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(o.available(&frank).await, "5", "{name}");
        assert!(o.notice_kinds(&frank).await.contains(&"account_restored".to_string()), "{name}");
        // The restore is in the operators' event log.
        let events = o.call(Method::GET, "/v1/ops/events", Some(&o.token("li1")), None).await;
        assert!(events.text.contains(&id), "{name}: {}", events.text);
        // An active customer cannot be "restored".
        let again = o.restore_request(&frank).await;
        assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", again.text);
        assert_eq!(fields(&again), ["params.customer_id"], "{name}");
        o.verify().await;
    }
}

#[tokio::test]
async fn u6_restore_after_the_window_refused_and_the_account_stays_deleted() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let now = now_ms();

        // Deleted 31 days ago: the window ended yesterday. Refused at request time, naming the field.
        let (hank, _) = o.customer("hank@example.com").await;
        o.delete_at(&hank, "hank@example.com", now - 31 * DAY_MS, now - DAY_MS).await;
        let late = o.restore_request(&hank).await;
        assert_eq!(late.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", late.text);
        assert_eq!(fields(&late), ["params.customer_id"], "{name}");
        assert!(late.text.contains("window ended"), "{name}: {}", late.text);
        let direct =
            o.ts.store
                .restore_customer(
                    &hank,
                    "r_direct",
                    |e| NewNotice::email(None, e, "account_restored", "r_direct", "s", "b", now),
                    now,
                )
                .await;
        assert!(matches!(direct, Err(RestoreCustomerError::WindowEnded { .. })), "{name}: {direct:?}");
        assert_eq!(o.customer_login("hank@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");

        // Requested inside the window, approved after it: refused at execution, recorded as failed.
        let (ivy, _) = o.customer("ivy@example.com").await;
        let ends = now_ms() + 1_500;
        o.delete_at(&ivy, "ivy@example.com", now_ms(), ends).await;
        let req = o.restore_request(&ivy).await;
        assert_eq!(req.status, StatusCode::CREATED, "{name}: {}", req.text);
        let id = req.json["id"].as_str().unwrap().to_string();
        tokio::time::sleep(std::time::Duration::from_millis(u64::try_from(ends - now_ms()).unwrap_or(0) + 50)).await;
        let approved = o.decide("om1", &id, Decision::Approve).await;
        assert_eq!(approved.status, StatusCode::CONFLICT, "{name}: {}", approved.text);
        assert_eq!(problem_type(&approved), "urn:kinko:problem:restore-refused", "{name}");
        let r = o.call(Method::GET, &format!("/v1/ops/requests/{id}"), Some(&o.token("admin1")), None).await;
        assert_eq!(r.json["state"], "failed", "{name}: {}", r.text);
        assert_eq!(o.customer_login("ivy@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");
        let state = o.ts.store.customer_deletion_state(&ivy).await.unwrap().unwrap();
        assert_ne!(state.deleted_at_ms, 0, "{name}: stays soft-deleted");
        o.verify().await;
    }
}

#[tokio::test]
async fn u5_u4_deletion_by_a_customer_with_a_second_factor_needs_a_fresh_step_up() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = ops(ts).await;
        let (jo, enrol_token) = o.customer("jo@example.com").await;
        let r = o.call(Method::POST, "/v1/mfa/totp", Some(&enrol_token), Some(json!({"password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let totp = totp_rs::Totp::from_url(r.json["otpauth_uri"].as_str().unwrap()).unwrap();
        let enrolment_id = r.json["enrolment_id"].as_str().unwrap().to_string();
        let code = totp.generate(now_secs()).to_string();
        let r = o
            .call(
                Method::POST,
                "/v1/mfa/totp/confirm",
                Some(&enrol_token),
                Some(json!({"enrolment_id": enrolment_id, "code": code})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        // A new session that has not stepped up: the password alone is not enough.
        let login = o.customer_login("jo@example.com", PASSWORD).await;
        assert_eq!(login.status, StatusCode::OK, "{name}: {}", login.text);
        let token = login.json["token"].as_str().unwrap().to_string();
        let refused = o.delete_account(&token, PASSWORD).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{name}: {}", refused.text);
        assert_eq!(problem_type(&refused), "urn:kinko:problem:step-up-required", "{name}");
        // The next time step's code (each code is accepted once) steps this session up.
        let code = totp.generate(now_secs() + 30).to_string();
        let up = o
            .call(Method::POST, "/v1/sessions/step-up", Some(&token), Some(json!({"method": "totp", "code": code})))
            .await;
        assert_eq!(up.status, StatusCode::OK, "{name}: {}", up.text);
        // Stepped up, the password is still checked.
        let wrong = o.delete_account(&token, "not the password!").await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{name}: {}", wrong.text);
        assert_eq!(fields(&wrong), ["password"], "{name}");
        let deleted = o.delete_account(&token, PASSWORD).await;
        assert_eq!(deleted.status, StatusCode::OK, "{name}: {}", deleted.text);
        assert_eq!(o.customer_login("jo@example.com", PASSWORD).await.status, StatusCode::UNAUTHORIZED, "{name}");
        let state = o.ts.store.customer_deletion_state(&jo).await.unwrap().unwrap();
        assert_ne!(state.deleted_at_ms, 0, "{name}");
    }
}
