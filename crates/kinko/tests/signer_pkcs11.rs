//! PKCS#11 in the running system (K21, K3, S1), on a real SoftHSM2 token, through the real `kinko`
//! binary: `kinko init --hot-key-backend pkcs11` generates the hot key inside the token and records only
//! where it lives; `kinko signer serve` activates it by token login on unseal (a wrong PIN leaves it
//! sealed); `kinko serve` settles a customer withdrawal on anvil signed by the token's key.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, so every kinko process gets it in its environment
//! (this test process never loads the module). Without the module the test skips, unless
//! `KINKO_TEST_REQUIRE_SOFTHSM=1` (set by `scripts/test`).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use kinko_chain::anvil::Anvil;
use kinko_server::Config;
use kinko_server::config::{Pkcs11Config, SignerMode};
use serde_json::Value;
use support::{Customer, ETH, free_port, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const MODULE_ENV: &str = "KINKO_SOFTHSM_MODULE";
const REQUIRE_ENV: &str = "KINKO_TEST_REQUIRE_SOFTHSM";
const MODULE_DEFAULT: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN_LABEL: &str = "kinko-e2e";
const USER_PIN: &str = "8123-user";
const SO_PIN: &str = "8123-so";
const PIN_ENV: &str = "KINKO_TEST_TOKEN_PIN";
const TOKEN_KEY_ID: &str = "kinko-hot-e2e";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The environment every kinko process of this test runs with: its own SoftHSM configuration.
struct Env {
    conf: PathBuf,
}

impl Env {
    fn command(&self, args: &[&str], pin: Option<&str>) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinko"));
        cmd.args(args).env("RUST_LOG", "warn").env("SOFTHSM2_CONF", &self.conf);
        match pin {
            Some(p) => cmd.env(PIN_ENV, p),
            None => cmd.env_remove(PIN_ENV),
        };
        cmd
    }

    fn run(&self, args: &[&str], pin: Option<&str>) -> Output {
        self.command(args, pin).output().expect("run kinko")
    }

    fn spawn(&self, args: &[&str], pin: Option<&str>, log: &Path) -> Proc {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = self.command(args, pin);
        cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
        Proc(cmd.spawn().expect("spawn kinko"))
    }
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn module_path() -> Option<PathBuf> {
    let module = std::env::var_os(MODULE_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(MODULE_DEFAULT));
    if module.is_file() {
        return Some(module);
    }
    let msg = format!("SoftHSM2 module not found at {} (set {MODULE_ENV})", module.display());
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{msg}; {REQUIRE_ENV}=1 requires it");
    }
    eprintln!("skipping: {msg}");
    None
}

/// A fresh token directory and `softhsm2-util --init-token`, the way an operator initialises a token.
fn init_token(dir: &Path, module: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN_LABEL, "--pin", USER_PIN, "--so-pin", SO_PIN])
        .arg("--module")
        .arg(module)
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (package softhsm2)");
    assert!(out.status.success(), "init-token: {}", String::from_utf8_lossy(&out.stderr));
    conf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k21_k3_s1_pkcs11_hot_key_from_init_to_a_settled_withdrawal() {
    let Some(module) = module_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = Env { conf: init_token(dir.path(), &module) };
    let ts = kinko_store::testing::sqlite_store().await;
    let anvil = Anvil::spawn(&[]).await.expect("start anvil");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = Config::dev_default(dir.path().to_path_buf(), listen, anvil.url().to_string());
    config.dev = false;
    config.signer.mode = SignerMode::Remote;
    config.signer.pkcs11 = Some(Pkcs11Config {
        module_path: module.clone(),
        token_label: TOKEN_LABEL.into(),
        key_id: TOKEN_KEY_ID.into(),
        pin_env: PIN_ENV.into(),
    });
    config.database_url = ts.url.clone();
    config.ethereum.confirmations = 2;
    config.ethereum.poll_interval_ms = 100;
    config.pipeline.poll_interval_ms = 100;
    config.validate().unwrap();
    let config_path = dir.path().join("kinko.toml");
    let config_text = toml::to_string(&config).unwrap();
    assert!(config_text.contains("[signer.pkcs11]") && !config_text.contains(USER_PIN), "{config_text}");
    std::fs::write(&config_path, &config_text).unwrap();
    let cfg = config_path.to_str().unwrap();
    let share_dir = dir.path().join("shares");
    let init_args = [
        "init",
        "--config",
        cfg,
        "--shares",
        "1",
        "--threshold",
        "1",
        "--share-dir",
        share_dir.to_str().unwrap(),
        "--custodian",
        "alice",
        "--hot-key-backend",
        "pkcs11",
    ];

    // Without the PIN, init cannot log in and records nothing of a hot key.
    let o = env.run(&init_args, None);
    assert!(!o.status.success(), "init without the PIN must fail");
    assert!(String::from_utf8_lossy(&o.stderr).contains(PIN_ENV), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ts.store.key("eth-hot-1").await.unwrap().is_none());
    std::fs::remove_dir_all(&share_dir).ok();

    let o = env.run(&init_args, Some(USER_PIN));
    assert!(o.status.success(), "init: {}", String::from_utf8_lossy(&o.stderr));
    let init = json_out(&o);
    let hot_wallet = init["custody"]["hot_wallet"].as_str().unwrap().to_string();
    let share = PathBuf::from(init["share_files"][0]["path"].as_str().unwrap());

    // The record says where the key lives and holds no secret; no KEK wraps it.
    let row = ts.store.key("eth-hot-1").await.unwrap().unwrap();
    assert_eq!((row.purpose.as_str(), row.address.as_str()), ("hot_wallet", hot_wallet.as_str()));
    let at = kinko_signer::pkcs11::TokenKeyRef::from_marker(&row.wrapped_hex).unwrap().expect("a token marker");
    assert_eq!((at.token_label.as_str(), at.key_id.as_str()), (TOKEN_LABEL, TOKEN_KEY_ID));
    assert_eq!(row.wrapped_hex.len(), at.marker().len(), "nothing but the marker is stored");
    assert_eq!(ts.store.key_kek_id("eth-hot-1").await.unwrap().as_deref(), Some(kinko_signer::pkcs11::TOKEN_KEK_ID));
    kinko_server::app::dev_fund(&ts.store, anvil.url(), &hot_wallet).await.unwrap();
    let socket = config.signer_socket();

    // Activation is the token login: with a wrong PIN, the right share still leaves the signer sealed.
    {
        let _signer = env.spawn(&["signer", "serve", "--config", cfg], Some("0000-wrong"), &dir.path().join("s1.log"));
        wait_for("signer socket", TIMEOUT, None, || async { socket.exists().then_some(()) }).await;
        let o = env.run(&["unseal", "--config", cfg, "--share", share.to_str().unwrap()], None);
        assert!(!o.status.success(), "a wrong token PIN must not unseal");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("PinIncorrect") && !text.contains("0000-wrong"), "{text}");
        let s = json_out(&env.run(&["signer", "status", "--config", cfg], None));
        assert_eq!(s["sealed"], true, "{s}");
    }
    wait_for("old socket gone", TIMEOUT, None, || async {
        let _ = std::fs::remove_file(&socket);
        (!socket.exists()).then_some(())
    })
    .await;

    let _signer = env.spawn(&["signer", "serve", "--config", cfg], Some(USER_PIN), &dir.path().join("s2.log"));
    wait_for("signer socket", TIMEOUT, None, || async { socket.exists().then_some(()) }).await;
    let o = env.run(&["unseal", "--config", cfg, "--share", share.to_str().unwrap()], None);
    assert!(o.status.success(), "unseal: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_out(&o)["sealed"], false);

    let _serve = env.spawn(&["serve", "--config", cfg], None, &dir.path().join("serve.log"));
    let base = format!("http://{listen}");
    wait_for("API", TIMEOUT, None, || async {
        reqwest::get(format!("{base}/openapi.json")).await.ok().filter(|r| r.status().is_success()).map(|_| ())
    })
    .await;
    let c = Customer::register(&base, "hsm@example.com", &dir.path().join("mail")).await;
    anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, 2 * ETH).await.unwrap();
    wait_for("deposit credit", TIMEOUT, Some(&anvil), || async { (c.available().await == 2 * ETH).then_some(()) })
        .await;
    let dest = outside_address("pkcs11-dest");
    let (code, body) = c.withdraw("w-hsm", ETH / 2, &dest).await.unwrap();
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let w = wait_for("settlement", TIMEOUT, Some(&anvil), || async {
        let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
        (w["status"] == "settled").then_some(w)
    })
    .await;
    // Mined from the token key's address: the chain recovered the signer from the signature.
    let tx = anvil.rpc("eth_getTransactionByHash", serde_json::json!([w["tx_hash"]])).await.unwrap();
    assert_eq!(tx["from"].as_str().unwrap().to_lowercase(), hot_wallet, "{tx}");
    let bal = anvil.rpc("eth_getBalance", serde_json::json!([dest, "latest"])).await.unwrap();
    assert_eq!(u128::from_str_radix(bal.as_str().unwrap().trim_start_matches("0x"), 16).unwrap(), ETH / 2);
    let signed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM key_access_log WHERE key_id = 'eth-hot-1'")
        .fetch_one(ts.store.pool())
        .await
        .unwrap();
    assert!(signed >= 1, "the token key's signature is in the key access log");
    ts.store.verify_ledger(|_| {}).await.unwrap();
}
