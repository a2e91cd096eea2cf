//! Cold storage end to end (K14, K13, C1, M10) on a real anvil with the real server, signer and pipeline (in
//! process), the real `kinko cold …` commands and the real air-gapped `kinko-offline` binary run under
//! `unshare -rn` (a new network namespace with no interfaces: it cannot reach anything).
//!
//! The hot wallet is below its floor, so the pipeline's tier check opens a `cold_refill` request; three signing
//! managers approve it over the refill's Intent (the cold class's minimum); it is executed into a cold → hot
//! row, which the pipeline parks in `awaiting_offline_signature` with the cold wallet's nonce and fee plan
//! reserved. `kinko cold export` writes the unsigned bundle, `kinko-offline sign` (keystore from `kinko-offline
//! keygen`, pinned to the registry `kinko cold registry-log` wrote) signs it offline, and `kinko cold import`
//! verifies it against kinko's stored bundle; the pipeline broadcasts and settles it, and the hot wallet is
//! back at its target. A signed file edited after signing is refused on import: nothing stored, nothing
//! broadcast, the row still waiting.
//!
//! `kinko-offline` is another crate's binary, so Cargo gives this test no `CARGO_BIN_EXE_` for it: the test
//! builds it with `cargo build -p kinko-offline --bin kinko-offline` (a no-op when fresh) and runs it from the
//! same target directory as `kinko` (`CARGO_BIN_EXE_kinko`'s directory).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use kinko_core::Amount;
use kinko_core::ledger::{AccountKind, AccountRef, postings};
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_server::app::Running;
use kinko_server::tiers::WalletTierConfig;
use kinko_signer::Approval;
use kinko_signer::approvals::sign_approval;
use kinko_store::cold::COLD_REFILL_KIND;
use kinko_store::ops_requests::{
    OpsApprovalRow, STATE_APPROVED, STATE_EXECUTED, STATE_REQUESTED, finish_ops_request_tx, insert_ops_approval_tx,
    set_ops_request_state_tx,
};
use support::{ETH, Harness, wait_for};

const TIMEOUT: Duration = Duration::from_secs(90);
const A1: u8 = 100;
const A2: u8 = 101;
/// The three signing managers (the cold class needs three approvals).
const MANAGERS: [(u8, &str); 3] = [(1, "m1"), (2, "m2"), (3, "m3")];
const TERMINAL: &str = "127.0.0.1";
/// What the cold wallet holds before the refill (on chain and in the ledger).
const COLD_FUNDS: u128 = 1_000 * ETH;
/// The dev funding leaves the hot wallet at 1000 ETH: below this floor.
const HOT_FLOOR: u128 = 1_500 * ETH;
const HOT_TARGET: u128 = 1_600 * ETH;
const HOT_CAP: u128 = 5_000 * ETH;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn eth() -> kinko_core::AssetCode {
    "ETH".parse().unwrap()
}

async fn registry_change(running: &Running, by: (u8, &str), approvers: &[(u8, &str)], kind: RegistryChangeKind) {
    let signer = &running.state.signer;
    let (seq, prev_hash) = signer.registry_head().await.unwrap().map(|(s, h)| (s + 1, h)).unwrap_or((0, [0; 32]));
    let change = RegistryChange {
        seq,
        prev_hash,
        requested_by: by.1.into(),
        requested_at_ms: kinko_server::clock::now_ms(),
        change: kind,
    };
    let subject = change.subject().unwrap();
    let approvals: Vec<Approval> = std::iter::once(&by)
        .chain(approvers)
        .map(|(seed, id)| sign_approval(&key(*seed), id, &subject, Decision::Approve).unwrap())
        .collect();
    signer.apply_registry_change(&change, &approvals).await.unwrap_or_else(|e| panic!("registry change {seq}: {e}"));
}

fn add(id: &str, seed: u8, role: Role) -> RegistryChangeKind {
    RegistryChangeKind::AddOperator {
        operator_id: id.into(),
        approval_public_key_hex: hex::encode(key(seed).verifying_key().as_bytes()),
        role,
        expires_at_ms: None,
    }
}

/// The `kinko-offline` binary next to `kinko`, built first (see the module docs).
fn offline_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args(["build", "-p", "kinko-offline", "--bin", "kinko-offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo build");
    assert!(o.status.success(), "building kinko-offline: {}", String::from_utf8_lossy(&o.stderr));
    let bin = Path::new(env!("CARGO_BIN_EXE_kinko")).with_file_name("kinko-offline");
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn kinko(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_kinko")).args(args).env("RUST_LOG", "warn"), "")
}

/// Everything up to a signed file: returns the harness, the running server, the refill's id, the cold
/// address and the directory holding `unsigned.json` and `signed.json`.
struct Refill {
    h: Harness,
    running: Running,
    id: String,
    cold: String,
    dir: PathBuf,
}

async fn refill_signed_offline(ts: kinko_store::testing::TestStore) -> Refill {
    let backend = ts.name;
    let mut h = Harness::new(ts, &[], 1, 30_000).await;
    let dir = h.dir.path().join("cold");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = h.config_path.to_str().unwrap().to_string();

    // The operator registry, on the signer and (caught up) in the server's log.
    let running = h.start_in_process().await;
    registry_change(&running, (A1, "a1"), &[], add("a1", A1, Role::Administrator)).await;
    registry_change(&running, (A1, "a1"), &[], add("a2", A2, Role::Administrator)).await;
    for (seed, id) in MANAGERS {
        registry_change(&running, (A1, "a1"), &[(A2, "a2")], add(id, seed, Role::SigningManager)).await;
    }
    let now = kinko_server::clock::now_ms();
    kinko_server::registry_sync::reconcile_registry(&h.ts.store, running.state.signer.as_ref(), now).await.unwrap();
    running.stop().await;

    // Offline key generation, pinned to the registry the online side exports.
    let registry = dir.join("registry.json");
    let o = kinko(&["cold", "registry-log", "--config", &cfg, "--out", registry.to_str().unwrap()]);
    assert!(o.status.success(), "{backend}: registry-log: {}", text(&o));
    let keys = dir.join("offline");
    let o = run(
        Command::new("unshare").arg("-rn").arg(offline_bin()).args([
            "keygen",
            "--out",
            keys.to_str().unwrap(),
            "--custodian",
            "c1",
            "--custodian",
            "c2",
            "--threshold",
            "2",
            "--registry",
            registry.to_str().unwrap(),
            "--quorum",
            "3",
            "--chain-id",
            "31337",
        ]),
        "",
    );
    assert!(o.status.success(), "{backend}: keygen: {}", text(&o));
    let cold = text(&o)
        .lines()
        .find_map(|l| l.strip_prefix("address:").map(|a| a.trim().to_ascii_lowercase()))
        .expect("keygen prints the address");

    // The cold wallet's coins, on chain and in the ledger (the custodian's own).
    h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &cold, COLD_FUNDS).await.unwrap();
    let funding = postings::custodian_funding("fund:cold".into(), &cold, &eth(), Amount::from_base_units(COLD_FUNDS));
    h.ts.store.post(funding, kinko_server::clock::now_ms()).await.unwrap();

    // The tier: the hot wallet's 1000 ETH is below the floor.
    h.config.wallet_tiers = vec![WalletTierConfig {
        asset: "ETH".into(),
        hot_cap: Amount::from_base_units(HOT_CAP),
        hot_floor: Amount::from_base_units(HOT_FLOOR),
        hot_target: Amount::from_base_units(HOT_TARGET),
        cold_address: cold.clone(),
        cold_key_id: "cold-1".into(),
        refill_approvals: 3,
    }];
    std::fs::write(&h.config_path, toml::to_string(&h.config).unwrap()).unwrap();
    let running = h.start_in_process().await;

    let (id, intent_hash, params) = wait_for("the cold_refill request", TIMEOUT, None, || async {
        let rows = h.ts.store.ops_requests(Some(STATE_REQUESTED), 100).await.ok()?;
        let r = rows.into_iter().find(|r| r.kind == COLD_REFILL_KIND)?;
        Some((r.id, r.intent_hash, r.params_json))
    })
    .await;
    let params: serde_json::Value = serde_json::from_str(&params).unwrap();
    assert_eq!(params["amount"], (HOT_TARGET - 1_000 * ETH).to_string(), "{backend}: up to the target: {params}");
    assert_eq!(params["source_wallet"], cold.as_str(), "{backend}");

    // Three signing managers approve over (signing, id, intent hash); a signing operator executes.
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&intent_hash, &mut hash).unwrap();
    let subject = ApprovalSubject::new(Process::Signing, &id, hash).unwrap();
    let now = kinko_server::clock::now_ms();
    let mut tx = h.ts.store.begin_write().await.unwrap();
    for (seed, who) in MANAGERS {
        let approval = sign_approval(&key(seed), who, &subject, Decision::Approve).unwrap();
        let row = OpsApprovalRow {
            request_id: id.clone(),
            operator_id: who.into(),
            decision: "approve".into(),
            signature_hex: approval.signature_hex,
            terminal: TERMINAL.into(),
            at_ms: now,
        };
        insert_ops_approval_tx(&mut tx, &row).await.unwrap();
    }
    set_ops_request_state_tx(&mut tx, &id, STATE_REQUESTED, STATE_APPROVED, now).await.unwrap();
    tx.commit().await.unwrap();
    let result = kinko_server::tiers::execute_cold_refill(&running.state, &id, &params, now)
        .await
        .unwrap_or_else(|p| panic!("{backend}: execute: {:?} {:?}", p.body.detail, p.body.errors));
    let mut tx = h.ts.store.begin_write().await.unwrap();
    finish_ops_request_tx(&mut tx, &id, STATE_APPROVED, STATE_EXECUTED, "so1", &result.to_string(), now).await.unwrap();
    tx.commit().await.unwrap();

    wait_for("awaiting_offline_signature", TIMEOUT, None, || async {
        let w = h.ts.store.withdrawal(&id).await.ok()??;
        (w.status == WithdrawalStatus::AwaitingOfflineSignature).then_some(())
    })
    .await;
    let w = h.ts.store.withdrawal(&id).await.unwrap().unwrap();
    assert_eq!((w.source_wallet.as_str(), w.destination.as_str()), (cold.as_str(), h.hot_wallet.as_str()));
    assert_eq!(w.nonce, Some(0), "{backend}: the cold wallet's first nonce is reserved");

    // Export, sign offline with no network, and the signed file is there.
    let unsigned = dir.join("unsigned.json");
    let o = kinko(&[
        "cold",
        "export",
        "--config",
        &cfg,
        "--withdrawal",
        &id,
        "--out",
        unsigned.to_str().unwrap(),
        "--actor",
        "so1",
    ]);
    assert!(o.status.success(), "{backend}: export: {}", text(&o));
    let again = dir.join("unsigned-again.json");
    let o = kinko(&[
        "cold",
        "export",
        "--config",
        &cfg,
        "--withdrawal",
        &id,
        "--out",
        again.to_str().unwrap(),
        "--actor",
        "so1",
    ]);
    assert!(o.status.success(), "{backend}: export again: {}", text(&o));
    assert_eq!(std::fs::read(&unsigned).unwrap(), std::fs::read(&again).unwrap(), "{backend}: the stored bundle again");
    let signed = dir.join("signed.json");
    let o = run(
        Command::new("unshare").arg("-rn").arg(offline_bin()).args([
            "sign",
            "--keystore",
            keys.join("keystore.json").to_str().unwrap(),
            "--share",
            keys.join("share-c1.json").to_str().unwrap(),
            "--share",
            keys.join("share-c2.json").to_str().unwrap(),
            "--bundle",
            unsigned.to_str().unwrap(),
            "--out",
            signed.to_str().unwrap(),
        ]),
        "sign\n",
    );
    assert!(o.status.success(), "{backend}: offline sign: {}", text(&o));
    Refill { h, running, id, cold, dir }
}

async fn ledger_wallet(h: &Harness, address: &str) -> i128 {
    let account = AccountRef::wallet(address, &eth());
    h.ts.store.balance(&account).await.unwrap().normal(AccountKind::Wallet)
}

/// K14, K13, C1: a refill from cold works end to end through the offline flow (module docs): requested by the
/// tier check, approved by three signing managers, exported, signed by `kinko-offline` under `unshare -rn`,
/// imported (twice: the second changes nothing), broadcast and settled; the hot wallet is back at its target,
/// the cold wallet paid amount plus fee, and both ledger wallet accounts match the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k14_refill_from_cold_end_to_end_through_the_offline_flow() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let r = refill_signed_offline(ts).await;
        let h = &r.h;
        let cfg = h.config_path.to_str().unwrap().to_string();
        let signed = r.dir.join("signed.json");
        let o = kinko(&["cold", "import", "--config", &cfg, "--file", signed.to_str().unwrap(), "--actor", "so1"]);
        assert!(o.status.success(), "{backend}: import: {}", text(&o));
        let o = kinko(&["cold", "import", "--config", &cfg, "--file", signed.to_str().unwrap(), "--actor", "so1"]);
        assert!(o.status.success() && text(&o).contains("already"), "{backend}: import twice: {}", text(&o));

        let w = wait_for("settlement", TIMEOUT, Some(&h.anvil), || async {
            let w = h.ts.store.withdrawal(&r.id).await.ok()??;
            (w.status == WithdrawalStatus::Settled).then_some(w)
        })
        .await;
        let fee = w.fee.unwrap().base_units();
        let amount = HOT_TARGET - 1_000 * ETH;
        assert_eq!(h.balance_of(&h.hot_wallet).await, HOT_TARGET, "{backend}: the hot wallet is back at its target");
        assert_eq!(h.balance_of(&r.cold).await, COLD_FUNDS - amount - fee, "{backend}: cold paid amount and fee");
        assert_eq!(h.nonce_of(&r.cold).await, 1, "{backend}: one cold transaction");
        assert_eq!(ledger_wallet(h, &r.cold).await, h.balance_of(&r.cold).await as i128, "{backend}: cold account");
        assert_eq!(ledger_wallet(h, &h.hot_wallet).await, HOT_TARGET as i128, "{backend}: hot account");
        // No second refill is requested once the hot wallet is within its limits.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let open = h.ts.store.ops_requests(Some(STATE_REQUESTED), 100).await.unwrap();
        assert!(!open.iter().any(|q| q.kind == COLD_REFILL_KIND), "{backend}: no second refill");
        h.ts.store.verify_ledger(|_| {}).await.unwrap();
        // L2, L6: every cold step is in the audit trail, attempt and outcome, with who did it.
        let audited: Vec<(String, String, String)> = kinko_store::sqlx::query_as(
            "SELECT action, actor_id, outcome FROM audit_log WHERE action LIKE 'cold.%' OR action LIKE 'system.cold%' \
             ORDER BY seq",
        )
        .fetch_all(h.ts.store.pool())
        .await
        .unwrap();
        let has = |action: &str, outcome: &str| audited.iter().any(|(a, _, o)| a == action && o == outcome);
        for (action, outcome) in [
            ("system.cold_refill_request", "attempt"),
            ("cold.export", "attempt"),
            ("cold.export", "ok"),
            ("cold.import", "ok"),
        ] {
            assert!(has(action, outcome), "{backend}: audit {action} {outcome}: {audited:?}");
        }
        assert!(audited.iter().filter(|(a, _, _)| a.starts_with("cold.")).all(|(_, who, _)| who == "so1"), "{backend}");
        r.running.stop().await;
    }
}

/// K14: a signed file edited after signing (its signature) is refused on import: nothing is stored, nothing is
/// broadcast (the cold wallet's nonce on chain does not move), and the row stays `awaiting_offline_signature`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k14_edited_signed_file_is_refused_on_import() {
    for ts in kinko_store::testing::test_stores().await {
        let backend = ts.name;
        let r = refill_signed_offline(ts).await;
        let h = &r.h;
        let cfg = h.config_path.to_str().unwrap().to_string();
        let signed: serde_json::Value =
            serde_json::from_slice(&std::fs::read(r.dir.join("signed.json")).unwrap()).unwrap();
        for field in ["signature_hex", "raw_tx_hex", "unsigned_sha256", "payload_hex"] {
            let mut edited = signed.clone();
            let text_value = edited[field].as_str().unwrap().to_string();
            // Flip the last hex digit.
            let last = text_value.chars().last().unwrap();
            let flipped = if last == '0' { '1' } else { '0' };
            edited[field] = format!("{}{flipped}", &text_value[..text_value.len() - 1]).into();
            let path = r.dir.join(format!("edited-{field}.json"));
            std::fs::write(&path, serde_json::to_vec(&edited).unwrap()).unwrap();
            let o = kinko(&["cold", "import", "--config", &cfg, "--file", path.to_str().unwrap(), "--actor", "so1"]);
            assert!(!o.status.success(), "{backend}: an edited {field} was imported: {}", text(&o));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.anvil.mine(1).await.unwrap();
        let w = h.ts.store.withdrawal(&r.id).await.unwrap().unwrap();
        assert_eq!(w.status, WithdrawalStatus::AwaitingOfflineSignature, "{backend}");
        assert!(w.tx_hash.is_none(), "{backend}");
        assert!(h.ts.store.tx_versions(&r.id).await.unwrap().is_empty(), "{backend}: nothing stored");
        assert_eq!(h.nonce_of(&r.cold).await, 0, "{backend}: nothing broadcast");
        r.running.stop().await;
    }
}
