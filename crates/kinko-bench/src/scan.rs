//! `kinko-bench scan`: deposit scanning of M blocks with a large watched-address set (default
//! 1,000,000) beside a raw fetch of the same blocks from the same node, with the process's RSS.
//!
//! The chain is a fresh local anvil: M blocks, each with the same number of native ETH transfers from
//! anvil's unlocked default accounts; every `--deposit-every`-th transfer pays a watched address, the
//! rest pay addresses nobody watches. The watched set lives in a SQLite store (`customers` +
//! `deposit_addresses`), written by batched INSERTs before anything is measured.
//!
//! Measured, in this order, against the same node and the same blocks:
//! 1. raw fetch: `EvmRpc::block(n)` for every block (what any scanner must pay);
//! 2. loading the watched set (`WatchedSet::refresh` from empty), timed and its RSS reported apart;
//! 3. kinko scanning: the deposit watcher's own loop body (`WatchedSet::refresh` + `scan_with`, exactly
//!    what `DepositWatcher::scan` does) from an empty block window until the last block is recorded,
//!    so every block is written to `chain_blocks` and every deposit to `deposits` and the ledger.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use alloy_primitives::{Address, keccak256};
use anyhow::{Context, Result, bail, ensure};
use kinko_chain::anvil::Anvil;
use kinko_chain::evm::address::to_lower_hex;
use kinko_chain::evm::rpc::EvmRpc;
use kinko_core::AssetCode;
use kinko_server::app::ETH_CHAIN;
use kinko_server::watcher::{BLOCKS_PER_SCAN_MAX, ScanReport, WatchedSet, scan_with};
use kinko_store::Store;
use serde_json::json;

use super::{Row, print_table};

#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// Watched deposit addresses in the store.
    #[arg(long, default_value_t = 1_000_000)]
    watched: u32,
    /// Blocks to create and scan (M).
    #[arg(long, default_value_t = 200)]
    blocks: u64,
    /// Native ETH transfers in each block.
    #[arg(long, default_value_t = 20)]
    txs_per_block: u32,
    /// Every n-th transfer pays a watched address (a deposit); the others pay unwatched addresses.
    #[arg(long, default_value_t = 10)]
    deposit_every: u32,
    /// Confirmations before a deposit is credited (kinko's configuration default is 3).
    #[arg(long, default_value_t = 3)]
    confirmations: u64,
}

/// Rows per multi-row INSERT statement in the setup.
const INSERT_ROWS_PER_STATEMENT: usize = 1_000;
/// Rows per setup transaction: a few transactions for a million rows keeps the setup fast without one
/// giant WAL.
const INSERT_ROWS_PER_TX: usize = 200_000;
/// Spacing of the watched addresses' `created_at_ms`, so they look created over months as in
/// production. The watcher re-reads addresses created within `ADDRESS_RELOAD_SLACK_MS` of the newest
/// on every refresh: a million rows stamped in the same minute would be re-read on every scan, which
/// is not the steady state this benchmark measures.
const ADDRESS_SPACING_MS: i64 = 10_000;
/// Bound on the setup's block creation and on the scan loop.
const BLOCKS_MAX: u64 = 100_000;
const TXS_PER_BLOCK_MAX: u32 = 1_000;
/// A prime stride, so deposits spread over the whole watched set instead of its first rows.
const WATCHED_STRIDE: u64 = 7_919;
/// The value of the first transfer; each next one adds one wei, so every transfer differs.
const TRANSFER_BASE_WEI: u128 = 1_000_000_000_000;

pub fn run(args: ScanArgs) -> Result<()> {
    ensure!(args.watched >= 1, "--watched must be at least 1");
    ensure!((1..=BLOCKS_MAX).contains(&args.blocks), "--blocks must be between 1 and {BLOCKS_MAX}");
    ensure!(
        (1..=TXS_PER_BLOCK_MAX).contains(&args.txs_per_block),
        "--txs-per-block must be between 1 and {TXS_PER_BLOCK_MAX}"
    );
    ensure!(args.deposit_every >= 1, "--deposit-every must be at least 1");
    ensure!(
        (1..=kinko_core::reorg::REORG_DEPTH_MAX).contains(&args.confirmations),
        "--confirmations must be between 1 and the re-org window ({})",
        kinko_core::reorg::REORG_DEPTH_MAX
    );
    tokio::runtime::Runtime::new()?.block_on(scan(args))
}

/// The i-th watched address: spread over the address space like real derived addresses.
fn watched_address(i: u64) -> Address {
    Address::from_slice(&keccak256([b"kinko-bench-watched".as_slice(), &i.to_be_bytes()].concat())[12..])
}

/// An address nobody watches, for the transfers that are not deposits.
fn outside_address(k: u64) -> Address {
    Address::from_slice(&keccak256([b"kinko-bench-outside".as_slice(), &k.to_be_bytes()].concat())[12..])
}

async fn scan(args: ScanArgs) -> Result<()> {
    let chain = ETH_CHAIN;
    let asset: AssetCode = "ETH".parse()?;

    // ---- setup (not measured) ------------------------------------------------------------------
    let setup_start = Instant::now();
    let watched: Vec<Address> = (0..u64::from(args.watched)).map(watched_address).collect();

    let anvil = Anvil::spawn(&[]).await.context("start anvil")?;
    let (first_block, deposits_sent) = make_blocks(&anvil, &args, &watched).await?;
    let last_block = anvil.block_number().await?;
    ensure!(
        last_block + 1 - first_block == args.blocks,
        "anvil made {} blocks, not {}",
        last_block + 1 - first_block,
        args.blocks
    );
    let chain_elapsed = setup_start.elapsed();
    eprintln!(
        "  setup: {} blocks x {} transfers ({deposits_sent} to watched addresses) in {:.1}s",
        args.blocks,
        args.txs_per_block,
        chain_elapsed.as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("kinko.db").display());
    let store_start = Instant::now();
    {
        let store = Store::connect(&url).await?;
        insert_watched(&store, chain, &asset, &watched).await?;
        store.close().await;
    }
    let store_elapsed = store_start.elapsed();
    eprintln!("  setup: {} watched addresses into SQLite in {:.1}s", watched.len(), store_elapsed.as_secs_f64());
    drop(watched);

    // ---- measurements --------------------------------------------------------------------------
    // Connected first, so its pool and SQLite caches are not counted as the watched set's memory.
    let store = Store::connect(&url).await?;
    // The peak so far is the setup's; start the peak afresh so VmHWM below belongs to the measurement.
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = Memory::now();

    let rpc = EvmRpc::new(anvil.url())?;
    let raw_start = Instant::now();
    let mut raw_transfers = 0usize;
    for n in first_block..=last_block {
        let block = rpc.block(n).await?.with_context(|| format!("node has no block {n}"))?;
        raw_transfers += black_box(block).transfers.len();
    }
    let raw_elapsed = raw_start.elapsed();
    let transfers_sent = args.blocks * u64::from(args.txs_per_block);
    ensure!(raw_transfers as u64 == transfers_sent, "node holds {raw_transfers} transfers, {transfers_sent} were sent");
    eprintln!("  raw fetch: {} blocks in {:.2}s", args.blocks, raw_elapsed.as_secs_f64());

    let load_start = Instant::now();
    let mut set = WatchedSet::default();
    set.refresh(&store, chain).await?;
    let load_elapsed = load_start.elapsed();
    ensure!(set.len() == args.watched as usize, "loaded {} watched addresses, stored {}", set.len(), args.watched);
    let rss_loaded = Memory::now();
    eprintln!("  load: {} watched addresses in {:.2}s", set.len(), load_elapsed.as_secs_f64());

    let scan_start = Instant::now();
    let mut total = ScanReport::default();
    let mut scans = 0u64;
    let scans_max = args.blocks / BLOCKS_PER_SCAN_MAX + 2;
    while total.processed_tip < Some(last_block) {
        if scans >= scans_max {
            bail!("{scans} scans did not reach block {last_block} (at {:?})", total.processed_tip);
        }
        // The watcher's loop body (`DepositWatcher::scan`): refresh the set, then scan.
        set.refresh(&store, chain).await?;
        let r = scan_with(
            &store,
            &rpc,
            chain,
            &asset,
            args.confirmations,
            Some(first_block),
            &set,
            kinko_server::clock::now_ms(),
        )
        .await?;
        ensure!(r.blocks_rewound == 0, "anvil re-orged during the benchmark");
        total.blocks_scanned += r.blocks_scanned;
        total.deposits_detected.extend(r.deposits_detected);
        total.deposits_credited.extend(r.deposits_credited);
        total.processed_tip = r.processed_tip;
        scans += 1;
    }
    let scan_elapsed = scan_start.elapsed();
    let rss_scanned = Memory::now();
    ensure!(total.blocks_scanned == args.blocks, "scanned {} blocks, not {}", total.blocks_scanned, args.blocks);
    ensure!(
        total.deposits_detected.len() as u64 == deposits_sent,
        "kinko found {} deposits, {deposits_sent} transfers to watched addresses were sent",
        total.deposits_detected.len()
    );
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deposits WHERE chain = $1")
        .bind(chain)
        .fetch_one(store.pool())
        .await?;
    ensure!(stored as u64 == deposits_sent, "store holds {stored} deposits, {deposits_sent} were sent");
    eprintln!("  kinko scan: {} blocks in {:.2}s ({scans} scans)", total.blocks_scanned, scan_elapsed.as_secs_f64());
    store.close().await;

    // ---- report --------------------------------------------------------------------------------
    let baseline = "raw fetch: EvmRpc::block(n), same node, same blocks";
    let rows = vec![
        Row { name: baseline.into(), ops: args.blocks, elapsed: raw_elapsed },
        Row {
            name: format!("kinko scan, {} watched (set loaded)", args.watched),
            ops: args.blocks,
            elapsed: scan_elapsed,
        },
        Row {
            name: format!("kinko load set + scan, {} watched", args.watched),
            ops: args.blocks,
            elapsed: load_elapsed + scan_elapsed,
        },
    ];
    print_table(
        &format!(
            "Deposit scanning: {} blocks x {} native transfers, {} watched addresses (SQLite store)",
            args.blocks, args.txs_per_block, args.watched
        ),
        "blocks/s",
        &rows,
        baseline,
    );
    let credited = total.deposits_credited.len();
    println!(
        "deposits found: {} of {deposits_sent} sent to watched addresses ({credited} credited after {} confirmations)",
        total.deposits_detected.len(),
        args.confirmations
    );
    println!(
        "watched-set load: {:.2}s ({:.0} addresses/s); setup, not measured: chain {:.1}s, store {:.1}s",
        load_elapsed.as_secs_f64(),
        f64::from(args.watched) / load_elapsed.as_secs_f64(),
        chain_elapsed.as_secs_f64(),
        store_elapsed.as_secs_f64()
    );
    println!();
    println!("{:<40} {:>12} {:>12}", "memory (this process)", "VmRSS MiB", "VmHWM MiB");
    for (name, m) in
        [("before loading the set", rss_before), ("after loading the set", rss_loaded), ("after the scan", rss_scanned)]
    {
        println!("{name:<40} {:>12} {:>12}", mib(m.rss_kib), mib(m.hwm_kib));
    }
    let set_kib = rss_loaded.rss_kib.zip(rss_before.rss_kib).map(|(a, b)| a.saturating_sub(b));
    let table_kib = set.addresses().capacity() * (size_of::<Address>() + 1) / 1024;
    println!(
        "watched set: +{} MiB RSS on loading ({} bytes/address); its hash table alone is ~{} MiB",
        mib(set_kib),
        set_kib.map_or("-".into(), |k| format!("{:.0}", k as f64 * 1024.0 / f64::from(args.watched))),
        mib(Some(table_kib as u64))
    );
    if !hwm_reset {
        println!("(VmHWM could not be reset after the setup: it includes the setup's peak)");
    }
    Ok(())
}

/// Creates `args.blocks` blocks of `args.txs_per_block` transfers each. Returns the first block's
/// number and how many transfers paid a watched address.
async fn make_blocks(anvil: &Anvil, args: &ScanArgs, watched: &[Address]) -> Result<(u64, u64)> {
    let accounts: Vec<String> = serde_json::from_value(anvil.rpc("eth_accounts", json!([])).await?)?;
    ensure!(!accounts.is_empty(), "anvil has no unlocked accounts");
    anvil.set_automine(false).await?;
    let first_block = anvil.block_number().await? + 1;
    let mut deposits = 0u64;
    let mut k = 0u64;
    for _ in 0..args.blocks {
        for _ in 0..args.txs_per_block {
            let from = &accounts[(k % accounts.len() as u64) as usize];
            let to = if k.is_multiple_of(u64::from(args.deposit_every)) {
                let i = (k / u64::from(args.deposit_every)).wrapping_mul(WATCHED_STRIDE) % watched.len() as u64;
                deposits += 1;
                watched[i as usize]
            } else {
                outside_address(k)
            };
            anvil.send_eth(from, &to_lower_hex(&to), TRANSFER_BASE_WEI + u128::from(k)).await?;
            k += 1;
        }
        anvil.mine(1).await?;
    }
    Ok((first_block, deposits))
}

/// Writes one customer and one ETH deposit address per watched address, as the API would, in batched
/// multi-row INSERTs. The SQL is built here from hex digits and numbers only.
async fn insert_watched(store: &Store, chain: &str, asset: &AssetCode, watched: &[Address]) -> Result<()> {
    let newest_ms = kinko_server::clock::now_ms() - 3_600_000;
    let created_ms = |i: usize| newest_ms - (watched.len() - 1 - i) as i64 * ADDRESS_SPACING_MS;
    for (tx_no, tx_rows) in watched.chunks(INSERT_ROWS_PER_TX).enumerate() {
        let mut tx = store.begin_write().await?;
        for (stmt_no, rows) in tx_rows.chunks(INSERT_ROWS_PER_STATEMENT).enumerate() {
            let base = tx_no * INSERT_ROWS_PER_TX + stmt_no * INSERT_ROWS_PER_STATEMENT;
            let mut customers = String::from("INSERT INTO customers (id, email, password_hash, created_at_ms) VALUES ");
            let mut addresses = String::from(
                "INSERT INTO deposit_addresses (address, chain, asset, customer_id, derivation_index, created_at_ms) VALUES ",
            );
            for (j, address) in rows.iter().enumerate() {
                let i = base + j;
                let ms = created_ms(i);
                let sep = if j == 0 { "" } else { "," };
                write!(customers, "{sep}('bench{i}','bench{i}@bench.invalid','-',{ms})")?;
                write!(
                    addresses,
                    "{sep}('{}','{chain}','{}','bench{i}',{i},{ms})",
                    to_lower_hex(address),
                    asset.as_str()
                )?;
            }
            for q in [customers, addresses] {
                sqlx::query(sqlx::AssertSqlSafe(q)).persistent(false).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Memory {
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
}

impl Memory {
    fn now() -> Memory {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Memory { rss_kib: status_kib(&status, "VmRSS:"), hwm_kib: status_kib(&status, "VmHWM:") }
    }
}

/// A `/proc/self/status` line such as `VmRSS:\t  123456 kB` (a tab after the colon).
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Benchmark tooling (issue #2 scan benchmark): RSS is read from /proc correctly.
    #[test]
    fn proc_status_is_parsed() {
        let status = "Name:\tkinko-bench\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(102_400));
        assert_eq!(status_kib(status, "VmHWM:"), Some(204_800));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        assert_eq!(mib(Some(2048)), "2.0");
    }

    /// Benchmark tooling (M6 scan benchmark): 1,000,000 distinct watched addresses.
    #[test]
    fn bench_addresses_are_distinct() {
        assert_ne!(watched_address(0), watched_address(1));
        assert_ne!(watched_address(7), outside_address(7));
    }
}
