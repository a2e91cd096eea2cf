//! `kinko emergency` (K19, S5) and `kinko reconcile` (L3), run on the custody host.
//!
//! `kinko emergency freeze` stops signing and withdrawals in a scope at once: it writes the freeze to the
//! database (which the API's withdrawal gate and the pipeline read) and tells the signer process, which keeps
//! its own record and refuses to sign in the scope whatever it is asked later. One person may freeze; no
//! approval is needed to stop. Lifting is an `unfreeze` request approved by signing managers
//! (`kinko ops request --process unfreeze …`), verified by the signer itself.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use kinko_core::freeze::{Freeze, check_reason};
use kinko_server::config::SignerMode;
use kinko_signer::Signer;
use kinko_signer::remote::RemoteSigner;
use kinko_store::Store;

#[derive(Subcommand)]
pub enum EmergencyCmd {
    /// Freeze a scope now: `all`, `chain:ethereum`, `wallet:0x…` or `key:ID`. Stops signing and withdrawals
    /// at once; lifting needs an approved unfreeze request.
    Freeze {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        scope: String,
        /// Why (recorded with the freeze, shown in every refusal).
        #[arg(long)]
        reason: String,
        /// Who is freezing (recorded as `cli:NAME`); default: the login name ($USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Print the active freezes, the database's and the signer's, as JSON.
    Status {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
    },
}

pub async fn run(cmd: EmergencyCmd) -> Result<()> {
    match cmd {
        EmergencyCmd::Freeze { config, scope, reason, by } => freeze(config, &scope, &reason, by).await,
        EmergencyCmd::Status { config } => status(config).await,
    }
}

fn load(config: &std::path::Path) -> Result<kinko_server::Config> {
    kinko_server::Config::load(config).with_context(|| format!("loading configuration {}", config.display()))
}

async fn freeze(config: PathBuf, scope: &str, reason: &str, by: Option<String>) -> Result<()> {
    let config = load(&config)?;
    let scope = kinko_server::emergency::parse_scope(scope).context("--scope")?;
    check_reason(reason).context("--reason")?;
    let who = by.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into());
    if who.is_empty() || who.len() > 64 || who.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!("--by: must be 1 to 64 characters without spaces");
    }
    let now = kinko_server::clock::now_ms();
    let freeze = Freeze {
        id: kinko_server::emergency::new_freeze_id(),
        scope,
        reason: reason.trim().to_string(),
        set_by: format!("cli:{who}"),
        set_at_ms: now,
    };
    // The signer first when it is a process of its own: it is the last line, and the database may be the
    // thing that is compromised or down. Both are always tried.
    let remote = (config.signer.mode == SignerMode::Remote).then(|| RemoteSigner::new(&config.signer_socket()));
    let signer_result = match &remote {
        Some(r) => r.freeze(&freeze).await.map(|()| "frozen".to_string()).map_err(|e| e.to_string()),
        None => Ok("in-process signer: `kinko serve` passes the freeze on at its next poll".to_string()),
    };
    let stored = match Store::connect(&config.database_url).await {
        Ok(store) => {
            let event = kinko_store::ops_requests::NewOpsEvent {
                operator_id: freeze.set_by.clone(),
                terminal: "cli".into(),
                event: "freeze_set".into(),
                request_id: None,
                detail_json: serde_json::json!({
                    "freeze_id": freeze.id, "scope": freeze.scope.to_string(), "reason": freeze.reason,
                    "set_by": freeze.set_by,
                })
                .to_string(),
                at_ms: now,
            };
            store.set_freeze(&freeze, &event).await.map(|_| ()).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let out = serde_json::json!({
        "freeze": freeze,
        "database": match &stored { Ok(()) => "stored".to_string(), Err(e) => format!("FAILED: {e}") },
        "signer": match &signer_result { Ok(s) => s.clone(), Err(e) => format!("FAILED: {e}") },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    match (stored, signer_result) {
        (Ok(()), Ok(_)) => Ok(()),
        (Err(e), Ok(_)) => bail!(
            "the signer is frozen but the database could not record the freeze ({e}); withdrawals are not refused \
             at the API until it is: fix the database and run this again"
        ),
        (Ok(()), Err(e)) => bail!(
            "the database freeze stands (withdrawals and the pipeline stop), but the signer was not reached ({e}); \
             `kinko serve` tells it at its next poll, or run this again"
        ),
        (Err(d), Err(s)) => bail!("nothing was frozen: database: {d}; signer: {s}"),
    }
}

async fn status(config: PathBuf) -> Result<()> {
    let config = load(&config)?;
    let store = Store::connect(&config.database_url).await?;
    let database = store.active_freezes().await?;
    let signer = match config.signer.mode {
        SignerMode::Remote => match RemoteSigner::new(&config.signer_socket()).active_freezes().await {
            Ok(f) => serde_json::json!(f),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        },
        SignerMode::Local => serde_json::json!("in-process signer (ask kinko serve)"),
    };
    println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "database": database, "signer": signer }))?);
    Ok(())
}

/// `kinko reconcile`: one balance reconciliation now (L3), printed as JSON and stored like the scheduled one.
pub async fn reconcile(config: PathBuf) -> Result<()> {
    let config = load(&config)?;
    let store = Store::connect(&config.database_url).await?;
    let rpc = kinko_chain::evm::rpc::EvmRpc::new(&config.ethereum.rpc_url)?;
    let asset: kinko_core::AssetCode = "ETH".parse()?;
    let report = kinko_server::reconciliation::reconcile_balances(
        &store,
        &rpc,
        kinko_server::app::ETH_CHAIN,
        &asset,
        kinko_server::clock::now_ms(),
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.shortfall != "0" {
        bail!("SHORTFALL: on-chain holdings are {} below customer liabilities", report.shortfall);
    }
    Ok(())
}
