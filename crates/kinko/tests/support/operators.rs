//! Operators for end-to-end tests, set up the way a custodian does it: the first administrator's genesis by
//! `kinko operator keygen --first-admin` + `kinko init --first-admin`, every further operator registered with
//! `kinko ops registry add-operator` and approved by a second administrator with `kinko ops approve`, each
//! enrolled with `kinko ops enrol` (password + TOTP). Approval keys of the operators who approve
//! withdrawals are deterministic in-memory keys ([`approval_key`]) so a test can sign with the library
//! (`kinko_signer::approvals::sign_approval`) what the operator's terminal would sign.

use std::path::Path;
use std::process::{Command, Output};

use ed25519_dalek::SigningKey;
use kinko_core::Amount;
use kinko_core::operators::{ApprovalSubject, Decision, Process};
use kinko_core::policy::{Action, PolicyClass, QuorumBand};
use kinko_server::app::HOT_KEY_ID;
use kinko_signer::approvals::{QuorumBand as SignerBand, SigningQuorumConfig, sign_approval};
use serde_json::Value;

use super::{ETH, Harness};

/// The passphrase of every CLI-generated approval key file.
pub const KEY_PASSPHRASE: &str = "operator key passphrase 1";

/// Runs `kinko ARGS` with `envs`; the caller asserts on the status.
pub fn kinko(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinko"));
    cmd.args(args).env("RUST_LOG", "warn").env_remove("KINKO_OPS_TOKEN").env_remove("KINKO_OPS_SERVER");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run kinko")
}

/// The stdout of a successful command; panics with both streams otherwise.
pub fn ok(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The first JSON value anywhere in `v` under `key`.
pub fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map.get(key).or_else(|| map.values().find_map(|x| find_key(x, key))),
        Value::Array(items) => items.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// The JSON document a command printed last (it may be preceded by the request it showed).
pub fn last_json(stdout: &str) -> Value {
    if let Ok(v) = serde_json::from_str(stdout) {
        return v;
    }
    let start = stdout.rfind("\n{").map(|i| i + 1).expect("json in output");
    serde_json::from_str(&stdout[start..]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The deterministic approval key of seed `seed` (tests only).
pub fn approval_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// An operator: id, key file (CLI-generated operators), password, TOTP secret (base32) once enrolled,
/// ops API token once logged in from the command line.
#[derive(Clone, Debug, Default)]
pub struct Op {
    pub id: String,
    pub key_file: String,
    pub public_key: String,
    pub password: String,
    pub totp_secret: String,
    pub totp_uri: String,
    pub token: Option<String>,
}

/// `kinko operator keygen` on the operator's "terminal" (a file under `dir`).
pub fn keygen(dir: &Path, id: &str, first_admin: Option<&Path>) -> Op {
    let key_file = dir.join(format!("{id}.key.json")).display().to_string();
    let mut args = vec!["operator", "keygen", "--id", id, "--out", &key_file, "--passphrase-env", "KINKO_TEST_PASS"];
    let genesis;
    if let Some(g) = first_admin {
        genesis = g.display().to_string();
        args.extend(["--first-admin", &genesis]);
    }
    let out = ok("keygen", kinko(&args, &[("KINKO_TEST_PASS", KEY_PASSPHRASE)]));
    Op { id: id.into(), key_file, public_key: out.trim().to_string(), ..Op::default() }
}

/// `kinko ops enrol`: sets the password and keeps the TOTP secret (no code is used).
pub fn enrol(server: &str, op: &mut Op, enrolment_token: &str) {
    op.password = format!("password of {} 123", op.id);
    let envs = [("KINKO_OPS_SERVER", server), ("T", enrolment_token), ("PW", op.password.as_str())];
    let uri = ok("enrol", kinko(&["ops", "enrol", "--id", &op.id, "--token-env", "T", "--password-env", "PW"], &envs));
    totp_rs::Totp::from_url(uri.trim()).unwrap_or_else(|e| panic!("otpauth URI {uri:?}: {e:?}"));
    op.totp_uri = uri.trim().to_string();
    op.totp_secret = op
        .totp_uri
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap_or_else(|| panic!("no secret in {uri:?}"))
        .to_string();
}

/// `kinko ops login` with the current TOTP code (which it consumes).
pub fn login(server: &str, op: &mut Op) {
    let totp = totp_rs::Totp::from_url(&op.totp_uri).expect("totp");
    let code = totp.generate_current().to_string();
    let envs = [("KINKO_OPS_SERVER", server), ("PW", op.password.as_str()), ("C", code.as_str())];
    let out = ok("login", kinko(&["ops", "login", "--id", &op.id, "--password-env", "PW", "--totp-env", "C"], &envs));
    let token = out.trim().strip_prefix("export KINKO_OPS_TOKEN=").unwrap_or_else(|| panic!("{out:?}"));
    op.token = Some(token.to_string());
}

/// `kinko ops ARGS` as `op`, with the key passphrase in the environment.
pub fn ops(server: &str, op: &Op, args: &[&str]) -> Output {
    let mut full = vec!["ops"];
    full.extend_from_slice(args);
    let token = op.token.as_deref().expect("logged in");
    kinko(&full, &[("KINKO_OPS_SERVER", server), ("KINKO_OPS_TOKEN", token), ("KINKO_TEST_PASS", KEY_PASSPHRASE)])
}

/// `kinko ops registry add-operator` requested by administrator `by`; answers the printed JSON.
pub fn add_operator(server: &str, by: &Op, id: &str, public_key: &str, role: &str) -> Value {
    let args = [
        "registry",
        "add-operator",
        "--id",
        id,
        "--public-key",
        public_key,
        "--role",
        role,
        "--key",
        &by.key_file,
        "--passphrase-env",
        "KINKO_TEST_PASS",
    ];
    last_json(&ok("registry add-operator", ops(server, by, &args)))
}

/// `kinko ops approve ID --yes` as `by`.
pub fn approve(server: &str, by: &Op, id: &str) -> Output {
    ops(server, by, &["approve", id, "--key", &by.key_file, "--passphrase-env", "KINKO_TEST_PASS", "--yes"])
}

/// The operators of a console test: administrators (logged in from the command line), and enrolled
/// operators (password and TOTP secret, not logged in) by id.
pub struct Operators {
    pub admin1: Op,
    pub admin2: Op,
    pub enrolled: Vec<Op>,
}

impl Operators {
    pub fn get(&self, id: &str) -> &Op {
        self.enrolled.iter().find(|o| o.id == id).unwrap_or_else(|| panic!("operator {id}"))
    }
}

/// Genesis (`kinko init --first-admin`) for administrator `admin1`. Run before kinko starts serving.
pub fn genesis(h: &Harness) -> (Op, String) {
    let dir = h.dir.path();
    let config = h.config_path.display().to_string();
    let genesis = dir.join("genesis.json");
    let admin1 = keygen(dir, "admin1", Some(&genesis));
    let init = ok(
        "init --first-admin",
        kinko(&["init", "--config", &config, "--first-admin", &genesis.display().to_string()], &[]),
    );
    let line = init.lines().find(|l| l.starts_with("enrolment token")).unwrap_or_else(|| panic!("{init}"));
    (admin1, line.rsplit(' ').next().unwrap().to_string())
}

/// With kinko serving at `server`: admin1 enrols and logs in, adds admin2 alone (the bootstrap rule), then
/// registers each `(id, seed, role)` with admin2's approval and enrols it. The seeds' public keys are
/// [`approval_key`]'s.
pub fn register_operators(
    server: &str,
    dir: &Path,
    mut admin1: Op,
    token: &str,
    ops_: &[(&str, u8, &str)],
) -> Operators {
    enrol(server, &mut admin1, token);
    login(server, &mut admin1);
    let mut admin2 = keygen(dir, "admin2", None);
    let added = add_operator(server, &admin1, "admin2", &admin2.public_key, "administrator");
    let t = find_key(&added, "enrolment_token").and_then(Value::as_str).expect("admin2's enrolment token").to_string();
    enrol(server, &mut admin2, &t);
    login(server, &mut admin2);
    let mut enrolled = Vec::new();
    for (id, seed, role) in ops_ {
        let public_key = hex::encode(approval_key(*seed).verifying_key().as_bytes());
        let requested = add_operator(server, &admin1, id, &public_key, role);
        let request_id = requested["id"].as_str().unwrap_or_else(|| panic!("{requested}")).to_string();
        let approved = last_json(&ok("approve registry change", approve(server, &admin2, &request_id)));
        let t = find_key(&approved, "enrolment_token").and_then(Value::as_str).unwrap_or_else(|| panic!("{approved}"));
        let mut op = Op { id: (*id).into(), public_key, ..Op::default() };
        enrol(server, &mut op, t);
        enrolled.push(op);
    }
    Operators { admin1, admin2, enrolled }
}

/// The server asks for 2 approvals above 1 ETH (hot_large); the signer itself demands 2 above 1 ETH.
pub fn configure_quorums(h: &mut Harness) {
    let mut policy = kinko_server::config::dev_hot_policy();
    policy.class = PolicyClass::HotLarge;
    policy.quorum_bands = vec![QuorumBand { from: Amount::from_base_units(0), approvals: 2, approvers: 3 }];
    policy.per_tx_limit.max = Amount::from_base_units(ETH);
    policy.per_tx_limit.on_breach = Action::NeedsApproval;
    h.config.policies = vec![policy];
    h.config.signer.quorum = vec![SigningQuorumConfig {
        key_id: HOT_KEY_ID.into(),
        asset: "ETH".into(),
        class: PolicyClass::HotLarge,
        auto_max: Some(Amount::from_base_units(ETH)),
        bands: vec![SignerBand { from: Amount::from_base_units(0), approvals: 2 }],
    }];
}

/// The signature (hex) operator `id` with key `seed` makes over a customer withdrawal's approval subject —
/// what `kinko ops approve` signs on their terminal.
pub fn withdrawal_signature(
    seed: u8,
    id: &str,
    withdrawal_id: &str,
    intent_hash_hex: &str,
    decision: Decision,
) -> String {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(intent_hash_hex, &mut hash).unwrap();
    let subject = ApprovalSubject::new(Process::Signing, withdrawal_id, hash).unwrap();
    sign_approval(&approval_key(seed), id, &subject, decision).unwrap().signature_hex
}

/// With kinko serving at `server`: registers operator `id` in `role` with an approval key generated by
/// `kinko operator keygen` (a key file under `dir`, as on the operator's terminal) — requested by admin1,
/// approved by admin2 — and enrols it. For tests that sign with the real `kinko ops sign`/`approve`.
pub fn register_with_key_file(server: &str, dir: &Path, ops_: &Operators, id: &str, role: &str) -> Op {
    let mut op = keygen(dir, id, None);
    let requested = add_operator(server, &ops_.admin1, id, &op.public_key, role);
    let request_id = requested["id"].as_str().unwrap_or_else(|| panic!("{requested}")).to_string();
    let approved = last_json(&ok("approve registry change", approve(server, &ops_.admin2, &request_id)));
    let t = find_key(&approved, "enrolment_token").and_then(Value::as_str).unwrap_or_else(|| panic!("{approved}"));
    enrol(server, &mut op, t);
    op
}

/// What `kinko ops sign` printed: the decision, the approval message (hex) and the signature (hex).
#[derive(Clone, Debug)]
pub struct Signed {
    pub decision: String,
    pub message_hex: String,
    pub signature_hex: String,
}

/// `kinko ops sign ID --key FILE [--reject]` as `by` (logged in from the command line): the signature to
/// paste into the console, printed and never posted. Panics with both streams when it fails.
pub fn sign(server: &str, by: &Op, id: &str, reject: bool) -> Signed {
    let mut args = vec!["sign", id, "--key", &by.key_file, "--passphrase-env", "KINKO_TEST_PASS"];
    if reject {
        args.push("--reject");
    }
    let out = ok("ops sign", ops(server, by, &args));
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} line in {out:?}"))
            .to_string()
    };
    Signed { decision: field("decision"), message_hex: field("message"), signature_hex: field("signature") }
}
