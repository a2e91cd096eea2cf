//! The operator-API test harness shared by the operator tests (api_ops, custodian_transfer): an in-process
//! router with a real `LocalSigner` over the same store as the authority for registry changes, operators
//! enrolled with real argon2id passwords and TOTP, and approvals signed with real Ed25519 keys. Not every
//! test binary uses every helper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use ed25519_dalek::SigningKey;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_server::api::{self};
use kinko_server::{AppState, Config};
use kinko_signer::approvals::sign_approval;
use kinko_signer::{LocalSigner, Signer, StoreJournal};
use kinko_store::operators::RegistryLogRow;
use kinko_store::testing::TestStore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

pub const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
pub const PASSWORD: &str = "correct horse battery staple";
pub const PEER: &str = "192.0.2.7:40000";

pub struct Ops {
    pub app: Router,
    pub signer: Arc<LocalSigner>,
    pub ts: TestStore,
    /// operator id → (approval key, bearer token, TOTP)
    pub people: std::collections::BTreeMap<String, Person>,
}

#[derive(Clone)]
pub struct Person {
    pub key: SigningKey,
    pub token: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub text: String,
    pub json: Value,
}

pub fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub async fn ops(ts: TestStore) -> Ops {
    ops_with(ts, |_| {}).await
}

pub async fn ops_with(ts: TestStore, tweak: impl FnOnce(&mut Config)) -> Ops {
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
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
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

    pub fn token(&self, id: &str) -> String {
        self.people[id].token.clone()
    }

    /// Change 0 as `kinko init --first-admin` writes it: on the signer and in the server's log, plus the
    /// first administrator's account with a known enrolment token.
    pub async fn genesis(&mut self, admin: &str, seed: u8) {
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

    pub async fn enrol(&self, id: &str, enrolment_token: &str) -> totp_rs::Totp {
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

    pub async fn login(&self, id: &str, totp: &totp_rs::Totp, offset_secs: u64) -> Reply {
        let code = totp.generate(now_secs() + offset_secs).to_string();
        self.call(
            Method::POST,
            "/v1/ops/sessions",
            None,
            Some(json!({"operator_id": id, "password": PASSWORD, "totp_code": code})),
        )
        .await
    }

    pub async fn enrol_and_login(&mut self, id: &str, enrolment_token: &str, k: SigningKey) {
        let totp = self.enrol(id, enrolment_token).await;
        let r = self.login(id, &totp, 0).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", self.ts.name, r.text);
        let token = r.json["token"].as_str().unwrap().to_string();
        self.people.insert(id.into(), Person { key: k, token });
    }

    /// `requester` asks for a registry change; `approver` (if any) approves it. Returns the last reply.
    pub async fn registry_change(&self, requester: &str, approver: Option<&str>, kind: RegistryChangeKind) -> Reply {
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
    pub async fn add(&mut self, id: &str, role: Role, seed: u8, expires_at_ms: Option<i64>) {
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
    pub async fn staffed(ts: TestStore) -> Ops {
        Ops::staff(ops(ts).await).await
    }

    pub async fn staff(mut o: Ops) -> Ops {
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

    pub async fn request(&self, who: &str, process: &str, kind: &str, params: Value) -> Reply {
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
    pub async fn decide(&self, who: &str, id: &str, decision: Decision) -> Reply {
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

    pub async fn customer(&self, email: &str) -> (String, String) {
        let r =
            self.call(Method::POST, "/v1/customers", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let id = r.json["id"].as_str().unwrap().to_string();
        let r =
            self.call(Method::POST, "/v1/sessions", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        (id, r.json["token"].as_str().unwrap().to_string())
    }
}

pub fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap()
}
