//! The signer as its own process, sealed by custodian shares (K3, K16, S1, O5), driven through the real
//! `kinko` binary: `kinko init --shares`, `kinko signer serve`, `kinko serve` with a remote signer,
//! `kinko unseal`, `kinko seal`, `kinko signer status`, on a real anvil and SQLite.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use kinko_chain::anvil::Anvil;
use kinko_server::Config;
use kinko_server::config::SignerMode;
use serde_json::Value;
use support::{Customer, ETH, free_port, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kinko(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinko"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run kinko")
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

fn spawn(args: &[&str], log: &Path) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_kinko"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn kinko"),
    )
}

fn status(config: &str) -> Value {
    let o = kinko(&["signer", "status", "--config", config], &[]);
    assert!(o.status.success(), "status: {}", String::from_utf8_lossy(&o.stderr));
    json_out(&o)
}

fn unseal(config: &str, share: &Path, passphrase_env: Option<&str>, envs: &[(&str, &str)]) -> Output {
    let mut args = vec!["unseal", "--config", config, "--share", share.to_str().unwrap()];
    if let Some(v) = passphrase_env {
        args.extend(["--passphrase-env", v]);
    }
    kinko(&args, envs)
}

fn share_path(files: &Value, custodian: &str) -> PathBuf {
    let f = files.as_array().unwrap().iter().find(|f| f["custodian"] == custodian).expect("share file");
    PathBuf::from(f["path"].as_str().unwrap())
}

/// K3, K16, S1, O5: a sealed signer process refuses to sign (the withdrawal stays unsigned, with the
/// error recorded); K−1 shares leave it sealed; a wrong passphrase, a wrong share and a corrupted share
/// file are rejected; the same custodian's share counts once; K shares from different custodians unseal
/// it and the withdrawal settles on anvil end to end; `kinko seal` makes it refuse again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3_k16_s1_o5_signer_process_seal_unseal_and_withdrawal_end_to_end() {
    let ts = kinko_store::testing::sqlite_store().await;
    let anvil = Anvil::spawn(&[]).await.expect("start anvil");
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut config = Config::dev_default(dir.path().to_path_buf(), listen, anvil.url().to_string());
    config.dev = false;
    config.signer.mode = SignerMode::Remote;
    config.database_url = ts.url.clone();
    config.ethereum.confirmations = 2;
    config.ethereum.poll_interval_ms = 100;
    config.pipeline.poll_interval_ms = 100;
    config.validate().unwrap();
    let config_path = dir.path().join("kinko.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let cfg = config_path.to_str().unwrap();
    let share_dir = dir.path().join("shares");

    // init: 2 of 3, alice's share behind a passphrase.
    let env = [("ALICE_PW", "alice's long passphrase")];
    let o = kinko(
        &[
            "init",
            "--config",
            cfg,
            "--shares",
            "3",
            "--threshold",
            "2",
            "--share-dir",
            share_dir.to_str().unwrap(),
            "--custodian",
            "alice",
            "--custodian",
            "bob",
            "--custodian",
            "carol",
            "--passphrase-env",
            "alice=ALICE_PW",
        ],
        &env,
    );
    assert!(o.status.success(), "init: {}", String::from_utf8_lossy(&o.stderr));
    let init = json_out(&o);
    let files = init["share_files"].clone();
    let hot_wallet = init["custody"]["hot_wallet"].as_str().unwrap().to_string();
    for f in files.as_array().unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f["path"].as_str().unwrap()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "share files are private");
    }
    let alice_file = std::fs::read_to_string(share_path(&files, "alice")).unwrap();
    assert!(alice_file.contains("envelope") && !alice_file.contains("share_hex"), "alice's share is sealed");
    kinko_server::app::dev_fund(&ts.store, anvil.url(), &hot_wallet).await.unwrap();

    let _signer = spawn(&["signer", "serve", "--config", cfg], &dir.path().join("signer.log"));
    let socket = config.signer_socket();
    wait_for("signer socket", TIMEOUT, None, || async { socket.exists().then_some(()) }).await;
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600, "socket is 0600");
    }
    let s = status(cfg);
    assert_eq!(s["sealed"], true, "{s}");
    assert_eq!((s["have"].as_u64(), s["need"].as_u64()), (Some(0), Some(2)), "{s}");

    let _serve = spawn(&["serve", "--config", cfg], &dir.path().join("serve.log"));
    let base = format!("http://{listen}");
    wait_for("API", TIMEOUT, None, || async {
        reqwest::get(format!("{base}/openapi.json")).await.ok().filter(|r| r.status().is_success()).map(|_| ())
    })
    .await;
    let c = Customer::register(&base, "carol@example.com", &dir.path().join("mail")).await;
    anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, 2 * ETH).await.unwrap();
    wait_for("deposit credit", TIMEOUT, Some(&anvil), || async { (c.available().await == 2 * ETH).then_some(()) })
        .await;

    // Sealed: the withdrawal is not signed, and the error says why.
    let dest = outside_address("signer-seal-dest");
    let (code, body) = c.withdraw("w-sealed", ETH / 2, &dest).await.unwrap();
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let row = wait_for("the sealed refusal", TIMEOUT, None, || async {
        let w = ts.store.withdrawal(&id).await.ok()??;
        w.error.as_deref().is_some_and(|e| e.contains("sealed")).then_some(w)
    })
    .await;
    assert!(row.tx_hash.is_none(), "nothing signed while sealed: {row:?}");
    assert!(ts.store.tx_versions(&id).await.unwrap().is_empty(), "no transaction built into a signed version");

    // Wrong passphrase, then alice's share: K−1 = 1 share leaves it sealed.
    let o = unseal(cfg, &share_path(&files, "alice"), Some("ALICE_PW"), &[("ALICE_PW", "not it")]);
    assert!(!o.status.success(), "a wrong passphrase must fail");
    let o = unseal(cfg, &share_path(&files, "alice"), Some("ALICE_PW"), &env);
    assert!(o.status.success(), "alice: {}", String::from_utf8_lossy(&o.stderr));
    let s = json_out(&o);
    assert_eq!((s["sealed"].as_bool(), s["have"].as_u64(), s["need"].as_u64()), (Some(true), Some(1), Some(2)));
    // The same custodian again counts once.
    let o = unseal(cfg, &share_path(&files, "alice"), Some("ALICE_PW"), &env);
    assert!(o.status.success());
    assert_eq!(json_out(&o)["have"], 1, "the same custodian counts once");
    assert_eq!(status(cfg)["sealed"], true);

    // A corrupted copy of bob's file and carol's share presented as bob's are rejected on arrival.
    let mut bob: Value = serde_json::from_str(&std::fs::read_to_string(share_path(&files, "bob")).unwrap()).unwrap();
    let hex = bob["share_hex"].as_str().unwrap().to_string();
    let last = if hex.ends_with('0') { "1" } else { "0" };
    bob["share_hex"] = Value::from(format!("{}{last}", &hex[..hex.len() - 1]));
    let corrupted = dir.path().join("bob-corrupted.json");
    std::fs::write(&corrupted, bob.to_string()).unwrap();
    let o = unseal(cfg, &corrupted, None, &[]);
    assert!(!o.status.success(), "a corrupted share must be rejected");
    assert_eq!(json_out(&o)["error"]["kind"], "wrong_share");
    let mut carol: Value =
        serde_json::from_str(&std::fs::read_to_string(share_path(&files, "carol")).unwrap()).unwrap();
    carol["custodian"] = "bob".into();
    let wrong = dir.path().join("carol-as-bob.json");
    std::fs::write(&wrong, carol.to_string()).unwrap();
    let o = unseal(cfg, &wrong, None, &[]);
    assert!(!o.status.success(), "a wrong share must be rejected");
    assert_eq!(json_out(&o)["error"]["kind"], "wrong_share");
    assert_eq!(status(cfg)["have"], 1, "rejected shares were not counted");

    // Bob's real share: K distinct custodians unseal it, and the waiting withdrawal settles on chain.
    let o = unseal(cfg, &share_path(&files, "bob"), None, &[]);
    assert!(o.status.success(), "bob: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_out(&o)["sealed"], false);
    let w = wait_for("settlement", TIMEOUT, Some(&anvil), || async {
        let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
        (w["status"] == "settled").then_some(w)
    })
    .await;
    assert!(w["tx_hash"].is_string(), "{w}");
    let bal = anvil.rpc("eth_getBalance", serde_json::json!([dest, "latest"])).await.unwrap();
    assert_eq!(u128::from_str_radix(bal.as_str().unwrap().trim_start_matches("0x"), 16).unwrap(), ETH / 2);

    // Seal: refuses again.
    let o = kinko(&["seal", "--config", cfg], &[]);
    assert!(o.status.success(), "seal: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_out(&o)["sealed"], true);
    assert_eq!(status(cfg)["sealed"], true);
    let (code, body) = c.withdraw("w-after-seal", ETH / 4, &dest).await.unwrap();
    assert_eq!(code, 202, "{body}");
    let id2 = body["id"].as_str().unwrap().to_string();
    let row = wait_for("the refusal after seal", TIMEOUT, None, || async {
        let w = ts.store.withdrawal(&id2).await.ok()??;
        w.error.as_deref().is_some_and(|e| e.contains("sealed")).then_some(w)
    })
    .await;
    assert!(row.tx_hash.is_none(), "nothing signed after seal: {row:?}");
    ts.store.verify_ledger(|_| {}).await.unwrap();
}
