//! `signer`: EIP-1559 signatures/s through the full in-process signer path (`LocalSigner::sign_evm`:
//! decode, intent checks, anti-double-sign record and key access log, low-S, independent verification)
//! with the durable `StoreJournal` on SQLite (and PostgreSQL when given) and with the in-memory
//! `MemoryJournal`, beside raw k256 signing of the same transactions' signing hashes in this process.
//!
//! With `--socket`, the same kind of requests (new nonces) through the signer process's protocol:
//! `RemoteSigner` → Unix socket → `SignerService` (sealed store, unsealed with custodian shares, key gate,
//! `StoreJournal` on SQLite), and through that service in-process, to show what the socket adds.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_primitives::{Address, Bytes, TxKind, U256, keccak256};
use anyhow::{Context, Result, ensure};
use clap::Args;
use k256::ecdsa::SigningKey;
use kinko_core::intent::Intent;
use kinko_core::{Amount, ChainId};
use kinko_signer::testing::MemoryJournal;
use kinko_signer::{EvmSignRequest, LocalSigner, Signer, SignerJournal, SlotKey, StoreJournal};
use kinko_store::Store;
use zeroize::Zeroizing;

use crate::{Row, ScratchDb, TEST_MNEMONIC, print_table};

#[derive(Args)]
pub struct SignerArgs {
    /// Transactions signed per measurement (each a new nonce, so each is a new journal slot).
    #[arg(long, default_value_t = 2_000)]
    count: u32,
    /// Admin URL of a PostgreSQL server for a StoreJournal-on-PostgreSQL row (a scratch database is
    /// created and dropped); without it only SQLite and memory are measured.
    #[arg(long, env = "KINKO_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Also measure the signer process's socket (and the same service in-process).
    #[arg(long)]
    socket: bool,
}

const CHAIN: u64 = 31337;
const KEY_ID: &str = "bench-hot-1";
const GWEI: u128 = 1_000_000_000;
/// Upper bound on `--count`: each measurement keeps every request in memory.
const COUNT_MAX: u32 = 1_000_000;

const RAW: &str = "raw k256 sign_prehash_recoverable (precomputed hashes)";

pub fn run(args: SignerArgs) -> Result<()> {
    let count = args.count.clamp(1, COUNT_MAX);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run_async(count, args.postgres_url, args.socket))
}

/// The hot-wallet secret of the well-known test mnemonic: the benchmark needs a key, not a secret.
fn bench_secret() -> Result<Zeroizing<[u8; 32]>> {
    let seed = kinko_keys::seed::MasterSeed::from_mnemonic(TEST_MNEMONIC)?;
    Ok(kinko_keys::hd::evm_hot_wallet_secret(&seed.to_bip32_master()?)?)
}

/// `count` native transfers from `source`, nonces 0.., each with its own intent: what the pipeline sends.
fn requests(count: u32, source: &str) -> Result<Vec<EvmSignRequest>> {
    requests_for(KEY_ID, 0, count, source)
}

/// `count` native transfers by `key_id` from `source`, nonces `first_nonce`...
fn requests_for(key_id: &str, first_nonce: u64, count: u32, source: &str) -> Result<Vec<EvmSignRequest>> {
    let destination = "0x00000000000000000000000000000000000000aa";
    let to: Address = destination.parse()?;
    (0..count)
        .map(|i| {
            let nonce = first_nonce + u64::from(i);
            let amount = 1_000_000_000_000_000u128 + u128::from(nonce);
            let tx = TxEip1559 {
                chain_id: CHAIN,
                nonce,
                gas_limit: 21_000,
                max_fee_per_gas: 30 * GWEI,
                max_priority_fee_per_gas: GWEI,
                to: TxKind::Call(to),
                value: U256::from(amount),
                access_list: Default::default(),
                input: Bytes::new(),
            };
            let mut payload = Vec::with_capacity(128);
            tx.encode_for_signing(&mut payload);
            Ok(EvmSignRequest {
                key_id: key_id.into(),
                chain_id: CHAIN,
                nonce,
                payload,
                intent: Intent {
                    id: format!("bench-w{nonce}"),
                    asset: "ETH".parse()?,
                    chain_id: ChainId(CHAIN),
                    amount: Amount::from_base_units(amount),
                    destination: destination.into(),
                    source_wallet: source.into(),
                    customer_id: "bench".into(),
                    reason: "benchmark".into(),
                },
                approvals: vec![],
                actor: "kinko-bench".into(),
                terminal: "kinko-bench".into(),
                evacuation: None,
            })
        })
        .collect()
}

async fn full_path(name: &str, journal: Arc<dyn SignerJournal>, count: u32) -> Result<Row> {
    let signer = LocalSigner::new(journal);
    let address = signer.add_secp256k1_key(KEY_ID, bench_secret()?)?;
    signer.set_quorum(kinko_signer::testing::auto_quorum(KEY_ID, &["ETH"]))?;
    let reqs = requests(count, &address)?;
    let start = Instant::now();
    for req in &reqs {
        black_box(signer.sign_evm(req).await.with_context(|| format!("{name}: nonce {}", req.nonce))?);
    }
    let row = Row { name: name.to_string(), ops: reqs.len() as u64, elapsed: start.elapsed() };
    eprintln!("  {name}: {} signatures, {:.1}/s", row.ops, row.per_second());
    Ok(row)
}

async fn run_async(count: u32, postgres_url: Option<String>, socket: bool) -> Result<()> {
    // The baseline: the same transactions' signing hashes, signed by the same library the signer uses.
    let key = SigningKey::from_slice(&bench_secret()?[..])?;
    let probe = LocalSigner::new(Arc::new(MemoryJournal::new()));
    let address = probe.add_secp256k1_key(KEY_ID, bench_secret()?)?;
    let hashes: Vec<_> = requests(count, &address)?.iter().map(|r| keccak256(&r.payload)).collect();
    let start = Instant::now();
    for h in &hashes {
        black_box(key.sign_prehash_recoverable(h.as_slice())?);
    }
    let mut rows = vec![Row { name: RAW.into(), ops: hashes.len() as u64, elapsed: start.elapsed() }];
    let payloads: Vec<Vec<u8>> = requests(count, &address)?.into_iter().map(|r| r.payload).collect();
    let start = Instant::now();
    for p in &payloads {
        black_box(key.sign_prehash_recoverable(keccak256(p).as_slice())?);
    }
    rows.push(Row {
        name: "raw k256 keccak256 + sign (same payloads)".into(),
        ops: count.into(),
        elapsed: start.elapsed(),
    });

    rows.push(
        full_path("kinko LocalSigner + MemoryJournal (not durable)", Arc::new(MemoryJournal::new()), count).await?,
    );

    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("signer.db").display())).await?;
    rows.push(
        full_path("kinko LocalSigner + StoreJournal, SQLite (sync=FULL)", Arc::new(StoreJournal(store.clone())), count)
            .await?,
    );
    // A silent no-op journal would make the durable row meaningless: check the last slot was written.
    let last = SlotKey::evm(KEY_ID, CHAIN, u64::from(count - 1));
    let recorded = StoreJournal(store.clone()).slot_entries(&last).await?;
    store.close().await;
    ensure!(recorded.len() == 1, "StoreJournal holds {} payloads for the last nonce, expected 1", recorded.len());

    if let Some(admin) = postgres_url {
        let db = ScratchDb::create(&admin, "kinko_bench_signer").await?;
        let store = Store::connect(&db.url).await?;
        rows.push(
            full_path("kinko LocalSigner + StoreJournal, PostgreSQL", Arc::new(StoreJournal(store.clone())), count)
                .await?,
        );
        store.close().await;
        db.drop_now().await?;
    } else {
        println!("(no --postgres-url: StoreJournal on PostgreSQL not measured)");
    }
    if socket {
        socket_rows(count, &mut rows).await?;
    } else {
        println!("(no --socket: the signer process over its socket not measured)");
    }
    print_table("EIP-1559 signatures (one client, each a new nonce)", "per second", &rows, RAW);
    Ok(())
}

/// The signer process's protocol over a Unix socket, and the same service called in-process. Each run
/// takes its own nonces, so every signature is a new journal slot, as in the rows above.
async fn socket_rows(count: u32, rows: &mut Vec<Row>) -> Result<()> {
    use crate::signer_socket::{HOT_KEY_ID, SocketSigner};
    let signer = SocketSigner::start().await?;

    let name = "kinko SignerService in-process (key gate, SQLite)";
    let reqs = requests_for(HOT_KEY_ID, 0, count, &signer.hot_wallet)?;
    let start = Instant::now();
    for req in &reqs {
        black_box(signer.service.sign_evm(req).await.with_context(|| format!("{name}: nonce {}", req.nonce))?);
    }
    rows.push(Row { name: name.into(), ops: count.into(), elapsed: start.elapsed() });

    let name = "kinko RemoteSigner -> Unix socket -> signer process protocol";
    let reqs = requests_for(HOT_KEY_ID, u64::from(count), count, &signer.hot_wallet)?;
    let start = Instant::now();
    for req in &reqs {
        black_box(signer.remote.sign_evm(req).await.with_context(|| format!("{name}: nonce {}", req.nonce))?);
    }
    let row = Row { name: name.into(), ops: count.into(), elapsed: start.elapsed() };
    eprintln!("  {name} ({}): {} signatures, {:.1}/s", signer.socket.display(), row.ops, row.per_second());
    rows.push(row);

    // The socket run wrote its journal: check the last slot, as for the in-process rows.
    let last = SlotKey::evm(HOT_KEY_ID, CHAIN, 2 * u64::from(count) - 1);
    let recorded = StoreJournal(signer.store.clone()).slot_entries(&last).await?;
    signer.stop().await?;
    ensure!(recorded.len() == 1, "the signer process recorded {} payloads for its last nonce", recorded.len());
    Ok(())
}
