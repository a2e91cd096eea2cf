//! K14: the offline signer, run as the real binary: it opens no socket (under `unshare -rn` and `strace`), its
//! signature is mined on a real anvil, and tampering is refused at both ends (an edited bundle offline, an
//! edited signed file online), as are approvals below quorum, forged approvals and a registry log that does
//! not extend the pinned one.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_eips::eip2930::AccessList;
use alloy_primitives::{Address, Bytes, TxKind, U256};
use kinko_chain::anvil::{ACCOUNT0, ACCOUNT1, Anvil};
use kinko_core::asset::{AssetKind, AssetSpec};
use kinko_core::intent::Intent;
use kinko_core::operators::Role;
use kinko_core::{Amount, ChainId};
use kinko_offline::bundle::{
    SIGNED_KIND, SignedBundle, UNSIGNED_KIND, UnsignedBundle, read_signed, verify_signed, write_json_0600,
};
use kinko_offline::keystore::Keystore;
use kinko_signer::approvals::LoggedChange;
use serde_json::json;
use support::{A1, A2, M1, M2, add, approvals, bin, now_ms, push, registry_log, require_unshare, run, run_cmd, text};

const CHAIN: u64 = 31337;
const GWEI: u128 = 1_000_000_000;
const ETH: u128 = 1_000_000_000_000_000_000;
/// The crates that open sockets or need a runtime that does; none may be in kinko-offline's closure.
const NETWORKING_CRATES: &[&str] =
    &["tokio", "reqwest", "sqlx", "hyper", "axum", "mio", "socket2", "lettre", "kinko-store", "hyper-util"];

struct Cold {
    dir: tempfile::TempDir,
    address: String,
    log: Vec<LoggedChange>,
}

impl Cold {
    fn keystore(&self) -> PathBuf {
        self.dir.path().join("keys/keystore.json")
    }
    fn share(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("keys/share-{name}.json"))
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `kinko-offline sign` with shares of alice and bob, confirming with `confirm`.
    fn sign_args(&self, bundle: &str, out: &str) -> Vec<String> {
        vec![
            "sign".into(),
            "--keystore".into(),
            self.keystore().display().to_string(),
            "--share".into(),
            self.share("alice").display().to_string(),
            "--share".into(),
            self.share("bob").display().to_string(),
            "--bundle".into(),
            self.path_str(bundle),
            "--out".into(),
            self.path_str(out),
        ]
    }

    fn sign(&self, bundle: &UnsignedBundle, name: &str, confirm: &str) -> Output {
        write_json_0600(&self.path(&format!("{name}.json")), bundle).unwrap();
        let args = self.sign_args(&format!("{name}.json"), &format!("{name}.signed.json"));
        run(&args.iter().map(String::as_str).collect::<Vec<_>>(), confirm)
    }
}

/// A cold keystore made by the real `keygen`: custodians alice, bob, carol (2 of 3), quorum 2, chain 31337.
fn cold() -> Cold {
    let dir = tempfile::tempdir().unwrap();
    let log = registry_log(now_ms() - 60_000);
    let registry = dir.path().join("registry.json");
    std::fs::write(&registry, serde_json::to_vec(&log).unwrap()).unwrap();
    let out = dir.path().join("keys");
    let o = run(
        &[
            "keygen",
            "--out",
            out.to_str().unwrap(),
            "--key-id",
            "cold-1",
            "--custodian",
            "alice",
            "--custodian",
            "bob",
            "--custodian",
            "carol",
            "--threshold",
            "2",
            "--registry",
            registry.to_str().unwrap(),
            "--quorum",
            "2",
            "--chain-id",
            &CHAIN.to_string(),
        ],
        "",
    );
    assert!(o.status.success(), "keygen: {}", text(&o));
    let ks = Keystore::read(&out.join("keystore.json")).unwrap();
    assert!(text(&o).contains(&ks.address) && text(&o).contains(&ks.account_xpub), "{}", text(&o));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("keystore.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    Cold { dir, address: ks.address, log }
}

fn eth() -> AssetSpec {
    AssetSpec { code: "ETH".parse().unwrap(), kind: AssetKind::EvmNative { chain_id: ChainId(CHAIN) }, decimals: 18 }
}

fn tx(nonce: u64, to: &str, value: u128) -> TxEip1559 {
    TxEip1559 {
        chain_id: CHAIN,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: 20 * GWEI,
        max_priority_fee_per_gas: GWEI,
        to: TxKind::Call(to.parse::<Address>().unwrap()),
        value: U256::from(value),
        access_list: AccessList::default(),
        input: Bytes::new(),
    }
}

fn payload_hex(tx: &TxEip1559) -> String {
    let mut out = Vec::new();
    tx.encode_for_signing(&mut out);
    format!("0x{}", hex::encode(out))
}

/// A refill bundle: `value` wei from the cold wallet to `to` at `nonce`, approved by m1 and m2.
fn bundle(cold: &Cold, id: &str, nonce: u64, to: &str, value: u128) -> UnsignedBundle {
    let intent = Intent {
        id: id.into(),
        asset: "ETH".parse().unwrap(),
        chain_id: ChainId(CHAIN),
        amount: Amount::from_base_units(value),
        destination: to.into(),
        source_wallet: cold.address.clone(),
        customer_id: "kinko".into(),
        reason: "cold to hot refill".into(),
    };
    UnsignedBundle {
        kind: UNSIGNED_KIND.into(),
        chain_id: CHAIN,
        from: cold.address.clone(),
        key_id: "cold-1".into(),
        payload_hex: payload_hex(&tx(nonce, to, value)),
        approvals: approvals(&intent, &[(M1, "m1"), (M2, "m2")]),
        intent,
        asset: eth(),
        registry_log: cold.log.clone(),
        created_at_ms: now_ms(),
    }
}

fn refused(o: &Output, cold: &Cold, name: &str, field: &str) {
    assert!(!o.status.success(), "{name} must be refused: {}", text(o));
    assert!(text(o).contains(field), "{name}: the refusal must name {field}: {}", text(o));
    assert!(!cold.path(&format!("{name}.signed.json")).exists(), "{name}: no signed file may be written");
}

#[test]
fn k14_offline_crate_has_no_networking_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    // The declared dependencies, from `cargo metadata`: none of them networking, and kinko-signer without its
    // default `online` feature.
    let o = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path", manifest])
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pkg = meta["packages"].as_array().unwrap().iter().find(|p| p["name"] == "kinko-offline").unwrap();
    let normal: Vec<&serde_json::Value> =
        pkg["dependencies"].as_array().unwrap().iter().filter(|d| d["kind"].is_null()).collect();
    for d in &normal {
        let name = d["name"].as_str().unwrap();
        assert!(!NETWORKING_CRATES.contains(&name), "kinko-offline declares {name}");
    }
    let signer = normal.iter().find(|d| d["name"] == "kinko-signer").expect("kinko-signer dependency");
    assert_eq!(signer["uses_default_features"], json!(false), "kinko-signer must be taken without `online`");
    assert!(!signer["features"].as_array().unwrap().iter().any(|f| f == "online"));

    // The whole normal closure with the features a build of kinko-offline alone resolves. `cargo metadata`'s
    // resolve graph unifies features across the workspace (kinko-server turns `online` on), so the closure is
    // read from `cargo tree -e normal`, which resolves for this package only, as its build does.
    let o = Command::new(&cargo)
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none", "--format", "{p}", "--manifest-path", manifest])
        .args(["-p", "kinko-offline"])
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo tree: {}", String::from_utf8_lossy(&o.stderr));
    let tree = String::from_utf8_lossy(&o.stdout);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"kinko-signer") && names.contains(&"alloy-consensus"), "closure looks wrong:\n{tree}");
    for bad in NETWORKING_CRATES {
        assert!(!names.contains(bad), "{bad} is in kinko-offline's dependency closure:\n{tree}");
    }
}

#[tokio::test]
async fn k14_offline_sign_runs_without_network_and_opens_no_socket() {
    require_unshare();
    let strace = Command::new("strace").arg("-V").output();
    assert!(strace.is_ok_and(|o| o.status.success()), "`strace` is required for the K14 no-network test (.ci/run)");

    let cold = cold();
    let anvil = Anvil::spawn(&[]).await.unwrap();
    anvil.send_eth(ACCOUNT0, &cold.address, 10 * ETH).await.unwrap();
    let b = bundle(&cold, "refill-1", 0, ACCOUNT1, 3 * ETH);
    write_json_0600(&cold.path("refill.json"), &b).unwrap();

    // `show` prints the transaction in human terms.
    let o = run(&["show", "--bundle", &cold.path_str("refill.json")], "");
    assert!(o.status.success(), "{}", text(&o));
    let shown = text(&o);
    for part in ["3 ETH", ACCOUNT1, "31337", "0.00042 ETH", &cold.address, "nonce"] {
        assert!(shown.contains(part), "show must print {part}: {shown}");
    }

    let log = cold.path("strace.log");
    let mut cmd = Command::new("unshare");
    cmd.args(["-rn", "strace", "-f", "-e", "trace=%network", "-o", log.to_str().unwrap(), bin()])
        .args(cold.sign_args("refill.json", "refill.signed.json"));
    let o = run_cmd(&mut cmd, "sign\n");
    assert!(o.status.success(), "offline sign: {}", text(&o));
    assert!(
        text(&o).contains("3 ETH") && text(&o).contains("approved by") && text(&o).contains("m1, m2"),
        "{}",
        text(&o)
    );
    let trace = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = trace.lines().filter(|l| !l.contains("+++") && !l.contains("---")).collect();
    assert!(calls.is_empty(), "kinko-offline made network system calls:\n{trace}");
    assert!(trace.contains("exited with 0"), "strace saw the run: {trace}");

    // Online: the server's stored copy of the bundle verifies the signed file, and the node mines it.
    let signed = read_signed(&cold.path("refill.signed.json")).unwrap();
    let verified = verify_signed(&b, &signed).unwrap();
    let hash = anvil.rpc("eth_sendRawTransaction", json!([signed.raw_tx_hex])).await.unwrap();
    assert_eq!(hash.as_str().unwrap(), verified.tx_hash);
    anvil.mine(1).await.unwrap();
    let receipt = anvil.rpc("eth_getTransactionReceipt", json!([verified.tx_hash])).await.unwrap();
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    assert_eq!(receipt["from"].as_str().unwrap(), cold.address);

    // The record: signing the same bundle again is the same signature; another payload for nonce 0 is refused.
    let o = cold.sign(&b, "again", "sign\n");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read_signed(&cold.path("again.signed.json")).unwrap(), signed);
    let other = bundle(&cold, "refill-2", 0, ACCOUNT1, 2 * ETH);
    let o = cold.sign(&other, "double", "sign\n");
    refused(&o, &cold, "double", "double sign refused");
}

#[test]
fn k14_bundle_with_edited_destination_is_refused_offline() {
    let cold = cold();
    let attacker = "0x00000000000000000000000000000000000000ee";
    let b = bundle(&cold, "refill-1", 0, ACCOUNT1, 3 * ETH);

    // The intent's destination edited (the transaction still pays the approved address).
    let mut edited = b.clone();
    edited.intent.destination = attacker.into();
    refused(&cold.sign(&edited, "intent-dest", "sign\n"), &cold, "intent-dest", "destination");

    // The transaction's `to` edited (the intent still names the approved address).
    let mut edited = b.clone();
    edited.payload_hex = payload_hex(&tx(0, attacker, 3 * ETH));
    refused(&cold.sign(&edited, "payload-to", "sign\n"), &cold, "payload-to", "payload_hex.destination");

    // Both edited consistently: the approvals are over the original intent and no longer verify.
    let mut edited = b.clone();
    edited.intent.destination = attacker.into();
    edited.payload_hex = payload_hex(&tx(0, attacker, 3 * ETH));
    refused(&cold.sign(&edited, "both", "sign\n"), &cold, "both", "approvals");

    // The amount edited in the transaction.
    let mut edited = b.clone();
    edited.payload_hex = payload_hex(&tx(0, ACCOUNT1, 30 * ETH));
    refused(&cold.sign(&edited, "amount", "sign\n"), &cold, "amount", "payload_hex.amount");

    // Untouched, but not confirmed with exactly "sign": nothing is signed.
    refused(&cold.sign(&b, "unconfirmed", "yes\n"), &cold, "unconfirmed", "not confirmed");
    // And confirmed, it signs: the refusals above were about the edits.
    let o = cold.sign(&b, "good", "sign\n");
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn k14_offline_refuses_below_quorum_forged_approvals_and_a_registry_that_does_not_extend_the_pinned_one() {
    let cold = cold();
    let b = bundle(&cold, "refill-1", 0, ACCOUNT1, 3 * ETH);

    let mut one = b.clone();
    one.approvals = approvals(&b.intent, &[(M1, "m1")]);
    refused(&cold.sign(&one, "one", "sign\n"), &cold, "one", "1 valid approvals of 2 required");

    // m3's approval made with another key: forged, refuses the whole bundle even next to two valid ones.
    let mut forged = b.clone();
    forged.approvals.extend(approvals(&b.intent, &[(66, "m3")]));
    refused(&cold.sign(&forged, "forged", "sign\n"), &cold, "forged", "does not verify");

    // An "online" registry with a different history: an attacker's own signing manager added in place of the
    // pinned log (same length, its own genesis) — not an extension.
    let at_ms = now_ms() - 60_000;
    let mut fake = Vec::new();
    push(&mut fake, add("a1", 90, Role::Administrator), &[(90, "a1")], at_ms);
    push(&mut fake, add("a2", 91, Role::Administrator), &[(90, "a1")], at_ms);
    for (seed, id) in [(92, "m1"), (93, "m2"), (94, "m3")] {
        push(&mut fake, add(id, seed, Role::SigningManager), &[(90, "a1"), (91, "a2")], at_ms);
    }
    let mut rewritten = b.clone();
    rewritten.registry_log = fake;
    rewritten.approvals = approvals(&b.intent, &[(92, "m1"), (93, "m2")]);
    refused(&cold.sign(&rewritten, "rewritten", "sign\n"), &cold, "rewritten", "does not extend");

    // A truncated log (e.g. to hide a later revocation) is refused too.
    let mut short = b.clone();
    short.registry_log.pop();
    refused(&cold.sign(&short, "short", "sign\n"), &cold, "short", "does not extend");

    // An extension whose new entry is forged (a2's approval with another key) does not replay.
    let mut ext = cold.log.clone();
    push(&mut ext, add("m4", 4, Role::SigningManager), &[(A1, "a1"), (66, "a2")], at_ms);
    let mut bad_ext = b.clone();
    bad_ext.registry_log = ext;
    refused(&cold.sign(&bad_ext, "bad-ext", "sign\n"), &cold, "bad-ext", "registry_log");

    // A genuine extension (m4 added by a1 and a2) is accepted, m4's approval counts, and it is pinned from now on.
    let mut ext = cold.log.clone();
    push(&mut ext, add("m4", 4, Role::SigningManager), &[(A1, "a1"), (A2, "a2")], at_ms);
    let mut good = b.clone();
    good.registry_log = ext.clone();
    good.approvals = approvals(&b.intent, &[(M1, "m1"), (4, "m4")]);
    let o = cold.sign(&good, "extended", "sign\n");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(Keystore::read(&cold.keystore()).unwrap().registry_log, ext, "the longer log is pinned");
    // …so the original, shorter log no longer extends the pinned one.
    let mut b2 = bundle(&cold, "refill-2", 1, ACCOUNT1, ETH);
    b2.registry_log = cold.log.clone();
    refused(&cold.sign(&b2, "rolled-back", "sign\n"), &cold, "rolled-back", "does not extend");
}

#[test]
fn k14_edited_signed_file_is_refused_online() {
    let cold = cold();
    let b = bundle(&cold, "refill-1", 0, ACCOUNT1, 3 * ETH);
    let o = cold.sign(&b, "refill", "sign\n");
    assert!(o.status.success(), "{}", text(&o));
    let signed = read_signed(&cold.path("refill.signed.json")).unwrap();
    assert_eq!(signed.kind, SIGNED_KIND);
    verify_signed(&b, &signed).unwrap();

    let flip = |hex_text: &str, at: usize| -> String {
        let mut bytes = hex::decode(hex_text.trim_start_matches("0x")).unwrap();
        bytes[at] ^= 0x01;
        format!("0x{}", hex::encode(bytes))
    };
    let refused_online = |edited: SignedBundle, field: &str| {
        let e = verify_signed(&b, &edited).expect_err(field);
        assert_eq!(e.field(), field, "{e}");
    };

    // The raw transaction edited (one byte of the value, or a different destination spliced in).
    let mut e = signed.clone();
    let raw_len = hex::decode(signed.raw_tx_hex.trim_start_matches("0x")).unwrap().len();
    e.raw_tx_hex = flip(&signed.raw_tx_hex, raw_len / 2);
    refused_online(e, "raw_tx_hex");
    // The signature edited: r changed, then S replaced by its high-S twin.
    let mut e = signed.clone();
    e.signature_hex = flip(&signed.signature_hex, 5);
    refused_online(e, "signature_hex");
    let mut e = signed.clone();
    let mut sig = hex::decode(&signed.signature_hex).unwrap();
    let n = U256::from_str_radix("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141", 16).unwrap();
    let high_s = n - U256::from_be_slice(&sig[32..64]);
    sig[32..64].copy_from_slice(&high_s.to_be_bytes::<32>());
    sig[64] ^= 1;
    e.signature_hex = hex::encode(&sig);
    refused_online(e, "signature_hex");
    // The payload edited (to an attacker's destination).
    let mut e = signed.clone();
    e.payload_hex = payload_hex(&tx(0, "0x00000000000000000000000000000000000000ee", 3 * ETH));
    refused_online(e, "payload_hex");
    // The hash edited.
    let mut e = signed.clone();
    e.tx_hash = flip(&signed.tx_hash, 0);
    refused_online(e, "tx_hash");
    // Answering another bundle, or another intent.
    let mut e = signed.clone();
    e.unsigned_sha256 = flip(&signed.unsigned_sha256, 0);
    refused_online(e, "unsigned_sha256");
    let mut e = signed.clone();
    e.intent_hash = flip(&signed.intent_hash, 0);
    refused_online(e, "intent_hash");
    // A signed file that is fine, checked against an edited copy of the bundle (not the server's own).
    let mut other = b.clone();
    other.intent.amount = Amount::from_base_units(30 * ETH);
    assert!(verify_signed(&other, &signed).is_err());
    // Unknown fields are refused when reading.
    let mut v = serde_json::to_value(&signed).unwrap();
    v["extra"] = json!("x");
    std::fs::write(cold.path("extra.json"), v.to_string()).unwrap();
    assert!(read_signed(&cold.path("extra.json")).is_err());
}

/// Reads the QR code of a frame SVG (`qrcode`'s renderer: a `<path>` of `M{x} {y}h{w}v{h}H{x}V{y}` modules on
/// a white canvas) by painting it onto a greyscale image and decoding it with rqrr, a real QR decoder.
fn decode_frame_svg(svg: &str) -> String {
    let attr = |name: &str| -> usize {
        let at = svg.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        svg[at..at + svg[at..].find('"').unwrap()].parse().unwrap()
    };
    let (w, h) = (attr("width"), attr("height"));
    let d_at = svg.find("fill=\"#000\" d=\"").unwrap() + 15;
    let d = &svg[d_at..d_at + svg[d_at..].find('"').unwrap()];
    let mut pixels = vec![255u8; w * h];
    for rect in d.split('M').filter(|r| !r.is_empty()) {
        let nums: Vec<usize> =
            rect.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
        let (left, top, rw, rh) = (nums[0], nums[1], nums[2], nums[3]);
        for y in top..top + rh {
            for x in left..left + rw {
                pixels[y * w + x] = 0;
            }
        }
    }
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "exactly one QR code per frame");
    grids[0].decode().unwrap().1
}

#[test]
fn k14_bundle_crosses_the_gap_as_a_qr_sequence() {
    let cold = cold();
    let b = bundle(&cold, "refill-1", 0, ACCOUNT1, 3 * ETH);
    write_json_0600(&cold.path("refill.json"), &b).unwrap();
    let frames_dir = cold.path("frames");
    let o = run(&["qr-encode", &cold.path_str("refill.json"), "--out-dir", frames_dir.to_str().unwrap()], "");
    assert!(o.status.success(), "{}", text(&o));
    let mut svgs: Vec<PathBuf> = std::fs::read_dir(&frames_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "svg"))
        .collect();
    assert!(svgs.len() > 1, "a bundle with a registry log takes several frames");
    // Scanned in reverse order, one twice.
    svgs.reverse();
    svgs.push(svgs[0].clone());
    let scanned: Vec<String> = svgs.iter().map(|p| decode_frame_svg(&std::fs::read_to_string(p).unwrap())).collect();
    assert!(scanned.iter().all(|t| t.starts_with("kinko:")), "{scanned:?}");
    std::fs::write(cold.path("scanned.txt"), scanned.join("\n")).unwrap();
    let o = run(&["qr-decode", "--frames", &cold.path_str("scanned.txt"), "--out", &cold.path_str("decoded.json")], "");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(kinko_offline::bundle::read_unsigned(&cold.path("decoded.json")).unwrap(), b);
    // A missing frame is named.
    std::fs::write(cold.path("partial.txt"), scanned[1..scanned.len() - 1].join("\n")).unwrap();
    let o = run(&["qr-decode", "--frames", &cold.path_str("partial.txt"), "--out", &cold.path_str("partial.json")], "");
    assert!(!o.status.success() && text(&o).contains("missing frames"), "{}", text(&o));
    assert!(!cold.path("partial.json").exists());
}
