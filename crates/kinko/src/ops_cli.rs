//! `kinko ops …`: the operator's client for the operator API (`/v1/ops/...`; K8, K11, K12, O2, O3, O4).
//!
//! The server is not trusted with what an operator signs. `kinko ops approve` fetches the request, prints its
//! decoded parameters, recomputes the approval subject from those parameters on this terminal (a customer
//! withdrawal's intent hash, a registry change's hash, or `operators::request_intent_hash`), refuses when the
//! server's `intent_hash` differs, and only then signs with the operator's key file. So a server that shows one
//! thing and asks for a signature over another gets no signature.
//!
//! The session token comes from the environment (`KINKO_OPS_TOKEN`, printed by `kinko ops login` as an
//! `export` line), never from a flag, so it does not land in shell history or `ps`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kinko_core::intent::Intent;
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind};
use kinko_core::operators::{ApprovalSubject, Decision, Process, Role, request_intent_hash};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::operator_cli::{open_key_file, read_secret};

/// The session token's environment variable.
pub const TOKEN_ENV: &str = "KINKO_OPS_TOKEN";
/// How long one API call may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a response body read (the events list is the largest).
pub const RESPONSE_LEN_MAX: usize = 8 * 1024 * 1024;
/// The request kind of a customer withdrawal's approval request.
pub const KIND_CUSTOMER_WITHDRAWAL: &str = "customer_withdrawal";
/// The ops request kind of a transfer between the custodian's own wallets (M10).
pub const KIND_CUSTODIAN_TRANSFER: &str = "custodian_transfer";

#[derive(Args)]
pub struct OpsArgs {
    /// The kinko API, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "KINKO_OPS_SERVER")]
    server: String,
    #[command(subcommand)]
    command: OpsCmd,
}

#[derive(Subcommand)]
pub enum OpsCmd {
    /// Enrol with the one-time token an administrator gave you: set your password, get your TOTP secret.
    Enrol {
        #[arg(long)]
        id: String,
        /// Read the enrolment token from this environment variable instead of prompting.
        #[arg(long)]
        token_env: Option<String>,
        /// Read the new password from this environment variable instead of prompting.
        #[arg(long)]
        password_env: Option<String>,
    },
    /// Log in (password + TOTP code); prints `export KINKO_OPS_TOKEN=...`.
    Login {
        #[arg(long)]
        id: String,
        /// Read the password from this environment variable instead of prompting.
        #[arg(long)]
        password_env: Option<String>,
        /// Read the TOTP code from this environment variable instead of prompting.
        #[arg(long)]
        totp_env: Option<String>,
    },
    /// Who you are logged in as.
    Me,
    /// The operator registry as the server replays it.
    Operators,
    /// List requests, optionally in one state (requested, approved, rejected, executed, inspected, failed).
    Requests {
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one request.
    Show { id: String },
    /// Open a request (key_transition, key_generation, key_storage, policy_change, fiat_deposit, …).
    Request {
        #[arg(long)]
        process: String,
        #[arg(long)]
        kind: String,
        /// The parameters, as a JSON object.
        #[arg(long)]
        params: String,
    },
    /// Approve a request: shows it, recomputes what you sign from what is shown, signs with your key.
    Approve(DecideArgs),
    /// Reject a request (signed like an approval).
    Reject(DecideArgs),
    /// Print your signed decision on a request without submitting it, to paste into the web console: shows
    /// the request, recomputes what you sign from what is shown exactly as `approve` does, refuses on a hash
    /// mismatch, and prints the message and the signature (hex). Nothing is posted.
    Sign(SignArgs),
    /// Record the execution of an approved Table A-1 request.
    Execute {
        id: String,
        #[arg(long)]
        evidence: Option<String>,
    },
    /// Record your inspection of a request (log inspector).
    Inspect {
        id: String,
        #[arg(long, value_parser = ["ok", "anomaly"])]
        finding: String,
        #[arg(long)]
        note: String,
    },
    /// Request a change of the operator registry (administrators; a second administrator approves it).
    Registry {
        #[command(subcommand)]
        command: RegistryCmd,
    },
    /// The operators' audit trail.
    Events {
        /// Only events after this event id.
        #[arg(long)]
        after: Option<String>,
    },
}

#[derive(Args)]
pub struct DecideArgs {
    id: String,
    /// Your encrypted approval key file (from `kinko operator keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Read the key file's passphrase from this environment variable instead of prompting.
    #[arg(long)]
    passphrase_env: Option<String>,
    /// Do not ask for confirmation after showing the request.
    #[arg(long)]
    yes: bool,
}

#[derive(Args)]
pub struct SignArgs {
    id: String,
    /// Your encrypted approval key file (from `kinko operator keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Read the key file's passphrase from this environment variable instead of prompting.
    #[arg(long)]
    passphrase_env: Option<String>,
    /// Sign a rejection instead of an approval.
    #[arg(long)]
    reject: bool,
}

#[derive(Args)]
pub struct Signing {
    /// Your encrypted approval key file: you sign the change as its requester.
    #[arg(long)]
    key: PathBuf,
    /// Read the key file's passphrase from this environment variable instead of prompting.
    #[arg(long)]
    passphrase_env: Option<String>,
}

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// Register an operator with their approval public key and their one role.
    AddOperator {
        /// The new operator's id.
        #[arg(long)]
        id: String,
        /// Their approval public key (hex), as `kinko operator keygen` printed it on their terminal.
        #[arg(long)]
        public_key: String,
        /// operations_manager, signing_manager, key_operator, signing_operator, log_inspector or administrator.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// When the grant ends (Unix ms); none by default.
        #[arg(long)]
        expires_at_ms: Option<i64>,
        #[command(flatten)]
        signing: Signing,
    },
    /// Grant a registered operator (who holds no active role) a role.
    Grant {
        #[arg(long)]
        id: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        expires_at_ms: Option<i64>,
        #[command(flatten)]
        signing: Signing,
    },
    /// Revoke an operator's grants of a role.
    RevokeGrant {
        #[arg(long)]
        id: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        signing: Signing,
    },
    /// Revoke an operator altogether: their approvals stop counting everywhere.
    RevokeOperator {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        signing: Signing,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role {s:?}; one of {}", all.join(", "))
    })
}

/// A thin client: JSON in, JSON out, problem+json turned into an error naming its title and detail.
struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<Zeroizing<String>>,
}

impl Client {
    fn new(server: &str) -> Result<Client> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server must be an http:// or https:// URL, got {base:?}");
        }
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().context("building the HTTP client")?;
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()).map(Zeroizing::new);
        Ok(Client { base, http, token })
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.as_str());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}: the server did not answer"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| format!("{method} {path}: reading the answer"))?;
        if bytes.len() > RESPONSE_LEN_MAX {
            bail!("{method} {path}: the answer is over {RESPONSE_LEN_MAX} bytes");
        }
        let value: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        if !status.is_success() {
            bail!("{method} {path}: {}", problem_text(status, &value));
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    fn require_token(&self) -> Result<()> {
        if self.token.is_none() {
            bail!("not logged in: run `kinko ops login --id ID` and the `export {TOKEN_ENV}=...` it prints");
        }
        Ok(())
    }
}

/// The problem+json body (RFC 9457) as one line: status, title, detail, and field errors when present.
fn problem_text(status: StatusCode, body: &Value) -> String {
    let mut out = format!("{}", status.as_u16());
    if let Some(title) = body.get("title").and_then(Value::as_str) {
        out.push_str(&format!(" {title}"));
    }
    if let Some(detail) = body.get("detail").and_then(Value::as_str) {
        out.push_str(&format!(": {detail}"));
    }
    if let Some(errors) = body.get("errors").and_then(Value::as_array) {
        for e in errors {
            let field = e.get("field").and_then(Value::as_str).unwrap_or("?");
            let reason = e.get("reason").or_else(|| e.get("message")).and_then(Value::as_str).unwrap_or("?");
            out.push_str(&format!("; {field}: {reason}"));
        }
    }
    out
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn path_segment(id: &str) -> Result<&str> {
    url_safe("request id", id)
}

/// Ids and filters go into a URL: refuse anything that would change the path or query rather than escape it.
fn url_safe<'a>(what: &str, id: &'a str) -> Result<&'a str> {
    if id.is_empty() || id.len() > kinko_core::operators::REQUEST_ID_LEN_MAX {
        bail!("{what} must be 1 to {} bytes", kinko_core::operators::REQUEST_ID_LEN_MAX);
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) || id == "." || id == ".." {
        bail!("{what} {id:?} has characters outside [A-Za-z0-9._-]");
    }
    Ok(id)
}

pub async fn run(args: OpsArgs) -> Result<()> {
    let client = Client::new(&args.server)?;
    match args.command {
        OpsCmd::Enrol { id, token_env, password_env } => {
            let token = read_secret(token_env.as_deref(), "enrolment token", false)?;
            let password = read_secret(password_env.as_deref(), "new password (12 to 128 characters)", true)?;
            let body = json!({"operator_id": id, "enrolment_token": token.trim(), "password": password.as_str()});
            let out = client.post("/v1/ops/enrolments", &body).await?;
            let uri = out.get("totp_uri").and_then(Value::as_str).context("the server sent no totp_uri")?;
            eprintln!("enrolled. Add this to your authenticator app (it holds your second factor; keep it private):");
            println!("{uri}");
            Ok(())
        }
        OpsCmd::Login { id, password_env, totp_env } => {
            let password = read_secret(password_env.as_deref(), "password", false)?;
            let code = match totp_env {
                Some(var) => {
                    Zeroizing::new(std::env::var(&var).with_context(|| format!("environment variable {var}"))?)
                }
                None => {
                    eprint!("TOTP code: ");
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).context("reading the TOTP code")?;
                    Zeroizing::new(line)
                }
            };
            let body = json!({"operator_id": id, "password": password.as_str(), "totp_code": code.trim()});
            let out = client.post("/v1/ops/sessions", &body).await?;
            let token = out.get("token").and_then(Value::as_str).context("the server sent no token")?;
            if let Some(prev) = out.get("previous_login").filter(|p| !p.is_null()) {
                // Shown so the operator notices a login that was not theirs.
                eprintln!(
                    "previous login: at_ms {} from {}",
                    prev.get("at_ms").unwrap_or(&Value::Null),
                    prev.get("terminal").and_then(Value::as_str).unwrap_or("?")
                );
            } else {
                eprintln!("previous login: none");
            }
            if let Some(exp) = out.get("expires_at_ms") {
                eprintln!("session expires at_ms {exp}");
            }
            println!("export {TOKEN_ENV}={token}");
            Ok(())
        }
        OpsCmd::Me => {
            client.require_token()?;
            print_json(&client.get("/v1/ops/me").await?)
        }
        OpsCmd::Operators => {
            client.require_token()?;
            print_json(&client.get("/v1/ops/operators").await?)
        }
        OpsCmd::Requests { state } => {
            client.require_token()?;
            let path = match state {
                Some(s) => format!("/v1/ops/requests?state={}", url_safe("--state", &s)?),
                None => "/v1/ops/requests".to_owned(),
            };
            print_json(&client.get(&path).await?)
        }
        OpsCmd::Show { id } => {
            client.require_token()?;
            print_json(&client.get(&format!("/v1/ops/requests/{}", path_segment(&id)?)).await?)
        }
        OpsCmd::Request { process, kind, params } => {
            client.require_token()?;
            let process =
                Process::parse(&process).with_context(|| format!("--process: unknown process {process:?}"))?;
            let params: Value = serde_json::from_str(&params).context("--params: not JSON")?;
            if !params.is_object() {
                bail!("--params must be a JSON object");
            }
            let body = json!({"process": process.as_str(), "kind": kind, "params": params});
            print_json(&client.post("/v1/ops/requests", &body).await?)
        }
        OpsCmd::Approve(d) => decide(&client, d, Decision::Approve).await,
        OpsCmd::Reject(d) => decide(&client, d, Decision::Reject).await,
        OpsCmd::Sign(a) => sign(&client, a).await,
        OpsCmd::Execute { id, evidence } => {
            client.require_token()?;
            let body = match evidence {
                Some(e) => json!({"evidence": e}),
                None => json!({}),
            };
            print_json(&client.post(&format!("/v1/ops/requests/{}/execute", path_segment(&id)?), &body).await?)
        }
        OpsCmd::Inspect { id, finding, note } => {
            client.require_token()?;
            let body = json!({"finding": finding, "note": note});
            print_json(&client.post(&format!("/v1/ops/requests/{}/inspect", path_segment(&id)?), &body).await?)
        }
        OpsCmd::Registry { command } => registry(&client, command).await,
        OpsCmd::Events { after } => {
            client.require_token()?;
            let path = match after {
                Some(a) => format!("/v1/ops/events?after={}", url_safe("--after", &a)?),
                None => "/v1/ops/events".to_owned(),
            };
            print_json(&client.get(&path).await?)
        }
    }
}

/// The subject an approver signs, recomputed from the request's parameters (never the server's hash).
pub fn recompute_subject(request: &Value) -> Result<ApprovalSubject> {
    let field = |name: &str| request.get(name).with_context(|| format!("the request has no {name:?}"));
    let id = field("id")?.as_str().context("request id is not a string")?;
    let process_text = field("process")?.as_str().context("request process is not a string")?;
    let process = Process::parse(process_text).with_context(|| format!("unknown process {process_text:?}"))?;
    let kind = field("kind")?.as_str().context("request kind is not a string")?;
    let params = field("params")?;
    // A custodian transfer (M10) is approved over its withdrawal Intent too; the server stores the same
    // params for it (customer = the reserved custodian row, reason "custodian transfer").
    // A cold refill (K14) too: its params carry the same names (source = the cold wallet, destination = hot).
    if kind == KIND_CUSTOMER_WITHDRAWAL
        || kind == KIND_CUSTODIAN_TRANSFER
        || kind == kinko_store::cold::COLD_REFILL_KIND
    {
        if process != Process::Signing {
            bail!("a {kind} request must be process signing, not {process}");
        }
        let intent = withdrawal_intent(id, params)?;
        return Ok(ApprovalSubject::new(process, id, intent.hash())?);
    }
    if process == Process::Personnel {
        let change_value = params.get("change").unwrap_or(params);
        let change: RegistryChange =
            serde_json::from_value(change_value.clone()).context("personnel params do not hold a registry change")?;
        if change.request_id() != id {
            bail!("the registry change is {:?}, not request {id:?}", change.request_id());
        }
        return Ok(change.subject()?);
    }
    Ok(ApprovalSubject::new(process, id, request_intent_hash(process, id, kind, params))?)
}

/// Rebuilds a customer withdrawal's intent from the request's parameters (as the server's withdrawal
/// endpoint writes them: asset, amount, destination, customer, chain_id, source_wallet, reason) and the request
/// id, which is the withdrawal id. Every field is required: a missing one is an error, never a default.
pub fn withdrawal_intent(id: &str, params: &Value) -> Result<Intent> {
    let text = |name: &str| {
        params
            .get(name)
            .and_then(Value::as_str)
            .with_context(|| format!("customer_withdrawal params.{name} is missing or not a string"))
    };
    let chain_id = params
        .get("chain_id")
        .and_then(Value::as_u64)
        .context("customer_withdrawal params.chain_id is missing or not an unsigned integer")?;
    Ok(Intent {
        id: id.to_owned(),
        asset: text("asset")?.parse().map_err(|e| anyhow::anyhow!("customer_withdrawal params.asset: {e}"))?,
        chain_id: kinko_core::ChainId(chain_id),
        amount: text("amount")?.parse().map_err(|e| anyhow::anyhow!("customer_withdrawal params.amount: {e}"))?,
        destination: text("destination")?.to_owned(),
        source_wallet: text("source_wallet")?.to_owned(),
        customer_id: text("customer")?.to_owned(),
        reason: text("reason")?.to_owned(),
    })
}

/// Compares the server's `intent_hash` with the recomputed one: a difference means the server (or its
/// database) shows something other than what it would have the operator sign.
pub fn check_server_hash(request: &Value, subject: &ApprovalSubject) -> Result<()> {
    let server_hash = request.get("intent_hash").and_then(Value::as_str).context("the request has no intent_hash")?;
    let ours = hex::encode(subject.intent_hash);
    if !server_hash.eq_ignore_ascii_case(&ours) {
        bail!(
            "REFUSED: the server's intent_hash {server_hash} differs from {ours}, recomputed on this terminal from \
             the parameters shown. The request may have been tampered with; nothing was signed."
        );
    }
    Ok(())
}

/// Fetches request `id`, shows it (`show` prints to stdout or stderr), recomputes the subject from what is
/// shown and refuses when the server's intent hash differs: what `approve`, `reject` and `sign` sign.
async fn fetch_checked(client: &Client, id: &str, show: fn(&str)) -> Result<ApprovalSubject> {
    client.require_token()?;
    let id = path_segment(id)?;
    let request = client.get(&format!("/v1/ops/requests/{id}")).await?;
    let shown = json!({
        "id": request.get("id"),
        "process": request.get("process"),
        "kind": request.get("kind"),
        "requester": request.get("requester"),
        "state": request.get("state"),
        "required": request.get("required"),
        "params": request.get("params"),
    });
    show(&serde_json::to_string_pretty(&shown)?);
    let subject = recompute_subject(&request)?;
    if subject.request_id != id {
        bail!("the server answered with request {:?} for {id:?}", subject.request_id);
    }
    check_server_hash(&request, &subject)?;
    Ok(subject)
}

fn verb(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "approve",
        Decision::Reject => "reject",
    }
}

/// `kinko ops sign`: the checked subject signed and printed, never posted. The request is shown on stderr so
/// that stdout holds only `decision:`, `message:` (the approval message, hex) and `signature:` lines.
async fn sign(client: &Client, a: SignArgs) -> Result<()> {
    let subject = fetch_checked(client, &a.id, |text| eprintln!("{text}")).await?;
    let decision = if a.reject { Decision::Reject } else { Decision::Approve };
    let message = kinko_core::operators::approval_message(&subject, decision)?;
    let (file, key) = open_key_file(&a.key, a.passphrase_env.as_deref())?;
    let approval = kinko_signer::approvals::sign_approval(&key, &file.operator_id, &subject, decision)?;
    drop(key);
    eprintln!(
        "signed as {} ({} request {}, intent hash {}); nothing was submitted: paste the signature into the console",
        file.operator_id,
        verb(decision),
        subject.request_id,
        hex::encode(subject.intent_hash)
    );
    println!("decision: {}", verb(decision));
    println!("message: {}", hex::encode(message));
    println!("signature: {}", approval.signature_hex);
    Ok(())
}

async fn decide(client: &Client, d: DecideArgs, decision: Decision) -> Result<()> {
    let subject = fetch_checked(client, &d.id, |text| println!("{text}")).await?;
    let id = subject.request_id.clone();
    let verb = verb(decision);
    if !d.yes {
        if !std::io::stdin().is_terminal() {
            bail!("not a terminal: give --yes to {verb} without the confirmation prompt");
        }
        eprint!("{verb} request {id} as shown above? [y/N] ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            bail!("not confirmed; nothing was signed");
        }
    }
    let (file, key) = open_key_file(&d.key, d.passphrase_env.as_deref())?;
    let approval = kinko_signer::approvals::sign_approval(&key, &file.operator_id, &subject, decision)?;
    drop(key);
    let body = json!({"decision": verb, "signature_hex": approval.signature_hex});
    let out = client.post(&format!("/v1/ops/requests/{id}/approvals"), &body).await?;
    eprintln!("{verb}d {id} (signed by {} over intent hash {})", file.operator_id, hex::encode(subject.intent_hash));
    print_json(&out)
}

async fn registry(client: &Client, cmd: RegistryCmd) -> Result<()> {
    client.require_token()?;
    let (change, signing) = match cmd {
        RegistryCmd::AddOperator { id, public_key, role, expires_at_ms, signing } => {
            kinko_core::operator_registry::parse_public_key_hex(&public_key)?;
            let change = RegistryChangeKind::AddOperator {
                operator_id: id,
                approval_public_key_hex: public_key.to_ascii_lowercase(),
                role,
                expires_at_ms,
            };
            (change, signing)
        }
        RegistryCmd::Grant { id, role, expires_at_ms, signing } => {
            (RegistryChangeKind::Grant { operator_id: id, role, expires_at_ms }, signing)
        }
        RegistryCmd::RevokeGrant { id, role, signing } => {
            (RegistryChangeKind::RevokeGrant { operator_id: id, role }, signing)
        }
        RegistryCmd::RevokeOperator { id, signing } => {
            (RegistryChangeKind::RevokeOperator { operator_id: id }, signing)
        }
    };
    let head = client.get("/v1/ops/registry/head").await?;
    let next_seq = head.get("next_seq").and_then(Value::as_u64).context("registry head: no next_seq")?;
    let prev_hex = head.get("prev_hash").and_then(Value::as_str).context("registry head: no prev_hash")?;
    let prev_hash: [u8; 32] = hex::decode(prev_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("registry head: prev_hash is not 32 hex bytes")?;
    let (file, key) = open_key_file(&signing.key, signing.passphrase_env.as_deref())?;
    let change = RegistryChange {
        seq: next_seq,
        prev_hash,
        requested_by: file.operator_id.clone(),
        requested_at_ms: kinko_server::clock::now_ms(),
        change,
    };
    let subject = change.subject()?;
    let approval = kinko_signer::approvals::sign_approval(&key, &file.operator_id, &subject, Decision::Approve)?;
    drop(key);
    let body = json!({"change": change, "signature_hex": approval.signature_hex});
    let out = client.post("/v1/ops/registry-changes", &body).await?;
    eprintln!(
        "requested {} (registry change {}, hash {}); a second administrator approves it with `kinko ops approve {}`",
        change.change.operator_id(),
        change.seq,
        hex::encode(subject.intent_hash),
        change.request_id()
    );
    print_json(&out)
}

#[cfg(test)]
mod tests {
    use kinko_core::{Amount, ChainId};

    use super::*;

    fn intent() -> Intent {
        Intent {
            id: "w-1".into(),
            asset: "ETH".parse().unwrap(),
            chain_id: ChainId(31337),
            amount: Amount::from_base_units(5),
            destination: "0x00000000000000000000000000000000000000aa".into(),
            source_wallet: "0x00000000000000000000000000000000000000bb".into(),
            customer_id: "c1".into(),
            reason: "customer withdrawal".into(),
        }
    }

    /// The parameters as crates/kinko-server/src/api/withdrawals.rs writes them.
    fn withdrawal_params(i: &Intent) -> Value {
        json!({
            "asset": i.asset.as_str(), "amount": i.amount.to_string(), "destination": i.destination,
            "customer": i.customer_id, "chain_id": i.chain_id.0, "source_wallet": i.source_wallet, "reason": i.reason,
        })
    }

    fn request(kind: &str, process: &str, id: &str, params: Value, hash: [u8; 32]) -> Value {
        json!({"id": id, "process": process, "kind": kind, "params": params, "intent_hash": hex::encode(hash)})
    }

    #[test]
    fn o2_withdrawal_subject_is_recomputed_and_a_tampered_hash_refused() {
        let i = intent();
        let good = request(KIND_CUSTOMER_WITHDRAWAL, "signing", "w-1", withdrawal_params(&i), i.hash());
        let subject = recompute_subject(&good).unwrap();
        assert_eq!(subject.intent_hash, i.hash());
        check_server_hash(&good, &subject).unwrap();
        // The server shows 5 wei but asks for a signature over the hash of another intent.
        let mut other = intent();
        other.amount = Amount::from_base_units(5_000);
        let tampered = request(KIND_CUSTOMER_WITHDRAWAL, "signing", "w-1", withdrawal_params(&i), other.hash());
        let subject = recompute_subject(&tampered).unwrap();
        assert!(check_server_hash(&tampered, &subject).is_err());
        // The same parameters under another request id sign another intent (the id is part of it).
        let moved = request(KIND_CUSTOMER_WITHDRAWAL, "signing", "w-2", withdrawal_params(&i), i.hash());
        assert!(check_server_hash(&moved, &recompute_subject(&moved).unwrap()).is_err());
        // A missing field is an error, not a default.
        let mut partial = withdrawal_params(&i);
        partial.as_object_mut().unwrap().remove("reason");
        let missing = request(KIND_CUSTOMER_WITHDRAWAL, "signing", "w-1", partial, i.hash());
        assert!(recompute_subject(&missing).is_err());
    }

    #[test]
    fn m10_custodian_transfer_subject_is_its_intent() {
        let mut i = intent();
        i.customer_id = "custodian".into();
        i.reason = "custodian transfer".into();
        let good = request(KIND_CUSTODIAN_TRANSFER, "signing", "w-1", withdrawal_params(&i), i.hash());
        check_server_hash(&good, &recompute_subject(&good).unwrap()).unwrap();
        let mut other = i.clone();
        other.destination = "0x00000000000000000000000000000000000000cc".into();
        let tampered = request(KIND_CUSTODIAN_TRANSFER, "signing", "w-1", withdrawal_params(&i), other.hash());
        assert!(check_server_hash(&tampered, &recompute_subject(&tampered).unwrap()).is_err());
    }

    #[test]
    fn k14_cold_refill_subject_is_its_intent() {
        let mut i = intent();
        i.customer_id = "custodian".into();
        i.reason = "custodian transfer".into();
        let good = request(kinko_store::cold::COLD_REFILL_KIND, "signing", "w-1", withdrawal_params(&i), i.hash());
        check_server_hash(&good, &recompute_subject(&good).unwrap()).unwrap();
    }

    #[test]
    fn o3_registry_change_subject_is_the_change_hash() {
        let change = RegistryChange {
            seq: 2,
            prev_hash: [1; 32],
            requested_by: "admin1".into(),
            requested_at_ms: 1,
            change: RegistryChangeKind::RevokeOperator { operator_id: "sm".into() },
        };
        let hash = change.hash().unwrap();
        let req = request("registry_change", "personnel", "registry-2", json!({"change": change}), hash);
        let subject = recompute_subject(&req).unwrap();
        assert_eq!(subject, change.subject().unwrap());
        check_server_hash(&req, &subject).unwrap();
        let wrong_id = request("registry_change", "personnel", "registry-3", json!({"change": change}), hash);
        assert!(recompute_subject(&wrong_id).is_err());
    }

    #[test]
    fn k11_other_requests_use_the_request_intent_hash() {
        let params = json!({"key_id": "hot-1", "to_state": "active", "reason": "go live"});
        let hash = request_intent_hash(Process::Activation, "r-9", "key_transition", &params);
        let req = request("key_transition", "activation", "r-9", params.clone(), hash);
        let subject = recompute_subject(&req).unwrap();
        check_server_hash(&req, &subject).unwrap();
        let mut edited = params;
        edited["to_state"] = json!("destroyed");
        let tampered = request("key_transition", "activation", "r-9", edited, hash);
        assert!(check_server_hash(&tampered, &recompute_subject(&tampered).unwrap()).is_err());
    }

    #[test]
    fn o5_ids_that_would_change_the_url_path_are_refused() {
        assert!(path_segment("w-1").is_ok());
        for bad in ["", "..", "a/b", "a?b", "a b", "%2e"] {
            assert!(path_segment(bad).is_err(), "{bad:?}");
        }
    }
}
