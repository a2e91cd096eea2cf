//! `kinko audit` end to end (L2, L4–L6) with the binary, on SQLite and — when `KINKO_TEST_POSTGRES_URL`
//! is set — PostgreSQL: `kinko init` creates the audit key outside the database and prints its public
//! key; rows edited, deleted, inserted or reordered directly in the database make `kinko audit verify`
//! fail naming the first bad entry; a chain re-signed with another key fails against the pinned key;
//! `kinko audit export` prints JSON lines; operator CLI actions are recorded; and a failing audit sink
//! stops the pipeline's signing step (the withdrawal waits with the error recorded) until it is repaired.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use kinko_core::audit::{AuditKey, Record};
use kinko_server::Config;
use kinko_store::Store;
use kinko_store::audit::AuditRow;
use kinko_store::testing::test_stores;
use support::{Customer, ETH, Harness, free_port, outside_address, wait_for};

const ENTRIES_ADDED: usize = 10;

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn kinko(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_kinko")).args(args).env("RUST_LOG", "warn").output().unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

fn verify(cfg: &str, public_key: &str, extra: &[&str]) -> Out {
    let mut args = vec!["audit", "verify", "--config", cfg, "--public-key", public_key];
    args.extend_from_slice(extra);
    kinko(&args)
}

async fn exec(store: &Store, q: &str) {
    sqlx::query(sqlx::AssertSqlSafe(q.to_string())).execute(store.pool()).await.unwrap();
}

/// Puts the saved rows (and the head) back, undoing a tamper.
async fn restore(store: &Store, rows: &[AuditRow]) {
    exec(store, "DELETE FROM audit_log").await;
    for r in rows {
        sqlx::query(
            "INSERT INTO audit_log (seq, prev_hash, at_ms, actor_kind, actor_id, role, terminal, action, object, \
             request_digest, outcome, hash, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(r.seq)
        .bind(&r.prev_hash)
        .bind(r.at_ms)
        .bind(&r.actor_kind)
        .bind(&r.actor_id)
        .bind(&r.role)
        .bind(&r.terminal)
        .bind(&r.action)
        .bind(&r.object)
        .bind(&r.request_digest)
        .bind(&r.outcome)
        .bind(&r.hash)
        .bind(&r.signature)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let last = rows.last().unwrap();
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(last.seq)
        .bind(&last.hash)
        .execute(store.pool())
        .await
        .unwrap();
}

fn public_key_from(stderr: &str) -> String {
    let line = stderr.lines().find(|l| l.starts_with("audit key ")).unwrap_or_else(|| panic!("no key in {stderr}"));
    line.rsplit(' ').next().unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l6_tampered_rows_make_audit_verify_name_the_first_bad_entry() {
    for ts in test_stores().await {
        let name = ts.name;
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = Config::dev_default(dir.path().to_path_buf(), listen, "http://127.0.0.1:9".into());
        config.database_url = ts.url.clone();
        let cfg_path = dir.path().join("kinko.toml");
        std::fs::write(&cfg_path, toml::to_string(&config).unwrap()).unwrap();
        let cfg = cfg_path.to_str().unwrap();

        let o = kinko(&["init", "--config", cfg]);
        assert!(o.ok, "{name}: init: {}", o.stderr);
        let public_key = public_key_from(&o.stderr);
        let key_file = dir.path().join(kinko_server::audit::AUDIT_KEY_FILE);
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}: the audit key file is private");
        }
        let key = kinko_server::audit::read_key_file(&key_file).unwrap();
        assert_eq!(key.public_key_hex(), public_key, "{name}");
        let store = &ts.store;
        for i in 0..ENTRIES_ADDED {
            let r = kinko_server::audit::system_record(
                "test",
                "t",
                "system.test",
                &format!("object-{i}"),
                Record::digest(b"x"),
                "ok",
            );
            store.audit_append(&key, r, 1_000 + i as i64).await.unwrap();
        }
        // The genesis, init's own entry and ours.
        let total = ENTRIES_ADDED + 2;
        let o = verify(cfg, &public_key, &[]);
        assert!(o.ok, "{name}: untampered: {}", o.stderr);
        assert!(o.stdout.starts_with(&format!("{total} entries verified")), "{name}: {}", o.stdout);
        let saved = store.audit_rows(0, 1_000).await.unwrap();
        assert_eq!(saved.len(), total, "{name}");

        // Edit, delete, insert and reorder directly in the database; each names the first bad entry.
        let cases: [(&str, &[&str], u64, &str); 4] = [
            ("edit", &["UPDATE audit_log SET outcome = 'ok, honestly' WHERE seq = 5"], 5, "edited"),
            ("delete", &["DELETE FROM audit_log WHERE seq = 5"], 6, "expected seq 5 here, found 6"),
            (
                "insert",
                &[
                    "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 5",
                    "UPDATE audit_log SET seq = seq - 99 WHERE seq >= 105",
                    "INSERT INTO audit_log (seq, prev_hash, at_ms, actor_kind, actor_id, role, terminal, action, \
                     object, request_digest, outcome, hash, signature) SELECT 5, hash, at_ms, actor_kind, actor_id, \
                     role, terminal, action, object, request_digest, outcome, hash, signature FROM audit_log \
                     WHERE seq = 4",
                ],
                5,
                "edited",
            ),
            (
                "reorder",
                &[
                    "UPDATE audit_log SET seq = -5 WHERE seq = 5",
                    "UPDATE audit_log SET seq = 5 WHERE seq = 6",
                    "UPDATE audit_log SET seq = 6 WHERE seq = -5",
                ],
                5,
                "edited",
            ),
        ];
        for (what, statements, bad_seq, reason) in cases {
            for s in statements {
                exec(store, s).await;
            }
            let o = verify(cfg, &public_key, &[]);
            assert!(!o.ok, "{name}: {what} must fail verification");
            assert!(
                o.stderr.contains(&format!("first bad entry: seq {bad_seq} ")),
                "{name}: {what}: expected seq {bad_seq}: {}",
                o.stderr
            );
            assert!(o.stderr.contains(reason), "{name}: {what}: {}", o.stderr);
            restore(store, &saved).await;
            assert!(verify(cfg, &public_key, &[]).ok, "{name}: restored after {what}");
        }

        // Cutting off the end: the head row catches a careless cut; a careful one (head moved back too)
        // only an outside head does (--min-seq, e.g. from an inspection report).
        exec(store, &format!("DELETE FROM audit_log WHERE seq = {total}")).await;
        let o = verify(cfg, &public_key, &[]);
        assert!(!o.ok && o.stderr.contains(&format!("first bad entry: seq {total} ")), "{name}: {}", o.stderr);
        let prev = &saved[total - 2];
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(prev.seq)
            .bind(&prev.hash)
            .execute(store.pool())
            .await
            .unwrap();
        assert!(verify(cfg, &public_key, &[]).ok, "{name}: a careful cut needs an outside head");
        let o = verify(cfg, &public_key, &["--min-seq", &total.to_string()]);
        assert!(!o.ok && o.stderr.contains("cut off"), "{name}: {}", o.stderr);
        restore(store, &saved).await;

        // Someone with write access to the database but not the key file re-signs a whole new chain with
        // a key of their own: it fails against the public key the auditor kept (and only passes unpinned).
        exec(store, "DELETE FROM audit_log").await;
        exec(store, "UPDATE audit_head SET seq = 0, hash = '', public_key = ''").await;
        let forger = AuditKey::from_secret_bytes(&[42; 32]);
        for i in 0..3 {
            let r = kinko_server::audit::system_record("x", "x", "system.test", "forged", Record::digest(b""), "ok");
            store.audit_append(&forger, r, i).await.unwrap();
        }
        let o = verify(cfg, &public_key, &[]);
        assert!(!o.ok && o.stderr.contains("first bad entry: seq 1 "), "{name}: {}", o.stderr);
        assert!(o.stderr.contains("not the expected"), "{name}: {}", o.stderr);
        let key_path = dir.path().join("audit.pub");
        std::fs::write(&key_path, &public_key).unwrap();
        let o = kinko(&["audit", "verify", "--config", cfg, "--public-key-file", key_path.to_str().unwrap()]);
        assert!(!o.ok, "{name}: the key file pins too");
        let o = kinko(&["audit", "verify", "--config", cfg]);
        assert!(o.ok && o.stderr.contains("trusting the key"), "{name}: unpinned: {}", o.stderr);
        restore(store, &saved).await;
        exec(store, &format!("UPDATE audit_head SET public_key = '{public_key}'")).await;

        // Export: JSON lines after a seq, in order, with the stored hashes.
        let o = kinko(&["audit", "export", "--config", cfg, "--after", &(total - 2).to_string()]);
        assert!(o.ok, "{name}: {}", o.stderr);
        let lines: Vec<AuditRow> = o.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines, saved[total - 2..].to_vec(), "{name}");

        // Operator actions through the command line are recorded too: the attempt before anything is done
        // (with the operator the key file names), the outcome after.
        let o = kinko(&["key", "transition", "--config", cfg, "--request", "r_missing", "--key", "/nonexistent.json"]);
        assert!(!o.ok, "{name}: no such request");
        let f = kinko_store::audit::AuditFilter { action_prefix: "key.transition".into(), ..Default::default() };
        let rows = store.audit_search(&f, 10).await.unwrap();
        assert_eq!(rows.len(), 2, "{name}: {rows:?}");
        assert_eq!((rows[0].actor_kind.as_str(), rows[0].outcome.as_str()), ("operator", "attempt"), "{name}");
        assert_eq!(rows[0].object, "r_missing", "{name}");
        assert!(rows[1].outcome.starts_with("error:") && rows[1].outcome.contains("r_missing"), "{name}: {rows:?}");
        assert!(verify(cfg, &public_key, &[]).ok, "{name}: the chain goes on after the restore");
    }
}

/// The pipeline records each signing in the audit trail before it asks the signer; when that entry
/// cannot be written nothing is signed, the withdrawal waits with the error recorded, and it goes on once
/// the sink works again. The entry's digest is the signed payload's sha256, as in the key access log (L2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_l6_audit_sink_failure_stops_pipeline_signing_until_repaired() {
    let ts = kinko_store::testing::sqlite_store().await;
    let h = Harness::new(ts, &[], 1, 30_000).await;
    let running = h.start_in_process().await;
    let store = h.ts.store.clone();
    exec(
        &store,
        "CREATE TRIGGER audit_down BEFORE INSERT ON audit_log WHEN NEW.action = 'system.sign' \
         BEGIN SELECT RAISE(ABORT, 'audit sink down'); END",
    )
    .await;
    let c = Customer::register(&h.api_base(), "audit-pipe@example.com", &h.mail_dir()).await;
    h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &c.deposit_address, 2 * ETH).await.unwrap();
    wait_for("deposit credit", Duration::from_secs(60), Some(&h.anvil), || async {
        (c.available().await == 2 * ETH).then_some(())
    })
    .await;
    let dest = outside_address("audit-pipe");
    let (status, body) = c.withdraw("audit-1", ETH / 2, &dest).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let w = wait_for("the signing step refused", Duration::from_secs(60), None, || async {
        let w = store.withdrawal(&id).await.ok()??;
        w.error.as_deref().is_some_and(|e| e.contains("audit log unavailable")).then_some(w)
    })
    .await;
    assert!(w.tx_hash.is_none(), "nothing was signed");
    assert!(store.tx_versions(&id).await.unwrap().is_empty(), "no signed transaction stored");
    let signatures = store.key_access_search("", i64::MIN, 1_000).await.unwrap();
    assert!(!signatures.iter().any(|k| k.intent_hash == w.intent_hash), "the signer was never asked");

    exec(&store, "DROP TRIGGER audit_down").await;
    wait_for("settled after the repair", Duration::from_secs(90), Some(&h.anvil), || async {
        let w = store.withdrawal(&id).await.ok()??;
        (w.status.as_str() == "settled").then_some(())
    })
    .await;
    assert_eq!(h.balance_of(&dest).await, ETH / 2);
    let signed = store.key_access_search("", i64::MIN, 1_000).await.unwrap();
    let access = signed.iter().find(|k| k.intent_hash == w.intent_hash).expect("key access log row");
    let filter = kinko_store::audit::AuditFilter { action_prefix: "system.sign".into(), ..Default::default() };
    let entries = store.audit_search(&filter, 100).await.unwrap();
    assert!(
        entries.iter().any(|e| e.object.contains(&id) && e.request_digest == access.payload_sha256),
        "the audit entry carries the signed payload's sha256: {entries:?}"
    );
    let settle = kinko_store::audit::AuditFilter { action_prefix: "system.settle".into(), ..Default::default() };
    assert!(!store.audit_search(&settle, 100).await.unwrap().is_empty());
    // The deposit watcher's credit is in the trail as well.
    let credit = kinko_store::audit::AuditFilter { action_prefix: "system.credit".into(), ..Default::default() };
    let credits = store.audit_search(&credit, 100).await.unwrap();
    assert!(credits.iter().any(|e| e.object.starts_with("deposit:") && e.actor_id == "deposit-watcher"), "{credits:?}");
    running.stop().await;
    let cfg = h.config_path.to_str().unwrap();
    let o = kinko(&["audit", "verify", "--config", cfg]);
    assert!(o.ok, "the whole trail verifies: {}", o.stderr);
}
