//! The backup → restore drill (A4, K17) with the real binary, a real anvil and real stores: a used
//! instance (a deposit and a settled withdrawal) is backed up with `kinko backup`, restored with `kinko
//! restore` into an empty data directory and a fresh database, and the restored instance then verifies
//! its ledger (identical balances) and audit chain and signs a withdrawal that anvil mines with the
//! restored keys. On PostgreSQL (under scripts/test) the source is PostgreSQL and the restore goes to
//! SQLite and to a second PostgreSQL database. Negative drills: a wrong passphrase, one flipped byte, a
//! non-empty target — each refused with its reason and nothing written.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kinko_server::Config;
use kinko_server::app;
use kinko_store::Store;
use serde_json::Value;
use support::{Customer, ETH, Harness, free_port, outside_address, wait_for};

const TIMEOUT: Duration = Duration::from_secs(90);
const PASSPHRASE: &str = "a backup passphrase long enough";
const PASSPHRASE_ENV: &str = "KINKO_BACKUP_PASSPHRASE";

/// Runs the kinko binary with the backup passphrase in its environment (never on the command line).
async fn kinko(args: Vec<String>, passphrase: &str) -> Output {
    let passphrase = passphrase.to_string();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kinko"))
            .args(&args)
            .env(PASSPHRASE_ENV, passphrase)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run kinko")
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A configuration for a restore target: the source's, with its own empty data directory, database,
/// port and mail directory.
fn target_config(source: &Config, dir: &Path, database_url: Option<String>) -> (Config, PathBuf) {
    let mut c = source.clone();
    c.data_dir = dir.join("data");
    c.database_url = database_url.unwrap_or_else(|| format!("sqlite://{}", c.data_dir.join("kinko.db").display()));
    c.listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c.notices.mail_dir = Some(c.data_dir.join("mail"));
    c.audit.key_file = None;
    let path = dir.join("target.toml");
    std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
    (c, path)
}

fn restore_args(file: &Path, config: &Path) -> Vec<String> {
    vec!["restore".into(), "--in".into(), file.display().to_string(), "--config".into(), config.display().to_string()]
}

/// Nothing of a refused restore may exist: no data directory (so no database file, no key file).
fn assert_nothing_written(c: &Config, why: &str) {
    assert!(!c.data_dir.exists(), "{why}: the refused restore created {}", c.data_dir.display());
}

async fn credited_customer(h: &Harness, email: &str, amount: u128) -> Customer {
    let c = Customer::register(&h.api_base(), email, &h.mail_dir()).await;
    h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, amount).await.unwrap();
    wait_for("deposit credit", TIMEOUT, Some(&h.anvil), || async { (c.available().await == amount).then_some(()) })
        .await;
    c
}

async fn settle(c: &Customer, h: &Harness, key: &str, amount: u128, dest: &str) {
    let (status, body) = c.withdraw(key, amount, dest).await.unwrap();
    assert_eq!(status, 202, "withdraw {key}: {body}");
    let id = body["id"].as_str().unwrap().to_string();
    wait_for("settlement", TIMEOUT, Some(&h.anvil), || async {
        let w = c.get(&format!("/v1/withdrawals/{id}")).await.ok()?;
        (w["status"] == "settled").then_some(())
    })
    .await;
}

/// A4, K17: the drill. Backup of a used instance; a wrong passphrase, a flipped byte and a non-empty
/// target are refused with their reason and write nothing; the restore verifies; the restored ledger has
/// identical balances and verifies, the audit chain verifies, and the restored keys sign a withdrawal
/// that anvil mines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_k17_backup_restore_drill_ledger_audit_and_keys_survive() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let h = Harness::new(ts, &[], 1, 30_000).await;
        let running = h.start_in_process().await;
        let c = credited_customer(&h, &format!("drill-{backend}@example.com"), 2 * ETH).await;
        settle(&c, &h, "w-before-backup", ETH / 2, &outside_address(&format!("{backend}-backup-1"))).await;
        // Stopped so that exactly one instance drives the hot wallet once the restored one starts.
        running.stop().await;
        let source_balances = h.ts.store.all_balances().await.unwrap();
        let source_report = h.ts.store.verify_ledger(|_| {}).await.unwrap();

        let work = tempfile::tempdir().unwrap();
        let file = work.path().join("kinko.backup");
        let out = kinko(
            vec![
                "backup".into(),
                "--config".into(),
                h.config_path.display().to_string(),
                "--out".into(),
                file.display().to_string(),
            ],
            PASSPHRASE,
        )
        .await;
        assert!(out.status.success(), "{backend}: backup: {}", text(&out));
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["ok"], true, "{backend}: {summary}");
        assert!(summary["files"].as_array().unwrap().iter().any(|f| f == "audit_key"), "{backend}: {summary}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "{backend}");
        }
        let bytes = std::fs::read(&file).unwrap();
        // Nothing of the database is readable in the file: a customer's e-mail never appears in clear.
        assert!(!bytes.windows(7).any(|w| w == b"example"), "{backend}: plaintext in the backup file");
        let again = kinko(
            vec![
                "backup".into(),
                "--config".into(),
                h.config_path.display().to_string(),
                "--out".into(),
                file.display().to_string(),
            ],
            PASSPHRASE,
        )
        .await;
        assert!(!again.status.success() && text(&again).contains("never overwrites"), "{backend}: {}", text(&again));

        // Wrong passphrase: named as such, nothing written.
        let t = tempfile::tempdir().unwrap();
        let (tc, tpath) = target_config(&h.config, t.path(), None);
        let out = kinko(restore_args(&file, &tpath), "not the passphrase at all").await;
        assert!(!out.status.success(), "{backend}: wrong passphrase accepted: {}", text(&out));
        assert!(text(&out).contains("wrong passphrase"), "{backend}: {}", text(&out));
        assert_nothing_written(&tc, "wrong passphrase");

        // One flipped byte, in the encrypted body and in the header: refused as corrupted, nothing written.
        for (where_, offset) in [("body", bytes.len() / 2), ("header", 20), ("last byte", bytes.len() - 1)] {
            let mut bad = bytes.clone();
            bad[offset] ^= 0x01;
            let bad_file = work.path().join(format!("flipped-{offset}.backup"));
            std::fs::write(&bad_file, &bad).unwrap();
            let out = kinko(restore_args(&bad_file, &tpath), PASSPHRASE).await;
            assert!(!out.status.success(), "{backend}: flipped {where_} byte accepted: {}", text(&out));
            assert!(text(&out).contains("corrupted"), "{backend}: flipped {where_}: {}", text(&out));
            assert_nothing_written(&tc, "flipped byte");
        }
        // Cut short: refused.
        let cut = work.path().join("cut.backup");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let out = kinko(restore_args(&cut, &tpath), PASSPHRASE).await;
        assert!(!out.status.success() && text(&out).contains("corrupted"), "{backend}: truncation: {}", text(&out));
        assert_nothing_written(&tc, "truncated file");

        // An empty data directory but a used database (the source's own): refused naming the table, and the
        // source is untouched (no migration ran, nothing was loaded).
        let used = tempfile::tempdir().unwrap();
        let (uc, upath) = target_config(&h.config, used.path(), Some(h.ts.url.clone()));
        let out = kinko(restore_args(&file, &upath), PASSPHRASE).await;
        assert!(!out.status.success(), "{backend}: restore into a used database accepted: {}", text(&out));
        assert!(text(&out).contains("target database is not empty"), "{backend}: {}", text(&out));
        assert_nothing_written(&uc, "used database");
        assert_eq!(h.ts.store.all_balances().await.unwrap(), source_balances, "{backend}: source untouched");

        // --verify-only reads everything and writes nothing.
        let mut verify = restore_args(&file, &tpath);
        verify.push("--verify-only".into());
        let out = kinko(verify, PASSPHRASE).await;
        assert!(out.status.success(), "{backend}: verify-only: {}", text(&out));
        assert_nothing_written(&tc, "--verify-only");

        // The restore.
        let out = kinko(restore_args(&file, &tpath), PASSPHRASE).await;
        assert!(out.status.success(), "{backend}: restore: {}", text(&out));
        let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(restored["ledger"]["entries"], source_report.entries, "{backend}: {restored}");
        assert_eq!(restored["ledger"]["head_hash"], source_report.head_hash, "{backend}: {restored}");
        assert!(restored["audit"]["entries"].as_u64().unwrap() > 0, "{backend}: audit chain verified: {restored}");

        // Restoring again into the same (now used) target is refused, naming why.
        let out = kinko(restore_args(&file, &tpath), PASSPHRASE).await;
        assert!(!out.status.success() && text(&out).contains("not empty"), "{backend}: {}", text(&out));

        // The restored ledger: identical balances, and it verifies; `kinko ledger verify` agrees.
        let store = Store::connect(&tc.database_url).await.unwrap();
        assert_eq!(store.all_balances().await.unwrap(), source_balances, "{backend}: balances after restore");
        store.close().await;
        let out =
            kinko(vec!["ledger".into(), "verify".into(), "--config".into(), tpath.display().to_string()], "").await;
        assert!(out.status.success(), "{backend}: ledger verify on the restored instance: {}", text(&out));

        // PostgreSQL source: also into a second, fresh PostgreSQL database.
        if backend == "postgres"
            && let Some(pg) = kinko_store::testing::postgres_store().await
        {
            let t2 = tempfile::tempdir().unwrap();
            let (pc, ppath) = target_config(&h.config, t2.path(), Some(pg.url.clone()));
            let out = kinko(restore_args(&file, &ppath), PASSPHRASE).await;
            assert!(out.status.success(), "postgres → postgres restore: {}", text(&out));
            assert_eq!(pg.store.all_balances().await.unwrap(), source_balances, "postgres → postgres balances");
            assert!(pc.data_dir.join(kinko_server::audit::AUDIT_KEY_FILE).exists());
        }

        // The restored keys sign: the restored instance unseals from the restored data, derives the same hot
        // wallet and pays a withdrawal that anvil mines.
        let kek = app::load_kek(&tc).unwrap();
        let restored_running = app::start(tc.clone(), &kek).await.expect("start the restored instance");
        assert_eq!(restored_running.state.hot_wallet, h.hot_wallet, "{backend}: same hot wallet after restore");
        let mut c2 = c.clone();
        c2.base = format!("http://{}", tc.listen);
        c2.mail_dir = tc.notices.mail_dir.clone().unwrap();
        let dest = outside_address(&format!("{backend}-after-restore"));
        settle(&c2, &h, "w-after-restore", ETH / 4, &dest).await;
        assert_eq!(h.balance_of(&dest).await, ETH / 4, "{backend}: the restored keys signed a mined withdrawal");
        assert_eq!(c2.available().await, 2 * ETH - ETH / 2 - ETH / 4, "{backend}: customer balance carried over");
        restored_running.stop().await;
        let store = Store::connect(&tc.database_url).await.unwrap();
        store.verify_ledger(|_| {}).await.unwrap();
        store.close().await;
    }
}
