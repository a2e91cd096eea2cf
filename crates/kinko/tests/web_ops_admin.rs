//! The operator console's KYC queue and maintenance windows in Chromium (issue #8; U1, S4): kinko on
//! SQLite with anvil, the real onboarding (mailed verification token, no automatic verification), operators
//! set up as a custodian does (genesis, registry changes approved by a second administrator, enrolment with
//! password and TOTP).
//!
//! A customer verifies their e-mail address and submits identity documents through the API; in Chromium
//! (`tests/browser/operator_admin.mjs`) the signing operator takes the case for review on `/ops/kyc`, the
//! operations manager decides it verified, then announces a maintenance window from now on
//! `/ops/maintenance` (after one whose end is before its start is refused naming the end); `/login` is the
//! maintenance page (503, the notice shown) while `/ops` answers; the manager cancels the window and
//! `/login` answers 200 again. Every page is checked and captured under `target/test-artifacts/ops-admin/`.

mod support;

use std::time::Duration;

use kinko_store::testing::sqlite_store;
use serde_json::{Value, json};
use support::{CUSTOMER_PASSWORD, Harness, browser, operators, wait_for};

const REVIEWER_SEED: u8 = 31;
const MANAGER_SEED: u8 = 32;
const NOTICE: &str = "Upgrading the Ethereum node: the portal is back within half an hour.";

/// Pages the journey must have visited and checked, in order.
const PAGES: &[&str] = &[
    "rev-login",
    "rev-kyc",
    "rev-reviewed",
    "mgr-login",
    "mgr-kyc",
    "mgr-decided",
    "mgr-maintenance",
    "mgr-window-refused",
    "mgr-announced",
    "portal-maintenance",
    "ops-during-maintenance",
    "mgr-maintenance-in-force",
    "mgr-cancelled",
    "portal-open",
];

/// U1, S4: operators review and decide a KYC case, and announce and cancel a maintenance window, in Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_s4_operators_review_kyc_and_announce_maintenance_in_chromium() {
    let root = browser::repo_root();
    let chromium = browser::browser_prerequisites(&root);
    let mut h = Harness::new(sqlite_store().await, &[], 1, 60_000).await;
    h.config.onboarding.dev_auto_verify = false;
    std::fs::write(&h.config_path, toml::to_string(&h.config).unwrap()).unwrap();
    let (admin1, enrolment_token) = operators::genesis(&h);
    let running = h.start_in_process().await;
    let base = h.api_base();
    browser::wait_until_serving(&base).await;
    let ops = tokio::task::spawn_blocking({
        let (base, dir) = (base.clone(), h.dir.path().to_path_buf());
        move || {
            let roles =
                [("kyc-rev", REVIEWER_SEED, "signing_operator"), ("kyc-mgr", MANAGER_SEED, "operations_manager")];
            operators::register_operators(&base, &dir, admin1, &enrolment_token, &roles)
        }
    })
    .await
    .unwrap();

    // The customer: registered, e-mail verified with the mailed token, documents submitted (all through the API).
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let email = format!("ops-admin-{}@example.com", rand::random::<u32>());
    let credentials = json!({"email": email, "password": CUSTOMER_PASSWORD});
    let r = http.post(format!("{base}/v1/customers")).json(&credentials).send().await.unwrap();
    assert_eq!(r.status(), 201, "register: {}", r.text().await.unwrap_or_default());
    let mail_dir = h.mail_dir();
    let token = wait_for("the verification mail", Duration::from_secs(60), None, || async {
        support::verification_token(&mail_dir, &email)
    })
    .await;
    let r = http.post(format!("{base}/v1/email-verifications")).json(&json!({"token": token})).send().await.unwrap();
    assert_eq!(r.status(), 200, "verify: {}", r.text().await.unwrap_or_default());
    let customer = support::password_session(&http, &base, &email).await;
    let docs = json!({"documents": [{"kind": "passport", "reference": "dms://ops-admin/passport-1"}]});
    let r = http.post(format!("{base}/v1/kyc")).bearer_auth(&customer).json(&docs).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let submitted: Value = r.json().await.unwrap();
    let case = submitted["id"].as_str().expect("the submission id").to_string();
    let kyc = || async {
        let v: Value =
            http.get(format!("{base}/v1/kyc")).bearer_auth(&customer).send().await.unwrap().json().await.unwrap();
        v["state"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(kyc().await, "submitted");

    let (rev, mgr) = (ops.get("kyc-rev"), ops.get("kyc-mgr"));
    let mut env = vec![("KINKO_ADMIN_CASE", case.clone()), ("KINKO_ADMIN_NOTICE", NOTICE.to_string())];
    for (x, op) in [("REV", rev), ("MGR", mgr)] {
        let names: [&'static str; 3] = match x {
            "REV" => ["KINKO_ADMIN_REV_ID", "KINKO_ADMIN_REV_PASSWORD", "KINKO_ADMIN_REV_TOTP"],
            _ => ["KINKO_ADMIN_MGR_ID", "KINKO_ADMIN_MGR_PASSWORD", "KINKO_ADMIN_MGR_TOTP"],
        };
        env.extend(names.into_iter().zip([op.id.clone(), op.password.clone(), op.totp_secret.clone()]));
    }
    let artifacts = browser::artifacts_dir(&root, "ops-admin");
    let report =
        browser::run_script(&root, &chromium, "tests/browser/operator_admin.mjs", &base, &artifacts, env).await;
    browser::assert_pages_checked(&report, PAGES, &artifacts);
    assert_eq!(browser::page_status(&report, "mgr-window-refused"), Some(422));
    assert_eq!(browser::page_status(&report, "portal-maintenance"), Some(503));
    assert_eq!(browser::page_status(&report, "portal-open"), Some(200));
    assert_eq!(report["maintenance_notice"], NOTICE, "{report}");
    assert_eq!(
        report["case_states"],
        json!({"before": "submitted", "reviewed": "under_review", "decided": "verified"}),
        "{report}"
    );

    // The customer's own view says verified; the store names the reviewer and the decider.
    assert_eq!(kyc().await, "verified");
    let s = h.ts.store.kyc_submission(&case).await.unwrap().unwrap();
    assert_eq!((s.reviewer_id.as_str(), s.decided_by.as_str()), ("kyc-rev", "kyc-mgr"));
    // One window, announced and cancelled by the manager; the portal's status shows none in force.
    let windows = h.ts.store.maintenance_windows().await.unwrap();
    assert_eq!(windows.len(), 1, "the refused window was not recorded");
    let w = &windows[0];
    assert_eq!((w.created_by.as_str(), w.cancelled_by.as_deref()), ("kyc-mgr", Some("kyc-mgr")));
    assert_eq!((w.message.as_str(), report["window_id"].as_str()), (NOTICE, Some(w.id.as_str())));
    let status: Value = http.get(format!("{base}/v1/status")).send().await.unwrap().json().await.unwrap();
    assert!(status["maintenance"].is_null(), "{status}");
    running.stop().await;
}
