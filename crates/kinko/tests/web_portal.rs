//! The web console's customer portal in a real browser (issue #8; M1, U4, U10, U11): kinko on SQLite
//! with anvil, driven by `tests/browser/customer_portal.mjs` (playwright-core and Debian's Chromium).
//!
//! The script signs a customer up, verifies the e-mail with the mailed token, sees refusals named on the
//! page, logs in, reads the dashboard, gets the deposit address with its QR code, is refused cross-site
//! and token-less POSTs, logs out, and logs a TOTP customer in with password then code. It captures every
//! page at 375 px and 1280 px under `target/test-artifacts/web/` and checks labels, Tab reach, overflow and
//! CSP on each. Without Chromium or playwright-core this test fails, saying how to install them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kinko_store::testing::sqlite_store;
use serde_json::{Value, json};
use support::{CUSTOMER_PASSWORD, Harness};

/// Chromium as Debian installs it; `KINKO_CHROMIUM` overrides.
const CHROMIUM_DEFAULT: &str = "/usr/bin/chromium";
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
const WIDTHS_PX: &[u32] = &[375, 1280];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository root")
}

/// Fails (never skips) when the browser or its driver is missing, naming the command that installs it.
fn browser_prerequisites(root: &Path) -> PathBuf {
    let chromium = std::env::var_os("KINKO_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| CHROMIUM_DEFAULT.into());
    assert!(
        chromium.is_file(),
        "Chromium not found at {}: the web console's browser tests need it. Install it with \
         `sudo apt-get install -y chromium` (Debian 12), or set KINKO_CHROMIUM to a Chromium binary.",
        chromium.display()
    );
    assert!(
        root.join("node_modules/playwright-core/package.json").is_file(),
        "playwright-core not found in {}/node_modules: run `npm install` in the repository (package.json pins it)",
        root.display()
    );
    chromium
}

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
    let r: Value = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"email": email, "password": CUSTOMER_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["token"].as_str().expect("token").to_string();
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
    let r: Value = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"email": email, "password": CUSTOMER_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = r["token"].as_str().expect("token");
    let r: Value = http
        .post(format!("{base}/v1/deposit-addresses"))
        .bearer_auth(token)
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
    let root = repo_root();
    let chromium = browser_prerequisites(&root);
    let mut h = Harness::new(sqlite_store().await, &[], 1, 60_000).await;
    // The real onboarding: the e-mail is verified with the mailed token, not automatically.
    h.config.onboarding.dev_auto_verify = false;
    let _kinko = h.start_in_process().await;
    let base = h.api_base();
    support::wait_for("kinko to answer", Duration::from_secs(30), None, || async {
        reqwest::get(format!("{base}/healthz")).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let (totp_email, totp_secret, totp_step_used) = totp_customer(&base).await;

    let artifacts = root.join("target/test-artifacts/web");
    let output = tokio::task::spawn_blocking({
        let (root, base, artifacts, mail_dir) = (root.clone(), base.clone(), artifacts.clone(), h.mail_dir());
        move || {
            Command::new("node")
                .current_dir(&root)
                .arg("tests/browser/customer_portal.mjs")
                .arg(&base)
                .arg(&artifacts)
                .env("KINKO_CHROMIUM", &chromium)
                .env("KINKO_WEB_MAIL_DIR", &mail_dir)
                .env("KINKO_WEB_PASSWORD", CUSTOMER_PASSWORD)
                .env("KINKO_WEB_TOTP_EMAIL", &totp_email)
                .env("KINKO_WEB_TOTP_PASSWORD", CUSTOMER_PASSWORD)
                .env("KINKO_WEB_TOTP_SECRET", &totp_secret)
                .env("KINKO_WEB_TOTP_STEP_USED", totp_step_used.to_string())
                .output()
                .expect("run node (Node.js 20 is a prerequisite)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value =
        stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| {
            panic!("the browser script printed no JSON report\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
    assert!(
        output.status.success() && report["ok"] == true,
        "the browser journey failed ({}): {:#}\nstderr:\n{stderr}",
        output.status,
        report["failures"]
    );

    // Every page was visited, captured at both widths and passed the label and keyboard checks.
    let pages = report["pages"].as_array().expect("pages");
    let names: Vec<&str> = pages.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, PAGES, "pages visited");
    for p in pages {
        assert_eq!(p["unlabelled"].as_array().map(Vec::len), Some(0), "unlabelled controls on {}", p["name"]);
        assert_eq!(p["tab_reached"], p["interactive"], "Tab reach on {}", p["name"]);
        let shots = p["screenshots"].as_array().expect("screenshots");
        assert_eq!(shots.len(), WIDTHS_PX.len(), "screenshots of {}", p["name"]);
        for (shot, width) in shots.iter().zip(WIDTHS_PX) {
            let path = PathBuf::from(shot.as_str().unwrap());
            assert!(path.to_string_lossy().ends_with(&format!("-{width}.png")), "{} at {width} px", path.display());
            assert!(path.starts_with(&artifacts), "{} outside {}", path.display(), artifacts.display());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
            assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
        }
    }
    // The refusals were named on their pages with the API's status.
    let status_of = |name: &str| pages.iter().find(|p| p["name"] == name).and_then(|p| p["status"].as_u64());
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
