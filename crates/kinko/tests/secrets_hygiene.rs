//! Secrets hygiene (K1, K20, L2; "secrets never in logs, errors or Debug output"): a full flow — init,
//! `kinko serve` as a real process logging at debug level, a deposit and a withdrawal end to end, bad
//! requests and failing commands — then the test recovers its own secrets (the master seed mnemonic and the
//! hot-wallet private key, unwrapped from the `keys` table with the dev KEK) and searches every log file,
//! every row of every table, every HTTP response body and every error message for them. None may appear.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kinko_server::app::{self, HOT_KEY_ID, MASTER_SEED_KEY_ID};
use serde_json::{Value, json};
use support::{ETH, Harness, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "correct horse battery staple";
use support::TRANSACTION_PASSWORD;
/// Bound on files walked under the data directory (it holds a handful).
const FILES_MAX: usize = 10_000;

/// Everything the run produced that an operator or attacker could read, with where it came from.
#[derive(Default)]
struct Haystack {
    items: Vec<(String, String)>,
}

impl Haystack {
    fn add(&mut self, origin: impl Into<String>, text: impl Into<String>) {
        self.items.push((origin.into(), text.into()));
    }
}

/// Records every response: status line and body text, whatever the status.
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        hay: &mut Haystack,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(k) = idempotency_key {
            r = r.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        let resp = r.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = format!("{:?}", resp.headers());
        let text = resp.text().await.unwrap_or_default();
        hay.add(format!("HTTP {method} {path} -> {status}"), format!("{headers}\n{text}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn spawn_serve_debug(h: &Harness) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(h.dir.path().join("serve.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kinko"))
        .args(["serve", "--config"])
        .arg(&h.config_path)
        // Debug everywhere, sqlx statements included: the most a misconfigured deployment would log.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn kinko serve")
}

/// Runs a kinko command to completion and records its stdout and stderr.
fn run_kinko(hay: &mut Haystack, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kinko")).args(args).env("RUST_LOG", "debug").output().unwrap();
    hay.add(format!("kinko {args:?} ({})", out.status), String::from_utf8_lossy(&out.stdout).into_owned());
    hay.add(format!("kinko {args:?} stderr"), String::from_utf8_lossy(&out.stderr).into_owned());
}

fn stop(child: &mut Child) {
    // SIGTERM, not SIGKILL: the graceful path flushes and logs its shutdown too.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..100 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
            assert!(out.len() + todo.len() < FILES_MAX, "more than {FILES_MAX} files under {}", dir.display());
        }
    }
    out
}

/// Every row of every table as text, rendered by the database itself (PostgreSQL: the row cast to text;
/// SQLite: `quote()` of each column, blobs as X'hex'), so no column type escapes the search.
async fn dump_database(store: &kinko_store::Store) -> Vec<(String, String)> {
    let sqlite = matches!(store.backend(), kinko_store::Backend::Sqlite);
    let list = if sqlite {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    } else {
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
    };
    let tables: Vec<String> = sqlx::query_scalar(list).fetch_all(store.pool()).await.unwrap();
    assert!(tables.iter().any(|t| t == "keys"), "no keys table among {tables:?}");
    let mut out = Vec::new();
    for table in tables {
        assert!(table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "table name {table:?}");
        let select = if sqlite {
            let columns: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{table}')")))
                    .fetch_all(store.pool())
                    .await
                    .unwrap();
            assert!(!columns.is_empty(), "{table} has no columns");
            let cells: Vec<String> = columns
                .iter()
                .map(|c| {
                    assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "column name {c:?}");
                    format!("'{c}=' || quote(\"{c}\")")
                })
                .collect();
            format!("SELECT {} FROM \"{table}\"", cells.join(" || ' | ' || "))
        } else {
            format!("SELECT t::text FROM \"{table}\" t")
        };
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(select))
            .fetch_all(store.pool())
            .await
            .unwrap_or_else(|e| panic!("dump {table}: {e}"));
        for (n, row) in rows.into_iter().enumerate() {
            out.push((format!("table {table} row {n}"), row));
        }
    }
    out
}

/// The dev set-up's KEK: the dev custodian's 1-of-1 share gives the master key, which unwraps the active
/// KEK (the seal model); also returns the share's hex, itself a secret.
async fn dev_kek(h: &Harness) -> (kinko_keys::kek::Kek, String) {
    let file = kinko_keys::shares::ShareFile::read(&h.config.data_dir.join(app::DEV_SHARE_FILE)).unwrap();
    let share = file.open(None).unwrap();
    let share_hex = share.to_hex().to_string();
    let mk = kinko_keys::shares::combine(1, &[share]).unwrap();
    let (_, kek) = kinko_signer::seal::unwrap_active_kek(&h.ts.store, &mk).await.unwrap();
    (kek, share_hex)
}

/// The needles: each secret in the forms it could leak in.
fn needles(hot_secret_hex: &str, mnemonic: &str, xprv: &str, kek_hex: &str, share_hex: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = mnemonic.split_whitespace().collect();
    let mut n = vec![
        ("hot key hex".to_string(), hot_secret_hex.to_lowercase()),
        ("hot key HEX".to_string(), hot_secret_hex.to_uppercase()),
        ("hot key 0xhex".to_string(), format!("0x{}", hot_secret_hex.to_lowercase())),
        ("hot key 0xHEX".to_string(), format!("0x{}", hot_secret_hex.to_uppercase())),
        ("mnemonic".to_string(), mnemonic.to_string()),
        ("mnemonic's first 3 words".to_string(), words[..3].join(" ")),
        ("BIP32 master xprv".to_string(), xprv.to_string()),
        ("KEK hex".to_string(), kek_hex.to_lowercase()),
        ("KEK HEX".to_string(), kek_hex.to_uppercase()),
        ("dev master-key share hex".to_string(), share_hex.to_lowercase()),
        ("dev master-key share HEX".to_string(), share_hex.to_uppercase()),
    ];
    // Hex without 0x also covers the 0x forms; both are listed to say what was checked.
    n.dedup_by(|a, b| a.1 == b.1);
    n
}

/// Returns every (needle, origin) found.
fn search(hay: &Haystack, needles: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (origin, text) in &hay.items {
        for (what, needle) in needles {
            if text.contains(needle.as_str()) {
                found.push(format!("{what} found in {origin}"));
            }
        }
    }
    found
}

/// K20, L1: the secrets search itself can fail (planted needles are found), so a clean result means something.
#[test]
fn the_search_can_fail() {
    let needles =
        needles(&"ab".repeat(32), "alpha bravo charlie delta", "xprv9s21", &"cd".repeat(32), &"ef".repeat(33));
    let mut hay = Haystack::default();
    hay.add("upper", format!("key=0x{}", "AB".repeat(32)));
    hay.add("partial", "words: alpha bravo charlie");
    hay.add("clean", "nothing here");
    let found = search(&hay, &needles);
    assert!(found.iter().any(|f| f.contains("HEX") && f.contains("upper")), "{found:?}");
    assert!(found.iter().any(|f| f.contains("first 3 words") && f.contains("partial")), "{found:?}");
    assert!(!found.iter().any(|f| f.contains("clean")), "{found:?}");
}

/// K1, L2: no secret appears in any log, table row, response body or error message of a full run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_l2_no_secret_in_logs_database_responses_or_errors() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let h = Harness::new(ts, &[], 1, 30_000).await;
        let mut hay = Haystack::default();
        let mut serve = spawn_serve_debug(&h);
        let client = Client {
            base: h.api_base(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap(),
        };
        let health = client.http.clone();
        let ready_url = format!("{}/readyz", h.api_base());
        wait_for("kinko serve to answer", TIMEOUT, None, || {
            let (health, url) = (health.clone(), ready_url.clone());
            async move { health.get(url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;

        use reqwest::Method;
        let email = "hygiene@example.com";
        let creds = json!({"email": email, "password": PASSWORD}).to_string();
        let (s, _) = client.call(&mut hay, Method::POST, "/v1/customers", None, None, Some(&creds)).await;
        assert_eq!(s, 201, "{backend}: register");
        let (s, v) = client.call(&mut hay, Method::POST, "/v1/sessions", None, None, Some(&creds)).await;
        assert!((200..300).contains(&s), "{backend}: login {s}");
        let token = v["token"].as_str().expect("token").to_string();
        let t = Some(token.as_str());
        let (_, v) =
            client.call(&mut hay, Method::POST, "/v1/deposit-addresses", t, None, Some(r#"{"asset":"ETH"}"#)).await;
        let deposit_address = v["address"].as_str().expect("deposit address").to_string();
        let dest = outside_address(&format!("{backend}-hygiene-dest"));

        // What moving money needs (U2, U4, U9, U13), through the recorded client: TOTP enrolled (the code
        // computed here), a step-up (a recovery code: the enrolment used this 30 s step's code), the
        // transaction password, the destination saved.
        let reauth = json!({"password": PASSWORD}).to_string();
        let (s, v) = client.call(&mut hay, Method::POST, "/v1/mfa/totp", t, None, Some(&reauth)).await;
        assert_eq!(s, 201, "{backend}: start TOTP {v}");
        let totp = totp_rs::Totp::from_url(v["otpauth_uri"].as_str().expect("otpauth_uri")).unwrap();
        let now_secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let confirm = json!({"enrolment_id": v["enrolment_id"], "code": totp.generate(now_secs).to_string()});
        let (s, v) =
            client.call(&mut hay, Method::POST, "/v1/mfa/totp/confirm", t, None, Some(&confirm.to_string())).await;
        assert_eq!(s, 200, "{backend}: confirm TOTP {v}");
        let step_up = json!({"method": "recovery_code", "code": v["recovery_codes"][0]}).to_string();
        let (s, v) = client.call(&mut hay, Method::POST, "/v1/sessions/step-up", t, None, Some(&step_up)).await;
        assert_eq!(s, 200, "{backend}: step up {v}");
        let tx_password = json!({"password": TRANSACTION_PASSWORD}).to_string();
        let (s, v) = client.call(&mut hay, Method::PUT, "/v1/transaction-password", t, None, Some(&tx_password)).await;
        assert_eq!(s, 204, "{backend}: transaction password {v}");
        let entry = json!({"label": "hygiene", "asset": "ETH", "address": dest}).to_string();
        let (s, v) = client.call(&mut hay, Method::POST, "/v1/address-book", t, None, Some(&entry)).await;
        assert_eq!(s, 201, "{backend}: save the destination {v}");

        // Bad requests: each answers with an error body, and those bodies are searched too.
        let wrong = json!({"email": email, "password": "not the password"}).to_string();
        let (s, _) = client.call(&mut hay, Method::POST, "/v1/sessions", None, None, Some(&wrong)).await;
        assert!((400..500).contains(&s), "{backend}: wrong password answered {s}");
        for (n, amount) in
            ["-1", "1.5", "abc", "0", "", "1e18", "340282366920938463463374607431768211456"].into_iter().enumerate()
        {
            let body = json!({
                "asset": "ETH", "amount": amount, "destination": dest, "transaction_password": TRANSACTION_PASSWORD,
            })
            .to_string();
            let key = format!("bad-amount-{n}");
            let (s, _) = client.call(&mut hay, Method::POST, "/v1/withdrawals", t, Some(&key), Some(&body)).await;
            assert!((400..500).contains(&s), "{backend}: amount {amount:?} answered {s}");
        }
        let over = json!({
            "asset": "ETH", "amount": (1000 * ETH).to_string(), "destination": dest,
            "transaction_password": TRANSACTION_PASSWORD,
        })
        .to_string();
        // A wrong transaction password is refused, and neither password shows up anywhere.
        let wrong_tx = json!({
            "asset": "ETH", "amount": "1", "destination": dest, "transaction_password": "not the transaction password",
        })
        .to_string();
        let (s, _) = client.call(&mut hay, Method::POST, "/v1/withdrawals", t, Some("wrong-tx"), Some(&wrong_tx)).await;
        assert_eq!(s, 403, "{backend}: wrong transaction password");
        client.call(&mut hay, Method::POST, "/v1/withdrawals", t, Some("over"), Some(&over)).await;
        let bad_dest = json!({"asset": "ETH", "amount": "1", "destination": "0xnothex"}).to_string();
        client.call(&mut hay, Method::POST, "/v1/withdrawals", t, Some("bad-dest"), Some(&bad_dest)).await;
        client.call(&mut hay, Method::POST, "/v1/withdrawals", t, Some("bad-json"), Some("{not json")).await;
        client.call(&mut hay, Method::POST, "/v1/withdrawals", Some("bogus-token"), Some("x"), Some(&over)).await;
        client.call(&mut hay, Method::GET, "/v1/withdrawals/does-not-exist", t, None, None).await;
        client.call(&mut hay, Method::GET, "/openapi.json", None, None, None).await;
        client.call(&mut hay, Method::GET, "/metrics", None, None, None).await;

        // A deposit and a withdrawal end to end: the paths that touch the keys.
        h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &deposit_address, 2 * ETH).await.unwrap();
        wait_for("deposit credit", TIMEOUT, Some(&h.anvil), || async {
            let v = client.http.get(format!("{}/v1/balances", h.api_base())).bearer_auth(&token).send().await.ok()?;
            let v: Value = v.json().await.ok()?;
            let eth = v.as_array()?.iter().find(|b| b["asset"] == "ETH")?.clone();
            (eth["available"] == (2 * ETH).to_string()).then_some(())
        })
        .await;
        let body = json!({
            "asset": "ETH", "amount": (ETH / 2).to_string(), "destination": dest,
            "transaction_password": TRANSACTION_PASSWORD,
        })
        .to_string();
        let (s, v) = client.call(&mut hay, Method::POST, "/v1/withdrawals", t, Some("w-ok"), Some(&body)).await;
        assert_eq!(s, 202, "{backend}: withdrawal {v}");
        let id = v["id"].as_str().unwrap().to_string();
        if v["status"] == "awaiting_confirmation" {
            // U8: the token from the mail the notice sender wrote into the dev mail directory.
            let token = support::wait_confirmation_token(&h.mail_dir(), email, &id).await;
            let confirm = json!({ "token": token }).to_string();
            let (s, v) =
                client.call(&mut hay, Method::POST, "/v1/withdrawal-confirmations", None, None, Some(&confirm)).await;
            assert!((200..300).contains(&s), "{backend}: confirmation {v}");
        }
        wait_for("settlement", TIMEOUT, Some(&h.anvil), || async {
            let v = client.http.get(format!("{}/v1/withdrawals/{id}", h.api_base())).bearer_auth(&token).send().await;
            let v: Value = v.ok()?.json().await.ok()?;
            (v["status"] == "settled").then_some(())
        })
        .await;
        assert_eq!(h.balance_of(&dest).await, ETH / 2, "{backend}: paid");
        for path in ["/v1/balances", "/v1/deposits", "/v1/withdrawals", &format!("/v1/withdrawals/{id}")] {
            client.call(&mut hay, Method::GET, path, t, None, None).await;
        }
        stop(&mut serve);

        // Commands that succeed and commands that fail, with their output.
        let config = h.config_path.to_str().unwrap();
        run_kinko(&mut hay, &["init", "--config", config]);
        run_kinko(&mut hay, &["ledger", "verify", "--config", config]);
        run_kinko(&mut hay, &["serve", "--config", "/nonexistent/kinko.toml"]);
        let broken = h.dir.path().join("broken.toml");
        std::fs::write(&broken, "database_url = 42\n").unwrap();
        run_kinko(&mut hay, &["serve", "--config", broken.to_str().unwrap()]);
        run_kinko(&mut hay, &["ledger", "verify"]);

        // Recover the secrets the way an insider with the dev share would.
        let (kek, share_hex) = dev_kek(&h).await;
        let hot = h.ts.store.key(HOT_KEY_ID).await.unwrap().expect("hot key row");
        let hot_secret = kek.unwrap(HOT_KEY_ID, "hot_wallet", &hex::decode(&hot.wrapped_hex).unwrap()).unwrap();
        assert_eq!(hot_secret.len(), 32, "{backend}: hot key length");
        let hot_hex = hex::encode(&hot_secret[..]);
        let seed_row = h.ts.store.key(MASTER_SEED_KEY_ID).await.unwrap().expect("master seed row");
        let mnemonic =
            kek.unwrap(MASTER_SEED_KEY_ID, "master_seed", &hex::decode(&seed_row.wrapped_hex).unwrap()).unwrap();
        let mnemonic = String::from_utf8(mnemonic.to_vec()).expect("mnemonic is UTF-8");
        assert!(mnemonic.split_whitespace().count() >= 12, "{backend}: master seed is a mnemonic");
        // The recovered secrets are the real ones: the mnemonic derives the hot key, which is the hot wallet.
        let seed = kinko_keys::seed::MasterSeed::from_mnemonic(&mnemonic).unwrap();
        let master = seed.to_bip32_master().unwrap();
        let derived = kinko_keys::hd::evm_hot_wallet_secret(&master).unwrap();
        assert_eq!(hex::encode(&derived[..]), hot_hex, "{backend}: the mnemonic derives the hot key");
        let kek_hex = hex::encode(kek.expose_bytes());

        // Error messages and Debug output produced in-process with the real keys loaded.
        let signer = kinko_signer::LocalSigner::new(Arc::new(kinko_signer::testing::MemoryJournal::new()));
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&hot_secret);
        let address = signer.add_secp256k1_key(HOT_KEY_ID, zeroize::Zeroizing::new(secret)).unwrap();
        assert_eq!(address, h.hot_wallet, "{backend}: hot key is the hot wallet");
        hay.add("LocalSigner Debug", format!("{signer:?}"));
        hay.add("Kek Debug", format!("{kek:?}"));
        hay.add("MasterSeed Debug", format!("{seed:?}"));
        let mut other = [7u8; 32];
        other[0] = 1;
        if let Err(e) = signer.add_secp256k1_key(HOT_KEY_ID, zeroize::Zeroizing::new(other)) {
            hay.add("add_secp256k1_key error", format!("{e} / {e:?}"));
        }
        if let Err(e) = kek.unwrap(HOT_KEY_ID, "master_seed", &hex::decode(&hot.wrapped_hex).unwrap()) {
            hay.add("Kek::unwrap wrong purpose", format!("{e} / {e:?}"));
        }
        if let Err(e) = kinko_keys::seed::MasterSeed::from_mnemonic(&mnemonic.replacen(' ', "  x ", 1)) {
            hay.add("MasterSeed::from_mnemonic error", format!("{e} / {e:?}"));
        }
        let mut reversed: Vec<&str> = mnemonic.split_whitespace().collect();
        reversed.reverse();
        if let Err(e) = kinko_keys::seed::MasterSeed::from_mnemonic(&reversed.join(" ")) {
            hay.add("MasterSeed::from_mnemonic checksum error", format!("{e} / {e:?}"));
        }
        let req = kinko_signer::EvmSignRequest {
            key_id: HOT_KEY_ID.into(),
            chain_id: 31337,
            nonce: 0,
            payload: vec![0x02, 0xc0],
            intent: kinko_core::intent::Intent {
                id: "w".into(),
                asset: "ETH".parse().unwrap(),
                chain_id: kinko_core::ChainId(31337),
                amount: kinko_core::Amount::from_base_units(1),
                destination: dest.clone(),
                source_wallet: h.hot_wallet.clone(),
                customer_id: "c".into(),
                reason: "r".into(),
            },
            approvals: vec![],
            actor: "test".into(),
            terminal: "test".into(),
            evacuation: None,
        };
        use kinko_signer::Signer as _;
        let e = signer.sign_evm(&req).await.expect_err("malformed payload");
        hay.add("sign_evm error", format!("{e} / {e:?}"));

        // Every file in the data directory (serve.log, config, …) and every database row.
        let mut log_bytes = 0;
        for file in files_under(h.dir.path()) {
            let bytes = std::fs::read(&file).unwrap();
            if file.file_name().is_some_and(|n| n == "serve.log") {
                log_bytes = bytes.len();
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            // The dev share file holds the share by design; it is searched for everything else.
            let origin = format!("file {}", file.display());
            if file.file_name().is_some_and(|n| n == app::DEV_SHARE_FILE) {
                let text = text.replace(&share_hex.to_lowercase(), "").replace(&share_hex.to_uppercase(), "");
                hay.add(format!("{origin} (the dev share, minus the share itself)"), text);
            } else {
                hay.add(origin, text);
            }
        }
        assert!(log_bytes > 0, "{backend}: serve.log is empty: nothing was searched");
        let log = h.serve_log();
        assert!(log.contains("DEBUG"), "{backend}: serve.log has no debug lines; RUST_LOG=debug did not apply");
        let rows = dump_database(&h.ts.store).await;
        assert!(
            rows.iter().any(|(_, r)| r.contains(&hot.wrapped_hex)),
            "{backend}: the dump does not contain the keys table's wrapped blob"
        );
        assert!(rows.iter().any(|(o, _)| o.starts_with("table withdrawals")), "{backend}: no withdrawal row dumped");
        for (origin, text) in rows {
            hay.add(origin, text);
        }

        let mut needles = needles(&hot_hex, &mnemonic, &master.to_string(), &kek_hex, &share_hex);
        // U9: the transaction password is stored only as an argon2id hash and never echoed or logged.
        needles.push(("transaction password".to_string(), TRANSACTION_PASSWORD.to_string()));
        let found = search(&hay, &needles);
        assert!(
            found.is_empty(),
            "{backend}: secrets leaked ({} places searched):\n{}",
            hay.items.len(),
            found.join("\n")
        );
        let count = |prefix: &str| hay.items.iter().filter(|(o, _)| o.starts_with(prefix)).count();
        let bytes: usize = hay.items.iter().map(|(_, t)| t.len()).sum();
        eprintln!(
            "{backend}: searched {} places ({} files, {} table rows, {} HTTP responses; {bytes} bytes) for {} \
             needles, none found",
            hay.items.len(),
            count("file "),
            count("table "),
            count("HTTP "),
            needles.len()
        );
        if std::env::var_os("KINKO_HYGIENE_LIST").is_some() {
            for (origin, text) in &hay.items {
                eprintln!("  {origin}: {} bytes", text.len());
            }
        }
    }
}
