//! The customer-side test harness shared by the customer API tests: everything a customer must do before
//! money can leave their account (U2, U3, U4, U9, U13), done through the HTTP API with real parts —
//! register, log in, enrol TOTP (codes computed here with totp-rs from the `otpauth://` URI), step up,
//! set the transaction password, save destinations — and a request helper that plays a well-behaved client:
//! it sends the transaction password with withdrawals and transfers and, when a withdrawal waits for
//! confirmation over the second channel (U8), reads the confirmation mail and confirms it.
//!
//! Mail: the in-process router runs no notice sender, so [`confirm_by_mail`] delivers the store's pending
//! e-mail notices itself with the real `NoticeSender` over the `mail_dir` file transport (lettre) into this
//! process's mail directory, reads the newest mail naming the withdrawal that carries
//! `Confirmation token: <token>`, and POSTs the token to `/v1/withdrawal-confirmations`.
//!
//! TOTP codes are single use per 30 s step: the enrolment's confirmation uses the current step, so the
//! first step-up uses the next step's code when the clock has moved on and otherwise a recovery code
//! (also a real second factor), so no test waits. A step-up lasts 5 minutes; tests reuse it.
#![allow(dead_code)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use kinko_server::notices::{NoticeSender, NoticesConfig};
use kinko_store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";
pub const HOT_WALLET: &str = "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc";

/// The in-process API over `store` with the dev configuration as changed by `tweak` (validated).
pub fn app_with(store: &Store, tweak: impl FnOnce(&mut kinko_server::Config)) -> (Router, kinko_server::AppState) {
    let mut config = kinko_server::Config::dev_default(
        std::env::temp_dir(),
        "127.0.0.1:0".parse().unwrap(),
        "http://127.0.0.1:8545".into(),
    );
    tweak(&mut config);
    config.validate().unwrap();
    let seed = bip39::Mnemonic::parse(TEST_MNEMONIC).unwrap().to_seed("");
    let master = kinko_keys::hd::master_from_seed(&seed).unwrap();
    let xpub = kinko_keys::hd::evm_deposit_xpub(&master).unwrap();
    let state = kinko_server::AppState {
        store: store.clone(),
        config: std::sync::Arc::new(config),
        deposit_xpub: std::sync::Arc::new(xpub),
        hot_wallet: HOT_WALLET.into(),
        signer: std::sync::Arc::new(kinko_signer::LocalSigner::new(std::sync::Arc::new(kinko_signer::StoreJournal(
            store.clone(),
        )))),
    };
    (kinko_server::api::router(state.clone()), state)
}

/// Gives `customer` `amount` base units of ETH available, as the watcher would: detected, then confirmed.
pub async fn fund(store: &Store, customer: &str, deposit_id: &str, amount: u128) {
    use kinko_core::ledger::postings;
    let wallet = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
    let eth: kinko_core::AssetCode = "ETH".parse().unwrap();
    let a = kinko_core::Amount::from_base_units(amount);
    store.post(postings::deposit_detected(deposit_id, customer, wallet, &eth, a), 1).await.unwrap();
    store.post(postings::deposit_confirmed(deposit_id, customer, &eth, a), 2).await.unwrap();
}

/// The login password of every harness customer.
pub const PASSWORD: &str = "correct horse battery staple";
/// The transaction password of every harness customer (U9: not the login password).
pub const TRANSACTION_PASSWORD: &str = "a separate transaction password";
/// The status a withdrawal has while it waits for confirmation over the second channel.
pub const AWAITING_CONFIRMATION: &str = "awaiting_confirmation";
/// The line of the confirmation mail that carries the token.
pub const TOKEN_LINE_PREFIX: &str = "Confirmation token:";
/// Bound on delivery rounds when draining the outbox into a mail directory.
const DELIVERY_ROUNDS_MAX: usize = 64;

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    /// The field names of the problem's `errors`.
    pub fn fields(&self) -> Vec<String> {
        self.json["errors"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().map(|e| e["field"].as_str().unwrap_or_default().to_string()).collect())
    }

    /// The last part of the problem type, e.g. `step-up-required`.
    pub fn slug(&self) -> String {
        self.json["type"].as_str().unwrap_or_default().rsplit(':').next().unwrap_or_default().to_string()
    }
}

/// One request to the in-process router, exactly as given (nothing added).
pub async fn raw_call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(k) = key {
        b = b.header("Idempotency-Key", k);
    }
    let req = match body {
        Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())).unwrap(),
        None => b.body(Body::empty()).unwrap(),
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).to_string(),
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Whether `method path` moves money out of an account (and so needs the transaction password).
pub fn moves_money(method: &Method, path: &str) -> bool {
    *method == Method::POST && (path == "/v1/withdrawals" || path == "/v1/internal-transfers")
}

/// `body` with the harness transaction password added, unless the body already has the field (a test
/// that sends its own, or `null` to send none) or is not an object.
pub fn with_transaction_password(mut body: Value) -> Value {
    if let Some(object) = body.as_object_mut() {
        object.entry("transaction_password").or_insert_with(|| json!(TRANSACTION_PASSWORD));
        if object.get("transaction_password") == Some(&Value::Null) {
            object.remove("transaction_password");
        }
    }
    body
}

/// A request as a well-behaved customer client sends it: withdrawals and transfers carry the transaction
/// password, and a withdrawal that waits for confirmation is confirmed from the mail (the reply's
/// `status` is then the withdrawal's status after confirmation, so tests see `approved` or
/// `pending_approval` as before confirmations existed; `confirmed_by_mail` is set to true).
pub async fn call(
    app: &Router,
    store: &Store,
    method: Method,
    path: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let money = moves_money(&method, path);
    let body = if money { body.map(with_transaction_password) } else { body };
    let mut reply = raw_call(app, method, path, token, key, body).await;
    if money && path == "/v1/withdrawals" && reply.json["status"] == AWAITING_CONFIRMATION {
        let (Some(token), Some(id)) = (token, reply.json["id"].as_str().map(str::to_string)) else { return reply };
        confirm_by_mail(app, store, token, &id).await;
        let now = raw_call(app, Method::GET, &format!("/v1/withdrawals/{id}"), Some(token), None, None).await;
        assert_eq!(now.status, StatusCode::OK, "after confirmation: {}", now.text);
        reply.json["status"] = now.json["status"].clone();
        reply.json["confirmed_by_mail"] = json!(true);
    }
    reply
}

/// The login e-mail behind a bearer token (the harness's own bookkeeping, read from the store).
pub async fn email_of_session(store: &Store, token: &str) -> String {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let session = store.session(&hash).await.unwrap().expect("a live session");
    store.customer_email(&session.customer_id).await.unwrap().expect("the session's customer")
}

/// This test process's directory of confirmation mails not yet used ([`confirm_by_mail`] takes them from
/// here, so concurrent callers for one withdrawal all find its mail).
pub fn mail_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kinko-test-mail-{}", std::process::id()))
}

/// Delivers every pending e-mail notice in `store` with the real notice sender over the file transport
/// into a fresh directory and returns the delivered mails, oldest first. Those carrying a confirmation
/// token are kept in [`mail_dir`] for [`confirm_by_mail`]; the rest are removed.
pub async fn deliver_mail(store: &Store) -> Vec<kinko_server::notices::testing::CapturedMail> {
    let dir = std::env::temp_dir().join(format!("kinko-test-mail-{}", uuid::Uuid::now_v7().simple()));
    let config = NoticesConfig { mail_dir: Some(dir.clone()), ..Default::default() };
    let sender = NoticeSender::from_config_with_env(store.clone(), "test-mail", &config, |_| None).unwrap();
    for _ in 0..DELIVERY_ROUNDS_MAX {
        let stats = sender.run_once(kinko_server::clock::now_ms()).await.unwrap();
        if stats.sent + stats.retrying + stats.failed == 0 {
            break;
        }
    }
    let delivered = read_mail_files(&dir);
    std::fs::create_dir_all(mail_dir()).unwrap();
    for (path, mail) in &delivered {
        if token_of(mail).is_some()
            && let Some(name) = path.file_name()
        {
            let _ = std::fs::rename(path, mail_dir().join(name));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    delivered.into_iter().map(|(_, m)| m).collect()
}

/// The `.eml` files of a `mail_dir`, parsed, oldest first (by modification time, then name).
pub fn read_mail_dir(dir: &std::path::Path) -> Vec<kinko_server::notices::testing::CapturedMail> {
    read_mail_files(dir).into_iter().map(|(_, m)| m).collect()
}

/// [`read_mail_dir`] with each mail's file.
pub fn read_mail_files(
    dir: &std::path::Path,
) -> Vec<(std::path::PathBuf, kinko_server::notices::testing::CapturedMail)> {
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter_map(|(_, p)| std::fs::read_to_string(&p).ok().map(|raw| (p, raw)))
        .map(|(p, raw)| (p, kinko_server::notices::testing::parse_mail(&raw)))
        .collect()
}

/// The `Confirmation token:` of a mail, if it has one.
pub fn token_of(mail: &kinko_server::notices::testing::CapturedMail) -> Option<String> {
    mail.body.lines().find_map(|l| l.trim().strip_prefix(TOKEN_LINE_PREFIX).map(|t| t.trim().to_string()))
}

/// Confirms withdrawal `id` with the token of the newest confirmation mail naming it (U8). Concurrent
/// callers for one withdrawal are fine: a token already used by another is a 422, after which the
/// withdrawal must have left `awaiting_confirmation`.
pub async fn confirm_by_mail(app: &Router, store: &Store, token: &str, id: &str) {
    for _ in 0..DELIVERY_ROUNDS_MAX {
        deliver_mail(store).await;
        let found = read_mail_files(&mail_dir())
            .into_iter()
            .rev()
            .find_map(|(path, m)| m.body.contains(id).then(|| token_of(&m).map(|t| (path, t))).flatten());
        let status = raw_call(app, Method::GET, &format!("/v1/withdrawals/{id}"), Some(token), None, None).await;
        if status.json["status"] != AWAITING_CONFIRMATION {
            return;
        }
        if let Some((path, code)) = found {
            let body = json!({ "token": code });
            let r = raw_call(app, Method::POST, "/v1/withdrawal-confirmations", None, None, Some(body)).await;
            assert!(
                r.status.is_success() || r.status == StatusCode::UNPROCESSABLE_ENTITY,
                "confirming {id} with the mailed token: {}",
                r.text
            );
            if r.status.is_success() {
                let _ = std::fs::remove_file(path);
                return;
            }
        }
        // Another caller holds the notice's lease or is confirming: look again shortly.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("withdrawal {id} still awaits confirmation and no usable confirmation mail names it");
}

pub fn now_secs() -> u64 {
    u64::try_from(kinko_server::clock::now_ms() / 1000).unwrap()
}

/// A customer who has done everything moving money needs.
pub struct Customer {
    pub id: String,
    pub email: String,
    /// A session stepped up for 5 minutes from creation.
    pub token: String,
    pub totp: totp_rs::Totp,
    pub recovery_codes: Vec<String>,
    /// The newest TOTP time step used (codes are single use per step).
    pub totp_step_used: u64,
}

/// Registers and logs in: a password-only session. Returns (customer id, token).
pub async fn register(app: &Router, email: &str) -> (String, String) {
    let creds = json!({"email": email, "password": PASSWORD});
    let r = raw_call(app, Method::POST, "/v1/customers", None, None, Some(creds)).await;
    assert_eq!(r.status, StatusCode::CREATED, "register {email}: {}", r.text);
    let id = r.json["id"].as_str().unwrap().to_string();
    (id, login(app, email).await)
}

/// A new password session.
pub async fn login(app: &Router, email: &str) -> String {
    let creds = json!({"email": email, "password": PASSWORD});
    let r = raw_call(app, Method::POST, "/v1/sessions", None, None, Some(creds)).await;
    assert_eq!(r.status, StatusCode::OK, "log in {email}: {}", r.text);
    r.json["token"].as_str().unwrap().to_string()
}

/// Enrols TOTP on the session (U2, U3); returns the authenticator, the recovery codes and the step used.
pub async fn enrol_totp(app: &Router, token: &str) -> (totp_rs::Totp, Vec<String>, u64) {
    let r = raw_call(app, Method::POST, "/v1/mfa/totp", Some(token), None, Some(json!({"password": PASSWORD}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "start TOTP: {}", r.text);
    let totp = totp_rs::Totp::from_url(r.json["otpauth_uri"].as_str().unwrap()).unwrap();
    let enrolment_id = r.json["enrolment_id"].as_str().unwrap().to_string();
    let now = now_secs();
    let body = json!({"enrolment_id": enrolment_id, "code": totp.generate(now).to_string()});
    let r = raw_call(app, Method::POST, "/v1/mfa/totp/confirm", Some(token), None, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "confirm TOTP: {}", r.text);
    let codes = r.json["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    (totp, codes, now / 30)
}

impl Customer {
    /// Register, log in, enrol TOTP, step up, set the transaction password.
    pub async fn new(app: &Router, email: &str) -> Customer {
        let (id, token) = register(app, email).await;
        let (totp, recovery_codes, totp_step_used) = enrol_totp(app, &token).await;
        let mut c = Customer { id, email: email.to_string(), token, totp, recovery_codes, totp_step_used };
        c.step_up(app).await;
        let body = json!({"password": TRANSACTION_PASSWORD});
        let r = raw_call(app, Method::PUT, "/v1/transaction-password", Some(&c.token), None, Some(body)).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "set the transaction password: {}", r.text);
        c
    }

    /// Steps the session up (U4): with the current TOTP code when its step is unused, else a recovery code.
    pub async fn step_up(&mut self, app: &Router) {
        let now = now_secs();
        let body = if now / 30 > self.totp_step_used {
            self.totp_step_used = now / 30;
            json!({"method": "totp", "code": self.totp.generate(now).to_string()})
        } else {
            json!({"method": "recovery_code", "code": self.recovery_codes.pop().expect("a recovery code left")})
        };
        let r = raw_call(app, Method::POST, "/v1/sessions/step-up", Some(&self.token), None, Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "step up: {}", r.text);
    }

    /// Saves `address` for `asset` in the address book (U13; an already saved one is fine).
    pub async fn save_destination(&self, app: &Router, asset: &str, address: &str) {
        save_destination(app, &self.token, asset, address).await;
    }
}

/// Saves a destination on a stepped-up session; 409 (already saved) counts as saved.
pub async fn save_destination(app: &Router, token: &str, asset: &str, address: &str) {
    let body =
        json!({"label": format!("{asset} {}", &address[..address.len().min(10)]), "asset": asset, "address": address});
    let r = raw_call(app, Method::POST, "/v1/address-book", Some(token), None, Some(body)).await;
    assert!(
        r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT,
        "save destination {address}: {}",
        r.text
    );
}

/// A ready customer (see [`Customer::new`]) with `destinations` saved for ETH; returns (id, token).
pub async fn ready(app: &Router, email: &str, destinations: &[&str]) -> (String, String) {
    let c = Customer::new(app, email).await;
    for d in destinations {
        c.save_destination(app, "ETH", d).await;
    }
    (c.id, c.token)
}

/// Waits for the next TOTP step (a test that needs a second TOTP step-up at once).
pub async fn next_totp_step() {
    let now_ms = kinko_server::clock::now_ms();
    let wait_ms = 30_000 - now_ms.rem_euclid(30_000) + 50;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait_ms).unwrap())).await;
}
