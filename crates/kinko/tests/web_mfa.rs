//! The customer's second factors in the web console, in a real browser (issue #8; U2, U3, U4): kinko on
//! SQLite with anvil, driven by `tests/browser/customer_mfa.mjs` (playwright-core and Debian's Chromium,
//! passkeys through Chromium's virtual authenticator over the DevTools protocol).
//!
//! The script enrols TOTP through the page (the code computed from the key the page shows), logs out and
//! back in with the code, adds a passkey, logs in with it as the second factor, and steps up with a
//! recovery code and with the passkey; then it removes the authenticator app on the security page (the
//! API's `DELETE /v1/mfa/totp` behind it), and the next log-in offers the passkey, refuses a recovery code
//! of the removed app and opens with the passkey. Every page is captured at 375 px and 1280 px under
//! `target/test-artifacts/web-mfa/` and checked like every console page. Afterwards the JSON API must
//! report the same factors. The WebAuthn relying party is `localhost` with the test's origin: browsers
//! refuse an IP address as a relying-party id, so the browser is pointed at `http://localhost:<port>`.

mod support;

use std::time::Duration;

use kinko_store::testing::sqlite_store;
use serde_json::{Value, json};
use support::browser::{self, page_status};
use support::{CUSTOMER_PASSWORD, Harness};

/// Pages the journey must have visited and checked, in order.
const PAGES: &[&str] = &[
    "security",
    "totp-enrol",
    "totp-enrol-error",
    "totp-recovery-codes",
    "second-factor",
    "dashboard-totp",
    "passkey-enrol",
    "passkey-added",
    "second-factor-with-passkey",
    "passkey-login",
    "dashboard-passkey",
    "step-up",
    "security-after-step-up",
    "step-up-error",
    "step-up-passkey",
    "totp-removed",
    "security-after-removal",
    "second-factor-passkey-only",
    "second-factor-removed-code",
];

/// U2, U3, U4: TOTP and passkey enrolment and log-in through the web console in Chromium, step-up with
/// a recovery code and a passkey, removal of the authenticator app, every page checked; the API then
/// reports the factors the pages left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_u3_u4_totp_and_passkey_enrolment_and_login_in_chromium() {
    let root = browser::repo_root();
    let chromium = browser::browser_prerequisites(&root);
    let mut h = Harness::new(sqlite_store().await, &[], 1, 60_000).await;
    let port = h.config.listen.port();
    let base = format!("http://localhost:{port}");
    h.config.customer_auth.rp_id = "localhost".into();
    h.config.customer_auth.rp_origin = base.clone();
    let _kinko = h.start_in_process().await;
    browser::wait_until_serving(&h.api_base()).await;

    // A customer with no factor yet (the dev configuration verifies sign-ups itself).
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let email = format!("web-mfa-{}@example.com", rand::random::<u32>());
    let r = http
        .post(format!("{base}/v1/customers"))
        .json(&json!({"email": email, "password": CUSTOMER_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "register {email}");
    let customer_id = r.json::<Value>().await.unwrap()["id"].as_str().expect("the customer id").to_string();

    let artifacts = browser::artifacts_dir(&root, "web-mfa");
    let env = vec![("KINKO_WEB_EMAIL", email.clone()), ("KINKO_WEB_PASSWORD", CUSTOMER_PASSWORD.to_string())];
    let report = browser::run_script(&root, &chromium, "tests/browser/customer_mfa.mjs", &base, &artifacts, env).await;

    browser::assert_pages_checked(&report, PAGES, &artifacts);
    assert_eq!(page_status(&report, "totp-enrol-error"), Some(403));
    assert_eq!(page_status(&report, "step-up-error"), Some(403));
    assert_eq!(report["recovery_codes"], 10);
    assert_eq!(report["authenticator_credentials"], 1);
    assert_eq!(report["next_refused"], "/portal");
    assert_eq!(report["webauthn_js"]["status"], 200);
    assert_eq!(page_status(&report, "second-factor-removed-code"), Some(403), "a code of the removed app");
    assert_eq!(report["totp_state_after_removal"], "not set up");
    assert_eq!(report["passkey_offered_after_removal"], true);

    // The API sees what the pages did: the authenticator app removed with its recovery codes (the page
    // showed one of ten used before), one passkey, and the passkey the page named.
    let token = support::password_session(&http, &base, &email).await;
    let token = token.as_str();
    let status: Value =
        http.get(format!("{base}/v1/mfa")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["totp"], false, "{status}");
    assert_eq!(status["passkeys"], 1, "{status}");
    assert_eq!(status["recovery_codes_remaining"], 0, "{status}");
    let passkeys = h.ts.store.passkeys(&customer_id).await.unwrap();
    assert_eq!(passkeys.len(), 1);
    assert_eq!(Some(passkeys[0].credential_id.as_str()), report["passkey_id"].as_str());
    assert!(passkeys[0].last_used_at_ms > 0, "the passkey log-in was not recorded");
}
