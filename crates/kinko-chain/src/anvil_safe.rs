//! Safe 1.4.1 on a local anvil, for tests (K15): deploys the audited contracts from the npm package
//! `@safe-global/safe-contracts` (the compiled artifacts, not a copy), creates a Safe proxy with given
//! owners and threshold, and submits `execTransaction` from an unlocked anvil account as relayer.
//!
//! Every call deploys a fresh singleton, proxy factory and fallback handler: a few million gas on a test
//! chain, and no state shared between tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy_network::{Ethereum, ReceiptResponse};
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_provider::{Provider, RootProvider};
use alloy_rpc_types_eth::{TransactionInput, TransactionRequest};
use alloy_sol_types::SolCall;

use crate::evm::safe::{
    ISafe, ISafeProxyFactory, SafeError, SafeTx, eth_call, exec_transaction_call, exec_transaction_calldata, provider,
};

/// Where npm puts the compiled Safe contracts, relative to the directory holding `node_modules`.
pub const SAFE_ARTIFACTS_NPM_PATH: &str = "node_modules/@safe-global/safe-contracts/build/artifacts/contracts";
pub const SAFE_SINGLETON_ARTIFACT: &str = "Safe.sol/Safe.json";
pub const SAFE_PROXY_FACTORY_ARTIFACT: &str = "proxies/SafeProxyFactory.sol/SafeProxyFactory.json";
pub const SAFE_FALLBACK_HANDLER_ARTIFACT: &str =
    "handler/CompatibilityFallbackHandler.sol/CompatibilityFallbackHandler.json";
/// How long to wait for anvil to mine a sent transaction (it mines on arrival).
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one deployment or call transaction's gas (the singleton needs about 5M).
pub const DEPLOY_GAS_MAX: u64 = 10_000_000;

/// The contracts a Safe proxy needs, once deployed.
#[derive(Clone, Copy, Debug)]
pub struct SafeContracts {
    pub singleton: Address,
    pub factory: Address,
    pub fallback_handler: Address,
}

/// The directory holding the Safe artifacts: `$KINKO_SAFE_ARTIFACTS`, else the npm install found by walking
/// up from the current directory or this crate's manifest directory.
pub fn find_artifacts() -> Result<PathBuf, SafeError> {
    if let Some(p) = std::env::var_os("KINKO_SAFE_ARTIFACTS") {
        return Ok(PathBuf::from(p));
    }
    let starts = [std::env::current_dir().ok(), Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")))];
    for start in starts.into_iter().flatten() {
        let mut dir: Option<&Path> = Some(&start);
        while let Some(d) = dir {
            let candidate = d.join(SAFE_ARTIFACTS_NPM_PATH);
            if candidate.join(SAFE_SINGLETON_ARTIFACT).is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
    }
    Err(SafeError::Decode(
        "Safe artifacts not found: run `npm install` in the repository or set KINKO_SAFE_ARTIFACTS".into(),
    ))
}

/// The creation bytecode of one artifact.
pub fn artifact_bytecode(relative: &str) -> Result<Bytes, SafeError> {
    let path = find_artifacts()?.join(relative);
    let text =
        std::fs::read_to_string(&path).map_err(|e| SafeError::Decode(format!("artifact {}: {e}", path.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| SafeError::Decode(format!("artifact {relative}: {e}")))?;
    let code = json
        .get("bytecode")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| SafeError::Decode(format!("artifact {relative} has no bytecode")))?;
    let bytes = hex::decode(code.trim_start_matches("0x"))
        .map_err(|e| SafeError::Decode(format!("artifact {relative} bytecode: {e}")))?;
    if bytes.is_empty() {
        return Err(SafeError::Decode(format!("artifact {relative} has empty bytecode (an interface?)")));
    }
    Ok(bytes.into())
}

/// Sends a transaction from an unlocked account (`eth_sendTransaction`) and waits for its receipt.
/// Returns the receipt's contract address (for a deployment) and whether it succeeded. The node's refusal
/// (e.g. a revert found by its gas estimate, "GS020") comes back as [`SafeError::Rpc`] with its message.
pub async fn send_from(
    p: &RootProvider<Ethereum>,
    from: Address,
    to: TxKind,
    value: U256,
    input: Bytes,
) -> Result<(B256, Option<Address>, bool), SafeError> {
    let mut req = TransactionRequest::default().from(from).value(value).input(TransactionInput::new(input));
    req.to = Some(to);
    let hash: B256 = p
        .raw_request("eth_sendTransaction".into(), (req,))
        .await
        .map_err(|e| SafeError::Rpc { call: "eth_sendTransaction", message: crate::evm::safe::rpc_message(&e) })?;
    let deadline = tokio::time::Instant::now() + RECEIPT_TIMEOUT;
    loop {
        let receipt = p.get_transaction_receipt(hash).await.map_err(|e| SafeError::Rpc {
            call: "eth_getTransactionReceipt",
            message: crate::evm::safe::rpc_message(&e),
        })?;
        if let Some(r) = receipt {
            return Ok((hash, r.contract_address(), r.status()));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(SafeError::Rpc { call: "eth_getTransactionReceipt", message: "not mined in time".into() });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn deploy(p: &RootProvider<Ethereum>, funder: Address, artifact: &str) -> Result<Address, SafeError> {
    let code = artifact_bytecode(artifact)?;
    match send_from(p, funder, TxKind::Create, U256::ZERO, code).await? {
        (_, Some(address), true) => Ok(address),
        _ => Err(SafeError::Rpc { call: "deploy", message: format!("deploying {artifact} failed") }),
    }
}

/// Deploys the Safe 1.4.1 singleton, proxy factory and compatibility fallback handler from `funder` (an
/// unlocked anvil account).
pub async fn deploy_contracts(rpc_url: &str, funder: Address) -> Result<SafeContracts, SafeError> {
    let p = provider(rpc_url)?;
    Ok(SafeContracts {
        singleton: deploy(&p, funder, SAFE_SINGLETON_ARTIFACT).await?,
        factory: deploy(&p, funder, SAFE_PROXY_FACTORY_ARTIFACT).await?,
        fallback_handler: deploy(&p, funder, SAFE_FALLBACK_HANDLER_ARTIFACT).await?,
    })
}

/// Creates a Safe proxy with `owners` and `threshold` through the factory's `createProxyWithNonce`
/// (`setup` as initializer, no module call, no payment) and returns its address.
pub async fn create_safe(
    rpc_url: &str,
    funder: Address,
    contracts: &SafeContracts,
    owners: &[Address],
    threshold: u64,
    salt_nonce: u64,
) -> Result<Address, SafeError> {
    let p = provider(rpc_url)?;
    let initializer = ISafe::setupCall {
        _owners: owners.to_vec(),
        _threshold: U256::from(threshold),
        to: Address::ZERO,
        data: Bytes::new(),
        fallbackHandler: contracts.fallback_handler,
        paymentToken: Address::ZERO,
        payment: U256::ZERO,
        paymentReceiver: Address::ZERO,
    }
    .abi_encode();
    let create = ISafeProxyFactory::createProxyWithNonceCall {
        _singleton: contracts.singleton,
        initializer: initializer.into(),
        saltNonce: U256::from(salt_nonce),
    };
    // CREATE2: the address the call returns now is the one the transaction creates.
    let safe = eth_call(&p, "SafeProxyFactory.createProxyWithNonce", contracts.factory, &create).await?;
    let (_, _, ok) =
        send_from(&p, funder, TxKind::Call(contracts.factory), U256::ZERO, create.abi_encode().into()).await?;
    if !ok {
        return Err(SafeError::Rpc { call: "createProxyWithNonce", message: "the transaction reverted".into() });
    }
    Ok(safe)
}

/// Deploys the Safe contracts and one Safe with `owners` and `threshold`; returns the Safe's address.
/// `funder` is an unlocked anvil account (e.g. [`crate::anvil::ACCOUNT0`]) that pays the gas.
pub async fn deploy_safe(
    rpc_url: &str,
    funder: Address,
    owners: &[Address],
    threshold: u64,
) -> Result<Address, SafeError> {
    let contracts = deploy_contracts(rpc_url, funder).await?;
    create_safe(rpc_url, funder, &contracts, owners, threshold, 0).await
}

/// Submits `execTransaction(tx, signatures)` to `safe` from `relayer` (an unlocked anvil account). Ok(true)
/// when mined and successful; a revert comes back as [`SafeError::Rpc`] carrying the Safe's error code.
pub async fn exec_safe_tx(
    rpc_url: &str,
    relayer: Address,
    safe: Address,
    tx: &SafeTx,
    signatures: Bytes,
) -> Result<B256, SafeError> {
    let p = provider(rpc_url)?;
    // Simulated first: a node may mine a reverting transaction without saying why; the simulation carries
    // the Safe's error code (GS020 too few signatures, GS026 not ordered owners, …).
    let call = exec_transaction_call(tx, signatures.clone());
    if !eth_call(&p, "Safe.execTransaction (simulated)", safe, &call).await? {
        return Err(SafeError::Rpc { call: "execTransaction", message: "the Safe transaction failed".into() });
    }
    let data = exec_transaction_calldata(tx, signatures);
    let (hash, _, ok) = send_from(&p, relayer, TxKind::Call(safe), U256::ZERO, data.into()).await?;
    if !ok {
        return Err(SafeError::Rpc { call: "execTransaction", message: "the transaction reverted".into() });
    }
    Ok(hash)
}
