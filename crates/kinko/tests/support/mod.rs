//! End-to-end test support: a real anvil, a real store (SQLite or PostgreSQL), an initialised and funded
//! custody set-up, `kinko serve` as a child process or in-process, and a small API client.
#![allow(dead_code)]

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

/// A customer's view of the API.
#[derive(Clone)]
pub struct Customer {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    pub deposit_address: String,
}

impl Customer {
    pub async fn register(base: &str, email: &str) -> Customer {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        let password = "correct horse battery staple";
        let r = http
            .post(format!("{base}/v1/customers"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "register {email}: {}", r.text().await.unwrap_or_default());
        let r: Value = http
            .post(format!("{base}/v1/sessions"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["token"].as_str().expect("token").to_string();
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
        let deposit_address = r["address"].as_str().expect("address").to_string();
        Customer { base: base.into(), http, token, deposit_address }
    }

    pub async fn get(&self, path: &str) -> reqwest::Result<Value> {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?.json().await
    }

    pub async fn available(&self) -> u128 {
        let v = self.get("/v1/balances").await.unwrap();
        let eth = v.as_array().unwrap().iter().find(|b| b["asset"] == "ETH").unwrap();
        eth["available"].as_str().unwrap().parse().unwrap()
    }

    /// Requests a withdrawal; returns (HTTP status, body).
    pub async fn withdraw(&self, key: &str, amount: u128, destination: &str) -> reqwest::Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/v1/withdrawals", self.base))
            .bearer_auth(&self.token)
            .header("Idempotency-Key", key)
            .json(&json!({"asset": "ETH", "amount": amount.to_string(), "destination": destination}))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }
}

/// A fresh outside address nobody holds a key for, derived from a label (20 bytes of its sha256).
pub fn outside_address(label: &str) -> String {
    use sha2::Digest;
    format!("0x{}", hex::encode(&sha2::Sha256::digest(label.as_bytes())[..20]))
}
