//! The web console's operator pages (issue #8; K8, M10, M1): kinko on SQLite with anvil, operators set up as
//! a custodian does (genesis, registry changes approved by a second administrator, enrolment with password
//! and TOTP), a customer's large withdrawal waiting for two signing managers' approval.
//!
//! - In Chromium (`tests/browser/operator_console.mjs`): operator A logs in with password + TOTP, opens the
//!   queue and the request, sees the transaction decoded from the payload the signer will sign (destination,
//!   amount, chain, fee, nonce, intent hash), pastes the signature A's key made over the approval message and
//!   approves; operator B the same; the withdrawal executes and settles on anvil; operator C (log inspector)
//!   logs in and sees it in the inspection view and records the inspection. Every page is checked (headers,
//!   labels, Tab reach, overflow, CSP) and captured at 375 and 1280 px under `target/test-artifacts/ops/`.
//! - Server side: a stored withdrawal whose destination was edited after the intent was fixed shows the
//!   mismatch alert and no approval form, and a decision posted anyway is refused before it is recorded.

mod support;

use std::time::Duration;

use kinko_core::operators::Decision;
use kinko_server::app::Running;
use kinko_store::testing::sqlite_store;
use serde_json::{Value, json};
use support::browser;
use support::operators::{self, Operators, configure_quorums, withdrawal_signature};
use support::{Customer, ETH, Harness, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
/// Approval-key seeds of the operators with deterministic keys (m1 and sm1 sign with key files instead).
const M2: u8 = 2;
const LI: u8 = 3;
const SO: u8 = 4;

/// Pages the journey must have visited and checked, in order.
const PAGES: &[&str] = &[
    "a-login",
    "a-queue",
    "a-request",
    "a-approved",
    "b-login",
    "b-queue",
    "b-request",
    "b-approved",
    "c-login",
    "c-inspection",
    "c-request",
    "c-inspected",
    "c-audit",
    "c-freezes",
    "c-reconciliation",
];

struct Console {
    h: Harness,
    running: Running,
    base: String,
    ops: Operators,
    /// Operators whose approval key is a `kinko operator keygen` key file (they sign with `kinko ops sign`).
    with_key_files: Vec<operators::Op>,
    customer: Customer,
}

impl Console {
    fn key_file_op(&self, id: &str) -> operators::Op {
        self.with_key_files.iter().find(|o| o.id == id).unwrap_or_else(|| panic!("operator {id}")).clone()
    }
}

/// The withdrawal journey's operators: signing managers m1 (key file) and m2 (deterministic key), log
/// inspector li1.
const WITHDRAWAL_ROLES: &[(&str, u8, &str)] = &[("m2", M2, "signing_manager"), ("li1", LI, "log_inspector")];
const WITHDRAWAL_KEY_FILES: &[(&str, &str)] = &[("m1", "signing_manager")];

/// kinko with the two-approval policy, admin1/admin2, the given operators (`roles` with deterministic keys,
/// `key_files` with `kinko operator keygen` key files), and a customer holding 5 ETH.
async fn console(tag: &str) -> Console {
    console_with(tag, WITHDRAWAL_ROLES, WITHDRAWAL_KEY_FILES).await
}

async fn console_with(tag: &str, roles: &[(&'static str, u8, &'static str)], key_files: &[(&str, &str)]) -> Console {
    let mut h = Harness::new(sqlite_store().await, &[], 1, 60_000).await;
    configure_quorums(&mut h);
    std::fs::write(&h.config_path, toml::to_string(&h.config).unwrap()).unwrap();
    let (admin1, token) = operators::genesis(&h);
    let running = h.start_in_process().await;
    let base = h.api_base();
    browser::wait_until_serving(&base).await;
    let (ops, with_key_files) = tokio::task::spawn_blocking({
        let (base, dir) = (base.clone(), h.dir.path().to_path_buf());
        let roles = roles.to_vec();
        let key_files: Vec<(String, String)> = key_files.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        move || {
            let ops = operators::register_operators(&base, &dir, admin1, &token, &roles);
            let with_files = key_files
                .iter()
                .map(|(id, role)| operators::register_with_key_file(&base, &dir, &ops, id, role))
                .collect();
            (ops, with_files)
        }
    })
    .await
    .unwrap();
    let customer = Customer::register(&base, &format!("{tag}-ops@example.com"), &h.mail_dir()).await;
    h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &customer.deposit_address, 5 * ETH).await.unwrap();
    wait_for("deposit credit", TIMEOUT, Some(&h.anvil), || async {
        (customer.available().await == 5 * ETH).then_some(())
    })
    .await;
    Console { h, running, base, ops, with_key_files, customer }
}

/// A 2 ETH withdrawal (above the 1 ETH per-transaction limit): pending approval. Answers (id, destination).
async fn large_withdrawal(c: &Console, key: &str) -> (String, String) {
    let dest = outside_address(&format!("ops-console-{key}"));
    let (status, body) = c.customer.withdraw(key, 2 * ETH, &dest).await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending_approval", "above the per-tx limit: {body}");
    (body["id"].as_str().unwrap().to_string(), dest)
}

/// The current TOTP step (30 s).
fn totp_step() -> i64 {
    kinko_server::clock::now_ms() / 30_000
}

/// `op` logs in from the command line (`kinko ops login`) and runs `kinko ops sign ID` there. Answers what
/// it printed and the TOTP step by which its log-in code was used (a later browser log-in takes a later one).
async fn cli_sign(base: &str, mut op: operators::Op, id: &str) -> (operators::Signed, i64) {
    let (base, id) = (base.to_string(), id.to_string());
    tokio::task::spawn_blocking(move || {
        operators::login(&base, &mut op);
        let after = totp_step();
        (operators::sign(&base, &op, &id, false), after)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_m10_two_operators_approve_a_large_withdrawal_in_chromium_and_an_inspector_sees_it() {
    let root = browser::repo_root();
    let chromium = browser::browser_prerequisites(&root);
    let c = console("journey").await;
    let (id, dest) = large_withdrawal(&c, "big-1").await;
    let row = c.h.ts.store.withdrawal(&id).await.unwrap().unwrap();
    let nonce_before = c.h.nonce_of(&c.h.hot_wallet).await;

    let (a, b, i) = (c.key_file_op("m1"), c.ops.get("m2"), c.ops.get("li1"));
    // A signs on their own terminal with the real `kinko ops sign` (logged in there with their own session:
    // the browser's log-in then takes a later TOTP step); B's signature is the library's over the same message.
    let (signed_a, a_after) = cli_sign(&c.base, a.clone(), &id).await;
    assert_eq!(signed_a.decision, "approve");
    let artifacts = browser::artifacts_dir(&root, "ops");
    let env = vec![
        ("KINKO_OPS_REQUEST", id.clone()),
        ("KINKO_OPS_INTENT_HASH", row.intent_hash.clone()),
        ("KINKO_OPS_DESTINATION", dest.to_ascii_lowercase()),
        ("KINKO_OPS_AMOUNT", "2 ETH".to_string()),
        ("KINKO_OPS_A_ID", a.id.clone()),
        ("KINKO_OPS_A_PASSWORD", a.password.clone()),
        ("KINKO_OPS_A_TOTP", a.totp_secret.clone()),
        ("KINKO_OPS_A_SIGNATURE", signed_a.signature_hex.clone()),
        ("KINKO_OPS_A_TOTP_AFTER", a_after.to_string()),
        ("KINKO_OPS_B_ID", b.id.clone()),
        ("KINKO_OPS_B_PASSWORD", b.password.clone()),
        ("KINKO_OPS_B_TOTP", b.totp_secret.clone()),
        ("KINKO_OPS_B_SIGNATURE", withdrawal_signature(M2, "m2", &id, &row.intent_hash, Decision::Approve)),
        ("KINKO_OPS_C_ID", i.id.clone()),
        ("KINKO_OPS_C_PASSWORD", i.password.clone()),
        ("KINKO_OPS_C_TOTP", i.totp_secret.clone()),
    ];
    let report =
        browser::run_script(&root, &chromium, "tests/browser/operator_console.mjs", &c.base, &artifacts, env).await;
    browser::assert_pages_checked(&report, PAGES, &artifacts);
    assert_eq!(report["cookie"], json!({"httpOnly": true, "secure": true, "sameSite": "Strict"}));
    // What A saw was decoded from the payload: the customer's destination and amount.
    assert_eq!(report["decoded"]["destination"], Value::from(dest.to_ascii_lowercase()));
    assert!(report["decoded"]["amount"].as_str().unwrap_or_default().starts_with("2 ETH"), "{report}");
    // `kinko ops sign` signed exactly the approval message the page showed.
    assert_eq!(report["approval_message"], Value::from(signed_a.message_hex.clone()), "{report}");

    // Two signed approvals through the API's own decide: recorded with the signatures the signer verifies.
    let approvals = c.h.ts.store.ops_approvals(&id).await.unwrap();
    let approvers: Vec<&str> = approvals.iter().map(|a| a.operator_id.as_str()).collect();
    assert_eq!(approvers, ["m1", "m2"]);
    // The audit trail names the operator behind each console decision (the ops cookie, as a bearer token).
    for who in ["m1", "m2"] {
        let filter = kinko_store::audit::AuditFilter {
            after_seq: 0,
            actor_id: who.into(),
            action_prefix: format!("POST /ops/requests/{id}/decision"),
        };
        let rows = c.h.ts.store.audit_search(&filter, 100).await.unwrap();
        // The attempt, then its outcome (the redirect back to the request page).
        let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
        assert_eq!(outcomes.len(), 2, "{who}'s decision is in the audit trail under their name: {outcomes:?}");
        assert!(outcomes[1].starts_with("303"), "{who}: {outcomes:?}");
    }
    // The withdrawal executes on anvil: paid once, to the decoded destination.
    wait_for("settlement", TIMEOUT, Some(&c.h.anvil), || async {
        let w = c.h.ts.store.withdrawal(&id).await.ok()??;
        (w.status.as_str() == "settled").then_some(())
    })
    .await;
    assert_eq!(c.h.balance_of(&dest).await, 2 * ETH, "paid exactly once");
    assert_eq!(c.h.nonce_of(&c.h.hot_wallet).await, nonce_before + 1, "one transaction");
    // The inspector's finding was recorded.
    let req = c.h.ts.store.ops_request(&id).await.unwrap().unwrap();
    assert_eq!((req.state.as_str(), req.inspector.as_deref()), ("inspected", Some("li1")));
    c.running.stop().await;
}

/// M10, the Bybit lesson: the stored withdrawal (what the pipeline builds the payload from) was edited to
/// another destination after the intent was fixed. The page decodes the payload, says it does not match the
/// intent, offers no approval form, and a signed approval posted anyway is refused before it is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m10_tampered_withdrawal_shows_the_mismatch_and_no_approval_form() {
    let c = console("tamper").await;
    let (id, dest) = large_withdrawal(&c, "big-tamper").await;
    let row = c.h.ts.store.withdrawal(&id).await.unwrap().unwrap();
    // admin2's session (logged in from the command line) reads the page; administrators may read requests.
    let token = c.ops.admin2.token.clone().unwrap();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = || {
        http.get(format!("{}/ops/requests/{id}", c.base))
            .header("cookie", format!("{}={token}", kinko_server::web::ops::OPS_SESSION_COOKIE))
            .send()
    };
    let clean = get().await.unwrap();
    assert_eq!(clean.status(), 200);
    let clean = clean.text().await.unwrap();
    assert!(!clean.contains("id=\"mismatch\""), "untampered: no alert");
    assert!(clean.contains(&dest.to_ascii_lowercase()), "the decoded destination is shown");
    assert!(clean.contains("name=\"signature_hex\""), "untampered: the approval form is offered");

    let evil = outside_address("attacker");
    kinko_store::sqlx::query("UPDATE withdrawals SET destination = $1 WHERE id = $2")
        .bind(&evil)
        .bind(&id)
        .execute(c.h.ts.store.pool())
        .await
        .unwrap();
    let page = get().await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"mismatch\"") && page.contains("role=\"alert\""), "the alert is shown: {page}");
    assert!(page.contains("does not match the intent"), "{page}");
    assert!(page.contains(&evil.to_ascii_lowercase()), "what would really be signed is shown");
    assert!(!page.contains("name=\"signature_hex\""), "no approval form");
    assert!(!page.contains("/decision\""), "no decision form");

    // A decision posted anyway (same origin, valid CSRF token) is refused before `decide` records it.
    let signature = withdrawal_signature(M2, "m2", &id, &row.intent_hash, Decision::Approve);
    // Every value is hex or a plain word: nothing to percent-encode.
    let form = format!("csrf={}&decision=approve&signature_hex={signature}", kinko_server::web::csrf_token(&token));
    let refused = http
        .post(format!("{}/ops/requests/{id}/decision", c.base))
        .header("cookie", format!("{}={token}", kinko_server::web::ops::OPS_SESSION_COOKIE))
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    assert!(refused.text().await.unwrap().contains("intent-mismatch"));
    assert!(c.h.ts.store.ops_approvals(&id).await.unwrap().is_empty(), "nothing recorded");
    c.running.stop().await;
}

/// Pages of the key lifecycle journey: the request, then the approval, the execution and the logs.
const KEY_REQUEST_PAGES: &[&str] = &["so-login", "so-keys", "so-requested"];
const KEY_APPROVE_PAGES: &[&str] = &[
    "sm-login",
    "sm-request",
    "sm-approved",
    "so2-login",
    "so2-request",
    "so2-executed",
    "so2-keys",
    "so2-access-refused",
    "li-login",
    "li-access-log",
];

/// K8, K7, L2: a key lifecycle action through the console, Table A-1's way. In Chromium a signing operator
/// requests a move of the hot wallet's key on /ops/keys (active → deactivated_standby); the signing manager
/// signs it on their terminal with the real `kinko ops sign` (which first refuses a request whose stored intent
/// hash is not the hash of what it shows) and pastes the printed signature into the request page; the signing
/// operator executes it there and sees the new state on /ops/keys, and is refused the key access log by a page
/// naming the rule; a log inspector reads that log, and its rows are exactly the API's (the signer signed a small
/// withdrawal first, so there is one). Checked through the store: the approval, the executor, the key's state
/// and its recorded transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_k7_l2_key_lifecycle_action_requested_approved_and_executed_in_chromium() {
    let root = browser::repo_root();
    let chromium = browser::browser_prerequisites(&root);
    let roles = [("so1", SO, "signing_operator"), ("li1", LI, "log_inspector")];
    let c = console_with("keys", &roles, &[("sm1", "signing_manager")]).await;
    let hot = kinko_server::app::HOT_KEY_ID;
    // The signer signs once (a withdrawal under the approval threshold): the key access log has a row.
    let dest = outside_address("ops-keys-small");
    let (status, body) = c.customer.withdraw("small-1", ETH / 10, &dest).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let wid = body["id"].as_str().unwrap().to_string();
    wait_for("the small withdrawal to settle", TIMEOUT, Some(&c.h.anvil), || async {
        let w = c.h.ts.store.withdrawal(&wid).await.ok()??;
        (w.status.as_str() == "settled").then_some(())
    })
    .await;
    assert_eq!(c.h.ts.store.key(hot).await.unwrap().unwrap().state, "active");
    let (so, li, sm) = (c.ops.get("so1"), c.ops.get("li1"), c.key_file_op("sm1"));
    let who = |x: &str, op: &operators::Op| -> Vec<(&'static str, String)> {
        let names = match x {
            "SO" => ["KINKO_OPS_SO_ID", "KINKO_OPS_SO_PASSWORD", "KINKO_OPS_SO_TOTP"],
            "SM" => ["KINKO_OPS_SM_ID", "KINKO_OPS_SM_PASSWORD", "KINKO_OPS_SM_TOTP"],
            _ => ["KINKO_OPS_LI_ID", "KINKO_OPS_LI_PASSWORD", "KINKO_OPS_LI_TOTP"],
        };
        names.into_iter().zip([op.id.clone(), op.password.clone(), op.totp_secret.clone()]).collect()
    };

    // In the browser: the signing operator requests the move.
    let mut env = vec![
        ("KINKO_OPS_JOURNEY", "keys-request".to_string()),
        ("KINKO_OPS_KEY", hot.to_string()),
        ("KINKO_OPS_TO_STATE", "deactivated_standby".to_string()),
    ];
    env.extend(who("SO", so));
    let artifacts = browser::artifacts_dir(&root, "ops/keys-request");
    let report =
        browser::run_script(&root, &chromium, "tests/browser/operator_console.mjs", &c.base, &artifacts, env).await;
    browser::assert_pages_checked(&report, KEY_REQUEST_PAGES, &artifacts);
    assert_eq!(report["key_state_before"], "active", "{report}");
    let id = report["request_id"].as_str().expect("the request's id").to_string();
    let row = c.h.ts.store.ops_request(&id).await.unwrap().unwrap();
    assert_eq!(
        (row.process.as_str(), row.kind.as_str(), row.requester.as_str(), row.state.as_str()),
        ("activation", "key_transition", "so1", "requested")
    );
    let params: Value = serde_json::from_str(&row.params_json).unwrap();
    assert_eq!((params["key_id"].as_str(), params["to_state"].as_str()), (Some(hot), Some("deactivated_standby")));

    // On the signing manager's terminal: `kinko ops sign` refuses a stored intent hash that is not the hash of
    // the request it shows (nothing printed), then signs the untouched request.
    let (sm, sm_after) = tokio::task::spawn_blocking({
        let (base, mut sm) = (c.base.clone(), sm.clone());
        move || {
            operators::login(&base, &mut sm);
            (sm, totp_step())
        }
    })
    .await
    .unwrap();
    let set_hash = |hash: String| {
        kinko_store::sqlx::query("UPDATE ops_requests SET intent_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id.clone())
            .execute(c.h.ts.store.pool())
    };
    set_hash("ab".repeat(32)).await.unwrap();
    let refused = tokio::task::spawn_blocking({
        let (base, sm, id) = (c.base.clone(), sm.clone(), id.clone());
        move || operators::ops(&base, &sm, &["sign", &id, "--key", &sm.key_file, "--passphrase-env", "KINKO_TEST_PASS"])
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
    assert!(!refused.status.success(), "signed a tampered request: {stdout}");
    assert!(stderr.contains("REFUSED") && !stdout.contains("signature:"), "{stdout}\n{stderr}");
    set_hash(row.intent_hash.clone()).await.unwrap();
    let signed = tokio::task::spawn_blocking({
        let (base, sm, id) = (c.base.clone(), sm.clone(), id.clone());
        move || operators::sign(&base, &sm, &id, false)
    })
    .await
    .unwrap();
    assert_eq!(signed.decision, "approve");

    // In the browser: approval with the pasted signature, execution, the key's new state, the access log.
    let mut env = vec![
        ("KINKO_OPS_JOURNEY", "keys-approve".to_string()),
        ("KINKO_OPS_REQUEST", id.clone()),
        ("KINKO_OPS_KEY", hot.to_string()),
        ("KINKO_OPS_TO_STATE", "deactivated_standby".to_string()),
        ("KINKO_OPS_SM_SIGNATURE", signed.signature_hex.clone()),
        ("KINKO_OPS_SM_TOTP_AFTER", sm_after.to_string()),
        ("KINKO_OPS_SO_TOTP_AFTER", report["totp_steps"]["so1"].as_i64().expect("so1's step").to_string()),
    ];
    env.extend(who("SM", &sm));
    env.extend(who("SO", so));
    env.extend(who("LI", li));
    let artifacts = browser::artifacts_dir(&root, "ops/keys-approve");
    let report =
        browser::run_script(&root, &chromium, "tests/browser/operator_console.mjs", &c.base, &artifacts, env).await;
    browser::assert_pages_checked(&report, KEY_APPROVE_PAGES, &artifacts);
    assert_eq!(browser::page_status(&report, "so2-access-refused"), Some(403));
    // `kinko ops sign` signed exactly the approval message the page showed.
    assert_eq!(report["approval_message"], Value::from(signed.message_hex.clone()), "{report}");

    // Through the store: sm1's signed approval, executed by so1, the key moved and the move recorded.
    let approvals = c.h.ts.store.ops_approvals(&id).await.unwrap();
    assert_eq!(approvals.len(), 1);
    assert_eq!(
        (approvals[0].operator_id.as_str(), approvals[0].decision.as_str(), approvals[0].signature_hex.as_str()),
        ("sm1", "approve", signed.signature_hex.as_str())
    );
    let row = c.h.ts.store.ops_request(&id).await.unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.executor.as_deref()), ("executed", Some("so1")));
    assert_eq!(c.h.ts.store.key(hot).await.unwrap().unwrap().state, "deactivated_standby");
    assert_eq!(report["key_state"], "deactivated_standby", "the page shows the new state: {report}");
    let moves = c.h.ts.store.key_transitions(kinko_store::key_lifecycle::SUBJECT_KEY, hot).await.unwrap();
    let last = moves.last().expect("a recorded transition");
    assert_eq!((last.from.as_str(), last.to.as_str(), last.actor.as_str()), ("active", "deactivated_standby", "so1"));

    // The log inspector's page shows exactly the rows the API returns (administrators may read it too).
    let token = c.ops.admin2.token.clone().unwrap();
    let api: Value = reqwest::Client::new()
        .get(format!("{}/v1/ops/key-access-log", c.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut from_api: Vec<&str> = api.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut on_page: Vec<&str> =
        report["access_ids"].as_array().expect("access ids").iter().map(|v| v.as_str().unwrap()).collect();
    from_api.sort_unstable();
    on_page.sort_unstable();
    assert!(!from_api.is_empty(), "the signer's signature is logged: {api}");
    assert!(api.as_array().unwrap().iter().any(|r| r["key_id"] == hot && r["operation"] == "sign"), "{api}");
    assert_eq!(on_page, from_api, "the page lists the API's rows");
    c.running.stop().await;
}
