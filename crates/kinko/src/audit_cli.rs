//! `kinko audit`: verify the audit trail's chain and signatures, export it for the log inspector (L2,
//! L4–L6).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use kinko_store::Store;
use kinko_store::audit::AUDIT_PAGE_MAX;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check every entry: sequence without gaps, hash chain, content hashes and the audit key's signatures.
    /// Exit 0 with "N entries verified", or non-zero naming the first bad entry.
    Verify {
        #[arg(long, short, env = "KINKO_CONFIG", conflicts_with = "database_url")]
        config: Option<PathBuf>,
        #[arg(long, env = "KINKO_DATABASE_URL")]
        database_url: Option<String>,
        /// The audit public key (hex) printed by `kinko init`, as the auditor kept it.
        #[arg(long, conflicts_with = "public_key_file")]
        public_key: Option<String>,
        /// A file holding that public key (hex).
        #[arg(long)]
        public_key_file: Option<PathBuf>,
        /// The chain must reach at least this seq (a head kept outside the system, e.g. from an
        /// inspection report): the only way to see entries cut off at the end.
        #[arg(long, default_value_t = 0)]
        min_seq: u64,
    },
    /// Print entries as JSON lines (oldest first), for the log inspector.
    Export {
        #[arg(long, short, env = "KINKO_CONFIG", conflicts_with = "database_url")]
        config: Option<PathBuf>,
        #[arg(long, env = "KINKO_DATABASE_URL")]
        database_url: Option<String>,
        /// Only entries after this seq.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

async fn open(config: Option<PathBuf>, url: Option<String>) -> Result<(Store, Option<String>)> {
    let (url, pinned) = match (config, url) {
        (Some(c), _) => {
            let config =
                kinko_server::Config::load(&c).with_context(|| format!("loading configuration {}", c.display()))?;
            (config.database_url, config.audit.public_key)
        }
        (None, Some(u)) => (u, None),
        (None, None) => bail!("give --config FILE or --database-url URL"),
    };
    Ok((Store::connect(&url).await?, pinned))
}

pub async fn run(cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::Verify { config, database_url, public_key, public_key_file, min_seq } => {
            let (store, configured) = open(config, database_url).await?;
            let expected = match (public_key, public_key_file) {
                (Some(k), _) => Some(k),
                (None, Some(f)) => {
                    Some(std::fs::read_to_string(&f).with_context(|| format!("--public-key-file {}", f.display()))?)
                }
                (None, None) => configured,
            };
            let pinned = match expected {
                Some(k) => Some(
                    kinko_core::audit::parse_public_key(&k)
                        .context("the expected audit public key is not 64 hex digits of an Ed25519 key")?,
                ),
                None => {
                    eprintln!(
                        "warning: no expected audit public key (--public-key, --public-key-file or [audit] public_key): \
                         trusting the key the chain's genesis pins"
                    );
                    None
                }
            };
            verify(&store, pinned, min_seq).await
        }
        AuditCmd::Export { config, database_url, after } => {
            let (store, _) = open(config, database_url).await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut after = after;
            loop {
                let rows = store.audit_rows(after, AUDIT_PAGE_MAX).await?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                for r in &rows {
                    serde_json::to_writer(&mut out, r)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            Ok(())
        }
    }
}

async fn verify(store: &Store, pinned: Option<ed25519_dalek::VerifyingKey>, min_seq: u64) -> Result<()> {
    let total = store.audit_count().await?;
    let bar = indicatif::ProgressBar::new(total.max(0) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} audit entries verified")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let verified = kinko_server::audit::verify_store(store, pinned, min_seq, |n| bar.set_position(n)).await;
    let verified = match verified {
        Ok(v) => {
            bar.finish_and_clear();
            v
        }
        Err(e) => {
            bar.abandon();
            bail!("{e}");
        }
    };
    println!(
        "{} entries verified; head seq {} hash {}; audit key {}",
        verified.count,
        verified.head_seq,
        hex::encode(verified.head_hash),
        verified.public_key_hex
    );
    Ok(())
}

/// An operator action taken through the command line (key lifecycle transitions and destruction): its
/// audit entry is written before anything is done — no entry, no action — and its outcome after.
pub struct CliAudit {
    sink: kinko_server::audit::AuditSink,
    record: kinko_core::audit::Record,
}

impl CliAudit {
    /// Records the attempt of `action` on `object` by the operator whose key file is `key_file`.
    pub async fn begin(
        config: &kinko_server::Config,
        store: &Store,
        action: &str,
        object: &str,
        key_file: &std::path::Path,
    ) -> Result<CliAudit> {
        use kinko_core::audit::{ActorKind, Record, clip};
        let sink = kinko_server::audit::AuditSink::from_config(store.clone(), config);
        // The file names its operator in the clear; whether it is really theirs is checked by the action.
        let operator = kinko_keys::operator_key::OperatorKeyFile::read(key_file)
            .map(|f| f.operator_id)
            .unwrap_or_else(|_| "unknown (unreadable key file)".into());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let record = Record {
            actor_kind: ActorKind::Operator,
            actor_id: clip(&operator),
            role: "cli".into(),
            terminal: clip(&format!("cli:{}", host.trim())),
            action: clip(action),
            object: clip(object),
            request_digest: Record::digest(object.as_bytes()),
            outcome: "attempt".into(),
        };
        sink.append(record.clone()).await.with_context(|| format!("{action} {object}: nothing was done"))?;
        Ok(CliAudit { sink, record })
    }

    /// Records how it ended; a failure to record is reported, the action having happened already.
    pub async fn finish<T>(mut self, outcome: &Result<T>) {
        self.record.outcome = match outcome {
            Ok(_) => "ok".into(),
            Err(e) => kinko_core::audit::clip(&format!("error: {e:#}")),
        };
        if let Err(e) = self.sink.append(self.record).await {
            eprintln!("warning: the outcome could not be written to the audit trail: {e}");
        }
    }
}
