//! The customer journey of issue #8's acceptance — sign up → MFA → deposit on anvil → withdraw → confirmed
//! — entirely in a real browser (M1, U1, U2, U4, U8, U9, U11, U13): kinko on SQLite with anvil, driven by
//! `tests/browser/customer_money.mjs` (playwright-core and Debian's Chromium).
//!
//! In Chromium the script signs up on `/signup`, verifies the e-mail address on `/verify-email` with the
//! token it reads from kinko's mail directory, logs in, sets up the authenticator app on `/portal/security`
//! (computing the codes from the key the page shows), proves it on the second-factor page, submits its
//! identity documents on `/portal/kyc`, sets the transaction password on
//! `/portal/security/transaction-password` (the login password refused by name first), reads the deposit
//! address off `/portal/deposit` and pays it from an unlocked anvil account over JSON-RPC
//! (`eth_sendTransaction`). It watches the deposit turn from pending to credited on the history page's
//! live reload (it mines the blocks itself, so the change happens while the page is open), waits for the
//! identity page and the dashboard to show the identity verified, saves a destination and waits out its
//! (short) cooling-off, is refused a withdrawal with a wrong transaction password, steps up, withdraws
//! 0.25 ETH with the transaction password, confirms it through the mailed link's page, and watches it reach
//! `settled` in the history. Every page goes through `checkPage` (headers, labels, Tab reach, overflow at
//! 375 px, CSP, screenshots at 375 and 1280 px under `target/test-artifacts/web-money/`).
//!
//! KYC (U1): withdrawals need a verified identity. The customer submits it in the browser: right after
//! the second factor the script follows the dashboard's link to `/portal/kyc` (the real onboarding:
//! `[onboarding] dev_auto_verify` is off, so the verification token is mailed and nothing is verified by
//! itself), is refused a blank document reference by name (422), and submits the passport's reference
//! (201). The operators' side stays on the API, while the script runs: once the submission is there, a
//! signing operator takes the case (`POST /v1/ops/kyc/{id}/review`) and an operations manager decides it
//! (`…/decision`), both real operators set up as a custodian does (genesis, registry changes approved by a
//! second administrator, password + TOTP enrolment). The script reloads `/portal/kyc` until it says
//! "verified", and the dashboard must say so too, before it withdraws.
//!
//! Afterwards the JSON API must report what the pages did: the TOTP factor and the transaction password
//! set, the deposit address the page showed, the deposit credited with the script's transaction, and the
//! withdrawal settled with exactly the amount typed. Without Chromium or playwright-core this test fails,
//! saying how to install them.

mod support;

use std::time::Duration;

use kinko_store::Store;
use kinko_store::testing::sqlite_store;
use serde_json::{Value, json};
use support::browser::{self, page_status};
use support::operators;
use support::{CUSTOMER_PASSWORD, ETH, Harness, TRANSACTION_PASSWORD, outside_address};

/// Pages the journey visits and checks, in order.
const PAGES: &[&str] = &[
    "signup",
    "signup-done",
    "verify-email",
    "verify-email-done",
    "login",
    "dashboard-new",
    "security",
    "totp-enrol",
    "totp-recovery-codes",
    "second-factor",
    "dashboard",
    "kyc",
    "kyc-error",
    "kyc-submitted",
    "transaction-password",
    "transaction-password-error",
    "transaction-password-set",
    "security-done",
    "deposit",
    "deposit-address",
    "history-credited",
    "kyc-verified",
    "dashboard-verified",
    "address-book",
    "address-book-saved",
    "withdraw-cooling-off",
    "withdraw",
    "withdraw-error",
    "step-up",
    "withdraw-requested",
    "confirm-withdrawal",
    "withdrawal-confirmed",
    "history-settled",
    "logins",
];
/// What the customer pays in on anvil, and withdraws (the page takes it as decimal text).
const DEPOSIT_WEI: u128 = 2 * ETH;
const WITHDRAW_TEXT: &str = "0.25";
const WITHDRAW_WEI: u128 = ETH / 4;
/// Confirmations before a deposit is credited and a withdrawal settles: more than the one block a
/// transaction lands in, so that the history shows the pending state first.
const CONFIRMATIONS: u64 = 3;
/// The address book's cooling-off in this test: long enough to be seen on the page, short enough to wait.
const COOLING_OFF_MS: u64 = 6_000;
/// How long the KYC side waits for the script to submit the documents on `/portal/kyc`.
const KYC_SUBMITTED_WAIT: Duration = Duration::from_secs(240);
/// The document reference the script types on `/portal/kyc` (kind: passport).
const KYC_REFERENCE: &str = "dms://web-money/passport-1";
/// Approval-key seeds of the KYC operators (their keys sign nothing here).
const REVIEWER_SEED: u8 = 21;
const MANAGER_SEED: u8 = 22;

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> (u16, Value) {
    let r = http.post(url).bearer_auth(token).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// U1: once the customer the script signs up has submitted their documents on `/portal/kyc` in the
/// browser, the signing operator takes the case and the operations manager verifies it. Answers the
/// submission id.
async fn kyc_verified_once_submitted(
    store: Store,
    base: String,
    email: String,
    reviewer: String,
    manager: String,
) -> String {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let deadline = tokio::time::Instant::now() + KYC_SUBMITTED_WAIT;
    let id = loop {
        if let Some(c) = store.customer_by_email(&email).await.unwrap()
            && let Some(s) = store.onboarding_status(&c.id).await.unwrap().submission
        {
            break s.id;
        }
        assert!(tokio::time::Instant::now() < deadline, "the script never submitted {email}'s KYC documents");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (status, s) = post(&http, format!("{base}/v1/ops/kyc/{id}/review"), &reviewer, json!({})).await;
    assert_eq!(status, 200, "take the case for review: {s}");
    let decision = json!({"decision": "verified", "reason": "passport checked against the applicant (web_money test)"});
    let (status, s) = post(&http, format!("{base}/v1/ops/kyc/{id}/decision"), &manager, decision).await;
    assert_eq!(status, 200, "decide the case: {s}");
    assert_eq!(s["state"], "verified", "{s}");
    id
}

/// M1, U1, U2, U4, U8, U9, U11, U13: the acceptance journey of issue #8, every customer step in Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_u4_customer_deposit_withdraw_confirm_journey_in_chromium() {
    let root = browser::repo_root();
    let chromium = browser::browser_prerequisites(&root);
    let mut h = Harness::new(sqlite_store().await, &[], CONFIRMATIONS, 60_000).await;
    h.config.address_book.cooling_off_ms = COOLING_OFF_MS;
    // The real onboarding: the verification token is mailed, and KYC is decided by operators.
    h.config.onboarding.dev_auto_verify = false;
    // The confirmation mail carries the link to the portal's confirmation page.
    h.config.withdrawal_confirmation.public_base_url = Some(h.api_base());
    std::fs::write(&h.config_path, toml::to_string(&h.config).unwrap()).unwrap();
    let (admin1, enrolment_token) = operators::genesis(&h);
    let _kinko = h.start_in_process().await;
    let base = h.api_base();
    browser::wait_until_serving(&base).await;

    // The KYC operators: a signing operator reviews, an operations manager decides.
    let (reviewer, manager) = tokio::task::spawn_blocking({
        let (base, dir) = (base.clone(), h.dir.path().to_path_buf());
        move || {
            let roles =
                [("kyc-rev", REVIEWER_SEED, "signing_operator"), ("kyc-mgr", MANAGER_SEED, "operations_manager")];
            let mut ops = operators::register_operators(&base, &dir, admin1, &enrolment_token, &roles);
            let mut reviewer = ops.enrolled.remove(0);
            let mut manager = ops.enrolled.remove(0);
            operators::login(&base, &mut reviewer);
            operators::login(&base, &mut manager);
            (reviewer.token.expect("reviewer token"), manager.token.expect("manager token"))
        }
    })
    .await
    .unwrap();

    let email = format!("web-money-{}@example.com", rand::random::<u32>());
    let destination = outside_address(&format!("web-money-dest-{email}"));
    let kyc =
        tokio::spawn(kyc_verified_once_submitted(h.ts.store.clone(), base.clone(), email.clone(), reviewer, manager));

    let artifacts = browser::artifacts_dir(&root, "web-money");
    let env = vec![
        ("KINKO_WEB_MAIL_DIR", h.mail_dir().display().to_string()),
        ("KINKO_WEB_ANVIL_URL", h.anvil.url().to_string()),
        ("KINKO_WEB_EMAIL", email.clone()),
        ("KINKO_WEB_PASSWORD", CUSTOMER_PASSWORD.to_string()),
        ("KINKO_WEB_TRANSACTION_PASSWORD", TRANSACTION_PASSWORD.to_string()),
        ("KINKO_WEB_PAYER", kinko_chain::anvil::ACCOUNT1.to_string()),
        ("KINKO_WEB_DEPOSIT_WEI", DEPOSIT_WEI.to_string()),
        ("KINKO_WEB_DESTINATION", destination.clone()),
        ("KINKO_WEB_AMOUNT", WITHDRAW_TEXT.to_string()),
        ("KINKO_WEB_CONFIRMATIONS", CONFIRMATIONS.to_string()),
        ("KINKO_WEB_KYC_REFERENCE", KYC_REFERENCE.to_string()),
    ];
    let report =
        browser::run_script(&root, &chromium, "tests/browser/customer_money.mjs", &base, &artifacts, env).await;
    let kyc_id = kyc.await.expect("the KYC decision");

    browser::assert_pages_checked(&report, PAGES, &artifacts);
    assert_eq!(page_status(&report, "signup-done"), Some(201));
    assert_eq!(page_status(&report, "totp-enrol"), Some(201));
    assert_eq!(page_status(&report, "transaction-password-error"), Some(422), "the login password refused");
    assert_eq!(page_status(&report, "withdraw-error"), Some(403), "wrong transaction password");
    assert_eq!(page_status(&report, "address-book-saved"), Some(201));
    assert_eq!(page_status(&report, "withdraw-requested"), Some(202));
    assert_eq!(report["recovery_codes"], 10);
    assert_eq!(page_status(&report, "kyc-error"), Some(422), "a blank document reference");
    assert_eq!(page_status(&report, "kyc-submitted"), Some(201));
    assert_eq!(report["kyc_submitted_state"], "submitted", "{report:#}");
    assert_eq!(report["kyc_page_shown"], "verified", "{report:#}");
    assert_eq!(report["kyc_shown"], "verified");
    // The history reloads itself: the script saw the deposit pending, then credited, without reloading.
    assert_eq!(report["history_refresh"], "5", "the history page's Refresh header");
    assert_eq!(report["deposit_states"], json!(["pending", "credited"]), "{report:#}");
    // A new destination always asks for the second-channel confirmation (U4, U8).
    assert_eq!(report["requested_status"], "awaiting confirmation");

    // The API sees what the pages did.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let token = support::password_session(&http, &base, &email).await;
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}")).bearer_auth(&token);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let mfa = get("/v1/mfa").await;
    assert_eq!((mfa["totp"].clone(), mfa["transaction_password"].clone()), (json!(true), json!(true)), "{mfa}");
    assert_eq!(mfa["passkeys"], 0, "{mfa}");
    let kyc_state = get("/v1/kyc").await;
    assert_eq!((kyc_state["email_verified"].clone(), kyc_state["state"].clone()), (json!(true), json!("verified")));
    assert_eq!(kyc_state["submission"]["id"], kyc_id.as_str());
    // The documents the API holds are the ones typed on /portal/kyc (the blank one was refused, not kept).
    assert_eq!(kyc_state["submission"]["documents"], json!([{"kind": "passport", "reference": KYC_REFERENCE}]));
    // The address the page showed is the customer's, and the script's payment to it was credited.
    let shown = report["deposit_address"].as_str().expect("the report names the deposit address");
    let (status, address) = post(&http, format!("{base}/v1/deposit-addresses"), &token, json!({"asset": "ETH"})).await;
    assert_eq!((status, address["address"].as_str()), (200, Some(shown)), "{address}");
    let deposits = get("/v1/deposits").await;
    let deposit = &deposits.as_array().expect("deposits")[0];
    assert_eq!(deposit["tx_hash"], report["deposit_tx_hash"], "{deposits}");
    assert_eq!(
        (deposit["status"].as_str(), deposit["amount"].as_str()),
        (Some("credited"), Some("2000000000000000000"))
    );

    // The withdrawal the pages showed is the API's, settled, and the chain paid exactly the amount.
    let id = report["withdrawal_id"].as_str().expect("the report names the withdrawal");
    let w = get(&format!("/v1/withdrawals/{id}")).await;
    assert_eq!(w["status"], "settled", "{w}");
    assert_eq!(w["amount"], WITHDRAW_WEI.to_string(), "0.25 typed on the page is 0.25 ETH in wei");
    assert_eq!(w["destination"], destination);
    assert_eq!(report["settled_tx_hash"], w["tx_hash"], "the history showed the transaction");
    // The mailed link's page showed what it confirms before the customer confirmed (U4).
    assert_eq!(report["confirm_page_amount"], format!("{WITHDRAW_TEXT} ETH"), "{report:#}");
    assert_eq!(report["confirm_page_destination"].as_str().map(str::to_lowercase), Some(destination.to_lowercase()));
    assert!(w["confirmations"].as_u64().unwrap() >= CONFIRMATIONS, "{w}");
    assert_eq!(h.balance_of(&destination).await, WITHDRAW_WEI, "the destination received the amount");
    support::wait_for("the balance after the withdrawal", Duration::from_secs(10), None, || async {
        let balances = get("/v1/balances").await;
        let eth =
            balances.as_array()?.iter().find(|b| b["asset"] == "ETH")?["available"].as_str()?.parse::<u128>().ok()?;
        (eth == DEPOSIT_WEI - WITHDRAW_WEI).then_some(())
    })
    .await;
}
