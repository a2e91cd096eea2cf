//! `kinko`: crypto-asset custody. See README.md for the quick start and the command reference.

mod audit_cli;
mod backup;
mod cold_cli;
mod emergency_cli;
mod keys_cli;
mod operator_cli;
mod ops_cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kinko_keys::shares::{MasterKey, SealConfig, ShareFile};
use kinko_server::Config;
use kinko_server::app;
use kinko_signer::remote::{RemoteError, RemoteSigner};
use kinko_signer::seal::SealStatus;
use kinko_store::Store;

#[derive(Parser)]
#[command(name = "kinko", version, about = "kinko (金庫): crypto-asset custody")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// KEK lifecycle (K4): rotate the KEK, resumable after a crash.
    Kek {
        #[command(subcommand)]
        command: keys_cli::KekCmd,
    },
    /// Key lifecycle (K2, K5, K7): transitions, xpub export, destruction.
    Key {
        #[command(subcommand)]
        command: keys_cli::KeyCmd,
    },
    /// Create the master key (split into custodian share files), the KEK, the master seed, the hot-wallet
    /// key and the deposit xpub. Idempotent. Dev mode needs no share flags (a 1-of-1 dev share is used).
    Init {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        /// Number of custodian shares (N).
        #[arg(long)]
        shares: Option<usize>,
        /// Shares needed to unseal (K).
        #[arg(long)]
        threshold: Option<usize>,
        /// Directory for the share files (created, mode 0700; files are 0600 and never overwritten).
        #[arg(long)]
        share_dir: Option<PathBuf>,
        /// Custodian names, one per share (default custodian-1 … custodian-N).
        #[arg(long = "custodian")]
        custodians: Vec<String>,
        /// NAME=VAR: protect NAME's share with the passphrase in environment variable VAR (argon2id).
        #[arg(long = "passphrase-env")]
        passphrase_env: Vec<String>,
        /// Where the hot-wallet key lives: `software` (derived from the master seed, wrapped by the KEK)
        /// or `pkcs11` (generated non-extractable inside the `[signer.pkcs11]` token, K21).
        #[arg(long, value_enum, default_value_t = HotKeyBackend::Software)]
        hot_key_backend: HotKeyBackend,
        /// The registry's genesis file from `kinko operator keygen --first-admin`: registers the first
        /// administrator (once, while the operator registry is empty) and prints their enrolment token.
        #[arg(long)]
        first_admin: Option<PathBuf>,
    },
    /// Send one custodian's share to the signer process (K of N unseal it).
    Unseal {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        share: PathBuf,
        /// Environment variable holding the share file's passphrase, if it has one.
        #[arg(long)]
        passphrase_env: Option<String>,
    },
    /// Seal the signer process: it drops the KEK and zeroizes every key.
    Seal {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
    },
    /// The signer process.
    Signer {
        #[command(subcommand)]
        command: SignerCmd,
    },
    /// Run the API, deposit detection and the withdrawal pipeline.
    Serve {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
    },
    /// The all-in-one quick start: SQLite, a local anvil (started if none answers), a dev-unsealed signer.
    Dev {
        #[arg(long, default_value = "./kinko-dev")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "http://127.0.0.1:8545")]
        eth_rpc: String,
        /// Seconds between anvil blocks when kinko starts anvil itself.
        #[arg(long, default_value_t = 1)]
        block_time: u64,
    },
    /// The audit trail (L2, L4–L6): verify its chain and signatures, export it as JSON lines.
    Audit {
        #[command(subcommand)]
        command: audit_cli::AuditCmd,
    },
    /// Emergency freeze (K19, S5): stop signing and withdrawals in a scope at once.
    Emergency {
        #[command(subcommand)]
        command: emergency_cli::EmergencyCmd,
    },
    /// Run a balance reconciliation now (L3): on-chain holdings against customer liabilities.
    Reconcile {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
    },
    /// Write an encrypted, integrity-protected backup of the database and the key files (A4, K17).
    Backup(backup::BackupArgs),
    /// Restore a backup into an empty data directory and database, then verify the ledger and audit chain.
    Restore(backup::RestoreArgs),
    /// Ledger commands.
    Ledger {
        #[command(subcommand)]
        command: LedgerCmd,
    },
    /// Print the configuration the dev quick start uses, as TOML: a starting point for your own.
    ConfigExample,
    /// Your operator approval key (generated on your own terminal) and the registry's bootstrap.
    Operator {
        #[command(subcommand)]
        command: operator_cli::OperatorCmd,
    },
    /// The operator API client: enrol, log in, request, approve, execute, inspect, manage the registry.
    Ops(ops_cli::OpsArgs),
    /// Cold storage (K14): export unsigned bundles for `kinko-offline sign`, import signed files.
    Cold {
        #[command(subcommand)]
        command: cold_cli::ColdCmd,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HotKeyBackend {
    Software,
    Pkcs11,
}

#[derive(Subcommand)]
enum SignerCmd {
    /// Run the signer process on its Unix socket; it starts sealed.
    Serve {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
    },
    /// Print the signer's seal status as JSON.
    Status {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Replay the journal: hash chain, sequence, every posting invariant, and stored balances.
    Verify {
        #[arg(long, short, env = "KINKO_CONFIG", conflicts_with = "database_url")]
        config: Option<PathBuf>,
        #[arg(long, env = "KINKO_DATABASE_URL")]
        database_url: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Init {
                config,
                shares,
                threshold,
                share_dir,
                custodians,
                passphrase_env,
                hot_key_backend,
                first_admin,
            } => {
                let config = load_config(&config)?;
                // Checked before anything is created, so a bad genesis file does not leave a half-done init.
                if let Some(path) = &first_admin {
                    operator_cli::verify_genesis(&operator_cli::read_genesis(path)?, kinko_server::clock::now_ms())?;
                }
                let options = InitShares { shares, threshold, share_dir, custodians, passphrase_env, hot_key_backend };
                init(&config, options).await?;
                match first_admin {
                    Some(path) => {
                        let store = Store::connect(&config.database_url).await?;
                        operator_cli::bootstrap(&store, &path, kinko_server::clock::now_ms()).await
                    }
                    None => Ok(()),
                }
            }
            Cmd::Unseal { config, share, passphrase_env } => {
                unseal(&load_config(&config)?, &share, passphrase_env.as_deref()).await
            }
            Cmd::Seal { config } => {
                let remote = RemoteSigner::new(&load_config(&config)?.signer_socket());
                print_signer_reply(remote.seal().await)
            }
            Cmd::Signer { command: SignerCmd::Serve { config } } => signer_serve(load_config(&config)?).await,
            Cmd::Signer { command: SignerCmd::Status { config } } => {
                let remote = RemoteSigner::new(&load_config(&config)?.signer_socket());
                print_signer_reply(remote.status().await)
            }
            Cmd::Serve { config } => serve(load_config(&config)?).await,
            Cmd::Dev { data_dir, listen, eth_rpc, block_time } => dev(data_dir, listen, eth_rpc, block_time).await,
            Cmd::Kek { command } => keys_cli::run_kek(command).await,
            Cmd::Key { command } => keys_cli::run_key(command).await,
            Cmd::Operator { command } => operator_cli::run(command).await,
            Cmd::Ops(args) => ops_cli::run(args).await,
            Cmd::Cold { command } => cold_cli::run(command).await,
            Cmd::Audit { command } => audit_cli::run(command).await,
            Cmd::Emergency { command } => emergency_cli::run(command).await,
            Cmd::Reconcile { config } => emergency_cli::reconcile(config).await,
            Cmd::Backup(args) => backup::backup(args).await,
            Cmd::Restore(args) => backup::restore(args).await,
            Cmd::Ledger { command: LedgerCmd::Verify { config, database_url } } => {
                let url = match (config, database_url) {
                    (Some(c), _) => load_config(&c)?.database_url,
                    (None, Some(u)) => u,
                    (None, None) => bail!("give --config FILE or --database-url URL"),
                };
                ledger_verify(&url).await
            }
            Cmd::ConfigExample => {
                let c = Config::dev_default(
                    "./kinko-dev".into(),
                    "127.0.0.1:8080".parse()?,
                    "http://127.0.0.1:8545".into(),
                );
                print!("{}", toml::to_string(&c)?);
                Ok(())
            }
        }
    })
}

fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).with_context(|| format!("loading configuration {}", path.display()))
}

fn warn_if_dev(config: &Config) {
    if config.dev {
        eprintln!(
            "\n!!! WARNING: DEV MODE. The signer is unsealed automatically from a master-key share stored in\n\
             !!! {} next to the database. Anyone who can read that directory can sign.\n\
             !!! Never hold real funds with this set-up.\n",
            config.data_dir.join(app::DEV_SHARE_FILE).display()
        );
        if let Some(dir) = &config.notices.mail_dir {
            eprintln!(
                "!!! DEV MODE: e-mail notices (withdrawal confirmation tokens included) are NOT sent: they are\n\
                 !!! written as files to {}.\n",
                dir.display()
            );
        }
        if config.address_book.cooling_off_ms == 0 {
            eprintln!(
                "!!! DEV MODE: address_book.cooling_off_ms = 0, so a newly saved withdrawal destination is usable\n\
                 !!! at once (the production default is 24 hours).\n"
            );
        }
    }
}

struct InitShares {
    shares: Option<usize>,
    threshold: Option<usize>,
    share_dir: Option<PathBuf>,
    custodians: Vec<String>,
    passphrase_env: Vec<String>,
    hot_key_backend: HotKeyBackend,
}

async fn init(config: &Config, options: InitShares) -> Result<()> {
    let hot_in_token = match options.hot_key_backend {
        HotKeyBackend::Software => None,
        HotKeyBackend::Pkcs11 => {
            Some(config.signer.pkcs11.as_ref().context("--hot-key-backend pkcs11 needs a [signer.pkcs11] section")?)
        }
    };
    // Before any share file is written: without the PIN the token step would fail after them.
    if let Some(p) = hot_in_token {
        drop(p.login()?);
    }
    let store = Store::connect(&config.database_url).await?;
    // The audit key lives beside the database, never in it (L6); its public key goes to the auditor.
    let (audit_public_key, created) = kinko_server::audit::init(&store, config).await?;
    eprintln!(
        "audit key {}: {audit_public_key}\n  keep this public key outside kinko: `kinko audit verify --public-key` checks the trail against it",
        if created { "created" } else { "in use" }
    );
    if config.dev && options.shares.is_none() {
        warn_if_dev(config);
        let dev = app::load_kek(config)?;
        let custody = app::init_with(&store, &dev, hot_in_token).await?;
        println!("{}", serde_json::to_string_pretty(&custody)?);
        return Ok(());
    }
    if let Some(custody) = app::custody(&store).await? {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"custody": custody, "share_files": []}))?);
        return Ok(());
    }
    let (Some(n), Some(k), Some(dir)) = (options.shares, options.threshold, options.share_dir) else {
        bail!("give --shares N --threshold K --share-dir DIR (the master key is split among N custodians)");
    };
    let custodians: Vec<String> = if options.custodians.is_empty() {
        (1..=n).map(|i| format!("custodian-{i}")).collect()
    } else {
        options.custodians
    };
    if custodians.len() != n {
        bail!("--custodian: {} names given for --shares {n}", custodians.len());
    }
    let mut passphrases: std::collections::BTreeMap<String, zeroize::Zeroizing<String>> = Default::default();
    for spec in &options.passphrase_env {
        let (name, var) = spec.split_once('=').context("--passphrase-env takes NAME=VAR")?;
        if !custodians.iter().any(|c| c == name) {
            bail!("--passphrase-env: no custodian named {name:?}");
        }
        let value = std::env::var(var).with_context(|| format!("--passphrase-env: environment variable {var}"))?;
        if value.is_empty() {
            bail!("--passphrase-env: {var} is empty");
        }
        passphrases.insert(name.to_string(), zeroize::Zeroizing::new(value));
    }
    let mk = MasterKey::generate();
    let shares = kinko_keys::shares::split(&mk, k, &custodians)?;
    let seal_config = SealConfig::new(&mk, k, &shares);
    create_private_dir(&dir)?;
    let paths: Vec<PathBuf> =
        shares.iter().map(|s| dir.join(format!("share-{}-{}.json", s.index, s.custodian))).collect();
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!("{} exists: share files are never overwritten", p.display());
    }
    // Files first: if the database step fails, the operator deletes them and runs init again; the other
    // order could leave a seal nobody holds shares for.
    for (share, path) in shares.iter().zip(&paths) {
        let passphrase = passphrases.get(&share.custodian).map(|p| p.as_str());
        share.to_file(passphrase)?.write(path)?;
    }
    let custody = app::init_sealed_with(&store, &mk, &seal_config, hot_in_token).await?;
    drop(mk);
    let files: Vec<serde_json::Value> = shares
        .iter()
        .zip(&paths)
        .map(|(s, p)| {
            serde_json::json!({
                "custodian": s.custodian,
                "index": s.index,
                "path": p.display().to_string(),
                "passphrase": passphrases.contains_key(&s.custodian),
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "custody": custody,
            "threshold": k,
            "shares": n,
            "share_files": files,
        }))?
    );
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

async fn unseal(config: &Config, share: &Path, passphrase_env: Option<&str>) -> Result<()> {
    let file = ShareFile::read(share)?;
    let passphrase = match passphrase_env {
        Some(var) => {
            Some(zeroize::Zeroizing::new(std::env::var(var).with_context(|| format!("environment variable {var}"))?))
        }
        None => None,
    };
    // Decrypted here, on the custodian's side; only the raw share travels, over the 0600 socket.
    let raw = file.open(passphrase.as_ref().map(|p| p.as_str()))?;
    let remote = RemoteSigner::new(&config.signer_socket());
    print_signer_reply(remote.unseal(&raw).await)
}

/// Prints the signer's answer as JSON; a refusal or an unreachable signer exits with status 1.
fn print_signer_reply(reply: std::result::Result<SealStatus, RemoteError>) -> Result<()> {
    match reply {
        Ok(status) => {
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Err(e) => {
            let (kind, message) = match &e {
                RemoteError::Remote(w) => (w.kind.clone(), w.message.clone()),
                RemoteError::Unreachable { .. } => ("unreachable".to_string(), e.to_string()),
                RemoteError::Protocol(_) => ("protocol".to_string(), e.to_string()),
            };
            println!("{}", serde_json::json!({"error": {"kind": kind, "message": message}}));
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}

async fn signer_serve(config: Config) -> Result<()> {
    let store = Store::connect(&config.database_url).await?;
    let service = std::sync::Arc::new(
        kinko_signer::server::SignerService::new(store, vec![app::HOT_KEY_ID.to_string()])
            .await
            .context("starting the signer")?
            .with_routine_policy(config.signer.routine_policy()?)
            .with_pkcs11(config.signer.pkcs11.as_ref().map(|p| p.login()).transpose()?)
            .with_quorum(config.signer.signing_quorum()?)
            .with_cold_wallets(config.signer.cold_wallets.clone())
            .with_deposit_top_up_cap_wei(config.signer.deposit_top_up_cap_wei)
            // Bitcoin (issue 9): the keys `[signer.bitcoin]` names, derived from the master seed at each unseal.
            .with_bitcoin(config.signer.bitcoin_keys()?)
            // K15: the Safes each key serves, from the signer's own configuration file.
            .with_safes(config.signer.safes_on(config.ethereum.chain_id)?)
            // K22: the signer's own token map, from the signer's own configuration file.
            .with_evm_policy(
                config.ethereum.chain_id,
                kinko_server::erc20::TokenSet::from_config(&config.ethereum)?.signer_policy()?,
            )
            .with_unfreeze_approvals(config.emergency.unfreeze_approvals)?
            .with_evacuation_approvals(config.emergency.evacuation_approvals)?,
    );
    let path = config.signer_socket();
    let listener =
        kinko_signer::server::bind(&path).with_context(|| format!("binding the signer socket {}", path.display()))?;
    eprintln!("kinko signer listening on {} (sealed: unseal with `kinko unseal --share FILE`)", path.display());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(kinko_signer::server::serve(service.clone(), listener, path, stop_rx));
    shutdown_signal().await;
    let _ = stop.send(true);
    service.seal().await;
    let _ = server.await;
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    warn_if_dev(&config);
    let dev = if config.signer.mode == kinko_server::config::SignerMode::Local {
        Some(app::load_kek(&config)?)
    } else {
        None
    };
    let running = app::start_with(config, dev.as_ref()).await?;
    drop(dev);
    tracing::info!(listen = %running.listen, hot_wallet = %running.state.hot_wallet, "kinko is serving");
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

async fn dev(data_dir: PathBuf, listen: SocketAddr, eth_rpc: String, block_time: u64) -> Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let config = Config::dev_default(data_dir.clone(), listen, eth_rpc.clone());
    config.validate()?;
    let config_path = data_dir.join("kinko.toml");
    std::fs::write(&config_path, toml::to_string(&config)?)?;
    warn_if_dev(&config);

    let mut anvil = None;
    if !node_answers(&eth_rpc).await {
        let port = url_port(&eth_rpc).context("--eth-rpc must name a port, e.g. http://127.0.0.1:8545")?;
        anvil = Some(spawn_anvil(port, block_time, &data_dir)?);
        for _ in 0..100 {
            if node_answers(&eth_rpc).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !node_answers(&eth_rpc).await {
            bail!("started anvil but it does not answer at {eth_rpc}");
        }
        eprintln!(
            "started anvil at {eth_rpc} (a block every {block_time}s; log: {})",
            data_dir.join("anvil.log").display()
        );
    } else {
        eprintln!("using the Ethereum node at {eth_rpc}");
    }

    let result = async {
        let dev = app::load_kek(&config)?;
        let store = Store::connect(&config.database_url).await?;
        let custody = app::init(&store, &dev).await?;
        app::dev_fund(&store, &eth_rpc, &custody.hot_wallet).await?;
        store.close().await;
        let running = app::start(config, &dev).await?;
        drop(dev);
        println!("kinko dev is running");
        println!("  API:          http://{}", running.listen);
        println!("  OpenAPI:      http://{}/openapi.json", running.listen);
        println!("  Ethereum RPC: {eth_rpc} (chain id 31337)");
        println!("  database:     {}", data_dir.join("kinko.db").display());
        println!("  config:       {}", config_path.display());
        println!("  hot wallet:   {} (funded with 1000 test ETH, recorded as custodian equity)", custody.hot_wallet);
        println!("  deposit xpub: {}", custody.deposit_xpub);
        println!("Press Ctrl-C to stop.");
        shutdown_signal().await;
        running.stop().await;
        anyhow::Ok(())
    }
    .await;
    if let Some(mut child) = anvil {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

async fn node_answers(url: &str) -> bool {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []});
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build();
    match client {
        Ok(c) => c.post(url).json(&body).send().await.is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    }
}

fn url_port(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1)?;
    let host_port = rest.split('/').next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// Finds anvil: `KINKO_ANVIL`, then `node_modules` in the current directory or the executable's
/// ancestors (the repository's `npm install` puts it there), then `PATH`.
fn find_anvil() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KINKO_ANVIL") {
        return Some(p.into());
    }
    let rel = Path::new("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    let mut roots = vec![std::env::current_dir().ok()?];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().map(Path::to_path_buf));
    }
    for root in roots {
        for dir in root.ancestors() {
            let candidate = dir.join(rel);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("anvil")).find(|p| p.is_file()))
}

fn spawn_anvil(port: u16, block_time: u64, data_dir: &Path) -> Result<Child> {
    let anvil = find_anvil().context(
        "no Ethereum node answers and anvil was not found: run `npm install` in the repository or set KINKO_ANVIL",
    )?;
    let log = std::fs::File::create(data_dir.join("anvil.log"))?;
    Command::new(anvil)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--block-time", &block_time.to_string()])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting anvil")
}

async fn ledger_verify(url: &str) -> Result<()> {
    let store = Store::connect(url).await?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} verifying ledger: {pos} entries replayed")
            .expect("static template"),
    );
    let result = store.verify_ledger(|seq| bar.set_position(seq)).await;
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"ok": true, "report": report}))?);
            Ok(())
        }
        Err(e) => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"ok": false, "error": e.to_string()}))?);
            std::process::exit(1);
        }
    }
}
