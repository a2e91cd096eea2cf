//! Onboarding (U1, M3) through the HTTP API on SQLite and — when `KINKO_TEST_POSTGRES_URL` is set —
//! PostgreSQL: registration mails a one-time token (delivered by the real notice sender, read from the
//! mail files), the token verifies the e-mail once, the customer submits KYC documents (references only),
//! a signing operator takes the case for review and an operations manager decides it; until `verified`,
//! withdrawals and internal transfers are refused while deposit addresses are not. Each rule with its
//! negative path. These tests turn `[onboarding] dev_auto_verify` off (the dev default turns it on).

#[path = "support/customer.rs"]
mod customer_support;
#[path = "support/ops.rs"]
mod ops_support;

use axum::http::{Method, StatusCode};
use customer_support as cs;
use kinko_server::Config;
use kinko_store::testing::{TestStore, test_stores};
use ops_support::{Ops, Reply, ops_with};
use serde_json::{Value, json};

const DEST: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
const TOKEN_LINE_PREFIX: &str = "Verification token: ";

fn no_auto_verify(c: &mut Config) {
    c.onboarding.dev_auto_verify = false;
}

/// Operators of every role (support/ops.rs: so1 signing operator, om1/om2 operations managers, li1 log
/// inspector, …) over a router without automatic verification.
async fn staffed(ts: TestStore) -> Ops {
    Ops::staff(ops_with(ts, no_auto_verify).await).await
}

fn slug(r: &Reply) -> String {
    r.json["type"].as_str().unwrap_or_default().rsplit(':').next().unwrap_or_default().to_string()
}

fn fields(r: &Reply) -> Vec<String> {
    r.json["errors"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|e| e["field"].as_str().unwrap_or_default().to_string()).collect())
}

/// Delivers the pending mail with the real sender and returns the token of the newest verification mail
/// to `email`, taken from its own `Verification token: <token>` line.
async fn mailed_token(o: &Ops, email: &str) -> String {
    let mails = cs::deliver_mail(&o.ts.store).await;
    mails
        .iter()
        .rev()
        .filter(|m| m.to.to_ascii_lowercase().contains(email))
        .find_map(|m| m.body.lines().find_map(|l| l.trim().strip_prefix(TOKEN_LINE_PREFIX).map(str::to_string)))
        .unwrap_or_else(|| panic!("no verification mail to {email}"))
}

async fn verify(o: &Ops, token: &str) -> Reply {
    o.call(Method::POST, "/v1/email-verifications", None, Some(json!({"token": token}))).await
}

async fn submit(o: &Ops, session: &str) -> Reply {
    let docs = json!({"documents": [
        {"kind": "passport", "reference": "dms://2026/000123"},
        {"kind": "proof_of_address", "reference": "dms://2026/000124"},
    ]});
    o.call(Method::POST, "/v1/kyc", Some(session), Some(docs)).await
}

async fn review(o: &Ops, who: &str, id: &str) -> Reply {
    o.call(Method::POST, &format!("/v1/ops/kyc/{id}/review"), Some(&o.token(who)), None).await
}

async fn decide(o: &Ops, who: &str, id: &str, decision: &str, reason: &str) -> Reply {
    let body = json!({"decision": decision, "reason": reason});
    o.call(Method::POST, &format!("/v1/ops/kyc/{id}/decision"), Some(&o.token(who)), Some(body)).await
}

async fn withdraw(o: &Ops, c: &cs::Customer, key: &str) -> cs::Reply {
    let body = json!({"asset": "ETH", "amount": "400000", "destination": DEST});
    cs::call(&o.app, &o.ts.store, Method::POST, "/v1/withdrawals", Some(&c.token), Some(key), Some(body)).await
}

async fn transfer(o: &Ops, c: &cs::Customer, to: &str, key: &str) -> cs::Reply {
    let body = json!({"to_email": to, "asset": "ETH", "amount": "1000"});
    cs::call(&o.app, &o.ts.store, Method::POST, "/v1/internal-transfers", Some(&c.token), Some(key), Some(body)).await
}

/// A ready customer (TOTP, step-up, transaction password, a saved destination, funds) who has verified
/// the e-mail from the mail but not yet submitted KYC.
async fn customer_with_verified_email(o: &Ops, email: &str) -> cs::Customer {
    let c = cs::Customer::new(&o.app, email).await;
    c.save_destination(&o.app, "ETH", DEST).await;
    cs::fund(&o.ts.store, &c.id, &format!("d-{email}"), 10_000_000).await;
    let token = mailed_token(o, email).await;
    let r = verify(o, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}: {}", o.ts.name, r.text);
    c
}

/// U1, M3: register → token from the mail → verify → submit KYC → a signing operator reviews → an
/// operations manager verifies → a withdrawal and an internal transfer go through. Before that, both are
/// refused with `kyc-required` while a deposit address is handed out; every operator action is an ops
/// event with operator and terminal; the decision is mailed to the customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_m3_register_verify_kyc_review_decide_then_withdrawal_passes_the_gate() {
    for ts in test_stores().await {
        let o = staffed(ts).await;
        let name = o.ts.name;
        let c = cs::Customer::new(&o.app, "alice@example.com").await;
        let bob = cs::Customer::new(&o.app, "bob@example.com").await;
        c.save_destination(&o.app, "ETH", DEST).await;
        cs::fund(&o.ts.store, &c.id, "d-alice", 10_000_000).await;

        let r = o.call(Method::GET, "/v1/kyc", Some(&c.token), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(
            (r.json["email_verified"].as_bool(), r.json["state"].as_str()),
            (Some(false), Some("not_submitted"))
        );

        // Deposits stay open before any verification.
        let r = o.call(Method::POST, "/v1/deposit-addresses", Some(&c.token), Some(json!({"asset": "ETH"}))).await;
        assert!(r.status.is_success(), "{name}: deposit address before KYC: {}", r.text);
        // Money does not leave: withdrawal and internal transfer refused, nothing held or moved.
        let w = withdraw(&o, &c, "w-before").await;
        assert_eq!((w.status, w.slug()), (StatusCode::FORBIDDEN, "kyc-required".to_string()), "{name}: {}", w.text);
        assert!(w.json["detail"].as_str().unwrap().contains("not_submitted"), "{name}: {}", w.text);
        let t = transfer(&o, &c, &bob.email, "t-before").await;
        assert_eq!((t.status, t.slug()), (StatusCode::FORBIDDEN, "kyc-required".to_string()), "{name}: {}", t.text);
        assert!(o.ts.store.withdrawal_by_idempotency_key(&c.id, "w-before").await.unwrap().is_none(), "{name}");

        // KYC needs the e-mail verified first.
        let r = submit(&o, &c.token).await;
        assert_eq!((r.status, slug(&r)), (StatusCode::FORBIDDEN, "email-unverified".into()), "{name}: {}", r.text);

        let token = mailed_token(&o, "alice@example.com").await;
        assert_eq!(token.len(), 64, "{name}");
        let r = verify(&o, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let r = verify(&o, &token).await;
        assert_eq!((r.status, fields(&r)), (StatusCode::UNPROCESSABLE_ENTITY, vec!["token".to_string()]), "{name}");

        let r = submit(&o, &c.token).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!(r.json["state"], "submitted", "{name}");
        let id = r.json["id"].as_str().unwrap().to_string();
        let r = submit(&o, &c.token).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: one open submission: {}", r.text);
        let w = withdraw(&o, &c, "w-submitted").await;
        assert_eq!(w.slug(), "kyc-required", "{name}: submitted is not verified: {}", w.text);

        // The queue, as the reviewer sees it.
        let r = o.call(Method::GET, "/v1/ops/kyc?state=submitted", Some(&o.token("so1")), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let queue = r.json.as_array().unwrap();
        assert_eq!(queue.len(), 1, "{name}: {}", r.text);
        assert_eq!(
            (queue[0]["id"].as_str(), queue[0]["customer_id"].as_str()),
            (Some(id.as_str()), Some(c.id.as_str()))
        );
        assert_eq!(queue[0]["documents"][0]["reference"], "dms://2026/000123", "{name}");

        // Deciding before review is a state error; review, then decide.
        let r = decide(&o, "om1", &id, "verified", "documents match").await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: {}", r.text);
        let r = review(&o, "so1", &id).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!((r.json["state"].as_str(), r.json["reviewer_id"].as_str()), (Some("under_review"), Some("so1")));
        let r = review(&o, "so1", &id).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: taken once: {}", r.text);
        let r = o.call(Method::GET, "/v1/kyc", Some(&c.token), None).await;
        assert_eq!(r.json["state"], "under_review", "{name}");
        let r = decide(&o, "om1", &id, "verified", "passport and address match the registration").await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!((r.json["state"].as_str(), r.json["decided_by"].as_str()), (Some("verified"), Some("om1")));
        let r = decide(&o, "om2", &id, "rejected", "second opinion").await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: verified is final: {}", r.text);

        // The customer is told, without the operators' reason.
        let mails = cs::deliver_mail(&o.ts.store).await;
        let decision = mails
            .iter()
            .find(|m| m.to.contains("alice@example.com") && m.subject == "Your identity is verified")
            .unwrap_or_else(|| panic!("{name}: no decision mail"));
        assert!(!decision.body.contains("registration"), "{name}: reason leaked: {}", decision.body);

        // Each operator action is an ops event naming operator and terminal.
        let r = o.call(Method::GET, "/v1/ops/events", Some(&o.token("li1")), None).await;
        let events: Vec<(String, String, String)> = r
            .json
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["detail"]["kyc_submission_id"] == id.as_str())
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("event"), s("operator_id"), s("terminal"))
            })
            .collect();
        let peer = ops_support::PEER.split(':').next().unwrap().to_string();
        assert_eq!(
            events,
            [
                ("kyc_review_started".to_string(), "so1".to_string(), peer.clone()),
                ("kyc_verified".to_string(), "om1".to_string(), peer)
            ],
            "{name}"
        );

        // Past the gate: the same customer can now withdraw and transfer.
        let r = o.call(Method::GET, "/v1/kyc", Some(&c.token), None).await;
        assert_eq!(r.json["state"], "verified", "{name}");
        assert!(r.json["submission"].get("reason").is_none(), "{name}: no reason for the customer: {}", r.text);
        let w = withdraw(&o, &c, "w-after").await;
        assert_eq!(w.status, StatusCode::ACCEPTED, "{name}: {}", w.text);
        let t = transfer(&o, &c, &bob.email, "t-after").await;
        assert_eq!(t.status, StatusCode::CREATED, "{name}: {}", t.text);
        o.ts.store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// U1: a rejected customer can neither withdraw nor transfer, is told without the reason (no tipping
/// off), may resubmit, and moves money only once a new submission is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_rejected_kyc_refuses_withdrawal_and_transfer_until_resubmitted_and_verified() {
    for ts in test_stores().await {
        let o = staffed(ts).await;
        let name = o.ts.name;
        let c = customer_with_verified_email(&o, "carol@example.com").await;
        let r = submit(&o, &c.token).await;
        let first = r.json["id"].as_str().unwrap().to_string();
        assert_eq!(review(&o, "so1", &first).await.status, StatusCode::OK, "{name}");
        let bad = decide(&o, "om1", &first, "maybe", "").await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", bad.text);
        assert_eq!(fields(&bad), ["decision", "reason"], "{name}");
        let secret_reason = "suspected structuring, see case 17";
        let r = decide(&o, "om1", &first, "rejected", secret_reason).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["reason"], secret_reason, "{name}: operators see the reason");

        let r = o.call(Method::GET, "/v1/kyc", Some(&c.token), None).await;
        assert_eq!(r.json["state"], "rejected", "{name}");
        assert!(!r.text.contains("structuring"), "{name}: {}", r.text);
        let mails = cs::deliver_mail(&o.ts.store).await;
        let told = mails.iter().find(|m| m.to.contains("carol@example.com") && m.subject.contains("could not"));
        let told = told.unwrap_or_else(|| panic!("{name}: no rejection mail"));
        assert!(!told.body.contains("structuring"), "{name}: {}", told.body);

        let w = withdraw(&o, &c, "w-rejected").await;
        assert_eq!((w.status, w.slug()), (StatusCode::FORBIDDEN, "kyc-required".to_string()), "{name}: {}", w.text);
        assert!(w.json["detail"].as_str().unwrap().contains("rejected"), "{name}: {}", w.text);
        let t = transfer(&o, &c, "nobody@example.com", "t-rejected").await;
        assert_eq!((t.status, t.slug()), (StatusCode::FORBIDDEN, "kyc-required".to_string()), "{name}: {}", t.text);
        let r = o.call(Method::POST, "/v1/deposit-addresses", Some(&c.token), Some(json!({"asset": "ETH"}))).await;
        assert!(r.status.is_success(), "{name}: deposits stay open after a rejection: {}", r.text);

        let r = submit(&o, &c.token).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: resubmission after rejection: {}", r.text);
        let second = r.json["id"].as_str().unwrap().to_string();
        assert_ne!(first, second, "{name}: a new submission, the rejected one kept");
        let r = o.call(Method::GET, "/v1/ops/kyc?state=rejected", Some(&o.token("li1")), None).await;
        assert_eq!(r.json.as_array().map(Vec::len), Some(1), "{name}: {}", r.text);
        assert_eq!(review(&o, "so1", &second).await.status, StatusCode::OK, "{name}");
        assert_eq!(decide(&o, "om2", &second, "verified", "new documents fine").await.status, StatusCode::OK);
        let w = withdraw(&o, &c, "w-verified").await;
        assert_eq!(w.status, StatusCode::ACCEPTED, "{name}: {}", w.text);
    }
}

/// M3: a verification token works once and only until it expires; unknown, malformed, used and expired
/// tokens get one and the same answer naming `token`; resending is rate-limited and pointless once
/// verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m3_verification_token_single_use_expiring_one_answer_and_resend_limits() {
    for ts in test_stores().await {
        let o = ops_with(ts, |c| {
            no_auto_verify(c);
            c.onboarding.email_token_ttl_secs = 1;
        })
        .await;
        let name = o.ts.name;
        let (_, x_session) = cs::register(&o.app, "xavier@example.com").await;
        let expired = mailed_token(&o, "xavier@example.com").await;
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        let r_expired = verify(&o, &expired).await;
        assert_eq!(r_expired.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r_expired.text);
        assert_eq!(fields(&r_expired), ["token"], "{name}");
        let r = o.call(Method::GET, "/v1/kyc", Some(&x_session), None).await;
        assert_eq!(r.json["email_verified"], false, "{name}");
        // Resend right after the registration mail: rate-limited.
        let r = o.call(Method::POST, "/v1/email-verifications/resend", Some(&x_session), None).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{name}: {}", r.text);
        let r = o.call(Method::POST, "/v1/email-verifications/resend", None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: resend needs a session");

        // A router with the default lifetime over the same store.
        let (app, _) = cs::app_with(&o.ts.store, no_auto_verify);
        let (_, y_session) = cs::register(&app, "yoko@example.com").await;
        let token = mailed_token(&o, "yoko@example.com").await;
        let r = verify(&o, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let r_used = verify(&o, &token).await;
        let r_unknown = verify(&o, &"0".repeat(64)).await;
        let r_malformed = verify(&o, "not a token").await;
        for r in [&r_used, &r_unknown, &r_malformed] {
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
            assert_eq!(r.json, r_expired.json, "{name}: one answer for every bad token");
        }
        let r = o.call(Method::POST, "/v1/email-verifications/resend", Some(&y_session), None).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{name}: already verified: {}", r.text);
        let r = o.call(Method::GET, "/v1/kyc", Some(&y_session), None).await;
        assert_eq!((r.json["email_verified"].as_bool(), r.json["state"].as_str()), (Some(true), Some("not_submitted")));
        // Bad submissions are named by their JSON path.
        let r = o
            .call(
                Method::POST,
                "/v1/kyc",
                Some(&y_session),
                Some(json!({"documents": [{"kind": "passport", "reference": "r", "scan": "base64…"}]})),
            )
            .await;
        assert_eq!((r.status, fields(&r)), (StatusCode::UNPROCESSABLE_ENTITY, vec!["documents[0].scan".to_string()]));
    }
}

/// U1, K8: customers cannot call the KYC ops routes; only signing operators review, only operations
/// managers decide (so the reviewer never decides), the queue is for those two and log inspectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_k8_customer_and_wrong_roles_refused_on_kyc_ops_routes() {
    for ts in test_stores().await {
        let o = staffed(ts).await;
        let name = o.ts.name;
        let c = customer_with_verified_email(&o, "dave@example.com").await;
        let id = submit(&o, &c.token).await.json["id"].as_str().unwrap().to_string();
        let routes: [(Method, String, Option<Value>); 3] = [
            (Method::GET, "/v1/ops/kyc".into(), None),
            (Method::POST, format!("/v1/ops/kyc/{id}/review"), None),
            (Method::POST, format!("/v1/ops/kyc/{id}/decision"), Some(json!({"decision": "verified", "reason": "x"}))),
        ];
        for (m, path, body) in &routes {
            let r = o.call(m.clone(), path, Some(&c.token), body.clone()).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: customer on {m} {path}: {}", r.text);
        }
        for who in ["ko1", "sm1", "admin2"] {
            let r = o.call(Method::GET, "/v1/ops/kyc", Some(&o.token(who)), None).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {who}: {}", r.text);
        }
        for who in ["om1", "li1", "ko1", "admin2"] {
            assert_eq!(review(&o, who, &id).await.status, StatusCode::FORBIDDEN, "{name}: {who} reviews");
        }
        assert_eq!(review(&o, "so1", &id).await.status, StatusCode::OK, "{name}");
        for who in ["so1", "li1", "sm1", "admin2"] {
            let r = decide(&o, who, &id, "verified", "ok").await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {who} decides: {}", r.text);
        }
        let r = o.call(Method::GET, "/v1/kyc", Some(&c.token), None).await;
        assert_eq!(r.json["state"], "under_review", "{name}: refusals changed nothing");
        let r = decide(&o, "om1", "kyc_nope", "verified", "ok").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{name}: {}", r.text);
        let r = o.call(Method::GET, "/v1/ops/kyc?state=not_submitted&limit=0", Some(&o.token("li1")), None).await;
        assert_eq!((r.status, fields(&r)), (StatusCode::UNPROCESSABLE_ENTITY, vec!["state".into(), "limit".into()]));
    }
}

/// U1 (dev mode): with `dev_auto_verify` (the dev default) a new customer is verified at once, recorded as
/// decided by `dev-auto`, and gets no verification mail; the secure default is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u1_dev_auto_verify_marks_new_customers_verified_by_dev_auto() {
    for ts in test_stores().await {
        let o = ops_with(ts, |c| assert!(c.onboarding.dev_auto_verify, "dev_default turns it on")).await;
        let name = o.ts.name;
        let (id, session) = cs::register(&o.app, "erin@example.com").await;
        let r = o.call(Method::GET, "/v1/kyc", Some(&session), None).await;
        assert_eq!((r.json["email_verified"].as_bool(), r.json["state"].as_str()), (Some(true), Some("verified")));
        let status = o.ts.store.onboarding_status(&id).await.unwrap();
        assert_eq!(status.submission.unwrap().decided_by, "dev-auto", "{name}");
        let notices = o.ts.store.notices_for_customer(&id, 100).await.unwrap();
        assert!(notices.iter().all(|n| n.kind != "email_verification"), "{name}");
        let parsed: kinko_server::api::onboarding::OnboardingConfig = toml::from_str("").unwrap();
        assert!(!parsed.dev_auto_verify, "off unless configured");
    }
}
