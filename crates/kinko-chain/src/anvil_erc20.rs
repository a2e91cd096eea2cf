//! ERC-20 tokens on a local anvil, for tests (K22): deploys OpenZeppelin's audited
//! `ERC20PresetMinterPauser` from the npm package `@openzeppelin/contracts` 4.9.6 (the compiled artifact,
//! not a copy), mints, transfers and reads balances through anvil's unlocked accounts. Call data and
//! constructor arguments are ABI-encoded with alloy-sol-types.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall, SolValue, sol};
use serde_json::{Value, json};

use crate::anvil::Anvil;

/// Where npm puts OpenZeppelin's compiled contracts, relative to the directory holding `node_modules`.
pub const OZ_ARTIFACTS_NPM_PATH: &str = "node_modules/@openzeppelin/contracts/build/contracts";
/// The token the tests deploy: `constructor(string name, string symbol)`, 18 decimals, the deployer holds
/// the minter role.
pub const ERC20_ARTIFACT: &str = "ERC20PresetMinterPauser.json";
/// How long to wait for anvil to mine a sent transaction.
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Gas for a deployment or a token call sent from an unlocked account.
pub const TEST_TX_GAS: u64 = 5_000_000;

sol! {
    function mint(address to, uint256 amount);
    function transfer(address to, uint256 amount) returns (bool);
    function balanceOf(address owner) returns (uint256);
}

fn io_err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

/// The OpenZeppelin artifact directory: `$KINKO_OZ_ARTIFACTS`, else the npm install found by walking up
/// from the current directory or this crate's manifest directory.
pub fn find_oz_artifacts() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KINKO_OZ_ARTIFACTS") {
        return Ok(PathBuf::from(p));
    }
    let starts = [std::env::current_dir().ok(), Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")))];
    for start in starts.into_iter().flatten() {
        let mut dir: Option<&Path> = Some(&start);
        while let Some(d) = dir {
            let candidate = d.join(OZ_ARTIFACTS_NPM_PATH);
            if candidate.join(ERC20_ARTIFACT).is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "@openzeppelin/contracts not found: run `npm install` in the repository",
    ))
}

/// The creation bytecode of an artifact.
fn creation_code(artifact: &str) -> std::io::Result<Vec<u8>> {
    let path = find_oz_artifacts()?.join(artifact);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .map_err(|e| io_err(format!("{}: {e}", path.display())))?;
    let code = v["bytecode"].as_str().ok_or_else(|| io_err(format!("{}: no bytecode", path.display())))?;
    hex::decode(code.trim_start_matches("0x")).map_err(|e| io_err(format!("{}: bytecode: {e}", path.display())))
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// Sends a transaction from an unlocked account and waits for its receipt; a reverted one is an error.
pub async fn send_and_wait(anvil: &Anvil, from: &str, to: Option<Address>, data: &[u8]) -> std::io::Result<Value> {
    let mut tx = json!({"from": from, "data": hex0x(data), "gas": format!("{TEST_TX_GAS:#x}")});
    if let Some(to) = to {
        tx["to"] = json!(to.to_string());
    }
    let hash = anvil.rpc("eth_sendTransaction", json!([tx])).await?;
    let deadline = Instant::now() + RECEIPT_TIMEOUT;
    loop {
        let receipt = anvil.rpc("eth_getTransactionReceipt", json!([hash])).await?;
        if !receipt.is_null() {
            if receipt["status"] != "0x1" {
                return Err(io_err(format!("transaction {hash} reverted")));
            }
            return Ok(receipt);
        }
        if Instant::now() > deadline {
            return Err(io_err(format!("transaction {hash} not mined in time (is mining on?)")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deploys raw creation code from `from`; returns the new contract's address.
pub async fn deploy_code(anvil: &Anvil, from: &str, creation: &[u8]) -> std::io::Result<Address> {
    let receipt = send_and_wait(anvil, from, None, creation).await?;
    receipt["contractAddress"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| io_err(format!("deployment receipt without a contract address: {receipt}")))
}

/// Deploys a fresh OpenZeppelin ERC-20 (18 decimals) with `deployer` (an unlocked anvil account) as minter.
pub async fn deploy_erc20(anvil: &Anvil, deployer: &str, name: &str, symbol: &str) -> std::io::Result<Address> {
    let mut code = creation_code(ERC20_ARTIFACT)?;
    code.extend((name.to_string(), symbol.to_string()).abi_encode_params());
    deploy_code(anvil, deployer, &code).await
}

/// Mints `amount` base units of `token` to `to`; `minter` must hold the minter role (the deployer does).
pub async fn mint(anvil: &Anvil, token: Address, minter: &str, to: Address, amount: u128) -> std::io::Result<String> {
    let data = mintCall { to, amount: U256::from(amount) }.abi_encode();
    let r = send_and_wait(anvil, minter, Some(token), &data).await?;
    Ok(r["transactionHash"].as_str().unwrap_or_default().to_string())
}

/// `from` (an unlocked account) transfers `amount` of `token` to `to`; returns the transaction hash.
pub async fn transfer(anvil: &Anvil, token: Address, from: &str, to: Address, amount: u128) -> std::io::Result<String> {
    let data = transferCall { to, amount: U256::from(amount) }.abi_encode();
    let r = send_and_wait(anvil, from, Some(token), &data).await?;
    Ok(r["transactionHash"].as_str().unwrap_or_default().to_string())
}

/// `balanceOf(holder)` at the latest block.
pub async fn balance_of(anvil: &Anvil, token: Address, holder: Address) -> std::io::Result<U256> {
    let data = balanceOfCall { owner: holder }.abi_encode();
    let out = anvil.rpc("eth_call", json!([{"to": token.to_string(), "data": hex0x(&data)}, "latest"])).await?;
    let raw = out.as_str().ok_or_else(|| io_err(format!("eth_call: unexpected {out}")))?;
    let bytes = hex::decode(raw.trim_start_matches("0x")).map_err(|e| io_err(format!("eth_call: {e}")))?;
    balanceOfCall::abi_decode_returns(&bytes).map_err(|e| io_err(format!("balanceOf return: {e}")))
}

/// Creation code of a tiny contract whose every call emits one log with topic0 =
/// `Transfer(address,address,uint256)`, topics `from` = caller-independent zero and `to`, and NO data:
/// the shape of a malformed (non-ERC-20) Transfer log, for testing that such logs are refused.
///
/// Runtime: PUSH32 to; PUSH1 0; PUSH32 topic0; PUSH1 0 (size); PUSH1 0 (offset); LOG3; STOP.
pub fn malformed_transfer_emitter_code(to: Address) -> Vec<u8> {
    let topic0 = alloy_primitives::keccak256("Transfer(address,address,uint256)");
    let mut runtime = vec![0x7f];
    runtime.extend_from_slice(&[0u8; 12]);
    runtime.extend_from_slice(to.as_slice());
    runtime.extend_from_slice(&[0x60, 0x00, 0x7f]);
    runtime.extend_from_slice(topic0.as_slice());
    runtime.extend_from_slice(&[0x60, 0x00, 0x60, 0x00, 0xa3, 0x00]);
    // Init: copy the runtime (which follows this 12-byte prefix) to memory 0 and return it.
    let len = runtime.len() as u8;
    let mut init = vec![0x60, len, 0x60, 12, 0x60, 0x00, 0x39, 0x60, len, 0x60, 0x00, 0xf3];
    init.extend(runtime);
    init
}
