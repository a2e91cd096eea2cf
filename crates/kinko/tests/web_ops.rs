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
/// Approval-key seeds of the signing managers.
const M1: u8 = 1;
const M2: u8 = 2;
const LI: u8 = 3;

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
    customer: Customer,
}

/// kinko with the two-approval policy, admin1/admin2, signing managers m1, m2, log inspector li1, and a
/// customer holding 5 ETH.
async fn console(tag: &str) -> Console {
    let mut h = Harness::new(sqlite_store().await, &[], 1, 60_000).await;
    configure_quorums(&mut h);
    std::fs::write(&h.config_path, toml::to_string(&h.config).unwrap()).unwrap();
    let (admin1, token) = operators::genesis(&h);
    let running = h.start_in_process().await;
    let base = h.api_base();
    browser::wait_until_serving(&base).await;
    let ops = tokio::task::spawn_blocking({
        let (base, dir) = (base.clone(), h.dir.path().to_path_buf());
        move || {
            let roles = [("m1", M1, "signing_manager"), ("m2", M2, "signing_manager"), ("li1", LI, "log_inspector")];
            operators::register_operators(&base, &dir, admin1, &token, &roles)
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
    Console { h, running, base, ops, customer }
}

/// A 2 ETH withdrawal (above the 1 ETH per-transaction limit): pending approval. Answers (id, destination).
async fn large_withdrawal(c: &Console, key: &str) -> (String, String) {
    let dest = outside_address(&format!("ops-console-{key}"));
    let (status, body) = c.customer.withdraw(key, 2 * ETH, &dest).await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending_approval", "above the per-tx limit: {body}");
    (body["id"].as_str().unwrap().to_string(), dest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_m10_two_operators_approve_a_large_withdrawal_in_chromium_and_an_inspector_sees_it() {
    let root = browser::repo_root();
    let chromium = browser::browser_prerequisites(&root);
    let c = console("journey").await;
    let (id, dest) = large_withdrawal(&c, "big-1").await;
    let row = c.h.ts.store.withdrawal(&id).await.unwrap().unwrap();
    let nonce_before = c.h.nonce_of(&c.h.hot_wallet).await;

    let (a, b, i) = (c.ops.get("m1"), c.ops.get("m2"), c.ops.get("li1"));
    let artifacts = browser::artifacts_dir(&root, "ops");
    let env = vec![
        ("KINKO_OPS_REQUEST", id.clone()),
        ("KINKO_OPS_INTENT_HASH", row.intent_hash.clone()),
        ("KINKO_OPS_DESTINATION", dest.to_ascii_lowercase()),
        ("KINKO_OPS_AMOUNT", "2 ETH".to_string()),
        ("KINKO_OPS_A_ID", a.id.clone()),
        ("KINKO_OPS_A_PASSWORD", a.password.clone()),
        ("KINKO_OPS_A_TOTP", a.totp_secret.clone()),
        ("KINKO_OPS_A_SIGNATURE", withdrawal_signature(M1, "m1", &id, &row.intent_hash, Decision::Approve)),
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
    let signature = withdrawal_signature(M1, "m1", &id, &row.intent_hash, Decision::Approve);
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
