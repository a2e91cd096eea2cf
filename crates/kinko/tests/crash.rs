//! Crash test (M13, A2, A3): `kinko serve` is SIGKILLed at random points while deposits and withdrawals
//! flow, and restarted each time. At the end every withdrawal has reached one terminal state and was paid
//! on chain at most once (each goes to its own fresh address, so "at most once" is a balance check), the
//! ledger's wallets equal the chain, customers' balances add up, and `kinko ledger verify` passes.
//!
//! `KINKO_CRASH_KILLS` sets the number of kills (default 50); `KINKO_CRASH_SEED` replays a run.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kinko_core::ledger::AccountKind;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};
use support::{Customer, ETH, Harness, outside_address, wait_for};

const CUSTOMERS: usize = 3;
const DEPOSIT_WEI: u128 = 5 * ETH;
const FINAL_TIMEOUT: Duration = Duration::from_secs(180);

async fn wait_ready(base: &str, timeout: Duration) -> bool {
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    let start = Instant::now();
    while start.elapsed() < timeout {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

struct Submitted {
    customer: usize,
    key: String,
    amount: u128,
    destination: String,
    id: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m13_a2_sigkill_at_random_points_never_loses_or_duplicates_money() {
    let kills: usize = std::env::var("KINKO_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 = std::env::var("KINKO_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test: {kills} kills, KINKO_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let ts = kinko_store::testing::sqlite_store().await;
    // Blocks every second from anvil itself; the test mines extra blocks too.
    let h = Harness::new(ts, &["--block-time", "1"], 2, 4_000).await;
    let base = h.api_base();

    // Customers are registered against a first instance, then the chaos starts.
    let mut child = h.spawn_serve();
    assert!(wait_ready(&base, Duration::from_secs(30)).await, "kinko serve did not start:\n{}", h.serve_log());
    let mut customers = Vec::new();
    for i in 0..CUSTOMERS {
        customers.push(Customer::register(&base, &format!("crash{i}@example.com"), &h.mail_dir()).await);
    }
    let mut deposited = [0u128; CUSTOMERS];
    let mut submitted: Vec<Submitted> = Vec::new();

    for round in 0..kills {
        // Work while kinko runs: a deposit now and then, and withdrawals (some retried with old keys).
        let c = rng.gen_range(0..CUSTOMERS);
        if round % 5 == 0 {
            h.anvil.send_eth(kinko_chain::anvil::ACCOUNT1, &customers[c].deposit_address, DEPOSIT_WEI).await.unwrap();
            deposited[c] += DEPOSIT_WEI;
        }
        let n = submitted.len();
        let amount = ETH / 100 * rng.gen_range(1..=20u128);
        submitted.push(Submitted {
            customer: c,
            key: format!("crash-{n}"),
            amount,
            destination: outside_address(&format!("crash-{seed}-{n}")),
            id: None,
        });
        let pending: Vec<usize> = (0..submitted.len()).filter(|i| submitted[*i].id.is_none()).collect();
        let kill_after = Duration::from_millis(rng.gen_range(0..1_500));
        let work = async {
            for i in pending {
                let s = &submitted[i];
                if let Ok((status, body)) = customers[s.customer].withdraw(&s.key, s.amount, &s.destination).await {
                    // 202: accepted (or the same one again); 422 with insufficient funds is a valid refusal.
                    if status == 202 {
                        let id = body["id"].as_str().unwrap().to_string();
                        if let Some(prev) = &submitted[i].id {
                            assert_eq!(prev, &id, "an idempotency key maps to one withdrawal");
                        }
                        return Some((i, Some(id)));
                    }
                    assert!(status == 422 || status == 409, "unexpected {status}: {body}");
                    return Some((i, None));
                }
            }
            None
        };
        tokio::select! {
            r = work => {
                if let Some((i, id)) = r {
                    if id.is_some() { submitted[i].id = id; } else { submitted[i].id = Some(String::new()); }
                }
                tokio::time::sleep(kill_after).await;
            }
            _ = tokio::time::sleep(kill_after) => {}
        }
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        if round % 3 == 0 {
            let _ = h.anvil.mine(1).await;
        }
        child = h.spawn_serve();
        assert!(wait_ready(&base, Duration::from_secs(30)).await, "restart {round} failed:\n{}", h.serve_log());
    }

    // Calm: re-submit every request (idempotent), then let everything finish.
    for s in submitted.iter_mut() {
        let (status, body) = customers[s.customer].withdraw(&s.key, s.amount, &s.destination).await.unwrap();
        if status == 202 {
            let id = body["id"].as_str().unwrap().to_string();
            if let Some(prev) = s.id.as_ref().filter(|p| !p.is_empty()) {
                assert_eq!(prev, &id, "an idempotency key maps to one withdrawal");
            }
            s.id = Some(id);
        } else {
            assert!(status == 422 || status == 409, "unexpected {status}: {body}");
            s.id = Some(String::new());
        }
    }
    let store = h.ts.store.clone();
    wait_for("every withdrawal terminal and every deposit credited", FINAL_TIMEOUT, Some(&h.anvil), || async {
        let counts = store.count_withdrawals_by_status().await.ok()?;
        let active = counts.iter().any(|(s, _)| !matches!(s.as_str(), "settled" | "failed" | "cancelled"));
        let pending: i64 = sqlx_count(&store, "SELECT COUNT(*) FROM deposits WHERE status = 'pending'").await;
        (!active && pending == 0).then_some(())
    })
    .await;
    // Every accepted withdrawal: settled, paid exactly its amount to its own address; refused ones: nothing.
    let mut paid = [0u128; CUSTOMERS];
    for s in &submitted {
        let on_chain = h.balance_of(&s.destination).await;
        match s.id.as_deref() {
            Some(id) if !id.is_empty() => {
                let w = store.withdrawal(id).await.unwrap().expect("accepted withdrawal exists");
                assert_eq!(w.status.as_str(), "settled", "{id}: {:?}", w.error);
                assert_eq!(on_chain, s.amount, "{id}: paid exactly once");
                paid[s.customer] += s.amount;
            }
            _ => assert_eq!(on_chain, 0, "{}: refused, never paid", s.key),
        }
    }
    let accepted = submitted.iter().filter(|s| s.id.as_deref().is_some_and(|i| !i.is_empty())).count();
    assert!(accepted >= kills / 4, "too few withdrawals got through ({accepted}) for the test to mean much");
    assert_eq!(h.nonce_of(&h.hot_wallet).await as usize, accepted, "one nonce per withdrawal, no gaps, no extras");

    // Customers: available = deposits − withdrawals; nothing held or pending.
    for (i, c) in customers.iter().enumerate() {
        let v = c.get("/v1/balances").await.unwrap();
        let eth = &v.as_array().unwrap()[0];
        assert_eq!(eth["available"].as_str().unwrap(), (deposited[i] - paid[i]).to_string(), "customer {i}");
        assert_eq!(eth["held"], "0");
        assert_eq!(eth["pending"], "0");
    }

    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();

    // Ledger = chain for every custodian address.
    let mut ledger_wallets: BTreeMap<String, u128> = BTreeMap::new();
    for (account, b) in store.all_balances().await.unwrap() {
        if account.kind == AccountKind::Wallet {
            ledger_wallets.insert(account.holder.clone(), b.normal(AccountKind::Wallet) as u128);
        }
    }
    for (address, ledger) in &ledger_wallets {
        assert_eq!(*ledger, h.balance_of(address).await, "ledger vs chain for {address}");
    }
    assert!(ledger_wallets.contains_key(&h.hot_wallet));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kinko"))
        .args(["ledger", "verify", "--database-url", &h.ts.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "kinko ledger verify: {}", String::from_utf8_lossy(&out.stdout));
}

async fn sqlx_count(store: &kinko_store::Store, q: &'static str) -> i64 {
    kinko_store::sqlx::query_scalar::<_, i64>(q).fetch_one(store.pool()).await.unwrap_or(-1)
}
