//! `kinko kek …` and `kinko key …`: the key lifecycles from the command line (K2, K4, K5, K7, K10).
//!
//! KEK rotation needs the old and the new KEK in memory. Both are wrapped by the master key (MK), so the
//! command reconstructs the MK from custodian shares (`--share FILE`, repeated; passphrases from
//! `KINKO_SHARE_PASSPHRASE`), exactly as unsealing does. [`KekSource`] is the seam where the unsealed
//! signer process will hand over instead.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use kinko_core::key_lifecycle::Attribution;
use kinko_keys::kek::Kek;
use kinko_keys::shares::{MasterKey, ShareFile};
use kinko_server::Config;
use kinko_signer::seal::{self, SealState, SubmitOutcome};
use kinko_store::Store;
use kinko_store::kek_rotation::{REWRAP_BATCH_KEYS_DEFAULT, Rewrapper, RotationProgress};
use kinko_store::key_lifecycle::SUBJECT_KEY;
use kinko_store::seal_records::KekRecord;

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
    /// Move a key along its lifecycle (Fig 5-2 for signing keys, Fig 5-4 for the master seed).
    Transition {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: String,
    },
    /// A key's state and its recorded transitions, as JSON.
    Show {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        id: String,
    },
    /// Destroy a key for good (K7, K10). Refused while its address holds funds or received any within
    /// the retention period.
    Destroy {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        id: String,
        /// Repeat the key id to confirm.
        #[arg(long)]
        confirm: String,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: String,
        #[arg(long, default_value_t = RETENTION_DAYS_DEFAULT)]
        retention_days: u32,
    },
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
        KeyCmd::Transition { config, id, to, actor, reason } => {
            let config = load_config(&config)?;
            let store = Store::connect(&config.database_url).await?;
            let why = Attribution::new(actor, reason)?;
            let record = store.transition_key(&id, None, &to, &why, now_ms()).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
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
        KeyCmd::Destroy { config, id, confirm, actor, reason, retention_days } => {
            if confirm != id {
                bail!("--confirm must repeat the key id exactly ({id:?}): destruction cannot be undone");
            }
            let config = load_config(&config)?;
            let store = Store::connect(&config.database_url).await?;
            let why = Attribution::new(actor, reason)?;
            let rpc = kinko_chain::evm::rpc::EvmRpc::new(&config.ethereum.rpc_url)?;
            let record = destroy_key(&store, &rpc, &id, retention_days, &why, now_ms()).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
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
