//! `kinko cold …`: the online half of cold storage (K14). Like the other operator commands that act on the
//! custody host (`kinko key …`), it talks to the store directly; every export, import and cancel is written to
//! the audit trail before it is done (no entry, no action) and again with its outcome.
//!
//! The air-gapped half is the separate `kinko-offline` binary (no networking code path): `kinko cold
//! registry-log` feeds its `keygen`, `kinko cold export` its `sign`, and `kinko cold import` takes what it
//! wrote.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_offline::bundle::{read_signed, write_json_0600};
use kinko_server::Config;
use kinko_store::Store;
use kinko_store::cold::ImportOutcome;

#[derive(Subcommand)]
pub enum ColdCmd {
    /// Write the server's operator registry log (JSON) for `kinko-offline keygen --registry`.
    RegistryLog {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Export the unsigned bundle of a cold row awaiting its offline signature (stored first; again gives the
    /// same bundle).
    Export {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        /// The withdrawal (the approved `cold_refill` request's id).
        #[arg(long)]
        withdrawal: String,
        #[arg(long)]
        out: PathBuf,
        /// Who exports (recorded in the audit trail).
        #[arg(long)]
        actor: String,
    },
    /// Import a signed file written by `kinko-offline sign`: verified against the bundle kinko stored, then the
    /// row moves to `signed` and the pipeline broadcasts it. Importing the same file twice is harmless.
    Import {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        actor: String,
    },
    /// Cancel a cold row that is still awaiting its offline signature (its nonce is handed back).
    Cancel {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        withdrawal: String,
        #[arg(long)]
        actor: String,
    },
}

pub async fn run(cmd: ColdCmd) -> Result<()> {
    match cmd {
        ColdCmd::RegistryLog { config, out } => {
            let (_, store) = open(&config).await?;
            let log = kinko_server::cold::registry_log(&store).await?;
            write_json_0600(&out, &log).with_context(|| format!("writing {}", out.display()))?;
            println!("{} registry entries written to {}", log.len(), out.display());
            Ok(())
        }
        ColdCmd::Export { config, withdrawal, out, actor } => {
            let (config, store) = open(&config).await?;
            let audit =
                Audit::begin(&config, &store, &actor, "cold.export", &format!("withdrawal:{withdrawal}")).await?;
            let outcome = export(&config, &store, &withdrawal, &out).await;
            audit.finish(&outcome).await;
            outcome
        }
        ColdCmd::Import { config, file, actor } => {
            let (config, store) = open(&config).await?;
            let audit =
                Audit::begin(&config, &store, &actor, "cold.import", &format!("file:{}", file.display())).await?;
            let outcome = import(&store, &file).await;
            audit.finish(&outcome).await;
            outcome
        }
        ColdCmd::Cancel { config, withdrawal, actor } => {
            let (config, store) = open(&config).await?;
            let audit =
                Audit::begin(&config, &store, &actor, "cold.cancel", &format!("withdrawal:{withdrawal}")).await?;
            let outcome = store
                .abandon_offline(&withdrawal, WithdrawalStatus::Cancelled, kinko_server::clock::now_ms())
                .await
                .map_err(anyhow::Error::from);
            audit.finish(&outcome).await;
            outcome?;
            println!("withdrawal {withdrawal} cancelled; its nonce was handed back");
            Ok(())
        }
    }
}

async fn open(path: &Path) -> Result<(Config, Store)> {
    let config = Config::load(path).with_context(|| format!("loading configuration {}", path.display()))?;
    let store = Store::connect(&config.database_url).await?;
    Ok((config, store))
}

async fn export(config: &Config, store: &Store, withdrawal: &str, out: &Path) -> Result<()> {
    let (bundle, sha) =
        kinko_server::cold::export_bundle(store, config, withdrawal, kinko_server::clock::now_ms()).await?;
    write_json_0600(out, &bundle).with_context(|| format!("writing {}", out.display()))?;
    println!("unsigned bundle for withdrawal {withdrawal} written to {}", out.display());
    println!("sha256: {sha}");
    println!(
        "{} {} from {} to {} (nonce reserved); sign it offline with `kinko-offline sign`",
        bundle.intent.amount, bundle.intent.asset, bundle.intent.source_wallet, bundle.intent.destination
    );
    Ok(())
}

async fn import(store: &Store, file: &Path) -> Result<()> {
    let signed = read_signed(file).with_context(|| format!("reading {}", file.display()))?;
    let imported = kinko_server::cold::import_signed(store, &signed, kinko_server::clock::now_ms())
        .await
        .context("the signed file is refused; nothing was stored or broadcast")?;
    match imported.outcome {
        ImportOutcome::Imported => println!(
            "withdrawal {} signed offline ({}); the pipeline broadcasts it",
            imported.withdrawal_id, imported.tx_hash
        ),
        ImportOutcome::AlreadyImported => {
            println!("withdrawal {} already has this transaction ({})", imported.withdrawal_id, imported.tx_hash)
        }
    }
    Ok(())
}

/// The audit entry of a `kinko cold` action: written before (an unwritable trail stops the action, L6) and
/// with the outcome after.
struct Audit {
    sink: kinko_server::audit::AuditSink,
    record: kinko_core::audit::Record,
}

impl Audit {
    async fn begin(config: &Config, store: &Store, actor: &str, action: &str, object: &str) -> Result<Audit> {
        use kinko_core::audit::{ActorKind, Record, clip};
        if actor.trim().is_empty() {
            bail!("--actor: name who is doing this (recorded in the audit trail)");
        }
        let sink = kinko_server::audit::AuditSink::from_config(store.clone(), config);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let record = Record {
            actor_kind: ActorKind::Operator,
            actor_id: clip(actor),
            role: "cli".into(),
            terminal: clip(&format!("cli:{}", host.trim())),
            action: clip(action),
            object: clip(object),
            request_digest: Record::digest(object.as_bytes()),
            outcome: "attempt".into(),
        };
        sink.append(record.clone()).await.with_context(|| format!("{action} {object}: nothing was done"))?;
        Ok(Audit { sink, record })
    }

    async fn finish<T>(mut self, outcome: &Result<T>) {
        self.record.outcome = match outcome {
            Ok(_) => "ok".into(),
            Err(e) => kinko_core::audit::clip(&format!("error: {e:#}")),
        };
        if let Err(e) = self.sink.append(self.record).await {
            eprintln!("warning: the outcome could not be written to the audit trail: {e}");
        }
    }
}
