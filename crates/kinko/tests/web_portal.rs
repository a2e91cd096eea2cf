//! The web console's customer portal in a real browser (issue #8; M1, U4, U10, U11): kinko on SQLite
//! with anvil, driven by `tests/browser/customer_portal.mjs` (playwright-core and Debian's Chromium).
//!
//! The script signs a customer up, verifies the e-mail with the mailed token, sees refusals named on the
//! page, logs in, reads the dashboard, gets the deposit address with its QR code, is refused cross-site
//! and token-less POSTs, logs out, and logs a TOTP customer in with password then code. It captures every
//! page at 375 px and 1280 px under `target/test-artifacts/web/` and checks labels, Tab reach, overflow and
//! CSP on each. Without Chromium or playwright-core this test fails, saying how to install them.

mod support;

use std::time::Duration;

use kinko_store::testing::sqlite_store;
use serde_json::{Value, json};
use support::browser::{self, page_status};
use support::{CUSTOMER_PASSWORD, Harness};

/// Pages the journey must have visited and checked, in order.
const PAGES: &[&str] = &[
    "signup",
    "signup-done",
    "signup-error",
    "verify-email",
    "verify-email-done",
    "login",
    "login-error",
    "dashboard",
    "deposit",
    "deposit-address",
    "deposit-error",
    "confirm-withdrawal",
    "confirm-withdrawal-error",
    "second-factor",
    "second-factor-error",
    "dashboard-totp",
];

/// A customer enrolled in TOTP through the API, for the script's second-factor log-in: (e-mail, base32
/// secret, the 30 s step whose code was used to confirm the enrolment).
async fn totp_customer(base: &str) -> (String, String, u64) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let email = format!("web-totp-{}@example.com", rand::random::<u32>());
    let r = http
        .post(format!("{base}/v1/customers"))
        .json(&json!({"email": email, "password": CUSTOMER_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "register {email}");
    let token = support::password_session(&http, base, &email).await;
    let r: Value = http
        .post(format!("{base}/v1/mfa/totp"))
        .bearer_auth(&token)
        .json(&json!({"password": CUSTOMER_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uri = r["otpauth_uri"].as_str().expect("otpauth_uri");
    let totp = totp_rs::Totp::from_url(uri).unwrap();
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .expect("the otpauth URI names the secret")
        .to_string();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let r = http
        .post(format!("{base}/v1/mfa/totp/confirm"))
        .bearer_auth(&token)
        .json(&json!({"enrolment_id": r["enrolment_id"], "code": totp.generate(now).to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "confirm TOTP for {email}");
    (email, secret, now / 30)
}

/// The customer's ETH deposit address as the JSON API answers it.
async fn api_deposit_address(base: &str, email: &str) -> String {
    let http = reqwest::Client::new();
    let token = support::password_session(&http, base, email).await;
    let r: Value = http
        .post(format!("{base}/v1/deposit-addresses"))
        .bearer_auth(&token)
        .json(&json!({"asset": "ETH"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["address"].as_str().expect("address").to_string()
}

/// M1, U4, U10, U11: the customer journey through the web console in Chromium, with every page captured
/// at two widths and checked for labels, keyboard reach and CSP, and every refusal named on its page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_u4_u10_u11_customer_portal_in_chromium() {
    let root = browser::repo_root();
    let chromium = browser::browser_prerequisites(&root);
    let mut h = Harness::new(sqlite_store().await, &[], 1, 60_000).await;
    // The real onboarding: the e-mail is verified with the mailed token, not automatically.
    h.config.onboarding.dev_auto_verify = false;
    let _kinko = h.start_in_process().await;
    let base = h.api_base();
    browser::wait_until_serving(&base).await;
    let (totp_email, totp_secret, totp_step_used) = totp_customer(&base).await;

    let artifacts = browser::artifacts_dir(&root, "web");
    let env = vec![
        ("KINKO_WEB_MAIL_DIR", h.mail_dir().display().to_string()),
        ("KINKO_WEB_PASSWORD", CUSTOMER_PASSWORD.to_string()),
        ("KINKO_WEB_TOTP_EMAIL", totp_email),
        ("KINKO_WEB_TOTP_PASSWORD", CUSTOMER_PASSWORD.to_string()),
        ("KINKO_WEB_TOTP_SECRET", totp_secret),
        ("KINKO_WEB_TOTP_STEP_USED", totp_step_used.to_string()),
    ];
    let report =
        browser::run_script(&root, &chromium, "tests/browser/customer_portal.mjs", &base, &artifacts, env).await;

    // Every page was visited, captured at both widths and passed the label and keyboard checks.
    browser::assert_pages_checked(&report, PAGES, &artifacts);
    // The refusals were named on their pages with the API's status.
    let status_of = |name: &str| page_status(&report, name);
    assert_eq!(status_of("signup-error"), Some(409));
    assert_eq!(status_of("login-error"), Some(401));
    assert_eq!(status_of("deposit-error"), Some(422));
    assert_eq!(status_of("second-factor-error"), Some(403));
    assert_eq!(status_of("confirm-withdrawal-error"), Some(422));
    // The session cookie as Chromium keeps it on http://127.0.0.1 (a secure context).
    assert_eq!(report["cookie"], json!({"httpOnly": true, "secure": true, "sameSite": "Strict"}));
    // CSRF: both lines refused.
    assert_eq!(report["csrf"], json!({"no_origin": 403, "foreign_origin": 403, "wrong_token": 403}));

    // The address the page showed is the one the API gives the same customer.
    let email = report["email"].as_str().expect("the report names the signed-up customer");
    let shown = report["deposit_address"].as_str().expect("deposit address shown");
    assert_eq!(api_deposit_address(&base, email).await, shown, "the page's address is the API's");
}
