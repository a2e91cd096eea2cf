//! What the kinko-offline integration tests share: the operators' approval keys and a registry log of them
//! signed like a custodian's, and running the real `kinko-offline` binary (with no network under
//! `unshare -rn` where a test needs it).

#![allow(dead_code)]

use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use kinko_core::intent::Intent;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role};
use kinko_signer::Approval;
use kinko_signer::approvals::{LoggedChange, OperatorRegistry, sign_approval};

/// Administrators' and signing managers' Ed25519 key seeds.
pub const A1: u8 = 100;
pub const A2: u8 = 101;
pub const M1: u8 = 1;
pub const M2: u8 = 2;
pub const M3: u8 = 3;

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn op_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn add(id: &str, seed: u8, role: Role) -> RegistryChangeKind {
    RegistryChangeKind::AddOperator {
        operator_id: id.into(),
        approval_public_key_hex: hex::encode(op_key(seed).verifying_key().as_bytes()),
        role,
        expires_at_ms: None,
    }
}

/// Appends one change requested by a1 and signed by `signers`, applied at `at_ms`.
pub fn push(log: &mut Vec<LoggedChange>, kind: RegistryChangeKind, signers: &[(u8, &str)], at_ms: i64) {
    let r = OperatorRegistry::replay(log, at_ms).unwrap();
    let (seq, prev_hash) = r.head().map(|(s, h)| (s + 1, h)).unwrap_or((0, [0; 32]));
    let change = RegistryChange { seq, prev_hash, requested_by: "a1".into(), requested_at_ms: at_ms, change: kind };
    let subject = change.subject().unwrap();
    let approvals: Vec<Approval> = signers
        .iter()
        .map(|(seed, id)| sign_approval(&op_key(*seed), id, &subject, Decision::Approve).unwrap())
        .collect();
    log.push(LoggedChange { change, approvals, applied_at_ms: at_ms });
}

/// Administrators a1, a2; signing managers m1..m3.
pub fn registry_log(at_ms: i64) -> Vec<LoggedChange> {
    let mut log = Vec::new();
    push(&mut log, add("a1", A1, Role::Administrator), &[(A1, "a1")], at_ms);
    push(&mut log, add("a2", A2, Role::Administrator), &[(A1, "a1")], at_ms);
    for (seed, id) in [(M1, "m1"), (M2, "m2"), (M3, "m3")] {
        push(&mut log, add(id, seed, Role::SigningManager), &[(A1, "a1"), (A2, "a2")], at_ms);
    }
    log
}

/// The signing managers' approvals of `intent` (the signing process), by (seed, operator id).
pub fn approvals(intent: &Intent, by: &[(u8, &str)]) -> Vec<Approval> {
    let subject = ApprovalSubject::new(Process::Signing, &intent.id, intent.hash()).unwrap();
    by.iter().map(|(seed, id)| sign_approval(&op_key(*seed), id, &subject, Decision::Approve).unwrap()).collect()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kinko-offline")
}

pub fn run(args: &[&str], stdin: &str) -> Output {
    run_cmd(Command::new(bin()).args(args), stdin)
}

pub fn run_cmd(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Fails naming the prerequisite unless `unshare -rn` (util-linux, unprivileged user namespaces) works.
pub fn require_unshare() {
    let probe = Command::new("unshare").args(["-rn", "true"]).output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "`unshare -rn` (util-linux, unprivileged user namespaces) is required for the K14 offline tests: {probe:?}"
    );
}

/// Runs `kinko-offline` in a network namespace of its own with no interface up: it cannot reach anything.
pub fn run_offline(args: &[String], stdin: &str) -> Output {
    require_unshare();
    run_cmd(Command::new("unshare").arg("-rn").arg(bin()).args(args), stdin)
}

/// Standard output and standard error together.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
