//! End-to-end test support: a real anvil, a real store (SQLite or PostgreSQL), an initialised and funded
//! custody set-up, `kinko serve` as a child process or in-process, and a small API client.
#![allow(dead_code)]

pub mod browser;
pub mod operators;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kinko_chain::anvil::Anvil;
use kinko_server::Config;
use kinko_server::app;
use kinko_store::testing::TestStore;
use serde_json::{Value, json};

pub const ETH: u128 = 1_000_000_000_000_000_000;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Harness {
    pub anvil: Anvil,
    pub ts: TestStore,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub config_path: PathBuf,
    pub hot_wallet: String,
}

impl Harness {
    /// anvil (with `anvil_args`), a store, `kinko init`, and the hot wallet funded with 1000 ETH.
    pub async fn new(ts: TestStore, anvil_args: &[&str], confirmations: u64, stuck_after_ms: u64) -> Harness {
        let anvil = Anvil::spawn(anvil_args).await.expect("start anvil");
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = Config::dev_default(dir.path().to_path_buf(), listen, anvil.url().to_string());
        config.database_url = ts.url.clone();
        config.ethereum.confirmations = confirmations;
        config.ethereum.stuck_after_ms = stuck_after_ms;
        config.ethereum.poll_interval_ms = 100;
        config.pipeline.poll_interval_ms = 100;
        let config_path = dir.path().join("kinko.toml");
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        let kek = app::load_kek(&config).unwrap();
        let custody = app::init(&ts.store, &kek).await.unwrap();
        if !anvil_args.contains(&"--no-mining") {
            app::dev_fund(&ts.store, anvil.url(), &custody.hot_wallet).await.unwrap();
        } else {
            // With mining stopped, the funding transaction needs a block.
            let store = ts.store.clone();
            let (url, hot) = (anvil.url().to_string(), custody.hot_wallet.clone());
            let fund = tokio::spawn(async move { app::dev_fund(&store, &url, &hot).await });
            while !fund.is_finished() {
                anvil.mine(1).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            fund.await.unwrap().unwrap();
        }
        Harness { anvil, ts, dir, config, config_path, hot_wallet: custody.hot_wallet }
    }

    pub fn api_base(&self) -> String {
        format!("http://{}", self.config.listen)
    }

    /// Where the serving kinko writes customer e-mail (`[notices] mail_dir`, the dev file transport).
    pub fn mail_dir(&self) -> PathBuf {
        self.config.notices.mail_dir.clone().expect("the dev configuration writes mail to a directory")
    }

    /// Starts kinko in this process (the API on the configured port).
    pub async fn start_in_process(&self) -> app::Running {
        let kek = app::load_kek(&self.config).unwrap();
        app::start(self.config.clone(), &kek).await.expect("start kinko")
    }

    /// Starts `kinko serve` as a child process, logging to `serve.log` in the data directory.
    pub fn spawn_serve(&self) -> Child {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("serve.log")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_kinko"))
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn kinko serve")
    }

    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub async fn balance_of(&self, address: &str) -> u128 {
        let v = self.anvil.rpc("eth_getBalance", json!([address, "latest"])).await.unwrap();
        u128::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    pub async fn nonce_of(&self, address: &str) -> u64 {
        let v = self.anvil.rpc("eth_getTransactionCount", json!([address, "latest"])).await.unwrap();
        u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }
}

/// Polls `check` until it returns `Some`, mining a block between tries when `mine` is set.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, anvil: Option<&Anvil>, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        if let Some(a) = anvil {
            let _ = a.mine(1).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The login password of every harness customer.
pub const CUSTOMER_PASSWORD: &str = "correct horse battery staple";
/// The transaction password of every harness customer (U9: not the login password).
pub const TRANSACTION_PASSWORD: &str = "a separate transaction password";
/// How long [`Customer::withdraw`] waits for the confirmation mail (the sender polls every second).
const CONFIRMATION_MAIL_WAIT: Duration = Duration::from_secs(60);
/// The mail line that carries a withdrawal confirmation token.
const TOKEN_LINE_PREFIX: &str = "Confirmation token:";
/// The line of the verification mail that carries the token.
const VERIFICATION_LINE_PREFIX: &str = kinko_server::api::onboarding::TOKEN_LINE_PREFIX;

/// The customer's second factor as the harness holds it (shared by clones of one [`Customer`]).
struct Factor {
    totp: totp_rs::Totp,
    /// The base32 secret of the otpauth URI, for a browser test that computes codes itself.
    secret: String,
    recovery_codes: Vec<String>,
    /// The newest TOTP time step used: codes are single use per 30 s step.
    step_used: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A customer's view of the API, set up to move money as kinko requires (U2, U3, U4, U9, U13): TOTP
/// enrolled (codes computed here with totp-rs), the session stepped up, a transaction password set;
/// [`Customer::withdraw`] saves the destination first and confirms over the mail when asked (U8).
#[derive(Clone)]
pub struct Customer {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    pub deposit_address: String,
    pub email: String,
    /// The `[notices] mail_dir` of the kinko serving `base` (the dev file transport).
    pub mail_dir: PathBuf,
    factor: std::sync::Arc<std::sync::Mutex<Factor>>,
}

/// A password session of the customer `email` on the JSON API (no second factor proven: reads only, and
/// the start of every enrolment).
pub async fn password_session(http: &reqwest::Client, base: &str, email: &str) -> String {
    let r: Value = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"email": email, "password": CUSTOMER_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["token"].as_str().unwrap_or_else(|| panic!("log in {email}: {r}")).to_string()
}

impl Customer {
    /// Register → log in → enrol TOTP → step up → set the transaction password → an ETH deposit address.
    /// `mail_dir` is the serving kinko's `[notices] mail_dir` ([`Harness::mail_dir`]).
    pub async fn register(base: &str, email: &str, mail_dir: &std::path::Path) -> Customer {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        let r = http
            .post(format!("{base}/v1/customers"))
            .json(&json!({"email": email, "password": CUSTOMER_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "register {email}: {}", r.text().await.unwrap_or_default());
        let token = password_session(&http, base, email).await;
        let post = |path: &str, body: Value| http.post(format!("{base}{path}")).bearer_auth(&token).json(&body).send();
        let r: Value =
            post("/v1/mfa/totp", json!({"password": CUSTOMER_PASSWORD})).await.unwrap().json().await.unwrap();
        let uri = r["otpauth_uri"].as_str().expect("otpauth_uri");
        let totp = totp_rs::Totp::from_url(uri).unwrap();
        let secret = uri.split(['?', '&']).find_map(|p| p.strip_prefix("secret=")).expect("secret").to_string();
        let now = now_secs();
        let body = json!({"enrolment_id": r["enrolment_id"], "code": totp.generate(now).to_string()});
        let r = post("/v1/mfa/totp/confirm", body).await.unwrap();
        assert_eq!(r.status(), 200, "confirm TOTP for {email}");
        let r: Value = r.json().await.unwrap();
        let recovery_codes =
            r["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
        let factor = Factor { totp, secret, recovery_codes, step_used: now / 30 };
        let mut c = Customer {
            base: base.into(),
            http: http.clone(),
            token: token.clone(),
            deposit_address: String::new(),
            email: email.to_string(),
            mail_dir: mail_dir.to_path_buf(),
            factor: std::sync::Arc::new(std::sync::Mutex::new(factor)),
        };
        c.step_up().await.unwrap();
        let r = http
            .put(format!("{base}/v1/transaction-password"))
            .bearer_auth(&token)
            .json(&json!({"password": TRANSACTION_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "set the transaction password for {email}");
        let r: Value = post("/v1/deposit-addresses", json!({"asset": "ETH"})).await.unwrap().json().await.unwrap();
        c.deposit_address = r["address"].as_str().expect("address").to_string();
        c
    }

    /// Steps the session up (U4) with the current TOTP code when its step is unused, else a recovery code
    /// (both real second factors), so nothing waits for the next 30 s step.
    pub async fn step_up(&self) -> reqwest::Result<()> {
        let body = {
            let mut f = self.factor.lock().unwrap();
            let now = now_secs();
            if now / 30 > f.step_used {
                f.step_used = now / 30;
                json!({"method": "totp", "code": f.totp.generate(now).to_string()})
            } else {
                json!({"method": "recovery_code", "code": f.recovery_codes.pop().expect("a recovery code left")})
            }
        };
        let r = self
            .http
            .post(format!("{}/v1/sessions/step-up", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        assert_eq!(r.status(), 200, "step up {}: {}", self.email, r.text().await.unwrap_or_default());
        Ok(())
    }

    /// The TOTP secret (base32) and the newest 30 s step used, for a browser script that logs this customer
    /// in with a code of its own (it must use a later step).
    pub fn totp_for_browser(&self) -> (String, u64) {
        let f = self.factor.lock().unwrap();
        (f.secret.clone(), f.step_used)
    }

    pub async fn get(&self, path: &str) -> reqwest::Result<Value> {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?.json().await
    }

    pub async fn available(&self) -> u128 {
        let v = self.get("/v1/balances").await.unwrap();
        let eth = v.as_array().unwrap().iter().find(|b| b["asset"] == "ETH").unwrap();
        eth["available"].as_str().unwrap().parse().unwrap()
    }

    /// POSTs as this customer; a `step-up-required` answer (the 5-minute step-up ran out) is met by stepping
    /// up once and sending again.
    async fn post_stepped_up(&self, path: &str, key: Option<&str>, body: &Value) -> reqwest::Result<(u16, Value)> {
        for attempt in 0..2 {
            let mut req = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(body);
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            let r = req.send().await?;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if attempt == 0 && status == 403 && v["type"] == "urn:kinko:problem:step-up-required" {
                self.step_up().await?;
                continue;
            }
            return Ok((status, v));
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Saves `address` for ETH in the address book (U13; already saved is fine).
    pub async fn save_destination(&self, address: &str) -> reqwest::Result<()> {
        let body =
            json!({"label": format!("to {}", &address[..address.len().min(10)]), "asset": "ETH", "address": address});
        let (status, v) = self.post_stepped_up("/v1/address-book", None, &body).await?;
        assert!(status == 201 || status == 409, "save destination {address}: {status} {v}");
        Ok(())
    }

    /// Requests a withdrawal as a customer does it: saves the destination (U13), sends the transaction
    /// password (U9), and when the withdrawal waits for confirmation (U8) reads the token from the newest
    /// confirmation mail for it in the mail directory and confirms. Returns (HTTP status, body); after a
    /// confirmation the body's `status` is the withdrawal's status then.
    pub async fn withdraw(&self, key: &str, amount: u128, destination: &str) -> reqwest::Result<(u16, Value)> {
        self.save_destination(destination).await?;
        let body = json!({
            "asset": "ETH", "amount": amount.to_string(), "destination": destination,
            "transaction_password": TRANSACTION_PASSWORD,
        });
        let (status, mut v) = self.post_stepped_up("/v1/withdrawals", Some(key), &body).await?;
        if status == 202 && v["status"] == "awaiting_confirmation" {
            let id = v["id"].as_str().expect("withdrawal id").to_string();
            let token = self.confirmation_token(&id).await;
            let r = self
                .http
                .post(format!("{}/v1/withdrawal-confirmations", self.base))
                .json(&json!({ "token": token }))
                .send()
                .await?;
            let confirmed = r.status().as_u16();
            assert!(
                (200..300).contains(&confirmed),
                "confirm {id}: {confirmed} {}",
                r.text().await.unwrap_or_default()
            );
            let now = self.get(&format!("/v1/withdrawals/{id}")).await?;
            v["status"] = now["status"].clone();
        }
        Ok((status, v))
    }

    /// The token of the newest confirmation mail to this customer naming withdrawal `id`, waiting for it.
    pub async fn confirmation_token(&self, id: &str) -> String {
        wait_confirmation_token(&self.mail_dir, &self.email, id).await
    }
}

/// The token of the newest confirmation mail in `mail_dir` to `email` naming withdrawal `id`, waiting up to
/// a minute for the notice sender to write it.
pub async fn wait_confirmation_token(mail_dir: &std::path::Path, email: &str, id: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(token) = find_confirmation_token(mail_dir, email, id) {
            return token;
        }
        assert!(
            start.elapsed() < CONFIRMATION_MAIL_WAIT,
            "no confirmation mail for {id} to {email} in {}",
            mail_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn find_confirmation_token(mail_dir: &std::path::Path, email: &str, id: &str) -> Option<String> {
    find_mail_line(mail_dir, email, Some(id), TOKEN_LINE_PREFIX)
}

/// The e-mail verification token kinko mailed to `email`, if the mail is there yet.
pub fn verification_token(mail_dir: &std::path::Path, email: &str) -> Option<String> {
    find_mail_line(mail_dir, email, None, VERIFICATION_LINE_PREFIX)
}

/// What follows `prefix` on a line of the newest mail in `mail_dir` (the dev file transport's .eml files)
/// to `email` whose body contains `naming`.
fn find_mail_line(mail_dir: &std::path::Path, email: &str, naming: Option<&str>, prefix: &str) -> Option<String> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(mail_dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
        .collect();
    files.sort();
    files.iter().rev().find_map(|(_, path)| {
        let mail = kinko_server::notices::testing::parse_mail(&std::fs::read_to_string(path).ok()?);
        if !mail.to.to_ascii_lowercase().contains(&email.to_ascii_lowercase())
            || naming.is_some_and(|n| !mail.body.contains(n))
        {
            return None;
        }
        mail.body.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|t| t.trim().to_string()))
    })
}

/// A fresh outside address nobody holds a key for, derived from a label (20 bytes of its sha256).
pub fn outside_address(label: &str) -> String {
    use sha2::Digest;
    format!("0x{}", hex::encode(&sha2::Sha256::digest(label.as_bytes())[..20]))
}
