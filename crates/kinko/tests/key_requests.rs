//! Key lifecycle changes from the command line go through Table A-1 (K7, K8, O2): `kinko key transition
//! --request` and `kinko key destroy --request` execute only an approved `key_transition` request, as the
//! operator whose key file is given (checked against the server's replayed registry), in the process's
//! executing role, never one of its approvers, with the quorum re-counted and every approval's signature
//! verified. Real store (every test backend), real anvil, the real `kinko` binary; the registry is a signed
//! log written here the way the ops API writes it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ed25519_dalek::SigningKey;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role, request_intent_hash};
use kinko_keys::operator_key;
use kinko_signer::approvals::{OperatorRegistry, sign_approval};
use kinko_store::Store;
use kinko_store::operators::RegistryLogRow;
use kinko_store::ops_requests::{NewOpsRequest, OpsApprovalRow, insert_ops_approval_tx, set_ops_request_state_tx};
use serde_json::{Value, json};
use support::Harness;

const PASSPHRASE: &str = "operator key passphrase 1";
const PASSPHRASE_ENV: &str = "KINKO_TEST_KEY_PASS";
const HOT_KEY: &str = "eth-hot-1";

fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

/// An operator: their key file on "their terminal" and the key itself (to sign approvals here).
struct Op {
    id: String,
    file: PathBuf,
    key: SigningKey,
    public_key_hex: String,
}

fn operator(dir: &Path, id: &str) -> Op {
    let (file, public_key_hex) = operator_key::generate(id, PASSPHRASE).unwrap();
    let key = operator_key::open(&file, PASSPHRASE).unwrap();
    let path = dir.join(format!("{id}-{}.key", &public_key_hex[..8]));
    file.write(&path).unwrap();
    Op { id: id.into(), file: path, key, public_key_hex }
}

/// The server's registry log, written change by change with the signatures the rules need, each change
/// first verified by the signer's own code.
struct Registry {
    verified: OperatorRegistry,
}

impl Registry {
    async fn apply(&mut self, store: &Store, requested_by: &Op, signers: &[&Op], change: RegistryChangeKind) {
        let (seq, prev_hash) = match self.verified.head() {
            Some((seq, hash)) => (seq + 1, hash),
            None => (0, [0; 32]),
        };
        let now = now_ms();
        let change =
            RegistryChange { seq, prev_hash, requested_by: requested_by.id.clone(), requested_at_ms: now, change };
        let subject = change.subject().unwrap();
        let approvals: Vec<_> =
            signers.iter().map(|s| sign_approval(&s.key, &s.id, &subject, Decision::Approve).unwrap()).collect();
        self.verified.apply_change(&change, &approvals, now).unwrap();
        store
            .append_registry_log(&RegistryLogRow {
                seq: i64::try_from(seq).unwrap(),
                hash: hex::encode(change.hash().unwrap()),
                change_json: serde_json::to_string(&change).unwrap(),
                approvals_json: serde_json::to_string(&approvals).unwrap(),
                applied_at_ms: now,
            })
            .await
            .unwrap();
    }

    async fn add(&mut self, store: &Store, admins: [&Op; 2], who: &Op, role: Role) {
        let change = RegistryChangeKind::AddOperator {
            operator_id: who.id.clone(),
            approval_public_key_hex: who.public_key_hex.clone(),
            role,
            expires_at_ms: None,
        };
        self.apply(store, admins[0], &admins, change).await;
    }
}

struct Staff {
    admin1: Op,
    admin2: Op,
    sm1: Op,
    sm2: Op,
    so1: Op,
    om1: Op,
    ko1: Op,
    registry: Registry,
}

/// Genesis admin, a second admin (bootstrap rule), then two signing managers, a signing operator, an
/// operations manager and a key operator, each added by admin1 and approved by admin2.
async fn staff(store: &Store, dir: &Path) -> Staff {
    let [admin1, admin2, sm1, sm2, so1, om1, ko1] =
        ["admin1", "admin2", "sm1", "sm2", "so1", "om1", "ko1"].map(|id| operator(dir, id));
    let mut registry = Registry { verified: OperatorRegistry::new() };
    let genesis = RegistryChangeKind::AddOperator {
        operator_id: admin1.id.clone(),
        approval_public_key_hex: admin1.public_key_hex.clone(),
        role: Role::Administrator,
        expires_at_ms: None,
    };
    registry.apply(store, &admin1, &[&admin1], genesis).await;
    let second = RegistryChangeKind::AddOperator {
        operator_id: admin2.id.clone(),
        approval_public_key_hex: admin2.public_key_hex.clone(),
        role: Role::Administrator,
        expires_at_ms: None,
    };
    registry.apply(store, &admin1, &[&admin1], second).await;
    for (op, role) in [
        (&sm1, Role::SigningManager),
        (&sm2, Role::SigningManager),
        (&so1, Role::SigningOperator),
        (&om1, Role::OperationsManager),
        (&ko1, Role::KeyOperator),
    ] {
        registry.add(store, [&admin1, &admin2], op, role).await;
    }
    Staff { admin1, admin2, sm1, sm2, so1, om1, ko1, registry }
}

/// Opens a `key_transition` request as the API would (`POST /v1/ops/requests`), returning its subject.
async fn open_request(store: &Store, id: &str, requester: &Op, to_state: &str, reason: &str) -> ApprovalSubject {
    let process = if to_state == "destroyed" { Process::Destruction } else { Process::Activation };
    let params = json!({ "key_id": HOT_KEY, "to_state": to_state, "reason": reason });
    let intent = request_intent_hash(process, id, "key_transition", &params);
    store
        .insert_ops_request(&NewOpsRequest {
            id: id.into(),
            process: process.as_str().into(),
            kind: "key_transition".into(),
            params_json: params.to_string(),
            intent_hash: hex::encode(intent),
            requester: requester.id.clone(),
            requester_terminal: "192.0.2.7".into(),
            required: 1,
            reasons_json: "[]".into(),
            now_ms: now_ms(),
        })
        .await
        .unwrap();
    ApprovalSubject::new(process, id, intent).unwrap()
}

/// Records `by`'s signed approval (what `POST /v1/ops/requests/{id}/approvals` stores), moving the request
/// to approved when `reaches_quorum`.
async fn approve(
    store: &Store,
    subject: &ApprovalSubject,
    by: &Op,
    signature_hex: Option<String>,
    reaches_quorum: bool,
) {
    let signature_hex = signature_hex
        .unwrap_or_else(|| sign_approval(&by.key, &by.id, subject, Decision::Approve).unwrap().signature_hex);
    let now = now_ms();
    let mut tx = store.begin_write().await.unwrap();
    insert_ops_approval_tx(
        &mut tx,
        &OpsApprovalRow {
            request_id: subject.request_id.clone(),
            operator_id: by.id.clone(),
            decision: "approve".into(),
            signature_hex,
            terminal: "192.0.2.8".into(),
            at_ms: now,
        },
    )
    .await
    .unwrap();
    if reaches_quorum {
        set_ops_request_state_tx(&mut tx, &subject.request_id, "requested", "approved", now).await.unwrap();
    }
    tx.commit().await.unwrap();
}

fn kinko(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kinko"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env(PASSPHRASE_ENV, PASSPHRASE)
        .output()
        .expect("run kinko")
}

fn key_cmd(h: &Harness, command: &str, request: &str, key: &Path, extra: &[&str]) -> Output {
    let config = h.config_path.display().to_string();
    let key = key.display().to_string();
    let mut args = vec![
        "key",
        command,
        "--config",
        &config,
        "--request",
        request,
        "--key",
        &key,
        "--passphrase-env",
        PASSPHRASE_ENV,
    ];
    args.extend_from_slice(extra);
    kinko(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command failed and its error mentions `needle`.
fn refused(what: &str, out: Output, needle: &str) {
    let err = stderr(&out);
    assert!(!out.status.success(), "{what}: expected a refusal, got success: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(needle), "{what}: expected {needle:?} in the error, got: {err}");
}

fn succeeded(what: &str, out: Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed ({}):\nstdout: {stdout}\nstderr: {}", out.status, stderr(&out));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
}

async fn key_state(store: &Store) -> String {
    store.key(HOT_KEY).await.unwrap().unwrap().state
}

/// K8, O2, Table A-1: a deactivation runs only once a signing manager approved it, only for a signing operator
/// who did not approve it, only with the key the registry holds for them, with the quorum re-counted; then the
/// key moves (attributed to the operator, with the request's reason), the request is executed and the
/// execution is an audit event naming the operator and the terminal. Running it again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_o2_key_transition_only_by_the_executing_role_after_approval_not_by_an_approver() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let h = Harness::new(ts, &[], 1, 30_000).await;
        let store = h.ts.store.clone();
        let dir = h.dir.path();
        let mut s = staff(&store, dir).await;
        assert_eq!(key_state(&store).await, "active", "{backend}");
        let id = "r_deactivate_hot";
        let subject = open_request(&store, id, &s.so1, "deactivated_standby", "quarterly standby").await;

        // Not approved yet (Table A-1: the approving role comes first).
        refused(
            &format!("{backend}: before approval"),
            key_cmd(&h, "transition", id, &s.so1.file, &[]),
            "not approved",
        );

        approve(&store, &subject, &s.sm1, None, true).await;
        // The wrong role: a key operator and an operations manager do not execute activation/deactivation.
        refused(
            &format!("{backend}: key operator"),
            key_cmd(&h, "transition", id, &s.ko1.file, &[]),
            "role (Table A-1)",
        );
        refused(
            &format!("{backend}: ops manager"),
            key_cmd(&h, "transition", id, &s.om1.file, &[]),
            "role (Table A-1)",
        );
        // A key file naming so1 but holding another key is not so1.
        let impostor = operator(dir, "so1");
        refused(
            &format!("{backend}: key file not registered"),
            key_cmd(&h, "transition", id, &impostor.file, &[]),
            "does not hold the approval key",
        );
        // Destruction is another command (and another process).
        refused(
            &format!("{backend}: destroy of a deactivation"),
            key_cmd(&h, "destroy", id, &s.so1.file, &["--confirm", HOT_KEY]),
            "not a destruction",
        );

        // sm1 becomes a signing operator: as the request's approver they still may not execute it (K8), and their
        // approval no longer counts (re-counted against the registry now, O2).
        let (admin1, admin2) = (&s.admin1, &s.admin2);
        let revoke = RegistryChangeKind::RevokeGrant { operator_id: "sm1".into(), role: Role::SigningManager };
        s.registry.apply(&store, admin1, &[admin1, admin2], revoke).await;
        let grant =
            RegistryChangeKind::Grant { operator_id: "sm1".into(), role: Role::SigningOperator, expires_at_ms: None };
        s.registry.apply(&store, admin1, &[admin1, admin2], grant).await;
        refused(
            &format!("{backend}: approver executes"),
            key_cmd(&h, "transition", id, &s.sm1.file, &[]),
            "executor-approved (K8)",
        );
        refused(&format!("{backend}: quorum lost"), key_cmd(&h, "transition", id, &s.so1.file, &[]), "quorum-not-met");
        assert_eq!(key_state(&store).await, "active", "{backend}: nothing refused moved the key");
        assert_eq!(store.ops_request(id).await.unwrap().unwrap().state, "approved", "{backend}");

        // A second signing manager's approval restores the quorum; the signing operator executes.
        approve(&store, &subject, &s.sm2, None, false).await;
        let done = succeeded(&format!("{backend}: so1 executes"), key_cmd(&h, "transition", id, &s.so1.file, &[]));
        assert_eq!(done["state"], "executed", "{backend}: {done}");
        assert_eq!(done["result"]["to"], "deactivated_standby", "{backend}: {done}");
        assert_eq!(key_state(&store).await, "deactivated_standby", "{backend}");
        let history = store.key_transitions("key", HOT_KEY).await.unwrap();
        let moved = history.last().unwrap();
        assert_eq!((moved.from.as_str(), moved.to.as_str()), ("active", "deactivated_standby"), "{backend}");
        assert_eq!(moved.actor, "so1", "{backend}: the executor is the key file's operator");
        assert!(moved.reason.starts_with("quarterly standby") && moved.reason.contains(id), "{backend}: {moved:?}");
        let row = store.ops_request(id).await.unwrap().unwrap();
        assert_eq!(row.state, "executed", "{backend}");
        assert_eq!(row.executor.as_deref(), Some("so1"), "{backend}");
        let events = store.ops_events_for_request(id).await.unwrap();
        let executed: Vec<_> = events.iter().filter(|e| e.event == "executed").collect();
        assert_eq!(executed.len(), 1, "{backend}: {events:?}");
        assert_eq!(executed[0].operator_id, "so1", "{backend}");
        assert!(executed[0].terminal.starts_with("cli:") || executed[0].terminal == "kinko-cli", "{backend}");
        assert!(executed[0].at_ms > 0 && executed[0].at_ms <= now_ms(), "{backend}");

        // Idempotent: a second run reports the execution and moves nothing.
        let again = succeeded(&format!("{backend}: re-run"), key_cmd(&h, "transition", id, &s.so1.file, &[]));
        assert_eq!(again["already_executed"], true, "{backend}: {again}");
        assert_eq!(store.key_transitions("key", HOT_KEY).await.unwrap().len(), history.len(), "{backend}");
        assert_eq!(store.ops_events_for_request(id).await.unwrap().len(), events.len(), "{backend}");
    }
}

/// O2: an approval row whose signature does not verify with the approver's registered key (written behind the
/// API's back) is not taken on the database's word: the execution is refused and the key stays as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn o2_key_transition_refuses_an_approval_whose_signature_does_not_verify() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let h = Harness::new(ts, &[], 1, 30_000).await;
        let store = h.ts.store.clone();
        let s = staff(&store, h.dir.path()).await;
        let id = "r_forged";
        let subject = open_request(&store, id, &s.so1, "suspended_emergency", "suspected intrusion").await;
        // sm1's name, somebody else's key.
        let forged = sign_approval(&s.sm2.key, "sm1", &subject, Decision::Approve).unwrap().signature_hex;
        approve(&store, &subject, &s.sm1, Some(forged), true).await;
        refused(&format!("{backend}: forged"), key_cmd(&h, "transition", id, &s.so1.file, &[]), "does not verify");
        assert_eq!(key_state(&store).await, "active", "{backend}");
        assert_eq!(store.ops_request(id).await.unwrap().unwrap().state, "approved", "{backend}");
    }
}

/// K7, K8, Table A-1: destruction is executed by the key operator after an operations manager's approval,
/// with `--confirm` repeating the key id, and still refused while the key's address holds funds on chain;
/// the refused request stays approved and the key untouched. `kinko key transition` does not run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_k8_key_destroy_runs_an_approved_destruction_request_and_checks_the_chain() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let h = Harness::new(ts, &[], 1, 30_000).await;
        let store = h.ts.store.clone();
        let s = staff(&store, h.dir.path()).await;
        // Destruction leaves a suspended key (Fig 5-2); the suspension itself is not under test here.
        let why = kinko_core::key_lifecycle::Attribution::new("setup", "test").unwrap();
        store.transition_key(HOT_KEY, None, "suspended_emergency", &why, now_ms()).await.unwrap();
        let id = "r_destroy_hot";
        let subject = open_request(&store, id, &s.ko1, "destroyed", "retired").await;
        approve(&store, &subject, &s.om1, None, true).await;

        refused(
            &format!("{backend}: transition of a destruction"),
            key_cmd(&h, "transition", id, &s.ko1.file, &[]),
            "kinko key destroy",
        );
        refused(
            &format!("{backend}: wrong --confirm"),
            key_cmd(&h, "destroy", id, &s.ko1.file, &["--confirm", "eth-hot-2"]),
            "--confirm",
        );
        refused(
            &format!("{backend}: signing operator destroys"),
            key_cmd(&h, "destroy", id, &s.so1.file, &["--confirm", HOT_KEY]),
            "role (Table A-1)",
        );
        // The hot wallet holds the dev funding: the on-chain check refuses (K7).
        refused(
            &format!("{backend}: funds on chain"),
            key_cmd(&h, "destroy", id, &s.ko1.file, &["--confirm", HOT_KEY]),
            "K7",
        );
        assert_eq!(key_state(&store).await, "suspended_emergency", "{backend}");
        assert_eq!(store.ops_request(id).await.unwrap().unwrap().state, "approved", "{backend}");
    }
}

/// A session for `op`, stored as a successful login stores it (logging in is api_ops' business).
async fn session(store: &Store, op: &Op) -> String {
    use kinko_server::api::ops_auth::{OPS_TOKEN_BYTES, sha256_hex};
    let token = hex::encode((0..OPS_TOKEN_BYTES).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
    let now = now_ms();
    store.create_operator_account(&op.id, &sha256_hex("unused enrolment token"), now + 60_000, now).await.unwrap();
    let session = kinko_store::operators::OperatorSessionRow {
        operator_id: op.id.clone(),
        terminal: "192.0.2.9".into(),
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
    };
    let event = kinko_store::ops_requests::NewOpsEvent {
        operator_id: op.id.clone(),
        terminal: "192.0.2.9".into(),
        event: "login".into(),
        request_id: None,
        detail_json: "{}".into(),
        at_ms: now,
    };
    store.operator_login_succeeded(&op.id, 1, &sha256_hex(&token), &session, &event).await.unwrap();
    token
}

/// K7, K8: the ops API has no node client, so it does not execute a destruction (that needs the on-chain
/// check): 409 telling the executor to run `kinko key destroy --request ID`, the request left approved and the
/// key untouched. Other key transitions stay executable through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_k8_api_refuses_to_execute_a_destruction_and_points_to_the_cli() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let h = Harness::new(ts, &[], 1, 30_000).await;
        let store = h.ts.store.clone();
        let s = staff(&store, h.dir.path()).await;
        let running = h.start_in_process().await;
        let http = reqwest::Client::new();
        let execute = |id: &str, token: &str| {
            http.post(format!("{}/v1/ops/requests/{id}/execute", h.api_base()))
                .bearer_auth(token)
                .json(&json!({}))
                .send()
        };

        // A deactivation still executes through the API (signing operator after a signing manager's approval).
        let deactivate = open_request(&store, "r_api_standby", &s.so1, "deactivated_standby", "standby").await;
        approve(&store, &deactivate, &s.sm1, None, true).await;
        let so1 = session(&store, &s.so1).await;
        let r = execute("r_api_standby", &so1).await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK, "{backend}: {}", r.text().await.unwrap());
        assert_eq!(key_state(&store).await, "deactivated_standby", "{backend}");

        // A destruction does not.
        let why = kinko_core::key_lifecycle::Attribution::new("setup", "test").unwrap();
        for to in ["active", "suspended_emergency"] {
            store.transition_key(HOT_KEY, None, to, &why, now_ms()).await.unwrap();
        }
        let destroy = open_request(&store, "r_api_destroy", &s.ko1, "destroyed", "retired").await;
        approve(&store, &destroy, &s.om1, None, true).await;
        let ko1 = session(&store, &s.ko1).await;
        let r = execute("r_api_destroy", &ko1).await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, reqwest::StatusCode::CONFLICT, "{backend}: {body}");
        assert!(body.contains("kinko key destroy --request r_api_destroy"), "{backend}: {body}");
        assert_eq!(store.ops_request("r_api_destroy").await.unwrap().unwrap().state, "approved", "{backend}");
        assert_eq!(key_state(&store).await, "suspended_emergency", "{backend}");
        running.stop().await;
    }
}
