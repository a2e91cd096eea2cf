//! `login`: customer logins/s through the real HTTP API (`POST /v1/sessions` on the server's router,
//! served by axum over TCP with `ConnectInfo`, SQLite store: customer lookup, lock and IP checks, argon2id
//! verification, session + history row + login notice committed in one transaction) beside raw argon2id
//! verifications/s with the same parameters (OWASP minimum: m=19 MiB, t=2, p=1) in the same process,
//! sequentially and with one client/thread per core.
//!
//! Only successful logins are sent, so the login limits (which count failures only) never trip.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use clap::Args;
use kinko_server::api::auth::{ARGON2_ITERATIONS, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM};
use kinko_server::{AppState, Config};
use kinko_store::Store;
use serde_json::json;

use crate::{Row, TEST_MNEMONIC, print_table};

#[derive(Args)]
pub struct LoginArgs {
    /// Logins (and raw verifications) per measurement.
    #[arg(long, default_value_t = 200)]
    count: u32,
}

/// Upper bound on `--count`.
const COUNT_MAX: u32 = 100_000;
const PASSWORD: &str = "correct horse battery staple";

pub fn run(args: LoginArgs) -> Result<()> {
    let count = args.count.clamp(1, COUNT_MAX);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run_async(count))
}

fn params_text() -> String {
    format!("m={ARGON2_MEMORY_KIB} KiB, t={ARGON2_ITERATIONS}, p={ARGON2_PARALLELISM}")
}

fn argon2() -> Result<Argon2<'static>> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_PARALLELISM, None)
        .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// `count` raw verifications of a correct password, split over `threads` OS threads.
fn raw_verify(phc: &str, count: u32, threads: u32) -> Result<Row> {
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = count / threads + u32::from(t < count % threads);
                scope.spawn(move || -> Result<()> {
                    let a = argon2()?;
                    let parsed = PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("phc: {e}"))?;
                    for _ in 0..share {
                        ensure!(black_box(a.verify_password(PASSWORD.as_bytes(), &parsed)).is_ok(), "verify failed");
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("verify thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(Row {
        name: format!("raw argon2id verify ({}), {threads} thread{}", params_text(), plural(threads)),
        ops: u64::from(count),
        elapsed: start.elapsed(),
    })
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `count` logins over HTTP from `clients` concurrent keep-alive clients.
async fn http_logins(base: &str, email: &str, count: u32, clients: u32) -> Result<Row> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let share = count / clients + u32::from(c < count % clients);
        let (url, email) = (format!("{base}/v1/sessions"), email.to_string());
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            for _ in 0..share {
                let r = http
                    .post(&url)
                    .header("User-Agent", "kinko-bench")
                    .json(&json!({"email": email, "password": PASSWORD}))
                    .send()
                    .await?;
                ensure!(r.status().is_success(), "login answered {}", r.status());
                black_box(r.bytes().await?);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(Row {
        name: format!("kinko POST /v1/sessions over HTTP (SQLite), {clients} client{}", plural(clients)),
        ops: u64::from(count),
        elapsed: start.elapsed(),
    })
}

async fn run_async(count: u32) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Config::dev_default(dir.path().into(), "127.0.0.1:0".parse()?, "http://127.0.0.1:8545".into());
    let store = Store::connect(&config.database_url).await?;
    let seed = bip39::Mnemonic::parse(TEST_MNEMONIC)?.to_seed("");
    let master = kinko_keys::hd::master_from_seed(&seed)?;
    let xpub = kinko_keys::hd::evm_deposit_xpub(&master)?;
    let state = AppState {
        store: store.clone(),
        config: Arc::new(config),
        deposit_xpub: Arc::new(xpub),
        hot_wallet: "0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc".into(),
        signer: Arc::new(kinko_signer::LocalSigner::new(Arc::new(kinko_signer::StoreJournal(store.clone())))),
    };
    let router = kinko_server::api::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server =
        tokio::spawn(
            async move { axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await },
        );

    let email = "bench-login@example.com";
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/customers"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .context("register the bench customer")?;
    ensure!(r.status().as_u16() == 201, "register answered {}", r.status());

    // A fixed salt: a verification costs the same whatever the salt, and the benchmark needs no secret.
    let salt = SaltString::encode_b64(b"kinko-bench-salt").map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let phc =
        argon2()?.hash_password(PASSWORD.as_bytes(), &salt).map_err(|e| anyhow::anyhow!("hash: {e}"))?.to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;

    // Warm-up: connections, the dummy hash, page cache.
    http_logins(&base, email, 2, 1).await?;
    let mut sequential = vec![raw_verify(&phc, count, 1)?];
    sequential.push(http_logins(&base, email, count, 1).await?);
    let raw_seq = sequential[0].name.clone();
    print_table(
        &format!(
            "Customer logins, sequential (argon2id {}; each login commits a session, history row and notice)",
            params_text()
        ),
        "per second",
        &sequential,
        &raw_seq,
    );
    if cores > 1 {
        let mut parallel = vec![raw_verify(&phc, count, cores)?];
        parallel.push(http_logins(&base, email, count, cores).await?);
        let raw_par = parallel[0].name.clone();
        print_table(&format!("Customer logins, {cores} concurrent (one per core)"), "per second", &parallel, &raw_par);
    }
    server.abort();
    store.close().await;
    Ok(())
}
