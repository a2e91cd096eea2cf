//! Custodian transfers (M10, O2, K11) over the operator API in process (tower `oneshot` with the peer
//! address set as `kinko serve` sets it), on SQLite and — when `KINKO_TEST_POSTGRES_URL` is set —
//! PostgreSQL: `custodian_transfer` requests are checked field by field when opened, approved over the
//! transfer's withdrawal Intent, and executed once into one withdrawals row the pipeline pays (the chain part
//! is `crates/kinko/tests/e2e_custodian_transfer.rs`). The operator harness is `api_ops`'s.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use ed25519_dalek::SigningKey;
use kinko_core::intent::Intent;
use kinko_core::ledger::postings;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_core::policy::Action;
use kinko_core::withdrawal::{CUSTODIAN_CUSTOMER_ID, CUSTODIAN_TRANSFER_REASON, WithdrawalKind, WithdrawalStatus};
use kinko_core::{Amount, AssetCode, ChainId};
use kinko_server::api;
use kinko_server::{AppState, Config};
use kinko_signer::approvals::sign_approval;
use kinko_signer::{LocalSigner, Signer, StoreJournal};
use kinko_store::operators::RegistryLogRow;
use kinko_store::testing::{TestStore, test_stores};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const PASSWORD: &str = "correct horse battery staple";
const PEER: &str = "192.0.2.7:40000";

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

const HOT: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const COLD: &str = "0x00000000000000000000000000000000000c01d1";
const ETH: u128 = 1_000_000_000_000_000_000;

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

fn transfer(destination: &str, amount: u128) -> Value {
    json!({"asset": "ETH", "amount": amount.to_string(), "destination": destination})
}

fn names_field(r: &Reply, field: &str) -> bool {
    r.json["errors"].as_array().is_some_and(|errors| errors.iter().any(|e| e["field"] == field))
}

async fn execute(o: &Ops, who: &str, id: &str) -> Reply {
    o.call(Method::POST, &format!("/v1/ops/requests/{id}/execute"), Some(&o.token(who)), Some(json!({}))).await
}

/// M10, O2: a customer deposit address, an unknown address, the hot wallet itself and a malformed address
/// are refused when the request is opened, each naming params.destination; a registered cold wallet is
/// accepted, its params normalised and completed with what an approver's terminal needs, and the request's
/// intent hash is the transfer's Intent hash (what the signer verifies approvals over).
#[tokio::test]
async fn m10_custodian_transfer_destination_checked_and_subject_is_the_intent() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        let (customer, token) = o.customer(&format!("{name}-ct@example.com")).await;
        let r = o.call(Method::POST, "/v1/deposit-addresses", Some(&token), Some(json!({"asset": "ETH"}))).await;
        let deposit = r.json["address"].as_str().unwrap().to_string();
        o.ts.store.register_custodian_wallet(COLD, "eth", "cold", "external:cold-1", now_ms()).await.unwrap();
        assert!(
            o.ts.store.register_custodian_wallet(&deposit, "eth", "cold", "external:x", now_ms()).await.is_err(),
            "{name}: a deposit address cannot become a custodian wallet"
        );
        assert!(
            o.ts.store.register_custodian_wallet(COLD, "eth", "hot", "eth-hot-1", now_ms()).await.is_err(),
            "{name}: the hot tier is not registered here"
        );

        for (what, dest) in [
            ("a customer deposit address", deposit.as_str()),
            ("an unknown address", "0x00000000000000000000000000000000000bad00"),
            ("the hot wallet", HOT),
            ("a malformed address", "0x1234"),
        ] {
            let r = o.request("so1", "signing", "custodian_transfer", transfer(dest, ETH)).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {what}: {}", r.text);
            assert!(names_field(&r, "params.destination"), "{name}: {what} names params.destination: {}", r.text);
        }
        let r = o.request("so1", "signing", "custodian_transfer", json!({"asset": "BTC", "amount": "0"})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        for field in ["params.asset", "params.amount", "params.destination"] {
            assert!(names_field(&r, field), "{name}: names {field}: {}", r.text);
        }
        // A requester cannot choose another source or reason for the intent.
        let mut other_source = transfer(COLD, ETH);
        other_source["source_wallet"] = json!(COLD);
        let r = o.request("so1", "signing", "custodian_transfer", other_source).await;
        assert!(names_field(&r, "params.source_wallet"), "{name}: {}", r.text);

        let r = o
            .request(
                "so1",
                "signing",
                "custodian_transfer",
                transfer(&COLD.to_uppercase().replacen("0X", "0x", 1), ETH),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let id = r.json["id"].as_str().unwrap();
        let p = &r.json["params"];
        assert_eq!(p["destination"], COLD, "{name}: normalised");
        let intent = Intent {
            id: id.into(),
            asset: eth(),
            chain_id: ChainId(p["chain_id"].as_u64().unwrap()),
            amount: Amount::from_base_units(ETH),
            destination: COLD.into(),
            source_wallet: HOT.into(),
            customer_id: CUSTODIAN_CUSTOMER_ID.into(),
            reason: CUSTODIAN_TRANSFER_REASON.into(),
        };
        assert_eq!(r.json["intent_hash"], hex::encode(intent.hash()), "{name}: the subject is the Intent");
        assert_eq!(p["source_wallet"], HOT, "{name}");
        assert_eq!(p["reason"], CUSTODIAN_TRANSFER_REASON, "{name}");
        assert_eq!(r.json["required"], 1, "{name}: the dev policy's band asks one approval");
        let _ = customer;
    }
}

/// M10, O2, K8: approved by the signing manager and executed by the signing operator, the transfer becomes
/// one `approved` withdrawals row of kind custodian_transfer (id = the request id, the reserved custodian
/// row as customer, the approved intent hash), which the pipeline then signs. A hot wallet whose ledger
/// balance cannot cover amount plus the largest fee is refused naming params.amount and the request stays
/// executable; executing twice is a conflict and still one row; no customer balance moves.
#[tokio::test]
async fn m10_custodian_transfer_executes_once_into_the_pipeline() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = Ops::staffed(ts).await;
        o.ts.store.register_custodian_wallet(COLD, "eth", "cold", "external:cold-1", now_ms()).await.unwrap();
        let r = o.request("so1", "signing", "custodian_transfer", transfer(COLD, 2 * ETH)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        let intent_hash = r.json["intent_hash"].as_str().unwrap().to_string();
        let early = execute(&o, "so1", &id).await;
        assert_eq!(early.status, StatusCode::CONFLICT, "{name}: not approved yet: {}", early.text);
        let r = o.decide("sm1", &id, Decision::Approve).await;
        assert_eq!(r.json["state"], "approved", "{name}: {}", r.text);

        // The hot wallet's ledger holds nothing yet: refused, nothing written, still approved.
        let poor = execute(&o, "so1", &id).await;
        assert_eq!(poor.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", poor.text);
        assert!(names_field(&poor, "params.amount"), "{name}: {}", poor.text);
        assert!(o.ts.store.withdrawal(&id).await.unwrap().is_none(), "{name}: nothing written");

        o.ts.store
            .post(
                postings::custodian_funding("fund:ct".into(), HOT, &eth(), Amount::from_base_units(10 * ETH)),
                now_ms(),
            )
            .await
            .unwrap();
        let r = execute(&o, "so1", &id).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "executed", "{name}");
        assert_eq!(r.json["result"]["withdrawal"], id.as_str(), "{name}: {}", r.text);
        let twice = execute(&o, "so1", &id).await;
        assert_eq!(twice.status, StatusCode::CONFLICT, "{name}: {}", twice.text);

        let w = o.ts.store.withdrawal(&id).await.unwrap().unwrap();
        assert_eq!(w.kind, WithdrawalKind::CustodianTransfer, "{name}");
        assert_eq!(w.status, WithdrawalStatus::Approved, "{name}: the pipeline takes it from here");
        assert_eq!(w.customer_id, CUSTODIAN_CUSTOMER_ID, "{name}");
        assert_eq!(w.intent_hash, intent_hash, "{name}");
        assert_eq!((w.source_wallet.as_str(), w.destination.as_str()), (HOT, COLD), "{name}");
        assert_eq!(w.amount, Amount::from_base_units(2 * ETH), "{name}");
        let n: i64 =
            kinko_store::sqlx::query_scalar("SELECT COUNT(*) FROM withdrawals WHERE kind = 'custodian_transfer'")
                .fetch_one(o.ts.store.pool())
                .await
                .unwrap();
        assert_eq!(n, 1, "{name}: one transfer");
        let approvals = o.ts.store.request_approvals(&id).await.unwrap();
        assert_eq!(approvals.len(), 1, "{name}: the pipeline hands the signer sm1's approval");
        let events = o.ts.store.ops_events_for_request(&id).await.unwrap();
        let steps: Vec<(&str, &str)> = events.iter().map(|e| (e.event.as_str(), e.operator_id.as_str())).collect();
        assert_eq!(steps, [("request_created", "so1"), ("approved", "sm1"), ("executed", "so1")], "{name}");
    }
}

/// K11, O1: the terminal allowlist applies to the operator instructing a transfer; a denying rule refuses
/// the request when it is opened, naming the terminal.
#[tokio::test]
async fn k11_custodian_transfer_terminal_allowlist_denies() {
    for ts in test_stores().await {
        let name = ts.name;
        let o = ops_with(ts, |c| {
            let mut p = kinko_server::config::dev_hot_policy();
            p.ip_allowlist = Some(kinko_core::policy::IpAllowlist {
                cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                on_breach: Action::Deny,
                quorum: None,
            });
            c.policies = vec![p];
        })
        .await;
        let o = Ops::staff(o).await;
        o.ts.store.register_custodian_wallet(COLD, "eth", "cold", "external:cold-1", now_ms()).await.unwrap();
        let r = o.request("so1", "signing", "custodian_transfer", transfer(COLD, ETH)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert_eq!(r.json["type"].as_str().map(|t| t.ends_with("policy-denied")), Some(true), "{name}: {}", r.text);
        assert!(names_field(&r, "terminal"), "{name}: {}", r.text);
    }
}
