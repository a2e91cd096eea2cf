//! kinko's benchmarks. Each one prints a table with a ratio against a named baseline measured in the same
//! run on the same machine, so numbers from different machines compare through the ratio.
//!
//! - `ledger`: durable ledger postings per second (each a committed `Store::post`) on SQLite and on
//!   PostgreSQL, beside pgbench's TPC-B-like transactions per second on the same PostgreSQL server.
//! - `derive`: public deposit-address derivations per second beside raw BIP32 public derivation.
//! - `scan`: deposit scanning of M blocks with 1,000,000 watched addresses beside a raw fetch of the same
//!   blocks from the same node, with RSS.
//! - `signer`: EIP-1559 signatures per second through the full signer path beside raw k256 signing;
//!   with `--socket` also over the signer process's socket.
//! - `ed25519`: Ed25519 signatures per second over the signer's socket beside OpenBao's transit engine.
//! - `btc`: BIP84 address derivations/s beside raw BIP32 public derivation, and Bitcoin withdrawal PSBT
//!   signatures/s through the full signer path beside raw libsecp256k1 ECDSA signing.
//! - `login`: customer logins per second through the HTTP API beside raw argon2id verifications per second
//!   with the same parameters.
//!
//! Run through `scripts/bench`, which builds in release mode and starts a temporary PostgreSQL cluster.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bitcoin::bip32::{ChildNumber, Xpub};
use bitcoin::secp256k1::Secp256k1;
use clap::{Parser, Subcommand};
use kinko_core::ledger::postings;
use kinko_core::{Amount, AssetCode};
use kinko_store::Store;
use sqlx::Connection;

mod btc;
mod login;
mod scan;
mod signer;
mod signer_ed25519;
mod signer_socket;

#[derive(Parser)]
#[command(name = "kinko-bench", about = "kinko benchmarks (each printed with a ratio to a baseline)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable ledger transfers/s on SQLite and PostgreSQL, beside pgbench TPC-B tps.
    Ledger {
        /// Admin URL of a PostgreSQL server to use (scratch databases are created and dropped on it);
        /// without it only SQLite is measured.
        #[arg(long, env = "KINKO_BENCH_POSTGRES_URL")]
        postgres_url: Option<String>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The pgbench binary (default: from PATH, else /usr/lib/postgresql/*/bin/pgbench).
        #[arg(long)]
        pgbench: Option<PathBuf>,
    },
    /// Public deposit-address derivations/s beside raw BIP32 public derivation.
    Derive {
        #[arg(long, default_value_t = 20_000)]
        count: u32,
    },
    /// Deposit scanning of M blocks with 1,000,000 watched addresses beside a raw fetch of the same blocks
    /// from the same node (a local anvil), with RSS.
    Scan(scan::ScanArgs),
    /// EIP-1559 signatures/s through the full signer path (SQLite and in-memory journals) beside raw k256.
    Signer(signer::SignerArgs),
    /// Ed25519 signatures/s over the signer's socket beside OpenBao's transit engine (file audit device).
    Ed25519(signer_ed25519::Ed25519Args),
    /// Customer logins/s through the HTTP API beside raw argon2id verifications/s (same parameters).
    Login(login::LoginArgs),
    /// BIP84 address derivations/s beside raw BIP32, and PSBT signatures/s through the signer beside raw ECDSA.
    Btc(btc::BtcArgs),
}

/// Concurrent posting tasks in the second PostgreSQL measurement, matching `pgbench -c 4`.
const CLIENTS_CONCURRENT: usize = 4;
/// Bound on postings per measurement, whatever the duration.
const POSTINGS_MAX: u64 = 10_000_000;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Ledger { postgres_url, seconds, pgbench } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(ledger(postgres_url, Duration::from_secs(seconds.max(1)), pgbench))
        }
        Cmd::Derive { count } => derive(count.max(1)),
        Cmd::Scan(args) => scan::run(args),
        Cmd::Signer(args) => signer::run(args),
        Cmd::Ed25519(args) => signer_ed25519::run(args),
        Cmd::Login(args) => login::run(args),
        Cmd::Btc(args) => btc::run(args),
    }
}

struct Row {
    name: String,
    ops: u64,
    elapsed: Duration,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn print_table(title: &str, unit: &str, rows: &[Row], baseline: &str) {
    let base = rows.iter().find(|r| r.name == baseline).map(Row::per_second);
    println!();
    println!("{title}");
    println!("{:<58} {:>10} {:>9} {:>14} {:>10}", "measurement", "ops", "seconds", unit, "ratio");
    for r in rows {
        let ratio = base.map_or("-".to_string(), |b| format!("{:.3}", r.per_second() / b));
        println!(
            "{:<58} {:>10} {:>9.2} {:>14.1} {:>10}",
            r.name,
            r.ops,
            r.elapsed.as_secs_f64(),
            r.per_second(),
            ratio
        );
    }
    println!("(ratio = {unit} / {unit} of \"{baseline}\")");
}

// ---------------------------------------------------------------------------------------------------
// ledger

async fn ledger(postgres_url: Option<String>, duration: Duration, pgbench: Option<PathBuf>) -> Result<()> {
    let mut rows = Vec::new();
    let dir = tempfile::tempdir()?;
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = Store::connect(&sqlite_url).await?;
    rows.push(ledger_run("kinko ledger, SQLite (WAL, synchronous=FULL), 1 client", &store, 1, duration).await?);
    store.close().await;

    let mut baseline = "kinko ledger, SQLite (WAL, synchronous=FULL), 1 client".to_string();
    if let Some(admin) = postgres_url {
        let pgbench = pgbench.map_or_else(find_pgbench, Ok)?;
        let db = ScratchDb::create(&admin, "kinko_bench").await?;
        let store = Store::connect(&db.url).await?;
        rows.push(ledger_run("kinko ledger, PostgreSQL, 1 client", &store, 1, duration).await?);
        rows.push(
            ledger_run(
                &format!("kinko ledger, PostgreSQL, {CLIENTS_CONCURRENT} clients"),
                &store,
                CLIENTS_CONCURRENT,
                duration,
            )
            .await?,
        );
        store.close().await;
        db.drop_now().await?;

        let db = ScratchDb::create(&admin, "kinko_pgbench").await?;
        let target = url::Url::parse(&db.url)?;
        run_pgbench(&pgbench, &target, &["-i", "-q", "-s", "1"])?;
        for clients in [1usize, CLIENTS_CONCURRENT] {
            let secs = duration.as_secs().to_string();
            let c = clients.to_string();
            let out = run_pgbench(&pgbench, &target, &["-T", &secs, "-c", &c, "-j", &c, "-n"])?;
            let tps = parse_tps(&out).with_context(|| format!("no tps in pgbench output:\n{out}"))?;
            let transactions = parse_transactions(&out).unwrap_or((tps * duration.as_secs_f64()) as u64);
            rows.push(Row {
                name: format!("pgbench TPC-B (scale 1), {clients} client{}", if clients == 1 { "" } else { "s" }),
                ops: transactions,
                elapsed: Duration::from_secs_f64(transactions as f64 / tps),
            });
        }
        db.drop_now().await?;
        baseline = "pgbench TPC-B (scale 1), 1 client".to_string();
    } else {
        println!("(no --postgres-url: PostgreSQL and pgbench not measured)");
    }
    print_table(
        "Durable ledger transfers (each a committed withdrawal-hold posting with a hash-chained journal entry)",
        "per second",
        &rows,
        &baseline,
    );
    Ok(())
}

/// Posts withdrawal holds of 1 base unit for as long as `duration`, from `clients` concurrent tasks, each
/// a committed transaction. The customer is funded first with a deposit large enough for every hold.
async fn ledger_run(name: &str, store: &Store, clients: usize, duration: Duration) -> Result<Row> {
    let eth: AssetCode = "ETH".parse()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let customer = format!("bench{}", &run[..12]);
    let big = Amount::from_base_units(u128::from(u64::MAX));
    let deposit = format!("{run}-funding");
    store.post(postings::deposit_detected(&deposit, &customer, "0xbench", &eth, big), 0).await?;
    store.post(postings::deposit_confirmed(&deposit, &customer, &eth, big), 0).await?;

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (store, eth, customer, run) = (store.clone(), eth.clone(), customer.clone(), run.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < duration && n < POSTINGS_MAX {
                let id = format!("{run}-{client}-{n}");
                store
                    .post(postings::withdrawal_hold(&id, &customer, &eth, Amount::from_base_units(1)), n as i64)
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut ops = 0;
    while let Some(done) = tasks.join_next().await {
        ops += done??;
    }
    let row = Row { name: name.to_string(), ops, elapsed: start.elapsed() };
    eprintln!("  {name}: {ops} postings, {:.1}/s", row.per_second());
    Ok(row)
}

/// A database created for one measurement and dropped after it.
struct ScratchDb {
    admin: String,
    name: String,
    url: String,
}

impl ScratchDb {
    async fn create(admin: &str, prefix: &str) -> Result<ScratchDb> {
        let name = format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut conn = sqlx::PgConnection::connect(admin).await.context("connect to --postgres-url")?;
        // The name is a fixed prefix and hex digits, made here.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
        conn.close().await?;
        let mut url = url::Url::parse(admin)?;
        url.set_path(&format!("/{name}"));
        Ok(ScratchDb { admin: admin.to_string(), name, url: url.to_string() })
    }

    async fn drop_now(self) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }
}

fn find_pgbench() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pgbench").arg("--version").output()
        && out.status.success()
    {
        return Ok(PathBuf::from("pgbench"));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().context("pgbench not found (Debian: apt-get install postgresql-client-15), or pass --pgbench")
}

fn run_pgbench(pgbench: &Path, target: &url::Url, args: &[&str]) -> Result<String> {
    let host = target.host_str().unwrap_or("127.0.0.1");
    let port = target.port().unwrap_or(5432).to_string();
    let user = if target.username().is_empty() { "postgres" } else { target.username() };
    let db = target.path().trim_start_matches('/');
    let out = Command::new(pgbench)
        .args(["-h", host, "-p", &port, "-U", user])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", target.password().unwrap_or(""))
        .output()
        .with_context(|| format!("run {}", pgbench.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("pgbench {args:?} failed:\n{text}");
    }
    Ok(text)
}

/// pgbench prints e.g. `tps = 1234.567890 (without initial connection time)`.
fn parse_tps(out: &str) -> Option<f64> {
    out.lines().find_map(|l| l.trim().strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
}

/// pgbench prints e.g. `number of transactions actually processed: 12345`.
fn parse_transactions(out: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        l.trim().strip_prefix("number of transactions actually processed: ")?.split('/').next()?.trim().parse().ok()
    })
}

// ---------------------------------------------------------------------------------------------------
// derive

/// The well-known test mnemonic: the benchmark needs a key, not a secret.
const TEST_MNEMONIC: &str = "test test test test test test test test test test test junk";

fn derive(count: u32) -> Result<()> {
    let seed = bip39::Mnemonic::parse(TEST_MNEMONIC)?.to_seed("");
    let master = kinko_keys::hd::master_from_seed(&seed)?;
    let xpub = kinko_keys::hd::evm_deposit_xpub(&master)?;
    let secp = Secp256k1::verification_only();

    let kinko = time(count, |i| {
        black_box(kinko_keys::hd::evm_deposit_address(&xpub, i).expect("non-hardened index"));
    });
    let bip32 = time(count, |i| {
        let path = [ChildNumber::Normal { index: 0 }, ChildNumber::Normal { index: i }];
        black_box(xpub.derive_pub(&secp, &path).expect("non-hardened index"));
    });
    // The floor: one BIP32 step from a cached `xpub/0`, without keccak or address formatting.
    let change = xpub.derive_pub(&secp, &[ChildNumber::Normal { index: 0 }])?;
    let one_step = time(count, |i| {
        black_box(Xpub::ckd_pub(&change, &secp, ChildNumber::Normal { index: i }).expect("non-hardened index"));
    });
    let rows = vec![
        Row { name: "kinko evm_deposit_address (xpub/0/i + keccak)".into(), ops: count.into(), elapsed: kinko },
        Row { name: "bip32 derive_pub xpub/0/i (no keccak)".into(), ops: count.into(), elapsed: bip32 },
        Row { name: "bip32 ckd_pub from cached xpub/0 (one step)".into(), ops: count.into(), elapsed: one_step },
    ];
    print_table("Public deposit-address derivations", "per second", &rows, "bip32 derive_pub xpub/0/i (no keccak)");
    Ok(())
}

fn time(count: u32, mut f: impl FnMut(u32)) -> Duration {
    let start = Instant::now();
    for i in 0..count {
        f(i);
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Benchmark tooling (issue #2 benchmarks): the pgbench baseline is read correctly.
    #[test]
    fn pgbench_output_is_parsed() {
        let out = "number of transactions actually processed: 4242\nlatency average = 2.3 ms\ntps = 424.251000 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(424.251));
        assert_eq!(parse_transactions(out), Some(4242));
        assert_eq!(parse_tps("nothing"), None);
    }

    /// Benchmark tooling (issue #2 benchmarks): the CLI definition is consistent.
    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
