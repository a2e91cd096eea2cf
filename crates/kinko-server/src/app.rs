//! Wiring: key bootstrap (`init`), and starting the API, deposit detection and the withdrawal pipeline
//! over one store, one node connection and one signer (`serve`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use bitcoin::bip32::Xpub;
use kinko_chain::evm::rpc::EvmRpc;
use kinko_keys::kek::Kek;
use kinko_keys::shares::{MasterKey, SealConfig, ShareFile};
use kinko_signer::remote::RemoteSigner;
use kinko_signer::seal::{SealState, SubmitOutcome};
use kinko_signer::{LocalSigner, Signer};
use kinko_store::Store;
use kinko_store::pipeline::Wallet;
use kinko_store::seal_records::KekRecord;
use kinko_store::signer_records::KeyRecord;

use crate::Config;
use crate::clock::now_ms;
use crate::config::SignerMode;
use crate::pipeline::{Pipeline, PipelineSettings};

/// Shared, read-mostly state. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    /// Account-level xpub for public derivation of deposit addresses (no private key on this side).
    pub deposit_xpub: Arc<Xpub>,
    /// The hot wallet's lower-case 0x-hex address.
    pub hot_wallet: String,
    /// The signer: the authority for operator registry changes (the ops API applies a change to the
    /// server's copy only after the signer accepted it) and for signing.
    pub signer: Arc<dyn Signer>,
}

/// The chain name used in storage for the configured EVM chain.
pub const ETH_CHAIN: &str = "eth";
/// Key id of the EVM hot wallet's signing key.
pub const HOT_KEY_ID: &str = "eth-hot-1";
/// Key id of the wrapped master seed.
pub const MASTER_SEED_KEY_ID: &str = "master-seed-1";
const META_DEPOSIT_XPUB: &str = "eth_deposit_xpub";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("store: {0}")]
    Store(#[from] kinko_store::StoreError),
    #[error("node: {0}")]
    Rpc(#[from] kinko_chain::evm::rpc::RpcError),
    #[error("keys: {0}")]
    Keys(String),
    #[error("signer: {0}")]
    Signer(#[from] kinko_signer::SignerError),
    #[error(
        "the node at {url} reports chain id {actual}, but kinko is configured for {expected}; refusing to start (C3)"
    )]
    WrongChain { url: String, expected: u64, actual: u64 },
    #[error("not initialised: run `kinko init` first")]
    NotInitialised,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("notices: {0}")]
    Notices(#[from] crate::notices::NoticeSetupError),
}

/// What `init` created or found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Custody {
    pub deposit_xpub: String,
    pub hot_wallet: String,
    pub created: bool,
}

/// Id of the first KEK `init` creates.
pub const KEK_ID_FIRST: &str = "kek-1";
/// DEV MODE: the 1-of-1 master-key share that unseals the in-process signer, as a plain file beside the
/// database. Dev mode unseals through the same path as the signer process; only where the share comes
/// from differs.
pub const DEV_SHARE_FILE: &str = "dev-share.json";
pub const DEV_CUSTODIAN: &str = "dev";

/// DEV MODE ONLY: the dev custodian's share. `Debug` shows nothing of it.
pub struct DevUnseal {
    share: kinko_keys::shares::RawShare,
}

impl std::fmt::Debug for DevUnseal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevUnseal(..)")
    }
}

/// Creates the master seed (BIP39, OS CSPRNG), stores it and the hot-wallet key wrapped by the KEK, the
/// KEK wrapped by the master key, and the seal configuration; publishes the deposit xpub. Dev mode: the
/// master key is the dev share's. Idempotent: a second run finds and reports what exists.
pub async fn init(store: &Store, dev: &DevUnseal) -> Result<Custody, AppError> {
    init_with(store, dev, None).await
}

/// [`init`], with the hot key generated inside the PKCS#11 token `hot_in_token` when given.
pub async fn init_with(
    store: &Store,
    dev: &DevUnseal,
    hot_in_token: Option<&crate::config::Pkcs11Config>,
) -> Result<Custody, AppError> {
    if let Some(custody) = load_custody(store).await? {
        return Ok(custody);
    }
    let shares = std::slice::from_ref(&dev.share);
    let mk = kinko_keys::shares::combine(1, shares).map_err(|e| AppError::Keys(e.to_string()))?;
    let config = SealConfig::new(&mk, 1, shares);
    init_sealed_with(store, &mk, &config, hot_in_token).await
}

/// `init` under a master key that the caller has just split into custodian shares (`config`). The MK
/// only wraps the KEK here; it is never stored.
pub async fn init_sealed(store: &Store, mk: &MasterKey, config: &SealConfig) -> Result<Custody, AppError> {
    init_sealed_with(store, mk, config, None).await
}

/// [`init_sealed`]; with `hot_in_token`, the hot key is generated inside that PKCS#11 token (K21,
/// non-extractable, from the token's RNG) instead of derived from the master seed, and its `keys` row
/// records where it lives instead of a wrapped secret.
pub async fn init_sealed_with(
    store: &Store,
    mk: &MasterKey,
    config: &SealConfig,
    hot_in_token: Option<&crate::config::Pkcs11Config>,
) -> Result<Custody, AppError> {
    if let Some(custody) = load_custody(store).await? {
        return Ok(custody);
    }
    // The token first: a wrong PIN or a missing token then leaves the database untouched.
    let token_hot = match hot_in_token {
        Some(p) => Some(hot_key_in_token(store, p).await?),
        None => None,
    };
    let keys = |e: &dyn std::fmt::Display| AppError::Keys(e.to_string());
    let json = serde_json::to_string(config).map_err(|e| keys(&e))?;
    let stored = store.init_seal_config_json(&json).await?;
    let stored: SealConfig = serde_json::from_str(&stored).map_err(|e| keys(&e))?;
    if stored.mk_fingerprint != mk.fingerprint() {
        return Err(AppError::Keys(
            "this database already holds another seal from an interrupted `kinko init`; use a fresh database".into(),
        ));
    }
    let now = now_ms();
    let (kek_id, kek) = match store.active_kek().await? {
        // A previous run stored the KEK and stopped: keep it.
        Some(row) => {
            let kek = kinko_signer::seal::unwrap_kek(mk, &row.id, &row.wrapped_by_master_hex).map_err(|e| keys(&e))?;
            (row.id, kek)
        }
        None => {
            let kek = Kek::generate();
            let wrapped = kinko_signer::seal::wrap_kek(mk, KEK_ID_FIRST, &kek).map_err(|e| keys(&e))?;
            store
                .insert_kek(&KekRecord {
                    id: KEK_ID_FIRST.into(),
                    wrapped_by_master_hex: wrapped,
                    state: kinko_store::seal_records::KEK_ACTIVE.into(),
                    fingerprint: kek.fingerprint(),
                    created_at_ms: now,
                    updated_at_ms: now,
                })
                .await?;
            (KEK_ID_FIRST.to_string(), kek)
        }
    };

    let (seed, mnemonic) = kinko_keys::seed::MasterSeed::generate();
    let master = seed.to_bip32_master().map_err(|e| keys(&e))?;
    let xpub = kinko_keys::hd::evm_deposit_xpub(&master).map_err(|e| keys(&e))?;
    let (hot_wallet, hot_stored, hot_kek_id) = match token_hot {
        None => {
            let hot_secret = kinko_keys::hd::evm_hot_wallet_secret(&master).map_err(|e| keys(&e))?;
            let hot_public = bitcoin::secp256k1::SecretKey::from_slice(hot_secret.as_ref())
                .map_err(|e| keys(&e))?
                .public_key(&bitcoin::secp256k1::Secp256k1::signing_only());
            let wrapped_hot = kek.wrap(HOT_KEY_ID, "hot_wallet", hot_secret.as_ref()).map_err(|e| keys(&e))?;
            (kinko_keys::hd::evm_address(&hot_public), hex::encode(wrapped_hot), kek_id.clone())
        }
        Some((address, marker)) => (address, marker, kinko_signer::pkcs11::TOKEN_KEK_ID.to_string()),
    };

    let wrapped_seed = kek.wrap(MASTER_SEED_KEY_ID, "master_seed", mnemonic.as_bytes()).map_err(|e| keys(&e))?;
    store
        .insert_key_wrapped_by(
            &KeyRecord {
                id: MASTER_SEED_KEY_ID.into(),
                purpose: "master_seed".into(),
                chain: ETH_CHAIN.into(),
                address: String::new(),
                wrapped_hex: hex::encode(wrapped_seed),
                state: "active".into(),
                created_at_ms: now,
            },
            &kek_id,
        )
        .await?;
    store
        .insert_key_wrapped_by(
            &KeyRecord {
                id: HOT_KEY_ID.into(),
                purpose: "hot_wallet".into(),
                chain: ETH_CHAIN.into(),
                address: hot_wallet.clone(),
                wrapped_hex: hot_stored,
                state: "active".into(),
                created_at_ms: now,
            },
            &hot_kek_id,
        )
        .await?;
    store
        .ensure_wallet(Wallet { address: &hot_wallet, chain: ETH_CHAIN, tier: "hot", key_id: HOT_KEY_ID }, now)
        .await?;
    // Publishing the xpub last makes it the commit point: until it exists, `init` runs again.
    let stored = store.meta_init(META_DEPOSIT_XPUB, &xpub.to_string()).await?;
    Ok(Custody { deposit_xpub: stored, hot_wallet, created: true })
}

/// Generates the hot key inside the token (or finds the one an interrupted `init` recorded) and returns
/// its address and the `keys.wrapped` marker. A key already in the token under the configured id that
/// this database did not record is refused: kinko only vouches for keys it saw generated there.
async fn hot_key_in_token(store: &Store, p: &crate::config::Pkcs11Config) -> Result<(String, String), AppError> {
    use kinko_signer::pkcs11::TokenKeyRef;
    let keys = |e: &dyn std::fmt::Display| AppError::Keys(format!("PKCS#11 hot key: {e}"));
    let at = TokenKeyRef { token_label: p.token_label.clone(), key_id: p.key_id.clone() };
    if let Some(row) = store.key(HOT_KEY_ID).await? {
        if TokenKeyRef::from_marker(&row.wrapped_hex).map_err(|e| keys(&e))?.as_ref() == Some(&at) {
            return Ok((row.address, row.wrapped_hex));
        }
        return Err(keys(&"this database already records another hot key; use a fresh database"));
    }
    let login = p.login().map_err(|e| keys(&e))?;
    let token = login.open().map_err(|e| keys(&e))?;
    let key = token.generate_secp256k1(&p.key_id).map_err(|e| match e {
        kinko_signer::pkcs11::Pkcs11Error::KeyExists(id) => keys(&format!(
            "token {:?} already holds a key with id {id:?} that this database did not record; \
             set another [signer.pkcs11] key_id",
            p.token_label
        )),
        other => keys(&other),
    })?;
    Ok((key.evm_address(), at.marker()))
}

/// Whether `init` has completed on this store (and what it made).
pub async fn custody(store: &Store) -> Result<Option<Custody>, AppError> {
    load_custody(store).await
}

async fn load_custody(store: &Store) -> Result<Option<Custody>, AppError> {
    let Some(xpub) = store.meta_get(META_DEPOSIT_XPUB).await? else { return Ok(None) };
    let hot = store.key(HOT_KEY_ID).await?.ok_or(AppError::NotInitialised)?;
    Ok(Some(Custody { deposit_xpub: xpub, hot_wallet: hot.address, created: false }))
}

/// A running kinko: the API's address and a way to stop everything.
pub struct Running {
    pub listen: SocketAddr,
    pub state: AppState,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the API, deposit detection and the withdrawal pipeline with the in-process signer (dev mode),
/// unsealed with the dev share.
pub async fn start(config: Config, dev: &DevUnseal) -> Result<Running, AppError> {
    start_with(config, Some(dev)).await
}

/// Starts the API, deposit detection and the withdrawal pipeline. With `signer.mode = "remote"` the
/// pipeline signs through the signer process's socket (S1) and `dev` is not needed; `"local"` (dev mode
/// only) unseals an in-process signer with the dev share.
pub async fn start_with(config: Config, dev: Option<&DevUnseal>) -> Result<Running, AppError> {
    let store = Store::connect(&config.database_url).await?;
    let read = EvmRpc::new(&config.ethereum.rpc_url)?;
    let send = EvmRpc::new(config.ethereum.send_rpc_url.as_deref().unwrap_or(&config.ethereum.rpc_url))?;
    for (url, rpc) in [
        (&config.ethereum.rpc_url, &read),
        (config.ethereum.send_rpc_url.as_ref().unwrap_or(&config.ethereum.rpc_url), &send),
    ] {
        let actual = rpc.chain_id().await?;
        if actual != config.ethereum.chain_id {
            return Err(AppError::WrongChain { url: url.clone(), expected: config.ethereum.chain_id, actual });
        }
    }
    let custody = load_custody(&store).await?.ok_or(AppError::NotInitialised)?;
    // No audit key, or another key than the chain pins: refuse to start rather than refuse every action.
    crate::audit::AuditSink::from_config(store.clone(), &config)
        .check(config.audit.public_key.as_deref())
        .await
        .map_err(|e| AppError::Keys(e.to_string()))?;
    let xpub = Xpub::from_str(&custody.deposit_xpub).map_err(|e| AppError::Keys(format!("stored xpub: {e}")))?;

    let hot = store.key(HOT_KEY_ID).await?.ok_or(AppError::NotInitialised)?;
    let tokens = crate::erc20::TokenSet::from_config(&config.ethereum).map_err(|e| AppError::Keys(e.to_string()))?;
    let signer: Arc<dyn Signer> = match config.signer.mode {
        SignerMode::Remote => Arc::new(RemoteSigner::new(&config.signer_socket())),
        SignerMode::Local => {
            let dev = match dev {
                Some(d) if config.dev => d,
                _ => return Err(AppError::Keys("an in-process signer needs dev mode and its dev share".into())),
            };
            let policy = config.signer.routine_policy().map_err(|e| AppError::Keys(e.to_string()))?;
            let pkcs11 = match &config.signer.pkcs11 {
                Some(p) => Some(p.login().map_err(|e| AppError::Keys(e.to_string()))?),
                None => None,
            };
            let quorum = config.signer.signing_quorum().map_err(|e| AppError::Keys(e.to_string()))?;
            // Bitcoin (issue 9): the keys `[signer.bitcoin]` names, as the signer process derives them.
            let btc = config.signer.bitcoin_keys().map_err(|e| AppError::Keys(e.to_string()))?;
            let local = unseal_in_process(&store, dev, policy, pkcs11.as_ref(), quorum, btc.as_ref()).await?;
            // K22: the in-process signer's token map comes from the configuration, as the signer process's does.
            local.set_evm_policy(
                config.ethereum.chain_id,
                tokens.signer_policy().map_err(|e| AppError::Keys(e.to_string()))?,
            )?;
            // K19: the in-process signer verifies unfreezes with the same M as the signer process would.
            local.set_unfreeze_approvals(config.emergency.unfreeze_approvals)?;
            local.set_evacuation_approvals(config.emergency.evacuation_approvals)?;
            // K13: sweeps to these sign without approvals; the signer process reads the same `[signer]` list.
            local.set_cold_wallets(&config.signer.cold_wallets)?;
            // K13: gas top-ups to deposit addresses sign without approval up to this cap.
            if let Some(cap) = config.signer.deposit_top_up_cap_wei {
                local.set_top_up_cap_wei(cap)?;
            }
            // K15: the Safes each key serves, as the signer process reads them from `[[signer.safes]]`.
            for (key_id, chain_id, safe) in
                config.signer.safes_on(config.ethereum.chain_id).map_err(|e| AppError::Keys(e.to_string()))?
            {
                local.add_safe(&key_id, chain_id, safe)?;
            }
            Arc::new(local)
        }
    };

    // A registry change the signer accepted but this server failed to record would block every later one:
    // catch up now. Never fatal here: an unreachable signer is retried when a change is refused, and a
    // divergence is logged loudly while registry changes stay refused (fail closed).
    let _ = crate::registry_sync::reconcile_registry(&store, &*signer, crate::clock::now_ms()).await;

    let config = Arc::new(config);
    let state = AppState {
        store: store.clone(),
        config: config.clone(),
        deposit_xpub: Arc::new(xpub),
        hot_wallet: hot.address.clone(),
        signer: signer.clone(),
    };
    // Built before anything starts: a configured channel whose secret is missing refuses the start.
    crate::aml::announce(&config.aml);
    let notice_sender = crate::notices::NoticeSender::from_config(store.clone(), &config.instance_id, &config.notices)?;
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let listen = listener.local_addr()?;
    // One registry for the API's request counters and the pipeline's and watcher's own metrics. In a
    // process that starts twice (tests) the second start keeps a private registry.
    let metrics = crate::api::Metrics::new();
    if let Err(e) = metrics.install_global() {
        tracing::debug!(error = %e, "a global metrics recorder is already installed");
    }
    let router = crate::api::router_with_metrics(state.clone(), metrics.clone());
    let mut api_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = api_shutdown.wait_for(|stop| *stop).await;
            });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "API server stopped");
        }
    }));

    let watcher_cfg = crate::watcher::WatcherConfig {
        chain: ETH_CHAIN.into(),
        asset: "ETH".parse().expect("static asset code"),
        confirmations: config.ethereum.confirmations,
        start_block: config.ethereum.start_block,
        poll_interval: std::time::Duration::from_millis(config.ethereum.poll_interval_ms),
        tokens: tokens.clone(),
    };
    let watcher_audit = crate::audit::AuditSink::from_config(store.clone(), &config);
    tasks.push(tokio::spawn(watch_exclusively(
        store.clone(),
        read.clone(),
        watcher_cfg,
        watcher_audit,
        shutdown_rx.clone(),
    )));
    // Issue 9 (M5, M6, C2, C5): Bitcoin deposits, when `[bitcoin]` is configured (see btc_watcher::serve_task).
    if let Some(btc) = &config.bitcoin {
        let audit = crate::audit::AuditSink::from_config(store.clone(), &config);
        let task = crate::btc_watcher::serve_task(store.clone(), btc, audit, shutdown_rx.clone())
            .map_err(|e| AppError::Keys(e.to_string()))?;
        tasks.push(tokio::spawn(task));
    }

    let settings = PipelineSettings {
        chain: ETH_CHAIN.into(),
        chain_id: config.ethereum.chain_id,
        hot_wallet: hot.address.clone(),
        hot_key_id: HOT_KEY_ID.into(),
        confirmations: config.ethereum.confirmations,
        stuck_after_ms: config.ethereum.stuck_after_ms,
        max_fee_per_gas_cap_wei: config.ethereum.max_fee_per_gas_cap_wei,
        instance_id: config.instance_id.clone(),
        lease_ms: config.pipeline.lease_ms,
        batch_max: config.pipeline.batch_max,
        poll_interval_ms: config.pipeline.poll_interval_ms,
    };
    // L3, K19, S5: spend and balance reconciliation; also keeps the signer's freezes in step with the database's.
    if config.reconciliation.enabled {
        let reconciler = crate::reconciliation::SpendReconciler::new(
            ETH_CHAIN,
            "ETH".parse().expect("static asset code"),
            config.ethereum.start_block,
            &config.reconciliation,
        );
        tasks.push(tokio::spawn(crate::reconciliation::run(
            store.clone(),
            read.clone(),
            signer.clone(),
            reconciler,
            std::time::Duration::from_millis(config.ethereum.poll_interval_ms),
            config.reconciliation.balance_interval_ms,
            shutdown_rx.clone(),
        )));
    }
    // K13, C1: deposit addresses are swept into the hot wallet through the pipeline's withdrawals rows.
    if config.sweep.enabled {
        let sweeper_settings = crate::sweeper::SweeperSettings {
            chain: ETH_CHAIN.into(),
            chain_id: config.ethereum.chain_id,
            hot_wallet: hot.address.clone(),
            hot_key_id: HOT_KEY_ID.into(),
            max_fee_per_gas_cap_wei: config.ethereum.max_fee_per_gas_cap_wei,
        };
        let sweeper = crate::sweeper::Sweeper::new(
            store.clone(),
            read.clone(),
            sweeper_settings,
            config.sweep.clone(),
            tokens.clone(),
        );
        tasks.push(tokio::spawn(sweeper.run(shutdown_rx.clone())));
    }
    let audit = crate::audit::AuditSink::from_config(store.clone(), &config);
    let pipeline = Pipeline::new(store.clone(), read, send, signer, settings)
        .with_audit(audit.clone())
        .with_tokens(tokens)
        .with_tiers(crate::tiers::tiers_from_config(&config.wallet_tiers).map_err(|e| AppError::Keys(e.to_string()))?);
    tasks.push(tokio::spawn(crate::audit::run_reports(
        store.clone(),
        audit,
        config.audit.inspection_interval_ms,
        config.notices.webhook_url.is_some().then(|| config.audit.report_recipient.clone()),
        shutdown_rx.clone(),
    )));
    // C6, C7, C10: the node monitor's verdict gates the pipeline; it also feeds the gauges on /metrics.
    let monitor_targets = crate::node_monitor::MonitorTargets {
        chain: ETH_CHAIN.into(),
        asset: "ETH".parse().expect("static asset code"),
        chain_id: config.ethereum.chain_id,
        confirmations: config.ethereum.confirmations,
        instance_id: config.instance_id.clone(),
        hot_wallet: hot.address.clone(),
        signer_socket: (config.signer.mode == SignerMode::Remote).then(|| config.signer_socket()),
    };
    let monitor =
        crate::node_monitor::NodeMonitor::new(store.clone(), &config.ethereum, monitor_targets, Some(metrics))?;
    tasks.push(tokio::spawn(monitor.run(shutdown_rx.clone())));
    tasks.push(tokio::spawn(notice_sender.run(shutdown_rx.clone())));
    tasks.push(tokio::spawn(pipeline.run(shutdown_rx)));

    Ok(Running { listen, state, shutdown, tasks })
}

/// Runs deposit detection for one chain only while this instance holds the chain's exclusive lease, so
/// several instances on PostgreSQL never scan the same chain at once; the others stand by and take over
/// when the holder's connection drops.
async fn watch_exclusively(
    store: Store,
    read: EvmRpc,
    cfg: crate::watcher::WatcherConfig,
    audit: crate::audit::AuditSink,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let job = format!("deposit-watcher:{}", cfg.chain);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match store.try_exclusive(&job).await {
            Ok(Some(_lease)) => {
                tracing::info!(%job, "this instance runs deposit detection");
                let (read, cfg, audit) = (read.clone(), cfg.clone(), audit.clone());
                crate::watcher::run_deposit_watcher(store.clone(), read, cfg, audit, shutdown.clone()).await;
                return;
            }
            Ok(None) => tracing::debug!(%job, "another instance runs deposit detection; standing by"),
            Err(e) => tracing::warn!(%job, error = %e, "could not take the watcher lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.poll_interval * 4) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Unseals an in-process signer through the same seal path as the signer process, with the dev share.
async fn unseal_in_process(
    store: &Store,
    dev: &DevUnseal,
    routine_policy: kinko_store::key_lifecycle::RoutinePolicy,
    pkcs11: Option<&kinko_signer::pkcs11::Pkcs11Login>,
    quorum: kinko_signer::approvals::SigningQuorum,
    btc: Option<&kinko_signer::seal::BtcKeysConfig>,
) -> Result<LocalSigner, AppError> {
    let keys = |e: &dyn std::fmt::Display| AppError::Keys(e.to_string());
    let mut seal = SealState::load(store).await.map_err(|e| keys(&e))?;
    match seal.submit(dev.share.clone()).map_err(|e| keys(&e))? {
        SubmitOutcome::Unsealed(mk) => {
            let journal = Arc::new(kinko_signer::store_journal::StoreJournal(store.clone()));
            let hot = [HOT_KEY_ID.to_string()];
            let signer = kinko_signer::seal::unlock_signer_full(store, &mk, journal, &hot, routine_policy, pkcs11, btc)
                .await
                .map_err(|e| keys(&e))?;
            // The same registry log and quorum rules as the signer process: approvals are verified here too.
            signer.load_registry().await?;
            signer.set_quorum(quorum)?;
            Ok(signer)
        }
        SubmitOutcome::Collecting { .. } => {
            Err(AppError::Keys("the stored seal needs more than the dev share; it is not a dev seal".into()))
        }
    }
}

/// DEV MODE ONLY: loads the dev custodian's share from `data_dir`, creating a fresh master key and its
/// 1-of-1 share (mode 0600) when missing. The caller prints the warning. (Named after what it replaced:
/// callers get from it whatever unseals the in-process signer.)
pub fn load_kek(config: &Config) -> Result<DevUnseal, AppError> {
    if !config.dev {
        return Err(AppError::Keys(
            "the signer is sealed: run `kinko signer serve` and unseal it with custodian shares (`kinko unseal`)"
                .into(),
        ));
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let path = config.data_dir.join(DEV_SHARE_FILE);
    let keys = |e: &dyn std::fmt::Display| AppError::Keys(format!("{}: {e}", path.display()));
    if path.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(AppError::Keys(format!(
                    "{}: mode {:o} lets group or others read it; chmod 600",
                    path.display(),
                    mode & 0o777
                )));
            }
        }
        let share = ShareFile::read(&path).and_then(|f| f.open(None)).map_err(|e| keys(&e))?;
        return Ok(DevUnseal { share });
    }
    let mk = MasterKey::generate();
    let mut shares = kinko_keys::shares::split(&mk, 1, &[DEV_CUSTODIAN.to_string()]).map_err(|e| keys(&e))?;
    let share = shares.pop().ok_or_else(|| AppError::Keys("split gave no share".into()))?;
    share.to_file(None).and_then(|f| f.write(&path)).map_err(|e| keys(&e))?;
    Ok(DevUnseal { share })
}

/// The first default account of a local anvil node: unlocked, funded with 10,000 test ETH.
pub const ANVIL_ACCOUNT0: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
const DEV_FUNDING_REFERENCE: &str = "dev-funding";
/// What the dev set-up puts into the hot wallet: 1,000 test ETH.
pub const DEV_FUNDING_WEI: u128 = 1_000 * 10u128.pow(18);

/// Dev only: funds the hot wallet from anvil's first account and records it as the custodian's own
/// money (A1). Safe to repeat: the posting's reference is fixed, and a crash between sending and
/// posting is healed on the next run by posting what the chain shows (nothing else moves the hot wallet
/// before this has run).
pub async fn dev_fund(store: &Store, rpc_url: &str, hot_wallet: &str) -> Result<(), AppError> {
    use kinko_core::ledger::{AccountRef, postings};
    let eth: kinko_core::AssetCode = "ETH".parse().expect("static asset code");
    let exists = store.balance(&AccountRef::equity(&eth)).await?;
    if exists != kinko_core::ledger::Balance::default() {
        return Ok(());
    }
    let rpc = EvmRpc::new(rpc_url)?;
    let address = kinko_chain::evm::address::parse_address(hot_wallet).map_err(|e| AppError::Keys(e.to_string()))?;
    if rpc.balance(address).await? == 0 {
        let client = reqwest::Client::new();
        let body = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction",
            "params": [{ "from": ANVIL_ACCOUNT0, "to": hot_wallet, "value": format!("{DEV_FUNDING_WEI:#x}") }],
        });
        let reply: serde_json::Value = client
            .post(rpc_url)
            .json(&body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AppError::Keys(format!("dev funding request: {e}")))?
            .json()
            .await
            .map_err(|e| AppError::Keys(format!("dev funding reply: {e}")))?;
        if let Some(err) = reply.get("error") {
            return Err(AppError::Keys(format!("dev funding refused by the node: {err}")));
        }
        let _ = client
            .post(rpc_url)
            .json(&serde_json::json!({"jsonrpc":"2.0","id":2,"method":"evm_mine","params":[]}))
            .send()
            .await;
        for _ in 0..100 {
            if rpc.balance(address).await? > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let on_chain = rpc.balance(address).await?;
    if on_chain == 0 {
        return Err(AppError::Keys("dev funding did not arrive".into()));
    }
    let draft = postings::custodian_funding(
        DEV_FUNDING_REFERENCE.into(),
        hot_wallet,
        &eth,
        kinko_core::Amount::from_base_units(on_chain),
    );
    store.post(draft, now_ms()).await?;
    Ok(())
}
