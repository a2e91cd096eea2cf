//! Deposit sweeping (K13, C1, M10) on a real anvil and real databases (SQLite and, when
//! `KINKO_TEST_POSTGRES_URL` is set, PostgreSQL): customers deposit to addresses derived from a fresh master
//! seed; the real watcher credits them; the sweeper writes sweep rows; the real withdrawal pipeline signs them
//! with deposit keys the real signer derives itself after the real unseal path (`kinko init` under a master key,
//! `seal::unlock_signer`), broadcasts, waits for the depth and settles. Afterwards the chain, the ledger's wallet
//! accounts and the customers' balances must agree.

use std::str::FromStr;
use std::sync::Arc;

use bitcoin::bip32::Xpub;
use kinko_chain::anvil::{ACCOUNT0, Anvil};
use kinko_chain::evm::address::parse_address;
use kinko_chain::evm::rpc::EvmRpc;
use kinko_core::ledger::{AccountKind, AccountRef};
use kinko_core::withdrawal::WithdrawalStatus;
use kinko_core::{Amount, AssetCode};
use kinko_keys::shares::{self, MasterKey, SealConfig};
use kinko_server::app::{HOT_KEY_ID, init_sealed};
use kinko_server::erc20::TokenSet;
use kinko_server::pipeline::{Pipeline, PipelineSettings};
use kinko_server::sweeper::{SweepConfig, Sweeper, SweeperSettings};
use kinko_signer::Signer;
use kinko_store::Store;
use kinko_store::testing::{TestStore, test_stores};

const CHAIN: &str = "eth";
const CHAIN_ID: u64 = 31337;
const ETH: u128 = 1_000_000_000_000_000_000;
const CONFIRMATIONS: u64 = 3;
/// The sweeps' fee ceiling: 20 gwei, so each address keeps back 21000 × 20 gwei = 0.00042 ETH for its fee.
const FEE_CEILING_WEI: u128 = 20_000_000_000;
const RESERVE_WEI: u128 = 21_000 * FEE_CEILING_WEI;
/// Bound on pipeline cycles a test waits for its sweeps to settle.
const CYCLES_MAX: usize = 60;

fn eth() -> AssetCode {
    "ETH".parse().unwrap()
}

fn now_ms() -> i64 {
    kinko_server::clock::now_ms()
}

struct World {
    store: Store,
    anvil: Anvil,
    rpc: EvmRpc,
    xpub: Xpub,
    hot: String,
    pipeline: Pipeline,
    monitor: kinko_server::node_monitor::NodeMonitor,
    tokens: TokenSet,
    _signer: Arc<kinko_signer::LocalSigner>,
    _dir: std::path::PathBuf,
}

/// `kinko init` under a fresh master key (a fresh master seed, so every deposit address starts empty), the
/// signer unsealed through the real unlock path (which keeps the deposit account), and the pipeline.
async fn world(ts: &TestStore) -> World {
    let anvil = Anvil::spawn(&[]).await.expect("start anvil");
    world_on(ts, anvil, TokenSet::native_only(CHAIN_ID)).await
}

async fn world_on(ts: &TestStore, anvil: Anvil, tokens: TokenSet) -> World {
    let url = anvil.url().to_string();
    let dir = std::env::temp_dir().join(format!("kinko-sweeps-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = kinko_server::Config::dev_default(dir.clone(), "127.0.0.1:0".parse().unwrap(), url.clone());
    let store = ts.store.clone();
    let mk = MasterKey::generate();
    let seal_shares = shares::split(&mk, 1, &["dev".to_string()]).unwrap();
    let custody = init_sealed(&store, &mk, &SealConfig::new(&mk, 1, &seal_shares)).await.unwrap();
    let journal = Arc::new(kinko_signer::StoreJournal(store.clone()));
    let signer = kinko_signer::seal::unlock_signer(&store, &mk, journal, &[HOT_KEY_ID.to_string()], Default::default())
        .await
        .unwrap();
    signer.set_quorum(kinko_signer::testing::auto_quorum(HOT_KEY_ID, &["ETH"])).unwrap();
    signer.set_evm_policy(CHAIN_ID, tokens.signer_policy().unwrap()).unwrap();
    let signer = Arc::new(signer);
    let rpc = EvmRpc::new(&url).unwrap();
    let settings = PipelineSettings {
        chain: CHAIN.into(),
        chain_id: CHAIN_ID,
        hot_wallet: custody.hot_wallet.clone(),
        hot_key_id: HOT_KEY_ID.into(),
        confirmations: CONFIRMATIONS,
        stuck_after_ms: 60_000,
        max_fee_per_gas_cap_wei: 500_000_000_000,
        instance_id: "sweep-test".into(),
        lease_ms: 15_000,
        batch_max: 16,
        poll_interval_ms: 100,
    };
    let audit = kinko_server::audit::AuditSink::from_config(store.clone(), &config);
    let dyn_signer: Arc<dyn Signer> = signer.clone();
    let pipeline = Pipeline::new(store.clone(), rpc.clone(), rpc.clone(), dyn_signer, settings)
        .with_audit(audit)
        .with_tokens(tokens.clone());
    let targets = kinko_server::node_monitor::MonitorTargets {
        chain: CHAIN.into(),
        asset: eth(),
        chain_id: CHAIN_ID,
        confirmations: CONFIRMATIONS,
        instance_id: "sweep-test".into(),
        hot_wallet: custody.hot_wallet.clone(),
        signer_socket: None,
    };
    let monitor = kinko_server::node_monitor::NodeMonitor::new(store.clone(), &config.ethereum, targets, None).unwrap();
    World {
        store,
        anvil,
        rpc,
        xpub: Xpub::from_str(&custody.deposit_xpub).unwrap(),
        hot: custody.hot_wallet,
        pipeline,
        monitor,
        tokens,
        _signer: signer,
        _dir: dir,
    }
}

impl World {
    fn sweeper(&self, batch_max: u32) -> Sweeper {
        self.sweeper_with(SweepConfig {
            enabled: true,
            batch_max,
            max_fee_per_gas_wei: FEE_CEILING_WEI,
            min: [("ETH".to_string(), Amount::from_base_units(ETH / 100))].into(),
            ..SweepConfig::default()
        })
    }

    fn sweeper_with(&self, config: SweepConfig) -> Sweeper {
        let settings = SweeperSettings {
            chain: CHAIN.into(),
            chain_id: CHAIN_ID,
            hot_wallet: self.hot.clone(),
            hot_key_id: HOT_KEY_ID.into(),
            max_fee_per_gas_cap_wei: 500_000_000_000,
        };
        Sweeper::new(self.store.clone(), self.rpc.clone(), settings, config, self.tokens.clone())
    }

    /// A customer with deposit address `index` (public derivation from the stored xpub, as the API does).
    async fn customer(&self, index: u32) -> (String, String) {
        let id = format!("cus_sweep{index}");
        let address = kinko_keys::hd::evm_deposit_address(&self.xpub, index).unwrap();
        kinko_store::sqlx::query(
            "INSERT INTO customers (id, email, password_hash, created_at_ms) VALUES ($1, $2, 'x', 1)",
        )
        .bind(&id)
        .bind(format!("{id}@example.test"))
        .execute(self.store.pool())
        .await
        .unwrap();
        kinko_store::sqlx::query(
            "INSERT INTO deposit_addresses (address, chain, asset, customer_id, derivation_index, created_at_ms) \
             VALUES ($1, $2, 'ETH', $3, $4, $5)",
        )
        .bind(&address)
        .bind(CHAIN)
        .bind(&id)
        .bind(i64::from(index))
        .bind(now_ms())
        .execute(self.store.pool())
        .await
        .unwrap();
        (id, address)
    }

    async fn scan(&self) {
        kinko_server::watcher::scan_once_with_tokens(
            &self.store,
            &self.rpc,
            CHAIN,
            &eth(),
            CONFIRMATIONS,
            Some(0),
            &self.tokens,
            now_ms(),
        )
        .await
        .unwrap();
    }

    async fn deposit(&self, to: &str, wei: u128) {
        let hash = self.anvil.send_eth(ACCOUNT0, to, wei).await.unwrap();
        self.wait_receipt(&hash).await;
    }

    async fn wait_receipt(&self, hash: &str) {
        for _ in 0..200 {
            let r = self.anvil.rpc("eth_getTransactionReceipt", serde_json::json!([hash])).await.unwrap();
            if r.get("blockNumber").and_then(|n| n.as_str()).is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("transaction {hash} was never mined");
    }

    async fn chain_balance(&self, address: &str) -> u128 {
        self.rpc.balance(parse_address(address).unwrap()).await.unwrap()
    }

    async fn ledger_wallet(&self, address: &str) -> u128 {
        self.store
            .balance(&AccountRef::wallet(address, &eth()))
            .await
            .unwrap()
            .normal_amount(AccountKind::Wallet)
            .base_units()
    }

    async fn available(&self, customer: &str) -> u128 {
        let b = self.store.customer_balances(customer).await.unwrap();
        b.get(&(eth(), AccountKind::Available)).copied().unwrap_or(Amount::ZERO).base_units()
    }

    async fn status(&self, id: &str) -> WithdrawalStatus {
        self.store.withdrawal(id).await.unwrap().unwrap().status
    }

    /// Pipeline cycles (each after a fresh node-monitor verdict and a mined block) until every row in `ids` has
    /// settled.
    async fn settle(&mut self, ids: &[String]) {
        for _ in 0..CYCLES_MAX {
            self.monitor.poll_once().await.unwrap();
            self.pipeline.run_once(now_ms()).await.unwrap();
            let mut all = true;
            for id in ids {
                all &= self.status(id).await == WithdrawalStatus::Settled;
            }
            if all {
                return;
            }
            self.anvil.mine(1).await.unwrap();
            self.scan().await;
        }
        let mut seen = Vec::new();
        for id in ids {
            let w = self.store.withdrawal(id).await.unwrap().unwrap();
            seen.push((w.status, w.error));
        }
        panic!("sweeps did not settle: {seen:?}");
    }
}

/// K13, C1, M10: several customers' credited deposits are swept into the hot wallet, at most `batch_max` rows per
/// cycle and never a second one for an address in flight; afterwards the deposit addresses hold only what the
/// fee reserve left over, the hot wallet holds the swept sum, every wallet account in the ledger equals the chain,
/// the fees are the custodian's expense and no customer balance moved.
#[tokio::test]
async fn k13_credited_eth_deposits_are_swept_into_hot_batched() {
    for ts in test_stores().await {
        let mut w = world(&ts).await;
        let deposits = [ETH, 2 * ETH, 3 * ETH];
        let mut customers = Vec::new();
        for (i, amount) in deposits.iter().enumerate() {
            let (id, address) = w.customer(i as u32).await;
            w.deposit(&address, *amount).await;
            customers.push((id, address, *amount));
        }
        w.anvil.mine(CONFIRMATIONS).await.unwrap();
        w.scan().await;
        for (id, _, amount) in &customers {
            assert_eq!(w.available(id).await, *amount, "{}: credited", ts.name);
        }
        assert_eq!(w.chain_balance(&w.hot).await, 0, "{}: the fresh hot wallet starts empty", ts.name);

        let sweeper = w.sweeper(2);
        let first = sweeper.run_once(now_ms()).await.unwrap();
        assert_eq!(first.sweeps.len(), 2, "{}: batch_max rows per cycle: {first:?}", ts.name);
        let second = sweeper.run_once(now_ms()).await.unwrap();
        assert_eq!(second.sweeps.len(), 1, "{}: only the address not yet in flight: {second:?}", ts.name);
        let third = sweeper.run_once(now_ms()).await.unwrap();
        assert!(third.sweeps.is_empty(), "{}: nothing twice while in flight: {third:?}", ts.name);
        let ids: Vec<String> = first.sweeps.iter().chain(&second.sweeps).cloned().collect();
        for id in &ids {
            let row = w.store.withdrawal(id).await.unwrap().unwrap();
            assert_eq!(row.kind, kinko_core::withdrawal::WithdrawalKind::CustodianTransfer, "{}", ts.name);
            assert_eq!(row.destination, w.hot, "{}", ts.name);
            let (_, _, deposited) = customers.iter().find(|c| c.1 == row.source_wallet).unwrap();
            assert_eq!(row.amount.base_units(), deposited - RESERVE_WEI, "{}: balance − gas × fee ceiling", ts.name);
        }

        w.settle(&ids).await;
        let after = sweeper.run_once(now_ms()).await.unwrap();
        assert_eq!(after.closed, 3, "{}: {after:?}", ts.name);
        assert!(after.sweeps.is_empty(), "{}: the leftover is below the minimum: {after:?}", ts.name);

        let swept: u128 = deposits.iter().map(|d| d - RESERVE_WEI).sum();
        assert_eq!(w.chain_balance(&w.hot).await, swept, "{}: hot received the sum less the reserves", ts.name);
        assert_eq!(w.ledger_wallet(&w.hot).await, swept, "{}: the hot wallet's ledger account agrees", ts.name);
        let mut fees = 0;
        for (id, address, amount) in &customers {
            let left = w.chain_balance(address).await;
            assert!(left < RESERVE_WEI, "{}: {address} is near empty ({left} wei left)", ts.name);
            assert_eq!(
                w.ledger_wallet(address).await,
                left,
                "{}: ledger wallet account = chain for {address}",
                ts.name
            );
            fees += RESERVE_WEI - left;
            assert_eq!(w.available(id).await, *amount, "{}: customer balances are unchanged", ts.name);
        }
        let network_fees =
            w.store.balance(&AccountRef::network_fees(&eth())).await.unwrap().normal_amount(AccountKind::NetworkFees);
        assert_eq!(network_fees.base_units(), fees, "{}: the fees are the custodian's expense", ts.name);
        w.store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// K13, C2: a pending (not yet credited) deposit is never swept: an address with only pending funds gets no sweep,
/// and an address with credited and pending funds is swept for the credited part only; once the rest is credited
/// it goes with the next sweep.
#[tokio::test]
async fn k13_pending_deposits_are_not_swept() {
    for ts in test_stores().await {
        let mut w = world(&ts).await;
        let (mixed_id, mixed) = w.customer(0).await;
        let (_, pending_only) = w.customer(1).await;
        w.deposit(&mixed, ETH).await;
        w.anvil.mine(CONFIRMATIONS).await.unwrap();
        w.scan().await;
        assert_eq!(w.available(&mixed_id).await, ETH, "{}", ts.name);
        // Two more deposits, seen but one confirmation short.
        w.deposit(&mixed, 2 * ETH).await;
        w.deposit(&pending_only, 5 * ETH).await;
        w.scan().await;
        assert_eq!(w.ledger_wallet(&pending_only).await, 5 * ETH, "{}: detected (pending)", ts.name);

        let sweeper = w.sweeper(16);
        let r = sweeper.run_once(now_ms()).await.unwrap();
        assert_eq!(r.sweeps.len(), 1, "{}: only the credited part of one address: {r:?}", ts.name);
        let row = w.store.withdrawal(&r.sweeps[0]).await.unwrap().unwrap();
        assert_eq!(row.source_wallet, mixed, "{}", ts.name);
        assert_eq!(row.amount.base_units(), ETH - RESERVE_WEI, "{}: the pending 2 ETH stay", ts.name);
        assert!(w.store.deposit_sweeps_of(&pending_only).await.unwrap().is_empty(), "{}", ts.name);

        w.settle(std::slice::from_ref(&r.sweeps[0])).await;
        assert!(w.chain_balance(&mixed).await >= 2 * ETH, "{}: the pending deposit is still there", ts.name);
        // By now the later deposits are credited too: the next cycle sweeps them (and the first sweep's leftover).
        w.scan().await;
        let next = sweeper.run_once(now_ms()).await.unwrap();
        assert_eq!(next.sweeps.len(), 2, "{}: {next:?}", ts.name);
        for id in &next.sweeps {
            let row = w.store.withdrawal(id).await.unwrap().unwrap();
            let expected = if row.source_wallet == mixed { w.ledger_wallet(&mixed).await } else { 5 * ETH };
            assert_eq!(row.amount.base_units(), expected - RESERVE_WEI, "{}: {}", ts.name, row.source_wallet);
        }
        w.settle(&next.sweeps).await;
        w.store.verify_ledger(|_| {}).await.unwrap();
    }
}

/// K13, K22: an ERC-20 deposit is swept into the hot wallet after a gas top-up: the deposit address holds no ETH,
/// so the sweeper first writes a top-up hot → deposit address (signed by the hot key without approval because the
/// signer derives that address itself and the amount is within its cap); once it settled, the token sweep
/// (`transfer(hot, amount)`, signed by the deposit key) follows. The customer's balances never move: the top-up is
/// no deposit of theirs.
#[tokio::test]
async fn k13_erc20_deposit_sweep_with_gas_top_up() {
    use kinko_chain::anvil_erc20;
    for ts in test_stores().await {
        let anvil = Anvil::spawn(&[]).await.expect("start anvil");
        let token = anvil_erc20::deploy_erc20(&anvil, ACCOUNT0, "Test USD", "TUSD").await.unwrap();
        let mut eth_config =
            kinko_server::Config::dev_default(std::env::temp_dir(), "127.0.0.1:0".parse().unwrap(), String::new())
                .ethereum;
        eth_config.tokens = vec![kinko_server::erc20::TokenConfig {
            code: "TUSD".into(),
            decimals: 18,
            contract: format!("{token:#x}"),
            gas_limit: 100_000,
        }];
        let tokens = TokenSet::from_config(&eth_config).unwrap();
        let tusd: AssetCode = "TUSD".parse().unwrap();
        let mut w = world_on(&ts, anvil, tokens).await;
        // The hot wallet pays top-ups: the custodian's own 1 ETH, on chain and in the ledger.
        w.deposit(&w.hot.clone(), ETH).await;
        w.store
            .post(
                kinko_core::ledger::postings::custodian_funding(
                    "fund:hot".into(),
                    &w.hot,
                    &eth(),
                    Amount::from_base_units(ETH),
                ),
                now_ms(),
            )
            .await
            .unwrap();
        let (customer, address) = w.customer(0).await;
        let deposited = 250 * ETH;
        anvil_erc20::mint(&w.anvil, token, ACCOUNT0, parse_address(ACCOUNT0).unwrap(), deposited).await.unwrap();
        anvil_erc20::transfer(&w.anvil, token, ACCOUNT0, parse_address(&address).unwrap(), deposited).await.unwrap();
        w.anvil.mine(CONFIRMATIONS).await.unwrap();
        w.scan().await;
        let balances = |b: std::collections::BTreeMap<(AssetCode, AccountKind), Amount>, a: &AssetCode| {
            b.get(&(a.clone(), AccountKind::Available)).copied().unwrap_or(Amount::ZERO).base_units()
        };
        assert_eq!(balances(w.store.customer_balances(&customer).await.unwrap(), &tusd), deposited, "{}", ts.name);

        let sweeper = w.sweeper_with(SweepConfig {
            enabled: true,
            max_fee_per_gas_wei: FEE_CEILING_WEI,
            min: [("TUSD".to_string(), Amount::from_base_units(1))].into(),
            ..SweepConfig::default()
        });
        let first = sweeper.run_once(now_ms()).await.unwrap();
        assert_eq!((first.top_ups.len(), first.sweeps.len()), (1, 0), "{}: a top-up first: {first:?}", ts.name);
        let top_up = w.store.withdrawal(&first.top_ups[0]).await.unwrap().unwrap();
        assert_eq!((top_up.source_wallet.as_str(), top_up.destination.as_str()), (w.hot.as_str(), address.as_str()));
        assert_eq!(top_up.amount.base_units(), SweepConfig::default().top_up_wei, "{}", ts.name);
        assert!(
            sweeper.run_once(now_ms()).await.unwrap().sweeps.is_empty(),
            "{}: not while the top-up is in flight",
            ts.name
        );
        w.settle(&first.top_ups).await;
        // Past the depth of the top-up: a further scan would have credited it, were it taken for a deposit.
        w.anvil.mine(CONFIRMATIONS).await.unwrap();
        w.scan().await;
        assert_eq!(
            balances(w.store.customer_balances(&customer).await.unwrap(), &eth()),
            0,
            "{}: a top-up is no deposit",
            ts.name
        );

        let second = sweeper.run_once(now_ms()).await.unwrap();
        assert_eq!(second.sweeps.len(), 1, "{}: the token sweep: {second:?}", ts.name);
        let sweep = w.store.withdrawal(&second.sweeps[0]).await.unwrap().unwrap();
        assert_eq!((sweep.asset.clone(), sweep.amount.base_units()), (tusd.clone(), deposited), "{}", ts.name);
        w.settle(&second.sweeps).await;

        let on_chain = |holder: &str| {
            let (anvil, holder) = (&w.anvil, parse_address(holder).unwrap());
            async move { anvil_erc20::balance_of(anvil, token, holder).await.unwrap() }
        };
        assert_eq!(on_chain(&w.hot).await, alloy_primitives::U256::from(deposited), "{}", ts.name);
        assert_eq!(on_chain(&address).await, alloy_primitives::U256::ZERO, "{}", ts.name);
        let ledger = |a: &str, asset: &AssetCode| {
            let (store, account) = (w.store.clone(), AccountRef::wallet(a, asset));
            async move { store.balance(&account).await.unwrap().normal_amount(AccountKind::Wallet).base_units() }
        };
        assert_eq!(ledger(&w.hot, &tusd).await, deposited, "{}", ts.name);
        assert_eq!(ledger(&address, &tusd).await, 0, "{}", ts.name);
        // The deposit address's ETH (what the top-up left after the sweep's gas) agrees with the chain.
        assert_eq!(ledger(&address, &eth()).await, w.chain_balance(&address).await, "{}", ts.name);
        assert_eq!(ledger(&w.hot, &eth()).await, w.chain_balance(&w.hot).await, "{}", ts.name);
        assert_eq!(balances(w.store.customer_balances(&customer).await.unwrap(), &tusd), deposited, "{}", ts.name);
        w.store.verify_ledger(|_| {}).await.unwrap();
    }
}

async fn freeze(store: &Store, id: &str, scope: kinko_core::freeze::FreezeScope) {
    let f = kinko_core::freeze::Freeze {
        id: id.into(),
        scope,
        reason: "sweep test".into(),
        set_by: "cli:test".into(),
        set_at_ms: now_ms(),
    };
    let event = kinko_store::ops_requests::NewOpsEvent {
        operator_id: "cli:test".into(),
        terminal: "test".into(),
        event: "freeze".into(),
        request_id: None,
        detail_json: "{}".into(),
        at_ms: now_ms(),
    };
    assert!(store.set_freeze(&f, &event).await.unwrap());
}

/// K13, K19: nothing is swept from a deposit address (or key) under a freeze, and nothing at all into a hot wallet
/// under one (its key may be the compromised one).
#[tokio::test]
async fn k13_frozen_deposit_addresses_and_a_frozen_hot_wallet_are_not_swept() {
    for ts in test_stores().await {
        let w = world(&ts).await;
        let mut addresses = Vec::new();
        for i in 0..3 {
            let (_, address) = w.customer(i).await;
            w.deposit(&address, ETH).await;
            addresses.push(address);
        }
        w.anvil.mine(CONFIRMATIONS).await.unwrap();
        w.scan().await;
        freeze(&w.store, "fz_wallet", kinko_core::freeze::FreezeScope::Wallet(addresses[0].clone())).await;
        freeze(&w.store, "fz_key", kinko_core::freeze::FreezeScope::Key(kinko_signer::sweep::deposit_key_id(1))).await;
        let sweeper = w.sweeper(16);
        let r = sweeper.run_once(now_ms()).await.unwrap();
        assert_eq!(r.frozen, 2, "{}: {r:?}", ts.name);
        assert_eq!(r.sweeps.len(), 1, "{}: {r:?}", ts.name);
        let row = w.store.withdrawal(&r.sweeps[0]).await.unwrap().unwrap();
        assert_eq!(row.source_wallet, addresses[2], "{}", ts.name);

        let (_, fourth) = w.customer(3).await;
        w.deposit(&fourth, ETH).await;
        w.anvil.mine(CONFIRMATIONS).await.unwrap();
        w.scan().await;
        freeze(&w.store, "fz_hot", kinko_core::freeze::FreezeScope::Key(HOT_KEY_ID.into())).await;
        let r = sweeper.run_once(now_ms()).await.unwrap();
        assert!(r.sweeps.is_empty() && r.top_ups.is_empty(), "{}: nothing into a frozen hot wallet: {r:?}", ts.name);
    }
}
