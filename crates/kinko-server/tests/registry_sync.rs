//! Reconciling the server's operator registry log with the signer's (O3, O4): a change the signer accepted
//! but the server failed to record is copied, verified, into `operator_registry_log`; logs that diverge, or
//! a server ahead of the signer, are refused and copy nothing. Real stores (SQLite, and PostgreSQL when
//! `KINKO_TEST_POSTGRES_URL` is set), a real `LocalSigner` over the same store, the operator API in process,
//! and the signer process's socket (`SignerService` + `RemoteSigner`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use ed25519_dalek::SigningKey;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_server::api;
use kinko_server::registry_sync::{EVENT_REGISTRY_RECONCILED, RegistrySyncError, reconcile_registry};
use kinko_server::{AppState, Config};
use kinko_signer::approvals::sign_approval;
use kinko_signer::{Approval, LocalSigner, Signer, StoreJournal};
use kinko_store::Store;
use kinko_store::operators::RegistryLogRow;
use kinko_store::testing::{TestStore, test_stores};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const PASSWORD: &str = "correct horse battery staple";
const PEER: &str = "192.0.2.7:40000";
const ADMIN1: u8 = 1;
const ADMIN2: u8 = 2;

struct Ops {
    app: Router,
    signer: Arc<LocalSigner>,
    ts: TestStore,
    people: std::collections::BTreeMap<String, (SigningKey, String)>,
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

fn add_kind(id: &str, seed: u8, role: Role) -> RegistryChangeKind {
    RegistryChangeKind::AddOperator {
        operator_id: id.into(),
        approval_public_key_hex: hex::encode(key(seed).verifying_key().to_bytes()),
        role,
        expires_at_ms: None,
    }
}

/// The change after `head`, requested by admin1.
fn change_after(head: Option<(u64, [u8; 32])>, kind: RegistryChangeKind) -> RegistryChange {
    let (seq, prev_hash) = head.map(|(s, h)| (s + 1, h)).unwrap_or((0, [0; 32]));
    RegistryChange { seq, prev_hash, requested_by: "admin1".into(), requested_at_ms: now_ms() - 100, change: kind }
}

fn sign(change: &RegistryChange, by: &[(u8, &str)]) -> Vec<Approval> {
    let subject = change.subject().unwrap();
    by.iter().map(|(seed, id)| sign_approval(&key(*seed), id, &subject, Decision::Approve).unwrap()).collect()
}

/// Appends a change to the server's log only (as a server ahead of, or diverging from, the signer has).
async fn server_append(store: &Store, change: &RegistryChange, approvals: &[Approval], applied_at_ms: i64) {
    store
        .append_registry_log(&RegistryLogRow {
            seq: i64::try_from(change.seq).unwrap(),
            hash: hex::encode(change.hash().unwrap()),
            change_json: serde_json::to_string(change).unwrap(),
            approvals_json: serde_json::to_string(approvals).unwrap(),
            applied_at_ms,
        })
        .await
        .unwrap();
}

async fn server_head(store: &Store) -> Option<(u64, [u8; 32])> {
    store.registry_log().await.unwrap().last().map(|r| {
        let mut h = [0u8; 32];
        hex::decode_to_slice(&r.hash, &mut h).unwrap();
        (u64::try_from(r.seq).unwrap(), h)
    })
}

async fn ops(ts: TestStore) -> Ops {
    let config =
        Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), "http://127.0.0.1:8545".into());
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
        self.people[id].1.clone()
    }

    async fn enrol(&self, id: &str, enrolment_token: &str) -> Reply {
        self.call(
            Method::POST,
            "/v1/ops/enrolments",
            None,
            Some(json!({"operator_id": id, "enrolment_token": enrolment_token, "password": PASSWORD})),
        )
        .await
    }

    async fn enrol_and_login(&mut self, id: &str, enrolment_token: &str, k: SigningKey) {
        let r = self.enrol(id, enrolment_token).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", self.ts.name, r.text);
        let totp = totp_rs::Totp::from_url(r.json["totp_uri"].as_str().unwrap()).unwrap();
        let code = totp.generate(u64::try_from(now_ms() / 1000).unwrap()).to_string();
        let r = self
            .call(
                Method::POST,
                "/v1/ops/sessions",
                None,
                Some(json!({"operator_id": id, "password": PASSWORD, "totp_code": code})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", self.ts.name, r.text);
        let token = r.json["token"].as_str().unwrap().to_string();
        self.people.insert(id.into(), (k, token));
    }

    /// Genesis (admin1) on the signer and the server, then admin2 added by admin1 alone through the API
    /// (the bootstrap rule): both logs at seq 1, in step.
    async fn two_admins(&mut self) {
        let genesis = change_after(None, add_kind("admin1", ADMIN1, Role::Administrator));
        let approvals = sign(&genesis, &[(ADMIN1, "admin1")]);
        self.signer.apply_registry_change(&genesis, &approvals).await.unwrap();
        server_append(&self.ts.store, &genesis, &approvals, now_ms() - 50).await;
        let token = "genesis-enrolment-token";
        self.ts.store.create_operator_account("admin1", &sha256_hex(token), now_ms() + 60_000, now_ms()).await.unwrap();
        self.enrol_and_login("admin1", token, key(ADMIN1)).await;
        let r = self.registry_change(None, add_kind("admin2", ADMIN2, Role::Administrator)).await;
        assert_eq!(r.json["state"], "executed", "{}: {}", self.ts.name, r.text);
        let token = r.json["enrolment_token"].as_str().unwrap().to_string();
        self.enrol_and_login("admin2", &token, key(ADMIN2)).await;
        assert_eq!(self.signer.registry_head().await.unwrap(), server_head(&self.ts.store).await);
    }

    /// admin1 requests a change at the server's head; `approver` approves it. Returns the last reply.
    async fn registry_change(&self, approver: Option<&str>, kind: RegistryChangeKind) -> Reply {
        let admin1 = self.token("admin1");
        let head = self.call(Method::GET, "/v1/ops/registry/head", Some(&admin1), None).await;
        assert_eq!(head.status, StatusCode::OK, "{}", head.text);
        let mut prev = [0u8; 32];
        hex::decode_to_slice(head.json["prev_hash"].as_str().unwrap(), &mut prev).unwrap();
        let change = RegistryChange {
            seq: head.json["next_seq"].as_u64().unwrap(),
            prev_hash: prev,
            requested_by: "admin1".into(),
            requested_at_ms: now_ms(),
            change: kind,
        };
        let sig = &sign(&change, &[(ADMIN1, "admin1")])[0];
        let r = self
            .call(
                Method::POST,
                "/v1/ops/registry-changes",
                Some(&admin1),
                Some(json!({"change": change, "signature_hex": sig.signature_hex})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", self.ts.name, r.text);
        let Some(approver) = approver else { return r };
        let id = change.request_id();
        let r = self.call(Method::GET, &format!("/v1/ops/requests/{id}"), Some(&admin1), None).await;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(r.json["intent_hash"].as_str().unwrap(), &mut hash).unwrap();
        let subject = ApprovalSubject::new(Process::Personnel, &id, hash).unwrap();
        let sig = sign_approval(&self.people[approver].0, approver, &subject, Decision::Approve).unwrap();
        self.call(
            Method::POST,
            &format!("/v1/ops/requests/{id}/approvals"),
            Some(&self.token(approver)),
            Some(json!({"decision": "approve", "signature_hex": sig.signature_hex})),
        )
        .await
    }

    /// A change the signer accepted and the server never recorded (its write failed): adds `id`.
    async fn signer_only(&self, id: &str, seed: u8) -> RegistryChange {
        let change = change_after(self.signer.registry_head().await.unwrap(), add_kind(id, seed, Role::SigningManager));
        self.signer
            .apply_registry_change(&change, &sign(&change, &[(ADMIN1, "admin1"), (ADMIN2, "admin2")]))
            .await
            .unwrap();
        change
    }

    async fn operator_ids(&self) -> Vec<String> {
        let r = self.call(Method::GET, "/v1/ops/operators", Some(&self.token("admin1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.json.as_array().unwrap().iter().map(|o| o["operator_id"].as_str().unwrap().to_string()).collect()
    }

    async fn reconciled_events(&self) -> Vec<Value> {
        let events = self.ts.store.ops_events(None, 1000).await.unwrap();
        events
            .iter()
            .filter(|e| e.event == EVENT_REGISTRY_RECONCILED)
            .map(|e| serde_json::from_str(&e.detail_json).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn o3_o4_signer_ahead_is_reconciled_then_the_next_change_by_two_admins_works() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut o = ops(ts).await;
        o.two_admins().await;
        let missed = o.signer_only("sm1", 11).await;
        assert_eq!(o.ts.store.registry_log().await.unwrap().len(), 2, "{name}: the server missed change 2");

        let copied = reconcile_registry(&o.ts.store, &*o.signer, now_ms()).await.unwrap();
        assert_eq!(copied, 1, "{name}");
        assert_eq!(server_head(&o.ts.store).await, o.signer.registry_head().await.unwrap(), "{name}");
        assert_eq!(server_head(&o.ts.store).await.unwrap().1, missed.hash().unwrap(), "{name}");
        assert!(o.operator_ids().await.contains(&"sm1".to_string()), "{name}: the API's registry has sm1");

        // The account exists, but no enrolment token works: nobody was ever shown one.
        let account = o.ts.store.operator_account("sm1").await.unwrap().expect("account created");
        assert!(account.password_hash.is_none() && account.totp_secret.is_none(), "{name}");
        assert!(account.enrolment_expires_at_ms <= now_ms(), "{name}: no live enrolment");
        assert_eq!(o.enrol("sm1", "any-token").await.status, StatusCode::UNAUTHORIZED, "{name}");
        let events = o.reconciled_events().await;
        assert_eq!(events.len(), 1, "{name}");
        assert_eq!(events[0]["seq"], 2, "{name}");
        assert_eq!(events[0]["operator_id"], "sm1", "{name}");
        assert!(events[0]["enrolment"].as_str().unwrap().contains("new enrolment"), "{name}: {}", events[0]);

        // Idempotent: a second run finds both heads equal and writes nothing.
        assert_eq!(reconcile_registry(&o.ts.store, &*o.signer, now_ms()).await.unwrap(), 0, "{name}");
        assert_eq!(o.ts.store.registry_log().await.unwrap().len(), 3, "{name}");
        assert_eq!(o.reconciled_events().await.len(), 1, "{name}");

        // The next change, requested by admin1 and approved by admin2, goes through on both sides.
        let r = o.registry_change(Some("admin2"), add_kind("sm2", 12, Role::SigningManager)).await;
        assert_eq!(r.status.as_u16() / 100, 2, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "executed", "{name}: {}", r.text);
        let head = o.signer.registry_head().await.unwrap();
        assert_eq!(head.map(|h| h.0), Some(3), "{name}");
        assert_eq!(server_head(&o.ts.store).await, head, "{name}");
    }
}

#[tokio::test]
async fn o3_change_refused_out_of_order_reconciles_and_the_next_change_works() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut o = ops(ts).await;
        o.two_admins().await;
        o.signer_only("sm1", 11).await;

        // Built on the server's stale head: the signer refuses it as out of order, and the server catches up.
        let r = o.registry_change(Some("admin2"), add_kind("sm2", 12, Role::SigningManager)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert!(r.text.contains("out of order") && r.text.contains("caught up with 1"), "{name}: {}", r.text);
        assert_eq!(server_head(&o.ts.store).await, o.signer.registry_head().await.unwrap(), "{name}");
        let refused = o.ts.store.ops_request("registry-2").await.unwrap().unwrap();
        assert_eq!(refused.state, "failed", "{name}: the refused request stays failed");

        // Asked again at the new head, it goes through.
        let r = o.registry_change(Some("admin2"), add_kind("sm2", 12, Role::SigningManager)).await;
        assert_eq!(r.json["state"], "executed", "{name}: {}", r.text);
        assert_eq!(server_head(&o.ts.store).await.map(|h| h.0), Some(3), "{name}");
        assert_eq!(server_head(&o.ts.store).await, o.signer.registry_head().await.unwrap(), "{name}");
        let ids = o.operator_ids().await;
        assert!(ids.contains(&"sm1".to_string()) && ids.contains(&"sm2".to_string()), "{name}: {ids:?}");
    }
}

#[tokio::test]
async fn o3_divergent_logs_are_refused_and_registry_changes_stay_refused() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut o = ops(ts).await;
        o.two_admins().await;
        // The signer took one change at seq 2, the server's log holds another (validly signed) one there.
        o.signer_only("sm1", 11).await;
        let other = change_after(server_head(&o.ts.store).await, add_kind("sm9", 19, Role::SigningManager));
        server_append(&o.ts.store, &other, &sign(&other, &[(ADMIN1, "admin1"), (ADMIN2, "admin2")]), now_ms()).await;
        let before = o.ts.store.registry_log().await.unwrap();

        let got = reconcile_registry(&o.ts.store, &*o.signer, now_ms()).await;
        assert!(matches!(got, Err(RegistrySyncError::Diverged { seq: 2, .. })), "{name}: {got:?}");
        assert_eq!(o.ts.store.registry_log().await.unwrap(), before, "{name}: nothing copied");
        assert!(o.reconciled_events().await.is_empty(), "{name}");

        // The signer ahead of a diverged server copy: still refused (the prefix check).
        o.signer_only("sm2", 12).await;
        let got = reconcile_registry(&o.ts.store, &*o.signer, now_ms()).await;
        assert!(matches!(got, Err(RegistrySyncError::Diverged { seq: 2, .. })), "{name}: {got:?}");

        // Registry changes stay refused (fail closed) and change neither log.
        let signer_head = o.signer.registry_head().await.unwrap();
        let r = o.registry_change(Some("admin2"), add_kind("sm3", 13, Role::SigningManager)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        assert_eq!(o.ts.store.registry_log().await.unwrap(), before, "{name}");
        assert_eq!(o.signer.registry_head().await.unwrap(), signer_head, "{name}");
    }
}

#[tokio::test]
async fn o3_server_log_ahead_of_the_signer_is_refused() {
    for ts in test_stores().await {
        let name = ts.name;
        let mut o = ops(ts).await;
        o.two_admins().await;
        let ahead = change_after(server_head(&o.ts.store).await, add_kind("sm9", 19, Role::SigningManager));
        server_append(&o.ts.store, &ahead, &sign(&ahead, &[(ADMIN1, "admin1"), (ADMIN2, "admin2")]), now_ms()).await;
        let got = reconcile_registry(&o.ts.store, &*o.signer, now_ms()).await;
        assert!(matches!(got, Err(RegistrySyncError::ServerAhead { server: 2, signer: Some(1) })), "{name}: {got:?}");
        assert_eq!(o.signer.registry_head().await.unwrap().map(|h| h.0), Some(1), "{name}");
    }
}

#[tokio::test]
async fn o3_reconcile_through_the_signer_socket() {
    use kinko_keys::shares::{self, MasterKey, SealConfig};
    use kinko_signer::remote::RemoteSigner;
    use kinko_signer::server::{SignerService, bind, serve};

    let ts = kinko_store::testing::sqlite_store().await;
    let mk = MasterKey::generate();
    let raw = shares::split(&mk, 1, &["c0".to_string()]).unwrap();
    ts.store.init_seal_config_json(&serde_json::to_string(&SealConfig::new(&mk, 1, &raw)).unwrap()).await.unwrap();
    let socket = std::env::temp_dir().join(format!("kinko-rs-{}-{}.sock", std::process::id(), now_ms()));
    let service = Arc::new(SignerService::new(ts.store.clone(), vec![]).await.unwrap());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(service, bind(&socket).unwrap(), socket.clone(), stop_rx));
    let remote = RemoteSigner::new(&socket);

    // The sealed signer holds genesis, admin2 and sm1; the server recorded only the first two.
    let mut head = None;
    for (i, (kind, by)) in [
        (add_kind("admin1", ADMIN1, Role::Administrator), vec![(ADMIN1, "admin1")]),
        (add_kind("admin2", ADMIN2, Role::Administrator), vec![(ADMIN1, "admin1")]),
        (add_kind("sm1", 11, Role::SigningManager), vec![(ADMIN1, "admin1"), (ADMIN2, "admin2")]),
    ]
    .into_iter()
    .enumerate()
    {
        let change = change_after(head, kind);
        let approvals = sign(&change, &by);
        remote.apply_registry_change(&change, &approvals).await.unwrap();
        if i < 2 {
            server_append(&ts.store, &change, &approvals, now_ms()).await;
        }
        head = Some((change.seq, change.hash().unwrap()));
    }
    assert_eq!(reconcile_registry(&ts.store, &remote, now_ms()).await.unwrap(), 1);
    assert_eq!(server_head(&ts.store).await, head);
    assert!(ts.store.operator_account("sm1").await.unwrap().is_some());
    assert_eq!(reconcile_registry(&ts.store, &remote, now_ms()).await.unwrap(), 0, "idempotent");

    let _ = stop.send(true);
    let _ = server.await;
}
