//! Customer second factors, step-up and the transaction password through the HTTP API in process, on
//! SQLite and — when `KINKO_TEST_POSTGRES_URL` is set — PostgreSQL. Requirement IDs: U2 (multi-factor,
//! step-up), U3 (possession factors only), U4 (changes need a fresh step-up), U9 (transaction password
//! separate from the login password), M2 (customer authentication).
//!
//! WebAuthn runs against webauthn-authenticator-rs's `SoftPasskey`, a complete CTAP2 authenticator in
//! software (real key generation, attestation and assertion signatures), not a mock of the server side.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use kinko_server::{AppState, Config};
use kinko_store::testing::{TestStore, test_stores};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::prelude::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;

const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
const HOT_WALLET: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";
const PASSWORD: &str = "correct horse battery staple";
const TX_PASSWORD: &str = "a different transaction secret";
const PROBLEM: &str = "application/problem+json";
const RP_ORIGIN: &str = "http://localhost:8080";

struct Api {
    app: Router,
    state: AppState,
    ts: TestStore,
}

struct Reply {
    status: StatusCode,
    is_problem: bool,
    text: String,
    json: Value,
}

impl Reply {
    fn fields(&self) -> Vec<String> {
        self.json["errors"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().map(|e| e["field"].as_str().unwrap_or_default().to_string()).collect())
    }
    fn slug(&self) -> String {
        self.json["type"].as_str().unwrap_or_default().rsplit(':').next().unwrap_or_default().to_string()
    }
}

async fn api(ts: TestStore) -> Api {
    let config =
        Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), "http://127.0.0.1:8545".into());
    assert_eq!(config.customer_auth.rp_id, "localhost");
    assert_eq!(config.customer_auth.rp_origin, RP_ORIGIN);
    let seed = bip39::Mnemonic::parse(TEST_MNEMONIC).unwrap().to_seed("");
    let master = kinko_keys::hd::master_from_seed(&seed).unwrap();
    let xpub = kinko_keys::hd::evm_deposit_xpub(&master).unwrap();
    let state = AppState {
        store: ts.store.clone(),
        config: Arc::new(config),
        deposit_xpub: Arc::new(xpub),
        hot_wallet: HOT_WALLET.into(),
        signer: Arc::new(kinko_signer::LocalSigner::new(Arc::new(kinko_signer::StoreJournal(ts.store.clone())))),
    };
    Api { app: kinko_server::api::router(state.clone()), state, ts }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A code that is valid at none of the steps the server accepts now.
fn wrong_code(totp: &totp_rs::Totp) -> String {
    let t = now_secs();
    let valid: Vec<String> = [t - 30, t, t + 30, t + 60].iter().map(|s| totp.generate(*s).to_string()).collect();
    (0..1000).map(|i| format!("{:06}", 123_456 + i)).find(|c| !valid.contains(c)).unwrap()
}

impl Api {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())).unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let is_problem = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) == Some(PROBLEM);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, is_problem, text, json }
    }

    async fn login(&self, email: &str) -> String {
        let r =
            self.call(Method::POST, "/v1/sessions", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", self.ts.name, r.text);
        r.json["token"].as_str().unwrap().to_string()
    }

    async fn register_and_login(&self, email: &str) -> (String, String) {
        let r =
            self.call(Method::POST, "/v1/customers", None, Some(json!({"email": email, "password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", self.ts.name, r.text);
        (r.json["id"].as_str().unwrap().to_string(), self.login(email).await)
    }

    async fn step_up(&self, token: &str, method: &str, code: &str) -> Reply {
        self.call(Method::POST, "/v1/sessions/step-up", Some(token), Some(json!({"method": method, "code": code})))
            .await
    }

    /// Enrols and confirms TOTP; returns the authenticator and the recovery codes.
    async fn enrol_totp(&self, token: &str) -> (totp_rs::Totp, Vec<String>) {
        let name = self.ts.name;
        let r = self.call(Method::POST, "/v1/mfa/totp", Some(token), Some(json!({"password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let totp = totp_rs::Totp::from_url(r.json["otpauth_uri"].as_str().unwrap()).unwrap();
        let enrolment_id = r.json["enrolment_id"].as_str().unwrap().to_string();
        let code = totp.generate(now_secs()).to_string();
        let r = self
            .call(
                Method::POST,
                "/v1/mfa/totp/confirm",
                Some(token),
                Some(json!({"enrolment_id": enrolment_id, "code": code})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let codes = r.json["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string());
        (totp, codes.collect())
    }

    async fn set_tx_password(&self, token: &str, password: &str) -> Reply {
        self.call(Method::PUT, "/v1/transaction-password", Some(token), Some(json!({"password": password}))).await
    }
}

/// U2, U3: enrolment shows a secret that is inactive until a first code confirms it; a wrong code is
/// refused naming the field; confirmation issues 10 distinct recovery codes stored only as hashes; each
/// TOTP code is accepted once (the confirming code cannot step up; a step-up code cannot be replayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_u3_totp_enrol_confirm_wrong_and_replayed_code() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token) = api.register_and_login("alice@example.com").await;
        let r = api.call(Method::GET, "/v1/mfa", Some(&token), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["totp"], false, "{name}");
        assert_eq!(r.json["passkeys"], 0, "{name}");
        assert!(api.call(Method::GET, "/v1/mfa", None, None).await.status == StatusCode::UNAUTHORIZED);

        // Enrolment re-authenticates with the login password (a stolen session alone cannot enrol).
        let r =
            api.call(Method::POST, "/v1/mfa/totp", Some(&token), Some(json!({"password": "not the password"}))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert!(r.is_problem);
        assert_eq!(r.fields(), ["password"], "{name}");

        let r = api.call(Method::POST, "/v1/mfa/totp", Some(&token), Some(json!({"password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        let uri = r.json["otpauth_uri"].as_str().unwrap();
        assert!(uri.starts_with("otpauth://totp/"), "{name}: {uri}");
        let totp = totp_rs::Totp::from_url(uri).unwrap();
        let enrolment_id = r.json["enrolment_id"].as_str().unwrap().to_string();
        // Not active before confirmation: no step-up possible with it.
        let r = api.step_up(&token, "totp", &totp.generate(now_secs()).to_string()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert_eq!(api.call(Method::GET, "/v1/mfa", Some(&token), None).await.json["totp"], false);

        let confirm = |code: String| {
            api.call(
                Method::POST,
                "/v1/mfa/totp/confirm",
                Some(&token),
                Some(json!({"enrolment_id": enrolment_id, "code": code})),
            )
        };
        let r = confirm(wrong_code(&totp)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert_eq!(r.fields(), ["code"], "{name}");
        let r = confirm("12x".into()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: malformed code is just wrong: {}", r.text);
        let r = confirm("1".repeat(65)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", r.text);
        assert_eq!(r.fields(), ["code"], "{name}");

        let confirming = totp.generate(now_secs()).to_string();
        let r = confirm(confirming.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let codes: Vec<String> =
            r.json["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        assert_eq!(codes.len(), 10, "{name}");
        assert_eq!(codes.iter().collect::<std::collections::BTreeSet<_>>().len(), 10, "{name}: distinct");
        // Now that a factor is active, confirming (replacing) needs a step-up.
        let r = confirm(totp.generate(now_secs() + 30).to_string()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert_eq!(r.slug(), "step-up-required", "{name}");

        let stored: Vec<String> =
            kinko_store::sqlx::query_scalar("SELECT code_hash FROM customer_recovery_codes WHERE customer_id = $1")
                .bind(&cid)
                .fetch_all(api.ts.store.pool())
                .await
                .unwrap();
        assert_eq!(stored.len(), 10, "{name}");
        for code in &codes {
            let plain = code.replace('-', "");
            assert!(stored.iter().all(|h| h.len() == 64 && !h.contains(&plain)), "{name}: plaintext stored");
            assert!(stored.contains(&token_hash(&plain)), "{name}: sha256 of the code is stored");
        }

        let r = api.call(Method::GET, "/v1/mfa", Some(&token), None).await;
        assert_eq!(r.json["totp"], true, "{name}");
        assert_eq!(r.json["recovery_codes_remaining"], 10, "{name}");

        // The confirming code was consumed: replaying it cannot step up.
        let r = api.step_up(&token, "totp", &confirming).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: replayed confirming code: {}", r.text);
        assert_eq!(r.slug(), "second-factor-refused", "{name}");
        let next = totp.generate(now_secs() + 30).to_string();
        let r = api.step_up(&token, "totp", &next).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["auth_level"], "step_up", "{name}");
        let until = r.json["stepped_up_until_ms"].as_i64().unwrap();
        let expected = now_ms() + kinko_server::api::mfa::STEP_UP_TTL_MS;
        assert!((expected - until).abs() < 10_000, "{name}: {until} vs {expected}");
        // The enrolment was single-use, even for a stepped-up session.
        let r = confirm(totp.generate(now_secs() + 30).to_string()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert_eq!(r.fields(), ["enrolment_id"], "{name}");
        // Replay from another session of the same customer: still refused (single use per step).
        let other = api.login("alice@example.com").await;
        let r = api.step_up(&other, "totp", &next).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: replayed step-up code: {}", r.text);
        let r = api.step_up(&token, "sms", "123456").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: U3 no other methods");
        assert_eq!(r.fields(), ["method"], "{name}");
    }
}

/// U2: each recovery code steps up exactly once, whatever its spelling; the remaining count drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_recovery_code_works_once() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (_, token) = api.register_and_login("bob@example.com").await;
        let (_, codes) = api.enrol_totp(&token).await;
        let r = api.step_up(&token, "recovery_code", &codes[0].to_uppercase()).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        for spelling in [codes[0].clone(), codes[0].replace('-', "")] {
            let r = api.step_up(&token, "recovery_code", &spelling).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: used code accepted again: {}", r.text);
            assert_eq!(r.fields(), ["code"], "{name}");
        }
        let r = api.step_up(&token, "recovery_code", "0000-0000-0000-0000-0000").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}");
        let r = api.step_up(&token, "recovery_code", &codes[1]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let r = api.call(Method::GET, "/v1/mfa", Some(&token), None).await;
        assert_eq!(r.json["recovery_codes_remaining"], 8, "{name}");
    }
}

/// U4: changes need a fresh step-up; step-up raises only the current session and decays back by itself
/// when its window has passed (time driven through the session row, not by sleeping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u4_step_up_raises_then_expires() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (_, token) = api.register_and_login("carol@example.com").await;
        // No factor yet: nothing can step up, so changes are refused.
        let r = api.set_tx_password(&token, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        assert_eq!(r.slug(), "step-up-required", "{name}");
        let (_, codes) = api.enrol_totp(&token).await;
        let r = api.set_tx_password(&token, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: confirming is not a step-up: {}", r.text);

        let r = api.step_up(&token, "recovery_code", &codes[0]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let r = api.call(Method::GET, "/v1/mfa", Some(&token), None).await;
        assert!(r.json["stepped_up_until_ms"].as_i64().unwrap() > now_ms(), "{name}");
        // Another session of the same customer is not raised.
        let other = api.login("carol@example.com").await;
        let r = api.set_tx_password(&other, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        let r = api.set_tx_password(&token, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{name}: {}", r.text);

        // The window passes.
        let now = now_ms();
        api.ts.store.set_session_stepped_up_until(&token_hash(&token), now - 1, now).await.unwrap();
        let r = api.call(Method::GET, "/v1/mfa", Some(&token), None).await;
        assert!(r.json["stepped_up_until_ms"].is_null(), "{name}: {}", r.text);
        let r = api.set_tx_password(&token, "yet another transaction secret").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: expired step-up still accepted: {}", r.text);
        assert_eq!(r.slug(), "step-up-required", "{name}");
        let r = api.call(Method::DELETE, "/v1/mfa/totp", Some(&token), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);

        // Stepping up again allows the change; DELETE then removes TOTP and its recovery codes.
        let r = api.step_up(&token, "recovery_code", &codes[1]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let r = api.call(Method::DELETE, "/v1/mfa/totp", Some(&token), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{name}: {}", r.text);
        let r = api.call(Method::GET, "/v1/mfa", Some(&token), None).await;
        assert_eq!(r.json["totp"], false, "{name}");
        assert_eq!(r.json["recovery_codes_remaining"], 0, "{name}");
        let r = api.step_up(&other, "recovery_code", &codes[2]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: recovery codes die with the factor");
    }
}

/// U2, U4, M2: whoever holds a stolen session (and even the stolen login password) but not the TOTP
/// secret cannot step up, cannot remove or replace the factor, cannot add a passkey and cannot set a
/// transaction password; guessing codes locks further attempts, after which even the right code fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u4_stolen_session_cannot_step_up_or_change_mfa() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (_, victim) = api.register_and_login("dave@example.com").await;
        let (totp, _) = api.enrol_totp(&victim).await;
        let stolen = victim.clone();

        let r = api.call(Method::DELETE, "/v1/mfa/totp", Some(&stolen), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        let r = api.call(Method::POST, "/v1/mfa/totp", Some(&stolen), Some(json!({"password": PASSWORD}))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: replacing TOTP without step-up: {}", r.text);
        assert_eq!(r.slug(), "step-up-required", "{name}");
        let r = api
            .call(Method::POST, "/v1/mfa/webauthn/register/start", Some(&stolen), Some(json!({"password": PASSWORD})))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: adding a passkey without step-up: {}", r.text);
        let r = api.set_tx_password(&stolen, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);

        // Guessing: every answer is the same refusal; after the free attempts it locks.
        let guess = wrong_code(&totp);
        let free = kinko_store::customer_mfa::MFA_FAILURES_FREE;
        let mut bodies = std::collections::BTreeSet::new();
        for _ in 0..=free {
            let r = api.step_up(&stolen, "totp", &guess).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
            assert!(!r.text.contains(&guess), "{name}: code echoed");
            bodies.insert(r.text);
        }
        let r = api.call(Method::GET, "/v1/mfa", Some(&victim), None).await;
        assert!(r.json["locked_until_ms"].as_i64().unwrap() > now_ms(), "{name}: not locked: {}", r.text);
        let r = api.step_up(&stolen, "totp", &totp.generate(now_secs() + 30).to_string()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: right code accepted while locked: {}", r.text);
        bodies.insert(r.text);
        assert_eq!(bodies.len(), 1, "{name}: wrong and locked answers differ: {bodies:?}");
        let r = api.set_tx_password(&stolen, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}");
        assert!(
            api.ts.store.transaction_password(&r_customer(&api, "dave@example.com").await).await.unwrap().is_none()
        );

        // A customer without a factor: a stolen session without the login password cannot enrol one.
        let (_, fresh) = api.register_and_login("erin@example.com").await;
        for path in ["/v1/mfa/totp", "/v1/mfa/webauthn/register/start"] {
            let r = api.call(Method::POST, path, Some(&fresh), Some(json!({"password": "guessed password!"}))).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {path}: {}", r.text);
            assert_eq!(r.fields(), ["password"], "{name}");
        }
    }
}

async fn r_customer(api: &Api, email: &str) -> String {
    api.ts.store.customer_by_email(email).await.unwrap().unwrap().id
}

/// U9: the transaction password is argon2id, must differ from the login password, is checked by
/// `verify_transaction_password` and locks after repeated wrong entries (even the right one is then
/// refused) until it is set again under a fresh step-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u9_transaction_password_separate_and_locks() {
    use kinko_server::api::mfa::verify_transaction_password;
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (cid, token) = api.register_and_login("frank@example.com").await;
        let (_, codes) = api.enrol_totp(&token).await;
        let r = api.step_up(&token, "recovery_code", &codes[0]).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);

        let verify = |pw: &str| verify_transaction_password(&api.state, &cid, SecretString::from(pw.to_string()));
        let e = verify(TX_PASSWORD).await.unwrap_err();
        assert_eq!(e.body.errors[0].field, "transaction_password", "{name}: not set yet");

        let r = api.set_tx_password(&token, PASSWORD).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: same as login: {}", r.text);
        assert_eq!(r.fields(), ["password"], "{name}");
        assert!(!r.text.contains(PASSWORD), "{name}");
        let r = api.set_tx_password(&token, "short").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert_eq!(r.fields(), ["password"], "{name}");
        let r = api.set_tx_password(&token, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{name}: {}", r.text);
        let row = api.ts.store.transaction_password(&cid).await.unwrap().unwrap();
        assert!(row.password_hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{name}");
        assert!(!format!("{row:?}").contains("argon2"), "{name}: hash in Debug");

        verify(TX_PASSWORD).await.unwrap();
        let e = verify(PASSWORD).await.unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN, "{name}: the login password is not the transaction password");
        let free = kinko_store::customer_mfa::TRANSACTION_PASSWORD_FAILURES_FREE;
        for _ in 1..free {
            let e = verify("wrong transaction pw").await.unwrap_err();
            assert_eq!(e.body.errors[0].field, "transaction_password", "{name}");
        }
        // `free` failures so far: the next wrong one locks.
        let e = verify("wrong transaction pw").await.unwrap_err();
        assert!(e.body.kind.ends_with("transaction-password-locked"), "{name}: {}", e.body.kind);
        let e = verify(TX_PASSWORD).await.unwrap_err();
        assert!(e.body.kind.ends_with("transaction-password-locked"), "{name}: right password while locked");

        // Setting it again (fresh step-up) clears the lock.
        let r = api.set_tx_password(&token, "the renewed transaction secret").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{name}: {}", r.text);
        verify("the renewed transaction secret").await.unwrap();
    }
}

/// U2, U3, U4: a passkey registered with a real software authenticator steps the session up; the
/// assertion is single-use; a second passkey needs a fresh step-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_webauthn_passkey_register_and_step_up() {
    for ts in test_stores().await {
        let api = api(ts).await;
        let name = api.ts.name;
        let (_, token) = api.register_and_login("grace@example.com").await;
        let origin = Url::parse(RP_ORIGIN).unwrap();
        let mut authenticator = SoftPasskey::new(true);

        let r = api
            .call(Method::POST, "/v1/mfa/webauthn/register/start", Some(&token), Some(json!({"password": PASSWORD})))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let challenge = serde_json::from_value(r.json).unwrap();
        let credential = authenticator.do_registration(origin.clone(), challenge).unwrap();
        let body = serde_json::to_value(&credential).unwrap();
        let r = api.call(Method::POST, "/v1/mfa/webauthn/register/finish", Some(&token), Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        // The registration state was single-use.
        let r = api.call(Method::POST, "/v1/mfa/webauthn/register/finish", Some(&token), Some(body)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        let r = api.call(Method::GET, "/v1/mfa", Some(&token), None).await;
        assert_eq!(r.json["passkeys"], 1, "{name}");

        // Not stepped up yet: a change is refused, and so is a second passkey.
        let r = api.set_tx_password(&token, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}");
        let r = api
            .call(Method::POST, "/v1/mfa/webauthn/register/start", Some(&token), Some(json!({"password": PASSWORD})))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);

        let r = api.call(Method::POST, "/v1/mfa/webauthn/authenticate/start", Some(&token), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let challenge = serde_json::from_value(r.json).unwrap();
        let assertion = authenticator.do_authentication(origin.clone(), challenge).unwrap();
        let body = serde_json::to_value(&assertion).unwrap();
        // Another session (the thief's) cannot finish this session's ceremony.
        let other = api.login("grace@example.com").await;
        let r = api.call(Method::POST, "/v1/mfa/webauthn/authenticate/finish", Some(&other), Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: {}", r.text);
        let r = api.call(Method::POST, "/v1/mfa/webauthn/authenticate/finish", Some(&token), Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        assert_eq!(r.json["auth_level"], "step_up", "{name}");
        let r = api.call(Method::POST, "/v1/mfa/webauthn/authenticate/finish", Some(&token), Some(body)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: assertion replayed: {}", r.text);
        let r = api.set_tx_password(&token, TX_PASSWORD).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{name}: {}", r.text);

        // An assertion for another challenge (a different ceremony) is refused.
        let r = api.call(Method::POST, "/v1/mfa/webauthn/authenticate/start", Some(&other), None).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text);
        let r2 = api.call(Method::POST, "/v1/mfa/webauthn/authenticate/start", Some(&token), None).await;
        let challenge = serde_json::from_value(r2.json).unwrap();
        let assertion = authenticator.do_authentication(origin, challenge).unwrap();
        let r = api
            .call(
                Method::POST,
                "/v1/mfa/webauthn/authenticate/finish",
                Some(&other),
                Some(serde_json::to_value(&assertion).unwrap()),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{name}: assertion for another challenge: {}", r.text);
    }
}
