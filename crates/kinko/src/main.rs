//! `kinko`: crypto-asset custody. See README.md for the quick start and the command reference.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use kinko_server::Config;
use kinko_server::app;
use kinko_store::Store;

#[derive(Parser)]
#[command(name = "kinko", version, about = "kinko (金庫): crypto-asset custody")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the master seed, the hot-wallet key (wrapped by the KEK) and the deposit xpub. Idempotent.
    Init {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
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
    /// Ledger commands.
    Ledger {
        #[command(subcommand)]
        command: LedgerCmd,
    },
    /// Print the configuration the dev quick start uses, as TOML: a starting point for your own.
    ConfigExample,
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
            Cmd::Init { config } => init(&load_config(&config)?).await,
            Cmd::Serve { config } => serve(load_config(&config)?).await,
            Cmd::Dev { data_dir, listen, eth_rpc, block_time } => dev(data_dir, listen, eth_rpc, block_time).await,
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
            "\n!!! WARNING: DEV MODE. The signer is unsealed automatically from a key-encryption key stored in\n\
             !!! {} next to the database. Anyone who can read that directory can sign.\n\
             !!! Never hold real funds with this set-up.\n",
            config.data_dir.join(app::DEV_KEK_FILE).display()
        );
    }
}

async fn init(config: &Config) -> Result<()> {
    warn_if_dev(config);
    let kek = app::load_kek(config)?;
    let store = Store::connect(&config.database_url).await?;
    let custody = app::init(&store, &kek).await?;
    println!("{}", serde_json::to_string_pretty(&custody)?);
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    warn_if_dev(&config);
    let kek = app::load_kek(&config)?;
    let running = app::start(config, &kek).await?;
    drop(kek);
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
        let kek = app::load_kek(&config)?;
        let store = Store::connect(&config.database_url).await?;
        let custody = app::init(&store, &kek).await?;
        app::dev_fund(&store, &eth_rpc, &custody.hot_wallet).await?;
        store.close().await;
        let running = app::start(config, &kek).await?;
        drop(kek);
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
