//! Moving money through the web console in a real browser (issue #8 acceptance; M1, U4, U8, U9, U11, U13):
//! kinko on SQLite with anvil, driven by `tests/browser/customer_money.mjs` (playwright-core and Debian's
//! Chromium).
//!
//! The customer journey "sign up → MFA → deposit on anvil → withdraw → confirmed": sign-up, TOTP enrolment
//! and the transaction password go through the API here (the portal's sign-up page has its own test,
//! `web_portal.rs`); ETH is paid on anvil to the customer's deposit address. In Chromium the script logs in
//! with password and TOTP code, watches the deposit turn from pending to credited on the history page's
//! live reload (it mines the blocks on anvil itself, so the change happens while the page is open), saves a
//! destination and waits out its (short) cooling-off, is refused a withdrawal with a wrong transaction
//! password, steps up, withdraws 0.25 ETH with the transaction password, confirms it through the mailed
//! link's page, and watches it reach `settled` in the history. Every page goes through `checkPage`
//! (headers, labels, Tab reach, overflow at 375 px, CSP, screenshots at 375 and 1280 px under
//! `target/test-artifacts/web-money/`). Without Chromium or playwright-core this test fails, saying how
//! to install them.

mod support;

use std::time::Duration;

use kinko_store::testing::sqlite_store;
use serde_json::Value;
use support::browser::{self, page_status};
use support::{CUSTOMER_PASSWORD, Customer, ETH, Harness, TRANSACTION_PASSWORD, outside_address};

/// Pages the journey visits and checks, in order.
const PAGES: &[&str] = &[
    "login",
    "second-factor",
    "dashboard",
    "history-credited",
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

/// M1, U4, U8, U9, U11, U13: the acceptance journey of issue #8 in Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_u4_customer_deposit_withdraw_confirm_journey_in_chromium() {
    let root = browser::repo_root();
    let chromium = browser::browser_prerequisites(&root);
    let mut h = Harness::new(sqlite_store().await, &[], CONFIRMATIONS, 60_000).await;
    h.config.address_book.cooling_off_ms = COOLING_OFF_MS;
    // The confirmation mail carries the link to the portal's confirmation page.
    h.config.withdrawal_confirmation.public_base_url = Some(h.api_base());
    let _kinko = h.start_in_process().await;
    let base = h.api_base();
    browser::wait_until_serving(&base).await;

    // Sign up, verify, enrol TOTP, set the transaction password, get the deposit address (the API).
    let email = format!("web-money-{}@example.com", rand::random::<u32>());
    let c = Customer::register(&base, &email, &h.mail_dir()).await;
    let (secret, step_used) = c.totp_for_browser();
    // Pay in on anvil: mined at once, one confirmation, so the deposit is pending until the script mines.
    h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, DEPOSIT_WEI).await.unwrap();
    let destination = outside_address(&format!("web-money-dest-{email}"));

    let artifacts = browser::artifacts_dir(&root, "web-money");
    let env = vec![
        ("KINKO_WEB_MAIL_DIR", h.mail_dir().display().to_string()),
        ("KINKO_WEB_ANVIL_URL", h.anvil.url().to_string()),
        ("KINKO_WEB_EMAIL", email.clone()),
        ("KINKO_WEB_PASSWORD", CUSTOMER_PASSWORD.to_string()),
        ("KINKO_WEB_TRANSACTION_PASSWORD", TRANSACTION_PASSWORD.to_string()),
        ("KINKO_WEB_TOTP_SECRET", secret),
        ("KINKO_WEB_TOTP_STEP_USED", step_used.to_string()),
        ("KINKO_WEB_DESTINATION", destination.clone()),
        ("KINKO_WEB_AMOUNT", WITHDRAW_TEXT.to_string()),
        ("KINKO_WEB_CONFIRMATIONS", CONFIRMATIONS.to_string()),
    ];
    let report =
        browser::run_script(&root, &chromium, "tests/browser/customer_money.mjs", &base, &artifacts, env).await;

    browser::assert_pages_checked(&report, PAGES, &artifacts);
    assert_eq!(page_status(&report, "withdraw-error"), Some(403), "wrong transaction password");
    assert_eq!(page_status(&report, "address-book-saved"), Some(201));
    assert_eq!(page_status(&report, "withdraw-requested"), Some(202));
    // The history reloads itself: the script saw the deposit pending, then credited, without reloading.
    assert_eq!(report["history_refresh"], "5", "the history page's Refresh header");
    assert_eq!(report["deposit_states"], serde_json::json!(["pending", "credited"]), "{report:#}");
    // A new destination always asks for the second-channel confirmation (U4, U8).
    assert_eq!(report["requested_status"], "awaiting confirmation");

    // The withdrawal the pages showed is the API's, settled, and the chain paid exactly the amount.
    let id = report["withdrawal_id"].as_str().expect("the report names the withdrawal");
    let w: Value = c.get(&format!("/v1/withdrawals/{id}")).await.unwrap();
    assert_eq!(w["status"], "settled", "{w}");
    assert_eq!(w["amount"], WITHDRAW_WEI.to_string(), "0.25 typed on the page is 0.25 ETH in wei");
    assert_eq!(w["destination"], destination);
    assert_eq!(report["settled_tx_hash"], w["tx_hash"], "the history showed the transaction");
    assert!(w["confirmations"].as_u64().unwrap() >= CONFIRMATIONS, "{w}");
    assert_eq!(h.balance_of(&destination).await, WITHDRAW_WEI, "the destination received the amount");
    support::wait_for("the balance after the withdrawal", Duration::from_secs(10), None, || async {
        (c.available().await == DEPOSIT_WEI - WITHDRAW_WEI).then_some(())
    })
    .await;
}
