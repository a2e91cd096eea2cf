//! `kinko kek …` and `kinko key …`: the key lifecycles from the command line (K2, K4, K5, K7, K10).
//!
//! KEK rotation needs the old and the new KEK in memory. Both are wrapped by the master key (MK), so the
//! command reconstructs the MK from custodian shares (`--share FILE`, repeated; passphrases from
//! `KINKO_SHARE_PASSPHRASE`), exactly as unsealing does. [`KekSource`] is the seam where the unsealed
//! signer process will hand over instead.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use kinko_core::key_lifecycle::Attribution;
use kinko_core::operator_registry::RegistryChange;
use kinko_core::operators::{Decision, OperatorError, Process, approval_message};
use kinko_keys::kek::Kek;
use kinko_keys::shares::{MasterKey, ShareFile};
use kinko_server::Config;
use kinko_server::api::ops_requests::{core_request, key_transition_process};
use kinko_signer::Approval;
use kinko_signer::approvals::{LoggedChange, OperatorRegistry};
use kinko_signer::seal::{self, SealState, SubmitOutcome};
use kinko_store::Store;
use kinko_store::kek_rotation::{REWRAP_BATCH_KEYS_DEFAULT, Rewrapper, RotationProgress};
use kinko_store::key_lifecycle::SUBJECT_KEY;
use kinko_store::ops_requests::{
    NewOpsEvent, STATE_APPROVED, STATE_EXECUTED, STATE_INSPECTED, append_ops_event_tx, finish_ops_request_tx,
};
use kinko_store::seal_records::KekRecord;

use crate::operator_cli::open_key_file;

/// Test-only: milliseconds to sleep after each committed batch, so a test can SIGKILL a rotation
/// part-way. Never set it in production; it only makes the rotation slower.
pub const ROTATE_PAUSE_ENV: &str = "KINKO_TEST_KEK_ROTATE_PAUSE_MS";
/// Passphrase for protected share files given with `--share`.
pub const SHARE_PASSPHRASE_ENV: &str = "KINKO_SHARE_PASSPHRASE";
/// How long an address must have been quiet before its key may be destroyed, unless configured (K7).
pub const RETENTION_DAYS_DEFAULT: u32 = 365;
/// Bound on the addresses whose on-chain balance one destruction checks (the master seed guards every
/// deposit address); beyond it the destruction is refused rather than checked partly.
pub const DESTROY_ONCHAIN_CHECKS_MAX: usize = 10_000;
const META_DEPOSIT_XPUB: &str = "eth_deposit_xpub";
const DAY_MS: i64 = 86_400_000;

#[derive(Subcommand)]
pub enum KekCmd {
    /// Re-wrap every key under a new KEK, then destroy the old one (K4). Resumes after a crash: run it again.
    Rotate {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        /// A custodian's share file; give as many as the threshold needs.
        #[arg(long = "share", required = true)]
        shares: Vec<PathBuf>,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: String,
        /// Keys re-wrapped per transaction.
        #[arg(long, default_value_t = REWRAP_BATCH_KEYS_DEFAULT)]
        batch: usize,
    },
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Print the deposit xpub (watch-only derivation of deposit addresses, K5) as JSON.
    ExportXpub {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
    },
    /// Execute an approved activation/deactivation request (Table A-1; Fig 5-2 for signing keys, Fig 5-4 for
    /// the master seed): the key, target state and reason come from the request, you from your key file.
    Transition {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// A key's state and its recorded transitions, as JSON.
    Show {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        id: String,
    },
    /// Execute an approved destruction request (K7, K10, Table A-1). Refused while the key's addresses hold
    /// funds on chain or received any within the retention period.
    Destroy {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        exec: ExecArgs,
        /// Repeat the id of the key the request destroys, to confirm.
        #[arg(long)]
        confirm: String,
        #[arg(long, default_value_t = RETENTION_DAYS_DEFAULT)]
        retention_days: u32,
    },
}

/// Who executes which request: the executor is the operator of the key file, checked against the registry.
#[derive(Args)]
pub struct ExecArgs {
    /// The approved operator request (`kinko ops requests --state approved`).
    #[arg(long)]
    request: String,
    /// Your encrypted approval key file (from `kinko operator keygen`): it names and proves who executes.
    #[arg(long)]
    key: PathBuf,
    /// Read the key file's passphrase from this environment variable instead of prompting.
    #[arg(long)]
    passphrase_env: Option<String>,
}

fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("loading configuration {}", path.display()))
}

/// Where the rotation gets KEKs from: anything that can open a KEK row and wrap a new KEK for storage.
pub trait KekSource {
    fn open(&self, row: &KekRecord) -> Result<Kek>;
    fn wrap_new(&self, kek_id: &str, kek: &Kek) -> Result<String>;
}

/// The master key reconstructed from custodian shares, checked against the seal config.
pub struct SharesKekSource(MasterKey);

impl SharesKekSource {
    pub async fn from_share_files(store: &Store, files: &[PathBuf]) -> Result<SharesKekSource> {
        let mut state = SealState::load(store).await?;
        let passphrase = std::env::var(SHARE_PASSPHRASE_ENV).ok().map(zeroize::Zeroizing::new);
        for path in files {
            let file = ShareFile::read(path)?;
            let share = file.open(passphrase.as_deref().map(|s| s.as_str()))?;
            if let SubmitOutcome::Unsealed(mk) = state.submit(share)? {
                return Ok(SharesKekSource(mk));
            }
        }
        bail!("not enough distinct custodian shares to reconstruct the master key")
    }
}

impl KekSource for SharesKekSource {
    fn open(&self, row: &KekRecord) -> Result<Kek> {
        Ok(seal::unwrap_kek(&self.0, &row.id, &row.wrapped_by_master_hex)?)
    }
    fn wrap_new(&self, kek_id: &str, kek: &Kek) -> Result<String> {
        Ok(seal::wrap_kek(&self.0, kek_id, kek)?)
    }
}

/// Both KEKs of a rotation; zeroized on drop.
struct KekPair {
    old: Kek,
    new: Kek,
}

impl Rewrapper for KekPair {
    fn rewrap(&self, key_id: &str, purpose: &str, old_blob: &[u8]) -> Result<Vec<u8>, String> {
        let plain = self.old.unwrap(key_id, purpose, old_blob).map_err(|e| e.to_string())?;
        self.new.wrap(key_id, purpose, &plain).map_err(|e| e.to_string())
    }
    fn verify_new(&self, key_id: &str, purpose: &str, new_blob: &[u8]) -> Result<(), String> {
        self.new.unwrap(key_id, purpose, new_blob).map(drop).map_err(|e| e.to_string())
    }
}

pub async fn run_kek(cmd: KekCmd) -> Result<()> {
    match cmd {
        KekCmd::Rotate { config, shares, actor, reason, batch } => {
            let config = load_config(&config)?;
            let store = Store::connect(&config.database_url).await?;
            let source = SharesKekSource::from_share_files(&store, &shares).await?;
            let why = Attribution::new(actor, reason)?;
            let report = rotate_kek(&store, &source, &why, batch).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
    }
}

/// Starts a rotation (or resumes the open one) and drives it to the end with a progress bar.
pub async fn rotate_kek(
    store: &Store,
    source: &dyn KekSource,
    why: &Attribution,
    batch: usize,
) -> Result<kinko_store::kek_rotation::KekRotation> {
    let rotation = match store.open_kek_rotation().await? {
        Some(open) => {
            eprintln!("resuming KEK rotation {} ({} -> {})", open.id, open.old_kek_id, open.new_kek_id);
            open
        }
        None => {
            let new = Kek::generate();
            let id = format!("kek-{}", new.fingerprint());
            let now = now_ms();
            let row = KekRecord {
                id: id.clone(),
                wrapped_by_master_hex: source.wrap_new(&id, &new)?,
                state: kinko_store::seal_records::KEK_ACTIVE.into(),
                fingerprint: new.fingerprint(),
                created_at_ms: now,
                updated_at_ms: now,
            };
            store.begin_kek_rotation(&row, why, now).await?
        }
    };
    let old_row = store.kek(&rotation.old_kek_id).await?.context("the old KEK row is missing")?;
    let new_row = store.kek(&rotation.new_kek_id).await?.context("the new KEK row is missing")?;
    if old_row.state == kinko_store::seal_records::KEK_DESTROYED {
        // Killed after the old KEK was destroyed but before the record closed: only the bookkeeping is left.
        store.finish_kek_rotation(&rotation, why, now_ms()).await?;
        return store.kek_rotation(&rotation.id).await?.context("rotation record vanished");
    }
    let pair = KekPair { old: source.open(&old_row)?, new: source.open(&new_row)? };
    let pause = std::env::var(ROTATE_PAUSE_ENV).ok().and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} keys").expect("static template"),
    );
    let result = store
        .run_kek_rotation(&rotation, &pair, batch, why, now_ms, |p| {
            let (msg, done, total) = match p {
                RotationProgress::Rewrapped { done, total } => ("re-wrapping", done, total),
                RotationProgress::Verified { done, total } => ("verifying", done, total),
            };
            bar.set_message(msg);
            bar.set_length(total);
            bar.set_position(done);
            async move {
                if let Some(d) = pause {
                    tokio::time::sleep(d).await;
                }
            }
        })
        .await;
    bar.finish_and_clear();
    Ok(result?)
}

pub async fn run_key(cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::ExportXpub { config } => {
            let config = load_config(&config)?;
            let store = Store::connect(&config.database_url).await?;
            let xpub = store.meta_get(META_DEPOSIT_XPUB).await?.context("no deposit xpub: run `kinko init` first")?;
            println!("{}", serde_json::json!({ "chain": "eth", "deposit_xpub": xpub }));
            Ok(())
        }
        KeyCmd::Transition { config, exec } => {
            let config = load_config(&config)?;
            let store = Store::connect(&config.database_url).await?;
            let audit = crate::audit_cli::CliAudit::begin(&config, &store, "key.transition", &exec.request, &exec.key);
            let audit = audit.await?;
            let outcome = execute_key_request(&store, &exec, KeyAction::Transition).await;
            audit.finish(&outcome).await;
            let outcome = outcome?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            Ok(())
        }
        KeyCmd::Show { config, id } => {
            let config = load_config(&config)?;
            let store = Store::connect(&config.database_url).await?;
            let key = store.key(&id).await?.with_context(|| format!("no key {id:?}"))?;
            let history = store.key_transitions(SUBJECT_KEY, &id).await?;
            let out = serde_json::json!({
                "id": key.id, "purpose": key.purpose, "address": key.address, "state": key.state,
                "kek_id": store.key_kek_id(&id).await?, "transitions": history,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        KeyCmd::Destroy { config, exec, confirm, retention_days } => {
            let config = load_config(&config)?;
            let store = Store::connect(&config.database_url).await?;
            let rpc = kinko_chain::evm::rpc::EvmRpc::new(&config.ethereum.rpc_url)?;
            let action = KeyAction::Destroy { confirm: &confirm, rpc: &rpc, retention_days };
            let audit = crate::audit_cli::CliAudit::begin(&config, &store, "key.destroy", &exec.request, &exec.key);
            let audit = audit.await?;
            let outcome = execute_key_request(&store, &exec, action).await;
            audit.finish(&outcome).await;
            let outcome = outcome?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            Ok(())
        }
    }
}

/// Destroys a key after checking the chain as well as the database (K7): any address the key guards
/// that holds funds on chain blocks it, and so does a node that cannot be asked.
pub async fn destroy_key(
    store: &Store,
    rpc: &kinko_chain::evm::rpc::EvmRpc,
    id: &str,
    retention_days: u32,
    why: &Attribution,
    now_ms: i64,
) -> Result<kinko_store::key_lifecycle::TransitionRecord> {
    let key = store.key(id).await?.with_context(|| format!("no key {id:?}"))?;
    let addresses = store.addresses_guarded_by(&key.purpose, &key.address).await?;
    if addresses.len() > DESTROY_ONCHAIN_CHECKS_MAX {
        bail!("key {id:?} guards {} addresses, more than can be checked on chain; refused", addresses.len());
    }
    for address in &addresses {
        let parsed = kinko_chain::evm::address::parse_address(address)?;
        let balance = rpc.balance(parsed).await.with_context(|| format!("on-chain balance of {address}"))?;
        if balance > 0 {
            bail!("destruction of {id:?} refused (K7): {address} holds {balance} wei on chain");
        }
    }
    let since_ms = now_ms.saturating_sub(i64::from(retention_days) * DAY_MS);
    Ok(store.destroy_key(id, since_ms, why, now_ms).await?)
}

/// The request kind that carries a key lifecycle change (activation/deactivation or destruction).
pub const KIND_KEY_TRANSITION: &str = "key_transition";
/// Bound on the host name recorded as the executing terminal.
pub const TERMINAL_LEN_MAX: usize = 64;

/// What the command does once the request checks out.
pub enum KeyAction<'a> {
    /// `kinko key transition`: any lifecycle move except destruction.
    Transition,
    /// `kinko key destroy`: destruction after the on-chain check (K7).
    Destroy { confirm: &'a str, rpc: &'a kinko_chain::evm::rpc::EvmRpc, retention_days: u32 },
}

/// The terminal recorded for an execution from the command line: `cli:<host name>`.
fn cli_terminal() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_graphic()).take(TERMINAL_LEN_MAX).collect::<String>())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("cli:{h}"),
        None => crate::operator_cli::CLI_TERMINAL.to_owned(),
    }
}

fn problem(p: kinko_server::api::problem::Problem) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", p.body.title, p.body.detail.unwrap_or_default())
}

/// Replays the server's copy of the operator registry (`operator_registry_log`) with every signature
/// verified, as the API does: a log that does not verify stops the execution (fail closed).
pub async fn replay_registry(store: &Store, now_ms: i64) -> Result<OperatorRegistry> {
    let rows = store.registry_log().await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let change: RegistryChange =
            serde_json::from_str(&row.change_json).with_context(|| format!("registry log seq {}: change", row.seq))?;
        let approvals: Vec<Approval> = serde_json::from_str(&row.approvals_json)
            .with_context(|| format!("registry log seq {}: approvals", row.seq))?;
        if hex::encode(change.hash()?) != row.hash || i64::try_from(change.seq).ok() != Some(row.seq) {
            bail!("registry log seq {}: stored hash or seq does not match its change", row.seq);
        }
        entries.push(LoggedChange { change, approvals, applied_at_ms: row.applied_at_ms });
    }
    OperatorRegistry::replay(&entries, now_ms).context("the operator registry log does not verify")
}

/// The separation-of-duties rule that refused, named like the API names it.
fn rule_of(e: &OperatorError) -> &'static str {
    match e {
        OperatorError::ExecutorApproved { .. } => "executor-approved (K8)",
        OperatorError::SelfApproval { .. } => "self-approval (O2)",
        OperatorError::RolesExclusive { .. } => "one-role (K8, O3)",
        OperatorError::GrantExpired { .. } => "grant-expired",
        OperatorError::Revoked { .. } => "revoked",
        OperatorError::UnknownOperator { .. } => "unregistered",
        OperatorError::RoleNotAllowed { .. } | OperatorError::NobodyMay { .. } => "role (Table A-1)",
        OperatorError::QuorumNotMet { .. } => "quorum-not-met (O2)",
        OperatorError::BadTransition { .. } => "bad-state",
        _ => "refused",
    }
}

/// Executes an approved `key_transition` request (Table A-1, K8, O2): the executor is the operator whose key
/// file this is (its public key must be the one the registry holds for them), in the process's executing
/// role, not one of its approvers, with the quorum re-counted against the registry now and every approval's
/// signature verified again. The key moves with the request's reason (tagged with the request id), then the
/// request is marked executed together with its `ops_events` row in one transaction.
///
/// The key move and the bookkeeping are two transactions; if the second fails (the event could not be
/// written), the request stays approved and the command fails. Running it again finds the key already moved
/// by this request (the tag in the transition's reason) and only completes the bookkeeping; once executed,
/// running it again reports that and changes nothing.
pub async fn execute_key_request(store: &Store, exec: &ExecArgs, action: KeyAction<'_>) -> Result<serde_json::Value> {
    let id = exec.request.as_str();
    let row = store.ops_request(id).await?.with_context(|| format!("no operator request {id:?}"))?;
    if row.kind != KIND_KEY_TRANSITION {
        bail!("request {id} is a {} request, not {KIND_KEY_TRANSITION}", row.kind);
    }
    let params: serde_json::Value =
        serde_json::from_str(&row.params_json).with_context(|| format!("request {id}: params"))?;
    let field = |f: &str| -> Result<String> {
        params
            .get(f)
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
            .with_context(|| format!("request {id}: params.{f} is missing"))
    };
    let (key_id, to_state, reason) = (field("key_id")?, field("to_state")?, field("reason")?);
    let process = key_transition_process(&to_state);
    if row.process != process.as_str() {
        bail!("request {id} is for {}, but to_state {to_state:?} belongs to {process}: refused", row.process);
    }
    match &action {
        KeyAction::Transition if process == Process::Destruction => {
            bail!("request {id} destroys {key_id:?}: run `kinko key destroy --request {id} --confirm {key_id}`")
        }
        KeyAction::Destroy { .. } if process != Process::Destruction => {
            bail!("request {id} is not a destruction: run `kinko key transition --request {id}`")
        }
        KeyAction::Destroy { confirm, .. } if *confirm != key_id => {
            bail!("--confirm must repeat the id of the key request {id} destroys ({key_id:?}): it cannot be undone")
        }
        _ => {}
    }
    if row.state == STATE_EXECUTED || row.state == STATE_INSPECTED {
        eprintln!("request {id} was already executed by {}", row.executor.as_deref().unwrap_or("?"));
        return Ok(serde_json::json!({
            "request": id, "state": row.state, "already_executed": true, "executor": row.executor,
            "result": row.result_json.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose()?,
        }));
    }
    if row.state != STATE_APPROVED {
        bail!("request {id} is {}, not approved: Table A-1 needs the approving role's approval first", row.state);
    }

    let (file, key) = open_key_file(&exec.key, exec.passphrase_env.as_deref())?;
    let now = now_ms();
    let registry = replay_registry(store, now).await?;
    let operator_id = file.operator_id.clone();
    let registered = registry
        .get(&operator_id)
        .with_context(|| format!("refused (unregistered): {operator_id:?} is not in the operator registry"))?;
    if registered.approval_key != key.verifying_key() {
        bail!("refused: the key file for {operator_id:?} does not hold the approval key the registry has for them");
    }
    let approvals = store.ops_approvals(id).await?;
    let mut request = core_request(&row, &approvals).map_err(problem)?;
    // The server verified each signature when it recorded it; the executor does not take the database's
    // word for it (a row written behind the API's back would otherwise count).
    for a in &approvals {
        let decision = match a.decision.as_str() {
            "approve" => Decision::Approve,
            "reject" => Decision::Reject,
            other => bail!("request {id}: approval by {:?} has decision {other:?}", a.operator_id),
        };
        let signer = registry
            .get(&a.operator_id)
            .with_context(|| format!("request {id}: approval by {:?}, who is not registered", a.operator_id))?;
        let bytes: [u8; 64] = hex::decode(&a.signature_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| format!("request {id}: approval by {:?}: malformed signature", a.operator_id))?;
        let message = approval_message(&request.subject, decision)?;
        signer
            .approval_key
            .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&bytes))
            .map_err(|_| anyhow::anyhow!("request {id}: the approval by {:?} does not verify", a.operator_id))?;
    }
    request
        .execute(&registered.operator, &registry.state().operators(), now)
        .map_err(|e| anyhow::anyhow!("refused ({}): {e}", rule_of(&e)))?;

    // The request id in the key's own history ties the move to its approval, and lets a re-run after a
    // failed bookkeeping step recognise that the key already moved.
    let tag = format!("(ops request {id})");
    let why = Attribution::new(operator_id.clone(), format!("{reason} {tag}"))?;
    let earlier = store
        .key_transitions(SUBJECT_KEY, &key_id)
        .await?
        .into_iter()
        .find(|t| t.reason.ends_with(&tag) && t.to == to_state);
    let record = match (earlier, &action) {
        (Some(done), _) => done,
        (None, KeyAction::Transition) => store.transition_key(&key_id, None, &to_state, &why, now).await?,
        (None, KeyAction::Destroy { rpc, retention_days, .. }) => {
            destroy_key(store, rpc, &key_id, *retention_days, &why, now).await?
        }
    };
    let result = serde_json::json!({ "key_id": record.key_id, "from": record.from, "to": record.to });
    let mut tx = store.begin_write().await?;
    finish_ops_request_tx(&mut tx, id, STATE_APPROVED, STATE_EXECUTED, &operator_id, &result.to_string(), now).await?;
    append_ops_event_tx(
        &mut tx,
        &NewOpsEvent {
            operator_id: operator_id.clone(),
            terminal: cli_terminal(),
            event: "executed".into(),
            request_id: Some(id.to_owned()),
            detail_json: result.to_string(),
            at_ms: now,
        },
    )
    .await
    .context("writing the execution's audit event; the request stays approved: run the command again")?;
    tx.commit().await?;
    Ok(serde_json::json!({ "request": id, "state": STATE_EXECUTED, "executor": operator_id, "result": result }))
}
